//! Development infrastructure and the support every test shares: a private PostgreSQL
//! [`cluster`] from the system's binaries (for `ops` and the tests), a fresh, migrated
//! database per test on a throwaway cluster, and waiting on the database with a deadline.
//!
//! One cluster serves a whole test run, also when the runner uses one process per test
//! (nextest): the first process starts it under a file lock in the temp dir, keyed by
//! `NEXTEST_RUN_ID` (or the process id under `cargo test`), and the others find it there. A
//! detached watchdog stops and removes it when the run's process (nextest itself, or the test
//! binary) exits. Migrations run once, into a template database that every test clones. With
//! `DATABASE_URL` set, that server is used instead of a private cluster.

#![warn(missing_docs)]

pub mod cluster;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use tokio::sync::OnceCell;

use crate::cluster::{Cluster, Durability};
use engine::config::DatabaseSettings;
use engine::db;

const TEMPLATE: &str = "quayside_template";

/// A fresh database with every migration applied, for one test.
pub struct TestDb {
    /// Its connection URL.
    pub url: String,
    /// Its name.
    pub name: String,
    /// A pool on it.
    pub pool: Pool,
}

impl TestDb {
    /// Create a new database cloned from the migrated template.
    pub async fn new() -> TestDb {
        let server = server().await;
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "test_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let admin = connect(&server.admin_url).await;
        admin
            .batch_execute(&format!("CREATE DATABASE {name} TEMPLATE {TEMPLATE}"))
            .await
            .unwrap_or_else(|e| panic!("create test database {name}: {e}"));
        let url = with_database(&server.admin_url, &name);
        let pool = db::pool(&DatabaseSettings::for_url(&url)).expect("test pool");
        TestDb { url, name, pool }
    }

    /// A pooled connection.
    pub async fn conn(&self) -> deadpool_postgres::Client {
        self.pool.get().await.expect("test database connection")
    }

    /// Run `sql` and return the first column of its single row.
    pub async fn scalar<T>(&self, sql: &str) -> T
    where
        T: for<'a> tokio_postgres::types::FromSql<'a>,
    {
        self.conn()
            .await
            .query_one(sql, &[])
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .get(0)
    }
}

/// Poll `check` every 20 ms until it returns `Some`, or panic with `what` after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A private cluster of a test's own, for tests that stop or restart the server. It is
/// stopped when dropped.
pub struct PrivateCluster {
    /// The cluster.
    pub cluster: Cluster,
    _dir: TempDir,
}

impl PrivateCluster {
    /// Start one with durability off and a migrated `quayside` database; returns it and the
    /// database's URL.
    pub async fn start() -> (PrivateCluster, String) {
        let dir = TempDir::new("quayside-private-pg");
        let cluster = Cluster::start(&dir.0, Durability::Off).unwrap_or_else(|e| panic!("{e}"));
        let admin = connect(&cluster.url("postgres")).await;
        admin
            .batch_execute("CREATE DATABASE quayside")
            .await
            .expect("create database");
        let url = cluster.url("quayside");
        let pool = db::pool(&DatabaseSettings::for_url(&url)).expect("pool");
        db::migrate(&pool).await.expect("migrate");
        (PrivateCluster { cluster, _dir: dir }, url)
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        let _ = self.cluster.stop();
    }
}

/// A temporary directory removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// A new empty directory under the system temp dir, named after `prefix`.
    pub fn new(prefix: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "{prefix}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Server {
    admin_url: String,
}

async fn server() -> &'static Server {
    static SERVER: OnceCell<Server> = OnceCell::const_new();
    SERVER
        .get_or_init(|| async {
            match std::env::var("DATABASE_URL").ok().filter(|u| !u.is_empty()) {
                Some(url) => {
                    prepare_template(&url).await;
                    Server { admin_url: url }
                }
                None => {
                    let admin_url = tokio::task::spawn_blocking(shared_cluster)
                        .await
                        .expect("start cluster");
                    Server { admin_url }
                }
            }
        })
        .await
}

/// Find or start the run's shared cluster; returns its admin URL.
fn shared_cluster() -> String {
    let (key, watch_pid) = match std::env::var("NEXTEST_RUN_ID") {
        Ok(run) => (format!("run-{run}"), std::os::unix::process::parent_id()),
        Err(_) => (format!("pid-{}", std::process::id()), std::process::id()),
    };
    let root = std::env::temp_dir().join("quayside-test-pg");
    std::fs::create_dir_all(&root).expect("create test cluster root");
    let lock = std::fs::File::create(root.join(format!("{key}.lock"))).expect("create lock file");
    lock.lock().expect("lock the test cluster");
    let dir = root.join(&key);
    let url_file = root.join(format!("{key}.url"));
    if let Ok(url) = std::fs::read_to_string(&url_file) {
        return url;
    }
    let cluster = Cluster::start(&dir, Durability::Off).unwrap_or_else(|e| panic!("{e}"));
    let admin_url = cluster.url("postgres");
    // The watchdog outlives this process and stops the cluster once the run is over.
    let bin = crate::cluster::find_bindir().expect("found when starting");
    let pg_ctl = bin.join("pg_ctl");
    let stop = if Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0"))
    {
        format!(
            "runuser -u postgres -- {} stop -m immediate -D {}/data",
            pg_ctl.display(),
            dir.display()
        )
    } else {
        format!(
            "{} stop -m immediate -D {}/data",
            pg_ctl.display(),
            dir.display()
        )
    };
    let script = format!(
        "while kill -0 {watch_pid} 2>/dev/null; do sleep 1; done; {stop} >/dev/null 2>&1; rm -rf {dir} {url} {lock}",
        dir = dir.display(),
        url = url_file.display(),
        lock = root.join(format!("{key}.lock")).display(),
    );
    // Deliberately never waited for: the watchdog must outlive this process.
    #[allow(clippy::zombie_processes)]
    Command::new("setsid")
        .args(["sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the test cluster watchdog");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(prepare_template(&admin_url));
    let mut f = std::fs::File::create(&url_file).expect("write cluster url");
    f.write_all(admin_url.as_bytes())
        .expect("write cluster url");
    admin_url
}

/// Create and migrate the template database if it is missing.
async fn prepare_template(admin_url: &str) {
    let admin = connect(admin_url).await;
    // Several processes may share one external server: serialise on an advisory lock.
    admin
        .execute("SELECT pg_advisory_lock(7215)", &[])
        .await
        .expect("lock");
    let exists = admin
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&TEMPLATE])
        .await
        .expect("look for template")
        .is_some();
    if !exists {
        admin
            .batch_execute(&format!("CREATE DATABASE {TEMPLATE}"))
            .await
            .expect("create template");
    }
    {
        let pool = db::pool(&DatabaseSettings::for_url(with_database(
            admin_url, TEMPLATE,
        )))
        .expect("pool");
        db::migrate(&pool)
            .await
            .expect("migrate the template database");
        pool.close();
    }
    admin
        .execute("SELECT pg_advisory_unlock(7215)", &[])
        .await
        .expect("unlock");
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect to the test server: {e}"));
    tokio::spawn(conn);
    client
}

fn with_database(url: &str, database: &str) -> String {
    let mut config: tokio_postgres::Config = url.parse().expect("valid url");
    config.dbname(database);
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        _ => "127.0.0.1".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let user = config.get_user().unwrap_or("postgres");
    match config.get_password() {
        Some(pw) => format!(
            "postgres://{user}:{}@{host}:{port}/{database}",
            String::from_utf8_lossy(pw)
        ),
        None => format!("postgres://{user}@{host}:{port}/{database}"),
    }
}
