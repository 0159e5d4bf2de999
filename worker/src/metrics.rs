//! Prometheus metrics of the worker, served on `METRICS_PORT` at `/metrics`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use common::breaker::State;
use common::queue::outcome::Outcome;
use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

/// Buckets of the run-time and latency histograms, in seconds: 1 ms to 5 min.
const BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// Serve `/metrics` on `port` (all interfaces).
pub fn install(port: u16) -> anyhow::Result<()> {
    PrometheusBuilder::new()
        .with_http_listener(SocketAddr::from(([0, 0, 0, 0], port)))
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS)?
        .install()?;
    Ok(())
}

/// The labels of one job's metrics.
pub struct JobLabels {
    queue: Arc<str>,
    kind: String,
}

impl JobLabels {
    /// Labels for a job of `kind` in `queue`.
    pub fn new(queue: &Arc<str>, kind: &str) -> Self {
        Self {
            queue: queue.clone(),
            kind: kind.to_owned(),
        }
    }
}

/// Jobs fetched from `queue`.
pub fn fetched(queue: &Arc<str>, n: usize) {
    if n > 0 {
        counter!("quayside_jobs_fetched_total", "queue" => queue.to_string()).increment(n as u64);
    }
}

/// A job started: its queue latency (start - run_at).
pub fn started(l: &JobLabels, run_at: DateTime<Utc>) {
    let latency = (Utc::now() - run_at).to_std().unwrap_or(Duration::ZERO);
    histogram!("quayside_job_queue_latency_seconds", "queue" => l.queue.to_string())
        .record(latency.as_secs_f64());
}

/// A job's attempt ended with `outcome` after `ran`.
pub fn finished(l: &JobLabels, outcome: &Outcome, ran: Duration) {
    let name = match outcome {
        Outcome::Completed(_) => "quayside_jobs_completed_total",
        Outcome::Retry { .. } => "quayside_jobs_retried_total",
        Outcome::Discard(_) => "quayside_jobs_discarded_total",
        Outcome::Snooze(_) => "quayside_jobs_snoozed_total",
        Outcome::Cancel(_) => "quayside_jobs_cancelled_total",
    };
    counter!(name, "queue" => l.queue.to_string(), "kind" => l.kind.clone()).increment(1);
    histogram!("quayside_job_run_seconds", "queue" => l.queue.to_string(), "kind" => l.kind.clone())
        .record(ran.as_secs_f64());
}

/// Jobs rescued after their lease expired.
pub fn rescued(retried: u64, discarded: u64) {
    counter!("quayside_jobs_rescued_total", "outcome" => "retried").increment(retried);
    counter!("quayside_jobs_rescued_total", "outcome" => "discarded").increment(discarded);
}

/// The breaker state of `service` a process last saw: 0 closed, 1 half-open, 2 open.
pub fn breaker_state(service: &str, state: State) {
    let v = match state {
        State::Closed => 0.0,
        State::HalfOpen => 1.0,
        State::Open => 2.0,
    };
    gauge!("quayside_breaker_state", "service" => service.to_owned()).set(v);
}

/// A breaker transition this process made.
pub fn breaker_transition(service: &str, from: State, to: State) {
    counter!("quayside_breaker_transitions_total", "service" => service.to_owned(),
             "from" => from.as_str(), "to" => to.as_str())
    .increment(1);
}

/// A call to `service` not made because its breaker is open (the job was snoozed).
pub fn breaker_denied(service: &str) {
    counter!("quayside_breaker_denied_total", "service" => service.to_owned()).increment(1);
}

/// A call to `service` not made because of its rate limit (the job was snoozed).
pub fn rate_limited(service: &str) {
    counter!("quayside_rate_limited_total", "service" => service.to_owned()).increment(1);
}

/// A call made to `service`, and whether the service answered well.
pub fn external_call(service: &str, ok: bool) {
    let result = if ok { "success" } else { "failure" };
    counter!("quayside_external_calls_total", "service" => service.to_owned(), "result" => result)
        .increment(1);
}
