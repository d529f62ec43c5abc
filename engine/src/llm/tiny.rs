//! A tiny random llama (2 layers, hidden 32, 4 query / 2 key-value heads, a 262-token
//! byte-level vocabulary with three merges and three control tokens) written as a GGUF file or
//! a Hugging Face directory. For tests and demos that need a model without a download: its
//! output is noise, but every code path of loading, tokenizing and sampling runs on it.

use crate::error::{EngineError, Result};
use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use rand::SeedableRng;
use std::collections::HashMap;
use std::path::Path;

pub const HIDDEN: usize = 32;
pub const HEADS: usize = 4;
pub const KV_HEADS: usize = 2;
pub const FFN: usize = 64;
pub const LAYERS: usize = 2;

/// GPT-2's byte → printable character table.
pub fn byte_chars() -> Vec<char> {
    let mut bs: Vec<u32> = (b'!' as u32..=b'~' as u32)
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    let mut out = vec![' '; 256];
    for (b, c) in bs.iter().zip(cs) {
        out[*b as usize] = char::from_u32(c).expect("GPT-2's table maps to valid chars");
    }
    out
}

/// Token i < 256 is byte i; then three merges and three control tokens.
pub fn vocab() -> (Vec<String>, Vec<String>, Vec<i32>) {
    let bc = byte_chars();
    let mut tokens: Vec<String> = bc.iter().map(|c| c.to_string()).collect();
    let merges = vec!["h e".to_string(), "Ġ t".to_string(), "l l".to_string()];
    tokens.extend(["he", "Ġt", "ll"].map(String::from));
    tokens.extend(["<|endoftext|>", "<|im_start|>", "<|im_end|>"].map(String::from));
    let mut types = vec![1; 259];
    types.extend([3, 3, 3]);
    (tokens, merges, types)
}
pub const VOCAB: usize = 262;
pub const IM_START: u32 = 260;
pub const IM_END: u32 = 261;

fn randn(shape: &[usize], rng: &mut rand_chacha::ChaCha8Rng, scale: f32) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = crate::rng::randn_vec(n, rng)
        .into_iter()
        .map(|x| x * scale)
        .collect();
    Ok(Tensor::from_vec(v, shape, &Device::Cpu)?)
}

/// Random llama weights under Hugging Face names.
pub fn hf_weights(seed: u64) -> Result<Vec<(String, Tensor)>> {
    let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let hd = HIDDEN / HEADS;
    let mut w = vec![(
        "model.embed_tokens.weight".to_string(),
        randn(&[VOCAB, HIDDEN], &mut r, 0.5)?,
    )];
    for i in 0..LAYERS {
        let p = format!("model.layers.{i}");
        let ones = |r: &mut rand_chacha::ChaCha8Rng| -> Result<Tensor> {
            Ok((randn(&[HIDDEN], r, 0.1)? + 1.0)?)
        };
        w.push((format!("{p}.input_layernorm.weight"), ones(&mut r)?));
        w.push((
            format!("{p}.post_attention_layernorm.weight"),
            ones(&mut r)?,
        ));
        w.push((
            format!("{p}.self_attn.q_proj.weight"),
            randn(&[HEADS * hd, HIDDEN], &mut r, 0.3)?,
        ));
        w.push((
            format!("{p}.self_attn.k_proj.weight"),
            randn(&[KV_HEADS * hd, HIDDEN], &mut r, 0.3)?,
        ));
        w.push((
            format!("{p}.self_attn.v_proj.weight"),
            randn(&[KV_HEADS * hd, HIDDEN], &mut r, 0.3)?,
        ));
        w.push((
            format!("{p}.self_attn.o_proj.weight"),
            randn(&[HIDDEN, HEADS * hd], &mut r, 0.3)?,
        ));
        w.push((
            format!("{p}.mlp.gate_proj.weight"),
            randn(&[FFN, HIDDEN], &mut r, 0.3)?,
        ));
        w.push((
            format!("{p}.mlp.up_proj.weight"),
            randn(&[FFN, HIDDEN], &mut r, 0.3)?,
        ));
        w.push((
            format!("{p}.mlp.down_proj.weight"),
            randn(&[HIDDEN, FFN], &mut r, 0.3)?,
        ));
    }
    w.push((
        "model.norm.weight".into(),
        (randn(&[HIDDEN], &mut r, 0.1)? + 1.0)?,
    ));
    w.push((
        "lm_head.weight".into(),
        randn(&[VOCAB, HIDDEN], &mut r, 0.5)?,
    ));
    Ok(w)
}

/// The same kind of model as a GGUF llama (tied output head: no `output.weight`).
pub fn write_gguf(path: &Path, seed: u64, dtype: GgmlDType) -> Result<()> {
    let hf: HashMap<String, Tensor> = hf_weights(seed)?.into_iter().collect();
    let mut t: Vec<(String, QTensor)> = vec![];
    let mut put = |name: String, hf_name: &str| -> Result<()> {
        t.push((name, QTensor::quantize(&hf[hf_name], dtype)?));
        Ok(())
    };
    put("token_embd.weight".into(), "model.embed_tokens.weight")?;
    put("output_norm.weight".into(), "model.norm.weight")?;
    for i in 0..LAYERS {
        let p = format!("model.layers.{i}");
        for (g, h) in [
            ("attn_norm", "input_layernorm"),
            ("ffn_norm", "post_attention_layernorm"),
            ("attn_q", "self_attn.q_proj"),
            ("attn_k", "self_attn.k_proj"),
            ("attn_v", "self_attn.v_proj"),
            ("attn_output", "self_attn.o_proj"),
            ("ffn_gate", "mlp.gate_proj"),
            ("ffn_up", "mlp.up_proj"),
            ("ffn_down", "mlp.down_proj"),
        ] {
            put(format!("blk.{i}.{g}.weight"), &format!("{p}.{h}.weight"))?;
        }
    }
    let (tokens, merges, types) = vocab();
    let s = |v: &str| Value::String(v.to_string());
    let md: Vec<(&str, Value)> = vec![
        ("general.architecture", s("llama")),
        ("llama.embedding_length", Value::U32(HIDDEN as u32)),
        ("llama.block_count", Value::U32(LAYERS as u32)),
        ("llama.feed_forward_length", Value::U32(FFN as u32)),
        ("llama.attention.head_count", Value::U32(HEADS as u32)),
        ("llama.attention.head_count_kv", Value::U32(KV_HEADS as u32)),
        ("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
        ("llama.rope.freq_base", Value::F32(10000.0)),
        (
            "llama.rope.dimension_count",
            Value::U32((HIDDEN / HEADS) as u32),
        ),
        ("llama.context_length", Value::U32(256)),
        ("tokenizer.ggml.model", s("gpt2")),
        ("tokenizer.ggml.pre", s("smollm")),
        (
            "tokenizer.ggml.tokens",
            Value::Array(tokens.iter().map(|t| s(t)).collect()),
        ),
        (
            "tokenizer.ggml.merges",
            Value::Array(merges.iter().map(|t| s(t)).collect()),
        ),
        (
            "tokenizer.ggml.token_type",
            Value::Array(types.iter().map(|t| Value::I32(*t)).collect()),
        ),
        ("tokenizer.ggml.eos_token_id", Value::U32(IM_END)),
        ("tokenizer.ggml.bos_token_id", Value::U32(IM_START)),
        (
            "tokenizer.chat_template",
            s("{% for m in messages %}<|im_start|>{{ m.role }}\n{% endfor %}"),
        ),
    ];
    let mdr: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (*k, v)).collect();
    let tr: Vec<(&str, &QTensor)> = t.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut f = std::fs::File::create(path).map_err(|e| EngineError::io(path, e))?;
    gguf_file::write(&mut f, &mdr, &tr)?;
    Ok(())
}

/// A Hugging Face directory: config.json, model.safetensors, tokenizer.json.
pub fn write_hf(dir: &Path) -> Result<()> {
    let w = hf_weights(2)?;
    let map: HashMap<String, Tensor> = w.into_iter().collect();
    candle_core::safetensors::save(&map, dir.join("model.safetensors"))?;
    let cfg = serde_json::json!({
        "model_type": "llama", "vocab_size": VOCAB, "hidden_size": HIDDEN,
        "intermediate_size": FFN, "num_hidden_layers": LAYERS, "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "max_position_embeddings": 256, "tie_word_embeddings": false
    });
    std::fs::write(dir.join("config.json"), cfg.to_string())
        .map_err(|e| EngineError::io(dir, e))?;
    // The same tokenizer as the GGUF one, saved as tokenizer.json.
    let g = dir.join("t.gguf");
    write_gguf(&g, 1, GgmlDType::F32)?;
    let ct = super::gguf::open(&g)?.content;
    let tok = super::tokenizer::from_gguf(&ct, &g)?;
    tok.inner
        .save(dir.join("tokenizer.json"), false)
        .map_err(|e| EngineError::Tokenizer(format!("save: {e}")))?;
    std::fs::remove_file(&g).map_err(|e| EngineError::io(&g, e))?;
    Ok(())
}
