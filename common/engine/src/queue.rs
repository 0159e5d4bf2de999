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
pub mod limits;
pub mod maintenance;
pub mod outcome;

pub use enqueue::{Enqueued, JobOptions, NewJob, UNIQUE_KEY_INDEX, enqueue, enqueue_many};
pub use job::{AttemptError, FetchedJob, JobRow, JobState, JsonText};

use crate::db::DbError;
use crate::jobs::ArgsError;

/// The notification channel; the payload is the queue that has new available jobs.
pub const NOTIFY_CHANNEL: &str = "quayside_jobs";

/// Errors of an enqueue: a database error, or one of the enqueue's own refusals.
///
/// The other queue statements answer with [`DbError`] alone.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// A statement failed, or no connection could be had.
    #[error(transparent)]
    Db(#[from] DbError),
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

impl From<tokio_postgres::Error> for QueueError {
    fn from(e: tokio_postgres::Error) -> Self {
        QueueError::Db(e.into())
    }
}

/// A `Result` with [`DbError`], what every queue statement but the enqueue answers.
pub type Result<T, E = DbError> = std::result::Result<T, E>;
