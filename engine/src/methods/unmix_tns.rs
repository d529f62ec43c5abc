//! UnMix-TNS (Tomar et al., ICLR 2024), following the official code: every BatchNorm layer
//! becomes K (`num_components`, 16) components of per-channel statistics, initialized around the
//! source statistics (μ_k = μ + sqrt(a·K/(K−1))·σ·N(0, 1), σ²_k = (1−a)·σ², a = 0.5; K = 1:
//! exactly the source statistics). Each instance is normalized with a mixture of the components
//! and its own statistics (see `nn::UnmixState::forward`), and every forward pass while adapting
//! moves the components toward the instances assigned to them, at the rate
//! 1 − (1 − 0.1)^(batch_size / batch_size_max).
//!
//! Composable: with `base` (any other method, e.g. `"tent"` or `{ method = "eata", ... }`) the
//! base method runs unchanged on the UnMix-TNS model, so its forward passes use (and update) the
//! components. Without a base the weights stay frozen and UnMix-TNS only normalizes. A base's
//! other model copies (teachers, anchors, the crowds reference) keep plain BatchNorm.
//! `reset` restores the components with the base method's state. Per-instance statistics make a
//! single-sample batch well defined: without a base, batch size 1 works.

use super::{host, BatchOutput, Counters, Method, MethodEnv, MethodSpec};
use crate::error::Result;
use crate::models::Model;
use crate::nn::{BnMode, UnmixState};
use candle_core::Tensor;

pub struct UnmixTns {
    base: Option<Box<dyn Method>>,
    /// Used when there is no base method.
    model: Option<Model>,
    initial: Vec<UnmixState>,
}

/// The initial components of every BatchNorm layer of `model`.
pub(crate) fn init_components(
    model: &Model,
    k: usize,
    momentum: f32,
    seed: u64,
) -> Vec<UnmixState> {
    let mut rng = crate::rng::rng(seed, "unmix_tns/init");
    let coeff: f32 = if k == 1 { 0.0 } else { 0.5 };
    model
        .bns()
        .iter()
        .map(|bn| {
            let (mean, var) = bn.running_stats();
            let c = mean.len();
            let noise = crate::rng::randn_vec(k * c, &mut rng);
            let scale = if k == 1 {
                0.0
            } else {
                (coeff * k as f32 / (k as f32 - 1.0)).sqrt()
            };
            let mut means = Vec::with_capacity(k * c);
            let mut vars = Vec::with_capacity(k * c);
            for j in 0..k {
                for ch in 0..c {
                    means.push(mean[ch] + scale * var[ch].sqrt() * noise[j * c + ch]);
                    vars.push((1.0 - coeff) * var[ch]);
                }
            }
            UnmixState {
                k,
                means,
                vars,
                momentum,
                update: true,
            }
        })
        .collect()
}

impl UnmixTns {
    pub fn new(model: Model, spec: &MethodSpec, env: &MethodEnv) -> Result<Self> {
        let MethodSpec::UnmixTns {
            num_components,
            batch_size_max,
            base,
        } = spec
        else {
            unreachable!("UnmixTns::new with {spec:?}")
        };
        if model.bns().is_empty() {
            return Err(crate::EngineError::InvalidSpec(
                "unmix_tns needs a model with BatchNorm layers".into(),
            ));
        }
        let momentum = 1.0 - 0.9f64.powf(env.batch_size as f64 / *batch_size_max as f64);
        let initial = init_components(&model, *num_components, momentum as f32, env.seed);
        for (bn, s) in model.bns().iter().zip(&initial) {
            bn.set_unmix(Some(s.clone()));
        }
        let (base, model) = match base {
            Some(b) => (Some(super::build(b, model, env)?), None),
            None => {
                model.store().set_trainable(|_| false);
                (None, Some(model))
            }
        };
        let me = Self {
            base,
            model,
            initial,
        };
        // Building the base may run forward passes (EATA's Fisher information): start the
        // stream from the initial components all the same.
        for (bn, s) in me.the_model().bns().iter().zip(&me.initial) {
            bn.set_unmix(Some(s.clone()));
        }
        Ok(me)
    }

    fn the_model(&self) -> &Model {
        match (&self.base, &self.model) {
            (Some(b), _) => b.model(),
            (None, Some(m)) => m,
            (None, None) => unreachable!("unmix_tns has a base or a model"),
        }
    }

    fn set_update(&self, on: bool) {
        for bn in self.the_model().bns() {
            bn.set_unmix_update(on);
        }
    }

    /// The current components of every BatchNorm layer.
    #[cfg(test)]
    pub fn components(&self) -> Vec<UnmixState> {
        self.the_model()
            .bns()
            .iter()
            .map(|b| b.unmix().expect("unmix installed"))
            .collect()
    }
}

impl Method for UnmixTns {
    fn adapt_and_predict(&mut self, x: &Tensor) -> Result<BatchOutput> {
        match &mut self.base {
            Some(b) => b.adapt_and_predict(x),
            None => Ok(BatchOutput {
                logits: host(
                    &self
                        .model
                        .as_ref()
                        .expect("model")
                        .forward(x, BnMode::Eval)?,
                )?,
                skipped_update: false,
            }),
        }
    }

    fn predict(&mut self, x: &Tensor) -> Result<Vec<f32>> {
        self.set_update(false);
        let out = match &mut self.base {
            Some(b) => b.predict(x),
            None => host(
                &self
                    .model
                    .as_ref()
                    .expect("model")
                    .forward(x, BnMode::Eval)?,
            ),
        };
        self.set_update(true);
        out
    }

    fn reset(&mut self) -> Result<()> {
        if let Some(b) = &mut self.base {
            b.reset()?;
        }
        for (bn, s) in self.the_model().bns().iter().zip(&self.initial) {
            bn.set_unmix(Some(s.clone()));
        }
        Ok(())
    }

    fn adapted_parameters(&self) -> Vec<String> {
        self.base
            .as_ref()
            .map(|b| b.adapted_parameters())
            .unwrap_or_default()
    }

    fn counters(&self) -> Counters {
        self.base.as_ref().map(|b| b.counters()).unwrap_or_default()
    }

    fn model(&self) -> &Model {
        self.the_model()
    }
}
