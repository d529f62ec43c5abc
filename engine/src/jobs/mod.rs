//! Job specs and the runner: one definition shared by the CLI, the API and the worker.
//!
//! A spec is a JSON (or TOML) document with a `kind` tag and the common fields `seed`, `device`,
//! `name` and `tags`. Unknown fields are rejected with the list of valid ones. Running a spec
//! needs a [`Context`]: the data directory, an output directory for files (checkpoints, sample
//! lists), an [`Observer`] for progress and metrics, and a [`CancelToken`].

pub mod adapt;
pub mod evaluate;
pub mod sample;
pub mod stream;
pub mod train;

use crate::error::{EngineError, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

pub use adapt::{AdaptResult, AdaptSpec};
pub use evaluate::{EvaluateResult, EvaluateSpec};
pub use sample::{SampleResult, SampleSpec};
pub use train::{TrainResult, TrainSpec};

/// What a job does, with its own fields.
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
// A spec is parsed once per job and moved, never stored in bulk: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
pub enum JobKind {
    /// Train a source model on the clean training split.
    Train(TrainSpec),
    /// Run test-time adaptation methods over a shifted stream.
    Adapt(AdaptSpec),
    /// Evaluate checkpoints on clean and corrupted test data without adapting.
    Evaluate(EvaluateSpec),
    /// Sample N answers per problem from a language model; pass@k and best-of-N.
    Sample(SampleSpec),
}

/// A complete job: common fields plus the kind-specific ones, all at the top level.
#[derive(Clone, Debug, PartialEq)]
pub struct JobSpec {
    /// Human-readable name (optional).
    pub name: Option<String>,
    /// Free-form tags for filtering (optional).
    pub tags: Vec<String>,
    /// Seed for every random choice of the job (default 0).
    pub seed: u64,
    /// `cpu` (default) or `cuda:N`.
    pub device: String,
    pub kind: JobKind,
}

const COMMON_FIELDS: [&str; 4] = ["name", "tags", "seed", "device"];

impl JobSpec {
    /// Parse from a JSON value: common fields are taken out, the rest must be one kind's fields.
    pub fn from_value(mut v: serde_json::Value) -> Result<Self> {
        let obj = v.as_object_mut().ok_or_else(|| {
            EngineError::InvalidSpec("a job spec must be an object with a `kind` field".into())
        })?;
        let take = |obj: &mut serde_json::Map<String, serde_json::Value>, k: &str| obj.remove(k);
        let field_err =
            |k: &str, e: serde_json::Error| EngineError::InvalidSpec(format!("field `{k}`: {e}"));
        let name = match take(obj, "name") {
            None | Some(serde_json::Value::Null) => None,
            Some(v) => Some(serde_json::from_value(v).map_err(|e| field_err("name", e))?),
        };
        let tags = match take(obj, "tags") {
            None => vec![],
            Some(v) => serde_json::from_value(v).map_err(|e| field_err("tags", e))?,
        };
        let seed = match take(obj, "seed") {
            None => 0,
            Some(v) => serde_json::from_value(v).map_err(|e| field_err("seed", e))?,
        };
        let device = match take(obj, "device") {
            None => "cpu".to_string(),
            Some(v) => serde_json::from_value(v).map_err(|e| field_err("device", e))?,
        };
        if !obj.contains_key("kind") {
            return Err(EngineError::InvalidSpec(
                "missing field `kind` (one of: train, adapt, evaluate, sample)".into(),
            ));
        }
        let rest = v.clone();
        let kind: JobKind = serde_json::from_value(v).map_err(|e| {
            let msg = e.to_string();
            // serde names the kind's own fields; the common ones are valid too.
            EngineError::InvalidSpec(if msg.contains("unknown field") {
                format!("{msg} (or a common field: {})", COMMON_FIELDS.join(", "))
            } else if msg.contains("field `") {
                msg
            } else {
                match error_field(&rest) {
                    Some(f) => format!("field `{f}`: {msg}"),
                    None => msg,
                }
            })
        })?;
        let spec = Self {
            name,
            tags,
            seed,
            device,
            kind,
        };
        spec.validate()?;
        Ok(spec)
    }

    pub fn from_json(text: &str) -> Result<Self> {
        let v: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| EngineError::InvalidSpec(format!("not valid JSON: {e}")))?;
        Self::from_value(v)
    }

    /// The spec as one flat JSON object (the form users write).
    pub fn to_value(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(&self.kind).expect("job kinds serialize");
        let obj = v.as_object_mut().expect("job kinds are objects");
        if let Some(n) = &self.name {
            obj.insert("name".into(), n.clone().into());
        }
        obj.insert("tags".into(), self.tags.clone().into());
        obj.insert("seed".into(), self.seed.into());
        obj.insert("device".into(), self.device.clone().into());
        // Stable key order for byte-identical results.
        let sorted: BTreeMap<String, serde_json::Value> = obj.clone().into_iter().collect();
        serde_json::to_value(sorted).expect("map serializes")
    }

    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            JobKind::Train(_) => "train",
            JobKind::Adapt(_) => "adapt",
            JobKind::Evaluate(_) => "evaluate",
            JobKind::Sample(_) => "sample",
        }
    }

    /// Check the spec's values. The device is checked by name only (`cpu`, `cuda:N`), so a
    /// host without that device (an API server, a CPU build) can validate a spec for another.
    pub fn validate(&self) -> Result<()> {
        check_device_name(&self.device)?;
        match &self.kind {
            JobKind::Train(s) => s.validate(),
            JobKind::Adapt(s) => s.validate(),
            JobKind::Evaluate(s) => s.validate(),
            JobKind::Sample(s) => s.validate(),
        }
    }
}

/// The field a kind's deserialization error is about. serde's internally tagged enums lose the
/// field name of type errors (`invalid type: string "x", expected usize`); deserializing the
/// kind's own struct again, tracking the path, finds it.
fn error_field(v: &serde_json::Value) -> Option<String> {
    fn path<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Option<String> {
        serde_path_to_error::deserialize::<_, T>(v)
            .err()
            .map(|e| e.path().to_string())
            .filter(|p| p != ".")
    }
    let mut rest = v.as_object()?.clone();
    let kind = rest.remove("kind")?;
    let rest = serde_json::Value::Object(rest);
    match kind.as_str()? {
        "train" => path::<TrainSpec>(rest),
        "adapt" => path::<AdaptSpec>(rest),
        "evaluate" => path::<EvaluateSpec>(rest),
        "sample" => path::<SampleSpec>(rest),
        _ => None,
    }
}

impl Serialize for JobSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        self.to_value().serialize(s)
    }
}

impl<'de> Deserialize<'de> for JobSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let v = serde_json::Value::deserialize(d)?;
        JobSpec::from_value(v).map_err(serde::de::Error::custom)
    }
}

/// Check that `s` names a device (`cpu` or `cuda:N`) without opening it.
pub fn check_device_name(s: &str) -> Result<()> {
    let cuda = s
        .strip_prefix("cuda:")
        .is_some_and(|n| n.parse::<usize>().is_ok());
    if s == "cpu" || cuda {
        Ok(())
    } else {
        Err(EngineError::InvalidSpec(format!(
            "device must be `cpu` or `cuda:N`, got `{s}`"
        )))
    }
}

/// `cpu` or `cuda:N`, opened (fails when this build or machine lacks the device).
pub fn parse_device(s: &str) -> Result<candle_core::Device> {
    if s == "cpu" {
        return Ok(candle_core::Device::Cpu);
    }
    if let Some(n) = s
        .strip_prefix("cuda:")
        .and_then(|n| n.parse::<usize>().ok())
    {
        return candle_core::Device::new_cuda(n).map_err(|e| {
            EngineError::InvalidSpec(format!(
                "device `{s}` is not available in this build or machine: {e}"
            ))
        });
    }
    Err(EngineError::InvalidSpec(format!(
        "device must be `cpu` or `cuda:N`, got `{s}`"
    )))
}

/// Shared flag checked between batches/steps.
#[derive(Clone, Debug, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst)
    }
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
    pub fn check(&self) -> Result<()> {
        if self.is_cancelled() {
            Err(EngineError::Cancelled)
        } else {
            Ok(())
        }
    }
}

/// What a running job reports.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A unit of work with a known number of steps begins (an epoch, a method on a domain).
    Phase { label: String, total: u64 },
    /// Steps done within the current phase.
    Advance { done: u64 },
    /// The current phase is over; `summary` is one line for a log.
    PhaseEnd { summary: String },
    /// Values of a metric series at a step (e.g. series `tent`, step = batch index in the stream).
    Metric {
        series: String,
        step: u64,
        values: BTreeMap<String, f64>,
    },
    /// A line for the job's log.
    Log { level: LogLevel, message: String },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogLevel {
    Info,
    Warn,
}

pub trait Observer {
    fn event(&mut self, e: Event);
}

/// An observer that ignores everything.
pub struct Quiet;
impl Observer for Quiet {
    fn event(&mut self, _: Event) {}
}

/// Everything a job needs from its host.
pub struct Context<'a> {
    pub data_dir: PathBuf,
    /// Where the job writes files (checkpoints, sample lists). Created if missing.
    pub out_dir: PathBuf,
    pub observer: &'a mut dyn Observer,
    pub cancel: CancelToken,
}

impl Context<'_> {
    pub fn log(&mut self, message: impl Into<String>) {
        self.observer.event(Event::Log {
            level: LogLevel::Info,
            message: message.into(),
        })
    }
    pub fn warn(&mut self, message: impl Into<String>) {
        self.observer.event(Event::Log {
            level: LogLevel::Warn,
            message: message.into(),
        })
    }
    pub fn ensure_out_dir(&self) -> Result<&Path> {
        std::fs::create_dir_all(&self.out_dir).map_err(|e| EngineError::io(&self.out_dir, e))?;
        Ok(&self.out_dir)
    }
}

/// A checkpoint a job read or wrote, identified by content.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckpointRef {
    /// Path as given in the spec (inputs) or relative to the output folder (outputs).
    pub path: String,
    pub sha256: String,
}

impl CheckpointRef {
    pub fn of(path: &Path, shown_as: &str) -> Result<Self> {
        let (st, _) = crate::models::Model::paths(path);
        let bytes = std::fs::read(&st).map_err(|e| EngineError::io(&st, e))?;
        Ok(Self {
            path: shown_as.to_string(),
            sha256: crate::data::datasets::sha256_hex(&bytes),
        })
    }
}

/// What a job produced; serialized as the result JSON.
// Built once per job and moved, never copied in bulk: boxing the variants buys nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum JobResult {
    Train(TrainResult),
    Adapt(AdaptResult),
    Evaluate(EvaluateResult),
    Sample(SampleResult),
}

/// Provenance recorded in every result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    pub engine_version: String,
    /// The full spec, defaults filled in.
    pub spec: serde_json::Value,
    pub seed: u64,
    pub device: String,
    /// sha256 of every data file read, keyed `<dataset>/<file>`.
    pub data_sha256: BTreeMap<String, String>,
}

impl Provenance {
    pub fn new(spec: &JobSpec, data_sha256: BTreeMap<String, String>) -> Self {
        Self {
            engine_version: crate::ENGINE_VERSION.into(),
            spec: spec.to_value(),
            seed: spec.seed,
            device: spec.device.clone(),
            data_sha256,
        }
    }
}

/// Run a job to completion (or error/cancellation).
pub fn run(spec: &JobSpec, ctx: &mut Context) -> Result<JobResult> {
    spec.validate()?;
    let device = parse_device(&spec.device)?;
    match &spec.kind {
        JobKind::Train(t) => Ok(JobResult::Train(train::run(spec, t, &device, ctx)?)),
        JobKind::Adapt(a) => Ok(JobResult::Adapt(adapt::run(spec, a, &device, ctx)?)),
        JobKind::Evaluate(e) => Ok(JobResult::Evaluate(evaluate::run(spec, e, &device, ctx)?)),
        JobKind::Sample(s) => Ok(JobResult::Sample(sample::run(spec, s, &device, ctx)?)),
    }
}

/// Images (u8, N·H·W) → (N, 1, H, W) f32 tensor in [0, 1].
pub fn images_to_tensor(
    images: &[u8],
    h: usize,
    w: usize,
    device: &candle_core::Device,
) -> Result<candle_core::Tensor> {
    let n = images.len() / (h * w);
    let v: Vec<f32> = images.iter().map(|p| *p as f32 / 255.0).collect();
    Ok(candle_core::Tensor::from_vec(v, (n, 1, h, w), device)?)
}
