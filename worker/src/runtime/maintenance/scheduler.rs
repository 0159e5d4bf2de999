//! The scheduler: scheduled and retryable jobs whose time has come become available.

use deadpool_postgres::Client;
use engine::queue::maintenance as sql;

use super::PASS_LIMIT;

/// One pass: promote up to [`PASS_LIMIT`] due jobs; the next pass takes the rest.
pub async fn run_once(conn: Client) -> anyhow::Result<()> {
    let (n, _next) = sql::promote_due(&conn, PASS_LIMIT).await?;
    if n > 0 {
        tracing::debug!(num_promoted = n, "made due jobs available");
    }
    Ok(())
}
