//! Test-time normalization (BN-1; Schneider et al. 2020, Nado et al. 2020): every BatchNorm
//! normalizes with the statistics of the current test batch instead of the running ones. No
//! weight changes and nothing is carried from one batch to the next.

use super::{host, BatchOutput, Counters, Method};
use crate::error::Result;
use crate::models::Model;
use crate::nn::BnMode;
use candle_core::Tensor;

pub struct NormTest {
    model: Model,
}

impl NormTest {
    pub fn new(model: Model) -> Self {
        model.store().set_trainable(|_| false);
        Self { model }
    }
}

impl Method for NormTest {
    fn adapt_and_predict(&mut self, x: &Tensor) -> Result<BatchOutput> {
        if x.dim(0)? < 2 {
            return Err(crate::EngineError::InvalidSpec(
                "norm_test needs batches of at least 2 samples to compute batch statistics (batch_size ≥ 2)".into(),
            ));
        }
        Ok(BatchOutput {
            logits: host(&self.model.forward(x, BnMode::Batch)?)?,
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
