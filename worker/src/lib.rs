//! Attune's worker: a thin adapter from the queue to the engine.
//!
//! It claims job ids from its queue's Redis stream (consumer group `workers`), fences the claim
//! in Postgres (a run row that becomes the job's `current_run`), runs the engine on a blocking
//! thread with a cancellation token, streams progress, logs and metrics to Postgres in batches,
//! heartbeats, stores checkpoints in the object store, commits the terminal status and only then
//! acknowledges the stream entry. Entries of dead workers are taken over with XAUTOCLAIM once
//! their run's heartbeat in Postgres is stale.

pub mod config;
mod run;

pub use config::WorkerConfig;

use attune_service::queue::{Delivery, Queue};
use attune_service::store::{self, Claim};
use attune_service::QueueName;
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Service(#[from] attune_service::Error),
    #[error("postgres: {0}")]
    Db(#[from] sqlx::Error),
    #[error("{0}")]
    Config(String),
}

pub type Result<T, E = WorkerError> = std::result::Result<T, E>;

/// Cancellation tokens of the jobs this worker runs, by job id.
type Running = Arc<Mutex<HashMap<Uuid, attune_engine::jobs::CancelToken>>>;

/// A worker bound to one queue.
pub struct Worker {
    cfg: WorkerConfig,
    pool: PgPool,
    /// For blocking reads only (a blocking XREADGROUP holds its connection).
    reader: Queue,
    queue: Queue,
    running: Running,
}

impl Worker {
    pub async fn connect(cfg: WorkerConfig) -> Result<Self> {
        if cfg.queue == QueueName::Gpu && !cfg!(feature = "cuda") {
            return Err(WorkerError::Config(
                "this worker was built without the `cuda` feature and cannot serve the gpu queue (build with `cargo build -p attune-worker --features cuda`)".into(),
            ));
        }
        let pool = attune_service::db::connect(&cfg.database_url, 4).await?;
        let reader = Queue::connect(&cfg.redis_url, &cfg.redis_prefix, cfg.block).await?;
        let queue = Queue::connect(&cfg.redis_url, &cfg.redis_prefix, Duration::ZERO).await?;
        Ok(Self {
            cfg,
            pool,
            reader,
            queue,
            running: Default::default(),
        })
    }

    pub fn id(&self) -> &str {
        &self.cfg.worker_id
    }

    /// Serve until `shutdown` is cancelled. On shutdown the current job may finish within
    /// `shutdown_grace`; otherwise it is cancelled and handed back (status `queued`, the attempt
    /// not counted) for another worker.
    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        let cfg = &self.cfg;
        let q = cfg.queue;
        store::register_worker(
            &self.pool,
            &cfg.worker_id,
            q,
            &hostname(),
            attune_engine::ENGINE_VERSION,
        )
        .await?;
        tracing::info!(worker = %cfg.worker_id, queue = %q, "worker started");
        let stop_bg = CancellationToken::new();
        let hb = tokio::spawn(worker_heartbeat(
            self.pool.clone(),
            cfg.worker_id.clone(),
            cfg.heartbeat,
            stop_bg.clone(),
        ));
        let listener = tokio::spawn(cancel_listener(
            self.pool.clone(),
            self.running.clone(),
            stop_bg.clone(),
        ));
        if let Err(e) = self.queue.ensure_group(q).await {
            tracing::warn!("cannot create the consumer group yet: {e}");
        }
        let mut last_autoclaim: Option<Instant> = None;
        while !shutdown.is_cancelled() {
            let mut batch: Vec<Delivery> = vec![];
            if last_autoclaim.is_none_or(|t| t.elapsed() >= cfg.visibility / 2) {
                last_autoclaim = Some(Instant::now());
                match self
                    .queue
                    .autoclaim(q, &cfg.worker_id, cfg.visibility, 8)
                    .await
                {
                    Ok(d) => batch = d,
                    Err(e) => {
                        tracing::warn!("XAUTOCLAIM failed: {e}");
                    }
                }
            }
            if batch.is_empty() {
                tokio::select! {
                    r = self.reader.read(q, &cfg.worker_id, cfg.block) => match r {
                        Ok(Some(d)) => batch.push(d),
                        Ok(None) => {}
                        Err(e) => {
                            tracing::warn!("reading the {q} stream failed: {e}; retrying");
                            tokio::time::sleep(Duration::from_millis(500)).await;
                        }
                    },
                    _ = shutdown.cancelled() => break,
                }
            }
            for d in batch {
                if let Err(e) = self.handle(d, &shutdown).await {
                    tracing::warn!("handling a delivery failed: {e}; it stays pending");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
        stop_bg.cancel();
        let _ = hb.await;
        let _ = listener.await;
        store::worker_stopped(&self.pool, &cfg.worker_id).await?;
        tracing::info!(worker = %cfg.worker_id, "worker stopped");
        Ok(())
    }

    async fn handle(&self, d: Delivery, shutdown: &CancellationToken) -> Result<()> {
        let Some(job_id) = d.job_id else {
            tracing::warn!(entry = %d.entry_id, "dropping a stream entry without a job id");
            self.queue.done(d.queue, &d.entry_id).await?;
            return Ok(());
        };
        match store::claim(&self.pool, job_id, &self.cfg.worker_id, self.cfg.lease).await? {
            Claim::Done | Claim::NotYet => {
                self.queue.done(d.queue, &d.entry_id).await?;
            }
            Claim::Busy => {
                tracing::debug!(job = %job_id, "claimed entry belongs to a live run; leaving it");
            }
            Claim::Run {
                run_id,
                attempt,
                spec,
            } => {
                run::execute(self, &d, job_id, run_id, attempt, spec, shutdown).await?;
            }
        }
        Ok(())
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "unknown".into())
}

/// A worker id: host, pid and a random suffix.
pub fn new_worker_id() -> String {
    format!(
        "{}-{}-{}",
        hostname(),
        std::process::id(),
        &Uuid::new_v4().simple().to_string()[..8]
    )
}

async fn worker_heartbeat(pool: PgPool, id: String, every: Duration, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => return,
        }
        if let Err(e) = store::worker_heartbeat(&pool, &id).await {
            tracing::warn!("worker heartbeat failed: {e}");
        }
    }
}

/// Flip the engine's token of a job this worker runs when the api asks to cancel it.
async fn cancel_listener(pool: PgPool, running: Running, stop: CancellationToken) {
    loop {
        let mut l = match PgListener::connect_with(&pool).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!("cancel listener cannot connect: {e}");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    _ = stop.cancelled() => return,
                }
            }
        };
        if let Err(e) = l.listen(store::CANCEL_CHANNEL).await {
            tracing::warn!("LISTEN failed: {e}");
            continue;
        }
        loop {
            tokio::select! {
                n = l.recv() => match n {
                    Ok(n) => {
                        if let Ok(id) = n.payload().parse::<Uuid>() {
                            if let Some(t) = running.lock().expect("lock").get(&id) {
                                tracing::info!(job = %id, "cancel requested");
                                t.cancel();
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!("cancel listener lost its connection: {e}");
                        break;
                    }
                },
                _ = stop.cancelled() => return,
            }
        }
    }
}
