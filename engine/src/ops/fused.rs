//! Convolution → BatchNorm (→ ReLU) as one op, and ReLU(a + b), forward and backward.
//!
//! Composed from separate ops, one conv-BN-ReLU layer costs, besides its GEMMs, a dozen full
//! passes over its output per adaptation step: the batch statistics, normalization, ReLU, and in
//! the backward pass candle's ReLU gradient (a zero tensor, a comparison, a cast, a product) and
//! a zero-filled accumulator plus an addition for every gradient handed from one op to the next.
//! The fused op does, per layer:
//!
//! - forward: per image, the convolution (im2col + GEMM, or the direct kernel of
//!   [`super::direct`]), and while that image's output is in cache its
//!   per-channel sums (batch mode); then one pass `y = max(0, z·scale + shift)`. With fixed
//!   statistics (eval) the affine + ReLU epilogue runs right after each image's GEMM.
//! - backward: one pass for the per-channel sums Σg and Σg·(z − m) (g = dy masked by y > 0), then
//!   per image the BatchNorm input gradient dz and, while dz is in cache, its input gradient
//!   (`Wᵀ·dz` and col2im, or the direct kernel on the flipped weights); the
//!   weight gradient only when the weight is tracked, the input gradient only when the input is.
//!   A layer whose input and weight are both frozen (the first layer under TENT) stops after the
//!   sums: γ and β get their gradients and nothing else is computed.
//!
//! The BatchNorm formulas are those of [`super::batchnorm`] (statistics `(1−α)·fixed + α·batch`,
//! biased batch variance; sums in f64 in a fixed order, so results do not depend on scheduling).
//! γ and β enter as one (2, C) tensor (`Tensor::stack`), so the op has three inputs.

use super::batchnorm::{BnNormalizer, BnStats};
use super::conv::{im2col, inner_parallelism, matmul, Geometry, Plan, Scratch, WEIGHT_GRAD_CHUNK};
use super::{f32_slice, has_avx512f, wide, with_f32};
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::{Arc, Mutex};

/// What a forward pass leaves for the backward pass.
struct Saved {
    /// The convolution output (pre-normalization), kept only when a gradient is needed.
    z: Vec<f32>,
    /// With pooling: per pooled output, the position of the window's first maximum
    /// (`i·k + j`), or [`NO_GRAD`] when the maximum is a ReLU zero (no gradient passes).
    arg: Vec<u8>,
    nm: BnNormalizer,
    stats: Option<BnStats>,
}

const NO_GRAD: u8 = u8::MAX;

/// Largest C·KH·KW of a convolution whose output is recomputed rather than stored.
const RECOMPUTE_MAX_CK: usize = 27;

struct ConvBnOp {
    stride: usize,
    pad: usize,
    relu: bool,
    /// Max-pool kernel (= stride) after the activation; 1 = none.
    pool: usize,
    fixed_mean: Vec<f32>,
    fixed_var: Vec<f32>,
    use_batch: bool,
    alpha: f32,
    eps: f64,
    /// Keep `z` for a backward pass.
    keep: bool,
    /// Do not store `z` at all: recompute it, image by image, when it is needed again (the
    /// normalization pass and the backward's sums). For cheap convolutions of a frozen input
    /// with a frozen weight (the first layer: C·KH·KW ≤ [`RECOMPUTE_MAX_CK`]), whose output is
    /// the largest tensor of the network and costs more to write to and read back from memory
    /// than to compute again.
    recompute: bool,
    saved: Arc<Mutex<Option<Saved>>>,
}

fn scale_shift(nm: &BnNormalizer, gamma: &[f32], beta: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let scale: Vec<f32> = gamma.iter().zip(&nm.inv_std).map(|(g, r)| g * r).collect();
    let shift = beta
        .iter()
        .zip(&nm.mean)
        .zip(&scale)
        .map(|((b, m), s)| b - m * s)
        .collect();
    (scale, shift)
}

/// ReLU that propagates NaN, as PyTorch's does.
#[inline(always)]
fn relu_f(v: f32) -> f32 {
    if v < 0.0 {
        0.0
    } else {
        v
    }
}

/// `dst = max(0, src·scale + shift)` (the affine part alone when `relu` is off).
#[inline(always)]
fn epilogue(dst: &mut [f32], src: &[f32], scale: f32, shift: f32, relu: bool) {
    if relu {
        for (d, s) in dst.iter_mut().zip(src) {
            *d = relu_f(s * scale + shift);
        }
    } else {
        for (d, s) in dst.iter_mut().zip(src) {
            *d = s * scale + shift;
        }
    }
}

/// [`epilogue`] on the conv output itself.
#[inline(always)]
fn epilogue_in_place(p: &mut [f32], scale: f32, shift: f32, relu: bool) {
    if relu {
        for v in p.iter_mut() {
            *v = relu_f(*v * scale + shift);
        }
    } else {
        for v in p.iter_mut() {
            *v = *v * scale + shift;
        }
    }
}

/// Σ and Σ² of a slice, in f32 over 8 lanes (vectorized), returned in f64. The planes summed
/// here hold at most a few thousand values; planes are then added in f64.
#[inline(always)]
fn sum_sq(v: &[f32]) -> (f64, f64) {
    let (mut s, mut q) = ([0f32; 8], [0f32; 8]);
    let chunks = v.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..8 {
            s[i] += c[i];
            q[i] += c[i] * c[i];
        }
    }
    let (mut s, mut q) = (
        s.iter().map(|v| *v as f64).sum::<f64>(),
        q.iter().map(|v| *v as f64).sum::<f64>(),
    );
    for v in rest {
        s += *v as f64;
        q += (*v as f64) * (*v as f64);
    }
    (s, q)
}

/// Σg and Σg·(z − m) over a plane, g = dy masked by y > 0 (when `relu`); 8 f32 lanes. The mask
/// is recomputed from z (`y > 0 ⇔ z·scale + shift > 0`, the forward's own arithmetic), so the
/// backward pass does not read y: these passes are memory-bound on large batches.
#[inline(always)]
fn grad_sums(dy: &[f32], z: &[f32], (scale, shift): (f32, f32), m: f32, relu: bool) -> (f64, f64) {
    let (mut s, mut t) = ([0f32; 8], [0f32; 8]);
    let n = dy.len() / 8 * 8;
    let z = &z[..dy.len()];
    for (d, zv) in dy.chunks_exact(8).zip(z.chunks_exact(8)) {
        for l in 0..8 {
            let gv = if !relu || zv[l] * scale + shift > 0.0 {
                d[l]
            } else {
                0.0
            };
            s[l] += gv;
            t[l] += gv * (zv[l] - m);
        }
    }
    let (mut s, mut t) = (
        s.iter().map(|v| *v as f64).sum::<f64>(),
        t.iter().map(|v| *v as f64).sum::<f64>(),
    );
    for i in n..dy.len() {
        let gv = if !relu || z[i] * scale + shift > 0.0 {
            dy[i]
        } else {
            0.0
        };
        s += gv as f64;
        t += (gv * (z[i] - m)) as f64;
    }
    (s, t)
}

/// Normalize (+ ReLU) one conv output plane (ho × wo) and max-pool it with a k×k window and
/// stride k (floor mode): `yp` gets the pooled plane, `arg` (if given) the first maximum of each
/// window, or NO_GRAD where that maximum is a ReLU zero.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn pool_plane(
    zp: &[f32],
    (ho, wo, k): (usize, usize, usize),
    scale: f32,
    shift: f32,
    relu: bool,
    yp: &mut [f32],
    mut arg: Option<&mut [u8]>,
) {
    if k == 2 {
        #[cfg(target_arch = "x86_64")]
        if has_avx512f() {
            // SAFETY: avx512f was just detected.
            return unsafe { pool2_avx512(zp, (ho, wo), scale, shift, relu, yp, arg) };
        }
        return pool2_plane(zp, (ho, wo), scale, shift, relu, yp, arg);
    }
    let (hp, wp) = (ho / k, wo / k);
    for oh in 0..hp {
        for ow in 0..wp {
            let base = oh * k * wo + ow * k;
            let mut best = zp[base] * scale + shift;
            let mut bi = 0usize;
            for i in 0..k {
                for j in 0..k {
                    let v = zp[base + i * wo + j] * scale + shift;
                    if takes_over(v, best) {
                        best = v;
                        bi = i * k + j;
                    }
                }
            }
            let (out, code) = pooled(best, bi as u8, relu);
            yp[oh * wp + ow] = out;
            if let Some(a) = arg.as_deref_mut() {
                a[oh * wp + ow] = code;
            }
        }
    }
}

/// Max-pooling's first-maximum rule: `x` replaces `best` when larger (`>` keeps the first of
/// equal maxima), or when it is NaN and `best` is not (NaN wins, as in PyTorch).
#[inline(always)]
fn takes_over(x: f32, best: f32) -> bool {
    x > best || (x.is_nan() && !best.is_nan())
}

/// A window's output and its code: the ReLU applied when `relu`, and [`NO_GRAD`] instead of the
/// position `bi` where the ReLU zeroed the output (no gradient passes there).
#[inline(always)]
fn pooled(best: f32, bi: u8, relu: bool) -> (f32, u8) {
    let out = if relu { relu_f(best) } else { best };
    (out, if !relu || out > 0.0 { bi } else { NO_GRAD })
}

/// [`pool_plane`] for the 2×2 window (the only one the models use): the same result, row slices
/// taken once so that the loop has no bounds checks.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn pool2_plane(
    zp: &[f32],
    (ho, wo): (usize, usize),
    scale: f32,
    shift: f32,
    relu: bool,
    yp: &mut [f32],
    mut arg: Option<&mut [u8]>,
) {
    let (hp, wp) = (ho / 2, wo / 2);
    for oh in 0..hp {
        let r0 = &zp[2 * oh * wo..][..2 * wp];
        let r1 = &zp[(2 * oh + 1) * wo..][..2 * wp];
        let yr = &mut yp[oh * wp..][..wp];
        let mut ar = arg.as_deref_mut().map(|a| &mut a[oh * wp..][..wp]);
        for ow in 0..wp {
            let v = [
                r0[2 * ow] * scale + shift,
                r0[2 * ow + 1] * scale + shift,
                r1[2 * ow] * scale + shift,
                r1[2 * ow + 1] * scale + shift,
            ];
            let (mut best, mut bi) = (v[0], 0u8);
            for (i, &x) in v.iter().enumerate().skip(1) {
                if takes_over(x, best) {
                    best = x;
                    bi = i as u8;
                }
            }
            let (out, code) = pooled(best, bi, relu);
            yr[ow] = out;
            if let Some(a) = ar.as_deref_mut() {
                a[ow] = code;
            }
        }
    }
}

/// [`pool2_plane`] 16 outputs at a time: even/odd columns split by a permutation, the first
/// maximum (and NaN) rule as compare masks and blends, the window codes narrowed to bytes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn pool2_avx512(
    zp: &[f32],
    (ho, wo): (usize, usize),
    scale: f32,
    shift: f32,
    relu: bool,
    yp: &mut [f32],
    mut arg: Option<&mut [u8]>,
) {
    use std::arch::x86_64::*;
    let (hp, wp) = (ho / 2, wo / 2);
    assert!(zp.len() >= ho * wo && yp.len() >= hp * wp);
    if let Some(a) = arg.as_deref() {
        assert!(a.len() >= hp * wp);
    }
    let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    let odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    let (sc, sh, zero) = (
        _mm512_set1_ps(scale),
        _mm512_set1_ps(shift),
        _mm512_setzero_ps(),
    );
    let mask = |n: usize| -> __mmask16 {
        if n >= 16 {
            0xffff
        } else {
            (1u16 << n) - 1
        }
    };
    for oh in 0..hp {
        let r0 = zp.as_ptr().add(2 * oh * wo);
        let r1 = zp.as_ptr().add((2 * oh + 1) * wo);
        let mut ow = 0;
        while ow < wp {
            let n = (wp - ow).min(16);
            // Inputs 2·ow .. 2·(ow + n) of both rows (all inside the row: 2·wp ≤ wo).
            let (lo, hi) = (mask(2 * n), mask((2 * n).saturating_sub(16)));
            let row = |r: *const f32| {
                let a = _mm512_maskz_loadu_ps(lo, r.add(2 * ow));
                let b = _mm512_maskz_loadu_ps(hi, r.add(2 * ow + 16));
                (
                    _mm512_add_ps(_mm512_mul_ps(_mm512_permutex2var_ps(a, even, b), sc), sh),
                    _mm512_add_ps(_mm512_mul_ps(_mm512_permutex2var_ps(a, odd, b), sc), sh),
                )
            };
            let ((v0, v1), (v2, v3)) = (row(r0), row(r1));
            let (mut best, mut bi) = (v0, _mm512_setzero_si512());
            for (x, i) in [(v1, 1), (v2, 2), (v3, 3)] {
                // `>` keeps the first maximum; NaN wins like PyTorch.
                let take = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(x, best)
                    | (_mm512_cmp_ps_mask::<_CMP_UNORD_Q>(x, x)
                        & !_mm512_cmp_ps_mask::<_CMP_UNORD_Q>(best, best));
                best = _mm512_mask_blend_ps(take, best, x);
                bi = _mm512_mask_blend_epi32(take, bi, _mm512_set1_epi32(i));
            }
            let out = if relu {
                _mm512_mask_blend_ps(_mm512_cmp_ps_mask::<_CMP_LT_OQ>(best, zero), best, zero)
            } else {
                best
            };
            let m = mask(n);
            _mm512_mask_storeu_ps(yp.as_mut_ptr().add(oh * wp + ow), m, out);
            if let Some(a) = arg.as_deref_mut() {
                let code = if relu {
                    let pass = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(out, zero);
                    _mm512_mask_blend_epi32(pass, _mm512_set1_epi32(NO_GRAD as i32), bi)
                } else {
                    bi
                };
                _mm512_mask_cvtepi32_storeu_epi8(
                    a.as_mut_ptr().add(oh * wp + ow) as *mut i8,
                    m,
                    code,
                );
            }
            ow += 16;
        }
    }
}

impl ConvBnOp {
    /// One image's convolution and, while it is in cache, its epilogue: `yb` gets
    /// `max(0, z·scale + shift)`, pooled when a pool follows (from `zb`, which holds the
    /// convolution then; the window codes into `ab` when given), else computed in place (the
    /// convolution lands in `yb`, `zb` is unused).
    #[allow(clippy::too_many_arguments)]
    fn conv_image(
        &self,
        g: &Geometry,
        plan: &Plan,
        xb: &[f32],
        scratch: &mut Scratch,
        zb: &mut [f32],
        yb: &mut [f32],
        mut ab: Option<&mut [u8]>,
        (scale, shift): (&[f32], &[f32]),
    ) {
        let (hw, plen) = (g.hw_out(), self.pooled(g).0);
        if self.pool > 1 {
            plan.run(xb, scratch, zb);
            let dims = (g.ho, g.wo, self.pool);
            wide(|| {
                for c in 0..g.o {
                    let zp = &zb[c * hw..(c + 1) * hw];
                    let yp = &mut yb[c * plen..(c + 1) * plen];
                    let a = ab.as_deref_mut().map(|a| &mut a[c * plen..(c + 1) * plen]);
                    pool_plane(zp, dims, scale[c], shift[c], self.relu, yp, a);
                }
            });
        } else {
            plan.run(xb, scratch, yb);
            wide(|| {
                for ((p, &sc), &sh) in yb.chunks_exact_mut(hw).zip(scale).zip(shift) {
                    epilogue_in_place(p, sc, sh, self.relu);
                }
            });
        }
    }

    fn geometry(&self, xs: &[usize], ws: &[usize]) -> Result<Geometry> {
        let g = Geometry::new(xs, ws, self.stride, self.pad)?;
        if self.fixed_mean.len() != g.o || self.fixed_var.len() != g.o {
            candle_core::bail!(
                "conv_bn: {} output channels but {} running statistics",
                g.o,
                self.fixed_mean.len()
            );
        }
        if self.pool > 1 && (self.pool * self.pool > NO_GRAD as usize || g.ho < self.pool) {
            candle_core::bail!("conv_bn: pool {} on a {}×{} map", self.pool, g.ho, g.wo);
        }
        Ok(g)
    }

    /// (pooled plane length, pooled height, pooled width).
    fn pooled(&self, g: &Geometry) -> (usize, usize, usize) {
        let k = self.pool.max(1);
        let (hp, wp) = (g.ho / k, g.wo / k);
        (hp * wp, hp, wp)
    }
}

impl CustomOp3 for ConvBnOp {
    fn name(&self) -> &'static str {
        "attune-conv-bn"
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
        let g = self.geometry(l1.dims(), l2.dims())?;
        let (x, w, gb) = (f32_slice(s1, l1)?, f32_slice(s2, l2)?, f32_slice(s3, l3)?);
        let (o, hw) = (g.o, g.hw_out());
        if gb.len() != 2 * o {
            candle_core::bail!("conv_bn: {o} channels but γ/β of {} values", gb.len());
        }
        let (gamma, beta) = gb.split_at(o);
        let plan = Plan::forward(&g, w);
        let (plen, hp, wp) = self.pooled(&g);
        let pooling = self.pool > 1;
        let dims = (g.ho, g.wo, self.pool);
        let shape = Shape::from((g.b, o, hp, wp));
        let mut y = vec![0f32; g.b * o * plen];
        if !self.use_batch && !self.keep {
            // Fixed statistics, no gradient: affine + ReLU (+ pool) right after each GEMM.
            let nm = BnNormalizer::new(&self.fixed_mean, &self.fixed_var, None, 0.0, self.eps);
            let (scale, shift) = scale_shift(&nm, gamma, beta);
            let zlen = if pooling { g.out_len() } else { 0 };
            y.par_chunks_mut(o * plen)
                .zip(x.par_chunks(g.in_len()))
                .for_each_init(
                    || (plan.scratch(), vec![0f32; zlen]),
                    |(scratch, zb), (yb, xb)| {
                        self.conv_image(&g, &plan, xb, scratch, zb, yb, None, (&scale, &shift))
                    },
                );
            *self.saved.lock().expect("conv_bn lock") = Some(Saved {
                z: vec![],
                arg: vec![],
                nm,
                stats: None,
            });
            return Ok((CpuStorage::F32(y), shape));
        }
        // Convolution output, with per-image per-channel (Σz, Σz²) while it is in cache.
        let recompute = self.recompute;
        let mut z = vec![0f32; if recompute { 0 } else { g.b * g.out_len() }];
        let mut partial = vec![(0f64, 0f64); g.b * o];
        let use_batch = self.use_batch;
        let sums = |zb: &[f32], pb: &mut [(f64, f64)]| {
            if use_batch {
                wide(|| {
                    for (c, p) in pb.iter_mut().enumerate() {
                        *p = sum_sq(&zb[c * hw..(c + 1) * hw]);
                    }
                });
            }
        };
        if recompute {
            x.par_chunks(g.in_len())
                .zip(partial.par_chunks_mut(o))
                .for_each_init(
                    || (plan.scratch(), vec![0f32; g.out_len()]),
                    |(scratch, zb), (xb, pb)| {
                        plan.run(xb, scratch, zb);
                        sums(zb, pb);
                    },
                );
        } else {
            z.par_chunks_mut(g.out_len())
                .zip(x.par_chunks(g.in_len()))
                .zip(partial.par_chunks_mut(o))
                .for_each_init(
                    || plan.scratch(),
                    |scratch, ((zb, xb), pb)| {
                        plan.run(xb, scratch, zb);
                        sums(zb, pb);
                    },
                );
        }
        let stats = use_batch.then(|| {
            let m = (g.b * hw) as f64;
            let (mut mean, mut var) = (vec![0f32; o], vec![0f32; o]);
            for c in 0..o {
                let (mut s, mut q) = (0f64, 0f64);
                for b in 0..g.b {
                    s += partial[b * o + c].0;
                    q += partial[b * o + c].1;
                }
                let mu = s / m;
                mean[c] = mu as f32;
                var[c] = (q / m - mu * mu).max(0.0) as f32;
            }
            BnStats {
                mean,
                var,
                count: g.b * hw,
            }
        });
        let nm = BnNormalizer::new(
            &self.fixed_mean,
            &self.fixed_var,
            stats.as_ref(),
            self.alpha,
            self.eps,
        );
        let (scale, shift) = scale_shift(&nm, gamma, beta);
        let mut arg = vec![0u8; if pooling && self.keep { y.len() } else { 0 }];
        if recompute {
            // The convolution again, image by image, and the epilogue while it is in cache.
            let ylen = o * plen;
            let zlen = if pooling { g.out_len() } else { 0 };
            let mut args: Vec<&mut [u8]> = if pooling && self.keep {
                arg.chunks_mut(ylen).collect()
            } else {
                (0..g.b).map(|_| <&mut [u8]>::default()).collect()
            };
            y.par_chunks_mut(ylen)
                .zip(x.par_chunks(g.in_len()))
                .zip(args.par_iter_mut())
                .for_each_init(
                    || (plan.scratch(), vec![0f32; zlen]),
                    |(scratch, zb), ((yb, xb), ab)| {
                        let ab = (pooling && self.keep).then_some(&mut **ab);
                        self.conv_image(&g, &plan, xb, scratch, zb, yb, ab, (&scale, &shift))
                    },
                );
        } else if pooling {
            let keep = self.keep;
            let mut args: Vec<&mut [u8]> = if keep {
                arg.chunks_mut(plen).collect()
            } else {
                (0..g.b * o).map(|_| <&mut [u8]>::default()).collect()
            };
            y.par_chunks_mut(plen)
                .zip(z.par_chunks(hw))
                .zip(args.par_iter_mut())
                .enumerate()
                .for_each(|(i, ((yp, zp), ap))| {
                    let c = i % o;
                    let a = if keep { Some(&mut **ap) } else { None };
                    wide(|| pool_plane(zp, dims, scale[c], shift[c], self.relu, yp, a));
                });
        } else {
            y.par_chunks_mut(hw)
                .zip(z.par_chunks(hw))
                .enumerate()
                .for_each(|(i, (yp, zp))| {
                    let c = i % o;
                    wide(|| epilogue(yp, zp, scale[c], shift[c], self.relu))
                });
        }
        *self.saved.lock().expect("conv_bn lock") = Some(Saved {
            z: if self.keep && !recompute { z } else { vec![] },
            arg,
            nm,
            stats,
        });
        Ok((CpuStorage::F32(y), shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        gb: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = self.geometry(x.dims(), w.dims())?;
        let guard = self.saved.lock().expect("conv_bn lock");
        let saved = match guard.as_ref() {
            Some(s) if !s.z.is_empty() || self.recompute || g.b * g.out_len() == 0 => s,
            _ => candle_core::bail!("conv_bn: backward through a forward that kept no state"),
        };
        let (z, nm, arg) = (&saved.z, &saved.nm, &saved.arg);
        let (o, hw, ck) = (g.o, g.hw_out(), g.ck());
        let (plen, hp, wp) = self.pooled(&g);
        let (k, wo) = (self.pool, g.wo);
        let pooling = k > 1;
        // Offset in the conv output plane of window code a from the window's corner, and the
        // corner of pooled output (oh, ow): oh·k·wo + ow·k.
        let win: Vec<usize> = (0..k * k).map(|a| (a / k) * wo + a % k).collect();
        let gamma = gb.get(0)?.to_vec1::<f32>()?;
        let beta = gb.get(1)?.to_vec1::<f32>()?;
        // The forward's scale and shift (γ and β have not changed since): the ReLU mask.
        let (scale, shift) = scale_shift(nm, &gamma, &beta);
        let relu = self.relu;
        let (x_tr, w_tr) = (x.track_op(), w.track_op());
        // A recomputing layer's input and weight are frozen (see `conv_bn`): only γ and β get
        // gradients, and z comes from the convolution of x again, image by image.
        let (xr, wr) = if self.recompute {
            if x_tr || w_tr {
                candle_core::bail!("conv_bn: recomputed layer with a tracked input or weight");
            }
            (
                x.flatten_all()?.to_vec1::<f32>()?,
                w.flatten_all()?.to_vec1::<f32>()?,
            )
        } else {
            (vec![], vec![])
        };
        let replan = self.recompute.then(|| Plan::forward(&g, &wr));
        let out = with_f32(dy, |dyv| {
            // Pass 1: per image and channel Σg and Σg·(z − m), g = dy where y > 0.
            let mut partial = vec![(0f64, 0f64); g.b * o];
            let olen = g.out_len();
            partial.par_chunks_mut(o).enumerate().for_each_init(
                || replan.as_ref().map(|p| (p.scratch(), vec![0f32; olen])),
                |again, (b, pb)| {
                    let zimg: &[f32] = match (again.as_mut(), &replan) {
                        (Some((scratch, zb)), Some(p)) => {
                            p.run(&xr[b * g.in_len()..(b + 1) * g.in_len()], scratch, zb);
                            zb
                        }
                        _ => &z[b * olen..(b + 1) * olen],
                    };
                    wide(|| {
                        for (c, p) in pb.iter_mut().enumerate() {
                            let plane = b * o + c;
                            let zp = &zimg[c * hw..(c + 1) * hw];
                            let mc = nm.mean[c];
                            *p = if pooling {
                                // In f32 along a pooled row, rows added in f64.
                                let (mut s, mut t) = (0f64, 0f64);
                                let ap = &arg[plane * plen..(plane + 1) * plen];
                                let dp = &dyv[plane * plen..(plane + 1) * plen];
                                for oh in 0..hp {
                                    let (mut rs, mut rt) = (0f32, 0f32);
                                    let corner = oh * k * wo;
                                    let rows = ap[oh * wp..(oh + 1) * wp]
                                        .iter()
                                        .zip(&dp[oh * wp..(oh + 1) * wp]);
                                    for (ow, (&a, &d)) in rows.enumerate() {
                                        if a != NO_GRAD {
                                            rs += d;
                                            rt += d * (zp[corner + ow * k + win[a as usize]] - mc);
                                        }
                                    }
                                    s += rs as f64;
                                    t += rt as f64;
                                }
                                (s, t)
                            } else {
                                let r = plane * hw..(plane + 1) * hw;
                                grad_sums(&dyv[r], zp, (scale[c], shift[c]), mc, relu)
                            };
                        }
                    })
                },
            );
            let (mut sdy, mut sdyx) = (vec![0f64; o], vec![0f64; o]);
            for b in 0..g.b {
                for c in 0..o {
                    sdy[c] += partial[b * o + c].0;
                    sdyx[c] += partial[b * o + c].1;
                }
            }
            let mut dgb: Vec<f32> = (0..o).map(|c| sdyx[c] as f32 * nm.inv_std[c]).collect();
            dgb.extend(sdy.iter().map(|v| *v as f32));
            if !x_tr && !w_tr {
                return Ok((None, None, dgb));
            }
            // dz = γ·r·[g − (α/M)·Σg − (α/M)·r²·(z − μ_b)·Σg(z − m)] per channel.
            let a = nm.alpha / (g.b * hw) as f32;
            let coef: Vec<(f32, f32, f32, f32)> = (0..o)
                .map(|c| {
                    let r = nm.inv_std[c];
                    (
                        gamma[c] * r,
                        a * sdy[c] as f32,
                        a * r * r * sdyx[c] as f32,
                        nm.batch_mean[c],
                    )
                })
                .collect();
            let dz_image = |b: usize, dzb: &mut [f32]| {
                wide(|| {
                    for (c, &(kc, c1, c2, mb)) in coef.iter().enumerate() {
                        let plane = b * o + c;
                        let zp = &z[plane * hw..(plane + 1) * hw];
                        let dst = &mut dzb[c * hw..(c + 1) * hw];
                        if pooling {
                            for (d, zv) in dst.iter_mut().zip(zp) {
                                *d = -kc * (c1 + (zv - mb) * c2);
                            }
                            let ap = &arg[plane * plen..(plane + 1) * plen];
                            let dp = &dyv[plane * plen..(plane + 1) * plen];
                            for oh in 0..hp {
                                let corner = oh * k * wo;
                                let rows = ap[oh * wp..(oh + 1) * wp]
                                    .iter()
                                    .zip(&dp[oh * wp..(oh + 1) * wp]);
                                for (ow, (&a, &dv)) in rows.enumerate() {
                                    if a != NO_GRAD {
                                        dst[corner + ow * k + win[a as usize]] += kc * dv;
                                    }
                                }
                            }
                        } else {
                            let (sc, sh) = (scale[c], shift[c]);
                            let dp = &dyv[plane * hw..(plane + 1) * hw];
                            for ((d, dv), zv) in dst.iter_mut().zip(dp).zip(zp) {
                                let gv = if !relu || zv * sc + sh > 0.0 {
                                    *dv
                                } else {
                                    0.0
                                };
                                *d = kc * (gv - c1 - (zv - mb) * c2);
                            }
                        }
                    }
                })
            };
            let par = inner_parallelism(g.b);
            let cols_len = if g.pointwise() { 0 } else { ck * hw };
            with_f32(w, |wv| {
                with_f32(x, |xv| {
                    let mut dx = vec![0f32; if x_tr { g.b * g.in_len() } else { 0 }];
                    let plan = Plan::input_grad(&g, wv);
                    if !w_tr {
                        // Input gradient only: every image on its own.
                        dx.par_chunks_mut(g.in_len()).enumerate().for_each_init(
                            || (vec![0f32; g.out_len()], plan.scratch()),
                            |(dzb, scratch), (b, dxb)| {
                                dz_image(b, dzb);
                                plan.run(dzb, scratch, dxb);
                            },
                        );
                        return Ok((Some(dx), None, dgb));
                    }
                    // Weight gradient: fixed chunks of images, partial sums added in order.
                    let chunks = g.b.div_ceil(WEIGHT_GRAD_CHUNK);
                    let in_len = g.in_len();
                    let mut dx_chunks: Vec<&mut [f32]> = if x_tr {
                        dx.chunks_mut(in_len * WEIGHT_GRAD_CHUNK).collect()
                    } else {
                        (0..chunks).map(|_| <&mut [f32]>::default()).collect()
                    };
                    let partials: Vec<Vec<f32>> = dx_chunks
                        .par_iter_mut()
                        .enumerate()
                        .map(|(ci, dxc)| {
                            let mut dw = vec![0f32; o * ck];
                            let mut dzb = vec![0f32; g.out_len()];
                            let mut cols = vec![0f32; cols_len];
                            let mut scratch = x_tr.then(|| plan.scratch());
                            let first = ci * WEIGHT_GRAD_CHUNK;
                            for b in first..(first + WEIGHT_GRAD_CHUNK).min(g.b) {
                                dz_image(b, &mut dzb);
                                if let Some(s) = scratch.as_mut() {
                                    let k = b - first;
                                    plan.run(&dzb, s, &mut dxc[k * in_len..(k + 1) * in_len]);
                                }
                                let xb = &xv[b * in_len..(b + 1) * in_len];
                                let c: &[f32] = if g.pointwise() {
                                    xb
                                } else {
                                    im2col(&g, xb, &mut cols);
                                    &cols
                                };
                                // dW (O × CK) += dz_b (O × HW) · cols_bᵀ (HW × CK).
                                matmul(o, ck, hw, &mut dw, true, &dzb, hw, 1, c, 1, hw, par);
                            }
                            dw
                        })
                        .collect();
                    let mut dw = vec![0f32; o * ck];
                    for p in &partials {
                        dw.iter_mut().zip(p).for_each(|(a, b)| *a += b);
                    }
                    Ok((x_tr.then_some(dx), Some(dw), dgb))
                })
            })
        })?;
        let (dx, dw, dgb) = out;
        Ok((
            dx.map(|v| Tensor::from_vec(v, x.shape(), x.device()))
                .transpose()?,
            dw.map(|v| Tensor::from_vec(v, w.shape(), w.device()))
                .transpose()?,
            if gb.track_op() {
                Some(Tensor::from_vec(dgb, gb.shape(), gb.device())?)
            } else {
                None
            },
        ))
    }
}

/// The fixed shape of a fused conv → BN (→ ReLU) (→ max-pool) layer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ConvBnCfg {
    pub stride: usize,
    pub padding: usize,
    pub eps: f64,
    pub relu: bool,
    /// Max-pool kernel (= stride, floor mode) after the activation; 1 = no pooling.
    pub pool: usize,
}

/// Convolution of `x` (N, C, H, W) with `w` (O, C, KH, KW), then batch normalization with
/// affine `gamma`/`beta` (O), then ReLU if `cfg.relu`, then k×k max-pooling if `cfg.pool` > 1.
///
/// `fixed` holds the running (source) statistics; with `batch = Some(α)` the batch's own
/// statistics are mixed in with weight α (1 = batch only), with `None` only `fixed` is used.
/// Returns the output and, with batch statistics, those of the convolution output (for
/// running-statistic updates). Gradients flow to `x`, `w`, `gamma` and `beta` as far as the
/// graph tracks them; pooling routes them to the first maximum of each window, as PyTorch.
pub fn conv_bn(
    x: &Tensor,
    w: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    (fixed_mean, fixed_var): (&[f32], &[f32]),
    batch: Option<f32>,
    cfg: ConvBnCfg,
) -> Result<(Tensor, Option<BnStats>)> {
    if !(x.device().is_cpu() && x.dtype() == candle_core::DType::F32) {
        // Other devices: the composed ops (candle's conv2d, the composed batch norm).
        let z = super::conv2d(x, w, cfg.stride, cfg.padding)?;
        let stats = batch.map(|_| BnStats::of(&z)).transpose()?;
        let mut y = super::batch_norm(
            &z,
            gamma,
            beta,
            (fixed_mean, fixed_var),
            stats.as_ref(),
            batch.unwrap_or(0.0),
            cfg.eps,
        )?;
        if cfg.relu {
            y = y.relu()?;
        }
        if cfg.pool > 1 {
            y = super::max_pool2d(&y, cfg.pool)?;
        }
        return Ok((y, stats));
    }
    let gb = Tensor::stack(&[gamma, beta], 0)?;
    let keep = x.track_op() || w.track_op() || gb.track_op();
    let ck = w.dims().iter().skip(1).product::<usize>();
    let recompute = !x.track_op() && !w.track_op() && ck <= RECOMPUTE_MAX_CK;
    let saved = Arc::new(Mutex::new(None));
    let op = ConvBnOp {
        stride: cfg.stride,
        pad: cfg.padding,
        relu: cfg.relu,
        pool: cfg.pool.max(1),
        fixed_mean: fixed_mean.to_vec(),
        fixed_var: fixed_var.to_vec(),
        use_batch: batch.is_some(),
        alpha: batch.unwrap_or(0.0),
        eps: cfg.eps,
        keep,
        recompute,
        saved: saved.clone(),
    };
    let (x, w) = (x.contiguous()?, w.contiguous()?);
    let y = if keep {
        x.apply_op3(&w, &gb, op)?
    } else {
        x.apply_op3_no_bwd(&w, &gb, &op)?
    };
    let stats = saved
        .lock()
        .expect("conv_bn lock")
        .as_mut()
        .and_then(|s| s.stats.take());
    Ok((y, stats))
}

struct AddRelu;

impl CustomOp2 for AddRelu {
    fn name(&self) -> &'static str {
        "attune-add-relu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (a, b) = (f32_slice(s1, l1)?, f32_slice(s2, l2)?);
        if l1.dims() != l2.dims() {
            candle_core::bail!(
                "add_relu: shapes {:?} and {:?} differ",
                l1.dims(),
                l2.dims()
            );
        }
        let mut y = vec![0f32; a.len()];
        y.par_chunks_mut(1 << 14)
            .zip(a.par_chunks(1 << 14).zip(b.par_chunks(1 << 14)))
            .for_each(|(d, (a, b))| {
                wide(|| {
                    for ((d, a), b) in d.iter_mut().zip(a).zip(b) {
                        *d = relu_f(a + b);
                    }
                })
            });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = with_f32(res, |y| {
            with_f32(dy, |d| {
                let mut g = vec![0f32; y.len()];
                g.par_chunks_mut(1 << 14)
                    .zip(y.par_chunks(1 << 14).zip(d.par_chunks(1 << 14)))
                    .for_each(|(g, (y, d))| {
                        wide(|| {
                            for ((g, y), d) in g.iter_mut().zip(y).zip(d) {
                                *g = if *y > 0.0 { *d } else { 0.0 };
                            }
                        })
                    });
                Ok(g)
            })
        })?;
        let g = Tensor::from_vec(g, a.shape(), a.device())?;
        Ok((a.track_op().then(|| g.clone()), b.track_op().then_some(g)))
    }
}

/// `max(0, a + b)` (a residual connection followed by ReLU) as one op.
pub fn add_relu(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if a.device().is_cpu() && a.dtype() == candle_core::DType::F32 {
        let (a, b) = (a.contiguous()?, b.contiguous()?);
        if a.track_op() || b.track_op() {
            a.apply_op2(&b, AddRelu)
        } else {
            a.apply_op2_no_bwd(&b, &AddRelu)
        }
    } else {
        (a + b)?.relu()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::batchnorm::batch_norm_composed;
    use crate::ops::test_util::{assert_close, randn};
    use candle_core::{Device, Var};

    /// The composed reference: candle's conv2d, the composed batch norm, candle's ReLU.
    #[allow(clippy::too_many_arguments)]
    fn reference(
        x: &Tensor,
        w: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        sp: (usize, usize),
        fixed: (&[f32], &[f32]),
        use_batch: bool,
        alpha: f32,
        relu: bool,
        pool: usize,
    ) -> Tensor {
        let dev = Device::Cpu;
        let z = x.conv2d(w, sp.1, sp.0, 1, 1).unwrap();
        let y = batch_norm_composed(
            &z,
            gamma,
            beta,
            (
                &Tensor::new(fixed.0, &dev).unwrap(),
                &Tensor::new(fixed.1, &dev).unwrap(),
            ),
            alpha as f64,
            use_batch,
            1e-5,
        )
        .unwrap();
        let y = if relu { y.relu().unwrap() } else { y };
        if pool > 1 {
            crate::ops::max_pool2d(&y, pool).unwrap()
        } else {
            y
        }
    }

    fn cfg(sp: (usize, usize), relu: bool, pool: usize) -> ConvBnCfg {
        ConvBnCfg {
            stride: sp.0,
            padding: sp.1,
            eps: 1e-5,
            relu,
            pool,
        }
    }

    /// Forward values and every gradient (x, w, γ, β) against the composed reference.
    #[allow(clippy::too_many_arguments)]
    fn check(
        dims: [usize; 4],
        o: usize,
        k: usize,
        sp: (usize, usize),
        use_batch: bool,
        alpha: f32,
        relu: bool,
        pool: usize,
        track: (bool, bool),
    ) {
        let [b, c, h, _] = dims;
        let x = Var::from_tensor(&randn(&dims, 1)).unwrap();
        let w = Var::from_tensor(&(randn(&[o, c, k, k], 2) * 0.5).unwrap()).unwrap();
        let gamma = Var::from_tensor(&randn(&[o], 3).affine(0.3, 1.0).unwrap()).unwrap();
        let beta = Var::from_tensor(&randn(&[o], 4).affine(0.3, 0.1).unwrap()).unwrap();
        let fm: Vec<f32> = (0..o).map(|i| 0.05 * i as f32 - 0.1).collect();
        let fv: Vec<f32> = (0..o).map(|i| 0.8 + 0.2 * i as f32).collect();
        let xt = if track.0 {
            x.as_tensor().clone()
        } else {
            x.as_tensor().detach()
        };
        let wt = if track.1 {
            w.as_tensor().clone()
        } else {
            w.as_tensor().detach()
        };
        let (y, stats) = conv_bn(
            &xt,
            &wt,
            gamma.as_tensor(),
            beta.as_tensor(),
            (&fm, &fv),
            use_batch.then_some(alpha),
            cfg(sp, relu, pool),
        )
        .unwrap();
        let y_ref = reference(
            &xt,
            &wt,
            gamma.as_tensor(),
            beta.as_tensor(),
            sp,
            (&fm, &fv),
            use_batch,
            alpha,
            relu,
            pool,
        );
        assert_close(&y, &y_ref, 1e-4, "forward");
        assert_eq!(stats.is_some(), use_batch);
        if let Some(s) = stats {
            let z = xt.conv2d(&wt, sp.1, sp.0, 1, 1).unwrap();
            let want = BnStats::of(&z).unwrap();
            for ch in 0..o {
                assert!((s.mean[ch] - want.mean[ch]).abs() < 1e-5);
                assert!((s.var[ch] - want.var[ch]).abs() < 1e-4 * (1.0 + want.var[ch]));
            }
            let ho = (h + 2 * sp.1 - k) / sp.0 + 1;
            assert_eq!(s.count, b * ho * ho);
        }
        let up = randn(y.dims(), 5);
        let gr = (&y * &up).unwrap().sum_all().unwrap().backward().unwrap();
        let gr_ref = (&y_ref * &up)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for (name, v, tracked) in [
            ("dx", &x, track.0),
            ("dw", &w, track.1),
            ("dgamma", &gamma, true),
            ("dbeta", &beta, true),
        ] {
            match (gr.get(v), gr_ref.get(v)) {
                (Some(a), Some(b)) => assert_close(a, b, 5e-4, name),
                (None, None) => assert!(!tracked, "{name}: no gradient"),
                (a, b) => panic!(
                    "{name}: fused {:?} vs reference {:?}",
                    a.is_some(),
                    b.is_some()
                ),
            }
        }
    }

    #[test]
    fn batch_stats_relu_matches_composed_ops() {
        check(
            [3, 2, 7, 7],
            4,
            3,
            (1, 1),
            true,
            1.0,
            true,
            1,
            (true, false),
        );
    }

    #[test]
    fn every_gradient_with_tracked_weight_matches() {
        // More images than one weight-gradient chunk, so the chunked sum is exercised.
        check(
            [11, 3, 6, 6],
            5,
            3,
            (1, 1),
            true,
            1.0,
            true,
            1,
            (true, true),
        );
        check(
            [2, 3, 6, 6],
            5,
            3,
            (1, 1),
            true,
            1.0,
            true,
            1,
            (false, true),
        );
    }

    #[test]
    fn frozen_input_and_weight_give_only_affine_gradients() {
        check(
            [4, 1, 8, 8],
            3,
            3,
            (1, 1),
            true,
            1.0,
            true,
            1,
            (false, false),
        );
    }

    #[test]
    fn vectorized_2x2_pool_equals_the_scalar_one() {
        #[cfg(target_arch = "x86_64")]
        if has_avx512f() {
            for (ho, wo) in [(28, 28), (14, 14), (7, 7), (5, 9), (2, 2), (3, 41), (1, 1)] {
                let mut z = randn(&[ho * wo], 7).to_vec1::<f32>().unwrap();
                // NaNs and ties: the first-maximum and NaN rules.
                z[0] = f32::NAN;
                if z.len() > 5 {
                    z[5] = z[4];
                    z[3] = f32::NAN;
                    z[2] = f32::NAN;
                }
                let (hp, wp) = (ho / 2, wo / 2);
                for relu in [true, false] {
                    for with_arg in [true, false] {
                        let (mut y1, mut y2) = (vec![9f32; hp * wp], vec![9f32; hp * wp]);
                        let (mut a1, mut a2) = (vec![7u8; hp * wp], vec![7u8; hp * wp]);
                        let (s, t) = (0.7, -0.1);
                        let arg1 = with_arg.then_some(&mut a1[..]);
                        pool2_plane(&z, (ho, wo), s, t, relu, &mut y1, arg1);
                        let arg2 = with_arg.then_some(&mut a2[..]);
                        // SAFETY: avx512f detected above.
                        unsafe { pool2_avx512(&z, (ho, wo), s, t, relu, &mut y2, arg2) };
                        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                        assert_eq!(bits(&y1), bits(&y2), "{ho}×{wo} relu {relu}");
                        assert_eq!(a1, a2, "{ho}×{wo} relu {relu} codes");
                    }
                }
            }
        }
    }

    #[test]
    fn recomputed_first_layers_match_with_pooling_and_every_statistics_mode() {
        // C·KH·KW ≤ 27 with a frozen input and weight: z is never stored (`recompute`); the
        // direct kernel (28 wide) and im2col (8 wide) paths, pooled and not.
        for (dims, pool) in [([3, 3, 28, 28], 2), ([5, 1, 8, 8], 2), ([2, 3, 28, 28], 1)] {
            for (use_batch, alpha) in [(true, 1.0), (true, 0.4), (false, 0.0)] {
                check(
                    dims,
                    4,
                    3,
                    (1, 1),
                    use_batch,
                    alpha,
                    true,
                    pool,
                    (false, false),
                );
            }
        }
    }

    #[test]
    fn fixed_and_alpha_statistics_match() {
        check(
            [3, 2, 7, 7],
            4,
            3,
            (1, 1),
            false,
            0.0,
            true,
            1,
            (true, true),
        );
        check(
            [3, 2, 7, 7],
            4,
            3,
            (1, 1),
            true,
            0.3,
            false,
            1,
            (true, false),
        );
    }

    #[test]
    fn strided_and_pointwise_shortcuts_match() {
        check(
            [3, 4, 8, 8],
            6,
            3,
            (2, 1),
            true,
            1.0,
            true,
            1,
            (true, false),
        );
        check(
            [3, 4, 8, 8],
            6,
            1,
            (2, 0),
            true,
            1.0,
            false,
            1,
            (true, true),
        );
        check(
            [2, 4, 5, 5],
            3,
            1,
            (1, 0),
            true,
            1.0,
            false,
            1,
            (true, true),
        );
    }

    #[test]
    fn fused_max_pool_matches_pool_after_the_layer() {
        // 7×7 → 3×3 drops the last row and column; 8×8 → 4×4 covers everything.
        check(
            [3, 2, 7, 7],
            4,
            3,
            (1, 1),
            true,
            1.0,
            true,
            2,
            (true, false),
        );
        check([9, 2, 8, 8], 4, 3, (1, 1), true, 1.0, true, 2, (true, true));
        check(
            [2, 1, 6, 6],
            3,
            3,
            (1, 1),
            true,
            1.0,
            true,
            3,
            (false, false),
        );
        check(
            [2, 2, 8, 8],
            3,
            3,
            (1, 1),
            false,
            0.0,
            false,
            2,
            (true, true),
        );
    }

    #[test]
    fn eval_with_pool_and_no_gradient_matches() {
        let x = randn(&[3, 2, 9, 9], 1);
        let w = randn(&[4, 2, 3, 3], 2);
        let (gamma, beta) = (randn(&[4], 3), randn(&[4], 4));
        let (fm, fv) = ([0.2f32; 4], [1.5f32; 4]);
        let (y, _) = conv_bn(
            &x,
            &w,
            &gamma,
            &beta,
            (&fm, &fv),
            None,
            cfg((1, 1), true, 2),
        )
        .unwrap();
        let y_ref = reference(
            &x,
            &w,
            &gamma,
            &beta,
            (1, 1),
            (&fm, &fv),
            false,
            0.0,
            true,
            2,
        );
        assert_eq!(y.dims(), &[3, 4, 4, 4]);
        assert_close(&y, &y_ref, 1e-5, "eval + pool");
    }

    #[test]
    fn single_image_uses_the_parallel_gemm() {
        check(
            [1, 8, 9, 9],
            16,
            3,
            (1, 1),
            true,
            1.0,
            true,
            1,
            (true, true),
        );
    }

    #[test]
    fn eval_without_gradients_keeps_no_state_and_matches() {
        let x = randn(&[2, 3, 6, 6], 1);
        let w = randn(&[4, 3, 3, 3], 2);
        let gamma = randn(&[4], 3);
        let beta = randn(&[4], 4);
        let (fm, fv) = ([0.1f32; 4], [2.0f32; 4]);
        let (y, stats) = conv_bn(
            &x,
            &w,
            &gamma,
            &beta,
            (&fm, &fv),
            None,
            cfg((1, 1), true, 1),
        )
        .unwrap();
        assert!(stats.is_none());
        let y_ref = reference(
            &x,
            &w,
            &gamma,
            &beta,
            (1, 1),
            (&fm, &fv),
            false,
            0.0,
            true,
            1,
        );
        assert_close(&y, &y_ref, 1e-5, "eval forward");
        // By hand for one value: relu(γ·(z − 0.1)/√(2 + 1e-5) + β).
        let z = x.conv2d(&w, 1, 1, 1, 1).unwrap();
        let z0 = z.flatten_all().unwrap().to_vec1::<f32>().unwrap()[0];
        let (g0, b0) = (
            gamma.to_vec1::<f32>().unwrap()[0],
            beta.to_vec1::<f32>().unwrap()[0],
        );
        let want = (g0 * (z0 - 0.1) / (2.0f32 + 1e-5).sqrt() + b0).max(0.0);
        let got = y.flatten_all().unwrap().to_vec1::<f32>().unwrap()[0];
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
    }

    #[test]
    fn weight_gradient_is_bitwise_deterministic() {
        let x = randn(&[37, 3, 9, 9], 1);
        let w = Var::from_tensor(&randn(&[4, 3, 3, 3], 2)).unwrap();
        let gamma = Var::from_tensor(&randn(&[4], 3)).unwrap();
        let beta = Var::from_tensor(&randn(&[4], 4)).unwrap();
        let run = || {
            let (y, _) = conv_bn(
                &x,
                w.as_tensor(),
                gamma.as_tensor(),
                beta.as_tensor(),
                (&[0.0; 4], &[1.0; 4]),
                Some(1.0),
                cfg((1, 1), true, 2),
            )
            .unwrap();
            let g = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
            [&w, &gamma, &beta]
                .iter()
                .map(|v| {
                    g.get(v)
                        .unwrap()
                        .flatten_all()
                        .unwrap()
                        .to_vec1::<f32>()
                        .unwrap()
                })
                .collect::<Vec<_>>()
        };
        let first = run();
        for _ in 0..3 {
            assert_eq!(run(), first);
        }
    }

    #[test]
    fn add_relu_matches_composed_and_routes_gradients() {
        let a = Var::from_tensor(&randn(&[2, 3, 4, 4], 1)).unwrap();
        let b = Var::from_tensor(&randn(&[2, 3, 4, 4], 2)).unwrap();
        let up = randn(&[2, 3, 4, 4], 3);
        let y = add_relu(a.as_tensor(), b.as_tensor()).unwrap();
        let y_ref = (a.as_tensor() + b.as_tensor()).unwrap().relu().unwrap();
        assert_close(&y, &y_ref, 1e-6, "forward");
        let g = (&y * &up).unwrap().sum_all().unwrap().backward().unwrap();
        let g_ref = (&y_ref * &up)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for v in [&a, &b] {
            assert_close(g.get(v).unwrap(), g_ref.get(v).unwrap(), 1e-6, "grad");
        }
        // By hand: relu(1 + (−3)) = 0 gets no gradient; relu(2 + 1) = 3 passes it.
        let a = Var::new(&[1f32, 2.0], &Device::Cpu).unwrap();
        let b = Tensor::new(&[-3f32, 1.0], &Device::Cpu).unwrap();
        let y = add_relu(a.as_tensor(), &b).unwrap();
        assert_eq!(y.to_vec1::<f32>().unwrap(), vec![0.0, 3.0]);
        let g = y.sum_all().unwrap().backward().unwrap();
        assert_eq!(g.get(&a).unwrap().to_vec1::<f32>().unwrap(), vec![0.0, 1.0]);
        assert!(g.get(&b).is_none());
    }
}
