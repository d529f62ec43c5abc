//! Live progress as server-sent events. A viewer gets a `status` snapshot, then `progress`,
//! `log` and `metrics` events as workers commit them (Postgres NOTIFY, sent inside the writing
//! transaction, wakes the stream; a 2 s poll covers missed notifications), and a final `end`
//! once the job is finished.

use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{parse_id, Auth};
use crate::views::{JobView, LogView};
use crate::AppState;
use attune_service::store;
use axum::extract::{Path, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use serde_json::json;
use std::convert::Infallible;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// Live events of a job (`text/event-stream`): `status` (the job), `progress`, `log` (one line),
/// `metrics` (an array of `{run_id, series, name, step, value}`), `end`.
#[utoipa::path(get, path = "/v1/jobs/{id}/events", tag = "jobs", params(("id" = Uuid, Path)),
    responses((status = 200, description = "Server-sent events", content_type = "text/event-stream", body = String),
        (status = 404, body = ErrorBody), (status = 401, body = ErrorBody), (status = 400, body = ErrorBody)),
    security(("api_key" = [])))]
pub async fn events(
    State(state): State<AppState>,
    Auth(owner): Auth,
    Path(id): Path<String>,
) -> ApiResult<impl axum::response::IntoResponse> {
    let uid = parse_id(&id, "id")?;
    let job = store::get_job(&state.pool, owner, uid)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("job {uid}"), "id"))?;
    let (tx, rx) = mpsc::channel(64);
    let mut notes = state.events.subscribe();
    tokio::spawn(async move {
        let ev = |name: &str, data: serde_json::Value| {
            Ok::<_, Infallible>(Event::default().event(name).data(data.to_string()))
        };
        let mut last_status = String::new();
        let mut last_progress = None;
        let mut last_log = 0i64;
        let mut last_seq = 0i64;
        let mut job = job;
        loop {
            if job.status != last_status {
                last_status = job.status.clone();
                let w = crate::jobs::waiting(&state, &job).await.ok().flatten();
                let v =
                    serde_json::to_value(JobView::of(job.clone(), false, w)).unwrap_or_default();
                if tx.send(ev("status", v)).await.is_err() {
                    return;
                }
            }
            if job.progress.is_some() && job.progress != last_progress {
                last_progress = job.progress.clone();
                if tx
                    .send(ev("progress", job.progress.clone().unwrap_or_default()))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            loop {
                let Ok(lines) = store::logs(&state.pool, job.id, last_log, 500).await else {
                    break;
                };
                let n = lines.len();
                for l in lines {
                    last_log = l.id;
                    let v = serde_json::to_value(LogView::from(l)).unwrap_or_default();
                    if tx.send(ev("log", v)).await.is_err() {
                        return;
                    }
                }
                if n < 500 {
                    break;
                }
            }
            loop {
                let Ok(rows) = store::metrics_since(&state.pool, job.id, last_seq, 1000).await
                else {
                    break;
                };
                let n = rows.len();
                if n == 0 {
                    break;
                }
                let arr: Vec<_> = rows
                    .into_iter()
                    .map(|(seq, run, p)| {
                        last_seq = seq;
                        json!({"run_id": run, "series": p.series, "name": p.name, "step": p.step, "value": p.value})
                    })
                    .collect();
                if tx.send(ev("metrics", json!(arr))).await.is_err() {
                    return;
                }
                if n < 1000 {
                    break;
                }
            }
            if job.status().is_terminal() {
                let _ = tx.send(ev("end", json!({"status": job.status}))).await;
                return;
            }
            // Wait for news of this job (or poll).
            let deadline = tokio::time::sleep(Duration::from_secs(2));
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    n = notes.recv() => match n {
                        Ok(j) if j == job.id => break,
                        Ok(_) => continue,
                        Err(RecvError::Lagged(_)) => break,
                        Err(RecvError::Closed) => return,
                    },
                    _ = &mut deadline => break,
                    _ = tx.closed() => return,
                }
            }
            match store::get_job(&state.pool, owner, job.id).await {
                Ok(Some(j)) => job = j,
                _ => return,
            }
        }
    });
    Ok(Sse::new(ReceiverStream::new(rx)).keep_alive(KeepAlive::default()))
}
