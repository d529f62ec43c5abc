//! One attempt: engine on a blocking thread, heartbeat, batched writes, terminal commit, ack.

use crate::{Result, Worker};
use attune_engine::jobs::{self, CancelToken, Context, Event, JobSpec, LogLevel, Observer};
use attune_engine::EngineError;
use attune_service::blobs::ObjectStore;
use attune_service::lifecycle::backoff;
use attune_service::queue::Delivery;
use attune_service::store::{self, Finished, LogLine, MetricPoint, Outcome};
use serde_json::Value;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Sends the engine's events to the async writer. It also notes when the job first saw its
/// cancellation token flipped, and how many batches (metric events) it produced after that.
struct ChannelObserver {
    tx: mpsc::UnboundedSender<Event>,
    cancel: CancelToken,
    seen_cancel: bool,
    metrics_after_cancel: Arc<AtomicU64>,
}

impl Observer for ChannelObserver {
    fn event(&mut self, e: Event) {
        if !self.seen_cancel && self.cancel.is_cancelled() {
            self.seen_cancel = true;
        }
        if self.seen_cancel && matches!(e, Event::Metric { .. }) {
            self.metrics_after_cancel.fetch_add(1, Ordering::SeqCst);
        }
        // A closed channel means the run is being abandoned; events have nowhere to go.
        let _ = self.tx.send(e);
    }
}

/// Whether another attempt may succeed where this one failed. Errors in the spec or the data
/// (unknown names, invalid values, missing or malformed files) fail the job at once.
fn retryable(e: &EngineError) -> bool {
    matches!(e, EngineError::Io { .. } | EngineError::Candle(_))
}

/// Progress as stored on the job: the current phase and how far it is.
#[derive(Default)]
struct Progress {
    label: Option<String>,
    done: u64,
    total: u64,
    phases_done: u64,
    changed: bool,
}

impl Progress {
    fn value(&self) -> Value {
        serde_json::json!({
            "phase": self.label,
            "done": self.done,
            "total": self.total,
            "phases_done": self.phases_done,
        })
    }
}

/// Collects events and writes them in fenced batches. Returns `false` when the run lost its
/// claim (a batch was refused).
async fn writer(
    pool: sqlx::PgPool,
    job: Uuid,
    run: Uuid,
    mut rx: mpsc::UnboundedReceiver<Event>,
    flush_every: Duration,
    lost: Arc<AtomicBool>,
    cancel: CancelToken,
) {
    let mut metrics: Vec<MetricPoint> = vec![];
    let mut logs: Vec<LogLine> = vec![];
    let mut progress = Progress::default();
    let mut last_flush = Instant::now();
    let mut open = true;
    while open {
        let deadline = last_flush + flush_every;
        tokio::select! {
            e = rx.recv() => match e {
                Some(e) => absorb(e, &mut metrics, &mut logs, &mut progress),
                None => open = false,
            },
            _ = tokio::time::sleep_until(deadline.into()) => {}
        }
        let due = Instant::now() >= deadline || metrics.len() >= 2000 || !open;
        if !due || (metrics.is_empty() && logs.is_empty() && !progress.changed) {
            continue;
        }
        // Keep the batch until it is written: Postgres may be briefly unavailable.
        let mut tries = 0;
        loop {
            let p = progress.changed.then(|| progress.value());
            match store::write_batch(&pool, job, run, &metrics, &logs, p.as_ref()).await {
                Ok(true) => {
                    metrics.clear();
                    logs.clear();
                    progress.changed = false;
                    break;
                }
                Ok(false) => {
                    tracing::warn!(job = %job, run = %run, "run lost its claim; stopping and discarding its results");
                    lost.store(true, Ordering::SeqCst);
                    cancel.cancel();
                    // Drain and drop whatever else comes.
                    while rx.recv().await.is_some() {}
                    return;
                }
                Err(e) => {
                    tries += 1;
                    tracing::warn!("writing a batch failed ({tries}): {e}");
                    if open && tries >= 3 {
                        break; // try again at the next flush
                    }
                    if tries >= 60 {
                        // Could not write for a minute at the end of the run: treat as lost,
                        // another attempt will redo it.
                        lost.store(true, Ordering::SeqCst);
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
        last_flush = Instant::now();
    }
}

fn absorb(e: Event, metrics: &mut Vec<MetricPoint>, logs: &mut Vec<LogLine>, p: &mut Progress) {
    match e {
        Event::Phase { label, total } => {
            p.label = Some(label);
            p.total = total;
            p.done = 0;
            p.changed = true;
        }
        Event::Advance { done } => {
            p.done = done;
            p.changed = true;
        }
        Event::PhaseEnd { summary } => {
            p.phases_done += 1;
            p.done = p.total;
            p.changed = true;
            logs.push(LogLine {
                level: "info".into(),
                message: summary,
            });
        }
        Event::Metric {
            series,
            step,
            values,
        } => {
            metrics.extend(values.into_iter().map(|(name, value)| MetricPoint {
                series: series.clone(),
                name,
                step: step as i64,
                value,
            }));
        }
        Event::Log { level, message } => logs.push(LogLine {
            level: match level {
                LogLevel::Info => "info",
                LogLevel::Warn => "warn",
            }
            .into(),
            message,
        }),
    }
}

/// Heartbeat the run (Postgres) and its stream entry (Redis) until `stop`; flips `cancel` when
/// the job is cancelled or the claim is lost.
#[allow(clippy::too_many_arguments)]
async fn heartbeat(
    w: &Worker,
    d: &Delivery,
    job: Uuid,
    run: Uuid,
    cancel: CancelToken,
    lost: Arc<AtomicBool>,
    cancel_requested: Arc<AtomicBool>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(w.cfg.heartbeat) => {}
            _ = stop.cancelled() => return,
        }
        match store::heartbeat(&w.pool, job, run).await {
            Ok(None) => {
                tracing::warn!(job = %job, run = %run, "heartbeat refused: the run lost its claim");
                lost.store(true, Ordering::SeqCst);
                cancel.cancel();
                return;
            }
            Ok(Some(true)) => {
                cancel_requested.store(true, Ordering::SeqCst);
                cancel.cancel();
            }
            Ok(Some(false)) => {}
            Err(e) => tracing::warn!("run heartbeat failed: {e}"),
        }
        if let Err(e) = w.queue.touch(d.queue, &w.cfg.worker_id, &d.entry_id).await {
            tracing::warn!("refreshing the stream entry failed: {e}");
        }
    }
}

pub(crate) async fn execute(
    w: &Worker,
    d: &Delivery,
    job_id: Uuid,
    run_id: Uuid,
    attempt: i32,
    spec_value: Value,
    shutdown: &CancellationToken,
) -> Result<()> {
    let cfg = &w.cfg;
    tracing::info!(job = %job_id, run = %run_id, attempt, "running");
    let spec = match JobSpec::from_value(spec_value) {
        Ok(s) => s,
        Err(e) => {
            // Validated at submit; an engine upgrade may reject it.
            let outcome = Outcome::Failed {
                error: format!("the stored spec is not valid for this engine: {e}"),
                retry_after: None,
            };
            if let Finished::Status(_) = store::finish(&w.pool, job_id, run_id, outcome).await? {
                w.queue.done(d.queue, &d.entry_id).await?;
            }
            return Ok(());
        }
    };
    let out_dir = cfg
        .work_dir
        .join(job_id.to_string())
        .join(run_id.to_string());
    let cancel = CancelToken::new();
    w.running
        .lock()
        .expect("lock")
        .insert(job_id, cancel.clone());
    let lost = Arc::new(AtomicBool::new(false));
    let cancel_requested = Arc::new(AtomicBool::new(false));
    let after_cancel = Arc::new(AtomicU64::new(0));
    let (tx, rx) = mpsc::unbounded_channel();
    let writer_task = tokio::spawn(writer(
        w.pool.clone(),
        job_id,
        run_id,
        rx,
        cfg.flush,
        lost.clone(),
        cancel.clone(),
    ));
    let stop_hb = CancellationToken::new();
    let hb = heartbeat(
        w,
        d,
        job_id,
        run_id,
        cancel.clone(),
        lost.clone(),
        cancel_requested.clone(),
        stop_hb.clone(),
    );
    let engine = {
        let mut obs = ChannelObserver {
            tx: tx.clone(),
            cancel: cancel.clone(),
            seen_cancel: false,
            metrics_after_cancel: after_cancel.clone(),
        };
        let data_dir = cfg.data_dir.clone();
        let out = out_dir.clone();
        let cancel = cancel.clone();
        tokio::task::spawn_blocking(move || {
            let mut ctx = Context {
                data_dir,
                out_dir: out,
                observer: &mut obs,
                cancel,
            };
            jobs::run(&spec, &mut ctx)
        })
    };
    // Run the engine while heartbeating; on shutdown give it `shutdown_grace`, then release.
    let mut released = false;
    let result = {
        tokio::pin!(engine);
        tokio::pin!(hb);
        let mut hb_done = false;
        let mut shutting_down = false;
        let grace = tokio::time::sleep(Duration::from_secs(365 * 86400));
        tokio::pin!(grace);
        loop {
            tokio::select! {
                r = &mut engine => break r,
                _ = &mut hb, if !hb_done => hb_done = true,
                _ = shutdown.cancelled(), if !shutting_down => {
                    tracing::info!(job = %job_id, "shutting down: letting the job finish for up to {:?}", cfg.shutdown_grace);
                    shutting_down = true;
                    grace.as_mut().reset(tokio::time::Instant::now() + cfg.shutdown_grace);
                }
                _ = &mut grace, if shutting_down && !released => {
                    tracing::info!(job = %job_id, "shutdown grace over: handing the job back");
                    released = true;
                    cancel.cancel();
                }
            }
        }
    };
    stop_hb.cancel();
    w.running.lock().expect("lock").remove(&job_id);
    // Whether the api asked for it (the listener flips the token directly).
    let cancel_wanted = cancel_requested.load(Ordering::SeqCst)
        || sqlx::query_scalar!("SELECT cancel_requested FROM jobs WHERE id = $1", job_id)
            .fetch_optional(&w.pool)
            .await?
            .unwrap_or(false);
    if cancel.is_cancelled() && cancel_wanted && !released {
        let n = after_cancel.load(Ordering::SeqCst);
        let _ = tx.send(Event::Log {
            level: LogLevel::Info,
            message: format!(
                "cancelled: {n} batch(es) finished after the request reached the engine"
            ),
        });
    }
    drop(tx);
    let _ = writer_task.await;
    let outcome = if lost.load(Ordering::SeqCst) {
        None
    } else {
        Some(match result {
            Ok(Ok(r)) => match serde_json::to_value(&r) {
                Ok(v) => {
                    let store_dir = ObjectStore::new(&cfg.object_store);
                    let (od, v2) = (out_dir.clone(), v.clone());
                    let collected = tokio::task::spawn_blocking(move || {
                        attune_service::checkpoints::collect(&v2, &od, &store_dir)
                    })
                    .await
                    .expect("checkpoint collection does not panic");
                    match collected {
                        Ok((checkpoints, uses)) => Outcome::Succeeded {
                            result: v,
                            checkpoints,
                            uses,
                        },
                        Err(e) => Outcome::Failed {
                            error: format!("storing the job's checkpoints failed: {e}"),
                            retry_after: Some(backoff(attempt, cfg.retry_base, cfg.retry_max)),
                        },
                    }
                }
                Err(e) => Outcome::Failed {
                    error: format!("the result does not serialize: {e}"),
                    retry_after: None,
                },
            },
            Ok(Err(EngineError::Cancelled)) if released => Outcome::Released,
            Ok(Err(EngineError::Cancelled)) if cancel_wanted => Outcome::Cancelled,
            Ok(Err(EngineError::Cancelled)) => Outcome::Failed {
                error: "cancelled by the worker".into(),
                retry_after: Some(backoff(attempt, cfg.retry_base, cfg.retry_max)),
            },
            Ok(Err(e)) => Outcome::Failed {
                retry_after: retryable(&e).then(|| backoff(attempt, cfg.retry_base, cfg.retry_max)),
                error: e.to_string(),
            },
            Err(join) => Outcome::Failed {
                error: format!("the engine panicked: {join}"),
                retry_after: Some(backoff(attempt, cfg.retry_base, cfg.retry_max)),
            },
        })
    };
    let _ = std::fs::remove_dir_all(&out_dir);
    let _ = std::fs::remove_dir(cfg.work_dir.join(job_id.to_string()));
    let Some(outcome) = outcome else {
        // Not ours any more: whoever took the job over acknowledges the entry.
        return Ok(());
    };
    let released = matches!(outcome, Outcome::Released);
    match store::finish(&w.pool, job_id, run_id, outcome).await? {
        Finished::Fenced => {
            tracing::warn!(job = %job_id, run = %run_id, "the run lost its claim before finishing; its result is discarded");
        }
        Finished::Status(s) => {
            tracing::info!(job = %job_id, run = %run_id, "attempt {attempt} ended: job {s}");
            w.queue.done(d.queue, &d.entry_id).await?;
            if released {
                // Hand it straight to another worker (the reconciler would, later).
                w.queue.enqueue(d.queue, job_id).await?;
            }
        }
    }
    Ok(())
}
