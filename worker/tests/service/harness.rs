//! TestApp: a fresh Postgres database (random name) and a fresh Redis key prefix per test, the
//! api on port 0, workers in-process or as child processes (for SIGKILL), tiny synthetic data.

use attune_api::ApiConfig;
use attune_engine::data::{synthetic, Dataset};
use attune_engine::jobs::{self, CancelToken, Context, JobResult, JobSpec, Quiet};
use attune_service::queue::Queue;
use attune_worker::WorkerConfig;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub const PG: &str = "postgres://postgres@127.0.0.1:5432";
pub const REDIS: &str = "redis://127.0.0.1:6379";

/// Synthetic Fashion-MNIST-shaped data and a tiny model trained on it, once per test binary.
pub struct Fixture {
    _dir: tempfile::TempDir,
    pub data: PathBuf,
    /// `model.safetensors` trained by the embedded run of [`train_spec`].
    pub model: PathBuf,
    /// The embedded run's result.
    pub train_result: Value,
}

/// The tiny train job used throughout (seconds on 2 cores).
pub fn train_spec() -> Value {
    json!({
        "kind": "train", "dataset": "fashion_mnist", "epochs": 2, "batch_size": 50,
        "val_size": 100, "max_train_samples": 300, "hflip": false,
        "architecture": {"arch": "cnn", "channels": [4, 8, 8]}, "seed": 7,
        "name": "tiny-train", "tags": ["test"]
    })
}

pub fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        synthetic::write(&data, Dataset::FashionMnist, 500, 300, 1).unwrap();
        let out = dir.path().join("train");
        let r = embedded_run(&train_spec(), &data, &out).unwrap();
        Fixture {
            model: out.join("model.safetensors"),
            train_result: r,
            data,
            _dir: dir,
        }
    })
}

/// `jobs::run` in this process, as `attune run` does; the result as JSON.
pub fn embedded_run(spec: &Value, data: &Path, out: &Path) -> Result<Value, String> {
    let spec = JobSpec::from_value(spec.clone()).map_err(|e| e.to_string())?;
    let mut ctx = Context {
        data_dir: data.to_path_buf(),
        out_dir: out.to_path_buf(),
        observer: &mut Quiet,
        cancel: CancelToken::new(),
    };
    let r: JobResult = jobs::run(&spec, &mut ctx).map_err(|e| e.to_string())?;
    Ok(serde_json::to_value(r).unwrap())
}

/// An evaluate job of the fixture model that takes a fraction of a second.
pub fn quick_spec() -> Value {
    json!({
        "kind": "evaluate", "checkpoints": [fixture().model], "corruptions": ["gaussian_noise"],
        "severities": [1], "n_examples": 50, "batch_size": 50, "clean": false
    })
}

/// An adapt job of a few seconds with many small batches (TENT, 10 steps per batch, on 5
/// corruptions × 300 images, batch 10: 150 batches).
pub fn long_adapt_spec() -> Value {
    json!({
        "kind": "adapt", "model": fixture().model,
        "corruptions": ["gaussian_noise", "shot_noise", "contrast", "brightness", "pixelate"],
        "severity": 3, "n_examples": 300, "batch_size": 10, "forgetting_examples": 0,
        "methods": [{"method": "tent", "steps": 10}]
    })
}

pub struct TestApp {
    pub base: String,
    pub db_name: String,
    pub db_url: String,
    pub pool: PgPool,
    pub prefix: String,
    pub queue: Queue,
    pub token: String,
    pub http: reqwest::Client,
    pub dirs: tempfile::TempDir,
    apis: Vec<(CancellationToken, JoinHandle<()>)>,
    workers: Vec<Option<(CancellationToken, JoinHandle<()>)>>,
}

impl TestApp {
    /// Database, Redis prefix, migrations, one api, one API key; no worker.
    pub async fn new() -> Self {
        let _ = fixture();
        let db_name = format!("attune_test_{}", Uuid::new_v4().simple());
        let db_url = format!("{PG}/{db_name}");
        attune_service::db::create_database_if_missing(&db_url)
            .await
            .expect("Postgres at 127.0.0.1:5432 (scripts/services.sh starts it)");
        let pool = attune_service::db::connect(&db_url, 8).await.unwrap();
        attune_service::db::migrate(&pool).await.unwrap();
        let prefix = format!("attune_test:{}:", Uuid::new_v4().simple());
        let queue = Queue::connect(REDIS, &prefix, Duration::ZERO)
            .await
            .expect("Redis at 127.0.0.1:6379 (scripts/services.sh starts it)");
        let (_, token) = attune_service::store::create_key(&pool, "test")
            .await
            .unwrap();
        let mut app = Self {
            base: String::new(),
            db_name,
            db_url,
            pool,
            prefix,
            queue,
            token,
            http: reqwest::Client::new(),
            dirs: tempfile::tempdir().unwrap(),
            apis: vec![],
            workers: vec![],
        };
        app.base = app.start_api().await;
        app
    }

    pub fn api_config(&self) -> ApiConfig {
        let mut c = ApiConfig::new(&self.db_url, REDIS, &self.prefix);
        c.object_store = self.dirs.path().join("objects");
        c.max_body_bytes = 64 * 1024;
        c.reconcile_every = Duration::from_millis(300);
        c.reconcile_grace = Duration::from_millis(500);
        c.lease = Duration::from_secs(2);
        c.schedule_every = Duration::from_millis(200);
        c.worker_live_within = Duration::from_secs(3);
        c
    }

    /// Start an api instance on port 0; returns its base URL.
    pub async fn start_api(&mut self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let cfg = self.api_config();
        let s = stop.clone();
        let h = tokio::spawn(async move {
            attune_api::serve(cfg, listener, s)
                .await
                .expect("api serves");
        });
        self.apis.push((stop, h));
        let base = format!("http://{addr}");
        for _ in 0..100 {
            if let Ok(r) = self.http.get(format!("{base}/readyz")).send().await {
                if r.status() == StatusCode::OK {
                    return base;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("api did not become ready");
    }

    pub fn worker_config(&self) -> WorkerConfig {
        let mut c = WorkerConfig::new(&self.db_url, REDIS, &self.prefix);
        c.data_dir = fixture().data.clone();
        c.work_dir = self.dirs.path().join("work");
        c.object_store = self.dirs.path().join("objects");
        c.lease = Duration::from_secs(2);
        c.heartbeat = Duration::from_millis(300);
        c.visibility = Duration::from_secs(2);
        c.block = Duration::from_millis(200);
        c.flush = Duration::from_millis(100);
        c.retry_base = Duration::from_millis(100);
        c.retry_max = Duration::from_secs(1);
        c.shutdown_grace = Duration::ZERO;
        c
    }

    /// Start an in-process worker; returns its index.
    pub async fn start_worker(&mut self) -> usize {
        self.start_worker_with(self.worker_config()).await
    }

    pub async fn start_worker_with(&mut self, cfg: WorkerConfig) -> usize {
        let w = attune_worker::Worker::connect(cfg).await.unwrap();
        let stop = CancellationToken::new();
        let s = stop.clone();
        let h = tokio::spawn(async move {
            w.run(s).await.expect("worker runs");
        });
        self.workers.push(Some((stop, h)));
        self.workers.len() - 1
    }

    /// Graceful shutdown of an in-process worker (waits for it).
    pub async fn stop_worker(&mut self, i: usize) {
        if let Some((s, h)) = self.workers[i].take() {
            s.cancel();
            h.await.unwrap();
        }
    }

    /// A worker as a child process (the `attune-worker` binary), to SIGKILL.
    pub fn spawn_worker_process(&self) -> std::process::Child {
        std::process::Command::new(env!("CARGO_BIN_EXE_attune-worker"))
            .env("DATABASE_URL", &self.db_url)
            .env("REDIS_URL", REDIS)
            .env("ATTUNE_REDIS_PREFIX", &self.prefix)
            .env("ATTUNE_DATA_DIR", &fixture().data)
            .env("ATTUNE_WORK_DIR", self.dirs.path().join("work-child"))
            .env("ATTUNE_OBJECT_STORE", self.dirs.path().join("objects"))
            .env("ATTUNE_LEASE_SECS", "2")
            .env("ATTUNE_HEARTBEAT_SECS", "0.3")
            .env("ATTUNE_VISIBILITY_SECS", "2")
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("spawn attune-worker")
    }

    pub async fn new_key(&self) -> String {
        attune_service::store::create_key(&self.pool, "other")
            .await
            .unwrap()
            .1
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> (StatusCode, Value) {
        let mut rb = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(t) = token {
            rb = rb.bearer_auth(t);
        }
        if let Some(b) = body {
            rb = rb.json(b);
        }
        let r = rb.send().await.unwrap();
        let s = r.status();
        let text = r.text().await.unwrap();
        (
            s,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(reqwest::Method::GET, path, Some(&self.token), None)
            .await
    }

    pub async fn post(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        self.call(reqwest::Method::POST, path, Some(&self.token), Some(body))
            .await
    }

    /// Submit a spec; returns the job id.
    pub async fn submit(&self, spec: &Value) -> Uuid {
        let (s, v) = self.post("/v1/jobs", spec).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        v["id"].as_str().unwrap().parse().unwrap()
    }

    /// Poll the job until `done(job)` holds; panics after `timeout`.
    pub async fn wait_job(
        &self,
        id: Uuid,
        timeout: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let t = Instant::now();
        loop {
            let (s, v) = self.get(&format!("/v1/jobs/{id}")).await;
            assert_eq!(s, StatusCode::OK, "{v}");
            if done(&v) {
                return v;
            }
            assert!(
                t.elapsed() < timeout,
                "job {id} did not get there in {timeout:?}: {v}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn wait_status(&self, id: Uuid, status: &str, timeout: Duration) -> Value {
        self.wait_job(id, timeout, |v| {
            let s = v["status"].as_str().unwrap_or("");
            assert!(
                s == status || !matches!(s, "succeeded" | "failed" | "cancelled"),
                "job ended {s} (expected {status}): {v}"
            );
            s == status
        })
        .await
    }

    /// Metric rows stored per run of the job, in attempt order: (run status, count).
    pub async fn runs(&self, id: Uuid) -> Vec<(String, i64)> {
        let (s, v) = self.get(&format!("/v1/jobs/{id}/runs")).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v.as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["status"].as_str().unwrap().to_string(),
                    r["metric_count"].as_i64().unwrap(),
                )
            })
            .collect()
    }

    /// Stop everything and drop the database and the Redis keys.
    pub async fn cleanup(mut self) {
        for i in 0..self.workers.len() {
            self.stop_worker(i).await;
        }
        for (s, h) in self.apis.drain(..) {
            s.cancel();
            let _ = h.await;
        }
        self.pool.close().await;
        let _ = self.queue.delete_all_keys().await;
        if let Ok(admin) = attune_service::db::connect(&format!("{PG}/postgres"), 1).await {
            let _ = sqlx::query(&format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                self.db_name
            ))
            .execute(&admin)
            .await;
        }
    }
}
