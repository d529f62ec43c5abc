//! What the api returns (and documents in its OpenAPI schema).

use attune_engine::jobs::JobKind;
use attune_service::schedule::ScheduleRow;
use attune_service::store::{CheckpointRow, JobRow, LogRow, MetricPoint, RunRow};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use utoipa::openapi::schema::{AllOfBuilder, ObjectBuilder, Schema, Type};
use utoipa::openapi::RefOr;
use utoipa::{PartialSchema, ToSchema};
use uuid::Uuid;

/// The engine's job spec: the common fields (`name`, `tags`, `seed`, `device`) and, by `kind`,
/// that kind's own fields, all in one flat object. Same document as `attune run` reads.
pub struct JobSpecDoc;

impl PartialSchema for JobSpecDoc {
    fn schema() -> RefOr<Schema> {
        let common = ObjectBuilder::new()
            .property(
                "name",
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .description(Some("Human-readable name (optional).")),
            )
            .property(
                "tags",
                utoipa::openapi::schema::ArrayBuilder::new()
                    .items(ObjectBuilder::new().schema_type(Type::String))
                    .description(Some("Free-form tags for filtering.")),
            )
            .property(
                "seed",
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .minimum(Some(0))
                    .description(Some("Seed for every random choice of the job (default 0).")),
            )
            .property(
                "device",
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .description(Some(
                        "`cpu` (default) or `cuda:N`; `cuda:N` jobs go to the gpu queue.",
                    )),
            );
        AllOfBuilder::new()
            .item(common)
            .item(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
                "JobKind",
            )))
            .description(Some(
                "A job spec: common fields plus one kind's fields (see JobKind), flat.",
            ))
            .into()
    }
}

impl ToSchema for JobSpecDoc {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("JobSpec")
    }
    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        schemas.push(("JobKind".into(), JobKind::schema()));
        <JobKind as ToSchema>::schemas(schemas);
    }
}

/// A job as the api shows it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct JobView {
    pub id: Uuid,
    pub kind: String,
    /// `queued`, `running`, `succeeded`, `failed` or `cancelled`.
    pub status: String,
    /// `cpu` or `gpu`.
    pub queue: String,
    pub name: Option<String>,
    pub tags: Vec<String>,
    /// The spec with the engine's defaults filled in.
    #[schema(value_type = JobSpecDoc)]
    pub spec: serde_json::Value,
    /// Attempts made since the job was submitted or last retried.
    pub attempts: i32,
    pub max_attempts: i32,
    pub cancel_requested: bool,
    /// The last attempt's error (failed jobs: why; queued jobs: why the last attempt failed).
    pub error: Option<String>,
    /// `{phase, done, total, phases_done}` of the current attempt.
    #[schema(value_type = Option<Object>)]
    pub progress: Option<serde_json::Value>,
    /// Why a queued job is not running yet (no live worker on its queue, retry backoff).
    pub waiting: Option<String>,
    /// The engine's result (succeeded jobs; left out of lists).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub result: Option<serde_json::Value>,
    /// The one number a table shows for the result (also in lists); absent until it succeeds.
    pub headline: Option<Headline>,
    /// The run (attempt) currently or last holding the job.
    pub current_run: Option<Uuid>,
    pub schedule_id: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl JobView {
    pub fn of(j: JobRow, with_result: bool, waiting: Option<String>) -> Self {
        Self {
            id: j.id,
            kind: j.kind,
            status: j.status,
            queue: j.queue,
            name: j.name,
            tags: j.tags,
            spec: j.spec,
            attempts: j.attempts,
            max_attempts: j.max_attempts,
            cancel_requested: j.cancel_requested,
            error: j.error,
            progress: j.progress,
            waiting,
            headline: j.result.as_ref().and_then(Headline::of),
            result: if with_result { j.result } else { None },
            current_run: j.current_run,
            schedule_id: j.schedule_id,
            created_at: j.created_at,
            started_at: j.started_at,
            finished_at: j.finished_at,
        }
    }
}

/// A job's headline metric: the lowest mean error over the domains among an adapt job's
/// methods (`series` names the method), the clean test error of a train job, the lowest mean
/// error over the corrupted domains among an evaluate job's checkpoints (`series`
/// `checkpoint-K` when there are several), pass@1 of a sample job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Headline {
    /// What `value` is: `mean error`, `test error`, `pass@1`.
    pub metric: String,
    pub value: f64,
    pub series: Option<String>,
}

impl Headline {
    /// From a result as the engine writes it; `None` for kinds or shapes it does not know.
    pub fn of(r: &serde_json::Value) -> Option<Self> {
        let best = |it: &mut dyn Iterator<Item = (String, f64)>| {
            it.filter(|(_, v)| v.is_finite())
                .min_by(|a, b| a.1.total_cmp(&b.1))
        };
        match r.get("kind")?.as_str()? {
            "adapt" => {
                let ms = r.get("methods")?.as_array()?;
                let (name, v) = best(&mut ms.iter().filter_map(|m| {
                    Some((
                        m.get("name")?.as_str()?.to_string(),
                        m.get("mean")?.get("error")?.as_f64()?,
                    ))
                }))?;
                Some(Headline {
                    metric: "mean error".into(),
                    value: v,
                    series: (ms.len() > 1).then_some(name),
                })
            }
            "train" => Some(Headline {
                metric: "test error".into(),
                value: r.get("test")?.get("error")?.as_f64()?,
                series: None,
            }),
            "evaluate" => {
                let cs = r.get("checkpoints")?.as_array()?;
                let (name, v) = best(&mut cs.iter().enumerate().filter_map(|(k, c)| {
                    let rows = c.get("rows")?.as_array()?;
                    let errs = |corrupted: bool| -> Vec<f64> {
                        rows.iter()
                            .filter(|x| {
                                (x.get("severity").and_then(|s| s.as_u64()).unwrap_or(0) > 0)
                                    == corrupted
                            })
                            .filter_map(|x| x.get("metrics")?.get("error")?.as_f64())
                            .collect()
                    };
                    let mut e = errs(true);
                    if e.is_empty() {
                        e = errs(false);
                    }
                    (!e.is_empty()).then(|| {
                        (
                            format!("checkpoint-{k}"),
                            e.iter().sum::<f64>() / e.len() as f64,
                        )
                    })
                }))?;
                Some(Headline {
                    metric: "mean error".into(),
                    value: v,
                    series: (cs.len() > 1).then_some(name),
                })
            }
            "sample" => {
                let p1 = r
                    .get("pass_at_k")?
                    .as_array()?
                    .iter()
                    .find(|p| p.get("k").and_then(|k| k.as_u64()) == Some(1))?;
                Some(Headline {
                    metric: "pass@1".into(),
                    value: p1.get("value")?.as_f64()?,
                    series: None,
                })
            }
            _ => None,
        }
    }
}

/// Values a job filter can take, with how many of the key's jobs have each.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct FacetView {
    pub value: String,
    pub count: i64,
}

/// What the jobs list can be filtered by.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct JobFacets {
    pub statuses: Vec<FacetView>,
    pub kinds: Vec<FacetView>,
    /// The 200 most used tags, most used first.
    pub tags: Vec<FacetView>,
}

impl From<attune_service::store::Facets> for JobFacets {
    fn from(f: attune_service::store::Facets) -> Self {
        let v = |xs: Vec<attune_service::store::FacetCount>| {
            xs.into_iter()
                .map(|x| FacetView {
                    value: x.value,
                    count: x.count,
                })
                .collect()
        };
        Self {
            statuses: v(f.statuses),
            kinds: v(f.kinds),
            tags: v(f.tags),
        }
    }
}

/// A spec the engine accepted, as it would be stored.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ValidatedSpec {
    pub kind: String,
    /// The queue it would go to (`cpu`, or `gpu` for `device = "cuda:N"`).
    pub queue: String,
    /// The spec with the engine's defaults filled in.
    #[schema(value_type = JobSpecDoc)]
    pub spec: serde_json::Value,
}

/// A job spec from the repository's `examples/` folder, runnable as it is.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ExampleView {
    /// Path under `examples/` without the extension (`fmnist-c-tent`, `methods/mnist-c-continual`).
    pub name: String,
    /// The file it comes from (`examples/fmnist-c-tent.toml`).
    pub file: String,
    /// The file's leading comment.
    pub description: String,
    /// The spec as JSON (what `POST /v1/jobs` takes).
    #[schema(value_type = JobSpecDoc)]
    pub spec: serde_json::Value,
}

/// The next times a cron expression fires.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CronPreview {
    pub cron: String,
    /// UTC, ascending.
    pub next: Vec<DateTime<Utc>>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct JobList {
    pub jobs: Vec<JobView>,
    /// Pass as `cursor` for the next (older) page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// One attempt of a job.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RunView {
    pub id: Uuid,
    pub job_id: Uuid,
    pub attempt: i32,
    pub worker_id: String,
    /// `running`, `succeeded`, `failed`, `cancelled`, `lost` (its worker died; results
    /// discarded) or `released` (its worker shut down and handed the job back).
    pub status: String,
    pub error: Option<String>,
    pub started_at: DateTime<Utc>,
    pub heartbeat_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Metric values stored for this run.
    pub metric_count: i64,
}

impl RunView {
    pub fn of(r: RunRow, metric_count: i64) -> Self {
        Self {
            id: r.id,
            job_id: r.job_id,
            attempt: r.attempt,
            worker_id: r.worker_id,
            status: r.status,
            error: r.error,
            started_at: r.started_at,
            heartbeat_at: r.heartbeat_at,
            finished_at: r.finished_at,
            metric_count,
        }
    }
}

/// One metric value: `series` (e.g. a method, `train`), `name` (`error`, `val_nll`, ...), step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MetricPointView {
    pub series: String,
    pub name: String,
    pub step: i64,
    pub value: f64,
}

impl From<MetricPoint> for MetricPointView {
    fn from(m: MetricPoint) -> Self {
        Self {
            series: m.series,
            name: m.name,
            step: m.step,
            value: m.value,
        }
    }
}

/// A page of one run's metric history, ordered by (series, name, step).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct MetricPage {
    pub run_id: Uuid,
    pub points: Vec<MetricPointView>,
    pub next_cursor: Option<String>,
}

/// Metrics of several runs in one request.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchMetricsRequest {
    /// Run ids (at most 100).
    pub runs: Vec<Uuid>,
    pub series: Option<String>,
    /// Metric name (`error`, `val_error`, ...).
    pub name: Option<String>,
    pub step_from: Option<i64>,
    pub step_to: Option<i64>,
    /// Values per run (default 1000, at most 10000).
    pub limit: Option<i64>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BatchMetricsResponse {
    pub runs: Vec<MetricPage>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LogView {
    pub id: i64,
    pub attempt: i32,
    pub at: DateTime<Utc>,
    /// `info` or `warn`.
    pub level: String,
    pub message: String,
}

impl From<LogRow> for LogView {
    fn from(l: LogRow) -> Self {
        Self {
            id: l.id,
            attempt: l.attempt,
            at: l.at,
            level: l.level,
            message: l.message,
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LogPage {
    pub lines: Vec<LogView>,
    /// Pass as `after` to get the lines that follow.
    pub next_after: i64,
}

/// A checkpoint a run wrote.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CheckpointView {
    pub id: Uuid,
    /// The job and run that made it.
    pub job_id: Uuid,
    pub run_id: Uuid,
    /// File name in the job's output folder.
    pub name: String,
    pub sha256: String,
    pub size_bytes: i64,
    /// The sidecar: architecture, input normalization, training data and spec.
    #[schema(value_type = Option<Object>)]
    pub info: Option<serde_json::Value>,
    pub created_at: DateTime<Utc>,
    /// `/v1/checkpoints/{id}/download`
    pub download: String,
    /// Jobs (of this key) that read a checkpoint with these bytes.
    #[serde(default)]
    pub used_by: Vec<Uuid>,
}

impl CheckpointView {
    pub fn of(c: CheckpointRow, used_by: Vec<Uuid>) -> Self {
        Self {
            download: format!("/v1/checkpoints/{}/download", c.id),
            id: c.id,
            job_id: c.job_id,
            run_id: c.run_id,
            name: c.name,
            sha256: c.sha256,
            size_bytes: c.size_bytes,
            info: c.info,
            created_at: c.created_at,
            used_by,
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSchedule {
    pub name: Option<String>,
    /// `min hour day month weekday` (5 fields), or with seconds first (6 fields). UTC.
    pub cron: String,
    /// The job spec each tick submits.
    #[schema(value_type = JobSpecDoc)]
    pub template: serde_json::Value,
    /// Attempts per job (default 3).
    pub max_attempts: Option<i32>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ScheduleView {
    pub id: Uuid,
    pub name: Option<String>,
    pub cron: String,
    #[schema(value_type = JobSpecDoc)]
    pub template: serde_json::Value,
    pub max_attempts: i32,
    pub paused: bool,
    pub next_fire_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    /// The latest ticks and the job each created (newest last; get one schedule to see them).
    #[serde(default)]
    pub fires: Vec<ScheduleFire>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ScheduleFire {
    pub fire_at: DateTime<Utc>,
    pub job_id: Uuid,
}

impl ScheduleView {
    pub fn of(s: ScheduleRow, fires: Vec<ScheduleFire>) -> Self {
        Self {
            id: s.id,
            name: s.name,
            cron: s.cron,
            template: s.template,
            max_attempts: s.max_attempts,
            paused: s.paused,
            next_fire_at: s.next_fire_at,
            created_at: s.created_at,
            fires,
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Health {
    pub status: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Ready {
    /// `ok` when every check passed.
    pub status: String,
    /// `ok` or the error.
    pub postgres: String,
    pub redis: String,
}

#[cfg(test)]
mod tests {
    use super::Headline;
    use serde_json::json;

    #[test]
    fn headline_of_an_adapt_result_is_the_best_methods_mean_error() {
        let r = json!({"kind": "adapt", "methods": [
            {"name": "source", "mean": {"error": 0.325}},
            {"name": "norm_test", "mean": {"error": 0.159}},
            {"name": "tent", "mean": {"error": 0.243}},
        ]});
        assert_eq!(
            Headline::of(&r),
            Some(Headline {
                metric: "mean error".into(),
                value: 0.159,
                series: Some("norm_test".into())
            })
        );
        let one = json!({"kind": "adapt", "methods": [{"name": "tent", "mean": {"error": 0.5}}]});
        assert_eq!(Headline::of(&one).unwrap().series, None);
    }

    #[test]
    fn headline_of_train_and_evaluate_results() {
        let t = json!({"kind": "train", "test": {"error": 0.0713}});
        assert_eq!(Headline::of(&t).unwrap().value, 0.0713);
        assert_eq!(Headline::of(&t).unwrap().metric, "test error");
        // Checkpoint 0: corrupted rows 0.2 and 0.4 → 0.3; checkpoint 1: 0.1 and 0.3 → 0.2.
        // The clean row (severity 0) is left out of the mean.
        let e = json!({"kind": "evaluate", "checkpoints": [
            {"rows": [{"severity": 0, "metrics": {"error": 0.01}},
                      {"severity": 1, "metrics": {"error": 0.2}},
                      {"severity": 5, "metrics": {"error": 0.4}}]},
            {"rows": [{"severity": 0, "metrics": {"error": 0.02}},
                      {"severity": 1, "metrics": {"error": 0.1}},
                      {"severity": 5, "metrics": {"error": 0.3}}]},
        ]});
        let h = Headline::of(&e).unwrap();
        assert!((h.value - 0.2).abs() < 1e-15, "{}", h.value);
        assert_eq!(h.series.as_deref(), Some("checkpoint-1"));
        // Only clean rows: their mean.
        let clean = json!({"kind": "evaluate", "checkpoints": [
            {"rows": [{"severity": 0, "metrics": {"error": 0.25}}]}]});
        assert_eq!(Headline::of(&clean).unwrap().value, 0.25);
        assert_eq!(Headline::of(&clean).unwrap().series, None);
    }

    #[test]
    fn headline_of_a_sample_result_is_pass_at_1() {
        // The result format of docs/sample.md.
        let r = json!({"kind": "sample", "n": 4, "pass_at_k": [
            {"k": 1, "value": 0.3125}, {"k": 2, "value": 0.5}, {"k": 4, "value": 0.75}]});
        assert_eq!(
            Headline::of(&r),
            Some(Headline {
                metric: "pass@1".into(),
                value: 0.3125,
                series: None
            })
        );
    }

    #[test]
    fn no_headline_for_unknown_shapes() {
        assert_eq!(Headline::of(&json!({"kind": "diffuse"})), None);
        assert_eq!(Headline::of(&json!({"kind": "adapt", "methods": []})), None);
        assert_eq!(Headline::of(&json!([1, 2])), None);
    }
}
