//! `GET /v1/examples`: the job specs of the repository's `examples/` folder (embedded at build
//! time), as JSON, for the dashboard's submit form.

use crate::error::{ApiResult, ErrorBody};
use crate::extract::Auth;
use crate::views::ExampleView;
use crate::AppState;
use axum::routing::get;
use axum::{Json, Router};
use std::sync::OnceLock;

include!(concat!(env!("OUT_DIR"), "/examples.rs"));

pub fn routes() -> Router<AppState> {
    Router::new().route("/v1/examples", get(list))
}

/// The leading `#` comment of a TOML file, one paragraph.
fn description(text: &str) -> String {
    text.lines()
        .map_while(|l| l.trim_start().strip_prefix('#'))
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Every embedded example, parsed; a file that is not valid TOML is an error naming it.
pub fn parse_all() -> Result<Vec<ExampleView>, String> {
    let mut out = vec![];
    for (rel, text) in EXAMPLES {
        let v: toml::Value = toml::from_str(text).map_err(|e| format!("examples/{rel}: {e}"))?;
        let spec = serde_json::to_value(v).map_err(|e| format!("examples/{rel}: {e}"))?;
        out.push(ExampleView {
            name: rel.trim_end_matches(".toml").to_string(),
            file: format!("examples/{rel}"),
            description: description(text),
            spec,
        });
    }
    Ok(out)
}

fn all() -> &'static [ExampleView] {
    static ALL: OnceLock<Vec<ExampleView>> = OnceLock::new();
    ALL.get_or_init(|| {
        parse_all().unwrap_or_else(|e| {
            tracing::error!("an embedded example does not parse: {e}");
            vec![]
        })
    })
}

/// The example job specs (`examples/*.toml` of the build), as JSON, sorted by name.
#[utoipa::path(get, path = "/v1/examples", tag = "jobs",
    responses((status = 200, body = Vec<ExampleView>), (status = 401, body = ErrorBody)),
    security(("api_key" = [])))]
pub async fn list(Auth(_): Auth) -> ApiResult<Json<Vec<ExampleView>>> {
    Ok(Json(all().to_vec()))
}

#[cfg(test)]
mod tests {
    use attune_engine::jobs::JobSpec;

    #[test]
    fn every_example_is_embedded_and_the_engine_accepts_it() {
        let all = super::parse_all().unwrap();
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");
        let mut on_disk = 0;
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                on_disk += std::fs::read_dir(&p).unwrap().count();
            } else if p.extension().is_some_and(|x| x == "toml") {
                on_disk += 1;
            }
        }
        assert_eq!(all.len(), on_disk);
        for x in &all {
            JobSpec::from_value(x.spec.clone()).unwrap_or_else(|err| panic!("{}: {err}", x.file));
        }
        let tent = all.iter().find(|x| x.name == "fmnist-c-tent").unwrap();
        assert_eq!(tent.file, "examples/fmnist-c-tent.toml");
        assert_eq!(tent.spec["kind"], "adapt");
        assert_eq!(tent.spec["severity"], 5);
        assert_eq!(tent.spec["methods"][2]["optimizer"]["lr"], 1e-3);
        assert!(tent
            .description
            .starts_with("Fashion-MNIST-C, continual, severity 5"));
        assert!(all.iter().any(|x| x.name == "methods/mnist-c-continual"));
    }

    #[test]
    fn description_is_the_leading_comment() {
        assert_eq!(
            super::description("# one\n#  two\n#\n#   run it\nkind = \"x\"\n# later"),
            "one two run it"
        );
        assert_eq!(super::description("kind = \"x\""), "");
    }
}
