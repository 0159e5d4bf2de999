//! The worker's side of the circuit breakers and rate limits of external services: a handler
//! passes each call to a service through [`Guards`], which asks the service's global rate
//! limit and its cluster-wide breaker (both in PostgreSQL, `engine::ratelimit` and
//! `engine::breaker`), runs the call, and records its result.
//!
//! When the breaker is open or the rate limit says wait, the call is not made and the handler
//! gets `JobError::Snooze` until the half-open time or the next free slot: the job is
//! rescheduled without using up an attempt.
//!
//! Each process caches the last breaker state it saw for [`ServicesSettings::cache_ttl`]: while
//! it is closed with no failure since the last success, a call costs no round trip for the
//! breaker (the rate limit, when set, still costs one), and its success is counted locally and
//! written with the next visit to the database (a failure, or the first call after the cache
//! period), so a healthy service costs one breaker round trip per cache period per process.
//! Any other state is asked of the database, so a failure seen by one process stops the
//! others within one cache period.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use engine::breaker::{self, Call, Decision, Forced, Policy, State};
use engine::config::{ConfigError, Source, millis, parse_or, positive};
use engine::ratelimit::{self, Limit, Take};

use super::job::JobError;

/// The breaker policy and rate limit of one service.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceSettings {
    /// When its breaker opens and how it recovers.
    pub breaker: Policy,
    /// Its global rate limit, if it has one.
    pub rate_limit: Option<Limit>,
}

/// The external services' settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ServicesSettings {
    /// The policy of a service not listed in `services`.
    pub default: Policy,
    /// Settings per service name.
    pub services: HashMap<String, ServiceSettings>,
    /// How long a process trusts the breaker state it last saw.
    pub cache_ttl: Duration,
}

/// The names of the settings of a service that has its own: `{PREFIX}BREAKER_*` over the
/// `BREAKER_*` of every service, and its rate limit. The application lists its services
/// (each integration owns its entry); the runtime knows none by name.
#[derive(Debug, Clone, Copy)]
pub struct NamedService {
    /// The guard name of the service, as handlers pass it to [`Guards::call`].
    pub service: &'static str,
    /// The names of its breaker settings (`policy_names!("SMTP_BREAKER_")`).
    pub breaker: PolicyNames,
    /// The name of its rate-limit setting (`SMTP_RATE_LIMIT`).
    pub rate_limit: &'static str,
}

/// The names of one breaker policy's settings; made by [`policy_names!`] from a prefix.
#[derive(Debug, Clone, Copy)]
pub struct PolicyNames {
    /// `{prefix}FAILURE_THRESHOLD`.
    pub threshold: &'static str,
    /// `{prefix}FAILURE_RATE`.
    pub rate: &'static str,
    /// `{prefix}MIN_CALLS`.
    pub min_calls: &'static str,
    /// `{prefix}WINDOW_MS`.
    pub window: &'static str,
    /// `{prefix}COOL_DOWN_MS`.
    pub cool_down: &'static str,
    /// `{prefix}HALF_OPEN_PROBES`.
    pub probes: &'static str,
}

/// The [`PolicyNames`] of the settings that start with `$prefix` (a string literal).
macro_rules! policy_names {
    ($prefix:literal) => {
        $crate::runtime::breaker::PolicyNames {
            threshold: concat!($prefix, "FAILURE_THRESHOLD"),
            rate: concat!($prefix, "FAILURE_RATE"),
            min_calls: concat!($prefix, "MIN_CALLS"),
            window: concat!($prefix, "WINDOW_MS"),
            cool_down: concat!($prefix, "COOL_DOWN_MS"),
            probes: concat!($prefix, "HALF_OPEN_PROBES"),
        }
    };
}
pub(crate) use policy_names;

/// Default `BREAKER_CACHE_TTL_MS`: a failure seen by one process stops the others within a
/// second, while a healthy service costs one breaker round trip per second per process.
pub const DEFAULT_BREAKER_CACHE_TTL_MS: u64 = 1_000;

impl Default for ServicesSettings {
    fn default() -> Self {
        ServicesSettings {
            default: Policy::default(),
            services: HashMap::new(),
            cache_ttl: Duration::from_millis(DEFAULT_BREAKER_CACHE_TTL_MS),
        }
    }
}

impl ServicesSettings {
    /// Read and validate the breakers and rate limits: `BREAKER_*` for every service, the
    /// settings of each of `named` over them, and `RATE_LIMITS` (`service=calls/period,...`)
    /// for any service.
    pub fn from_source(
        src: &(impl Source + ?Sized),
        named: &[NamedService],
    ) -> Result<Self, ConfigError> {
        let default = policy(src, &policy_names!("BREAKER_"), &Policy::default())?;
        let mut services = HashMap::new();
        let limit = |name: &'static str, raw: &str| {
            raw.parse::<Limit>().map_err(|e| ConfigError::new(name, e))
        };
        if let Some(raw) = src.get("RATE_LIMITS") {
            for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                let (service, l) = part.split_once('=').ok_or_else(|| {
                    ConfigError::new(
                        "RATE_LIMITS",
                        format!("{part:?} is not service=calls/period"),
                    )
                })?;
                let service = service.trim();
                if service.is_empty()
                    || !service
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
                {
                    return Err(ConfigError::new(
                        "RATE_LIMITS",
                        format!("{service:?} is not a service name (letters, digits, _ - .)"),
                    ));
                }
                let rate_limit = Some(limit("RATE_LIMITS", l)?);
                let old = services.insert(
                    service.to_owned(),
                    ServiceSettings {
                        breaker: default,
                        rate_limit,
                    },
                );
                if old.is_some() {
                    return Err(ConfigError::new(
                        "RATE_LIMITS",
                        format!("{service:?} is listed twice"),
                    ));
                }
            }
        }
        for n in named {
            let breaker = policy(src, &n.breaker, &default)?;
            let rate_limit = match src.get(n.rate_limit) {
                Some(raw) => Some(limit(n.rate_limit, &raw)?),
                None => services.get(n.service).and_then(|s| s.rate_limit),
            };
            services.insert(
                n.service.to_string(),
                ServiceSettings {
                    breaker,
                    rate_limit,
                },
            );
        }
        Ok(ServicesSettings {
            default,
            services,
            cache_ttl: millis(src, "BREAKER_CACHE_TTL_MS", DEFAULT_BREAKER_CACHE_TTL_MS)?,
        })
    }

    /// The settings of `service`: its own, or the default policy with no rate limit.
    pub fn of(&self, service: &str) -> ServiceSettings {
        self.services
            .get(service)
            .cloned()
            .unwrap_or(ServiceSettings {
                breaker: self.default,
                rate_limit: None,
            })
    }
}

/// The guard of every external service, shared by a worker's handlers. Cheap to clone.
#[derive(Clone, Default)]
pub struct Guards {
    inner: Option<Arc<Inner>>,
}

impl std::fmt::Debug for Guards {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guards")
            .field("settings", &self.inner.as_ref().map(|i| &i.settings))
            .finish()
    }
}

struct Inner {
    pool: Pool,
    settings: ServicesSettings,
    cache: Mutex<HashMap<String, Slot>>,
}

/// What a process knows of one service's breaker.
#[derive(Debug, Default)]
struct Slot {
    seen: Option<Seen>,
    /// Successes counted locally, not yet written.
    pending_successes: u32,
}

/// The breaker state a process last saw.
#[derive(Debug, Clone, Copy)]
struct Seen {
    at: Instant,
    state: State,
    forced: Option<Forced>,
    consecutive_failures: i32,
    half_open_at: Option<DateTime<Utc>>,
}

/// Leave to make one call: record its result with [`Permit::success`] or
/// [`Permit::failure`]. A permit dropped unrecorded (the job timed out or panicked during the
/// call) counts as a failure.
pub struct Permit {
    guards: Guards,
    service: String,
    probe: bool,
    recorded: bool,
}

/// How long a job is snoozed when the breaker's state cannot be read (the database is away).
const UNKNOWN_STATE_SNOOZE: Duration = Duration::from_secs(1);
/// The shortest snooze, so a slot due now is not raced in a hot loop.
const MIN_SNOOZE: Duration = Duration::from_millis(20);

impl Guards {
    /// Guards keeping their state in the database behind `pool`.
    pub fn new(pool: Pool, settings: ServicesSettings) -> Guards {
        Guards {
            inner: Some(Arc::new(Inner {
                pool,
                settings,
                cache: Mutex::new(HashMap::new()),
            })),
        }
    }

    /// Leave to call `service` now, or `JobError::Snooze` until the breaker's half-open time
    /// or the rate limit's next free slot. Guards built with `default()` (no database) allow
    /// every call.
    pub async fn enter(&self, service: &str) -> Result<Permit, JobError> {
        let Some(inner) = &self.inner else {
            return Ok(self.permit(service, false));
        };
        let settings = inner.settings.of(service);
        let seen = inner.seen(service);
        let trusted = seen.filter(|s| s.at.elapsed() < inner.settings.cache_ttl);
        // Known open and not yet due: no round trip, no rate-limit slot used.
        if let Some(s) = trusted {
            let until = match (s.forced, s.state) {
                (Some(Forced::Open), _) => Some(
                    Utc::now()
                        + chrono::Duration::from_std(settings.breaker.recovery_timeout)
                            .unwrap_or(chrono::Duration::MAX),
                ),
                (None, State::Open) => s.half_open_at.filter(|&t| t > Utc::now()),
                _ => None,
            };
            if let Some(until) = until {
                super::metrics::breaker_denied(service);
                return Err(snooze_until(until));
            }
        }
        if let Some(limit) = settings.rate_limit {
            match inner.take(service, limit).await {
                Ok(Take::Allowed { .. }) => {}
                Ok(Take::Wait { until }) => {
                    super::metrics::rate_limited(service);
                    return Err(snooze_until(until));
                }
                Err(e) => {
                    tracing::warn!(service, error = %e, "cannot take from the rate limit; snoozing");
                    return Err(JobError::Snooze(UNKNOWN_STATE_SNOOZE));
                }
            }
        }
        if trusted.as_ref().is_some_and(healthy) {
            return Ok(self.permit(service, false));
        }
        // Past the cache period with successes to write: writing them also reads the state.
        match inner.flush(service, &settings.breaker).await {
            Ok(Some(b)) if healthy(&b) => {
                return Ok(self.permit(service, false));
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(service, error = %e, "cannot record successes in the circuit breaker")
            }
        }
        match inner.acquire(service, &settings.breaker).await {
            Ok(Decision::Allowed { probe }) => Ok(self.permit(service, probe)),
            Ok(Decision::Denied { until }) => {
                super::metrics::breaker_denied(service);
                Err(snooze_until(until))
            }
            Err(e) => {
                tracing::warn!(service, error = %e, "cannot read the circuit breaker; snoozing");
                Err(JobError::Snooze(UNKNOWN_STATE_SNOOZE))
            }
        }
    }

    /// Run `call` under `service`'s guard: `Err(JobError::Snooze)` without calling when the
    /// breaker or the rate limit says not now; otherwise the call's own result, recorded as a
    /// failure of the service when it is an error for which `is_failure` says so (connection
    /// error, timeout, 5xx), and as a success otherwise: an error that is the caller's fault,
    /// such as a rejected file, means the service answered.
    pub async fn call<T, E, Fut>(
        &self,
        service: &str,
        call: Fut,
        is_failure: impl FnOnce(&E) -> bool,
    ) -> Result<Result<T, E>, JobError>
    where
        Fut: Future<Output = Result<T, E>>,
    {
        let permit = self.enter(service).await?;
        let result = call.await;
        match &result {
            Err(e) if is_failure(e) => permit.failure().await,
            _ => permit.success().await,
        }
        Ok(result)
    }

    fn permit(&self, service: &str, probe: bool) -> Permit {
        Permit {
            guards: self.clone(),
            service: service.to_owned(),
            probe,
            recorded: false,
        }
    }

    async fn record(&self, service: &str, call: Call, probe: bool) {
        super::metrics::external_call(service, call == Call::Success);
        if let Some(inner) = &self.inner {
            if call == Call::Success && !probe && inner.count_success(service) {
                return;
            }
            let policy = inner.settings.of(service).breaker;
            if let Err(e) = inner.record(service, call, probe, &policy).await {
                tracing::warn!(service, error = %e, "cannot record a call in the circuit breaker");
            }
        }
    }
}

impl Permit {
    /// Whether this call is one of the half-open probes.
    pub fn is_probe(&self) -> bool {
        self.probe
    }

    /// The call worked.
    pub async fn success(mut self) {
        self.recorded = true;
        self.guards
            .record(&self.service, Call::Success, self.probe)
            .await;
    }

    /// The service failed.
    pub async fn failure(mut self) {
        self.recorded = true;
        self.guards
            .record(&self.service, Call::Failure, self.probe)
            .await;
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if self.recorded {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let guards = self.guards.clone();
            let service = std::mem::take(&mut self.service);
            let probe = self.probe;
            rt.spawn(async move { guards.record(&service, Call::Failure, probe).await });
        }
    }
}

impl Inner {
    fn seen(&self, service: &str) -> Option<Seen> {
        self.cache
            .lock()
            .expect("breaker cache lock")
            .get(service)
            .and_then(|s| s.seen)
    }

    /// Count a success locally when the state this process saw within the cache period is
    /// closed and healthy; false when it must be written now.
    fn count_success(&self, service: &str) -> bool {
        let mut cache = self.cache.lock().expect("breaker cache lock");
        let Some(slot) = cache.get_mut(service) else {
            return false;
        };
        let fresh = slot
            .seen
            .is_some_and(|s| s.at.elapsed() < self.settings.cache_ttl && healthy(&s));
        if fresh {
            slot.pending_successes += 1;
        }
        fresh
    }

    fn take_pending(&self, service: &str) -> u32 {
        self.cache
            .lock()
            .expect("breaker cache lock")
            .get_mut(service)
            .map_or(0, |s| std::mem::take(&mut s.pending_successes))
    }

    /// Write the successes counted locally, if any; the breaker after them.
    async fn flush(&self, service: &str, policy: &Policy) -> anyhow::Result<Option<Seen>> {
        let n = self.take_pending(service);
        if n == 0 {
            return Ok(None);
        }
        let mut conn = self.pool.get().await?;
        let out = breaker::record_successes(&mut conn, service, n, policy).await?;
        Ok(Some(self.saw(&out.breaker, out.transition.as_ref())))
    }

    fn saw(&self, b: &breaker::Breaker, transition: Option<&breaker::Transition>) -> Seen {
        let seen = Seen {
            at: Instant::now(),
            state: b.state,
            forced: b.forced,
            consecutive_failures: b.consecutive_failures,
            half_open_at: b.half_open_at,
        };
        self.cache
            .lock()
            .expect("breaker cache lock")
            .entry(b.service.clone())
            .or_default()
            .seen = Some(seen);
        super::metrics::breaker_state(&b.service, b.state);
        if let Some(t) = transition {
            super::metrics::breaker_transition(&b.service, t.from, t.to);
            tracing::warn!(
                service = %b.service,
                from = t.from.as_str(),
                to = t.to.as_str(),
                reason = t.reason,
                consecutive_failures = b.consecutive_failures,
                "circuit breaker changed state"
            );
        }
        seen
    }

    async fn take(&self, service: &str, limit: Limit) -> anyhow::Result<Take> {
        let mut conn = self.pool.get().await?;
        Ok(ratelimit::take(&mut conn, service, limit).await?)
    }

    async fn acquire(&self, service: &str, policy: &Policy) -> anyhow::Result<Decision> {
        let mut conn = self.pool.get().await?;
        let out = breaker::acquire(&mut conn, service, policy).await?;
        self.saw(&out.breaker, out.transition.as_ref());
        Ok(out.value)
    }

    async fn record(
        &self,
        service: &str,
        call: Call,
        probe: bool,
        policy: &Policy,
    ) -> anyhow::Result<()> {
        // The successes counted before this call go first.
        self.flush(service, policy).await?;
        let mut conn = self.pool.get().await?;
        let out = breaker::record(&mut conn, service, call, probe, policy).await?;
        self.saw(&out.breaker, out.transition.as_ref());
        Ok(())
    }
}

/// The breaker policy read from `names`, each unset one taken from `base`.
fn policy(
    src: &(impl Source + ?Sized),
    names: &PolicyNames,
    base: &Policy,
) -> Result<Policy, ConfigError> {
    let ms = |name, d: Duration| millis(src, name, d.as_millis() as u64);
    let failure_rate: f64 = parse_or(src, names.rate, base.failure_rate)?;
    if !(0.0..=1.0).contains(&failure_rate) {
        return Err(ConfigError::new(names.rate, "must be between 0 and 1"));
    }
    Ok(Policy {
        failure_threshold: parse_or(src, names.threshold, base.failure_threshold)?,
        failure_rate,
        min_calls: positive(src, names.min_calls, u64::from(base.min_calls))?
            .try_into()
            .map_err(|_| ConfigError::new(names.min_calls, "too large"))?,
        window: ms(names.window, base.window)?,
        recovery_timeout: ms(names.cool_down, base.recovery_timeout)?,
        half_open_max_calls: positive(src, names.probes, u64::from(base.half_open_max_calls))?
            .try_into()
            .map_err(|_| ConfigError::new(names.probes, "too large"))?,
    })
}

/// Closed (or forced closed) with no failure since the last success: calls need not ask.
fn healthy(s: &Seen) -> bool {
    s.forced == Some(Forced::Closed)
        || (s.forced.is_none() && s.state == State::Closed && s.consecutive_failures == 0)
}

/// Snooze until `until` (at least [`MIN_SNOOZE`]).
fn snooze_until(until: DateTime<Utc>) -> JobError {
    let wait = (until - Utc::now()).to_std().unwrap_or_default();
    JobError::Snooze(wait.max(MIN_SNOOZE))
}

#[cfg(test)]
mod tests {
    use testkit::TestDb;

    use super::*;

    #[tokio::test]
    async fn guards_without_a_database_let_every_call_through() {
        let g = Guards::default();
        let r: Result<Result<u8, &str>, JobError> =
            g.call("x", async { Err("boom") }, |_| true).await;
        assert_eq!(r.unwrap(), Err("boom"));
        let p = g.enter("x").await.unwrap();
        assert!(!p.is_probe());
        p.success().await;
    }

    #[test]
    fn unknown_services_get_the_default_policy_and_no_rate_limit() {
        let mut s = ServicesSettings::default();
        s.services.insert(
            "smtp".into(),
            ServiceSettings {
                breaker: Policy {
                    failure_threshold: 2,
                    ..Policy::default()
                },
                rate_limit: Some("5/1s".parse().unwrap()),
            },
        );
        assert_eq!(s.of("smtp").breaker.failure_threshold, 2);
        assert_eq!(s.of("other").breaker, Policy::default());
        assert_eq!(s.of("other").rate_limit, None);
    }

    #[test]
    fn a_named_services_settings_go_over_the_defaults_and_bad_ones_are_named() {
        const SVC: NamedService = NamedService {
            service: "svc",
            breaker: policy_names!("SVC_BREAKER_"),
            rate_limit: "SVC_RATE_LIMIT",
        };
        let read = |env: &[(&str, &str)]| ServicesSettings::from_source(env, &[SVC]);
        let s = read(&[
            ("BREAKER_FAILURE_THRESHOLD", "7"),
            ("SVC_BREAKER_HALF_OPEN_PROBES", "3"),
            ("RATE_LIMITS", "svc=1/1s, other=10/5s"),
        ])
        .unwrap();
        let svc = s.of("svc");
        assert_eq!(
            (
                svc.breaker.failure_threshold,
                svc.breaker.half_open_max_calls
            ),
            (7, 3)
        );
        assert_eq!(svc.rate_limit, Some("1/1s".parse().unwrap()));
        assert_eq!(s.of("other").rate_limit, Some("10/5s".parse().unwrap()));
        assert_eq!(
            s.cache_ttl,
            Duration::from_millis(DEFAULT_BREAKER_CACHE_TTL_MS)
        );
        let s = read(&[("SVC_RATE_LIMIT", "2/1s"), ("RATE_LIMITS", "svc=1/1s")]).unwrap();
        assert_eq!(s.of("svc").rate_limit, Some("2/1s".parse().unwrap()));
        for (name, value) in [
            ("BREAKER_FAILURE_RATE", "1.5"),
            ("SVC_BREAKER_MIN_CALLS", "0"),
            ("SVC_RATE_LIMIT", "500"),
            ("RATE_LIMITS", "a=1/1s,a=2/1s"),
            ("BREAKER_CACHE_TTL_MS", "soon"),
        ] {
            let err = read(&[(name, value)]).unwrap_err();
            assert_eq!(err.name, name, "{value}: {err}");
        }
    }

    fn settings(rate_limit: Option<&str>) -> ServicesSettings {
        let breaker = Policy {
            failure_threshold: 2,
            failure_rate: 0.0,
            recovery_timeout: Duration::from_secs(3600),
            ..Policy::default()
        };
        ServicesSettings {
            default: breaker,
            services: HashMap::from([(
                "svc".to_string(),
                ServiceSettings {
                    breaker,
                    rate_limit: rate_limit.map(|l| l.parse().unwrap()),
                },
            )]),
            // Long: within a test the cache never expires.
            cache_ttl: Duration::from_secs(3600),
        }
    }

    async fn row(db: &TestDb) -> breaker::Breaker {
        breaker::list(&db.conn().await)
            .await
            .unwrap()
            .into_iter()
            .find(|b| b.service == "svc")
            .expect("a breaker row")
    }

    async fn ok(g: &Guards) -> Result<Result<(), &'static str>, JobError> {
        g.call("svc", async { Ok(()) }, |_| true).await
    }

    async fn down(g: &Guards) -> Result<Result<(), &'static str>, JobError> {
        g.call("svc", async { Err("down") }, |_| true).await
    }

    #[tokio::test]
    async fn healthy_successes_are_counted_locally_and_written_with_the_next_failure() {
        let db = TestDb::new().await;
        let g = Guards::new(db.pool.clone(), settings(None));
        for _ in 0..5 {
            ok(&g).await.unwrap().unwrap();
        }
        // The first call read the breaker; the successes are not written yet.
        let b = row(&db).await;
        assert_eq!((b.window_successes, b.window_failures), (0, 0));
        assert_eq!(down(&g).await.unwrap(), Err("down"));
        let b = row(&db).await;
        assert_eq!(
            (
                b.window_successes,
                b.window_failures,
                b.consecutive_failures
            ),
            (5, 1, 1)
        );
        // Not healthy any more: the next success is written at once.
        ok(&g).await.unwrap().unwrap();
        let b = row(&db).await;
        assert_eq!((b.window_successes, b.consecutive_failures), (6, 0));
    }

    #[tokio::test]
    async fn a_breaker_opened_by_one_process_stops_the_others_without_calling() {
        let db = TestDb::new().await;
        let (a, b) = (
            Guards::new(db.pool.clone(), settings(None)),
            Guards::new(db.pool.clone(), settings(None)),
        );
        for _ in 0..2 {
            assert_eq!(down(&a).await.unwrap(), Err("down"));
        }
        assert_eq!(row(&db).await.state, State::Open);
        for g in [&a, &b] {
            let called = std::sync::atomic::AtomicBool::new(false);
            let r = g
                .call(
                    "svc",
                    async {
                        called.store(true, std::sync::atomic::Ordering::SeqCst);
                        Ok::<_, ()>(())
                    },
                    |_| true,
                )
                .await;
            assert!(
                matches!(r, Err(JobError::Snooze(d)) if d > Duration::from_secs(3500)),
                "{r:?}"
            );
            assert!(!called.load(std::sync::atomic::Ordering::SeqCst));
        }
    }

    #[tokio::test]
    async fn a_call_over_the_rate_limit_is_snoozed_to_the_next_free_slot() {
        let db = TestDb::new().await;
        let g = Guards::new(db.pool.clone(), settings(Some("2/1h")));
        ok(&g).await.unwrap().unwrap();
        ok(&g).await.unwrap().unwrap();
        let r = ok(&g).await;
        assert!(
            matches!(r, Err(JobError::Snooze(d)) if d > Duration::from_secs(3500)),
            "{r:?}"
        );
    }

    #[tokio::test]
    async fn a_permit_dropped_unrecorded_counts_as_a_failure() {
        let db = TestDb::new().await;
        let g = Guards::new(db.pool.clone(), settings(None));
        drop(g.enter("svc").await.unwrap());
        testkit::wait_for("the failure", Duration::from_secs(10), || async {
            (row(&db).await.consecutive_failures == 1).then_some(())
        })
        .await;
    }

    #[test]
    fn a_snooze_is_never_shorter_than_the_minimum() {
        assert!(matches!(
            snooze_until(Utc::now() - chrono::Duration::seconds(5)),
            JobError::Snooze(d) if d == MIN_SNOOZE
        ));
        assert!(matches!(
            snooze_until(Utc::now() + chrono::Duration::seconds(60)),
            JobError::Snooze(d) if d > Duration::from_secs(59)
        ));
    }
}
