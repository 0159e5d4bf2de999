//! `ops up`: the platform on an embedded default.

use std::process::Stdio;
use std::time::Duration;

use testkit::cluster::Durability;
use tokio::process::{Child, Command};

use crate::stack::{Database, binary};

/// Run until Ctrl-C or SIGTERM, then stop the worker, the API and PostgreSQL, in that order.
pub async fn run(api_port: u16, metrics_port: u16) -> anyhow::Result<()> {
    let (api_bin, worker_bin) = (binary("api")?, binary("worker")?);
    let db = Database::open(
        std::path::Path::new(".data/pg"),
        "quayside",
        Durability::Full,
    )
    .await?;
    let result = serve(&db, &api_bin, &worker_bin, api_port, metrics_port).await;
    db.stop();
    result
}

async fn serve(
    db: &Database,
    api_bin: &std::path::Path,
    worker_bin: &std::path::Path,
    api_port: u16,
    metrics_port: u16,
) -> anyhow::Result<()> {
    // Migrate once here, so the API and the worker start on a ready schema.
    let pool = engine::db::pool(&engine::config::DatabaseSettings::for_url(&db.url))?;
    let applied = engine::db::migrate(&pool).await?;
    pool.close();

    let mut api = spawn(
        Command::new(api_bin)
            .env("DATABASE_URL", &db.url)
            .env("API_PORT", api_port.to_string()),
    )?;
    let mut worker = spawn(
        Command::new(worker_bin)
            .env("DATABASE_URL", &db.url)
            .env("METRICS_PORT", metrics_port.to_string())
            .env(
                "WORKER_QUEUES",
                std::env::var("WORKER_QUEUES").unwrap_or_else(|_| "default,email,uploads".into()),
            ),
    )?;
    let where_db = match &db.cluster {
        Some(c) => format!(
            "embedded PostgreSQL on 127.0.0.1:{} (data in .data/pg)",
            c.port()
        ),
        None => "PostgreSQL from DATABASE_URL".to_string(),
    };
    eprintln!("quayside is up ({applied} migrations applied now)");
    eprintln!("  database: {where_db}");
    eprintln!("  api:      http://127.0.0.1:{api_port}  (health: /health, docs: /docs)");
    eprintln!("  worker:   metrics on http://127.0.0.1:{metrics_port}/metrics");
    eprintln!("press Ctrl-C to stop");

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let exited = tokio::select! {
        _ = tokio::signal::ctrl_c() => None,
        _ = term.recv() => None,
        s = api.wait() => Some(format!("api exited: {}", s?)),
        s = worker.wait() => Some(format!("worker exited: {}", s?)),
    };
    eprintln!("stopping...");
    stop(&mut worker, Duration::from_secs(35)).await;
    stop(&mut api, Duration::from_secs(15)).await;
    match exited {
        Some(why) => anyhow::bail!(why),
        None => Ok(()),
    }
}

fn spawn(cmd: &mut Command) -> anyhow::Result<Child> {
    Ok(cmd.stdin(Stdio::null()).kill_on_drop(true).spawn()?)
}

/// SIGTERM, then SIGKILL after `grace`.
async fn stop(child: &mut Child, grace: Duration) {
    if let Some(pid) = child.id() {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
    }
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        let _ = child.kill().await;
    }
}
