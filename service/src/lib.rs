//! What Attune's api and worker share: the job lifecycle, the Postgres store and the Redis
//! Streams queue. Postgres is the source of truth; Redis carries job ids from the api to the
//! workers and may lose them (a reconciler puts them back).
//!
//! SQL is checked at compile time by `sqlx::query!` against the committed `.sqlx/` folder
//! (`SQLX_OFFLINE=true`). After changing a query or a migration, regenerate it with
//! `scripts/sqlx-prepare.sh` (no sqlx-cli needed; `cargo sqlx prepare --workspace` from
//! sqlx-cli does the same).

pub mod blobs;
pub mod checkpoints;
pub mod db;
pub mod error;
pub mod lifecycle;
pub mod queue;
pub mod reconcile;
pub mod schedule;
pub mod store;

pub use error::{Error, Result};
pub use lifecycle::{JobStatus, QueueName};
