//! Global rate limits of external services (e.g. an image host's 500 uploads a minute), shared
//! by every worker process through PostgreSQL.
//!
//! A sliding log: the `rate_limits` row of a service holds the times of the calls granted
//! within the last period. [`take`] locks the row (created on first use), drops the times
//! older than one period, and grants a call when fewer than `max_calls` remain; otherwise it
//! answers the next free slot, when the oldest of the last `max_calls` grants leaves the
//! period. So in no period of that length are more than `max_calls` calls granted, across
//! every connection and process.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;

/// Errors of the rate-limit statements.
pub type Error = tokio_postgres::Error;

/// `max_calls` per `period`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// Calls allowed in any period.
    pub max_calls: u32,
    /// The period.
    pub period: Duration,
}

/// Whether a call may go now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// Go: the call is counted at `at`.
    Allowed {
        /// The time it was counted at.
        at: DateTime<Utc>,
    },
    /// Not before `until`, the next free slot (nothing was counted).
    Wait {
        /// The next free slot.
        until: DateTime<Utc>,
    },
}

/// A service's limit and what it used in the last period.
#[derive(Debug, Clone, PartialEq)]
pub struct Usage {
    /// The service.
    pub service: String,
    /// The limit last applied.
    pub limit: Limit,
    /// Calls granted in the last period.
    pub used: i64,
}

impl FromStr for Limit {
    type Err = String;

    /// `500/60s`, `500/1m`, `10/500ms`, `1000/1h`: calls, a slash, a period with its unit.
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not calls/period, e.g. 500/60s");
        let (calls, period) = s.trim().split_once('/').ok_or_else(bad)?;
        let max_calls = calls
            .trim()
            .parse::<u32>()
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(bad)?;
        let period = period.trim();
        let split = period.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        let (n, unit) = period.split_at(split);
        let n: u64 = n.parse().ok().filter(|&n| n > 0).ok_or_else(bad)?;
        let period = match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" | "min" => Duration::from_secs(60 * n),
            "h" => Duration::from_secs(3600 * n),
            _ => return Err(bad()),
        };
        Ok(Limit { max_calls, period })
    }
}

impl std::fmt::Display for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}ms", self.max_calls, self.period.as_millis())
    }
}

/// Lock the service's row (creating it) with the limit applied now; the time is read after
/// the lock is held.
const LOCK: &str = "
INSERT INTO rate_limits (service, max_calls, period_ms) VALUES ($1, $2, $3)
ON CONFLICT (service) DO UPDATE SET max_calls = EXCLUDED.max_calls, period_ms = EXCLUDED.period_ms
RETURNING grants, clock_timestamp()";

const SAVE: &str = "UPDATE rate_limits SET grants = $2, updated_at = $3 WHERE service = $1";

/// Take one call of `service`'s `limit`, or learn when the next one is free.
pub async fn take(
    client: &mut deadpool_postgres::Client,
    service: &str,
    limit: Limit,
) -> Result<Take, Error> {
    let tx = client.transaction().await?;
    let period_ms = limit.period.as_millis() as i64;
    let row = tx
        .query_one(LOCK, &[&service, &(limit.max_calls as i32), &period_ms])
        .await?;
    let mut grants: Vec<DateTime<Utc>> = row.get(0);
    let now: DateTime<Utc> = row.get(1);
    let take = take_at(&mut grants, limit, now);
    tx.execute(SAVE, &[&service, &grants, &now]).await?;
    tx.commit().await?;
    Ok(take)
}

const USAGE: &str = "
SELECT service, max_calls, period_ms,
       (SELECT count(*) FROM unnest(grants) AS g(at)
         WHERE g.at > now() - period_ms * interval '1 millisecond')
  FROM rate_limits ORDER BY service";

/// Every service's limit and its calls in the last period.
pub async fn usage(client: &impl GenericClient) -> Result<Vec<Usage>, Error> {
    let rows = client.query(USAGE, &[]).await?;
    Ok(rows
        .iter()
        .map(|r| Usage {
            service: r.get(0),
            limit: Limit {
                max_calls: r.get::<_, i32>(1) as u32,
                period: Duration::from_millis(r.get::<_, i64>(2) as u64),
            },
            used: r.get(3),
        })
        .collect())
}

/// The decision on the log `grants` (oldest first) at `now`: drop what left the period, then
/// grant (appending `now`) or answer the next free slot.
pub fn take_at(grants: &mut Vec<DateTime<Utc>>, limit: Limit, now: DateTime<Utc>) -> Take {
    let period = chrono::Duration::from_std(limit.period).unwrap_or(chrono::Duration::MAX);
    grants.retain(|&at| at + period > now);
    grants.sort_unstable();
    let max = limit.max_calls.max(1) as usize;
    if grants.len() < max {
        grants.push(now);
        Take::Allowed { at: now }
    } else {
        // The oldest of the last `max` grants frees the slot when it leaves the period.
        Take::Wait {
            until: grants[grants.len() - max] + period,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ms: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(1_700_000_000_000 + ms).unwrap()
    }

    #[test]
    fn limits_parse_and_bad_ones_are_refused() {
        let l = |s: &str| s.parse::<Limit>();
        assert_eq!(
            l("500/60s").unwrap(),
            Limit {
                max_calls: 500,
                period: Duration::from_secs(60)
            }
        );
        assert_eq!(
            l(" 10 / 500ms ").unwrap().period,
            Duration::from_millis(500)
        );
        assert_eq!(l("5/2m").unwrap().period, Duration::from_secs(120));
        assert_eq!(l("5/1h").unwrap().period, Duration::from_secs(3600));
        for bad in [
            "", "500", "0/60s", "500/0s", "500/60", "500/s", "x/60s", "500/60d",
        ] {
            assert!(l(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_full_log_answers_when_its_oldest_grant_leaves_the_period() {
        let limit = Limit {
            max_calls: 3,
            period: Duration::from_secs(10),
        };
        let mut g = Vec::new();
        for ms in [0, 100, 200] {
            assert_eq!(take_at(&mut g, limit, t(ms)), Take::Allowed { at: t(ms) });
        }
        assert_eq!(
            take_at(&mut g, limit, t(300)),
            Take::Wait { until: t(10_000) }
        );
        assert_eq!(g.len(), 3, "a refused call is not counted");
        assert_eq!(
            take_at(&mut g, limit, t(9_999)),
            Take::Wait { until: t(10_000) }
        );
        assert_eq!(
            take_at(&mut g, limit, t(10_000)),
            Take::Allowed { at: t(10_000) }
        );
        assert_eq!(g, [t(100), t(200), t(10_000)]);
        assert_eq!(
            take_at(&mut g, limit, t(10_001)),
            Take::Wait { until: t(10_100) }
        );
        // A lowered limit waits for enough old grants to leave.
        let lower = Limit {
            max_calls: 1,
            ..limit
        };
        assert_eq!(
            take_at(&mut g, lower, t(10_002)),
            Take::Wait { until: t(20_000) }
        );
    }
}
