//! `adapt`: run one or more test-time adaptation methods over the same seeded shifted stream and
//! compare them. Online metrics: each batch is predicted by the method as it stands when the batch
//! arrives (for adapting methods, from the forward pass that also computes its update), and the
//! predictions are scored per batch, per domain and over the whole stream.

use super::stream::{Domain, DomainInfo, Source, TestSet};
use super::{images_to_tensor, CheckpointRef, Context, Event, JobSpec, Provenance};
use crate::corrupt::Corruption;
use crate::data::Dataset;
use crate::error::{EngineError, Result};
use crate::methods::{self, Counters, MethodSpec};
use crate::metrics::{Accumulator, Metrics};
use crate::models::Model;
use candle_core::Device;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// How the stream is presented to the methods.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Setting {
    /// Domains one after another; methods never reset (the reference libraries' default).
    Continual,
    /// Methods are reset to the source model before each domain.
    ResetEachShift,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdaptSpec {
    /// Source checkpoint (`<name>.safetensors`, with its `<name>.json` beside it).
    pub model: PathBuf,
    /// Test data; default: the dataset the model was trained on.
    #[serde(default)]
    pub dataset: Option<Dataset>,
    /// Corruptions, in stream order (default: all 15, in the order of CIFAR-10-C).
    #[serde(default = "all_corruptions")]
    pub corruptions: Vec<Corruption>,
    /// Severity 1–5 of every domain.
    #[serde(default = "default_severity")]
    pub severity: u8,
    #[serde(default = "default_setting")]
    pub setting: Setting,
    /// Methods to compare, each a name or a table with its hyperparameters.
    #[serde(deserialize_with = "methods::deserialize_methods")]
    pub methods: Vec<MethodSpec>,
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// Samples per domain (default: the whole test split).
    #[serde(default)]
    pub n_examples: Option<usize>,
    /// Read corrupted images from this directory in the CIFAR-10-C layout instead of generating them.
    #[serde(default)]
    pub corrupted_dir: Option<PathBuf>,
    /// Save each weight-adapting method's final model in the output folder.
    #[serde(default = "yes")]
    pub save_checkpoints: bool,
}

pub fn all_corruptions() -> Vec<Corruption> {
    Corruption::ALL.to_vec()
}
fn default_severity() -> u8 {
    5
}
fn default_setting() -> Setting {
    Setting::Continual
}
fn default_batch() -> usize {
    200
}
fn yes() -> bool {
    true
}

impl AdaptSpec {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(EngineError::InvalidSpec(m));
        if !(1..=5).contains(&self.severity) {
            return bad(format!("severity must be 1 to 5, got {}", self.severity));
        }
        if self.methods.is_empty() {
            return bad(format!(
                "methods must name at least one of: {}",
                methods::METHOD_NAMES.join(", ")
            ));
        }
        if self.corruptions.is_empty() {
            return bad("corruptions must list at least one corruption".into());
        }
        if self.batch_size == 0 || self.n_examples == Some(0) {
            return bad("batch_size and n_examples must be ≥ 1".into());
        }
        for m in &self.methods {
            m.validate()?;
        }
        Ok(())
    }
}

/// Scores of one batch in the stream.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BatchRecord {
    /// Index of the domain in `stream.domains`.
    pub domain: usize,
    /// Batch index within the whole stream.
    pub step: usize,
    pub n: usize,
    pub error: f64,
    pub nll: f64,
    pub brier: f64,
    pub ece: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DomainMetrics {
    pub domain: String,
    pub severity: u8,
    pub metrics: Metrics,
}

/// Unweighted mean over domains (the number the TTA literature reports).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct MeanMetrics {
    pub error: f64,
    pub nll: f64,
    pub brier: f64,
    pub ece: f64,
}

impl MeanMetrics {
    pub fn of(ms: &[Metrics]) -> Self {
        let n = ms.len().max(1) as f64;
        Self {
            error: ms.iter().map(|m| m.error).sum::<f64>() / n,
            nll: ms.iter().map(|m| m.nll).sum::<f64>() / n,
            brier: ms.iter().map(|m| m.brier).sum::<f64>() / n,
            ece: ms.iter().map(|m| m.ece).sum::<f64>() / n,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MethodResult {
    /// Display name (`tent`, or `tent-2` when a method appears twice).
    pub name: String,
    pub spec: MethodSpec,
    /// Parameters the method adapts.
    pub adapts: Vec<String>,
    pub domains: Vec<DomainMetrics>,
    pub mean: MeanMetrics,
    /// All samples pooled.
    pub overall: Metrics,
    pub batches: Vec<BatchRecord>,
    pub counters: Counters,
    /// The adapted model at the end of the stream (weight-adapting methods).
    pub checkpoint: Option<CheckpointRef>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StreamInfo {
    pub dataset: Dataset,
    pub setting: Setting,
    pub severity: u8,
    pub batch_size: usize,
    pub domains: Vec<DomainInfo>,
    /// File in the output folder listing every domain's sample indices in stream order.
    pub samples_file: String,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AdaptResult {
    pub provenance: Provenance,
    pub model: CheckpointRef,
    pub stream: StreamInfo,
    pub methods: Vec<MethodResult>,
}

/// Display names, suffixed when a method appears more than once.
pub fn display_names(specs: &[MethodSpec]) -> Vec<String> {
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    specs
        .iter()
        .map(|s| {
            let k = seen.entry(s.name()).or_insert(0);
            *k += 1;
            if *k == 1 {
                s.name().to_string()
            } else {
                format!("{}-{}", s.name(), k)
            }
        })
        .collect()
}

pub fn run(
    spec: &JobSpec,
    a: &AdaptSpec,
    device: &Device,
    ctx: &mut Context,
) -> Result<AdaptResult> {
    let source_model = Model::load(&a.model, device)?;
    let model_ref = CheckpointRef::of(&a.model, &a.model.display().to_string())?;
    let dataset = match a.dataset {
        Some(d) => d,
        None => source_model.info().dataset.parse::<Dataset>()?,
    };
    let test = TestSet::load(&ctx.data_dir, dataset)?;
    if [1, test.set.height, test.set.width] != source_model.info().input {
        return Err(EngineError::InvalidSpec(format!(
            "model input {:?} does not fit {dataset} images (1×{}×{})",
            source_model.info().input,
            test.set.height,
            test.set.width
        )));
    }
    let mut hashes = test.hashes.clone();
    let names = display_names(&a.methods);
    let mut runners = Vec::with_capacity(a.methods.len());
    for m in &a.methods {
        runners.push(methods::build(m, Model::load(&a.model, device)?)?);
    }
    drop(source_model);
    let classes = runners[0].model().info().num_classes;
    let source = match &a.corrupted_dir {
        Some(d) => Source::Directory(d),
        None => Source::Generate,
    };
    let mut domains_info = vec![];
    let mut samples = BTreeMap::new();
    let mut per_method: Vec<(Vec<DomainMetrics>, Accumulator, Vec<BatchRecord>)> = (0..runners
        .len())
        .map(|_| (vec![], Accumulator::new(), vec![]))
        .collect();
    let mut step0 = 0usize;
    ctx.log(format!(
        "{} domains × {} methods on {dataset} severity {}, batch {}, {:?}",
        a.corruptions.len(),
        runners.len(),
        a.severity,
        a.batch_size,
        a.setting
    ));
    for (di, c) in a.corruptions.iter().enumerate() {
        ctx.cancel.check()?;
        let domain: Domain = test.domain(
            Some(*c),
            a.severity,
            spec.seed,
            a.n_examples,
            &source,
            &mut hashes,
        )?;
        let set = &domain.images;
        let nb = set.len().div_ceil(a.batch_size);
        ctx.observer.event(Event::Phase {
            label: format!("{} ({}/{})", domain.name, di + 1, a.corruptions.len()),
            total: (nb * runners.len()) as u64,
        });
        let batches: Vec<candle_core::Tensor> = (0..nb)
            .map(|b| {
                let (s, e) = (b * a.batch_size, ((b + 1) * a.batch_size).min(set.len()));
                images_to_tensor(
                    &set.images[s * set.pixels()..e * set.pixels()],
                    set.height,
                    set.width,
                    device,
                )
            })
            .collect::<Result<_>>()?;
        let mut summary = vec![];
        for (mi, m) in runners.iter_mut().enumerate() {
            if a.setting == Setting::ResetEachShift {
                m.reset()?;
            }
            let mut dom_acc = Accumulator::new();
            for (b, x) in batches.iter().enumerate() {
                ctx.cancel.check()?;
                let out = m.adapt_and_predict(x)?;
                let (s, e) = (b * a.batch_size, ((b + 1) * a.batch_size).min(set.len()));
                let mut acc = Accumulator::new();
                acc.add_logits(&out.logits, classes, &set.labels[s..e]);
                dom_acc.merge(&acc);
                let bm = acc.finish();
                let rec = BatchRecord {
                    domain: di,
                    step: step0 + b,
                    n: bm.n,
                    error: bm.error,
                    nll: bm.nll,
                    brier: bm.brier,
                    ece: bm.ece,
                };
                ctx.observer.event(Event::Metric {
                    series: names[mi].clone(),
                    step: rec.step as u64,
                    values: BTreeMap::from([
                        ("error".into(), rec.error),
                        ("nll".into(), rec.nll),
                        ("brier".into(), rec.brier),
                        ("ece".into(), rec.ece),
                        ("domain".into(), di as f64),
                    ]),
                });
                per_method[mi].2.push(rec);
                ctx.observer.event(Event::Advance {
                    done: (mi * nb + b + 1) as u64,
                });
            }
            let dm = dom_acc.finish();
            summary.push(format!("{} {:.1}%", names[mi], 100.0 * dm.error));
            per_method[mi].1.merge(&dom_acc);
            per_method[mi].0.push(DomainMetrics {
                domain: domain.name.clone(),
                severity: domain.severity,
                metrics: dm,
            });
        }
        step0 += nb;
        ctx.observer.event(Event::PhaseEnd {
            summary: format!("{}: {}", domain.name, summary.join(", ")),
        });
        domains_info.push(domain.info());
        samples.insert(format!("{:02}-{}", di, domain.name), domain.indices.clone());
    }
    let out_dir = ctx.ensure_out_dir()?.to_path_buf();
    let samples_file = "samples.json".to_string();
    let p = out_dir.join(&samples_file);
    std::fs::write(&p, serde_json::to_string(&samples)?).map_err(|e| EngineError::io(&p, e))?;
    let mut results = vec![];
    for ((m, (domains, overall, batches)), (name, ms)) in runners
        .iter()
        .zip(per_method)
        .zip(names.iter().zip(&a.methods))
    {
        let adapts = m.adapted_parameters();
        let checkpoint = if a.save_checkpoints && !adapts.is_empty() {
            let file = format!("adapted-{name}");
            let st = m.model().save(&out_dir.join(&file))?;
            Some(CheckpointRef::of(&st, &format!("{file}.safetensors"))?)
        } else {
            None
        };
        let mean = MeanMetrics::of(&domains.iter().map(|d| d.metrics).collect::<Vec<_>>());
        results.push(MethodResult {
            name: name.clone(),
            spec: ms.clone(),
            adapts,
            domains,
            mean,
            overall: overall.finish(),
            batches,
            counters: m.counters(),
            checkpoint,
        });
    }
    for r in &results {
        if r.counters.skipped_updates > 0 {
            ctx.warn(format!(
                "{}: {} updates skipped because the loss or a gradient was not finite",
                r.name, r.counters.skipped_updates
            ));
        }
    }
    Ok(AdaptResult {
        provenance: Provenance::new(spec, hashes),
        model: model_ref,
        stream: StreamInfo {
            dataset,
            setting: a.setting,
            severity: a.severity,
            batch_size: a.batch_size,
            domains: domains_info,
            samples_file,
        },
        methods: results,
    })
}
