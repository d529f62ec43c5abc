//! Source: the pretrained model as it is. Eval-mode BatchNorm (running statistics), nothing
//! adapts, so the prediction of a sample does not depend on the rest of its batch.

use super::{host, BatchOutput, Counters, Method};
use crate::error::Result;
use crate::models::Model;
use crate::nn::BnMode;
use candle_core::Tensor;

pub struct Source {
    model: Model,
}

impl Source {
    pub fn new(model: Model) -> Self {
        model.store().set_trainable(|_| false);
        Self { model }
    }
}

impl Method for Source {
    fn adapt_and_predict(&mut self, x: &Tensor) -> Result<BatchOutput> {
        Ok(BatchOutput {
            logits: host(&self.model.forward(x, BnMode::Eval)?)?,
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
