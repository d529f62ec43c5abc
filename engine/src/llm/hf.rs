//! Hugging Face layout: `config.json` + `*.safetensors` (one file or shards) + `tokenizer.json`.
//! Llama and Qwen2 (`model_type`) are built as [`Llama`] with dense f32 weights.

use super::llama::{Layer, Linear, Llama, LlamaConfig, Proj};
use super::CausalLm;
use crate::error::{EngineError, Result};
use candle_core::{DType, Device, Tensor};
use serde::Deserialize;
use std::collections::HashMap;
use std::path::Path;

pub const MODEL_TYPES: [&str; 3] = ["llama", "mistral", "qwen2"];

#[derive(Debug, Deserialize)]
pub struct HfConfig {
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    #[serde(default)]
    pub head_dim: Option<usize>,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "default_theta")]
    pub rope_theta: f32,
    #[serde(default = "default_ctx")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub tie_word_embeddings: bool,
}

fn default_eps() -> f64 {
    1e-6
}
fn default_theta() -> f32 {
    10_000.0
}
fn default_ctx() -> usize {
    2048
}

/// Load the model in `dir`; returns it and its `model_type`.
pub fn load(
    dir: &Path,
    max_seq_len: usize,
    device: &Device,
) -> Result<(Box<dyn CausalLm>, String)> {
    let cfg_path = dir.join("config.json");
    let text = std::fs::read_to_string(&cfg_path).map_err(|e| EngineError::io(&cfg_path, e))?;
    let cfg: HfConfig = serde_json::from_str(&text)
        .map_err(|e| EngineError::bad_file(&cfg_path, format!("not a model config: {e}")))?;
    if !MODEL_TYPES.contains(&cfg.model_type.as_str()) {
        return Err(EngineError::bad_file(
            &cfg_path,
            format!(
                "model_type `{}` is not supported; supported: {}",
                cfg.model_type,
                MODEL_TYPES.join(", ")
            ),
        ));
    }
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| EngineError::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(EngineError::bad_file(
            dir,
            "no *.safetensors file in the model directory",
        ));
    }
    let mut t: HashMap<String, Tensor> = HashMap::new();
    for f in &files {
        let part = candle_core::safetensors::load(f, device).map_err(|e| {
            EngineError::bad_file(f, format!("not a readable safetensors file: {e}"))
        })?;
        t.extend(part);
    }
    let mut take = |name: &str| -> Result<Tensor> {
        let v = t.remove(name).ok_or_else(|| {
            EngineError::bad_file(dir, format!("checkpoint lacks tensor `{name}`"))
        })?;
        Ok(v.to_dtype(DType::F32)?)
    };
    let n_kv = cfg.num_key_value_heads.unwrap_or(cfg.num_attention_heads);
    let head_dim = cfg
        .head_dim
        .unwrap_or(cfg.hidden_size / cfg.num_attention_heads);
    let embed = take("model.embed_tokens.weight")?;
    let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
    for i in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{i}");
        let mut lin = |n: &str, bias: bool| -> Result<Linear> {
            let w = Proj::Dense(take(&format!("{p}.{n}.weight"))?);
            let b = if bias {
                Some(take(&format!("{p}.{n}.bias"))?)
            } else {
                None
            };
            Ok(Linear { w, b })
        };
        let qkv_bias = cfg.model_type == "qwen2";
        let wq = lin("self_attn.q_proj", qkv_bias)?;
        let wk = lin("self_attn.k_proj", qkv_bias)?;
        let wv = lin("self_attn.v_proj", qkv_bias)?;
        let wo = lin("self_attn.o_proj", false)?;
        let w_gate = lin("mlp.gate_proj", false)?;
        let w_up = lin("mlp.up_proj", false)?;
        let w_down = lin("mlp.down_proj", false)?;
        layers.push(Layer {
            attn_norm: take(&format!("{p}.input_layernorm.weight"))?,
            ffn_norm: take(&format!("{p}.post_attention_layernorm.weight"))?,
            wq,
            wk,
            wv,
            wo,
            w_gate,
            w_up,
            w_down,
        });
    }
    let norm = take("model.norm.weight")?;
    let head = match take("lm_head.weight") {
        Ok(w) => w,
        Err(_) if cfg.tie_word_embeddings => embed.clone(),
        Err(e) => return Err(e),
    };
    let lc = LlamaConfig {
        vocab_size: cfg.vocab_size,
        hidden: cfg.hidden_size,
        n_layer: cfg.num_hidden_layers,
        n_head: cfg.num_attention_heads,
        n_kv_head: n_kv,
        head_dim,
        rms_eps: cfg.rms_norm_eps,
        rope_theta: cfg.rope_theta,
        rope_interleaved: false,
        max_seq_len: max_seq_len.min(cfg.max_position_embeddings),
    };
    let output = Linear {
        w: Proj::Dense(head),
        b: None,
    };
    let model = Llama::new(lc, embed, layers, norm, output, device)?;
    Ok((Box::new(model), cfg.model_type))
}
