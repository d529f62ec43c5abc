//! Differentiable building blocks with hand-written CPU kernels.
//!
//! candle's stock CPU convolution backward goes through a direct `conv_transpose2d` and a
//! convolution with an image-sized kernel, about 10× slower than its forward pass, and its
//! BatchNorm is a chain of a dozen broadcast ops. The ops here are `CustomOp`s whose forward and
//! backward are im2col + GEMM (the `gemm` crate that candle itself uses) and a single-pass
//! BatchNorm, so training and adaptation on CPU spend their time in matrix multiplies. On CPUs
//! with AVX-512, 3×3 stride-1 convolutions of planes at least 7 wide with at least 4 channels
//! skip im2col and col2im altogether (`direct`: a register-blocked direct convolution, forward
//! and input gradient), and those with at least 32 input and output channels on planes whose
//! 2×2 tiles fill 16-wide vectors well (14 × 14, 7 × 7) go through Winograd F(2×2, 3×3)
//! (`winograd`: 16 multiplies per 2×2 output tile instead of 36, blocked 16 tiles at a time).
//! On other devices the same functions
//! fall back to candle's own ops, so a CUDA build keeps working.
//!
//! Each op is checked against candle's composed reference (forward values and gradients) in its
//! tests.

pub mod batchnorm;
pub mod conv;
mod direct;
pub mod fused;
pub mod net;
pub mod pool;
mod winograd;

pub use batchnorm::{batch_norm, BnStats};
pub use conv::{conv2d, conv3x3_kernel, conv3x3_kernel_times, ConvKernel};
pub use fused::{conv_bn, conv_bn_residual, ConvBnCfg};
pub use net::{conv_bn_net, NetLayer};
pub use pool::max_pool2d;

use candle_core::{CpuStorage, Layout, Result, Storage, Tensor};

/// `wide_fn! { fn name(args) -> R { body } }` defines `name`, whose body is compiled three times
/// — for AVX-512 (F, BW, DQ, VL), for AVX2 + FMA, and for the baseline — and run at the widest
/// level this CPU has (detected at run time, cached by std): the element-wise loops of the
/// kernels are vectorized at that width. The body is an `#[inline(always)]` function called from
/// `#[target_feature]` wrappers, which is what makes the compiler generate it for those
/// features; a closure handed to a dispatcher would be compiled once, for the baseline, and
/// called out of line. The arithmetic is the same on every level (Rust never contracts a·b + c
/// into an FMA, nor reorders float sums), so results do not depend on which one runs.
macro_rules! wide_fn {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn body($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn v4($($arg: $ty),*) $(-> $ret)? {
                    body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn v3($($arg: $ty),*) $(-> $ret)? {
                    body($($arg),*)
                }
                match $crate::ops::simd_level() {
                    // SAFETY: the CPU has the features these were compiled for (checked at run
                    // time by `simd_level`).
                    $crate::ops::SimdLevel::V4 => return unsafe { v4($($arg),*) },
                    $crate::ops::SimdLevel::V3 => return unsafe { v3($($arg),*) },
                    $crate::ops::SimdLevel::Baseline => {}
                }
            }
            body($($arg),*)
        }
    };
}
pub(crate) use wide_fn;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) enum SimdLevel {
    V4,
    V3,
    Baseline,
}

/// Tests set this (1 = V4, 2 = V3, 3 = baseline) to run [`wide_fn`]s at a lower level than the
/// CPU's; 0 = the CPU's own.
#[cfg(test)]
pub(crate) static FORCE_SIMD_LEVEL: std::sync::atomic::AtomicU8 =
    std::sync::atomic::AtomicU8::new(0);

/// The widest level of [`wide_fn`] this CPU runs.
#[inline]
pub(crate) fn simd_level() -> SimdLevel {
    let cpu = cpu_simd_level();
    #[cfg(test)]
    {
        use std::sync::atomic::Ordering;
        let forced = match FORCE_SIMD_LEVEL.load(Ordering::Relaxed) {
            1 => SimdLevel::V4,
            2 => SimdLevel::V3,
            3 => SimdLevel::Baseline,
            _ => cpu,
        };
        // Never above what the CPU has.
        return if (forced as u8) < (cpu as u8) {
            cpu
        } else {
            forced
        };
    }
    #[allow(unreachable_code)]
    cpu
}

fn cpu_simd_level() -> SimdLevel {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx512f") && has!("avx512bw") && has!("avx512dq") && has!("avx512vl") {
            return SimdLevel::V4;
        }
        if has!("avx2") && has!("fma") {
            return SimdLevel::V3;
        }
    }
    SimdLevel::Baseline
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

/// A vector of `n` floats whose contents are unspecified, for outputs that are written in full
/// before anything reads them (a layer's output, its saved convolution, an input gradient).
/// `vec![0.0; n]` zero-fills on one thread first, and at batch 200 those fills were ≈ 7 % of
/// ResNet-20's TENT step (perf) while the other core waited; candle allocates its own outputs the
/// same way (`alloc_uninit`). Debug builds, which the tests use, fill the vector with NaN, so an
/// element that a kernel forgot to write shows up as NaN in every comparison.
///
/// # Safety
/// Every element must be written before it is read.
#[allow(clippy::uninit_vec)]
pub(crate) unsafe fn uninit_f32(n: usize) -> Vec<f32> {
    let mut v = Vec::with_capacity(n);
    // SAFETY: capacity n; f32 has no invalid bit patterns, and the caller writes every element
    // before reading it.
    unsafe { v.set_len(n) };
    if cfg!(debug_assertions) {
        v.fill(f32::NAN);
    }
    v
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
