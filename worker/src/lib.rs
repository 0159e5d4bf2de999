//! Quayside's worker: apalis workers over the PostgreSQL job queue.
//!
//! Two halves. [`runtime`] is the queue runtime (producers, backend, completer, lease,
//! notifier, maintenance, the handler registry and the guards of external services); it
//! knows no job kind of the application. The application is [`app`] (its settings, the
//! services its handlers use, the table of handlers), [`handlers`] (one module per kind) and
//! [`housekeeping`] (its own maintenance passes). [`config`] reads the environment once, and
//! [`run`] puts the two halves together.

pub mod app;
pub mod config;
pub mod handlers;
pub mod housekeeping;
pub mod runtime;

use tokio_util::sync::CancellationToken;

use crate::app::Services;
use crate::config::WorkerSettings;
use crate::runtime::Runtime;

/// Run the worker until `stop` is cancelled, then shut down gracefully: the runtime with the
/// application's handlers and maintenance passes.
pub async fn run(settings: WorkerSettings, stop: CancellationToken) -> anyhow::Result<()> {
    let WorkerSettings { runtime, app, .. } = settings;
    let prune_interval = runtime.maintenance.prune_interval;
    let runtime = Runtime::new(runtime)?;
    let handlers = app::handlers(&Services::new(runtime.pool().clone(), &app)?)?;
    let passes = housekeeping::passes(&app.housekeeping, prune_interval);
    runtime.run(handlers, passes, stop).await
}
