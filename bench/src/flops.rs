//! Model FLOPs per image, counted the same way for both sides: 2 per multiply-add of every
//! convolution and of the classifier (BatchNorm, ReLU, pooling and the loss are a few percent
//! and not counted).
//!
//! An adaptation step (TENT, EATA) needs the forward pass plus the gradient with respect to the
//! input of every layer but the first (the frozen weights need no gradient of their own; the BN
//! affine gradients are reductions): `step = 2·forward − first convolution`.
//!
//! A CoTTA step trains every weight (student: forward, input gradients, weight gradients) and runs
//! the frozen anchor once and the teacher once per view: `3·forward − first + (1 + views)·forward`.

use attune_engine::models::Architecture;

#[derive(Clone, Copy, Debug)]
pub struct Flops {
    pub forward: f64,
    pub step: f64,
}

fn conv(cin: usize, cout: usize, k: usize, side_out: usize) -> f64 {
    2.0 * (cin * cout * k * k * side_out * side_out) as f64
}

impl Flops {
    /// A CoTTA step with `views` teacher passes (the batch itself, or the augmented views).
    pub fn cotta(&self, views: f64) -> f64 {
        let first = 2.0 * self.forward - self.step;
        3.0 * self.forward - first + (1.0 + views) * self.forward
    }

    pub fn of(arch: &Architecture, in_ch: usize, side: usize, classes: usize) -> Self {
        let (forward, first) = match arch {
            Architecture::Cnn {
                channels,
                convs_per_stage,
            } => {
                let (mut f, mut first, mut c, mut s) = (0.0, None, in_ch, side);
                for (i, &w) in channels.iter().enumerate() {
                    for _ in 0..*convs_per_stage {
                        let v = conv(c, w, 3, s);
                        first.get_or_insert(v);
                        f += v;
                        c = w;
                    }
                    if i + 1 < channels.len() {
                        s /= 2;
                    }
                }
                (f + 2.0 * (c * s * s * classes) as f64, first.unwrap_or(0.0))
            }
            Architecture::Resnet { depth, width } => {
                let n = (depth - 2) / 6;
                let stem = conv(in_ch, *width, 3, side);
                let (mut f, mut c, mut s) = (stem, *width, side);
                for (mult, stride) in [(1, 1), (2, 2), (4, 2)] {
                    let cout = width * mult;
                    for i in 0..n {
                        let st = if i == 0 { stride } else { 1 };
                        let so = (s + 2 - 3) / st + 1;
                        f += conv(c, cout, 3, so) + conv(cout, cout, 3, so);
                        if st != 1 || c != cout {
                            f += conv(c, cout, 1, so);
                        }
                        c = cout;
                        s = so;
                    }
                }
                (f + 2.0 * (c * classes) as f64, stem)
            }
        };
        Self {
            forward,
            step: 2.0 * forward - first,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cnn_forward_flops_by_hand() {
        // 28²·32·9 + 14²·64·32·9 + 7²·128·64·9 + 6272·10 multiply-adds.
        let f = Flops::of(&Architecture::default(), 1, 28, 10);
        let macs = 28 * 28 * 32 * 9 + 14 * 14 * 64 * 32 * 9 + 7 * 7 * 128 * 64 * 9 + 6272 * 10;
        assert_eq!(f.forward, 2.0 * macs as f64);
        assert_eq!(f.step, 2.0 * f.forward - 2.0 * (28 * 28 * 32 * 9) as f64);
        // CoTTA with 32 views: student 3·F − first, anchor F, teacher 32·F.
        let first = 2.0 * (28 * 28 * 32 * 9) as f64;
        assert_eq!(f.cotta(32.0), 36.0 * f.forward - first);
    }

    #[test]
    fn resnet20_forward_flops_by_hand() {
        let f = Flops::of(
            &Architecture::Resnet {
                depth: 20,
                width: 16,
            },
            1,
            28,
            10,
        );
        let stem = 28 * 28 * 16 * 9;
        let stage1 = 6 * 28 * 28 * 16 * 16 * 9;
        // First block of stage 2: 16→32 at stride 2 (14²), plus a 1×1 projection.
        let stage2 = 14 * 14 * 32 * 9 * (16 + 32) + 14 * 14 * 32 * 16 + 4 * 14 * 14 * 32 * 32 * 9;
        let stage3 = 7 * 7 * 64 * 9 * (32 + 64) + 7 * 7 * 64 * 32 + 4 * 7 * 7 * 64 * 64 * 9;
        let macs = stem + stage1 + stage2 + stage3 + 64 * 10;
        assert_eq!(f.forward, 2.0 * macs as f64);
    }
}
