//! What a handler tells the queue: [`JobError`] and [`JobResult`].
//!
//! A leaf: it imports nothing from this crate, so the runtime (backend, guards) and the
//! application's handlers and integrations can all name these words without an import cycle.

use std::time::Duration;

/// What a handler tells the queue when it does not succeed.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// A transient failure: retry with the kind's backoff.
    #[error("{0}")]
    Retry(String),
    /// A transient failure with a known wait (e.g. HTTP 429 Retry-After).
    #[error("{message} (retry after {after:?})")]
    RetryAfter {
        /// What went wrong.
        message: String,
        /// How long to wait.
        after: Duration,
    },
    /// A failure that retrying cannot fix: discard now.
    #[error("{0}")]
    Permanent(String),
    /// Not now: run again after this long, without using up an attempt.
    #[error("snoozed for {0:?}")]
    Snooze(Duration),
    /// Give up on the job: cancelled, with the reason.
    #[error("cancelled: {0}")]
    Cancel(String),
    /// The attempt ran past the kind's timeout.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The args in the row do not parse as the kind's args.
    #[error("bad args: {0}")]
    BadArgs(String),
    /// No handler for the row's kind in this worker.
    #[error("no handler for kind {0:?} in this worker")]
    UnknownKind(String),
}

/// What a handler returns: an optional result to store, or what to do instead.
pub type JobResult = Result<Option<serde_json::Value>, JobError>;
