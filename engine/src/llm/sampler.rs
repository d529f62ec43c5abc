//! Lock-step sampling of N continuations of one prompt.
//!
//! Each sample has its own seed (its own ChaCha stream), so a sample's tokens depend on its seed
//! and the logits only. Temperature, top-k and top-p act in that order on the logits; the
//! log-probability recorded for a token is the model's own (temperature 1, before truncation).

use super::tokenizer::Tok;
use super::CausalLm;
use crate::error::Result;
use crate::jobs::CancelToken;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::time::Instant;

#[derive(Clone, Debug, PartialEq)]
pub struct Params {
    /// 0 is greedy decoding.
    pub temperature: f64,
    /// Nucleus mass in (0, 1]; 1 turns it off.
    pub top_p: f64,
    /// Keep the k most likely tokens; 0 turns it off.
    pub top_k: usize,
    pub max_new_tokens: usize,
    /// Generation stops at the first of these strings, which is cut off the text.
    pub stop: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Finish {
    /// An end-of-sequence token.
    Eos,
    /// A stop string.
    Stop,
    /// `max_new_tokens` reached.
    Length,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub text: String,
    pub tokens: Vec<u32>,
    /// Sum of the model's log-probabilities of the generated tokens.
    pub logprob_sum: f64,
    pub finish: Finish,
}

impl Sample {
    pub fn mean_logprob(&self) -> f64 {
        if self.tokens.is_empty() {
            0.0
        } else {
            self.logprob_sum / self.tokens.len() as f64
        }
    }
}

/// Work done, for throughput figures.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stats {
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    pub prefill_s: f64,
    pub decode_s: f64,
    pub decode_steps: usize,
}

/// Draw one token from a row of logits; returns (token, model log-probability of it).
pub fn draw(logits: &[f32], p: &Params, rng: &mut ChaCha8Rng) -> (u32, f64) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse = max as f64
        + logits
            .iter()
            .map(|&l| ((l - max) as f64).exp())
            .sum::<f64>()
            .ln();
    let lp = |i: usize| logits[i] as f64 - lse;
    if p.temperature <= 0.0 {
        let mut best = 0;
        for (i, &l) in logits.iter().enumerate() {
            if l > logits[best] {
                best = i;
            }
        }
        return (best as u32, lp(best));
    }
    let inv_t = 1.0 / p.temperature;
    // Unnormalized weights exp((l - max)/T).
    let w: Vec<f64> = logits
        .iter()
        .map(|&l| ((l - max) as f64 * inv_t).exp())
        .collect();
    let mut cand: Vec<usize> = (0..w.len()).collect();
    let by_weight = |a: &usize, b: &usize| w[*b].total_cmp(&w[*a]).then(a.cmp(b));
    if p.top_k > 0 && p.top_k < cand.len() {
        cand.select_nth_unstable_by(p.top_k - 1, by_weight);
        cand.truncate(p.top_k);
    }
    if p.top_p < 1.0 {
        let total: f64 = cand.iter().map(|&i| w[i]).sum();
        let need = p.top_p * total;
        // The nucleus is a prefix of the tokens sorted by weight; tokens at or above a threshold
        // whose mass reaches `need` contain it, so only those are sorted.
        let mut thr = 1e-3;
        let mut kept: Vec<usize>;
        loop {
            kept = cand.iter().copied().filter(|&i| w[i] >= thr).collect();
            let mass: f64 = kept.iter().map(|&i| w[i]).sum();
            if mass >= need || thr == 0.0 {
                break;
            }
            thr = if thr < 1e-30 { 0.0 } else { thr * 1e-3 };
        }
        kept.sort_unstable_by(by_weight);
        let mut acc = 0.0;
        let mut cut = kept.len();
        for (j, &i) in kept.iter().enumerate() {
            acc += w[i];
            if acc >= need {
                cut = j + 1;
                break;
            }
        }
        kept.truncate(cut);
        cand = kept;
    } else {
        cand.sort_unstable();
    }
    let total: f64 = cand.iter().map(|&i| w[i]).sum();
    let u: f64 = rng.gen::<f64>() * total;
    let mut acc = 0.0;
    for &i in &cand {
        acc += w[i];
        if u < acc {
            return (i as u32, lp(i));
        }
    }
    let last = *cand.last().expect("at least one candidate");
    (last as u32, lp(last))
}

struct Row {
    idx: usize,
    rng: ChaCha8Rng,
    tokens: Vec<u32>,
    logprob: f64,
    /// Length of the text already searched for stop strings.
    checked: usize,
}

/// Sample one continuation of `prompt` per seed, `batch` rows at a time.
#[allow(clippy::too_many_arguments)]
pub fn sample(
    model: &mut dyn CausalLm,
    tok: &Tok,
    prompt: &[u32],
    seeds: &[u64],
    batch: usize,
    p: &Params,
    cancel: &CancelToken,
    stats: &mut Stats,
) -> Result<Vec<Sample>> {
    let batch = batch.max(1);
    let mut out: Vec<Option<Sample>> = vec![None; seeds.len()];
    let cap = prompt.len() + p.max_new_tokens + 1;
    let max_stop = p.stop.iter().map(|s| s.len()).max().unwrap_or(0);
    for (chunk_i, chunk) in seeds.chunks(batch).enumerate() {
        let t0 = Instant::now();
        let mut logits = model.prefill(prompt, chunk.len(), cap)?;
        stats.prefill_s += t0.elapsed().as_secs_f64();
        stats.prompt_tokens += prompt.len();
        let t1 = Instant::now();
        let mut rows: Vec<Row> = chunk
            .iter()
            .enumerate()
            .map(|(j, &s)| Row {
                idx: chunk_i * batch + j,
                rng: ChaCha8Rng::seed_from_u64(s),
                tokens: vec![],
                logprob: 0.0,
                checked: 0,
            })
            .collect();
        loop {
            cancel.check()?;
            let l = logits.to_vec2::<f32>()?;
            let mut keep = vec![];
            let mut next = vec![];
            for (j, row) in rows.iter_mut().enumerate() {
                let (t, lp) = draw(&l[j], p, &mut row.rng);
                stats.generated_tokens += 1;
                let finish = if tok.eos.contains(&t) {
                    Some(Finish::Eos)
                } else {
                    row.tokens.push(t);
                    row.logprob += lp;
                    let mut f = None;
                    if max_stop > 0 {
                        let text = tok.decode(&row.tokens)?;
                        let from = row.checked.saturating_sub(max_stop);
                        let from = (0..=from)
                            .rev()
                            .find(|&i| text.is_char_boundary(i))
                            .unwrap_or(0);
                        if p.stop.iter().any(|s| text[from..].contains(s.as_str())) {
                            f = Some(Finish::Stop);
                        }
                        row.checked = text.len();
                    }
                    if f.is_none() && row.tokens.len() >= p.max_new_tokens {
                        f = Some(Finish::Length);
                    }
                    f
                };
                if let Some(f) = finish {
                    let mut text = tok.decode(&row.tokens)?;
                    if let Some(cut) = p.stop.iter().filter_map(|s| text.find(s.as_str())).min() {
                        text.truncate(cut);
                    }
                    out[row.idx] = Some(Sample {
                        text,
                        tokens: std::mem::take(&mut row.tokens),
                        logprob_sum: row.logprob,
                        finish: f,
                    });
                } else {
                    keep.push(j);
                    next.push(t);
                }
            }
            if keep.is_empty() {
                break;
            }
            if keep.len() < rows.len() {
                model.retain(&keep)?;
                let mut k = keep.iter().peekable();
                let mut j = 0;
                rows.retain(|_| {
                    let hit = k.peek() == Some(&&j);
                    if hit {
                        k.next();
                    }
                    j += 1;
                    hit
                });
            }
            logits = model.step(&next)?;
            stats.decode_steps += 1;
        }
        stats.decode_s += t1.elapsed().as_secs_f64();
    }
    Ok(out
        .into_iter()
        .map(|s| s.expect("every row finishes"))
        .collect())
}
