//! The counter: folds the per-statement changes of job counts into their totals and the
//! per-minute finishes (`engine::queue::counts`), keeping the deltas a reader adds up small.

use deadpool_postgres::Client;
use engine::queue::counts;

/// One pass: fold every delta committed so far.
pub async fn run_once(conn: Client) -> anyhow::Result<()> {
    let n = counts::fold(&conn).await?;
    if n > 0 {
        tracing::debug!(num_deltas = n, "folded job count changes");
    }
    Ok(())
}
