//! Shifted test streams: a domain is one corruption at one severity applied to (a seeded subset
//! of) the clean test split, or read from a directory in the published CIFAR-10-C layout.
//!
//! The same (seed, dataset, corruption, severity, n_examples) always gives the same images in the
//! same order, whichever job asks: every method of an `adapt` job and every `evaluate` job sees
//! identical domains.

use crate::corrupt::{self, Corruption};
use crate::data::{self, Dataset, ImageSet, Split};
use crate::error::{EngineError, Result};
use rand::seq::SliceRandom;
use rayon::prelude::*;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One domain of a stream, materialized.
#[derive(Clone, Debug)]
pub struct Domain {
    /// `gaussian_noise`, ..., or `clean`.
    pub name: String,
    pub corruption: Option<Corruption>,
    /// 0 for clean.
    pub severity: u8,
    /// Index of each sample in the clean test split, in stream order.
    pub indices: Vec<usize>,
    pub images: ImageSet,
}

/// What a result records about a domain.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DomainInfo {
    pub name: String,
    pub severity: u8,
    pub n: usize,
    /// sha256 of the sample indices (little-endian u32s) in stream order; the list itself is in
    /// the job's `samples.json`.
    pub indices_sha256: String,
}

impl Domain {
    pub fn info(&self) -> DomainInfo {
        let bytes: Vec<u8> = self
            .indices
            .iter()
            .flat_map(|i| (*i as u32).to_le_bytes())
            .collect();
        DomainInfo {
            name: self.name.clone(),
            severity: self.severity,
            n: self.indices.len(),
            indices_sha256: data::datasets::sha256_hex(&bytes),
        }
    }
}

/// Where corrupted images come from.
pub enum Source<'a> {
    /// Corrupt the clean test split on the fly.
    Generate,
    /// Read `<dir>/<corruption>.npy` + `labels.npy` (published CIFAR-10-C layout).
    Directory(&'a Path),
}

/// The clean test split, loaded once per job.
pub struct TestSet {
    pub dataset: Dataset,
    pub set: ImageSet,
    pub hashes: BTreeMap<String, String>,
}

impl TestSet {
    pub fn load(data_dir: &Path, dataset: Dataset) -> Result<Self> {
        let (set, hashes) = data::load(data_dir, dataset, Split::Test)?;
        Ok(Self {
            dataset,
            set,
            hashes,
        })
    }

    /// The seeded order (and subset) of sample indices for one domain. Seeded by the domain,
    /// not by its position in the stream, so a domain looks the same in every job.
    pub fn order(
        &self,
        seed: u64,
        corruption: Option<Corruption>,
        severity: u8,
        n: Option<usize>,
        len: usize,
    ) -> Vec<usize> {
        let cid = corruption.map(|c| c as u64 + 1).unwrap_or(0);
        let mut idx: Vec<usize> = (0..len).collect();
        idx.shuffle(&mut crate::rng::rng(
            crate::rng::derive(seed, &[cid, severity as u64]),
            "stream/order",
        ));
        if let Some(n) = n {
            idx.truncate(n);
        }
        idx
    }

    /// Build one domain. `hashes` receives the sha256 of any file read.
    pub fn domain(
        &self,
        corruption: Option<Corruption>,
        severity: u8,
        seed: u64,
        n_examples: Option<usize>,
        source: &Source,
        hashes: &mut BTreeMap<String, String>,
    ) -> Result<Domain> {
        let base = &self.set;
        let (images, indices) = match (corruption, source) {
            (None, _) => {
                let idx = self.order(seed, None, 0, n_examples, base.len());
                (base.select(&idx), idx)
            }
            (Some(c), Source::Generate) => {
                let idx = self.order(seed, Some(c), severity, n_examples, base.len());
                let (h, w) = (base.height, base.width);
                let imgs: Vec<Vec<u8>> = idx
                    .par_iter()
                    .map(|&i| {
                        corrupt::corrupt_image(base.image(i), w, h, c, severity, seed, i as u64)
                    })
                    .collect::<Result<_>>()?;
                let set = ImageSet {
                    images: imgs.concat(),
                    labels: idx.iter().map(|&i| base.labels[i]).collect(),
                    height: h,
                    width: w,
                };
                (set, idx)
            }
            (Some(c), Source::Directory(dir)) => {
                let (imgs, labels, h, w) = data::npy::read_corrupted_layout(dir, c, severity)?;
                for f in [format!("{}.npy", c.name()), "labels.npy".to_string()] {
                    let p: PathBuf = dir.join(&f);
                    let bytes = std::fs::read(&p).map_err(|e| EngineError::io(&p, e))?;
                    hashes.insert(format!("corrupted/{f}"), data::datasets::sha256_hex(&bytes));
                }
                let full = ImageSet {
                    images: imgs,
                    labels,
                    height: h,
                    width: w,
                };
                if (h, w) != (base.height, base.width) {
                    return Err(EngineError::bad_file(
                        dir.join(format!("{}.npy", c.name())),
                        format!(
                            "images are {h}×{w}, the model's dataset has {}×{}",
                            base.height, base.width
                        ),
                    ));
                }
                let idx = self.order(seed, Some(c), severity, n_examples, full.len());
                (full.select(&idx), idx)
            }
        };
        Ok(Domain {
            name: corruption
                .map(|c| c.name().to_string())
                .unwrap_or_else(|| "clean".into()),
            corruption,
            severity,
            indices,
            images,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_set() -> TestSet {
        let n = 20;
        let images: Vec<u8> = (0..n * 64).map(|i| ((i * 7) % 251) as u8).collect();
        TestSet {
            dataset: Dataset::Mnist,
            set: ImageSet {
                images,
                labels: (0..n).map(|i| (i % 10) as u8).collect(),
                height: 8,
                width: 8,
            },
            hashes: BTreeMap::new(),
        }
    }

    #[test]
    fn domains_are_seeded_by_domain_not_position() {
        let t = test_set();
        let mut h = BTreeMap::new();
        let a = t
            .domain(
                Some(Corruption::Fog),
                3,
                7,
                Some(5),
                &Source::Generate,
                &mut h,
            )
            .unwrap();
        let b = t
            .domain(
                Some(Corruption::Fog),
                3,
                7,
                Some(5),
                &Source::Generate,
                &mut h,
            )
            .unwrap();
        assert_eq!(a.indices, b.indices);
        assert_eq!(a.images, b.images);
        assert_eq!(a.indices.len(), 5);
        // Labels follow the indices.
        for (k, i) in a.indices.iter().enumerate() {
            assert_eq!(a.images.labels[k], t.set.labels[*i]);
        }
        let c = t
            .domain(
                Some(Corruption::Fog),
                3,
                8,
                Some(5),
                &Source::Generate,
                &mut h,
            )
            .unwrap();
        assert_ne!(a.indices, c.indices);
        let clean = t
            .domain(None, 0, 7, None, &Source::Generate, &mut h)
            .unwrap();
        assert_eq!(clean.name, "clean");
        assert_eq!(clean.images.len(), 20);
        let mut sorted = clean.indices.clone();
        sorted.sort();
        assert_eq!(sorted, (0..20).collect::<Vec<_>>());
    }

    #[test]
    fn reads_the_published_layout() {
        let t = test_set();
        let dir = tempfile::tempdir().unwrap();
        let mut h = BTreeMap::new();
        let per: [Vec<u8>; 5] = std::array::from_fn(|s| {
            t.domain(
                Some(Corruption::Contrast),
                s as u8 + 1,
                0,
                None,
                &Source::Generate,
                &mut h,
            )
            .map(|d| {
                // Store in clean-split order, as the published files are.
                let mut out = vec![0u8; d.images.images.len()];
                for (k, i) in d.indices.iter().enumerate() {
                    out[i * 64..(i + 1) * 64].copy_from_slice(d.images.image(k));
                }
                out
            })
            .unwrap()
        });
        data::npy::write_corrupted_layout(
            dir.path(),
            Corruption::Contrast,
            &per,
            &t.set.labels,
            8,
            8,
        )
        .unwrap();
        let gen = t
            .domain(
                Some(Corruption::Contrast),
                4,
                0,
                Some(6),
                &Source::Generate,
                &mut h,
            )
            .unwrap();
        let mut h2 = BTreeMap::new();
        let read = t
            .domain(
                Some(Corruption::Contrast),
                4,
                0,
                Some(6),
                &Source::Directory(dir.path()),
                &mut h2,
            )
            .unwrap();
        assert_eq!(gen.images, read.images);
        assert!(
            h2.contains_key("corrupted/contrast.npy") && h2.contains_key("corrupted/labels.npy")
        );
    }
}
