//! `api`: serve the HTTP API (`api`), apply migrations (`api migrate`), or print the OpenAPI
//! spec (`api openapi`).

use api::config::{EnvWithDotenv, Settings};
use clap::{Parser, Subcommand};
use common::config::ConfigError;

#[derive(Parser)]
#[command(name = "api", version, about = "Quayside HTTP API")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Apply pending migrations and exit.
    Migrate,
    /// Print the OpenAPI spec (what `openapi.json` holds).
    Openapi,
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    if let Some(Command::Openapi) = cli.command {
        print!("{}", api::spec_json());
        return;
    }
    let settings = match load_settings() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("api: {e}");
            std::process::exit(2);
        }
    };
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&settings.log_level)
                .expect("LOG_LEVEL was validated with the settings"),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = run(cli.command, settings).await {
        eprintln!("api: {e:#}");
        std::process::exit(1);
    }
}

fn load_settings() -> Result<Settings, ConfigError> {
    Settings::from_source(&EnvWithDotenv::load()?)
}

async fn run(command: Option<Command>, settings: Settings) -> anyhow::Result<()> {
    let pool = common::db::pool(&settings.database)?;
    let applied = common::db::migrate(&pool).await?;
    tracing::info!(migrations_applied = applied, "migrated");
    if let Some(Command::Migrate) = command {
        return Ok(());
    }
    let (host, port) = (settings.host.clone(), settings.port);
    let listener = poem::listener::TcpListener::bind(format!("{host}:{port}"));
    tracing::info!(%host, port, environment = %settings.environment, "api listening");
    poem::Server::new(listener)
        .run_with_graceful_shutdown(
            api::app(pool, &settings),
            shutdown_signal(),
            Some(std::time::Duration::from_secs(10)),
        )
        .await?;
    Ok(())
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
