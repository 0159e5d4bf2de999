//! The apalis backend: a thin adapter between apalis's worker and our queue.
//!
//! apalis pulls tasks with `poll_next`; ours come from a channel that the queue's producer
//! fills with jobs it fetched in batches (so fetching never waits on apalis, and apalis never
//! waits on a round trip). The backend's layer wraps the whole service, so it sees each job's
//! final result after the panic and timeout layers, decides the outcome, hands it to the
//! completer (which writes outcomes in batches) and frees the job's slot.

use std::any::Any;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use apalis_core::backend::finalize::Ephemeral;
use apalis_core::backend::{Backend, BackendConfig};
use apalis_core::error::BoxDynError;
use apalis_core::task::Task;
use apalis_core::task::builder::TaskBuilder;
use apalis_core::task::task_id::TaskId;
use apalis_core::worker::context::WorkerContext;
use engine::queue::FetchedJob;
use engine::queue::outcome::{AttemptOutcome, Failure, Outcome};
use engine::retry::RetryPolicy;
use futures::future::BoxFuture;
use tokio::sync::{Semaphore, mpsc};
use tower::{Layer, Service};

use super::completer::CompleterHandle;
use super::handlers::Handlers;
use super::job::JobError;
use super::metrics::QueueMetrics;

/// Default `WORKER_RETRY_AFTER_MAX_MS`: a day. A service that asks for a longer pause (in a
/// `Retry-After`, or a handler's snooze) is asked again after a day; a longer wait would
/// mostly hide a bad header, and a job that cannot wait can be retried by an operator.
pub const DEFAULT_RETRY_AFTER_MAX_MS: u64 = 24 * 3600 * 1000;

/// The backend of one queue's apalis worker.
#[derive(Clone)]
pub struct QueueBackend {
    rx: Arc<Mutex<mpsc::Receiver<FetchedJob>>>,
    layer: OutcomeLayer,
}

impl QueueBackend {
    /// A backend fed by `rx`, whose outcomes go to `completer` and whose finished jobs return
    /// their slot to `slots`. No handler's delay (`Retry-After`, snooze) exceeds
    /// `retry_after_max`.
    pub fn new(
        rx: mpsc::Receiver<FetchedJob>,
        slots: Arc<Semaphore>,
        completer: CompleterHandle,
        handlers: Handlers,
        metrics: Arc<QueueMetrics>,
        retry_after_max: Duration,
    ) -> Self {
        Self {
            rx: Arc::new(Mutex::new(rx)),
            layer: OutcomeLayer {
                slots,
                completer,
                handlers,
                metrics,
                retry_after_max,
            },
        }
    }
}

/// The backend never fails: database trouble is absorbed by the producer and the completer,
/// which back off and retry (an `Err` here would end the worker and apalis would restart it
/// in a hot loop).
#[derive(Debug, thiserror::Error)]
#[error("unreachable")]
pub struct NeverFails;

impl Backend for QueueBackend {
    type Task = Task<FetchedJob>;
    type Error = NeverFails;

    fn poll_ready(
        &mut self,
        _: &mut Context<'_>,
        _: &WorkerContext,
    ) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        _: &WorkerContext,
    ) -> Poll<Option<Result<Self::Task, Self::Error>>> {
        let mut rx = self.rx.lock().expect("backend receiver lock");
        rx.poll_recv(cx).map(|job| {
            job.map(|job| {
                let id = TaskId::from_int(job.id as u64);
                // apalis counts attempts from 0 and adds one when the task starts.
                let attempt = (job.attempt.max(1) - 1) as usize;
                Ok(TaskBuilder::new(job).task_id(id).attempt(attempt).build())
            })
        })
    }

    fn poll_close(
        &mut self,
        _: &mut Context<'_>,
        _: &WorkerContext,
    ) -> Poll<Result<(), Self::Error>> {
        // Called once every in-flight task has finished. Jobs still buffered never started:
        // drop them here; they stay in the in-flight set and are handed back to the queue when
        // the worker shuts down.
        let mut rx = self.rx.lock().expect("backend receiver lock");
        rx.close();
        while rx.try_recv().is_ok() {}
        Poll::Ready(Ok(()))
    }
}

impl BackendConfig for QueueBackend {
    type Args = FetchedJob;
    type Id = u64;
    type Kind = Ephemeral;
    type Config = ();
    type Layer = OutcomeLayer;

    fn config(&self) -> &Self::Config {
        &()
    }

    fn middleware(&mut self, _: &mut WorkerContext) -> Self::Layer {
        self.layer.clone()
    }
}

/// Records each job's outcome; see the module doc.
#[derive(Clone)]
pub struct OutcomeLayer {
    slots: Arc<Semaphore>,
    completer: CompleterHandle,
    handlers: Handlers,
    metrics: Arc<QueueMetrics>,
    retry_after_max: Duration,
}

impl<S> Layer<S> for OutcomeLayer {
    type Service = OutcomeService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        OutcomeService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service of [`OutcomeLayer`].
#[derive(Clone)]
pub struct OutcomeService<S> {
    inner: S,
    layer: OutcomeLayer,
}

impl<S> Service<Task<FetchedJob>> for OutcomeService<S>
where
    S: Service<Task<FetchedJob>, Response = serde_json::Value>,
    S::Future: Send + 'static,
    S::Error: Into<BoxDynError>,
{
    type Response = serde_json::Value;
    type Error = BoxDynError;
    type Future = BoxFuture<'static, Result<serde_json::Value, BoxDynError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, task: Task<FetchedJob>) -> Self::Future {
        let job = &task.args;
        let (id, attempt, max_attempts) = (job.id, job.attempt, job.max_attempts);
        self.layer.metrics.started(job.run_at);
        let kind = job.kind.clone();
        let policy = self.layer.handlers.retry_policy(&job.kind);
        let layer = self.layer.clone();
        let started = Instant::now();
        let fut = self.inner.call(task);
        Box::pin(async move {
            let result: Result<serde_json::Value, BoxDynError> = fut.await.map_err(Into::into);
            let outcome = match &result {
                Ok(serde_json::Value::Null) => Outcome::Completed(None),
                Ok(v) => Outcome::Completed(Some(v.clone())),
                Err(e) => cap_delay(
                    decide(e.as_ref(), attempt, max_attempts, policy),
                    layer.retry_after_max,
                ),
            };
            layer.metrics.finished(&kind, &outcome, started.elapsed());
            layer
                .completer
                .send(AttemptOutcome {
                    id,
                    attempt,
                    outcome,
                })
                .await;
            layer.slots.add_permits(1);
            result
        })
    }
}

/// What the queue does after a failed attempt: the handler's own verdict where it gave one;
/// otherwise a retry with the kind's backoff (`policy`: its `KIND_RETRY` override or the
/// registry's), or a discard once the attempts are used up.
pub fn decide(
    err: &(dyn std::error::Error + 'static),
    attempt: i32,
    max_attempts: i32,
    policy: Option<RetryPolicy>,
) -> Outcome {
    let retry = |failure: Failure, delay: Option<std::time::Duration>| {
        if attempt >= max_attempts {
            Outcome::Discard(failure)
        } else {
            let policy = policy.unwrap_or_default();
            Outcome::Retry {
                delay: delay.unwrap_or_else(|| policy.delay(attempt.max(1) as u32)),
                error: failure,
            }
        }
    };
    if let Some(e) = err.downcast_ref::<JobError>() {
        return match e {
            JobError::Retry(m) => retry(Failure::new("error", m.clone()), None),
            JobError::RetryAfter { message, after } => {
                retry(Failure::new("error", message.clone()), Some(*after))
            }
            JobError::Timeout(_) => retry(Failure::new("timeout", e.to_string()), None),
            JobError::Permanent(m) => Outcome::Discard(Failure::new("permanent", m.clone())),
            JobError::BadArgs(_) => Outcome::Discard(Failure::new("bad_args", e.to_string())),
            JobError::UnknownKind(_) => {
                Outcome::Discard(Failure::new("unknown_kind", e.to_string()))
            }
            JobError::Snooze(d) => Outcome::Snooze(*d),
            JobError::Cancel(reason) => Outcome::Cancel(reason.clone()),
        };
    }
    if let Some(p) = err.downcast_ref::<JobPanicked>() {
        return retry(Failure::new("panic", p.0.clone()), None);
    }
    retry(Failure::new("error", err.to_string()), None)
}

/// `outcome` with a wait longer than `max` (a remote `Retry-After`, a snooze) shortened to
/// it.
pub fn cap_delay(outcome: Outcome, max: Duration) -> Outcome {
    match outcome {
        Outcome::Retry { delay, error } => Outcome::Retry {
            delay: delay.min(max),
            error,
        },
        Outcome::Snooze(delay) => Outcome::Snooze(delay.min(max)),
        other => other,
    }
}

/// A handler panicked; the panic was caught and counts as a failed attempt.
#[derive(Debug, thiserror::Error)]
#[error("panicked: {0}")]
pub struct JobPanicked(pub String);

/// The panic handler of apalis's catch-panic layer: a panic becomes a retryable failure
/// (apalis's default makes it an `AbortError`, never retried).
pub fn on_panic(payload: &Box<dyn Any + Send>) -> JobPanicked {
    let message = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic with no message".into());
    JobPanicked(message)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn outcomes_follow_the_handlers_verdict_and_the_attempt_budget() {
        let spec = Some(engine::jobs::noop::SPEC.retry);
        let d = |e: JobError, attempt| decide(&e, attempt, 3, spec);
        assert!(matches!(
            d(JobError::Retry("x".into()), 1),
            Outcome::Retry { .. }
        ));
        assert!(
            matches!(d(JobError::Retry("x".into()), 3), Outcome::Discard(f) if f.kind == "error")
        );
        assert!(
            matches!(d(JobError::Timeout(Duration::from_secs(1)), 1), Outcome::Retry { error, .. } if error.kind == "timeout")
        );
        assert!(
            matches!(d(JobError::Permanent("x".into()), 1), Outcome::Discard(f) if f.kind == "permanent")
        );
        assert_eq!(
            d(JobError::Snooze(Duration::from_secs(2)), 3),
            Outcome::Snooze(Duration::from_secs(2))
        );
        assert!(
            matches!(d(JobError::RetryAfter { message: "429".into(), after: Duration::from_secs(7) }, 1),
            Outcome::Retry { delay, .. } if delay == Duration::from_secs(7))
        );
        assert!(
            matches!(decide(&JobPanicked("boom".into()), 1, 3, spec), Outcome::Retry { error, .. } if error.kind == "panic")
        );
        let exact = RetryPolicy {
            initial: Duration::from_millis(30),
            multiplier: 3.0,
            max: Duration::from_secs(1),
            jitter: 0.0,
        };
        assert!(
            matches!(decide(&JobError::Retry("x".into()), 2, 3, Some(exact)),
            Outcome::Retry { delay, .. } if delay == Duration::from_millis(90))
        );
        let huge = JobError::RetryAfter {
            message: "429".into(),
            after: Duration::MAX,
        };
        let day = Duration::from_secs(86_400);
        assert!(
            matches!(cap_delay(decide(&huge, 1, 3, spec), day), Outcome::Retry { delay, .. } if delay == day)
        );
        assert_eq!(
            cap_delay(decide(&JobError::Snooze(Duration::MAX), 1, 3, spec), day),
            Outcome::Snooze(day)
        );
        let other: BoxDynError = "plain".into();
        assert!(
            matches!(decide(other.as_ref(), 1, 3, spec), Outcome::Retry { error, .. } if error.message == "plain")
        );
    }
}
