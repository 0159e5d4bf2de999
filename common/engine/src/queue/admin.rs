//! Reads and bulk actions for operators and the API: queue depth, per-queue statistics,
//! listing and filtering jobs, and the workers table.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use serde::Serialize;

use super::counts;
use super::job::{JOB_COLUMNS, JobRow, JobState};
use super::limits::QueueLimits;
use super::{NOTIFY_CHANNEL, Result};
use crate::names::QueueName;

/// The span of the per-minute averages.
const HOUR: std::time::Duration = std::time::Duration::from_secs(3600);

pub use super::counts::{QueueDepth, depth};

/// Which jobs a listing or a bulk action is about; `None` fields match everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct JobFilter {
    /// Only this queue.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<QueueName>,
    /// Only this kind.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Only this state.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<JobState>,
    /// Only jobs with this tag.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// Only jobs created at or after this time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_after: Option<DateTime<Utc>>,
    /// Only jobs created before this time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_before: Option<DateTime<Utc>>,
}

impl JobFilter {
    /// True when nothing is filtered: every job matches.
    pub fn is_empty(&self) -> bool {
        *self == JobFilter::default()
    }
}

/// The filter as SQL over `jobs j`, parameters `$1` to `$6` in [`JobFilter`]'s field order.
macro_rules! job_filter {
    () => {
        "($1::text IS NULL OR j.queue = $1)
     AND ($2::text IS NULL OR j.kind = $2)
     AND ($3::job_state IS NULL OR j.state = $3)
     AND ($4::text IS NULL OR j.tags @> ARRAY[$4::text])
     AND ($5::timestamptz IS NULL OR j.created_at >= $5)
     AND ($6::timestamptz IS NULL OR j.created_at < $6)"
    };
}

/// Follows `SELECT {JOB_COLUMNS}`.
const LIST_JOBS_FROM: &str = concat!(
    "FROM jobs j WHERE ",
    job_filter!(),
    " AND ($7::bigint IS NULL OR j.id < $7) ORDER BY j.id DESC LIMIT $8"
);

/// Jobs matching `filter`, newest first, with ids below `before` (keyset pagination: pass
/// the last id of the previous page), at most `limit`.
pub async fn list_jobs(
    client: &impl GenericClient,
    filter: &JobFilter,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<JobRow>> {
    let sql = format!("SELECT {JOB_COLUMNS} {LIST_JOBS_FROM}");
    let stmt = client.prepare_cached(&sql).await?;
    let rows = client
        .query(
            &stmt,
            &[
                &filter.queue,
                &filter.kind,
                &filter.state,
                &filter.tag,
                &filter.created_after,
                &filter.created_before,
                &before,
                &limit,
            ],
        )
        .await?;
    Ok(rows
        .iter()
        .map(JobRow::try_from)
        .collect::<Result<Vec<_>, _>>()?)
}

/// Follows `SELECT {JOB_COLUMNS}`.
const JOBS_BY_IDS: &str = "FROM jobs j WHERE j.id = ANY($1) ORDER BY j.id";

/// The jobs with these ids that still exist, oldest first: ids of pruned jobs are skipped.
/// The application keeps which jobs belong to its rows (an order's, say) and reads
/// them here, so the jobs table needs no index on anyone's args.
pub async fn jobs_by_ids(client: &impl GenericClient, ids: &[i64]) -> Result<Vec<JobRow>> {
    let sql = format!("SELECT {JOB_COLUMNS} {JOBS_BY_IDS}");
    let stmt = client.prepare_cached(&sql).await?;
    Ok(client
        .query(&stmt, &[&ids])
        .await?
        .iter()
        .map(JobRow::try_from)
        .collect::<Result<Vec<_>, _>>()?)
}

/// Rows a bulk action changes per statement: each batch commits on its own, so a
/// million-row action never holds a million row locks, and workers interleave with it.
pub const BULK_BATCH: i64 = 1000;

// A bulk action walks the ids once, in order: each batch takes the matching rows after the
// last id the previous batch looked at ($7), up to the newest id when the action started
// ($8). A job is therefore touched at most once per action, even if it matches again
// between batches (a retried job that completes meanwhile), and jobs enqueued during the
// action are left alone. Re-selecting the filter per batch instead ran such jobs again and
// again. Every statement returns (rows looked at, last id looked at, rows changed).

/// The newest id when a bulk action starts: its upper bound.
const NEWEST_ID: &str = "SELECT coalesce(max(id), 0) FROM jobs";

const BULK_CANCEL: &str = concat!(
    "WITH batch AS (SELECT j.id FROM jobs j WHERE ",
    job_filter!(),
    " AND j.state NOT IN ('completed', 'discarded', 'cancelled')
      AND j.id > $7 AND j.id <= $8 ORDER BY j.id LIMIT $9 FOR UPDATE),
done AS (
  UPDATE jobs SET state = 'cancelled', finished_at = now(), lease_expires_at = NULL
    FROM batch WHERE jobs.id = batch.id
  RETURNING jobs.queue)
SELECT (SELECT count(*) FROM batch), (SELECT max(id) FROM batch), (SELECT count(*) FROM done),
       ARRAY[]::text[]"
);

/// Cancel every unfinished job matching `filter`, `batch` rows per statement. Returns how
/// many were cancelled. Running jobs are cancelled too; their workers' late outcomes are
/// refused by the fence.
pub async fn bulk_cancel(
    client: &impl GenericClient,
    filter: &JobFilter,
    batch: i64,
) -> Result<u64> {
    in_batches(client, Bulk::Cancel, filter, batch).await
}

const BULK_DELETE: &str = concat!(
    "WITH batch AS (SELECT j.id FROM jobs j WHERE ",
    job_filter!(),
    " AND j.state <> 'running' AND j.id > $7 AND j.id <= $8 ORDER BY j.id LIMIT $9 FOR UPDATE),
done AS (DELETE FROM jobs USING batch WHERE jobs.id = batch.id RETURNING jobs.id)
SELECT (SELECT count(*) FROM batch), (SELECT max(id) FROM batch), (SELECT count(*) FROM done),
       ARRAY[]::text[]"
);

/// Delete every job matching `filter` except running ones (cancel those first), `batch`
/// rows per statement. Returns how many were deleted.
pub async fn bulk_delete(
    client: &impl GenericClient,
    filter: &JobFilter,
    batch: i64,
) -> Result<u64> {
    in_batches(client, Bulk::Delete, filter, batch).await
}

const BULK_RETRY: &str = concat!(
    "WITH batch AS (
  SELECT j.id, j.unique_key FROM jobs j WHERE ",
    job_filter!(),
    " AND j.state IN ('scheduled', 'retryable', 'completed', 'discarded', 'cancelled')
    AND j.id > $7 AND j.id <= $8
    AND (j.unique_key IS NULL OR NOT EXISTS (
          SELECT 1 FROM jobs o
           WHERE o.unique_key = j.unique_key
             AND o.state IN ('available', 'scheduled', 'running', 'retryable') AND o.id <> j.id))
  ORDER BY j.id LIMIT $9 FOR UPDATE),
pick AS (SELECT min(id) AS id FROM batch GROUP BY coalesce(unique_key, id::text)),
retried AS (
  UPDATE jobs j SET state = 'available', run_at = now(), finished_at = NULL,
                    max_attempts = greatest(j.max_attempts, j.attempt + 1)
    FROM pick WHERE j.id = pick.id
  RETURNING j.queue)
SELECT (SELECT count(*) FROM batch), (SELECT max(id) FROM batch), (SELECT count(*) FROM retried),
       ARRAY(SELECT DISTINCT queue FROM retried)"
);

/// Make every job matching `filter` that is waiting or finished available to run now (with
/// a fresh attempt if it had used its budget), `batch` rows per statement, waking the
/// workers of the queues concerned. Running and available jobs are left alone, and of jobs
/// sharing a unique key only one is retried, never one whose key an unfinished job holds.
/// Each job is retried at most once per call, even if it runs and matches again before the
/// call ends. Returns how many were retried.
pub async fn bulk_retry(
    client: &impl GenericClient,
    filter: &JobFilter,
    batch: i64,
) -> Result<u64> {
    in_batches(client, Bulk::Retry, filter, batch).await
}

/// A bulk action of operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bulk {
    /// [`bulk_retry`].
    Retry,
    /// [`bulk_cancel`].
    Cancel,
    /// [`bulk_delete`].
    Delete,
}

/// A bulk action under way: its bounds, from [`bulk_start`], advanced by each
/// [`bulk_batch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BulkRun {
    action: Bulk,
    /// The newest id when the action started.
    newest: i64,
    /// The last id a batch looked at.
    after: i64,
}

/// Start `action`: it will touch jobs up to the newest id now.
pub async fn bulk_start(client: &impl GenericClient, action: Bulk) -> Result<BulkRun> {
    let newest: i64 = client.query_one(NEWEST_ID, &[]).await?.get(0);
    Ok(BulkRun {
        action,
        newest,
        after: 0,
    })
}

/// One batch of `run`: at most `batch` rows matching `filter` after the last batch's, waking
/// the workers of the queues it made available. Returns how many rows it changed, or `None`
/// when it found no row: the action is done. The bulk functions run these until `None`; a
/// caller that records each batch (the audit log) runs each in its own transaction with the
/// record.
pub async fn bulk_batch(
    client: &impl GenericClient,
    run: &mut BulkRun,
    filter: &JobFilter,
    batch: i64,
) -> Result<Option<u64>> {
    let sql = match run.action {
        Bulk::Retry => BULK_RETRY,
        Bulk::Cancel => BULK_CANCEL,
        Bulk::Delete => BULK_DELETE,
    };
    let stmt = client.prepare_cached(sql).await?;
    let row = client
        .query_one(
            &stmt,
            &[
                &filter.queue,
                &filter.kind,
                &filter.state,
                &filter.tag,
                &filter.created_after,
                &filter.created_before,
                &run.after,
                &run.newest,
                &batch,
            ],
        )
        .await?;
    let (seen, last, changed, queues): (i64, Option<i64>, i64, Vec<String>) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    for queue in &queues {
        client
            .execute("SELECT pg_notify($1, $2)", &[&NOTIFY_CHANNEL, queue])
            .await?;
    }
    match last {
        Some(last) if seen > 0 => {
            run.after = last;
            Ok(Some(changed as u64))
        }
        _ => Ok(None),
    }
}

/// Run `action` (a bulk action on at most `batch` rows matching `filter` in an id range)
/// from the oldest id to the newest at the start, until a run finds no row: a run can find
/// fewer than `batch` and still not be the last, when rows it waited for changed under it.
/// Returns how many rows it changed in all.
async fn in_batches(
    client: &impl GenericClient,
    action: Bulk,
    filter: &JobFilter,
    batch: i64,
) -> Result<u64> {
    let mut run = bulk_start(client, action).await?;
    let mut total = 0;
    while let Some(changed) = bulk_batch(client, &mut run, filter, batch).await? {
        total += changed;
    }
    Ok(total)
}

/// One queue's state for operators.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueStats {
    /// The queue.
    pub name: String,
    /// Workers do not fetch from it.
    pub paused: bool,
    /// Jobs by state (every state, in [`JobState::ALL`] order, zeros included).
    pub counts: Vec<(JobState, i64)>,
    /// Seconds the oldest available job has been due; `None` when none is available.
    pub oldest_available_age_s: Option<f64>,
    /// Jobs completed per minute, averaged over the last hour.
    pub completed_per_minute: f64,
    /// Jobs discarded (failed for good) per minute, averaged over the last hour.
    pub failed_per_minute: f64,
    /// Its concurrency limits.
    pub limits: QueueLimits,
}

const PAUSED: &str = "SELECT name, paused, max_running, max_running_per_key, concurrency_key_path
  FROM queues";

/// Every queue that has jobs or settings, by name. Reads the maintained counts (see
/// [`super::counts`]), never the whole jobs table, so it stays fast with millions of jobs.
pub async fn queue_stats(client: &impl GenericClient) -> Result<Vec<QueueStats>> {
    let depth = depth(client).await?;
    let finished = counts::finished_since(client, HOUR).await?;
    let settings: BTreeMap<String, (bool, QueueLimits)> = client
        .query(PAUSED, &[])
        .await?
        .iter()
        .map(|r| {
            let limits = super::limits::from_row(r.get(2), r.get(3), r.get(4));
            (r.get(0), (r.get(1), limits))
        })
        .collect();
    let with_available: Vec<String> = depth
        .iter()
        .filter(|d| d.state == JobState::Available)
        .map(|d| d.queue.clone())
        .collect();
    let oldest: BTreeMap<String, f64> = counts::oldest_available(client, &with_available)
        .await?
        .into_iter()
        .collect();
    let names: BTreeSet<String> = depth
        .iter()
        .map(|d| d.queue.clone())
        .chain(settings.keys().cloned())
        .collect();
    let per_minute = |n: i64| n as f64 / 60.0;
    Ok(names
        .into_iter()
        .map(|name| {
            let counts = JobState::ALL
                .iter()
                .map(|s| {
                    let n = depth
                        .iter()
                        .find(|d| d.queue == name && d.state == *s)
                        .map_or(0, |d| d.count);
                    (*s, n)
                })
                .collect();
            let done = finished.iter().find(|f| f.queue == name);
            let (paused, limits) = settings.get(&name).cloned().unwrap_or_default();
            QueueStats {
                paused,
                limits,
                counts,
                oldest_available_age_s: oldest.get(&name).copied(),
                completed_per_minute: done.map_or(0.0, |f| per_minute(f.completed)),
                failed_per_minute: done.map_or(0.0, |f| per_minute(f.discarded)),
                name,
            }
        })
        .collect())
}

/// A live worker process, as it last reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Worker {
    /// Unique per process start.
    pub id: String,
    /// Its host.
    pub host: String,
    /// Its process id.
    pub pid: i32,
    /// The queues it serves.
    pub queues: Vec<String>,
    /// Its job slots.
    pub concurrency: i32,
    /// Jobs it held at its last heartbeat.
    pub in_flight: i32,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// Its last heartbeat.
    pub heartbeat_at: DateTime<Utc>,
}

const WORKERS: &str = "
SELECT id, host, pid, queues, concurrency, in_flight, started_at, heartbeat_at
  FROM workers ORDER BY started_at, id";

/// Every worker in the workers table (silent ones are reaped by maintenance).
pub async fn list_workers(client: &impl GenericClient) -> Result<Vec<Worker>> {
    Ok(client
        .query(WORKERS, &[])
        .await?
        .iter()
        .map(|r| Worker {
            id: r.get(0),
            host: r.get(1),
            pid: r.get(2),
            queues: r.get(3),
            concurrency: r.get(4),
            in_flight: r.get(5),
            started_at: r.get(6),
            heartbeat_at: r.get(7),
        })
        .collect())
}
