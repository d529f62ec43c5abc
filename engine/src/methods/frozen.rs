//! Methods that never change a weight and differ only in how BatchNorm normalizes:
//!
//! - `source`: the pretrained model as it is, BatchNorm with its running (source) statistics,
//!   so a sample's prediction does not depend on the rest of its batch.
//! - `norm_test` (BN-1; Schneider et al. 2020, Nado et al. 2020): every BatchNorm normalizes with
//!   the current test batch's statistics. Nothing is carried from one batch to the next.

use super::{host, BatchOutput, Counters, Method};
use crate::error::{EngineError, Result};
use crate::models::Model;
use crate::nn::BnMode;
use candle_core::Tensor;

pub struct FrozenWeights {
    model: Model,
    mode: BnMode,
    name: &'static str,
}

impl FrozenWeights {
    pub fn source(model: Model) -> Self {
        Self::new(model, BnMode::Eval, "source")
    }

    pub fn norm_test(model: Model) -> Self {
        Self::new(model, BnMode::Batch, "norm_test")
    }

    fn new(model: Model, mode: BnMode, name: &'static str) -> Self {
        model.store().set_trainable(|_| false);
        Self { model, mode, name }
    }
}

impl Method for FrozenWeights {
    fn adapt_and_predict(&mut self, x: &Tensor) -> Result<BatchOutput> {
        if self.mode != BnMode::Eval && x.dim(0)? < 2 {
            return Err(EngineError::InvalidSpec(format!(
                "{} normalizes with batch statistics and needs batch_size ≥ 2",
                self.name
            )));
        }
        Ok(BatchOutput {
            logits: host(&self.model.forward(x, self.mode)?)?,
            skipped_update: false,
        })
    }
    fn reset(&mut self) -> Result<()> {
        Ok(())
    }
    fn adapted_parameters(&self) -> Vec<String> {
        vec![]
    }
    fn counters(&self) -> Counters {
        Counters::default()
    }
    fn model(&self) -> &Model {
        &self.model
    }
}
