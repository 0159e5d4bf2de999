//! `worker`: serve job queues until SIGTERM or Ctrl-C.
//!
//! `worker --queues email,uploads --concurrency 16` (or WORKER_QUEUES, WORKER_CONCURRENCY);
//! `worker migrate` applies migrations and exits.

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use worker::config::WorkerSettings;

#[derive(Parser)]
#[command(
    name = "worker",
    version,
    about = "Quayside worker: runs jobs from the PostgreSQL queue"
)]
struct Cli {
    /// Queues to serve, comma-separated, each optionally with its slots (`email,uploads:4`).
    #[arg(long)]
    queues: Option<String>,
    /// Job slots per queue.
    #[arg(long)]
    concurrency: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Apply pending migrations and exit.
    Migrate,
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    init_logs();
    let settings =
        match WorkerSettings::from_source(&engine::config::Env, cli.queues, cli.concurrency) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("worker: {e}");
                std::process::exit(2);
            }
        };
    let result = match cli.command {
        Some(Command::Migrate) => migrate(&settings).await,
        None => serve(settings).await,
    };
    if let Err(e) = result {
        eprintln!("worker: {e:#}");
        std::process::exit(1);
    }
}

async fn migrate(settings: &WorkerSettings) -> anyhow::Result<()> {
    let pool = engine::db::pool(&settings.runtime.database)?;
    let n = engine::db::migrate(&pool).await?;
    tracing::info!(migrations_applied = n, "migrated");
    Ok(())
}

async fn serve(settings: WorkerSettings) -> anyhow::Result<()> {
    if let Some(port) = settings.metrics_port {
        worker::runtime::metrics::install(port)
            .map_err(|e| anyhow::anyhow!("cannot serve metrics on METRICS_PORT={port}: {e}"))?;
    }
    let stop = CancellationToken::new();
    let signal_stop = stop.clone();
    tokio::spawn(async move {
        engine::signal::shutdown().await;
        signal_stop.cancel();
    });
    worker::run(settings, stop).await
}

fn init_logs() {
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::prelude::*;
    let filter = EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .json()
                .with_current_span(false)
                .with_writer(std::io::stderr),
        )
        .init();
}
