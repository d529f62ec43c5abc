//! Direct 3×3 convolution, padding 1, stride 1 or 2 (forward and input gradient), on
//! AVX-512: no im2col matrix, no packing.
//!
//! The input plane of each channel is copied once into a zero-bordered plane of width
//! `wp = W + 2`. On that padded grid, output position `q = oh·wp + ow` of tap `(ki, kj)` reads
//! input position `q + ki·wp + kj`, so the whole convolution is, per input channel and tap, one
//! shifted multiply-add over a flat contiguous array: `out[o][q] += w[o][c][t] · xpad[c][q + off_t]`.
//! The two right-hand columns of every output row (`ow ≥ W`) are junk and dropped when the result
//! is copied out. The kernel keeps an 8-channel × 48-position block of outputs in 24 registers,
//! and per (channel, tap) loads 3 input vectors and 8 broadcast weights for 24 FMAs (6 × 64 for
//! the 7 × 7 planes, whose 63 padded-grid positions then fit one block).
//!
//! The input gradient of such a convolution is the same convolution of the output gradient with
//! the weights transposed (in ↔ out) and flipped ([`taps`]), so [`Packed::new`] reuses the kernel and
//! the backward pass needs no col2im either. With stride 2 the padded plane is stored as four
//! phase planes (by row and column parity, see [`Packed`]), on which each tap is again one
//! shifted read (ResNet's strided 3×3 convolutions, forward: 16 → 32 from 28 × 28 22 µs per
//! image against im2col + GEMM's 30 or more, one thread). Their input gradient is computed by
//! the parity of the input position: four convolutions of the output gradient with 1, 2, 2 and 4
//! taps, interleaved into the rows (see [`Packed`]).
//!
//! Used for outputs at least [`MIN_WIDTH`] (7) wide with at least [`MIN_CHANNELS`] (4) input
//! and output channels, on CPUs with AVX-512F (checked at run time);
//! everything else takes the im2col + GEMM path of [`super::conv`], against which this is tested.

use super::conv::Geometry;
use super::has_avx512f;

/// Kernel blocks, (output channels, 16-float vectors of consecutive positions): 24 accumulator
/// registers either way. 8 × 3 loads fewer weights per FMA; 6 × 4 covers a 7 × 7 plane (63
/// positions on the padded grid) with one 64-position block instead of two of 48.
const BLOCKS: [(usize, usize); 2] = [(8, 3), (6, 4)];
/// Narrower planes waste too much of each block on the junk columns and the padding of the last
/// block; they stay on im2col + GEMM. At 7 × 7, 49 of the 64 computed positions are used and the
/// kernel is faster than im2col + GEMM (+ col2im) there (ResNet-20's last stage, source forward
/// at batch 200: 3900 → 4190 images/s on 2 threads, measured with two 48-position blocks).
pub(super) const MIN_WIDTH: usize = 7;

/// With fewer input channels the kernel's loop is too short (9 taps per block of stores) and
/// im2col + GEMM is faster (the first layer: 1 → 32 channels at 28 × 28, ≈ 80 against ≈ 180
/// GFLOP/s on one thread); with fewer output channels most of each 8-channel block is wasted (the input
/// gradient of such a layer).
pub(super) const MIN_CHANNELS: usize = 4;

/// True when `g` is a 3×3 / padding 1 convolution of stride 1 or 2 that this kernel handles
/// here (forward and input gradient, see [`Packed`]).
pub(super) fn usable(g: &Geometry) -> bool {
    g.kh == 3
        && g.kw == 3
        && (g.stride == 1 || g.stride == 2)
        && g.pad == 1
        && g.wo >= MIN_WIDTH
        && g.h >= 1
        && g.c >= MIN_CHANNELS
        && g.o >= MIN_CHANNELS
        && has_avx512f()
}

/// The weights of `g`'s forward convolution (`input_grad` false) or of its input gradient, as
/// (input channels, output channels, (output channel, input channel, tap) → value). The input
/// gradient is a convolution of O channels into C with the weights transposed (in ↔ out) and
/// flipped (tap t ↔ 8 − t).
pub(super) fn taps<'a>(
    g: &'a Geometry,
    w: &'a [f32],
    input_grad: bool,
) -> (
    usize,
    usize,
    impl Fn(usize, usize, usize) -> f32 + Sync + 'a,
) {
    let (cin, cout) = if input_grad { (g.o, g.c) } else { (g.c, g.o) };
    let at = move |o: usize, c: usize, t: usize| {
        if input_grad {
            w[(c * g.c + o) * 9 + (8 - t)]
        } else {
            w[(o * g.c + c) * 9 + t]
        }
    };
    (cin, cout, at)
}

/// The taps of a strided input gradient along one axis, by the parity of the input row (or
/// column): `(k, d)`, kernel row `k` reading the output gradient `d` rows below. With stride 2
/// and padding 1, input row `i` receives from the output rows `oh` with `i = 2·oh + k − 1`: an
/// even `i = 2m` from `oh = m` (k = 1), an odd `i = 2m + 1` from `oh = m + 1` (k = 0) and
/// `oh = m` (k = 2).
const PARITY_TAPS: [&[(usize, usize)]; 2] = [&[(1, 0)], &[(0, 1), (2, 0)]];

/// The four phases (row parity, column parity) of a strided input gradient, in the order their
/// weights are packed; the two of one row parity are computed together and interleaved.
const PHASES: [(usize, usize); 4] = [(0, 0), (0, 1), (1, 0), (1, 1)];

/// A phase's taps, by [`PARITY_TAPS`] along rows and columns: (kernel tap `3·ki + kj`, read
/// offset `dr·wq + dc` on a grid `wq` wide).
fn phase_taps((pr, pc): (usize, usize), wq: usize) -> Vec<(usize, usize)> {
    let mut taps = vec![];
    for &(ki, dr) in PARITY_TAPS[pr] {
        for &(kj, dc) in PARITY_TAPS[pc] {
            taps.push((3 * ki + kj, dr * wq + dc));
        }
    }
    taps
}

/// Weights in kernel order: per block of `ob` output channels, per input channel, per tap, the
/// block's `ob` values (zero for the channels past the last one).
///
/// With stride 2 the padded input plane is stored as four phase planes, by the parity of its
/// rows and columns: phase (pr, pc) holds padded value `(2·i + pr, 2·j + pc)` at `i·wq + j`, on
/// a grid `wq = Wo + 1` wide. Output `(i, j)` of tap `(ki, kj)` reads padded value
/// `(2·i + ki, 2·j + kj)`, which is phase `(ki mod 2, kj mod 2)` at `(i + ⌊ki/2⌋)·wq + j +
/// ⌊kj/2⌋`: again one shifted read per tap, so the same kernel runs it (one junk column).
///
/// The input gradient of a stride-2 convolution is computed by the phase of its positions
/// instead: the output gradient (Ho × Wo) is stored on the same `wq`-wide grid with a zero row
/// and column after it, and input position `(2m + pr, 2n + pc)` is, by [`PARITY_TAPS`], a
/// convolution at grid position `(m, n)` with 1, 2, 2 or 4 taps for phases (0, 0), (0, 1), (1, 0),
/// (1, 1) — 9 in all, as many multiplies as the forward pass, and no col2im. Each phase's
/// weights are packed as above, one phase after the other.
pub(super) struct Packed {
    w: Vec<f32>,
    cin: usize,
    cout: usize,
    /// Input and output height and width (of the forward convolution).
    h: usize,
    wd: usize,
    ho: usize,
    wo: usize,
    stride: usize,
    /// The input gradient of a stride-2 convolution (by phases).
    phased: bool,
    /// Where each tap reads, from the output position, within a channel: per phase when
    /// `phased` (in [`PHASES`] order), else one list of 9.
    offs: Vec<Vec<usize>>,
    /// Output channels and 16-float position vectors per kernel block (one of [`BLOCKS`]).
    ob: usize,
    pb: usize,
}

impl Packed {
    fn blocks(&self) -> usize {
        self.cout.div_ceil(self.ob)
    }

    /// The forward convolution of `g` with weights `w` (O × C × 3 × 3), or its input gradient
    /// (see [`taps`] for stride 1, [`Packed`] for stride 2).
    pub(super) fn new(g: &Geometry, w: &[f32], input_grad: bool) -> Self {
        let phased = input_grad && g.stride == 2;
        // The flipped taps of a stride-1 input gradient; the phases take the forward's own.
        let (cin, cout, at) = taps(g, w, input_grad && !phased);
        let (cin, cout) = if phased { (cout, cin) } else { (cin, cout) };
        let mut p = Self {
            w: vec![],
            cin,
            cout,
            h: g.h,
            wd: g.w,
            ho: g.ho,
            wo: g.wo,
            stride: g.stride,
            phased,
            offs: vec![],
            ob: 0,
            pb: 0,
        };
        // The block shape that computes the fewest positions (ties: the first).
        let q = p.q();
        (p.ob, p.pb) = BLOCKS
            .into_iter()
            .min_by_key(|&(_, pb)| q.next_multiple_of(16 * pb))
            .expect("BLOCKS is not empty");
        let (ob, blocks) = (p.ob, p.blocks());
        // Per phase (one, with all 9 taps, when not phased): per block, input channel and tap,
        // the block's values.
        let phases: Vec<Vec<usize>> = if phased {
            let wq = p.wp();
            PHASES
                .iter()
                .map(|&ph| phase_taps(ph, wq).into_iter().map(|(t, _)| t).collect())
                .collect()
        } else {
            vec![(0..9).collect()]
        };
        let mut packed = Vec::with_capacity(blocks * cin * 9 * ob);
        for taps in &phases {
            for b in 0..blocks {
                for c in 0..cin {
                    for &t in taps {
                        for j in 0..ob {
                            let o = b * ob + j;
                            packed.push(match (o < cout, phased) {
                                (false, _) => 0.0,
                                // Output channel o of the gradient is input channel o of the
                                // forward convolution, c its output channel.
                                (true, true) => at(c, o, t),
                                (true, false) => at(o, c, t),
                            });
                        }
                    }
                }
            }
        }
        p.w = packed;
        p.offs = p.tap_offsets();
        p
    }

    /// Width of a row of the output grid (the padded input's, the phase planes' or the
    /// output gradient's).
    fn wp(&self) -> usize {
        match self.stride {
            1 => self.wd + 2,
            _ => self.wo + 1,
        }
    }
    /// Output positions per channel on the grid.
    fn q(&self) -> usize {
        self.ho * self.wp()
    }
    fn qb(&self) -> usize {
        16 * self.pb
    }
    fn qpad(&self) -> usize {
        self.q().next_multiple_of(self.qb())
    }
    /// One phase plane (stride 2), or the output gradient's grid with its zero row.
    fn phase_len(&self) -> usize {
        (self.ho + 1) * self.wp()
    }
    /// One channel of what the kernel reads: the padded input (its four phase planes with
    /// stride 2), or the output gradient's grid.
    fn plane_in(&self) -> usize {
        match (self.stride, self.phased) {
            (1, _) => (self.h + 2) * self.wp(),
            (_, false) => 4 * self.phase_len(),
            (_, true) => self.phase_len(),
        }
    }
    /// [`Packed::offs`].
    fn tap_offsets(&self) -> Vec<Vec<usize>> {
        let wp = self.wp();
        if self.phased {
            return PHASES
                .iter()
                .map(|&ph| phase_taps(ph, wp).into_iter().map(|(_, o)| o).collect())
                .collect();
        }
        vec![(0..9)
            .map(|t| {
                let (ki, kj) = (t / 3, t % 3);
                match self.stride {
                    1 => ki * wp + kj,
                    _ => (2 * (ki % 2) + kj % 2) * self.phase_len() + (ki / 2) * wp + kj / 2,
                }
            })
            .collect()]
    }

    /// The padded input planes, plus slack for the last block's reads past the last plane.
    fn xpad_len(&self) -> usize {
        let far = self.offs.iter().flatten().copied().max().unwrap_or(0);
        let reach = self.qpad() + far + 1;
        (self.cin - 1) * self.plane_in() + reach.max(self.plane_in()) + 16
    }
    fn out_len(&self) -> usize {
        // The input gradient by phases keeps the two phases of one row parity.
        let phases = if self.phased { 2 } else { 1 };
        phases * self.blocks() * self.ob * self.qpad()
    }
    /// Values read per image, and written.
    fn lens(&self) -> (usize, usize) {
        let (input, output) = (self.h * self.wd, self.ho * self.wo);
        if self.phased {
            (self.cin * output, self.cout * input)
        } else {
            (self.cin * input, self.cout * output)
        }
    }

    /// Buffers for [`Packed::run`], reusable for every image of the same convolution.
    pub(super) fn scratch(&self) -> Scratch {
        Scratch {
            xpad: vec![0f32; self.xpad_len()],
            out: vec![0f32; self.out_len()],
        }
    }

    /// Image `x`'s interior into the padded planes (the border stays zero from the allocation).
    fn pad_input(&self, x: &[f32], xpad: &mut [f32]) {
        let (wp, pin) = (self.wp(), self.plane_in());
        if self.phased {
            // The output gradient's rows, at the top left of its grid.
            let (ho, wo) = (self.ho, self.wo);
            for c in 0..self.cin {
                for i in 0..ho {
                    let src = &x[(c * ho + i) * wo..(c * ho + i + 1) * wo];
                    xpad[c * pin + i * wp..c * pin + i * wp + wo].copy_from_slice(src);
                }
            }
            return;
        }
        let (h, w) = (self.h, self.wd);
        let plane = h * w;
        for c in 0..self.cin {
            for i in 0..h {
                let src = &x[c * plane + i * w..c * plane + (i + 1) * w];
                if self.stride == 1 {
                    let dst = c * pin + (i + 1) * wp + 1;
                    xpad[dst..dst + w].copy_from_slice(src);
                    continue;
                }
                // Padded row i + 1, column j + 1: phase ((i + 1) mod 2, (j + 1) mod 2) at
                // ((i + 1)/2, (j + 1)/2). Even input columns go to the odd phase columns.
                let row = i + 1;
                let (pr, r) = (row % 2, row / 2);
                let row = |pc: usize| c * pin + (2 * pr + pc) * self.phase_len() + r * wp;
                let (odd_cols, even_cols) = (row(1), row(0) + 1);
                for (k, v) in src.iter().step_by(2).enumerate() {
                    xpad[odd_cols + k] = *v;
                }
                for (k, v) in src.iter().skip(1).step_by(2).enumerate() {
                    xpad[even_cols + k] = *v;
                }
            }
        }
    }

    /// Every block of output channels, one tap list, into `out` (`blocks · ob` rows of `qpad`).
    fn blocks_into(
        &self,
        xpad: &[f32],
        w: &[f32],
        offs: &[usize],
        out: &mut [f32],
        parallel: bool,
    ) {
        let (ob, pb, qb, qpad, pin) = (self.ob, self.pb, self.qb(), self.qpad(), self.plane_in());
        let wlen = self.cin * offs.len() * ob;
        let cin = self.cin;
        let block = |b: usize, out: &mut [f32]| {
            let wb = &w[b * wlen..(b + 1) * wlen];
            for q0 in (0..qpad).step_by(qb) {
                // SAFETY: avx512f was detected (`usable`); every read lies inside xpad (its
                // slack covers the last block's overhang past the last plane) and every write
                // inside this block's `ob` rows of `out` (qpad positions each).
                unsafe { dispatch(ob, pb, xpad, pin, cin, offs, wb, out, qpad, q0) }
            }
        };
        if parallel {
            use rayon::prelude::*;
            out.par_chunks_mut(ob * qpad)
                .enumerate()
                .for_each(|(b, out)| block(b, out));
        } else {
            for (b, out) in out.chunks_mut(ob * qpad).enumerate() {
                block(b, out);
            }
        }
    }

    /// `y (cout × Ho × Wo) = conv(x (cin × H × W))` for one image, or the input gradient
    /// `dx (C × H × W)` of `dy (O × Ho × Wo)`; `parallel` splits the channel blocks over the
    /// rayon pool (for batches smaller than the pool).
    pub(super) fn run(&self, x: &[f32], s: &mut Scratch, y: &mut [f32], parallel: bool) {
        let (ho, wo, wp) = (self.ho, self.wo, self.wp());
        let qpad = self.qpad();
        // The kernel reads and writes through raw pointers: these sizes are what keeps it in
        // bounds (a scratch of another convolution would not be).
        let (src_len, dst_len) = self.lens();
        assert!(x.len() >= src_len && y.len() >= dst_len);
        assert!(
            s.xpad.len() >= self.xpad_len() && s.out.len() >= self.out_len(),
            "direct convolution: scratch of another geometry"
        );
        self.pad_input(x, &mut s.xpad);
        if self.phased {
            return self.run_phases(s, y, parallel);
        }
        self.blocks_into(&s.xpad, &self.w, &self.offs[0], &mut s.out, parallel);
        let plane = ho * wo;
        for o in 0..self.cout {
            for i in 0..ho {
                let src = o * qpad + i * wp;
                y[o * plane + i * wo..o * plane + (i + 1) * wo]
                    .copy_from_slice(&s.out[src..src + wo]);
            }
        }
    }

    /// The input gradient of a stride-2 convolution, two phases (one row parity) at a time:
    /// their grids interleaved column by column into the rows of that parity.
    fn run_phases(&self, s: &mut Scratch, dx: &mut [f32], parallel: bool) {
        let (h, w, wp, qpad) = (self.h, self.wd, self.wp(), self.qpad());
        let rows = self.blocks() * self.ob * qpad;
        let mut base = 0;
        for pr in 0..2 {
            let (even, odd) = s.out.split_at_mut(rows);
            for (pc, out) in [even, odd].into_iter().enumerate() {
                let taps = &self.offs[2 * pr + pc];
                let len = self.blocks() * self.cin * taps.len() * self.ob;
                self.blocks_into(&s.xpad, &self.w[base..base + len], taps, out, parallel);
                base += len;
            }
            let (even, odd) = s.out.split_at(rows);
            for c in 0..self.cout {
                for (m, i) in (pr..h).step_by(2).enumerate() {
                    let src = c * qpad + m * wp;
                    let (a, b) = (&even[src..src + wp], &odd[src..src + wp]);
                    let row = &mut dx[(c * h + i) * w..(c * h + i + 1) * w];
                    for (k, pair) in row.chunks_mut(2).enumerate() {
                        pair[0] = a[k];
                        if let Some(v) = pair.get_mut(1) {
                            *v = b[k];
                        }
                    }
                }
            }
        }
    }
}

/// [`kernel`] for a block shape of [`BLOCKS`] and a tap count of 1, 2, 4 or 9.
///
/// # Safety
/// As [`kernel`]'s.
#[allow(clippy::too_many_arguments)]
unsafe fn dispatch(
    ob: usize,
    pb: usize,
    xpad: &[f32],
    pin: usize,
    cin: usize,
    offs: &[usize],
    w: &[f32],
    out: &mut [f32],
    row: usize,
    q0: usize,
) {
    macro_rules! taps {
        ($ob:literal, $pb:literal) => {
            match offs.len() {
                1 => {
                    kernel::<$ob, $pb, 1>(xpad, pin, cin, offs.try_into().unwrap(), w, out, row, q0)
                }
                2 => {
                    kernel::<$ob, $pb, 2>(xpad, pin, cin, offs.try_into().unwrap(), w, out, row, q0)
                }
                4 => {
                    kernel::<$ob, $pb, 4>(xpad, pin, cin, offs.try_into().unwrap(), w, out, row, q0)
                }
                9 => {
                    kernel::<$ob, $pb, 9>(xpad, pin, cin, offs.try_into().unwrap(), w, out, row, q0)
                }
                n => unreachable!("{n} taps"),
            }
        };
    }
    match (ob, pb) {
        (8, 3) => taps!(8, 3),
        (6, 4) => taps!(6, 4),
        other => unreachable!("block shape {other:?} is not in BLOCKS"),
    }
}

pub(super) struct Scratch {
    xpad: Vec<f32>,
    out: Vec<f32>,
}

/// One block: `out[j][q0 .. q0 + 16·PB] = Σ_c Σ_t w[c][t][j] · xpad[c][q0 + off_t ..]` for the
/// block's `OB` output channels `j` (rows of `out`, `row` apart), over `TAPS` shifted reads per
/// input channel (9 here; 1 for the products of [`super::winograd`]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn kernel<const OB: usize, const PB: usize, const TAPS: usize>(
    xpad: &[f32],
    plane_in: usize,
    cin: usize,
    offs: &[usize; TAPS],
    w: &[f32],
    out: &mut [f32],
    row: usize,
    q0: usize,
) {
    use std::arch::x86_64::*;
    debug_assert!(w.len() >= cin * TAPS * OB);
    debug_assert!(out.len() >= (OB - 1) * row + q0 + 16 * PB);
    debug_assert!(xpad.len() >= (cin - 1) * plane_in + q0 + offs[TAPS - 1] + 16 * PB);
    let mut acc = [[_mm512_setzero_ps(); PB]; OB];
    let xp = xpad.as_ptr();
    let mut wp = w.as_ptr();
    for c in 0..cin {
        let base = xp.add(c * plane_in + q0);
        for &off in offs {
            let p = base.add(off);
            let xv: [__m512; PB] = std::array::from_fn(|k| _mm512_loadu_ps(p.add(16 * k)));
            for (j, a) in acc.iter_mut().enumerate() {
                let wv = _mm512_set1_ps(*wp.add(j));
                for k in 0..PB {
                    a[k] = _mm512_fmadd_ps(wv, xv[k], a[k]);
                }
            }
            wp = wp.add(OB);
        }
    }
    let op = out.as_mut_ptr();
    for (j, a) in acc.iter().enumerate() {
        for (k, v) in a.iter().enumerate() {
            _mm512_storeu_ps(op.add(j * row + q0 + 16 * k), *v);
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn kernel<const OB: usize, const PB: usize, const TAPS: usize>(
    _: &[f32],
    _: usize,
    _: usize,
    _: &[usize; TAPS],
    _: &[f32],
    _: &mut [f32],
    _: usize,
    _: usize,
) {
    unreachable!("direct convolution without AVX-512 (`usable` is false)")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::conv::Plan;

    fn randv(n: usize, seed: u64) -> Vec<f32> {
        crate::rng::randn_vec(n, &mut crate::rng::rng(seed, "direct"))
    }

    fn close(a: &[f32], b: &[f32], what: &str) {
        assert_eq!(a.len(), b.len());
        let worst = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs() / (1.0 + y.abs()))
            .fold(0f32, f32::max);
        assert!(worst < 1e-5, "{what}: max relative difference {worst}");
    }

    /// Forward and input gradient against im2col + GEMM (+ col2im), for shapes with channel
    /// counts that are and are not multiples of the block, square and not.
    #[test]
    fn matches_im2col_forward_and_input_gradient() {
        if !has_avx512f() {
            eprintln!("no AVX-512 here: the direct kernel is not used, nothing to check");
            return;
        }
        for &(c, o, h, w) in &[
            (16, 16, 28, 28),
            (4, 5, 13, 12),
            (32, 20, 14, 14),
            (4, 8, 12, 17),
        ] {
            let g = Geometry::new(&[1, c, h, w], &[o, c, 3, 3], 1, 1).unwrap();
            assert!(usable(&g));
            let x = randv(c * h * w, 1);
            let wt = randv(o * c * 9, 2);
            let dy = randv(o * h * w, 3);
            let hw = g.hw_out();
            let (y_ref, dx_ref) = Plan::im2col_reference(&g, &wt, &x, &dy);
            for parallel in [false, true] {
                let f = Packed::new(&g, &wt, false);
                let mut s = f.scratch();
                let mut y = vec![f32::NAN; o * hw];
                f.run(&x, &mut s, &mut y, parallel);
                close(&y, &y_ref, &format!("forward {c}→{o} {h}×{w}"));
                // The scratch is reused for a second image without stale values.
                f.run(&x, &mut s, &mut y, parallel);
                close(&y, &y_ref, "forward, reused scratch");
                let bk = Packed::new(&g, &wt, true);
                let mut s = bk.scratch();
                let mut dx = vec![f32::NAN; c * h * w];
                bk.run(&dy, &mut s, &mut dx, parallel);
                close(&dx, &dx_ref, &format!("input gradient {c}→{o} {h}×{w}"));
            }
        }
    }

    /// Stride 2, forward and input gradient (by phases), against im2col + GEMM (+ col2im): even
    /// and odd planes, square and not, ResNet-20's two strided shapes among them.
    #[test]
    fn strided_forward_and_input_gradient_match_im2col() {
        if !has_avx512f() {
            eprintln!("no AVX-512 here: the direct kernel is not used, nothing to check");
            return;
        }
        for &(c, o, h, w) in &[
            (16, 32, 28, 28),
            (32, 64, 14, 14),
            (4, 6, 15, 17),
            (5, 9, 14, 13),
        ] {
            let g = Geometry::new(&[1, c, h, w], &[o, c, 3, 3], 2, 1).unwrap();
            assert!(usable(&g));
            let x = randv(c * h * w, 4);
            let wt = randv(o * c * 9, 5);
            let dy = randv(o * g.hw_out(), 6);
            let (y_ref, dx_ref) = Plan::im2col_reference(&g, &wt, &x, &dy);
            for parallel in [false, true] {
                let f = Packed::new(&g, &wt, false);
                let mut s = f.scratch();
                let mut y = vec![f32::NAN; o * g.hw_out()];
                f.run(&randv(c * h * w, 7), &mut s, &mut y, parallel);
                f.run(&x, &mut s, &mut y, parallel);
                close(&y, &y_ref, &format!("stride 2 {c}→{o} {h}×{w}"));
                // Twice as well: the second image must not see the first one's values.
                let bk = Packed::new(&g, &wt, true);
                let mut s = bk.scratch();
                let mut dx = vec![f32::NAN; c * h * w];
                bk.run(&randv(o * g.hw_out(), 8), &mut s, &mut dx, parallel);
                bk.run(&dy, &mut s, &mut dx, parallel);
                close(
                    &dx,
                    &dx_ref,
                    &format!("stride 2 input gradient {c}→{o} {h}×{w}"),
                );
            }
        }
    }

    #[test]
    fn narrow_strided_and_other_kernels_are_not_taken() {
        let g = |xs: [usize; 4], ws: [usize; 4], s, p| Geometry::new(&xs, &ws, s, p).unwrap();
        assert!(!usable(&g([1, 4, 6, 6], [4, 4, 3, 3], 1, 1)));
        // Stride 2: 12 → 6 wide is too narrow.
        assert!(!usable(&g([1, 4, 12, 12], [4, 4, 3, 3], 2, 1)));
        assert!(!usable(&g([1, 4, 28, 28], [4, 4, 3, 3], 3, 1)));
        assert!(!usable(&g([1, 4, 28, 28], [4, 4, 1, 1], 1, 0)));
        assert!(!usable(&g([1, 4, 28, 28], [4, 4, 5, 5], 1, 2)));
        assert!(!usable(&g([1, 3, 28, 28], [32, 3, 3, 3], 1, 1)));
        assert!(!usable(&g([1, 32, 28, 28], [3, 32, 3, 3], 1, 1)));
    }
}
