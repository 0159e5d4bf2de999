//! The durable job queue: every statement that reads or writes the `jobs` table.
//!
//! This module is the one seam between the runtime and the queue's SQL: `api` enqueues and
//! `worker` fetches, records outcomes and runs maintenance through these functions, never by
//! writing SQL of its own. Hot paths are set-based: one round trip per batch, not per job.

pub mod admin;
pub mod control;
pub mod counts;
pub mod enqueue;
pub mod fetch;
pub mod job;
pub mod maintenance;
pub mod outcome;

pub use enqueue::{Enqueued, JobOptions, NewJob, enqueue, enqueue_many};
pub use job::{AttemptError, FetchedJob, JobRow, JobState, JsonText};

use crate::jobs::ArgsError;

/// The notification channel; the payload is the queue that has new available jobs.
pub const NOTIFY_CHANNEL: &str = "quayside_jobs";

/// Errors of the queue's statements.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// A statement failed.
    #[error(transparent)]
    Postgres(#[from] tokio_postgres::Error),
    /// No pooled connection could be had.
    #[error("no database connection: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    /// The job's args were refused by its kind.
    #[error(transparent)]
    Args(#[from] ArgsError),
    /// An enqueue option is out of range.
    #[error("invalid {0}: {1}")]
    InvalidOption(&'static str, String),
    /// A unique key kept changing hands while we tried to enqueue under it.
    #[error("unique key contended: the unfinished job holding it kept finishing")]
    UniqueKeyContention,
}

impl QueueError {
    /// True when the database could not be reached or went away mid-statement: the caller
    /// should back off and try again rather than give up.
    pub fn is_connection(&self) -> bool {
        match self {
            QueueError::Pool(_) => true,
            QueueError::Postgres(e) => match e.code() {
                // Class 08 (connection exception) and 57P0x (shutdown, restart in progress).
                Some(code) => code.code().starts_with("08") || code.code().starts_with("57P0"),
                None => e.is_closed() || e.as_db_error().is_none(),
            },
            _ => false,
        }
    }
}

/// A `Result` with [`QueueError`].
pub type Result<T, E = QueueError> = std::result::Result<T, E>;
