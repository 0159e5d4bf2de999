//! The reaper: rows of workers that stopped heartbeating are removed from the workers table.

use std::time::Duration;

use deadpool_postgres::Client;
use engine::queue::maintenance as sql;

/// One pass: remove workers silent for longer than `ttl`.
pub async fn run_once(conn: Client, ttl: Duration) -> anyhow::Result<()> {
    let reaped = sql::reap_workers(&conn, ttl).await?;
    if reaped > 0 {
        tracing::info!(
            num_workers_reaped = reaped,
            "removed workers that stopped heartbeating"
        );
    }
    Ok(())
}
