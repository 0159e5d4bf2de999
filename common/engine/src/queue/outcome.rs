//! Recording what became of attempts, many at a time.
//!
//! A worker collects finished attempts and writes them in one statement per batch. Each write
//! is fenced: it lands only if the row is still `running` under the same worker and attempt,
//! so a worker whose job was rescued (lease expired) cannot overwrite the newer attempt.

use std::time::Duration;

use deadpool_postgres::GenericClient;

use super::Result;
use super::job::JobState;

/// What became of one attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Succeeded, with an optional result to store.
    Completed(Option<serde_json::Value>),
    /// Failed; tried again after `delay` (state `retryable`).
    Retry {
        /// How long until the next attempt.
        delay: Duration,
        /// What went wrong.
        error: Failure,
    },
    /// Failed for good (permanent error, or the last attempt failed).
    Discard(Failure),
    /// Not run now: back to `scheduled` after `delay` without using up an attempt.
    Snooze(Duration),
    /// Cancelled by its handler.
    Cancel(String),
}

/// One failed attempt's error, as recorded in `jobs.errors`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// `error`, `permanent`, `timeout`, `panic`, `unknown_kind`, `bad_args`, ...
    pub kind: &'static str,
    /// The error's message.
    pub message: String,
}

impl Failure {
    /// A failure of `kind` with `message`.
    pub fn new(kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

/// One attempt's outcome, addressed to the attempt that produced it.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptOutcome {
    /// The job.
    pub id: i64,
    /// The attempt number the worker ran; the write is fenced on it.
    pub attempt: i32,
    /// What became of it.
    pub outcome: Outcome,
}

/// Longest error message or cancel reason stored, in bytes; longer ones are cut at a
/// character boundary. A message often quotes a remote answer: 4 KiB keeps its gist while
/// `errors`, which gains one per attempt, stays small.
pub const MAX_MESSAGE_BYTES: usize = 4096;

/// Longest wait an outcome can set before the next run. The worker caps handler-given delays
/// far below this by its own setting; this bound only keeps any `Duration` a valid timestamp
/// (PostgreSQL refuses the whole statement otherwise).
pub const MAX_DELAY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// `message` as it can be stored: PostgreSQL's text refuses NUL, so NULs are dropped, and it
/// is cut to [`MAX_MESSAGE_BYTES`].
pub fn storable_message(message: &str) -> std::borrow::Cow<'_, str> {
    if !message.contains('\0') && message.len() <= MAX_MESSAGE_BYTES {
        return std::borrow::Cow::Borrowed(message);
    }
    let mut out: String = message.chars().filter(|&c| c != '\0').collect();
    if out.len() > MAX_MESSAGE_BYTES {
        let mut end = MAX_MESSAGE_BYTES;
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        out.truncate(end);
    }
    std::borrow::Cow::Owned(out)
}

/// Completions: the hot path, three arrays and nothing else.
const COMPLETE: &str = "
UPDATE jobs j
   SET state = 'completed', finished_at = now(), lease_expires_at = NULL, result = c.result
  FROM unnest($1::bigint[], $2::int4[], $3::jsonb[]) AS c(id, attempt, result)
 WHERE j.id = c.id AND j.attempt = c.attempt AND j.attempted_by = $4 AND j.state = 'running'";

/// Every other outcome. A snooze gives the attempt back and counts itself in `meta.snoozes`.
const SETTLE: &str = "
UPDATE jobs j
   SET state = c.state,
       run_at = CASE WHEN c.delay_s IS NULL THEN j.run_at ELSE now() + make_interval(secs => c.delay_s) END,
       attempt = CASE WHEN c.snooze THEN j.attempt - 1 ELSE j.attempt END,
       meta = CASE WHEN c.snooze
                   THEN jsonb_set(j.meta, '{snoozes}', to_jsonb(coalesce((j.meta->>'snoozes')::int, 0) + 1))
                   ELSE j.meta END,
       errors = CASE WHEN c.err_kind IS NULL THEN j.errors
                     ELSE j.errors || jsonb_build_array(jsonb_build_object(
                            'attempt', j.attempt, 'at', now(), 'kind', c.err_kind, 'message', c.err_message)) END,
       finished_at = CASE WHEN c.state IN ('discarded', 'cancelled') THEN now() END,
       lease_expires_at = NULL
  FROM unnest($1::bigint[], $2::int4[], $3::job_state[], $4::float8[], $5::bool[], $6::text[], $7::text[])
       AS c(id, attempt, state, delay_s, snooze, err_kind, err_message)
 WHERE j.id = c.id AND j.attempt = c.attempt AND j.attempted_by = $8 AND j.state = 'running'";

/// Prepare the outcome writes on `client`, ahead of their first use.
pub async fn prepare(client: &impl GenericClient) -> Result<()> {
    client.prepare_cached(COMPLETE).await?;
    client.prepare_cached(SETTLE).await?;
    Ok(())
}

/// Write a batch of outcomes of `worker`'s attempts. Returns how many were recorded; the rest
/// had been taken from this worker (rescued after its lease expired, or cancelled) and are
/// left as they are.
pub async fn record(
    client: &impl GenericClient,
    worker: &str,
    batch: &[AttemptOutcome],
) -> Result<u64> {
    let mut written = 0;
    let (done, other): (Vec<&AttemptOutcome>, Vec<&AttemptOutcome>) = batch
        .iter()
        .partition(|o| matches!(o.outcome, Outcome::Completed(_)));
    if !done.is_empty() {
        let ids: Vec<i64> = done.iter().map(|o| o.id).collect();
        let attempts: Vec<i32> = done.iter().map(|o| o.attempt).collect();
        let results: Vec<Option<&serde_json::Value>> = done
            .iter()
            .map(|o| match &o.outcome {
                Outcome::Completed(r) => r.as_ref(),
                _ => None,
            })
            .collect();
        let stmt = client.prepare_cached(COMPLETE).await?;
        written += client
            .execute(&stmt, &[&ids, &attempts, &results, &worker])
            .await?;
    }
    if !other.is_empty() {
        let mut ids = Vec::with_capacity(other.len());
        let mut attempts = Vec::with_capacity(other.len());
        let mut states = Vec::with_capacity(other.len());
        let mut delays: Vec<Option<f64>> = Vec::with_capacity(other.len());
        let mut snoozes = Vec::with_capacity(other.len());
        let mut err_kinds: Vec<Option<&str>> = Vec::with_capacity(other.len());
        let mut err_messages: Vec<Option<std::borrow::Cow<'_, str>>> =
            Vec::with_capacity(other.len());
        for o in &other {
            ids.push(o.id);
            attempts.push(o.attempt);
            let (state, delay, snooze, err) = match &o.outcome {
                Outcome::Completed(_) => unreachable!("partitioned out above"),
                Outcome::Retry { delay, error } => {
                    (JobState::Retryable, Some(*delay), false, Some(error))
                }
                Outcome::Discard(error) => (JobState::Discarded, None, false, Some(error)),
                Outcome::Snooze(delay) => (JobState::Scheduled, Some(*delay), true, None),
                Outcome::Cancel(_) => (JobState::Cancelled, None, false, None),
            };
            states.push(state);
            delays.push(delay.map(|d| d.min(MAX_DELAY).as_secs_f64()));
            snoozes.push(snooze);
            match (err, &o.outcome) {
                (Some(e), _) => {
                    err_kinds.push(Some(e.kind));
                    err_messages.push(Some(storable_message(&e.message)));
                }
                (None, Outcome::Cancel(reason)) => {
                    err_kinds.push(Some("cancelled"));
                    err_messages.push(Some(storable_message(reason)));
                }
                (None, _) => {
                    err_kinds.push(None);
                    err_messages.push(None);
                }
            }
        }
        let stmt = client.prepare_cached(SETTLE).await?;
        written += client
            .execute(
                &stmt,
                &[
                    &ids,
                    &attempts,
                    &states,
                    &delays,
                    &snoozes,
                    &err_kinds,
                    &err_messages,
                    &worker,
                ],
            )
            .await?;
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_lose_nuls_and_are_cut_at_a_character_boundary() {
        assert!(matches!(
            storable_message("fine"),
            std::borrow::Cow::Borrowed("fine")
        ));
        assert_eq!(storable_message("a\0b\0"), "ab");
        let long = "é".repeat(MAX_MESSAGE_BYTES);
        let cut = storable_message(&long);
        assert!(cut.len() <= MAX_MESSAGE_BYTES && cut.len() >= MAX_MESSAGE_BYTES - 1);
        assert!(cut.chars().all(|c| c == 'é'));
    }
}
