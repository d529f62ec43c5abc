//! Winograd F(2×2, 3×3) convolution, stride 1, padding 1, on AVX-512: 16 multiplies per 2×2
//! output tile and channel pair instead of 36.
//!
//! Per image: each input channel's plane is cut into overlapping 4×4 patches `d` (one per 2×2
//! output tile, 2 apart) and transformed, `V = Bᵀ d B`; the weights once per step, `U = G g Gᵀ`;
//! then for each of the 16 transform positions ξ one matrix product over the channels,
//! `M_ξ (O × tiles) = U_ξ (O × C) · V_ξ (C × tiles)`, in the register-blocked kernel of
//! [`super::direct`]; and each output tile is `Aᵀ M A`. With
//!
//! ```text
//! Bᵀ = [1  0 −1  0]    G = [1    0   0]    Aᵀ = [1 1  1  0]
//!      [0  1  1  0]        [½    ½   ½]         [0 1 −1 −1]
//!      [0 −1  1  0]        [½   −½   ½]
//!      [0  1  0 −1]        [0    0   1]
//! ```
//!
//! this is exactly the 3×3 cross-correlation, up to rounding (checked against the exact f64
//! convolution in the tests: closer to it than im2col + GEMM). The input gradient is the same convolution of the output gradient with the
//! weights transposed and flipped, as for the direct kernel.
//!
//! Layout. The zero-bordered input plane is stored as four quarter planes, by the parity of its
//! rows and of its columns, each `tw + 1` wide (`tw` tiles per row, plus one junk tile that reads
//! into the next row: its outputs are dropped). Tile `t = ty·(tw + 1) + tx` then finds patch
//! entry `d[r][k]` in quarter `(r mod 2, k mod 2)` at `t + ⌊r/2⌋·(tw + 1) + ⌊k/2⌋`: every read of
//! the input transform is a unit-stride walk over a flat array, which the compiler vectorizes.
//! The output transform writes the output's even and odd rows, two values per tile in each.

use super::conv::Geometry;
use super::direct::{kernel, taps};
use super::{has_avx512f, wide_fn};

/// GEMM blocks, (output channels, 16-tile vectors). (16, 1) pads the tiles only to the next 16,
/// which is what the small tile counts here need (210 and 56 on the padded grids of 28 × 28 and
/// 14 × 14).
const BLOCKS: [(usize, usize); 3] = [(16, 1), (8, 3), (6, 4)];

/// Fewer input or output channels leave each transformed value too few multiply-adds to pay
/// for its transform (at 16 the transforms already cost about a third of the products); the
/// threshold itself is not measured: ResNet-20 and the CNN have 16 or more wherever it applies.
pub(super) const MIN_CHANNELS: usize = 8;

/// True when `g` is a 3×3 / stride 1 / padding 1 convolution that this path handles here, on a
/// plane whose tiles fill the 16-tile vectors well enough: at most 1.5× as many positions computed
/// as there are outputs. 28 × 28 computes 896 for 784 (224 tiles) and is 1.2–1.3× faster than the
/// direct kernel, 14 × 14 256 for 196 (1.5×); 7 × 7 would compute 128 for 49 and is no faster.
pub(super) fn usable(g: &Geometry) -> bool {
    let tiles = (g.h.div_ceil(2) * (g.w.div_ceil(2) + 1)).next_multiple_of(16);
    2 * 4 * tiles <= 3 * g.h * g.w
        && g.kh == 3
        && g.kw == 3
        && g.stride == 1
        && g.pad == 1
        && g.h >= 2
        && g.w >= 2
        && g.c >= MIN_CHANNELS
        && g.o >= MIN_CHANNELS
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

/// Transformed weights in GEMM order and the geometry of one image.
pub(super) struct Packed {
    /// Per ξ, per block of `ob` output channels, per input channel: the block's `ob` values
    /// (zero past the last channel).
    u: Vec<f32>,
    cin: usize,
    cout: usize,
    h: usize,
    wd: usize,
    /// Tile rows, and tiles per row including the junk one.
    th: usize,
    tw1: usize,
    ob: usize,
    pb: usize,
}

impl Packed {
    /// The forward convolution of `g` with weights `w` (O × C × 3 × 3), or its input gradient
    /// (see [`taps`]).
    pub(super) fn new(g: &Geometry, w: &[f32], input_grad: bool) -> Self {
        let (cin, cout, at) = taps(g, w, input_grad);
        let (th, tw1) = (g.h.div_ceil(2), g.w.div_ceil(2) + 1);
        let tiles = th * tw1;
        // The block shape that computes the fewest outputs (ties: the first).
        let (ob, pb) = BLOCKS
            .into_iter()
            .min_by_key(|&(ob, pb)| cout.div_ceil(ob) * ob * tiles.next_multiple_of(16 * pb))
            .expect("BLOCKS is not empty");
        let blocks = cout.div_ceil(ob);
        let mut u = vec![0f32; 16 * blocks * cin * ob];
        for o in 0..cout {
            for c in 0..cin {
                let t = transform_weight(std::array::from_fn(|k| at(o, c, k) as f64));
                let (b, j) = (o / ob, o % ob);
                for (xi, v) in t.into_iter().enumerate() {
                    u[((xi * blocks + b) * cin + c) * ob + j] = v;
                }
            }
        }
        Self {
            u,
            cin,
            cout,
            h: g.h,
            wd: g.w,
            th,
            tw1,
            ob,
            pb,
        }
    }

    fn blocks(&self) -> usize {
        self.cout.div_ceil(self.ob)
    }
    fn tiles(&self) -> usize {
        self.th * self.tw1
    }
    /// Tiles the transforms compute: whole 16-float vectors (the last one's extra tiles are junk).
    fn tiles16(&self) -> usize {
        self.tiles().next_multiple_of(16)
    }
    /// Tiles per transformed plane, a whole number of kernel blocks.
    fn tpad(&self) -> usize {
        self.tiles().next_multiple_of(16 * self.pb)
    }
    /// Width of a row of the padded output plane (two per tile).
    fn wp(&self) -> usize {
        2 * self.tw1
    }
    /// One quarter plane of a padded input plane: `th + 1` rows of `tw1`, and what the junk
    /// tiles read past them.
    fn quarter_len(&self) -> usize {
        self.tiles16() + self.tw1 + 1
    }

    /// Floats from one ξ to the next in V and in M: the planes plus one cache line, so that the
    /// 16 streams of a transform do not all fall into the same two L1 sets (the planes alone are
    /// often a multiple of 2 KiB: 16 × 224 floats).
    fn v_stride(&self) -> usize {
        self.cin * self.tpad() + 16
    }
    fn m_stride(&self) -> usize {
        self.blocks() * self.ob * self.tpad() + 16
    }

    /// Buffers for [`Packed::run`], reusable for every image of the same convolution.
    pub(super) fn scratch(&self) -> Scratch {
        Scratch {
            quarters: std::array::from_fn(|_| vec![0f32; self.cin * self.quarter_len()]),
            v: vec![0f32; 16 * self.v_stride()],
            m: vec![0f32; 16 * self.m_stride()],
            y: vec![0f32; 4 * self.tiles16()],
        }
    }

    /// `y (cout × H × W) = conv(x (cin × H × W))` for one image; `parallel` splits the 16
    /// products and their channel blocks over the rayon pool (for batches smaller than the pool).
    pub(super) fn run(&self, x: &[f32], s: &mut Scratch, y: &mut [f32], parallel: bool) {
        let (h, w, wp, ql) = (self.h, self.wd, self.wp(), self.quarter_len());
        let (plane, tiles, tpad, tw1) = (h * w, self.tiles16(), self.tpad(), self.tw1);
        let (cin, ob, blocks) = (self.cin, self.ob, self.blocks());
        assert!(x.len() >= cin * plane && y.len() >= self.cout * plane);
        // The kernel reads and writes through raw pointers: these sizes keep it in bounds.
        let (vs, ms) = (self.v_stride(), self.m_stride());
        assert!(
            s.v.len() >= 16 * vs && s.m.len() >= 16 * ms,
            "winograd convolution: scratch of another geometry"
        );
        for c in 0..cin {
            // Padded row i + 1 holds input row i, from column 1 on; the border stays zero from
            // the allocation.
            for i in 0..h {
                let row = i + 1;
                let (pr, at) = (row % 2, c * ql + row / 2 * tw1);
                let [q0, q1] = &mut s.quarters[2 * pr..2 * pr + 2] else {
                    unreachable!("two quarters per row parity")
                };
                split_columns(
                    &x[c * plane + i * w..][..w],
                    &mut q0[at..][..tw1],
                    &mut q1[at..][..tw1],
                );
            }
            let q: [&[f32]; 4] = std::array::from_fn(|k| &s.quarters[k][c * ql..(c + 1) * ql]);
            input_tiles(q, tw1, tiles, &mut s.v[c * tpad..], vs);
        }
        let u = &self.u;
        let v = &s.v;
        // The products of one ξ: every block of `ob` output channels.
        let product = |xi: usize, mx: &mut [f32]| {
            let vx = &v[xi * vs..xi * vs + cin * tpad];
            for (b, m) in mx[..blocks * ob * tpad].chunks_mut(ob * tpad).enumerate() {
                let k = xi * blocks + b;
                let ub = &u[k * cin * ob..(k + 1) * cin * ob];
                for q0 in (0..tpad).step_by(16 * self.pb) {
                    // SAFETY: avx512f was detected (`usable`); the kernel reads `cin` planes of
                    // `tpad` tiles of `vx` at q0 .. q0 + 16·pb ≤ tpad, `cin · ob` weights of
                    // `ub`, and writes `ob` rows of `tpad` of `m` at the same positions.
                    unsafe {
                        match (ob, self.pb) {
                            (16, 1) => kernel::<16, 1, 1>(vx, tpad, cin, &[0], ub, m, tpad, q0),
                            (8, 3) => kernel::<8, 3, 1>(vx, tpad, cin, &[0], ub, m, tpad, q0),
                            (6, 4) => kernel::<6, 4, 1>(vx, tpad, cin, &[0], ub, m, tpad, q0),
                            other => unreachable!("block shape {other:?} is not in BLOCKS"),
                        }
                    }
                }
            }
        };
        if parallel {
            use rayon::prelude::*;
            s.m[..16 * ms]
                .par_chunks_mut(ms)
                .enumerate()
                .for_each(|(xi, mx)| product(xi, mx));
        } else {
            for (xi, mx) in s.m[..16 * ms].chunks_mut(ms).enumerate() {
                product(xi, mx);
            }
        }
        for o in 0..self.cout {
            let (ye, yo) = s.y.split_at_mut(2 * tiles);
            output_tiles(&s.m[o * tpad..], ms, tiles, ye, yo);
            let yc = &mut y[o * plane..(o + 1) * plane];
            for i in 0..h {
                let src = if i % 2 == 0 { &*ye } else { &*yo };
                let at = (i / 2) * wp;
                yc[i * w..(i + 1) * w].copy_from_slice(&src[at..at + w]);
            }
        }
    }
}

pub(super) struct Scratch {
    /// The padded input planes' quarters, `cin` of each: (even rows, even columns), (even, odd),
    /// (odd, even), (odd, odd).
    quarters: [Vec<f32>; 4],
    /// `V`: 16 × cin planes of `tpad` tiles.
    v: Vec<f32>,
    /// `M`: 16 × (blocks · ob) planes of `tpad` tiles.
    m: Vec<f32>,
    /// One output plane on the padded grid: its even rows, then its odd rows.
    y: Vec<f32>,
}

wide_fn! {
    /// One input row into the padded plane's row, from column 1 on: its even columns (0-based in
    /// the input: padded column j + 1 is odd) to `odd` from 0 on, its odd columns to `even` from 1
    /// on.
    fn split_columns(x: &[f32], even: &mut [f32], odd: &mut [f32]) {
        let (pairs, last) = x.as_chunks::<2>();
        let n = pairs.len();
        for ((p, e), o) in pairs.iter().zip(&mut even[1..=n]).zip(&mut odd[..n]) {
            *o = p[0];
            *e = p[1];
        }
        if let [v] = last {
            odd[n] = *v;
        }
    }
}

wide_fn! {
    /// `V = Bᵀ d B` for the `tiles` patches of one channel: entry ξ (row-major 4×4) of tile t
    /// goes to `v[ξ·stride + t]`. `q`: the channel's quarter planes, rows `tw1` wide.
    fn input_tiles(q: [&[f32]; 4], tw1: usize, tiles: usize, v: &mut [f32], stride: usize) {
        // d[r][k] for every tile, as 16 shifted views of the quarters.
        let d: [*const f32; 16] = std::array::from_fn(|i| {
            let (r, k) = (i / 4, i % 4);
            q[2 * (r % 2) + k % 2][(r / 2) * tw1 + k / 2..][..tiles].as_ptr()
        });
        // One output slice (which the compiler knows aliases none of the inputs), unchecked
        // loads and stores, and no `array::from_fn` or `map` in the loop: with bounds-checked
        // slices the compiler keeps a check per access, with `from_fn` an early exit per entry,
        // and either way it leaves most of the loop scalar (`-C remark=loop-vectorize`, perf).
        assert!(tiles <= stride && v.len() >= 15 * stride + tiles);
        let v = v.as_mut_ptr();
        for t in 0..tiles {
            // Columns first: a[r] = d[r] · B.
            let mut a = [[0f32; 4]; 4];
            for (r, ar) in a.iter_mut().enumerate() {
                // SAFETY: t < tiles, the length of each view (sliced above).
                let e = |k: usize| unsafe { *d[4 * r + k].add(t) };
                let (e0, e1, e2, e3) = (e(0), e(1), e(2), e(3));
                *ar = [e0 - e2, e1 + e2, e2 - e1, e1 - e3];
            }
            // `s` is the column of all four rows of `a`.
            #[allow(clippy::needless_range_loop)]
            for s in 0..4 {
                // SAFETY: (12 + s)·stride + t < 15·stride + tiles ≤ v.len() (asserted above).
                unsafe {
                    *v.add(s * stride + t) = a[0][s] - a[2][s];
                    *v.add((4 + s) * stride + t) = a[1][s] + a[2][s];
                    *v.add((8 + s) * stride + t) = a[2][s] - a[1][s];
                    *v.add((12 + s) * stride + t) = a[1][s] - a[3][s];
                }
            }
        }
    }
}

wide_fn! {
    /// `Aᵀ M A` for the `tiles` tiles of one output channel, whose entry ξ of tile t is
    /// `m[ξ·stride + t]`, written as the channel's padded-grid plane: even rows to `ye`, odd rows
    /// to `yo`, two values per tile in each.
    fn output_tiles(m: &[f32], stride: usize, tiles: usize, ye: &mut [f32], yo: &mut [f32]) {
        // Unchecked, for the reason given in `input_tiles`.
        assert!(tiles <= stride && m.len() >= 15 * stride + tiles);
        assert!(ye.len() >= 2 * tiles && yo.len() >= 2 * tiles);
        let (m, ye, yo) = (m.as_ptr(), ye.as_mut_ptr(), yo.as_mut_ptr());
        for t in 0..tiles {
            // SAFETY: ξ·stride + t < 15·stride + tiles ≤ m.len() and 2t + 1 < 2·tiles ≤ the
            // lengths of ye and yo (asserted above).
            unsafe {
                let e = |xi: usize| *m.add(xi * stride + t);
                // Rows first: p[a][s] = (Aᵀ M)[a][s].
                let mut p0 = [0f32; 4];
                let mut p1 = [0f32; 4];
                for s in 0..4 {
                    p0[s] = e(s) + e(4 + s) + e(8 + s);
                    p1[s] = e(4 + s) - e(8 + s) - e(12 + s);
                }
                *ye.add(2 * t) = p0[0] + p0[1] + p0[2];
                *ye.add(2 * t + 1) = p0[1] - p0[2] - p0[3];
                *yo.add(2 * t) = p1[0] + p1[1] + p1[2];
                *yo.add(2 * t + 1) = p1[1] - p1[2] - p1[3];
            }
        }
    }
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
            assert!(usable(&g([1, 16, 28, 28], [16, 16, 3, 3], 1, 1)));
            assert!(usable(&g([1, 32, 14, 14], [32, 32, 3, 3], 1, 1)));
        }
        assert!(!usable(&g([1, 64, 7, 7], [64, 64, 3, 3], 1, 1)));
        assert!(!usable(&g([1, 7, 28, 28], [16, 7, 3, 3], 1, 1)));
        assert!(!usable(&g([1, 16, 28, 28], [7, 16, 3, 3], 1, 1)));
        assert!(!usable(&g([1, 16, 28, 28], [16, 16, 3, 3], 2, 1)));
        assert!(!usable(&g([1, 16, 28, 28], [16, 16, 1, 1], 1, 0)));
        assert!(!usable(&g([1, 16, 1, 28], [16, 16, 3, 3], 1, 1)));
    }
}
