//! The job model: states, the stored row, and the lean view a worker fetches.
//!
//! These are the lowest-level shared words of the queue; anything may import them.

use chrono::{DateTime, Utc};
use postgres_types::{FromSql, ToSql, Type};
use serde::{Deserialize, Serialize};

/// Where a job is in its life. The names are River's and Oban's.
///
/// ```text
///  enqueue ──► available ◄──── scheduled ◄── enqueue with a future run_at, snooze
///                 │   ▲  ▲──── retryable ◄── failed attempt (run_at = now + backoff)
///        fetch    ▼   │  └──── rescue (lease expired), shutdown hand-back
///               running ──► completed | discarded | cancelled
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, ToSql, FromSql, Serialize, Deserialize)]
#[postgres(name = "job_state")]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// May be fetched now.
    #[postgres(name = "available")]
    Available,
    /// Waits for its `run_at`; the scheduler makes it available.
    #[postgres(name = "scheduled")]
    Scheduled,
    /// Fetched by a worker that holds a lease on it.
    #[postgres(name = "running")]
    Running,
    /// Failed an attempt and will be tried again at `run_at`.
    #[postgres(name = "retryable")]
    Retryable,
    /// Final: the handler succeeded.
    #[postgres(name = "completed")]
    Completed,
    /// Final: a permanent error, attempts exhausted, or a kind no worker knows.
    #[postgres(name = "discarded")]
    Discarded,
    /// Final: cancelled by its handler or an operator.
    #[postgres(name = "cancelled")]
    Cancelled,
}

impl JobState {
    /// Every state, in the order of the enum in the database.
    pub const ALL: [JobState; 7] = [
        JobState::Available,
        JobState::Scheduled,
        JobState::Running,
        JobState::Retryable,
        JobState::Completed,
        JobState::Discarded,
        JobState::Cancelled,
    ];

    /// The name used in SQL, JSON and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Available => "available",
            JobState::Scheduled => "scheduled",
            JobState::Running => "running",
            JobState::Retryable => "retryable",
            JobState::Completed => "completed",
            JobState::Discarded => "discarded",
            JobState::Cancelled => "cancelled",
        }
    }

    /// True for the states a job never leaves.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobState::Completed | JobState::Discarded | JobState::Cancelled
        )
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A jsonb value kept as its JSON text, so a worker parses job args once, straight into the
/// kind's typed args, instead of building a `serde_json::Value` first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonText(pub String);

impl<'a> FromSql<'a> for JsonText {
    fn from_sql(
        ty: &Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        // Binary jsonb is a version byte (1) followed by the JSON text; json is the text alone.
        let text = if *ty == Type::JSONB {
            match raw.split_first() {
                Some((1, rest)) => rest,
                _ => return Err("unsupported jsonb version".into()),
            }
        } else {
            raw
        };
        Ok(JsonText(std::str::from_utf8(text)?.to_owned()))
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::JSONB || *ty == Type::JSON
    }
}

/// One failed attempt, as stored in `jobs.errors`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptError {
    /// The attempt that failed (1-based).
    pub attempt: i32,
    /// When the failure was recorded.
    pub at: DateTime<Utc>,
    /// What kind of failure: `error`, `permanent`, `timeout`, `panic`, `lease_expired`,
    /// `unknown_kind`, `bad_args`.
    pub kind: String,
    /// The error's message.
    pub message: String,
}

/// A stored job, every column. Written only by the queue module; read by tests, the API and
/// operators.
#[derive(Debug, Clone, Serialize)]
pub struct JobRow {
    /// Unique, increasing id; set at enqueue.
    pub id: i64,
    /// The queue it waits in; workers serve named queues.
    pub queue: String,
    /// The registered kind that says how to run it.
    pub kind: String,
    /// The kind's arguments, as JSON.
    pub args: serde_json::Value,
    /// Where it is in its life.
    pub state: JobState,
    /// 0 runs first, 9 last.
    pub priority: i16,
    /// Attempts started so far (a snooze or a shutdown hand-back gives one back).
    pub attempt: i32,
    /// After this many failed attempts the job is discarded.
    pub max_attempts: i32,
    /// Not run before this time.
    pub run_at: DateTime<Utc>,
    /// When the latest attempt started; null before the first fetch.
    pub attempted_at: Option<DateTime<Utc>>,
    /// The worker (per process start) of the latest attempt; null before the first fetch.
    pub attempted_by: Option<String>,
    /// While running: when the lease ends unless renewed. Null in every other state.
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// Every failed attempt, oldest first.
    pub errors: Vec<AttemptError>,
    /// What the handler returned on success, if anything.
    pub result: Option<serde_json::Value>,
    /// At most one unfinished job holds a given key.
    pub unique_key: Option<String>,
    /// Free-form labels for filtering.
    pub tags: Vec<String>,
    /// Context such as the request id that enqueued it.
    pub meta: serde_json::Value,
    /// When it was enqueued.
    pub created_at: DateTime<Utc>,
    /// When it reached a final state; null until then.
    pub finished_at: Option<DateTime<Utc>>,
}

/// The columns of [`JobRow`], in order, for `SELECT`s that build one.
pub const JOB_COLUMNS: &str = "id, queue, kind, args, state, priority, attempt, max_attempts, run_at, attempted_at, \
     attempted_by, lease_expires_at, errors, result, unique_key, tags, meta, created_at, finished_at";

impl TryFrom<&tokio_postgres::Row> for JobRow {
    type Error = tokio_postgres::Error;

    fn try_from(r: &tokio_postgres::Row) -> Result<Self, Self::Error> {
        let errors: serde_json::Value = r.try_get("errors")?;
        Ok(JobRow {
            id: r.try_get("id")?,
            queue: r.try_get("queue")?,
            kind: r.try_get("kind")?,
            args: r.try_get("args")?,
            state: r.try_get("state")?,
            priority: r.try_get("priority")?,
            attempt: r.try_get("attempt")?,
            max_attempts: r.try_get("max_attempts")?,
            run_at: r.try_get("run_at")?,
            attempted_at: r.try_get("attempted_at")?,
            attempted_by: r.try_get("attempted_by")?,
            lease_expires_at: r.try_get("lease_expires_at")?,
            // The column is written only by the queue module, always in this shape.
            errors: serde_json::from_value(errors).unwrap_or_default(),
            result: r.try_get("result")?,
            unique_key: r.try_get("unique_key")?,
            tags: r.try_get("tags")?,
            meta: r.try_get("meta")?,
            created_at: r.try_get("created_at")?,
            finished_at: r.try_get("finished_at")?,
        })
    }
}

/// What a worker gets for one fetched job: enough to run it and to record its outcome.
#[derive(Debug, Clone)]
pub struct FetchedJob {
    /// The job's id.
    pub id: i64,
    /// The queue it was fetched from.
    pub queue: std::sync::Arc<str>,
    /// Its kind.
    pub kind: String,
    /// Its args as JSON text, parsed by the kind's handler.
    pub args: JsonText,
    /// This attempt's number (1-based); the outcome is fenced on it.
    pub attempt: i32,
    /// The job's attempt budget.
    pub max_attempts: i32,
    /// When it became due (queue latency = start - run_at).
    pub run_at: DateTime<Utc>,
    /// Context such as the request id that enqueued it.
    pub meta: JsonText,
}
