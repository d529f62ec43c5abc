//! Image classifiers with BatchNorm, saved as safetensors plus a JSON sidecar.
//!
//! A checkpoint is two files: `<name>.safetensors` (every parameter and running statistic, by
//! name) and `<name>.json` ([`ModelInfo`]: architecture, input shape and normalization, the data
//! it was trained on with its hash, the training spec, and the engine version). Models take
//! images in [0, 1] and normalize them internally, so callers never need the constants.

pub mod cnn;
pub mod resnet;

use crate::error::{EngineError, Result};
use crate::nn::{BatchNorm, BnMode, ParamStore, VarSource};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Which network to build.
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "arch", rename_all = "snake_case", deny_unknown_fields)]
pub enum Architecture {
    /// Small BatchNorm CNN: per stage `convs_per_stage` × (conv3×3-BN-ReLU), then max-pool.
    Cnn {
        #[serde(default = "default_cnn_channels")]
        channels: Vec<usize>,
        #[serde(default = "one")]
        convs_per_stage: usize,
    },
    /// CIFAR-style ResNet with BatchNorm, depth 6n+2 (20, 26, ...), base width.
    Resnet {
        #[serde(default = "default_depth")]
        depth: usize,
        #[serde(default = "default_width")]
        width: usize,
    },
}

fn default_cnn_channels() -> Vec<usize> {
    vec![32, 64, 128]
}
fn one() -> usize {
    1
}
fn default_depth() -> usize {
    20
}
fn default_width() -> usize {
    16
}

impl Default for Architecture {
    fn default() -> Self {
        Architecture::Cnn {
            channels: default_cnn_channels(),
            convs_per_stage: 1,
        }
    }
}

impl Architecture {
    pub fn validate(&self) -> Result<()> {
        match self {
            Architecture::Cnn {
                channels,
                convs_per_stage,
            } => {
                if channels.is_empty()
                    || channels.len() > 4
                    || channels.contains(&0)
                    || *convs_per_stage == 0
                {
                    return Err(EngineError::InvalidSpec(format!(
                        "cnn needs 1 to 4 non-zero stage widths and convs_per_stage ≥ 1, got {channels:?} × {convs_per_stage}"
                    )));
                }
            }
            Architecture::Resnet { depth, width } => {
                if *depth < 8 || !(depth - 2).is_multiple_of(6) || *width == 0 {
                    return Err(EngineError::InvalidSpec(format!(
                        "resnet depth must be 6n+2 (8, 14, 20, 26, ...) and width ≥ 1, got depth {depth}, width {width}"
                    )));
                }
            }
        }
        Ok(())
    }
}

/// Per-channel input normalization: `(x − mean) / std` on images in [0, 1].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Normalization {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

/// The JSON sidecar of a checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    pub architecture: Architecture,
    /// (channels, height, width) of the input.
    pub input: [usize; 3],
    pub num_classes: usize,
    pub normalization: Normalization,
    /// Dataset the model was trained on (`fashion_mnist`, `mnist`, ...).
    pub dataset: String,
    /// sha256 of each data file used for training, by file name.
    #[serde(default)]
    pub data_sha256: std::collections::BTreeMap<String, String>,
    /// The spec of the job that trained it (as JSON), for provenance.
    #[serde(default)]
    pub train_spec: serde_json::Value,
    /// Clean test accuracy measured at the end of training.
    #[serde(default)]
    pub test_accuracy: Option<f64>,
    pub engine_version: String,
}

enum Net {
    Cnn(cnn::Cnn),
    ResNet(resnet::ResNet),
}

/// A classifier: the network, its parameters and its sidecar.
pub struct Model {
    info: ModelInfo,
    net: Net,
    store: ParamStore,
}

impl Model {
    fn build(info: ModelInfo, mut vs: VarSource) -> Result<Self> {
        info.architecture.validate()?;
        let [c, h, w] = info.input;
        if h != w {
            return Err(EngineError::InvalidSpec(format!(
                "square inputs only, got {h}×{w}"
            )));
        }
        let net = match &info.architecture {
            Architecture::Cnn {
                channels,
                convs_per_stage,
            } => Net::Cnn(cnn::Cnn::new(
                &mut vs,
                channels,
                *convs_per_stage,
                c,
                h,
                info.num_classes,
            )?),
            Architecture::Resnet { depth, width } => Net::ResNet(resnet::ResNet::new(
                &mut vs,
                *depth,
                *width,
                c,
                info.num_classes,
            )?),
        };
        Ok(Self {
            info,
            net,
            store: vs.finish(),
        })
    }

    /// A freshly initialized model (seeded).
    pub fn init(info: ModelInfo, seed: u64, device: &Device) -> Result<Self> {
        Self::build(info, VarSource::init(seed, device))
    }

    /// Paths of the two files of a checkpoint given either of them or their common stem.
    pub fn paths(path: &Path) -> (PathBuf, PathBuf) {
        let stem = match path.extension().and_then(|e| e.to_str()) {
            Some("safetensors") | Some("json") => path.with_extension(""),
            _ => path.to_path_buf(),
        };
        (
            stem.with_extension("safetensors"),
            stem.with_extension("json"),
        )
    }

    /// Load a checkpoint (`x.safetensors` + `x.json`).
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let (st, js) = Self::paths(path);
        for p in [&st, &js] {
            if !p.exists() {
                return Err(EngineError::bad_file(
                    p,
                    "checkpoint file not found (a checkpoint is <name>.safetensors + <name>.json; run a `train` job to make one)",
                ));
            }
        }
        let text = std::fs::read_to_string(&js).map_err(|e| EngineError::io(&js, e))?;
        let info: ModelInfo = serde_json::from_str(&text)
            .map_err(|e| EngineError::bad_file(&js, format!("not a model sidecar: {e}")))?;
        Self::build(info, VarSource::load_safetensors(&st, device)?)
    }

    /// Save to `x.safetensors` + `x.json`; returns the safetensors path.
    pub fn save(&self, path: &Path) -> Result<PathBuf> {
        let (st, js) = Self::paths(path);
        if let Some(dir) = st.parent() {
            std::fs::create_dir_all(dir).map_err(|e| EngineError::io(dir, e))?;
        }
        self.store.save_safetensors(&st)?;
        let text = serde_json::to_string_pretty(&self.info)?;
        std::fs::write(&js, text + "\n").map_err(|e| EngineError::io(&js, e))?;
        Ok(st)
    }

    pub fn info(&self) -> &ModelInfo {
        &self.info
    }
    pub fn info_mut(&mut self) -> &mut ModelInfo {
        &mut self.info
    }
    pub fn store(&self) -> &ParamStore {
        &self.store
    }
    pub fn device(&self) -> &Device {
        self.store.device()
    }

    fn normalize(&self, x: &Tensor) -> Result<Tensor> {
        let n = &self.info.normalization;
        let c = n.mean.len();
        if x.rank() != 4 || x.dim(1)? != c {
            return Err(EngineError::InvalidSpec(format!(
                "model expects (N, {c}, H, W) images, got {:?}",
                x.dims()
            )));
        }
        if c == 1 {
            return Ok(x.affine(1.0 / n.std[0] as f64, -(n.mean[0] / n.std[0]) as f64)?);
        }
        let dev = x.device();
        let m = Tensor::new(n.mean.as_slice(), dev)?.reshape((1, c, 1, 1))?;
        let s = Tensor::new(n.std.as_slice(), dev)?.reshape((1, c, 1, 1))?;
        Ok(x.broadcast_sub(&m)?.broadcast_div(&s)?)
    }

    /// Penultimate features and logits for images in [0, 1].
    pub fn forward_features(&self, x: &Tensor, mode: BnMode) -> Result<(Tensor, Tensor)> {
        let x = self.normalize(x)?;
        match &self.net {
            Net::Cnn(n) => n.forward_features(&x, mode),
            Net::ResNet(n) => n.forward_features(&x, mode),
        }
    }

    /// Logits for images in [0, 1].
    pub fn forward(&self, x: &Tensor, mode: BnMode) -> Result<Tensor> {
        Ok(self.forward_features(x, mode)?.1)
    }

    /// Every BatchNorm layer, in forward order.
    pub fn bns(&self) -> Vec<&BatchNorm> {
        match &self.net {
            Net::Cnn(n) => n.bns(),
            Net::ResNet(n) => n.bns(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::test_util::randn;

    fn info(arch: Architecture) -> ModelInfo {
        ModelInfo {
            architecture: arch,
            input: [1, 28, 28],
            num_classes: 10,
            normalization: Normalization {
                mean: vec![0.5],
                std: vec![0.25],
            },
            dataset: "test".into(),
            data_sha256: Default::default(),
            train_spec: serde_json::Value::Null,
            test_accuracy: None,
            engine_version: crate::ENGINE_VERSION.into(),
        }
    }

    #[test]
    fn shapes_and_parameter_counts() {
        let dev = Device::Cpu;
        let x = randn(&[2, 1, 28, 28], 1).affine(0.1, 0.5).unwrap();
        let cnn = Model::init(info(Architecture::default()), 0, &dev).unwrap();
        let (f, l) = cnn.forward_features(&x, BnMode::Eval).unwrap();
        assert_eq!(f.dims(), &[2, 6272]);
        assert_eq!(l.dims(), &[2, 10]);
        // conv 1·32·9 + 32·64·9 + 64·128·9, BN 2·(32+64+128), fc 6272·10 + 10.
        let n: usize = cnn
            .store()
            .params()
            .iter()
            .map(|p| p.var().as_tensor().elem_count())
            .sum();
        assert_eq!(n, 288 + 18432 + 73728 + 448 + 62730);
        let r = Model::init(
            info(Architecture::Resnet {
                depth: 20,
                width: 16,
            }),
            0,
            &dev,
        )
        .unwrap();
        let (f, l) = r.forward_features(&x, BnMode::Eval).unwrap();
        assert_eq!(f.dims(), &[2, 64]);
        assert_eq!(l.dims(), &[2, 10]);
        // 1 stem + 9 blocks × 2 + 2 projection shortcuts = 21 BN layers.
        assert_eq!(r.bns().len(), 21);
    }

    #[test]
    fn save_load_round_trip_and_errors() {
        let dev = Device::Cpu;
        let dir = tempfile::tempdir().unwrap();
        let m = Model::init(info(Architecture::Resnet { depth: 8, width: 4 }), 3, &dev).unwrap();
        let x = randn(&[3, 1, 28, 28], 2);
        // Train mode moves the running statistics, so the round trip covers buffers too.
        m.forward(&x, BnMode::Train).unwrap();
        let path = m.save(&dir.path().join("m")).unwrap();
        let m2 = Model::load(&path, &dev).unwrap();
        assert_eq!(m2.info(), m.info());
        let a = m
            .forward(&x, BnMode::Eval)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let b = m2
            .forward(&x, BnMode::Eval)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(a, b);

        // A checkpoint whose sidecar names another architecture fails with the tensor name.
        let mut other = info(Architecture::Resnet { depth: 8, width: 8 });
        other.dataset = "x".into();
        std::fs::write(
            dir.path().join("m.json"),
            serde_json::to_string(&other).unwrap(),
        )
        .unwrap();
        let err = Model::load(&path, &dev).err().unwrap().to_string();
        assert!(
            err.contains("stem.conv.weight")
                && err.contains("[4, 1, 3, 3]")
                && err.contains("[8, 1, 3, 3]"),
            "{err}"
        );

        // A truncated safetensors file is reported as such.
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        let err = Model::load(&path, &dev).err().unwrap().to_string();
        assert!(
            err.contains("m.safetensors") && err.contains("safetensors"),
            "{err}"
        );
    }
}
