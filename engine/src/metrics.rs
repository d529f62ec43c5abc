//! Classification metrics: error, negative log-likelihood, Brier score and expected calibration
//! error (15 equal-width confidence bins), accumulated in f64 over any number of batches.

use serde::{Deserialize, Serialize};

pub const ECE_BINS: usize = 15;

/// Metrics over a set of samples.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    pub n: usize,
    /// Fraction of samples whose arg-max prediction is wrong.
    pub error: f64,
    /// Mean −log p(y).
    pub nll: f64,
    /// Mean Σ_c (p_c − 1[c = y])².
    pub brier: f64,
    /// Σ_bins (n_b/n)·|acc_b − conf_b| over 15 equal-width bins of the max probability.
    pub ece: f64,
}

#[derive(Clone, Debug, Default)]
pub struct Accumulator {
    n: usize,
    wrong: usize,
    nll: f64,
    brier: f64,
    bin_n: [usize; ECE_BINS],
    bin_conf: [f64; ECE_BINS],
    bin_correct: [usize; ECE_BINS],
}

/// Log-softmax of one row of logits, in f64.
pub fn log_softmax(row: &[f32]) -> Vec<f64> {
    let max = row.iter().fold(f64::NEG_INFINITY, |m, v| m.max(*v as f64));
    let lse = max
        + row
            .iter()
            .map(|v| (*v as f64 - max).exp())
            .sum::<f64>()
            .ln();
    row.iter().map(|v| *v as f64 - lse).collect()
}

/// Shannon entropy −Σ p log p (nats) of a probability row.
pub fn entropy(p: &[f64]) -> f64 {
    -p.iter()
        .filter(|v| **v > 0.0)
        .map(|v| v * v.ln())
        .sum::<f64>()
}

/// Index of the first maximum.
pub fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, v) in row.iter().enumerate() {
        if *v > row[best] {
            best = i;
        }
    }
    best
}

impl Accumulator {
    pub fn new() -> Self {
        Self::default()
    }

    /// Add one sample given its log-probabilities.
    pub fn add_log_probs(&mut self, logp: &[f64], label: usize) {
        let p: Vec<f64> = logp.iter().map(|v| v.exp()).collect();
        let mut pred = 0;
        for c in 1..p.len() {
            if p[c] > p[pred] {
                pred = c;
            }
        }
        let conf = p[pred];
        self.n += 1;
        let correct = pred == label;
        self.wrong += (!correct) as usize;
        self.nll -= logp[label];
        self.brier += p
            .iter()
            .enumerate()
            .map(|(c, v)| {
                let t = if c == label { 1.0 } else { 0.0 };
                (v - t) * (v - t)
            })
            .sum::<f64>();
        // Bin b covers (b/15, (b+1)/15]; confidence 0 falls into bin 0.
        let b = ((conf * ECE_BINS as f64).ceil() as usize).clamp(1, ECE_BINS) - 1;
        self.bin_n[b] += 1;
        self.bin_conf[b] += conf;
        self.bin_correct[b] += correct as usize;
    }

    /// Add a batch of logits (row-major, `classes` per row).
    pub fn add_logits(&mut self, logits: &[f32], classes: usize, labels: &[u8]) {
        for (row, y) in logits.chunks(classes).zip(labels) {
            self.add_log_probs(&log_softmax(row), *y as usize);
        }
    }

    /// Add a batch of probabilities (for methods that output probabilities, e.g. LAME).
    pub fn add_probs(&mut self, probs: &[f32], classes: usize, labels: &[u8]) {
        for (row, y) in probs.chunks(classes).zip(labels) {
            let logp: Vec<f64> = row.iter().map(|v| (*v as f64).max(1e-45).ln()).collect();
            self.add_log_probs(&logp, *y as usize);
        }
    }

    pub fn merge(&mut self, o: &Accumulator) {
        self.n += o.n;
        self.wrong += o.wrong;
        self.nll += o.nll;
        self.brier += o.brier;
        for b in 0..ECE_BINS {
            self.bin_n[b] += o.bin_n[b];
            self.bin_conf[b] += o.bin_conf[b];
            self.bin_correct[b] += o.bin_correct[b];
        }
    }

    pub fn n(&self) -> usize {
        self.n
    }

    pub fn finish(&self) -> Metrics {
        let n = self.n.max(1) as f64;
        let ece = (0..ECE_BINS)
            .filter(|b| self.bin_n[*b] > 0)
            .map(|b| {
                let nb = self.bin_n[b] as f64;
                (nb / n) * (self.bin_correct[b] as f64 / nb - self.bin_conf[b] / nb).abs()
            })
            .sum();
        Metrics {
            n: self.n,
            error: self.wrong as f64 / n,
            nll: self.nll / n,
            brier: self.brier / n,
            ece,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entropy_by_hand() {
        assert!((entropy(&[0.5, 0.5]) - std::f64::consts::LN_2).abs() < 1e-12);
        assert!((entropy(&[0.25; 4]) - 4f64.ln()).abs() < 1e-12);
        assert_eq!(entropy(&[1.0, 0.0]), 0.0);
        // −(0.7 ln 0.7 + 0.2 ln 0.2 + 0.1 ln 0.1) = 0.8018185525...
        assert!((entropy(&[0.7, 0.2, 0.1]) - 0.801_818_552_5).abs() < 1e-9);
    }

    #[test]
    fn metrics_by_hand() {
        // Two samples, 2 classes. Probabilities chosen exactly through log-probabilities.
        // s1: p = (0.8, 0.2), y = 0 (correct, conf 0.8). s2: p = (0.6, 0.4), y = 1 (wrong, conf 0.6).
        let mut a = Accumulator::new();
        a.add_log_probs(&[0.8f64.ln(), 0.2f64.ln()], 0);
        a.add_log_probs(&[0.6f64.ln(), 0.4f64.ln()], 1);
        let m = a.finish();
        assert_eq!(m.n, 2);
        assert_eq!(m.error, 0.5);
        // NLL = (−ln 0.8 − ln 0.4)/2 = (0.22314 + 0.91629)/2.
        assert!((m.nll - (-(0.8f64.ln()) - 0.4f64.ln()) / 2.0).abs() < 1e-12);
        // Brier = ((0.2² + 0.2²) + (0.6² + 0.6²))/2 = (0.08 + 0.72)/2 = 0.4.
        assert!((m.brier - 0.4).abs() < 1e-12);
        // Bins: 0.8 → bin 11 ((11/15, 12/15]), 0.6 → bin 8 ((8/15, 9/15]); each |acc − conf|/2:
        // |1 − 0.8|/2 + |0 − 0.6|/2 = 0.1 + 0.3.
        assert!((m.ece - 0.4).abs() < 1e-12);
    }

    #[test]
    fn same_bin_averages_before_taking_the_gap() {
        // 0.94 and 0.96 both fall in the last bin (14/15, 1]: acc = 1/2, conf = 0.95 → ECE = 0.45.
        let mut a = Accumulator::new();
        a.add_log_probs(&[0.94f64.ln(), 0.06f64.ln()], 0);
        a.add_log_probs(&[0.96f64.ln(), 0.04f64.ln()], 1);
        assert!((a.finish().ece - 0.45).abs() < 1e-12);
    }

    #[test]
    fn logits_path_equals_log_prob_path_and_merge_adds() {
        let logits = [2.0f32, 0.0, -1.0, 0.5, 0.5, 3.0];
        let mut a = Accumulator::new();
        a.add_logits(&logits, 3, &[0, 2]);
        let mut b = Accumulator::new();
        b.add_log_probs(&log_softmax(&logits[..3]), 0);
        let mut c = Accumulator::new();
        c.add_log_probs(&log_softmax(&logits[3..]), 2);
        b.merge(&c);
        assert_eq!(a.finish(), b.finish());
        // log_softmax by hand: [2, 0, −1] → 2 − ln(e² + 1 + e⁻¹).
        let l = log_softmax(&[2.0, 0.0, -1.0]);
        assert!((l[0] - (2.0 - (2f64.exp() + 1.0 + (-1f64).exp()).ln())).abs() < 1e-12);
    }
}
