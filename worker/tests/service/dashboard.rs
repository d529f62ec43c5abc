//! What the web dashboard needs from the api: job facets, search, spec validation without a
//! submit, the example specs, cron previews, headline metrics in lists, the static assets.

use crate::harness::*;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

fn ids(list: &Value) -> Vec<String> {
    list["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn facets_search_validate_examples_and_cron_preview() {
    let app = TestApp::new().await;
    // No worker: the jobs stay queued.
    let mut a = quick_spec();
    a["name"] = json!("nightly 100% check");
    a["tags"] = json!(["nightly", "ci"]);
    let ja = app.submit(&a).await;
    let mut b = train_spec();
    b["tags"] = json!(["ci"]);
    let jb = app.submit(&b).await;
    let mut c = quick_spec();
    c["corruptions"] = json!(["fog"]);
    c["name"] = json!("fog only");
    let jc = app.submit(&c).await;

    let (s, f) = app.get("/v1/jobs/facets").await;
    assert_eq!(s, StatusCode::OK, "{f}");
    assert_eq!(f["statuses"], json!([{"value": "queued", "count": 3}]));
    assert_eq!(
        f["kinds"],
        json!([{"value": "evaluate", "count": 2}, {"value": "train", "count": 1}])
    );
    assert_eq!(
        f["tags"],
        json!([{"value": "ci", "count": 2}, {"value": "nightly", "count": 1}])
    );
    // Another key sees none of them.
    let other = app.new_key().await;
    let (_, f2) = app
        .call(Method::GET, "/v1/jobs/facets", Some(&other), None)
        .await;
    assert_eq!(f2, json!({"statuses": [], "kinds": [], "tags": []}), "{f2}");

    // Search: name (case-insensitive), id prefix, spec text; `%` is literal, not a wildcard.
    let (_, l) = app.get("/v1/jobs?q=NIGHTLY").await;
    assert_eq!(ids(&l), vec![ja.to_string()]);
    let prefix = &jb.to_string()[..8];
    let (_, l) = app.get(&format!("/v1/jobs?q={prefix}")).await;
    assert_eq!(ids(&l), vec![jb.to_string()]);
    let (_, l) = app.get("/v1/jobs?q=fog").await;
    assert_eq!(ids(&l), vec![jc.to_string()]);
    let (_, l) = app.get("/v1/jobs?q=gaussian_noise").await;
    assert_eq!(ids(&l), vec![ja.to_string()]);
    let (_, l) = app.get("/v1/jobs?q=100%25").await;
    assert_eq!(ids(&l), vec![ja.to_string()]);
    let (_, l) = app.get("/v1/jobs?q=1%25%25").await;
    assert_eq!(ids(&l), Vec::<String>::new());
    // Search combines with the other filters.
    let (_, l) = app.get("/v1/jobs?q=ci&kind=train").await;
    assert_eq!(ids(&l), vec![jb.to_string()]);
    let (s, e) = app.get(&format!("/v1/jobs?q={}", "x".repeat(201))).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{e}");
    assert_eq!(e["field"], "q");

    // Validate: the spec as it would be stored (defaults filled in), the queue; or the 422 a
    // submit would get. Nothing is submitted either way.
    let (s, v) = app
        .post(
            "/v1/jobs/validate",
            &json!({"kind": "train", "dataset": "mnist", "device": "cuda:0"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["kind"], "train");
    assert_eq!(v["queue"], "gpu");
    assert_eq!(v["spec"]["device"], "cuda:0");
    assert_eq!(v["spec"]["seed"], 0);
    assert!(v["spec"]["epochs"].as_u64().unwrap() > 0, "{v}");
    let mut bad = quick_spec();
    bad["severities"] = json!([9]);
    let (s, e) = app.post("/v1/jobs/validate", &bad).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
    assert_eq!(e["error_type"], "invalid_spec");
    let (s, e) = app
        .post("/v1/jobs/validate", &json!({"kind": "adapt", "modle": "x"}))
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
    assert_eq!(e["field"], "modle");
    let (s, e) = app
        .call(Method::POST, "/v1/jobs/validate", None, Some(&quick_spec()))
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{e}");
    let (_, l) = app.get("/v1/jobs").await;
    assert_eq!(ids(&l).len(), 3, "validate must not submit");

    // Examples: every file of examples/, as JSON.
    let (s, x) = app.get("/v1/examples").await;
    assert_eq!(s, StatusCode::OK, "{x}");
    let xs = x.as_array().unwrap();
    let tent = xs.iter().find(|e| e["name"] == "fmnist-c-tent").unwrap();
    assert_eq!(tent["file"], "examples/fmnist-c-tent.toml");
    assert_eq!(tent["spec"]["methods"][0], "source");
    assert_eq!(tent["spec"]["batch_size"], 200);
    assert!(xs.iter().any(|e| e["name"] == "fmnist-train"));
    let (s, _) = app.call(Method::GET, "/v1/examples", None, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);

    // Cron preview: 03:00 UTC on three consecutive days.
    let (s, p) = app
        .get("/v1/schedules/preview?cron=0%203%20*%20*%20*&n=3")
        .await;
    assert_eq!(s, StatusCode::OK, "{p}");
    let next: Vec<chrono::DateTime<chrono::Utc>> = p["next"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(next.len(), 3);
    assert!(next[0] > chrono::Utc::now());
    assert!(next[0] <= chrono::Utc::now() + chrono::Duration::days(1));
    for t in &next {
        assert_eq!(t.format("%H:%M:%S").to_string(), "03:00:00");
    }
    assert_eq!(next[1] - next[0], chrono::Duration::days(1));
    assert_eq!(next[2] - next[1], chrono::Duration::days(1));
    let (s, e) = app
        .get("/v1/schedules/preview?cron=61%20*%20*%20*%20*")
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{e}");
    assert_eq!(e["field"], "cron");
    let (s, e) = app
        .get("/v1/schedules/preview?cron=*%20*%20*%20*%20*&n=0")
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{e}");
    assert_eq!(e["field"], "n");
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lists_carry_the_headline_metric_of_finished_jobs() {
    let mut app = TestApp::new().await;
    app.start_worker().await;
    let f = fixture();
    let id = app
        .submit(&json!({
            "kind": "adapt", "model": f.model, "corruptions": ["contrast", "fog"], "severity": 5,
            "n_examples": 60, "batch_size": 30, "methods": ["source", "norm_test"]
        }))
        .await;
    let job = app.wait_status(id, "succeeded", T).await;
    let ms = job["result"]["methods"].as_array().unwrap();
    let (best_name, best) = ms
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap(),
                m["mean"]["error"].as_f64().unwrap(),
            )
        })
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap();
    let (_, l) = app.get("/v1/jobs").await;
    let row = &l["jobs"][0];
    assert!(row.get("result").is_none(), "lists leave the result out");
    assert_eq!(row["headline"]["metric"], "mean error");
    assert_eq!(row["headline"]["value"].as_f64().unwrap(), best);
    assert_eq!(row["headline"]["series"], best_name);
    assert_eq!(job["headline"], row["headline"]);
    // A queued job has none yet.
    app.stop_worker(0).await;
    let q = app.submit(&quick_spec()).await;
    let (_, v) = app.get(&format!("/v1/jobs/{q}")).await;
    assert_eq!(v["headline"], Value::Null);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_api_serves_the_built_dashboard_and_says_when_it_is_not_built() {
    let app = TestApp::new().await;
    // The harness's api has no dashboard build: a 503 page that says how to build it.
    let r = app.http.get(format!("{}/", app.base)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let text = r.text().await.unwrap();
    assert!(text.contains("The dashboard is not built"), "{text}");
    assert!(text.contains("npm ci"), "{text}");

    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("assets")).unwrap();
    let html =
        "<!doctype html><title>Attune</title><script type=module src=/assets/app-1.js></script>";
    std::fs::write(dir.path().join("index.html"), html).unwrap();
    std::fs::write(dir.path().join("assets/app-1.js"), "console.log(1)").unwrap();
    let mut cfg = app.api_config();
    cfg.dashboard_dir = dir.path().to_path_buf();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let stop = tokio_util::sync::CancellationToken::new();
    let s = stop.clone();
    let h = tokio::spawn(async move { attune_api::serve(cfg, listener, s).await.unwrap() });
    let mut ok = false;
    for _ in 0..100 {
        if let Ok(r) = app.http.get(format!("{base}/readyz")).send().await {
            ok = r.status() == StatusCode::OK;
            if ok {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok, "second api ready");
    // No key needed for the assets; the API under /v1 still needs one.
    let r = app.http.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert_eq!(r.text().await.unwrap(), html);
    let r = app
        .http
        .get(format!("{base}/assets/app-1.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .contains("javascript"),
        "{:?}",
        r.headers()
    );
    assert_eq!(r.text().await.unwrap(), "console.log(1)");
    let r = app
        .http
        .get(format!("{base}/assets/missing.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = app
        .http
        .get(format!("{base}/v1/jobs"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    stop.cancel();
    h.await.unwrap();
    app.cleanup().await;
}
