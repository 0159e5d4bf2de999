//! What a worker does with the rows it owns: fetch a batch, renew their leases, hand them back.
//!
//! A fetched job belongs to one attempt of one worker: `attempted_by` (the worker's id, one per
//! process start) and `attempt`. Every later write is fenced on both, so a worker whose lease
//! expired can never touch the job's next attempt.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::GenericClient;

use super::job::FetchedJob;
use super::{NOTIFY_CHANNEL, Result};

/// The fetch. `id = ANY(ARRAY(...))` keeps the outer UPDATE on the primary key (written as
/// `id IN (SELECT ...)`, a large batch on a big table can be planned as a full scan). The inner
/// scan walks `jobs_fetch_idx` in (priority, run_at, id) order over available rows only. A
/// paused queue yields nothing: the pause is read in the same statement, so every worker
/// honours it on its next fetch.
const FETCH: &str = "
UPDATE jobs
   SET state = 'running', attempt = attempt + 1, attempted_at = now(), attempted_by = $2,
       lease_expires_at = now() + make_interval(secs => $3)
 WHERE id = ANY(ARRAY(
         SELECT id FROM jobs
          WHERE state = 'available' AND queue = $1 AND run_at <= now()
            AND NOT EXISTS (SELECT 1 FROM queues WHERE name = $1 AND paused)
          ORDER BY priority, run_at, id
          LIMIT $4
          FOR UPDATE SKIP LOCKED))
RETURNING id, kind, args, attempt, max_attempts, run_at, meta, priority";

/// Claim up to `limit` available jobs of `queue` for `worker`, leased for `lease`.
pub async fn fetch(
    client: &impl GenericClient,
    queue: &Arc<str>,
    worker: &str,
    lease: Duration,
    limit: usize,
) -> Result<Vec<FetchedJob>> {
    let stmt = client.prepare_cached(FETCH).await?;
    let rows = client
        .query(
            &stmt,
            &[&&**queue, &worker, &lease.as_secs_f64(), &(limit as i64)],
        )
        .await?;
    let mut jobs = rows
        .iter()
        .map(|r| {
            let priority: i16 = r.try_get(7)?;
            let job = FetchedJob {
                id: r.try_get(0)?,
                queue: queue.clone(),
                kind: r.try_get(1)?,
                args: r.try_get(2)?,
                attempt: r.try_get(3)?,
                max_attempts: r.try_get(4)?,
                run_at: r.try_get(5)?,
                meta: r.try_get(6)?,
            };
            Ok((priority, job))
        })
        .collect::<Result<Vec<_>>>()?;
    // UPDATE ... RETURNING gives no order; hand jobs out in the order the queue promised.
    jobs.sort_unstable_by_key(|(priority, j)| (*priority, j.run_at, j.id));
    Ok(jobs.into_iter().map(|(_, j)| j).collect())
}

/// Prepare the fetch on `client`, ahead of its first use.
pub async fn prepare(client: &impl GenericClient) -> Result<()> {
    client.prepare_cached(FETCH).await?;
    Ok(())
}

const RENEW: &str = "
UPDATE jobs SET lease_expires_at = now() + make_interval(secs => $3)
 WHERE id = ANY($1) AND attempted_by = $2 AND state = 'running'";

/// Extend the leases of `ids` held by `worker`; returns how many were still ours.
pub async fn renew_leases(
    client: &impl GenericClient,
    ids: &[i64],
    worker: &str,
    lease: Duration,
) -> Result<u64> {
    if ids.is_empty() {
        return Ok(0);
    }
    let stmt = client.prepare_cached(RENEW).await?;
    Ok(client
        .execute(&stmt, &[&ids, &worker, &lease.as_secs_f64()])
        .await?)
}

const HAND_BACK: &str = "
WITH back AS (
  UPDATE jobs
     SET state = 'available', attempt = attempt - 1, lease_expires_at = NULL
   WHERE id = ANY($1) AND attempted_by = $2 AND state = 'running'
  RETURNING queue)
SELECT queue, count(*) FROM back GROUP BY queue";

/// Give jobs `worker` fetched but did not finish back to the queue as available, without
/// counting the interrupted attempt, and wake the other workers. Returns how many went back.
pub async fn hand_back(client: &impl GenericClient, ids: &[i64], worker: &str) -> Result<u64> {
    if ids.is_empty() {
        return Ok(0);
    }
    let stmt = client.prepare_cached(HAND_BACK).await?;
    let rows = client.query(&stmt, &[&ids, &worker]).await?;
    let mut total = 0;
    for r in &rows {
        let queue: String = r.get(0);
        total += r.get::<_, i64>(1) as u64;
        client
            .execute("SELECT pg_notify($1, $2)", &[&NOTIFY_CHANNEL, &queue])
            .await?;
    }
    Ok(total)
}

const HAND_BACK_UNSEEN: &str = "
WITH back AS (
  UPDATE jobs
     SET state = 'available', attempt = attempt - 1, lease_expires_at = NULL
   WHERE queue = $1 AND attempted_by = $2 AND state = 'running'
     AND attempted_at >= now() - make_interval(secs => $5)
     AND (id, attempt) NOT IN (SELECT * FROM unnest($3::bigint[], $4::int4[]))
  RETURNING 1)
SELECT count(*) FROM back";

/// After a fetch of `queue` by `worker` failed on a lost connection, which may have claimed
/// jobs whose reply never arrived: give back, as [`hand_back`] does, the running jobs of that
/// queue attempted by `worker` within the last `within` that are not among the attempts it
/// holds (`held`: job ids and attempts). No handler saw them, so no attempt is spent.
/// Returns how many went back.
pub async fn hand_back_unseen(
    client: &impl GenericClient,
    queue: &str,
    worker: &str,
    held: &[(i64, i32)],
    within: Duration,
) -> Result<u64> {
    let (ids, attempts): (Vec<i64>, Vec<i32>) = held.iter().copied().unzip();
    let stmt = client.prepare_cached(HAND_BACK_UNSEEN).await?;
    let row = client
        .query_one(
            &stmt,
            &[&queue, &worker, &ids, &attempts, &within.as_secs_f64()],
        )
        .await?;
    let n = row.get::<_, i64>(0) as u64;
    if n > 0 {
        client
            .execute("SELECT pg_notify($1, $2)", &[&NOTIFY_CHANNEL, &queue])
            .await?;
    }
    Ok(n)
}
