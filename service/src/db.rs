//! Connecting to Postgres and applying the migrations in `migrations/`.

use crate::Result;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use std::str::FromStr;
use std::time::Duration;

/// The migrations, embedded at compile time.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// A pool on `url` (e.g. `postgres://postgres@127.0.0.1:5432/attune`).
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool> {
    let opts = PgConnectOptions::from_str(url)?;
    Ok(PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(opts)
        .await?)
}

/// Apply every migration not applied yet (safe to run from several processes at once: sqlx
/// takes an advisory lock).
pub async fn migrate(pool: &PgPool) -> Result<()> {
    MIGRATOR.run(pool).await?;
    Ok(())
}

/// Create the database named in `url` if it does not exist (connecting to `postgres` first).
pub async fn create_database_if_missing(url: &str) -> Result<()> {
    let opts = PgConnectOptions::from_str(url)?;
    let Some(name) = opts.get_database().map(str::to_string) else {
        return Ok(());
    };
    let admin = opts.database("postgres");
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(admin)
        .await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&pool)
            .await?;
    if !exists {
        // Identifiers cannot be bound; quote it.
        let q = format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\""));
        if let Err(e) = sqlx::query(&q).execute(&pool).await {
            // Another process may have created it in between.
            let dup = e
                .as_database_error()
                .and_then(|d| d.code())
                .is_some_and(|c| c == "42P04");
            if !dup {
                return Err(e.into());
            }
        }
    }
    pool.close().await;
    Ok(())
}
