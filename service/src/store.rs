//! The Postgres store: API keys, jobs, runs (attempts), metrics, logs, checkpoints, workers.
//! Every write a worker makes for a job is fenced by (job id, run id): it happens only while
//! that run is the job's `current_run` and the job is `running`, so an attempt that lost its
//! claim writes nothing.

use crate::{Error, JobStatus, QueueName, Result};
use attune_engine::jobs::JobSpec;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;
use std::time::Duration;
use uuid::Uuid;

/// The Postgres NOTIFY channel for job events (payload: `{"job": id, "run": id, "what": …}`).
/// Notifications are sent inside the transaction that writes the data, so a listener is told
/// only about committed rows.
pub const EVENTS_CHANNEL: &str = "attune_events";
/// The NOTIFY channel on which a cancel request reaches the worker running the job.
pub const CANCEL_CHANNEL: &str = "attune_cancel";

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

// ---------------------------------------------------------------------------------------------
// API keys

#[derive(Clone, Debug, Serialize)]
pub struct ApiKey {
    pub id: Uuid,
    pub name: String,
    pub created_at: DateTime<Utc>,
}

/// The sha256 under which a token is stored.
pub fn token_hash(token: &str) -> String {
    crate::blobs::sha256_hex(token.as_bytes())
}

/// Create a key; returns it and its token (shown once, stored only hashed).
pub async fn create_key(pool: &PgPool, name: &str) -> Result<(ApiKey, String)> {
    use rand::RngCore;
    let mut raw = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    let token = format!("atk_{}", hex::encode(raw));
    let id = Uuid::new_v4();
    let row = sqlx::query!(
        "INSERT INTO api_keys (id, name, token_sha256) VALUES ($1, $2, $3) RETURNING created_at",
        id,
        name,
        token_hash(&token)
    )
    .fetch_one(pool)
    .await?;
    Ok((
        ApiKey {
            id,
            name: name.into(),
            created_at: row.created_at,
        },
        token,
    ))
}

/// The key a bearer token belongs to, if it exists and is not revoked.
pub async fn authenticate(pool: &PgPool, token: &str) -> Result<Option<Uuid>> {
    Ok(sqlx::query_scalar!(
        "SELECT id FROM api_keys WHERE token_sha256 = $1 AND revoked_at IS NULL",
        token_hash(token)
    )
    .fetch_optional(pool)
    .await?)
}

// ---------------------------------------------------------------------------------------------
// Jobs

#[derive(Clone, Debug, PartialEq, Serialize, sqlx::FromRow)]
pub struct JobRow {
    pub id: Uuid,
    pub owner: Uuid,
    pub kind: String,
    pub queue: String,
    pub name: Option<String>,
    pub tags: Vec<String>,
    pub spec: Value,
    pub status: String,
    pub attempts: i32,
    pub max_attempts: i32,
    pub cancel_requested: bool,
    pub current_run: Option<Uuid>,
    pub error: Option<String>,
    pub result: Option<Value>,
    pub progress: Option<Value>,
    pub idempotency_key: Option<String>,
    pub schedule_id: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub queued_at: DateTime<Utc>,
    pub not_before: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl JobRow {
    pub fn status(&self) -> JobStatus {
        JobStatus::parse(&self.status).unwrap_or(JobStatus::Queued)
    }
    pub fn queue(&self) -> QueueName {
        QueueName::parse(&self.queue).unwrap_or(QueueName::Cpu)
    }
}

/// A job to insert, from a spec already validated by the engine.
pub struct NewJob<'a> {
    pub owner: Uuid,
    pub spec: &'a JobSpec,
    pub max_attempts: i32,
    pub idempotency_key: Option<&'a str>,
    pub schedule_id: Option<Uuid>,
}

pub struct Inserted {
    pub job: JobRow,
    /// `false` when the idempotency key matched an existing job (returned instead).
    pub created: bool,
}

/// Insert a queued job (the caller enqueues it on Redis after this commits).
pub async fn insert_job(conn: &mut sqlx::PgConnection, new: &NewJob<'_>) -> Result<Inserted> {
    let spec = new.spec.to_value();
    let queue = QueueName::for_device(&new.spec.device);
    let row = sqlx::query_as!(
        JobRow,
        "INSERT INTO jobs (id, owner, kind, queue, name, tags, spec, max_attempts, idempotency_key, schedule_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
         ON CONFLICT (owner, idempotency_key) DO NOTHING
         RETURNING *",
        Uuid::new_v4(),
        new.owner,
        new.spec.kind_name(),
        queue.as_str(),
        new.spec.name.as_deref(),
        &new.spec.tags,
        spec,
        new.max_attempts,
        new.idempotency_key,
        new.schedule_id,
    )
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(job) = row {
        return Ok(Inserted { job, created: true });
    }
    let job = sqlx::query_as!(
        JobRow,
        "SELECT * FROM jobs WHERE owner = $1 AND idempotency_key = $2",
        new.owner,
        new.idempotency_key
    )
    .fetch_one(&mut *conn)
    .await?;
    Ok(Inserted {
        job,
        created: false,
    })
}

pub async fn get_job(pool: &PgPool, owner: Uuid, id: Uuid) -> Result<Option<JobRow>> {
    Ok(sqlx::query_as!(
        JobRow,
        "SELECT * FROM jobs WHERE id = $1 AND owner = $2",
        id,
        owner
    )
    .fetch_optional(pool)
    .await?)
}

/// Filters of the job list; `None` means any.
#[derive(Clone, Debug, Default)]
pub struct JobFilter {
    pub status: Option<String>,
    pub kind: Option<String>,
    pub tag: Option<String>,
    pub created_after: Option<DateTime<Utc>>,
    pub created_before: Option<DateTime<Utc>>,
    /// Keyset cursor: jobs strictly older than (created_at, id).
    pub before: Option<(DateTime<Utc>, Uuid)>,
    /// Case-insensitive substring of the name, the id or the spec's JSON text.
    pub q: Option<String>,
}

/// `%text%` for ILIKE, with `%`, `_` and `\` taken literally.
pub fn like_pattern(text: &str) -> String {
    let mut p = String::with_capacity(text.len() + 2);
    p.push('%');
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            p.push('\\');
        }
        p.push(c);
    }
    p.push('%');
    p
}

/// Newest first.
pub async fn list_jobs(
    pool: &PgPool,
    owner: Uuid,
    f: &JobFilter,
    limit: i64,
) -> Result<Vec<JobRow>> {
    let (bt, bid) = f.before.unzip();
    Ok(sqlx::query_as!(
        JobRow,
        "SELECT * FROM jobs
         WHERE owner = $1
           AND ($2::text IS NULL OR status = $2)
           AND ($3::text IS NULL OR kind = $3)
           AND ($4::text IS NULL OR $4 = ANY (tags))
           AND ($5::timestamptz IS NULL OR created_at >= $5)
           AND ($6::timestamptz IS NULL OR created_at < $6)
           AND ($7::timestamptz IS NULL OR (created_at, id) < ($7, $8::uuid))
           AND ($10::text IS NULL OR name ILIKE $10 OR id::text ILIKE $10 OR spec::text ILIKE $10)
         ORDER BY created_at DESC, id DESC
         LIMIT $9",
        owner,
        f.status,
        f.kind,
        f.tag,
        f.created_after,
        f.created_before,
        bt,
        bid,
        limit,
        f.q.as_deref().map(like_pattern),
    )
    .fetch_all(pool)
    .await?)
}

/// A value of a job field and how many of the key's jobs have it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FacetCount {
    pub value: String,
    pub count: i64,
}

/// What the key's jobs can be filtered by: statuses, kinds and tags with their counts.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Facets {
    pub statuses: Vec<FacetCount>,
    pub kinds: Vec<FacetCount>,
    /// The 200 most used tags.
    pub tags: Vec<FacetCount>,
}

pub async fn job_facets(pool: &PgPool, owner: Uuid) -> Result<Facets> {
    let statuses = sqlx::query_as!(
        FacetCount,
        r#"SELECT status AS "value!", count(*) AS "count!" FROM jobs WHERE owner = $1
           GROUP BY status ORDER BY status"#,
        owner
    )
    .fetch_all(pool)
    .await?;
    let kinds = sqlx::query_as!(
        FacetCount,
        r#"SELECT kind AS "value!", count(*) AS "count!" FROM jobs WHERE owner = $1
           GROUP BY kind ORDER BY kind"#,
        owner
    )
    .fetch_all(pool)
    .await?;
    let tags = sqlx::query_as!(
        FacetCount,
        r#"SELECT t AS "value!", count(*) AS "count!" FROM jobs, unnest(tags) AS t
           WHERE owner = $1 GROUP BY t ORDER BY count(*) DESC, t LIMIT 200"#,
        owner
    )
    .fetch_all(pool)
    .await?;
    Ok(Facets {
        statuses,
        kinds,
        tags,
    })
}

/// What a cancel request did.
pub enum CancelOutcome {
    /// It was queued: now cancelled.
    Cancelled(JobRow),
    /// It is running: its worker was told and stops after the current batch.
    Requested(JobRow),
    /// Already finished; nothing changed.
    AlreadyFinished(JobRow),
}

pub async fn cancel_job(pool: &PgPool, owner: Uuid, id: Uuid) -> Result<Option<CancelOutcome>> {
    let mut tx = pool.begin().await?;
    let Some(job) = sqlx::query_as!(
        JobRow,
        "SELECT * FROM jobs WHERE id = $1 AND owner = $2 FOR UPDATE",
        id,
        owner
    )
    .fetch_optional(&mut *tx)
    .await?
    else {
        return Ok(None);
    };
    let out = match job.status() {
        JobStatus::Queued => {
            let j = sqlx::query_as!(
                JobRow,
                "UPDATE jobs SET status = 'cancelled', cancel_requested = true, finished_at = now(),
                        error = 'cancelled before it started'
                 WHERE id = $1 RETURNING *",
                id
            )
            .fetch_one(&mut *tx)
            .await?;
            notify(&mut tx, id, None, "status").await?;
            CancelOutcome::Cancelled(j)
        }
        JobStatus::Running => {
            let j = sqlx::query_as!(
                JobRow,
                "UPDATE jobs SET cancel_requested = true WHERE id = $1 RETURNING *",
                id
            )
            .fetch_one(&mut *tx)
            .await?;
            // (pg_notify returns void, which the checked macros cannot describe.)
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(CANCEL_CHANNEL)
                .bind(id.to_string())
                .execute(&mut *tx)
                .await?;
            CancelOutcome::Requested(j)
        }
        _ => CancelOutcome::AlreadyFinished(job),
    };
    tx.commit().await?;
    Ok(Some(out))
}

/// Re-queue a failed or cancelled job with a fresh budget of attempts. `Ok(None)`: no such job;
/// `Err(row)` inside: the job is not failed or cancelled.
pub async fn retry_job(
    pool: &PgPool,
    owner: Uuid,
    id: Uuid,
) -> Result<Option<std::result::Result<JobRow, JobRow>>> {
    let mut tx = pool.begin().await?;
    let Some(job) = sqlx::query_as!(
        JobRow,
        "SELECT * FROM jobs WHERE id = $1 AND owner = $2 FOR UPDATE",
        id,
        owner
    )
    .fetch_optional(&mut *tx)
    .await?
    else {
        return Ok(None);
    };
    if !matches!(job.status(), JobStatus::Failed | JobStatus::Cancelled) {
        return Ok(Some(Err(job)));
    }
    let j = sqlx::query_as!(
        JobRow,
        "UPDATE jobs SET status = 'queued', attempts = 0, cancel_requested = false,
                current_run = NULL, error = NULL, result = NULL, progress = NULL,
                queued_at = now(), not_before = now(), finished_at = NULL
         WHERE id = $1 RETURNING *",
        id
    )
    .fetch_one(&mut *tx)
    .await?;
    notify(&mut tx, id, None, "status").await?;
    tx.commit().await?;
    Ok(Some(Ok(j)))
}

async fn notify(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    job: Uuid,
    run: Option<Uuid>,
    what: &str,
) -> Result<()> {
    let payload = serde_json::json!({ "job": job, "run": run, "what": what }).to_string();
    // (pg_notify returns void, which the checked macros cannot describe.)
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(EVENTS_CHANNEL)
        .bind(payload)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Live workers (heartbeat within `within`) serving `queue`.
pub async fn live_workers(pool: &PgPool, queue: QueueName, within: Duration) -> Result<i64> {
    Ok(sqlx::query_scalar!(
        "SELECT count(*) AS \"n!\" FROM workers
         WHERE queue = $1 AND stopped_at IS NULL
           AND heartbeat_at > now() - make_interval(secs => $2)",
        queue.as_str(),
        secs(within)
    )
    .fetch_one(pool)
    .await?)
}

// ---------------------------------------------------------------------------------------------
// Runs: claim, heartbeat, batched writes, finish

#[derive(Clone, Debug, PartialEq, Serialize, sqlx::FromRow)]
pub struct RunRow {
    pub id: Uuid,
    pub job_id: Uuid,
    pub attempt: i32,
    pub worker_id: String,
    pub status: String,
    pub error: Option<String>,
    pub started_at: DateTime<Utc>,
    pub heartbeat_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// The answer to "may I run this job?".
#[derive(Debug)]
pub enum Claim {
    /// Yes: this run is now the job's fencing token.
    Run {
        run_id: Uuid,
        attempt: i32,
        spec: Value,
    },
    /// The job is finished (or gone): acknowledge the entry and move on.
    Done,
    /// Another worker runs it and is alive: leave the entry alone.
    Busy,
    /// Queued but in its retry backoff: drop the entry, the reconciler enqueues it when due.
    NotYet,
}

/// Claim `job_id` for `worker_id`. A running job whose current run has not heartbeated within
/// `lease` is taken over: that run becomes `lost` and its metrics are discarded.
pub async fn claim(pool: &PgPool, job_id: Uuid, worker_id: &str, lease: Duration) -> Result<Claim> {
    let mut tx = pool.begin().await?;
    let Some(job) = sqlx::query!(
        "SELECT status, attempts, max_attempts, current_run, not_before <= now() AS \"due!\"
         FROM jobs WHERE id = $1 FOR UPDATE",
        job_id
    )
    .fetch_optional(&mut *tx)
    .await?
    else {
        return Ok(Claim::Done);
    };
    match JobStatus::parse(&job.status) {
        Some(JobStatus::Queued) => {
            if !job.due {
                return Ok(Claim::NotYet);
            }
        }
        Some(JobStatus::Running) => {
            let stale = match job.current_run {
                None => true,
                Some(run) => sqlx::query_scalar!(
                    "SELECT heartbeat_at < now() - make_interval(secs => $2) AS \"stale!\"
                     FROM runs WHERE id = $1",
                    run,
                    secs(lease)
                )
                .fetch_optional(&mut *tx)
                .await?
                .unwrap_or(true),
            };
            if !stale {
                return Ok(Claim::Busy);
            }
            if let Some(run) = job.current_run {
                let msg = format!(
                    "attempt lost: its worker stopped heartbeating for more than {:.0} s",
                    lease.as_secs_f64()
                );
                sqlx::query!(
                    "UPDATE runs SET status = 'lost', error = $2, finished_at = now() WHERE id = $1",
                    run,
                    msg
                )
                .execute(&mut *tx)
                .await?;
                // The attempt lost its claim: its results are discarded, never duplicated.
                sqlx::query!("DELETE FROM metrics WHERE run_id = $1", run)
                    .execute(&mut *tx)
                    .await?;
                if job.attempts >= job.max_attempts {
                    let err = format!("{msg} (attempt {} of {})", job.attempts, job.max_attempts);
                    sqlx::query!(
                        "UPDATE jobs SET status = 'failed', error = $2, finished_at = now(),
                                current_run = NULL
                         WHERE id = $1",
                        job_id,
                        err
                    )
                    .execute(&mut *tx)
                    .await?;
                    notify(&mut tx, job_id, Some(run), "status").await?;
                    tx.commit().await?;
                    return Ok(Claim::Done);
                }
            }
        }
        _ => return Ok(Claim::Done),
    }
    let run_id = Uuid::new_v4();
    let attempt = sqlx::query_scalar!(
        "INSERT INTO runs (id, job_id, attempt, worker_id)
         SELECT $1, $2, COALESCE(max(attempt), 0) + 1, $3 FROM runs WHERE job_id = $2
         RETURNING attempt",
        run_id,
        job_id,
        worker_id
    )
    .fetch_one(&mut *tx)
    .await?;
    let spec = sqlx::query_scalar!(
        "UPDATE jobs SET status = 'running', attempts = attempts + 1, current_run = $2,
                started_at = COALESCE(started_at, now()), progress = NULL
         WHERE id = $1 RETURNING spec",
        job_id,
        run_id
    )
    .fetch_one(&mut *tx)
    .await?;
    notify(&mut tx, job_id, Some(run_id), "status").await?;
    tx.commit().await?;
    Ok(Claim::Run {
        run_id,
        attempt,
        spec,
    })
}

/// Heartbeat of a run. `None`: the run is no longer the job's current run (claim lost);
/// `Some(cancel_requested)` otherwise.
pub async fn heartbeat(pool: &PgPool, job_id: Uuid, run_id: Uuid) -> Result<Option<bool>> {
    Ok(sqlx::query_scalar!(
        "UPDATE runs SET heartbeat_at = now() FROM jobs
         WHERE runs.id = $2 AND jobs.id = $1 AND jobs.current_run = $2 AND jobs.status = 'running'
         RETURNING jobs.cancel_requested",
        job_id,
        run_id
    )
    .fetch_optional(pool)
    .await?)
}

/// One metric value.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MetricPoint {
    pub series: String,
    pub name: String,
    pub step: i64,
    pub value: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LogLine {
    pub level: String,
    pub message: String,
}

/// Write a batch of a run's metrics, log lines and its latest progress, fenced; notifies
/// listeners on commit. `false`: the run lost its claim and nothing was written.
pub async fn write_batch(
    pool: &PgPool,
    job_id: Uuid,
    run_id: Uuid,
    metrics: &[MetricPoint],
    logs: &[LogLine],
    progress: Option<&Value>,
) -> Result<bool> {
    let mut tx = pool.begin().await?;
    // FOR SHARE: a takeover (which updates this row) waits for this batch, then discards it.
    let fenced = sqlx::query_scalar!(
        "SELECT 1 AS \"one!\" FROM jobs
         WHERE id = $1 AND current_run = $2 AND status = 'running' FOR SHARE",
        job_id,
        run_id
    )
    .fetch_optional(&mut *tx)
    .await?;
    if fenced.is_none() {
        return Ok(false);
    }
    if !metrics.is_empty() {
        let series: Vec<String> = metrics.iter().map(|m| m.series.clone()).collect();
        let names: Vec<String> = metrics.iter().map(|m| m.name.clone()).collect();
        let steps: Vec<i64> = metrics.iter().map(|m| m.step).collect();
        let values: Vec<f64> = metrics.iter().map(|m| m.value).collect();
        sqlx::query!(
            "INSERT INTO metrics (run_id, series, name, step, value)
             SELECT $1, * FROM UNNEST($2::text[], $3::text[], $4::bigint[], $5::float8[])
             ON CONFLICT DO NOTHING",
            run_id,
            &series,
            &names,
            &steps,
            &values
        )
        .execute(&mut *tx)
        .await?;
    }
    if !logs.is_empty() {
        let levels: Vec<String> = logs.iter().map(|l| l.level.clone()).collect();
        let msgs: Vec<String> = logs.iter().map(|l| l.message.clone()).collect();
        sqlx::query!(
            "INSERT INTO logs (run_id, level, message)
             SELECT $1, * FROM UNNEST($2::text[], $3::text[])",
            run_id,
            &levels,
            &msgs
        )
        .execute(&mut *tx)
        .await?;
    }
    if let Some(p) = progress {
        sqlx::query!("UPDATE jobs SET progress = $2 WHERE id = $1", job_id, p)
            .execute(&mut *tx)
            .await?;
    }
    notify(&mut tx, job_id, Some(run_id), "data").await?;
    tx.commit().await?;
    Ok(true)
}

/// A checkpoint a run wrote, already in the object store.
#[derive(Clone, Debug)]
pub struct NewCheckpoint {
    pub name: String,
    pub sha256: String,
    pub size_bytes: i64,
    pub info: Option<Value>,
}

/// How an attempt ended.
pub enum Outcome {
    Succeeded {
        result: Value,
        checkpoints: Vec<NewCheckpoint>,
        /// (sha256, path) of the checkpoints the job read.
        uses: Vec<(String, String)>,
    },
    Cancelled,
    /// Failed; `retry_after` when the error may go away on another attempt (the job is
    /// re-queued then if it has attempts left).
    Failed {
        error: String,
        retry_after: Option<Duration>,
    },
    /// The worker is shutting down: hand the job back without counting the attempt.
    Released,
}

/// What `finish` did to the job.
#[derive(Debug, PartialEq, Eq)]
pub enum Finished {
    /// The run had lost its claim: nothing was written.
    Fenced,
    Status(JobStatus),
}

pub async fn finish(
    pool: &PgPool,
    job_id: Uuid,
    run_id: Uuid,
    outcome: Outcome,
) -> Result<Finished> {
    let mut tx = pool.begin().await?;
    let Some(job) = sqlx::query!(
        "SELECT attempts, max_attempts FROM jobs
         WHERE id = $1 AND current_run = $2 AND status = 'running' FOR UPDATE",
        job_id,
        run_id
    )
    .fetch_optional(&mut *tx)
    .await?
    else {
        return Ok(Finished::Fenced);
    };
    let status = match outcome {
        Outcome::Succeeded {
            result,
            checkpoints,
            uses,
        } => {
            sqlx::query!(
                "UPDATE runs SET status = 'succeeded', finished_at = now() WHERE id = $1",
                run_id
            )
            .execute(&mut *tx)
            .await?;
            sqlx::query!(
                "UPDATE jobs SET status = 'succeeded', result = $2, error = NULL, finished_at = now()
                 WHERE id = $1",
                job_id,
                result
            )
            .execute(&mut *tx)
            .await?;
            for c in checkpoints {
                sqlx::query!(
                    "INSERT INTO checkpoints (id, job_id, run_id, name, sha256, size_bytes, info)
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                    Uuid::new_v4(),
                    job_id,
                    run_id,
                    c.name,
                    c.sha256,
                    c.size_bytes,
                    c.info
                )
                .execute(&mut *tx)
                .await?;
            }
            for (sha, path) in uses {
                sqlx::query!(
                    "INSERT INTO checkpoint_uses (job_id, sha256, path) VALUES ($1, $2, $3)
                     ON CONFLICT DO NOTHING",
                    job_id,
                    sha,
                    path
                )
                .execute(&mut *tx)
                .await?;
            }
            JobStatus::Succeeded
        }
        Outcome::Cancelled => {
            sqlx::query!(
                "UPDATE runs SET status = 'cancelled', error = 'cancelled', finished_at = now()
                 WHERE id = $1",
                run_id
            )
            .execute(&mut *tx)
            .await?;
            sqlx::query!(
                "UPDATE jobs SET status = 'cancelled', error = 'cancelled while running',
                        finished_at = now()
                 WHERE id = $1",
                job_id
            )
            .execute(&mut *tx)
            .await?;
            JobStatus::Cancelled
        }
        Outcome::Failed { error, retry_after } => {
            sqlx::query!(
                "UPDATE runs SET status = 'failed', error = $2, finished_at = now() WHERE id = $1",
                run_id,
                error
            )
            .execute(&mut *tx)
            .await?;
            match retry_after {
                Some(delay) if job.attempts < job.max_attempts => {
                    sqlx::query!(
                        "UPDATE jobs SET status = 'queued', error = $2, current_run = NULL,
                                queued_at = now(),
                                not_before = now() + make_interval(secs => $3)
                         WHERE id = $1",
                        job_id,
                        error,
                        secs(delay)
                    )
                    .execute(&mut *tx)
                    .await?;
                    JobStatus::Queued
                }
                _ => {
                    let error = if retry_after.is_some() {
                        format!("{error} (attempt {} of {})", job.attempts, job.max_attempts)
                    } else {
                        error
                    };
                    sqlx::query!(
                        "UPDATE jobs SET status = 'failed', error = $2, finished_at = now()
                         WHERE id = $1",
                        job_id,
                        error
                    )
                    .execute(&mut *tx)
                    .await?;
                    JobStatus::Failed
                }
            }
        }
        Outcome::Released => {
            sqlx::query!(
                "UPDATE runs SET status = 'released', error = 'worker shut down',
                        finished_at = now()
                 WHERE id = $1",
                run_id
            )
            .execute(&mut *tx)
            .await?;
            sqlx::query!("DELETE FROM metrics WHERE run_id = $1", run_id)
                .execute(&mut *tx)
                .await?;
            sqlx::query!(
                "UPDATE jobs SET status = 'queued', attempts = greatest(attempts - 1, 0),
                        current_run = NULL, queued_at = now(), not_before = now()
                 WHERE id = $1",
                job_id
            )
            .execute(&mut *tx)
            .await?;
            JobStatus::Queued
        }
    };
    notify(&mut tx, job_id, Some(run_id), "status").await?;
    tx.commit().await?;
    Ok(Finished::Status(status))
}

pub async fn list_runs(pool: &PgPool, job_id: Uuid) -> Result<Vec<RunRow>> {
    Ok(sqlx::query_as!(
        RunRow,
        "SELECT * FROM runs WHERE job_id = $1 ORDER BY attempt",
        job_id
    )
    .fetch_all(pool)
    .await?)
}

/// A run, if its job belongs to `owner`.
pub async fn get_run(pool: &PgPool, owner: Uuid, run_id: Uuid) -> Result<Option<RunRow>> {
    Ok(sqlx::query_as!(
        RunRow,
        "SELECT r.* FROM runs r JOIN jobs j ON j.id = r.job_id WHERE r.id = $1 AND j.owner = $2",
        run_id,
        owner
    )
    .fetch_optional(pool)
    .await?)
}

/// Filters and keyset cursor for metric history, ordered by (series, name, step).
#[derive(Clone, Debug, Default)]
pub struct MetricFilter {
    pub series: Option<String>,
    pub name: Option<String>,
    pub step_from: Option<i64>,
    pub step_to: Option<i64>,
    pub after: Option<(String, String, i64)>,
}

pub async fn metrics(
    pool: &PgPool,
    run_ids: &[Uuid],
    f: &MetricFilter,
    limit: i64,
) -> Result<Vec<(Uuid, MetricPoint)>> {
    let (a_series, a_name, a_step) = match &f.after {
        Some((s, n, st)) => (Some(s.clone()), Some(n.clone()), Some(*st)),
        None => (None, None, None),
    };
    let rows = sqlx::query!(
        "SELECT run_id, series, name, step, value FROM metrics
         WHERE run_id = ANY ($1)
           AND ($2::text IS NULL OR series = $2)
           AND ($3::text IS NULL OR name = $3)
           AND ($4::bigint IS NULL OR step >= $4)
           AND ($5::bigint IS NULL OR step <= $5)
           AND ($6::text IS NULL OR (series, name, step) > ($6, $7::text, $8::bigint))
         ORDER BY run_id, series, name, step
         LIMIT $9",
        run_ids,
        f.series,
        f.name,
        f.step_from,
        f.step_to,
        a_series,
        a_name,
        a_step,
        limit
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            (
                r.run_id,
                MetricPoint {
                    series: r.series,
                    name: r.name,
                    step: r.step,
                    value: r.value,
                },
            )
        })
        .collect())
}

/// Metric rows stored for each run of a job.
pub async fn metric_counts(pool: &PgPool, job_id: Uuid) -> Result<Vec<(Uuid, i64)>> {
    Ok(sqlx::query!(
        "SELECT r.id, count(m.run_id) AS \"n!\" FROM runs r LEFT JOIN metrics m ON m.run_id = r.id
         WHERE r.job_id = $1 GROUP BY r.id, r.attempt ORDER BY r.attempt",
        job_id
    )
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|r| (r.id, r.n))
    .collect())
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LogRow {
    pub id: i64,
    pub run_id: Uuid,
    pub attempt: i32,
    pub at: DateTime<Utc>,
    pub level: String,
    pub message: String,
}

/// A job's log lines (all attempts), after line `after_id`.
pub async fn logs(pool: &PgPool, job_id: Uuid, after_id: i64, limit: i64) -> Result<Vec<LogRow>> {
    Ok(sqlx::query_as!(
        LogRow,
        "SELECT l.id, l.run_id, r.attempt, l.at, l.level, l.message
         FROM logs l JOIN runs r ON r.id = l.run_id
         WHERE r.job_id = $1 AND l.id > $2 ORDER BY l.id LIMIT $3",
        job_id,
        after_id,
        limit
    )
    .fetch_all(pool)
    .await?)
}

// ---------------------------------------------------------------------------------------------
// Checkpoints

#[derive(Clone, Debug, PartialEq, Serialize, sqlx::FromRow)]
pub struct CheckpointRow {
    pub id: Uuid,
    pub job_id: Uuid,
    pub run_id: Uuid,
    pub name: String,
    pub sha256: String,
    pub size_bytes: i64,
    pub info: Option<Value>,
    pub created_at: DateTime<Utc>,
}

pub async fn job_checkpoints(pool: &PgPool, job_id: Uuid) -> Result<Vec<CheckpointRow>> {
    Ok(sqlx::query_as!(
        CheckpointRow,
        "SELECT * FROM checkpoints WHERE job_id = $1 ORDER BY name",
        job_id
    )
    .fetch_all(pool)
    .await?)
}

pub async fn get_checkpoint(pool: &PgPool, owner: Uuid, id: Uuid) -> Result<Option<CheckpointRow>> {
    Ok(sqlx::query_as!(
        CheckpointRow,
        "SELECT c.* FROM checkpoints c JOIN jobs j ON j.id = c.job_id
         WHERE c.id = $1 AND j.owner = $2",
        id,
        owner
    )
    .fetch_optional(pool)
    .await?)
}

/// Jobs of `owner` that read a checkpoint with this content.
pub async fn checkpoint_users(pool: &PgPool, owner: Uuid, sha256: &str) -> Result<Vec<Uuid>> {
    Ok(sqlx::query_scalar!(
        "SELECT DISTINCT u.job_id FROM checkpoint_uses u JOIN jobs j ON j.id = u.job_id
         WHERE u.sha256 = $1 AND j.owner = $2 ORDER BY u.job_id",
        sha256,
        owner
    )
    .fetch_all(pool)
    .await?)
}

// ---------------------------------------------------------------------------------------------
// Workers

pub async fn register_worker(
    pool: &PgPool,
    id: &str,
    queue: QueueName,
    hostname: &str,
    version: &str,
) -> Result<()> {
    sqlx::query!(
        "INSERT INTO workers (id, queue, hostname, pid, version) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (id) DO UPDATE SET heartbeat_at = now(), stopped_at = NULL",
        id,
        queue.as_str(),
        hostname,
        std::process::id() as i32,
        version
    )
    .execute(pool)
    .await?;
    Ok(())
}

pub async fn worker_heartbeat(pool: &PgPool, id: &str) -> Result<()> {
    sqlx::query!("UPDATE workers SET heartbeat_at = now() WHERE id = $1", id)
        .execute(pool)
        .await?;
    Ok(())
}

pub async fn worker_stopped(pool: &PgPool, id: &str) -> Result<()> {
    sqlx::query!("UPDATE workers SET stopped_at = now() WHERE id = $1", id)
        .execute(pool)
        .await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Statistics for /metrics

/// Jobs per (queue, status).
pub async fn job_counts(pool: &PgPool) -> Result<Vec<(String, String, i64)>> {
    Ok(
        sqlx::query!("SELECT queue, status, count(*) AS \"n!\" FROM jobs GROUP BY queue, status")
            .fetch_all(pool)
            .await?
            .into_iter()
            .map(|r| (r.queue, r.status, r.n))
            .collect(),
    )
}

/// Cumulative histogram of run durations (seconds) of succeeded runs: counts ≤ each bound,
/// total count and sum.
pub async fn run_duration_histogram(pool: &PgPool, bounds: &[f64]) -> Result<(Vec<i64>, i64, f64)> {
    let r = sqlx::query!(
        "WITH d AS (
             SELECT extract(epoch FROM finished_at - started_at)::float8 AS s FROM runs
             WHERE status = 'succeeded' AND finished_at IS NOT NULL)
         SELECT (SELECT array_agg((SELECT count(*) FROM d WHERE d.s <= b) ORDER BY ord)
                 FROM unnest($1::float8[]) WITH ORDINALITY AS t(b, ord)) AS counts,
                (SELECT count(*) FROM d) AS \"n!\",
                (SELECT COALESCE(sum(s), 0) FROM d) AS \"sum!\"",
        bounds
    )
    .fetch_one(pool)
    .await?;
    Ok((r.counts.unwrap_or_default(), r.n, r.sum))
}

/// Check that an error is a unique violation of `constraint`.
pub fn is_unique_violation(e: &Error, constraint: &str) -> bool {
    match e {
        Error::Db(sqlx::Error::Database(d)) => {
            d.code().as_deref() == Some("23505") && d.constraint() == Some(constraint)
        }
        _ => false,
    }
}

/// A job's metric rows inserted after `after_seq` (all its runs), in insertion order.
pub async fn metrics_since(
    pool: &PgPool,
    job_id: Uuid,
    after_seq: i64,
    limit: i64,
) -> Result<Vec<(i64, Uuid, MetricPoint)>> {
    Ok(sqlx::query!(
        "SELECT m.seq, m.run_id, m.series, m.name, m.step, m.value
         FROM metrics m JOIN runs r ON r.id = m.run_id
         WHERE r.job_id = $1 AND m.seq > $2 ORDER BY m.seq LIMIT $3",
        job_id,
        after_seq,
        limit
    )
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|r| {
        (
            r.seq,
            r.run_id,
            MetricPoint {
                series: r.series,
                name: r.name,
                step: r.step,
                value: r.value,
            },
        )
    })
    .collect())
}
