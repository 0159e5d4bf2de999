//! The handler registry: the contract between the runtime and the code that runs each kind.
//!
//! The application registers one handler per kind of its registry ([`Handlers::new`] takes
//! the list of kinds) and hands the table to the runtime, which runs each fetched job through
//! [`Handlers::run`] under the kind's timeout. The per-kind overrides of timeouts and retry
//! backoffs ([`KindSettings`], `KIND_TIMEOUTS_MS` and `KIND_RETRY`) live here too.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use engine::config::{ConfigError, Source};
use engine::jobs::{JobArgs, KindSpec, Kinds};
use engine::queue::FetchedJob;
use engine::retry::RetryPolicy;
use futures::future::BoxFuture;

use super::breaker::Guards;
use super::job::{JobError, JobResult};

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

/// The handler of each kind, with the kind's spec.
#[derive(Clone)]
pub struct Handlers {
    /// The registry the handlers are for: every kind a handler may be registered for.
    kinds: Kinds,
    by_kind: Arc<HashMap<&'static str, (&'static KindSpec, BoxHandler)>>,
    /// Per-kind timeouts that override the registry's (`KIND_TIMEOUTS_MS`).
    timeouts: Arc<HashMap<String, Duration>>,
    /// Per-kind retry backoffs that override the registry's (`KIND_RETRY`).
    retries: Arc<HashMap<String, RetryPolicy>>,
    /// Given to every handler in its context.
    guards: Guards,
}

/// Per-kind overrides of the registry's policies, from the environment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KindSettings {
    /// Per-kind overrides of the registry's attempt timeout (`KIND_TIMEOUTS_MS`,
    /// `kind=ms,kind=ms`).
    pub timeouts: HashMap<String, Duration>,
    /// Per-kind overrides of the registry's job-level retry backoff (`KIND_RETRY`,
    /// `kind=initial_ms:multiplier:max_ms[:jitter],...`). Attempt counts are not here: they
    /// are stored with each job when it is enqueued.
    pub retries: HashMap<String, RetryPolicy>,
}

type BoxHandler = Arc<dyn Fn(FetchedJob, Guards) -> BoxFuture<'static, JobResult> + Send + Sync>;

impl Handlers {
    /// No handler yet, for the kinds of `kinds` (the application's registry).
    pub fn new(kinds: Kinds) -> Self {
        Self {
            kinds,
            by_kind: Arc::default(),
            timeouts: Arc::default(),
            retries: Arc::default(),
            guards: Guards::default(),
        }
    }

    /// Override the timeouts and retry backoffs of the kinds `settings` name; the others keep
    /// their registry's.
    pub fn with_kind_settings(self, settings: KindSettings) -> Self {
        self.with_timeouts(settings.timeouts)
            .with_retries(settings.retries)
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
        let spec = self.kinds.get(A::KIND)?;
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

    /// Fail unless every kind of the registry has a handler.
    pub fn check_complete(&self) -> anyhow::Result<()> {
        let missing: Vec<_> = self
            .kinds
            .all()
            .iter()
            .map(|k| k.name)
            .filter(|k| !self.by_kind.contains_key(k))
            .collect();
        anyhow::ensure!(missing.is_empty(), "job kinds with no handler: {missing:?}");
        Ok(())
    }

    /// The registry the handlers are for.
    pub fn registry(&self) -> Kinds {
        self.kinds
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

impl KindSettings {
    /// Read and validate `KIND_TIMEOUTS_MS` and `KIND_RETRY`; each kind they name must be one
    /// of `kinds`.
    pub fn from_source(src: &(impl Source + ?Sized), kinds: Kinds) -> Result<Self, ConfigError> {
        Ok(Self {
            timeouts: match src.get("KIND_TIMEOUTS_MS") {
                None => HashMap::new(),
                Some(raw) => parse_kind_timeouts(&raw, kinds)?,
            },
            retries: match src.get("KIND_RETRY") {
                None => HashMap::new(),
                Some(raw) => parse_kind_retries(&raw, kinds)?,
            },
        })
    }
}

/// `noop=300,email=5000`: each a registered kind and its attempt timeout in milliseconds.
fn parse_kind_timeouts(raw: &str, kinds: Kinds) -> Result<HashMap<String, Duration>, ConfigError> {
    let bad = |message: String| ConfigError::new("KIND_TIMEOUTS_MS", message);
    let mut out = HashMap::new();
    for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (kind, ms) = part
            .split_once('=')
            .ok_or_else(|| bad(format!("{part:?} is not kind=milliseconds")))?;
        let kind = kinds
            .get(kind.trim())
            .map_err(|e| bad(format!("{part:?}: {e}")))?
            .name;
        let ms = ms
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|&ms| ms > 0)
            .ok_or_else(|| bad(format!("{part:?}: milliseconds must be a positive integer")))?;
        if out
            .insert(kind.to_owned(), Duration::from_millis(ms))
            .is_some()
        {
            return Err(bad(format!("{kind:?} is listed twice")));
        }
    }
    Ok(out)
}

/// `upload_logo=500:2:60000,noop=50:1.5:1000:0`: per kind, the first retry's delay in
/// milliseconds, the multiplier, the cap in milliseconds and optionally the jitter (a
/// fraction in `[0, 1)`; the kind's own when left out).
fn parse_kind_retries(
    raw: &str,
    kinds: Kinds,
) -> Result<HashMap<String, RetryPolicy>, ConfigError> {
    const SHAPE: &str = "kind=initial_ms:multiplier:max_ms[:jitter]";
    let bad = |message: String| ConfigError::new("KIND_RETRY", message);
    let mut out = HashMap::new();
    for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (kind, policy) = part
            .split_once('=')
            .ok_or_else(|| bad(format!("{part:?} is not {SHAPE}")))?;
        let spec = kinds
            .get(kind.trim())
            .map_err(|e| bad(format!("{part:?}: {e}")))?;
        let fields: Vec<&str> = policy.split(':').map(str::trim).collect();
        if !(3..=4).contains(&fields.len()) {
            return Err(bad(format!("{part:?} is not {SHAPE}")));
        }
        let ms = |raw: &str, what: &str| {
            raw.parse::<u64>()
                .ok()
                .filter(|&ms| ms > 0)
                .map(Duration::from_millis)
                .ok_or_else(|| bad(format!("{part:?}: {what} must be a positive integer")))
        };
        let initial = ms(fields[0], "initial_ms")?;
        let multiplier = fields[1]
            .parse::<f64>()
            .ok()
            .filter(|m| m.is_finite() && *m >= 1.0)
            .ok_or_else(|| bad(format!("{part:?}: multiplier must be a number >= 1")))?;
        let max = ms(fields[2], "max_ms")?;
        if max < initial {
            return Err(bad(format!("{part:?}: max_ms must be >= initial_ms")));
        }
        let jitter = match fields.get(3) {
            None => spec.retry.jitter,
            Some(raw) => raw
                .parse::<f64>()
                .ok()
                .filter(|j| (0.0..1.0).contains(j))
                .ok_or_else(|| bad(format!("{part:?}: jitter must be a number in [0, 1)")))?,
        };
        let policy = RetryPolicy {
            initial,
            multiplier,
            max,
            jitter,
        };
        if out.insert(spec.name.to_owned(), policy).is_some() {
            return Err(bad(format!("{:?} is listed twice", spec.name)));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use engine::jobs::noop::{Noop, SPEC as NOOP};

    use super::*;

    /// A registry of two kinds: `noop`, and `slow`, a noop under another name and policy.
    static KINDS: Kinds = Kinds::new(&[
        NOOP,
        KindSpec {
            name: "slow",
            timeout: Duration::from_secs(600),
            retry: RetryPolicy {
                initial: Duration::from_secs(5),
                multiplier: 2.0,
                max: Duration::from_secs(60),
                jitter: 0.1,
            },
            ..NOOP
        },
    ]);

    fn noop_only() -> Handlers {
        let mut h = Handlers::new(KINDS);
        h.register(|_: Noop, _| async { Ok(None) }).unwrap();
        h
    }

    fn kinds(env: &[(&str, &str)]) -> Result<KindSettings, ConfigError> {
        KindSettings::from_source(env, KINDS)
    }

    #[test]
    fn a_kind_without_a_handler_or_with_two_is_refused() {
        let mut h = noop_only();
        assert!(h.check_complete().unwrap_err().to_string().contains("slow"));
        assert!(h.register(|_: Noop, _| async { Ok(None) }).is_err());
        assert_eq!(h.kinds().collect::<Vec<_>>(), ["noop"]);
    }

    #[test]
    fn timeouts_are_overridden_per_kind() {
        let h = noop_only();
        assert_eq!(h.timeout("noop"), Some(NOOP.timeout));
        let h = h.with_timeouts(HashMap::from([(
            "noop".to_string(),
            Duration::from_millis(300),
        )]));
        assert_eq!(h.timeout("noop"), Some(Duration::from_millis(300)));
        assert_eq!(h.timeout("nope"), None);
    }

    #[test]
    fn retry_policies_are_overridden_per_kind() {
        let h = noop_only();
        let default = NOOP.retry;
        assert_eq!(h.retry_policy("noop"), Some(default));
        let fast = RetryPolicy {
            initial: Duration::from_millis(20),
            ..default
        };
        let h = h.with_retries(HashMap::from([("noop".to_string(), fast)]));
        assert_eq!(h.retry_policy("noop"), Some(fast));
        assert_eq!(h.retry_policy("nope"), None);
    }

    #[test]
    fn kind_timeouts_parse_and_bad_ones_are_named() {
        let s = kinds(&[("KIND_TIMEOUTS_MS", " noop = 300 ,")]).unwrap();
        assert_eq!(
            s.timeouts,
            HashMap::from([("noop".to_string(), Duration::from_millis(300))])
        );
        assert!(kinds(&[]).unwrap().timeouts.is_empty());
        for bad in [
            "noop",
            "noop=",
            "noop=0",
            "noop=-5",
            "noop=soon",
            "nope=300",
            "noop=300,noop=400",
        ] {
            let err = kinds(&[("KIND_TIMEOUTS_MS", bad)]).unwrap_err();
            assert_eq!(err.name, "KIND_TIMEOUTS_MS", "{bad}: {err}");
            let line = err.to_string();
            assert!(
                line.contains("KIND_TIMEOUTS_MS") && !line.contains('\n'),
                "{bad}: {line}"
            );
        }
    }

    #[test]
    fn kind_retries_parse_and_bad_ones_are_named() {
        let s = kinds(&[(
            "KIND_RETRY",
            " noop = 50 : 1.5 : 1000 , slow=500:2:60000:0,",
        )])
        .unwrap();
        assert_eq!(
            s.retries,
            HashMap::from([
                (
                    "noop".to_string(),
                    RetryPolicy {
                        initial: Duration::from_millis(50),
                        multiplier: 1.5,
                        max: Duration::from_secs(1),
                        jitter: NOOP.retry.jitter,
                    }
                ),
                (
                    "slow".to_string(),
                    RetryPolicy {
                        initial: Duration::from_millis(500),
                        multiplier: 2.0,
                        max: Duration::from_secs(60),
                        jitter: 0.0,
                    }
                ),
            ])
        );
        assert!(kinds(&[]).unwrap().retries.is_empty());
        for bad in [
            "noop",
            "noop=",
            "noop=50",
            "noop=50:2",
            "noop=50:2:1000:0.1:9",
            "nope=50:2:1000",
            "noop=0:2:1000",
            "noop=-5:2:1000",
            "noop=soon:2:1000",
            "noop=50:0.5:1000",
            "noop=50:NaN:1000",
            "noop=50:inf:1000",
            "noop=50:x:1000",
            "noop=50:2:0",
            "noop=500:2:100",
            "noop=50:2:1000:1",
            "noop=50:2:1000:-0.1",
            "noop=50:2:1000,noop=60:2:1000",
        ] {
            let err = kinds(&[("KIND_RETRY", bad)]).unwrap_err();
            assert_eq!(err.name, "KIND_RETRY", "{bad}: {err}");
            let line = err.to_string();
            assert!(
                line.contains("KIND_RETRY") && !line.contains('\n'),
                "{bad}: {line}"
            );
        }
    }
}
