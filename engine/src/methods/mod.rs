//! Test-time adaptation methods behind one trait, registered by name.
//!
//! A method owns its copy of the model. For each test batch it may adapt (some parameters or
//! statistics) and returns its predictions for that batch; `reset` returns every piece of its
//! state (weights, statistics, optimizer moments, counters of adaptation) to the initial one.

mod frozen;
mod tent;

use crate::error::Result;
use crate::models::Model;
use crate::optim::OptimizerSpec;
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

/// A method and its hyperparameters, as written in a job spec: either a bare name
/// (`"tent"`) or a table (`{ method = "tent", steps = 1, optimizer = { ... } }`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "snake_case", deny_unknown_fields)]
pub enum MethodSpec {
    /// The source model, frozen, BatchNorm with its running (source) statistics.
    Source,
    /// Test-time normalization: BatchNorm with the test batch's statistics (BN-1).
    #[serde(alias = "norm", alias = "bn")]
    NormTest,
    /// TENT: entropy minimization on the BatchNorm affine parameters, batch statistics.
    Tent {
        #[serde(default = "OptimizerSpec::tent_default")]
        optimizer: OptimizerSpec,
        /// Optimizer steps per batch.
        #[serde(default = "one")]
        steps: usize,
    },
}

fn one() -> usize {
    1
}

/// The method names a spec may use.
pub const METHOD_NAMES: [&str; 3] = ["source", "norm_test", "tent"];

impl MethodSpec {
    pub fn name(&self) -> &'static str {
        match self {
            MethodSpec::Source => "source",
            MethodSpec::NormTest => "norm_test",
            MethodSpec::Tent { .. } => "tent",
        }
    }

    pub fn validate(&self) -> Result<()> {
        if let MethodSpec::Tent { optimizer, steps } = self {
            optimizer.validate()?;
            if *steps == 0 {
                return Err(crate::EngineError::InvalidSpec(
                    "tent: steps must be ≥ 1".into(),
                ));
            }
        }
        Ok(())
    }

    /// Parse one entry of a spec's `methods` list (a name or a table).
    pub fn from_value(v: serde_json::Value) -> Result<Self> {
        let v = match v {
            serde_json::Value::String(s) => serde_json::json!({ "method": s }),
            other => other,
        };
        serde_json::from_value(v).map_err(|e| {
            let msg = e.to_string();
            if msg.contains("unknown variant") {
                crate::EngineError::unknown(
                    "method",
                    msg.split('`').nth(1).unwrap_or("?"),
                    METHOD_NAMES,
                )
            } else {
                crate::EngineError::InvalidSpec(format!("method: {msg}"))
            }
        })
    }
}

/// Serde helper: a list of methods, each a bare name or a table.
pub fn deserialize_methods<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Vec<MethodSpec>, D::Error> {
    let vals = Vec::<serde_json::Value>::deserialize(d)?;
    vals.into_iter()
        .map(|v| MethodSpec::from_value(v).map_err(serde::de::Error::custom))
        .collect()
}

/// What a method returns for one batch.
pub struct BatchOutput {
    /// Row-major (N × C) logits.
    pub logits: Vec<f32>,
    /// True when the method wanted to update but skipped it (non-finite loss or gradients).
    pub skipped_update: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Counters {
    /// Optimizer updates applied.
    pub updates: u64,
    /// Updates skipped because the loss or a gradient was not finite.
    pub skipped_updates: u64,
}

pub trait Method {
    /// Adapt on `x` (N, C, H, W) in [0, 1] as the method prescribes and predict it.
    fn adapt_and_predict(&mut self, x: &Tensor) -> Result<BatchOutput>;
    /// Return to the initial state: weights, statistics, optimizer state, counters.
    fn reset(&mut self) -> Result<()>;
    /// Names of the parameters the method changes (empty for frozen-weight methods).
    fn adapted_parameters(&self) -> Vec<String>;
    fn counters(&self) -> Counters;
    fn model(&self) -> &Model;
}

/// Build a method around its own copy of the model.
pub fn build(spec: &MethodSpec, model: Model) -> Result<Box<dyn Method>> {
    spec.validate()?;
    Ok(match spec {
        MethodSpec::Source => Box::new(frozen::FrozenWeights::source(model)),
        MethodSpec::NormTest => Box::new(frozen::FrozenWeights::norm_test(model)),
        MethodSpec::Tent { optimizer, steps } => {
            Box::new(tent::Tent::new(model, optimizer.clone(), *steps)?)
        }
    })
}

/// Logits tensor → host vector.
pub(crate) fn host(logits: &Tensor) -> Result<Vec<f32>> {
    Ok(logits.flatten_all()?.to_vec1::<f32>()?)
}

#[cfg(test)]
mod tests;
