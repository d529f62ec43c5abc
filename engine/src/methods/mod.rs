//! Test-time adaptation methods behind one trait, registered by name.
//!
//! A method owns its copy of the model. For each test batch it may adapt (some parameters or
//! statistics) and returns its predictions for that batch; `reset` returns every piece of its
//! state (weights, statistics, optimizer moments, moving averages, counters) to the initial one.
//!
//! Hyperparameters keep the names and defaults of each method's official code (see
//! `reference/tta-methods.md`), except that entropy margins are written as factors of ln C and
//! computed from the model's class count (one benchmark's port hard-codes ln 1000, which never
//! fires on 10 classes).

/// The three `Method` accessors of every method that keeps its model and counters in a `core`
/// field (`tent::AffineLearner`, or a learner with the same members): written once, used inside
/// each `impl Method`.
macro_rules! delegate_to_core {
    () => {
        fn adapted_parameters(&self) -> Vec<String> {
            self.core.adapted_parameters()
        }

        fn counters(&self) -> $crate::methods::Counters {
            self.core.counters
        }

        fn model(&self) -> &$crate::models::Model {
            &self.core.model
        }
    };
}

mod adanpc;
mod augment;
mod cafa;
mod core;
mod cotta;
mod deyo;
mod eata;
mod filters;
mod frozen;
mod lame;
mod petal;
mod rmt;
mod sar;
mod tent;
mod unmix_tns;

use crate::data::ImageSet;
use crate::error::{EngineError, Result};
use crate::models::Model;
use crate::optim::OptimizerSpec;
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

/// A method and its hyperparameters, as written in a job spec: either a bare name
/// (`"tent"`) or a table (`{ method = "tent", steps = 1, optimizer = { ... } }`).
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "snake_case", deny_unknown_fields)]
pub enum MethodSpec {
    /// The source model, frozen, BatchNorm with its running (source) statistics.
    Source,
    /// Test-time normalization: BatchNorm with the test batch's statistics (BN-1).
    #[serde(alias = "norm", alias = "bn")]
    NormTest,
    /// α-BN (You et al. 2021): normalize with (1−α)·source + α·batch statistics.
    NormAlpha {
        #[serde(default = "alpha_default")]
        alpha: f32,
        /// The paper's "Core" variant: train the BN affine parameters (α-BN statistics) to
        /// maximize the pairwise class correlation of the batch's predictions.
        #[serde(default)]
        core: bool,
        /// Optimizer of the Core variant.
        #[serde(default = "OptimizerSpec::tent_default")]
        optimizer: OptimizerSpec,
    },
    /// TENT: entropy minimization on the BatchNorm affine parameters, batch statistics.
    Tent {
        #[serde(default = "OptimizerSpec::tent_default")]
        optimizer: OptimizerSpec,
        /// Optimizer steps per batch.
        #[serde(default = "one")]
        steps: usize,
        /// Apply the "wisdom of crowds" filter (drop samples less confident than under the
        /// source model) before the loss.
        #[serde(default)]
        crowds: bool,
    },
    /// EATA: entropy and redundancy filters, confidence re-weighting, Fisher regularizer.
    Eata {
        #[serde(default = "OptimizerSpec::tent_default")]
        optimizer: OptimizerSpec,
        /// Entropy filter E0 = e_margin · ln C.
        #[serde(default = "f04")]
        e_margin: f64,
        /// Redundancy filter: keep samples with |cos(m, p)| < d_margin.
        #[serde(default = "f04")]
        d_margin: f64,
        /// Weight of the Fisher regularizer (0 disables it).
        #[serde(default = "f1")]
        fisher_alpha: f64,
        /// Clean source (training-split) samples used to estimate the Fisher information.
        #[serde(default = "fisher_size")]
        fisher_size: usize,
        #[serde(default)]
        crowds: bool,
    },
    /// SAR: reliable-entropy filter, sharpness-aware step, reset when the loss EMA collapses.
    Sar {
        #[serde(default = "OptimizerSpec::sar_default")]
        optimizer: OptimizerSpec,
        /// Entropy filter E0 = margin · ln C.
        #[serde(default = "f04")]
        margin: f64,
        /// SAM neighbourhood radius ρ.
        #[serde(default = "rho")]
        rho: f64,
        /// Reset the model when the moving average of the second loss falls below this.
        #[serde(default = "reset_constant")]
        reset_constant: f64,
        #[serde(default)]
        crowds: bool,
    },
    /// DeYO: entropy filter plus PLPD (prediction change under patch shuffling) filter and
    /// weighting.
    Deyo {
        #[serde(default = "OptimizerSpec::sar_default")]
        optimizer: OptimizerSpec,
        /// Entropy filter: keep H < margin · ln C.
        #[serde(default = "f05")]
        margin: f64,
        /// E0 of the entropy weighting exp(−(H − margin_e0 · ln C)).
        #[serde(default = "f04")]
        margin_e0: f64,
        /// Keep samples with PLPD above this.
        #[serde(default = "plpd_threshold")]
        plpd_threshold: f64,
        /// The image is cut into patch_len × patch_len patches that are shuffled.
        #[serde(default = "patch_len")]
        patch_len: usize,
        #[serde(default = "yes")]
        reweight_ent: bool,
        #[serde(default = "yes")]
        reweight_plpd: bool,
        #[serde(default)]
        crowds: bool,
    },
    /// LAME: frozen model; Laplacian-regularized correction of each batch's outputs.
    Lame {
        #[serde(default)]
        affinity: lame::Affinity,
        /// Neighbours for the kNN graph and the RBF bandwidth.
        #[serde(default = "knn")]
        k: usize,
        #[serde(default = "max_steps")]
        max_steps: usize,
        /// Weight of the pairwise (Laplacian) term.
        #[serde(default = "f1")]
        bound_lambda: f64,
    },
    /// CoTTA: EMA teacher, augmentation-averaged teacher targets when the source model is
    /// unsure, stochastic restore of weights to the source, predictions from the teacher.
    Cotta {
        #[serde(default = "OptimizerSpec::tent_default")]
        optimizer: OptimizerSpec,
        /// Teacher EMA momentum.
        #[serde(default = "mt")]
        mt: f64,
        /// Probability that a weight element is restored to its source value after a step.
        #[serde(default = "rst")]
        rst: f64,
        /// Average the teacher over augmentations when the anchor's mean confidence is below.
        #[serde(default = "ap")]
        ap: f64,
        #[serde(default = "n_aug")]
        n_augmentations: usize,
        /// Random horizontal flips among the augmentations.
        #[serde(default = "yes")]
        hflip: bool,
    },
    /// RMT (source-free variant: no warm-up, no source replay): symmetric cross-entropy to an
    /// EMA teacher on the image and an augmented view, contrastive pull to source prototypes.
    Rmt {
        #[serde(default = "OptimizerSpec::tent_default")]
        optimizer: OptimizerSpec,
        #[serde(default = "mt")]
        mt: f64,
        /// Weight of the self-training (symmetric cross-entropy) loss.
        #[serde(default = "f1")]
        lambda_ce_trg: f64,
        /// Weight of the contrastive loss.
        #[serde(default = "f1")]
        lambda_cont: f64,
        #[serde(default = "contrast_temperature")]
        temperature: f64,
        /// Output size of the contrastive projector (two linear layers).
        #[serde(default = "projection_dim")]
        projection_dim: usize,
        /// Clean training images the source class prototypes are computed from.
        #[serde(default = "fisher_size")]
        source_samples: usize,
        #[serde(default = "yes")]
        hflip: bool,
    },
    /// PETAL: CoTTA's student/teacher/anchor with a Gaussian prior toward the source weights
    /// and a restore of the elements with the smallest Fisher information.
    Petal {
        #[serde(default = "OptimizerSpec::tent_default")]
        optimizer: OptimizerSpec,
        #[serde(default = "mt")]
        mt: f64,
        #[serde(default = "ap")]
        ap: f64,
        #[serde(default = "n_aug")]
        n_augmentations: usize,
        /// Weight of the prior penalty Σ(θ − θ_source)².
        #[serde(default = "spw")]
        spw: f64,
        /// Elements whose squared gradient is below this quantile are restored to the source.
        #[serde(default = "perc")]
        perc: f64,
        #[serde(default = "yes")]
        hflip: bool,
    },
    /// UnMix-TNS: every BatchNorm normalizes each instance with a mixture of K online-updated
    /// statistics components; composes with another method given as `base`.
    UnmixTns {
        #[serde(default = "num_components")]
        num_components: usize,
        /// The components' update rate is 1 − 0.9^(batch_size / batch_size_max).
        #[serde(default = "batch_size_max")]
        batch_size_max: usize,
        /// The method run on the UnMix-TNS model (a name or a table); none: predictions only.
        #[serde(default, deserialize_with = "deserialize_base")]
        #[cfg_attr(feature = "schema", schema(value_type = Option<Object>))]
        base: Option<Box<MethodSpec>>,
    },
    /// AdaNPC: kNN vote over a memory of source features and confident test features.
    Adanpc {
        /// Neighbours in the vote.
        #[serde(default = "adanpc_k")]
        k: usize,
        /// Softmax temperature of the neighbours' cosine similarities.
        #[serde(default = "contrast_temperature")]
        temperature: f64,
        /// A test sample whose top vote share is at least beta joins the memory.
        #[serde(default = "contrast_temperature")]
        beta: f64,
        /// Memory cap: the oldest test entries leave first (the original grows without limit).
        #[serde(default = "memory_size")]
        memory_size: usize,
        /// Clean training images that fill the memory at the start.
        #[serde(default = "fisher_size")]
        source_samples: usize,
    },
    /// CAFA: class-aware alignment of features to per-class source Gaussians (Mahalanobis),
    /// BN affine parameters adapted.
    Cafa {
        #[serde(default = "OptimizerSpec::tent_default")]
        optimizer: OptimizerSpec,
        #[serde(default)]
        covariance: cafa::Covariance,
        /// Ridge added to the covariance: shrinkage · mean feature variance.
        #[serde(default = "shrinkage")]
        shrinkage: f64,
        /// Clean training images the class means and covariance are estimated from.
        #[serde(default = "fisher_size")]
        source_samples: usize,
    },
}

fn mt() -> f64 {
    0.999
}
fn rst() -> f64 {
    0.01
}
fn ap() -> f64 {
    0.92
}
fn n_aug() -> usize {
    32
}
fn contrast_temperature() -> f64 {
    0.1
}
fn projection_dim() -> usize {
    128
}
fn spw() -> f64 {
    1e-9
}
fn perc() -> f64 {
    0.03
}
fn num_components() -> usize {
    16
}
fn batch_size_max() -> usize {
    64
}
fn adanpc_k() -> usize {
    100
}
fn memory_size() -> usize {
    5000
}
fn shrinkage() -> f64 {
    0.1
}

fn deserialize_base<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<Box<MethodSpec>>, D::Error> {
    let v = Option::<serde_json::Value>::deserialize(d)?;
    match v {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(v) => {
            let m = MethodSpec::from_value(v).map_err(serde::de::Error::custom)?;
            if matches!(m, MethodSpec::UnmixTns { .. }) {
                return Err(serde::de::Error::custom(
                    "unmix_tns: base cannot be unmix_tns itself",
                ));
            }
            Ok(Some(Box::new(m)))
        }
    }
}

fn one() -> usize {
    1
}
fn yes() -> bool {
    true
}
fn alpha_default() -> f32 {
    0.1
}
fn f04() -> f64 {
    0.4
}
fn f05() -> f64 {
    0.5
}
fn f1() -> f64 {
    1.0
}
fn fisher_size() -> usize {
    2000
}
fn rho() -> f64 {
    0.05
}
fn reset_constant() -> f64 {
    0.2
}
fn plpd_threshold() -> f64 {
    0.2
}
fn patch_len() -> usize {
    4
}
fn knn() -> usize {
    5
}
fn max_steps() -> usize {
    100
}

/// The method names a spec may use (`crowds` is TENT with the crowds filter; give `base` to
/// put the filter on another entropy method).
pub const METHOD_NAMES: [&str; 15] = [
    "source",
    "norm_test",
    "norm_alpha",
    "tent",
    "eata",
    "sar",
    "deyo",
    "crowds",
    "lame",
    "cotta",
    "rmt",
    "petal",
    "unmix_tns",
    "adanpc",
    "cafa",
];

impl MethodSpec {
    pub fn name(&self) -> &'static str {
        match self {
            MethodSpec::Source => "source",
            MethodSpec::NormTest => "norm_test",
            MethodSpec::NormAlpha { .. } => "norm_alpha",
            MethodSpec::Tent { .. } => "tent",
            MethodSpec::Eata { .. } => "eata",
            MethodSpec::Sar { .. } => "sar",
            MethodSpec::Deyo { .. } => "deyo",
            MethodSpec::Lame { .. } => "lame",
            MethodSpec::Cotta { .. } => "cotta",
            MethodSpec::Rmt { .. } => "rmt",
            MethodSpec::Petal { .. } => "petal",
            MethodSpec::UnmixTns { .. } => "unmix_tns",
            MethodSpec::Adanpc { .. } => "adanpc",
            MethodSpec::Cafa { .. } => "cafa",
        }
    }

    /// Display name: the method name, `+crowds` when the crowds filter is on, `+core` for
    /// α-BN's Core variant, `unmix_tns+<base>` for UnMix-TNS under another method.
    pub fn label(&self) -> String {
        if let MethodSpec::UnmixTns { base: Some(b), .. } = self {
            return format!("unmix_tns+{}", b.label());
        }
        if let MethodSpec::NormAlpha { core: true, .. } = self {
            return "norm_alpha+core".into();
        }
        if self.crowds() {
            format!("{}+crowds", self.name())
        } else {
            self.name().to_string()
        }
    }

    fn crowds(&self) -> bool {
        matches!(
            self,
            MethodSpec::Tent { crowds: true, .. }
                | MethodSpec::Eata { crowds: true, .. }
                | MethodSpec::Sar { crowds: true, .. }
                | MethodSpec::Deyo { crowds: true, .. }
        )
    }

    /// True if building the method needs clean source samples (EATA's Fisher information).
    pub fn clean_samples(&self) -> usize {
        match self {
            MethodSpec::Eata {
                fisher_alpha,
                fisher_size,
                ..
            } if *fisher_alpha > 0.0 => *fisher_size,
            MethodSpec::Rmt { source_samples, .. }
            | MethodSpec::Adanpc { source_samples, .. }
            | MethodSpec::Cafa { source_samples, .. } => *source_samples,
            MethodSpec::UnmixTns { base: Some(b), .. } => b.clean_samples(),
            _ => 0,
        }
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(EngineError::InvalidSpec(format!("{}: {m}", self.name())));
        let frac = |v: f64| v.is_finite() && v > 0.0;
        match self {
            MethodSpec::Source | MethodSpec::NormTest => {}
            MethodSpec::NormAlpha {
                alpha, optimizer, ..
            } => {
                if !(0.0..=1.0).contains(alpha) {
                    return bad(format!("alpha must be in [0, 1], got {alpha}"));
                }
                optimizer.validate()?;
            }
            MethodSpec::Cotta {
                optimizer,
                mt,
                rst,
                ap,
                n_augmentations,
                ..
            } => {
                optimizer.validate()?;
                if !(0.0..=1.0).contains(mt) || !(0.0..=1.0).contains(rst) || !ap.is_finite() {
                    return bad("mt and rst must be in [0, 1], ap finite".into());
                }
                if *n_augmentations == 0 {
                    return bad("n_augmentations must be ≥ 1".into());
                }
            }
            MethodSpec::Petal {
                optimizer,
                mt,
                ap,
                n_augmentations,
                spw,
                perc,
                ..
            } => {
                optimizer.validate()?;
                if !(0.0..=1.0).contains(mt) || !(0.0..=1.0).contains(perc) || !ap.is_finite() {
                    return bad("mt and perc must be in [0, 1], ap finite".into());
                }
                if !(spw.is_finite() && *spw >= 0.0) {
                    return bad(format!("spw must be ≥ 0, got {spw}"));
                }
                if *n_augmentations == 0 {
                    return bad("n_augmentations must be ≥ 1".into());
                }
            }
            MethodSpec::Rmt {
                optimizer,
                mt,
                lambda_ce_trg,
                lambda_cont,
                temperature,
                projection_dim,
                source_samples,
                ..
            } => {
                optimizer.validate()?;
                if !(0.0..=1.0).contains(mt) {
                    return bad(format!("mt must be in [0, 1], got {mt}"));
                }
                if !lambda_ce_trg.is_finite() || !lambda_cont.is_finite() || !frac(*temperature) {
                    return bad("loss weights must be finite and temperature > 0".into());
                }
                if *projection_dim == 0 || *source_samples == 0 {
                    return bad("projection_dim and source_samples must be ≥ 1".into());
                }
            }
            MethodSpec::UnmixTns {
                num_components,
                batch_size_max,
                base,
            } => {
                if *num_components == 0 || *batch_size_max == 0 {
                    return bad("num_components and batch_size_max must be ≥ 1".into());
                }
                if let Some(b) = base {
                    b.validate()?;
                }
            }
            MethodSpec::Adanpc {
                k,
                temperature,
                beta,
                memory_size,
                source_samples,
            } => {
                if *k == 0 || *source_samples == 0 {
                    return bad("k and source_samples must be ≥ 1".into());
                }
                if !frac(*temperature) || !beta.is_finite() {
                    return bad("temperature must be > 0 and beta finite".into());
                }
                if memory_size < source_samples {
                    return bad(format!(
                        "memory_size ({memory_size}) must hold the source_samples ({source_samples})"
                    ));
                }
            }
            MethodSpec::Cafa {
                optimizer,
                shrinkage,
                source_samples,
                ..
            } => {
                optimizer.validate()?;
                if !frac(*shrinkage) {
                    return bad(format!("shrinkage must be > 0, got {shrinkage}"));
                }
                if *source_samples < 2 {
                    return bad("source_samples must be ≥ 2".into());
                }
            }
            MethodSpec::Tent {
                optimizer, steps, ..
            } => {
                optimizer.validate()?;
                if *steps == 0 {
                    return bad("steps must be ≥ 1".into());
                }
            }
            MethodSpec::Eata {
                optimizer,
                e_margin,
                d_margin,
                fisher_alpha,
                fisher_size,
                ..
            } => {
                optimizer.validate()?;
                if !frac(*e_margin) || !frac(*d_margin) {
                    return bad("e_margin and d_margin must be > 0".into());
                }
                if !(fisher_alpha.is_finite() && *fisher_alpha >= 0.0) {
                    return bad(format!("fisher_alpha must be ≥ 0, got {fisher_alpha}"));
                }
                if *fisher_alpha > 0.0 && *fisher_size == 0 {
                    return bad("fisher_size must be ≥ 1 when fisher_alpha > 0".into());
                }
            }
            MethodSpec::Sar {
                optimizer,
                margin,
                rho,
                reset_constant,
                ..
            } => {
                optimizer.validate()?;
                if !frac(*margin) || !frac(*rho) || !(reset_constant.is_finite()) {
                    return bad("margin and rho must be > 0, reset_constant finite".into());
                }
            }
            MethodSpec::Deyo {
                optimizer,
                margin,
                margin_e0,
                plpd_threshold,
                patch_len,
                ..
            } => {
                optimizer.validate()?;
                if !frac(*margin) || !frac(*margin_e0) || !plpd_threshold.is_finite() {
                    return bad("margin and margin_e0 must be > 0".into());
                }
                if *patch_len < 2 {
                    return bad(format!("patch_len must be ≥ 2, got {patch_len}"));
                }
            }
            MethodSpec::Lame {
                k,
                max_steps,
                bound_lambda,
                ..
            } => {
                if *k == 0 || *max_steps == 0 {
                    return bad("k and max_steps must be ≥ 1".into());
                }
                if !bound_lambda.is_finite() {
                    return bad("bound_lambda must be finite".into());
                }
            }
        }
        Ok(())
    }

    /// Parse one entry of a spec's `methods` list (a name or a table). `crowds` is rewritten to
    /// its base method (`base`, default `tent`) with `crowds = true`.
    pub fn from_value(v: serde_json::Value) -> Result<Self> {
        let mut v = match v {
            serde_json::Value::String(s) => serde_json::json!({ "method": s }),
            other => other,
        };
        if let Some(obj) = v.as_object_mut() {
            if obj.get("method").and_then(|m| m.as_str()) == Some("crowds") {
                let base = match obj.remove("base") {
                    None => "tent".to_string(),
                    Some(serde_json::Value::String(b))
                        if ["tent", "eata", "sar", "deyo"].contains(&b.as_str()) =>
                    {
                        b
                    }
                    Some(other) => {
                        return Err(EngineError::InvalidSpec(format!(
                            "crowds: base must be one of tent, eata, sar, deyo; got {other}"
                        )))
                    }
                };
                obj.insert("method".into(), base.into());
                obj.insert("crowds".into(), true.into());
            }
        }
        serde_json::from_value(v).map_err(|e| {
            let msg = e.to_string();
            if msg.contains("unknown variant") {
                EngineError::unknown("method", msg.split('`').nth(1).unwrap_or("?"), METHOD_NAMES)
            } else {
                EngineError::InvalidSpec(format!("method: {msg}"))
            }
        })
    }
}

/// Serde helper: a list of methods, each a bare name or a table.
pub fn deserialize_methods<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Vec<MethodSpec>, D::Error> {
    let vals = Vec::<serde_json::Value>::deserialize(d)?;
    vals.into_iter()
        .map(|v| MethodSpec::from_value(v).map_err(serde::de::Error::custom))
        .collect()
}

/// What a method returns for one batch.
pub struct BatchOutput {
    /// Row-major (N × C) logits (LAME: log-probabilities).
    pub logits: Vec<f32>,
    /// True when the method wanted to update but skipped it (non-finite loss or gradients).
    pub skipped_update: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Counters {
    /// Optimizer updates applied.
    pub updates: u64,
    /// Updates skipped because the loss or a gradient was not finite.
    pub skipped_updates: u64,
    /// Batches in which the method's sample filters kept nothing (no update, by design).
    pub empty_batches: u64,
    /// Samples that passed the method's filters and entered its loss.
    pub samples_used: u64,
    /// Resets the method decided on by itself (SAR's collapse reset).
    pub self_resets: u64,
}

/// What a method may need besides its own model copy.
pub struct MethodEnv<'a> {
    /// Loads another copy of the source model (the crowds filter's reference, teachers).
    pub load_source: &'a dyn Fn() -> Result<Model>,
    /// Clean images of the source distribution (training split; EATA's Fisher information),
    /// at least `MethodSpec::clean_samples()` of them when that is non-zero.
    pub clean: Option<&'a ImageSet>,
    /// Batch size of the job (EATA estimates the Fisher information in batches of this size).
    pub batch_size: usize,
    /// Seed for the method's own randomness (DeYO's patch shuffles).
    pub seed: u64,
}

impl MethodEnv<'_> {
    /// The clean source samples, or an error naming the method that needs them.
    pub(crate) fn clean_set(&self, method: &str) -> Result<&ImageSet> {
        match self.clean {
            Some(c) if !c.is_empty() => Ok(c),
            _ => Err(EngineError::InvalidSpec(format!(
                "{method}: no clean source samples were provided"
            ))),
        }
    }
}

pub trait Method {
    /// Adapt on `x` (N, C, H, W) in [0, 1] as the method prescribes and predict it.
    fn adapt_and_predict(&mut self, x: &Tensor) -> Result<BatchOutput>;
    /// Predict `x` as the method currently stands, without adapting (forgetting checks).
    fn predict(&mut self, x: &Tensor) -> Result<Vec<f32>>;
    /// Return to the initial state: weights, statistics, optimizer state, moving averages,
    /// counters.
    fn reset(&mut self) -> Result<()>;
    /// Names of the parameters the method changes (empty for frozen-weight methods).
    fn adapted_parameters(&self) -> Vec<String>;
    fn counters(&self) -> Counters;
    fn model(&self) -> &Model;
}

/// Build a method around its own copy of the model.
pub fn build(spec: &MethodSpec, model: Model, env: &MethodEnv) -> Result<Box<dyn Method>> {
    spec.validate()?;
    let crowds = if spec.crowds() {
        Some(filters::Crowds::new((env.load_source)()?))
    } else {
        None
    };
    Ok(match spec {
        MethodSpec::Source => Box::new(frozen::FrozenWeights::source(model)),
        MethodSpec::NormTest => Box::new(frozen::FrozenWeights::norm_test(model)),
        MethodSpec::NormAlpha {
            alpha, core: false, ..
        } => Box::new(frozen::FrozenWeights::norm_alpha(model, *alpha)),
        MethodSpec::NormAlpha {
            alpha, optimizer, ..
        } => Box::new(core::Core::new(model, *alpha, optimizer.clone())?),
        MethodSpec::Cotta { .. } => Box::new(cotta::Cotta::new(model, spec, env)?),
        MethodSpec::Petal { .. } => Box::new(petal::petal(model, spec, env)?),
        MethodSpec::Rmt { .. } => Box::new(rmt::Rmt::new(model, spec, env)?),
        MethodSpec::UnmixTns { .. } => Box::new(unmix_tns::UnmixTns::new(model, spec, env)?),
        MethodSpec::Adanpc { .. } => Box::new(adanpc::Adanpc::new(model, spec, env)?),
        MethodSpec::Cafa { .. } => Box::new(cafa::Cafa::new(model, spec, env)?),
        MethodSpec::Tent {
            optimizer, steps, ..
        } => Box::new(tent::Tent::new(model, optimizer.clone(), *steps, crowds)?),
        MethodSpec::Eata { .. } => Box::new(eata::Eata::new(model, spec, crowds, env)?),
        MethodSpec::Sar { .. } => Box::new(sar::Sar::new(model, spec, crowds)?),
        MethodSpec::Deyo { .. } => Box::new(deyo::Deyo::new(model, spec, crowds, env.seed)?),
        MethodSpec::Lame {
            affinity,
            k,
            max_steps,
            bound_lambda,
        } => Box::new(lame::Lame::new(
            model,
            *affinity,
            *k,
            *max_steps,
            *bound_lambda,
        )),
    })
}

/// Logits tensor → host vector.
pub(crate) fn host(logits: &Tensor) -> Result<Vec<f32>> {
    Ok(logits.flatten_all()?.to_vec1::<f32>()?)
}

/// Penultimate features (row-major n × D, n = min(n, clean.len())) and labels of the first `n`
/// clean images, with BatchNorm in `mode`, in batches of `batch` (a trailing single image joins
/// no batch when `mode` needs batch statistics).
pub(crate) fn clean_features(
    model: &Model,
    clean: &ImageSet,
    n: usize,
    batch: usize,
    mode: crate::nn::BnMode,
) -> Result<(Vec<f32>, Vec<u8>, usize)> {
    let n = n.min(clean.len());
    let classes = model.info().num_classes;
    if let Some(bad) = clean.labels[..n].iter().find(|&&y| y as usize >= classes) {
        return Err(EngineError::InvalidSpec(format!(
            "clean source label {bad} is out of range for a model with {classes} classes"
        )));
    }
    let batch = batch.max(2);
    let (mut feats, mut labels, mut dim) = (vec![], vec![], 0);
    for s in (0..n).step_by(batch) {
        let e = (s + batch).min(n);
        if e - s < 2 && mode != crate::nn::BnMode::Eval && s > 0 {
            break;
        }
        let x = crate::jobs::images_to_tensor(
            &clean.images[s * clean.pixels()..e * clean.pixels()],
            clean.height,
            clean.width,
            model.device(),
        )?;
        let (f, _) = model.forward_features(&x, mode)?;
        dim = f.dim(1)?;
        feats.extend(f.flatten_all()?.to_vec1::<f32>()?);
        labels.extend_from_slice(&clean.labels[s..e]);
    }
    Ok((feats, labels, dim))
}

/// Rows of `x` (N, D) scaled to unit L2 norm (norm clamped at 1e-12, as F.normalize).
pub(crate) fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    let norm = x.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f64::MAX)?;
    Ok(x.broadcast_div(&norm)?)
}

/// Methods that normalize with batch statistics cannot work on a single sample.
pub(crate) fn need_batch(name: &str, x: &Tensor) -> Result<()> {
    if x.dim(0)? < 2 {
        return Err(EngineError::InvalidSpec(format!(
            "{name} normalizes with batch statistics and needs batch_size ≥ 2"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod reference_tests;
#[cfg(test)]
mod tests;
