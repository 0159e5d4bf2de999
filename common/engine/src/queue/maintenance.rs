//! The statements of the maintenance services: claiming a pass, rescuing expired leases,
//! promoting due jobs, pruning old ones, the workers table and periodic ticks.
//!
//! The services themselves (intervals, loops) live in `worker`; each pass here is bounded, so
//! a million-row backlog is worked off in slices that never hold one giant lock.

use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;

use super::enqueue::{NewJob, enqueue};
use super::{NOTIFY_CHANNEL, QueueError, Result};

const CLAIM: &str = "
INSERT INTO maintenance_runs AS m (service, last_run_at, last_run_by, runs)
VALUES ($1, now(), $3, 1)
ON CONFLICT (service) DO UPDATE
   SET last_run_at = now(), last_run_by = $3, runs = m.runs + 1
 WHERE m.last_run_at <= now() - make_interval(secs => $2)
RETURNING runs";

/// Claim this interval's pass of `service` for `worker`. True for exactly one caller per
/// interval however many workers ask: the row lock serialises them, and the losers see the
/// winner's timestamp.
pub async fn claim(
    client: &impl GenericClient,
    service: &str,
    interval: Duration,
    worker: &str,
) -> Result<bool> {
    let stmt = client.prepare_cached(CLAIM).await?;
    Ok(client
        .query_opt(&stmt, &[&service, &interval.as_secs_f64(), &worker])
        .await?
        .is_some())
}

/// How many passes of `service` have run (for tests and the dashboard).
pub async fn runs(client: &impl GenericClient, service: &str) -> Result<i64> {
    let row = client
        .query_opt(
            "SELECT runs FROM maintenance_runs WHERE service = $1",
            &[&service],
        )
        .await?;
    Ok(row.map_or(0, |r| r.get(0)))
}

const RESCUE: &str = "
WITH expired AS (
  SELECT id FROM jobs
   WHERE state = 'running' AND lease_expires_at < now()
   ORDER BY lease_expires_at
   LIMIT $1
   FOR UPDATE SKIP LOCKED)
UPDATE jobs j
   SET state = CASE WHEN j.attempt >= j.max_attempts THEN 'discarded' ELSE 'available' END::job_state,
       finished_at = CASE WHEN j.attempt >= j.max_attempts THEN now() END,
       run_at = now(),
       lease_expires_at = NULL,
       errors = j.errors || jsonb_build_array(jsonb_build_object(
                  'attempt', j.attempt, 'at', now(), 'kind', 'lease_expired',
                  'message', 'the lease of worker ' || j.attempted_by || ' expired: the worker stopped or lost the database'))
  FROM expired
 WHERE j.id = expired.id
RETURNING j.queue, j.state = 'available'";

/// What a rescue pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Rescued {
    /// Made available for another attempt.
    pub retried: u64,
    /// Discarded: their last attempt's worker died.
    pub discarded: u64,
}

/// Take back up to `limit` running jobs whose lease expired: available again (or discarded if
/// that was their last attempt), with the lost attempt recorded. Wakes the workers of their
/// queues.
pub async fn rescue(client: &impl GenericClient, limit: usize) -> Result<Rescued> {
    let stmt = client.prepare_cached(RESCUE).await?;
    let rows = client.query(&stmt, &[&(limit as i64)]).await?;
    let mut out = Rescued::default();
    let mut queues = Vec::new();
    for r in &rows {
        if r.get::<_, bool>(1) {
            out.retried += 1;
            queues.push(r.get::<_, String>(0));
        } else {
            out.discarded += 1;
        }
    }
    notify(client, queues).await?;
    Ok(out)
}

const PROMOTE: &str = "
WITH due AS (
  SELECT id FROM jobs
   WHERE state IN ('scheduled', 'retryable') AND run_at <= now()
   ORDER BY run_at
   LIMIT $1
   FOR UPDATE SKIP LOCKED)
UPDATE jobs j SET state = 'available'
  FROM due WHERE j.id = due.id
RETURNING j.queue";

/// Make up to `limit` due scheduled and retryable jobs available and wake their queues'
/// workers. Returns how many were promoted and when the next one falls due.
pub async fn promote_due(
    client: &impl GenericClient,
    limit: usize,
) -> Result<(u64, Option<DateTime<Utc>>)> {
    let stmt = client.prepare_cached(PROMOTE).await?;
    let rows = client.query(&stmt, &[&(limit as i64)]).await?;
    let n = rows.len() as u64;
    notify(client, rows.iter().map(|r| r.get::<_, String>(0)).collect()).await?;
    let next = client
        .prepare_cached("SELECT min(run_at) FROM jobs WHERE state IN ('scheduled', 'retryable')")
        .await?;
    let next: Option<DateTime<Utc>> = client.query_one(&next, &[]).await?.get(0);
    Ok((n, next))
}

const PRUNE: &str = "
DELETE FROM jobs WHERE id = ANY(ARRAY(
  SELECT id FROM jobs
   WHERE state IN ('completed', 'discarded', 'cancelled')
     AND finished_at < now() - make_interval(secs => $1)
   LIMIT $2))";

/// Delete up to `limit` finished jobs older than `retention`. Returns how many went.
pub async fn prune(client: &impl GenericClient, retention: Duration, limit: usize) -> Result<u64> {
    let stmt = client.prepare_cached(PRUNE).await?;
    let n = client
        .execute(&stmt, &[&retention.as_secs_f64(), &(limit as i64)])
        .await?;
    client
        .execute(
            "DELETE FROM periodic_ticks WHERE tick_at < now() - make_interval(secs => $1)",
            &[&retention.as_secs_f64()],
        )
        .await?;
    Ok(n)
}

async fn notify(client: &impl GenericClient, mut queues: Vec<String>) -> Result<()> {
    if queues.is_empty() {
        return Ok(());
    }
    queues.sort_unstable();
    queues.dedup();
    client
        .execute(
            "SELECT pg_notify($1, q) FROM unnest($2::text[]) AS q",
            &[&NOTIFY_CHANNEL, &queues],
        )
        .await?;
    Ok(())
}

/// A live worker process, as it announces itself.
#[derive(Debug, Clone)]
pub struct WorkerInfo {
    /// Unique per process start.
    pub id: String,
    /// The host it runs on (informational: containers reuse host names).
    pub host: String,
    /// Its process id.
    pub pid: i32,
    /// The queues it serves.
    pub queues: Vec<String>,
    /// Its job slots, over all queues.
    pub concurrency: i32,
}

/// Announce or refresh `worker`, with its current in-flight count.
pub async fn heartbeat(
    client: &impl GenericClient,
    worker: &WorkerInfo,
    in_flight: i32,
) -> Result<()> {
    let stmt = client
        .prepare_cached(
            "INSERT INTO workers (id, host, pid, queues, concurrency, in_flight) VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (id) DO UPDATE SET heartbeat_at = now(), in_flight = EXCLUDED.in_flight",
        )
        .await?;
    client
        .execute(
            &stmt,
            &[
                &worker.id,
                &worker.host,
                &worker.pid,
                &worker.queues,
                &worker.concurrency,
                &in_flight,
            ],
        )
        .await?;
    Ok(())
}

/// Remove `worker` from the workers table (clean shutdown).
pub async fn deregister(client: &impl GenericClient, worker: &str) -> Result<()> {
    client
        .execute("DELETE FROM workers WHERE id = $1", &[&worker])
        .await?;
    Ok(())
}

/// Delete workers whose last heartbeat is older than `max_age`. Returns how many.
pub async fn reap_workers(client: &impl GenericClient, max_age: Duration) -> Result<u64> {
    Ok(client
        .execute(
            "DELETE FROM workers WHERE heartbeat_at < now() - make_interval(secs => $1)",
            &[&max_age.as_secs_f64()],
        )
        .await?)
}

/// Enqueue `job` for tick `tick_at` of the periodic schedule `name`, unless some worker already
/// did: the tick's row and the job commit together, so each tick yields exactly one job
/// however many workers race for it. Returns the job's id when this call enqueued it.
pub async fn enqueue_tick(
    client: &mut deadpool_postgres::Client,
    name: &str,
    tick_at: DateTime<Utc>,
    job: &NewJob,
) -> Result<Option<i64>, QueueError> {
    let tx = client.transaction().await?;
    let id = enqueue(&tx, job).await?.id;
    let taken = tx
        .execute(
            "INSERT INTO periodic_ticks (name, tick_at, job_id) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            &[&name, &tick_at, &id],
        )
        .await?;
    if taken == 0 {
        // Another worker has this tick; our job goes with the rolled-back transaction.
        tx.rollback().await?;
        return Ok(None);
    }
    tx.commit().await?;
    Ok(Some(id))
}
