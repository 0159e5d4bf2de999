//! Reads and bulk actions for operators and the API: queue depth, per-queue statistics,
//! listing and filtering jobs, and the workers table.

use deadpool_postgres::GenericClient;

use super::Result;
use super::job::JobState;

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

const DEPTH: &str =
    "SELECT queue, state, count(*) FROM jobs GROUP BY queue, state ORDER BY queue, state";

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
