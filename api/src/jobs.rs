//! Jobs, runs, metrics, logs and checkpoints.

use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{parse_id, Auth, Body, Q};
use crate::views::*;
use crate::AppState;
use attune_engine::jobs::JobSpec;
use attune_service::store::{self, CancelOutcome, JobFilter, JobRow, MetricFilter, NewJob};
use attune_service::{JobStatus, QueueName};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/jobs", post(submit).get(list))
        .route("/v1/jobs/validate", post(validate))
        .route("/v1/jobs/facets", get(facets))
        .route("/v1/jobs/{id}", get(get_job))
        .route("/v1/jobs/{id}/cancel", post(cancel))
        .route("/v1/jobs/{id}/retry", post(retry))
        .route("/v1/jobs/{id}/runs", get(runs))
        .route("/v1/jobs/{id}/metrics", get(job_metrics))
        .route("/v1/jobs/{id}/logs", get(logs))
        .route("/v1/jobs/{id}/checkpoints", get(job_checkpoints))
        .route("/v1/jobs/{id}/samples", get(samples))
        .route("/v1/jobs/{id}/events", get(crate::events::events))
        .route("/v1/runs/{id}", get(get_run))
        .route("/v1/runs/{id}/metrics", get(run_metrics))
        .route("/v1/metrics/query", post(batch_metrics))
        .route("/v1/checkpoints/{id}", get(get_checkpoint))
        .route("/v1/checkpoints/{id}/download", get(download))
}

/// Validate a spec with the engine; errors name the field (prefixed by `prefix`).
pub fn parse_spec(v: serde_json::Value, prefix: &str) -> ApiResult<JobSpec> {
    JobSpec::from_value(v).map_err(|e| ApiError::spec(e, prefix))
}

/// Why a queued job is not running.
pub async fn waiting(state: &AppState, j: &JobRow) -> ApiResult<Option<String>> {
    if j.status() != JobStatus::Queued {
        return Ok(None);
    }
    let q = j.queue();
    let live = store::live_workers(&state.pool, q, state.cfg.worker_live_within).await?;
    if live == 0 {
        return Ok(Some(format!(
            "no live worker serves the `{q}` queue; the job stays queued until one starts{}",
            if q == QueueName::Gpu {
                " (a worker built with `--features cuda`)"
            } else {
                ""
            }
        )));
    }
    if j.not_before > Utc::now() {
        return Ok(Some(format!(
            "retrying at {} after attempt {} failed",
            j.not_before.to_rfc3339(),
            j.attempts
        )));
    }
    Ok(Some(format!(
        "waiting for one of {live} live `{q}` worker(s)"
    )))
}

async fn view(state: &AppState, j: JobRow, with_result: bool) -> ApiResult<JobView> {
    let w = waiting(state, &j).await?;
    Ok(JobView::of(j, with_result, w))
}

async fn owned_job(state: &AppState, owner: Uuid, id: &str) -> ApiResult<JobRow> {
    let id = parse_id(id, "id")?;
    store::get_job(&state.pool, owner, id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("job {id}"), "id"))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SubmitParams {
    /// Attempts before the job fails for good (1–20, default 3).
    pub max_attempts: Option<i32>,
}

/// Submit a job.
///
/// The body is a job spec, exactly what `attune run` reads (as JSON). With an
/// `Idempotency-Key` header, submitting the same key again returns the job it created (200)
/// instead of a new one; the same key with a different spec is a 409.
#[utoipa::path(post, path = "/v1/jobs", tag = "jobs",
    request_body(content = JobSpecDoc, description = "The job spec"),
    params(SubmitParams, ("Idempotency-Key" = Option<String>, Header, description = "Client key that makes the submit idempotent (at most 200 characters)")),
    responses(
        (status = 201, description = "Created and queued", body = JobView),
        (status = 200, description = "Idempotent replay: the job this key created", body = JobView),
        (status = 400, description = "Malformed JSON or parameter", body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 409, description = "Idempotency-Key reused with another spec", body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 422, description = "The engine rejected the spec; `field` names the field", body = ErrorBody)),
    security(("api_key" = [])))]
pub async fn submit(
    State(state): State<AppState>,
    Auth(owner): Auth,
    Q(p): Q<SubmitParams>,
    headers: HeaderMap,
    Body(v): Body<serde_json::Value>,
) -> ApiResult<Response> {
    let max_attempts = p.max_attempts.unwrap_or(state.cfg.default_max_attempts);
    if !(1..=20).contains(&max_attempts) {
        return Err(ApiError::param(
            "max_attempts",
            format!("must be 1 to 20, got {max_attempts}"),
        ));
    }
    let key = match headers.get("idempotency-key") {
        None => None,
        Some(k) => {
            let k = k
                .to_str()
                .map_err(|_| ApiError::param("Idempotency-Key", "must be visible ASCII"))?;
            if k.is_empty() || k.len() > 200 {
                return Err(ApiError::param(
                    "Idempotency-Key",
                    "must be 1 to 200 characters",
                ));
            }
            Some(k.to_string())
        }
    };
    let spec = parse_spec(v, "")?;
    let mut conn = state.pool.acquire().await?;
    let ins = store::insert_job(
        &mut conn,
        &NewJob {
            owner,
            spec: &spec,
            max_attempts,
            idempotency_key: key.as_deref(),
            schedule_id: None,
        },
    )
    .await?;
    drop(conn);
    if !ins.created {
        if ins.job.spec != spec.to_value() {
            return Err(ApiError::Conflict {
                msg: format!(
                    "Idempotency-Key `{}` was used for job {} with a different spec",
                    key.unwrap_or_default(),
                    ins.job.id
                ),
            });
        }
        let v = view(&state, ins.job, true).await?;
        return Ok((StatusCode::OK, Json(v)).into_response());
    }
    // Committed in Postgres: now tell the workers. If Redis is down the reconciler does it.
    if let Err(e) = state.queue.enqueue(ins.job.queue(), ins.job.id).await {
        tracing::warn!(job = %ins.job.id, "enqueue failed; the reconciler will enqueue it: {e}");
    }
    let loc = format!("/v1/jobs/{}", ins.job.id);
    let v = view(&state, ins.job, true).await?;
    Ok((StatusCode::CREATED, [(header::LOCATION, loc)], Json(v)).into_response())
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// `queued`, `running`, `succeeded`, `failed` or `cancelled`.
    pub status: Option<String>,
    pub kind: Option<String>,
    /// Jobs carrying this tag.
    pub tag: Option<String>,
    /// RFC 3339 time; jobs created at or after it.
    pub created_after: Option<DateTime<Utc>>,
    /// RFC 3339 time; jobs created before it.
    pub created_before: Option<DateTime<Utc>>,
    /// Page size (1–500, default 50).
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Search: jobs whose name, id or spec (as JSON text) contains this, ignoring case.
    pub q: Option<String>,
}

fn encode_cursor(j: &JobRow) -> String {
    format!("{}_{}", j.created_at.timestamp_micros(), j.id)
}

fn decode_cursor(s: &str) -> ApiResult<(DateTime<Utc>, Uuid)> {
    let bad = || ApiError::param("cursor", format!("`{s}` is not a cursor this api returned"));
    let (t, id) = s.split_once('_').ok_or_else(bad)?;
    let t: i64 = t.parse().map_err(|_| bad())?;
    Ok((
        DateTime::from_timestamp_micros(t).ok_or_else(bad)?,
        id.parse().map_err(|_| bad())?,
    ))
}

/// List jobs, newest first, with filters and cursor paging.
#[utoipa::path(get, path = "/v1/jobs", tag = "jobs", params(ListParams),
    responses((status = 200, body = JobList), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)),
    security(("api_key" = [])))]
pub async fn list(
    State(state): State<AppState>,
    Auth(owner): Auth,
    Q(p): Q<ListParams>,
) -> ApiResult<Json<JobList>> {
    if let Some(s) = &p.status {
        if JobStatus::parse(s).is_none() {
            return Err(ApiError::param(
                "status",
                format!("`{s}` is not one of queued, running, succeeded, failed, cancelled"),
            ));
        }
    }
    let limit = p.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::param(
            "limit",
            format!("must be 1 to 500, got {limit}"),
        ));
    }
    let f = JobFilter {
        status: p.status,
        kind: p.kind,
        tag: p.tag,
        created_after: p.created_after,
        created_before: p.created_before,
        before: p.cursor.as_deref().map(decode_cursor).transpose()?,
        q: match p.q.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(q) if q.chars().count() > 200 => {
                return Err(ApiError::param("q", "must be at most 200 characters"))
            }
            Some(q) => Some(q.to_string()),
        },
    };
    let rows = store::list_jobs(&state.pool, owner, &f, limit + 1).await?;
    let more = rows.len() as i64 > limit;
    let rows: Vec<JobRow> = rows.into_iter().take(limit as usize).collect();
    let next_cursor = more.then(|| encode_cursor(rows.last().expect("non-empty")));
    let mut jobs = vec![];
    for j in rows {
        jobs.push(view(&state, j, false).await?);
    }
    Ok(Json(JobList { jobs, next_cursor }))
}

/// Check a spec without submitting it: the engine's parser, exactly as `POST /v1/jobs` runs it
/// (200 with the spec as it would be stored, or the same 422 naming the field).
#[utoipa::path(post, path = "/v1/jobs/validate", tag = "jobs",
    request_body(content = JobSpecDoc, description = "The job spec"),
    responses(
        (status = 200, description = "The engine accepts it", body = ValidatedSpec),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 422, description = "The engine rejected the spec; `field` names the field", body = ErrorBody)),
    security(("api_key" = [])))]
pub async fn validate(
    Auth(_): Auth,
    Body(v): Body<serde_json::Value>,
) -> ApiResult<Json<ValidatedSpec>> {
    let spec = parse_spec(v, "")?;
    Ok(Json(ValidatedSpec {
        kind: spec.kind_name().to_string(),
        queue: QueueName::for_device(&spec.device).as_str().to_string(),
        spec: spec.to_value(),
    }))
}

/// Statuses, kinds and tags of the key's jobs, with counts (for the list's filters).
#[utoipa::path(get, path = "/v1/jobs/facets", tag = "jobs",
    responses((status = 200, body = JobFacets), (status = 401, body = ErrorBody)),
    security(("api_key" = [])))]
pub async fn facets(
    State(state): State<AppState>,
    Auth(owner): Auth,
) -> ApiResult<Json<JobFacets>> {
    Ok(Json(store::job_facets(&state.pool, owner).await?.into()))
}

/// One job, with its progress and (when succeeded) its result.
#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "jobs", params(("id" = Uuid, Path)),
    responses((status = 200, body = JobView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("api_key" = [])))]
pub async fn get_job(
    State(state): State<AppState>,
    Auth(owner): Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<JobView>> {
    let j = owned_job(&state, owner, &id).await?;
    Ok(Json(view(&state, j, true).await?))
}

/// Cancel a job: a queued job is cancelled at once (200); a running one stops after its current
/// batch (202, then `cancelled`); a finished one is a 409.
#[utoipa::path(post, path = "/v1/jobs/{id}/cancel", tag = "jobs", params(("id" = Uuid, Path)),
    responses((status = 200, body = JobView), (status = 202, body = JobView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 401, body = ErrorBody), (status = 400, body = ErrorBody)),
    security(("api_key" = [])))]
pub async fn cancel(
    State(state): State<AppState>,
    Auth(owner): Auth,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let uid = parse_id(&id, "id")?;
    match store::cancel_job(&state.pool, owner, uid).await? {
        None => Err(ApiError::not_found(format!("job {uid}"), "id")),
        Some(CancelOutcome::Cancelled(j)) => {
            Ok((StatusCode::OK, Json(view(&state, j, true).await?)).into_response())
        }
        Some(CancelOutcome::Requested(j)) => {
            Ok((StatusCode::ACCEPTED, Json(view(&state, j, true).await?)).into_response())
        }
        Some(CancelOutcome::AlreadyFinished(j)) => Err(ApiError::Conflict {
            msg: format!("job {uid} already {}", j.status),
        }),
    }
}

/// Re-queue a failed or cancelled job with a fresh budget of attempts (202); else 409.
#[utoipa::path(post, path = "/v1/jobs/{id}/retry", tag = "jobs", params(("id" = Uuid, Path)),
    responses((status = 202, body = JobView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 401, body = ErrorBody), (status = 400, body = ErrorBody)),
    security(("api_key" = [])))]
pub async fn retry(
    State(state): State<AppState>,
    Auth(owner): Auth,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let uid = parse_id(&id, "id")?;
    match store::retry_job(&state.pool, owner, uid).await? {
        None => Err(ApiError::not_found(format!("job {uid}"), "id")),
        Some(Err(j)) => Err(ApiError::Conflict {
            msg: format!(
                "job {uid} is {}; only failed or cancelled jobs can be retried",
                j.status
            ),
        }),
        Some(Ok(j)) => {
            if let Err(e) = state.queue.enqueue(j.queue(), j.id).await {
                tracing::warn!(job = %j.id, "enqueue failed; the reconciler will enqueue it: {e}");
            }
            Ok((StatusCode::ACCEPTED, Json(view(&state, j, true).await?)).into_response())
        }
    }
}

/// The job's runs (attempts), oldest first.
#[utoipa::path(get, path = "/v1/jobs/{id}/runs", tag = "runs", params(("id" = Uuid, Path)),
    responses((status = 200, body = Vec<RunView>), (status = 404, body = ErrorBody), (status = 401, body = ErrorBody), (status = 400, body = ErrorBody)),
    security(("api_key" = [])))]
pub async fn runs(
    State(state): State<AppState>,
    Auth(owner): Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<Vec<RunView>>> {
    let j = owned_job(&state, owner, &id).await?;
    let counts: std::collections::HashMap<Uuid, i64> = store::metric_counts(&state.pool, j.id)
        .await?
        .into_iter()
        .collect();
    Ok(Json(
        store::list_runs(&state.pool, j.id)
            .await?
            .into_iter()
            .map(|r| {
                let n = counts.get(&r.id).copied().unwrap_or(0);
                RunView::of(r, n)
            })
            .collect(),
    ))
}

/// One run.
#[utoipa::path(get, path = "/v1/runs/{id}", tag = "runs", params(("id" = Uuid, Path)),
    responses((status = 200, body = RunView), (status = 404, body = ErrorBody), (status = 401, body = ErrorBody), (status = 400, body = ErrorBody)),
    security(("api_key" = [])))]
pub async fn get_run(
    State(state): State<AppState>,
    Auth(owner): Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<RunView>> {
    let uid = parse_id(&id, "id")?;
    let r = store::get_run(&state.pool, owner, uid)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("run {uid}"), "id"))?;
    let n = store::metric_counts(&state.pool, r.job_id)
        .await?
        .into_iter()
        .find(|(id, _)| *id == r.id)
        .map(|x| x.1)
        .unwrap_or(0);
    Ok(Json(RunView::of(r, n)))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct MetricParams {
    /// Series (a method name in `adapt`, `train` in `train`, ...).
    pub series: Option<String>,
    /// Metric name, the "key" (`error`, `nll`, `val_error`, ...).
    pub name: Option<String>,
    /// First step (inclusive).
    pub step_from: Option<i64>,
    /// Last step (inclusive).
    pub step_to: Option<i64>,
    /// Page size (1–10000, default 1000).
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

fn metric_cursor(m: &MetricPointView) -> String {
    hex::encode(serde_json::to_vec(&(&m.series, &m.name, m.step)).expect("serializes"))
}

fn decode_metric_cursor(s: &str) -> ApiResult<(String, String, i64)> {
    hex::decode(s)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| {
            ApiError::param("cursor", format!("`{s}` is not a cursor this api returned"))
        })
}

fn check_limit(limit: Option<i64>, default: i64, max: i64) -> ApiResult<i64> {
    let l = limit.unwrap_or(default);
    if !(1..=max).contains(&l) {
        return Err(ApiError::param(
            "limit",
            format!("must be 1 to {max}, got {l}"),
        ));
    }
    Ok(l)
}

async fn metric_page(
    state: &AppState,
    run_id: Uuid,
    f: &MetricFilter,
    limit: i64,
) -> ApiResult<MetricPage> {
    let rows = store::metrics(&state.pool, &[run_id], f, limit + 1).await?;
    let more = rows.len() as i64 > limit;
    let points: Vec<MetricPointView> = rows
        .into_iter()
        .take(limit as usize)
        .map(|(_, p)| p.into())
        .collect();
    let next_cursor = if more {
        points.last().map(metric_cursor)
    } else {
        None
    };
    Ok(MetricPage {
        run_id,
        points,
        next_cursor,
    })
}

fn metric_filter(p: &MetricParams) -> ApiResult<MetricFilter> {
    if let (Some(a), Some(b)) = (p.step_from, p.step_to) {
        if a > b {
            return Err(ApiError::param(
                "step_from",
                format!("{a} is after step_to {b}"),
            ));
        }
    }
    Ok(MetricFilter {
        series: p.series.clone(),
        name: p.name.clone(),
        step_from: p.step_from,
        step_to: p.step_to,
        after: p.cursor.as_deref().map(decode_metric_cursor).transpose()?,
    })
}

/// A run's metric history: by series, name (key) and step range, paged.
#[utoipa::path(get, path = "/v1/runs/{id}/metrics", tag = "runs", params(("id" = Uuid, Path), MetricParams),
    responses((status = 200, body = MetricPage), (status = 404, body = ErrorBody), (status = 401, body = ErrorBody), (status = 400, body = ErrorBody)),
    security(("api_key" = [])))]
pub async fn run_metrics(
    State(state): State<AppState>,
    Auth(owner): Auth,
    Path(id): Path<String>,
    Q(p): Q<MetricParams>,
) -> ApiResult<Json<MetricPage>> {
    let uid = parse_id(&id, "id")?;
    let r = store::get_run(&state.pool, owner, uid)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("run {uid}"), "id"))?;
    let limit = check_limit(p.limit, 1000, 10000)?;
    Ok(Json(
        metric_page(&state, r.id, &metric_filter(&p)?, limit).await?,
    ))
}

/// Metric history of the job's current (or last) run; see `/v1/runs/{id}/metrics`.
#[utoipa::path(get, path = "/v1/jobs/{id}/metrics", tag = "jobs", params(("id" = Uuid, Path), MetricParams),
    responses((status = 200, body = MetricPage), (status = 404, body = ErrorBody), (status = 401, body = ErrorBody), (status = 400, body = ErrorBody)),
    security(("api_key" = [])))]
pub async fn job_metrics(
    State(state): State<AppState>,
    Auth(owner): Auth,
    Path(id): Path<String>,
    Q(p): Q<MetricParams>,
) -> ApiResult<Json<MetricPage>> {
    let j = owned_job(&state, owner, &id).await?;
    let run = match j.current_run {
        Some(r) => r,
        None => store::list_runs(&state.pool, j.id)
            .await?
            .last()
            .map(|r| r.id)
            .ok_or_else(|| ApiError::not_found(format!("a run of job {}", j.id), "id"))?,
    };
    let limit = check_limit(p.limit, 1000, 10000)?;
    Ok(Json(
        metric_page(&state, run, &metric_filter(&p)?, limit).await?,
    ))
}

/// Metrics of several runs at once (e.g. to compare methods across jobs).
#[utoipa::path(post, path = "/v1/metrics/query", tag = "runs", request_body = BatchMetricsRequest,
    responses((status = 200, body = BatchMetricsResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("api_key" = [])))]
pub async fn batch_metrics(
    State(state): State<AppState>,
    Auth(owner): Auth,
    Body(req): Body<BatchMetricsRequest>,
) -> ApiResult<Json<BatchMetricsResponse>> {
    if req.runs.is_empty() || req.runs.len() > 100 {
        return Err(ApiError::param("runs", "give 1 to 100 run ids"));
    }
    let limit = check_limit(req.limit, 1000, 10000)?;
    let f = MetricFilter {
        series: req.series,
        name: req.name,
        step_from: req.step_from,
        step_to: req.step_to,
        after: None,
    };
    let mut out = vec![];
    for (i, r) in req.runs.iter().enumerate() {
        if store::get_run(&state.pool, owner, *r).await?.is_none() {
            return Err(ApiError::not_found(
                format!("run {r}"),
                format!("runs[{i}]"),
            ));
        }
        out.push(metric_page(&state, *r, &f, limit).await?);
    }
    Ok(Json(BatchMetricsResponse { runs: out }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LogParams {
    /// Lines after this id (`next_after` of the previous page; default 0).
    pub after: Option<i64>,
    /// Page size (1–5000, default 1000).
    pub limit: Option<i64>,
}

/// The job's log (all attempts).
#[utoipa::path(get, path = "/v1/jobs/{id}/logs", tag = "jobs", params(("id" = Uuid, Path), LogParams),
    responses((status = 200, body = LogPage), (status = 404, body = ErrorBody), (status = 401, body = ErrorBody), (status = 400, body = ErrorBody)),
    security(("api_key" = [])))]
pub async fn logs(
    State(state): State<AppState>,
    Auth(owner): Auth,
    Path(id): Path<String>,
    Q(p): Q<LogParams>,
) -> ApiResult<Json<LogPage>> {
    let j = owned_job(&state, owner, &id).await?;
    let limit = check_limit(p.limit, 1000, 5000)?;
    let after = p.after.unwrap_or(0);
    let lines: Vec<LogView> = store::logs(&state.pool, j.id, after, limit)
        .await?
        .into_iter()
        .map(LogView::from)
        .collect();
    let next_after = lines.last().map(|l| l.id).unwrap_or(after);
    Ok(Json(LogPage { lines, next_after }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SampleParams {
    /// Only the samples of this problem (e.g. `HumanEval/0`).
    pub problem_id: Option<String>,
    /// Only correct (`true`) or only wrong (`false`) samples.
    pub correct: Option<bool>,
    /// Rows to skip (default 0).
    pub offset: Option<i64>,
    /// Page size (1–1000, default 100).
    pub limit: Option<i64>,
}

/// One sample of a `sample` job, with its problem.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SampleRow {
    pub problem_id: String,
    #[serde(flatten)]
    pub sample: attune_engine::jobs::sample::SampleRecord,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SamplePage {
    /// Rows matching the filters, over all pages.
    pub total: usize,
    pub offset: usize,
    pub samples: Vec<SampleRow>,
}

/// The samples of a succeeded `sample` job with their verdicts, one row per (problem, sample),
/// in problem order.
#[utoipa::path(get, path = "/v1/jobs/{id}/samples", tag = "jobs", params(("id" = Uuid, Path), SampleParams),
    responses((status = 200, body = SamplePage), (status = 404, body = ErrorBody), (status = 401, body = ErrorBody), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("api_key" = [])))]
pub async fn samples(
    State(state): State<AppState>,
    Auth(owner): Auth,
    Path(id): Path<String>,
    Q(p): Q<SampleParams>,
) -> ApiResult<Json<SamplePage>> {
    let j = owned_job(&state, owner, &id).await?;
    let limit = check_limit(p.limit, 100, 1000)? as usize;
    let offset = p.offset.unwrap_or(0);
    if offset < 0 {
        return Err(ApiError::param(
            "offset",
            format!("must be ≥ 0, got {offset}"),
        ));
    }
    if j.kind != "sample" {
        return Err(ApiError::Conflict {
            msg: format!(
                "job {} is a `{}` job; only `sample` jobs have samples",
                j.id, j.kind
            ),
        });
    }
    let Some(result) = &j.result else {
        return Err(ApiError::Conflict {
            msg: format!("job {} has no result yet (status `{}`)", j.id, j.status),
        });
    };
    let mut rows = vec![];
    for prob in result["per_problem"].as_array().into_iter().flatten() {
        let pid = prob["id"].as_str().unwrap_or_default();
        if p.problem_id.as_deref().is_some_and(|want| want != pid) {
            continue;
        }
        for s in prob["samples"].as_array().into_iter().flatten() {
            if p.correct.is_some_and(|c| s["correct"].as_bool() != Some(c)) {
                continue;
            }
            rows.push((pid, s));
        }
    }
    let total = rows.len();
    let samples = rows
        .into_iter()
        .skip(offset as usize)
        .take(limit)
        .map(|(pid, s)| {
            Ok(SampleRow {
                problem_id: pid.to_string(),
                sample: serde_json::from_value(s.clone())
                    .map_err(|e| ApiError::Internal(format!("stored sample: {e}")))?,
            })
        })
        .collect::<ApiResult<Vec<_>>>()?;
    Ok(Json(SamplePage {
        total,
        offset: offset as usize,
        samples,
    }))
}

/// Checkpoints the job wrote.
#[utoipa::path(get, path = "/v1/jobs/{id}/checkpoints", tag = "checkpoints", params(("id" = Uuid, Path)),
    responses((status = 200, body = Vec<CheckpointView>), (status = 404, body = ErrorBody), (status = 401, body = ErrorBody), (status = 400, body = ErrorBody)),
    security(("api_key" = [])))]
pub async fn job_checkpoints(
    State(state): State<AppState>,
    Auth(owner): Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<Vec<CheckpointView>>> {
    let j = owned_job(&state, owner, &id).await?;
    let mut out = vec![];
    for c in store::job_checkpoints(&state.pool, j.id).await? {
        let users = store::checkpoint_users(&state.pool, owner, &c.sha256).await?;
        out.push(CheckpointView::of(c, users));
    }
    Ok(Json(out))
}

/// A checkpoint's metadata: sha256, size, sidecar, the run that made it, the jobs that read it.
#[utoipa::path(get, path = "/v1/checkpoints/{id}", tag = "checkpoints", params(("id" = Uuid, Path)),
    responses((status = 200, body = CheckpointView), (status = 404, body = ErrorBody), (status = 401, body = ErrorBody), (status = 400, body = ErrorBody)),
    security(("api_key" = [])))]
pub async fn get_checkpoint(
    State(state): State<AppState>,
    Auth(owner): Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<CheckpointView>> {
    let uid = parse_id(&id, "id")?;
    let c = store::get_checkpoint(&state.pool, owner, uid)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("checkpoint {uid}"), "id"))?;
    let users = store::checkpoint_users(&state.pool, owner, &c.sha256).await?;
    Ok(Json(CheckpointView::of(c, users)))
}

/// The checkpoint's bytes (safetensors), verified against its sha256 before they are sent: a
/// missing blob is a 410, a corrupted one a 500, never served.
#[utoipa::path(get, path = "/v1/checkpoints/{id}/download", tag = "checkpoints", params(("id" = Uuid, Path)),
    responses((status = 200, description = "safetensors bytes", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 404, body = ErrorBody), (status = 410, description = "Blob missing from the object store", body = ErrorBody),
        (status = 500, description = "Blob corrupted (checksum mismatch)", body = ErrorBody), (status = 401, body = ErrorBody), (status = 400, body = ErrorBody)),
    security(("api_key" = [])))]
pub async fn download(
    State(state): State<AppState>,
    Auth(owner): Auth,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let uid = parse_id(&id, "id")?;
    let c = store::get_checkpoint(&state.pool, owner, uid)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("checkpoint {uid}"), "id"))?;
    let store = state.store.clone();
    let sha = c.sha256.clone();
    let bytes = tokio::task::spawn_blocking(move || store.get(&sha))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))??;
    let file = c
        .name
        .rsplit('/')
        .next()
        .unwrap_or("checkpoint.safetensors")
        .to_string();
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{file}\""),
            ),
            (
                header::HeaderName::from_static("x-checksum-sha256"),
                c.sha256,
            ),
        ],
        bytes,
    )
        .into_response())
}
