//! `api`: serve the HTTP API (`api`), apply migrations (`api migrate`), or print the OpenAPI
//! spec (`api openapi`).

use clap::{Parser, Subcommand};
use common::config::{ConfigError, DatabaseSettings, Env, parse_or};

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
    tracing_subscriber::fmt()
        .json()
        .with_writer(std::io::stderr)
        .init();
    let settings = match settings() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("api: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(cli.command, settings).await {
        eprintln!("api: {e:#}");
        std::process::exit(1);
    }
}

fn settings() -> Result<(DatabaseSettings, String, u16), ConfigError> {
    Ok((
        DatabaseSettings::from_source(&Env)?,
        parse_or(&Env, "API_HOST", "0.0.0.0".to_string())?,
        parse_or(&Env, "API_PORT", 8080u16)?,
    ))
}

async fn run(
    command: Option<Command>,
    (db, host, port): (DatabaseSettings, String, u16),
) -> anyhow::Result<()> {
    let pool = common::db::pool(&db)?;
    let applied = common::db::migrate(&pool).await?;
    tracing::info!(migrations_applied = applied, "migrated");
    if let Some(Command::Migrate) = command {
        return Ok(());
    }
    let listener = poem::listener::TcpListener::bind(format!("{host}:{port}"));
    tracing::info!(%host, port, "api listening");
    poem::Server::new(listener)
        .run_with_graceful_shutdown(
            api::app(pool),
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
