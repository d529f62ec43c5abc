//! SAR (Niu et al., ICLR 2023), following the official code:
//!
//! 1. forward with batch statistics; keep samples with entropy H < E0 = margin · ln C;
//!    loss₁ = their mean entropy; g = ∇loss₁ over the BN affine parameters;
//! 2. sharpness-aware perturbation ε = ρ·g/(‖g‖₂ + 1e-12) (one norm over all parameters);
//!    second forward at θ + ε; among the first mask keep H₂ < E0; loss₂ = their mean;
//! 3. EMA (0.9) of loss₂; gradient of loss₂ at θ + ε, weights restored to θ, SGD step;
//! 4. when the EMA falls below `reset_constant` the model and optimizer return to the source
//!    (a collapse reset) and the EMA is cleared.
//!
//! Differences from the official code, all deliberate: nothing kept in step 1 or 2 skips the
//! update (the original steps on mean(∅) = NaN); `reset_constant` is honoured (the original
//! ignores its option and uses 0.2); after a collapse reset the EMA starts afresh (the original
//! carries the low EMA over, which can trigger resets on the following batches). All BatchNorm
//! affine parameters are adapted: the original skips ResNet-50's `layer4`, a stage the CIFAR
//! ResNets and the small CNN do not have.

use super::filters::{self, ln_classes, Crowds, Scores};
use super::tent::AffineLearner;
use super::{host, need_batch, BatchOutput, Counters, Method, MethodSpec};
use crate::error::Result;
use crate::losses;
use crate::models::Model;
use crate::nn::BnMode;
use candle_core::Tensor;

pub struct Sar {
    core: AffineLearner,
    e0: f64,
    rho: f64,
    reset_constant: f64,
    ema: Option<f64>,
    crowds: Option<Crowds>,
}

impl Sar {
    pub fn new(model: Model, spec: &MethodSpec, crowds: Option<Crowds>) -> Result<Self> {
        let MethodSpec::Sar {
            optimizer,
            margin,
            rho,
            reset_constant,
            ..
        } = spec
        else {
            unreachable!("Sar::new with {spec:?}")
        };
        let core = AffineLearner::new(model, optimizer.clone(), "sar")?;
        let c = core.model.info().num_classes;
        Ok(Self {
            core,
            e0: margin * ln_classes(c),
            rho: *rho,
            reset_constant: *reset_constant,
            ema: None,
            crowds,
        })
    }

    /// One SAR update on `x`; returns (logits of the first forward pass, skipped).
    fn update(&mut self, x: &Tensor) -> Result<(Vec<f32>, bool)> {
        let logits = self.core.model.forward(x, BnMode::Batch)?;
        let out = host(&logits)?;
        let sc = Scores::of(&logits)?;
        let mut keep: Vec<bool> = sc.entropy.iter().map(|&h| (h as f64) < self.e0).collect();
        if let Some(cr) = &self.crowds {
            cr.apply(x, &sc, &mut keep)?;
        }
        let Some(loss1) = filters::masked_mean(&losses::entropy(&logits)?, &keep, None)? else {
            self.core.counters.empty_batches += 1;
            return Ok((out, false));
        };
        if !loss1.to_scalar::<f32>()?.is_finite() {
            self.core.counters.skipped_updates += 1;
            return Ok((out, true));
        }
        let params = self.core.model.store().trainable();
        let g1 = loss1.backward()?;
        let grads: Vec<Option<Tensor>> = params
            .iter()
            .map(|p| g1.get(p.var().as_tensor()).cloned())
            .collect();
        let mut norm2 = 0f64;
        for g in grads.iter().flatten() {
            norm2 += g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
        }
        if !norm2.is_finite() {
            self.core.counters.skipped_updates += 1;
            return Ok((out, true));
        }
        let scale = self.rho / (norm2.sqrt() + 1e-12);
        let theta = self.core.model.store().snapshot()?;
        for (p, g) in params.iter().zip(&grads) {
            if let Some(g) = g {
                let moved = (p.var().as_tensor() + g.affine(scale, 0.0)?)?;
                p.var().set(&moved)?;
            }
        }
        let logits2 = self.core.model.forward(x, BnMode::Batch)?;
        let sc2 = Scores::of(&logits2)?;
        let keep2: Vec<bool> = keep
            .iter()
            .zip(&sc2.entropy)
            .map(|(&k, &h)| k && (h as f64) < self.e0)
            .collect();
        let loss2 = filters::masked_mean(&losses::entropy(&logits2)?, &keep2, None)?;
        let Some(loss2) = loss2 else {
            self.core.model.store().restore(&theta)?;
            self.core.counters.empty_batches += 1;
            return Ok((out, false));
        };
        let l2 = loss2.to_scalar::<f32>()? as f64;
        let g2 = if l2.is_finite() {
            self.ema = Some(match self.ema {
                None => l2,
                Some(e) => 0.9 * e + 0.1 * l2,
            });
            Some(loss2.backward()?)
        } else {
            None
        };
        // Back to θ, then the base optimizer steps with the gradient taken at θ + ε.
        self.core.model.store().restore(&theta)?;
        self.core.counters.samples_used += keep2.iter().filter(|&&k| k).count() as u64;
        let skipped = match g2 {
            Some(g2) if self.core.opt.step(&g2, self.core.lr)? => {
                self.core.counters.updates += 1;
                false
            }
            _ => {
                self.core.counters.skipped_updates += 1;
                true
            }
        };
        if matches!(self.ema, Some(e) if e < self.reset_constant) {
            let c = self.core.counters;
            self.core.reset()?;
            self.ema = None;
            self.core.counters = Counters {
                self_resets: c.self_resets + 1,
                ..c
            };
        }
        Ok((out, skipped))
    }
}

impl Method for Sar {
    fn adapt_and_predict(&mut self, x: &Tensor) -> Result<BatchOutput> {
        need_batch("sar", x)?;
        let (logits, skipped_update) = self.update(x)?;
        Ok(BatchOutput {
            logits,
            skipped_update,
        })
    }

    fn predict(&mut self, x: &Tensor) -> Result<Vec<f32>> {
        need_batch("sar", x)?;
        host(&self.core.model.forward(x, BnMode::Batch)?)
    }

    fn reset(&mut self) -> Result<()> {
        self.ema = None;
        self.core.reset()
    }

    delegate_to_core!();
}
