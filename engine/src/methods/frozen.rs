//! Methods that never change a weight and differ only in how BatchNorm normalizes:
//!
//! - `source`: the pretrained model as it is, BatchNorm with its running (source) statistics,
//!   so a sample's prediction does not depend on the rest of its batch.
//! - `norm_test` (BN-1; Schneider et al. 2020, Nado et al. 2020): every BatchNorm normalizes with
//!   the current test batch's statistics. Nothing is carried from one batch to the next.
//! - `norm_alpha` (α-BN; You et al. 2021): every BatchNorm normalizes with
//!   (1−α)·source + α·batch statistics (α = 0.1), so small or label-skewed batches hurt less.

use super::{host, need_batch, BatchOutput, Counters, Method};
use crate::error::Result;
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

    pub fn norm_alpha(model: Model, alpha: f32) -> Self {
        Self::new(model, BnMode::Alpha(alpha), "norm_alpha")
    }

    fn new(model: Model, mode: BnMode, name: &'static str) -> Self {
        model.store().set_trainable(|_| false);
        Self { model, mode, name }
    }
}

impl Method for FrozenWeights {
    fn adapt_and_predict(&mut self, x: &Tensor) -> Result<BatchOutput> {
        Ok(BatchOutput {
            logits: self.predict(x)?,
            skipped_update: false,
        })
    }
    fn predict(&mut self, x: &Tensor) -> Result<Vec<f32>> {
        // Plain test-time normalization refuses a single sample; α-BN is built for small
        // batches (the source statistics keep the mix well defined) and accepts it.
        if self.mode == BnMode::Batch {
            need_batch(self.name, x)?;
        }
        host(&self.model.forward(x, self.mode)?)
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
