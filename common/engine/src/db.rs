//! The connection pool and the schema migrations.
//!
//! One driver for the whole project: tokio-postgres, pooled by deadpool-postgres. Migrations are
//! the plain SQL files in `migrations/`, embedded here and applied by refinery under a
//! PostgreSQL advisory lock, so replicas starting together never race.

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;

use crate::config::DatabaseSettings;

/// Errors of the pool and the migrations.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// A statement or connection failed.
    #[error(transparent)]
    Postgres(#[from] tokio_postgres::Error),
    /// No pooled connection could be had.
    #[error("no database connection: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    /// The pool could not be built.
    #[error("cannot build the database pool: {0}")]
    Build(#[from] deadpool_postgres::BuildError),
    /// A migration failed.
    #[error("migration failed: {0}")]
    Migration(#[from] refinery::Error),
}

/// A `Result` with [`DbError`].
pub type Result<T, E = DbError> = std::result::Result<T, E>;

mod embedded {
    refinery::embed_migrations!("../../migrations");
}

/// The advisory lock key held while migrating ("quayside" in ASCII, as a bigint).
const MIGRATION_LOCK_KEY: i64 = 0x7175_6179_7369_6465;

/// Build a pool. No connection is opened until one is needed.
///
/// Connections are recycled with a cheap `is_closed` check: a connection broken by a database
/// restart is dropped when it comes back to the pool, and the next caller gets a fresh one.
pub fn pool(settings: &DatabaseSettings) -> Result<Pool> {
    build_pool(settings, settings.pg_config())
}

/// How the statements of a worker pool's connections are planned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plans {
    /// PostgreSQL's own choice: a prepared statement keeps a generic plan once that looks no
    /// dearer than planning each execution. The fetch lives here: planning it took 0.3 ms,
    /// a third of an idle worker's pickup latency.
    Cached,
    /// Planned afresh for each execution, for the actual arrays. A generic plan guesses that
    /// `unnest($1)` yields a few rows; for the batched outcome write it then joined jobs and
    /// the batch by nested loop, comparing every pair: 525 ms for a batch of 2,000, against
    /// 13.6 ms with a plan made for the real array (EXPLAIN ANALYZE, PostgreSQL 15).
    PerExecution,
}

/// A pool for the worker's own statements.
///
/// Without `synchronous_commit`, a commit does not wait for its WAL to reach disk. The worker
/// uses that for its own state changes only (fetch, outcomes, lease renewals): a PostgreSQL
/// crash can undo the last fraction of a second of them, which puts those jobs back to an
/// earlier state (available, or running until the rescuer takes them back) and runs them
/// again. That is the at-least-once contract every job already lives under; no job is lost,
/// since an enqueue always commits durably.
pub fn worker_pool(
    settings: &DatabaseSettings,
    plans: Plans,
    synchronous_commit: bool,
) -> Result<Pool> {
    let mut config = settings.pg_config();
    let mut options = String::from(match plans {
        Plans::Cached => "-c plan_cache_mode=auto",
        Plans::PerExecution => "-c plan_cache_mode=force_custom_plan",
    });
    if !synchronous_commit {
        options.push_str(" -c synchronous_commit=off");
    }
    config.options(&options);
    build_pool(settings, config)
}

fn build_pool(settings: &DatabaseSettings, config: tokio_postgres::Config) -> Result<Pool> {
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Ok(Pool::builder(manager)
        .max_size(settings.pool_size)
        .wait_timeout(Some(settings.pool_timeout))
        .create_timeout(Some(settings.pool_timeout))
        .runtime(Runtime::Tokio1)
        .build()?)
}

/// Apply every pending migration, holding an advisory lock so that only one process migrates
/// at a time; the others wait, then find nothing to do. Returns how many were applied.
///
/// When every embedded migration is already recorded with its checksum (every start but the
/// first after a deploy), one read settles it: no lock, no runner. A worker's start-up took
/// 6–7 ms to migrate nothing, a third of its time to the first fetch.
pub async fn migrate(pool: &Pool) -> Result<usize> {
    let mut conn = pool.get().await?;
    if all_applied(&conn).await? {
        return Ok(0);
    }
    conn.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK_KEY])
        .await?;
    let client: &mut tokio_postgres::Client = &mut conn;
    let outcome = embedded::migrations::runner().run_async(client).await;
    // Unlock even when the run failed; a lost connection releases the lock by itself.
    let unlocked = conn
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK_KEY])
        .await;
    let report = outcome?;
    unlocked?;
    Ok(report.applied_migrations().len())
}

/// True when every embedded migration has been applied (the API's readiness probe).
pub async fn is_migrated(pool: &Pool) -> Result<bool> {
    all_applied(&pool.get().await?).await
}

/// Whether the history table records every embedded migration, each with the checksum of the
/// file embedded now (an edited or a missing one sends `migrate` to refinery, which applies
/// or refuses it).
async fn all_applied(conn: &deadpool_postgres::Client) -> Result<bool> {
    let rows = match conn
        .query("SELECT version, checksum FROM refinery_schema_history", &[])
        .await
    {
        Ok(rows) => rows,
        // No history table yet: nothing is applied.
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => {
            return Ok(false);
        }
        Err(e) => return Err(e.into()),
    };
    let applied: std::collections::HashMap<i32, String> =
        rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    Ok(embedded::migrations::runner()
        .get_migrations()
        .iter()
        .all(|m| applied.get(&m.version()) == Some(&m.checksum().to_string())))
}

/// A pooled connection or a transaction on one: what every queue function takes, so the
/// caller decides whether its writes commit on their own or with the caller's rows.
///
/// deadpool's `GenericClient` without `COPY`, which the bulk enqueue needs.
pub trait Conn: deadpool_postgres::GenericClient {
    /// Start `COPY ... FROM STDIN` (see `tokio_postgres::Client::copy_in`).
    fn copy_in(
        &self,
        statement: &str,
    ) -> impl std::future::Future<
        Output = Result<tokio_postgres::CopyInSink<bytes::Bytes>, tokio_postgres::Error>,
    > + Send;
}

impl Conn for deadpool_postgres::Client {
    async fn copy_in(
        &self,
        statement: &str,
    ) -> Result<tokio_postgres::CopyInSink<bytes::Bytes>, tokio_postgres::Error> {
        tokio_postgres::Client::copy_in(self, statement).await
    }
}

impl Conn for deadpool_postgres::Transaction<'_> {
    async fn copy_in(
        &self,
        statement: &str,
    ) -> Result<tokio_postgres::CopyInSink<bytes::Bytes>, tokio_postgres::Error> {
        tokio_postgres::Transaction::copy_in(self, statement).await
    }
}
