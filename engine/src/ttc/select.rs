//! Selection strategies: one final answer per problem out of N samples.
//!
//! - `majority_vote`: the most frequent extracted answer (ties: the answer seen first).
//! - `best_of_n`: the highest verifier score (ties: higher mean log-probability, then first).
//! - `weighted_best_of_n`: verifier scores summed over identical answers, the largest sum.
//! - `max_mean_logprob`: the highest mean token log-probability under the model.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// What a strategy sees of one sample.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    /// The extracted final answer (normalized), or `None` when none could be extracted.
    pub answer: Option<String>,
    /// Verifier score in [0, 1] (public tests passed, or checked reasoning steps).
    pub score: f64,
    pub mean_logprob: f64,
}

pub const STRATEGIES: [&str; 4] = [
    "majority_vote",
    "best_of_n",
    "weighted_best_of_n",
    "max_mean_logprob",
];

/// The index chosen by each strategy, in [`STRATEGIES`] order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Choices {
    pub majority_vote: usize,
    pub best_of_n: usize,
    pub weighted_best_of_n: usize,
    pub max_mean_logprob: usize,
}

impl Choices {
    pub fn as_array(&self) -> [usize; 4] {
        [
            self.majority_vote,
            self.best_of_n,
            self.weighted_best_of_n,
            self.max_mean_logprob,
        ]
    }
}

fn argmax_by(c: &[Candidate], key: impl Fn(&Candidate) -> (f64, f64)) -> usize {
    let mut best = 0;
    for i in 1..c.len() {
        let (a, b) = (key(&c[i]), key(&c[best]));
        if a.0 > b.0 || (a.0 == b.0 && a.1 > b.1) {
            best = i;
        }
    }
    best
}

/// First sample carrying the answer that maximizes `weight` summed over its samples.
fn by_answer(c: &[Candidate], weight: impl Fn(&Candidate) -> f64) -> Option<usize> {
    let mut sum: HashMap<&str, (f64, usize)> = HashMap::new();
    for (i, x) in c.iter().enumerate() {
        if let Some(a) = &x.answer {
            let e = sum.entry(a.as_str()).or_insert((0.0, i));
            e.0 += weight(x);
        }
    }
    sum.values()
        .copied()
        .max_by(|a, b| a.0.total_cmp(&b.0).then(b.1.cmp(&a.1)))
        .map(|(_, i)| i)
}

pub fn choose(c: &[Candidate]) -> Choices {
    assert!(!c.is_empty(), "selection needs at least one sample");
    let best = argmax_by(c, |x| (x.score, x.mean_logprob));
    Choices {
        majority_vote: by_answer(c, |_| 1.0).unwrap_or(0),
        best_of_n: best,
        weighted_best_of_n: by_answer(c, |x| x.score).unwrap_or(best),
        max_mean_logprob: argmax_by(c, |x| (x.mean_logprob, 0.0)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(a: &str, score: f64, lp: f64) -> Candidate {
        Candidate {
            answer: (!a.is_empty()).then(|| a.to_string()),
            score,
            mean_logprob: lp,
        }
    }

    #[test]
    fn strategies_pick_by_their_rule() {
        let c = vec![
            cand("7", 0.2, -0.5),
            cand("9", 1.0, -0.9),
            cand("7", 0.3, -0.4),
            cand("", 0.0, -0.1),
            cand("9", 0.0, -2.0),
            cand("7", 0.1, -1.0),
        ];
        let ch = choose(&c);
        // "7" three times against "9" twice: the first "7".
        assert_eq!(ch.majority_vote, 0);
        // Score 1.0 is the highest.
        assert_eq!(ch.best_of_n, 1);
        // Sums: "7" 0.6, "9" 1.0 → first "9".
        assert_eq!(ch.weighted_best_of_n, 1);
        // The answerless sample has the highest mean log-probability.
        assert_eq!(ch.max_mean_logprob, 3);
    }

    #[test]
    fn ties_are_broken_deterministically() {
        let c = vec![
            cand("1", 0.5, -1.0),
            cand("2", 0.5, -0.5),
            cand("1", 0.0, -3.0),
            cand("2", 0.0, -3.0),
        ];
        let ch = choose(&c);
        assert_eq!(ch.majority_vote, 0); // 2 votes each: the answer seen first
        assert_eq!(ch.best_of_n, 1); // equal scores: higher log-prob
        assert_eq!(ch.weighted_best_of_n, 0); // equal sums: the answer seen first
        let none = vec![cand("", 0.0, -1.0), cand("", 0.0, -2.0)];
        assert_eq!(choose(&none).majority_vote, 0);
    }
}
