//! The llama family (llama, mistral-style GQA, qwen2 with q/k/v biases) as one decoder with a
//! KV cache built for lock-step sampling: the prompt is run once with batch 1, its cache is
//! copied to the N rows, and finished rows are dropped from the cache so later steps cost less.
//!
//! Weights come from a GGUF file (quantized matmuls, or dequantized to f32 / re-quantized to
//! Q8_0 at load) or from a Hugging Face checkpoint (dense). The numerics follow
//! `candle_transformers::models::{quantized_llama, llama}`, which the tests compare against.

use super::CausalLm;
use crate::error::{EngineError, Result};
use candle_core::quantized::QMatMul;
use candle_core::{DType, Device, IndexOp, Module, Tensor};

/// Shape and numeric constants of a llama-family model.
#[derive(Clone, Debug, PartialEq)]
pub struct LlamaConfig {
    pub vocab_size: usize,
    pub hidden: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
    pub rms_eps: f64,
    pub rope_theta: f32,
    /// Rotary pairs (2i, 2i+1) (GGUF llama, whose q/k rows are permuted for it) instead of
    /// (i, i + d/2) (Hugging Face layout, GGUF qwen2).
    pub rope_interleaved: bool,
    pub max_seq_len: usize,
}

/// A matmul with weights either quantized (GGUF blocks) or dense.
pub enum Proj {
    Quant(QMatMul),
    Dense(Tensor),
}

impl Proj {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Proj::Quant(q) => q.forward(&x.contiguous()?)?,
            Proj::Dense(w) => match x.dims() {
                [b, _, _] => x.matmul(&w.broadcast_left(*b)?.t()?)?,
                _ => x.matmul(&w.t()?)?,
            },
        })
    }
}

pub struct Linear {
    pub w: Proj,
    pub b: Option<Tensor>,
}

impl Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.w.forward(x)?;
        Ok(match &self.b {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }
}

pub struct Layer {
    pub attn_norm: Tensor,
    pub wq: Linear,
    pub wk: Linear,
    pub wv: Linear,
    pub wo: Linear,
    pub ffn_norm: Tensor,
    pub w_gate: Linear,
    pub w_up: Linear,
    pub w_down: Linear,
}

/// Per-layer key/value buffers of shape (rows, n_kv_head, capacity, head_dim), filled up to `len`.
struct Cache {
    k: Vec<Tensor>,
    v: Vec<Tensor>,
    len: usize,
    cap: usize,
}

pub struct Llama {
    pub cfg: LlamaConfig,
    /// (vocab, hidden), f32.
    pub embed: Tensor,
    pub layers: Vec<Layer>,
    pub norm: Tensor,
    pub output: Linear,
    cos: Tensor,
    sin: Tensor,
    cache: Option<Cache>,
    device: Device,
}

impl Llama {
    pub fn new(
        cfg: LlamaConfig,
        embed: Tensor,
        layers: Vec<Layer>,
        norm: Tensor,
        output: Linear,
        device: &Device,
    ) -> Result<Self> {
        if layers.len() != cfg.n_layer {
            return Err(EngineError::InvalidSpec(format!(
                "model config says {} layers, found {}",
                cfg.n_layer,
                layers.len()
            )));
        }
        if cfg.n_kv_head == 0 || !cfg.n_head.is_multiple_of(cfg.n_kv_head) {
            return Err(EngineError::InvalidSpec(format!(
                "{} attention heads are not a multiple of {} key/value heads",
                cfg.n_head, cfg.n_kv_head
            )));
        }
        let half = cfg.head_dim / 2;
        let inv: Vec<f32> = (0..half)
            .map(|i| 1.0 / cfg.rope_theta.powf(2.0 * i as f32 / cfg.head_dim as f32))
            .collect();
        let inv = Tensor::from_vec(inv, (1, half), device)?;
        let pos = Tensor::arange(0u32, cfg.max_seq_len as u32, device)?
            .to_dtype(DType::F32)?
            .reshape((cfg.max_seq_len, 1))?;
        let freqs = pos.matmul(&inv)?;
        Ok(Self {
            cos: freqs.cos()?,
            sin: freqs.sin()?,
            cfg,
            embed,
            layers,
            norm,
            output,
            cache: None,
            device: device.clone(),
        })
    }

    fn rope(&self, x: &Tensor, pos: usize) -> Result<Tensor> {
        let t = x.dim(2)?;
        let cos = self.cos.narrow(0, pos, t)?;
        let sin = self.sin.narrow(0, pos, t)?;
        let x = x.contiguous()?;
        Ok(if self.cfg.rope_interleaved {
            candle_nn::rotary_emb::rope_i(&x, &cos, &sin)?
        } else {
            candle_nn::rotary_emb::rope(&x, &cos, &sin)?
        })
    }

    /// Run `ids` (rows, t) at positions `pos..pos+t` through the decoder, appending to the cache,
    /// and return the logits of the last position, (rows, vocab).
    fn forward(&mut self, ids: &Tensor, pos: usize) -> Result<Tensor> {
        let (rows, t) = ids.dims2()?;
        let c = &self.cfg;
        let (nh, nkv, hd) = (c.n_head, c.n_kv_head, c.head_dim);
        let rep = nh / nkv;
        let cache = self
            .cache
            .as_ref()
            .ok_or_else(|| EngineError::InvalidSpec("decode step before the prompt".into()))?;
        if pos + t > cache.cap {
            return Err(EngineError::InvalidSpec(format!(
                "sequence of {} tokens exceeds the cache of {}",
                pos + t,
                cache.cap
            )));
        }
        let mut x = self
            .embed
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((rows, t, c.hidden))?;
        // Causal mask over the grouped query rows (rep·t, pos + t): query i·t + j sees keys ≤ pos + j.
        let mask = if t > 1 {
            let s = pos + t;
            let m: Vec<f32> = (0..rep * t)
                .flat_map(|r| {
                    let j = r % t;
                    (0..s).map(move |k| if k > pos + j { f32::NEG_INFINITY } else { 0.0 })
                })
                .collect();
            Some(Tensor::from_vec(m, (rep * t, s), &self.device)?)
        } else {
            None
        };
        let scale = 1.0 / (hd as f64).sqrt();
        for (li, layer) in self.layers.iter().enumerate() {
            let h = candle_nn::ops::rms_norm(&x, &layer.attn_norm, c.rms_eps as f32)?;
            let q = layer
                .wq
                .forward(&h)?
                .reshape((rows, t, nh, hd))?
                .transpose(1, 2)?;
            let k = layer
                .wk
                .forward(&h)?
                .reshape((rows, t, nkv, hd))?
                .transpose(1, 2)?;
            let v = layer
                .wv
                .forward(&h)?
                .reshape((rows, t, nkv, hd))?
                .transpose(1, 2)?
                .contiguous()?;
            let q = self.rope(&q, pos)?;
            let k = self.rope(&k, pos)?;
            let cache = self.cache.as_mut().expect("checked above");
            cache.k[li].slice_set(&k, 2, pos)?;
            cache.v[li].slice_set(&v, 2, pos)?;
            let kk = cache.k[li].narrow(2, 0, pos + t)?;
            let vv = cache.v[li].narrow(2, 0, pos + t)?;
            // Grouped-query attention without copying keys: the `rep` query heads that share a
            // key/value head become rows of one matrix.
            let q = q.reshape((rows, nkv, rep * t, hd))?;
            let att = (q.matmul(&kk.t()?)? * scale)?;
            let att = match &mask {
                Some(m) => att.broadcast_add(m)?,
                None => att,
            };
            let att = candle_nn::ops::softmax_last_dim(&att)?;
            let y = att.matmul(&vv.contiguous()?)?; // (rows, nkv, rep·t, hd)
            let y = y
                .reshape((rows, nh, t, hd))?
                .transpose(1, 2)?
                .reshape((rows, t, nh * hd))?;
            x = (x + layer.wo.forward(&y)?)?;
            let h = candle_nn::ops::rms_norm(&x, &layer.ffn_norm, c.rms_eps as f32)?;
            let g = candle_nn::ops::silu(&layer.w_gate.forward(&h)?)?;
            let u = layer.w_up.forward(&h)?;
            x = (x + layer.w_down.forward(&(g * u)?)?)?;
        }
        if let Some(cache) = self.cache.as_mut() {
            cache.len = pos + t;
        }
        let last = x.i((.., t - 1, ..))?.contiguous()?;
        let last = candle_nn::ops::rms_norm(&last, &self.norm, c.rms_eps as f32)?;
        Ok(self.output.forward(&last)?.to_dtype(DType::F32)?)
    }

    fn empty_cache(&self, rows: usize, cap: usize) -> Result<Cache> {
        let c = &self.cfg;
        let shape = (rows, c.n_kv_head, cap, c.head_dim);
        let mk = || Tensor::zeros(shape, DType::F32, &self.device);
        Ok(Cache {
            k: (0..c.n_layer)
                .map(|_| mk())
                .collect::<candle_core::Result<_>>()?,
            v: (0..c.n_layer)
                .map(|_| mk())
                .collect::<candle_core::Result<_>>()?,
            len: 0,
            cap,
        })
    }
}

impl CausalLm for Llama {
    fn prefill(&mut self, prompt: &[u32], rows: usize, capacity: usize) -> Result<Tensor> {
        if prompt.is_empty() {
            return Err(EngineError::InvalidSpec("empty prompt".into()));
        }
        let cap = capacity.min(self.cfg.max_seq_len);
        if prompt.len() >= cap {
            return Err(EngineError::InvalidSpec(format!(
                "prompt of {} tokens leaves no room in a context of {cap}",
                prompt.len()
            )));
        }
        self.cache = Some(self.empty_cache(1, cap)?);
        let ids = Tensor::new(prompt, &self.device)?.unsqueeze(0)?;
        let logits = self.forward(&ids, 0)?;
        // Copy the prompt's keys/values to every row.
        let one = self.cache.take().expect("just built");
        let mut many = self.empty_cache(rows, cap)?;
        for (dst, src) in many
            .k
            .iter_mut()
            .chain(many.v.iter_mut())
            .zip(one.k.iter().chain(one.v.iter()))
        {
            let s = src.narrow(2, 0, one.len)?;
            let s = s
                .broadcast_as((rows, s.dim(1)?, one.len, s.dim(3)?))?
                .contiguous()?;
            dst.slice_set(&s, 2, 0)?;
        }
        many.len = one.len;
        self.cache = Some(many);
        Ok(logits.broadcast_as((rows, logits.dim(1)?))?.contiguous()?)
    }

    fn step(&mut self, tokens: &[u32]) -> Result<Tensor> {
        let pos = self.cache.as_ref().map(|c| c.len).unwrap_or(0);
        let ids = Tensor::new(tokens, &self.device)?.unsqueeze(1)?;
        self.forward(&ids, pos)
    }

    fn retain(&mut self, keep: &[usize]) -> Result<()> {
        let Some(cache) = self.cache.as_mut() else {
            return Ok(());
        };
        let idx = Tensor::new(
            keep.iter()
                .map(|&i| i as u32)
                .collect::<Vec<_>>()
                .as_slice(),
            &self.device,
        )?;
        for t in cache.k.iter_mut().chain(cache.v.iter_mut()) {
            *t = t.index_select(&idx, 0)?;
        }
        Ok(())
    }

    fn vocab_size(&self) -> usize {
        self.cfg.vocab_size
    }

    fn max_seq_len(&self) -> usize {
        self.cfg.max_seq_len
    }
}
