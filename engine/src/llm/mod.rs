//! Causal language models for `sample` jobs: loading (GGUF, Hugging Face layout), tokenizers,
//! chat templates and the batched sampler.
//!
//! Behind the `llm` feature. The llama family runs on [`llama::Llama`], which prefills the prompt
//! once and decodes N rows in lock-step; other architectures candle-transformers ships (gemma3)
//! run through [`CandleLm`], which prefills row-parallel token by token.

pub mod chat;
pub mod gguf;
pub mod hf;
pub mod llama;
pub mod sampler;
pub mod tiny;
pub mod tokenizer;

use crate::error::{EngineError, Result};
use candle_core::{Device, Tensor};
use std::path::Path;

/// A decoder that samples N continuations of one prompt in lock-step.
pub trait CausalLm {
    /// Run the prompt and get ready to decode `rows` continuations of it, with room for
    /// `capacity` tokens in all (prompt + new). Returns the logits after the prompt, (rows, vocab).
    fn prefill(&mut self, prompt: &[u32], rows: usize, capacity: usize) -> Result<Tensor>;
    /// Feed one token per live row; returns the next logits, (rows, vocab).
    fn step(&mut self, tokens: &[u32]) -> Result<Tensor>;
    /// Keep only the rows at these indices of the current batch, in this order.
    fn retain(&mut self, keep: &[usize]) -> Result<()>;
    fn vocab_size(&self) -> usize;
    fn max_seq_len(&self) -> usize;
}

/// How GGUF weights are held in memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightMode {
    /// As stored (quantized matmuls).
    Native,
    /// Dequantized to f32 at load: 4 bytes per weight, fastest batched decoding on CPU.
    F32,
    /// Re-quantized to Q8_0 at load (candle has SIMD kernels for it, not for every format).
    Q8_0,
}

impl WeightMode {
    pub const NAMES: [&'static str; 3] = ["native", "f32", "q8_0"];
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "native" => Ok(Self::Native),
            "f32" => Ok(Self::F32),
            "q8_0" => Ok(Self::Q8_0),
            _ => Err(EngineError::unknown("weights mode", s, Self::NAMES)),
        }
    }
}

/// candle-transformers models wrapped for lock-step sampling.
pub enum CandleModel {
    Llama(candle_transformers::models::quantized_llama::ModelWeights),
    Gemma3(candle_transformers::models::quantized_gemma3::ModelWeights),
}

impl CandleModel {
    fn forward(&mut self, x: &Tensor, pos: usize) -> candle_core::Result<Tensor> {
        match self {
            CandleModel::Llama(m) => m.forward(x, pos),
            CandleModel::Gemma3(m) => m.forward(x, pos),
        }
    }
}

/// A candle-transformers model driven row by row: its KV cache is private, so the prompt runs
/// as (rows, 1) steps (batched prefill of several rows fails in candle 0.11 on a non-contiguous
/// slice), and finished rows keep decoding a padding token with their outputs ignored.
pub struct CandleLm {
    model: CandleModel,
    vocab: usize,
    max_seq_len: usize,
    pos: usize,
    /// Rows of the model's batch that are still live, in the caller's order.
    live: Vec<usize>,
    rows: usize,
    device: Device,
}

impl CandleLm {
    pub fn new(model: CandleModel, vocab: usize, max_seq_len: usize, device: &Device) -> Self {
        Self {
            model,
            vocab,
            max_seq_len,
            pos: 0,
            live: vec![],
            rows: 0,
            device: device.clone(),
        }
    }
}

impl CausalLm for CandleLm {
    fn prefill(&mut self, prompt: &[u32], rows: usize, capacity: usize) -> Result<Tensor> {
        if prompt.is_empty() {
            return Err(EngineError::InvalidSpec("empty prompt".into()));
        }
        if prompt.len() >= capacity.min(self.max_seq_len) {
            return Err(EngineError::InvalidSpec(format!(
                "prompt of {} tokens leaves no room in a context of {}",
                prompt.len(),
                capacity.min(self.max_seq_len)
            )));
        }
        self.rows = rows;
        self.live = (0..rows).collect();
        let mut logits = None;
        for (pos, &t) in prompt.iter().enumerate() {
            let x = Tensor::new(vec![t; rows].as_slice(), &self.device)?.unsqueeze(1)?;
            logits = Some(self.model.forward(&x, pos)?);
        }
        self.pos = prompt.len();
        Ok(logits.expect("prompt is not empty"))
    }

    fn step(&mut self, tokens: &[u32]) -> Result<Tensor> {
        let mut all = vec![0u32; self.rows];
        for (&row, &t) in self.live.iter().zip(tokens) {
            all[row] = t;
        }
        let x = Tensor::new(all.as_slice(), &self.device)?.unsqueeze(1)?;
        let logits = self.model.forward(&x, self.pos)?;
        self.pos += 1;
        let idx = Tensor::new(
            self.live
                .iter()
                .map(|&r| r as u32)
                .collect::<Vec<_>>()
                .as_slice(),
            &self.device,
        )?;
        Ok(logits.index_select(&idx, 0)?)
    }

    fn retain(&mut self, keep: &[usize]) -> Result<()> {
        self.live = keep.iter().map(|&i| self.live[i]).collect();
        Ok(())
    }

    fn vocab_size(&self) -> usize {
        self.vocab
    }

    fn max_seq_len(&self) -> usize {
        self.max_seq_len
    }
}

/// Everything needed to sample from a model.
pub struct LoadedModel {
    pub model: Box<dyn CausalLm>,
    pub tokenizer: tokenizer::Tok,
    pub template: chat::Template,
    /// `gguf` or `hf`, and the architecture.
    pub format: String,
    pub arch: String,
}

/// What to load, resolved from a spec.
pub struct LoadOptions<'a> {
    pub path: &'a Path,
    /// A tokenizer.json to use instead of the one in the model's files.
    pub tokenizer: Option<&'a Path>,
    pub weights: WeightMode,
    /// `auto` (from the model's metadata) or a template name.
    pub chat_template: &'a str,
    /// `own` (the lock-step llama decoder) or `candle` (candle-transformers' model, GGUF llama).
    pub backend: &'a str,
    pub max_seq_len: usize,
}

/// Load a GGUF file or a Hugging Face directory (config.json + *.safetensors + tokenizer.json).
pub fn load(o: &LoadOptions, device: &Device) -> Result<LoadedModel> {
    if o.path.is_dir() {
        let m = hf::load(o.path, o.max_seq_len, device)?;
        let tok = tokenizer::from_file(
            &o.tokenizer
                .map(Path::to_path_buf)
                .unwrap_or_else(|| o.path.join("tokenizer.json")),
        )?;
        let tpl_text = std::fs::read_to_string(o.path.join("tokenizer_config.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v["chat_template"].as_str().map(String::from));
        let template = chat::Template::resolve(o.chat_template, tpl_text.as_deref())?;
        return Ok(LoadedModel {
            model: m.0,
            tokenizer: tok,
            template,
            format: "hf".into(),
            arch: m.1,
        });
    }
    let g = gguf::open(o.path)?;
    let tok = match o.tokenizer {
        Some(p) => tokenizer::from_file(p)?,
        None => tokenizer::from_gguf(&g.content, o.path)?,
    };
    let tpl_text = g
        .content
        .metadata
        .get("tokenizer.chat_template")
        .and_then(|v| v.to_string().ok())
        .cloned();
    let template = chat::Template::resolve(o.chat_template, tpl_text.as_deref())?;
    let arch = g.arch.clone();
    let model: Box<dyn CausalLm> = match o.backend {
        "own" => gguf::load_model(g, o.path, o.weights, o.max_seq_len, device)?,
        "candle" => {
            if arch != "llama" {
                return Err(EngineError::InvalidSpec(format!(
                    "backend `candle` is for GGUF llama models; this file is `{arch}`"
                )));
            }
            let mut g = g;
            let vocab = g
                .content
                .tensor_infos
                .get("token_embd.weight")
                .map(|t| t.shape.dims()[0])
                .unwrap_or(0);
            let ctx = g
                .content
                .metadata
                .get("llama.context_length")
                .and_then(|v| v.to_u32().ok())
                .unwrap_or(4096) as usize;
            let m = candle_transformers::models::quantized_llama::ModelWeights::from_gguf(
                g.content,
                &mut g.reader,
                device,
            )
            .map_err(|e| EngineError::bad_file(o.path, format!("llama weights: {e}")))?;
            Box::new(CandleLm::new(
                CandleModel::Llama(m),
                vocab,
                o.max_seq_len.min(ctx),
                device,
            ))
        }
        other => return Err(EngineError::unknown("backend", other, ["own", "candle"])),
    };
    Ok(LoadedModel {
        model,
        tokenizer: tok,
        template,
        format: "gguf".into(),
        arch,
    })
}
