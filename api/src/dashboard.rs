//! The web dashboard: the static assets `frontend/` builds (`npm run build` → `frontend/dist`),
//! served at `/` (index.html) and `/assets/…`. The pages route by URL fragment (`/#/jobs/ID`),
//! so nothing else needs serving; the dashboard calls the API under `/v1` with the key the user
//! enters. No key is needed for the assets themselves: they hold no data.

use crate::AppState;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::path::Path;
use tower_http::services::ServeDir;

pub fn routes(dir: &Path) -> Router<AppState> {
    Router::new()
        .route("/", get(index))
        .route("/index.html", get(index))
        .nest_service("/assets", ServeDir::new(dir.join("assets")))
}

async fn index(State(state): State<AppState>) -> Response {
    let path = state.cfg.dashboard_dir.join("index.html");
    match tokio::fs::read_to_string(&path).await {
        Ok(html) => ([(header::CACHE_CONTROL, "no-cache")], Html(html)).into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Html(format!(
                "<!doctype html><meta charset=utf-8><title>Attune</title>\
                 <h1>The dashboard is not built</h1>\
                 <p>{} could not be read ({e}). Build it with <code>scripts/build-frontend.sh</code> \
                 (or <code>npm ci &amp;&amp; npm run build</code> in <code>frontend/</code>), or point \
                 <code>ATTUNE_DASHBOARD_DIR</code> at a built copy.</p>\
                 <p>The API itself is up: <a href=\"/docs\">/docs</a>.</p>",
                path.display()
            )),
        )
            .into_response(),
    }
}
