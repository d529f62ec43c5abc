//! Noise corruptions: gaussian_noise, shot_noise, impulse_noise (reference §2 table, §2.1).
//!
//! All three work in f64 on `x = img / 255`, clip to `[0, 1]`, scale by 255 and truncate, as
//! make_cifar_c.py's `np.uint8(np.clip(...) * 255)`. On a gray image the "per pixel per channel"
//! draws of the RGB original become one draw per pixel.

use rand::Rng;
use rand_distr::{Distribution, Poisson, StandardNormal};

use super::primitives::unit_to_u8;

/// σ of the additive Gaussian per severity (§2 table).
pub(crate) const GAUSSIAN_SIGMA: [f64; 5] = [0.04, 0.06, 0.08, 0.09, 0.10];
/// Shot-noise photon count scale `c` per severity (§2 table).
pub(crate) const SHOT_C: [f64; 5] = [500.0, 250.0, 100.0, 75.0, 50.0];
/// Salt-and-pepper amount per severity (§2 table).
pub(crate) const IMPULSE_AMOUNT: [f64; 5] = [0.01, 0.02, 0.03, 0.05, 0.07];

/// gaussian_noise (§2.1): `clip(x + N(0, σ), 0, 1)`, one i.i.d. draw per pixel. No deviation.
pub(crate) fn gaussian_noise<R: Rng + ?Sized>(img: &[u8], sev: usize, rng: &mut R) -> Vec<u8> {
    let sigma = GAUSSIAN_SIGMA[sev];
    img.iter()
        .map(|&v| {
            let z: f64 = StandardNormal.sample(rng);
            unit_to_u8(f64::from(v) / 255.0 + sigma * z)
        })
        .collect()
}

/// shot_noise (§2.1): `clip(Poisson(x·c) / c, 0, 1)`. A zero rate gives exactly 0 (numpy's
/// `poisson(0) == 0`; rand_distr rejects λ = 0, so it is special-cased). No deviation.
pub(crate) fn shot_noise<R: Rng + ?Sized>(img: &[u8], sev: usize, rng: &mut R) -> Vec<u8> {
    let c = SHOT_C[sev];
    img.iter()
        .map(|&v| {
            let lambda = f64::from(v) / 255.0 * c;
            let k = match Poisson::new(lambda) {
                Ok(p) => p.sample(rng),
                // λ = 0 (black pixel): the Poisson draw is 0
                Err(_) => 0.0,
            };
            unit_to_u8(k / c)
        })
        .collect()
}

/// impulse_noise (§2.1, skimage `random_noise(mode='s&p')`): each pixel is flipped with
/// probability `amount`; a flipped pixel becomes 1 (salt) or 0 (pepper) with probability 1/2.
/// skimage draws the whole flip mask then the whole salt mask; here both draws are made per pixel
/// in scan order, which has the same distribution. No other deviation.
pub(crate) fn impulse_noise<R: Rng + ?Sized>(img: &[u8], sev: usize, rng: &mut R) -> Vec<u8> {
    let p = IMPULSE_AMOUNT[sev];
    img.iter()
        .map(|&v| {
            let flipped = rng.gen::<f64>() < p;
            let salt = rng.gen::<f64>() < 0.5;
            let x = if flipped {
                if salt {
                    1.0
                } else {
                    0.0
                }
            } else {
                f64::from(v) / 255.0
            };
            unit_to_u8(x)
        })
        .collect()
}
