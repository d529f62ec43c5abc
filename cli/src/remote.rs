//! `attune submit|status|logs|jobs`: talk to the Attune API; `attune admin create-key`: make
//! an API key directly in Postgres.

use anyhow::{bail, Context as _, Result};
use futures::StreamExt;
use serde_json::Value;
use std::path::PathBuf;

#[derive(clap::Args, Clone)]
pub struct Remote {
    /// Base URL of the Attune API.
    #[arg(
        long,
        env = "ATTUNE_API_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub api_url: String,
    /// API key (create one with `attune admin create-key`).
    #[arg(long, env = "ATTUNE_API_KEY", hide_env_values = true, global = true)]
    pub api_key: Option<String>,
}

#[derive(clap::Args)]
pub struct SubmitArgs {
    /// Job spec file (TOML or JSON), as for `attune run`. Paths in it (model, checkpoints) are
    /// read by the worker, on the worker's machine.
    pub spec: PathBuf,
    /// Makes the submit idempotent: the same key returns the job it created.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// Attempts before the job fails for good (default 3).
    #[arg(long)]
    pub max_attempts: Option<i32>,
    /// Follow the job's log until it finishes.
    #[arg(long)]
    pub follow: bool,
}

#[derive(clap::Args)]
pub struct JobsArgs {
    #[arg(long)]
    pub status: Option<String>,
    #[arg(long)]
    pub kind: Option<String>,
    #[arg(long)]
    pub tag: Option<String>,
    #[arg(long, default_value_t = 20)]
    pub limit: i64,
}

#[derive(clap::Subcommand)]
pub enum Admin {
    /// Create an API key; prints its token once (only a hash is stored).
    CreateKey {
        /// A name to recognise the key by.
        #[arg(long, default_value = "default")]
        name: String,
        /// Postgres of the service (migrations are applied if needed).
        #[arg(
            long,
            env = "DATABASE_URL",
            default_value = "postgres://postgres@127.0.0.1:5432/attune"
        )]
        database_url: String,
    },
}

struct Client {
    http: reqwest::Client,
    base: String,
    key: String,
}

impl Client {
    fn new(r: &Remote) -> Result<Self> {
        let key = r.api_key.clone().context(
            "no API key: pass --api-key or set ATTUNE_API_KEY (create one with `attune admin create-key`)",
        )?;
        Ok(Self {
            http: reqwest::Client::new(),
            base: r.api_url.trim_end_matches('/').to_string(),
            key,
        })
    }

    fn req(&self, m: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(m, format!("{}{}", self.base, path))
            .bearer_auth(&self.key)
    }

    async fn send(&self, rb: reqwest::RequestBuilder) -> Result<Value> {
        let resp = rb
            .send()
            .await
            .with_context(|| format!("cannot reach the API at {}", self.base))?;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            let msg = body["error"].as_str().unwrap_or("(no message)");
            match body["field"].as_str() {
                Some(f) => bail!("{status}: {msg} (field `{f}`)"),
                None => bail!("{status}: {msg}"),
            }
        }
        Ok(body)
    }
}

fn line(j: &Value) -> String {
    let progress = match &j["progress"] {
        Value::Object(p) => format!(
            " {} {}/{}",
            p.get("phase").and_then(|v| v.as_str()).unwrap_or(""),
            p.get("done").and_then(|v| v.as_u64()).unwrap_or(0),
            p.get("total").and_then(|v| v.as_u64()).unwrap_or(0)
        ),
        _ => String::new(),
    };
    format!(
        "{}  {:<9} {:<8} {}{}",
        j["id"].as_str().unwrap_or("?"),
        j["status"].as_str().unwrap_or("?"),
        j["kind"].as_str().unwrap_or("?"),
        j["name"].as_str().unwrap_or("-"),
        progress
    )
}

pub async fn submit(r: &Remote, a: SubmitArgs) -> Result<()> {
    let c = Client::new(r)?;
    let spec = crate::read_spec(&a.spec)?;
    let mut rb = c
        .req(reqwest::Method::POST, "/v1/jobs")
        .json(&spec.to_value());
    if let Some(k) = &a.idempotency_key {
        rb = rb.header("Idempotency-Key", k);
    }
    if let Some(m) = a.max_attempts {
        rb = rb.query(&[("max_attempts", m)]);
    }
    let j = c.send(rb).await?;
    let id = j["id"].as_str().unwrap_or_default().to_string();
    println!("{id}");
    if let Some(w) = j["waiting"].as_str() {
        eprintln!("queued: {w}");
    }
    if a.follow {
        return follow(&c, &id).await;
    }
    Ok(())
}

pub async fn status(r: &Remote, id: &str) -> Result<()> {
    let c = Client::new(r)?;
    let j = c
        .send(c.req(reqwest::Method::GET, &format!("/v1/jobs/{id}")))
        .await?;
    println!("{}", line(&j));
    println!("attempts {}/{}", j["attempts"], j["max_attempts"]);
    if let Some(w) = j["waiting"].as_str() {
        println!("waiting: {w}");
    }
    if let Some(e) = j["error"].as_str() {
        println!("error: {e}");
    }
    if j["status"] == "succeeded" {
        let cks = c
            .send(c.req(reqwest::Method::GET, &format!("/v1/jobs/{id}/checkpoints")))
            .await?;
        for ck in cks.as_array().into_iter().flatten() {
            println!(
                "checkpoint {} {} sha256 {} ({} bytes): {}{}",
                ck["id"].as_str().unwrap_or(""),
                ck["name"].as_str().unwrap_or(""),
                ck["sha256"].as_str().unwrap_or(""),
                ck["size_bytes"],
                c.base,
                ck["download"].as_str().unwrap_or("")
            );
        }
        println!("result: {}/v1/jobs/{id} (field `result`)", c.base);
    }
    Ok(())
}

pub async fn jobs(r: &Remote, a: JobsArgs) -> Result<()> {
    let c = Client::new(r)?;
    let mut q: Vec<(&str, String)> = vec![("limit", a.limit.to_string())];
    for (k, v) in [("status", a.status), ("kind", a.kind), ("tag", a.tag)] {
        if let Some(v) = v {
            q.push((k, v));
        }
    }
    let list = c
        .send(c.req(reqwest::Method::GET, "/v1/jobs").query(&q))
        .await?;
    for j in list["jobs"].as_array().into_iter().flatten() {
        println!("{}", line(j));
    }
    Ok(())
}

pub async fn logs(r: &Remote, id: &str, follow_it: bool) -> Result<()> {
    let c = Client::new(r)?;
    if follow_it {
        return follow(&c, id).await;
    }
    let mut after = 0i64;
    loop {
        let page = c
            .send(
                c.req(reqwest::Method::GET, &format!("/v1/jobs/{id}/logs"))
                    .query(&[("after", after)]),
            )
            .await?;
        let lines = page["lines"].as_array().cloned().unwrap_or_default();
        for l in &lines {
            print_log(l);
        }
        after = page["next_after"].as_i64().unwrap_or(after);
        if lines.is_empty() {
            return Ok(());
        }
    }
}

fn print_log(l: &Value) {
    let warn = if l["level"] == "warn" {
        "warning: "
    } else {
        ""
    };
    println!(
        "[attempt {}] {}{}",
        l["attempt"],
        warn,
        l["message"].as_str().unwrap_or("")
    );
}

/// Follow the job's server-sent events until `end`; exit status 1 unless it succeeded.
async fn follow(c: &Client, id: &str) -> Result<()> {
    let resp = c
        .req(reqwest::Method::GET, &format!("/v1/jobs/{id}/events"))
        .header("Accept", "text/event-stream")
        .send()
        .await
        .with_context(|| format!("cannot reach the API at {}", c.base))?;
    if !resp.status().is_success() {
        let s = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        bail!("{s}: {}", body["error"].as_str().unwrap_or("(no message)"));
    }
    let mut stream = resp.bytes_stream();
    let mut buf = String::new();
    let (mut event, mut data) = (String::new(), String::new());
    while let Some(chunk) = stream.next().await {
        buf.push_str(&String::from_utf8_lossy(&chunk?));
        while let Some(i) = buf.find('\n') {
            let l = buf[..i].trim_end_matches('\r').to_string();
            buf.drain(..=i);
            if let Some(v) = l.strip_prefix("event:") {
                event = v.trim().to_string();
            } else if let Some(v) = l.strip_prefix("data:") {
                data.push_str(v.trim_start());
            } else if l.is_empty() && !event.is_empty() {
                let v: Value = serde_json::from_str(&data).unwrap_or(Value::Null);
                match event.as_str() {
                    "status" => eprintln!("status: {}", v["status"].as_str().unwrap_or("?")),
                    "log" => print_log(&v),
                    "end" => {
                        let s = v["status"].as_str().unwrap_or("?").to_string();
                        eprintln!("job {id} {s}");
                        if s != "succeeded" {
                            std::process::exit(1);
                        }
                        return Ok(());
                    }
                    _ => {}
                }
                event.clear();
                data.clear();
            }
        }
    }
    bail!("the event stream ended before the job finished")
}

pub async fn admin(a: Admin) -> Result<()> {
    match a {
        Admin::CreateKey { name, database_url } => {
            attune_service::db::create_database_if_missing(&database_url).await?;
            let pool = attune_service::db::connect(&database_url, 1).await?;
            attune_service::db::migrate(&pool).await?;
            let (key, token) = attune_service::store::create_key(&pool, &name).await?;
            eprintln!(
                "created API key {} ({}); the token below is shown only this once:",
                key.id, key.name
            );
            println!("{token}");
            Ok(())
        }
    }
}
