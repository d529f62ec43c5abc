//! TENT (Wang et al., ICLR 2021): BatchNorm normalizes with batch statistics and only the BN
//! affine parameters (γ, β) are trained, to minimize the mean entropy of the predictions. One
//! optimizer step per batch by default; the prediction returned is the output of the forward
//! pass that computed the (last) loss, i.e. before that step's update, as in the official code.

use super::{host, BatchOutput, Counters, Method};
use crate::error::{EngineError, Result};
use crate::losses;
use crate::models::Model;
use crate::nn::{BnMode, Snapshot};
use crate::optim::{Optimizer, OptimizerSpec};
use candle_core::Tensor;

pub struct Tent {
    model: Model,
    opt: Optimizer,
    lr: f64,
    steps: usize,
    initial: Snapshot,
    counters: Counters,
}

impl Tent {
    pub fn new(model: Model, optimizer: OptimizerSpec, steps: usize) -> Result<Self> {
        let n = model.store().set_trainable(|p| p.kind().is_norm_affine());
        if n == 0 {
            return Err(EngineError::InvalidSpec(
                "tent needs a model with BatchNorm layers".into(),
            ));
        }
        let lr = optimizer.lr();
        let opt = Optimizer::new(optimizer, model.store().trainable())?;
        let initial = model.store().snapshot()?;
        Ok(Self {
            model,
            opt,
            lr,
            steps,
            initial,
            counters: Counters::default(),
        })
    }
}

impl Method for Tent {
    fn adapt_and_predict(&mut self, x: &Tensor) -> Result<BatchOutput> {
        if x.dim(0)? < 2 {
            return Err(EngineError::InvalidSpec(
                "tent normalizes with batch statistics and needs batch_size ≥ 2".into(),
            ));
        }
        let mut out = None;
        let mut skipped = false;
        for _ in 0..self.steps {
            let logits = self.model.forward(x, BnMode::Batch)?;
            let loss = losses::entropy(&logits)?.mean_all()?;
            out = Some(host(&logits)?);
            let lv = loss.to_scalar::<f32>()?;
            if !lv.is_finite() {
                skipped = true;
                self.counters.skipped_updates += 1;
                continue;
            }
            let grads = loss.backward()?;
            if self.opt.step(&grads, self.lr)? {
                self.counters.updates += 1;
            } else {
                skipped = true;
                self.counters.skipped_updates += 1;
            }
        }
        Ok(BatchOutput {
            logits: out.expect("steps ≥ 1"),
            skipped_update: skipped,
        })
    }

    fn reset(&mut self) -> Result<()> {
        self.model.store().restore(&self.initial)?;
        self.opt.reset();
        self.counters = Counters::default();
        Ok(())
    }

    fn adapted_parameters(&self) -> Vec<String> {
        self.model
            .store()
            .trainable()
            .iter()
            .map(|p| p.name().to_string())
            .collect()
    }

    fn counters(&self) -> Counters {
        self.counters
    }

    fn model(&self) -> &Model {
        &self.model
    }
}
