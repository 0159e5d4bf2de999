//! The pruner: completed, discarded and cancelled jobs older than the retention period are
//! deleted, in bounded statements so that no pass holds a long lock.

use std::time::Duration;

use common::queue::maintenance as sql;
use deadpool_postgres::Client;

/// Most rows one prune statement deletes.
const PRUNE_BATCH: usize = 10_000;
/// Most prune statements in one pass; the next pass takes the rest.
const PRUNE_ROUNDS: usize = 10;

/// One pass: delete finished jobs older than `retention`.
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
    Ok(())
}
