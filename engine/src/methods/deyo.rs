//! DeYO (Lee et al., ICLR 2024), following the official code:
//!
//! 1. forward with batch statistics; keep samples with entropy H < margin · ln C;
//! 2. x′ = each kept image with its patch_len × patch_len grid of patches randomly permuted
//!    (a seeded permutation per image); a second forward on the kept x′ (no gradient);
//! 3. PLPD = p(ŷ | x) − p(ŷ | x′) for the first pass's prediction ŷ; keep PLPD > plpd_threshold;
//! 4. loss = mean over kept of w·H with w = exp(−(H − margin_e0 · ln C)) + exp(PLPD) (each term
//!    switched by reweight_ent / reweight_plpd); no step when nothing is kept.
//!
//! When the side is not a multiple of patch_len the original resizes the image to the nearest
//! multiple and back; here the trailing rows/columns stay in place instead (28 and 32 pixel
//! images divide by the default 4, so the two agree there).

use super::filters::{self, ln_classes, Crowds, Scores};
use super::tent::AffineLearner;
use super::{host, need_batch, BatchOutput, Method, MethodSpec};
use crate::error::Result;
use crate::losses;
use crate::models::Model;
use crate::nn::BnMode;
use candle_core::Tensor;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

pub struct Deyo {
    core: AffineLearner,
    e_filter: f64,
    e0: f64,
    plpd_threshold: f64,
    patch_len: usize,
    reweight_ent: bool,
    reweight_plpd: bool,
    crowds: Option<Crowds>,
    seed: u64,
    rng: ChaCha8Rng,
    /// Permutations to use instead of random ones (reference tests against PyTorch).
    fixed_perms: Option<Vec<Vec<usize>>>,
}

impl Deyo {
    pub fn new(model: Model, spec: &MethodSpec, crowds: Option<Crowds>, seed: u64) -> Result<Self> {
        let MethodSpec::Deyo {
            optimizer,
            margin,
            margin_e0,
            plpd_threshold,
            patch_len,
            reweight_ent,
            reweight_plpd,
            ..
        } = spec
        else {
            unreachable!("Deyo::new with {spec:?}")
        };
        let core = AffineLearner::new(model, optimizer.clone(), "deyo")?;
        let lnc = ln_classes(core.model.info().num_classes);
        Ok(Self {
            core,
            e_filter: margin * lnc,
            e0: margin_e0 * lnc,
            plpd_threshold: *plpd_threshold,
            patch_len: *patch_len,
            reweight_ent: *reweight_ent,
            reweight_plpd: *reweight_plpd,
            crowds,
            seed,
            rng: crate::rng::rng(seed, "deyo/patches"),
            fixed_perms: None,
        })
    }
}

/// One random permutation of the `grid × grid` patches per image.
fn random_perms(n: usize, grid: usize, rng: &mut ChaCha8Rng) -> Vec<Vec<usize>> {
    (0..n)
        .map(|_| {
            let mut p: Vec<usize> = (0..grid * grid).collect();
            p.shuffle(rng);
            p
        })
        .collect()
}

/// Rearrange the `grid × grid` patches of every image of `x` (N, C, H, W): output patch k of
/// image i is input patch `perms[i][k]` (patches numbered row by row).
pub(crate) fn shuffle_patches(x: &Tensor, grid: usize, perms: &[Vec<usize>]) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let (ph, pw) = (h / grid, w / grid);
    let src = x.flatten_all()?.to_vec1::<f32>()?;
    let mut dst = src.clone();
    for (i, perm) in perms.iter().enumerate().take(n) {
        // Output patch k holds input patch perm[k] (as x_prime[b, perm_idx] in the original).
        for (k, &from) in perm.iter().enumerate() {
            let (ky, kx) = (k / grid, k % grid);
            let (fy, fx) = (from / grid, from % grid);
            for ch in 0..c {
                let base = (i * c + ch) * h * w;
                for dy in 0..ph {
                    let so = base + (fy * ph + dy) * w + fx * pw;
                    let d = base + (ky * ph + dy) * w + kx * pw;
                    dst[d..d + pw].copy_from_slice(&src[so..so + pw]);
                }
            }
        }
    }
    Ok(Tensor::from_vec(dst, (n, c, h, w), x.device())?)
}

#[cfg(test)]
impl Deyo {
    pub fn set_fixed_perms(&mut self, perms: Vec<Vec<usize>>) {
        self.fixed_perms = Some(perms);
    }
}

impl Method for Deyo {
    fn adapt_and_predict(&mut self, x: &Tensor) -> Result<BatchOutput> {
        need_batch("deyo", x)?;
        let logits = self.core.model.forward(x, BnMode::Batch)?;
        let out = host(&logits)?;
        let sc = Scores::of(&logits)?;
        let mut keep: Vec<bool> = sc
            .entropy
            .iter()
            .map(|&h| (h as f64) < self.e_filter)
            .collect();
        if let Some(cr) = &self.crowds {
            cr.apply(x, &sc, &mut keep)?;
        }
        let kept: Vec<u32> = (0..keep.len() as u32)
            .filter(|&i| keep[i as usize])
            .collect();
        if kept.is_empty() {
            self.core.counters.empty_batches += 1;
            return Ok(BatchOutput {
                logits: out,
                skipped_update: false,
            });
        }
        let idx = Tensor::new(kept.as_slice(), x.device())?;
        let perms = match &self.fixed_perms {
            Some(p) => p.clone(),
            None => random_perms(kept.len(), self.patch_len, &mut self.rng),
        };
        let xp = shuffle_patches(&x.index_select(&idx, 0)?, self.patch_len, &perms)?;
        let scp = Scores::of(&self.core.model.forward(&xp, BnMode::Batch)?.detach())?;
        let mut weights = vec![1f32; keep.len()];
        for (j, &i) in kept.iter().enumerate() {
            let i = i as usize;
            let (cls, p) = sc.top(i);
            let plpd = (p - scp.row(j)[cls]) as f64;
            if plpd <= self.plpd_threshold || plpd.is_nan() {
                keep[i] = false;
                continue;
            }
            if self.reweight_ent || self.reweight_plpd {
                let h = sc.entropy[i] as f64;
                let mut w = 0.0;
                if self.reweight_ent {
                    w += (-(h - self.e0)).exp();
                }
                if self.reweight_plpd {
                    w += plpd.exp();
                }
                weights[i] = w as f32;
            }
        }
        let mut skipped = false;
        match filters::masked_mean(&losses::entropy(&logits)?, &keep, Some(&weights))? {
            None => self.core.counters.empty_batches += 1,
            Some(loss) => {
                self.core.counters.samples_used += keep.iter().filter(|&&k| k).count() as u64;
                skipped = self.core.step(&loss)?;
            }
        }
        Ok(BatchOutput {
            logits: out,
            skipped_update: skipped,
        })
    }

    fn predict(&mut self, x: &Tensor) -> Result<Vec<f32>> {
        need_batch("deyo", x)?;
        host(&self.core.model.forward(x, BnMode::Batch)?)
    }

    fn reset(&mut self) -> Result<()> {
        self.rng = crate::rng::rng(self.seed, "deyo/patches");
        self.core.reset()
    }

    delegate_to_core!();
}
