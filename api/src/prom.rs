//! Prometheus metrics. HTTP latency is measured in this process; queue depth, jobs by status,
//! live workers and job (run) durations are read from Postgres/Redis at scrape time, so every
//! api instance reports the same fleet-wide numbers.

use crate::AppState;
use attune_service::{store, QueueName};
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus::{Encoder, HistogramOpts, HistogramVec, Registry, TextEncoder};
use std::fmt::Write;
use std::time::Instant;

pub struct HttpMetrics {
    registry: Registry,
    latency: HistogramVec,
}

impl HttpMetrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "attune_http_request_duration_seconds",
                "HTTP request latency by route template, method and status",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["method", "route", "status"],
        )
        .expect("valid histogram");
        registry
            .register(Box::new(latency.clone()))
            .expect("registers once");
        Self { registry, latency }
    }
}

impl Default for HttpMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Middleware: observe every request's latency under its route template.
pub async fn track(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().to_string();
    let t = Instant::now();
    let resp = next.run(req).await;
    // SSE streams would skew latency by their whole duration: only the time to the headers.
    state
        .prom
        .latency
        .with_label_values(&[method.as_str(), route.as_str(), resp.status().as_str()])
        .observe(t.elapsed().as_secs_f64());
    resp
}

/// Job duration buckets (seconds).
const DURATION_BUCKETS: [f64; 12] = [
    1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 21600.0,
];

pub async fn render(state: &AppState) -> Result<String, attune_service::Error> {
    let mut out = String::new();
    out.push_str("# HELP attune_queue_depth Jobs waiting (status queued) per queue.\n# TYPE attune_queue_depth gauge\n");
    let counts = store::job_counts(&state.pool).await?;
    for q in QueueName::ALL {
        let n: i64 = counts
            .iter()
            .filter(|(qq, s, _)| qq == q.as_str() && s == "queued")
            .map(|c| c.2)
            .sum();
        writeln!(out, "attune_queue_depth{{queue=\"{q}\"}} {n}").ok();
    }
    out.push_str("# HELP attune_stream_entries Entries on the queue's Redis stream (-1: Redis unreachable).\n# TYPE attune_stream_entries gauge\n");
    for q in QueueName::ALL {
        let n = match state.queue.len(q).await {
            Ok(n) => n as i64,
            Err(_) => -1,
        };
        writeln!(out, "attune_stream_entries{{queue=\"{q}\"}} {n}").ok();
    }
    out.push_str("# HELP attune_jobs Jobs by queue and status.\n# TYPE attune_jobs gauge\n");
    for q in QueueName::ALL {
        for s in attune_service::JobStatus::ALL {
            let n: i64 = counts
                .iter()
                .filter(|(qq, ss, _)| qq == q.as_str() && ss == s.as_str())
                .map(|c| c.2)
                .sum();
            writeln!(out, "attune_jobs{{queue=\"{q}\",status=\"{s}\"}} {n}").ok();
        }
    }
    out.push_str("# HELP attune_live_workers Workers that heartbeated recently, per queue.\n# TYPE attune_live_workers gauge\n");
    for q in QueueName::ALL {
        let n = store::live_workers(&state.pool, q, state.cfg.worker_live_within).await?;
        writeln!(out, "attune_live_workers{{queue=\"{q}\"}} {n}").ok();
    }
    let (counts, n, sum) = store::run_duration_histogram(&state.pool, &DURATION_BUCKETS).await?;
    out.push_str("# HELP attune_job_duration_seconds Wall time of succeeded runs (attempts).\n# TYPE attune_job_duration_seconds histogram\n");
    for (b, c) in DURATION_BUCKETS
        .iter()
        .zip(counts.iter().chain(std::iter::repeat(&0)))
    {
        writeln!(out, "attune_job_duration_seconds_bucket{{le=\"{b}\"}} {c}").ok();
    }
    writeln!(out, "attune_job_duration_seconds_bucket{{le=\"+Inf\"}} {n}").ok();
    writeln!(out, "attune_job_duration_seconds_sum {sum}").ok();
    writeln!(out, "attune_job_duration_seconds_count {n}").ok();
    let mut buf = vec![];
    TextEncoder::new()
        .encode(&state.prom.registry.gather(), &mut buf)
        .ok();
    out.push_str(&String::from_utf8_lossy(&buf));
    Ok(out)
}
