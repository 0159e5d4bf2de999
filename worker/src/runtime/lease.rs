//! The leases this worker holds, and the loop that renews them and the worker's heartbeat.
//!
//! A job is held from the moment it is fetched until its outcome is written (or it is handed
//! back at shutdown). Renewal is one statement for all held jobs, every third of the lease, so a
//! renewal may fail twice before any lease runs out.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool_postgres::Pool;
use engine::queue::fetch;
use engine::queue::maintenance::{self as sql, WorkerInfo};
use tokio_util::sync::CancellationToken;

/// Attempts this worker holds: (job id, attempt).
///
/// Keyed by the attempt as well as the job: if a lease lapses (a database hiccup) and this
/// same worker fetches the job's next attempt, the earlier attempt's late outcome is refused
/// by the fence and must release only that attempt, never the one now running.
#[derive(Debug, Default)]
pub struct Held {
    jobs: Mutex<HashSet<(i64, i32)>>,
}

impl Held {
    /// Start holding fetched attempts.
    pub fn add(&self, attempts: impl IntoIterator<Item = (i64, i32)>) {
        self.jobs.lock().expect("held lock").extend(attempts);
    }

    /// Stop holding attempts whose outcome has been written (or refused).
    pub fn remove(&self, attempts: impl IntoIterator<Item = (i64, i32)>) {
        let mut held = self.jobs.lock().expect("held lock");
        for a in attempts {
            held.remove(&a);
        }
    }

    /// The ids of the jobs held now, each once.
    pub fn ids(&self) -> Vec<i64> {
        let mut ids: Vec<i64> = self
            .jobs
            .lock()
            .expect("held lock")
            .iter()
            .map(|&(id, _)| id)
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// The attempts held now: (job id, attempt).
    pub fn attempts(&self) -> Vec<(i64, i32)> {
        self.jobs
            .lock()
            .expect("held lock")
            .iter()
            .copied()
            .collect()
    }

    /// How many attempts are held.
    pub fn len(&self) -> usize {
        self.jobs.lock().expect("held lock").len()
    }

    /// True when none are.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Renew the leases of held jobs and the worker's heartbeat every `lease / 3`, until `stop`.
pub async fn run(
    pool: Pool,
    info: Arc<WorkerInfo>,
    held: Arc<Held>,
    lease: Duration,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(lease / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        if let Err(e) = renew_once(&pool, &info, &held, lease).await {
            tracing::warn!(error = %e, "lease renewal failed; retrying at the next tick");
        }
    }
}

/// One renewal: leases of held jobs, then the heartbeat.
pub async fn renew_once(
    pool: &Pool,
    info: &WorkerInfo,
    held: &Held,
    lease: Duration,
) -> anyhow::Result<()> {
    let conn = pool.get().await?;
    let ids = held.ids();
    let renewed = fetch::renew_leases(&conn, &ids, &info.id, lease).await?;
    if renewed < ids.len() as u64 {
        // Finished between our snapshot and the statement, or taken from us (rescued after a
        // stall, or cancelled): their late outcome will be refused by the fence.
        tracing::debug!(
            num_held = ids.len(),
            num_renewed = renewed,
            "some held jobs were no longer ours"
        );
    }
    sql::heartbeat(&conn, info, ids.len() as i32).await?;
    Ok(())
}
