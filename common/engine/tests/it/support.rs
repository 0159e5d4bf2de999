//! Small helpers shared by the test modules.

use chrono::{DateTime, Utc};
use engine::queue::{JobOptions, NewJob};

/// A `noop` job for `queue` with args `{"n": n}`, options otherwise default.
pub fn job(queue: &str, n: i64) -> NewJob {
    NewJob::unchecked("noop", serde_json::json!({ "n": n })).with(JobOptions {
        queue: Some(engine::names::QueueName::parse(queue).unwrap()),
        ..JobOptions::default()
    })
}

/// Like [`job`], with a unique key.
pub fn unique_job(queue: &str, n: i64, key: &str) -> NewJob {
    let mut j = job(queue, n);
    j.opts.unique_key = Some(key.to_owned());
    j
}

/// Like [`job`], with a priority and a run_at.
pub fn timed_job(queue: &str, n: i64, priority: i16, run_at: DateTime<Utc>) -> NewJob {
    let mut j = job(queue, n);
    j.opts.priority = Some(priority);
    j.opts.run_at = Some(run_at);
    j
}
