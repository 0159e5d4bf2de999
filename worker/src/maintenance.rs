//! Maintenance: rescue of expired leases, promotion of due jobs, pruning of old ones, removal
//! of dead workers (the reaper), and periodic jobs.
//!
//! Every worker runs these loops, but each pass of a service is claimed through its row in
//! `maintenance_runs`, so it runs once per interval across all workers, however many there are.
//! The loops run beside job execution, on their own connections, so they go on (pruning
//! included) while handlers fail. Periodic jobs need no claim: each tick has a unique row.

pub mod periodic;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use common::queue::maintenance as sql;
use deadpool_postgres::Pool;
use tokio_util::sync::CancellationToken;

use crate::config::MaintenanceSettings;

/// Most rows one pass of the rescuer or the scheduler touches; the next pass takes the rest.
const PASS_LIMIT: usize = 10_000;
/// Most rows one prune statement deletes; a pass repeats it up to `PRUNE_ROUNDS` times.
const PRUNE_BATCH: usize = 10_000;
const PRUNE_ROUNDS: usize = 10;

/// Run every maintenance service until `stop`.
pub async fn run(
    pool: Pool,
    worker: Arc<str>,
    settings: MaintenanceSettings,
    stop: CancellationToken,
) {
    let s = &settings;
    tokio::join!(
        service(
            "rescuer",
            s.rescue_interval,
            &pool,
            &worker,
            &stop,
            |c| async move {
                let r = sql::rescue(&c, PASS_LIMIT).await?;
                if r.retried + r.discarded > 0 {
                    tracing::warn!(
                        num_retried = r.retried,
                        num_discarded = r.discarded,
                        "rescued jobs whose lease expired"
                    );
                    crate::metrics::rescued(r.retried, r.discarded);
                }
                Ok(())
            }
        ),
        service(
            "scheduler",
            s.schedule_interval,
            &pool,
            &worker,
            &stop,
            |c| async move {
                let (n, _next) = sql::promote_due(&c, PASS_LIMIT).await?;
                if n > 0 {
                    tracing::debug!(num_promoted = n, "made due jobs available");
                }
                Ok(())
            }
        ),
        service(
            "pruner",
            s.prune_interval,
            &pool,
            &worker,
            &stop,
            |c| async move {
                let mut total = 0;
                for _ in 0..PRUNE_ROUNDS {
                    let n = sql::prune(&c, s.retention, PRUNE_BATCH).await?;
                    total += n;
                    if n < PRUNE_BATCH as u64 {
                        break;
                    }
                }
                if total > 0 {
                    tracing::info!(num_pruned = total, "pruned finished jobs");
                }
                Ok(())
            }
        ),
        // Every half TTL: a dead worker's row goes within 1.5 TTLs of its last heartbeat.
        service(
            "reaper",
            s.worker_ttl / 2,
            &pool,
            &worker,
            &stop,
            |c| async move {
                let reaped = sql::reap_workers(&c, s.worker_ttl).await?;
                if reaped > 0 {
                    tracing::info!(
                        num_workers_reaped = reaped,
                        "removed workers that stopped heartbeating"
                    );
                }
                Ok(())
            }
        ),
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
