//! Schedules: cron expression + job template.

use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{parse_id, Auth, Body, Q};
use crate::views::{CreateSchedule, CronPreview, ScheduleFire, ScheduleView};
use crate::AppState;
use attune_service::schedule;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/schedules", post(create).get(list))
        .route("/v1/schedules/preview", get(preview))
        .route("/v1/schedules/{id}", get(get_one).delete(delete))
        .route("/v1/schedules/{id}/pause", post(pause))
        .route("/v1/schedules/{id}/resume", post(resume))
}

/// Create a schedule: every tick of `cron` (UTC) submits `template` as a new job.
#[utoipa::path(post, path = "/v1/schedules", tag = "schedules", request_body = CreateSchedule,
    responses((status = 201, body = ScheduleView), (status = 400, description = "Bad cron expression or parameter", body = ErrorBody),
        (status = 422, description = "Template rejected by the engine", body = ErrorBody), (status = 401, body = ErrorBody), (status = 413, body = ErrorBody)),
    security(("api_key" = [])))]
pub async fn create(
    State(state): State<AppState>,
    Auth(owner): Auth,
    Body(req): Body<CreateSchedule>,
) -> ApiResult<(StatusCode, Json<ScheduleView>)> {
    let max_attempts = req.max_attempts.unwrap_or(state.cfg.default_max_attempts);
    if !(1..=20).contains(&max_attempts) {
        return Err(ApiError::param(
            "max_attempts",
            format!("must be 1 to 20, got {max_attempts}"),
        ));
    }
    schedule::parse_cron(&req.cron)?;
    let spec = crate::jobs::parse_spec(req.template, "template")?;
    let s = schedule::create(
        &state.pool,
        owner,
        req.name.as_deref(),
        &req.cron,
        &spec,
        max_attempts,
    )
    .await?;
    Ok((StatusCode::CREATED, Json(ScheduleView::of(s, vec![]))))
}

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PreviewParams {
    /// The cron expression, as `POST /v1/schedules` takes it.
    pub cron: String,
    /// How many fire times (1–20, default 5).
    pub n: Option<usize>,
}

/// The next fire times of a cron expression (UTC), or the 400 that creating a schedule with it
/// would get.
#[utoipa::path(get, path = "/v1/schedules/preview", tag = "schedules", params(PreviewParams),
    responses((status = 200, body = CronPreview), (status = 400, description = "Bad cron expression or parameter", body = ErrorBody), (status = 401, body = ErrorBody)),
    security(("api_key" = [])))]
pub async fn preview(Auth(_): Auth, Q(p): Q<PreviewParams>) -> ApiResult<Json<CronPreview>> {
    let n = p.n.unwrap_or(5);
    if !(1..=20).contains(&n) {
        return Err(ApiError::param("n", format!("must be 1 to 20, got {n}")));
    }
    let s = schedule::parse_cron(&p.cron)?;
    Ok(Json(CronPreview {
        next: s.after(&chrono::Utc::now()).take(n).collect(),
        cron: p.cron,
    }))
}

/// The key's schedules.
#[utoipa::path(get, path = "/v1/schedules", tag = "schedules",
    responses((status = 200, body = Vec<ScheduleView>), (status = 401, body = ErrorBody)),
    security(("api_key" = [])))]
pub async fn list(
    State(state): State<AppState>,
    Auth(owner): Auth,
) -> ApiResult<Json<Vec<ScheduleView>>> {
    Ok(Json(
        schedule::list(&state.pool, owner)
            .await?
            .into_iter()
            .map(|s| ScheduleView::of(s, vec![]))
            .collect(),
    ))
}

/// One schedule, with its latest 100 ticks and the job each created.
#[utoipa::path(get, path = "/v1/schedules/{id}", tag = "schedules", params(("id" = Uuid, Path)),
    responses((status = 200, body = ScheduleView), (status = 404, body = ErrorBody), (status = 401, body = ErrorBody), (status = 400, body = ErrorBody)),
    security(("api_key" = [])))]
pub async fn get_one(
    State(state): State<AppState>,
    Auth(owner): Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<ScheduleView>> {
    let uid = parse_id(&id, "id")?;
    let s = schedule::get(&state.pool, owner, uid)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("schedule {uid}"), "id"))?;
    let fires = schedule::fires(&state.pool, uid).await?;
    let skip = fires.len().saturating_sub(100);
    let fires = fires
        .into_iter()
        .skip(skip)
        .map(|(fire_at, job_id)| ScheduleFire { fire_at, job_id })
        .collect();
    Ok(Json(ScheduleView::of(s, fires)))
}

async fn set_paused(
    state: &AppState,
    owner: uuid::Uuid,
    id: &str,
    paused: bool,
) -> ApiResult<Json<ScheduleView>> {
    let uid = parse_id(id, "id")?;
    let s = schedule::set_paused(&state.pool, owner, uid, paused)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("schedule {uid}"), "id"))?;
    Ok(Json(ScheduleView::of(s, vec![])))
}

/// Pause a schedule (no ticks fire until it is resumed).
#[utoipa::path(post, path = "/v1/schedules/{id}/pause", tag = "schedules", params(("id" = Uuid, Path)),
    responses((status = 200, body = ScheduleView), (status = 404, body = ErrorBody), (status = 401, body = ErrorBody), (status = 400, body = ErrorBody)),
    security(("api_key" = [])))]
pub async fn pause(
    State(state): State<AppState>,
    Auth(owner): Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<ScheduleView>> {
    set_paused(&state, owner, &id, true).await
}

/// Resume a paused schedule from its next tick after now.
#[utoipa::path(post, path = "/v1/schedules/{id}/resume", tag = "schedules", params(("id" = Uuid, Path)),
    responses((status = 200, body = ScheduleView), (status = 404, body = ErrorBody), (status = 401, body = ErrorBody), (status = 400, body = ErrorBody)),
    security(("api_key" = [])))]
pub async fn resume(
    State(state): State<AppState>,
    Auth(owner): Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<ScheduleView>> {
    set_paused(&state, owner, &id, false).await
}

/// Delete a schedule (the jobs it made stay).
#[utoipa::path(delete, path = "/v1/schedules/{id}", tag = "schedules", params(("id" = Uuid, Path)),
    responses((status = 204, description = "Deleted"), (status = 404, body = ErrorBody), (status = 401, body = ErrorBody), (status = 400, body = ErrorBody)),
    security(("api_key" = [])))]
pub async fn delete(
    State(state): State<AppState>,
    Auth(owner): Auth,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let uid = parse_id(&id, "id")?;
    if schedule::delete(&state.pool, owner, uid).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("schedule {uid}"), "id"))
    }
}
