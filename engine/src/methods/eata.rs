//! EATA (Niu et al., ICML 2022): TENT's setup (batch statistics, BN affine parameters trained)
//! with two sample filters and an anti-forgetting regularizer, following the official code:
//!
//! 1. reliability: keep samples with entropy H < E0 = e_margin · ln C;
//! 2. redundancy: among them keep those whose probability vector has |cos(m, p)| < d_margin,
//!    where m is a moving average (0.9) of the mean probability vector of the samples kept so
//!    far (the first batch that keeps anything initializes it, and then nothing is filtered);
//! 3. loss = mean over kept of exp(−(H − E0))·H, plus fisher_alpha · Σ F·(θ − θ₀)² where F is
//!    the diagonal Fisher information of the source model, estimated before adaptation on
//!    `fisher_size` clean **training-split** samples (mean over batches of the squared gradient
//!    of the batch cross-entropy with argmax pseudo-labels);
//! 4. no step when nothing is kept. The prediction is the forward pass before the step.
//!
//! `reset` also forgets the probability moving average (the official reset keeps it).

use super::filters::{self, ln_classes, Crowds, Scores};
use super::tent::AffineLearner;
use super::{host, need_batch, BatchOutput, Method, MethodEnv, MethodSpec};
use crate::error::{EngineError, Result};
use crate::jobs::images_to_tensor;
use crate::losses;
use crate::models::Model;
use crate::nn::BnMode;
use candle_core::Tensor;

pub struct Eata {
    core: AffineLearner,
    e0: f64,
    d_margin: f64,
    fisher_alpha: f64,
    /// Per trainable parameter: (Fisher diagonal, source value).
    fisher: Vec<(Tensor, Tensor)>,
    /// Moving average of the kept samples' mean probability vector.
    probs_ema: Option<Vec<f32>>,
    crowds: Option<Crowds>,
}

impl Eata {
    pub fn new(
        model: Model,
        spec: &MethodSpec,
        crowds: Option<Crowds>,
        env: &MethodEnv,
    ) -> Result<Self> {
        let MethodSpec::Eata {
            optimizer,
            e_margin,
            d_margin,
            fisher_alpha,
            fisher_size,
            ..
        } = spec
        else {
            unreachable!("Eata::new with {spec:?}")
        };
        let core = AffineLearner::new(model, optimizer.clone(), "eata")?;
        let fisher = if *fisher_alpha > 0.0 {
            let clean = env.clean.ok_or_else(|| {
                EngineError::InvalidSpec("eata: no clean samples for the Fisher information".into())
            })?;
            fisher_information(&core.model, clean, *fisher_size, env.batch_size)?
        } else {
            vec![]
        };
        let c = core.model.info().num_classes;
        Ok(Self {
            core,
            e0: e_margin * ln_classes(c),
            d_margin: *d_margin,
            fisher_alpha: *fisher_alpha,
            fisher,
            probs_ema: None,
            crowds,
        })
    }
}

/// Diagonal Fisher information of the trainable parameters on the first `n` clean images,
/// in batches of `batch`: mean over batches of (∂ CE(f(x), argmax f(x)) / ∂θ)², with the model
/// as it adapts (batch statistics). Returns (F, θ₀) per trainable parameter.
fn fisher_information(
    model: &Model,
    clean: &crate::data::ImageSet,
    n: usize,
    batch: usize,
) -> Result<Vec<(Tensor, Tensor)>> {
    let n = n.min(clean.len());
    if n == 0 {
        return Err(EngineError::InvalidSpec(
            "eata: the clean set for the Fisher information is empty".into(),
        ));
    }
    let params = model.store().trainable();
    let mut acc: Vec<Option<Tensor>> = vec![None; params.len()];
    let batch = batch.max(2);
    let mut batches = 0usize;
    for s in (0..n).step_by(batch) {
        let e = (s + batch).min(n);
        if e - s < 2 && batches > 0 {
            break; // a trailing single sample has no batch statistics
        }
        let x = images_to_tensor(
            &clean.images[s * clean.pixels()..e * clean.pixels()],
            clean.height,
            clean.width,
            model.device(),
        )?;
        let logits = model.forward(&x, BnMode::Batch)?;
        let pseudo: Vec<u8> = {
            let sc = Scores::of(&logits)?;
            (0..sc.len()).map(|i| sc.top(i).0 as u8).collect()
        };
        let loss = losses::cross_entropy(&logits, &pseudo, 0.0)?;
        let grads = loss.backward()?;
        for (a, p) in acc.iter_mut().zip(&params) {
            if let Some(g) = grads.get(p.var().as_tensor()) {
                let g2 = g.sqr()?;
                *a = Some(match a.take() {
                    Some(t) => (t + g2)?,
                    None => g2,
                });
            }
        }
        batches += 1;
    }
    params
        .iter()
        .zip(acc)
        .map(|(p, a)| {
            let theta0 = p.var().as_tensor().detach().copy()?;
            let f = match a {
                Some(t) => (t / batches as f64)?,
                None => theta0.zeros_like()?,
            };
            Ok((f, theta0))
        })
        .collect()
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (*x as f64) * (*y as f64))
        .sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na.max(1e-8) * nb.max(1e-8))
}

impl Method for Eata {
    fn adapt_and_predict(&mut self, x: &Tensor) -> Result<BatchOutput> {
        need_batch("eata", x)?;
        let logits = self.core.model.forward(x, BnMode::Batch)?;
        let out = host(&logits)?;
        let sc = Scores::of(&logits)?;
        let c = sc.classes;
        let mut keep: Vec<bool> = sc.entropy.iter().map(|&h| (h as f64) < self.e0).collect();
        if let Some(cr) = &self.crowds {
            cr.apply(x, &sc, &mut keep)?;
        }
        if let Some(m) = &self.probs_ema {
            for (i, k) in keep.iter_mut().enumerate() {
                if *k && cosine(m, sc.row(i)).abs() >= self.d_margin {
                    *k = false;
                }
            }
        }
        let kept: Vec<usize> = (0..keep.len()).filter(|&i| keep[i]).collect();
        if !kept.is_empty() {
            let mut mean = vec![0f32; c];
            for &i in &kept {
                mean.iter_mut().zip(sc.row(i)).for_each(|(m, p)| *m += p);
            }
            mean.iter_mut().for_each(|m| *m /= kept.len() as f32);
            self.probs_ema = Some(match self.probs_ema.take() {
                None => mean,
                Some(old) => old
                    .iter()
                    .zip(&mean)
                    .map(|(o, n)| 0.9 * o + 0.1 * n)
                    .collect(),
            });
        }
        let weights: Vec<f32> = sc
            .entropy
            .iter()
            .map(|&h| (-(h as f64 - self.e0)).exp() as f32)
            .collect();
        let ent = losses::entropy(&logits)?;
        let mut skipped = false;
        match filters::masked_mean(&ent, &keep, Some(&weights))? {
            None => self.core.counters.empty_batches += 1,
            Some(mut loss) => {
                self.core.counters.samples_used += kept.len() as u64;
                if self.fisher_alpha > 0.0 {
                    for (p, (f, theta0)) in
                        self.core.model.store().trainable().iter().zip(&self.fisher)
                    {
                        let d = (p.t() - theta0)?.sqr()?;
                        let term = (d * f)?.sum_all()?.affine(self.fisher_alpha, 0.0)?;
                        loss = (loss + term)?;
                    }
                }
                skipped = self.core.step(&loss)?;
            }
        }
        Ok(BatchOutput {
            logits: out,
            skipped_update: skipped,
        })
    }

    fn predict(&mut self, x: &Tensor) -> Result<Vec<f32>> {
        need_batch("eata", x)?;
        host(&self.core.model.forward(x, BnMode::Batch)?)
    }

    fn reset(&mut self) -> Result<()> {
        self.probs_ema = None;
        self.core.reset()
    }

    delegate_to_core!();
}
