//! `train`: fit a source model on the clean training split.
//!
//! The last `val_size` images of a seeded permutation of the training split are held out for
//! validation. Each epoch visits the rest in a fresh seeded order with random-crop (zero padding)
//! and, for flip-invariant datasets, horizontal-flip augmentation. The learning rate warms up
//! linearly, then follows a cosine to zero. Steps with a non-finite loss are skipped and counted.

use super::{images_to_tensor, CheckpointRef, Context, Event, JobSpec, Provenance};
use crate::data::{self, Dataset, ImageSet, Split};
use crate::error::{EngineError, Result};
use crate::losses;
use crate::metrics::{Accumulator, Metrics};
use crate::models::{Architecture, Model, ModelInfo, Normalization};
use crate::nn::BnMode;
use crate::optim::{Optimizer, OptimizerSpec};
use candle_core::Device;
use rand::seq::SliceRandom;
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSpec {
    /// Dataset to train on: `fashion_mnist` or `mnist`.
    pub dataset: Dataset,
    /// Network to build (default: the small CNN).
    #[serde(default)]
    pub architecture: Architecture,
    #[serde(default = "default_epochs")]
    pub epochs: usize,
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    #[serde(default = "default_optimizer")]
    pub optimizer: OptimizerSpec,
    /// Epochs of linear learning-rate warm-up before the cosine decay.
    #[serde(default = "default_warmup")]
    pub warmup_epochs: f64,
    /// Label smoothing ε for the cross-entropy.
    #[serde(default)]
    pub label_smoothing: f32,
    /// Images held out from the training split for validation.
    #[serde(default = "default_val")]
    pub val_size: usize,
    /// Random translation of up to this many pixels (zero padding).
    #[serde(default = "default_crop")]
    pub crop_pad: usize,
    /// Random horizontal flips; default: on for datasets where a flip keeps the label.
    #[serde(default)]
    pub hflip: Option<bool>,
    /// Use only this many training images (for quick runs and tests).
    #[serde(default)]
    pub max_train_samples: Option<usize>,
    /// File name (in the output folder) of the checkpoint, without extension.
    #[serde(default = "default_output")]
    pub output: String,
}

fn default_epochs() -> usize {
    10
}
fn default_batch() -> usize {
    128
}
fn default_optimizer() -> OptimizerSpec {
    OptimizerSpec::Sgd {
        lr: 0.05,
        momentum: 0.9,
        nesterov: true,
        weight_decay: 5e-4,
    }
}
fn default_warmup() -> f64 {
    1.0
}
fn default_val() -> usize {
    5000
}
fn default_crop() -> usize {
    2
}
fn default_output() -> String {
    "model".into()
}

impl TrainSpec {
    pub fn validate(&self) -> Result<()> {
        self.architecture.validate()?;
        self.optimizer.validate()?;
        let bad = |m: String| Err(EngineError::InvalidSpec(m));
        if self.epochs == 0 || self.batch_size == 0 {
            return bad(format!(
                "epochs and batch_size must be ≥ 1, got {} and {}",
                self.epochs, self.batch_size
            ));
        }
        if !(0.0..1.0).contains(&self.label_smoothing) {
            return bad(format!(
                "label_smoothing must be in [0, 1), got {}",
                self.label_smoothing
            ));
        }
        if self.warmup_epochs < 0.0 || self.warmup_epochs > self.epochs as f64 {
            return bad(format!(
                "warmup_epochs must be in [0, epochs], got {}",
                self.warmup_epochs
            ));
        }
        if self.output.is_empty() || self.output.contains('/') || self.output.contains("..") {
            return bad(format!(
                "output must be a plain file name, got `{}`",
                self.output
            ));
        }
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EpochStats {
    pub epoch: usize,
    /// Learning rate at the end of the epoch.
    pub lr: f64,
    pub train_loss: f64,
    pub train_error: f64,
    pub val: Metrics,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TrainResult {
    pub provenance: Provenance,
    pub checkpoint: CheckpointRef,
    pub model: ModelInfo,
    pub train_samples: usize,
    pub val_samples: usize,
    pub epochs: Vec<EpochStats>,
    /// Clean test split, eval-mode BatchNorm.
    pub test: Metrics,
    /// Optimizer steps skipped because the loss or a gradient was not finite.
    pub skipped_steps: u64,
}

/// Per-channel mean and std of images in [0, 1].
fn normalization(set: &ImageSet) -> Normalization {
    let n = set.images.len() as f64;
    let mean = set.images.iter().map(|p| *p as f64 / 255.0).sum::<f64>() / n;
    let var = set
        .images
        .iter()
        .map(|p| (*p as f64 / 255.0 - mean).powi(2))
        .sum::<f64>()
        / n;
    Normalization {
        mean: vec![mean as f32],
        std: vec![var.sqrt() as f32],
    }
}

/// Random translation by up to `pad` pixels (zero fill) and optional horizontal flip.
fn augment(
    img: &[u8],
    h: usize,
    w: usize,
    pad: usize,
    flip: bool,
    rng: &mut impl Rng,
    out: &mut Vec<u8>,
) {
    let (dy, dx) = if pad > 0 {
        (
            rng.gen_range(-(pad as isize)..=pad as isize),
            rng.gen_range(-(pad as isize)..=pad as isize),
        )
    } else {
        (0, 0)
    };
    let flip = flip && rng.gen_bool(0.5);
    for r in 0..h {
        for c in 0..w {
            let sr = r as isize + dy;
            let sc0 = if flip {
                (w - 1 - c) as isize
            } else {
                c as isize
            };
            let sc = sc0 + dx;
            let v = if sr >= 0 && sr < h as isize && sc >= 0 && sc < w as isize {
                img[sr as usize * w + sc as usize]
            } else {
                0
            };
            out.push(v);
        }
    }
}

/// Linear warm-up then cosine decay to zero, by global step.
pub fn lr_at(step: usize, total: usize, warmup: usize, peak: f64) -> f64 {
    if step < warmup {
        return peak * (step + 1) as f64 / warmup as f64;
    }
    let t = (step - warmup) as f64 / (total - warmup).max(1) as f64;
    peak * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
}

/// Eval-mode metrics of a model on a set.
pub fn evaluate_set(
    model: &Model,
    set: &ImageSet,
    batch: usize,
    mode: BnMode,
) -> Result<Accumulator> {
    let mut acc = Accumulator::new();
    let classes = model.info().num_classes;
    for start in (0..set.len()).step_by(batch) {
        let end = (start + batch).min(set.len());
        let x = images_to_tensor(
            &set.images[start * set.pixels()..end * set.pixels()],
            set.height,
            set.width,
            model.device(),
        )?;
        let logits = model.forward(&x, mode)?.flatten_all()?.to_vec1::<f32>()?;
        acc.add_logits(&logits, classes, &set.labels[start..end]);
    }
    Ok(acc)
}

pub fn run(
    spec: &JobSpec,
    t: &TrainSpec,
    device: &Device,
    ctx: &mut Context,
) -> Result<TrainResult> {
    let (full, mut hashes) = data::load(&ctx.data_dir, t.dataset, Split::Train)?;
    let (test, test_hashes) = data::load(&ctx.data_dir, t.dataset, Split::Test)?;
    hashes.extend(test_hashes);
    if t.val_size >= full.len() {
        return Err(EngineError::InvalidSpec(format!(
            "val_size {} leaves no training images ({} in the split)",
            t.val_size,
            full.len()
        )));
    }
    let mut order: Vec<usize> = (0..full.len()).collect();
    order.shuffle(&mut crate::rng::rng(spec.seed, "train/split"));
    let (train_idx, val_idx) = order.split_at(full.len() - t.val_size);
    let mut train_idx = train_idx.to_vec();
    if let Some(m) = t.max_train_samples {
        train_idx.truncate(m.max(1));
    }
    let train = full.select(&train_idx);
    let val = full.select(val_idx);
    let info = ModelInfo {
        architecture: t.architecture.clone(),
        input: [1, full.height, full.width],
        num_classes: t.dataset.num_classes(),
        normalization: normalization(&train),
        dataset: t.dataset.name().into(),
        data_sha256: hashes.clone(),
        train_spec: spec.to_value(),
        test_accuracy: None,
        engine_version: crate::ENGINE_VERSION.into(),
    };
    let mut model = Model::init(info, spec.seed, device)?;
    let mut opt = Optimizer::new(t.optimizer.clone(), model.store().params().to_vec())?;
    let flip = t.hflip.unwrap_or(t.dataset.flip_invariant());
    let steps_per_epoch = train.len().div_ceil(t.batch_size);
    let total = steps_per_epoch * t.epochs;
    let warmup = (t.warmup_epochs * steps_per_epoch as f64).round() as usize;
    let peak = t.optimizer.lr();
    let (h, w) = (train.height, train.width);
    let mut epochs = vec![];
    let mut skipped = 0u64;
    let mut step = 0usize;
    ctx.log(format!(
        "training {:?} on {} ({} train / {} val images), {} epochs × {} steps",
        t.architecture,
        t.dataset,
        train.len(),
        val.len(),
        t.epochs,
        steps_per_epoch
    ));
    for epoch in 0..t.epochs {
        ctx.observer.event(Event::Phase {
            label: format!("epoch {}/{}", epoch + 1, t.epochs),
            total: steps_per_epoch as u64,
        });
        let mut perm: Vec<usize> = (0..train.len()).collect();
        perm.shuffle(&mut crate::rng::rng(
            crate::rng::derive(spec.seed, &[epoch as u64]),
            "train/shuffle",
        ));
        let mut aug_rng = crate::rng::rng(
            crate::rng::derive(spec.seed, &[epoch as u64]),
            "train/augment",
        );
        let (mut loss_sum, mut wrong, mut seen) = (0f64, 0usize, 0usize);
        let mut lr = peak;
        for (b, chunk) in perm.chunks(t.batch_size).enumerate() {
            ctx.cancel.check()?;
            let mut buf = Vec::with_capacity(chunk.len() * h * w);
            let mut labels = Vec::with_capacity(chunk.len());
            for &i in chunk {
                augment(
                    train.image(i),
                    h,
                    w,
                    t.crop_pad,
                    flip,
                    &mut aug_rng,
                    &mut buf,
                );
                labels.push(train.labels[i]);
            }
            let x = images_to_tensor(&buf, h, w, device)?;
            let logits = model.forward(&x, BnMode::Train)?;
            let loss = losses::cross_entropy(&logits, &labels, t.label_smoothing)?;
            let lv = loss.to_scalar::<f32>()? as f64;
            lr = lr_at(step, total, warmup, peak);
            step += 1;
            if !lv.is_finite() {
                skipped += 1;
                continue;
            }
            let grads = loss.backward()?;
            if !opt.step(&grads, lr)? {
                skipped += 1;
            }
            let lv_rows = logits.argmax(1)?.to_vec1::<u32>()?;
            wrong += lv_rows
                .iter()
                .zip(&labels)
                .filter(|(p, y)| **p != **y as u32)
                .count();
            loss_sum += lv * chunk.len() as f64;
            seen += chunk.len();
            ctx.observer.event(Event::Advance { done: b as u64 + 1 });
        }
        let val_m = evaluate_set(&model, &val, 500, BnMode::Eval)?.finish();
        let stats = EpochStats {
            epoch: epoch + 1,
            lr,
            train_loss: loss_sum / seen.max(1) as f64,
            train_error: wrong as f64 / seen.max(1) as f64,
            val: val_m,
        };
        ctx.observer.event(Event::Metric {
            series: "train".into(),
            step: epoch as u64 + 1,
            values: BTreeMap::from([
                ("train_loss".into(), stats.train_loss),
                ("train_error".into(), stats.train_error),
                ("val_error".into(), val_m.error),
                ("val_nll".into(), val_m.nll),
                ("lr".into(), lr),
            ]),
        });
        ctx.observer.event(Event::PhaseEnd {
            summary: format!(
                "epoch {}: loss {:.4}, train error {:.2}%, val error {:.2}%",
                epoch + 1,
                stats.train_loss,
                100.0 * stats.train_error,
                100.0 * val_m.error
            ),
        });
        epochs.push(stats);
    }
    if model.store().has_non_finite()? {
        return Err(EngineError::InvalidSpec(
            "training diverged: the model holds non-finite values; lower the learning rate".into(),
        ));
    }
    let test_m = evaluate_set(&model, &test, 500, BnMode::Eval)?.finish();
    model.info_mut().test_accuracy = Some(1.0 - test_m.error);
    ctx.log(format!(
        "clean test error {:.2}% ({} images)",
        100.0 * test_m.error,
        test_m.n
    ));
    let out = ctx.ensure_out_dir()?.join(&t.output);
    let st = model.save(&out)?;
    let shown = format!("{}.safetensors", t.output);
    Ok(TrainResult {
        provenance: Provenance::new(spec, hashes),
        checkpoint: CheckpointRef::of(&st, &shown)?,
        model: model.info().clone(),
        train_samples: train.len(),
        val_samples: val.len(),
        epochs,
        test: test_m,
        skipped_steps: skipped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_then_decays_to_zero() {
        assert!((lr_at(0, 100, 10, 1.0) - 0.1).abs() < 1e-12);
        assert!((lr_at(9, 100, 10, 1.0) - 1.0).abs() < 1e-12);
        assert!((lr_at(10, 100, 10, 1.0) - 1.0).abs() < 1e-12);
        assert!((lr_at(55, 100, 10, 1.0) - 0.5).abs() < 1e-12);
        assert!(lr_at(99, 100, 10, 1.0) < 1e-3);
    }

    #[test]
    fn augmentation_shifts_and_flips() {
        // 3×3 ramp; with pad 0 and no flip the image is unchanged.
        let img: Vec<u8> = (1..=9).collect();
        let mut rng = crate::rng::rng(0, "t");
        let mut out = vec![];
        augment(&img, 3, 3, 0, false, &mut rng, &mut out);
        assert_eq!(out, img);
        // Flip happens with probability 1/2: over 64 draws both outcomes appear, and a flipped
        // image is the mirror.
        let mut seen_flip = false;
        for _ in 0..64 {
            let mut o = vec![];
            augment(&img, 3, 3, 0, true, &mut rng, &mut o);
            if o != img {
                assert_eq!(o, vec![3, 2, 1, 6, 5, 4, 9, 8, 7]);
                seen_flip = true;
            }
        }
        assert!(seen_flip);
    }
}
