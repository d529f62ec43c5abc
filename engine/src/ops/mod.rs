//! Differentiable building blocks with hand-written CPU kernels.
//!
//! candle's stock CPU convolution backward goes through a direct `conv_transpose2d` and a
//! convolution with an image-sized kernel, about 10× slower than its forward pass, and its
//! BatchNorm is a chain of a dozen broadcast ops. The ops here are `CustomOp`s whose forward and
//! backward are im2col + GEMM (the `gemm` crate that candle itself uses) and a single-pass
//! BatchNorm, so training and adaptation on CPU spend their time in matrix multiplies. On CPUs
//! with AVX-512, 3×3 stride-1 convolutions of planes at least 7 wide with at least 4 channels
//! skip im2col and col2im altogether (`direct`: a register-blocked direct convolution, forward
//! and input gradient). On other devices the same functions fall back to candle's own ops, so a
//! CUDA build keeps working.
//!
//! Each op is checked against candle's composed reference (forward values and gradients) in its
//! tests.

pub mod batchnorm;
pub mod conv;
mod direct;
pub mod fused;
pub mod pool;

pub use batchnorm::{batch_norm, BnStats};
pub use conv::conv2d;
pub use fused::{add_relu, conv_bn, ConvBnCfg};
pub use pool::max_pool2d;

use candle_core::{CpuStorage, Layout, Result, Storage, Tensor};

/// Run `f` compiled for the widest vector instructions this CPU has (AVX-512, or AVX2 + FMA;
/// detected at run time, the baseline otherwise): the element-wise loops of the kernels below are
/// vectorized at that width when they are `#[inline(always)]` into `f`. The arithmetic is the
/// same on every path (Rust never contracts a·b + c into an FMA), so results do not depend on
/// which one runs.
#[inline(always)]
pub(crate) fn wide<R>(f: impl FnOnce() -> R) -> R {
    pulp::Arch::new().dispatch(f)
}

/// True on x86-64 CPUs with AVX-512F (detected at run time, cached by std): the direct
/// convolution and the vectorized pool run only there.
pub(crate) fn has_avx512f() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Borrow a contiguous f32 CPU storage slice.
pub(crate) fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let (start, end) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("custom op: input is not contiguous".into()))?;
    match s {
        CpuStorage::F32(v) => Ok(&v[start..end]),
        _ => Err(candle_core::Error::Msg(
            "custom op: only f32 is supported".into(),
        )),
    }
}

/// Run `f` on the contiguous f32 data of a CPU tensor without copying it (copies only when the
/// tensor is not contiguous).
pub(crate) fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(cpu) => f(f32_slice(cpu, layout)?),
        _ => Err(candle_core::Error::Msg(
            "custom op: expected a CPU tensor".into(),
        )),
    }
}

#[cfg(test)]
pub(crate) mod test_util {
    use candle_core::{Device, Tensor};

    /// A seeded standard-normal tensor.
    pub fn randn(dims: &[usize], seed: u64) -> Tensor {
        let n = dims.iter().product();
        let v = crate::rng::randn_vec(n, &mut crate::rng::rng(seed, "test"));
        Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
    }

    pub fn assert_close(a: &Tensor, b: &Tensor, tol: f32, what: &str) {
        assert_eq!(a.dims(), b.dims(), "{what}: shapes differ");
        let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let worst = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs() / (1.0 + y.abs()))
            .fold(0f32, f32::max);
        assert!(
            worst <= tol,
            "{what}: max relative difference {worst} > {tol}"
        );
    }
}
