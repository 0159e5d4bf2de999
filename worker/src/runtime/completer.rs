//! The completer: writes attempt outcomes in batches.
//!
//! Outcomes arrive on a bounded channel from every queue's workers; each write takes whatever
//! has gathered since the last one finished, so the batch grows with the load and a quiet
//! worker still writes at once. A lost database is waited out with backoff; the batch is
//! kept, so nothing is dropped while the outage lasts (if it outlasts the lease, the jobs are
//! rescued and run again: at-least-once). A batch that PostgreSQL refuses for its content is
//! written again one row per statement, so one bad row costs only its own job.

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
        let attempts: Vec<(i64, i32)> = batch.iter().map(|o| (o.id, o.attempt)).collect();
        let mut delay = Duration::from_millis(50);
        // At shutdown, give a lost database a bounded time; the jobs stay leased and are
        // rescued if we cannot write.
        let mut tries_left = if final_flush { 20 } else { u32::MAX };
        // After a batch fails for its content, its rows go one statement each, so a bad row
        // (one PostgreSQL refuses despite `outcome::record`'s sanitising) costs only itself.
        let mut one_by_one = false;
        while !batch.is_empty() {
            let lost = if one_by_one {
                self.write_each(batch).await
            } else {
                match self.try_write(batch).await {
                    Ok(written) => {
                        log_refused(batch.len() as u64, written);
                        batch.clear();
                        break;
                    }
                    Err(e) if e.is_connection_lost() => Some(e),
                    Err(e) if batch.len() > 1 => {
                        tracing::warn!(error = %e, num_outcomes = batch.len(), "a batch of outcomes was refused; writing them one by one");
                        one_by_one = true;
                        continue;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, num_outcomes = 1, "dropping outcomes; their jobs will be rescued");
                        batch.clear();
                        break;
                    }
                }
            };
            let Some(e) = lost else { break };
            if tries_left == 0 {
                // Out of time: the rows stay running and the rescuer gives them another
                // attempt once their leases lapse.
                tracing::error!(error = %e, num_outcomes = batch.len(), "dropping outcomes; their jobs will be rescued");
                batch.clear();
                break;
            }
            tries_left -= 1;
            tracing::warn!(error = %e, num_outcomes = batch.len(), "cannot record outcomes; retrying");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
        self.held.remove(attempts);
        batch.clear();
    }

    /// Write each outcome of `batch` in its own statement, removing those written or refused
    /// for good; returns the connection error that stopped it, with the rest left in `batch`.
    async fn write_each(&self, batch: &mut Vec<AttemptOutcome>) -> Option<DbError> {
        let (mut written, mut tried) = (0, 0);
        let mut rest = Vec::new();
        let mut lost = None;
        for o in batch.drain(..) {
            if lost.is_some() {
                rest.push(o);
                continue;
            }
            match self.try_write(std::slice::from_ref(&o)).await {
                Ok(n) => {
                    written += n;
                    tried += 1;
                }
                Err(e) if e.is_connection_lost() => {
                    lost = Some(e);
                    rest.push(o);
                }
                Err(e) => {
                    // Its job stays running and is rescued once its lease lapses.
                    tracing::error!(error = %e, job.id = o.id, job.attempt = o.attempt, "dropping an outcome the database refuses; its job will be rescued");
                }
            }
        }
        log_refused(tried, written);
        *batch = rest;
        lost
    }

    async fn try_write(&self, batch: &[AttemptOutcome]) -> Result<u64, DbError> {
        let conn = self.pool.get().await?;
        outcome::record(&conn, &self.worker, batch).await
    }
}

fn log_refused(num_outcomes: u64, written: u64) {
    if written < num_outcomes {
        tracing::info!(
            num_outcomes,
            num_refused = num_outcomes - written,
            "outcomes refused: those jobs were rescued or cancelled meanwhile"
        );
    }
}
