//! `noop`: a diagnostic kind for smoke tests, benchmarks and operators checking the pipeline
//! end to end. With no args it succeeds at once; its options make it sleep, fail, panic,
//! snooze or cancel, so every outcome of the queue can be driven through real workers.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ArgsError, JobArgs, KindSpec, check_args};
use crate::names::ServiceName;
use crate::retry::RetryPolicy;

/// The args of a `noop` job. Every field is optional.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Noop {
    /// Sleep this long before finishing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sleep_ms: Option<u64>,
    /// Fail the first N attempts with a retryable error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fail_attempts: Option<u32>,
    /// Panic instead of finishing (a caught panic counts as a failed attempt).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub panic: Option<bool>,
    /// Fail with a permanent error: discarded at once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub permanent: Option<bool>,
    /// Snooze for this long, `snooze_times` times, before running.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snooze_ms: Option<u64>,
    /// How many times to snooze (default 1 when `snooze_ms` is set).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snooze_times: Option<u32>,
    /// Cancel itself instead of finishing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cancel: Option<bool>,
    /// Return the time the handler started (`{"started_at_us": unix microseconds}`) as the
    /// result: the pickup-latency benchmark reads it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report_start: Option<bool>,
    /// Stored as the job's result on success.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    /// Call this URL (`http://host:port/path`, GET) through the circuit breaker and rate limit
    /// of `service`: a 2xx answer is a success, anything else a retryable failure of the
    /// service. For checking the breakers and rate limits end to end.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub call_url: Option<String>,
    /// The external service `call_url` stands for (default `noop`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}

/// The longest sleep or snooze a `noop` may ask for: one day.
const MAX_MS: u64 = 86_400_000;

impl JobArgs for Noop {
    const KIND: &'static str = "noop";
    const SPEC: KindSpec = SPEC;

    fn validate(&self) -> Result<(), ArgsError> {
        for (field, v) in [("sleep_ms", self.sleep_ms), ("snooze_ms", self.snooze_ms)] {
            if v.is_some_and(|ms| ms > MAX_MS) {
                return Err(ArgsError::Invalid {
                    field,
                    message: format!("at most {MAX_MS} ms"),
                });
            }
        }
        if let Some(url) = &self.call_url {
            let host = url.strip_prefix("http://").unwrap_or("");
            if host.is_empty() || host.starts_with('/') {
                return Err(ArgsError::Invalid {
                    field: "call_url",
                    message: "an http://host:port/path URL".into(),
                });
            }
        }
        if let Some(service) = &self.service {
            // Kept as text in the args (a stored format), checked by the one rule.
            ServiceName::parse(service).map_err(|e| ArgsError::Invalid {
                field: "service",
                message: e.rule(),
            })?;
        }
        Ok(())
    }
}

/// The `noop` kind: default queue `default`, 3 attempts, quick retries, a 60 s timeout.
pub const SPEC: KindSpec = KindSpec {
    name: Noop::KIND,
    queue: "default",
    max_attempts: 3,
    retry: RetryPolicy {
        initial: Duration::from_millis(200),
        multiplier: 2.0,
        max: Duration::from_secs(10),
        jitter: 0.25,
    },
    timeout: Duration::from_secs(60),
    check: check_args::<Noop>,
};
