//! Optimizers with PyTorch's update rules (SGD with momentum/Nesterov/L2, Adam with L2), run
//! on the host over the trainable parameters. A step whose loss or gradients are not finite is
//! skipped and reported, so a NaN never reaches the weights.

use crate::error::Result;
use crate::nn::Param;
use candle_core::backprop::GradStore;
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

/// Optimizer settings, with the names of PyTorch's `torch.optim`.
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "snake_case", deny_unknown_fields)]
pub enum OptimizerSpec {
    Sgd {
        lr: f64,
        #[serde(default)]
        momentum: f64,
        #[serde(default)]
        nesterov: bool,
        #[serde(default)]
        weight_decay: f64,
    },
    Adam {
        lr: f64,
        #[serde(default = "beta1")]
        beta1: f64,
        #[serde(default = "beta2")]
        beta2: f64,
        #[serde(default = "adam_eps")]
        eps: f64,
        #[serde(default)]
        weight_decay: f64,
    },
}

fn beta1() -> f64 {
    0.9
}
fn beta2() -> f64 {
    0.999
}
fn adam_eps() -> f64 {
    1e-8
}

impl OptimizerSpec {
    /// TENT's CIFAR setting: Adam, lr 1e-3, β (0.9, 0.999), no weight decay.
    pub fn tent_default() -> Self {
        OptimizerSpec::Adam {
            lr: 1e-3,
            beta1: beta1(),
            beta2: beta2(),
            eps: adam_eps(),
            weight_decay: 0.0,
        }
    }

    /// SAR's and DeYO's setting: SGD, lr 2.5e-4, momentum 0.9 (batch ≥ 32).
    pub fn sar_default() -> Self {
        OptimizerSpec::Sgd {
            lr: 2.5e-4,
            momentum: 0.9,
            nesterov: false,
            weight_decay: 0.0,
        }
    }

    pub fn lr(&self) -> f64 {
        match self {
            OptimizerSpec::Sgd { lr, .. } | OptimizerSpec::Adam { lr, .. } => *lr,
        }
    }

    pub fn validate(&self) -> Result<()> {
        let ok = match self {
            OptimizerSpec::Sgd {
                lr,
                momentum,
                weight_decay,
                ..
            } => *lr >= 0.0 && (0.0..1.0).contains(momentum) && *weight_decay >= 0.0,
            OptimizerSpec::Adam {
                lr,
                beta1,
                beta2,
                eps,
                weight_decay,
            } => {
                *lr >= 0.0
                    && (0.0..1.0).contains(beta1)
                    && (0.0..1.0).contains(beta2)
                    && *eps > 0.0
                    && *weight_decay >= 0.0
            }
        };
        if ok {
            Ok(())
        } else {
            Err(crate::EngineError::InvalidSpec(format!(
                "optimizer settings out of range: {self:?} (need lr ≥ 0, 0 ≤ momentum/betas < 1, eps > 0, weight_decay ≥ 0)"
            )))
        }
    }
}

struct Slot {
    param: Param,
    m: Vec<f32>,
    v: Vec<f32>,
}

pub struct Optimizer {
    spec: OptimizerSpec,
    slots: Vec<Slot>,
    steps: u64,
}

impl Optimizer {
    pub fn new(spec: OptimizerSpec, params: Vec<Param>) -> Result<Self> {
        spec.validate()?;
        let slots = params
            .into_iter()
            .map(|param| Slot {
                param,
                m: vec![],
                v: vec![],
            })
            .collect();
        Ok(Self {
            spec,
            slots,
            steps: 0,
        })
    }

    /// Forget the moments and the step count (for a method's reset).
    pub fn reset(&mut self) {
        for s in &mut self.slots {
            s.m.clear();
            s.v.clear();
        }
        self.steps = 0;
    }

    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// One update with learning rate `lr`. Returns false (and changes nothing) if any gradient
    /// is not finite.
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<bool> {
        let mut gs = Vec::with_capacity(self.slots.len());
        for s in &self.slots {
            let g = match grads.get(s.param.var().as_tensor()) {
                Some(g) => g.flatten_all()?.to_vec1::<f32>()?,
                None => vec![],
            };
            if g.iter().any(|x| !x.is_finite()) {
                return Ok(false);
            }
            gs.push(g);
        }
        self.steps += 1;
        let t = self.steps as i32;
        for (s, mut g) in self.slots.iter_mut().zip(gs) {
            if g.is_empty() {
                continue; // parameter not reached by this loss
            }
            let shape = s.param.var().shape().clone();
            let mut p = s.param.var().as_tensor().flatten_all()?.to_vec1::<f32>()?;
            match &self.spec {
                OptimizerSpec::Sgd {
                    momentum,
                    nesterov,
                    weight_decay,
                    ..
                } => {
                    let (mom, wd) = (*momentum as f32, *weight_decay as f32);
                    if wd != 0.0 {
                        g.iter_mut().zip(&p).for_each(|(g, p)| *g += wd * p);
                    }
                    if mom != 0.0 {
                        if s.m.is_empty() {
                            s.m = g.clone();
                        } else {
                            s.m.iter_mut().zip(&g).for_each(|(b, g)| *b = mom * *b + g);
                        }
                        if *nesterov {
                            g.iter_mut().zip(&s.m).for_each(|(g, b)| *g += mom * b);
                        } else {
                            g.copy_from_slice(&s.m);
                        }
                    }
                    let lr = lr as f32;
                    p.iter_mut().zip(&g).for_each(|(p, g)| *p -= lr * g);
                }
                OptimizerSpec::Adam {
                    beta1,
                    beta2,
                    eps,
                    weight_decay,
                    ..
                } => {
                    let (b1, b2, wd) = (*beta1 as f32, *beta2 as f32, *weight_decay as f32);
                    if s.m.is_empty() {
                        s.m = vec![0.0; g.len()];
                        s.v = vec![0.0; g.len()];
                    }
                    let bc1 = 1.0 - (*beta1).powi(t);
                    let bc2 = 1.0 - (*beta2).powi(t);
                    let step = (lr / bc1) as f32;
                    let bc2_sqrt = bc2.sqrt() as f32;
                    for i in 0..p.len() {
                        let gi = g[i] + wd * p[i];
                        s.m[i] = b1 * s.m[i] + (1.0 - b1) * gi;
                        s.v[i] = b2 * s.v[i] + (1.0 - b2) * gi * gi;
                        let denom = s.v[i].sqrt() / bc2_sqrt + *eps as f32;
                        p[i] -= step * s.m[i] / denom;
                    }
                }
            }
            s.param
                .var()
                .set(&Tensor::from_vec(p, shape, s.param.var().device())?)?;
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::{Init, ParamKind, VarSource};
    use candle_core::Device;

    fn one_param(v: f32) -> (Param, VarSource) {
        let mut vs = VarSource::init(0, &Device::Cpu);
        let p = vs
            .param("w", &[1], ParamKind::LinearWeight, Init::Const(v))
            .unwrap();
        (p, vs)
    }

    fn value(p: &Param) -> f32 {
        p.var().as_tensor().to_vec1::<f32>().unwrap()[0]
    }

    /// loss = w² → grad 2w.
    fn grads(p: &Param) -> GradStore {
        p.var()
            .as_tensor()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap()
    }

    #[test]
    fn adam_first_steps_match_hand_computation() {
        // Adam's first step moves by lr·sign(g) (bias-corrected m/√v = g/|g|).
        let (p, _vs) = one_param(1.0);
        let mut opt = Optimizer::new(OptimizerSpec::tent_default(), vec![p.clone()]).unwrap();
        assert!(opt.step(&grads(&p), 1e-3).unwrap());
        assert!((value(&p) - 0.999).abs() < 1e-6);
        // Second step by hand: g = 1.998, m = 0.9·0.2 + 0.1·g, v = 0.999·0.004 + 0.001·g²,
        // w ← w − lr·(m/0.19)/(√(v/(1 − 0.999²)) + ε).
        let g2 = 1.998f64;
        let m = 0.9 * 0.2 + 0.1 * g2;
        let v = 0.999 * 0.004 + 0.001 * g2 * g2;
        let expect = 0.999 - 1e-3 * (m / 0.19) / ((v / (1.0 - 0.999f64.powi(2))).sqrt() + 1e-8);
        opt.step(&grads(&p), 1e-3).unwrap();
        assert!(
            (value(&p) as f64 - expect).abs() < 1e-6,
            "{} vs {expect}",
            value(&p)
        );
    }

    #[test]
    fn sgd_nesterov_with_weight_decay_matches_pytorch_rule() {
        let (p, _vs) = one_param(1.0);
        let spec = OptimizerSpec::Sgd {
            lr: 0.1,
            momentum: 0.9,
            nesterov: true,
            weight_decay: 0.5,
        };
        let mut opt = Optimizer::new(spec, vec![p.clone()]).unwrap();
        // g = 2·1 + 0.5·1 = 2.5; buf = 2.5; nesterov g = 2.5 + 0.9·2.5 = 4.75; w = 1 − 0.475.
        opt.step(&grads(&p), 0.1).unwrap();
        assert!((value(&p) - 0.525).abs() < 1e-6);
    }

    #[test]
    fn non_finite_gradient_skips_the_step() {
        let (p, _vs) = one_param(1.0);
        let mut opt = Optimizer::new(OptimizerSpec::tent_default(), vec![p.clone()]).unwrap();
        let g = (p.var().as_tensor() * f64::NAN)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        assert!(!opt.step(&g, 1e-3).unwrap());
        assert_eq!(value(&p), 1.0);
        assert_eq!(opt.steps(), 0);
    }
}
