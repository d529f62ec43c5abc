//! Judging and scoring of a `sample` job without a model: hand-written samples of a code problem
//! (run in the sandbox) and of an answer problem, with every strategy's choice worked out by hand.

use attune_engine::jobs::sample::{judge, summarize, Generated};
use attune_engine::ttc::problems::{doctest_asserts, Check, Problem};
use attune_engine::ttc::sandbox::{Limits, Verdict};

fn gen(text: &str, lp: f64) -> Generated {
    Generated {
        seed: 0,
        text: text.into(),
        tokens: 10,
        mean_logprob: lp,
        finish: "eos".into(),
    }
}

fn code_problem() -> Problem {
    let prompt = "def add(a, b):\n    \"\"\"Sum.\n    >>> add(1, 2)\n    3\n    \"\"\"\n";
    Problem {
        id: "add".into(),
        prompt: prompt.into(),
        check: Check::Tests {
            prefix: prompt.into(),
            tests:
                "def check(f):\n    assert f(2, 3) == 5\n    assert f(-1, 1) == 0\n\ncheck(add)\n"
                    .into(),
            public: doctest_asserts(prompt),
        },
        difficulty: None,
    }
}

#[test]
fn code_samples_are_judged_in_the_sandbox_and_selected() {
    let p = code_problem();
    let samples = [
        gen(
            "Here:\n```python\ndef add(a, b):\n    return a + b\n```\nDone.",
            -0.9,
        ),
        // Passes the public doctest, fails the hidden tests; the model likes it best.
        gen("```python\ndef add(a, b):\n    return 3\n```", -0.2),
        gen("```python\ndef add(a, b):\n    return a - b\n```", -0.5),
        gen("```python\ndef add(a, b)\n    return a + b\n```", -0.4),
    ];
    let r = judge(&p, &samples, "chat", &Limits::default(), true).unwrap();
    let v: Vec<Option<Verdict>> = r.samples.iter().map(|s| s.verdict).collect();
    assert_eq!(
        v,
        vec![
            Some(Verdict::Passed),
            Some(Verdict::Failed),
            Some(Verdict::Failed),
            Some(Verdict::Error)
        ]
    );
    assert!(r.samples[3]
        .output
        .as_deref()
        .unwrap()
        .contains("SyntaxError"));
    let scores: Vec<f64> = r.samples.iter().map(|s| s.score).collect();
    assert_eq!(scores, vec![1.0, 1.0, 0.0, 0.0]);
    assert_eq!(r.correct, 1);
    assert_eq!(r.pass_at_k, vec![0.25, 0.5, 0.75, 1.0]);
    // All programs differ: majority vote keeps the first; best-of-N ties at 1.0 and takes the
    // higher log-prob (the wrong one); weighted best-of-N sums equal answers (1.0 each for
    // samples 0 and 1) and takes the answer seen first; max mean log-prob is sample 1.
    assert_eq!(r.chosen["majority_vote"], 0);
    assert_eq!(r.chosen["best_of_n"], 1);
    assert_eq!(r.chosen["weighted_best_of_n"], 0);
    assert_eq!(r.chosen["max_mean_logprob"], 1);
    assert!(r.chosen_correct["majority_vote"] && !r.chosen_correct["best_of_n"]);

    // Completion style: the text continues the prompt.
    let r = judge(
        &p,
        &[gen("    return a + b\n", -1.0)],
        "completion",
        &Limits::default(),
        false,
    )
    .unwrap();
    assert_eq!((r.correct, r.samples.len()), (1, 0));
}

#[test]
fn answer_samples_are_checked_exactly_and_summarized() {
    let p = Problem {
        id: "a".into(),
        prompt: "3 apples and 4 more?".into(),
        check: Check::Answer { answer: "7".into() },
        difficulty: Some(1),
    };
    let samples = [
        gen("3 + 4 = 7. Answer: 7", -1.0),
        gen("3 + 4 = 8. Answer: 8", -0.1),
        gen("Answer: 7", -2.0),
        gen("3 + 4 = 7, then 7 + 1 = 8. Answer: 8", -0.5),
    ];
    let r = judge(&p, &samples, "chat", &Limits::default(), true).unwrap();
    assert_eq!(r.correct, 2);
    let scores: Vec<f64> = r.samples.iter().map(|s| s.score).collect();
    assert_eq!(scores, vec![1.0, 0.0, 0.0, 1.0]);
    // "7" and "8" two votes each: the first seen ("7"). Best-of-N: scores 1.0 tie, sample 3
    // has the higher log-prob. Weighted: "7" 1.0, "8" 1.0: the answer seen first. Log-prob: 1.
    assert_eq!(r.chosen["majority_vote"], 0);
    assert_eq!(r.chosen["best_of_n"], 3);
    assert_eq!(r.chosen["weighted_best_of_n"], 0);
    assert_eq!(r.chosen["max_mean_logprob"], 1);
    let q = Problem {
        id: "b".into(),
        difficulty: Some(2),
        ..p.clone()
    };
    let r2 = judge(
        &q,
        &[gen("no", 0.0), gen("7", 0.0), gen("9", 0.0), gen("6", 0.0)],
        "chat",
        &Limits::default(),
        true,
    )
    .unwrap();
    let (curve, levels, sel) = summarize(&[r, r2]);
    // Problem a: c = 2 of 4; problem b: c = 1 of 4.
    assert!((curve[0].value - (0.5 + 0.25) / 2.0).abs() < 1e-12);
    assert!((curve[1].value - ((1.0 - 1.0 / 6.0) + 0.5) / 2.0).abs() < 1e-12);
    assert_eq!(levels.len(), 2);
    let mv = sel.iter().find(|s| s.strategy == "majority_vote").unwrap();
    // b: all answers once ("no" has none): the first answer, "7", is right.
    assert_eq!((mv.correct, mv.accuracy), (2, 1.0));
}
