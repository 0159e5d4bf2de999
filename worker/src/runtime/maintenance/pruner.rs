//! The pruner: completed, discarded and cancelled jobs older than the retention period are
//! deleted, in bounded statements so that no pass holds a long lock; so are per-minute
//! finishes older than a day.

use std::time::Duration;

use deadpool_postgres::Client;
use engine::queue::counts;
use engine::queue::maintenance as sql;

/// Most rows one prune statement deletes.
const PRUNE_BATCH: usize = 10_000;
/// Most prune statements in one pass; the next pass takes the rest.
const PRUNE_ROUNDS: usize = 10;

/// How long per-minute finishes are kept (the dashboard shows the last hour).
const MINUTES_KEPT: Duration = Duration::from_secs(24 * 3600);

/// One pass: delete finished jobs older than `retention`, and per-minute finishes older than
/// a day.
pub async fn run_once(conn: Client, retention: Duration) -> anyhow::Result<()> {
    let mut total = 0;
    for _ in 0..PRUNE_ROUNDS {
        let n = sql::prune(&conn, retention, PRUNE_BATCH).await?;
        total += n;
        if n < PRUNE_BATCH as u64 {
            break;
        }
    }
    if total > 0 {
        tracing::info!(num_pruned = total, "pruned finished jobs");
    }
    counts::prune_minutes(&conn, MINUTES_KEPT).await?;
    Ok(())
}
