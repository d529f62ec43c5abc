//! The service's guarantees, end to end against the real Postgres and Redis (started by
//! scripts/services.sh): api (in-process, port 0) → Redis stream → worker (in-process, or a
//! child process where a test SIGKILLs it) → engine → Postgres.

mod dashboard;
mod harness;

use harness::*;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::time::Duration;
use uuid::Uuid;

const T: Duration = Duration::from_secs(60);

fn sha256(b: &[u8]) -> String {
    attune_service::blobs::sha256_hex(b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn submitted_job_succeeds_with_metrics_and_checkpoint_equal_to_the_embedded_run() {
    let mut app = TestApp::new().await;
    app.start_worker().await;
    let f = fixture();
    let id = app.submit(&train_spec()).await;

    // Live progress over SSE until the end.
    let resp = app
        .http
        .get(format!("{}/v1/jobs/{id}/events", app.base))
        .bearer_auth(&app.token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let sse = tokio::time::timeout(T, resp.text())
        .await
        .expect("stream ends")
        .unwrap();
    let events: Vec<&str> = sse
        .lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .collect();
    assert!(events.contains(&"status"), "{sse}");
    assert!(events.contains(&"metrics"), "{sse}");
    assert!(events.contains(&"log"), "{sse}");
    assert_eq!(events.last(), Some(&"end"), "{sse}");

    let job = app.wait_status(id, "succeeded", T).await;
    assert_eq!(job["attempts"], 1);
    assert_eq!(job["kind"], "train");
    assert_eq!(job["name"], "tiny-train");
    // The result equals `attune run`'s for the same spec and seed, byte for byte as JSON.
    assert_eq!(job["result"], f.train_result);

    // Metrics: 2 epochs × 5 values, equal to the result's per-epoch numbers.
    let (s, m) = app
        .get(&format!("/v1/jobs/{id}/metrics?series=train"))
        .await;
    assert_eq!(s, StatusCode::OK, "{m}");
    let points = m["points"].as_array().unwrap();
    assert_eq!(points.len(), 10, "{m}");
    let (_, loss) = app
        .get(&format!(
            "/v1/jobs/{id}/metrics?name=train_loss&step_from=2&step_to=2"
        ))
        .await;
    assert_eq!(
        loss["points"][0]["value"].as_f64().unwrap(),
        f.train_result["epochs"][1]["train_loss"].as_f64().unwrap()
    );
    // Paging: 3 + 3 + 3 + 1, no overlap.
    let mut seen = vec![];
    let mut cursor: Option<String> = None;
    loop {
        let q = match &cursor {
            Some(c) => format!("/v1/jobs/{id}/metrics?limit=3&cursor={c}"),
            None => format!("/v1/jobs/{id}/metrics?limit=3"),
        };
        let (_, page) = app.get(&q).await;
        seen.extend(page["points"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 10);
    // Batch endpoint over the job's run.
    let run = job["current_run"].as_str().unwrap();
    let (s, b) = app
        .post(
            "/v1/metrics/query",
            &json!({"runs": [run], "name": "val_error"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["runs"][0]["points"].as_array().unwrap().len(), 2);

    // Checkpoint: metadata, sha256 and bytes equal to the embedded run's file.
    let (_, cks) = app.get(&format!("/v1/jobs/{id}/checkpoints")).await;
    let ck = &cks.as_array().unwrap()[0];
    assert_eq!(ck["name"], "model.safetensors");
    assert_eq!(ck["sha256"], f.train_result["checkpoint"]["sha256"]);
    assert_eq!(ck["run_id"].as_str().unwrap(), run);
    assert_eq!(ck["info"]["architecture"]["arch"], "cnn");
    let ck_id = ck["id"].as_str().unwrap().to_string();
    let bytes = app
        .http
        .get(format!("{}/v1/checkpoints/{ck_id}/download", app.base))
        .bearer_auth(&app.token)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(bytes.as_ref(), std::fs::read(&f.model).unwrap().as_slice());
    assert_eq!(sha256(&bytes), ck["sha256"].as_str().unwrap());

    // An adapt job reading that model (same bytes) is listed as a user of the checkpoint.
    let adapt = app
        .submit(&json!({
            "kind": "adapt", "model": f.model, "corruptions": ["contrast"], "severity": 5,
            "n_examples": 60, "batch_size": 30, "methods": ["source", "norm_test"]
        }))
        .await;
    app.wait_status(adapt, "succeeded", T).await;
    let (_, meta) = app.get(&format!("/v1/checkpoints/{ck_id}")).await;
    assert_eq!(meta["used_by"], json!([adapt]));
    assert_eq!(meta["job_id"].as_str().unwrap(), id.to_string());

    // Prometheus metrics.
    let (s, text) = app.get("/metrics").await;
    assert_eq!(s, StatusCode::OK);
    let text = text.as_str().unwrap().to_string();
    assert!(
        text.contains("attune_jobs{queue=\"cpu\",status=\"succeeded\"} 2"),
        "{text}"
    );
    assert!(
        text.contains("attune_queue_depth{queue=\"cpu\"} 0"),
        "{text}"
    );
    assert!(
        text.contains("attune_job_duration_seconds_count 2"),
        "{text}"
    );
    assert!(
        text.contains("attune_live_workers{queue=\"cpu\"} 1"),
        "{text}"
    );
    assert!(
        text.contains(
            "attune_http_request_duration_seconds_bucket{method=\"POST\",route=\"/v1/jobs\""
        ),
        "{text}"
    );

    // A corrupted blob is reported, never served; a missing one too.
    let blob = app
        .dirs
        .path()
        .join("objects/sha256")
        .join(&ck["sha256"].as_str().unwrap()[..2])
        .join(ck["sha256"].as_str().unwrap());
    let mut b = std::fs::read(&blob).unwrap();
    b[100] ^= 0xff;
    std::fs::write(&blob, &b).unwrap();
    let (s, e) = app.get(&format!("/v1/checkpoints/{ck_id}/download")).await;
    assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR, "{e}");
    assert_eq!(e["error_type"], "checkpoint_blob_corrupt");
    std::fs::remove_file(&blob).unwrap();
    let (s, e) = app.get(&format!("/v1/checkpoints/{ck_id}/download")).await;
    assert_eq!(s, StatusCode::GONE, "{e}");
    assert_eq!(e["error_type"], "checkpoint_blob_missing");
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkilled_worker_is_replaced_and_exactly_one_run_keeps_metrics() {
    let mut app = TestApp::new().await;
    let mut child = app.spawn_worker_process();
    let spec = long_adapt_spec();
    let id = app.submit(&spec).await;
    // Wait until the child has written some metrics, then SIGKILL it mid-job.
    app.wait_job(id, T, |v| {
        v["status"] == "running" && v["progress"]["done"].as_u64().unwrap_or(0) >= 5
    })
    .await;
    let partial = app.runs(id).await;
    assert_eq!(partial.len(), 1);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(
        partial[0].1 > 0,
        "the killed run had written metrics: {partial:?}"
    );
    // Another worker takes the job over once the lease (2 s) has passed.
    app.start_worker().await;
    let job = app.wait_status(id, "succeeded", T).await;
    let runs = app.runs(id).await;
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert_eq!(
        runs[0],
        ("lost".to_string(), 0),
        "the lost attempt's metrics are discarded"
    );
    assert_eq!(runs[1].0, "succeeded");
    // Exactly one full set: 5 corruptions × 30 batches × 5 values.
    assert_eq!(runs[1].1, 5 * 30 * 5);
    assert_eq!(job["attempts"], 2);
    let n: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM metrics m JOIN runs r ON r.id = m.run_id WHERE r.job_id = $1",
    )
    .bind(id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(n, 750);
    // The result is the one the embedded run gives.
    let out = app.dirs.path().join("embedded");
    let expect = embedded_run(&spec, &fixture().data, &out).unwrap();
    assert_eq!(job["result"], expect);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jobs_lost_by_redis_are_reenqueued_and_none_is_lost() {
    let mut app = TestApp::new().await;
    let mut ids = vec![];
    for _ in 0..5 {
        ids.push(app.submit(&quick_spec()).await);
    }
    assert_eq!(
        app.queue.len(attune_service::QueueName::Cpu).await.unwrap(),
        5
    );
    // Redis loses everything under this service's prefix (as a flush or restart would).
    app.queue.delete_all_keys().await.unwrap();
    assert_eq!(
        app.queue.len(attune_service::QueueName::Cpu).await.unwrap(),
        0
    );
    // The reconciler puts them back.
    let t = std::time::Instant::now();
    while app.queue.len(attune_service::QueueName::Cpu).await.unwrap() < 5 {
        assert!(t.elapsed() < T, "reconciler did not re-enqueue");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let on_stream = app
        .queue
        .job_ids(attune_service::QueueName::Cpu)
        .await
        .unwrap();
    assert_eq!(on_stream, ids.iter().copied().collect());
    // A worker (whose consumer group Redis also lost) runs all of them, each exactly once.
    app.start_worker().await;
    for id in &ids {
        app.wait_status(*id, "succeeded", T).await;
        assert_eq!(app.runs(*id).await.len(), 1);
    }
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idempotency_key_and_200_concurrent_submits() {
    let app = TestApp::new().await;
    let submit = |key: &'static str, spec: Value| {
        let rb = app
            .http
            .post(format!("{}/v1/jobs", app.base))
            .bearer_auth(&app.token)
            .header("Idempotency-Key", key)
            .json(&spec);
        async move {
            let r = rb.send().await.unwrap();
            (r.status(), r.json::<Value>().await.unwrap())
        }
    };
    let (s1, a) = submit("key-1", quick_spec()).await;
    let (s2, b) = submit("key-1", quick_spec()).await;
    assert_eq!((s1, s2), (StatusCode::CREATED, StatusCode::OK));
    assert_eq!(a["id"], b["id"]);
    let mut other = quick_spec();
    other["seed"] = json!(5);
    let (s3, e) = submit("key-1", other).await;
    assert_eq!(s3, StatusCode::CONFLICT, "{e}");
    // Concurrent duplicates of one key still make one job.
    let dups = futures::future::join_all((0..20).map(|_| submit("key-2", quick_spec()))).await;
    let dup_ids: std::collections::HashSet<String> = dups
        .iter()
        .map(|(_, v)| v["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(dup_ids.len(), 1);

    // 200 concurrent submits without a key → 200 jobs, each on the stream once.
    let reqs = (0..200).map(|i| {
        let mut spec = quick_spec();
        spec["seed"] = json!(i);
        let rb = app
            .http
            .post(format!("{}/v1/jobs", app.base))
            .bearer_auth(&app.token)
            .json(&spec);
        async move { rb.send().await.unwrap().status() }
    });
    let statuses = futures::future::join_all(reqs).await;
    assert!(
        statuses.iter().all(|s| *s == StatusCode::CREATED),
        "{statuses:?}"
    );
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(n, 202);
    let on_stream = app
        .queue
        .job_ids(attune_service::QueueName::Cpu)
        .await
        .unwrap();
    assert_eq!(on_stream.len(), 202);
    // The list pages through all of them.
    let mut total = 0;
    let mut cursor: Option<String> = None;
    loop {
        let q = match &cursor {
            Some(c) => format!("/v1/jobs?limit=75&cursor={c}"),
            None => "/v1/jobs?limit=75".into(),
        };
        let (s, page) = app.get(&q).await;
        assert_eq!(s, StatusCode::OK, "{page}");
        total += page["jobs"].as_array().unwrap().len();
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(total, 202);
    let (_, q) = app
        .get("/v1/jobs?status=queued&kind=evaluate&limit=1")
        .await;
    assert_eq!(q["jobs"].as_array().unwrap().len(), 1);
    let (_, q) = app.get("/v1/jobs?kind=train").await;
    assert_eq!(q["jobs"].as_array().unwrap().len(), 0);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancelling_a_running_job_stops_it_within_a_batch_and_keeps_partial_metrics() {
    let mut app = TestApp::new().await;
    app.start_worker().await;
    let id = app.submit(&long_adapt_spec()).await;
    app.wait_job(id, T, |v| v["progress"]["done"].as_u64().unwrap_or(0) >= 3)
        .await;
    let (s, v) = app.post(&format!("/v1/jobs/{id}/cancel"), &json!({})).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let job = app.wait_status(id, "cancelled", T).await;
    assert_eq!(job["cancel_requested"], true);
    let runs = app.runs(id).await;
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].0, "cancelled");
    // Partial metrics are kept: some batches, not all 150.
    assert!(runs[0].1 > 0 && runs[0].1 < 750, "{runs:?}");
    let (_, logs) = app.get(&format!("/v1/jobs/{id}/logs")).await;
    let line = logs["lines"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["message"].as_str())
        .find(|m| m.starts_with("cancelled:"))
        .unwrap_or_else(|| panic!("no cancellation line in {logs}"))
        .to_string();
    let after: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(
        after <= 1,
        "the engine ran {after} more batches after the cancel: {line}"
    );
    // Cancelling again is a conflict; retry re-queues it and it then succeeds.
    let (s, _) = app.post(&format!("/v1/jobs/{id}/cancel"), &json!({})).await;
    assert_eq!(s, StatusCode::CONFLICT);
    let (s, v) = app.post(&format!("/v1/jobs/{id}/retry"), &json!({})).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    app.wait_status(id, "succeeded", T).await;
    let runs = app.runs(id).await;
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[1], ("succeeded".to_string(), 750));
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_is_a_4xx_naming_the_field() {
    let app = TestApp::new().await;
    let url = format!("{}/v1/jobs", app.base);
    let raw = |body: Vec<u8>| {
        app.http
            .post(&url)
            .bearer_auth(&app.token)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let check = |s: StatusCode, v: &Value, status: u16, ty: &str, field: Option<&str>| {
        assert_eq!(s.as_u16(), status, "{v}");
        assert_eq!(v["error_type"], ty, "{v}");
        assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{v}");
        if let Some(f) = field {
            assert_eq!(v["field"], f, "{v}");
        }
    };
    let r = raw(b"{\"kind\": \"train\",".to_vec()).await.unwrap();
    let s = r.status();
    check(s, &r.json().await.unwrap(), 400, "invalid_json", None);
    let mut spec = train_spec();
    spec["epochz"] = json!(3);
    let (s, v) = app.post("/v1/jobs", &spec).await;
    check(s, &v, 422, "invalid_spec", Some("epochz"));
    let mut spec = train_spec();
    spec["seed"] = json!("seven");
    let (s, v) = app.post("/v1/jobs", &spec).await;
    check(s, &v, 422, "invalid_spec", Some("seed"));
    let mut spec = train_spec();
    spec["epochs"] = json!("many");
    let (s, v) = app.post("/v1/jobs", &spec).await;
    check(s, &v, 422, "invalid_spec", Some("epochs"));
    let (s, v) = app.post("/v1/jobs", &json!({"kind": "dance"})).await;
    check(s, &v, 422, "invalid_spec", Some("kind"));
    let (s, v) = app
        .post(
            "/v1/jobs",
            &json!({"kind": "adapt", "model": "m.safetensors", "severity": 9, "methods": ["tent"]}),
        )
        .await;
    check(s, &v, 422, "invalid_spec", Some("severity"));
    let (s, v) = app.post("/v1/jobs", &json!([1, 2])).await;
    check(s, &v, 422, "invalid_spec", None);
    let big = format!(
        "{{\"kind\": \"train\", \"name\": \"{}\"}}",
        "x".repeat(100_000)
    );
    let r = raw(big.into_bytes()).await.unwrap();
    let s = r.status();
    check(s, &r.json().await.unwrap(), 413, "payload_too_large", None);
    let (s, v) = app.post("/v1/jobs?max_attempts=0", &train_spec()).await;
    check(s, &v, 400, "invalid_parameter", Some("max_attempts"));
    let (s, v) = app.post("/v1/jobs?retries=2", &train_spec()).await;
    check(s, &v, 400, "invalid_parameter", Some("retries"));
    let (s, v) = app.get("/v1/jobs?limit=lots").await;
    check(s, &v, 400, "invalid_parameter", Some("limit"));
    let (s, v) = app.get("/v1/jobs?status=done").await;
    check(s, &v, 400, "invalid_parameter", Some("status"));
    let (s, v) = app.get("/v1/jobs?cursor=nonsense").await;
    check(s, &v, 400, "invalid_parameter", Some("cursor"));
    let (s, v) = app.get("/v1/jobs/not-a-uuid").await;
    check(s, &v, 400, "invalid_parameter", Some("id"));
    let unknown = Uuid::new_v4();
    for p in [
        format!("/v1/jobs/{unknown}"),
        format!("/v1/jobs/{unknown}/runs"),
        format!("/v1/runs/{unknown}/metrics"),
        format!("/v1/checkpoints/{unknown}"),
        format!("/v1/schedules/{unknown}"),
    ] {
        let (s, v) = app.get(&p).await;
        check(s, &v, 404, "not_found", Some("id"));
    }
    let (s, v) = app
        .post(&format!("/v1/jobs/{unknown}/cancel"), &json!({}))
        .await;
    check(s, &v, 404, "not_found", Some("id"));
    let (s, v) = app
        .post(
            "/v1/schedules",
            &json!({"cron": "every minute", "template": quick_spec()}),
        )
        .await;
    check(s, &v, 400, "invalid_parameter", Some("cron"));
    let (s, v) = app
        .post(
            "/v1/schedules",
            &json!({"cron": "61 * * * *", "template": quick_spec()}),
        )
        .await;
    check(s, &v, 400, "invalid_parameter", Some("cron"));
    let mut tpl = quick_spec();
    tpl["severities"] = json!("all");
    let (s, v) = app
        .post(
            "/v1/schedules",
            &json!({"cron": "* * * * *", "template": tpl}),
        )
        .await;
    check(s, &v, 422, "invalid_spec", Some("template.severities"));
    let (s, v) = app
        .post(
            "/v1/schedules",
            &json!({"cron": "* * * * *", "template": quick_spec(), "every": 1}),
        )
        .await;
    check(s, &v, 400, "invalid_parameter", Some("every"));
    let (s, v) = app.post("/v1/metrics/query", &json!({"runs": ["x"]})).await;
    check(s, &v, 400, "invalid_parameter", None);
    let (s, v) = app.call(Method::GET, "/v1/jobs", None, None).await;
    check(s, &v, 401, "unauthorized", None);
    let (s, v) = app
        .call(Method::GET, "/v1/jobs", Some("atk_wrong"), None)
        .await;
    check(s, &v, 401, "unauthorized", None);
    let (s, _) = app.call(Method::GET, "/healthz", None, None).await;
    assert_eq!(s, StatusCode::OK);
    // Nothing was created by any of it.
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(n, 0);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn specs_that_fail_in_the_engine_fail_the_job_with_its_message() {
    let mut app = TestApp::new().await;
    app.start_worker().await;
    let f = fixture();
    // Missing data: the engine names the file and the command that fetches it.
    let mut spec = train_spec();
    spec["dataset"] = json!("mnist");
    let id = app.submit(&spec).await;
    let job = app.wait_status(id, "failed", T).await;
    let err = job["error"].as_str().unwrap();
    assert!(
        err.contains("not found") && err.contains("scripts/fetch-data.sh"),
        "{err}"
    );
    assert_eq!(job["attempts"], 1, "a data error is not retried");
    // A corrupt checkpoint.
    let bad = app.dirs.path().join("bad.safetensors");
    std::fs::write(&bad, b"not a safetensors file").unwrap();
    std::fs::copy(f.model.with_extension("json"), bad.with_extension("json")).unwrap();
    let mut spec = quick_spec();
    spec["checkpoints"] = json!([bad]);
    let id = app.submit(&spec).await;
    let job = app.wait_status(id, "failed", T).await;
    assert!(
        job["error"].as_str().unwrap().contains("bad.safetensors"),
        "{job}"
    );
    // An I/O error (here: the worker cannot create its output folder) is retried with backoff,
    // then the job fails with the last error.
    app.stop_worker(0).await;
    let blocker = app.dirs.path().join("not-a-directory");
    std::fs::write(&blocker, b"").unwrap();
    let mut cfg = app.worker_config();
    cfg.work_dir = blocker.join("work");
    app.start_worker_with(cfg).await;
    let (s, v) = app.post("/v1/jobs?max_attempts=3", &train_spec()).await;
    assert_eq!(s, StatusCode::CREATED);
    let id: Uuid = v["id"].as_str().unwrap().parse().unwrap();
    let job = app.wait_status(id, "failed", T).await;
    assert_eq!(job["attempts"], 3, "{job}");
    let err = job["error"].as_str().unwrap();
    assert!(
        err.contains("not-a-directory") && err.ends_with("(attempt 3 of 3)"),
        "{err}"
    );
    let runs = app.runs(id).await;
    assert_eq!(
        runs.iter().map(|r| r.0.as_str()).collect::<Vec<_>>(),
        ["failed"; 3]
    );
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_cannot_see_or_touch_another_keys_jobs() {
    let mut app = TestApp::new().await;
    app.start_worker().await;
    let id = app.submit(&quick_spec()).await;
    app.wait_status(id, "succeeded", T).await;
    let other = app.new_key().await;
    let run = app.runs(id).await;
    assert_eq!(run.len(), 1);
    let (_, runs) = app.get(&format!("/v1/jobs/{id}/runs")).await;
    let run_id = runs[0]["id"].as_str().unwrap().to_string();
    for (m, p) in [
        (Method::GET, format!("/v1/jobs/{id}")),
        (Method::POST, format!("/v1/jobs/{id}/cancel")),
        (Method::POST, format!("/v1/jobs/{id}/retry")),
        (Method::GET, format!("/v1/jobs/{id}/runs")),
        (Method::GET, format!("/v1/jobs/{id}/logs")),
        (Method::GET, format!("/v1/jobs/{id}/metrics")),
        (Method::GET, format!("/v1/jobs/{id}/events")),
        (Method::GET, format!("/v1/runs/{run_id}")),
        (Method::GET, format!("/v1/runs/{run_id}/metrics")),
    ] {
        let (s, v) = app.call(m, &p, Some(&other), Some(&json!({}))).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{p}: {v}");
    }
    let (s, v) = app
        .call(
            Method::POST,
            "/v1/metrics/query",
            Some(&other),
            Some(&json!({"runs": [run_id]})),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    let (_, list) = app.call(Method::GET, "/v1/jobs", Some(&other), None).await;
    assert_eq!(list["jobs"], json!([]));
    // Its owner still sees it.
    let (s, _) = app.get(&format!("/v1/jobs/{id}")).await;
    assert_eq!(s, StatusCode::OK);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_schedule_tick_makes_exactly_one_job_with_two_api_instances() {
    let mut app = TestApp::new().await;
    app.start_api().await; // a second instance, same database and Redis
    let (s, sch) = app
        .post(
            "/v1/schedules",
            &json!({"name": "every second", "cron": "* * * * * *", "template": quick_spec()}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{sch}");
    let sid = sch["id"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let (s, _) = app
        .post(&format!("/v1/schedules/{sid}/pause"), &json!({}))
        .await;
    assert_eq!(s, StatusCode::OK);
    let (_, got) = app.get(&format!("/v1/schedules/{sid}")).await;
    assert_eq!(got["paused"], true);
    let fires = got["fires"].as_array().unwrap().clone();
    assert!(fires.len() >= 2, "{got}");
    let jobs: Vec<(Uuid, i64)> = sqlx::query_as(
        "SELECT schedule_id, count(*) FROM jobs WHERE schedule_id IS NOT NULL GROUP BY schedule_id",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].1 as usize, fires.len(), "one job per tick: {got}");
    let times: Vec<chrono::DateTime<chrono::Utc>> = fires
        .iter()
        .map(|f| f["fire_at"].as_str().unwrap().parse().unwrap())
        .collect();
    // Distinct whole-second ticks (a tick is skipped, never doubled, when the ticker runs late).
    for w in times.windows(2) {
        let gap = (w[1] - w[0]).num_milliseconds();
        assert!(gap >= 1000 && gap % 1000 == 0, "ticks {times:?}");
    }
    // Paused: no more ticks.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_, again) = app.get(&format!("/v1/schedules/{sid}")).await;
    assert_eq!(again["fires"].as_array().unwrap().len(), fires.len());
    let (s, _) = app
        .post(&format!("/v1/schedules/{sid}/resume"), &json!({}))
        .await;
    assert_eq!(s, StatusCode::OK);
    let (_, list) = app.get("/v1/schedules").await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    let (s, _) = app
        .call(
            Method::DELETE,
            &format!("/v1/schedules/{sid}"),
            Some(&app.token),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = app.get(&format!("/v1/schedules/{sid}")).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_queue_without_live_workers_keeps_its_jobs_queued_and_says_so() {
    let mut app = TestApp::new().await;
    let mut spec = quick_spec();
    spec["device"] = json!("cuda:0");
    let gpu = app.submit(&spec).await;
    let cpu = app.submit(&quick_spec()).await;
    let (_, j) = app.get(&format!("/v1/jobs/{cpu}")).await;
    assert!(
        j["waiting"]
            .as_str()
            .unwrap()
            .contains("no live worker serves the `cpu` queue"),
        "{j}"
    );
    app.start_worker().await;
    app.wait_status(cpu, "succeeded", T).await;
    let (_, j) = app.get(&format!("/v1/jobs/{gpu}")).await;
    assert_eq!(j["status"], "queued");
    assert_eq!(j["queue"], "gpu");
    assert!(
        j["waiting"]
            .as_str()
            .unwrap()
            .contains("no live worker serves the `gpu` queue"),
        "{j}"
    );
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn graceful_shutdown_hands_the_running_job_back() {
    let mut app = TestApp::new().await;
    let w = app.start_worker().await;
    let id = app.submit(&long_adapt_spec()).await;
    app.wait_job(id, T, |v| v["progress"]["done"].as_u64().unwrap_or(0) >= 3)
        .await;
    app.stop_worker(w).await; // grace 0: release at once
    let (_, j) = app.get(&format!("/v1/jobs/{id}")).await;
    assert_eq!(j["status"], "queued", "{j}");
    assert_eq!(j["attempts"], 0, "a released attempt does not count");
    assert_eq!(app.runs(id).await, vec![("released".to_string(), 0)]);
    app.start_worker().await;
    app.wait_status(id, "succeeded", T).await;
    let runs = app.runs(id).await;
    assert_eq!(runs[1], ("succeeded".to_string(), 750));
    app.cleanup().await;
}

/// A `sample` job through the service: a tiny random llama on generated problems; the stored
/// result equals the embedded run's, and its samples page through `/samples`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sample_job_stores_samples_and_verdicts_browsable_by_page() {
    let mut app = TestApp::new().await;
    app.start_worker().await;
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny.gguf");
    attune_engine::llm::tiny::write_gguf(&model, 3, candle_core::quantized::GgmlDType::F32)
        .unwrap();
    let spec = json!({
        "kind": "sample", "seed": 5, "n": 3,
        "model": {"path": model, "max_seq_len": 256},
        "problems": {"source": "arithmetic", "count": 2, "min_difficulty": 1, "max_difficulty": 2},
        "sampling": {"temperature": 1.0, "max_new_tokens": 6}
    });
    let id = app.submit(&spec).await;
    let job = app.wait_status(id, "succeeded", T).await;
    assert_eq!(job["kind"], "sample");
    let out = dir.path().join("embedded");
    let embedded = embedded_run(&spec, &fixture().data, &out).unwrap();
    assert_eq!(job["result"], embedded);
    assert_eq!(job["result"]["pass_at_k"].as_array().unwrap().len(), 3);

    let (s, page) = app.get(&format!("/v1/jobs/{id}/samples")).await;
    assert_eq!(s, StatusCode::OK, "{page}");
    assert_eq!(page["total"], 6);
    let rows = page["samples"].as_array().unwrap();
    assert_eq!(rows[0]["problem_id"], "arith/0");
    assert_eq!(rows[3]["problem_id"], "arith/1");
    assert_eq!(rows[4]["index"], 1);
    assert_eq!(
        rows[4]["text"],
        embedded["per_problem"][1]["samples"][1]["text"]
    );
    let (_, page) = app
        .get(&format!(
            "/v1/jobs/{id}/samples?problem_id=arith/1&offset=1&limit=1"
        ))
        .await;
    assert_eq!(page["total"], 3);
    assert_eq!(page["samples"].as_array().unwrap().len(), 1);
    assert_eq!(page["samples"][0]["index"], 1);
    let (s, e) = app.get(&format!("/v1/jobs/{id}/samples?limit=0")).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{e}");
    // Not a sample job: a 409 that says so.
    let other = app.submit(&quick_spec()).await;
    app.wait_status(other, "succeeded", T).await;
    let (s, e) = app.get(&format!("/v1/jobs/{other}/samples")).await;
    assert_eq!(s, StatusCode::CONFLICT, "{e}");
    assert!(
        e["error"].as_str().unwrap().contains("only `sample` jobs"),
        "{e}"
    );
    app.cleanup().await;
}
