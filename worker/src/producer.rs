//! The producer of one queue: fetches jobs in batches for the slots that are free and hands
//! them to the queue's apalis worker.
//!
//! It never fetches more jobs than there are free slots, so a fetched job starts at once and
//! its lease is not spent waiting. It wakes on a notification for its queue, on a poll tick
//! (the fallback, and the only wake-up in polling-only mode), or straight away after a full
//! batch, since more jobs are probably waiting.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use engine::queue::{FetchedJob, fetch};
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::lease::Held;
use crate::metrics::QueueMetrics;

/// One queue's producer.
pub struct Producer {
    /// The queue.
    pub queue: Arc<str>,
    /// The database.
    pub pool: Pool,
    /// This worker's id.
    pub worker: Arc<str>,
    /// Lease of each fetched job.
    pub lease: Duration,
    /// Most jobs per fetch.
    pub batch: usize,
    /// Poll even without a notification this often.
    pub poll_interval: Duration,
    /// Free job slots of this queue; the backend's layer returns each one.
    pub slots: Arc<Semaphore>,
    /// Where fetched jobs go.
    pub tx: mpsc::Sender<FetchedJob>,
    /// Notified when the queue has new jobs.
    pub wake: Arc<Notify>,
    /// Jobs this worker holds.
    pub held: Arc<Held>,
    /// This queue's metrics.
    pub metrics: Arc<QueueMetrics>,
}

impl Producer {
    /// Fetch until `stop`.
    pub async fn run(self, stop: CancellationToken) {
        let mut error_delay = Duration::from_millis(100);
        loop {
            // Wait for a free slot, then take every free slot up to a batch.
            let first = tokio::select! {
                p = self.slots.acquire() => p.expect("slots are never closed"),
                _ = stop.cancelled() => return,
            };
            first.forget();
            let extra = self.slots.available_permits().min(self.batch - 1);
            if let Ok(p) = self.slots.try_acquire_many(extra as u32) {
                p.forget();
            }
            let want = extra + 1;
            let fetched = self.fetch(want).await;
            let got = fetched.as_ref().map_or(0, Vec::len);
            self.slots.add_permits(want - got);
            match fetched {
                Ok(jobs) => {
                    error_delay = Duration::from_millis(100);
                    self.metrics.fetched(got);
                    self.held.add(jobs.iter().map(|j| (j.id, j.attempt)));
                    for job in jobs {
                        // Room is guaranteed: the channel holds as many jobs as there are slots.
                        if self.tx.send(job).await.is_err() {
                            return; // the worker has stopped; held jobs are handed back
                        }
                    }
                    if got == want {
                        continue;
                    }
                }
                Err(e) => {
                    tracing::warn!(queue = %self.queue, error = %e, "fetch failed; backing off");
                    tokio::select! {
                        _ = tokio::time::sleep(error_delay) => {}
                        _ = stop.cancelled() => return,
                    }
                    error_delay = (error_delay * 2).min(Duration::from_secs(5));
                    continue;
                }
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(self.poll_interval) => {}
                _ = stop.cancelled() => return,
            }
        }
    }

    async fn fetch(&self, limit: usize) -> Result<Vec<FetchedJob>, engine::db::DbError> {
        let conn = self.pool.get().await?;
        fetch::fetch(&conn, &self.queue, &self.worker, self.lease, limit).await
    }
}
