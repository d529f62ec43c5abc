//! The test-time augmentations of CoTTA, PETAL and RMT (`get_tta_transforms` in their code), on
//! images in [0, 1], drawn from a seeded RNG per image:
//!
//! clip → brightness ×U(0.6, 1.4) → contrast U(0.7, 1.3) (blend with the image mean) →
//! gamma U(0.7, 1.3) → affine (rotation U(−15°, 15°), translation up to 1/16 of the side,
//! scale U(0.9, 1.1), bilinear, edge padding) → Gaussian blur (5×5, σ U(0.001, 0.5)) →
//! horizontal flip (p 0.5, when `hflip`) → Gaussian noise (σ 0.005) → clip.
//!
//! Differences from the original: the colour jitter applies its three factors in this fixed
//! order (the original shuffles them and also jitters saturation and hue, which do nothing on
//! grey images); pixels that the affine map brings from outside the image take the nearest edge
//! value (the original pads by half the side with the edge and fills zeros beyond).

use crate::error::Result;
use candle_core::Tensor;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

/// Augment every image of `x` (N, C, H, W) independently.
pub fn tta_transform(x: &Tensor, hflip: bool, rng: &mut ChaCha8Rng) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let src = x.flatten_all()?.to_vec1::<f32>()?;
    let mut out = vec![0f32; src.len()];
    let plane = h * w;
    for i in 0..n {
        let img = &src[i * c * plane..(i + 1) * c * plane];
        let dst = &mut out[i * c * plane..(i + 1) * c * plane];
        augment_one(img, dst, c, h, w, hflip, rng);
    }
    Ok(Tensor::from_vec(out, (n, c, h, w), x.device())?)
}

fn augment_one(
    img: &[f32],
    dst: &mut [f32],
    c: usize,
    h: usize,
    w: usize,
    hflip: bool,
    rng: &mut ChaCha8Rng,
) {
    let plane = h * w;
    let brightness = rng.gen_range(0.6f32..1.4);
    let contrast = rng.gen_range(0.7f32..1.3);
    let gamma = rng.gen_range(0.7f32..1.3);
    let angle = rng.gen_range(-15f64..15.0).to_radians();
    let max_dx = (w as f64 / 16.0).round();
    let max_dy = (h as f64 / 16.0).round();
    let tx = rng.gen_range(-max_dx..=max_dx).round();
    let ty = rng.gen_range(-max_dy..=max_dy).round();
    let scale = rng.gen_range(0.9f64..1.1);
    let sigma = rng.gen_range(0.001f64..0.5);
    let flip = hflip && rng.gen_bool(0.5);

    // Colour: brightness, contrast (towards the mean of the image), gamma; clipped after each.
    let mut a: Vec<f32> = img
        .iter()
        .map(|v| (v.clamp(0.0, 1.0) * brightness).clamp(0.0, 1.0))
        .collect();
    let mean = a.iter().sum::<f32>() / a.len() as f32;
    for v in a.iter_mut() {
        *v = (contrast * *v + (1.0 - contrast) * mean).clamp(0.0, 1.0);
        *v = v.powf(gamma);
    }

    // Affine: output pixel p comes from the inverse map around the centre.
    let (cx, cy) = ((w as f64 - 1.0) / 2.0, (h as f64 - 1.0) / 2.0);
    let (cos, sin) = (angle.cos() / scale, angle.sin() / scale);
    let mut b = vec![0f32; a.len()];
    for ch in 0..c {
        let p = &a[ch * plane..(ch + 1) * plane];
        for y in 0..h {
            for x in 0..w {
                let (dx, dy) = (x as f64 - cx - tx, y as f64 - cy - ty);
                let sx = (cos * dx + sin * dy + cx).clamp(0.0, w as f64 - 1.0);
                let sy = (-sin * dx + cos * dy + cy).clamp(0.0, h as f64 - 1.0);
                let (x0, y0) = (sx.floor() as usize, sy.floor() as usize);
                let (x1, y1) = ((x0 + 1).min(w - 1), (y0 + 1).min(h - 1));
                let (fx, fy) = ((sx - x0 as f64) as f32, (sy - y0 as f64) as f32);
                let top = p[y0 * w + x0] * (1.0 - fx) + p[y0 * w + x1] * fx;
                let bot = p[y1 * w + x0] * (1.0 - fx) + p[y1 * w + x1] * fx;
                b[ch * plane + y * w + x] = top * (1.0 - fy) + bot * fy;
            }
        }
    }

    // Separable 5×5 Gaussian blur, reflect padding (as torchvision).
    let k: Vec<f32> = {
        let raw: Vec<f64> = (-2..=2)
            .map(|i| (-(i as f64).powi(2) / (2.0 * sigma * sigma)).exp())
            .collect();
        let s: f64 = raw.iter().sum();
        raw.iter().map(|v| (v / s) as f32).collect()
    };
    let reflect = |i: isize, n: usize| -> usize {
        let n = n as isize;
        let mut i = i;
        if i < 0 {
            i = -i;
        }
        if i >= n {
            i = 2 * (n - 1) - i;
        }
        i.clamp(0, n - 1) as usize
    };
    let mut t = vec![0f32; a.len()];
    for ch in 0..c {
        for y in 0..h {
            for x in 0..w {
                let mut s = 0f32;
                for (j, kv) in k.iter().enumerate() {
                    let xx = reflect(x as isize + j as isize - 2, w);
                    s += kv * b[ch * plane + y * w + xx];
                }
                t[ch * plane + y * w + x] = s;
            }
        }
    }
    for ch in 0..c {
        for y in 0..h {
            for x in 0..w {
                let mut s = 0f32;
                for (j, kv) in k.iter().enumerate() {
                    let yy = reflect(y as isize + j as isize - 2, h);
                    s += kv * t[ch * plane + yy * w + x];
                }
                let xo = if flip { w - 1 - x } else { x };
                let noise: f64 = StandardNormal.sample(rng);
                dst[ch * plane + y * w + xo] = (s + 0.005 * noise as f32).clamp(0.0, 1.0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn augmentations_are_seeded_in_range_and_close_to_the_image() {
        let x = crate::ops::test_util::randn(&[3, 1, 16, 16], 1)
            .affine(0.2, 0.5)
            .unwrap()
            .clamp(0.0, 1.0)
            .unwrap();
        let a = tta_transform(&x, true, &mut crate::rng::rng(3, "t")).unwrap();
        let b = tta_transform(&x, true, &mut crate::rng::rng(3, "t")).unwrap();
        let c = tta_transform(&x, true, &mut crate::rng::rng(4, "t")).unwrap();
        let (a, b, c) = (
            a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            b.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            c.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        );
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(a.iter().all(|v| (0.0..=1.0).contains(v)));
        // A constant image stays nearly constant (brightness, contrast and gamma move it, the
        // geometry does not).
        let flat = Tensor::full(0.5f32, (1, 1, 8, 8), &candle_core::Device::Cpu).unwrap();
        let f = tta_transform(&flat, true, &mut crate::rng::rng(0, "t"))
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let spread =
            f.iter().cloned().fold(f32::MIN, f32::max) - f.iter().cloned().fold(f32::MAX, f32::min);
        assert!(spread < 0.05, "spread {spread}");
    }
}
