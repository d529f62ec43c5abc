//! The "Core" variant of α-BN (You et al. 2021, "Test-time batch statistics calibration for
//! covariate shift"): BatchNorm normalizes with (1−α)·source + α·batch statistics (α-BN) and
//! the BN affine parameters are trained online with a pairwise class-correlation loss on the
//! batch's predictions.
//!
//! With P the (N × C) softmax probabilities of the batch, M = PᵀP is the class-correlation
//! matrix (M_ij sums the joint confidence in classes i and j over the batch). The loss pushes
//! each class's correlation mass onto itself:
//! `L = −(1/C) Σ_c log( M_cc / Σ_j M_cj )`. No code was published with the paper; this loss is
//! read from its description of "pairwise class correlation" optimization, so treat the exact
//! form as Attune's. One optimizer step per batch (Adam 1e-3); the prediction is the forward pass
//! before the step. α-BN's source statistics keep a single-sample batch well defined.

use super::tent::AffineLearner;
use super::{host, BatchOutput, Method};
use crate::error::Result;
use crate::losses;
use crate::models::Model;
use crate::nn::BnMode;
use crate::optim::OptimizerSpec;
use candle_core::Tensor;

pub struct Core {
    core: AffineLearner,
    alpha: f32,
}

impl Core {
    pub fn new(model: Model, alpha: f32, optimizer: OptimizerSpec) -> Result<Self> {
        Ok(Self {
            core: AffineLearner::new(model, optimizer, "norm_alpha+core")?,
            alpha,
        })
    }
}

/// −(1/C) Σ_c log( (PᵀP)_cc / Σ_j (PᵀP)_cj ) for logits (N, C).
pub(crate) fn core_loss(logits: &Tensor) -> Result<Tensor> {
    let c = logits.dim(1)?;
    let p = losses::softmax(logits)?;
    let m = p.t()?.matmul(&p)?; // (C, C)
    let eye = Tensor::eye(c, candle_core::DType::F32, logits.device())?;
    let diag = (&m * eye)?.sum(1)?;
    let rows = m.sum(1)?;
    Ok((diag.log()? - rows.log()?)?.mean_all()?.neg()?)
}

impl Method for Core {
    fn adapt_and_predict(&mut self, x: &Tensor) -> Result<BatchOutput> {
        let logits = self.core.model.forward(x, BnMode::Alpha(self.alpha))?;
        let out = host(&logits)?;
        self.core.counters.samples_used += x.dim(0)? as u64;
        let skipped = self.core.step(&core_loss(&logits)?)?;
        Ok(BatchOutput {
            logits: out,
            skipped_update: skipped,
        })
    }

    fn predict(&mut self, x: &Tensor) -> Result<Vec<f32>> {
        host(&self.core.model.forward(x, BnMode::Alpha(self.alpha))?)
    }

    fn reset(&mut self) -> Result<()> {
        self.core.reset()
    }

    delegate_to_core!();
}
