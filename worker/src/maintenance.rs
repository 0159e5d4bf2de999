//! Maintenance: rescue of expired leases, promotion of due jobs, pruning of old ones, removal
//! of dead workers (the reaper), folding of job counts (the counter), pruning of expired
//! idempotency keys (`keys`) and of abandoned logo bytes (`logos`), and periodic jobs.
//!
//! Every worker runs these loops, but each pass of a service is claimed through its row in
//! `maintenance_runs`, so it runs once per interval across all workers, however many there are.
//! The loops run beside job execution, on their own connections, so they go on (pruning
//! included) while handlers fail. Periodic jobs need no claim: each tick has a unique row.

pub mod counter;
pub mod keys;
pub mod logos;
pub mod periodic;
pub mod pruner;
pub mod reaper;
pub mod rescuer;
pub mod scheduler;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use engine::queue::maintenance as sql;
use tokio_util::sync::CancellationToken;

use crate::config::MaintenanceSettings;

/// Most rows one pass of the rescuer or the scheduler touches; the next pass takes the rest.
const PASS_LIMIT: usize = 10_000;

/// Run every maintenance service until `stop`.
pub async fn run(
    pool: Pool,
    worker: Arc<str>,
    settings: MaintenanceSettings,
    stop: CancellationToken,
) {
    let s = &settings;
    let (pool, worker, stop) = (&pool, &*worker, &stop);
    tokio::join!(
        service(
            "rescuer",
            s.rescue_interval,
            pool,
            worker,
            stop,
            rescuer::run_once
        ),
        service(
            "scheduler",
            s.schedule_interval,
            pool,
            worker,
            stop,
            scheduler::run_once
        ),
        service(
            "counter",
            s.count_interval,
            pool,
            worker,
            stop,
            counter::run_once
        ),
        service("pruner", s.prune_interval, pool, worker, stop, |c| {
            pruner::run_once(c, s.retention)
        }),
        // Expired keys go at the pruner's pace: a few minutes more of a day-long TTL is noise.
        service(
            "keys",
            s.prune_interval,
            pool,
            worker,
            stop,
            |c| async move { keys::run_once(c, s.idempotency_ttl).await.map(drop) }
        ),
        service(
            "logos",
            s.prune_interval,
            pool,
            worker,
            stop,
            |c| async move { logos::run_once(c, s.logo_retention).await.map(drop) }
        ),
        // Every half TTL: a dead worker's row goes within 1.5 TTLs of its last heartbeat.
        service("reaper", s.worker_ttl / 2, pool, worker, stop, |c| {
            reaper::run_once(c, s.worker_ttl)
        }),
    );
}

/// Loop of one service: try to claim a pass a few times per interval (so passes stay about an
/// interval apart whatever the phase of each worker's timer), and run it when the claim wins.
async fn service<'a, F, Fut>(
    name: &'static str,
    interval: Duration,
    pool: &'a Pool,
    worker: &'a str,
    stop: &'a CancellationToken,
    pass: F,
) where
    F: Fn(deadpool_postgres::Client) -> Fut,
    Fut: Future<Output = anyhow::Result<()>> + 'a,
{
    let mut tick = tokio::time::interval((interval / 4).max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        let result = async {
            let conn = pool.get().await?;
            if sql::claim(&conn, name, interval, worker).await? {
                pass(conn).await?;
            }
            anyhow::Ok(())
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(service = name, error = %e, "maintenance pass failed");
        }
    }
}
