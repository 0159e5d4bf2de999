//! The key pruner: idempotency records of the registration endpoint older than
//! `IDEMPOTENCY_TTL` are deleted, in bounded statements, so the table holds about a TTL's
//! worth of keys. The API already ignores (and takes over) an expired record; this pass only
//! reclaims the space.

use std::time::Duration;

use deadpool_postgres::Client;
use domain::registrations::prune_keys;
use engine::config::{ConfigError, Source, positive};

/// `IDEMPOTENCY_TTL` (the API's setting, in seconds, with the API's default).
pub fn ttl_from_source(src: &(impl Source + ?Sized)) -> Result<Duration, ConfigError> {
    Ok(Duration::from_secs(positive(
        src,
        "IDEMPOTENCY_TTL",
        domain::registrations::DEFAULT_IDEMPOTENCY_TTL_S,
    )?))
}

/// Most records one statement deletes: a short lock, and a pass that ends soon.
const KEYS_BATCH: usize = 10_000;
/// Most statements in one pass; the next pass takes the rest.
const KEYS_ROUNDS: usize = 10;

/// One pass: delete idempotency records older than `ttl`, up to [`KEYS_ROUNDS`] batches.
/// Returns how many went.
pub async fn run_once(conn: Client, ttl: Duration) -> anyhow::Result<u64> {
    let mut total = 0;
    for _ in 0..KEYS_ROUNDS {
        let n = prune_keys(&conn, ttl, KEYS_BATCH).await?;
        total += n;
        if n < KEYS_BATCH as u64 {
            break;
        }
    }
    if total > 0 {
        tracing::info!(num_pruned = total, "pruned expired idempotency keys");
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ttl(env: &[(&str, &str)]) -> Result<Duration, ConfigError> {
        ttl_from_source(env)
    }

    #[test]
    fn the_ttl_is_the_apis_setting_with_the_apis_default() {
        assert_eq!(ttl(&[]).unwrap(), Duration::from_secs(86_400));
        assert_eq!(
            ttl(&[("IDEMPOTENCY_TTL", "60")]).unwrap(),
            Duration::from_secs(60)
        );
        for bad in ["0", "-1", "a day"] {
            let err = ttl(&[("IDEMPOTENCY_TTL", bad)]).unwrap_err();
            assert_eq!(err.name, "IDEMPOTENCY_TTL", "{bad}: {err}");
            assert!(!err.to_string().contains('\n'));
        }
    }
}
