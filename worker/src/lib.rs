//! Quayside's worker: apalis workers over the PostgreSQL job queue.
//!
//! [`runtime`] is the queue runtime (producers, backend, completer, lease, notifier,
//! maintenance); [`handlers`] are the job kinds' handlers, and [`housekeeping`] the
//! application's own maintenance passes. [`config`] reads the environment once.

pub mod config;
pub mod handlers;
pub mod housekeeping;
pub mod runtime;

pub use runtime::run;
