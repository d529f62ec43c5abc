//! TENT (Wang et al., ICLR 2021): BatchNorm normalizes with batch statistics and only the BN
//! affine parameters (γ, β) are trained, to minimize the mean entropy of the predictions. One
//! optimizer step per batch by default; the prediction returned is the output of the forward
//! pass that computed the (last) loss, i.e. before that step's update, as in the official code.
//! With `crowds`, only the samples that pass the wisdom-of-crowds filter enter the mean.

use super::filters::{self, Crowds, Scores};
use super::{host, need_batch, BatchOutput, Counters, Method};
use crate::error::{EngineError, Result};
use crate::losses;
use crate::models::Model;
use crate::nn::{BnMode, Snapshot};
use crate::optim::{Optimizer, OptimizerSpec};
use candle_core::Tensor;

/// A model whose BN affine parameters are trained by an optimizer, with the snapshot `reset`
/// returns to: the common core of TENT, EATA, SAR and DeYO.
pub(crate) struct AffineLearner {
    pub model: Model,
    pub opt: Optimizer,
    pub lr: f64,
    pub initial: Snapshot,
    pub counters: Counters,
}

impl AffineLearner {
    pub fn new(model: Model, optimizer: OptimizerSpec, method: &str) -> Result<Self> {
        Self::with(model, optimizer, method, |p| p.kind().is_norm_affine())
    }

    /// Train the parameters for which `f` is true (CoTTA, RMT, PETAL: all of them).
    pub fn with(
        model: Model,
        optimizer: OptimizerSpec,
        method: &str,
        f: impl Fn(&crate::nn::Param) -> bool,
    ) -> Result<Self> {
        if model.bns().is_empty() {
            return Err(EngineError::InvalidSpec(format!(
                "{method} needs a model with BatchNorm layers"
            )));
        }
        if model.store().set_trainable(f) == 0 {
            return Err(EngineError::InvalidSpec(format!(
                "{method}: the model has no parameter to adapt"
            )));
        }
        let lr = optimizer.lr();
        let opt = Optimizer::new(optimizer, model.store().trainable())?;
        let initial = model.store().snapshot()?;
        Ok(Self {
            model,
            opt,
            lr,
            initial,
            counters: Counters::default(),
        })
    }

    /// Backward `loss` and take one optimizer step; a non-finite loss or gradient skips it.
    /// Returns true if the step was skipped.
    pub fn step(&mut self, loss: &Tensor) -> Result<bool> {
        let lv = loss.to_scalar::<f32>()?;
        if !lv.is_finite() {
            self.counters.skipped_updates += 1;
            return Ok(true);
        }
        let grads = loss.backward()?;
        if self.opt.step(&grads, self.lr)? {
            self.counters.updates += 1;
            Ok(false)
        } else {
            self.counters.skipped_updates += 1;
            Ok(true)
        }
    }

    pub fn reset(&mut self) -> Result<()> {
        self.model.store().restore(&self.initial)?;
        self.opt.reset();
        self.counters = Counters::default();
        Ok(())
    }

    pub fn adapted_parameters(&self) -> Vec<String> {
        self.model
            .store()
            .trainable()
            .iter()
            .map(|p| p.name().to_string())
            .collect()
    }
}

pub struct Tent {
    core: AffineLearner,
    steps: usize,
    crowds: Option<Crowds>,
}

impl Tent {
    pub fn new(
        model: Model,
        optimizer: OptimizerSpec,
        steps: usize,
        crowds: Option<Crowds>,
    ) -> Result<Self> {
        Ok(Self {
            core: AffineLearner::new(model, optimizer, "tent")?,
            steps,
            crowds,
        })
    }
}

impl Method for Tent {
    fn adapt_and_predict(&mut self, x: &Tensor) -> Result<BatchOutput> {
        need_batch("tent", x)?;
        let mut out = None;
        let mut skipped = false;
        for _ in 0..self.steps {
            let logits = self.core.model.forward(x, BnMode::Batch)?;
            out = Some(host(&logits)?);
            let ent = losses::entropy(&logits)?;
            let loss = match &self.crowds {
                None => {
                    self.core.counters.samples_used += x.dim(0)? as u64;
                    Some(ent.mean_all()?)
                }
                Some(c) => {
                    let scores = Scores::of(&logits)?;
                    let mut keep = vec![true; scores.len()];
                    c.apply(x, &scores, &mut keep)?;
                    self.core.counters.samples_used += keep.iter().filter(|&&k| k).count() as u64;
                    filters::masked_mean(&ent, &keep, None)?
                }
            };
            match loss {
                Some(l) => skipped |= self.core.step(&l)?,
                None => self.core.counters.empty_batches += 1,
            }
        }
        Ok(BatchOutput {
            logits: out.expect("steps ≥ 1"),
            skipped_update: skipped,
        })
    }

    fn predict(&mut self, x: &Tensor) -> Result<Vec<f32>> {
        need_batch("tent", x)?;
        host(&self.core.model.forward(x, BnMode::Batch)?)
    }

    fn reset(&mut self) -> Result<()> {
        self.core.reset()
    }

    delegate_to_core!();
}
