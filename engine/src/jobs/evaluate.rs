//! `evaluate`: score checkpoints on the clean test split and on corruptions × severities without
//! adapting (eval-mode BatchNorm). This is the table scheduled batch evaluations produce.

use super::adapt::{all_corruptions, MeanMetrics};
use super::stream::{DomainInfo, Source, TestSet};
use super::train::evaluate_set;
use super::{CheckpointRef, Context, Event, JobSpec, Provenance};
use crate::corrupt::Corruption;
use crate::data::Dataset;
use crate::error::{EngineError, Result};
use crate::metrics::Metrics;
use crate::models::Model;
use crate::nn::BnMode;
use candle_core::Device;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvaluateSpec {
    /// Checkpoints to evaluate (each `<name>.safetensors` with its `<name>.json`).
    #[cfg_attr(feature = "schema", schema(value_type = Vec<String>))]
    pub checkpoints: Vec<PathBuf>,
    /// Test data; default: the dataset the first checkpoint was trained on.
    #[serde(default)]
    pub dataset: Option<Dataset>,
    /// Corruptions to evaluate on (default: all 15).
    #[serde(default = "all_corruptions")]
    pub corruptions: Vec<Corruption>,
    /// Severities (default 1–5).
    #[serde(default = "all_severities")]
    pub severities: Vec<u8>,
    /// Also evaluate on the clean test split.
    #[serde(default = "yes")]
    pub clean: bool,
    /// Samples per domain (default: the whole test split).
    #[serde(default)]
    pub n_examples: Option<usize>,
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// Read corrupted images from this directory in the CIFAR-10-C layout instead of generating them.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schema(value_type = Option<String>))]
    pub corrupted_dir: Option<PathBuf>,
}

fn all_severities() -> Vec<u8> {
    vec![1, 2, 3, 4, 5]
}
fn yes() -> bool {
    true
}
fn default_batch() -> usize {
    500
}

impl EvaluateSpec {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(EngineError::InvalidSpec(m));
        if self.checkpoints.is_empty() {
            return bad("checkpoints must list at least one checkpoint".into());
        }
        if let Some(s) = self.severities.iter().find(|s| !(1..=5).contains(*s)) {
            return bad(format!("severities must be 1 to 5, got {s}"));
        }
        if !self.clean && (self.corruptions.is_empty() || self.severities.is_empty()) {
            return bad(
                "nothing to evaluate: clean is false and no corruption × severity is listed".into(),
            );
        }
        if self.batch_size == 0 || self.n_examples == Some(0) {
            return bad("batch_size and n_examples must be ≥ 1".into());
        }
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EvalRow {
    /// `clean` or a corruption name.
    pub domain: String,
    /// 0 for clean.
    pub severity: u8,
    pub metrics: Metrics,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SeverityMean {
    pub severity: u8,
    /// Unweighted mean over the corruptions at this severity.
    pub mean: MeanMetrics,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CheckpointEval {
    pub checkpoint: CheckpointRef,
    pub rows: Vec<EvalRow>,
    pub by_severity: Vec<SeverityMean>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EvaluateResult {
    pub provenance: Provenance,
    pub dataset: Dataset,
    pub domains: Vec<DomainInfo>,
    pub checkpoints: Vec<CheckpointEval>,
}

pub fn run(
    spec: &JobSpec,
    e: &EvaluateSpec,
    device: &Device,
    ctx: &mut Context,
) -> Result<EvaluateResult> {
    let models: Vec<Model> = e
        .checkpoints
        .iter()
        .map(|p| Model::load(p, device))
        .collect::<Result<_>>()?;
    let dataset = match e.dataset {
        Some(d) => d,
        None => models[0].info().dataset.parse::<Dataset>()?,
    };
    let test = TestSet::load(&ctx.data_dir, dataset)?;
    let mut hashes = test.hashes.clone();
    let source = match &e.corrupted_dir {
        Some(d) => Source::Directory(d),
        None => Source::Generate,
    };
    let mut plan: Vec<(Option<Corruption>, u8)> = vec![];
    if e.clean {
        plan.push((None, 0));
    }
    for s in &e.severities {
        for c in &e.corruptions {
            plan.push((Some(*c), *s));
        }
    }
    let mut rows: Vec<Vec<EvalRow>> = vec![vec![]; models.len()];
    let mut domains = vec![];
    ctx.observer.event(Event::Phase {
        label: format!("evaluate {} checkpoint(s)", models.len()),
        total: plan.len() as u64,
    });
    for (k, (c, s)) in plan.iter().enumerate() {
        ctx.cancel.check()?;
        let d = test.domain(*c, *s, spec.seed, e.n_examples, &source, &mut hashes)?;
        for (mi, m) in models.iter().enumerate() {
            let metrics = evaluate_set(m, &d.images, e.batch_size, BnMode::Eval)?.finish();
            ctx.observer.event(Event::Metric {
                series: format!("checkpoint-{mi}"),
                step: k as u64,
                values: BTreeMap::from([
                    ("error".into(), metrics.error),
                    ("nll".into(), metrics.nll),
                    ("brier".into(), metrics.brier),
                    ("ece".into(), metrics.ece),
                    ("severity".into(), *s as f64),
                ]),
            });
            rows[mi].push(EvalRow {
                domain: d.name.clone(),
                severity: *s,
                metrics,
            });
        }
        domains.push(d.info());
        ctx.observer.event(Event::Advance { done: k as u64 + 1 });
    }
    ctx.observer.event(Event::PhaseEnd {
        summary: format!("evaluated {} domains", plan.len()),
    });
    let mut out = vec![];
    for (p, rows) in e.checkpoints.iter().zip(rows) {
        let by_severity = e
            .severities
            .iter()
            .map(|s| SeverityMean {
                severity: *s,
                mean: MeanMetrics::of(
                    &rows
                        .iter()
                        .filter(|r| r.severity == *s)
                        .map(|r| r.metrics)
                        .collect::<Vec<_>>(),
                ),
            })
            .collect();
        out.push(CheckpointEval {
            checkpoint: CheckpointRef::of(p, &p.display().to_string())?,
            rows,
            by_severity,
        });
    }
    Ok(EvaluateResult {
        provenance: Provenance::new(spec, hashes),
        dataset,
        domains,
        checkpoints: out,
    })
}
