//! Batch normalization as one pass forward and one pass backward.
//!
//! The statistics used to normalize are `m = (1−α)·μ_s + α·μ_b`, `v = (1−α)·σ²_s + α·σ²_b`, where
//! (μ_s, σ²_s) are fixed (running/source) statistics and (μ_b, σ²_b) the batch's own (biased
//! variance, as PyTorch normalizes). α = 1 is train-mode / test-time normalization, α = 0 is
//! eval mode, anything between is the α-BN mix. The gradient flows through the batch statistics
//! with weight α:
//!
//! `dx_i = γ·r·[dy_i − (α/M)·Σdy − (α/M)·r²·(x_i − μ_b)·Σ dy_j (x_j − m)]`, `r = 1/√(v+ε)`,
//! `dγ = Σ dy·(x−m)·r`, `dβ = Σ dy`, sums over the M = N·H·W positions of a channel.

use super::{f32_slice, with_f32};
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Per-channel statistics of a batch (NC… layout), computed in f64.
#[derive(Clone, Debug, PartialEq)]
pub struct BnStats {
    pub mean: Vec<f32>,
    /// Biased variance (divide by M), as used for normalization.
    pub var: Vec<f32>,
    /// Number of values per channel (N·H·W): the unbiased variance is var·M/(M−1).
    pub count: usize,
}

impl BnStats {
    pub fn of(x: &Tensor) -> Result<Self> {
        let dims = x.dims();
        if dims.len() < 2 {
            candle_core::bail!("batch norm: expected (N, C, ...), got {dims:?}");
        }
        let (n, c) = (dims[0], dims[1]);
        let s: usize = dims[2..].iter().product();
        if !x.device().is_cpu() {
            // Other devices: reduce there, bring the C values home.
            let xt = x
                .transpose(0, 1)?
                .flatten_from(1)?
                .to_dtype(candle_core::DType::F32)?;
            let mean = xt.mean_keepdim(1)?;
            let var = xt.broadcast_sub(&mean)?.sqr()?.mean(1)?;
            return Ok(Self {
                mean: mean.flatten_all()?.to_vec1()?,
                var: var.to_vec1()?,
                count: n * s,
            });
        }
        let stats: Vec<(f32, f32)> = with_f32(x, |x| {
            Ok((0..c)
                .into_par_iter()
                .map(|ch| {
                    let (mut sum, mut sq) = (0f64, 0f64);
                    for b in 0..n {
                        for v in &x[(b * c + ch) * s..(b * c + ch + 1) * s] {
                            sum += *v as f64;
                        }
                    }
                    let mean = sum / (n * s) as f64;
                    for b in 0..n {
                        for v in &x[(b * c + ch) * s..(b * c + ch + 1) * s] {
                            let d = *v as f64 - mean;
                            sq += d * d;
                        }
                    }
                    (mean as f32, (sq / (n * s) as f64) as f32)
                })
                .collect())
        })?;
        Ok(Self {
            mean: stats.iter().map(|s| s.0).collect(),
            var: stats.iter().map(|s| s.1).collect(),
            count: n * s,
        })
    }
}

/// What a batch-norm call normalizes with.
#[derive(Clone, Debug)]
pub struct BnNormalizer {
    /// The statistics actually used (already mixed).
    pub(super) mean: Vec<f32>,
    pub(super) inv_std: Vec<f32>,
    /// The batch's own mean (only read when alpha > 0).
    pub(super) batch_mean: Vec<f32>,
    pub(super) alpha: f32,
}

impl BnNormalizer {
    /// Mix fixed statistics with the batch's: `alpha` = weight of the batch.
    pub fn new(
        fixed_mean: &[f32],
        fixed_var: &[f32],
        batch: Option<&BnStats>,
        alpha: f32,
        eps: f64,
    ) -> Self {
        let c = fixed_mean.len();
        let (mut mean, mut var) = (fixed_mean.to_vec(), fixed_var.to_vec());
        let mut batch_mean = vec![0f32; c];
        let alpha = if batch.is_some() { alpha } else { 0.0 };
        if let Some(b) = batch {
            for i in 0..c {
                mean[i] = (1.0 - alpha) * fixed_mean[i] + alpha * b.mean[i];
                var[i] = (1.0 - alpha) * fixed_var[i] + alpha * b.var[i];
            }
            batch_mean.copy_from_slice(&b.mean);
        }
        let inv_std = var
            .iter()
            .map(|v| (1.0 / (*v as f64 + eps).sqrt()) as f32)
            .collect();
        Self {
            mean,
            inv_std,
            batch_mean,
            alpha,
        }
    }
}

struct BatchNormOp(BnNormalizer);

fn dims_ncs(dims: &[usize]) -> (usize, usize, usize) {
    (dims[0], dims[1], dims[2..].iter().product())
}

impl CustomOp3 for BatchNormOp {
    fn name(&self) -> &'static str {
        "attune-batchnorm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, gamma, beta) = (f32_slice(s1, l1)?, f32_slice(s2, l2)?, f32_slice(s3, l3)?);
        let (n, c, s) = dims_ncs(l1.dims());
        if gamma.len() != c || beta.len() != c || self.0.mean.len() != c {
            candle_core::bail!("batch norm: {c} channels but {} parameters", gamma.len());
        }
        let nm = &self.0;
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(s)
            .zip(x.par_chunks(s))
            .enumerate()
            .for_each(|(i, (yb, xb))| {
                let ch = i % c;
                let scale = gamma[ch] * nm.inv_std[ch];
                let shift = beta[ch] - nm.mean[ch] * scale;
                for (o, v) in yb.iter_mut().zip(xb) {
                    *o = v * scale + shift;
                }
            });
        let _ = n;
        Ok((CpuStorage::F32(y), Shape::from(l1.dims())))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (n, c, s) = dims_ncs(x.dims());
        let nm = &self.0;
        let m = (n * s) as f32;
        let gamma_v = gamma.to_vec1::<f32>()?;
        // Per channel: Σdy and Σ dy·(x − m).
        let sums: Vec<(f64, f64)> = with_f32(x, |xv| {
            with_f32(dy, |dyv| {
                Ok((0..c)
                    .into_par_iter()
                    .map(|ch| {
                        let (mut sdy, mut sdyx) = (0f64, 0f64);
                        for b in 0..n {
                            let r = (b * c + ch) * s..(b * c + ch + 1) * s;
                            for (g, v) in dyv[r.clone()].iter().zip(&xv[r]) {
                                sdy += *g as f64;
                                sdyx += (*g as f64) * ((v - nm.mean[ch]) as f64);
                            }
                        }
                        (sdy, sdyx)
                    })
                    .collect())
            })
        })?;
        let dx = if x.track_op() {
            let v = with_f32(x, |xv| {
                with_f32(dy, |dyv| {
                    let mut dx = vec![0f32; xv.len()];
                    dx.par_chunks_mut(s).enumerate().for_each(|(i, d)| {
                        let ch = i % c;
                        let r = nm.inv_std[ch];
                        let k = gamma_v[ch] * r;
                        let a = nm.alpha / m;
                        let c1 = a * sums[ch].0 as f32;
                        let c2 = a * r * r * sums[ch].1 as f32;
                        let mb = nm.batch_mean[ch];
                        let xs = &xv[i * s..(i + 1) * s];
                        let gs = &dyv[i * s..(i + 1) * s];
                        for ((d, xv), g) in d.iter_mut().zip(xs).zip(gs) {
                            *d = k * (g - c1 - (xv - mb) * c2);
                        }
                    });
                    Ok(dx)
                })
            })?;
            Some(Tensor::from_vec(v, x.shape(), x.device())?)
        } else {
            None
        };
        let dgamma = if gamma.track_op() {
            let v: Vec<f32> = (0..c)
                .map(|ch| (sums[ch].1 as f32) * nm.inv_std[ch])
                .collect();
            Some(Tensor::from_vec(v, gamma.shape(), gamma.device())?)
        } else {
            None
        };
        let dbeta = if beta.track_op() {
            let v: Vec<f32> = sums.iter().map(|s| s.0 as f32).collect();
            Some(Tensor::from_vec(v, beta.shape(), beta.device())?)
        } else {
            None
        };
        Ok((dx, dgamma, dbeta))
    }
}

/// Composed candle ops for the same computation (other devices; the reference in tests).
pub fn batch_norm_composed(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    (fixed_mean, fixed_var): (&Tensor, &Tensor),
    alpha: f64,
    use_batch: bool,
    eps: f64,
) -> Result<Tensor> {
    let c = x.dim(1)?;
    let mut bshape = vec![1usize; x.rank()];
    bshape[1] = c;
    let (mean, var) = if use_batch {
        // Reduce over every axis but the channel axis.
        let xt = x.transpose(0, 1)?.flatten_from(1)?; // (C, M)
        let bm = xt.mean_keepdim(1)?; // (C, 1)
        let bv = xt.broadcast_sub(&bm)?.sqr()?.mean_keepdim(1)?;
        let mean = ((fixed_mean.reshape((c, 1))? * (1.0 - alpha))? + (bm * alpha)?)?;
        let var = ((fixed_var.reshape((c, 1))? * (1.0 - alpha))? + (bv * alpha)?)?;
        (mean, var)
    } else {
        (fixed_mean.reshape((c, 1))?, fixed_var.reshape((c, 1))?)
    };
    let mean = mean.reshape(bshape.as_slice())?;
    let inv = (var.reshape(bshape.as_slice())? + eps)?.sqrt()?.recip()?;
    let xhat = x.broadcast_sub(&mean)?.broadcast_mul(&inv)?;
    xhat.broadcast_mul(&gamma.reshape(bshape.as_slice())?)?
        .broadcast_add(&beta.reshape(bshape.as_slice())?)
}

/// Batch normalization of `x` (N, C, ...) with affine `gamma`/`beta` (C).
///
/// `fixed` holds the running (source) statistics; `batch` the batch's own, weighted by `alpha`
/// (1 = normalize with the batch alone). Returns the normalized tensor; gradients flow to `x`,
/// `gamma` and `beta` as far as the graph tracks them.
pub fn batch_norm(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    (fixed_mean, fixed_var): (&[f32], &[f32]),
    batch: Option<&BnStats>,
    alpha: f32,
    eps: f64,
) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == candle_core::DType::F32 {
        let nm = BnNormalizer::new(fixed_mean, fixed_var, batch, alpha, eps);
        x.contiguous()?
            .apply_op3(&gamma.contiguous()?, &beta.contiguous()?, BatchNormOp(nm))
    } else {
        let dev = x.device();
        let fm = Tensor::new(fixed_mean, dev)?;
        let fv = Tensor::new(fixed_var, dev)?;
        batch_norm_composed(
            x,
            gamma,
            beta,
            (&fm, &fv),
            alpha as f64,
            batch.is_some(),
            eps,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::test_util::{assert_close, randn};
    use candle_core::{Device, Var};

    fn check(alpha: f32, use_batch: bool, dims: &[usize]) {
        let c = dims[1];
        let x =
            Var::from_tensor(&(randn(dims, 1) * 2.0).unwrap().affine(1.0, 0.5).unwrap()).unwrap();
        let g = Var::from_tensor(&randn(&[c], 2)).unwrap();
        let b = Var::from_tensor(&randn(&[c], 3)).unwrap();
        let fm: Vec<f32> = (0..c).map(|i| 0.1 * i as f32).collect();
        let fv: Vec<f32> = (0..c).map(|i| 0.5 + 0.3 * i as f32).collect();
        let up = randn(dims, 4);
        let stats = BnStats::of(x.as_tensor()).unwrap();
        let y = batch_norm(
            x.as_tensor(),
            g.as_tensor(),
            b.as_tensor(),
            (&fm, &fv),
            use_batch.then_some(&stats),
            alpha,
            1e-5,
        )
        .unwrap();
        let gr = (&y * &up).unwrap().sum_all().unwrap().backward().unwrap();
        let dev = Device::Cpu;
        let y_ref = batch_norm_composed(
            x.as_tensor(),
            g.as_tensor(),
            b.as_tensor(),
            (
                &Tensor::new(fm.as_slice(), &dev).unwrap(),
                &Tensor::new(fv.as_slice(), &dev).unwrap(),
            ),
            alpha as f64,
            use_batch,
            1e-5,
        )
        .unwrap();
        let gr_ref = (&y_ref * &up)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        assert_close(&y, &y_ref, 1e-4, "forward");
        for (name, v) in [("dx", &x), ("dgamma", &g), ("dbeta", &b)] {
            assert_close(gr.get(v).unwrap(), gr_ref.get(v).unwrap(), 2e-4, name);
        }
    }

    #[test]
    fn batch_stats_match_composed_reference() {
        check(1.0, true, &[4, 3, 5, 5]);
    }

    #[test]
    fn fixed_stats_match_composed_reference() {
        check(0.0, false, &[4, 3, 5, 5]);
    }

    #[test]
    fn alpha_mix_matches_composed_reference() {
        check(0.1, true, &[3, 2, 4, 4]);
        check(0.7, true, &[5, 4]);
    }

    #[test]
    fn stats_are_hand_computed() {
        // Channel 0 holds 1, 2, 3, 4 over two images; channel 1 holds 0s.
        let x = Tensor::new(
            &[[[1f32, 2.], [0., 0.]], [[3., 4.], [0., 0.]]],
            &Device::Cpu,
        )
        .unwrap();
        let s = BnStats::of(&x).unwrap();
        assert_eq!(s.mean, vec![2.5, 0.0]);
        assert_eq!(s.var, vec![1.25, 0.0]);
        assert_eq!(s.count, 4);
    }

    #[test]
    fn batch_norm_with_batch_stats_gives_zero_mean_unit_var() {
        let x = (randn(&[8, 3, 4, 4], 7) * 3.0)
            .unwrap()
            .affine(1.0, 2.0)
            .unwrap();
        let stats = BnStats::of(&x).unwrap();
        let ones = Tensor::ones(3, candle_core::DType::F32, &Device::Cpu).unwrap();
        let zeros = ones.zeros_like().unwrap();
        let y = batch_norm(
            &x,
            &ones,
            &zeros,
            (&[0.; 3], &[1.; 3]),
            Some(&stats),
            1.0,
            0.0,
        )
        .unwrap();
        let s = BnStats::of(&y).unwrap();
        for c in 0..3 {
            assert!(s.mean[c].abs() < 1e-5, "{:?}", s.mean);
            assert!((s.var[c] - 1.0).abs() < 1e-4, "{:?}", s.var);
        }
    }
}
