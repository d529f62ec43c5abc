//! Weather corruptions: snow, frost, fog (reference §2 table, §2.1), on one channel with the gray
//! variants of §3 where the original is colour-specific (§2.3).

use std::sync::OnceLock;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal, StandardNormal};

use super::primitives::{
    clipped_zoom, gaussian_filter, motion_blur_u8, plasma_fractal, to_unit, unit_to_u8, Border,
};

/// (μ, σ, zoom, threshold, motion radius, motion sigma, blend) per severity (§2 table).
pub(crate) const SNOW: [(f64, f64, f64, f64, f64, f64, f64); 5] = [
    (0.1, 0.2, 1.0, 0.6, 8.0, 3.0, 0.95),
    (0.1, 0.2, 1.0, 0.5, 10.0, 4.0, 0.9),
    (0.15, 0.3, 1.75, 0.55, 10.0, 4.0, 0.9),
    (0.25, 0.3, 2.25, 0.6, 12.0, 6.0, 0.85),
    (0.3, 0.3, 1.25, 0.65, 14.0, 12.0, 0.8),
];
/// (image weight, frost weight) per severity (§2 table).
pub(crate) const FROST: [(f64, f64); 5] = [
    (1.0, 0.2),
    (1.0, 0.3),
    (0.9, 0.4),
    (0.85, 0.4),
    (0.75, 0.45),
];
/// (amount, wibble decay) per severity (§2 table).
pub(crate) const FOG: [(f64, f64); 5] =
    [(0.2, 3.0), (0.5, 3.0), (0.75, 2.5), (1.0, 2.0), (1.5, 1.75)];

/// snow (§2.1), one channel:
/// 1. `L ~ N(μ, σ)` of the image's shape; 2. `L = ZoomCrop(L, zoom)`; 3. `L[L < thr] = 0`;
/// 4. `Lu8 = uint8_trunc(clip(L)·255)`; 5. ImageMagick motion blur `(radius, sigma)` at
///    `θ ~ U(−135°, −45°)`, `L2 = Lu8'/255`;
/// 6. `x' = blend·x + (1−blend)·max(x, 1.5·x + 0.5)` (the gray term of §3: `gray(x) = x`);
/// 7. `clip(x' + L2 + rot180(L2))`.
///
/// No deviation beyond the size/channel adaptation (the noise layer is `H × W` instead of 32×32).
pub(crate) fn snow<R: Rng + ?Sized>(
    img: &[u8],
    width: usize,
    height: usize,
    sev: usize,
    rng: &mut R,
) -> Vec<u8> {
    let (mu, sigma, zoom, thr, mb_r, mb_s, blend) = SNOW[sev];
    let n = width * height;
    let layer: Vec<f64> = (0..n)
        .map(|_| {
            let z: f64 = StandardNormal.sample(rng);
            mu + sigma * z
        })
        .collect();
    let layer = if zoom == 1.0 {
        layer
    } else {
        clipped_zoom(&layer, width, height, zoom)
    };
    let layer_u8: Vec<u8> = layer
        .iter()
        .map(|&v| if v < thr { 0 } else { unit_to_u8(v) })
        .collect();
    let angle = rng.gen_range(-135.0..-45.0);
    let blurred = motion_blur_u8(&layer_u8, width, height, mb_r, mb_s, angle);
    img.iter()
        .enumerate()
        .map(|(i, &v)| {
            let x = f64::from(v) / 255.0;
            let xp = blend * x + (1.0 - blend) * x.max(1.5 * x + 0.5);
            let l2 = f64::from(blurred[i]) / 255.0 + f64::from(blurred[n - 1 - i]) / 255.0;
            unit_to_u8(xp + l2)
        })
        .collect()
}

/// The sizes (rows × columns) of the five decimated frost textures the original picks from
/// (frost1.png … frost5.jpg resized by 0.2, §2.1 step 3).
const FROST_SIZES: [(usize, usize); 5] = [(120, 180), (63, 112), (63, 112), (70, 105), (99, 132)];

/// One procedural frost texture, `rows × cols` u8.
///
/// **Deviation**: the original frost photographs are not shipped with any package, so this is a
/// synthetic stand-in (its brightness statistics are a guess, not measured against the real
/// textures): a low-frequency haze (blurred white noise around 0.3) plus branching ice needles
/// (random walks from sparse crystal seeds, with side branches at ±40–70°, wrapping around the
/// edges so the texture tiles), blurred with a σ = 0.6 Gaussian, plus fine grain noise; values
/// clipped to [0, 255]. Mean ≈ 100–120, bright thin streaks, like frost on a dark window.
fn frost_texture(rows: usize, cols: usize, seed: u64, density: f64) -> Vec<u8> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n = rows * cols;
    // 1. haze
    let white: Vec<f64> = (0..n).map(|_| rng.gen_range(-1.0..1.0)).collect();
    let haze = gaussian_filter(&white, cols, rows, 5.0, 3.0, Border::Reflect);
    let var = haze.iter().map(|v| v * v).sum::<f64>() / n as f64;
    let std = var.sqrt().max(1e-12);
    // 2. needles
    let mut needles = vec![0.0f64; n];
    let seeds = ((n as f64) * density).round().max(1.0) as usize;
    let jitter = Normal::new(0.0, 0.12).expect("0.12 is a valid standard deviation");
    // (row, col, angle, length, intensity, depth)
    let mut stack: Vec<(f64, f64, f64, f64, f64, u8)> = Vec::new();
    for _ in 0..seeds {
        let r0 = rng.gen_range(0.0..rows as f64);
        let c0 = rng.gen_range(0.0..cols as f64);
        let arms = rng.gen_range(3..=6);
        let base = rng.gen_range(0.0..std::f64::consts::TAU);
        for a in 0..arms {
            let angle =
                base + a as f64 * std::f64::consts::TAU / arms as f64 + jitter.sample(&mut rng);
            let len = rng.gen_range(5.0..22.0);
            let intensity = rng.gen_range(0.45..1.0);
            stack.push((r0, c0, angle, len, intensity, 0));
        }
        while let Some((mut r, mut c, mut angle, len, intensity, depth)) = stack.pop() {
            let steps = (len / 0.7).ceil() as usize;
            for s in 0..steps {
                let t = s as f64 / steps as f64;
                let ri = (r.floor() as isize).rem_euclid(rows as isize) as usize;
                let ci = (c.floor() as isize).rem_euclid(cols as isize) as usize;
                let v = intensity * (1.0 - 0.6 * t);
                let cell = &mut needles[ri * cols + ci];
                *cell = cell.max(v);
                if depth < 2 && rng.gen::<f64>() < 0.06 {
                    let side = if rng.gen::<bool>() { 1.0 } else { -1.0 };
                    let branch_angle = angle + side * rng.gen_range(0.7..1.2);
                    let branch_len = (len * (1.0 - t)) * rng.gen_range(0.3..0.6);
                    if branch_len > 1.5 {
                        stack.push((r, c, branch_angle, branch_len, v * 0.85, depth + 1));
                    }
                }
                angle += jitter.sample(&mut rng) * 0.5;
                r += 0.7 * angle.sin();
                c += 0.7 * angle.cos();
            }
        }
    }
    let needles = gaussian_filter(&needles, cols, rows, 0.6, 4.0, Border::Reflect);
    // 3. combine with grain
    (0..n)
        .map(|i| {
            let grain: f64 = StandardNormal.sample(&mut rng);
            let v = 0.3 + 0.08 * haze[i] / std + 1.1 * needles[i] + 0.03 * grain;
            (v.clamp(0.0, 1.0) * 255.0).round() as u8
        })
        .collect()
}

/// The five procedural textures, built once (fixed seeds, so every run and every process sees the
/// same textures, like the original's fixed files).
fn frost_textures() -> &'static [Vec<u8>; 5] {
    static TEX: OnceLock<[Vec<u8>; 5]> = OnceLock::new();
    TEX.get_or_init(|| {
        let density = [0.0030, 0.0040, 0.0035, 0.0045, 0.0032];
        std::array::from_fn(|i| {
            let (r, c) = FROST_SIZES[i];
            frost_texture(r, c, 0xF105_7000 + i as u64, density[i])
        })
    })
}

/// frost (§2.1), in the 0..255 domain: pick one of 5 textures (`randint(5)`), take a random
/// `H × W` crop (`row = randint(0, rows − H)`, `col = randint(0, cols − W)`, high end exclusive;
/// indices wrap when the image is larger than the texture), `clip(a·x + b·frost, 0, 255)`,
/// truncate.
///
/// **Deviation**: the textures are procedural ([`frost_texture`]), not the original photographs
/// (not available); they keep the original decimated sizes. Gray instead of RGB.
pub(crate) fn frost<R: Rng + ?Sized>(
    img: &[u8],
    width: usize,
    height: usize,
    sev: usize,
    rng: &mut R,
) -> Vec<u8> {
    let (a, b) = FROST[sev];
    let idx = rng.gen_range(0..5);
    let tex = &frost_textures()[idx];
    let (rows, cols) = FROST_SIZES[idx];
    let r0 = if rows > height {
        rng.gen_range(0..rows - height)
    } else {
        0
    };
    let c0 = if cols > width {
        rng.gen_range(0..cols - width)
    } else {
        0
    };
    let mut out = Vec::with_capacity(img.len());
    for y in 0..height {
        let ty = (r0 + y) % rows;
        for x in 0..width {
            let tx = (c0 + x) % cols;
            let v = a * f64::from(img[y * width + x]) + b * f64::from(tex[ty * cols + tx]);
            out.push(v.clamp(0.0, 255.0) as u8);
        }
    }
    out
}

/// fog (§2.1): `m = max(x)`; `clip((x + a·P)·m/(m + a))` with `P` the plasma fractal (§1.3) of size
/// `N = 32` (the next power of two ≥ the image side, at least 32) cropped to the image. No
/// deviation for 28×28 beyond the crop to 28 that §2.3 prescribes.
pub(crate) fn fog<R: Rng + ?Sized>(
    img: &[u8],
    width: usize,
    height: usize,
    sev: usize,
    rng: &mut R,
) -> Vec<u8> {
    let (amount, decay) = FOG[sev];
    let n = width.max(height).max(32).next_power_of_two();
    let p = plasma_fractal(n, decay, rng);
    let x = to_unit(img);
    let m = x.iter().cloned().fold(0.0, f64::max);
    let mut out = Vec::with_capacity(x.len());
    for y in 0..height {
        for c in 0..width {
            let v = x[y * width + c] + amount * p[y * n + c];
            out.push(unit_to_u8(v * m / (m + amount)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frost_textures_have_frost_like_statistics() {
        for (i, t) in frost_textures().iter().enumerate() {
            let (r, c) = FROST_SIZES[i];
            assert_eq!(t.len(), r * c);
            let mean = t.iter().map(|&v| f64::from(v)).sum::<f64>() / t.len() as f64;
            let var = t
                .iter()
                .map(|&v| (f64::from(v) - mean).powi(2))
                .sum::<f64>()
                / t.len() as f64;
            let bright = t.iter().filter(|&&v| v > 160).count() as f64 / t.len() as f64;
            eprintln!(
                "texture {i}: mean {mean:.1} std {:.1} bright {bright:.3}",
                var.sqrt()
            );
            assert!((70.0..150.0).contains(&mean), "texture {i}: mean {mean}");
            assert!(var.sqrt() > 20.0, "texture {i}: std {}", var.sqrt());
            assert!(bright > 0.03, "texture {i}: bright fraction {bright}");
        }
    }
}
