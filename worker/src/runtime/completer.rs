//! The completer: writes attempt outcomes in batches.
//!
//! Outcomes arrive on a bounded channel from every queue's workers; each write takes whatever
//! has gathered since the last one finished, so the batch grows with the load and a quiet
//! worker still writes at once. A lost database is waited out with backoff; the batch is
//! kept, so nothing is dropped while the outage lasts (if it outlasts the lease, the jobs are
//! rescued and run again: at-least-once).

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use engine::db::DbError;
use engine::queue::outcome::{self, AttemptOutcome};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::lease::Held;

/// Most outcomes written by one statement.
const MAX_BATCH: usize = 5_000;

/// Sends outcomes to the completer.
#[derive(Clone)]
pub struct CompleterHandle {
    tx: mpsc::Sender<AttemptOutcome>,
}

impl CompleterHandle {
    /// Queue one outcome for writing; waits when the completer is behind.
    pub async fn send(&self, outcome: AttemptOutcome) {
        // Fails only after the completer stopped, at the end of shutdown; the job is then
        // still held and is handed back.
        let _ = self.tx.send(outcome).await;
    }
}

/// The completer task's state.
pub struct Completer {
    rx: mpsc::Receiver<AttemptOutcome>,
    pool: Pool,
    worker: Arc<str>,
    held: Arc<Held>,
}

impl Completer {
    /// A completer for `worker`, with room for `capacity` outcomes in flight.
    pub fn new(
        pool: Pool,
        worker: Arc<str>,
        held: Arc<Held>,
        capacity: usize,
    ) -> (Self, CompleterHandle) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (
            Self {
                rx,
                pool,
                worker,
                held,
            },
            CompleterHandle { tx },
        )
    }

    /// Write outcomes until `stop`; then write what is left in the channel and return.
    pub async fn run(mut self, stop: CancellationToken) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        loop {
            tokio::select! {
                n = self.rx.recv_many(&mut batch, MAX_BATCH) => {
                    if n == 0 {
                        return;
                    }
                }
                _ = stop.cancelled() => {
                    while let Ok(o) = self.rx.try_recv() {
                        batch.push(o);
                    }
                    self.write(&mut batch, true).await;
                    return;
                }
            }
            self.write(&mut batch, false).await;
        }
    }

    async fn write(&self, batch: &mut Vec<AttemptOutcome>, final_flush: bool) {
        if batch.is_empty() {
            return;
        }
        let mut delay = Duration::from_millis(50);
        // At shutdown, give a lost database a bounded time; the jobs stay leased and are
        // rescued if we cannot write.
        let mut tries_left = if final_flush { 20 } else { u32::MAX };
        loop {
            match self.try_write(batch).await {
                Ok(written) => {
                    if written < batch.len() as u64 {
                        tracing::info!(
                            num_outcomes = batch.len(),
                            num_refused = batch.len() as u64 - written,
                            "outcomes refused: those jobs were rescued or cancelled meanwhile"
                        );
                    }
                    break;
                }
                Err(e) if e.is_connection_lost() && tries_left > 0 => {
                    tries_left -= 1;
                    tracing::warn!(error = %e, num_outcomes = batch.len(), "cannot record outcomes; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
                Err(e) => {
                    // Not a connection problem, or out of time: the rows stay running and the
                    // rescuer gives them another attempt once their leases lapse.
                    tracing::error!(error = %e, num_outcomes = batch.len(), "dropping outcomes; their jobs will be rescued");
                    break;
                }
            }
        }
        self.held.remove(batch.iter().map(|o| (o.id, o.attempt)));
        batch.clear();
    }

    async fn try_write(&self, batch: &[AttemptOutcome]) -> Result<u64, DbError> {
        let conn = self.pool.get().await?;
        outcome::record(&conn, &self.worker, batch).await
    }
}
