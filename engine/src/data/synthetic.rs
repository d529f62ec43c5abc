//! A small synthetic stand-in for the IDX datasets, for tests and smoke runs: each class is a
//! bar at its own angle (18° apart), randomly shifted, with pixel noise. Learnable in one epoch,
//! written in exactly the files and layout `scripts/fetch-data.sh` produces. A left-right flip
//! changes the class (the angle), so train on it with `hflip = false`.

use super::datasets::Dataset;
use super::idx;
use crate::error::{EngineError, Result};
use rand::Rng;
use std::path::Path;

fn image(class: usize, rng: &mut impl Rng) -> Vec<u8> {
    let theta = class as f64 * std::f64::consts::PI / 10.0;
    let (c, s) = (theta.cos(), theta.sin());
    let (cx, cy) = (
        13.5 + rng.gen_range(-2.0..2.0),
        13.5 + rng.gen_range(-2.0..2.0),
    );
    let mut img = vec![0u8; 28 * 28];
    for r in 0..28 {
        for col in 0..28 {
            let (x, y) = (col as f64 - cx, r as f64 - cy);
            // Distance across the bar and position along it.
            let across = (-s * x + c * y).abs();
            let along = (c * x + s * y).abs();
            let v = if across < 2.0 && along < 10.0 {
                220.0
            } else {
                0.0
            };
            let noise: f64 = rng.gen_range(0.0..40.0);
            img[r * 28 + col] = (v + noise).min(255.0) as u8;
        }
    }
    img
}

/// Write `<dir>/<dataset>/{train,t10k}-{images-idx3,labels-idx1}-ubyte` with `n_train` and
/// `n_test` images of 10 balanced classes.
pub fn write(dir: &Path, dataset: Dataset, n_train: usize, n_test: usize, seed: u64) -> Result<()> {
    let out = dir.join(dataset.name());
    std::fs::create_dir_all(&out).map_err(|e| EngineError::io(&out, e))?;
    let mut rng = crate::rng::rng(seed, "synthetic");
    for (prefix, n) in [("train", n_train), ("t10k", n_test)] {
        let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
        let images: Vec<u8> = labels
            .iter()
            .flat_map(|l| image(*l as usize, &mut rng))
            .collect();
        for (name, bytes) in [
            (
                format!("{prefix}-images-idx3-ubyte"),
                idx::encode(&[n, 28, 28], &images),
            ),
            (
                format!("{prefix}-labels-idx1-ubyte"),
                idx::encode(&[n], &labels),
            ),
        ] {
            let p = out.join(name);
            std::fs::write(&p, bytes).map_err(|e| EngineError::io(&p, e))?;
        }
    }
    Ok(())
}
