//! The leases this worker holds, and the loop that renews them and the worker's heartbeat.
//!
//! A job is held from the moment it is fetched until its outcome is written (or it is handed
//! back at shutdown). Renewal is one statement for all held jobs, every third of the lease, so a
//! renewal may fail twice before any lease runs out.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool_postgres::Pool;
use engine::queue::fetch;
use engine::queue::maintenance::{self as sql, WorkerInfo};
use tokio_util::sync::CancellationToken;

/// Jobs this worker holds: id to attempt.
#[derive(Debug, Default)]
pub struct Held {
    jobs: Mutex<HashMap<i64, i32>>,
}

impl Held {
    /// Start holding fetched jobs.
    pub fn add(&self, jobs: impl IntoIterator<Item = (i64, i32)>) {
        self.jobs.lock().expect("held lock").extend(jobs);
    }

    /// Stop holding jobs whose outcome has been written.
    pub fn remove(&self, ids: impl IntoIterator<Item = i64>) {
        let mut held = self.jobs.lock().expect("held lock");
        for id in ids {
            held.remove(&id);
        }
    }

    /// The ids held now.
    pub fn ids(&self) -> Vec<i64> {
        self.jobs
            .lock()
            .expect("held lock")
            .keys()
            .copied()
            .collect()
    }

    /// How many are held.
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
