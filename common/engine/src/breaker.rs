//! Circuit breakers of external services, shared by every worker process through PostgreSQL:
//! when one worker sees a service fail, all of them stop calling it.
//!
//! The state machine is apalis's in-process `CircuitBreaker` (closed → open → half-open →
//! closed) with its names (`failure_threshold`, `recovery_timeout`, `half_open_max_calls`),
//! kept in one `breakers` row per service. Every change runs in one short transaction that
//! locks the row (created on first use), decides in Rust ([`Breaker::acquire_at`],
//! [`Breaker::record_at`], [`Breaker::force_at`], pure and unit-tested) and writes it back,
//! so concurrent callers in any process are serialised on the row: the probes of a half-open
//! breaker are granted at most [`Policy::half_open_max_calls`] times across the cluster, and
//! concurrent failures open it once.
//!
//! The policy is the caller's (from its settings); the row holds only state.

use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use tokio_postgres::Row;

use crate::db::DbError;
use crate::names::ServiceName;

/// Where a breaker is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Calls go through; failures are counted.
    Closed,
    /// No calls until the cool-down ends.
    Open,
    /// A limited number of probe calls decide whether it closes or opens again.
    HalfOpen,
}

impl State {
    /// The stored name: `closed`, `open` or `half_open`.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
        }
    }

    fn parse(s: &str) -> State {
        match s {
            "open" => State::Open,
            "half_open" => State::HalfOpen,
            _ => State::Closed,
        }
    }
}

/// An operator's override.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forced {
    /// No calls, whatever happens, until cleared.
    Open,
    /// Calls go through, whatever happens, until cleared.
    Closed,
}

impl Forced {
    /// The stored name: `open` or `closed`.
    pub fn as_str(self) -> &'static str {
        match self {
            Forced::Open => "open",
            Forced::Closed => "closed",
        }
    }
}

/// What an operator asks of a breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Force {
    /// Force it open.
    Open,
    /// Force it closed.
    Closed,
    /// Drop the override; a breaker forced open probes at once.
    Clear,
}

/// When a breaker opens, and how it recovers. Given by the caller on every operation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    /// Consecutive failures that open it (0: never on this count).
    pub failure_threshold: u32,
    /// Failure rate over the window (0 to 1) that opens it (0: never on the rate).
    pub failure_rate: f64,
    /// Calls in the window before the rate counts.
    pub min_calls: u32,
    /// Length of the failure-rate window (a fixed window, reset when it ends).
    pub window: Duration,
    /// How long it stays open before probing (the cool-down); also how long a probe permit
    /// may go unanswered before it is granted again.
    pub recovery_timeout: Duration,
    /// Probe calls allowed at once across the cluster while half-open.
    pub half_open_max_calls: u32,
}

impl Default for Policy {
    /// 5 consecutive failures, or half of at least 20 calls in a minute; 30 s cool-down; one
    /// probe.
    fn default() -> Self {
        Policy {
            failure_threshold: 5,
            failure_rate: 0.5,
            min_calls: 20,
            window: Duration::from_secs(60),
            recovery_timeout: Duration::from_secs(30),
            half_open_max_calls: 1,
        }
    }
}

/// One breaker's row.
#[derive(Debug, Clone, PartialEq)]
pub struct Breaker {
    /// The service's name.
    pub service: String,
    /// Where it is.
    pub state: State,
    /// Failures since the last success.
    pub consecutive_failures: i32,
    /// Start of the failure-rate window.
    pub window_started_at: DateTime<Utc>,
    /// Successes in the window.
    pub window_successes: i32,
    /// Failures in the window.
    pub window_failures: i32,
    /// When it last opened.
    pub opened_at: Option<DateTime<Utc>>,
    /// When its cool-down ends (the first probe may go then).
    pub half_open_at: Option<DateTime<Utc>>,
    /// Probe permits granted in this half-open period.
    pub probes_granted: i32,
    /// When the first of them was granted.
    pub probes_granted_at: Option<DateTime<Utc>>,
    /// How many times it has opened.
    pub times_opened: i64,
    /// The operator's override.
    pub forced: Option<Forced>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

/// Whether a call may go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Go; `probe` when it is one of the half-open probes (its result must be recorded with
    /// `probe: true`).
    Allowed {
        /// One of the half-open probes.
        probe: bool,
    },
    /// Not before `until`.
    Denied {
        /// When to ask again.
        until: DateTime<Utc>,
    },
}

/// The result of a call to the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// It worked (or failed in a way that says nothing about the service's health).
    Success,
    /// The service failed (connection error, timeout, 5xx, ...).
    Failure,
}

/// A change of state, for logs and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// From.
    pub from: State,
    /// To.
    pub to: State,
    /// Why: `consecutive failures`, `failure rate`, `cool-down over`, `probe succeeded`,
    /// `probe failed`, `forced open`, `forced closed`, `override cleared`.
    pub reason: &'static str,
}

/// What an operation did: the breaker after it and its transition, if any.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome<T> {
    /// The operation's answer.
    pub value: T,
    /// The state change it made.
    pub transition: Option<Transition>,
    /// The breaker after it.
    pub breaker: Breaker,
}

/// Ask whether a call to `service` may go; in half-open this claims one of the cluster's
/// probe permits.
pub async fn acquire(
    client: &mut deadpool_postgres::Client,
    service: &str,
    policy: &Policy,
) -> Result<Outcome<Decision>, DbError> {
    locked(client, service, |b, now| b.acquire_at(policy, now)).await
}

/// Record the result of a call allowed by [`acquire`] (`probe` as it said).
pub async fn record(
    client: &mut deadpool_postgres::Client,
    service: &str,
    call: Call,
    probe: bool,
    policy: &Policy,
) -> Result<Outcome<()>, DbError> {
    locked(client, service, |b, now| {
        ((), b.record_at(call, probe, policy, now))
    })
    .await
}

/// Record `n` successes of calls that were not probes, at once (a process counts the
/// successes it sees while the breaker is closed and healthy, and writes them together).
pub async fn record_successes(
    client: &mut deadpool_postgres::Client,
    service: &str,
    n: u32,
    policy: &Policy,
) -> Result<Outcome<()>, DbError> {
    locked(client, service, |b, now| {
        // Successes of non-probe calls never change the state.
        for _ in 0..n {
            b.record_at(Call::Success, false, policy, now);
        }
        ((), None)
    })
    .await
}

/// Apply an operator's override (it needs no policy: a forced breaker ignores it, and one
/// released from a forced open probes at once).
pub async fn force(
    client: &mut deadpool_postgres::Client,
    service: &ServiceName,
    force: Force,
) -> Result<Outcome<()>, DbError> {
    let tx = client.transaction().await?;
    let out = force_in(&tx, service, force).await?;
    tx.commit().await?;
    Ok(out)
}

/// [`force`] inside the caller's transaction `tx`, so that what the caller records about
/// the override commits with it or not at all.
pub async fn force_in(
    tx: &impl GenericClient,
    service: &ServiceName,
    force: Force,
) -> Result<Outcome<()>, DbError> {
    locked_in(tx, service.as_str(), |b, now| ((), b.force_at(force, now))).await
}

const LIST: &str = "SELECT service, state, consecutive_failures, window_started_at, \
     window_successes, window_failures, opened_at, half_open_at, probes_granted, \
     probes_granted_at, times_opened, forced, updated_at FROM breakers ORDER BY service";

/// Every breaker, by service name.
pub async fn list(client: &impl GenericClient) -> Result<Vec<Breaker>, DbError> {
    let rows = client.query(LIST, &[]).await?;
    Ok(rows.iter().map(from_row).collect())
}

/// Lock the service's row, creating it; the time is read after the lock is held.
const LOCK: &str = "
INSERT INTO breakers (service) VALUES ($1)
ON CONFLICT (service) DO UPDATE SET service = EXCLUDED.service
RETURNING service, state, consecutive_failures, window_started_at, window_successes,
          window_failures, opened_at, half_open_at, probes_granted, probes_granted_at,
          times_opened, forced, updated_at, clock_timestamp()";

const SAVE: &str = "
UPDATE breakers
   SET state = $2, consecutive_failures = $3, window_started_at = $4, window_successes = $5,
       window_failures = $6, opened_at = $7, half_open_at = $8, probes_granted = $9,
       probes_granted_at = $10, times_opened = $11, forced = $12, updated_at = $13
 WHERE service = $1";

/// Run `decide` on the locked row of `service` and save what it changed, in one transaction.
async fn locked<T>(
    client: &mut deadpool_postgres::Client,
    service: &str,
    decide: impl FnOnce(&mut Breaker, DateTime<Utc>) -> (T, Option<Transition>),
) -> Result<Outcome<T>, DbError> {
    let tx = client.transaction().await?;
    let out = locked_in(&tx, service, decide).await?;
    tx.commit().await?;
    Ok(out)
}

/// [`locked`] inside the transaction `tx`.
async fn locked_in<T>(
    tx: &impl GenericClient,
    service: &str,
    decide: impl FnOnce(&mut Breaker, DateTime<Utc>) -> (T, Option<Transition>),
) -> Result<Outcome<T>, DbError> {
    let row = tx.query_one(LOCK, &[&service]).await?;
    let now: DateTime<Utc> = row.get(13);
    let before = from_row(&row);
    let mut b = before.clone();
    let (value, transition) = decide(&mut b, now);
    if b != before {
        b.updated_at = now;
        tx.execute(
            SAVE,
            &[
                &b.service,
                &b.state.as_str(),
                &b.consecutive_failures,
                &b.window_started_at,
                &b.window_successes,
                &b.window_failures,
                &b.opened_at,
                &b.half_open_at,
                &b.probes_granted,
                &b.probes_granted_at,
                &b.times_opened,
                &b.forced.map(Forced::as_str),
                &b.updated_at,
            ],
        )
        .await?;
    }
    Ok(Outcome {
        value,
        transition,
        breaker: b,
    })
}

fn from_row(r: &Row) -> Breaker {
    Breaker {
        service: r.get(0),
        state: State::parse(r.get(1)),
        consecutive_failures: r.get(2),
        window_started_at: r.get(3),
        window_successes: r.get(4),
        window_failures: r.get(5),
        opened_at: r.get(6),
        half_open_at: r.get(7),
        probes_granted: r.get(8),
        probes_granted_at: r.get(9),
        times_opened: r.get(10),
        forced: r.get::<_, Option<&str>>(11).map(|f| match f {
            "open" => Forced::Open,
            _ => Forced::Closed,
        }),
        updated_at: r.get(12),
    }
}

fn after(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    t + chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

impl Breaker {
    /// A new, closed breaker of `service` at `now`.
    pub fn new(service: &str, now: DateTime<Utc>) -> Breaker {
        Breaker {
            service: service.to_owned(),
            state: State::Closed,
            consecutive_failures: 0,
            window_started_at: now,
            window_successes: 0,
            window_failures: 0,
            opened_at: None,
            half_open_at: None,
            probes_granted: 0,
            probes_granted_at: None,
            times_opened: 0,
            forced: None,
            updated_at: now,
        }
    }

    /// Whether a call may go at `now`. Open past its cool-down, it turns half-open and grants
    /// the first probe; half-open, it grants up to `half_open_max_calls` probes, and grants
    /// them again when none has answered within `recovery_timeout` (their process died).
    pub fn acquire_at(
        &mut self,
        policy: &Policy,
        now: DateTime<Utc>,
    ) -> (Decision, Option<Transition>) {
        match self.forced {
            Some(Forced::Open) => {
                return (
                    Decision::Denied {
                        until: after(now, policy.recovery_timeout),
                    },
                    None,
                );
            }
            Some(Forced::Closed) => return (Decision::Allowed { probe: false }, None),
            None => {}
        }
        match self.state {
            State::Closed => (Decision::Allowed { probe: false }, None),
            State::Open => {
                let due = self.half_open_at.unwrap_or(now);
                if now < due {
                    return (Decision::Denied { until: due }, None);
                }
                self.state = State::HalfOpen;
                self.probes_granted = 1;
                self.probes_granted_at = Some(now);
                (
                    Decision::Allowed { probe: true },
                    Some(Transition {
                        from: State::Open,
                        to: State::HalfOpen,
                        reason: "cool-down over",
                    }),
                )
            }
            State::HalfOpen => {
                let max = policy.half_open_max_calls.max(1) as i32;
                let since = *self.probes_granted_at.get_or_insert(now);
                let lost = after(since, policy.recovery_timeout);
                if self.probes_granted < max {
                    self.probes_granted += 1;
                    (Decision::Allowed { probe: true }, None)
                } else if now >= lost {
                    self.probes_granted = 1;
                    self.probes_granted_at = Some(now);
                    (Decision::Allowed { probe: true }, None)
                } else {
                    (Decision::Denied { until: lost }, None)
                }
            }
        }
    }

    /// Count the result of a call at `now`. Closed, it opens after `failure_threshold`
    /// consecutive failures or at `failure_rate` over the window; half-open, a probe's
    /// success closes it and a probe's failure opens it again with a fresh cool-down. Results
    /// of calls let through before it opened (not probes) change no state then. Forced closed,
    /// failures are counted but never open it.
    pub fn record_at(
        &mut self,
        call: Call,
        probe: bool,
        policy: &Policy,
        now: DateTime<Utc>,
    ) -> Option<Transition> {
        if now >= after(self.window_started_at, policy.window) {
            self.window_started_at = now;
            self.window_successes = 0;
            self.window_failures = 0;
        }
        match call {
            Call::Success => {
                self.window_successes += 1;
                self.consecutive_failures = 0;
            }
            Call::Failure => {
                self.window_failures += 1;
                self.consecutive_failures += 1;
            }
        }
        if self.forced.is_some() {
            return None;
        }
        match (self.state, call) {
            (State::Closed, Call::Failure) => {
                let calls = self.window_successes + self.window_failures;
                let reason = if policy.failure_threshold > 0
                    && self.consecutive_failures >= policy.failure_threshold as i32
                {
                    "consecutive failures"
                } else if policy.failure_rate > 0.0
                    && calls >= policy.min_calls.max(1) as i32
                    && f64::from(self.window_failures) >= policy.failure_rate * f64::from(calls)
                {
                    "failure rate"
                } else {
                    return None;
                };
                Some(self.open(State::Closed, reason, policy.recovery_timeout, now))
            }
            (State::HalfOpen, Call::Success) if probe => {
                Some(self.close(State::HalfOpen, "probe succeeded", now))
            }
            (State::HalfOpen, Call::Failure) if probe => Some(self.open(
                State::HalfOpen,
                "probe failed",
                policy.recovery_timeout,
                now,
            )),
            _ => None,
        }
    }

    /// Apply an operator's override at `now`.
    pub fn force_at(&mut self, force: Force, now: DateTime<Utc>) -> Option<Transition> {
        match force {
            Force::Open => {
                self.forced = Some(Forced::Open);
                (self.state != State::Open)
                    .then(|| self.open(self.state, "forced open", Duration::ZERO, now))
            }
            Force::Closed => {
                self.forced = Some(Forced::Closed);
                (self.state != State::Closed).then(|| self.close(self.state, "forced closed", now))
            }
            Force::Clear => {
                if self.forced.take() == Some(Forced::Open) && self.state == State::Open {
                    // The operator lifted it: probe now rather than after a cool-down.
                    self.half_open_at = Some(now);
                }
                None
            }
        }
    }

    fn open(
        &mut self,
        from: State,
        reason: &'static str,
        cool_down: Duration,
        now: DateTime<Utc>,
    ) -> Transition {
        self.state = State::Open;
        self.opened_at = Some(now);
        self.half_open_at = Some(after(now, cool_down));
        self.probes_granted = 0;
        self.probes_granted_at = None;
        self.times_opened += 1;
        Transition {
            from,
            to: State::Open,
            reason,
        }
    }

    fn close(&mut self, from: State, reason: &'static str, now: DateTime<Utc>) -> Transition {
        self.state = State::Closed;
        self.consecutive_failures = 0;
        self.window_started_at = now;
        self.window_successes = 0;
        self.window_failures = 0;
        self.probes_granted = 0;
        self.probes_granted_at = None;
        Transition {
            from,
            to: State::Closed,
            reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ms: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(1_700_000_000_000 + ms).unwrap()
    }

    fn policy() -> Policy {
        Policy {
            failure_threshold: 3,
            failure_rate: 0.5,
            min_calls: 10,
            window: Duration::from_secs(60),
            recovery_timeout: Duration::from_secs(10),
            half_open_max_calls: 2,
        }
    }

    #[test]
    fn consecutive_failures_open_it_and_a_success_resets_the_count() {
        let p = policy();
        let mut b = Breaker::new("s", t(0));
        assert_eq!(b.record_at(Call::Failure, false, &p, t(1)), None);
        assert_eq!(b.record_at(Call::Failure, false, &p, t(2)), None);
        assert_eq!(b.record_at(Call::Success, false, &p, t(3)), None);
        assert_eq!(b.consecutive_failures, 0);
        assert_eq!(b.record_at(Call::Failure, false, &p, t(4)), None);
        assert_eq!(b.record_at(Call::Failure, false, &p, t(5)), None);
        let tr = b.record_at(Call::Failure, false, &p, t(6)).unwrap();
        assert_eq!(
            (tr.from, tr.to, tr.reason),
            (State::Closed, State::Open, "consecutive failures")
        );
        assert_eq!(b.half_open_at, Some(t(10_006)));
        assert_eq!(b.times_opened, 1);
        // Late failures of calls let through before it opened change nothing.
        assert_eq!(b.record_at(Call::Failure, false, &p, t(7)), None);
        assert_eq!(b.times_opened, 1);
        assert_eq!(
            b.acquire_at(&p, t(8)).0,
            Decision::Denied { until: t(10_006) }
        );
    }

    #[test]
    fn the_failure_rate_opens_it_once_enough_calls_were_seen_in_the_window() {
        let p = Policy {
            failure_threshold: 0,
            ..policy()
        };
        let mut b = Breaker::new("s", t(0));
        // Alternating: 50 %, but only from the 10th call on.
        for i in 0..9 {
            let call = if i % 2 == 0 {
                Call::Success
            } else {
                Call::Failure
            };
            assert_eq!(b.record_at(call, false, &p, t(i)), None, "call {i}");
        }
        let tr = b.record_at(Call::Failure, false, &p, t(9)).unwrap();
        assert_eq!(tr.reason, "failure rate");
        // A new window forgets the old calls.
        let mut b = Breaker::new("s", t(0));
        for i in 0..9 {
            b.record_at(Call::Failure, false, &p, t(i));
        }
        assert_eq!(b.record_at(Call::Failure, false, &p, t(60_000)), None);
        assert_eq!((b.window_failures, b.window_successes), (1, 0));
    }

    #[test]
    fn half_open_grants_limited_probes_and_their_results_decide() {
        let p = policy();
        let mut b = Breaker::new("s", t(0));
        for i in 0..3 {
            b.record_at(Call::Failure, false, &p, t(i));
        }
        assert_eq!(b.state, State::Open);
        let (d, tr) = b.acquire_at(&p, t(10_002));
        assert_eq!(d, Decision::Allowed { probe: true });
        assert_eq!(tr.unwrap().to, State::HalfOpen);
        assert_eq!(
            b.acquire_at(&p, t(10_003)).0,
            Decision::Allowed { probe: true }
        );
        assert_eq!(
            b.acquire_at(&p, t(10_004)).0,
            Decision::Denied { until: t(20_002) }
        );
        // A non-probe result changes nothing; a probe failure reopens with a fresh cool-down.
        assert_eq!(b.record_at(Call::Success, false, &p, t(10_005)), None);
        let tr = b.record_at(Call::Failure, true, &p, t(10_006)).unwrap();
        assert_eq!(
            (tr.from, tr.to, tr.reason),
            (State::HalfOpen, State::Open, "probe failed")
        );
        assert_eq!(b.half_open_at, Some(t(20_006)));
        assert_eq!(b.times_opened, 2);
        // Next time the probe succeeds: closed, counts reset.
        assert_eq!(
            b.acquire_at(&p, t(20_006)).0,
            Decision::Allowed { probe: true }
        );
        let tr = b.record_at(Call::Success, true, &p, t(20_007)).unwrap();
        assert_eq!((tr.from, tr.to), (State::HalfOpen, State::Closed));
        assert_eq!(
            (b.consecutive_failures, b.window_failures, b.probes_granted),
            (0, 0, 0)
        );
        assert_eq!(
            b.acquire_at(&p, t(20_008)).0,
            Decision::Allowed { probe: false }
        );
    }

    #[test]
    fn probes_that_never_answer_are_granted_again_after_the_cool_down() {
        let p = Policy {
            half_open_max_calls: 1,
            ..policy()
        };
        let mut b = Breaker::new("s", t(0));
        b.state = State::Open;
        b.half_open_at = Some(t(0));
        assert_eq!(b.acquire_at(&p, t(1)).0, Decision::Allowed { probe: true });
        assert_eq!(
            b.acquire_at(&p, t(9_999)).0,
            Decision::Denied { until: t(10_001) }
        );
        assert_eq!(
            b.acquire_at(&p, t(10_001)).0,
            Decision::Allowed { probe: true }
        );
        assert_eq!(
            b.acquire_at(&p, t(10_002)).0,
            Decision::Denied { until: t(20_001) }
        );
    }

    #[test]
    fn overrides_win_until_cleared() {
        let p = policy();
        let mut b = Breaker::new("s", t(0));
        let tr = b.force_at(Force::Open, t(1)).unwrap();
        assert_eq!((tr.to, tr.reason), (State::Open, "forced open"));
        // Forced open: no probe even after the cool-down.
        assert!(matches!(
            b.acquire_at(&p, t(50_000)).0,
            Decision::Denied { .. }
        ));
        // Cleared: the next call probes at once.
        assert_eq!(b.force_at(Force::Clear, t(50_001)), None);
        assert_eq!(
            b.acquire_at(&p, t(50_002)).0,
            Decision::Allowed { probe: true }
        );
        assert_eq!(b.state, State::HalfOpen);
        // Forced closed: calls go and failures never open it.
        let tr = b.force_at(Force::Closed, t(50_003)).unwrap();
        assert_eq!((tr.from, tr.to), (State::HalfOpen, State::Closed));
        for i in 0..10 {
            assert_eq!(b.record_at(Call::Failure, false, &p, t(50_004 + i)), None);
        }
        assert_eq!(
            b.acquire_at(&p, t(50_100)).0,
            Decision::Allowed { probe: false }
        );
        b.force_at(Force::Clear, t(50_101));
        assert_eq!(b.forced, None);
        // The next failure, on top of the ten counted, opens it.
        assert_eq!(
            b.record_at(Call::Failure, false, &p, t(50_102)).unwrap().to,
            State::Open
        );
    }
}
