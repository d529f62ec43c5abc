//! Tokenizers: rebuilt from a GGUF file's metadata (byte-level BPE vocabularies) or read from a
//! Hugging Face `tokenizer.json`.
//!
//! A GGUF file names its pre-tokenizer in `tokenizer.ggml.pre`; the split rules differ per model
//! family and a wrong one gives wrong ids without any error (e.g. GPT-2's rule with a prefix space
//! shifts every id after a special token for SmolLM2). Unknown pre-tokenizers are refused: pass a
//! `tokenizer.json` for those models instead.

use crate::error::{EngineError, Result};
use candle_core::quantized::gguf_file;
use std::path::Path;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer};

/// GPT-2's split rule without the prefix space (what `ByteLevel` applies with `use_regex`).
const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The pre-tokenizers known by their `tokenizer.ggml.pre` name.
pub const KNOWN_PRE: [&str; 5] = ["smollm", "gpt2", "llama-bpe", "llama3", "qwen2"];

/// A tokenizer plus the ids the sampler needs.
#[derive(Clone)]
pub struct Tok {
    pub inner: Tokenizer,
    /// Ids that end a sample (end-of-turn and end-of-text tokens).
    pub eos: Vec<u32>,
    pub bos: Option<u32>,
    /// Whether the model expects the BOS id before the prompt.
    pub add_bos: bool,
}

impl Tok {
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| EngineError::Tokenizer(format!("encode: {e}")))?;
        let mut ids = Vec::with_capacity(enc.len() + 1);
        if self.add_bos {
            ids.extend(self.bos);
        }
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, true)
            .map_err(|e| EngineError::Tokenizer(format!("decode: {e}")))
    }

    pub fn token_id(&self, s: &str) -> Option<u32> {
        self.inner.token_to_id(s)
    }
}

fn md<'a>(ct: &'a gguf_file::Content, key: &str, path: &Path) -> Result<&'a gguf_file::Value> {
    ct.metadata
        .get(key)
        .ok_or_else(|| EngineError::bad_file(path, format!("GGUF metadata lacks `{key}`")))
}

fn md_u32(ct: &gguf_file::Content, key: &str) -> Option<u32> {
    ct.metadata.get(key).and_then(|v| v.to_u32().ok())
}

/// Rebuild the tokenizer stored in a GGUF file's metadata.
pub fn from_gguf(ct: &gguf_file::Content, path: &Path) -> Result<Tok> {
    let bad = |m: String| EngineError::bad_file(path, m);
    let model = md(ct, "tokenizer.ggml.model", path)?
        .to_string()
        .map_err(|e| bad(format!("tokenizer.ggml.model: {e}")))?
        .clone();
    if model != "gpt2" {
        return Err(bad(format!(
            "tokenizer model `{model}` in GGUF metadata is not supported (only byte-level BPE, \
             `gpt2`); give the model's tokenizer.json with the spec's `tokenizer` field"
        )));
    }
    let pre = ct
        .metadata
        .get("tokenizer.ggml.pre")
        .and_then(|v| v.to_string().ok())
        .cloned()
        .unwrap_or_else(|| "gpt2".into());
    let tokens: Vec<String> = md(ct, "tokenizer.ggml.tokens", path)?
        .to_vec()
        .map_err(|e| bad(format!("tokenizer.ggml.tokens: {e}")))?
        .iter()
        .map(|v| v.to_string().cloned())
        .collect::<candle_core::Result<_>>()
        .map_err(|e| bad(format!("tokenizer.ggml.tokens: {e}")))?;
    let merges: Vec<(String, String)> = md(ct, "tokenizer.ggml.merges", path)?
        .to_vec()
        .map_err(|e| bad(format!("tokenizer.ggml.merges: {e}")))?
        .iter()
        .map(|v| {
            let s = v.to_string().map_err(|e| bad(format!("merge: {e}")))?;
            let (a, b) = s
                .split_once(' ')
                .ok_or_else(|| bad(format!("merge `{s}` is not two tokens")))?;
            Ok((a.to_string(), b.to_string()))
        })
        .collect::<Result<_>>()?;
    let types: Vec<i32> = match ct.metadata.get("tokenizer.ggml.token_type") {
        Some(v) => v
            .to_vec()
            .map_err(|e| bad(format!("tokenizer.ggml.token_type: {e}")))?
            .iter()
            .map(|t| t.to_i32().unwrap_or(1))
            .collect(),
        None => vec![1; tokens.len()],
    };
    let vocab: tokenizers::models::bpe::Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| bad(format!("BPE from GGUF metadata: {e}")))?;
    let mut tk = Tokenizer::new(bpe);
    let byte_level = || ByteLevel::new(false, true, true);
    let split = |pat: &str| -> Result<PreTokenizerWrapper> {
        let s = Split::new(
            SplitPattern::Regex(pat.to_string()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|e| bad(format!("pre-tokenizer regex: {e}")))?;
        Ok(s.into())
    };
    let pre_tok: PreTokenizerWrapper = match pre.as_str() {
        // SmolLM: digits one by one, then GPT-2's byte-level split without a prefix space.
        "smollm" => Sequence::new(vec![Digits::new(true).into(), byte_level().into()]).into(),
        "gpt2" => byte_level().into(),
        "llama-bpe" | "llama3" => Sequence::new(vec![
            split(LLAMA3_PATTERN)?,
            ByteLevel::new(false, true, false).into(),
        ])
        .into(),
        "qwen2" => Sequence::new(vec![
            split(QWEN2_PATTERN)?,
            ByteLevel::new(false, true, false).into(),
        ])
        .into(),
        other => {
            return Err(bad(format!(
                "pre-tokenizer `{other}` (tokenizer.ggml.pre) is not known; known: {}; give the \
                 model's tokenizer.json with the spec's `tokenizer` field",
                KNOWN_PRE.join(", ")
            )))
        }
    };
    tk.with_pre_tokenizer(Some(pre_tok));
    tk.with_decoder(Some(ByteLevelDecoder::default()));
    // Control (3) and user-defined (4) tokens are matched whole, before the BPE.
    let special: Vec<AddedToken> = tokens
        .iter()
        .zip(types.iter())
        .filter(|(_, t)| **t == 3 || **t == 4)
        .map(|(s, _)| AddedToken::from(s.clone(), true))
        .collect();
    tk.add_special_tokens(special)
        .map_err(|e| bad(format!("special tokens: {e}")))?;
    let eos_id = md_u32(ct, "tokenizer.ggml.eos_token_id");
    let bos = md_u32(ct, "tokenizer.ggml.bos_token_id");
    let add_bos = ct
        .metadata
        .get("tokenizer.ggml.add_bos_token")
        .and_then(|v| v.to_bool().ok())
        .unwrap_or(false);
    let mut eos: Vec<u32> = eos_id.into_iter().collect();
    for name in [
        "<|im_end|>",
        "<|eot_id|>",
        "<|endoftext|>",
        "<end_of_turn>",
        "<eos>",
    ] {
        if let Some(&id) = vocab_lookup(&tokens, name).as_ref() {
            if !eos.contains(&id) {
                eos.push(id);
            }
        }
    }
    Ok(Tok {
        inner: tk,
        eos,
        bos,
        add_bos,
    })
}

fn vocab_lookup(tokens: &[String], name: &str) -> Option<u32> {
    tokens.iter().position(|t| t == name).map(|i| i as u32)
}

/// Read a Hugging Face `tokenizer.json`, with end-of-sequence ids from `tokenizer_config.json`
/// or `generation_config.json` beside it when present, else from the common special names.
pub fn from_file(path: &Path) -> Result<Tok> {
    if !path.exists() {
        return Err(EngineError::bad_file(path, "tokenizer.json not found"));
    }
    let inner = Tokenizer::from_file(path)
        .map_err(|e| EngineError::bad_file(path, format!("not a readable tokenizer.json: {e}")))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut eos = vec![];
    let mut bos = None;
    let mut add_bos = false;
    if let Ok(text) = std::fs::read_to_string(dir.join("tokenizer_config.json")) {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
            let tok_name = |k: &str| match &v[k] {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Object(o) => {
                    o.get("content").and_then(|c| c.as_str()).map(String::from)
                }
                _ => None,
            };
            if let Some(id) = tok_name("eos_token").and_then(|s| inner.token_to_id(&s)) {
                eos.push(id);
            }
            bos = tok_name("bos_token").and_then(|s| inner.token_to_id(&s));
            add_bos = v["add_bos_token"].as_bool().unwrap_or(false);
        }
    }
    for name in [
        "<|im_end|>",
        "<|eot_id|>",
        "<|endoftext|>",
        "<end_of_turn>",
        "</s>",
        "<eos>",
    ] {
        if let Some(id) = inner.token_to_id(name) {
            if !eos.contains(&id) {
                eos.push(id);
            }
        }
    }
    Ok(Tok {
        inner,
        eos,
        bos,
        add_bos,
    })
}
