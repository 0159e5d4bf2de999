//! Operator actions and reads: look a job up, count by state, pause and resume a queue,
//! cancel or retry a job.

use std::collections::BTreeMap;

use deadpool_postgres::GenericClient;

use super::job::{JOB_COLUMNS, JobRow, JobState};
use super::{NOTIFY_CHANNEL, Result};
use crate::names::QueueName;

/// The job with `id`, if it exists.
pub async fn get(client: &impl GenericClient, id: i64) -> Result<Option<JobRow>> {
    let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1");
    let row = client.query_opt(&sql, &[&id]).await?;
    Ok(row.as_ref().map(JobRow::try_from).transpose()?)
}

/// How many jobs of `queue` (every queue when `None`) are in each state.
pub async fn count_by_state(
    client: &impl GenericClient,
    queue: Option<&str>,
) -> Result<BTreeMap<String, i64>> {
    let rows = client
        .query(
            "SELECT state::text, count(*) FROM jobs WHERE $1::text IS NULL OR queue = $1 GROUP BY state",
            &[&queue],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Stop every worker fetching from `queue` (jobs already running finish).
pub async fn pause(client: &impl GenericClient, queue: &QueueName) -> Result<()> {
    set_paused(client, queue, true).await
}

/// Let workers fetch from `queue` again, and wake them.
pub async fn resume(client: &impl GenericClient, queue: &QueueName) -> Result<()> {
    set_paused(client, queue, false).await?;
    client
        .execute("SELECT pg_notify($1, $2)", &[&NOTIFY_CHANNEL, &queue])
        .await?;
    Ok(())
}

async fn set_paused(client: &impl GenericClient, queue: &QueueName, paused: bool) -> Result<()> {
    client
        .execute(
            "INSERT INTO queues (name, paused) VALUES ($1, $2)
             ON CONFLICT (name) DO UPDATE SET paused = $2, updated_at = now()",
            &[&queue, &paused],
        )
        .await?;
    Ok(())
}

/// Cancel a job that has not finished. A running job is cancelled too: its worker's late
/// outcome is refused by the fence. Returns the state it was in, or `None` when it was
/// already final or does not exist.
pub async fn cancel(client: &impl GenericClient, id: i64) -> Result<Option<JobState>> {
    let row = client
        .query_opt(
            "WITH old AS (SELECT id, state FROM jobs WHERE id = $1 FOR UPDATE)
             UPDATE jobs j SET state = 'cancelled', finished_at = now(), lease_expires_at = NULL
               FROM old
              WHERE j.id = old.id AND old.state NOT IN ('completed', 'discarded', 'cancelled')
             RETURNING old.state",
            &[&id],
        )
        .await?;
    Ok(row.map(|r| r.get(0)))
}

/// Make a finished or waiting job available to run now, with a fresh attempt budget if it had
/// used it up. Running jobs are left alone. Returns whether the job was retried. When another
/// unfinished job holds the job's unique key, the index [`super::UNIQUE_KEY_INDEX`] refuses the
/// retry (a unique violation naming it).
pub async fn retry(client: &impl GenericClient, id: i64) -> Result<bool> {
    let row = client
        .query_opt(
            "UPDATE jobs
                SET state = 'available', run_at = now(), finished_at = NULL,
                    max_attempts = greatest(max_attempts, attempt + 1)
              WHERE id = $1 AND state <> 'running'
             RETURNING queue",
            &[&id],
        )
        .await?;
    match row {
        Some(r) => {
            let queue: String = r.get(0);
            client
                .execute("SELECT pg_notify($1, $2)", &[&NOTIFY_CHANNEL, &queue])
                .await?;
            Ok(true)
        }
        None => Ok(false),
    }
}
