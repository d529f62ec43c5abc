//! The reconciler: Postgres is the truth, so a job that should be on a stream but is not
//! (Redis restarted or was flushed, the api died between its commit and its XADD, a retry's
//! backoff is over, a running job's worker died and Redis lost its entry) is put back. A
//! duplicate entry is harmless: claiming a job is decided in Postgres.

use crate::queue::Queue;
use crate::{QueueName, Result};
use sqlx::PgPool;
use std::time::Duration;

/// Advisory lock key: one reconciler pass at a time across api instances.
const LOCK_KEY: i64 = 0x0a77_0e5e_c0c1;

#[derive(Clone, Copy, Debug)]
pub struct ReconcileConfig {
    /// A queued job younger than this is left alone (its XADD may be in flight).
    pub grace: Duration,
    /// A running job whose run has not heartbeated for this long is considered orphaned.
    pub lease: Duration,
}

/// One pass over every queue; returns how many jobs were re-enqueued.
pub async fn reconcile_once(pool: &PgPool, queue: &Queue, cfg: ReconcileConfig) -> Result<usize> {
    let mut tx = pool.begin().await?;
    let locked: bool =
        sqlx::query_scalar!("SELECT pg_try_advisory_xact_lock($1) AS \"l!\"", LOCK_KEY)
            .fetch_one(&mut *tx)
            .await?;
    if !locked {
        return Ok(0);
    }
    let mut n = 0;
    for q in QueueName::ALL {
        let candidates = sqlx::query_scalar!(
            "SELECT j.id FROM jobs j
             WHERE j.queue = $1 AND (
                 (j.status = 'queued' AND j.not_before <= now()
                  AND j.queued_at < now() - make_interval(secs => $2))
                 OR (j.status = 'running' AND NOT EXISTS (
                     SELECT 1 FROM runs r WHERE r.id = j.current_run
                       AND r.heartbeat_at > now() - make_interval(secs => $3))))
             ORDER BY j.created_at LIMIT 10000",
            q.as_str(),
            cfg.grace.as_secs_f64(),
            cfg.lease.as_secs_f64()
        )
        .fetch_all(&mut *tx)
        .await?;
        if candidates.is_empty() {
            continue;
        }
        let present = queue.job_ids(q).await?;
        for id in candidates {
            if !present.contains(&id) {
                queue.enqueue(q, id).await?;
                tracing::info!(job = %id, queue = %q, "reconciler: re-enqueued a job missing from Redis");
                n += 1;
            }
        }
    }
    tx.commit().await?;
    Ok(n)
}
