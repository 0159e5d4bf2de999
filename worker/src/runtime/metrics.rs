//! Prometheus metrics of the worker, served on `METRICS_PORT` at `/metrics`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use engine::breaker::State;
use engine::config::{ConfigError, Source, parse_or};
use engine::queue::outcome::Outcome;
use metrics::{Counter, Histogram, counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

/// Buckets of the run-time and latency histograms, in seconds: 1 ms to 5 min.
const BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// `METRICS_PORT`: the port of the `/metrics` endpoint; none when unset.
pub fn port_from_source(src: &(impl Source + ?Sized)) -> Result<Option<u16>, ConfigError> {
    match src.get("METRICS_PORT") {
        None => Ok(None),
        Some(_) => Ok(Some(parse_or(src, "METRICS_PORT", 0u16)?)),
    }
}

/// Serve `/metrics` on `port` (all interfaces).
pub fn install(port: u16) -> anyhow::Result<()> {
    PrometheusBuilder::new()
        .with_http_listener(SocketAddr::from(([0, 0, 0, 0], port)))
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS)?
        .install()?;
    Ok(())
}

/// The metric handles of one queue's jobs, one set per kind, made when the worker starts so
/// that running a job neither allocates label strings nor looks a metric up by name.
pub struct QueueMetrics {
    queue: Arc<str>,
    fetched: Counter,
    latency: Histogram,
    by_kind: HashMap<&'static str, KindMetrics>,
}

struct KindMetrics {
    run: Histogram,
    completed: Counter,
    retried: Counter,
    discarded: Counter,
    snoozed: Counter,
    cancelled: Counter,
}

impl KindMetrics {
    fn new(queue: &str, kind: &str) -> Self {
        let count = |name: &'static str| counter!(name, "queue" => queue.to_owned(), "kind" => kind.to_owned());
        Self {
            run: histogram!("quayside_job_run_seconds", "queue" => queue.to_owned(), "kind" => kind.to_owned()),
            completed: count("quayside_jobs_completed_total"),
            retried: count("quayside_jobs_retried_total"),
            discarded: count("quayside_jobs_discarded_total"),
            snoozed: count("quayside_jobs_snoozed_total"),
            cancelled: count("quayside_jobs_cancelled_total"),
        }
    }

    fn finished(&self, outcome: &Outcome, ran: Duration) {
        match outcome {
            Outcome::Completed(_) => &self.completed,
            Outcome::Retry { .. } => &self.retried,
            Outcome::Discard(_) => &self.discarded,
            Outcome::Snooze(_) => &self.snoozed,
            Outcome::Cancel(_) => &self.cancelled,
        }
        .increment(1);
        self.run.record(ran.as_secs_f64());
    }
}

impl QueueMetrics {
    /// Handles for the jobs of `kinds` in `queue`. Make them after [`install`]: a handle made
    /// before binds to no recorder.
    pub fn new(queue: &Arc<str>, kinds: impl IntoIterator<Item = &'static str>) -> Self {
        Self {
            queue: queue.clone(),
            fetched: counter!("quayside_jobs_fetched_total", "queue" => queue.to_string()),
            latency: histogram!("quayside_job_queue_latency_seconds", "queue" => queue.to_string()),
            by_kind: kinds
                .into_iter()
                .map(|k| (k, KindMetrics::new(queue, k)))
                .collect(),
        }
    }

    /// `n` jobs fetched.
    pub fn fetched(&self, n: usize) {
        self.fetched.increment(n as u64);
    }

    /// A job started: its queue latency (start - run_at).
    pub fn started(&self, run_at: DateTime<Utc>) {
        let latency = (Utc::now() - run_at).to_std().unwrap_or(Duration::ZERO);
        self.latency.record(latency.as_secs_f64());
    }

    /// A job of `kind` ended its attempt with `outcome` after `ran`.
    pub fn finished(&self, kind: &str, outcome: &Outcome, ran: Duration) {
        match self.by_kind.get(kind) {
            Some(m) => m.finished(outcome, ran),
            // A kind this worker has no handler for (its job is discarded): rare enough to
            // make its handles on the spot.
            None => KindMetrics::new(&self.queue, kind).finished(outcome, ran),
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_port_is_optional_and_a_bad_one_is_named() {
        let none: &[(&str, &str)] = &[];
        assert_eq!(port_from_source(none).unwrap(), None);
        assert_eq!(
            port_from_source(&[("METRICS_PORT", "9100")][..]).unwrap(),
            Some(9100)
        );
        let err = port_from_source(&[("METRICS_PORT", "99999")][..]).unwrap_err();
        assert_eq!(err.name, "METRICS_PORT");
    }
}
