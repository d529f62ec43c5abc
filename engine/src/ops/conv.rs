//! 2-D convolution (NCHW, OIHW, no bias, square stride/padding, dilation 1) as im2col + GEMM,
//! forward and backward.
//!
//! Per image b: `cols_b (C·KH·KW × Ho·Wo) = im2col(x_b)`, `y_b = W (O × CK) · cols_b`.
//! Backward: `dW = Σ_b dY_b · cols_bᵀ`, `dcols_b = Wᵀ · dY_b`, `dx_b = col2im(dcols_b)`.
//! Gradients are computed only for arguments that the graph tracks, so a frozen weight (a
//! detached tensor) costs nothing in the backward pass.

use super::{direct, f32_slice, winograd, with_f32};
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

#[derive(Clone, Copy, Debug)]
pub(super) struct Geometry {
    pub b: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub o: usize,
    pub kh: usize,
    pub kw: usize,
    pub ho: usize,
    pub wo: usize,
    pub stride: usize,
    pub pad: usize,
}

impl Geometry {
    pub(super) fn new(xs: &[usize], ws: &[usize], stride: usize, pad: usize) -> Result<Self> {
        if xs.len() != 4 || ws.len() != 4 || xs[1] != ws[1] {
            candle_core::bail!("conv2d: input {xs:?} and weight {ws:?} do not match (NCHW, OIHW)");
        }
        let (b, c, h, w) = (xs[0], xs[1], xs[2], xs[3]);
        let (o, kh, kw) = (ws[0], ws[2], ws[3]);
        if h + 2 * pad < kh || w + 2 * pad < kw || stride == 0 {
            candle_core::bail!("conv2d: kernel {kh}x{kw} larger than padded input {h}x{w}");
        }
        let ho = (h + 2 * pad - kh) / stride + 1;
        let wo = (w + 2 * pad - kw) / stride + 1;
        Ok(Self {
            b,
            c,
            h,
            w,
            o,
            kh,
            kw,
            ho,
            wo,
            stride,
            pad,
        })
    }
    pub(super) fn ck(&self) -> usize {
        self.c * self.kh * self.kw
    }
    pub(super) fn hw_out(&self) -> usize {
        self.ho * self.wo
    }
    pub(super) fn in_len(&self) -> usize {
        self.c * self.h * self.w
    }
    pub(super) fn out_len(&self) -> usize {
        self.o * self.hw_out()
    }
    /// True when im2col is the identity (1×1 kernel, stride 1, no padding).
    pub(super) fn pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == 1 && self.pad == 0
    }
}

/// The range of output columns `ow` whose input column `ow·stride + kj − pad` lies inside the
/// image, as (first, end).
fn valid_cols(g: &Geometry, kj: usize) -> (usize, usize) {
    let first = g.pad.saturating_sub(kj).div_ceil(g.stride);
    // iw < w  ⇔  ow·s < w + pad − kj
    let limit = (g.w + g.pad).saturating_sub(kj);
    let end = limit.div_ceil(g.stride).min(g.wo);
    (first.min(end), end)
}

/// Fill `cols` (CK × HoWo, row-major) from one image `x` (C × H × W).
pub(super) fn im2col(g: &Geometry, x: &[f32], cols: &mut [f32]) {
    let hw = g.hw_out();
    for c in 0..g.c {
        for ki in 0..g.kh {
            for kj in 0..g.kw {
                let row = (c * g.kh + ki) * g.kw + kj;
                let dst = &mut cols[row * hw..(row + 1) * hw];
                let (first, end) = valid_cols(g, kj);
                for oh in 0..g.ho {
                    let ih = (oh * g.stride + ki) as isize - g.pad as isize;
                    let d = &mut dst[oh * g.wo..(oh + 1) * g.wo];
                    if ih < 0 || ih >= g.h as isize || first >= end {
                        d.fill(0.0);
                        continue;
                    }
                    let src = &x[(c * g.h + ih as usize) * g.w..(c * g.h + ih as usize + 1) * g.w];
                    d[..first].fill(0.0);
                    d[end..].fill(0.0);
                    let start = first * g.stride + kj - g.pad;
                    if g.stride == 1 {
                        d[first..end].copy_from_slice(&src[start..start + (end - first)]);
                    } else {
                        for (k, v) in d[first..end].iter_mut().enumerate() {
                            *v = src[start + k * g.stride];
                        }
                    }
                }
            }
        }
    }
}

/// Accumulate `cols` (CK × HoWo) back into one image gradient `dx` (C × H × W), which must be zeroed.
pub(super) fn col2im(g: &Geometry, cols: &[f32], dx: &mut [f32]) {
    let hw = g.hw_out();
    for c in 0..g.c {
        for ki in 0..g.kh {
            for kj in 0..g.kw {
                let row = (c * g.kh + ki) * g.kw + kj;
                let src = &cols[row * hw..(row + 1) * hw];
                let (first, end) = valid_cols(g, kj);
                if first >= end {
                    continue;
                }
                for oh in 0..g.ho {
                    let ih = (oh * g.stride + ki) as isize - g.pad as isize;
                    if ih < 0 || ih >= g.h as isize {
                        continue;
                    }
                    let base = (c * g.h + ih as usize) * g.w + first * g.stride + kj - g.pad;
                    let s = &src[oh * g.wo + first..oh * g.wo + end];
                    if g.stride == 1 {
                        for (d, v) in dx[base..base + s.len()].iter_mut().zip(s) {
                            *d += v;
                        }
                    } else {
                        for (k, v) in s.iter().enumerate() {
                            dx[base + k * g.stride] += v;
                        }
                    }
                }
            }
        }
    }
}

/// The input gradient (C × H × W) of a 1 × 1 convolution with stride s and no padding from its
/// values at the sampled positions, `cols` (C × Ho × Wo): `dx[c][s·i][s·j] = cols[c][i][j]`,
/// zero elsewhere. Every element of `dx` is written.
fn scatter_strided_1x1(g: &Geometry, cols: &[f32], dx: &mut [f32]) {
    let (h, w, s) = (g.h, g.w, g.stride);
    for c in 0..g.c {
        for ih in 0..h {
            let row = &mut dx[(c * h + ih) * w..(c * h + ih + 1) * w];
            row.fill(0.0);
            if ih % s == 0 && ih / s < g.ho {
                let src = &cols[(c * g.ho + ih / s) * g.wo..(c * g.ho + ih / s + 1) * g.wo];
                for (d, v) in row.iter_mut().step_by(s).zip(src) {
                    *d = *v;
                }
            }
        }
    }
}

/// `dst (m×n) = [dst +] lhs (m×k) · rhs (k×n)`, every matrix given by (row stride, col stride).
#[allow(clippy::too_many_arguments)]
pub(super) fn matmul(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    accumulate: bool,
    lhs: &[f32],
    lhs_rs: usize,
    lhs_cs: usize,
    rhs: &[f32],
    rhs_rs: usize,
    rhs_cs: usize,
    par: Parallelism,
) {
    debug_assert!(dst.len() >= m * n);
    debug_assert!(m == 0 || k == 0 || lhs.len() > (m - 1) * lhs_rs + (k - 1) * lhs_cs);
    debug_assert!(k == 0 || n == 0 || rhs.len() > (k - 1) * rhs_rs + (n - 1) * rhs_cs);
    // SAFETY: the slices cover every element addressed by the given strides (checked above in
    // debug builds, guaranteed by the callers' geometry), and dst does not alias lhs or rhs.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            par,
        )
    }
}

/// Parallelize across images when there are enough of them, inside the GEMM otherwise.
pub(super) fn inner_parallelism(batch: usize) -> Parallelism {
    if batch >= rayon::current_num_threads() {
        Parallelism::None
    } else {
        Parallelism::Rayon(0)
    }
}

/// How the per-image forward pass, or input gradient, of one convolution is computed: the
/// Winograd F(2×2, 3×3) of [`super::winograd`] or the direct kernel of [`super::direct`] where
/// they apply, im2col + GEMM (+ col2im) elsewhere.
pub(super) enum Plan<'a> {
    Im2col {
        g: &'a Geometry,
        w: &'a [f32],
        input_grad: bool,
    },
    Direct {
        packed: direct::Packed,
        parallel: bool,
    },
    Winograd {
        packed: winograd::Packed,
        parallel: bool,
    },
}

/// Per-worker buffers of a [`Plan`].
pub(super) enum Scratch {
    Cols(Vec<f32>),
    Direct(direct::Scratch),
    Winograd(Box<winograd::Scratch>),
}

impl<'a> Plan<'a> {
    fn new(g: &'a Geometry, w: &'a [f32], input_grad: bool) -> Self {
        let parallel = g.b < rayon::current_num_threads();
        if winograd::usable(g) {
            let packed = winograd::Packed::new(g, w, input_grad);
            return Plan::Winograd { packed, parallel };
        }
        if direct::usable(g) {
            let packed = direct::Packed::new(g, w, input_grad);
            return Plan::Direct { packed, parallel };
        }
        Plan::Im2col { g, w, input_grad }
    }

    /// One image through im2col + GEMM (+ col2im), whichever kernel [`Plan::new`] would pick:
    /// `(y, dx)` for `x` and `dy`, the reference the direct and Winograd kernels are tested against.
    #[cfg(test)]
    pub(super) fn im2col_reference(
        g: &Geometry,
        w: &[f32],
        x: &[f32],
        dy: &[f32],
    ) -> (Vec<f32>, Vec<f32>) {
        let run = |input_grad, src: &[f32], len| {
            let plan = Plan::Im2col { g, w, input_grad };
            let mut dst = vec![0f32; len];
            plan.run(src, &mut plan.scratch(), &mut dst);
            dst
        };
        (run(false, x, g.out_len()), run(true, dy, g.in_len()))
    }

    /// `y_b (O × HoWo) = conv(x_b)`.
    pub(super) fn forward(g: &'a Geometry, w: &'a [f32]) -> Self {
        Self::new(g, w, false)
    }

    /// `dx_b (C × H × W) = conv(x_b)ᵀ · dy_b`.
    pub(super) fn input_grad(g: &'a Geometry, w: &'a [f32]) -> Self {
        Self::new(g, w, true)
    }

    pub(super) fn scratch(&self) -> Scratch {
        match self {
            Plan::Im2col { g, .. } => Scratch::Cols(vec![
                0f32;
                if g.pointwise() {
                    0
                } else {
                    g.ck() * g.hw_out()
                }
            ]),
            Plan::Direct { packed, .. } => Scratch::Direct(packed.scratch()),
            Plan::Winograd { packed, .. } => Scratch::Winograd(Box::new(packed.scratch())),
        }
    }

    /// One image: `src` is x_b (forward) or dy_b (input gradient); `dst` is y_b or dx_b, every
    /// element of which is written (its previous contents do not matter).
    pub(super) fn run(&self, src: &[f32], scratch: &mut Scratch, dst: &mut [f32]) {
        match (self, scratch) {
            (Plan::Direct { packed, parallel }, Scratch::Direct(s)) => {
                packed.run(src, s, dst, *parallel)
            }
            (Plan::Winograd { packed, parallel }, Scratch::Winograd(s)) => {
                packed.run(src, s, dst, *parallel)
            }
            (
                Plan::Im2col {
                    g,
                    w,
                    input_grad: false,
                },
                Scratch::Cols(cols),
            ) => {
                let (ck, hw) = (g.ck(), g.hw_out());
                let c: &[f32] = if g.pointwise() {
                    src
                } else {
                    im2col(g, src, cols);
                    cols
                };
                matmul(
                    g.o,
                    hw,
                    ck,
                    dst,
                    false,
                    w,
                    ck,
                    1,
                    c,
                    hw,
                    1,
                    inner_parallelism(g.b),
                );
            }
            (
                Plan::Im2col {
                    g,
                    w,
                    input_grad: true,
                },
                Scratch::Cols(cols),
            ) => {
                let (ck, hw) = (g.ck(), g.hw_out());
                let par = inner_parallelism(g.b);
                // Wᵀ (CK × O): element (ck, o) lives at w[o·CK + ck].
                if g.pointwise() {
                    matmul(ck, hw, g.o, dst, false, w, 1, ck, src, hw, 1, par);
                } else if g.kh == 1 && g.kw == 1 && g.pad == 0 {
                    // A strided 1 × 1 convolution (a projection shortcut): its input gradient
                    // is zero but at every stride-th row and column, written row by row.
                    matmul(ck, hw, g.o, cols, false, w, 1, ck, src, hw, 1, par);
                    scatter_strided_1x1(g, cols, dst);
                } else {
                    matmul(ck, hw, g.o, cols, false, w, 1, ck, src, hw, 1, par);
                    // col2im adds into dst: zero this image's planes first (callers allocate
                    // outputs uninitialized).
                    dst[..g.in_len()].fill(0.0);
                    col2im(g, cols, dst);
                }
            }
            _ => unreachable!("a plan's scratch comes from the same plan"),
        }
    }
}

/// The per-image kernels of a 3×3, stride-1, padding-1 convolution (see [`Plan`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvKernel {
    /// im2col + GEMM (col2im for the input gradient): every CPU.
    Im2col,
    /// The register-blocked direct convolution (AVX-512F).
    Direct,
    /// Winograd F(2×2, 3×3) (AVX-512F).
    Winograd,
}

impl ConvKernel {
    pub fn name(self) -> &'static str {
        match self {
            ConvKernel::Im2col => "im2col+GEMM",
            ConvKernel::Direct => "direct",
            ConvKernel::Winograd => "Winograd",
        }
    }
}

/// The kernel the convolutions pick on this CPU for a batch of `batch` images of `c` → `o`
/// channels on an `hw` × `hw` plane (3×3, stride 1, padding 1).
pub fn conv3x3_kernel(c: usize, o: usize, hw: usize, batch: usize) -> ConvKernel {
    let w = vec![0f32; o * c * 9];
    let g = Geometry::new(&[batch, c, hw, hw], &[o, c, 3, 3], 1, 1).expect("a 3×3 geometry");
    match Plan::forward(&g, &w) {
        Plan::Im2col { .. } => ConvKernel::Im2col,
        Plan::Direct { .. } => ConvKernel::Direct,
        Plan::Winograd { .. } => ConvKernel::Winograd,
    }
}

/// Microseconds per image of the forward pass of each kernel that runs here, for `c` → `o`
/// channels on an `hw` × `hw` plane (3×3, stride 1, padding 1), on the calling thread: the
/// median over `repeats` timed runs of `images` images each, after one warm-up run, whatever
/// kernel [`conv3x3_kernel`] would pick. For `attune-bench kernels`, which shows what the
/// kernel choice rests on.
pub fn conv3x3_kernel_times(
    c: usize,
    o: usize,
    hw: usize,
    images: usize,
    repeats: usize,
) -> Vec<(ConvKernel, f64)> {
    let g = Geometry::new(&[1, c, hw, hw], &[o, c, 3, 3], 1, 1).expect("a 3×3 geometry");
    let mut rng = crate::rng::rng(0, "conv3x3_kernel_times");
    let x = crate::rng::randn_vec(c * hw * hw, &mut rng);
    let w = crate::rng::randn_vec(o * c * 9, &mut rng);
    let mut y = vec![0f32; o * hw * hw];
    let mut plans = vec![(
        ConvKernel::Im2col,
        Plan::Im2col {
            g: &g,
            w: &w,
            input_grad: false,
        },
    )];
    if super::has_avx512f() {
        let direct = direct::Packed::new(&g, &w, false);
        let winograd = winograd::Packed::new(&g, &w, false);
        plans.push((
            ConvKernel::Direct,
            Plan::Direct {
                packed: direct,
                parallel: false,
            },
        ));
        plans.push((
            ConvKernel::Winograd,
            Plan::Winograd {
                packed: winograd,
                parallel: false,
            },
        ));
    }
    plans
        .into_iter()
        .map(|(k, plan)| {
            let mut scratch = plan.scratch();
            let mut run = || {
                let t = std::time::Instant::now();
                for _ in 0..images {
                    plan.run(&x, &mut scratch, &mut y);
                }
                t.elapsed().as_secs_f64() * 1e6 / images.max(1) as f64
            };
            run();
            let mut v: Vec<f64> = (0..repeats.max(1)).map(|_| run()).collect();
            v.sort_by(f64::total_cmp);
            (k, v[v.len() / 2])
        })
        .collect()
}

fn forward(g: &Geometry, x: &[f32], w: &[f32]) -> Vec<f32> {
    let mut y = vec![0f32; g.b * g.out_len()];
    let plan = Plan::forward(g, w);
    y.par_chunks_mut(g.out_len())
        .zip(x.par_chunks(g.in_len()))
        .for_each_init(|| plan.scratch(), |s, (yb, xb)| plan.run(xb, s, yb));
    y
}

fn backward_input(g: &Geometry, w: &[f32], dy: &[f32]) -> Vec<f32> {
    let mut dx = vec![0f32; g.b * g.in_len()];
    let plan = Plan::input_grad(g, w);
    dx.par_chunks_mut(g.in_len())
        .zip(dy.par_chunks(g.out_len()))
        .for_each_init(|| plan.scratch(), |s, (dxb, dyb)| plan.run(dyb, s, dxb));
    dx
}

/// Images per partial weight gradient. Fixed (not left to rayon's work stealing) so that the
/// order of the floating-point sums, and hence the result, is the same on every run.
pub(super) const WEIGHT_GRAD_CHUNK: usize = 8;

fn backward_weight(g: &Geometry, x: &[f32], dy: &[f32]) -> Vec<f32> {
    let (ck, hw) = (g.ck(), g.hw_out());
    let wlen = g.o * ck;
    let par = inner_parallelism(g.b);
    let partials: Vec<Vec<f32>> = x
        .par_chunks(g.in_len() * WEIGHT_GRAD_CHUNK)
        .zip(dy.par_chunks(g.out_len() * WEIGHT_GRAD_CHUNK))
        .map(|(xc, dyc)| {
            let mut dw = vec![0f32; wlen];
            let mut cols = vec![0f32; if g.pointwise() { 0 } else { ck * hw }];
            for (xb, dyb) in xc.chunks(g.in_len()).zip(dyc.chunks(g.out_len())) {
                let c: &[f32] = if g.pointwise() {
                    xb
                } else {
                    im2col(g, xb, &mut cols);
                    &cols
                };
                // dW (O × CK) += dY_b (O × HW) · cols_bᵀ (HW × CK).
                matmul(g.o, ck, hw, &mut dw, true, dyb, hw, 1, c, 1, hw, par);
            }
            dw
        })
        .collect();
    let mut dw = vec![0f32; wlen];
    for p in &partials {
        dw.iter_mut().zip(p).for_each(|(a, b)| *a += b);
    }
    dw
}

struct Conv2dOp {
    stride: usize,
    pad: usize,
}

impl CustomOp2 for Conv2dOp {
    fn name(&self) -> &'static str {
        "attune-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = Geometry::new(l1.dims(), l2.dims(), self.stride, self.pad)?;
        let y = forward(&g, f32_slice(s1, l1)?, f32_slice(s2, l2)?);
        Ok((CpuStorage::F32(y), Shape::from((g.b, g.o, g.ho, g.wo))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = Geometry::new(x.dims(), w.dims(), self.stride, self.pad)?;
        let dx = if x.track_op() {
            let v = with_f32(w, |w| with_f32(dy, |dy| Ok(backward_input(&g, w, dy))))?;
            Some(Tensor::from_vec(v, x.shape(), x.device())?)
        } else {
            None
        };
        let dw = if w.track_op() {
            let v = with_f32(x, |x| with_f32(dy, |dy| Ok(backward_weight(&g, x, dy))))?;
            Some(Tensor::from_vec(v, w.shape(), w.device())?)
        } else {
            None
        };
        Ok((dx, dw))
    }
}

/// Convolution of `x` (N, C, H, W) with `w` (O, C, KH, KW), square `stride` and zero `padding`.
///
/// On CPU with f32 this is the im2col + GEMM custom op; elsewhere candle's own conv2d.
pub fn conv2d(x: &Tensor, w: &Tensor, stride: usize, padding: usize) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == candle_core::DType::F32 {
        x.contiguous()?.apply_op2(
            &w.contiguous()?,
            Conv2dOp {
                stride,
                pad: padding,
            },
        )
    } else {
        x.conv2d(w, padding, stride, 1, 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::test_util::{assert_close, randn};
    use candle_core::{Device, Var};

    fn check(b: usize, c: usize, hw: usize, o: usize, k: usize, stride: usize, pad: usize) {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&randn(&[b, c, hw, hw], 1)).unwrap();
        let w = Var::from_tensor(&randn(&[o, c, k, k], 2)).unwrap();
        let up = randn(
            &[
                b,
                o,
                (hw + 2 * pad - k) / stride + 1,
                (hw + 2 * pad - k) / stride + 1,
            ],
            3,
        );
        // Ours.
        let y = conv2d(x.as_tensor(), w.as_tensor(), stride, pad).unwrap();
        let grads = (&y * &up).unwrap().sum_all().unwrap().backward().unwrap();
        // candle's reference.
        let y_ref = x
            .as_tensor()
            .conv2d(w.as_tensor(), pad, stride, 1, 1)
            .unwrap();
        let grads_ref = (&y_ref * &up)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        assert_close(&y, &y_ref, 1e-4, "forward");
        assert_close(
            grads.get(&x).unwrap(),
            grads_ref.get(&x).unwrap(),
            1e-4,
            "dx",
        );
        assert_close(
            grads.get(&w).unwrap(),
            grads_ref.get(&w).unwrap(),
            1e-4,
            "dw",
        );
        let _ = dev;
    }

    #[test]
    fn matches_candle_3x3_same_padding() {
        check(3, 2, 7, 4, 3, 1, 1);
    }

    #[test]
    fn matches_candle_strided_and_pointwise() {
        check(2, 3, 8, 5, 3, 2, 1);
        check(4, 3, 6, 2, 1, 1, 0);
        check(2, 4, 8, 3, 1, 2, 0);
        check(2, 4, 7, 3, 1, 2, 0);
        check(3, 3, 8, 2, 1, 3, 0);
    }

    #[test]
    fn single_image_uses_parallel_gemm_and_still_matches() {
        check(1, 8, 9, 16, 3, 1, 1);
    }

    #[test]
    fn matches_candle_with_large_padding_and_stride() {
        // Padding larger than the kernel reach and strides > 1 exercise the edge ranges.
        check(2, 2, 5, 3, 3, 2, 2);
        check(2, 1, 7, 2, 5, 3, 1);
        check(3, 2, 4, 2, 3, 1, 0);
    }

    #[test]
    fn weight_gradient_is_bitwise_deterministic() {
        let x = randn(&[37, 3, 9, 9], 1);
        let w = Var::from_tensor(&randn(&[4, 3, 3, 3], 2)).unwrap();
        let run = || {
            let y = conv2d(&x, w.as_tensor(), 1, 1).unwrap();
            let g = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
            g.get(&w)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        let first = run();
        for _ in 0..5 {
            assert_eq!(run(), first);
        }
    }

    #[test]
    fn frozen_weight_gets_no_gradient() {
        let x = Var::from_tensor(&randn(&[2, 2, 5, 5], 1)).unwrap();
        let w = randn(&[3, 2, 3, 3], 2); // plain tensor: not tracked
        let y = conv2d(x.as_tensor(), &w, 1, 1).unwrap();
        let grads = y.sum_all().unwrap().backward().unwrap();
        assert!(grads.get(&w).is_none());
        assert!(grads.get(&x).is_some());
    }

    #[test]
    fn hand_computed_value() {
        // 1×1×3×3 input of ones, 3×3 kernel of ones, padding 1: the centre sees 9 ones, corners 4.
        let x = Tensor::ones((1, 1, 3, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
        let w = Tensor::ones((1, 1, 3, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
        let y = conv2d(&x, &w, 1, 1)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(y, vec![4., 6., 4., 6., 9., 6., 4., 6., 4.]);
    }
}
