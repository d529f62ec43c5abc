//! Attune's engine: everything a job computes, and the job specs themselves.
//!
//! Pure Rust + candle. No async runtime, no SQL, no Redis, no HTTP: the only I/O is files.
//! Deterministic for a seed on CPU.

pub mod corrupt;
pub mod error;

pub use error::{EngineError, Result};

/// The engine's version, recorded in every result for reproducibility.
pub const ENGINE_VERSION: &str = env!("CARGO_PKG_VERSION");
