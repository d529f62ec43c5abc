//! The 15 CIFAR-10-C corruptions (Hendrycks & Dietterich, 2019) for single-channel images,
//! re-implemented from `reference/corruptions.md` (§1.3 primitives, §2 parameters per severity,
//! §2.1 algorithms, adapted to 1-channel 28×28 per §2.3 with the gray variants of §3).
//!
//! * Every corruption works in f64 on `x = img / 255` and ends with `np.uint8(clip(x)·255)`,
//!   i.e. truncation (§1.1), except motion blur (ImageMagick rounds), pixelate (Pillow fixed
//!   point) and JPEG (a codec).
//! * Where the original hard-codes 32, the image size is used (glass-blur loop bounds, snow layer,
//!   frost crop, elastic `IMSIZE`, pixelate `int(side·c)`); fog uses a 32×32 plasma map cropped to
//!   the image.
//! * Randomness: each image gets its own [`ChaCha8Rng`] seeded from `(seed, corruption,
//!   severity, index)` through a splitmix64 chain, so results do not depend on batch size,
//!   thread count or order. The original sets no seed at all (§1.1), so only the distribution can
//!   match the published arrays, never the bytes.
//! * Deviations from the reference are listed in each function's doc comment; the notable ones
//!   are frost's procedural texture (`weather.rs`) and the JPEG codec (`digital.rs`).

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::{EngineError, Result};

mod blur;
mod digital;
mod noise;
pub(crate) mod primitives;
mod weather;

/// One of the 15 benchmark corruptions of CIFAR-10-C, in the Hendrycks order.
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Corruption {
    GaussianNoise,
    ShotNoise,
    ImpulseNoise,
    DefocusBlur,
    GlassBlur,
    MotionBlur,
    ZoomBlur,
    Snow,
    Frost,
    Fog,
    Brightness,
    Contrast,
    ElasticTransform,
    Pixelate,
    JpegCompression,
}

impl Corruption {
    /// All 15, in the Hendrycks order (the order of `CORRUPTION.TYPE` in the TTA libraries).
    pub const ALL: [Corruption; 15] = [
        Corruption::GaussianNoise,
        Corruption::ShotNoise,
        Corruption::ImpulseNoise,
        Corruption::DefocusBlur,
        Corruption::GlassBlur,
        Corruption::MotionBlur,
        Corruption::ZoomBlur,
        Corruption::Snow,
        Corruption::Frost,
        Corruption::Fog,
        Corruption::Brightness,
        Corruption::Contrast,
        Corruption::ElasticTransform,
        Corruption::Pixelate,
        Corruption::JpegCompression,
    ];

    /// The CIFAR-10-C file stem, e.g. `"gaussian_noise"` (also the serde name).
    pub fn name(self) -> &'static str {
        match self {
            Corruption::GaussianNoise => "gaussian_noise",
            Corruption::ShotNoise => "shot_noise",
            Corruption::ImpulseNoise => "impulse_noise",
            Corruption::DefocusBlur => "defocus_blur",
            Corruption::GlassBlur => "glass_blur",
            Corruption::MotionBlur => "motion_blur",
            Corruption::ZoomBlur => "zoom_blur",
            Corruption::Snow => "snow",
            Corruption::Frost => "frost",
            Corruption::Fog => "fog",
            Corruption::Brightness => "brightness",
            Corruption::Contrast => "contrast",
            Corruption::ElasticTransform => "elastic_transform",
            Corruption::Pixelate => "pixelate",
            Corruption::JpegCompression => "jpeg_compression",
        }
    }

    /// Parses a name as written by [`Corruption::name`]. An unknown name is
    /// [`EngineError::UnknownName`] listing the 15 valid names.
    pub fn parse(s: &str) -> Result<Corruption> {
        Corruption::ALL
            .iter()
            .copied()
            .find(|c| c.name() == s)
            .ok_or_else(|| {
                EngineError::unknown("corruption", s, Corruption::ALL.iter().map(|c| c.name()))
            })
    }

    /// Whether the corruption draws random numbers (the others are pure functions of the image).
    pub fn is_random(self) -> bool {
        !matches!(
            self,
            Corruption::DefocusBlur
                | Corruption::ZoomBlur
                | Corruption::Brightness
                | Corruption::Contrast
                | Corruption::Pixelate
                | Corruption::JpegCompression
        )
    }
}

impl std::fmt::Display for Corruption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Corruption {
    type Err = EngineError;

    fn from_str(s: &str) -> Result<Self> {
        Corruption::parse(s)
    }
}

/// The per-image RNG seed: a splitmix64 chain over `(seed, corruption, severity, index)`.
fn image_seed(seed: u64, c: Corruption, severity: u8, index: u64) -> u64 {
    use crate::rng::mix64;
    let mut h = mix64(seed);
    h = mix64(h ^ (c as u64));
    h = mix64(h ^ u64::from(severity));
    mix64(h ^ index)
}

/// Checks severity and size; `single` is one image (`len == width·height`), else a batch
/// (`len` a multiple of `width·height`). Returns `width·height`.
fn check_args(
    len: usize,
    width: usize,
    height: usize,
    severity: u8,
    single: bool,
) -> Result<usize> {
    if !(1..=5).contains(&severity) {
        return Err(EngineError::InvalidSpec(format!(
            "corruption severity must be 1..=5, got {severity}"
        )));
    }
    if width < 8 || height < 8 {
        return Err(EngineError::InvalidSpec(format!(
            "corruptions need images of at least 8×8 pixels, got {width}×{height}"
        )));
    }
    let px = width.checked_mul(height).ok_or_else(|| {
        EngineError::InvalidSpec(format!("image size {width}×{height} overflows"))
    })?;
    if single && len != px {
        return Err(EngineError::InvalidSpec(format!(
            "image buffer of {len} bytes does not match a {width}×{height} gray image \
             (expected {px} bytes)"
        )));
    }
    if !single && len.checked_rem(px) != Some(0) {
        return Err(EngineError::InvalidSpec(format!(
            "batch buffer of {len} bytes is not a whole number of {width}×{height} gray images \
             (expected a multiple of {px} bytes)"
        )));
    }
    Ok(px)
}

/// Corrupts one image whose arguments were already checked.
fn apply(
    img: &[u8],
    width: usize,
    height: usize,
    c: Corruption,
    severity: u8,
    seed: u64,
    index: u64,
) -> Result<Vec<u8>> {
    let sev = usize::from(severity - 1);
    let mut rng = ChaCha8Rng::seed_from_u64(image_seed(seed, c, severity, index));
    let r = &mut rng;
    Ok(match c {
        Corruption::GaussianNoise => noise::gaussian_noise(img, sev, r),
        Corruption::ShotNoise => noise::shot_noise(img, sev, r),
        Corruption::ImpulseNoise => noise::impulse_noise(img, sev, r),
        Corruption::DefocusBlur => blur::defocus_blur(img, width, height, sev),
        Corruption::GlassBlur => blur::glass_blur(img, width, height, sev, r),
        Corruption::MotionBlur => blur::motion_blur(img, width, height, sev, r),
        Corruption::ZoomBlur => blur::zoom_blur(img, width, height, sev),
        Corruption::Snow => weather::snow(img, width, height, sev, r),
        Corruption::Frost => weather::frost(img, width, height, sev, r),
        Corruption::Fog => weather::fog(img, width, height, sev, r),
        Corruption::Brightness => digital::brightness(img, sev),
        Corruption::Contrast => digital::contrast(img, sev),
        Corruption::ElasticTransform => digital::elastic_transform(img, width, height, sev, r),
        Corruption::Pixelate => digital::pixelate(img, width, height, sev),
        Corruption::JpegCompression => digital::jpeg_compression(img, width, height, sev)?,
    })
}

/// Corrupts one `width × height` (row-major, one byte per pixel) grayscale image.
///
/// Deterministic for `(seed, c, severity, index)`. `severity` must be 1..=5 and both sides at
/// least 8 (else [`EngineError::InvalidSpec`]); `img.len()` must be `width * height`. 28×28 is the
/// tested case.
pub fn corrupt_image(
    img: &[u8],
    width: usize,
    height: usize,
    c: Corruption,
    severity: u8,
    seed: u64,
    index: u64,
) -> Result<Vec<u8>> {
    check_args(img.len(), width, height, severity, true)?;
    apply(img, width, height, c, severity, seed, index)
}

/// Corrupts `n` images stored back to back (`n * width * height` bytes) in parallel with rayon;
/// image `i` uses `index = first_index + i`, so the bytes equal those of calling
/// [`corrupt_image`] one by one.
pub fn corrupt_batch(
    images: &[u8],
    width: usize,
    height: usize,
    c: Corruption,
    severity: u8,
    seed: u64,
    first_index: u64,
) -> Result<Vec<u8>> {
    let px = check_args(images.len(), width, height, severity, false)?;
    let mut out = vec![0u8; images.len()];
    out.par_chunks_mut(px)
        .zip(images.par_chunks(px))
        .enumerate()
        .try_for_each(|(i, (dst, src))| {
            let v = apply(
                src,
                width,
                height,
                c,
                severity,
                seed,
                first_index.wrapping_add(i as u64),
            )?;
            dst.copy_from_slice(&v);
            Ok::<(), EngineError>(())
        })?;
    Ok(out)
}

/// Peak signal-to-noise ratio in dB between two u8 images of the same length:
/// `10·log10(255² / MSE)`; `+∞` for identical images.
///
/// # Panics
/// If the lengths differ or are zero (a caller bug, not a data condition).
pub fn psnr(a: &[u8], b: &[u8]) -> f64 {
    assert_eq!(a.len(), b.len(), "psnr of images of different sizes");
    assert!(!a.is_empty(), "psnr of empty images");
    let sse: f64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| {
            let d = f64::from(x) - f64::from(y);
            d * d
        })
        .sum();
    if sse == 0.0 {
        return f64::INFINITY;
    }
    let mse = sse / a.len() as f64;
    10.0 * (255.0f64 * 255.0 / mse).log10()
}

#[cfg(test)]
mod tests;
