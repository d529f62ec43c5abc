//! Losses, written with plain differentiable ops (no fused softmax: candle's fused
//! `softmax_last_dim` drops gradients).

use crate::error::Result;
use candle_core::{Tensor, D};

/// Row-wise log-softmax of (N, C) logits. The max is detached: it only shifts for stability and
/// its gradient cancels exactly.
pub fn log_softmax(logits: &Tensor) -> Result<Tensor> {
    let max = logits.max_keepdim(D::Minus1)?.detach();
    let shifted = logits.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    Ok(shifted.broadcast_sub(&lse)?)
}

pub fn softmax(logits: &Tensor) -> Result<Tensor> {
    Ok(log_softmax(logits)?.exp()?)
}

/// Per-sample Shannon entropy (nats) of softmax(logits), shape (N,).
pub fn entropy(logits: &Tensor) -> Result<Tensor> {
    let logp = log_softmax(logits)?;
    Ok((logp.exp()? * &logp)?.sum(D::Minus1)?.neg()?)
}

/// Mean cross-entropy against integer labels, with optional label smoothing ε (targets
/// (1−ε)·onehot + ε/C, as PyTorch's `label_smoothing`).
pub fn cross_entropy(logits: &Tensor, labels: &[u8], smoothing: f32) -> Result<Tensor> {
    let (n, c) = logits.dims2()?;
    let mut t = vec![smoothing / c as f32; n * c];
    for (i, y) in labels.iter().enumerate() {
        t[i * c + *y as usize] += 1.0 - smoothing;
    }
    let targets = Tensor::from_vec(t, (n, c), logits.device())?;
    Ok((log_softmax(logits)? * targets)?
        .sum_all()?
        .neg()?
        .affine(1.0 / n as f64, 0.0)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn entropy_and_cross_entropy_by_hand() {
        let dev = Device::Cpu;
        // Uniform logits over 4 classes: entropy ln 4, CE ln 4.
        let l = Tensor::zeros((2, 4), candle_core::DType::F32, &dev).unwrap();
        let h = entropy(&l).unwrap().to_vec1::<f32>().unwrap();
        assert!((h[0] - 4f32.ln()).abs() < 1e-6 && (h[1] - 4f32.ln()).abs() < 1e-6);
        let ce = cross_entropy(&l, &[0, 3], 0.0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!((ce - 4f32.ln()).abs() < 1e-6);
        // logits (ln 3, 0): p = (0.75, 0.25): CE(y=1) = ln 4; with smoothing 0.2, targets (0.1, 0.9):
        // −(0.1 ln 0.75 + 0.9 ln 0.25).
        let l = Tensor::new(&[[3f32.ln(), 0.0]], &dev).unwrap();
        let ce = cross_entropy(&l, &[1], 0.2)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let want = -(0.1 * 0.75f32.ln() + 0.9 * 0.25f32.ln());
        assert!((ce - want).abs() < 1e-6, "{ce} vs {want}");
    }

    #[test]
    fn entropy_gradient_matches_finite_differences() {
        let dev = Device::Cpu;
        let base = [0.3f32, -1.2, 2.0, 0.1];
        let x = Var::new(&[base], &dev).unwrap();
        let g = entropy(x.as_tensor())
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let g = g
            .get(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let f = |v: &[f32]| -> f64 {
            let m = v.iter().cloned().fold(f32::MIN, f32::max) as f64;
            let z: f64 = v.iter().map(|a| (*a as f64 - m).exp()).sum();
            v.iter()
                .map(|a| {
                    let p = (*a as f64 - m).exp() / z;
                    -p * p.ln()
                })
                .sum()
        };
        for i in 0..4 {
            let (mut a, mut b) = (base, base);
            a[i] += 1e-3;
            b[i] -= 1e-3;
            let fd = (f(&a) - f(&b)) / 2e-3;
            assert!(
                (g[i] as f64 - fd).abs() < 1e-4,
                "component {i}: {} vs {fd}",
                g[i]
            );
        }
    }
}
