//! Maintenance: rescue of expired leases, promotion of due jobs, pruning of old ones, removal
//! of dead workers (the reaper), folding of job counts (the counter), periodic jobs, and the
//! passes the application adds ([`Pass`]).
//!
//! Every worker runs these loops, but each pass of a service is claimed through its row in
//! `maintenance_runs`, so it runs once per interval across all workers, however many there are.
//! The loops run beside job execution, on their own connections, so they go on (pruning
//! included) while handlers fail. Periodic jobs need no claim: each tick has a unique row.

pub mod counter;
pub mod periodic;
pub mod pruner;
pub mod reaper;
pub mod rescuer;
pub mod scheduler;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Client, Pool};
use engine::config::{ConfigError, Source, millis, positive};
use engine::queue::maintenance as sql;
use futures::future::{BoxFuture, join_all};
use tokio_util::sync::CancellationToken;

/// Intervals of the maintenance services; each pass runs once per interval across all workers.
#[derive(Debug, Clone)]
pub struct MaintenanceSettings {
    /// How often expired leases are looked for.
    pub rescue_interval: Duration,
    /// How often due scheduled and retryable jobs are made available (at most; sooner when the
    /// next one is due sooner).
    pub schedule_interval: Duration,
    /// How often finished jobs are pruned.
    pub prune_interval: Duration,
    /// How often the changes of job counts are folded into their totals.
    pub count_interval: Duration,
    /// Finished jobs older than this are deleted.
    pub retention: Duration,
    /// Workers silent for this long are removed from the workers table.
    pub worker_ttl: Duration,
}

/// One maintenance pass the caller of the runtime adds: a name (its `maintenance_runs` row),
/// an interval, and the pass itself, run on a connection of the maintenance pool when this
/// worker wins the claim.
pub struct Pass {
    name: &'static str,
    interval: Duration,
    run_once: Box<dyn Fn(Client) -> BoxFuture<'static, anyhow::Result<()>> + Send + Sync>,
}

/// Default `WORKER_RESCUE_INTERVAL_MS`.
pub const DEFAULT_RESCUE_INTERVAL_MS: u64 = 5_000;
/// Default `WORKER_SCHEDULE_INTERVAL_MS`: scheduled jobs start at most this late.
pub const DEFAULT_SCHEDULE_INTERVAL_MS: u64 = 1_000;
/// Default `WORKER_COUNT_INTERVAL_MS`.
pub const DEFAULT_COUNT_INTERVAL_MS: u64 = 1_000;
/// Default `WORKER_PRUNE_INTERVAL_MS`.
pub const DEFAULT_PRUNE_INTERVAL_MS: u64 = 60_000;
/// Default `JOB_RETENTION_HOURS`: a week of history for operators.
pub const DEFAULT_RETENTION_HOURS: u64 = 168;
/// Largest `JOB_RETENTION_HOURS`: longer would overflow the seconds and PostgreSQL's
/// intervals.
pub const MAX_RETENTION_HOURS: u64 = 876_000;
/// Default `WORKER_TTL_MS`.
pub const DEFAULT_WORKER_TTL_MS: u64 = 120_000;

/// Most rows one pass of the rescuer or the scheduler touches; the next pass takes the rest.
const PASS_LIMIT: usize = 10_000;

impl MaintenanceSettings {
    /// Read and validate.
    pub fn from_source(src: &(impl Source + ?Sized)) -> Result<Self, ConfigError> {
        Ok(Self {
            rescue_interval: millis(src, "WORKER_RESCUE_INTERVAL_MS", DEFAULT_RESCUE_INTERVAL_MS)?,
            schedule_interval: millis(
                src,
                "WORKER_SCHEDULE_INTERVAL_MS",
                DEFAULT_SCHEDULE_INTERVAL_MS,
            )?,
            prune_interval: millis(src, "WORKER_PRUNE_INTERVAL_MS", DEFAULT_PRUNE_INTERVAL_MS)?,
            count_interval: millis(src, "WORKER_COUNT_INTERVAL_MS", DEFAULT_COUNT_INTERVAL_MS)?,
            retention: match src.get("JOB_RETENTION_SECS") {
                Some(_) => Duration::from_secs(positive(src, "JOB_RETENTION_SECS", 1)?),
                None => {
                    let hours = positive(src, "JOB_RETENTION_HOURS", DEFAULT_RETENTION_HOURS)?;
                    if hours > MAX_RETENTION_HOURS {
                        return Err(ConfigError::new(
                            "JOB_RETENTION_HOURS",
                            format!("must be at most {MAX_RETENTION_HOURS} (100 years)"),
                        ));
                    }
                    Duration::from_secs(3600 * hours)
                }
            },
            worker_ttl: millis(src, "WORKER_TTL_MS", DEFAULT_WORKER_TTL_MS)?,
        })
    }
}

impl Pass {
    /// The pass `name`, claimed once per `interval` across all workers; `run_once` does one
    /// pass on the connection it is given.
    pub fn new<F, Fut>(name: &'static str, interval: Duration, run_once: F) -> Self
    where
        F: Fn(Client) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        Self {
            name,
            interval,
            run_once: Box::new(move |conn| Box::pin(run_once(conn))),
        }
    }
}

/// Run every maintenance service, and the `extra` passes, until `stop`.
pub async fn run(
    pool: Pool,
    worker: Arc<str>,
    settings: MaintenanceSettings,
    extra: Vec<Pass>,
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
        // Every half TTL: a dead worker's row goes within 1.5 TTLs of its last heartbeat.
        service("reaper", s.worker_ttl / 2, pool, worker, stop, |c| {
            reaper::run_once(c, s.worker_ttl)
        }),
        join_all(extra.iter().map(|p| service(
            p.name,
            p.interval,
            pool,
            worker,
            stop,
            &p.run_once
        ))),
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
    F: Fn(Client) -> Fut,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_default_and_the_retention_is_bounded() {
        let none: &[(&str, &str)] = &[];
        let s = MaintenanceSettings::from_source(none).unwrap();
        assert_eq!(
            s.rescue_interval,
            Duration::from_millis(DEFAULT_RESCUE_INTERVAL_MS)
        );
        assert_eq!(
            s.retention,
            Duration::from_secs(3600 * DEFAULT_RETENTION_HOURS)
        );
        let s = MaintenanceSettings::from_source(&[("JOB_RETENTION_SECS", "5")][..]).unwrap();
        assert_eq!(s.retention, Duration::from_secs(5));
        for (name, value) in [
            ("JOB_RETENTION_HOURS", "18446744073709551615"),
            ("JOB_RETENTION_HOURS", "876001"),
            ("WORKER_TTL_MS", "soon"),
        ] {
            let err = MaintenanceSettings::from_source(&[(name, value)][..]).unwrap_err();
            assert_eq!(err.name, name, "{value}: {err}");
        }
    }
}
