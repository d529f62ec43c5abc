//! Convolution → BatchNorm (→ + residual) (→ ReLU) (→ max-pool) as one op, forward and backward.
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
//!
//! With a residual connection ([`conv_bn_residual`], the end of a ResNet basic block) the op
//! computes `max(0, BN(z) + r)`: the block's sum is never stored, and its ReLU's backward is the
//! op's first pass, which writes `g = dy·[y > 0]` (the residual's gradient, handed to it
//! directly) while it sums. Its inputs are then (x, [W; γ; β] flattened, r).

use super::batchnorm::{BnNormalizer, BnStats};
use super::conv::{im2col, inner_parallelism, matmul, Geometry, Plan, Scratch, WEIGHT_GRAD_CHUNK};
use super::{f32_slice, has_avx512f, uninit_f32, wide_fn, with_f32};
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::{Arc, Mutex};

/// What a forward pass leaves for the backward pass.
pub(super) struct Saved {
    /// The convolution output (pre-normalization), kept only when a gradient is needed (or
    /// the epilogue is deferred).
    pub(super) z: Vec<f32>,
    /// With pooling: per pooled output, the position of the window's first maximum
    /// (`i·k + j`), or [`NO_GRAD`] when the maximum is a ReLU zero (no gradient passes).
    arg: Vec<u8>,
    /// With a residual connection and a backward pass to follow: the output's ReLU mask, one
    /// bit per value (per plane, [`mask_bytes`] bytes; see [`plane_masks`]), which the
    /// backward's first pass reads instead of the output itself.
    pub(super) mask: Vec<u8>,
    pub(super) nm: BnNormalizer,
    pub(super) stats: Option<BnStats>,
}

/// `buf`'s chunks of `len`, or `n` empty slices without a buffer: the per-image (or per-plane)
/// destinations of a parallel pass that writes them only in some modes.
fn chunks_or_empty<T>(buf: Option<&mut [T]>, len: usize, n: usize) -> Vec<&mut [T]> {
    match buf {
        Some(b) => b.chunks_mut(len).collect(),
        None => (0..n).map(|_| <&mut [T]>::default()).collect(),
    }
}

/// Bytes of one plane's ReLU mask: bit l of byte k is `y[8k + l] > 0`.
pub(super) fn mask_bytes(hw: usize) -> usize {
    hw.div_ceil(8)
}

const NO_GRAD: u8 = u8::MAX;

/// Largest C·KH·KW of a convolution whose output is recomputed rather than stored.
pub(super) const RECOMPUTE_MAX_CK: usize = 27;

/// One conv → BN (→ + residual) (→ ReLU) (→ max-pool) layer: its fixed configuration, and its
/// forward and backward passes on plain slices. [`conv_bn`] and [`conv_bn_residual`] wrap one
/// in a candle op; the network executor of [`super::net`] runs a chain of them.
pub(super) struct Layer {
    pub(super) stride: usize,
    pub(super) pad: usize,
    pub(super) relu: bool,
    /// Max-pool kernel (= stride) after the activation; 1 = none.
    pub(super) pool: usize,
    pub(super) fixed_mean: Vec<f32>,
    pub(super) fixed_var: Vec<f32>,
    pub(super) use_batch: bool,
    pub(super) alpha: f32,
    pub(super) eps: f64,
    /// Keep `z` for a backward pass.
    pub(super) keep: bool,
    /// Do not store `z` at all: recompute it, image by image, when it is needed again (the
    /// normalization pass and the backward's sums). For cheap convolutions of a frozen input
    /// with a frozen weight (the first layer: C·KH·KW ≤ [`RECOMPUTE_MAX_CK`]), whose output is
    /// the largest tensor of the network and costs more to write to and read back from memory
    /// than to compute again.
    pub(super) recompute: bool,
    /// `y = act(BN(z) + r)`: a residual connection of the output's shape (no pooling then).
    pub(super) residual: bool,
    /// (O, C, KH, KW).
    pub(super) w_dims: [usize; 4],
    /// Leave the epilogue to the layer that reads the output: the forward keeps z (even
    /// without `keep`) and returns no output; the reader gets [`Input::Virtual`]. The network
    /// executor sets it for a plain layer (no residual, pooling or recomputation) whose output
    /// only one layer reads, as its input, and for a residual layer whose first reader reads
    /// the output as its input (which then also writes it out for the others, see
    /// [`Layer::forward`]).
    pub(super) defer: bool,
}

/// Where a layer's forward pass writes its virtual input as it computes it (the output of the
/// layer that deferred its epilogue, which others read too): the values, and that layer's
/// output mask when it keeps one (see [`Saved::mask`]).
pub(super) struct Materialize<'a> {
    pub(super) x: &'a mut [f32],
    pub(super) mask: Option<&'a mut [u8]>,
}

/// A layer's input in the forward pass.
#[derive(Clone, Copy)]
pub(super) enum Input<'a> {
    /// The input itself.
    Plain(&'a [f32]),
    /// `act(z·scale + shift (+ r))` per channel: the output of a layer that deferred its
    /// epilogue, computed here image by image into a buffer that stays in cache (instead of a
    /// pass over the whole batch that writes it to memory and a read of it back).
    Virtual {
        z: &'a [f32],
        scale: &'a [f32],
        shift: &'a [f32],
        relu: bool,
        /// The producer's residual input.
        r: Option<&'a [f32]>,
    },
}

impl Input<'_> {
    /// Image b's input (`len` values): a slice of the plain input, or the producer's epilogue
    /// applied into `tmp`.
    fn image<'s>(&'s self, b: usize, len: usize, tmp: &'s mut [f32]) -> &'s [f32] {
        match *self {
            Input::Plain(x) => &x[b * len..(b + 1) * len],
            Input::Virtual {
                z,
                scale,
                shift,
                relu,
                r,
            } => {
                let zb = &z[b * len..(b + 1) * len];
                let rb = r.map(|r| &r[b * len..(b + 1) * len]);
                epilogue_planes(&mut tmp[..len], zb, rb, scale, shift, relu);
                &tmp[..len]
            }
        }
    }
}

/// Which of a layer's inputs need a gradient (γ and β always get theirs).
#[derive(Clone, Copy, Debug)]
pub(super) struct Tracked {
    pub(super) x: bool,
    pub(super) w: bool,
    pub(super) r: bool,
}

/// A layer's gradients: `dgb` is [dγ; dβ] (always computed: it is cheap), the others only for
/// tracked inputs.
pub(super) struct Grads {
    pub(super) dx: Option<Vec<f32>>,
    pub(super) dw: Option<Vec<f32>>,
    pub(super) dgb: Vec<f32>,
    pub(super) dr: Option<Vec<f32>>,
}

/// The candle op around one [`Layer`].
struct ConvBnOp {
    layer: Layer,
    /// With a residual the op's three inputs are (x, params, r), params = [W flattened; γ; β]
    /// (candle's custom ops take at most three inputs), and `w_tracked` says whether W itself
    /// needs a gradient (params is tracked as soon as γ or β is). Without, they are
    /// (x, W, [γ; β]).
    w_tracked: bool,
    saved: Arc<Mutex<Option<Saved>>>,
}

pub(super) fn scale_shift(nm: &BnNormalizer, gamma: &[f32], beta: &[f32]) -> (Vec<f32>, Vec<f32>) {
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

/// The layer's activation: [`relu_f`] when `relu`, else the identity.
#[inline(always)]
fn act(v: f32, relu: bool) -> f32 {
    if relu {
        relu_f(v)
    } else {
        v
    }
}

/// `dst = max(0, src·scale + shift [+ res])` (the affine part alone when `relu` is off; `res` is
/// a residual connection added before the ReLU).
#[inline(always)]
fn epilogue(dst: &mut [f32], src: &[f32], res: Option<&[f32]>, scale: f32, shift: f32, relu: bool) {
    match res {
        None => {
            for (d, s) in dst.iter_mut().zip(src) {
                *d = act(s * scale + shift, relu);
            }
        }
        Some(r) => {
            for ((d, s), r) in dst.iter_mut().zip(src).zip(r) {
                *d = act(s * scale + shift + r, relu);
            }
        }
    }
}

/// [`epilogue`] on the conv output itself.
#[inline(always)]
fn epilogue_in_place(p: &mut [f32], res: Option<&[f32]>, scale: f32, shift: f32, relu: bool) {
    match res {
        None => {
            for v in p.iter_mut() {
                *v = act(*v * scale + shift, relu);
            }
        }
        Some(r) => {
            for (v, r) in p.iter_mut().zip(r) {
                *v = act(*v * scale + shift + r, relu);
            }
        }
    }
}

/// Lane-wise a + b over 8 f32 lanes. The sums below are written over `[f32; 8]` arrays (8
/// independent accumulators, added in f64 at the end) in this form — whole arrays built with
/// `from_fn`, masks as bit operations — because that is what the compiler turns into vector
/// instructions; indexed per-lane updates of two accumulators, or an `if` per lane, stayed
/// scalar.
#[inline(always)]
fn add8(a: [f32; 8], b: [f32; 8]) -> [f32; 8] {
    std::array::from_fn(|i| a[i] + b[i])
}

/// `v` where `keep`, else +0.0, without a branch.
#[inline(always)]
fn keep_if(v: f32, keep: bool) -> f32 {
    f32::from_bits(v.to_bits() & 0u32.wrapping_sub(keep as u32))
}

/// The two accumulators' lanes, each summed in f64 in lane order. `black_box` keeps the compiler
/// from pairing lane i of one with lane i of the other into 2-wide vectors for this reduction,
/// which it then also did in the accumulation loop (scalar code); it changes no value.
#[inline(always)]
fn lanes_f64(pair: ([f32; 8], [f32; 8])) -> (f64, f64) {
    let (a, b) = std::hint::black_box(pair);
    let sum = |v: [f32; 8]| v.iter().map(|x| *x as f64).sum::<f64>();
    (sum(a), sum(b))
}

/// Σ and Σ² of a slice, in f32 over 8 lanes (vectorized), returned in f64. The planes summed
/// here hold at most a few thousand values; planes are then added in f64.
#[inline(always)]
fn sum_sq(v: &[f32]) -> (f64, f64) {
    let (mut s, mut q) = ([0f32; 8], [0f32; 8]);
    let (chunks, rest) = v.as_chunks::<8>();
    for c in chunks {
        s = add8(s, *c);
        q = add8(q, std::array::from_fn(|i| c[i] * c[i]));
    }
    let (mut s, mut q) = lanes_f64((s, q));
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
    let z = &z[..dy.len()];
    let ((dc, drest), (zc, zrest)) = (dy.as_chunks::<8>(), z.as_chunks::<8>());
    let pass = |d: f32, zv: f32| keep_if(d, !relu || zv * scale + shift > 0.0);
    for (d, zv) in dc.iter().zip(zc) {
        let g: [f32; 8] = std::array::from_fn(|l| pass(d[l], zv[l]));
        s = add8(s, g);
        t = add8(t, std::array::from_fn(|l| g[l] * (zv[l] - m)));
    }
    let (mut s, mut t) = lanes_f64((s, t));
    for (d, zv) in drest.iter().zip(zrest) {
        let gv = pass(*d, *zv);
        s += gv as f64;
        t += (gv * (zv - m)) as f64;
    }
    (s, t)
}

/// With a residual connection the ReLU mask cannot be recomputed from z alone: `g` (dy on entry)
/// becomes `dy` where the output `y > 0` (everywhere when `relu` is off) and 0 elsewhere — it is
/// also the residual's gradient — and Σg, Σg·(z − m) are returned; 8 f32 lanes, as [`grad_sums`].
/// The mask is the plane's bits (see [`mask_bytes`]), one byte per 8 lanes.
#[inline(always)]
fn masked_grad_sums(g: &mut [f32], bits: &[u8], z: &[f32], m: f32, relu: bool) -> (f64, f64) {
    let (mut s, mut t) = ([0f32; 8], [0f32; 8]);
    let n = g.len();
    let z = &z[..n];
    let (zc, zrest) = z.as_chunks::<8>();
    let (gc, grest) = g.as_chunks_mut::<8>();
    let pass = |d: f32, byte: u8, l: usize| keep_if(d, !relu || (byte >> l) & 1 != 0);
    for ((zv, gv), &byte) in zc.iter().zip(gc.iter_mut()).zip(bits) {
        *gv = std::array::from_fn(|l| pass(gv[l], byte, l));
        s = add8(s, *gv);
        t = add8(t, std::array::from_fn(|l| gv[l] * (zv[l] - m)));
    }
    let (mut s, mut t) = lanes_f64((s, t));
    let last = bits.get(zc.len()).copied().unwrap_or(0);
    for (l, (zv, gv)) in zrest.iter().zip(grest.iter_mut()).enumerate() {
        *gv = pass(*gv, last, l);
        s += *gv as f64;
        t += (*gv * (zv - m)) as f64;
    }
    (s, t)
}

/// The ReLU mask of 8 values: bit l is `v[l] > 0`.
#[inline(always)]
fn bits8(v: &[f32; 8]) -> u8 {
    (0..8).fold(0u8, |a, l| a | (u8::from(v[l] > 0.0) << l))
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
    let out = act(best, relu);
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

/// A pooled layer's geometry as the backward loops need it: window k × k over conv planes of
/// width `wo`, pooled planes `hp` × `wp` (`plen` values); `win[a]` is the offset of window code
/// `a` from the window's corner.
#[derive(Clone, Copy)]
struct PoolGeom<'a> {
    k: usize,
    wo: usize,
    hp: usize,
    wp: usize,
    win: &'a [usize],
}

impl PoolGeom<'_> {
    fn plen(&self) -> usize {
        self.hp * self.wp
    }

    /// The kept maxima of pooled row `oh` of one plane (`arg`, `dy`: that plane's window codes
    /// and output gradient): (position in the conv output plane, dy), windows whose maximum was
    /// a ReLU zero left out.
    #[inline(always)]
    fn kept<'s>(
        &'s self,
        arg: &'s [u8],
        dy: &'s [f32],
        oh: usize,
    ) -> impl Iterator<Item = (usize, f32)> + 's {
        let (row, corner) = (oh * self.wp..(oh + 1) * self.wp, oh * self.k * self.wo);
        arg[row.clone()]
            .iter()
            .zip(&dy[row])
            .enumerate()
            .filter(|(_, (&a, _))| a != NO_GRAD)
            .map(move |(ow, (&a, &d))| (corner + ow * self.k + self.win[a as usize], d))
    }
}

wide_fn! {
    /// [`pool_plane`] for each of the `scale.len()` planes in `z` (`dims` = (ho, wo, k)): `y`
    /// gets the pooled planes and `arg`, when given, their window codes.
    fn pool_planes(
        z: &[f32],
        dims: (usize, usize, usize),
        scale: &[f32],
        shift: &[f32],
        relu: bool,
        y: &mut [f32],
        arg: Option<&mut [u8]>,
    ) {
        let (hw, plen) = (dims.0 * dims.1, (dims.0 / dims.2) * (dims.1 / dims.2));
        let mut arg = arg;
        for c in 0..scale.len() {
            let a = arg.as_deref_mut().map(|a| &mut a[c * plen..(c + 1) * plen]);
            let (zp, yp) = (&z[c * hw..(c + 1) * hw], &mut y[c * plen..(c + 1) * plen]);
            pool_plane(zp, dims, scale[c], shift[c], relu, yp, a);
        }
    }
}

wide_fn! {
    /// [`epilogue`] for each of the `scale.len()` planes of `src` into `dst`.
    fn epilogue_planes(
        dst: &mut [f32],
        src: &[f32],
        res: Option<&[f32]>,
        scale: &[f32],
        shift: &[f32],
        relu: bool,
    ) {
        let hw = dst.len() / scale.len().max(1);
        for c in 0..scale.len() {
            let r = c * hw..(c + 1) * hw;
            let rp = res.map(|v| &v[r.clone()]);
            epilogue(&mut dst[r.clone()], &src[r], rp, scale[c], shift[c], relu);
        }
    }
}

wide_fn! {
    /// [`epilogue_in_place`] for each of the `scale.len()` planes of `p`.
    fn epilogue_planes_in_place(
        p: &mut [f32],
        res: Option<&[f32]>,
        scale: &[f32],
        shift: &[f32],
        relu: bool,
    ) {
        let hw = p.len() / scale.len().max(1);
        for c in 0..scale.len() {
            let r = c * hw..(c + 1) * hw;
            let rp = res.map(|v| &v[r.clone()]);
            epilogue_in_place(&mut p[r], rp, scale[c], shift[c], relu);
        }
    }
}

wide_fn! {
    /// The ReLU masks of the planes of `y` (`hw` values each) into `bits` ([`mask_bytes`] per
    /// plane).
    fn plane_masks(y: &[f32], hw: usize, bits: &mut [u8]) {
        let mb = mask_bytes(hw);
        for (yp, bp) in y.chunks(hw.max(1)).zip(bits.chunks_mut(mb.max(1))) {
            let (yc, rest) = yp.as_chunks::<8>();
            for (b, v) in bp.iter_mut().zip(yc) {
                *b = bits8(v);
            }
            if !rest.is_empty() {
                // The missing lanes as zeros: bits that nothing reads, left clear.
                bp[mb - 1] = bits8(&std::array::from_fn(|l| rest.get(l).copied().unwrap_or(0.0)));
            }
        }
    }
}

wide_fn! {
    /// Per plane of one image's conv output `z`, (Σz, Σz²) into `out` (one entry per plane).
    fn plane_sums(z: &[f32], out: &mut [(f64, f64)]) {
        let hw = z.len() / out.len().max(1);
        for (c, p) in out.iter_mut().enumerate() {
            *p = sum_sq(&z[c * hw..(c + 1) * hw]);
        }
    }
}

wide_fn! {
    /// The backward's first pass for one image: per channel (Σg, Σg·(z − m)) into `out`, g = dy
    /// where y > 0 (see [`grad_sums`]); with pooling (`arg`: the image's window codes) only the
    /// kept maxima count, summed in f32 along a pooled row and the rows in f64.
    fn image_grad_sums(
        dy: &[f32],
        z: &[f32],
        pool: Option<PoolGeom<'_>>,
        arg: &[u8],
        ss: (&[f32], &[f32]),
        mean: &[f32],
        relu: bool,
        out: &mut [(f64, f64)],
    ) {
        let ((scale, shift), hw) = (ss, z.len() / out.len().max(1));
        for (c, p) in out.iter_mut().enumerate() {
            let (zp, mc) = (&z[c * hw..(c + 1) * hw], mean[c]);
            *p = match pool {
                Some(pg) => {
                    let plen = pg.plen();
                    let (ap, dp) = (&arg[c * plen..(c + 1) * plen], &dy[c * plen..(c + 1) * plen]);
                    let (mut s, mut t) = (0f64, 0f64);
                    for oh in 0..pg.hp {
                        let (mut rs, mut rt) = (0f32, 0f32);
                        for (pos, d) in pg.kept(ap, dp, oh) {
                            rs += d;
                            rt += d * (zp[pos] - mc);
                        }
                        s += rs as f64;
                        t += rt as f64;
                    }
                    (s, t)
                }
                None => grad_sums(&dy[c * hw..(c + 1) * hw], zp, (scale[c], shift[c]), mc, relu),
            };
        }
    }
}

wide_fn! {
    /// The first pass with a residual, for one image: per channel [`masked_grad_sums`] into
    /// `out`, `g` (the output gradient dy) masked in place: g = dy·[y > 0].
    fn image_masked_sums(
        g: &mut [f32],
        bits: &[u8],
        z: &[f32],
        mean: &[f32],
        relu: bool,
        out: &mut [(f64, f64)],
    ) {
        let hw = z.len() / out.len().max(1);
        let mb = mask_bytes(hw);
        for (c, p) in out.iter_mut().enumerate() {
            let r = c * hw..(c + 1) * hw;
            let (bp, zp) = (&bits[c * mb..(c + 1) * mb], &z[r.clone()]);
            *p = masked_grad_sums(&mut g[r], bp, zp, mean[c], relu);
        }
    }
}

wide_fn! {
    /// The BatchNorm input gradient of one image: per channel c with `coef[c]` = (γ·r, (α/M)·Σg,
    /// (α/M)·r²·Σg(z − m), μ_b), dz = γ·r·[g − (α/M)·Σg − (α/M)·r²·(z − μ_b)·Σg(z − m)], g = dy
    /// where y > 0 (the mask from z, as in [`grad_sums`]), or routed to the kept maxima.
    fn image_dz(
        dy: &[f32],
        z: &[f32],
        pool: Option<PoolGeom<'_>>,
        arg: &[u8],
        ss: (&[f32], &[f32]),
        coef: &[(f32, f32, f32, f32)],
        relu: bool,
        dz: &mut [f32],
    ) {
        let ((scale, shift), hw) = (ss, z.len() / coef.len().max(1));
        for (c, &(kc, c1, c2, mb)) in coef.iter().enumerate() {
            let zp = &z[c * hw..(c + 1) * hw];
            let dst = &mut dz[c * hw..(c + 1) * hw];
            match pool {
                Some(pg) => {
                    for (d, zv) in dst.iter_mut().zip(zp) {
                        *d = -kc * (c1 + (zv - mb) * c2);
                    }
                    let plen = pg.plen();
                    let (ap, dp) = (&arg[c * plen..(c + 1) * plen], &dy[c * plen..(c + 1) * plen]);
                    for oh in 0..pg.hp {
                        for (pos, dv) in pg.kept(ap, dp, oh) {
                            dst[pos] += kc * dv;
                        }
                    }
                }
                None => {
                    let (sc, sh) = (scale[c], shift[c]);
                    let dp = &dy[c * hw..(c + 1) * hw];
                    for ((d, dv), zv) in dst.iter_mut().zip(dp).zip(zp) {
                        let gv = if !relu || zv * sc + sh > 0.0 { *dv } else { 0.0 };
                        *d = kc * (gv - c1 - (zv - mb) * c2);
                    }
                }
            }
        }
    }
}

impl Layer {
    /// One image's convolution and, while it is in cache, its epilogue: `yb` gets
    /// `max(0, z·scale + shift)`, pooled when a pool follows (from `zb`, which holds the
    /// convolution then; the window codes into `ab` when given), else computed in place (the
    /// convolution lands in `yb`, `zb` is unused), with the image's residual `rb` added before
    /// the ReLU when there is one.
    #[allow(clippy::too_many_arguments)]
    fn conv_image(
        &self,
        g: &Geometry,
        plan: &Plan,
        xb: &[f32],
        scratch: &mut Scratch,
        zb: &mut [f32],
        yb: &mut [f32],
        ab: Option<&mut [u8]>,
        rb: Option<&[f32]>,
        (scale, shift): (&[f32], &[f32]),
    ) {
        let (hw, plen) = (g.hw_out(), self.pooled(g).0);
        if self.pool > 1 {
            plan.run(xb, scratch, zb);
            let dims = (g.ho, g.wo, self.pool);
            let zb = &zb[..g.o * g.hw_out()];
            pool_planes(zb, dims, scale, shift, self.relu, &mut yb[..g.o * plen], ab);
        } else {
            plan.run(xb, scratch, yb);
            epilogue_planes_in_place(&mut yb[..g.o * hw], rb, scale, shift, self.relu);
        }
    }

    /// The geometry of this layer on an input of shape `xs`, checked against its statistics
    /// and pooling.
    pub(super) fn geometry(&self, xs: &[usize]) -> Result<Geometry> {
        let g = Geometry::new(xs, &self.w_dims, self.stride, self.pad)?;
        if self.fixed_mean.len() != g.o || self.fixed_var.len() != g.o {
            candle_core::bail!(
                "conv_bn: {} output channels but {} running statistics",
                g.o,
                self.fixed_mean.len()
            );
        }
        if self.pool > 1
            && (self.residual || self.pool * self.pool > NO_GRAD as usize || g.ho < self.pool)
        {
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

    /// Dimensions of the output (N, O, H', W') after pooling.
    pub(super) fn out_dims(&self, g: &Geometry) -> [usize; 4] {
        let (_, hp, wp) = self.pooled(g);
        [g.b, g.o, hp, wp]
    }

    /// The lengths of the inputs, checked against the geometry (`x` where it is read).
    fn check_inputs(
        &self,
        g: &Geometry,
        x: Option<&[f32]>,
        w: &[f32],
        gamma: &[f32],
        beta: &[f32],
    ) -> Result<()> {
        let o = g.o;
        let x_len = x.map_or(g.b * g.in_len(), |x| x.len());
        if x_len != g.b * g.in_len() || w.len() != o * g.ck() {
            candle_core::bail!(
                "conv_bn: {} input values and {} weights for input {:?} and weight {:?}",
                x_len,
                w.len(),
                [g.b, g.c, g.h, g.w],
                self.w_dims
            );
        }
        if gamma.len() != o || beta.len() != o {
            candle_core::bail!(
                "conv_bn: {o} channels but γ/β of {} and {} values",
                gamma.len(),
                beta.len()
            );
        }
        Ok(())
    }

    /// The forward pass: the output `y` (N, O, H', W') and what the backward needs (`z` only
    /// when `keep` and not `recompute`). `materialize` (with a virtual input only) receives
    /// that input, image by image as it is computed: the output of a deferring layer that
    /// other layers read as well.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn forward(
        &self,
        g: &Geometry,
        input: Input<'_>,
        w: &[f32],
        gamma: &[f32],
        beta: &[f32],
        r: Option<&[f32]>,
        materialize: Option<Materialize<'_>>,
    ) -> Result<(Vec<f32>, Saved)> {
        let in_len = g.in_len();
        match input {
            Input::Plain(x) => self.check_inputs(g, Some(x), w, gamma, beta)?,
            Input::Virtual { z, scale, r, .. } => {
                self.check_inputs(g, None, w, gamma, beta)?;
                let n = g.b * in_len;
                if z.len() != n || scale.len() != g.c || r.is_some_and(|r| r.len() != n) {
                    candle_core::bail!("conv_bn: virtual input of {} values", z.len());
                }
            }
        }
        let in_mask = g.c * mask_bytes(g.h * g.w);
        match (&materialize, input) {
            (None, _) => {}
            (Some(m), Input::Virtual { .. })
                if m.x.len() == g.b * in_len
                    && m.mask.as_ref().is_none_or(|k| k.len() == g.b * in_mask) => {}
            (Some(m), _) => candle_core::bail!(
                "conv_bn: {} values to write a virtual input of {} into",
                m.x.len(),
                g.b * in_len
            ),
        }
        if self.defer && (self.pool > 1 || self.recompute) {
            candle_core::bail!(
                "conv_bn: a pooled or recomputing layer cannot leave its output to its reader"
            );
        }
        match r {
            Some(r) if !self.residual || r.len() != g.b * g.out_len() => candle_core::bail!(
                "conv_bn: residual of {} values for an output of shape {:?}",
                r.len(),
                [g.b, g.o, g.ho, g.wo]
            ),
            None if self.residual => candle_core::bail!("conv_bn: residual layer without one"),
            _ => {}
        }
        let (o, hw) = (g.o, g.hw_out());
        let olen = g.out_len();
        let image_res = |b: usize| r.map(|r| &r[b * olen..(b + 1) * olen]);
        let plan = Plan::forward(g, w);
        let (plen, _, _) = self.pooled(g);
        let pooling = self.pool > 1;
        let dims = (g.ho, g.wo, self.pool);
        // SAFETY: every image's planes are written below (conv_image, pool_planes, epilogue_planes).
        let mut y = unsafe { uninit_f32(g.b * o * plen) };
        // Only the main path below reads a virtual input (the network executor makes them only
        // when a backward pass follows).
        let plain = match input {
            Input::Plain(x) => Some(x),
            Input::Virtual { .. } => None,
        };
        if !self.use_batch && !self.keep {
            let Some(x) = plain else {
                candle_core::bail!("conv_bn: a virtual input without a backward pass");
            };
            // Fixed statistics, no gradient: affine + ReLU (+ pool) right after each GEMM.
            let nm = BnNormalizer::new(&self.fixed_mean, &self.fixed_var, None, 0.0, self.eps);
            let (scale, shift) = scale_shift(&nm, gamma, beta);
            let zlen = if pooling { g.out_len() } else { 0 };
            y.par_chunks_mut(o * plen)
                .zip(x.par_chunks(g.in_len()))
                .enumerate()
                .for_each_init(
                    || (plan.scratch(), vec![0f32; zlen]),
                    |(scratch, zb), (b, (yb, xb))| {
                        let rb = image_res(b);
                        self.conv_image(g, &plan, xb, scratch, zb, yb, None, rb, (&scale, &shift))
                    },
                );
            let saved = Saved {
                z: vec![],
                arg: vec![],
                mask: vec![],
                nm,
                stats: None,
            };
            return Ok((y, saved));
        }
        // Convolution output, with per-image per-channel (Σz, Σz²) while it is in cache.
        let recompute = self.recompute;
        // SAFETY: `plan.run` writes every image's output.
        let mut z = unsafe { uninit_f32(if recompute { 0 } else { g.b * g.out_len() }) };
        let mut partial = vec![(0f64, 0f64); g.b * o];
        let use_batch = self.use_batch;
        let sums = |zb: &[f32], pb: &mut [(f64, f64)]| {
            if use_batch {
                plane_sums(&zb[..o * hw], pb);
            }
        };
        if recompute {
            let Some(x) = plain else {
                candle_core::bail!("conv_bn: a recomputing layer with a virtual input");
            };
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
            // A virtual input is computed into a buffer per worker, or, to be materialized, into
            // its place in `materialize` (read by the convolution right after, in cache).
            let tmp_len = if plain.is_some() || materialize.is_some() {
                0
            } else {
                in_len
            };
            let (x_to, mask_to) = match materialize {
                Some(Materialize { x, mask }) => (Some(x), mask),
                None => (None, None),
            };
            let mut into = chunks_or_empty(x_to, in_len, g.b);
            let mut masks = chunks_or_empty(mask_to, in_mask, g.b);
            let hw_in = g.h * g.w;
            z.par_chunks_mut(g.out_len())
                .zip(partial.par_chunks_mut(o))
                .zip(into.par_iter_mut().zip(masks.par_iter_mut()))
                .enumerate()
                .for_each_init(
                    || (plan.scratch(), vec![0f32; tmp_len]),
                    |(scratch, tmp), (b, ((zb, pb), (xb, kb)))| {
                        let xb = match xb.is_empty() {
                            true => input.image(b, in_len, tmp),
                            false => input.image(b, in_len, xb),
                        };
                        if !kb.is_empty() {
                            plane_masks(xb, hw_in, kb);
                        }
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
        // A residual layer's output mask, for the backward's first pass.
        let mask_len = match self.residual && self.keep {
            true => g.b * o * mask_bytes(hw),
            false => 0,
        };
        if self.defer {
            // The reader applies the epilogue to z image by image (`Input::Virtual`), and
            // writes the mask (`Materialize`) into this, which it finds in the saved state.
            let saved = Saved {
                z,
                arg: vec![],
                mask: vec![0u8; mask_len],
                nm,
                stats,
            };
            return Ok((vec![], saved));
        }
        let (scale, shift) = scale_shift(&nm, gamma, beta);
        let mut arg = vec![0u8; if pooling && self.keep { y.len() } else { 0 }];
        // (A residual layer neither pools nor recomputes: the last branch below fills it.)
        let mut mask = vec![0u8; mask_len];
        if recompute {
            let Some(x) = plain else {
                unreachable!("checked above");
            };
            // The convolution again, image by image, and the epilogue while it is in cache.
            let ylen = o * plen;
            let zlen = if pooling { g.out_len() } else { 0 };
            let keep_arg = (pooling && self.keep).then_some(&mut arg[..]);
            let mut args = chunks_or_empty(keep_arg, ylen, g.b);
            y.par_chunks_mut(ylen)
                .zip(x.par_chunks(g.in_len()))
                .zip(args.par_iter_mut())
                .for_each_init(
                    || (plan.scratch(), vec![0f32; zlen]),
                    |(scratch, zb), ((yb, xb), ab)| {
                        let ab = (pooling && self.keep).then_some(&mut **ab);
                        // (No residual here: see `conv_bn_op`.)
                        self.conv_image(g, &plan, xb, scratch, zb, yb, ab, None, (&scale, &shift))
                    },
                );
        } else if pooling {
            let keep = self.keep;
            let mut args = chunks_or_empty(keep.then_some(&mut arg[..]), plen, g.b * o);
            y.par_chunks_mut(plen)
                .zip(z.par_chunks(hw))
                .zip(args.par_iter_mut())
                .enumerate()
                .for_each(|(i, ((yp, zp), ap))| {
                    let c = i % o;
                    let a = if keep { Some(&mut **ap) } else { None };
                    let (sc, sh) = (&scale[c..c + 1], &shift[c..c + 1]);
                    pool_planes(zp, dims, sc, sh, self.relu, yp, a);
                });
        } else {
            let mb = mask_bytes(hw);
            let keep_mask = (mask_len > 0).then_some(&mut mask[..]);
            let mut masks = chunks_or_empty(keep_mask, mb, g.b * o);
            y.par_chunks_mut(hw)
                .zip(z.par_chunks(hw))
                .zip(masks.par_iter_mut())
                .enumerate()
                .for_each(|(i, ((yp, zp), kp))| {
                    let c = i % o;
                    let rp = r.map(|r| &r[i * hw..(i + 1) * hw]);
                    let (sc, sh) = (&scale[c..c + 1], &shift[c..c + 1]);
                    epilogue_planes(yp, zp, rp, sc, sh, self.relu);
                    if !kp.is_empty() {
                        plane_masks(yp, hw, kp);
                    }
                });
        }
        let saved = Saved {
            z: if self.keep && !recompute { z } else { vec![] },
            arg,
            mask,
            nm,
            stats,
        };
        Ok((y, saved))
    }

    /// The backward pass from the output gradient `dy`: `x`, `w`, `gamma`, `beta` as in the
    /// forward (`x` is only read for the weight gradient or by a recomputing layer, and may be
    /// empty otherwise); with a residual the ReLU mask of the output comes from `saved.mask`.
    ///
    /// For the network executor: `pass1` says whether the first pass already ran (and then, with
    /// a residual, `dy` is already masked and `Grads::dr` is `None`: `dy` is the residual's
    /// gradient); `dx_out` whether the input gradient is a new vector or added into an existing
    /// one; and `hook`, with one slot per image and input channel, runs after each image's input
    /// gradient is complete (the first pass of the layer that produced the input).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn backward(
        &self,
        g: &Geometry,
        saved: &Saved,
        x: &[f32],
        w: &[f32],
        gamma: &[f32],
        beta: &[f32],
        dy: &[f32],
        tr: Tracked,
        pass1: Pass1,
        dx_out: DxOut,
        hook: Option<(ImageHook, &mut [(f64, f64)])>,
    ) -> Result<Grads> {
        if saved.z.is_empty() && !self.recompute && g.b * g.out_len() != 0 {
            candle_core::bail!("conv_bn: backward through a forward that kept no state");
        }
        // x is read for the weight gradient and by a recomputing layer only (the network
        // executor frees it otherwise).
        let reads_x = tr.w || self.recompute;
        self.check_inputs(g, reads_x.then_some(x), w, gamma, beta)?;
        let (z, nm, arg) = (&saved.z, &saved.nm, &saved.arg);
        let (o, hw, ck) = (g.o, g.hw_out(), g.ck());
        let (plen, _, _) = self.pooled(g);
        let pooling = self.pool > 1;
        if dy.len() != g.b * o * plen {
            candle_core::bail!(
                "conv_bn: output gradient of {} values for {} outputs",
                dy.len(),
                g.b * o * plen
            );
        }
        let (dl, al) = if pooling { (plen, plen) } else { (hw, 0) };
        let ctx = Pass1Ctx::new(self, g, saved, gamma, beta);
        // A recomputing layer's input and weight are frozen (see `conv_bn`): only γ and β get
        // gradients, and z comes from the convolution of x again, image by image.
        if self.recompute && (tr.x || tr.w) {
            candle_core::bail!("conv_bn: recomputed layer with a tracked input or weight");
        }
        let olen = g.out_len();
        // With a residual, pass 1 reads the mask from y and writes g = dy·[y > 0]: the residual's
        // gradient, and what the rest of the backward reads instead of dy.
        let (gm, partial) = match pass1 {
            Pass1::Done(partial) if !self.recompute => (None, partial),
            Pass1::Done(_) => {
                candle_core::bail!("conv_bn: first pass of a recomputed layer done elsewhere")
            }
            Pass1::Here if self.residual => {
                if saved.mask.len() != g.b * o * mask_bytes(hw) {
                    candle_core::bail!("conv_bn: residual layer without its output's mask");
                }
                // SAFETY: every image is copied into, then masked in place.
                let mut gm = unsafe { uninit_f32(dy.len()) };
                let mut partial = vec![(0f64, 0f64); g.b * o];
                gm.par_chunks_mut(olen)
                    .zip(partial.par_chunks_mut(o))
                    .enumerate()
                    .for_each(|(b, (gi, pb))| {
                        let r = b * olen..(b + 1) * olen;
                        gi.copy_from_slice(&dy[r]);
                        ctx.masked(b, gi, pb);
                    });
                (Some(gm), partial)
            }
            Pass1::Here => {
                // Per image and channel Σg and Σg·(z − m), g = dy where y > 0.
                let replan = self.recompute.then(|| Plan::forward(g, w));
                let mut partial = vec![(0f64, 0f64); g.b * o];
                partial.par_chunks_mut(o).enumerate().for_each_init(
                    || replan.as_ref().map(|p| (p.scratch(), vec![0f32; olen])),
                    |again, (b, pb)| {
                        let zimg: &[f32] = match (again.as_mut(), &replan) {
                            (Some((scratch, zb)), Some(p)) => {
                                p.run(&x[b * g.in_len()..(b + 1) * g.in_len()], scratch, zb);
                                zb
                            }
                            _ => &z[b * olen..(b + 1) * olen],
                        };
                        ctx.sums(b, &dy[b * o * dl..(b + 1) * o * dl], zimg, pb);
                    },
                );
                (None, partial)
            }
        };
        // With a residual, the rest reads g (already masked) instead of dy.
        let (dyv, relu) = match (&gm, self.residual) {
            (Some(gm), _) => (&gm[..], false),
            (None, true) => (dy, false),
            (None, false) => (dy, self.relu),
        };
        let (mut sdy, mut sdyx) = (vec![0f64; o], vec![0f64; o]);
        for b in 0..g.b {
            for c in 0..o {
                sdy[c] += partial[b * o + c].0;
                sdyx[c] += partial[b * o + c].1;
            }
        }
        let mut dgb: Vec<f32> = (0..o).map(|c| sdyx[c] as f32 * nm.inv_std[c]).collect();
        dgb.extend(sdy.iter().map(|v| *v as f32));
        if !tr.x && !tr.w {
            return Ok(Grads {
                dx: None,
                dw: None,
                dgb,
                dr: gm.filter(|_| tr.r),
            });
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
        let pool = ctx.pool();
        let (scale, shift) = (&ctx.scale[..], &ctx.shift[..]);
        let dz_image = |b: usize, dzb: &mut [f32]| {
            let dyb = &dyv[b * o * dl..(b + 1) * o * dl];
            let ab = &arg[b * o * al..(b + 1) * o * al];
            let zb = &z[b * olen..(b + 1) * olen];
            image_dz(dyb, zb, pool, ab, (scale, shift), &coef, relu, dzb);
        };
        let in_len = g.in_len();
        let c_in = g.c;
        // The input gradient's destination: a new vector, or the one it is added into (each
        // image's gradient computed into a buffer of its own first).
        let adding = matches!(dx_out, DxOut::Add(_));
        let mut new_dx = vec![];
        let dx: &mut [f32] = match dx_out {
            DxOut::Add(d) if tr.x => {
                if d.len() != g.b * in_len {
                    candle_core::bail!("conv_bn: input gradient to add into of {} values", d.len());
                }
                d
            }
            _ => {
                // SAFETY: `plan.run` writes every image's input gradient.
                new_dx = unsafe { uninit_f32(if tr.x { g.b * in_len } else { 0 }) };
                &mut new_dx
            }
        };
        let (hook, hook_sums) = match hook {
            Some((h, s)) if tr.x => {
                if s.len() != g.b * c_in {
                    candle_core::bail!("conv_bn: {} first-pass slots for {} images", s.len(), g.b);
                }
                (Some(h), s)
            }
            _ => (None, &mut [][..]),
        };
        let hook_slots = chunks_or_empty(hook.is_some().then_some(hook_sums), c_in, g.b);
        let plan = Plan::input_grad(g, w);
        // One image's input gradient into dxb (added when `adding`, through `tmp`), then the hook.
        let finish = |b: usize,
                      dzb: &[f32],
                      s: &mut Scratch,
                      tmp: &mut [f32],
                      dxb: &mut [f32],
                      slot: &mut [(f64, f64)]| {
            if adding {
                plan.run(dzb, s, tmp);
                add_into(dxb, tmp);
            } else {
                plan.run(dzb, s, dxb);
            }
            if let Some(h) = hook {
                h(b, dxb, slot);
            }
        };
        let tmp_len = if adding { in_len } else { 0 };
        if !tr.w {
            // Input gradient only: every image on its own.
            let mut slots = hook_slots;
            dx.par_chunks_mut(in_len)
                .zip(slots.par_iter_mut())
                .enumerate()
                .for_each_init(
                    || (vec![0f32; g.out_len()], plan.scratch(), vec![0f32; tmp_len]),
                    |(dzb, scratch, tmp), (b, (dxb, slot))| {
                        dz_image(b, dzb);
                        finish(b, dzb, scratch, tmp, dxb, slot);
                    },
                );
            return Ok(Grads {
                dx: (!adding).then_some(new_dx),
                dw: None,
                dgb,
                dr: gm.filter(|_| tr.r),
            });
        }
        // Weight gradient: fixed chunks of images, partial sums added in order.
        let par = inner_parallelism(g.b);
        let cols_len = if g.pointwise() { 0 } else { ck * hw };
        let chunks = g.b.div_ceil(WEIGHT_GRAD_CHUNK);
        let mut dx_chunks = chunks_or_empty(tr.x.then_some(dx), in_len * WEIGHT_GRAD_CHUNK, chunks);
        let mut slot_chunks: Vec<Vec<&mut [(f64, f64)]>> = Vec::with_capacity(chunks);
        let mut slots = hook_slots.into_iter();
        for _ in 0..chunks {
            slot_chunks.push(slots.by_ref().take(WEIGHT_GRAD_CHUNK).collect());
        }
        let partials: Vec<Vec<f32>> = dx_chunks
            .par_iter_mut()
            .zip(slot_chunks.par_iter_mut())
            .enumerate()
            .map(|(ci, (dxc, sc))| {
                let mut dw = vec![0f32; o * ck];
                let mut dzb = vec![0f32; g.out_len()];
                let mut cols = vec![0f32; cols_len];
                let mut tmp = vec![0f32; tmp_len];
                let mut scratch = tr.x.then(|| plan.scratch());
                let first = ci * WEIGHT_GRAD_CHUNK;
                for b in first..(first + WEIGHT_GRAD_CHUNK).min(g.b) {
                    dz_image(b, &mut dzb);
                    if let Some(s) = scratch.as_mut() {
                        let k = b - first;
                        let dxb = &mut dxc[k * in_len..(k + 1) * in_len];
                        finish(b, &dzb, s, &mut tmp, dxb, sc[k]);
                    }
                    let xb = &x[b * in_len..(b + 1) * in_len];
                    let c: &[f32] = if g.pointwise() {
                        xb
                    } else {
                        im2col(g, xb, &mut cols);
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
        Ok(Grads {
            dx: (tr.x && !adding).then_some(new_dx),
            dw: Some(dw),
            dgb,
            dr: gm.filter(|_| tr.r),
        })
    }
}

/// What the backward's first pass (per image and channel Σg and Σg·(z − m)) already did: the
/// network executor runs it for a layer inside the backward of the layer that reads the
/// layer's output, image by image while that image's gradient is in cache.
pub(super) enum Pass1 {
    /// Nothing: it runs in the backward pass.
    Here,
    /// The sums, per image and channel; with a residual, dy is already masked in place.
    Done(Vec<(f64, f64)>),
}

/// Where a backward pass puts the input gradient.
pub(super) enum DxOut<'a> {
    /// A new vector, returned in `Grads::dx`.
    New,
    /// Added into this one (an activation that another layer has already sent its gradient
    /// to); `Grads::dx` is then `None`.
    Add(&'a mut [f32]),
}

/// Runs after each image's input gradient is complete: (image, that gradient, that image's
/// first-pass slots of the layer that produced the input).
pub(super) type ImageHook<'a> = &'a (dyn Fn(usize, &mut [f32], &mut [(f64, f64)]) + Sync);

/// `dst += src`, element-wise (vectorized).
#[inline(always)]
fn add_into(dst: &mut [f32], src: &[f32]) {
    add_planes(dst, src);
}

wide_fn! {
    fn add_planes(dst: &mut [f32], src: &[f32]) {
        for (d, s) in dst.iter_mut().zip(src) {
            *d += s;
        }
    }
}

/// What one layer's first backward pass needs: the forward's scale and shift (the ReLU mask),
/// the pooling geometry.
pub(super) struct Pass1Ctx<'a> {
    layer: &'a Layer,
    saved: &'a Saved,
    o: usize,
    hw: usize,
    plen: usize,
    hp: usize,
    wp: usize,
    wo: usize,
    scale: Vec<f32>,
    shift: Vec<f32>,
    /// Offset in the conv output plane of window code a from the window's corner.
    win: Vec<usize>,
}

impl<'a> Pass1Ctx<'a> {
    pub(super) fn new(
        layer: &'a Layer,
        g: &Geometry,
        saved: &'a Saved,
        gamma: &[f32],
        beta: &[f32],
    ) -> Self {
        let k = layer.pool;
        let (plen, hp, wp) = layer.pooled(g);
        // The forward's scale and shift (γ and β have not changed since).
        let (scale, shift) = scale_shift(&saved.nm, gamma, beta);
        Self {
            layer,
            saved,
            o: g.o,
            hw: g.hw_out(),
            plen,
            hp,
            wp,
            wo: g.wo,
            scale,
            shift,
            win: (0..k * k).map(|a| (a / k) * g.wo + a % k).collect(),
        }
    }

    fn pool(&self) -> Option<PoolGeom<'_>> {
        (self.layer.pool > 1).then_some(PoolGeom {
            k: self.layer.pool,
            wo: self.wo,
            hp: self.hp,
            wp: self.wp,
            win: &self.win,
        })
    }

    /// Without a residual: image b's sums from its output gradient and convolution output.
    fn sums(&self, b: usize, dy_b: &[f32], z_b: &[f32], out: &mut [(f64, f64)]) {
        let al = if self.pool().is_some() { self.plen } else { 0 };
        let ab = &self.saved.arg[b * self.o * al..(b + 1) * self.o * al];
        let ss = (&self.scale[..], &self.shift[..]);
        let (mean, relu) = (&self.saved.nm.mean, self.layer.relu);
        image_grad_sums(dy_b, z_b, self.pool(), ab, ss, mean, relu, out);
    }

    /// With a residual: image b's gradient masked in place (g = dy·[y > 0], the mask from the
    /// forward's bits) and its sums.
    fn masked(&self, b: usize, g_b: &mut [f32], out: &mut [(f64, f64)]) {
        let olen = self.o * self.hw;
        let mlen = self.o * mask_bytes(self.hw);
        let z_b = &self.saved.z[b * olen..(b + 1) * olen];
        let bits = &self.saved.mask[b * mlen..(b + 1) * mlen];
        image_masked_sums(g_b, bits, z_b, &self.saved.nm.mean, self.layer.relu, out);
    }

    /// Image b's first pass, with its output gradient `dy_b` (masked in place with a
    /// residual). Not for recomputing layers (their z is not stored).
    pub(super) fn image(&self, b: usize, dy_b: &mut [f32], out: &mut [(f64, f64)]) {
        debug_assert!(!self.layer.recompute);
        match self.layer.residual {
            true => self.masked(b, dy_b, out),
            false => {
                let olen = self.o * self.hw;
                self.sums(b, dy_b, &self.saved.z[b * olen..(b + 1) * olen], out)
            }
        }
    }
}

impl ConvBnOp {
    /// The slices of the op's inputs: (w, γ, β, residual).
    #[allow(clippy::type_complexity)]
    fn params<'a>(
        &self,
        g: &Geometry,
        p2: &'a [f32],
        p3: &'a [f32],
    ) -> Result<(&'a [f32], &'a [f32], &'a [f32], Option<&'a [f32]>)> {
        let (o, n) = (g.o, g.o * g.ck());
        let (w, gb, r) = if self.layer.residual {
            if p2.len() != n + 2 * o {
                candle_core::bail!(
                    "conv_bn: {} parameters for a {o} × {} weight and γ/β",
                    p2.len(),
                    g.ck()
                );
            }
            (&p2[..n], &p2[n..], Some(p3))
        } else {
            (p2, p3, None)
        };
        if gb.len() != 2 * o {
            candle_core::bail!("conv_bn: {o} channels but γ/β of {} values", gb.len());
        }
        let (gamma, beta) = gb.split_at(o);
        Ok((w, gamma, beta, r))
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
        let g = self.layer.geometry(l1.dims())?;
        let x = f32_slice(s1, l1)?;
        let (w, gamma, beta, r) = self.params(&g, f32_slice(s2, l2)?, f32_slice(s3, l3)?)?;
        let (y, saved) = self
            .layer
            .forward(&g, Input::Plain(x), w, gamma, beta, r, None)?;
        *self.saved.lock().expect("conv_bn lock") = Some(saved);
        Ok((
            CpuStorage::F32(y),
            Shape::from(self.layer.out_dims(&g).to_vec()),
        ))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        gb: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // With a residual, `w` is the packed [W; γ; β] and `gb` the residual (see `residual`).
        let g = self.layer.geometry(x.dims())?;
        let guard = self.saved.lock().expect("conv_bn lock");
        let saved = match guard.as_ref() {
            Some(s) => s,
            None => candle_core::bail!("conv_bn: backward through a forward that kept no state"),
        };
        let tr = match self.layer.residual {
            true => Tracked {
                x: x.track_op(),
                w: self.w_tracked,
                r: gb.track_op(),
            },
            false => Tracked {
                x: x.track_op(),
                w: w.track_op(),
                r: false,
            },
        };
        let grads = with_f32(x, |xv| {
            with_f32(w, |p2| {
                with_f32(gb, |p3| {
                    let (wv, gamma, beta, _) = self.params(&g, p2, p3)?;
                    with_f32(dy, |dyv| {
                        let (p1, out) = (Pass1::Here, DxOut::New);
                        let l = &self.layer;
                        l.backward(&g, saved, xv, wv, gamma, beta, dyv, tr, p1, out, None)
                    })
                })
            })
        })?;
        let Grads { dx, dw, dgb, dr } = grads;
        let dx = dx
            .map(|v| Tensor::from_vec(v, x.shape(), x.device()))
            .transpose()?;
        if self.layer.residual {
            // d[W; γ; β] (zeros for a frozen W), and the residual's gradient g.
            let n = g.o * g.ck();
            let dp = w.track_op().then(|| {
                let mut v = dw.unwrap_or_else(|| vec![0f32; n]);
                v.extend(dgb);
                Tensor::from_vec(v, w.shape(), w.device())
            });
            let dr = dr.map(|v| Tensor::from_vec(v, gb.shape(), gb.device()));
            return Ok((dx, dp.transpose()?, dr.transpose()?));
        }
        Ok((
            dx,
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
    fixed: (&[f32], &[f32]),
    batch: Option<f32>,
    cfg: ConvBnCfg,
) -> Result<(Tensor, Option<BnStats>)> {
    conv_bn_op(x, w, gamma, beta, None, fixed, batch, cfg)
}

/// [`conv_bn`] with a residual connection added after the normalization and before the ReLU:
/// `max(0, BN(conv(x, w)) + residual)` (without `cfg.relu`, `BN(conv(x, w)) + residual`) — the
/// second half of a ResNet basic block, in one op: the block's sum is never stored, and the
/// backward hands the masked gradient to the residual directly. `residual` has the output's
/// shape; no pooling.
#[allow(clippy::too_many_arguments)]
pub fn conv_bn_residual(
    x: &Tensor,
    w: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    residual: &Tensor,
    fixed: (&[f32], &[f32]),
    batch: Option<f32>,
    cfg: ConvBnCfg,
) -> Result<(Tensor, Option<BnStats>)> {
    if cfg.pool > 1 {
        candle_core::bail!("conv_bn_residual: no pooling after a residual connection");
    }
    conv_bn_op(x, w, gamma, beta, Some(residual), fixed, batch, cfg)
}

#[allow(clippy::too_many_arguments)]
fn conv_bn_op(
    x: &Tensor,
    w: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    residual: Option<&Tensor>,
    fixed: (&[f32], &[f32]),
    batch: Option<f32>,
    cfg: ConvBnCfg,
) -> Result<(Tensor, Option<BnStats>)> {
    if !(x.device().is_cpu() && x.dtype() == candle_core::DType::F32) {
        return composed(x, w, gamma, beta, residual, fixed, batch, cfg);
    }
    let gb = Tensor::stack(&[gamma, beta], 0)?;
    let r_tracked = residual.is_some_and(|r| r.track_op());
    let keep = x.track_op() || w.track_op() || gb.track_op() || r_tracked;
    let layer = Layer::new(w, residual.is_some(), fixed, batch, cfg, keep, x.track_op())?;
    let saved = Arc::new(Mutex::new(None));
    let op = ConvBnOp {
        layer,
        w_tracked: w.track_op(),
        saved: saved.clone(),
    };
    let x = x.contiguous()?;
    let (a2, a3) = match residual {
        Some(r) => (
            Tensor::cat(&[&w.flatten_all()?, &gb.flatten_all()?], 0)?,
            r.contiguous()?,
        ),
        None => (w.contiguous()?, gb),
    };
    let y = if keep {
        x.apply_op3(&a2, &a3, op)?
    } else {
        x.apply_op3_no_bwd(&a2, &a3, &op)?
    };
    let stats = saved
        .lock()
        .expect("conv_bn lock")
        .as_mut()
        .and_then(|s| s.stats.take());
    Ok((y, stats))
}

impl Layer {
    /// The layer for weight `w` (O, C, KH, KW); `keep`: a backward pass will follow;
    /// `x_tracked`: the input needs a gradient (a frozen input and weight with a small C·KH·KW
    /// recompute their convolution instead of storing it).
    pub(super) fn new(
        w: &Tensor,
        residual: bool,
        (fixed_mean, fixed_var): (&[f32], &[f32]),
        batch: Option<f32>,
        cfg: ConvBnCfg,
        keep: bool,
        x_tracked: bool,
    ) -> Result<Self> {
        let w_dims: [usize; 4] = w.dims().try_into().map_err(|_| {
            candle_core::Error::Msg(format!("conv_bn: weight of shape {:?}", w.dims()))
        })?;
        let ck = w_dims[1] * w_dims[2] * w_dims[3];
        let recompute = !residual && !x_tracked && !w.track_op() && ck <= RECOMPUTE_MAX_CK;
        Ok(Self {
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
            residual,
            w_dims,
            defer: false,
        })
    }
}

/// The layer from candle's own ops (other devices and dtypes).
#[allow(clippy::too_many_arguments)]
pub(super) fn composed(
    x: &Tensor,
    w: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    residual: Option<&Tensor>,
    (fixed_mean, fixed_var): (&[f32], &[f32]),
    batch: Option<f32>,
    cfg: ConvBnCfg,
) -> Result<(Tensor, Option<BnStats>)> {
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
    if let Some(r) = residual {
        y = (y + r)?;
    }
    if cfg.relu {
        y = y.relu()?;
    }
    if cfg.pool > 1 {
        y = super::max_pool2d(&y, cfg.pool)?;
    }
    Ok((y, stats))
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

    /// The gradients of `y·up` and `y_ref·up` (up: a fixed random tensor) with respect to each
    /// named variable agree to 5e-4, and exist exactly for the tracked ones.
    fn assert_grads_match(y: &Tensor, y_ref: &Tensor, seed: u64, vars: &[(&str, &Var, bool)]) {
        let up = randn(y.dims(), seed);
        let loss = |y: &Tensor| (y * &up).unwrap().sum_all().unwrap();
        let (gr, gr_ref) = (loss(y).backward().unwrap(), loss(y_ref).backward().unwrap());
        for &(name, v, tracked) in vars {
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
        let vars = [
            ("dx", &x, track.0),
            ("dw", &w, track.1),
            ("dgamma", &gamma, true),
            ("dbeta", &beta, true),
        ];
        assert_grads_match(&y, &y_ref, 5, &vars);
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

    /// `conv_bn_residual` against the composed reference plus the residual (and ReLU): the
    /// forward, the statistics, and the gradients of x, W, γ, β and the residual, as tracked.
    fn check_residual(
        dims: [usize; 4],
        o: usize,
        batch: Option<f32>,
        relu: bool,
        track: [bool; 3],
    ) {
        let [b, c, h, w_] = dims;
        let x = Var::from_tensor(&randn(&dims, 11)).unwrap();
        let w = Var::from_tensor(&(randn(&[o, c, 3, 3], 12) * 0.4).unwrap()).unwrap();
        let gamma = Var::from_tensor(&randn(&[o], 13).affine(0.3, 1.0).unwrap()).unwrap();
        let beta = Var::from_tensor(&randn(&[o], 14).affine(0.3, 0.1).unwrap()).unwrap();
        let r = Var::from_tensor(&randn(&[b, o, h, w_], 15)).unwrap();
        let fm: Vec<f32> = (0..o).map(|i| 0.1 * i as f32 - 0.2).collect();
        let fv: Vec<f32> = (0..o).map(|i| 1.5 + 0.3 * i as f32).collect();
        let pick = |v: &Var, t: bool| {
            if t {
                v.as_tensor().clone()
            } else {
                v.as_tensor().detach()
            }
        };
        let (xt, wt, rt) = (pick(&x, track[0]), pick(&w, track[1]), pick(&r, track[2]));
        let (gt, bt) = (gamma.as_tensor(), beta.as_tensor());
        let (y, stats) = conv_bn_residual(
            &xt,
            &wt,
            gt,
            bt,
            &rt,
            (&fm, &fv),
            batch,
            cfg((1, 1), relu, 1),
        )
        .unwrap();
        let (use_batch, alpha) = (batch.is_some(), batch.unwrap_or(0.0));
        let pre = reference(
            &xt,
            &wt,
            gt,
            bt,
            (1, 1),
            (&fm, &fv),
            use_batch,
            alpha,
            false,
            1,
        );
        let y_ref = (pre + &rt).unwrap();
        let y_ref = if relu { y_ref.relu().unwrap() } else { y_ref };
        assert_close(&y, &y_ref, 1e-4, "forward");
        assert_eq!(stats.is_some(), use_batch);
        if let Some(s) = stats {
            let want = BnStats::of(&xt.conv2d(&wt, 1, 1, 1, 1).unwrap()).unwrap();
            for ch in 0..o {
                assert!((s.mean[ch] - want.mean[ch]).abs() < 1e-5);
            }
        }
        let vars = [
            ("dx", &x, track[0]),
            ("dw", &w, track[1]),
            ("dgamma", &gamma, true),
            ("dbeta", &beta, true),
            ("dresidual", &r, track[2]),
        ];
        assert_grads_match(&y, &y_ref, 16, &vars);
    }

    #[test]
    fn residual_block_end_matches_composed_ops() {
        // TENT in a ResNet's identity block: input and residual tracked, weight frozen; 7×7 and
        // 12×12 planes take the direct kernel (on AVX-512), 5×5 im2col + GEMM.
        for hw in [5, 7, 12] {
            check_residual([3, 4, hw, hw], 4, Some(1.0), true, [true, false, true]);
        }
        // Every input tracked, more images than one weight-gradient chunk.
        check_residual([10, 3, 6, 6], 5, Some(1.0), true, [true, true, true]);
        // α-mixed and fixed statistics, no ReLU, frozen residual or frozen input.
        check_residual([4, 4, 7, 7], 4, Some(0.3), false, [true, false, false]);
        check_residual([4, 4, 7, 7], 4, None, true, [false, false, true]);
    }

    #[test]
    fn residual_eval_without_gradients_matches() {
        // Nothing tracked and fixed statistics: the epilogue (with the residual) right after
        // each image's convolution.
        let (x, w) = (
            randn(&[3, 4, 9, 9], 21),
            (randn(&[6, 4, 3, 3], 22) * 0.4).unwrap(),
        );
        let (g, b) = (randn(&[6], 23).affine(0.2, 1.0).unwrap(), randn(&[6], 24));
        let r = randn(&[3, 6, 9, 9], 25);
        let (fm, fv) = (vec![0.1f32; 6], vec![2.0f32; 6]);
        let (y, stats) =
            conv_bn_residual(&x, &w, &g, &b, &r, (&fm, &fv), None, cfg((1, 1), true, 1)).unwrap();
        assert!(stats.is_none());
        let pre = reference(&x, &w, &g, &b, (1, 1), (&fm, &fv), false, 0.0, false, 1);
        assert_close(
            &y,
            &(pre + &r).unwrap().relu().unwrap(),
            1e-4,
            "eval forward",
        );
    }

    #[test]
    fn residual_below_zero_blocks_every_gradient() {
        // By hand: with a residual of −1000 every output is a ReLU zero, so nothing receives a
        // gradient (γ, β, x and the residual get exact zeros).
        let x = Var::from_tensor(&randn(&[2, 4, 7, 7], 31)).unwrap();
        let w = (randn(&[4, 4, 3, 3], 32) * 0.4).unwrap();
        let gamma = Var::new(&[1f32, 0.5, 2.0, 1.0], &Device::Cpu).unwrap();
        let beta = Var::new(&[0f32, 0.1, -0.1, 0.0], &Device::Cpu).unwrap();
        let r =
            Var::from_tensor(&Tensor::full(-1000f32, (2, 4, 7, 7), &Device::Cpu).unwrap()).unwrap();
        let (fm, fv) = (vec![0f32; 4], vec![1f32; 4]);
        let apply = |pool: usize| {
            let (g, b) = (gamma.as_tensor(), beta.as_tensor());
            let c = cfg((1, 1), true, pool);
            conv_bn_residual(
                x.as_tensor(),
                &w,
                g,
                b,
                r.as_tensor(),
                (&fm, &fv),
                Some(1.0),
                c,
            )
        };
        let (y, _) = apply(1).unwrap();
        assert_eq!(
            y.abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap(),
            0.0
        );
        let g = y.sum_all().unwrap().backward().unwrap();
        for v in [&x, &gamma, &beta, &r] {
            let s = g.get(v).unwrap().abs().unwrap().sum_all().unwrap();
            assert_eq!(s.to_scalar::<f32>().unwrap(), 0.0);
        }
        // A pool after a residual is refused, with a message.
        let err = apply(2).unwrap_err();
        assert!(
            err.to_string().contains("no pooling after a residual"),
            "{err}"
        );
    }

    #[test]
    fn every_simd_level_gives_the_same_bits() {
        use crate::ops::FORCE_SIMD_LEVEL;
        use std::sync::atomic::Ordering;
        // A pooled layer with a tracked input and weight, and a residual one: forward values
        // and every gradient, bit for bit, at each vector level this CPU has.
        let run = || {
            let x = Var::from_tensor(&randn(&[3, 4, 10, 10], 41)).unwrap();
            let w = Var::from_tensor(&(randn(&[5, 4, 3, 3], 42) * 0.4).unwrap()).unwrap();
            let w2 = Var::from_tensor(&(randn(&[5, 5, 3, 3], 43) * 0.4).unwrap()).unwrap();
            let g = Var::from_tensor(&randn(&[5], 44).affine(0.3, 1.0).unwrap()).unwrap();
            let b = Var::from_tensor(&randn(&[5], 45)).unwrap();
            let st = (vec![0.1f32; 5], vec![1.5f32; 5]);
            let (xt, gt, bt) = (x.as_tensor(), g.as_tensor(), b.as_tensor());
            let layer = |pool: usize| {
                let c = cfg((1, 1), true, pool);
                conv_bn(xt, w.as_tensor(), gt, bt, (&st.0, &st.1), Some(1.0), c)
                    .unwrap()
                    .0
            };
            let (h, p) = (layer(1), layer(2));
            let (y, _) = conv_bn_residual(
                &h,
                w2.as_tensor(),
                gt,
                bt,
                &h,
                (&st.0, &st.1),
                Some(1.0),
                cfg((1, 1), true, 1),
            )
            .unwrap();
            let loss = ((&y * randn(y.dims(), 46)).unwrap().sum_all().unwrap()
                + (&p * randn(p.dims(), 47)).unwrap().sum_all().unwrap())
            .unwrap();
            let grads = loss.backward().unwrap();
            let mut bits = vec![];
            for t in [&y, &p] {
                bits.extend(t.flatten_all().unwrap().to_vec1::<f32>().unwrap());
            }
            for v in [&x, &w, &w2, &g, &b] {
                bits.extend(
                    grads
                        .get(v)
                        .unwrap()
                        .flatten_all()
                        .unwrap()
                        .to_vec1::<f32>()
                        .unwrap(),
                );
            }
            bits.iter().map(|v| v.to_bits()).collect::<Vec<u32>>()
        };
        let levels: Vec<u8> = (1..=3)
            .filter(|l| {
                FORCE_SIMD_LEVEL.store(*l, Ordering::Relaxed);
                crate::ops::simd_level() as u8 + 1 == *l
            })
            .collect();
        let results: Vec<Vec<u32>> = levels
            .iter()
            .map(|l| {
                FORCE_SIMD_LEVEL.store(*l, Ordering::Relaxed);
                run()
            })
            .collect();
        FORCE_SIMD_LEVEL.store(0, Ordering::Relaxed);
        assert!(levels.contains(&3), "the baseline always runs");
        for (l, r) in levels.iter().zip(&results).skip(1) {
            assert!(
                r == &results[0],
                "level {l} differs from level {}",
                levels[0]
            );
        }
    }
}
