//! The unbiased pass@k estimator of the Codex paper: with n samples of which c are correct,
//! pass@k = 1 − C(n−c, k)/C(n, k), computed as 1 − Π_{i=n−c+1}^{n} (1 − k/i), which never forms
//! a binomial coefficient (no overflow, no cancellation for large n).

/// pass@k for one problem. `k` must be in 1..=n and `c` ≤ n.
pub fn pass_at_k(n: usize, c: usize, k: usize) -> f64 {
    assert!(
        k >= 1 && k <= n && c <= n,
        "pass@k needs 1 ≤ k ≤ n and c ≤ n"
    );
    if n - c < k {
        return 1.0;
    }
    1.0 - ((n - c + 1)..=n)
        .map(|i| 1.0 - k as f64 / i as f64)
        .product::<f64>()
}

/// pass@k for k = 1..=min n, averaged over problems given as (n, c). Problems with fewer than
/// k samples do not count towards pass@k.
pub fn curve(counts: &[(usize, usize)]) -> Vec<f64> {
    let kmax = counts.iter().map(|(n, _)| *n).max().unwrap_or(0);
    (1..=kmax)
        .map(|k| {
            let vals: Vec<f64> = counts
                .iter()
                .filter(|(n, _)| *n >= k)
                .map(|&(n, c)| pass_at_k(n, c, k))
                .collect();
            vals.iter().sum::<f64>() / vals.len() as f64
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-12, "{a} vs {b}");
    }

    #[test]
    fn hand_computed_values() {
        // C(3,3)/C(5,3) = 1/10.
        close(pass_at_k(5, 2, 3), 0.9);
        // k = 1 is the fraction correct.
        close(pass_at_k(10, 3, 1), 0.3);
        // C(3,2)/C(4,2) = 3/6.
        close(pass_at_k(4, 1, 2), 0.5);
        // C(7,4)/C(10,4) = 35/210.
        close(pass_at_k(10, 3, 4), 1.0 - 35.0 / 210.0);
        // n − c < k: every draw of k contains a correct sample.
        close(pass_at_k(5, 3, 3), 1.0);
        close(pass_at_k(16, 15, 2), 1.0);
        // c = 0 and c = n.
        for k in 1..=8 {
            close(pass_at_k(8, 0, k), 0.0);
            close(pass_at_k(8, 8, k), 1.0);
        }
        // k = n with at least one correct.
        close(pass_at_k(6, 1, 6), 1.0);
    }

    #[test]
    fn large_n_matches_log_binomials() {
        // n = 200, c = 10, k = 50 through log-gamma-free exact sums of logs.
        let lnc = |n: usize, k: usize| -> f64 {
            (0..k)
                .map(|i| ((n - i) as f64).ln() - ((i + 1) as f64).ln())
                .sum()
        };
        let want = 1.0 - (lnc(190, 50) - lnc(200, 50)).exp();
        assert!((pass_at_k(200, 10, 50) - want).abs() < 1e-10);
    }

    #[test]
    fn curve_averages_problems() {
        let c = curve(&[(4, 1), (4, 0), (4, 4)]);
        assert_eq!(c.len(), 4);
        close(c[0], (0.25 + 0.0 + 1.0) / 3.0);
        close(c[1], (0.5 + 0.0 + 1.0) / 3.0);
        close(c[3], (1.0 + 0.0 + 1.0) / 3.0);
    }
}
