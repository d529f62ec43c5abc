//! Job states, queues, attempts and retry backoff.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// `queued → running → succeeded | failed | cancelled`; a failed attempt with attempts left goes
/// back to `queued` (after a backoff), and `retry` re-queues a failed or cancelled job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobStatus {
    pub const ALL: [JobStatus; 5] = [
        JobStatus::Queued,
        JobStatus::Running,
        JobStatus::Succeeded,
        JobStatus::Failed,
        JobStatus::Cancelled,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|x| x.as_str() == s)
    }
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobStatus::Succeeded | JobStatus::Failed | JobStatus::Cancelled
        )
    }
}

impl std::fmt::Display for JobStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The stream a job travels on: CPU workers serve `cpu`, workers built with `cuda` serve `gpu`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueName {
    Cpu,
    Gpu,
}

impl QueueName {
    pub const ALL: [QueueName; 2] = [QueueName::Cpu, QueueName::Gpu];
    pub fn as_str(self) -> &'static str {
        match self {
            QueueName::Cpu => "cpu",
            QueueName::Gpu => "gpu",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|x| x.as_str() == s)
    }
    /// The queue of a job running on `device` (`cpu` or `cuda:N`).
    pub fn for_device(device: &str) -> Self {
        if device.starts_with("cuda") {
            QueueName::Gpu
        } else {
            QueueName::Cpu
        }
    }
}

impl std::fmt::Display for QueueName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Delay before attempt `attempt + 1` after attempt `attempt` (1-based) failed:
/// `base · 2^(attempt−1)`, at most `max`.
pub fn backoff(attempt: i32, base: Duration, max: Duration) -> Duration {
    let exp = attempt.clamp(1, 20) as u32 - 1;
    base.saturating_mul(1u32 << exp).min(max)
}

/// Default attempts per job (the first run plus two retries).
pub const DEFAULT_MAX_ATTEMPTS: i32 = 3;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let b = Duration::from_secs(2);
        let m = Duration::from_secs(60);
        assert_eq!(backoff(1, b, m), Duration::from_secs(2));
        assert_eq!(backoff(2, b, m), Duration::from_secs(4));
        assert_eq!(backoff(4, b, m), Duration::from_secs(16));
        assert_eq!(backoff(10, b, m), m);
    }

    #[test]
    fn device_picks_the_queue() {
        assert_eq!(QueueName::for_device("cpu"), QueueName::Cpu);
        assert_eq!(QueueName::for_device("cuda:1"), QueueName::Gpu);
        assert_eq!(JobStatus::parse("running"), Some(JobStatus::Running));
        assert_eq!(JobStatus::parse("done"), None);
    }
}
