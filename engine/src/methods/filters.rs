//! Pieces shared by the entropy-minimizing methods (TENT, EATA, SAR, DeYO): per-sample
//! probabilities and entropies on the host, the "wisdom of crowds" filter, and a masked,
//! weighted mean loss that stays differentiable and never divides by zero.

use crate::error::Result;
use crate::losses;
use crate::models::Model;
use crate::nn::BnMode;
use candle_core::Tensor;

/// Softmax probabilities (row-major N × C) and entropies (N) of a batch of logits, on the host.
pub struct Scores {
    pub probs: Vec<f32>,
    pub entropy: Vec<f32>,
    pub classes: usize,
}

impl Scores {
    pub fn of(logits: &Tensor) -> Result<Self> {
        let (_, c) = logits.dims2()?;
        let lp = losses::log_softmax(&logits.detach())?;
        let probs = lp.exp()?;
        let entropy = (&probs * &lp)?.sum(1)?.neg()?.to_vec1::<f32>()?;
        Ok(Self {
            probs: probs.flatten_all()?.to_vec1::<f32>()?,
            entropy,
            classes: c,
        })
    }

    pub fn len(&self) -> usize {
        self.entropy.len()
    }

    pub fn row(&self, i: usize) -> &[f32] {
        &self.probs[i * self.classes..(i + 1) * self.classes]
    }

    /// (argmax, max probability) of sample `i`; the first maximum on ties, as torch.max.
    pub fn top(&self, i: usize) -> (usize, f32) {
        self.row(i)
            .iter()
            .enumerate()
            .fold(
                (0, f32::NEG_INFINITY),
                |b, (j, &p)| if p > b.1 { (j, p) } else { b },
            )
    }
}

/// "Wisdom of crowds" filter (Lee et al. 2024): a sample enters the loss only if the adapted
/// model is at least as confident in its prediction as the frozen source model is in its own.
pub struct Crowds {
    source: Model,
}

impl Crowds {
    pub fn new(source: Model) -> Self {
        source.store().set_trainable(|_| false);
        Self { source }
    }

    /// Clear `keep[i]` where the adapted model's max-probability is below the source's.
    pub fn apply(&self, x: &Tensor, adapted: &Scores, keep: &mut [bool]) -> Result<()> {
        let src = Scores::of(&self.source.forward(x, BnMode::Eval)?)?;
        for (i, k) in keep.iter_mut().enumerate() {
            if adapted.top(i).1 < src.top(i).1 {
                *k = false;
            }
        }
        Ok(())
    }
}

/// Σᵢ wᵢ·lᵢ / (number of kept samples): the mean over the kept samples of the weighted
/// per-sample loss `l` (N,). Returns None when nothing is kept (no step: mean(∅) is NaN).
pub fn masked_mean(l: &Tensor, keep: &[bool], weights: Option<&[f32]>) -> Result<Option<Tensor>> {
    let k = keep.iter().filter(|&&b| b).count();
    if k == 0 {
        return Ok(None);
    }
    let w: Vec<f32> = keep
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if b {
                weights.map_or(1.0, |w| w[i]) / k as f32
            } else {
                0.0
            }
        })
        .collect();
    let w = Tensor::from_vec(w, keep.len(), l.device())?;
    Ok(Some((l * w)?.sum_all()?))
}

/// ln C for a model with C classes: entropy margins are factors of it.
pub fn ln_classes(c: usize) -> f64 {
    (c as f64).ln()
}
