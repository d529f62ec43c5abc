//! Schedules: a cron expression and a job template. Every api instance runs the ticker; a due
//! schedule row is taken with `FOR UPDATE SKIP LOCKED` and advanced in the same transaction
//! that inserts its job and its `(schedule_id, fire_at)` row (primary key), so each tick makes
//! exactly one job. Ticks missed while no api ran are not replayed: the oldest due tick fires
//! once, then the schedule moves to its next time after now.

use crate::store::{insert_job, JobRow, NewJob};
use crate::{Error, QueueName, Result};
use attune_engine::jobs::JobSpec;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;
use std::str::FromStr;
use uuid::Uuid;

/// Parse a cron expression: 5 fields (`min hour day month weekday`, standard cron) or 6–7
/// fields with seconds first (and a year last).
pub fn parse_cron(expr: &str) -> Result<cron::Schedule> {
    let fields = expr.split_whitespace().count();
    let full = match fields {
        5 => format!("0 {expr}"),
        6 | 7 => expr.to_string(),
        _ => {
            return Err(Error::invalid(
                "cron",
                format!(
                    "`{expr}` has {fields} fields; expected 5 (min hour day month weekday) or 6–7 (sec min hour day month weekday [year])"
                ),
            ))
        }
    };
    cron::Schedule::from_str(&full).map_err(|e| {
        Error::invalid(
            "cron",
            format!("`{expr}` is not a valid cron expression: {e}"),
        )
    })
}

/// The first time strictly after `t`.
pub fn next_after(s: &cron::Schedule, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
    s.after(&t).next()
}

#[derive(Clone, Debug, PartialEq, Serialize, sqlx::FromRow)]
pub struct ScheduleRow {
    pub id: Uuid,
    pub owner: Uuid,
    pub name: Option<String>,
    pub cron: String,
    pub template: Value,
    pub max_attempts: i32,
    pub paused: bool,
    pub next_fire_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
}

pub async fn create(
    pool: &PgPool,
    owner: Uuid,
    name: Option<&str>,
    cron_expr: &str,
    template: &JobSpec,
    max_attempts: i32,
) -> Result<ScheduleRow> {
    let s = parse_cron(cron_expr)?;
    let next = next_after(&s, Utc::now())
        .ok_or_else(|| Error::invalid("cron", format!("`{cron_expr}` never fires again")))?;
    Ok(sqlx::query_as!(
        ScheduleRow,
        "INSERT INTO schedules (id, owner, name, cron, template, max_attempts, next_fire_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING *",
        Uuid::new_v4(),
        owner,
        name,
        cron_expr,
        template.to_value(),
        max_attempts,
        next
    )
    .fetch_one(pool)
    .await?)
}

pub async fn list(pool: &PgPool, owner: Uuid) -> Result<Vec<ScheduleRow>> {
    Ok(sqlx::query_as!(
        ScheduleRow,
        "SELECT * FROM schedules WHERE owner = $1 ORDER BY created_at DESC, id",
        owner
    )
    .fetch_all(pool)
    .await?)
}

pub async fn get(pool: &PgPool, owner: Uuid, id: Uuid) -> Result<Option<ScheduleRow>> {
    Ok(sqlx::query_as!(
        ScheduleRow,
        "SELECT * FROM schedules WHERE id = $1 AND owner = $2",
        id,
        owner
    )
    .fetch_optional(pool)
    .await?)
}

/// Pause or resume; resuming moves the next tick to the first one after now.
pub async fn set_paused(
    pool: &PgPool,
    owner: Uuid,
    id: Uuid,
    paused: bool,
) -> Result<Option<ScheduleRow>> {
    let Some(row) = get(pool, owner, id).await? else {
        return Ok(None);
    };
    let next = if paused {
        row.next_fire_at
    } else {
        let s = parse_cron(&row.cron)?;
        next_after(&s, Utc::now()).unwrap_or(row.next_fire_at)
    };
    Ok(sqlx::query_as!(
        ScheduleRow,
        "UPDATE schedules SET paused = $3, next_fire_at = $4 WHERE id = $1 AND owner = $2
         RETURNING *",
        id,
        owner,
        paused,
        next
    )
    .fetch_optional(pool)
    .await?)
}

pub async fn delete(pool: &PgPool, owner: Uuid, id: Uuid) -> Result<bool> {
    Ok(sqlx::query!(
        "DELETE FROM schedules WHERE id = $1 AND owner = $2",
        id,
        owner
    )
    .execute(pool)
    .await?
    .rows_affected()
        == 1)
}

/// The jobs a schedule made, with the tick each one is for.
pub async fn fires(pool: &PgPool, schedule_id: Uuid) -> Result<Vec<(DateTime<Utc>, Uuid)>> {
    Ok(sqlx::query!(
        "SELECT fire_at, job_id FROM schedule_fires WHERE schedule_id = $1 ORDER BY fire_at",
        schedule_id
    )
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|r| (r.fire_at, r.job_id))
    .collect())
}

/// Fire every due schedule once; returns the jobs created (the caller enqueues them).
pub async fn fire_due(pool: &PgPool) -> Result<Vec<JobRow>> {
    let mut tx = pool.begin().await?;
    let due = sqlx::query_as!(
        ScheduleRow,
        "SELECT * FROM schedules WHERE NOT paused AND next_fire_at <= now()
         ORDER BY next_fire_at LIMIT 50 FOR UPDATE SKIP LOCKED"
    )
    .fetch_all(&mut *tx)
    .await?;
    let mut jobs = vec![];
    for s in due {
        let spec = match JobSpec::from_value(s.template.clone()) {
            Ok(spec) => spec,
            Err(e) => {
                // Validated at creation; an engine upgrade may reject it: pause, don't spin.
                tracing::warn!(schedule = %s.id, "pausing schedule: its template no longer validates: {e}");
                sqlx::query!("UPDATE schedules SET paused = true WHERE id = $1", s.id)
                    .execute(&mut *tx)
                    .await?;
                continue;
            }
        };
        let job = insert_job(
            &mut tx,
            &NewJob {
                owner: s.owner,
                spec: &spec,
                max_attempts: s.max_attempts,
                idempotency_key: None,
                schedule_id: Some(s.id),
            },
        )
        .await?
        .job;
        sqlx::query!(
            "INSERT INTO schedule_fires (schedule_id, fire_at, job_id) VALUES ($1, $2, $3)",
            s.id,
            s.next_fire_at,
            job.id
        )
        .execute(&mut *tx)
        .await?;
        let sched = parse_cron(&s.cron)?;
        let now = Utc::now().max(s.next_fire_at);
        match next_after(&sched, now) {
            Some(next) => {
                sqlx::query!(
                    "UPDATE schedules SET next_fire_at = $2 WHERE id = $1",
                    s.id,
                    next
                )
                .execute(&mut *tx)
                .await?
            }
            None => {
                sqlx::query!("UPDATE schedules SET paused = true WHERE id = $1", s.id)
                    .execute(&mut *tx)
                    .await?
            }
        };
        jobs.push(job);
    }
    tx.commit().await?;
    Ok(jobs)
}

/// Queue of a job row.
pub fn queue_of(job: &JobRow) -> QueueName {
    job.queue()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn cron_accepts_5_and_6_fields_and_names_the_problem() {
        let s = parse_cron("*/15 * * * *").unwrap();
        let t = Utc.with_ymd_and_hms(2026, 1, 1, 10, 7, 30).unwrap();
        assert_eq!(
            next_after(&s, t),
            Some(Utc.with_ymd_and_hms(2026, 1, 1, 10, 15, 0).unwrap())
        );
        let s = parse_cron("*/2 * * * * *").unwrap();
        assert_eq!(
            next_after(&s, t),
            Some(Utc.with_ymd_and_hms(2026, 1, 1, 10, 7, 32).unwrap())
        );
        let e = parse_cron("every day").unwrap_err().to_string();
        assert!(e.starts_with("cron: `every day` has 2 fields"), "{e}");
        let e = parse_cron("61 * * * *").unwrap_err().to_string();
        assert!(e.contains("not a valid cron expression"), "{e}");
    }
}
