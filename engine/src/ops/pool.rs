//! 2-D max pooling with kernel = stride (floor mode), gradient routed to the first maximum of each
//! window as PyTorch does. candle's own max-pool backward upsamples the pooled map back to the
//! input size, which misplaces gradients when the input size is not a multiple of the kernel
//! (7×7 → 3×3) and splits them between tied maxima.

use super::{f32_slice, with_f32};
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

struct MaxPool2d(usize);

/// Index (within the plane) of the first maximum of each output window of one H×W plane.
fn argmax_plane(x: &[f32], h: usize, w: usize, k: usize, mut f: impl FnMut(usize, usize)) {
    let (ho, wo) = (h / k, w / k);
    for oh in 0..ho {
        for ow in 0..wo {
            let mut best = oh * k * w + ow * k;
            for i in 0..k {
                for j in 0..k {
                    let idx = (oh * k + i) * w + ow * k + j;
                    // `>` keeps the first maximum; NaN propagates like PyTorch.
                    if x[idx] > x[best] || x[idx].is_nan() && !x[best].is_nan() {
                        best = idx;
                    }
                }
            }
            f(oh * wo + ow, best);
        }
    }
}

impl CustomOp1 for MaxPool2d {
    fn name(&self) -> &'static str {
        "attune-maxpool2d"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l)?;
        let (n, c, h, w) = l.shape().dims4()?;
        let k = self.0;
        let (ho, wo) = (h / k, w / k);
        let mut y = vec![0f32; n * c * ho * wo];
        if ho * wo > 0 {
            y.par_chunks_mut(ho * wo)
                .zip(x.par_chunks(h * w))
                .for_each(|(yp, xp)| argmax_plane(xp, h, w, k, |o, i| yp[o] = xp[i]));
        }
        Ok((CpuStorage::F32(y), Shape::from((n, c, ho, wo))))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        let (_, _, h, w) = x.dims4()?;
        let k = self.0;
        let (ho, wo) = (h / k, w / k);
        let dx = with_f32(x, |xv| {
            with_f32(dy, |dyv| {
                let mut dx = vec![0f32; xv.len()];
                if ho * wo > 0 {
                    dx.par_chunks_mut(h * w)
                        .zip(xv.par_chunks(h * w))
                        .zip(dyv.par_chunks(ho * wo))
                        .for_each(|((dp, xp), gp)| {
                            argmax_plane(xp, h, w, k, |o, i| dp[i] += gp[o])
                        });
                }
                Ok(dx)
            })
        })?;
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
    }
}

/// Max pooling of `x` (N, C, H, W) with a k×k window and stride k.
pub fn max_pool2d(x: &Tensor, k: usize) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == candle_core::DType::F32 {
        x.contiguous()?.apply_op1(MaxPool2d(k))
    } else {
        x.max_pool2d(k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn odd_input_routes_gradient_to_first_maximum() {
        // 1×1×3×3, kernel 2: one window over rows/cols 0..2; the last row/column is dropped.
        let x = Var::new(
            &[[[[1f32, 5., 9.], [5., 2., 9.], [9., 9., 9.]]]],
            &Device::Cpu,
        )
        .unwrap();
        let y = max_pool2d(x.as_tensor(), 2).unwrap();
        assert_eq!(
            y.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            vec![5.0]
        );
        let g = y.sum_all().unwrap().backward().unwrap();
        let dx = g
            .get(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        // The first 5 (row 0, col 1) gets the whole gradient; the tie at (1, 0) and the
        // dropped border get nothing.
        assert_eq!(dx, vec![0., 1., 0., 0., 0., 0., 0., 0., 0.]);
    }

    #[test]
    fn matches_candle_forward_on_even_input() {
        let v: Vec<f32> = (0..2 * 3 * 8 * 8)
            .map(|i| ((i * 37) % 101) as f32)
            .collect();
        let x = Tensor::from_vec(v, (2, 3, 8, 8), &Device::Cpu).unwrap();
        let a = max_pool2d(&x, 2)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let b = x
            .max_pool2d(2)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(a, b);
    }
}
