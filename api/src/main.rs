//! `attune-api`: serve the HTTP API (`serve`, the default), print the OpenAPI document
//! (`openapi`), or apply the migrations and exit (`migrate`).

use attune_api::ApiConfig;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(name = "attune-api", version, about = "Attune's HTTP API")]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    #[command(flatten)]
    args: Args,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve (the default).
    Serve,
    /// Print the OpenAPI document (what openapi/openapi.json holds).
    Openapi,
    /// Create the database if needed, apply the migrations and exit.
    Migrate,
}

#[derive(clap::Args)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "ATTUNE_LISTEN", default_value = "127.0.0.1:8080")]
    listen: String,
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/attune"
    )]
    database_url: String,
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    #[arg(long, env = "ATTUNE_REDIS_PREFIX", default_value = "attune:")]
    redis_prefix: String,
    /// Object-store directory for checkpoint bytes (shared with the workers).
    #[arg(long, env = "ATTUNE_OBJECT_STORE", default_value = "var/objects")]
    object_store: PathBuf,
    /// Largest request body in bytes.
    #[arg(long, env = "ATTUNE_MAX_BODY_BYTES", default_value_t = 1 << 20)]
    max_body_bytes: usize,
    /// Seconds without a run heartbeat after which a running job Redis lost is re-enqueued
    /// (match the workers' ATTUNE_LEASE_SECS).
    #[arg(long, env = "ATTUNE_LEASE_SECS", default_value_t = 30.0)]
    lease_secs: f64,
    /// The built web dashboard (`npm run build` in frontend/), served at `/`.
    #[arg(long, env = "ATTUNE_DASHBOARD_DIR", default_value = "frontend/dist")]
    dashboard_dir: PathBuf,
    /// Reconciler period in seconds.
    #[arg(long, env = "ATTUNE_RECONCILE_SECS", default_value_t = 2.0)]
    reconcile_secs: f64,
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,sqlx=warn".into()),
        )
        .init();
    let cli = Cli::parse();
    let a = cli.args;
    let r = match cli.command.unwrap_or(Cmd::Serve) {
        Cmd::Openapi => {
            print!("{}", attune_api::openapi::json());
            Ok(())
        }
        Cmd::Migrate => migrate(&a.database_url).await,
        Cmd::Serve => serve(a).await,
    };
    if let Err(e) = r {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

async fn migrate(url: &str) -> anyhow::Result<()> {
    attune_service::db::create_database_if_missing(url).await?;
    let pool = attune_service::db::connect(url, 2).await?;
    attune_service::db::migrate(&pool).await?;
    println!("migrations applied");
    Ok(())
}

async fn serve(a: Args) -> anyhow::Result<()> {
    attune_service::db::create_database_if_missing(&a.database_url).await?;
    let mut cfg = ApiConfig::new(&a.database_url, &a.redis_url, &a.redis_prefix);
    cfg.object_store = a.object_store;
    cfg.max_body_bytes = a.max_body_bytes;
    cfg.dashboard_dir = a.dashboard_dir;
    cfg.lease = Duration::from_secs_f64(a.lease_secs.max(1.0));
    cfg.reconcile_every = Duration::from_secs_f64(a.reconcile_secs.max(0.1));
    let listener = tokio::net::TcpListener::bind(&a.listen).await?;
    let shutdown = CancellationToken::new();
    let s = shutdown.clone();
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        s.cancel();
    });
    attune_api::serve(cfg, listener, shutdown).await
}
