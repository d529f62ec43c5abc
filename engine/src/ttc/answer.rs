//! Final answers and reasoning checks for exact-answer problems.
//!
//! [`extract`] takes the number after the last `Answer:`/`answer is`/`####`/`\boxed{…}` marker,
//! else the last number in the text, and normalizes it (`1,200` → `1200`, `4.0` → `4`).
//! [`check_steps`] is the verifier for such problems: it re-computes every `expression = number`
//! the text states and returns the share that is right — a step check that never sees the
//! reference answer.

/// Normalize a number: no thousands separators, no trailing zeros, integers without a point.
pub fn normalize(s: &str) -> Option<String> {
    let t: String = s
        .trim()
        .trim_end_matches('.')
        .chars()
        .filter(|c| *c != ',' && *c != '$')
        .collect();
    let v: f64 = t.parse().ok()?;
    if !v.is_finite() {
        return None;
    }
    Some(if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    })
}

/// Numbers in `text` in order, as (start byte, literal).
fn numbers(text: &str) -> Vec<(usize, String)> {
    let b = text.as_bytes();
    let mut out = vec![];
    let mut i = 0;
    while i < b.len() {
        let neg = b[i] == b'-'
            && i + 1 < b.len()
            && b[i + 1].is_ascii_digit()
            && (i == 0 || !b[i - 1].is_ascii_alphanumeric());
        if b[i].is_ascii_digit() || neg {
            let start = i;
            i += 1;
            while i < b.len()
                && (b[i].is_ascii_digit()
                    || ((b[i] == b'.' || b[i] == b',')
                        && i + 1 < b.len()
                        && b[i + 1].is_ascii_digit()))
            {
                i += 1;
            }
            out.push((start, text[start..i].to_string()));
        } else {
            i += 1;
        }
    }
    out
}

/// The final numeric answer in a response, normalized.
pub fn extract(text: &str) -> Option<String> {
    let lower = text.to_lowercase();
    let markers = ["answer:", "answer is", "####", "\\boxed{", "answer ="];
    let after = markers
        .iter()
        .filter_map(|m| lower.rfind(m).map(|i| i + m.len()))
        .max();
    if let Some(pos) = after {
        if let Some((_, n)) = numbers(&text[pos..]).first() {
            return normalize(n);
        }
    }
    numbers(text).last().and_then(|(_, n)| normalize(n))
}

/// A tiny arithmetic parser: numbers, + − × ÷ (also * x /), parentheses.
struct Expr<'a> {
    s: &'a [u8],
    i: usize,
}

impl Expr<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i] == b' ' {
            self.i += 1;
        }
    }
    fn op(&mut self, ops: &[&str]) -> Option<char> {
        self.ws();
        for o in ops {
            if self.s[self.i..].starts_with(o.as_bytes()) {
                self.i += o.len();
                return Some(match *o {
                    "×" | "x" | "*" => '*',
                    "÷" | "/" => '/',
                    "−" | "-" => '-',
                    _ => '+',
                });
            }
        }
        None
    }
    fn atom(&mut self) -> Option<f64> {
        self.ws();
        if self.s.get(self.i) == Some(&b'(') {
            self.i += 1;
            let v = self.sum()?;
            self.ws();
            if self.s.get(self.i) != Some(&b')') {
                return None;
            }
            self.i += 1;
            return Some(v);
        }
        if self.s.get(self.i) == Some(&b'$') {
            self.i += 1;
        }
        let start = self.i;
        while self.i < self.s.len()
            && (self.s[self.i].is_ascii_digit()
                || ((self.s[self.i] == b'.' || self.s[self.i] == b',')
                    && self.s.get(self.i + 1).is_some_and(|c| c.is_ascii_digit())))
        {
            self.i += 1;
        }
        let t: String = std::str::from_utf8(&self.s[start..self.i])
            .ok()?
            .replace(',', "");
        t.parse().ok()
    }
    fn product(&mut self) -> Option<f64> {
        let mut v = self.atom()?;
        while let Some(o) = self.op(&["×", "*", "x", "÷", "/"]) {
            let r = self.atom()?;
            v = if o == '*' { v * r } else { v / r };
        }
        Some(v)
    }
    fn sum(&mut self) -> Option<f64> {
        let mut v = self.product()?;
        while let Some(o) = self.op(&["+", "−", "-"]) {
            let r = self.product()?;
            v = if o == '+' { v + r } else { v - r };
        }
        Some(v)
    }
}

/// Evaluate `s` when it is one whole expression with at least one operator.
fn eval(s: &str) -> Option<f64> {
    let s = s.trim();
    let has_op = s.chars().skip(1).any(|c| "+-*/×÷−x".contains(c));
    if !has_op {
        return None;
    }
    let mut e = Expr {
        s: s.as_bytes(),
        i: 0,
    };
    let v = e.sum()?;
    e.ws();
    (e.i == e.s.len()).then_some(v)
}

/// (steps checked, steps right) over every `expression = number` in `text`.
pub fn check_steps(text: &str) -> (usize, usize) {
    let allowed = |c: char| c.is_ascii_digit() || " .,+-*/()×÷−x$".contains(c);
    let (mut total, mut right) = (0, 0);
    for (eq, _) in text.match_indices('=') {
        let left: String = {
            let rev: String = text[..eq]
                .chars()
                .rev()
                .take_while(|c| allowed(*c))
                .collect();
            rev.chars().rev().collect()
        };
        // Start after the last sentence or clause break (`36. (2 + 3) × 4` → `(2 + 3) × 4`),
        // then drop a leading word-ish `x` and spaces left over from the prose.
        let left = [". ", ", "]
            .iter()
            .filter_map(|b| left.rfind(b).map(|i| i + b.len()))
            .max()
            .map(|i| &left[i..])
            .unwrap_or(&left);
        let left = left.trim_start_matches([' ', 'x', ',', '.']);
        let right_num = numbers(&text[eq + 1..])
            .first()
            .filter(|(p, _)| {
                text[eq + 1..eq + 1 + p]
                    .trim()
                    .trim_start_matches('$')
                    .is_empty()
            })
            .and_then(|(_, n)| n.replace(',', "").parse::<f64>().ok());
        if let (Some(l), Some(r)) = (eval(left), right_num) {
            total += 1;
            if (l - r).abs() <= 1e-6 * r.abs().max(1.0) {
                right += 1;
            }
        }
    }
    (total, right)
}

/// The step verifier's score: share of stated computations that are right (0 without any).
pub fn step_score(text: &str) -> f64 {
    let (t, r) = check_steps(text);
    if t == 0 {
        0.0
    } else {
        r as f64 / t as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extracts_the_final_number() {
        assert_eq!(
            extract("3 + 4 = 7, so 7 - 2 = 5. Answer: 5").as_deref(),
            Some("5")
        );
        assert_eq!(
            extract("The answer is 1,200 apples.").as_deref(),
            Some("1200")
        );
        assert_eq!(extract("so #### 42").as_deref(), Some("42"));
        assert_eq!(extract("\\boxed{3.50}").as_deref(), Some("3.5"));
        assert_eq!(extract("we get 12 and then 4.0").as_deref(), Some("4"));
        assert_eq!(extract("It is -3 degrees").as_deref(), Some("-3"));
        assert_eq!(extract("no numbers here"), None);
    }

    #[test]
    fn step_checker_recomputes_stated_arithmetic() {
        let t = "First 12 x 3 = 36 apples. Then 36 - 5 = 31. Then 31 + 4 = 36. (2 + 3) × 4 = 20.";
        assert_eq!(check_steps(t), (4, 3));
        assert!((step_score(t) - 0.75).abs() < 1e-12);
        assert_eq!(check_steps("x = 5 and total = 7"), (0, 0));
        assert_eq!(step_score("nothing to check"), 0.0);
        assert_eq!(check_steps("$1,200 / 4 = $300"), (1, 1));
    }
}
