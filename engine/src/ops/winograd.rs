//! Winograd F(2×2, 3×3) convolution, stride 1, padding 1, on AVX-512: 16 multiplies per 2×2
//! output tile and channel pair instead of 36.
//!
//! Per image: each input channel's plane is cut into overlapping 4×4 patches `d` (one per 2×2
//! output tile, 2 apart) and transformed, `V = Bᵀ d B`; the weights once per step, `U = G g Gᵀ`;
//! then for each of the 16 transform positions ξ one matrix product over the channels,
//! `M_ξ (O × tiles) = U_ξ (O × C) · V_ξ (C × tiles)`; and each output tile is `Aᵀ M A`. With
//!
//! ```text
//! Bᵀ = [1  0 −1  0]    G = [1    0   0]    Aᵀ = [1 1  1  0]
//!      [0  1  1  0]        [½    ½   ½]         [0 1 −1 −1]
//!      [0 −1  1  0]        [½   −½   ½]
//!      [0  1  0 −1]        [0    0   1]
//! ```
//!
//! this is exactly the 3×3 cross-correlation, up to rounding (checked against the exact f64
//! convolution in the tests: closer to it than im2col + GEMM). The input gradient is the same
//! convolution of the output gradient with the weights transposed and flipped, as for the direct
//! kernel.
//!
//! Blocking. The tiles go 16 at a time (one AVX-512 vector): the block's V for every input
//! channel (16 × C vectors), then per 16 output channels the 16 products, each summed over the
//! input channels in 16 accumulator registers, into M (16 × 16 vectors, in L1), and the output
//! transform of those 16 channels into a stage that holds, per output channel, the tiles'
//! four outputs as four planes; the stage's planes are interleaved into the output rows at the
//! end. Nothing of one block but the stage leaves L1.
//!
//! Layout. The zero-bordered input plane is stored as eight planes of `th + 1` rows of `tw`
//! (`th × tw` tiles, with no tile past the right edge): by the parity rp of the padded row, the
//! parity kp of the padded column and a column shift s, plane (rp, kp, s) holds padded value
//! `(2·ty + rp, 2·(tx + s) + kp)` at `ty·tw + tx`. Tile `t = ty·tw + tx` then finds patch entry
//! `d[r][k]` in plane `(r mod 2, k mod 2, ⌊k/2⌋)` at `t + ⌊r/2⌋·tw`: every read of the input
//! transform is an unaligned vector load, and the tiles are dense (196 for 28 × 28, 49 for
//! 14 × 14, 16 for 7 × 7: one vector per image). Each input value lands in two of the planes
//! (a row is split into its even and odd columns by two permutations, then written with masked
//! stores).

use super::conv::Geometry;
use super::direct::taps;
use super::has_avx512f;
use rayon::prelude::*;

/// With fewer input or output channels each transformed value gets too few multiply-adds to pay
/// for its transforms. Measured per image, one thread, forward (Intel Xeon with two AVX-512 FMA
/// units, 2026-12-04): 16 → 16 at 28 × 28 30 µs against the direct
/// kernel's 27; 32 → 32 at 14 × 14 26 against 27.5; 64 → 64 at 7 × 7 19.5 against 29.5;
/// 32 → 64 at 14 × 14 44 against 56; 64 → 128 at 7 × 7 36 against 58 (`attune-bench kernels`).
pub(super) const MIN_CHANNELS: usize = 32;

/// The weights are transformed once per call ([`Packed::new`]: per layer and step), which a
/// small batch does not pay back: for 64 → 128 channels that is 8192 kernels, about as long as
/// the products of a few images. Smaller batches take the direct kernel (source forward at
/// batch 1, CNN: 1230 images/s with this threshold against 890 without, ResNet-20 310 against 245).
pub(super) const MIN_BATCH: usize = 8;

/// True when `g` is a 3×3 / stride 1 / padding 1 convolution that this path handles here, on a
/// plane whose tiles fill the 16-tile vectors well enough: at most 1.5× as many positions computed
/// as there are outputs (28 × 28: 832 for 784; 14 × 14: 256 for 196; 7 × 7: 64 for 49).
pub(super) fn usable(g: &Geometry) -> bool {
    let tiles = (g.h.div_ceil(2) * g.w.div_ceil(2)).next_multiple_of(16);
    2 * 4 * tiles <= 3 * g.h * g.w
        && g.kh == 3
        && g.kw == 3
        && g.stride == 1
        && g.pad == 1
        && g.h >= 2
        && g.w >= 2
        && g.c >= MIN_CHANNELS
        && g.o >= MIN_CHANNELS
        && g.b >= MIN_BATCH
        && has_avx512f()
}

/// `G g Gᵀ` for one 3×3 kernel `g` (row-major taps), in f64 and rounded once.
fn transform_weight(g: [f64; 9]) -> [f32; 16] {
    // G applied to the columns of a 3-vector.
    let gv = |a: f64, b: f64, c: f64| [a, 0.5 * (a + b + c), 0.5 * (a - b + c), c];
    let cols: [[f64; 4]; 3] = std::array::from_fn(|j| gv(g[j], g[3 + j], g[6 + j]));
    let mut u = [0f32; 16];
    for r in 0..4 {
        let row = gv(cols[0][r], cols[1][r], cols[2][r]);
        for s in 0..4 {
            u[4 * r + s] = row[s] as f32;
        }
    }
    u
}

/// Transformed weights in kernel order and the geometry of one image.
pub(super) struct Packed {
    /// Per ξ, per block of 16 output channels, per input channel: the block's 16 values (zero
    /// past the last channel).
    u: Vec<f32>,
    cin: usize,
    cout: usize,
    h: usize,
    wd: usize,
    /// Tile rows and tiles per row.
    th: usize,
    tw: usize,
}

/// Output channels per block of the products, and tiles per block: one 16-float vector.
const OB: usize = 16;
const TB: usize = 16;

impl Packed {
    /// The forward convolution of `g` with weights `w` (O × C × 3 × 3), or its input gradient
    /// (see [`taps`]).
    pub(super) fn new(g: &Geometry, w: &[f32], input_grad: bool) -> Self {
        let (cin, cout, at) = taps(g, w, input_grad);
        let blocks = cout.div_ceil(OB);
        let mut u = vec![0f32; 16 * blocks * cin * OB];
        // The transforms (once per layer and step, 4096 of them for 64 → 64) on every thread:
        // the batches this path runs (≥ MIN_BATCH images) wait for them otherwise.
        let transformed: Vec<[f32; 16]> = (0..cout * cin)
            .into_par_iter()
            .with_min_len(256)
            .map(|k| transform_weight(std::array::from_fn(|t| at(k / cin, k % cin, t) as f64)))
            .collect();
        for (k, t) in transformed.into_iter().enumerate() {
            let (o, c) = (k / cin, k % cin);
            let (b, j) = (o / OB, o % OB);
            for (xi, v) in t.into_iter().enumerate() {
                u[((xi * blocks + b) * cin + c) * OB + j] = v;
            }
        }
        Self {
            u,
            cin,
            cout,
            h: g.h,
            wd: g.w,
            th: g.h.div_ceil(2),
            tw: g.w.div_ceil(2),
        }
    }

    fn blocks(&self) -> usize {
        self.cout.div_ceil(OB)
    }
    /// Tiles computed: whole 16-tile blocks (the last one's extra tiles are junk).
    fn tiles16(&self) -> usize {
        (self.th * self.tw).next_multiple_of(TB)
    }
    /// One of the eight planes of a channel's padded input (see [`Scratch::planes`]): `th + 1`
    /// rows of `tw`, and what the junk tiles of the last block read past them.
    fn plane_len(&self) -> usize {
        self.tiles16() + self.tw
    }

    /// Buffers for [`Packed::run`], reusable for every image of the same convolution.
    pub(super) fn scratch(&self) -> Scratch {
        Scratch {
            planes: std::array::from_fn(|_| vec![0f32; self.cin * self.plane_len()]),
            work: Work::new(self.cin),
            stage: vec![0f32; self.cout * 4 * self.tiles16()],
        }
    }

    /// `y (cout × H × W) = conv(x (cin × H × W))` for one image; `parallel` splits the tile
    /// blocks over the rayon pool (for batches smaller than the pool).
    pub(super) fn run(&self, x: &[f32], s: &mut Scratch, y: &mut [f32], parallel: bool) {
        let (h, w, tw, pl) = (self.h, self.wd, self.tw, self.plane_len());
        let (plane, tiles16, cin) = (h * w, self.tiles16(), self.cin);
        // The kernels read and write through raw pointers: these sizes keep them in bounds.
        assert!(x.len() >= cin * plane && y.len() >= self.cout * plane);
        assert!(
            s.planes.iter().all(|p| p.len() >= cin * pl)
                && s.work.v.len() >= 16 * cin * TB
                && s.stage.len() >= self.cout * 4 * tiles16,
            "winograd convolution: scratch of another geometry"
        );
        let planes_mut: [*mut f32; 8] = std::array::from_fn(|k| s.planes[k].as_mut_ptr());
        for c in 0..cin {
            // SAFETY: avx512f was detected (`usable`); the planes hold `cin` channels of `pl`
            // (asserted above), of which this writes channel c's `th + 1` rows of `tw`.
            unsafe { split_channel(&x[c * plane..(c + 1) * plane], planes_mut, c * pl, h, tw) };
        }
        let nb = tiles16 / TB;
        let stage = StagePtr(s.stage.as_mut_ptr());
        let planes: [&[f32]; 8] = std::array::from_fn(|k| &s.planes[k][..]);
        // SAFETY (both arms): avx512f was detected (`usable`); `blocks` writes only the stage
        // columns of its own tile blocks, and the sizes were checked above.
        if parallel {
            use rayon::prelude::*;
            (0..nb).into_par_iter().for_each_init(
                || Work::new(cin),
                |work, b| unsafe { self.blocks_of(&planes, b..b + 1, work, stage) },
            );
        } else {
            unsafe { self.blocks_of(&planes, 0..nb, &mut s.work, stage) };
        }
        // Even and odd output rows from the stage, two values per tile each.
        for o in 0..self.cout {
            let st = &s.stage[o * 4 * tiles16..(o + 1) * 4 * tiles16];
            // SAFETY: avx512f was detected (`usable`); the stage holds four planes of
            // `tiles16` ≥ th·tw for this channel.
            unsafe { interleave_channel(st, tiles16, &mut y[o * plane..(o + 1) * plane], w, tw) };
        }
    }

    /// The tile blocks `range`: input transform, the 16 products per block of 16 output
    /// channels, output transform into the stage (per output channel, the four outputs of
    /// each tile as four planes of `tiles16`).
    ///
    /// # Safety
    /// AVX-512F; `planes` and the stage are of this geometry (checked in [`Packed::run`]), and
    /// no two callers at the same time share a tile block.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn blocks_of(
        &self,
        planes: &[&[f32]; 8],
        range: std::ops::Range<usize>,
        work: &mut Work,
        stage: StagePtr,
    ) {
        use std::arch::x86_64::*;
        let (cin, tw, pl, tiles16) = (self.cin, self.tw, self.plane_len(), self.tiles16());
        let blocks = self.blocks();
        let v = work.v.as_mut_ptr();
        let m = work.m.as_mut_ptr();
        for b in range {
            let t0 = b * TB;
            // V = Bᵀ d B for the block's tiles, every channel: v[c][ξ] is 16 tiles.
            for c in 0..cin {
                let d = |r: usize, k: usize| {
                    let p = planes[4 * (r % 2) + 2 * (k % 2) + k / 2].as_ptr();
                    _mm512_loadu_ps(p.add(c * pl + t0 + (r / 2) * tw))
                };
                let mut a = [[_mm512_setzero_ps(); 4]; 4];
                for (r, ar) in a.iter_mut().enumerate() {
                    let (e0, e1, e2, e3) = (d(r, 0), d(r, 1), d(r, 2), d(r, 3));
                    *ar = [
                        _mm512_sub_ps(e0, e2),
                        _mm512_add_ps(e1, e2),
                        _mm512_sub_ps(e2, e1),
                        _mm512_sub_ps(e1, e3),
                    ];
                }
                #[allow(clippy::needless_range_loop)]
                for s in 0..4 {
                    let at = |row: usize| v.add((c * 16 + 4 * row + s) * TB);
                    _mm512_storeu_ps(at(0), _mm512_sub_ps(a[0][s], a[2][s]));
                    _mm512_storeu_ps(at(1), _mm512_add_ps(a[1][s], a[2][s]));
                    _mm512_storeu_ps(at(2), _mm512_sub_ps(a[2][s], a[1][s]));
                    _mm512_storeu_ps(at(3), _mm512_sub_ps(a[1][s], a[3][s]));
                }
            }
            for ob in 0..blocks {
                // M_ξ (16 channels × 16 tiles) = U_ξ · V_ξ, summed over the input channels in order.
                for xi in 0..16 {
                    let mut acc = [_mm512_setzero_ps(); OB];
                    let ub = self.u.as_ptr().add((xi * blocks + ob) * cin * OB);
                    let vx = v.add(xi * TB);
                    for c in 0..cin {
                        let vc = _mm512_loadu_ps(vx.add(c * 16 * TB));
                        let uc = ub.add(c * OB);
                        for (j, a) in acc.iter_mut().enumerate() {
                            *a = _mm512_fmadd_ps(_mm512_set1_ps(*uc.add(j)), vc, *a);
                        }
                    }
                    for (j, a) in acc.iter().enumerate() {
                        _mm512_storeu_ps(m.add((xi * OB + j) * TB), *a);
                    }
                }
                // Aᵀ M A per output channel: the tiles' four outputs into the stage.
                for j in 0..OB.min(self.cout - ob * OB) {
                    let e = |xi: usize| _mm512_loadu_ps(m.add((xi * OB + j) * TB));
                    let mut p0 = [_mm512_setzero_ps(); 4];
                    let mut p1 = [_mm512_setzero_ps(); 4];
                    for s in 0..4 {
                        p0[s] = _mm512_add_ps(_mm512_add_ps(e(s), e(4 + s)), e(8 + s));
                        p1[s] = _mm512_sub_ps(_mm512_sub_ps(e(4 + s), e(8 + s)), e(12 + s));
                    }
                    let out = [
                        _mm512_add_ps(_mm512_add_ps(p0[0], p0[1]), p0[2]),
                        _mm512_sub_ps(_mm512_sub_ps(p0[1], p0[2]), p0[3]),
                        _mm512_add_ps(_mm512_add_ps(p1[0], p1[1]), p1[2]),
                        _mm512_sub_ps(_mm512_sub_ps(p1[1], p1[2]), p1[3]),
                    ];
                    let o = ob * OB + j;
                    for (k, val) in out.into_iter().enumerate() {
                        _mm512_storeu_ps(stage.0.add((o * 4 + k) * tiles16 + t0), val);
                    }
                }
            }
        }
    }

    #[cfg(not(target_arch = "x86_64"))]
    unsafe fn blocks_of(
        &self,
        _: &[&[f32]; 8],
        _: std::ops::Range<usize>,
        _: &mut Work,
        _: StagePtr,
    ) {
        unreachable!("winograd convolution without AVX-512 (`usable` is false)")
    }
}

/// The stage's base pointer, shared by the tile blocks that write its disjoint columns.
#[derive(Clone, Copy)]
struct StagePtr(*mut f32);
// SAFETY: the blocks that share it write disjoint elements (see `Packed::blocks_of`).
unsafe impl Send for StagePtr {}
unsafe impl Sync for StagePtr {}

/// Per-worker buffers of one tile block: V (per input channel, 16 ξ × 16 tiles) and M (per ξ,
/// 16 output channels × 16 tiles).
pub(super) struct Work {
    v: Vec<f32>,
    m: Vec<f32>,
}

impl Work {
    fn new(cin: usize) -> Self {
        Self {
            v: vec![0f32; 16 * cin * TB],
            m: vec![0f32; 16 * OB * TB],
        }
    }
}

pub(super) struct Scratch {
    /// The padded input planes of the `cin` channels, each as eight planes of `th + 1` rows of
    /// `tw` (see the module documentation): by row parity rp, column parity kp and column shift
    /// s, plane `4·rp + 2·kp + s` holds padded value `(2·ty + rp, 2·(tx + s) + kp)` at
    /// `ty·tw + tx`.
    planes: [Vec<f32>; 8],
    work: Work,
    /// Per output channel, the four outputs of each tile ((0, 0), (0, 1), (1, 0), (1, 1)) as
    /// four planes of `tiles16`.
    stage: Vec<f32>,
}

/// Lane masks of the first `n` lanes (all 16 from 16 on).
#[inline(always)]
fn lanes(n: usize) -> u16 {
    if n >= 16 {
        u16::MAX
    } else {
        (1u16 << n) - 1
    }
}

/// One channel's input plane `x` (H × W) into its eight planes (each at `off` in `p[k]`): padded
/// row `i + 1` and padded column `2·(tx + s) + kp` (input column `2·(tx + s) + kp − 1`) to plane
/// `4·rp + 2·kp + s` at `⌊(i + 1)/2⌋·tw + tx`, rp the row's parity. Per row and 16 tiles, the
/// even and odd columns are split by two permutations and written with masked stores. The
/// padded border (column 0, past column W, row 0, past row H) is never written: it stays zero.
///
/// # Safety
/// AVX-512F; each `p[k] + off` points to `(⌊H/2⌋ + 1)·tw` writable floats, `tw = ⌈W/2⌉`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn split_channel(x: &[f32], p: [*mut f32; 8], off: usize, h: usize, tw: usize) {
    use std::arch::x86_64::*;
    let w = x.len() / h.max(1);
    assert!(x.len() == h * w && tw == w.div_ceil(2));
    let even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    let odd = _mm512_set_epi32(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
    for t0 in (0..tw).step_by(16) {
        // Input columns 2·t0 .. 2·t0 + n of every row, and the masks of this group of tiles.
        let n = (w - 2 * t0).min(32);
        let (ma, mb) = (lanes(n), lanes(n.saturating_sub(16)));
        let (ne, no) = (n.div_ceil(2), n / 2);
        // Even input column 2t: plane (1, 0) at t, plane (1, 1) at t − 1 (not before 0).
        // Odd input column 2t + 1: plane (0, 1) at t, plane (0, 0) at t + 1 (up to tw − 1).
        let m11 = lanes(ne) & !lanes((t0 == 0) as usize);
        let m00 = lanes(no) & lanes(tw - 1 - t0);
        for i in 0..h {
            let src = x.as_ptr().add(i * w + 2 * t0);
            let a = _mm512_maskz_loadu_ps(ma, src);
            let b = _mm512_maskz_loadu_ps(mb, src.add(16));
            let ev = _mm512_permutex2var_ps(a, even, b);
            let od = _mm512_permutex2var_ps(a, odd, b);
            let row = i + 1;
            let (q, at) = (&p[4 * (row % 2)..], off + row / 2 * tw + t0);
            _mm512_mask_storeu_ps(q[0].add(at + 1), m00, od);
            _mm512_mask_storeu_ps(q[1].add(at), lanes(no), od);
            _mm512_mask_storeu_ps(q[2].add(at), lanes(ne), ev);
            _mm512_mask_storeu_ps(q[3].add(at).wrapping_sub(1), m11, ev);
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn split_channel(_: &[f32], _: [*mut f32; 8], _: usize, _: usize, _: usize) {
    unreachable!("winograd convolution without AVX-512 (`usable` is false)")
}

/// One output channel (H × W, `y`) from its stage (four planes of `tiles16`: the tiles'
/// outputs (0, 0), (0, 1), (1, 0), (1, 1)): row `2·ty + a`, column `2·tx + k` is entry
/// `ty·tw + tx` of plane `2·a + k`.
///
/// # Safety
/// AVX-512F; `st` holds four planes of `tiles16` ≥ ⌈H/2⌉·tw, `tw = ⌈W/2⌉`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn interleave_channel(st: &[f32], tiles16: usize, y: &mut [f32], w: usize, tw: usize) {
    use std::arch::x86_64::*;
    let h = y.len() / w.max(1);
    assert!(y.len() == h * w && tw == w.div_ceil(2) && st.len() >= 4 * tiles16);
    assert!(h.div_ceil(2) * tw <= tiles16);
    let idx = _mm512_set_epi32(23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    for t in (0..tw).step_by(8) {
        let m8 = lanes((tw - t).min(8));
        let mo = lanes((w - 2 * t).min(16));
        for i in 0..h {
            let (a, ty) = (i % 2, i / 2);
            let src = st.as_ptr().add(2 * a * tiles16 + ty * tw + t);
            let va = _mm512_maskz_loadu_ps(m8, src);
            let vb = _mm512_maskz_loadu_ps(m8, src.add(tiles16));
            let out = _mm512_permutex2var_ps(va, idx, vb);
            _mm512_mask_storeu_ps(y.as_mut_ptr().add(i * w + 2 * t), mo, out);
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn interleave_channel(_: &[f32], _: usize, _: &mut [f32], _: usize, _: usize) {
    unreachable!("winograd convolution without AVX-512 (`usable` is false)")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::conv::Plan;

    fn randv(n: usize, seed: u64) -> Vec<f32> {
        crate::rng::randn_vec(n, &mut crate::rng::rng(seed, "winograd"))
    }

    /// The exact (f64) forward convolution, and its input gradient for `dy`.
    fn exact(g: &Geometry, x: &[f32], w: &[f32], dy: &[f32]) -> (Vec<f64>, Vec<f64>) {
        let (c, o, h, wd) = (g.c, g.o, g.h, g.w);
        let mut y = vec![0f64; o * h * wd];
        let mut dx = vec![0f64; c * h * wd];
        for oc in 0..o {
            for ic in 0..c {
                for t in 0..9 {
                    let wv = w[(oc * c + ic) * 9 + t] as f64;
                    for i in 0..h {
                        for j in 0..wd {
                            let (ii, jj) =
                                ((i + t / 3).wrapping_sub(1), (j + t % 3).wrapping_sub(1));
                            if ii < h && jj < wd {
                                let (yi, xi) = ((oc * h + i) * wd + j, (ic * h + ii) * wd + jj);
                                y[yi] += wv * x[xi] as f64;
                                dx[xi] += wv * dy[yi] as f64;
                            }
                        }
                    }
                }
            }
        }
        (y, dx)
    }

    fn max_err(a: &[f32], exact: &[f64]) -> f64 {
        assert_eq!(a.len(), exact.len());
        a.iter()
            .zip(exact)
            .map(|(a, e)| (*a as f64 - e).abs())
            .fold(0.0, f64::max)
    }

    fn rms(v: &[f64]) -> f64 {
        (v.iter().map(|e| e * e).sum::<f64>() / v.len() as f64).sqrt()
    }

    #[test]
    fn weight_transform_of_a_hand_kernel() {
        // g = [[1,2,3],[4,5,6],[7,8,9]]: G g Gᵀ by hand. G g = [[1,2,3],[6,7.5,9],[2,2.5,3],
        // [7,8,9]]; then G on each row: [a, (a+b+c)/2, (a−b+c)/2, c].
        let u = transform_weight([1., 2., 3., 4., 5., 6., 7., 8., 9.]);
        let want = [
            1., 3., 1., 3., //
            6., 11.25, 3.75, 9., //
            2., 3.75, 1.25, 3., //
            7., 12., 4., 9.,
        ];
        assert_eq!(u, want);
    }

    /// Forward and input gradient against the exact (f64) convolution, for even and odd planes,
    /// channel counts that are and are not multiples of the block, square and not: Winograd's
    /// rounding error is at most twice that of im2col + GEMM (+ col2im) on the same input (it is
    /// smaller on ResNet-20's three shapes: 1.0e-5 against 2.6e-5 at 16 × 28 × 28).
    #[test]
    fn matches_exact_convolution_as_closely_as_im2col() {
        if !has_avx512f() {
            eprintln!("no AVX-512 here: the Winograd path is not used, nothing to check");
            return;
        }
        for &(c, o, h, w) in &[
            (16, 16, 28, 28),
            (32, 32, 14, 14),
            (64, 64, 7, 7),
            (8, 13, 5, 9),
            (9, 20, 2, 3),
            (24, 8, 11, 16),
        ] {
            // Also shapes that `usable` leaves to the direct kernel: the path is exact for all.
            let g = Geometry::new(&[1, c, h, w], &[o, c, 3, 3], 1, 1).unwrap();
            let x = randv(c * h * w, 1);
            let wt = randv(o * c * 9, 2);
            let dy = randv(o * h * w, 3);
            let (y_exact, dx_exact) = exact(&g, &x, &wt, &dy);
            let (y_ref, dx_ref) = Plan::im2col_reference(&g, &wt, &x, &dy);
            let bound = |r: &[f32], e: &[f64]| 2.0 * max_err(r, e) + 1e-6 * rms(e);
            let (y_bound, dx_bound) = (bound(&y_ref, &y_exact), bound(&dx_ref, &dx_exact));
            // Each after an earlier image in the same scratch: no stale values carry over.
            let check = |input_grad: bool, src: &[f32], exact: &[f64], bound: f64, parallel| {
                let what = if input_grad {
                    "input gradient"
                } else {
                    "forward"
                };
                let p = Packed::new(&g, &wt, input_grad);
                let mut s = p.scratch();
                let mut out = vec![f32::NAN; exact.len()];
                p.run(
                    &randv(src.len(), 4 + input_grad as u64),
                    &mut s,
                    &mut out,
                    parallel,
                );
                p.run(src, &mut s, &mut out, parallel);
                let e = max_err(&out, exact);
                assert!(
                    e <= bound,
                    "{what} {c}→{o} {h}×{w}: error {e:.2e}, im2col's ×2 {bound:.2e}"
                );
            };
            for parallel in [false, true] {
                check(false, &x, &y_exact, y_bound, parallel);
                check(true, &dy, &dx_exact, dx_bound, parallel);
            }
        }
    }

    #[test]
    fn small_planes_and_channel_counts_and_other_kernels_are_not_taken() {
        let g = |xs: [usize; 4], ws: [usize; 4], s, p| Geometry::new(&xs, &ws, s, p).unwrap();
        if has_avx512f() {
            assert!(usable(&g([8, 32, 28, 28], [32, 32, 3, 3], 1, 1)));
            assert!(usable(&g([8, 32, 14, 14], [32, 32, 3, 3], 1, 1)));
            assert!(usable(&g([200, 64, 7, 7], [64, 64, 3, 3], 1, 1)));
            assert!(usable(&g([8, 32, 14, 14], [64, 32, 3, 3], 1, 1)));
        }
        // Fewer than 8 images: the weight transform would not pay back.
        assert!(!usable(&g([7, 64, 7, 7], [64, 64, 3, 3], 1, 1)));
        // 16 channels: the direct kernel (ResNet-20's first stage).
        assert!(!usable(&g([1, 16, 28, 28], [16, 16, 3, 3], 1, 1)));
        assert!(!usable(&g([1, 32, 28, 28], [16, 32, 3, 3], 1, 1)));
        // 5 × 5: 9 tiles computed as 16, 64 positions for 25.
        assert!(!usable(&g([1, 32, 5, 5], [32, 32, 3, 3], 1, 1)));
        assert!(!usable(&g([1, 32, 28, 28], [32, 32, 3, 3], 2, 1)));
        assert!(!usable(&g([1, 32, 28, 28], [32, 32, 1, 1], 1, 0)));
        assert!(!usable(&g([1, 32, 1, 28], [32, 32, 3, 3], 1, 1)));
    }
}
