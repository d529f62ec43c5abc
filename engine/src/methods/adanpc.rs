//! AdaNPC (Zhang et al., ICML 2023): a non-parametric classifier over a memory of features.
//!
//! - the model stays frozen (running statistics); features are its L2-normalized penultimate
//!   features;
//! - the memory starts with `source_samples` clean training images' features and true labels;
//! - a test sample's prediction is the vote of its `k` (100) most cosine-similar memory entries,
//!   weighted by softmax(similarity / temperature (0.1)) over those k;
//! - after the batch is predicted, every sample whose top vote share is at least `beta` (0.1)
//!   joins the memory with its predicted label;
//! - the memory holds at most `memory_size` entries: when full, the oldest test entries leave
//!   first and the source entries stay (the original grows without bound).
//!
//! The output is log(vote) (so softmax of the "logits" is the vote). `reset` drops every test
//! entry. `beta` is a vote share, so it can never exceed 1 and any value ≤ 1/C admits every
//! sample; the default keeps the paper's 0.1.

use super::{clean_features, l2_normalize, BatchOutput, Counters, Method, MethodEnv, MethodSpec};
use crate::error::Result;
use crate::models::Model;
use crate::nn::BnMode;
use candle_core::Tensor;

pub struct Adanpc {
    model: Model,
    k: usize,
    temperature: f64,
    beta: f64,
    memory_size: usize,
    /// (M, D) normalized features: the source entries first, then test entries, oldest first.
    memory: Tensor,
    labels: Vec<u8>,
    n_source: usize,
    counters: Counters,
}

impl Adanpc {
    pub fn new(model: Model, spec: &MethodSpec, env: &MethodEnv) -> Result<Self> {
        let MethodSpec::Adanpc {
            k,
            temperature,
            beta,
            memory_size,
            source_samples,
        } = spec
        else {
            unreachable!("Adanpc::new with {spec:?}")
        };
        model.store().set_trainable(|_| false);
        let clean = env.clean_set("adanpc")?;
        let (feats, labels, dim) =
            clean_features(&model, clean, *source_samples, env.batch_size, BnMode::Eval)?;
        let n = labels.len();
        let memory = l2_normalize(&Tensor::from_vec(feats, (n, dim), model.device())?)?;
        Ok(Self {
            model,
            k: *k,
            temperature: *temperature,
            beta: *beta,
            memory_size: *memory_size,
            memory,
            labels,
            n_source: n,
            counters: Counters::default(),
        })
    }

    #[cfg(test)]
    pub fn memory_len(&self) -> usize {
        self.labels.len()
    }

    /// (normalized features, votes row-major N × C) of a batch.
    fn vote(&self, x: &Tensor) -> Result<(Tensor, Vec<f64>, usize)> {
        let (feats, logits) = self.model.forward_features(x, BnMode::Eval)?;
        let c = logits.dim(1)?;
        let f = l2_normalize(&feats)?;
        let sims = f.matmul(&self.memory.t()?)?;
        let (n, m) = sims.dims2()?;
        let sims = sims.flatten_all()?.to_vec1::<f32>()?;
        let k = self.k.min(m);
        let mut votes = vec![0f64; n * c];
        for i in 0..n {
            let row = &sims[i * m..(i + 1) * m];
            let mut idx: Vec<usize> = (0..m).collect();
            // Highest similarity first; ties by memory position, for determinism.
            idx.select_nth_unstable_by(k - 1, |&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
            let top = &idx[..k];
            let mx = top
                .iter()
                .map(|&j| row[j] as f64)
                .fold(f64::NEG_INFINITY, f64::max);
            let w: Vec<f64> = top
                .iter()
                .map(|&j| ((row[j] as f64 - mx) / self.temperature).exp())
                .collect();
            let z: f64 = w.iter().sum();
            for (&j, wj) in top.iter().zip(&w) {
                votes[i * c + self.labels[j] as usize] += wj / z;
            }
        }
        Ok((f, votes, c))
    }
}

fn log_votes(v: &[f64]) -> Vec<f32> {
    v.iter().map(|p| p.max(1e-30).ln() as f32).collect()
}

impl Method for Adanpc {
    fn adapt_and_predict(&mut self, x: &Tensor) -> Result<BatchOutput> {
        let (f, votes, c) = self.vote(x)?;
        let n = votes.len() / c;
        let mut keep = vec![];
        let mut new_labels = vec![];
        for i in 0..n {
            let row = &votes[i * c..(i + 1) * c];
            let (arg, top) = row
                .iter()
                .enumerate()
                .fold(
                    (0, f64::NEG_INFINITY),
                    |b, (j, &p)| if p > b.1 { (j, p) } else { b },
                );
            if top >= self.beta && top.is_finite() {
                keep.push(i as u32);
                new_labels.push(arg as u8);
            }
        }
        if keep.is_empty() {
            self.counters.empty_batches += 1;
        } else {
            let idx = Tensor::new(keep.as_slice(), x.device())?;
            let add = f.index_select(&idx, 0)?;
            self.memory = Tensor::cat(&[&self.memory, &add], 0)?;
            self.labels.extend(new_labels);
            self.counters.samples_used += keep.len() as u64;
            let over = self.labels.len().saturating_sub(self.memory_size);
            if over > 0 {
                // Drop the oldest test entries, keep the source ones.
                let m = self.labels.len();
                let src = self.memory.narrow(0, 0, self.n_source)?;
                let rest = self
                    .memory
                    .narrow(0, self.n_source + over, m - self.n_source - over)?;
                self.memory = Tensor::cat(&[&src, &rest], 0)?;
                self.labels.drain(self.n_source..self.n_source + over);
            }
        }
        Ok(BatchOutput {
            logits: log_votes(&votes),
            skipped_update: false,
        })
    }

    fn predict(&mut self, x: &Tensor) -> Result<Vec<f32>> {
        Ok(log_votes(&self.vote(x)?.1))
    }

    fn reset(&mut self) -> Result<()> {
        self.memory = self.memory.narrow(0, 0, self.n_source)?.copy()?;
        self.labels.truncate(self.n_source);
        self.counters = Counters::default();
        Ok(())
    }

    fn adapted_parameters(&self) -> Vec<String> {
        vec![]
    }

    fn counters(&self) -> Counters {
        self.counters
    }

    fn model(&self) -> &Model {
        &self.model
    }
}
