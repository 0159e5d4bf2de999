//! The connection pool and the schema migrations.
//!
//! One driver for the whole project: tokio-postgres, pooled by deadpool-postgres. Migrations are
//! the plain SQL files in `migrations/`, embedded here and applied by refinery under a
//! PostgreSQL advisory lock, so replicas starting together never race.

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;

use crate::config::DatabaseSettings;

/// A failed statement, or no pooled connection to run it on.
///
/// Every database call of the engine and the domain answers with this one type, so every
/// caller tells a lost connection from a refused row the same way, through [`DbError::kind`].
/// Modules with conditions of their own wrap it (`QueueError::Db`) rather than repeat it.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct DbError(Source);

#[derive(Debug, thiserror::Error)]
enum Source {
    #[error(transparent)]
    Postgres(tokio_postgres::Error),
    #[error("no database connection: {0}")]
    Pool(deadpool_postgres::PoolError),
}

/// What a [`DbError`] means for the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbErrorKind<'a> {
    /// The database could not be reached, went away mid-statement or is shutting down
    /// (SQLSTATE class 08 and 57P0x, a closed connection, an I/O error, no pooled connection
    /// within the pool's timeout): back off and try again; an HTTP caller answers 503.
    ConnectionLost,
    /// A unique index or constraint refused a row (23505); `constraint` names it when
    /// PostgreSQL did, which it does for every violation of an index or a constraint.
    UniqueViolation {
        /// The index or constraint violated.
        constraint: Option<&'a str>,
    },
    /// A serialization failure (40001) or a deadlock (40P01): the transaction lost a race and
    /// was rolled back; running it again may succeed.
    SerializationFailure,
    /// Anything else: a fault of ours or of the schema.
    Other,
}

impl DbError {
    /// What this error means for the caller.
    pub fn kind(&self) -> DbErrorKind<'_> {
        use tokio_postgres::error::SqlState;
        let e = match &self.0 {
            Source::Pool(p) => {
                return match p {
                    deadpool_postgres::PoolError::Timeout(_)
                    | deadpool_postgres::PoolError::Backend(_)
                    | deadpool_postgres::PoolError::Closed => DbErrorKind::ConnectionLost,
                    _ => DbErrorKind::Other,
                };
            }
            Source::Postgres(e) => e,
        };
        let Some(db) = e.as_db_error() else {
            return if is_io(e) || e.is_closed() {
                DbErrorKind::ConnectionLost
            } else {
                // Parameter and column conversions, a wrong parameter count, a row count.
                DbErrorKind::Other
            };
        };
        let code = db.code();
        if code == &SqlState::UNIQUE_VIOLATION {
            DbErrorKind::UniqueViolation {
                constraint: db.constraint(),
            }
        } else if code == &SqlState::T_R_SERIALIZATION_FAILURE
            || code == &SqlState::T_R_DEADLOCK_DETECTED
        {
            DbErrorKind::SerializationFailure
        } else if code.code().starts_with("08") || code.code().starts_with("57P0") {
            // Class 08 (connection exception); 57P01-57P05: shut down, crashed, starting,
            // database dropped, idle session timed out.
            DbErrorKind::ConnectionLost
        } else {
            DbErrorKind::Other
        }
    }

    /// True for [`DbErrorKind::ConnectionLost`]: the caller should back off and try again
    /// rather than give up.
    pub fn is_connection_lost(&self) -> bool {
        self.kind() == DbErrorKind::ConnectionLost
    }

    /// True when the unique index or constraint `name` refused a row.
    pub fn violates(&self, name: &str) -> bool {
        matches!(self.kind(), DbErrorKind::UniqueViolation { constraint: Some(c) } if c == name)
    }

    /// The SQLSTATE PostgreSQL answered with, if it answered.
    pub fn code(&self) -> Option<&tokio_postgres::error::SqlState> {
        match &self.0 {
            Source::Postgres(e) => e.code(),
            Source::Pool(_) => None,
        }
    }
}

/// Whether an I/O error lies under `e`: the socket failed, so the connection is gone.
fn is_io(e: &tokio_postgres::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if s.is::<std::io::Error>() {
            return true;
        }
        source = s.source();
    }
    false
}

impl From<tokio_postgres::Error> for DbError {
    fn from(e: tokio_postgres::Error) -> Self {
        DbError(Source::Postgres(e))
    }
}

impl From<deadpool_postgres::PoolError> for DbError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        DbError(Source::Pool(e))
    }
}

/// A `Result` with [`DbError`].
pub type Result<T, E = DbError> = std::result::Result<T, E>;

/// Errors of building a pool and of migrating: start-up failures, which no request sees.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The pool could not be built.
    #[error("cannot build the database pool: {0}")]
    Build(#[from] deadpool_postgres::BuildError),
    /// A migration failed.
    #[error("migration failed: {0}")]
    Migration(#[from] refinery::Error),
    /// A statement around the migrations failed, or no connection could be had.
    #[error(transparent)]
    Db(#[from] DbError),
}

mod embedded {
    refinery::embed_migrations!("../../migrations");
}

/// The advisory lock key held while migrating ("quayside" in ASCII, as a bigint).
const MIGRATION_LOCK_KEY: i64 = 0x7175_6179_7369_6465;

/// Build a pool. No connection is opened until one is needed.
///
/// Connections are recycled with a cheap `is_closed` check: a connection broken by a database
/// restart is dropped when it comes back to the pool, and the next caller gets a fresh one.
pub fn pool(settings: &DatabaseSettings) -> Result<Pool, SetupError> {
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
) -> Result<Pool, SetupError> {
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

fn build_pool(
    settings: &DatabaseSettings,
    config: tokio_postgres::Config,
) -> Result<Pool, SetupError> {
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
pub async fn migrate(pool: &Pool) -> Result<usize, SetupError> {
    let mut conn = pool.get().await.map_err(DbError::from)?;
    if all_applied(&conn).await? {
        return Ok(0);
    }
    conn.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK_KEY])
        .await
        .map_err(DbError::from)?;
    let client: &mut tokio_postgres::Client = &mut conn;
    let outcome = embedded::migrations::runner().run_async(client).await;
    // Unlock even when the run failed; a lost connection releases the lock by itself.
    let unlocked = conn
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK_KEY])
        .await;
    let report = outcome?;
    unlocked.map_err(DbError::from)?;
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
