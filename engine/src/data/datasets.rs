//! The image datasets: where their files live, how they load, and their hashes.
//!
//! Files are fetched by `scripts/fetch-data.sh` into the data directory (`ATTUNE_DATA_DIR`,
//! default `~/.cache/attune/data`), one folder per dataset holding the four uncompressed IDX
//! files. Every load returns the sha256 of the files it read, which results record.

use super::idx;
use crate::error::{EngineError, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const FETCH_CMD: &str = "scripts/fetch-data.sh";

#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dataset {
    FashionMnist,
    Mnist,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    Train,
    Test,
}

impl Dataset {
    pub const ALL: [Dataset; 2] = [Dataset::FashionMnist, Dataset::Mnist];

    pub fn name(self) -> &'static str {
        match self {
            Dataset::FashionMnist => "fashion_mnist",
            Dataset::Mnist => "mnist",
        }
    }

    pub fn class_names(self) -> &'static [&'static str] {
        match self {
            Dataset::FashionMnist => &[
                "T-shirt/top",
                "Trouser",
                "Pullover",
                "Dress",
                "Coat",
                "Sandal",
                "Shirt",
                "Sneaker",
                "Bag",
                "Ankle boot",
            ],
            Dataset::Mnist => &["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"],
        }
    }

    pub fn num_classes(self) -> usize {
        self.class_names().len()
    }

    /// Whether a left-right flip keeps the label (clothes yes, digits no).
    pub fn flip_invariant(self) -> bool {
        matches!(self, Dataset::FashionMnist)
    }

    fn files(split: Split) -> (&'static str, &'static str) {
        match split {
            Split::Train => ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
            Split::Test => ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
        }
    }
}

impl std::fmt::Display for Dataset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Dataset {
    type Err = EngineError;
    fn from_str(s: &str) -> Result<Self> {
        Dataset::ALL
            .into_iter()
            .find(|d| d.name() == s)
            .ok_or_else(|| EngineError::unknown("dataset", s, Dataset::ALL.map(|d| d.name())))
    }
}

/// Grayscale images (u8, row-major) with labels.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageSet {
    pub images: Vec<u8>,
    pub labels: Vec<u8>,
    pub height: usize,
    pub width: usize,
}

impl ImageSet {
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
    pub fn pixels(&self) -> usize {
        self.height * self.width
    }
    pub fn image(&self, i: usize) -> &[u8] {
        &self.images[i * self.pixels()..(i + 1) * self.pixels()]
    }
    /// The subset at `indices`, in that order.
    pub fn select(&self, indices: &[usize]) -> ImageSet {
        let mut images = Vec::with_capacity(indices.len() * self.pixels());
        for &i in indices {
            images.extend_from_slice(self.image(i));
        }
        ImageSet {
            images,
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
            height: self.height,
            width: self.width,
        }
    }
}

/// The data directory: `ATTUNE_DATA_DIR`, else `~/.cache/attune/data`.
pub fn default_data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("ATTUNE_DATA_DIR") {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache/attune/data")
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Load a split. Returns the images and the sha256 of each file read, keyed `<dataset>/<file>`.
pub fn load(
    data_dir: &Path,
    dataset: Dataset,
    split: Split,
) -> Result<(ImageSet, BTreeMap<String, String>)> {
    let dir = data_dir.join(dataset.name());
    let (img_name, lbl_name) = Dataset::files(split);
    let mut hashes = BTreeMap::new();
    let mut read = |name: &str, ndim: usize| -> Result<idx::Idx> {
        let path = dir.join(name);
        if !path.exists() {
            return Err(EngineError::MissingData {
                what: format!("{dataset} file {name}"),
                path,
                fetch_cmd: FETCH_CMD.into(),
            });
        }
        let bytes = std::fs::read(&path).map_err(|e| EngineError::io(&path, e))?;
        hashes.insert(format!("{dataset}/{name}"), sha256_hex(&bytes));
        idx::parse(&bytes, ndim, &path)
    };
    let images = read(img_name, 3)?;
    let labels = read(lbl_name, 1)?;
    let (n, h, w) = (images.dims[0], images.dims[1], images.dims[2]);
    if labels.dims[0] != n {
        return Err(EngineError::bad_file(
            dir.join(lbl_name),
            format!(
                "{} labels, expected {n} (one per image in {img_name})",
                labels.dims[0]
            ),
        ));
    }
    let classes = dataset.num_classes();
    if let Some(bad) = labels.data.iter().find(|l| **l as usize >= classes) {
        return Err(EngineError::bad_file(
            dir.join(lbl_name),
            format!("label {bad} out of range 0..{classes}"),
        ));
    }
    Ok((
        ImageSet {
            images: images.data,
            labels: labels.data,
            height: h,
            width: w,
        },
        hashes,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_data_names_the_fetch_command() {
        let dir = tempfile::tempdir().unwrap();
        let e = load(dir.path(), Dataset::Mnist, Split::Test)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("mnist file t10k-images-idx3-ubyte not found"),
            "{e}"
        );
        assert!(e.contains("run `scripts/fetch-data.sh`"), "{e}");
    }

    #[test]
    fn loads_and_hashes_a_tiny_split() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("mnist");
        std::fs::create_dir_all(&d).unwrap();
        let imgs: Vec<u8> = (0..2 * 4 * 4).map(|i| i as u8).collect();
        std::fs::write(
            d.join("t10k-images-idx3-ubyte"),
            idx::encode(&[2, 4, 4], &imgs),
        )
        .unwrap();
        std::fs::write(d.join("t10k-labels-idx1-ubyte"), idx::encode(&[2], &[3, 7])).unwrap();
        let (set, hashes) = load(dir.path(), Dataset::Mnist, Split::Test).unwrap();
        assert_eq!((set.len(), set.height, set.width), (2, 4, 4));
        assert_eq!(set.image(1)[0], 16);
        assert_eq!(set.select(&[1, 0]).labels, vec![7, 3]);
        assert_eq!(hashes.len(), 2);
        assert_eq!(
            hashes["mnist/t10k-labels-idx1-ubyte"],
            sha256_hex(&idx::encode(&[2], &[3, 7]))
        );
        // Label count mismatch is reported against the labels file.
        std::fs::write(
            d.join("t10k-labels-idx1-ubyte"),
            idx::encode(&[3], &[3, 7, 1]),
        )
        .unwrap();
        let e = load(dir.path(), Dataset::Mnist, Split::Test)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("t10k-labels-idx1-ubyte: 3 labels, expected 2"),
            "{e}"
        );
    }

    #[test]
    fn sha256_of_abc() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn unknown_dataset_lists_valid_names() {
        let e = "cifar10".parse::<Dataset>().unwrap_err().to_string();
        assert_eq!(
            e,
            "unknown dataset `cifar10`; valid names: fashion_mnist, mnist"
        );
    }
}
