//! Job handlers: one module per kind, and the table that maps each registered kind to its
//! handler. The worker refuses to start if a registered kind has no handler.

pub mod noop;
pub mod send_confirmation_email;
pub mod upload_logo;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use domain::jobs::KINDS;
use engine::jobs::{JobArgs, KindSpec};
use engine::queue::FetchedJob;
use engine::retry::RetryPolicy;
use futures::future::BoxFuture;

use crate::breaker::Guards;
use crate::config::DeliverySettings;
use send_confirmation_email::Confirmation;
use send_confirmation_email::smtp::SmtpMailer;
use upload_logo::cloudinary::Cloudinary;
use upload_logo::{LocalStorage, Storage};

/// What handlers use besides their args: a pool, and the storage and mail delivery chosen once
/// at start-up.
#[derive(Clone)]
pub struct Services {
    /// Connections for the handlers' own statements.
    pub pool: Pool,
    /// Where logos are stored.
    pub storage: Arc<dyn Storage>,
    /// How confirmations are sent.
    pub confirmation: Arc<Confirmation>,
    /// Keep a logo's bytes after its upload succeeded (`LOGO_KEEP_AFTER_UPLOAD`).
    pub keep_logo_bytes: bool,
}

impl Services {
    /// The delivery `settings` ask for: Cloudinary when it is configured, else files under
    /// `uploads_dir`; an SMTP server when `SMTP_SERVER` is set, else the `.eml` outbox. The
    /// choice is made here, once.
    pub fn new(pool: Pool, delivery: &DeliverySettings) -> anyhow::Result<Self> {
        let mut services = Self::embedded(pool, delivery);
        if let Some(c) = &delivery.cloudinary {
            tracing::info!(cloud = %c.cloud_name, api_base = %c.api_base, "logos go to Cloudinary");
            services.storage = Arc::new(Cloudinary::new(c.clone())?);
        }
        if let Some(s) = &delivery.smtp {
            tracing::info!(server = %s.server, port = s.port, tls = ?s.tls, "mail goes to SMTP");
            services.confirmation = Arc::new(Confirmation {
                mailer: Arc::new(SmtpMailer::new(s)?),
                ..Confirmation::embedded(delivery)
            });
        }
        Ok(services)
    }

    /// The embedded defaults: logos as local files, mail as `.eml` files in an outbox.
    pub fn embedded(pool: Pool, delivery: &DeliverySettings) -> Self {
        Self {
            pool,
            storage: Arc::new(LocalStorage::new(&delivery.uploads_dir)),
            confirmation: Arc::new(Confirmation::embedded(delivery)),
            keep_logo_bytes: delivery.keep_logo_bytes,
        }
    }
}

/// What a handler tells the queue when it does not succeed.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// A transient failure: retry with the kind's backoff.
    #[error("{0}")]
    Retry(String),
    /// A transient failure with a known wait (e.g. HTTP 429 Retry-After).
    #[error("{message} (retry after {after:?})")]
    RetryAfter {
        /// What went wrong.
        message: String,
        /// How long to wait.
        after: Duration,
    },
    /// A failure that retrying cannot fix: discard now.
    #[error("{0}")]
    Permanent(String),
    /// Not now: run again after this long, without using up an attempt.
    #[error("snoozed for {0:?}")]
    Snooze(Duration),
    /// Give up on the job: cancelled, with the reason.
    #[error("cancelled: {0}")]
    Cancel(String),
    /// The attempt ran past the kind's timeout.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The args in the row do not parse as the kind's args.
    #[error("bad args: {0}")]
    BadArgs(String),
    /// No handler for the row's kind in this worker.
    #[error("no handler for kind {0:?} in this worker")]
    UnknownKind(String),
}

/// What a handler returns: an optional result to store, or what to do instead.
pub type JobResult = Result<Option<serde_json::Value>, JobError>;

/// What a handler may know about the job it runs.
#[derive(Debug, Clone)]
pub struct JobContext {
    /// The job's id.
    pub id: i64,
    /// This attempt (1-based).
    pub attempt: i32,
    /// The job's meta (request id and the like), parsed.
    pub meta: serde_json::Value,
    /// The circuit breakers and rate limits of external services: pass every call to one
    /// through them (`guards.call(service, ..)`).
    pub guards: Guards,
}

type BoxHandler = Arc<dyn Fn(FetchedJob, Guards) -> BoxFuture<'static, JobResult> + Send + Sync>;

/// The handler of each kind, with the kind's spec.
#[derive(Clone, Default)]
pub struct Handlers {
    by_kind: Arc<HashMap<&'static str, (&'static KindSpec, BoxHandler)>>,
    /// Per-kind timeouts that override the registry's (`KIND_TIMEOUTS_MS`).
    timeouts: Arc<HashMap<String, Duration>>,
    /// Per-kind retry backoffs that override the registry's (`KIND_RETRY`).
    retries: Arc<HashMap<String, RetryPolicy>>,
    /// Given to every handler in its context.
    guards: Guards,
}

impl Handlers {
    /// Every handler this worker has; one per registered kind.
    pub fn all(services: &Services) -> anyhow::Result<Self> {
        let mut h = Handlers::default();
        h.register::<engine::jobs::noop::Noop, _, _>(noop::run)?;
        let (pool, storage) = (services.pool.clone(), services.storage.clone());
        let keep = services.keep_logo_bytes;
        h.register(move |args, ctx| {
            upload_logo::run(args, ctx, pool.clone(), storage.clone(), keep)
        })?;
        let (pool, conf) = (services.pool.clone(), services.confirmation.clone());
        h.register(move |args, ctx| {
            send_confirmation_email::run(args, ctx, pool.clone(), conf.clone())
        })?;
        h.check_complete()?;
        Ok(h)
    }

    /// Override the timeout of the kinds in `timeouts`; the others keep their registry's.
    pub fn with_timeouts(mut self, timeouts: HashMap<String, Duration>) -> Self {
        self.timeouts = Arc::new(timeouts);
        self
    }

    /// Override the job-level retry backoff of the kinds in `retries`; the others keep their
    /// registry's.
    pub fn with_retries(mut self, retries: HashMap<String, RetryPolicy>) -> Self {
        self.retries = Arc::new(retries);
        self
    }

    /// The backoff between failed attempts of `kind`: the override if there is one, else the
    /// spec's.
    pub fn retry_policy(&self, kind: &str) -> Option<RetryPolicy> {
        let (spec, _) = self.by_kind.get(kind)?;
        Some(self.retries.get(spec.name).copied().unwrap_or(spec.retry))
    }

    /// Give handlers these guards of external services (by default, guards that allow every
    /// call).
    pub fn with_guards(mut self, guards: Guards) -> Self {
        self.guards = guards;
        self
    }

    /// The timeout of one attempt of `kind`: the override if there is one, else the spec's.
    pub fn timeout(&self, kind: &str) -> Option<Duration> {
        let (spec, _) = self.by_kind.get(kind)?;
        Some(self.timeout_of(spec))
    }

    fn timeout_of(&self, spec: &KindSpec) -> Duration {
        self.timeouts
            .get(spec.name)
            .copied()
            .unwrap_or(spec.timeout)
    }

    /// Add the handler of `A`'s kind. Fails for a kind the registry does not know or one that
    /// already has a handler.
    pub fn register<A, F, Fut>(&mut self, handler: F) -> anyhow::Result<()>
    where
        A: JobArgs,
        F: Fn(A, JobContext) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = JobResult> + Send + 'static,
    {
        let spec = domain::jobs::kind(A::KIND)?;
        let handler = Arc::new(handler);
        let run: BoxHandler = Arc::new(move |job: FetchedJob, guards: Guards| {
            let handler = handler.clone();
            Box::pin(async move {
                let args: A = serde_json::from_str(&job.args.0)
                    .map_err(|e| JobError::BadArgs(e.to_string()))?;
                let meta = serde_json::from_str(&job.meta.0).unwrap_or_default();
                handler(
                    args,
                    JobContext {
                        id: job.id,
                        attempt: job.attempt,
                        meta,
                        guards,
                    },
                )
                .await
            })
        });
        let by_kind = Arc::get_mut(&mut self.by_kind)
            .expect("handlers are registered before they are shared");
        if by_kind.insert(spec.name, (spec, run)).is_some() {
            anyhow::bail!("kind {:?} has two handlers", spec.name);
        }
        Ok(())
    }

    /// Fail unless every registered kind has a handler.
    pub fn check_complete(&self) -> anyhow::Result<()> {
        let missing: Vec<_> = KINDS
            .all()
            .iter()
            .map(|k| k.name)
            .filter(|k| !self.by_kind.contains_key(k))
            .collect();
        anyhow::ensure!(missing.is_empty(), "job kinds with no handler: {missing:?}");
        Ok(())
    }

    /// The kinds this worker handles.
    pub fn kinds(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.by_kind.keys().copied()
    }

    /// The spec of `kind`, if this worker handles it.
    pub fn spec(&self, kind: &str) -> Option<&'static KindSpec> {
        self.by_kind.get(kind).map(|(s, _)| *s)
    }

    /// Run `job` under its kind's timeout (or its override).
    pub async fn run(&self, job: FetchedJob) -> JobResult {
        let Some((spec, handler)) = self.by_kind.get(job.kind.as_str()) else {
            return Err(JobError::UnknownKind(job.kind.clone()));
        };
        let timeout = self.timeout_of(spec);
        match tokio::time::timeout(timeout, handler(job, self.guards.clone())).await {
            Ok(result) => result,
            Err(_) => Err(JobError::Timeout(timeout)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Handlers {
        let pool = engine::db::pool(&engine::config::DatabaseSettings::for_url(
            "postgres://localhost/unused",
        ))
        .unwrap();
        let no_env: &[(&str, &str)] = &[];
        let delivery = DeliverySettings::from_source(no_env).unwrap();
        Handlers::all(&Services::embedded(pool, &delivery)).unwrap()
    }

    #[test]
    fn every_kind_has_a_handler_and_every_handler_a_kind() {
        let h = all();
        assert_eq!(h.by_kind.len(), KINDS.all().len());
    }

    #[test]
    fn timeouts_are_overridden_per_kind() {
        let h = all();
        assert_eq!(h.timeout("noop"), Some(engine::jobs::noop::SPEC.timeout));
        let h = h.with_timeouts(HashMap::from([(
            "noop".to_string(),
            Duration::from_millis(300),
        )]));
        assert_eq!(h.timeout("noop"), Some(Duration::from_millis(300)));
        assert_eq!(h.timeout("nope"), None);
    }

    #[test]
    fn retry_policies_are_overridden_per_kind() {
        let h = all();
        let default = engine::jobs::noop::SPEC.retry;
        assert_eq!(h.retry_policy("noop"), Some(default));
        let fast = RetryPolicy {
            initial: Duration::from_millis(20),
            ..default
        };
        let h = h.with_retries(HashMap::from([("noop".to_string(), fast)]));
        assert_eq!(h.retry_policy("noop"), Some(fast));
        assert_eq!(
            h.retry_policy("upload_logo"),
            Some(domain::jobs::upload_logo::SPEC.retry)
        );
        assert_eq!(h.retry_policy("nope"), None);
    }
}
