//! CoTTA (Wang et al., CVPR 2022), following the official code:
//!
//! - three copies of the source model, all with BatchNorm on batch statistics: the student
//!   (every weight trained), the teacher (an EMA of the student, momentum `mt` 0.999) and the
//!   frozen anchor;
//! - per batch: if the anchor's mean max-probability is below `ap` (0.92), the teacher target
//!   is the mean of the teacher's logits over `n_augmentations` (32) augmented copies of the
//!   batch (see `augment`), otherwise the teacher's logits on the batch itself;
//! - loss = mean over the batch of CE(softmax(target), student) = −Σ softmax(t)·log_softmax(s);
//!   one optimizer step (Adam 1e-3); teacher ← mt·teacher + (1 − mt)·student;
//! - stochastic restore: every weight element returns to its source value with probability
//!   `rst` (0.01);
//! - **the prediction returned is the teacher target** (computed before the update).
//!
//! The official code runs the 32 augmented passes on every batch and then decides whether to use
//! them; here they run only when they are used (the same result, far less compute). PETAL
//! (`petal.rs`) is this student/teacher/anchor loop with a prior penalty and a Fisher-based
//! restore instead of the stochastic one.

use super::augment::tta_transform;
use super::filters::Scores;
use super::tent::AffineLearner;
use super::{host, need_batch, BatchOutput, Method, MethodEnv, MethodSpec};
use crate::error::Result;
use crate::losses;
use crate::models::Model;
use crate::nn::{BnMode, Snapshot};
use crate::optim::OptimizerSpec;
use candle_core::Tensor;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// What happens to the student's weights after each step.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Restore {
    /// CoTTA: each element back to the source value with this probability.
    Stochastic(f64),
    /// PETAL: elements whose squared gradient is below this quantile of all squared gradients.
    Fisher(f64),
}

pub(crate) struct TeacherCfg {
    pub name: &'static str,
    pub optimizer: OptimizerSpec,
    pub mt: f64,
    pub ap: f64,
    pub n_augmentations: usize,
    pub hflip: bool,
    pub restore: Restore,
    /// Weight of the prior penalty Σ (θ − θ_source)² (PETAL; 0 for CoTTA).
    pub prior: f64,
}

pub struct Cotta {
    cfg: TeacherCfg,
    core: AffineLearner,
    teacher: Model,
    teacher_initial: Snapshot,
    anchor: Model,
    /// Source values of the student's trainable parameters (restore and prior target).
    source: Vec<Tensor>,
    seed: u64,
    rng: ChaCha8Rng,
    /// Augmented views to use instead of random ones (reference tests).
    fixed_views: Option<Vec<Tensor>>,
    /// Stochastic-restore masks to use instead of random ones, per trainable parameter.
    fixed_masks: Option<Vec<Vec<bool>>>,
}

impl Cotta {
    pub fn new(model: Model, spec: &MethodSpec, env: &MethodEnv) -> Result<Self> {
        let MethodSpec::Cotta {
            optimizer,
            mt,
            rst,
            ap,
            n_augmentations,
            hflip,
        } = spec
        else {
            unreachable!("Cotta::new with {spec:?}")
        };
        let cfg = TeacherCfg {
            name: "cotta",
            optimizer: optimizer.clone(),
            mt: *mt,
            ap: *ap,
            n_augmentations: *n_augmentations,
            hflip: *hflip,
            restore: Restore::Stochastic(*rst),
            prior: 0.0,
        };
        Self::with(model, cfg, env)
    }

    pub(crate) fn with(model: Model, cfg: TeacherCfg, env: &MethodEnv) -> Result<Self> {
        let core = AffineLearner::with(model, cfg.optimizer.clone(), cfg.name, |_| true)?;
        let teacher = (env.load_source)()?;
        teacher.store().set_trainable(|_| false);
        let anchor = (env.load_source)()?;
        anchor.store().set_trainable(|_| false);
        let source = core
            .model
            .store()
            .trainable()
            .iter()
            // detach first: candle's `copy` is differentiable and would cancel the prior's
            // gradient.
            .map(|p| Ok(p.var().as_tensor().detach().copy()?))
            .collect::<Result<Vec<_>>>()?;
        let teacher_initial = teacher.store().snapshot()?;
        let label = format!("{}/augment", cfg.name);
        Ok(Self {
            rng: crate::rng::rng(env.seed, &label),
            cfg,
            core,
            teacher,
            teacher_initial,
            anchor,
            source,
            seed: env.seed,
            fixed_views: None,
            fixed_masks: None,
        })
    }

    /// The teacher's target logits for `x`, augmentation-averaged when the anchor is unsure.
    fn target(&mut self, x: &Tensor) -> Result<Tensor> {
        let anchor = Scores::of(&self.anchor.forward(x, BnMode::Batch)?)?;
        let conf = (0..anchor.len())
            .map(|i| anchor.top(i).1 as f64)
            .sum::<f64>()
            / anchor.len() as f64;
        if conf >= self.cfg.ap {
            return Ok(self.teacher.forward(x, BnMode::Batch)?.detach());
        }
        let n = self.cfg.n_augmentations;
        let mut sum: Option<Tensor> = None;
        for i in 0..n {
            let view = match &self.fixed_views {
                Some(v) => v[i].clone(),
                None => tta_transform(x, self.cfg.hflip, &mut self.rng)?,
            };
            let l = self.teacher.forward(&view, BnMode::Batch)?.detach();
            sum = Some(match sum {
                None => l,
                Some(s) => (s + l)?,
            });
        }
        Ok((sum.expect("n_augmentations ≥ 1") / n as f64)?)
    }

    fn update_teacher(&self) -> Result<()> {
        let mt = self.cfg.mt;
        for (t, s) in self
            .teacher
            .store()
            .params()
            .iter()
            .zip(self.core.model.store().params())
        {
            let v = (t.var().as_tensor().affine(mt, 0.0)?
                + s.var().as_tensor().detach().affine(1.0 - mt, 0.0)?)?;
            t.var().set(&v)?;
        }
        Ok(())
    }

    /// Put the elements where `mask` is true back to their source values.
    fn restore_where(&self, masks: &[Vec<bool>]) -> Result<()> {
        for ((p, src), mask) in self
            .core
            .model
            .store()
            .trainable()
            .iter()
            .zip(&self.source)
            .zip(masks)
        {
            if !mask.iter().any(|&m| m) {
                continue;
            }
            let shape = p.var().shape().clone();
            let mut v = p.var().as_tensor().flatten_all()?.to_vec1::<f32>()?;
            let s = src.flatten_all()?.to_vec1::<f32>()?;
            for ((v, s), m) in v.iter_mut().zip(&s).zip(mask) {
                if *m {
                    *v = *s;
                }
            }
            p.var()
                .set(&Tensor::from_vec(v, shape, p.var().device())?)?;
        }
        Ok(())
    }

    #[cfg(test)]
    pub fn set_fixed(&mut self, views: Vec<Tensor>, masks: Option<Vec<Vec<bool>>>) {
        self.fixed_views = Some(views);
        self.fixed_masks = masks;
    }

    #[cfg(test)]
    pub fn teacher(&self) -> &Model {
        &self.teacher
    }
}

/// The `q` quantile of `v` with linear interpolation (torch.quantile's default).
pub(crate) fn quantile(v: &[f32], q: f64) -> f32 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let pos = q * (s.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    s[lo] + (s[hi] - s[lo]) * (pos - lo as f64) as f32
}

impl Method for Cotta {
    fn adapt_and_predict(&mut self, x: &Tensor) -> Result<BatchOutput> {
        need_batch(self.cfg.name, x)?;
        let logits = self.core.model.forward(x, BnMode::Batch)?;
        let target = self.target(x)?;
        let out = host(&target)?;
        let soft = losses::softmax(&target)?;
        let ce = (soft * losses::log_softmax(&logits)?)?
            .sum(1)?
            .neg()?
            .mean_all()?;
        let params = self.core.model.store().trainable();
        let mut loss = ce;
        if self.cfg.prior > 0.0 {
            for (p, s) in params.iter().zip(&self.source) {
                let d = (p.t() - s)?.sqr()?.sum_all()?.affine(self.cfg.prior, 0.0)?;
                loss = (loss + d)?;
            }
        }
        self.core.counters.samples_used += x.dim(0)? as u64;
        if !loss.to_scalar::<f32>()?.is_finite() {
            self.core.counters.skipped_updates += 1;
            return Ok(BatchOutput {
                logits: out,
                skipped_update: true,
            });
        }
        let grads = loss.backward()?;
        // PETAL's Fisher information of this step: the squared gradients.
        let fisher: Option<Vec<Vec<f32>>> = match self.cfg.restore {
            Restore::Fisher(_) => Some(
                params
                    .iter()
                    .map(|p| {
                        Ok(match grads.get(p.var().as_tensor()) {
                            Some(g) => g.flatten_all()?.to_vec1::<f32>()?,
                            None => vec![0.0; p.var().elem_count()],
                        }
                        .into_iter()
                        .map(|g| g * g)
                        .collect())
                    })
                    .collect::<Result<_>>()?,
            ),
            Restore::Stochastic(_) => None,
        };
        if !self.core.opt.step(&grads, self.core.lr)? {
            self.core.counters.skipped_updates += 1;
            return Ok(BatchOutput {
                logits: out,
                skipped_update: true,
            });
        }
        self.core.counters.updates += 1;
        self.update_teacher()?;
        let masks: Vec<Vec<bool>> = match (self.cfg.restore, fisher) {
            (Restore::Fisher(perc), Some(f)) => {
                let all: Vec<f32> = f.iter().flatten().copied().collect();
                let t = quantile(&all, perc);
                f.iter()
                    .map(|v| v.iter().map(|&g| g < t).collect())
                    .collect()
            }
            (Restore::Stochastic(rst), _) => match &self.fixed_masks {
                Some(m) => m.clone(),
                None => params
                    .iter()
                    .map(|p| {
                        (0..p.var().elem_count())
                            .map(|_| self.rng.gen::<f64>() < rst)
                            .collect()
                    })
                    .collect(),
            },
            (Restore::Fisher(_), None) => unreachable!("fisher computed for Fisher restore"),
        };
        self.restore_where(&masks)?;
        Ok(BatchOutput {
            logits: out,
            skipped_update: false,
        })
    }

    fn predict(&mut self, x: &Tensor) -> Result<Vec<f32>> {
        need_batch(self.cfg.name, x)?;
        // The prediction of an adapted CoTTA model is its teacher's.
        host(&self.teacher.forward(x, BnMode::Batch)?)
    }

    fn reset(&mut self) -> Result<()> {
        self.teacher.store().restore(&self.teacher_initial)?;
        self.rng = crate::rng::rng(self.seed, &format!("{}/augment", self.cfg.name));
        self.core.reset()
    }

    delegate_to_core!();
}
