//! What a worker does with the rows it owns: fetch a batch, renew their leases, hand them back.
//!
//! A fetched job belongs to one attempt of one worker: `attempted_by` (the worker's id, one per
//! process start) and `attempt`. Every later write is fenced on both, so a worker whose lease
//! expired can never touch the job's next attempt.
//!
//! Two fetches. A queue without a concurrency limit is fetched by [`fetch`], one statement
//! that refuses limited queues. A limited queue (see [`super::limits`]) is fetched by
//! [`fetch_limited`]: a short transaction that first takes the queue's transaction-level
//! advisory lock, so limited fetches of one queue run one at a time across the cluster, and
//! then counts the queue's running jobs (by key) in a statement whose snapshot is taken after
//! the lock, so it sees every job the previous holder took. Only a fetch makes a job
//! `running`; everything else (outcomes, the rescuer, hand-backs) only lowers the count, so
//! a limit can never be exceeded. A rescued job is `available` again before it can be
//! fetched, so its slot is counted once.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::GenericClient;

use super::job::FetchedJob;
use super::{NOTIFY_CHANNEL, Result};

/// The fetch. `id = ANY(ARRAY(...))` keeps the outer UPDATE on the primary key (written as
/// `id IN (SELECT ...)`, a large batch on a big table can be planned as a full scan). The inner
/// scan walks `jobs_fetch_idx` in (priority, run_at, id) order over available rows only. A
/// paused queue yields nothing: the pause is read in the same statement, so every worker
/// honours it on its next fetch. So is a limit: a limited queue yields nothing here, so a worker
/// that has not yet seen the limit can never take a job past it ([`fetch_limited`] does).
const FETCH: &str = "
UPDATE jobs
   SET state = 'running', attempt = attempt + 1, attempted_at = now(), attempted_by = $2,
       lease_expires_at = now() + make_interval(secs => $3)
 WHERE id = ANY(ARRAY(
         SELECT id FROM jobs
          WHERE state = 'available' AND queue = $1 AND run_at <= now()
            AND NOT EXISTS (SELECT 1 FROM queues WHERE name = $1 AND (paused
                 OR max_running IS NOT NULL OR max_running_per_key IS NOT NULL))
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
    to_jobs(queue, &rows)
}

fn to_jobs(queue: &Arc<str>, rows: &[tokio_postgres::Row]) -> Result<Vec<FetchedJob>> {
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

/// The class of the advisory locks that serialise limited fetches: the lock is
/// `(LIMITED_FETCH_LOCK, hashtext(queue))`. Two queues whose names hash alike only share
/// turns. Two-key advisory locks never collide with one-key ones (the migration lock).
pub const LIMITED_FETCH_LOCK: i32 = 0x5155_4c46; // "QULF"

const LOCK_QUEUE: &str = "SELECT pg_advisory_xact_lock($1, hashtext($2))";

/// The limited fetch, run under the queue's advisory lock. `$1` queue, `$2` worker, `$3`
/// lease seconds, `$4` free slots, `$5` how many available rows to consider.
///
/// `running` reads the queue's running jobs through `jobs_lease_idx` (only running rows, as
/// many as the cluster's slots at most), with each job's key: its `concurrency_key`, else
/// its args at the queue's key path. `room` is what the queue limit leaves. `candidates` walks the available
/// rows in the queue's order, skipping keys already at their limit (a hashed `NOT IN`: as an
/// anti-join against the CTE it was planned as a nested loop, 3.3 s over 19,000 rows of busy
/// keys; hashed, 7 ms), so a busy key never blocks the rest of the queue (head-of-line); the
/// window of `$5` rows bounds what it takes, and keys inside it may still hold more rows than
/// they have room for. Rows of keys at their limit are walked past, not counted: a backlog of
/// them ahead of the first free key costs each fetch a walk over it. `chosen` keeps, per key,
/// only as many as the key has room for (`row_number()` over the key), and at most `room`
/// in all. A job without a key is bound by the queue limit alone. A paused queue, or one
/// without a row, yields nothing (`q` is empty).
const FETCH_LIMITED: &str = "
WITH q AS (
  SELECT max_running, max_running_per_key, concurrency_key_path AS path
    FROM queues WHERE name = $1 AND NOT paused),
running AS (
  SELECT coalesce(j.concurrency_key, j.args #>> (SELECT path FROM q)) AS key
    FROM jobs j WHERE j.state = 'running' AND j.queue = $1),
busy AS (
  SELECT key, count(*) AS n FROM running WHERE key IS NOT NULL GROUP BY key),
room AS (
  SELECT greatest(0, least($4::bigint,
           coalesce(q.max_running - (SELECT count(*) FROM running), $4::bigint))) AS n
    FROM q),
candidates AS (
  SELECT j.id, j.priority, j.run_at,
         coalesce(j.concurrency_key, j.args #>> (SELECT path FROM q)) AS key
    FROM jobs j
   WHERE j.state = 'available' AND j.queue = $1 AND j.run_at <= now()
     AND EXISTS (SELECT 1 FROM q)
     AND (coalesce(j.concurrency_key, j.args #>> (SELECT path FROM q)) IS NULL
          OR coalesce(j.concurrency_key, j.args #>> (SELECT path FROM q)) NOT IN (
               SELECT key FROM busy WHERE n >= (SELECT max_running_per_key FROM q)))
   ORDER BY j.priority, j.run_at, j.id
   LIMIT $5
   FOR UPDATE OF j SKIP LOCKED),
chosen AS (
  SELECT c.id
    FROM (SELECT c.*, row_number() OVER (PARTITION BY c.key
                                         ORDER BY c.priority, c.run_at, c.id) AS nth
            FROM candidates c) c
    LEFT JOIN busy b ON b.key = c.key
   WHERE c.key IS NULL OR (SELECT max_running_per_key FROM q) IS NULL
      OR c.nth + coalesce(b.n, 0) <= (SELECT max_running_per_key FROM q)
   ORDER BY c.priority, c.run_at, c.id
   LIMIT coalesce((SELECT n FROM room), 0))
UPDATE jobs
   SET state = 'running', attempt = attempt + 1, attempted_at = now(), attempted_by = $2,
       lease_expires_at = now() + make_interval(secs => $3)
 WHERE id = ANY(ARRAY(SELECT id FROM chosen)) AND state = 'available'
RETURNING id, kind, args, attempt, max_attempts, run_at, meta, priority";

/// How many available rows a limited fetch for `limit` free slots considers: enough that
/// keys at their limit or with little room rarely leave slots empty.
fn limited_window(limit: usize) -> i64 {
    (limit as i64).saturating_mul(4).max(64)
}

/// Claim up to `limit` available jobs of a limited `queue` for `worker`, leased for `lease`,
/// without taking the queue or any key past its limit. Safe for an unlimited queue too (it
/// is then only slower than [`fetch`]). Runs its own transaction on `client`.
pub async fn fetch_limited(
    client: &mut impl GenericClient,
    queue: &Arc<str>,
    worker: &str,
    lease: Duration,
    limit: usize,
) -> Result<Vec<FetchedJob>> {
    let tx = client.transaction().await?;
    let lock = tx.prepare_cached(LOCK_QUEUE).await?;
    tx.execute(&lock, &[&LIMITED_FETCH_LOCK, &&**queue]).await?;
    let stmt = tx.prepare_cached(FETCH_LIMITED).await?;
    let rows = tx
        .query(
            &stmt,
            &[
                &&**queue,
                &worker,
                &lease.as_secs_f64(),
                &(limit as i64),
                &limited_window(limit),
            ],
        )
        .await?;
    tx.commit().await?;
    to_jobs(queue, &rows)
}

/// Prepare the fetch on `client`, ahead of its first use.
pub async fn prepare(client: &impl GenericClient) -> Result<()> {
    client.prepare_cached(FETCH).await?;
    client.prepare_cached(LOCK_QUEUE).await?;
    client.prepare_cached(FETCH_LIMITED).await?;
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
