//! The databases of the tests: a fresh, migrated database per test ([`TestDb`]) on the run's
//! shared throwaway cluster, a private cluster for tests that stop or restart the server
//! ([`PrivateCluster`]), and plain connections and pools for tests that need their own.
//!
//! One cluster serves a whole test run, also when the runner uses one process per test
//! (nextest): the first process starts it under a file lock in the temp dir, keyed by
//! `NEXTEST_RUN_ID` (or the process id under `cargo test`), and the others find it there. A
//! detached watchdog stops and removes it when the run's process (nextest itself, or the test
//! binary) exits. Migrations run once, into a template database that every test clones. With
//! `DATABASE_URL` set, that server is used instead of a private cluster.

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use deadpool_postgres::Pool;
use tokio::sync::OnceCell;

use crate::TempDir;
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
        let url = url_of_database(&server.admin_url, &name);
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

    /// Make every insert (and update) into `table` fail with an error naming it, as a full
    /// disk or a broken trigger would: for tests that a failed write leaves nothing behind.
    /// `table` is the test's own constant; identifiers cannot be bound.
    pub async fn refuse_writes(&self, table: &'static str) {
        self.conn()
            .await
            .batch_execute(&format!(
                "CREATE FUNCTION refuse_{table}() RETURNS trigger LANGUAGE plpgsql AS
                   $$ BEGIN RAISE EXCEPTION '{table} refused by the test'; END $$;
                 CREATE TRIGGER refuse_{table} BEFORE INSERT OR UPDATE ON {table}
                   FOR EACH ROW EXECUTE FUNCTION refuse_{table}();"
            ))
            .await
            .unwrap_or_else(|e| panic!("make {table} refuse writes: {e}"));
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
        let pool = db::pool(&DatabaseSettings::for_url(url_of_database(
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

/// A plain (unpooled) connection to `url`, driven by a spawned task.
pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect to the test server: {e}"));
    tokio::spawn(conn);
    client
}

/// The URL of `database` on the server of `url`.
pub fn url_of_database(url: &str, database: &str) -> String {
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

/// A pool of `size` connections on the database at `url` (the default pool holds 16).
pub fn pool_of(url: &str, size: usize) -> Pool {
    let mut settings = DatabaseSettings::for_url(url);
    settings.pool_size = size;
    db::pool(&settings).expect("pool")
}
