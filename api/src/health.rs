//! `/healthz` (the process is up), `/readyz` (Postgres and Redis answer), `/metrics`.

use crate::error::{ApiResult, ErrorBody};
use crate::extract::Auth;
use crate::views::{Health, Ready};
use crate::AppState;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
}

/// Liveness: the process answers. Needs no key.
#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

/// Readiness: Postgres and Redis answer (503 otherwise). Needs no key.
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses((status = 200, body = Ready), (status = 503, description = "A dependency is down", body = Ready)))]
pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let pg = match sqlx::query_scalar::<_, i32>("SELECT 1")
        .fetch_one(&state.pool)
        .await
    {
        Ok(_) => "ok".to_string(),
        Err(e) => e.to_string(),
    };
    let redis = match state.queue.ping().await {
        Ok(()) => "ok".to_string(),
        Err(e) => e.to_string(),
    };
    let ok = pg == "ok" && redis == "ok";
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(Ready {
            status: if ok { "ok" } else { "unavailable" }.into(),
            postgres: pg,
            redis,
        }),
    )
}

/// Prometheus metrics (text format): `attune_queue_depth`, `attune_stream_entries`,
/// `attune_jobs`, `attune_live_workers`, `attune_job_duration_seconds`,
/// `attune_http_request_duration_seconds`.
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, description = "Prometheus text exposition", content_type = "text/plain", body = String), (status = 401, body = ErrorBody)),
    security(("api_key" = [])))]
pub async fn metrics(State(state): State<AppState>, _auth: Auth) -> ApiResult<impl IntoResponse> {
    let body = crate::prom::render(&state).await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body))
}
