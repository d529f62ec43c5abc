//! `adapt`: run one or more test-time adaptation methods over the same seeded shifted stream and
//! compare them. Online metrics: each batch is predicted by the method as it stands when the batch
//! arrives (for adapting methods, from the forward pass that also computes its update), and the
//! predictions are scored per batch, per domain and over the whole stream.
//!
//! The stream is built once per job from the setting (`continual`, `reset_each_shift`,
//! `gradual`, `mixed_domains`, `correlated`, `mixed_domains_correlated`) and every method sees
//! exactly the same batches. Per-domain metrics are computed per sample, so they exist for mixed
//! streams too. Forgetting (accuracy on clean test data before and after the stream) and a
//! collapse alarm (running error above the source model's by a margin) are part of every result.

use super::stream::{Domain, DomainInfo, Source, TestSet};
use super::{images_to_tensor, CheckpointRef, Context, Event, JobSpec, Provenance};
use crate::corrupt::Corruption;
use crate::data::{self, Dataset, ImageSet, Split};
use crate::error::{EngineError, Result};
use crate::methods::{self, Counters, Method, MethodEnv, MethodSpec};
use crate::metrics::{Accumulator, Metrics};
use crate::models::Model;
use crate::nn::BnMode;
use candle_core::{Device, Tensor};
use rand::seq::SliceRandom;
use rand_distr::{Distribution, Gamma};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// How the stream is presented to the methods (the reference libraries' names).
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Setting {
    /// Domains one after another; methods never reset (the reference libraries' default).
    Continual,
    /// Methods are reset to the source model before each domain.
    ResetEachShift,
    /// Severity changes gradually: the first corruption at 5, 4, 3, 2, 1, every later one at
    /// 1, 2, 3, 4, 5, 4, 3, 2, 1; each step is a domain of `n_examples` images.
    Gradual,
    /// All domains shuffled into one stream.
    MixedDomains,
    /// Each domain's samples ordered by label (`dirichlet_delta` = 0) or grouped by a
    /// Dirichlet(δ) draw of class proportions per slot.
    Correlated,
    /// All domains shuffled together, then label-correlated as `correlated`.
    MixedDomainsCorrelated,
}

impl Setting {
    fn mixed(self) -> bool {
        matches!(
            self,
            Setting::MixedDomains | Setting::MixedDomainsCorrelated
        )
    }
    fn correlated(self) -> bool {
        matches!(self, Setting::Correlated | Setting::MixedDomainsCorrelated)
    }
}

#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdaptSpec {
    /// Source checkpoint (`<name>.safetensors`, with its `<name>.json` beside it).
    #[cfg_attr(feature = "schema", schema(value_type = String))]
    pub model: PathBuf,
    /// Test data; default: the dataset the model was trained on.
    #[serde(default)]
    pub dataset: Option<Dataset>,
    /// Corruptions, in stream order (default: all 15, in the order of CIFAR-10-C).
    #[serde(default = "all_corruptions")]
    pub corruptions: Vec<Corruption>,
    /// Severity 1–5 of every domain (ignored by `gradual`, which walks the severities).
    #[serde(default = "default_severity")]
    pub severity: u8,
    #[serde(default = "default_setting")]
    pub setting: Setting,
    /// Label correlation of `correlated` settings: 0 sorts by label; δ > 0 splits each class
    /// over C slots with Dirichlet(δ) proportions (smaller δ, stronger correlation).
    #[serde(default)]
    pub dirichlet_delta: f64,
    /// Reset every method before every batch.
    #[serde(default)]
    pub episodic: bool,
    /// Reset every method after this many batches (RDumb uses 1000); none by default.
    #[serde(default)]
    pub reset_every: Option<usize>,
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
    #[cfg_attr(feature = "schema", schema(value_type = Option<String>))]
    pub corrupted_dir: Option<PathBuf>,
    /// Save each weight-adapting method's final model in the output folder.
    #[serde(default = "yes")]
    pub save_checkpoints: bool,
    /// Clean test images scored before and after the stream for forgetting (0 turns it off;
    /// default: `n_examples`, else the whole test split).
    #[serde(default)]
    pub forgetting_examples: Option<usize>,
    /// Raise the collapse alarm when a method's error over the last `collapse_window` batches
    /// exceeds the source model's on the same batches by more than this (0.1 = 10 points).
    #[serde(default = "default_margin")]
    pub collapse_margin: f64,
    #[serde(default = "default_window")]
    pub collapse_window: usize,
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
fn default_margin() -> f64 {
    0.1
}
fn default_window() -> usize {
    10
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
        if !(self.dirichlet_delta.is_finite() && self.dirichlet_delta >= 0.0) {
            return bad(format!(
                "dirichlet_delta must be ≥ 0, got {}",
                self.dirichlet_delta
            ));
        }
        if self.dirichlet_delta > 0.0 && !self.setting.correlated() {
            return bad(
                "dirichlet_delta needs setting = correlated or mixed_domains_correlated".into(),
            );
        }
        if self.reset_every == Some(0) || self.collapse_window == 0 {
            return bad("reset_every and collapse_window must be ≥ 1".into());
        }
        if !(self.collapse_margin.is_finite() && self.collapse_margin >= 0.0) {
            return bad(format!(
                "collapse_margin must be ≥ 0, got {}",
                self.collapse_margin
            ));
        }
        for m in &self.methods {
            m.validate()?;
        }
        Ok(())
    }

    /// The (corruption, severity) domains of the stream, in order.
    pub fn domain_list(&self) -> Vec<(Corruption, u8)> {
        match self.setting {
            Setting::Gradual => {
                let mut v = vec![];
                for (i, c) in self.corruptions.iter().enumerate() {
                    let sev: &[u8] = if i == 0 {
                        &[5, 4, 3, 2, 1]
                    } else {
                        &[1, 2, 3, 4, 5, 4, 3, 2, 1]
                    };
                    v.extend(sev.iter().map(|s| (*c, *s)));
                }
                v
            }
            _ => self
                .corruptions
                .iter()
                .map(|c| (*c, self.severity))
                .collect(),
        }
    }
}

/// Scores of one batch in the stream.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BatchRecord {
    /// Index of the segment in `stream.segments` (a domain, or the one mixed segment).
    pub segment: usize,
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

/// Clean-data metrics of a method before and after the stream (no adaptation while scoring).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Forgetting {
    pub before: Metrics,
    pub after: Metrics,
    /// after.error − before.error: how much clean accuracy the adaptation cost.
    pub error_increase: f64,
}

/// The running error of a method exceeded the source model's by more than the margin.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct CollapseAlarm {
    /// First batch (stream step) of this alarm.
    pub step: usize,
    /// Error of the method and of the source model over the window ending at `step`.
    pub error: f64,
    pub source_error: f64,
    /// Batches for which the alarm stayed raised.
    pub batches: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MethodResult {
    /// Display name (`tent`, `tent+crowds`, or `tent-2` when a method appears twice).
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
    /// Resets the job's setting applied (episodic, reset_every, reset_each_shift).
    pub resets: u64,
    pub forgetting: Option<Forgetting>,
    pub collapse: Vec<CollapseAlarm>,
    /// The adapted model at the end of the stream (weight-adapting methods).
    pub checkpoint: Option<CheckpointRef>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SegmentInfo {
    pub name: String,
    pub n: usize,
    pub batches: usize,
}

/// Clean samples given to methods that need source data (EATA's Fisher information).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CleanSamples {
    pub split: String,
    pub n: usize,
    /// sha256 of the training-split indices used (little-endian u32s).
    pub indices_sha256: String,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StreamInfo {
    pub dataset: Dataset,
    pub setting: Setting,
    pub severity: u8,
    pub batch_size: usize,
    pub domains: Vec<DomainInfo>,
    /// Runs of consecutive batches: one per domain, or a single `mixed` one.
    pub segments: Vec<SegmentInfo>,
    /// File in the output folder listing every domain's sample indices.
    pub samples_file: String,
    /// File listing the stream order as [domain, position in domain] per sample, when it is
    /// not simply the domains one after another (mixed and correlated settings).
    pub order_file: Option<String>,
    pub clean_samples: Option<CleanSamples>,
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
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    specs
        .iter()
        .map(|s| {
            let label = s.label();
            let k = seen.entry(label.clone()).or_insert(0);
            *k += 1;
            if *k == 1 {
                label
            } else {
                format!("{label}-{k}")
            }
        })
        .collect()
}

/// One sample of the stream: (domain index, position within that domain).
type Slot = (usize, usize);

struct Segment {
    name: String,
    items: Vec<Slot>,
}

/// Reorder `items` by label: stable sort (δ = 0), or split every class over C slots with
/// Dirichlet(δ) proportions, shuffle each slot and concatenate the slots (NOTE/RoTTA-style).
fn correlate(
    items: Vec<Slot>,
    label: impl Fn(Slot) -> usize,
    classes: usize,
    delta: f64,
    rng: &mut rand_chacha::ChaCha8Rng,
) -> Result<Vec<Slot>> {
    if delta == 0.0 {
        let mut v = items;
        v.sort_by_key(|s| label(*s));
        return Ok(v);
    }
    let gamma = Gamma::new(delta, 1.0)
        .map_err(|e| EngineError::InvalidSpec(format!("dirichlet_delta: {e}")))?;
    let mut by_class: Vec<Vec<Slot>> = vec![vec![]; classes];
    for s in items {
        by_class[label(s)].push(s);
    }
    let mut slots: Vec<Vec<Slot>> = vec![vec![]; classes];
    for members in by_class {
        let g: Vec<f64> = (0..classes).map(|_| gamma.sample(rng)).collect();
        let total: f64 = g.iter().sum();
        let n = members.len();
        let mut start = 0usize;
        let mut cum = 0.0;
        for (k, gk) in g.iter().enumerate() {
            cum += gk / total.max(f64::MIN_POSITIVE);
            let end = if k + 1 == classes {
                n
            } else {
                ((cum * n as f64) as usize).min(n)
            };
            slots[k].extend_from_slice(&members[start.min(end)..end]);
            start = end.max(start);
        }
    }
    let mut out = Vec::new();
    for mut s in slots {
        s.shuffle(rng);
        out.extend(s);
    }
    Ok(out)
}

fn build_segments(
    a: &AdaptSpec,
    domains: &[Domain],
    seed: u64,
    classes: usize,
) -> Result<Vec<Segment>> {
    let label = |(d, i): Slot| domains[d].images.labels[i] as usize;
    let mut rng = crate::rng::rng(seed, "stream/setting");
    if a.setting.mixed() {
        let mut items: Vec<Slot> = domains
            .iter()
            .enumerate()
            .flat_map(|(d, dom)| (0..dom.images.len()).map(move |i| (d, i)))
            .collect();
        items.shuffle(&mut rng);
        if a.setting.correlated() {
            items = correlate(items, label, classes, a.dirichlet_delta, &mut rng)?;
        }
        return Ok(vec![Segment {
            name: "mixed".into(),
            items,
        }]);
    }
    domains
        .iter()
        .enumerate()
        .map(|(d, dom)| {
            let mut items: Vec<Slot> = (0..dom.images.len()).map(|i| (d, i)).collect();
            if a.setting.correlated() {
                items = correlate(items, label, classes, a.dirichlet_delta, &mut rng)?;
            }
            let name = if a.setting == Setting::Gradual {
                format!("{}-{}", dom.name, dom.severity)
            } else {
                dom.name.clone()
            };
            Ok(Segment { name, items })
        })
        .collect()
}

fn batch_tensor(domains: &[Domain], slots: &[Slot], device: &Device) -> Result<(Tensor, Vec<u8>)> {
    let d0 = &domains[slots[0].0].images;
    let px = d0.pixels();
    let mut img = Vec::with_capacity(slots.len() * px);
    let mut labels = Vec::with_capacity(slots.len());
    for &(d, i) in slots {
        img.extend_from_slice(domains[d].images.image(i));
        labels.push(domains[d].images.labels[i]);
    }
    Ok((images_to_tensor(&img, d0.height, d0.width, device)?, labels))
}

/// Score a method on clean images without adapting it.
fn clean_metrics(
    m: &mut dyn Method,
    clean: &ImageSet,
    batch: usize,
    classes: usize,
    device: &Device,
) -> Result<Metrics> {
    let mut acc = Accumulator::new();
    let px = clean.pixels();
    for s in (0..clean.len()).step_by(batch) {
        let e = (s + batch).min(clean.len());
        let x = images_to_tensor(
            &clean.images[s * px..e * px],
            clean.height,
            clean.width,
            device,
        )?;
        let logits = match m.predict(&x) {
            Ok(l) => l,
            // A trailing single image for a batch-statistics method: skip it.
            Err(EngineError::InvalidSpec(_)) if e - s == 1 => continue,
            Err(err) => return Err(err),
        };
        acc.add_logits(&logits, classes, &clean.labels[s..e]);
    }
    Ok(acc.finish())
}

struct Tracker {
    per_domain: Vec<Accumulator>,
    overall: Accumulator,
    batches: Vec<BatchRecord>,
    window: std::collections::VecDeque<(usize, usize, usize)>,
    alarms: Vec<CollapseAlarm>,
    in_alarm: bool,
    resets: u64,
    since_reset: usize,
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
    let classes = source_model.info().num_classes;
    let mut hashes = test.hashes.clone();
    let names = display_names(&a.methods);

    // Clean training-split samples for methods that need source data.
    let need_clean = a
        .methods
        .iter()
        .map(|m| m.clean_samples())
        .max()
        .unwrap_or(0);
    let (clean_train, clean_info) = if need_clean > 0 {
        let (train, h) = data::load(&ctx.data_dir, dataset, Split::Train)?;
        for (k, v) in h {
            hashes.insert(k, v);
        }
        let mut idx: Vec<usize> = (0..train.len()).collect();
        idx.shuffle(&mut crate::rng::rng(spec.seed, "adapt/clean-samples"));
        idx.truncate(need_clean);
        let bytes: Vec<u8> = idx.iter().flat_map(|i| (*i as u32).to_le_bytes()).collect();
        let info = CleanSamples {
            split: "train".into(),
            n: idx.len(),
            indices_sha256: data::datasets::sha256_hex(&bytes),
        };
        (Some(train.select(&idx)), Some(info))
    } else {
        (None, None)
    };
    let load_source = || Model::load(&a.model, device);
    let env = MethodEnv {
        load_source: &load_source,
        clean: clean_train.as_ref(),
        batch_size: a.batch_size,
        seed: spec.seed,
    };
    let mut runners: Vec<Box<dyn Method>> = Vec::with_capacity(a.methods.len());
    for m in &a.methods {
        runners.push(methods::build(m, Model::load(&a.model, device)?, &env)?);
    }
    // The source model scores every batch for the collapse alarm.
    let reference = source_model;

    let source = match &a.corrupted_dir {
        Some(d) => Source::Directory(d),
        None => Source::Generate,
    };
    let list = a.domain_list();
    ctx.log(format!(
        "{} domains × {} methods on {dataset}, batch {}, {:?}{}",
        list.len(),
        runners.len(),
        a.batch_size,
        a.setting,
        if a.setting == Setting::Gradual {
            String::new()
        } else {
            format!(", severity {}", a.severity)
        }
    ));
    let mut domains = Vec::with_capacity(list.len());
    for (c, s) in &list {
        ctx.cancel.check()?;
        domains.push(test.domain(Some(*c), *s, spec.seed, a.n_examples, &source, &mut hashes)?);
    }
    let segments = build_segments(a, &domains, spec.seed, classes)?;

    // Forgetting: clean test images scored before the stream.
    let n_forget = a
        .forgetting_examples
        .or(a.n_examples)
        .unwrap_or(test.set.len())
        .min(test.set.len());
    let clean_test = if n_forget > 0 {
        let d = test.domain(None, 0, spec.seed, Some(n_forget), &source, &mut hashes)?;
        Some(d.images)
    } else {
        None
    };
    let mut before = vec![];
    if let Some(ct) = &clean_test {
        for m in runners.iter_mut() {
            before.push(clean_metrics(
                m.as_mut(),
                ct,
                a.batch_size,
                classes,
                device,
            )?);
        }
    }

    let mut trackers: Vec<Tracker> = (0..runners.len())
        .map(|_| Tracker {
            per_domain: (0..domains.len()).map(|_| Accumulator::new()).collect(),
            overall: Accumulator::new(),
            batches: vec![],
            window: Default::default(),
            alarms: vec![],
            in_alarm: false,
            resets: 0,
            since_reset: 0,
        })
        .collect();
    let mut step0 = 0usize;
    let mut segment_info = vec![];
    for (si, seg) in segments.iter().enumerate() {
        ctx.cancel.check()?;
        let chunks: Vec<&[Slot]> = seg.items.chunks(a.batch_size).collect();
        let nb = chunks.len();
        ctx.observer.event(Event::Phase {
            label: format!("{} ({}/{})", seg.name, si + 1, segments.len()),
            total: (nb * runners.len()) as u64,
        });
        let batches: Vec<(Tensor, Vec<u8>)> = chunks
            .iter()
            .map(|c| batch_tensor(&domains, c, device))
            .collect::<Result<_>>()?;
        // Source predictions of every batch, for the collapse alarm.
        let source_errors: Vec<(usize, usize)> = batches
            .iter()
            .map(|(x, y)| {
                let l = methods::host(&reference.forward(x, BnMode::Eval)?)?;
                let mut acc = Accumulator::new();
                acc.add_logits(&l, classes, y);
                let m = acc.finish();
                Ok(((m.error * m.n as f64).round() as usize, m.n))
            })
            .collect::<Result<_>>()?;
        let mut summary = vec![];
        for (mi, m) in runners.iter_mut().enumerate() {
            let t = &mut trackers[mi];
            if a.setting == Setting::ResetEachShift && si > 0 {
                m.reset()?;
                t.resets += 1;
                t.since_reset = 0;
            }
            let mut seg_acc = Accumulator::new();
            for (b, ((x, labels), chunk)) in batches.iter().zip(&chunks).enumerate() {
                ctx.cancel.check()?;
                if a.episodic || a.reset_every.is_some_and(|r| t.since_reset >= r) {
                    if t.since_reset > 0 {
                        m.reset()?;
                        t.resets += 1;
                    }
                    t.since_reset = 0;
                }
                let out = m.adapt_and_predict(x)?;
                t.since_reset += 1;
                let mut acc = Accumulator::new();
                acc.add_logits(&out.logits, classes, labels);
                for (k, &(d, _)) in chunk.iter().enumerate() {
                    t.per_domain[d].add_logits(
                        &out.logits[k * classes..(k + 1) * classes],
                        classes,
                        &labels[k..k + 1],
                    );
                }
                seg_acc.merge(&acc);
                let bm = acc.finish();
                let rec = BatchRecord {
                    segment: si,
                    step: step0 + b,
                    n: bm.n,
                    error: bm.error,
                    nll: bm.nll,
                    brier: bm.brier,
                    ece: bm.ece,
                };
                // Collapse alarm over the last `collapse_window` batches.
                let wrong = (bm.error * bm.n as f64).round() as usize;
                t.window.push_back((wrong, source_errors[b].0, bm.n));
                if t.window.len() > a.collapse_window {
                    t.window.pop_front();
                }
                let n: usize = t.window.iter().map(|w| w.2).sum();
                let err = t.window.iter().map(|w| w.0).sum::<usize>() as f64 / n as f64;
                let serr = t.window.iter().map(|w| w.1).sum::<usize>() as f64 / n as f64;
                if t.window.len() == a.collapse_window && err > serr + a.collapse_margin {
                    if t.in_alarm {
                        if let Some(al) = t.alarms.last_mut() {
                            al.batches += 1;
                        }
                    } else {
                        t.in_alarm = true;
                        t.alarms.push(CollapseAlarm {
                            step: rec.step,
                            error: err,
                            source_error: serr,
                            batches: 1,
                        });
                        ctx.observer.event(Event::Log {
                            level: super::LogLevel::Warn,
                            message: format!(
                                "collapse alarm: {} at batch {}: error {:.1}% over the last {} batches, source {:.1}%",
                                names[mi],
                                rec.step,
                                100.0 * err,
                                a.collapse_window,
                                100.0 * serr
                            ),
                        });
                    }
                } else {
                    t.in_alarm = false;
                }
                ctx.observer.event(Event::Metric {
                    series: names[mi].clone(),
                    step: rec.step as u64,
                    values: BTreeMap::from([
                        ("error".into(), rec.error),
                        ("nll".into(), rec.nll),
                        ("brier".into(), rec.brier),
                        ("ece".into(), rec.ece),
                        ("segment".into(), si as f64),
                    ]),
                });
                t.batches.push(rec);
                ctx.observer.event(Event::Advance {
                    done: (mi * nb + b + 1) as u64,
                });
            }
            let sm = seg_acc.finish();
            summary.push(format!("{} {:.1}%", names[mi], 100.0 * sm.error));
            t.overall.merge(&seg_acc);
        }
        step0 += nb;
        ctx.observer.event(Event::PhaseEnd {
            summary: format!("{}: {}", seg.name, summary.join(", ")),
        });
        segment_info.push(SegmentInfo {
            name: seg.name.clone(),
            n: seg.items.len(),
            batches: nb,
        });
    }

    let out_dir = ctx.ensure_out_dir()?.to_path_buf();
    let samples_file = "samples.json".to_string();
    let samples: BTreeMap<String, &Vec<usize>> = domains
        .iter()
        .enumerate()
        .map(|(di, d)| {
            let key = if a.setting == Setting::Gradual {
                format!("{:02}-{}-{}", di, d.name, d.severity)
            } else {
                format!("{:02}-{}", di, d.name)
            };
            (key, &d.indices)
        })
        .collect();
    let p = out_dir.join(&samples_file);
    std::fs::write(&p, serde_json::to_string(&samples)?).map_err(|e| EngineError::io(&p, e))?;
    let order_file = if a.setting.mixed() || a.setting.correlated() {
        let f = "order.json".to_string();
        let order: Vec<&Vec<Slot>> = segments.iter().map(|s| &s.items).collect();
        let p = out_dir.join(&f);
        std::fs::write(&p, serde_json::to_string(&order)?).map_err(|e| EngineError::io(&p, e))?;
        Some(f)
    } else {
        None
    };

    let mut results = vec![];
    for (mi, (m, t)) in runners.iter_mut().zip(trackers).enumerate() {
        let forgetting = match &clean_test {
            Some(ct) => {
                let after = clean_metrics(m.as_mut(), ct, a.batch_size, classes, device)?;
                Some(Forgetting {
                    before: before[mi],
                    after,
                    error_increase: after.error - before[mi].error,
                })
            }
            None => None,
        };
        let adapts = m.adapted_parameters();
        let name = &names[mi];
        let checkpoint = if a.save_checkpoints && !adapts.is_empty() {
            let file = format!("adapted-{name}");
            let st = m.model().save(&out_dir.join(&file))?;
            Some(CheckpointRef::of(&st, &format!("{file}.safetensors"))?)
        } else {
            None
        };
        let dms: Vec<DomainMetrics> = domains
            .iter()
            .zip(&t.per_domain)
            .map(|(d, acc)| DomainMetrics {
                domain: d.name.clone(),
                severity: d.severity,
                metrics: acc.finish(),
            })
            .collect();
        let mean = MeanMetrics::of(&dms.iter().map(|d| d.metrics).collect::<Vec<_>>());
        results.push(MethodResult {
            name: name.clone(),
            spec: a.methods[mi].clone(),
            adapts,
            domains: dms,
            mean,
            overall: t.overall.finish(),
            batches: t.batches,
            counters: m.counters(),
            resets: t.resets,
            forgetting,
            collapse: t.alarms,
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
            domains: domains.iter().map(|d| d.info()).collect(),
            segments: segment_info,
            samples_file,
            order_file,
            clean_samples: clean_info,
        },
        methods: results,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(setting: Setting) -> AdaptSpec {
        AdaptSpec {
            model: "m".into(),
            dataset: None,
            corruptions: vec![Corruption::Fog, Corruption::Contrast, Corruption::Snow],
            severity: 3,
            setting,
            dirichlet_delta: 0.0,
            episodic: false,
            reset_every: None,
            methods: vec![MethodSpec::Source],
            batch_size: 4,
            n_examples: None,
            corrupted_dir: None,
            save_checkpoints: false,
            forgetting_examples: None,
            collapse_margin: 0.1,
            collapse_window: 10,
        }
    }

    #[test]
    fn gradual_walks_the_severities_as_the_reference_library() {
        let d = spec(Setting::Gradual).domain_list();
        let sev: Vec<u8> = d.iter().map(|x| x.1).collect();
        assert_eq!(
            sev,
            [5, 4, 3, 2, 1, 1, 2, 3, 4, 5, 4, 3, 2, 1, 1, 2, 3, 4, 5, 4, 3, 2, 1]
        );
        assert!(d[..5].iter().all(|x| x.0 == Corruption::Fog));
        assert!(d[14..].iter().all(|x| x.0 == Corruption::Snow));
        let c = spec(Setting::Continual).domain_list();
        assert_eq!(
            c,
            [
                (Corruption::Fog, 3),
                (Corruption::Contrast, 3),
                (Corruption::Snow, 3)
            ]
        );
    }

    fn labels() -> Vec<usize> {
        (0..300).map(|i| (i * 7) % 10).collect()
    }

    #[test]
    fn correlated_with_delta_zero_sorts_by_label_keeping_the_order_within_a_class() {
        let l = labels();
        let items: Vec<Slot> = (0..300).map(|i| (0, i)).collect();
        let mut rng = crate::rng::rng(0, "t");
        let out = correlate(items, |s| l[s.1], 10, 0.0, &mut rng).unwrap();
        assert_eq!(out.len(), 300);
        assert!(out.windows(2).all(|w| l[w[0].1] <= l[w[1].1]));
        let zeros: Vec<usize> = out.iter().filter(|s| l[s.1] == 0).map(|s| s.1).collect();
        assert!(zeros.windows(2).all(|w| w[0] < w[1]), "stable");
    }

    #[test]
    fn dirichlet_grouping_keeps_every_sample_and_concentrates_labels() {
        let l = labels();
        let items: Vec<Slot> = (0..300).map(|i| (0, i)).collect();
        // Distinct labels per window of 30 samples: i.i.d. ≈ 10, small δ ≈ few.
        let distinct = |v: &[Slot]| {
            v.chunks(30)
                .map(|c| {
                    let mut s: Vec<usize> = c.iter().map(|x| l[x.1]).collect();
                    s.sort();
                    s.dedup();
                    s.len() as f64
                })
                .sum::<f64>()
                / 10.0
        };
        let mut rng = crate::rng::rng(1, "t");
        let mut iid = items.clone();
        iid.shuffle(&mut rng);
        let small = correlate(iid.clone(), |s| l[s.1], 10, 0.01, &mut rng).unwrap();
        let large = correlate(iid.clone(), |s| l[s.1], 10, 100.0, &mut rng).unwrap();
        let mut sorted = small.clone();
        sorted.sort();
        assert_eq!(sorted, items, "a permutation of the input");
        assert!(distinct(&iid) > 8.0);
        assert!(distinct(&small) < 4.0, "δ = 0.01: {}", distinct(&small));
        assert!(distinct(&large) > 7.0, "δ = 100: {}", distinct(&large));
    }

    #[test]
    fn settings_validate_their_knobs() {
        let mut s = spec(Setting::Continual);
        s.dirichlet_delta = 0.1;
        assert!(s
            .validate()
            .unwrap_err()
            .to_string()
            .contains("dirichlet_delta needs setting"));
        let mut s = spec(Setting::Correlated);
        s.dirichlet_delta = -1.0;
        assert!(s
            .validate()
            .unwrap_err()
            .to_string()
            .contains("dirichlet_delta must be ≥ 0"));
        let mut s = spec(Setting::Continual);
        s.reset_every = Some(0);
        assert!(s
            .validate()
            .unwrap_err()
            .to_string()
            .contains("reset_every"));
    }
}
