//! Prometheus metrics of the API, served at `/metrics`: requests by route template and
//! status, a latency histogram, the pool, queue depth by queue and state, and the use of
//! queues' concurrency limits.
//!
//! Each app owns its recorder rather than installing a global one: a process (a test binary)
//! may build many apps, and a global recorder can be installed only once. Recording goes
//! through `metrics::with_local_recorder`.

use std::collections::BTreeSet;
use std::sync::Mutex;

use engine::queue::JobState;
use engine::queue::admin::QueueDepth;
use engine::queue::limits::LimitUsage;
use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

/// Latency buckets in seconds: 1 ms to 10 s.
const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The app's recorder and what it has seen.
pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    /// Queues reported before: a queue whose jobs are all gone is reported as zeros rather
    /// than keeping its last counts.
    queues: Mutex<BTreeSet<String>>,
    /// Queues reported with limits before, likewise.
    limited: Mutex<BTreeSet<String>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh recorder.
    pub fn new() -> Self {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS)
            .expect("the buckets are not empty")
            .build_recorder();
        let handle = recorder.handle();
        Self {
            recorder,
            handle,
            queues: Mutex::new(BTreeSet::new()),
            limited: Mutex::new(BTreeSet::new()),
        }
    }

    /// One answered request.
    pub fn request(&self, method: &str, route: &str, status: u16, seconds: f64) {
        metrics::with_local_recorder(&self.recorder, || {
            counter!(
                "quayside_http_requests_total",
                "method" => method.to_owned(),
                "route" => route.to_owned(),
                "status" => status.to_string()
            )
            .increment(1);
            histogram!(
                "quayside_http_request_duration_seconds",
                "method" => method.to_owned(),
                "route" => route.to_owned()
            )
            .record(seconds);
        });
    }

    /// The pool's state at scrape time.
    pub fn pool(&self, status: deadpool_postgres::Status) {
        metrics::with_local_recorder(&self.recorder, || {
            gauge!("quayside_db_pool_max_connections").set(status.max_size as f64);
            gauge!("quayside_db_pool_connections").set(status.size as f64);
            gauge!("quayside_db_pool_available_connections").set(status.available as f64);
            gauge!("quayside_db_pool_in_use_connections")
                .set(status.size.saturating_sub(status.available) as f64);
            gauge!("quayside_db_pool_waiting").set(status.waiting as f64);
        });
    }

    /// Queue depth at scrape time: every state of every queue seen so far, zeros included.
    pub fn queue_depth(&self, depth: &[QueueDepth]) {
        let mut queues = self.queues.lock().expect("metrics lock");
        queues.extend(depth.iter().map(|d| d.queue.clone()));
        metrics::with_local_recorder(&self.recorder, || {
            for queue in queues.iter() {
                for state in JobState::ALL {
                    let count = depth
                        .iter()
                        .find(|d| &d.queue == queue && d.state == state)
                        .map_or(0, |d| d.count);
                    gauge!(
                        "quayside_queue_jobs",
                        "queue" => queue.clone(),
                        "state" => state.as_str()
                    )
                    .set(count as f64);
                }
            }
        });
    }

    /// Concurrency limits at scrape time, per limited queue: `quayside_queue_limit_max_running`
    /// (0 when only keys are limited), `quayside_queue_limit_running` (its running jobs) and
    /// `quayside_queue_limit_waiting` (available jobs a limit holds back). A queue whose limits
    /// were removed reads 0 on all three.
    pub fn queue_limits(&self, usage: &[LimitUsage]) {
        let mut limited = self.limited.lock().expect("metrics lock");
        limited.extend(usage.iter().map(|u| u.queue.clone()));
        metrics::with_local_recorder(&self.recorder, || {
            for queue in limited.iter() {
                let u = usage.iter().find(|u| &u.queue == queue);
                let max = u.and_then(|u| u.limits.max_running).unwrap_or(0);
                gauge!("quayside_queue_limit_max_running", "queue" => queue.clone())
                    .set(f64::from(max));
                gauge!("quayside_queue_limit_running", "queue" => queue.clone())
                    .set(u.map_or(0, |u| u.running) as f64);
                gauge!("quayside_queue_limit_waiting", "queue" => queue.clone())
                    .set(u.map_or(0, |u| u.waiting) as f64);
            }
        });
    }

    /// The Prometheus text.
    pub fn render(&self) -> String {
        self.handle.render()
    }
}
