//! What `up` and `bench` share: the database (a private cluster or DATABASE_URL) and the
//! `api` and `worker` binaries.

use std::path::{Path, PathBuf};

use anyhow::Context;
use testkit::cluster::{Cluster, Durability};

/// A database to run against, and the private cluster serving it, if we started one.
pub struct Database {
    /// Connection URL of the `quayside` (or bench) database.
    pub url: String,
    /// The cluster we started; stopped by [`Database::stop`].
    pub cluster: Option<Cluster>,
}

impl Database {
    /// DATABASE_URL if set; otherwise a private cluster in `dir` with database `name`.
    pub async fn open(dir: &Path, name: &str, durability: Durability) -> anyhow::Result<Database> {
        if let Some(url) = std::env::var("DATABASE_URL").ok().filter(|u| !u.is_empty()) {
            return Ok(Database { url, cluster: None });
        }
        let cluster = Cluster::start(dir, durability).context("start the private PostgreSQL")?;
        let (client, conn) =
            tokio_postgres::connect(&cluster.url("postgres"), tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        let exists = client
            .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
            .await?
            .is_some();
        if !exists {
            client
                .batch_execute(&format!("CREATE DATABASE {name}"))
                .await?;
        }
        Ok(Database {
            url: cluster.url(name),
            cluster: Some(cluster),
        })
    }

    /// Stop the private cluster, if any.
    pub fn stop(&self) {
        if let Some(c) = &self.cluster
            && let Err(e) = c.stop()
        {
            eprintln!("ops: stopping PostgreSQL: {e}");
        }
    }
}

/// The path of the `api` or `worker` binary built in the same profile as `ops`, building it
/// first when run through cargo (so `cargo run -p ops -- up` needs no other step).
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("ops has no directory")?;
    if std::env::var_os("CARGO").is_some() {
        let release = dir.ends_with("release");
        let mut cmd = std::process::Command::new(std::env::var("CARGO")?);
        cmd.args(["build", "--quiet", "-p", "api", "-p", "worker"]);
        if release {
            cmd.arg("--release");
        }
        anyhow::ensure!(cmd.status()?.success(), "building api and worker failed");
    }
    let path = dir.join(name);
    anyhow::ensure!(
        path.is_file(),
        "{} not found: build it with cargo build -p {name}",
        path.display()
    );
    Ok(path)
}
