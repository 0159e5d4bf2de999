//! The logo pruner: logo bytes that no upload will read any more are deleted from
//! `team_logos`, in bounded statements.
//!
//! Bytes wait in PostgreSQL until `upload_logo` stores them elsewhere, and that job drops them.
//! When it never does (its last job was discarded or cancelled, or an operator deleted the
//! job), this pass drops them `LOGO_RETENTION_HOURS` after the later of the registration and
//! the last upload's end, so an operator has that long to retry an upload. Bytes whose team has
//! an unfinished `upload_logo` job are never touched (the rule is on
//! `domain::registrations::prune_logos`).
//!
//! Why a maintenance pass and not a periodic job kind: it is one bounded statement with nothing
//! to retry or call, it must run whatever queues a deployment's workers serve (a periodic job
//! sits unrun if no worker serves its queue), and it needs no args, no stored format and no
//! handler. The `maintenance_runs` claim already runs it once per interval across workers.

use std::time::Duration;

use deadpool_postgres::Client;
use domain::registrations::prune_logos;
use engine::config::{ConfigError, Source, positive};

/// Default `LOGO_RETENTION_HOURS`: a week, as `JOB_RETENTION_HOURS`, so an abandoned upload's
/// job and its bytes go about together.
pub const DEFAULT_LOGO_RETENTION_HOURS: u64 = 168;

/// `LOGO_RETENTION_HOURS`, as a duration.
pub fn retention_from_source(src: &(impl Source + ?Sized)) -> Result<Duration, ConfigError> {
    Ok(Duration::from_secs(3600u64.saturating_mul(positive(
        src,
        "LOGO_RETENTION_HOURS",
        DEFAULT_LOGO_RETENTION_HOURS,
    )?)))
}

/// Most logos one statement deletes. Each can be 5 MB (stored out of line), so the batches
/// are smaller than the pruner's.
const LOGOS_BATCH: usize = 1_000;
/// Most statements in one pass; the next pass takes the rest.
const LOGOS_ROUNDS: usize = 10;

/// One pass: delete abandoned logo bytes older than `retention`, up to [`LOGOS_ROUNDS`]
/// batches. Returns how many went.
pub async fn run_once(conn: Client, retention: Duration) -> anyhow::Result<u64> {
    let mut total = 0;
    for _ in 0..LOGOS_ROUNDS {
        let n = prune_logos(&conn, retention, LOGOS_BATCH).await?;
        total += n;
        if n < LOGOS_BATCH as u64 {
            break;
        }
    }
    if total > 0 {
        tracing::info!(
            num_pruned = total,
            "deleted logo bytes of abandoned uploads"
        );
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn retention(env: &[(&str, &str)]) -> Result<Duration, ConfigError> {
        retention_from_source(env)
    }

    #[test]
    fn the_retention_defaults_to_a_week_and_bad_values_are_named() {
        assert_eq!(retention(&[]).unwrap(), Duration::from_secs(168 * 3600));
        assert_eq!(
            retention(&[("LOGO_RETENTION_HOURS", "2")]).unwrap(),
            Duration::from_secs(7200)
        );
        for bad in ["0", "-1", "a week"] {
            let err = retention(&[("LOGO_RETENTION_HOURS", bad)]).unwrap_err();
            assert_eq!(err.name, "LOGO_RETENTION_HOURS", "{bad}: {err}");
            assert!(!err.to_string().contains('\n'));
        }
    }
}
