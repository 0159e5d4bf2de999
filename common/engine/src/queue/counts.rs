//! Job counts by queue and state, and finishes per minute, read without counting the jobs
//! table.
//!
//! Statement-level triggers record each statement's net change per (queue, state) in
//! `job_count_deltas` (`migrations/V6__job_counts.sql`); [`fold`], a maintenance pass, moves
//! them into `job_counts` and `queue_minutes`. Readers add the folded totals and the deltas
//! not folded yet, so the figures are exact at the reader's snapshot and cost a few hundred
//! rows however many jobs there are.

use std::time::Duration;

use deadpool_postgres::GenericClient;

use super::Result;
use super::job::JobState;

const FOLD: &str = "
WITH d AS (DELETE FROM job_count_deltas RETURNING queue, state, n, at),
totals AS (
  INSERT INTO job_counts (queue, state, n)
  SELECT queue, state, sum(n) FROM d GROUP BY queue, state
  ON CONFLICT (queue, state) DO UPDATE SET n = job_counts.n + excluded.n),
minutes AS (
  INSERT INTO queue_minutes (queue, minute, completed, discarded)
  SELECT queue, date_trunc('minute', at),
         coalesce(sum(n) FILTER (WHERE state = 'completed'), 0),
         coalesce(sum(n) FILTER (WHERE state = 'discarded'), 0)
    FROM d
   WHERE n > 0 AND state IN ('completed', 'discarded')
   GROUP BY queue, date_trunc('minute', at)
  ON CONFLICT (queue, minute) DO UPDATE
    SET completed = queue_minutes.completed + excluded.completed,
        discarded = queue_minutes.discarded + excluded.discarded)
SELECT count(*) FROM d";

/// Fold the recorded changes into the totals and the per-minute finishes. Returns how many
/// delta rows were folded. Safe to run concurrently: a delta is deleted, and so counted, once.
pub async fn fold(client: &impl GenericClient) -> Result<i64> {
    let stmt = client.prepare_cached(FOLD).await?;
    Ok(client.query_one(&stmt, &[]).await?.get(0))
}

const PRUNE_MINUTES: &str =
    "DELETE FROM queue_minutes WHERE minute < now() - make_interval(secs => $1)";

/// Forget per-minute finishes older than `keep`.
pub async fn prune_minutes(client: &impl GenericClient, keep: Duration) -> Result<u64> {
    let stmt = client.prepare_cached(PRUNE_MINUTES).await?;
    Ok(client.execute(&stmt, &[&keep.as_secs_f64()]).await?)
}

/// How many jobs of one queue are in one state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueDepth {
    /// The queue.
    pub queue: String,
    /// The state.
    pub state: JobState,
    /// How many jobs.
    pub count: i64,
}

const DEPTH: &str = "
SELECT queue, state, sum(n)::bigint
  FROM (SELECT queue, state, n FROM job_counts
        UNION ALL
        SELECT queue, state, n FROM job_count_deltas) AS c
 GROUP BY queue, state
HAVING sum(n) <> 0
 ORDER BY queue, state";

/// Jobs by queue and state; combinations with no jobs are absent.
pub async fn depth(client: &impl GenericClient) -> Result<Vec<QueueDepth>> {
    let stmt = client.prepare_cached(DEPTH).await?;
    Ok(client
        .query(&stmt, &[])
        .await?
        .iter()
        .map(|r| QueueDepth {
            queue: r.get(0),
            state: r.get(1),
            count: r.get(2),
        })
        .collect())
}

/// Jobs of one queue that finished over a recent span.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    /// The queue.
    pub queue: String,
    /// Completed.
    pub completed: i64,
    /// Discarded (failed for good).
    pub discarded: i64,
}

const FINISHED_SINCE: &str = "
SELECT queue, sum(completed)::bigint, sum(discarded)::bigint
  FROM (SELECT queue, completed, discarded FROM queue_minutes
         WHERE minute >= date_trunc('minute', now() - make_interval(secs => $1))
        UNION ALL
        SELECT queue,
               CASE WHEN state = 'completed' THEN n ELSE 0 END,
               CASE WHEN state = 'discarded' THEN n ELSE 0 END
          FROM job_count_deltas
         WHERE n > 0 AND state IN ('completed', 'discarded')) AS f
 GROUP BY queue
 ORDER BY queue";

/// Jobs finished per queue over the last `span`, to the minute (the minute `span` ago counts
/// whole).
pub async fn finished_since(client: &impl GenericClient, span: Duration) -> Result<Vec<Finished>> {
    let stmt = client.prepare_cached(FINISHED_SINCE).await?;
    Ok(client
        .query(&stmt, &[&span.as_secs_f64()])
        .await?
        .iter()
        .map(|r| Finished {
            queue: r.get(0),
            completed: r.get(1),
            discarded: r.get(2),
        })
        .collect())
}

/// Ten index probes per queue, one per priority, on `jobs_fetch_idx`: the oldest due time
/// without reading every available job.
const OLDEST_AVAILABLE: &str = "
SELECT q.queue, extract(epoch FROM now() - min(o.run_at))::float8
  FROM unnest($1::text[]) AS q(queue)
 CROSS JOIN generate_series(0, 9) AS p(priority)
 CROSS JOIN LATERAL (
       SELECT run_at FROM jobs
        WHERE state = 'available' AND queue = q.queue AND priority = p.priority
        ORDER BY run_at LIMIT 1) AS o
 GROUP BY q.queue";

/// Seconds since the oldest available job of each of `queues` became due; queues with none
/// available are absent.
pub async fn oldest_available(
    client: &impl GenericClient,
    queues: &[String],
) -> Result<Vec<(String, f64)>> {
    let stmt = client.prepare_cached(OLDEST_AVAILABLE).await?;
    Ok(client
        .query(&stmt, &[&queues])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}
