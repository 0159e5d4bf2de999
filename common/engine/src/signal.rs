//! The signal that asks a process of the platform to stop: SIGTERM (what an orchestrator
//! sends) or Ctrl-C. The `api` and `worker` binaries both shut down gracefully on it.

/// Wait for SIGTERM or Ctrl-C.
pub async fn shutdown() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
