//! The OpenAPI document (generated from the handlers' annotations) and Swagger UI at `/docs`,
//! served from the vendored assets (nothing is fetched at build or page-load time).

use crate::AppState;
use axum::Router;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_swagger_ui::SwaggerUi;

#[derive(OpenApi)]
#[openapi(
    info(title = "Attune", description = "Test-time adaptation and test-time compute as jobs. Every route but `/healthz`, `/readyz`, the docs and the dashboard's static assets needs an API key (`Authorization: Bearer <token>`; create one with `attune admin create-key`). A key sees only its own jobs: another key's job is a 404."),
    paths(
        crate::jobs::submit, crate::jobs::validate, crate::jobs::facets, crate::examples::list,
        crate::schedules::preview, crate::jobs::list, crate::jobs::get_job, crate::jobs::cancel,
        crate::jobs::retry, crate::jobs::runs, crate::jobs::job_metrics, crate::jobs::logs,
        crate::jobs::job_checkpoints, crate::jobs::samples, crate::events::events, crate::jobs::get_run,
        crate::jobs::run_metrics, crate::jobs::batch_metrics, crate::jobs::get_checkpoint,
        crate::jobs::download, crate::schedules::create, crate::schedules::list,
        crate::schedules::get_one, crate::schedules::pause, crate::schedules::resume,
        crate::schedules::delete, crate::health::healthz, crate::health::readyz,
        crate::health::metrics,
    ),
    components(schemas(crate::error::ErrorBody, crate::views::JobSpecDoc)),
    modifiers(&Security),
    tags((name = "jobs"), (name = "runs"), (name = "checkpoints"), (name = "schedules"), (name = "health"))
)]
pub struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let c = openapi.components.get_or_insert_with(Default::default);
        c.add_security_scheme(
            "api_key",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The document as committed in `openapi/openapi.json`.
pub fn json() -> String {
    ApiDoc::openapi()
        .to_pretty_json()
        .expect("the OpenAPI document serializes")
        + "\n"
}

pub fn routes() -> Router<AppState> {
    Router::new().merge(SwaggerUi::new("/docs").url("/openapi.json", ApiDoc::openapi()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn committed_openapi_document_is_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../openapi/openapi.json");
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            committed == super::json(),
            "openapi/openapi.json is stale: regenerate it with `cargo run -p attune-api -- openapi > openapi/openapi.json`"
        );
    }
}
