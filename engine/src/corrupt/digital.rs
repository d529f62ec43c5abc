//! Digital corruptions: brightness, contrast, elastic_transform, pixelate, jpeg_compression
//! (reference §2 table, §2.1), on one channel (§2.3, gray variants of §3).

use rand::Rng;

use super::primitives::{
    affine_from_points, from_unit_trunc, gaussian_filter, map_coordinates_reflect, pil_box_resize,
    to_unit, unit_to_u8, warp_affine_reflect101, Border,
};
use crate::{EngineError, Result};

/// `+V` in HSV per severity (§2 table).
pub(crate) const BRIGHTNESS: [f64; 5] = [0.05, 0.1, 0.15, 0.2, 0.3];
/// Contrast factor per severity (§2 table).
pub(crate) const CONTRAST: [f64; 5] = [0.75, 0.5, 0.4, 0.3, 0.15];
/// (α, σ, affine jitter) per severity as fractions of the image size (the table's values / 32).
pub(crate) const ELASTIC: [(f64, f64, f64); 5] = [
    (0.0, 0.0, 0.08),
    (0.05, 0.2, 0.07),
    (0.08, 0.06, 0.06),
    (0.1, 0.04, 0.05),
    (0.1, 0.03, 0.03),
];
/// Pixelate factor `c` per severity; the intermediate size is `int(side·c)` (§2 table).
pub(crate) const PIXELATE: [f64; 5] = [0.95, 0.9, 0.85, 0.75, 0.65];
/// JPEG quality per severity (§2 table).
pub(crate) const JPEG_QUALITY: [u8; 5] = [80, 65, 58, 50, 40];

/// brightness (§2.1 with the gray closed form of §1.3/§3): a gray pixel has `S = 0`, `V = x`, so
/// HSV `V + c` is `min(x + c, 1)`. No deviation.
pub(crate) fn brightness(img: &[u8], sev: usize) -> Vec<u8> {
    let c = BRIGHTNESS[sev];
    img.iter()
        .map(|&v| unit_to_u8((f64::from(v) / 255.0 + c).min(1.0)))
        .collect()
}

/// contrast (§2.1): `(x − μ)·c + μ` with `μ` the image mean; clip. No deviation.
pub(crate) fn contrast(img: &[u8], sev: usize) -> Vec<u8> {
    let c = CONTRAST[sev];
    let x = to_unit(img);
    let mean = x.iter().sum::<f64>() / x.len() as f64;
    x.iter()
        .map(|&v| unit_to_u8((v - mean) * c + mean))
        .collect()
}

/// The elastic parameters `(α, σ, jitter)` for an image whose smaller side is `side`: the CIFAR
/// table's `IMSIZE·(…)` with `IMSIZE = side` (so for 28×28 the 32-pixel values scaled by 28/32).
pub(crate) fn elastic_params(side: usize, sev: usize) -> (f64, f64, f64) {
    let s = side as f64;
    let (a, g, j) = ELASTIC[sev];
    (s * a, s * g, s * j)
}

/// elastic_transform (§2.1):
/// 1. affine jitter: `p1 = [(c+q, c+q), (c+q, c−q), (c−q, c−q)]` in (x, y) with `c = side//2`,
///    `q = side//3`; `p2 = p1 + U(−j, j)` per coordinate; `warpAffine(getAffineTransform(p1, p2))`,
///    bilinear, REFLECT_101;
/// 2. `dx = α·G_reflect(U(−1,1); σ, truncate 3)`, then `dy` from an independent draw;
/// 3. bilinear resample at `(row + dy, col + dx)` with scipy `map_coordinates(order=1,
///    mode='reflect')`; clip.
///
/// `IMSIZE` is the image size (α, σ, jitter = table/32·28 for 28×28, §2.3). For severity 1
/// (α = 0) the displacement draws are skipped since the field is identically zero. Deviations:
/// f64 instead of float32; OpenCV's 1/32-pixel position quantisation is reproduced by rounding
/// (its fixed-point path can differ by one 1/32 step in rare ties); map_coordinates' 'reflect'
/// is applied to the neighbour indices (the SciPy ≥ 1.6 behaviour; older SciPy differed slightly
/// at fractional out-of-range coordinates, §2.1).
pub(crate) fn elastic_transform<R: Rng + ?Sized>(
    img: &[u8],
    width: usize,
    height: usize,
    sev: usize,
    rng: &mut R,
) -> Vec<u8> {
    let (alpha, sigma, jitter) = elastic_params(width.min(height), sev);
    elastic_with(img, width, height, alpha, sigma, jitter, rng)
}

/// [`elastic_transform`] with explicit `(α, σ, jitter)` in pixels.
pub(crate) fn elastic_with<R: Rng + ?Sized>(
    img: &[u8],
    width: usize,
    height: usize,
    alpha: f64,
    sigma: f64,
    jitter: f64,
    rng: &mut R,
) -> Vec<u8> {
    let x = to_unit(img);
    // 1. affine
    let cx = (width / 2) as f64;
    let cy = (height / 2) as f64;
    let q = (width.min(height) / 3) as f64;
    let p1 = [[cx + q, cy + q], [cx + q, cy - q], [cx - q, cy - q]];
    let mut p2 = p1;
    if jitter > 0.0 {
        for p in p2.iter_mut() {
            for v in p.iter_mut() {
                *v += rng.gen_range(-jitter..jitter);
            }
        }
    }
    // A degenerate draw (p2 collinear) is measure-zero; fall back to the unwarped image then.
    let warped = affine_from_points(&p1, &p2)
        .and_then(|m| warp_affine_reflect101(&x, width, height, &m))
        .unwrap_or_else(|| x.clone());
    if alpha == 0.0 {
        return from_unit_trunc(&warped);
    }
    // 2. displacement fields
    let n = width * height;
    let field = |rng: &mut R| {
        let u: Vec<f64> = (0..n).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let mut g = gaussian_filter(&u, width, height, sigma, 3.0, Border::Reflect);
        g.iter_mut().for_each(|v| *v *= alpha);
        g
    };
    let dx = field(rng);
    let dy = field(rng);
    // 3. resample
    from_unit_trunc(&map_coordinates_reflect(&warped, width, height, &dy, &dx))
}

/// The intermediate pixelate size for one side: `int(side·c)`, at least 1.
pub(crate) fn pixelate_size(side: usize, sev: usize) -> usize {
    ((side as f64 * PIXELATE[sev]) as usize).max(1)
}

/// pixelate (§2.1): Pillow BOX resize to `int(side·c)` then BOX back to the original size (which
/// is nearest-neighbour upsampling), 8-bit fixed point like Pillow (§1.3). For 28×28 the sizes are
/// 26, 25, 23, 21, 18. No deviation.
pub(crate) fn pixelate(img: &[u8], width: usize, height: usize, sev: usize) -> Vec<u8> {
    let nw = pixelate_size(width, sev);
    let nh = pixelate_size(height, sev);
    let small = pil_box_resize(img, width, height, nw, nh);
    pil_box_resize(&small, nw, nh, width, height)
}

/// jpeg_compression (§2.1): a real baseline JPEG encode at quality `q` then decode, with the
/// `jpeg-encoder` crate (IJG Annex-K luminance table scaled by quality exactly like libjpeg) and
/// the `jpeg-decoder` crate. Deviations: a gray image is encoded as a one-component (grayscale)
/// JPEG, which is what Pillow does for an 'L' image, so there is no 4:2:0 chroma step; the
/// encoder's integer DCT and the decoder's IDCT are not bit-identical to libjpeg's ISLOW, so
/// individual pixels can differ by about ±1.
pub(crate) fn jpeg_compression(
    img: &[u8],
    width: usize,
    height: usize,
    sev: usize,
) -> Result<Vec<u8>> {
    let q = JPEG_QUALITY[sev];
    let (w16, h16) = match (u16::try_from(width), u16::try_from(height)) {
        (Ok(w), Ok(h)) => (w, h),
        _ => {
            return Err(EngineError::InvalidSpec(format!(
                "jpeg_compression needs width and height ≤ 65535, got {width}×{height}"
            )))
        }
    };
    let mut buf = Vec::with_capacity(1024);
    jpeg_encoder::Encoder::new(&mut buf, q)
        .encode(img, w16, h16, jpeg_encoder::ColorType::Luma)
        .map_err(|e| EngineError::InvalidSpec(format!("jpeg_compression: encoding failed: {e}")))?;
    let mut dec = jpeg_decoder::Decoder::new(buf.as_slice());
    let pixels = dec
        .decode()
        .map_err(|e| EngineError::InvalidSpec(format!("jpeg_compression: decoding failed: {e}")))?;
    let info = dec.info();
    let ok = matches!(
        info,
        Some(i) if i.pixel_format == jpeg_decoder::PixelFormat::L8
            && usize::from(i.width) == width
            && usize::from(i.height) == height
    );
    if !ok || pixels.len() != img.len() {
        return Err(EngineError::InvalidSpec(format!(
            "jpeg_compression: the round trip of a {width}×{height} gray image decoded to {:?} \
             with {} bytes, expected an 8-bit gray image of {} bytes",
            info.map(|i| (i.width, i.height, i.pixel_format)),
            pixels.len(),
            img.len()
        )));
    }
    Ok(pixels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pixelate_sizes_for_28() {
        let s: Vec<usize> = (0..5).map(|i| pixelate_size(28, i)).collect();
        assert_eq!(s, vec![26, 25, 23, 21, 18]);
        let s: Vec<usize> = (0..5).map(|i| pixelate_size(32, i)).collect();
        assert_eq!(s, vec![30, 28, 27, 24, 20]); // the table's int(32c)
    }

    #[test]
    fn elastic_params_scale_the_32_table() {
        let (a, s, j) = elastic_params(32, 2);
        assert!((a - 2.56).abs() < 1e-12 && (s - 1.92).abs() < 1e-12 && (j - 1.92).abs() < 1e-12);
        let (a, s, j) = elastic_params(28, 4);
        assert!((a - 3.2 * 28.0 / 32.0).abs() < 1e-12);
        assert!((s - 0.96 * 28.0 / 32.0).abs() < 1e-12);
        assert!((j - 0.96 * 28.0 / 32.0).abs() < 1e-12);
    }

    #[test]
    fn elastic_components_grow_as_the_table_says() {
        // The CIFAR table shrinks the affine jitter with severity (2.56 → 0.96 px at 32) while it
        // grows the displacement field (α up, σ down), so the full transform's PSNR is not
        // monotone in severity; each component on its own is.
        use rand::SeedableRng;
        let img: Vec<u8> = (0..28 * 28)
            .map(|i| {
                let (x, y) = ((i % 28) as f64 - 13.5, (i / 28) as f64 - 13.5);
                let r = (x * x + y * y).sqrt();
                (255.0 * (1.0 - (r - 8.0).abs() / 2.5).clamp(0.0, 1.0)) as u8
            })
            .collect();
        let mean_psnr = |alpha: f64, sigma: f64, jitter: f64| {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
            (0..40)
                .map(|_| {
                    let o = elastic_with(&img, 28, 28, alpha, sigma, jitter, &mut rng);
                    crate::corrupt::psnr(&img, &o).min(100.0)
                })
                .sum::<f64>()
                / 40.0
        };
        let affine: Vec<f64> = (0..5)
            .map(|s| {
                let (_, _, j) = elastic_params(28, s);
                mean_psnr(0.0, 0.0, j)
            })
            .collect();
        let field: Vec<f64> = (1..5)
            .map(|s| {
                let (a, g, _) = elastic_params(28, s);
                mean_psnr(a, g, 0.0)
            })
            .collect();
        for w in affine.windows(2) {
            assert!(
                w[0] < w[1],
                "affine-only PSNR should rise with severity: {affine:?}"
            );
        }
        for w in field.windows(2) {
            assert!(
                w[0] > w[1],
                "field-only PSNR should fall with severity: {field:?}"
            );
        }
    }

    #[test]
    fn brightness_known_pixel() {
        // severity 5: trunc((100/255 + 0.3)·255) = trunc(176.5) = 176
        let expected = ((100.0f64 / 255.0 + 0.3) * 255.0) as u8;
        assert_eq!(expected, 176);
        assert_eq!(brightness(&[100, 0, 255, 250], 4), vec![176, 76, 255, 255]);
    }

    #[test]
    fn contrast_keeps_the_mean_pixel() {
        // mean of [0, 100, 200] is 100: it stays 100; the others move toward it by factor c
        let out = contrast(&[0, 100, 200], 1); // c = 0.5
        assert_eq!(out, vec![50, 100, 150]);
    }

    #[test]
    fn jpeg_round_trip_is_close_and_lossy() {
        let img: Vec<u8> = (0..28 * 28)
            .map(|i| (((i % 28) * 9 + (i / 28) * 3) % 256) as u8)
            .collect();
        let hi = jpeg_compression(&img, 28, 28, 0).expect("jpeg q80");
        let lo = jpeg_compression(&img, 28, 28, 4).expect("jpeg q40");
        assert_eq!(hi.len(), img.len());
        assert_ne!(hi, img);
        let p_hi = crate::corrupt::psnr(&img, &hi);
        let p_lo = crate::corrupt::psnr(&img, &lo);
        assert!(p_hi > 25.0 && p_hi > p_lo, "psnr q80 {p_hi}, q40 {p_lo}");
    }
}
