//! Global concurrency limits of queues: at most N jobs of a queue `running` at once across
//! every worker, and at most N per key inside a queue.
//!
//! A job's key is its `concurrency_key`, given at enqueue, or else the value in its args at the
//! queue's key path; the engine compares keys as text and knows nothing of what they mean. The
//! limits live in the queue's `queues` row and are read by every fetch, so a change is seen by
//! each worker at its next fetch (workers are woken when it is made). They are enforced by
//! [`super::fetch::fetch_limited`].

use deadpool_postgres::GenericClient;
use serde::Serialize;

use super::{NOTIFY_CHANNEL, QueueError, Result};
use crate::names::QueueName;

/// The limits of one queue; `None` is no limit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct QueueLimits {
    /// Most jobs of the queue running at once.
    pub max_running: Option<i32>,
    /// Most jobs with the same key running at once.
    pub max_running_per_key: Option<i32>,
    /// Where in a job's args its key is, when the job was not given one at enqueue.
    pub key_path: Option<KeyPath>,
}

impl QueueLimits {
    /// True when the queue has a limit, so it must be fetched by the limited fetch.
    pub fn is_limited(&self) -> bool {
        self.max_running.is_some() || self.max_running_per_key.is_some()
    }

    /// Refuse limits below 1, which would stop the queue (pause it instead).
    pub fn validate(&self) -> Result<(), QueueError> {
        for (name, v) in [
            ("max_running", self.max_running),
            ("max_running_per_key", self.max_running_per_key),
        ] {
            if v.is_some_and(|n| n < 1) {
                return Err(QueueError::InvalidOption(name, "must be at least 1".into()));
            }
        }
        Ok(())
    }
}

/// A path into a job's args, written `args.a.b`; stored as the segments (`{a,b}`) and read
/// with `args #>> path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPath(Vec<String>);

/// Most segments of a [`KeyPath`].
pub const MAX_KEY_PATH_SEGMENTS: usize = 16;

impl KeyPath {
    /// Parse `args.a.b`: `args.` then 1 to 16 segments of letters, digits, `_` and `-`.
    pub fn parse(raw: &str) -> Result<Self, QueueError> {
        let bad = |why: &str| QueueError::InvalidOption("key_path", format!("{raw:?}: {why}"));
        let rest = raw
            .strip_prefix("args.")
            .ok_or_else(|| bad("must start with `args.`"))?;
        let segments: Vec<String> = rest.split('.').map(str::to_owned).collect();
        if segments.len() > MAX_KEY_PATH_SEGMENTS {
            return Err(bad("has too many segments"));
        }
        for s in &segments {
            if s.is_empty() || s.len() > 128 {
                return Err(bad("has an empty or overlong segment"));
            }
            if !s
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return Err(bad("segments take letters, digits, `_` and `-` only"));
            }
        }
        Ok(Self(segments))
    }

    /// The segments.
    pub fn segments(&self) -> &[String] {
        &self.0
    }
}

impl std::fmt::Display for KeyPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "args.{}", self.0.join("."))
    }
}

impl Serialize for KeyPath {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

pub(super) fn from_row(
    max: Option<i32>,
    per_key: Option<i32>,
    path: Option<Vec<String>>,
) -> QueueLimits {
    QueueLimits {
        max_running: max,
        max_running_per_key: per_key,
        key_path: path.map(KeyPath),
    }
}

const GET: &str =
    "SELECT max_running, max_running_per_key, concurrency_key_path FROM queues WHERE name = $1";

/// The limits of `queue` (none when it has no row).
pub async fn get(client: &impl GenericClient, queue: &str) -> Result<QueueLimits> {
    let stmt = client.prepare_cached(GET).await?;
    Ok(client
        .query_opt(&stmt, &[&queue])
        .await?
        .map(|r| from_row(r.get(0), r.get(1), r.get(2)))
        .unwrap_or_default())
}

/// Set the limits of `queue` (an operator's action: later worker defaults leave them alone),
/// and wake its workers so that a raised limit is used at once.
pub async fn set(
    client: &impl GenericClient,
    queue: &QueueName,
    limits: &QueueLimits,
) -> Result<(), QueueError> {
    limits.validate()?;
    let path = limits.key_path.as_ref().map(KeyPath::segments);
    client
        .execute(
            "INSERT INTO queues (name, max_running, max_running_per_key, concurrency_key_path,
                                 limits_set_at)
             VALUES ($1, $2, $3, $4, now())
             ON CONFLICT (name) DO UPDATE
               SET max_running = $2, max_running_per_key = $3, concurrency_key_path = $4,
                   limits_set_at = now(), updated_at = now()",
            &[
                &queue,
                &limits.max_running,
                &limits.max_running_per_key,
                &path,
            ],
        )
        .await?;
    client
        .execute("SELECT pg_notify($1, $2)", &[&NOTIFY_CHANNEL, &queue])
        .await?;
    Ok(())
}

/// Write default limits (from a worker's settings) for each queue whose limits no operator
/// has set; an operator's limits always win. The last worker to start with different
/// defaults wins among workers.
pub async fn set_defaults(
    client: &impl GenericClient,
    defaults: &[(QueueName, QueueLimits)],
) -> Result<(), QueueError> {
    for (queue, limits) in defaults {
        limits.validate()?;
        let path = limits.key_path.as_ref().map(KeyPath::segments);
        client
            .execute(
                "INSERT INTO queues (name, max_running, max_running_per_key, concurrency_key_path)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (name) DO UPDATE
                   SET max_running = $2, max_running_per_key = $3, concurrency_key_path = $4,
                       updated_at = now()
                 WHERE queues.limits_set_at IS NULL",
                &[
                    &queue,
                    &limits.max_running,
                    &limits.max_running_per_key,
                    &path,
                ],
            )
            .await?;
    }
    Ok(())
}

/// A limited queue's use of its limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LimitUsage {
    /// The queue.
    pub queue: String,
    /// Its limits.
    pub limits: QueueLimits,
    /// Its jobs running now.
    pub running: i64,
    /// Its available, due jobs that a limit holds back: all of them when the queue is at its
    /// limit, else those whose key is at its limit.
    pub waiting: i64,
}

/// Reads every available due job of the limited queues (not the others): for a scrape, not
/// for a hot path.
const USAGE: &str = "
WITH q AS (
  SELECT name, max_running, max_running_per_key, concurrency_key_path AS path
    FROM queues WHERE max_running IS NOT NULL OR max_running_per_key IS NOT NULL),
r AS (
  SELECT q.name, coalesce(j.concurrency_key, j.args #>> q.path) AS key, count(*) AS n
    FROM q JOIN jobs j ON j.queue = q.name AND j.state = 'running'
   GROUP BY 1, 2),
tot AS (SELECT name, sum(n)::bigint AS n FROM r GROUP BY name)
SELECT q.name, q.max_running, q.max_running_per_key, q.path, coalesce(tot.n, 0),
       (SELECT count(*) FROM jobs j
         WHERE j.queue = q.name AND j.state = 'available' AND j.run_at <= now()
           AND (coalesce(tot.n, 0) >= q.max_running
                OR EXISTS (SELECT 1 FROM r
                            WHERE r.name = q.name AND r.n >= q.max_running_per_key
                              AND r.key = coalesce(j.concurrency_key, j.args #>> q.path))))
  FROM q LEFT JOIN tot ON tot.name = q.name
 ORDER BY q.name";

/// How each limited queue uses its limits.
pub async fn usage(client: &impl GenericClient) -> Result<Vec<LimitUsage>> {
    let stmt = client.prepare_cached(USAGE).await?;
    Ok(client
        .query(&stmt, &[])
        .await?
        .iter()
        .map(|r| LimitUsage {
            queue: r.get(0),
            limits: from_row(r.get(1), r.get(2), r.get(3)),
            running: r.get(4),
            waiting: r.get(5),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_paths_parse_and_print_back() {
        let p = KeyPath::parse("args.account.id").unwrap();
        assert_eq!(p.segments(), ["account", "id"]);
        assert_eq!(p.to_string(), "args.account.id");
        for bad in ["account_id", "args.", "args.a..b", "args.a b", "args.$x"] {
            assert!(KeyPath::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn limits_below_one_are_refused() {
        let l = QueueLimits {
            max_running_per_key: Some(0),
            ..Default::default()
        };
        assert!(l.validate().is_err());
        assert!(!QueueLimits::default().is_limited());
    }
}
