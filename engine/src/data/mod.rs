//! Data: IDX and .npy readers, the datasets, and the shifted test streams built from them.

pub mod datasets;
pub mod idx;
pub mod npy;
pub mod synthetic;

pub use datasets::{default_data_dir, load, Dataset, ImageSet, Split};
