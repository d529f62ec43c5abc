//! Attune's engine: everything a job computes, and the job specs themselves.
//!
//! Pure Rust + candle. No async runtime, no SQL, no Redis, no HTTP: the only I/O is files.
//! Deterministic for a seed on CPU.

pub mod corrupt;
pub mod data;
pub mod error;
pub mod jobs;
#[cfg(feature = "llm")]
pub mod llm;
pub mod losses;
pub mod methods;
pub mod metrics;
pub mod models;
pub mod nn;
pub mod ops;
pub mod optim;
pub mod rng;
pub mod ttc;

pub use error::{EngineError, Result};

/// The engine's version, recorded in every result for reproducibility.
pub const ENGINE_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Process-wide settings for CPU work; call once at program start, before other threads exist.
///
/// - Keep freed memory in the process instead of returning it to the OS after every tensor:
///   glibc serves allocations above 128 KiB with fresh `mmap`s and trims the heap eagerly, so
///   every activation tensor of every step costs page faults (measured: a quarter of a training
///   step's time went to the kernel zeroing pages). Raising the mmap and trim thresholds lets
///   freed blocks be reused (Linux/glibc only).
/// - candle's CPU worker threads spin 25 000 times after each of its parallel ops before they
///   sleep, taking the cores from the rayon threads of the engine's kernels; 100 spins
///   (`CANDLE_BARRIER_POOL_SPIN_LIMIT`, unless already set) made the TENT step 3–4 % faster on
///   2 cores (docs/speed.md).
pub fn tune_runtime() {
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", "100");
    }
    tune_allocator();
}

/// The glibc allocator settings of [`tune_runtime`]: allocations up to 32 MiB from the heap, no
/// trimming, 256 MiB of top pad.
pub const MALLOC_MMAP_THRESHOLD: i32 = 32 << 20;
pub const MALLOC_TRIM_THRESHOLD: i32 = i32::MAX;
pub const MALLOC_TOP_PAD: i32 = 256 << 20;

/// The same settings as glibc's environment variables, for a child process (the benchmark's
/// PyTorch side gets them so that both sides allocate alike).
pub fn malloc_tuning_env() -> [(&'static str, String); 3] {
    [
        ("MALLOC_MMAP_THRESHOLD_", MALLOC_MMAP_THRESHOLD.to_string()),
        ("MALLOC_TRIM_THRESHOLD_", MALLOC_TRIM_THRESHOLD.to_string()),
        ("MALLOC_TOP_PAD_", MALLOC_TOP_PAD.to_string()),
    ]
}

fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; it is called before other threads
    // allocate heavily and has no memory-safety preconditions.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, MALLOC_TRIM_THRESHOLD);
        libc::mallopt(libc::M_TOP_PAD, MALLOC_TOP_PAD);
    }
}
