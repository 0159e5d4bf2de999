//! The rescuer: running jobs whose lease expired (their worker died or lost the database)
//! go back to the queue, or are discarded once their attempts are used up.

use deadpool_postgres::Client;
use engine::queue::maintenance as sql;

use super::PASS_LIMIT;

/// One pass: rescue up to [`PASS_LIMIT`] jobs; the next pass takes the rest.
pub async fn run_once(conn: Client) -> anyhow::Result<()> {
    let r = sql::rescue(&conn, PASS_LIMIT).await?;
    if r.retried + r.discarded > 0 {
        tracing::warn!(
            num_retried = r.retried,
            num_discarded = r.discarded,
            "rescued jobs whose lease expired"
        );
        crate::runtime::metrics::rescued(r.retried, r.discarded);
    }
    Ok(())
}
