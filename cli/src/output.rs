//! Plain-text tables of job results.

use attune_engine::jobs::{AdaptResult, EvaluateResult, JobResult, SampleResult, TrainResult};
use std::fmt::Write;

fn pct(x: f64) -> String {
    format!("{:.2}", 100.0 * x)
}

/// Render rows of cells with the first column left-aligned and the rest right-aligned.
fn render(header: &[String], rows: &[Vec<String>]) -> String {
    let cols = header.len();
    let mut w = vec![0; cols];
    for r in std::iter::once(header).chain(rows.iter().map(|r| r.as_slice())) {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |r: &[String]| -> String {
        r.iter()
            .enumerate()
            .map(|(i, c)| {
                if i == 0 {
                    format!("{c:<width$}", width = w[i])
                } else {
                    format!("{c:>width$}", width = w[i])
                }
            })
            .collect::<Vec<_>>()
            .join("  ")
    };
    let mut s = String::new();
    writeln!(s, "{}", line(header)).ok();
    writeln!(
        s,
        "{}",
        w.iter()
            .map(|n| "-".repeat(*n))
            .collect::<Vec<_>>()
            .join("  ")
    )
    .ok();
    for r in rows {
        writeln!(s, "{}", line(r)).ok();
    }
    s
}

fn adapt(r: &AdaptResult) -> String {
    let gradual = r.stream.setting == attune_engine::jobs::adapt::Setting::Gradual;
    let mut header = vec![if gradual {
        "error % (domain-severity)".to_string()
    } else {
        format!("error % (severity {})", r.stream.severity)
    }];
    header.extend(r.methods.iter().map(|m| m.name.clone()));
    let mut rows: Vec<Vec<String>> = r
        .stream
        .domains
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let mut row = vec![if gradual {
                format!("{}-{}", d.name, d.severity)
            } else {
                d.name.clone()
            }];
            row.extend(r.methods.iter().map(|m| pct(m.domains[i].metrics.error)));
            row
        })
        .collect();
    for (label, f) in [
        (
            "mean error %",
            (|m: &attune_engine::jobs::adapt::MeanMetrics| 100.0 * m.error) as fn(&_) -> f64,
        ),
        ("mean NLL", |m| m.nll),
        ("mean Brier", |m| m.brier),
        ("mean ECE %", |m| 100.0 * m.ece),
    ] {
        let mut row = vec![label.to_string()];
        row.extend(r.methods.iter().map(|m| format!("{:.3}", f(&m.mean))));
        rows.push(row);
    }
    if r.methods.iter().any(|m| m.forgetting.is_some()) {
        for (label, f) in [
            (
                "clean error % before",
                (|g: &attune_engine::jobs::adapt::Forgetting| g.before.error) as fn(&_) -> f64,
            ),
            ("clean error % after", |g| g.after.error),
        ] {
            let mut row = vec![label.to_string()];
            row.extend(r.methods.iter().map(|m| match &m.forgetting {
                Some(g) => pct(f(g)),
                None => "-".into(),
            }));
            rows.push(row);
        }
    }
    let mut s = render(&header, &rows);
    for m in &r.methods {
        if let Some(a) = m.collapse.first() {
            writeln!(
                s,
                "{}: COLLAPSE ALARM {} time(s); first at batch {} (error {:.1}% vs source {:.1}% over the window)",
                m.name,
                m.collapse.len(),
                a.step,
                100.0 * a.error,
                100.0 * a.source_error
            )
            .ok();
        }
        if m.counters.skipped_updates > 0 {
            writeln!(
                s,
                "{}: {} updates skipped (non-finite loss)",
                m.name, m.counters.skipped_updates
            )
            .ok();
        }
    }
    s
}

fn evaluate(r: &EvaluateResult) -> String {
    let mut header = vec!["error %".to_string(), "severity".to_string()];
    header.extend(r.checkpoints.iter().map(|c| c.checkpoint.path.clone()));
    let n = r.checkpoints.first().map(|c| c.rows.len()).unwrap_or(0);
    let mut rows: Vec<Vec<String>> = (0..n)
        .map(|i| {
            let r0 = &r.checkpoints[0].rows[i];
            let mut row = vec![r0.domain.clone(), r0.severity.to_string()];
            row.extend(r.checkpoints.iter().map(|c| pct(c.rows[i].metrics.error)));
            row
        })
        .collect();
    if let Some(c0) = r.checkpoints.first() {
        for (i, sm) in c0.by_severity.iter().enumerate() {
            let mut row = vec!["mean of corruptions".to_string(), sm.severity.to_string()];
            row.extend(
                r.checkpoints
                    .iter()
                    .map(|c| pct(c.by_severity[i].mean.error)),
            );
            rows.push(row);
        }
    }
    render(&header, &rows)
}

fn train(r: &TrainResult) -> String {
    let header: Vec<String> = [
        "epoch",
        "lr",
        "train loss",
        "train error %",
        "val error %",
        "val NLL",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let rows: Vec<Vec<String>> = r
        .epochs
        .iter()
        .map(|e| {
            vec![
                e.epoch.to_string(),
                format!("{:.4}", e.lr),
                format!("{:.4}", e.train_loss),
                pct(e.train_error),
                pct(e.val.error),
                format!("{:.4}", e.val.nll),
            ]
        })
        .collect();
    let mut s = render(&header, &rows);
    writeln!(
        s,
        "clean test: error {}%, NLL {:.4}, Brier {:.4}, ECE {}% ({} images); checkpoint {}",
        pct(r.test.error),
        r.test.nll,
        r.test.brier,
        pct(r.test.ece),
        r.test.n,
        r.checkpoint.path
    )
    .ok();
    s
}

pub fn table(r: &JobResult) -> String {
    match r {
        JobResult::Train(t) => train(t),
        JobResult::Adapt(a) => adapt(a),
        JobResult::Evaluate(e) => evaluate(e),
        JobResult::Sample(r) => sample(r),
    }
}

/// pass@k at 1, 2, 4, … and N; then the selection strategies.
fn sample(r: &SampleResult) -> String {
    let mut ks: Vec<usize> = (0..)
        .map(|i| 1usize << i)
        .take_while(|k| *k <= r.n)
        .collect();
    if ks.last() != Some(&r.n) {
        ks.push(r.n);
    }
    let mut header = vec!["problems".to_string()];
    header.extend(ks.iter().map(|k| format!("pass@{k} %")));
    let row = |label: String, curve: &[attune_engine::jobs::sample::PassAtK]| -> Vec<String> {
        let mut v = vec![label];
        v.extend(
            ks.iter()
                .map(|k| curve.get(k - 1).map(|p| pct(p.value)).unwrap_or_default()),
        );
        v
    };
    let mut rows = vec![row(format!("all ({})", r.problems), &r.pass_at_k)];
    for d in &r.by_difficulty {
        rows.push(row(
            format!("difficulty {} ({})", d.difficulty, d.problems),
            &d.pass_at_k,
        ));
    }
    let mut s = render(&header, &rows);
    let header: Vec<String> = ["selection (one answer of N)", "correct", "accuracy %"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let rows: Vec<Vec<String>> = r
        .selection
        .iter()
        .map(|x| {
            vec![
                x.strategy.clone(),
                format!("{}/{}", x.correct, r.problems),
                pct(x.accuracy),
            ]
        })
        .collect();
    s.push('\n');
    s.push_str(&render(&header, &rows));
    writeln!(
        s,
        "{} {} ({}, weights {}, template {}), N = {}; {} prompt + {} generated tokens",
        r.model.arch,
        r.model.path,
        r.model.format,
        r.model.weights,
        r.model.chat_template,
        r.n,
        r.prompt_tokens,
        r.generated_tokens
    )
    .ok();
    s
}
