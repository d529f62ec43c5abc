//! `attune-worker`: serve one queue until SIGTERM/SIGINT.

use attune_worker::{config, Worker, WorkerConfig};
use clap::Parser;
use std::path::PathBuf;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "attune-worker",
    version,
    about = "Run Attune jobs from the Redis queue"
)]
struct Args {
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/attune"
    )]
    database_url: String,
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    /// Prefix of every Redis key this service uses.
    #[arg(long, env = "ATTUNE_REDIS_PREFIX", default_value = "attune:")]
    redis_prefix: String,
    /// Queue to serve: `cpu`, or `gpu` (needs a build with `--features cuda`). Default: `gpu`
    /// for a CUDA build, `cpu` otherwise.
    #[arg(long, env = "ATTUNE_QUEUE")]
    queue: Option<String>,
    /// Data directory (filled by scripts/fetch-data.sh).
    #[arg(long, env = "ATTUNE_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Scratch directory for runs in progress.
    #[arg(long, env = "ATTUNE_WORK_DIR", default_value = "var/work")]
    work_dir: PathBuf,
    /// Object-store directory for checkpoint bytes (shared with the api).
    #[arg(long, env = "ATTUNE_OBJECT_STORE", default_value = "var/objects")]
    object_store: PathBuf,
    /// Seconds without a heartbeat after which another worker may take a run over.
    #[arg(long, env = "ATTUNE_LEASE_SECS", default_value_t = 30.0)]
    lease_secs: f64,
    /// Heartbeat period in seconds.
    #[arg(long, env = "ATTUNE_HEARTBEAT_SECS", default_value_t = 5.0)]
    heartbeat_secs: f64,
    /// Seconds a stream entry stays pending before XAUTOCLAIM takes it (default: the lease).
    #[arg(long, env = "ATTUNE_VISIBILITY_SECS")]
    visibility_secs: Option<f64>,
    /// First retry delay in seconds (doubles per attempt).
    #[arg(long, env = "ATTUNE_RETRY_BASE_SECS", default_value_t = 5.0)]
    retry_base_secs: f64,
    /// Seconds the current job may run on after SIGTERM before it is handed back.
    #[arg(long, env = "ATTUNE_SHUTDOWN_GRACE_SECS", default_value_t = 30.0)]
    shutdown_grace_secs: f64,
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
}

fn main() {
    // Before the async runtime starts its threads (it sets an environment variable).
    attune_engine::tune_runtime();
    serve();
}

#[tokio::main]
async fn serve() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,sqlx=warn".into()),
        )
        .init();
    let a = Args::parse();
    let mut cfg = WorkerConfig::new(&a.database_url, &a.redis_url, &a.redis_prefix);
    if let Some(q) = a.queue {
        match attune_service::QueueName::parse(&q) {
            Some(q) => cfg.queue = q,
            None => {
                eprintln!("error: --queue must be `cpu` or `gpu`, got `{q}`");
                std::process::exit(2);
            }
        }
    } else {
        cfg.queue = config::default_queue();
    }
    if let Some(d) = a.data_dir {
        cfg.data_dir = d;
    }
    cfg.work_dir = a.work_dir;
    cfg.object_store = a.object_store;
    cfg.lease = secs(a.lease_secs);
    cfg.heartbeat = secs(a.heartbeat_secs);
    cfg.visibility = a.visibility_secs.map(secs).unwrap_or(cfg.lease);
    cfg.retry_base = secs(a.retry_base_secs);
    cfg.shutdown_grace = secs(a.shutdown_grace_secs);
    let worker = match Worker::connect(cfg).await {
        Ok(w) => w,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    let shutdown = CancellationToken::new();
    let s = shutdown.clone();
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutdown requested");
        s.cancel();
    });
    if let Err(e) = worker.run(shutdown).await {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
