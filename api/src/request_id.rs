//! The id of the request being served, in a task-local.
//!
//! A leaf module: the request-context middleware sets the id, and anything answering the
//! request (an error body, a job's meta, an audit entry) reads it, without importing the
//! middleware that set it.

use std::future::Future;
use std::sync::Arc;

use tokio::task::futures::TaskLocalFuture;

tokio::task_local! {
    static REQUEST_ID: Arc<str>;
}

/// The id of the request being served on this task, if any.
pub fn current_request_id() -> Option<String> {
    REQUEST_ID.try_with(|id| id.to_string()).ok()
}

/// Run `f` with `id` as the current request's id.
pub fn scope<F: Future>(id: Arc<str>, f: F) -> TaskLocalFuture<Arc<str>, F> {
    REQUEST_ID.scope(id, f)
}
