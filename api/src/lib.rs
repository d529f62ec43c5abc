//! Attune's HTTP API (axum + utoipa): jobs, runs and their metrics, checkpoints, live progress
//! (server-sent events), schedules, health and Prometheus metrics. Routes are versioned under
//! `/v1`; the OpenAPI document is generated from this code (`attune-api openapi`) and committed
//! at `openapi/openapi.json`; Swagger UI is served offline at `/docs`, the web dashboard (the
//! static build of `frontend/`) at `/`.
//!
//! The api never runs a job: it writes the job row (Postgres is the truth) and then puts the
//! job id on its queue's Redis stream. Background tasks in every instance fire schedules and
//! re-enqueue jobs Redis lost.

mod dashboard;
pub mod error;
mod events;
mod examples;
mod extract;
mod health;
mod jobs;
pub mod openapi;
mod prom;
mod schedules;
pub mod views;

use attune_service::blobs::ObjectStore;
use attune_service::queue::Queue;
use attune_service::reconcile::{reconcile_once, ReconcileConfig};
use axum::extract::DefaultBodyLimit;
use axum::Router;
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

#[derive(Clone, Debug)]
pub struct ApiConfig {
    pub database_url: String,
    pub redis_url: String,
    pub redis_prefix: String,
    /// Object-store directory for checkpoint bytes (shared with the workers).
    pub object_store: PathBuf,
    /// Largest request body accepted (413 above).
    pub max_body_bytes: usize,
    /// Reconciler period and the age a queued job must reach before it counts as lost.
    pub reconcile_every: Duration,
    pub reconcile_grace: Duration,
    /// A running job whose run has not heartbeated for this long is re-enqueued if Redis lost
    /// it (the worker's lease).
    pub lease: Duration,
    /// Schedule ticker period.
    pub schedule_every: Duration,
    /// A worker that heartbeated within this is live.
    pub worker_live_within: Duration,
    pub default_max_attempts: i32,
    /// The built dashboard (`frontend/dist`), served at `/`.
    pub dashboard_dir: PathBuf,
}

impl ApiConfig {
    pub fn new(database_url: &str, redis_url: &str, redis_prefix: &str) -> Self {
        Self {
            database_url: database_url.into(),
            redis_url: redis_url.into(),
            redis_prefix: redis_prefix.into(),
            object_store: PathBuf::from("var/objects"),
            max_body_bytes: 1 << 20,
            reconcile_every: Duration::from_secs(2),
            reconcile_grace: Duration::from_secs(5),
            lease: Duration::from_secs(30),
            schedule_every: Duration::from_secs(1),
            worker_live_within: Duration::from_secs(20),
            default_max_attempts: attune_service::lifecycle::DEFAULT_MAX_ATTEMPTS,
            dashboard_dir: PathBuf::from("frontend/dist"),
        }
    }
}

#[derive(Clone)]
pub struct AppState {
    pub cfg: Arc<ApiConfig>,
    pub pool: PgPool,
    pub queue: Queue,
    pub store: ObjectStore,
    /// Job ids with new data, fanned out from Postgres NOTIFY to live viewers.
    pub events: broadcast::Sender<Uuid>,
    pub prom: Arc<prom::HttpMetrics>,
}

/// The router with every route and layer.
pub fn router(state: AppState) -> Router {
    let max = state.cfg.max_body_bytes;
    let dashboard_dir = state.cfg.dashboard_dir.clone();
    Router::new()
        .merge(health::routes())
        .merge(jobs::routes())
        .merge(examples::routes())
        .merge(schedules::routes())
        .merge(openapi::routes())
        .merge(dashboard::routes(&dashboard_dir))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            prom::track,
        ))
        .layer(DefaultBodyLimit::max(max))
        .with_state(state)
}

/// Connect, migrate, start the background tasks and serve on `listener` until `shutdown`.
pub async fn serve(
    cfg: ApiConfig,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let pool = attune_service::db::connect(&cfg.database_url, 16).await?;
    attune_service::db::migrate(&pool).await?;
    let queue = Queue::connect(&cfg.redis_url, &cfg.redis_prefix, Duration::ZERO).await?;
    let (events, _) = broadcast::channel(1024);
    let state = AppState {
        store: ObjectStore::new(&cfg.object_store),
        cfg: Arc::new(cfg),
        pool,
        queue,
        events,
        prom: Arc::new(prom::HttpMetrics::new()),
    };
    let bg = CancellationToken::new();
    let tasks = vec![
        tokio::spawn(notify_fanout(state.clone(), bg.clone())),
        tokio::spawn(reconciler(state.clone(), bg.clone())),
        tokio::spawn(ticker(state.clone(), bg.clone())),
    ];
    tracing::info!("api listening on http://{}", listener.local_addr()?);
    let app = router(state);
    let s = shutdown.clone();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { s.cancelled().await })
        .await?;
    bg.cancel();
    for t in tasks {
        let _ = t.await;
    }
    Ok(())
}

async fn notify_fanout(state: AppState, stop: CancellationToken) {
    loop {
        let mut l = match PgListener::connect_with(&state.pool).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!("event listener cannot connect: {e}");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    _ = stop.cancelled() => return,
                }
            }
        };
        if let Err(e) = l.listen(attune_service::store::EVENTS_CHANNEL).await {
            tracing::warn!("LISTEN failed: {e}");
            continue;
        }
        loop {
            tokio::select! {
                n = l.recv() => match n {
                    Ok(n) => {
                        let job = serde_json::from_str::<serde_json::Value>(n.payload())
                            .ok()
                            .and_then(|v| v["job"].as_str().and_then(|s| s.parse().ok()));
                        if let Some(id) = job {
                            let _ = state.events.send(id);
                        }
                    }
                    Err(e) => {
                        tracing::warn!("event listener lost its connection: {e}");
                        break;
                    }
                },
                _ = stop.cancelled() => return,
            }
        }
    }
}

async fn reconciler(state: AppState, stop: CancellationToken) {
    let cfg = ReconcileConfig {
        grace: state.cfg.reconcile_grace,
        lease: state.cfg.lease,
    };
    loop {
        tokio::select! {
            _ = tokio::time::sleep(state.cfg.reconcile_every) => {}
            _ = stop.cancelled() => return,
        }
        if let Err(e) = reconcile_once(&state.pool, &state.queue, cfg).await {
            tracing::warn!("reconciler pass failed: {e}");
        }
    }
}

async fn ticker(state: AppState, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(state.cfg.schedule_every) => {}
            _ = stop.cancelled() => return,
        }
        match attune_service::schedule::fire_due(&state.pool).await {
            Ok(jobs) => {
                for j in jobs {
                    tracing::info!(job = %j.id, schedule = ?j.schedule_id, "schedule fired");
                    if let Err(e) = state.queue.enqueue(j.queue(), j.id).await {
                        tracing::warn!(job = %j.id, "enqueue failed (the reconciler will retry): {e}");
                    }
                }
            }
            Err(e) => tracing::warn!("schedule ticker failed: {e}"),
        }
    }
}
