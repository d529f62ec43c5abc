//! LAME (Boudiaf et al., CVPR 2022): the model stays frozen (running statistics); each batch's
//! output probabilities are corrected by Laplacian-regularized maximum likelihood over a graph
//! of the batch's features, following the official code:
//!
//! - features f = L2-normalized penultimate features; affinity W from them: `rbf` (default;
//!   exp(−d²/(2σ²)) with σ the mean distance to the k-th nearest point, the point itself
//!   counted), `knn` (1 for the k nearest other points) or `linear` (f·fᵀ);
//! - unary = −log(p + 1e-10); Y ← softmax(−unary); repeat up to max_steps:
//!   Y ← softmax(−unary + λ·W·Y), stopping when the energy
//!   Σ (unary·Y − λ·(λ·W·Y)·Y + Y·log max(Y, 1e-20)) (λ twice, as in the official code) changes by ≤ 1e-8 relatively (after step 2);
//! - the output is Y (returned as log Y, so that softmax of the "logits" is Y).
//!
//! Nothing is carried between batches: `reset` has nothing to do.

use super::{BatchOutput, Counters, Method};
use crate::error::Result;
use crate::models::Model;
use crate::nn::BnMode;
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Affinity {
    #[default]
    Rbf,
    Knn,
    Linear,
}

pub struct Lame {
    model: Model,
    affinity: Affinity,
    k: usize,
    max_steps: usize,
    bound_lambda: f64,
}

impl Lame {
    pub fn new(
        model: Model,
        affinity: Affinity,
        k: usize,
        max_steps: usize,
        bound_lambda: f64,
    ) -> Self {
        model.store().set_trainable(|_| false);
        Self {
            model,
            affinity,
            k,
            max_steps,
            bound_lambda,
        }
    }
}

/// Pairwise affinities of the rows of `f` (N × D, L2-normalized), row-major N × N.
pub(crate) fn affinity(f: &Tensor, kind: Affinity, k: usize) -> Result<Vec<f64>> {
    let n = f.dim(0)?;
    let gram: Vec<f64> = f
        .matmul(&f.t()?)?
        .flatten_all()?
        .to_vec1::<f32>()?
        .into_iter()
        .map(f64::from)
        .collect();
    if kind == Affinity::Linear {
        return Ok(gram);
    }
    let sq: Vec<f64> = (0..n).map(|i| gram[i * n + i]).collect();
    let mut dist = vec![0f64; n * n];
    for i in 0..n {
        for j in 0..n {
            if i != j {
                dist[i * n + j] = (sq[i] + sq[j] - 2.0 * gram[i * n + j]).max(0.0).sqrt();
            }
        }
    }
    let sorted_row = |i: usize| {
        let mut r: Vec<(f64, usize)> = (0..n).map(|j| (dist[i * n + j], j)).collect();
        // The point itself (distance 0) first, as torch.topk(largest=False) puts it.
        r.sort_by(|a, b| a.0.total_cmp(&b.0).then((a.1 != i).cmp(&(b.1 != i))));
        r
    };
    let mut w = vec![0f64; n * n];
    match kind {
        Affinity::Rbf => {
            let kk = k.min(n);
            let sigma = (0..n).map(|i| sorted_row(i)[kk - 1].0).sum::<f64>() / n as f64;
            for (wv, d) in w.iter_mut().zip(&dist) {
                *wv = if sigma > 0.0 {
                    (-d * d / (2.0 * sigma * sigma)).exp()
                } else {
                    // All points coincide: every pair is maximally similar.
                    1.0
                };
            }
        }
        Affinity::Knn => {
            let kk = (k + 1).min(n);
            for i in 0..n {
                for &(_, j) in sorted_row(i).iter().take(kk).skip(1) {
                    w[i * n + j] = 1.0;
                }
            }
        }
        Affinity::Linear => unreachable!(),
    }
    Ok(w)
}

/// The Laplacian optimization on probabilities `p` (N × C) with kernel `w` (N × N).
pub(crate) fn laplacian_optimization(
    p: &[f32],
    c: usize,
    w: &[f64],
    lambda: f64,
    max_steps: usize,
) -> Vec<f64> {
    let n = p.len() / c;
    let unary: Vec<f64> = p.iter().map(|&v| -((v as f64) + 1e-10).ln()).collect();
    let softmax_rows = |e: &[f64]| -> Vec<f64> {
        let mut y = vec![0f64; e.len()];
        for i in 0..n {
            let r = &e[i * c..(i + 1) * c];
            let m = r.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let s: f64 = r.iter().map(|v| (v - m).exp()).sum();
            for j in 0..c {
                y[i * c + j] = (r[j] - m).exp() / s;
            }
        }
        y
    };
    let mut y = softmax_rows(&unary.iter().map(|u| -u).collect::<Vec<_>>());
    let mut old_e = f64::INFINITY;
    for step in 0..max_steps {
        let mut pairwise = vec![0f64; n * c];
        for i in 0..n {
            for k in 0..n {
                let wik = w[i * n + k];
                if wik != 0.0 {
                    for j in 0..c {
                        pairwise[i * c + j] += lambda * wik * y[k * c + j];
                    }
                }
            }
        }
        let exponent: Vec<f64> = unary.iter().zip(&pairwise).map(|(u, pw)| -u + pw).collect();
        y = softmax_rows(&exponent);
        let e: f64 = (0..n * c)
            .map(|i| unary[i] * y[i] - lambda * pairwise[i] * y[i] + y[i] * y[i].max(1e-20).ln())
            .sum();
        if step > 1 && (e - old_e).abs() <= 1e-8 * old_e.abs() {
            break;
        }
        old_e = e;
    }
    y
}

impl Method for Lame {
    fn adapt_and_predict(&mut self, x: &Tensor) -> Result<BatchOutput> {
        Ok(BatchOutput {
            logits: self.predict(x)?,
            skipped_update: false,
        })
    }

    fn predict(&mut self, x: &Tensor) -> Result<Vec<f32>> {
        let (feats, logits) = self.model.forward_features(x, BnMode::Eval)?;
        let c = logits.dim(1)?;
        let p = crate::losses::softmax(&logits)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let norm = feats
            .sqr()?
            .sum_keepdim(1)?
            .sqrt()?
            .clamp(1e-12, f64::MAX)?;
        let f = feats.broadcast_div(&norm)?;
        let w = affinity(&f, self.affinity, self.k)?;
        let y = laplacian_optimization(&p, c, &w, self.bound_lambda, self.max_steps);
        Ok(y.iter().map(|v| v.max(1e-30).ln() as f32).collect())
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
