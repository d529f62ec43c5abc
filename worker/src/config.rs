//! Worker settings, from flags or `ATTUNE_*` environment variables.

use attune_service::QueueName;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct WorkerConfig {
    pub database_url: String,
    pub redis_url: String,
    /// Prefix of every Redis key (streams are `<prefix>jobs:<queue>`).
    pub redis_prefix: String,
    pub queue: QueueName,
    pub worker_id: String,
    /// Where jobs read their data (`scripts/fetch-data.sh` fills it).
    pub data_dir: PathBuf,
    /// Scratch space: each run writes into `<work_dir>/<job>/<run>/`, removed afterwards.
    pub work_dir: PathBuf,
    /// Object-store directory for checkpoint bytes.
    pub object_store: PathBuf,
    /// A run whose heartbeat is older than this may be taken over by another worker.
    pub lease: Duration,
    /// Run and worker heartbeat period (well below `lease`).
    pub heartbeat: Duration,
    /// Minimum idle time of a pending stream entry before XAUTOCLAIM takes it.
    pub visibility: Duration,
    /// Longest blocking stream read.
    pub block: Duration,
    /// Metrics, logs and progress are written at most this often (and at the end).
    pub flush: Duration,
    /// Retry backoff: `retry_base · 2^(attempt−1)`, at most `retry_max`.
    pub retry_base: Duration,
    pub retry_max: Duration,
    /// On shutdown, how long the current job may run on before it is handed back.
    pub shutdown_grace: Duration,
}

impl WorkerConfig {
    /// Defaults for a local worker; URLs and directories must be set by the caller.
    pub fn new(database_url: &str, redis_url: &str, redis_prefix: &str) -> Self {
        let base = std::env::temp_dir().join("attune-worker");
        Self {
            database_url: database_url.into(),
            redis_url: redis_url.into(),
            redis_prefix: redis_prefix.into(),
            queue: default_queue(),
            worker_id: crate::new_worker_id(),
            data_dir: attune_engine::data::default_data_dir(),
            work_dir: base.join("work"),
            object_store: base.join("objects"),
            lease: Duration::from_secs(30),
            heartbeat: Duration::from_secs(5),
            visibility: Duration::from_secs(30),
            block: Duration::from_secs(1),
            flush: Duration::from_millis(250),
            retry_base: Duration::from_secs(5),
            retry_max: Duration::from_secs(300),
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

/// `gpu` for a worker built with the `cuda` feature, else `cpu`.
pub fn default_queue() -> QueueName {
    if cfg!(feature = "cuda") {
        QueueName::Gpu
    } else {
        QueueName::Cpu
    }
}
