//! Blur corruptions: defocus_blur, glass_blur, motion_blur, zoom_blur (reference §2 table, §2.1,
//! primitives §1.3), adapted to one channel and to the image size (§2.3).

use rand::Rng;

use super::primitives::{
    arange, correlate2d, defocus_kernel, from_unit_trunc, gaussian_filter, motion_blur_u8, to_unit,
    unit_to_u8, zoom_axis_plan, zoom_crop_accumulate, Border,
};

/// (disk radius, alias-blur σ) per severity (§2 table).
pub(crate) const DEFOCUS: [(f64, f64); 5] =
    [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1.0, 0.2), (1.5, 0.1)];
/// (Gaussian σ, max_delta, iterations) per severity (§2 table).
pub(crate) const GLASS: [(f64, usize, usize); 5] = [
    (0.05, 1, 1),
    (0.25, 1, 1),
    (0.4, 1, 1),
    (0.25, 1, 2),
    (0.4, 1, 2),
];
/// ImageMagick (radius, sigma) per severity (§2 table); angle ~ U(−45°, 45°).
pub(crate) const MOTION: [(f64, f64); 5] =
    [(6.0, 1.0), (6.0, 1.5), (6.0, 2.0), (8.0, 2.0), (9.0, 2.5)];
/// `arange(1, stop, 0.01)` stops per severity (§2 table): 7, 12, 16, 21, 26 factors.
pub(crate) const ZOOM_STOP: [f64; 5] = [1.06, 1.11, 1.16, 1.21, 1.26];

/// defocus_blur (§2.1, kernel §1.3): correlate `x` with the disk-plus-3×3-Gaussian kernel
/// `D(r, a)` using OpenCV's REFLECT_101 border; clip. One channel instead of three; no other
/// deviation.
pub(crate) fn defocus_blur(img: &[u8], width: usize, height: usize, sev: usize) -> Vec<u8> {
    let (r, a) = DEFOCUS[sev];
    let (k, ks) = defocus_kernel(r, a);
    let x = to_unit(img);
    from_unit_trunc(&correlate2d(&x, width, height, &k, ks, Border::Reflect101))
}

/// glass_blur (§2.1), CIFAR semantics on one channel:
/// 1. `x8 = uint8_trunc(G(σ)(x)·255)` with the scipy Gaussian (mode 'nearest', truncate 4, both
///    axes);
/// 2. `iters` times, for `h` from `H−δ` down to `δ+1` and `w` from `W−δ` down to `δ+1` (the
///    original's `range(32−δ, δ, −1)` with 32 replaced by the image size), draw `dx` then `dy`
///    from `randint(−δ, δ)` = `{−δ, …, δ−1}` and **copy** `x8[h,w] ← x8[h+dy, w+dx]` (the RGB
///    original's numpy-view "swap" is a copy, §2.1);
/// 3. `G(σ)(x8/255)`, clip.
///
/// No deviation beyond the size/channel adaptation.
pub(crate) fn glass_blur<R: Rng + ?Sized>(
    img: &[u8],
    width: usize,
    height: usize,
    sev: usize,
    rng: &mut R,
) -> Vec<u8> {
    let (sigma, delta, iters) = GLASS[sev];
    let x = to_unit(img);
    let mut x8 = from_unit_trunc(&gaussian_filter(
        &x,
        width,
        height,
        sigma,
        4.0,
        Border::Nearest,
    ));
    let d = delta as isize;
    for _ in 0..iters {
        for h in (delta + 1..=height.saturating_sub(delta)).rev() {
            for w in (delta + 1..=width.saturating_sub(delta)).rev() {
                let dx = rng.gen_range(-d..d);
                let dy = rng.gen_range(-d..d);
                // h + dy ≥ 1 and w + dx ≥ 1 because h, w ≥ δ + 1 and dx, dy ≥ −δ
                let hp = (h as isize + dy) as usize;
                let wp = (w as isize + dx) as usize;
                x8[h * width + w] = x8[hp * width + wp];
            }
        }
    }
    let x = to_unit(&x8);
    from_unit_trunc(&gaussian_filter(
        &x,
        width,
        height,
        sigma,
        4.0,
        Border::Nearest,
    ))
}

/// motion_blur (§2.1): ImageMagick `MotionBlurImage(R, S, θ)` with `θ ~ U(−45°, 45°)` on the
/// 8-bit image, reproduced exactly per §1.3 (one-sided Gaussian line kernel of width `2⌈R⌉+1`,
/// offsets `ceil(i·cosθ − 0.5)`, `ceil(i·sinθ − 0.5)`, edge clamp, rounded to u8). No deviation.
pub(crate) fn motion_blur<R: Rng + ?Sized>(
    img: &[u8],
    width: usize,
    height: usize,
    sev: usize,
    rng: &mut R,
) -> Vec<u8> {
    let (radius, sigma) = MOTION[sev];
    let angle = rng.gen_range(-45.0..45.0);
    motion_blur_u8(img, width, height, radius, sigma, angle)
}

/// The zoom factors of one zoom_blur severity: numpy `arange(1, stop, 0.01)`.
pub(crate) fn zoom_factors(sev: usize) -> Vec<f64> {
    arange(1.0, ZOOM_STOP[sev], 0.01)
}

/// zoom_blur (§2.1): `(x + Σ_z ZoomCrop(x, z)) / (count + 1)` over the arange factors, with
/// ZoomCrop = centre crop `ceil(h/z)` + scipy `zoom(order=1)` (corner-aligned, output size rounded
/// half-to-even) + centre trim (§1.3); clip. Deterministic (no randomness). Computed in f64 rather
/// than the original's float32; the height and width axes are planned independently, which is the
/// same thing for square images.
pub(crate) fn zoom_blur(img: &[u8], width: usize, height: usize, sev: usize) -> Vec<u8> {
    let x = to_unit(img);
    let factors = zoom_factors(sev);
    let mut acc = vec![0.0; x.len()];
    for &z in &factors {
        let py = zoom_axis_plan(height, z);
        let px = if width == height {
            py.clone()
        } else {
            zoom_axis_plan(width, z)
        };
        zoom_crop_accumulate(&x, width, &py, &px, &mut acc);
    }
    let denom = (factors.len() + 1) as f64;
    x.iter()
        .zip(&acc)
        .map(|(&v, &a)| unit_to_u8((v + a) / denom))
        .collect()
}
