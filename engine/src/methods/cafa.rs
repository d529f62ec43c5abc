//! CAFA, class-aware feature alignment (Jung et al., ICCV 2023). There is no official code; this
//! follows the paper:
//!
//! - before adaptation: class means μ_c and a covariance Σ of the source model's penultimate
//!   features on `source_samples` clean training images with their labels (eval-mode BatchNorm);
//! - TENT's setup otherwise: batch statistics, only the BN affine parameters trained;
//! - loss = mean over the batch of log( D(f, μ_ŷ) / Σ_c D(f, μ_c) ), with
//!   D(f, μ) = (f − μ)ᵀ Σ⁻¹ (f − μ) the squared Mahalanobis distance and ŷ the model's own
//!   prediction; one optimizer step; the prediction is the forward pass before the step.
//!
//! `covariance`: `shared` (default; one within-class covariance for all classes, as Mahalanobis
//! classifiers usually tie it) or `diagonal` (its diagonal only). Σ is regularized with
//! λ·I, λ = shrinkage · (mean feature variance), since the CNN's 6272 features outnumber the
//! clean samples. With more features than samples the inverse is applied through the Woodbury
//! identity: with X the centred features / √n, Σ⁻¹ = (I − Xᵀ(λI + XXᵀ)⁻¹X)/λ. Distances are
//! computed in f64.

use super::tent::AffineLearner;
use super::{clean_features, host, need_batch, BatchOutput, Method, MethodEnv, MethodSpec};
use crate::error::{EngineError, Result};
use crate::models::Model;
use crate::nn::BnMode;
use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Covariance {
    #[default]
    Shared,
    Diagonal,
}

/// How D(f, μ) is computed: α·‖f − μ‖² + β·‖W(f − μ)‖², with W either a matrix (r × D) or a
/// per-feature scale.
enum Whitening {
    Matrix(Tensor),
    Scale(Tensor),
}

pub struct Cafa {
    core: AffineLearner,
    /// (C, D) class means, f64.
    mu: Tensor,
    /// (C, r) whitened class means.
    wmu: Tensor,
    w: Whitening,
    alpha: f64,
    beta: f64,
}

/// Cholesky factor (lower) of the symmetric positive definite `a` (n × n, row-major).
fn cholesky(a: &[f64], n: usize) -> Result<Vec<f64>> {
    let mut l = vec![0f64; n * n];
    for i in 0..n {
        for j in 0..=i {
            let mut s = a[i * n + j];
            let (ri, rj) = (&l[i * n..i * n + j], &l[j * n..j * n + j]);
            s -= ri.iter().zip(rj).map(|(x, y)| x * y).sum::<f64>();
            if i == j {
                if s <= 0.0 || !s.is_finite() {
                    return Err(EngineError::InvalidSpec(
                        "cafa: the source feature covariance is not positive definite (raise shrinkage)".into(),
                    ));
                }
                l[i * n + i] = s.sqrt();
            } else {
                l[i * n + j] = s / l[j * n + j];
            }
        }
    }
    Ok(l)
}

/// Inverse of a lower-triangular matrix (row-major n × n).
fn lower_inverse(l: &[f64], n: usize) -> Vec<f64> {
    let mut inv = vec![0f64; n * n];
    for col in 0..n {
        // Solve L x = e_col by forward substitution.
        for i in col..n {
            let mut s = if i == col { 1.0 } else { 0.0 };
            for k in col..i {
                s -= l[i * n + k] * inv[k * n + col];
            }
            inv[i * n + col] = s / l[i * n + i];
        }
    }
    inv
}

impl Cafa {
    pub fn new(model: Model, spec: &MethodSpec, env: &MethodEnv) -> Result<Self> {
        let MethodSpec::Cafa {
            optimizer,
            covariance,
            shrinkage,
            source_samples,
        } = spec
        else {
            unreachable!("Cafa::new with {spec:?}")
        };
        let clean = env.clean_set("cafa")?;
        let classes = model.info().num_classes;
        let (feats, labels, d) =
            clean_features(&model, clean, *source_samples, env.batch_size, BnMode::Eval)?;
        let n = labels.len();
        let dev = model.device().clone();
        let mut mu = vec![0f64; classes * d];
        let mut counts = vec![0usize; classes];
        let mut global = vec![0f64; d];
        for (i, &y) in labels.iter().enumerate() {
            counts[y as usize] += 1;
            for j in 0..d {
                mu[y as usize * d + j] += feats[i * d + j] as f64;
                global[j] += feats[i * d + j] as f64 / n as f64;
            }
        }
        for c in 0..classes {
            for j in 0..d {
                mu[c * d + j] = if counts[c] > 0 {
                    mu[c * d + j] / counts[c] as f64
                } else {
                    global[j] // a class absent from the clean samples sits at the global mean
                };
            }
        }
        // Centred features / √n: the within-class covariance is XᵀX.
        let sn = (n as f64).sqrt();
        let x: Vec<f64> = (0..n * d)
            .map(|k| (feats[k] as f64 - mu[labels[k / d] as usize * d + k % d]) / sn)
            .collect();
        let var: Vec<f64> = (0..d)
            .map(|j| (0..n).map(|i| x[i * d + j].powi(2)).sum::<f64>())
            .collect();
        let lambda = shrinkage * var.iter().sum::<f64>() / d as f64;
        if lambda <= 0.0 {
            return Err(EngineError::InvalidSpec(
                "cafa: the clean source features have no variance".into(),
            ));
        }
        let mu_t = Tensor::from_vec(mu, (classes, d), &dev)?;
        let (w, alpha, beta) = match covariance {
            Covariance::Diagonal => {
                let s: Vec<f64> = var.iter().map(|v| 1.0 / (v + lambda).sqrt()).collect();
                (
                    Whitening::Scale(Tensor::from_vec(s, (1, d), &dev)?),
                    0.0,
                    1.0,
                )
            }
            Covariance::Shared if d <= n => {
                let mut sigma = vec![0f64; d * d];
                for i in 0..n {
                    let r = &x[i * d..(i + 1) * d];
                    for a in 0..d {
                        let ra = r[a];
                        for b in 0..=a {
                            sigma[a * d + b] += ra * r[b];
                        }
                    }
                }
                for a in 0..d {
                    sigma[a * d + a] += lambda;
                    for b in 0..a {
                        sigma[b * d + a] = sigma[a * d + b];
                    }
                }
                let inv = lower_inverse(&cholesky(&sigma, d)?, d);
                (
                    Whitening::Matrix(Tensor::from_vec(inv, (d, d), &dev)?),
                    0.0,
                    1.0,
                )
            }
            Covariance::Shared => {
                let xt = Tensor::from_vec(x, (n, d), &dev)?;
                let g = xt.matmul(&xt.t()?)?.flatten_all()?.to_vec1::<f64>()?;
                let mut g = g;
                for i in 0..n {
                    g[i * n + i] += lambda;
                }
                let inv = lower_inverse(&cholesky(&g, n)?, n);
                let p = Tensor::from_vec(inv, (n, n), &dev)?.matmul(&xt)?;
                (Whitening::Matrix(p), 1.0 / lambda, -1.0 / lambda)
            }
        };
        let core = AffineLearner::new(model, optimizer.clone(), "cafa")?;
        let wmu = whiten(&w, &mu_t)?;
        Ok(Self {
            core,
            mu: mu_t,
            wmu,
            w,
            alpha,
            beta,
        })
    }

    /// Squared Mahalanobis distances (B, C) of features `f` (B, D) to the class means, f64.
    fn distances(&self, f: &Tensor) -> Result<Tensor> {
        let f = f.to_dtype(DType::F64)?;
        let wf = whiten(&self.w, &f)?;
        let sq = |a: &Tensor, b: &Tensor| -> Result<Tensor> {
            Ok(a.unsqueeze(1)?
                .broadcast_sub(&b.unsqueeze(0)?)?
                .sqr()?
                .sum(2)?)
        };
        let mut d = sq(&wf, &self.wmu)?.affine(self.beta, 0.0)?;
        if self.alpha != 0.0 {
            d = (d + sq(&f, &self.mu)?.affine(self.alpha, 0.0)?)?;
        }
        Ok(d.clamp(1e-12, f64::MAX)?)
    }
}

fn whiten(w: &Whitening, f: &Tensor) -> Result<Tensor> {
    Ok(match w {
        Whitening::Matrix(p) => f.matmul(&p.t()?)?,
        Whitening::Scale(s) => f.broadcast_mul(s)?,
    })
}

impl Method for Cafa {
    fn adapt_and_predict(&mut self, x: &Tensor) -> Result<BatchOutput> {
        need_batch("cafa", x)?;
        let (f, logits) = self.core.model.forward_features(x, BnMode::Batch)?;
        let out = host(&logits)?;
        let (n, c) = logits.dims2()?;
        let mut onehot = vec![0f64; n * c];
        for i in 0..n {
            let r = &out[i * c..(i + 1) * c];
            let arg = (0..c).fold(0, |b, j| if r[j] > r[b] { j } else { b });
            onehot[i * c + arg] = 1.0;
        }
        let onehot = Tensor::from_vec(onehot, (n, c), x.device())?;
        let d = self.distances(&f)?;
        let own = (&d * onehot)?.sum(1)?.log()?;
        let all = d.sum(1)?.log()?;
        let loss = (own - all)?.mean_all()?.to_dtype(DType::F32)?;
        self.core.counters.samples_used += n as u64;
        let skipped = self.core.step(&loss)?;
        Ok(BatchOutput {
            logits: out,
            skipped_update: skipped,
        })
    }

    fn predict(&mut self, x: &Tensor) -> Result<Vec<f32>> {
        need_batch("cafa", x)?;
        host(&self.core.model.forward(x, BnMode::Batch)?)
    }

    fn reset(&mut self) -> Result<()> {
        self.core.reset()
    }

    delegate_to_core!();
}
