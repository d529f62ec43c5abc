//! GGUF files: header and metadata checked before any tensor is read (a truncated or foreign
//! file fails with a message that says so), then the llama family is built as [`Llama`] and
//! gemma3 goes through candle-transformers' quantized model.

use super::llama::{Layer, Linear, Llama, LlamaConfig, Proj};
use super::{CandleLm, CausalLm, WeightMode};
use crate::error::{EngineError, Result};
use candle_core::quantized::{gguf_file, GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Tensor};
use std::fs::File;
use std::io::BufReader;
use std::path::Path;

/// Architectures (`general.architecture`) this loader builds.
pub const ARCHITECTURES: [&str; 3] = ["llama", "qwen2", "gemma3"];

/// An opened GGUF file whose header and tensor extents were checked against its size.
pub struct GgufFile {
    pub content: gguf_file::Content,
    pub reader: BufReader<File>,
    pub arch: String,
}

pub fn open(path: &Path) -> Result<GgufFile> {
    let file = File::open(path).map_err(|e| EngineError::io(path, e))?;
    let size = file.metadata().map_err(|e| EngineError::io(path, e))?.len();
    let mut reader = BufReader::new(file);
    let content = gguf_file::Content::read(&mut reader).map_err(|e| {
        EngineError::bad_file(
            path,
            format!("not a readable GGUF file ({size} bytes; truncated or another format?): {e}"),
        )
    })?;
    for (name, info) in &content.tensor_infos {
        let n = info.shape.elem_count();
        let bs = info.ggml_dtype.block_size();
        let bytes = (n / bs * info.ggml_dtype.type_size()) as u64;
        let end = content.tensor_data_offset + info.offset + bytes;
        if end > size {
            return Err(EngineError::bad_file(
                path,
                format!(
                    "GGUF file is truncated: tensor `{name}` ends at byte {end} but the file has \
                     {size} bytes"
                ),
            ));
        }
    }
    let arch = content
        .metadata
        .get("general.architecture")
        .and_then(|v| v.to_string().ok())
        .cloned()
        .ok_or_else(|| EngineError::bad_file(path, "GGUF metadata lacks `general.architecture`"))?;
    Ok(GgufFile {
        content,
        reader,
        arch,
    })
}

impl GgufFile {
    fn u32(&self, key: &str, path: &Path) -> Result<usize> {
        let k = format!("{}.{key}", self.arch);
        self.content
            .metadata
            .get(&k)
            .and_then(|v| v.to_u32().ok())
            .map(|v| v as usize)
            .ok_or_else(|| EngineError::bad_file(path, format!("GGUF metadata lacks `{k}`")))
    }

    fn f32(&self, key: &str) -> Option<f32> {
        self.content
            .metadata
            .get(&format!("{}.{key}", self.arch))
            .and_then(|v| v.to_f32().ok())
    }

    fn qtensor(&mut self, name: &str, path: &Path, device: &Device) -> Result<QTensor> {
        self.content
            .tensor(&mut self.reader, name, device)
            .map_err(|e| EngineError::bad_file(path, format!("tensor `{name}`: {e}")))
    }

    fn has(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    fn dense(&mut self, name: &str, path: &Path, device: &Device) -> Result<Tensor> {
        Ok(self.qtensor(name, path, device)?.dequantize(device)?)
    }

    fn proj(
        &mut self,
        name: &str,
        mode: WeightMode,
        path: &Path,
        device: &Device,
    ) -> Result<Linear> {
        let q = self.qtensor(&format!("{name}.weight"), path, device)?;
        let w = match mode {
            WeightMode::Native => Proj::Quant(QMatMul::from_qtensor(q)?),
            WeightMode::F32 => Proj::Dense(q.dequantize(device)?),
            WeightMode::Q8_0 => {
                let d = q.dequantize(device)?;
                Proj::Quant(QMatMul::from_qtensor(QTensor::quantize(
                    &d,
                    GgmlDType::Q8_0,
                )?)?)
            }
        };
        let bias = format!("{name}.bias");
        let b = if self.has(&bias) {
            Some(self.dense(&bias, path, device)?)
        } else {
            None
        };
        Ok(Linear { w, b })
    }
}

/// Build the model stored in a GGUF file.
pub fn load_model(
    mut g: GgufFile,
    path: &Path,
    mode: WeightMode,
    max_seq_len: usize,
    device: &Device,
) -> Result<Box<dyn CausalLm>> {
    match g.arch.as_str() {
        "llama" | "qwen2" => {
            let hidden = g.u32("embedding_length", path)?;
            let n_head = g.u32("attention.head_count", path)?;
            let n_kv_head = g.u32("attention.head_count_kv", path).unwrap_or(n_head);
            let n_layer = g.u32("block_count", path)?;
            let ctx = g.u32("context_length", path).unwrap_or(2048);
            let head_dim = g
                .u32("rope.dimension_count", path)
                .unwrap_or(hidden / n_head);
            let rms_eps = g.f32("attention.layer_norm_rms_epsilon").unwrap_or(1e-5) as f64;
            let rope_theta = g.f32("rope.freq_base").unwrap_or(10_000.0);
            let embed = g.dense("token_embd.weight", path, device)?;
            let vocab_size = embed.dim(0)?;
            let mut layers = Vec::with_capacity(n_layer);
            for i in 0..n_layer {
                let p = |s: &str| format!("blk.{i}.{s}");
                layers.push(Layer {
                    attn_norm: g.dense(&p("attn_norm.weight"), path, device)?,
                    wq: g.proj(&p("attn_q"), mode, path, device)?,
                    wk: g.proj(&p("attn_k"), mode, path, device)?,
                    wv: g.proj(&p("attn_v"), mode, path, device)?,
                    wo: g.proj(&p("attn_output"), mode, path, device)?,
                    ffn_norm: g.dense(&p("ffn_norm.weight"), path, device)?,
                    w_gate: g.proj(&p("ffn_gate"), mode, path, device)?,
                    w_up: g.proj(&p("ffn_up"), mode, path, device)?,
                    w_down: g.proj(&p("ffn_down"), mode, path, device)?,
                });
            }
            let norm = g.dense("output_norm.weight", path, device)?;
            // Tied embeddings: no `output.weight`, the embedding matrix is the output head.
            let output = if g.has("output.weight") {
                g.proj("output", mode, path, device)?
            } else {
                let w = match mode {
                    WeightMode::F32 => Proj::Dense(embed.clone()),
                    WeightMode::Native => Proj::Quant(QMatMul::from_qtensor(g.qtensor(
                        "token_embd.weight",
                        path,
                        device,
                    )?)?),
                    WeightMode::Q8_0 => Proj::Quant(QMatMul::from_qtensor(QTensor::quantize(
                        &embed,
                        GgmlDType::Q8_0,
                    )?)?),
                };
                Linear { w, b: None }
            };
            let cfg = LlamaConfig {
                vocab_size,
                hidden,
                n_layer,
                n_head,
                n_kv_head,
                head_dim,
                rms_eps,
                rope_theta,
                rope_interleaved: g.arch == "llama",
                max_seq_len: max_seq_len.min(ctx),
            };
            Ok(Box::new(Llama::new(
                cfg, embed, layers, norm, output, device,
            )?))
        }
        "gemma3" => {
            let ctx = g.u32("context_length", path).unwrap_or(8192);
            let vocab = g
                .content
                .tensor_infos
                .get("token_embd.weight")
                .map(|t| t.shape.dims()[0]);
            let model = candle_transformers::models::quantized_gemma3::ModelWeights::from_gguf(
                g.content,
                &mut g.reader,
                device,
            )
            .map_err(|e| EngineError::bad_file(path, format!("gemma3 weights: {e}")))?;
            Ok(Box::new(CandleLm::new(
                super::CandleModel::Gemma3(model),
                vocab.unwrap_or(0),
                max_seq_len.min(ctx),
                device,
            )))
        }
        other => Err(EngineError::bad_file(
            path,
            format!(
                "GGUF architecture `{other}` is not supported; supported: {}",
                ARCHITECTURES.join(", ")
            ),
        )),
    }
}
