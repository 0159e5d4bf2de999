//! `/api/v1/breakers` (operators): the circuit breakers and rate limits of external services
//! that the workers share, and forcing a breaker open or closed.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use domain::accounts::Role;
use engine::breaker::{self, Force, Forced, State};
use engine::db::DbError;
use engine::ratelimit::{self, Usage};
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{Enum, Object, OpenApi};

use super::{Tag, audit, service_name};
use crate::auth::{Auth, Credentials};
use crate::error::ApiError;

/// The breaker operations.
pub struct BreakersApi {
    auth: Arc<Auth>,
}

impl BreakersApi {
    /// The operations.
    pub fn new(auth: Arc<Auth>) -> Self {
        Self { auth }
    }
}

/// Where a breaker is.
#[derive(Enum, Clone, Copy, PartialEq, Eq)]
#[oai(rename_all = "snake_case")]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// No calls until the cool-down ends; jobs are snoozed.
    Open,
    /// A few probe calls decide whether it closes or opens again.
    HalfOpen,
}

/// An operator's override in force.
#[derive(Enum, Clone, Copy, PartialEq, Eq)]
#[oai(rename_all = "snake_case")]
pub enum ForcedState {
    /// No calls until cleared.
    Open,
    /// Calls whatever happens until cleared.
    Closed,
}

/// What to force.
#[derive(Enum, Clone, Copy, PartialEq, Eq)]
#[oai(rename_all = "snake_case")]
pub enum ForceState {
    /// Stop every call to the service.
    Open,
    /// Let every call through, whatever happens.
    Closed,
    /// Drop the override: the breaker decides again (one forced open probes at once).
    Clear,
}

/// The body of a force.
#[derive(Object)]
pub struct ForceRequest {
    /// `open`, `closed` or `clear`.
    pub state: ForceState,
}

/// A service's global rate limit and its use.
#[derive(Object)]
pub struct RateLimitUsage {
    /// Calls allowed in any period.
    pub max_calls: u32,
    /// The period, in milliseconds.
    pub period_ms: u64,
    /// Calls granted in the last period.
    pub used: i64,
}

/// One external service.
#[derive(Object)]
pub struct Breaker {
    /// The service.
    pub service: String,
    /// Where its breaker is; `closed` when it has none yet.
    pub state: BreakerState,
    /// The operator's override, if any.
    pub forced: Option<ForcedState>,
    /// Failures since the last success.
    pub consecutive_failures: i32,
    /// Successes in the failure-rate window.
    pub window_successes: i32,
    /// Failures in the failure-rate window.
    pub window_failures: i32,
    /// When it last opened.
    pub opened_at: Option<DateTime<Utc>>,
    /// When its cool-down ends (the first probe may go then).
    pub half_open_at: Option<DateTime<Utc>>,
    /// How many times it has opened.
    pub times_opened: i64,
    /// Its last change.
    pub updated_at: Option<DateTime<Utc>>,
    /// Its rate limit, once a worker has applied one.
    pub rate_limit: Option<RateLimitUsage>,
}

fn usage(u: Usage) -> RateLimitUsage {
    RateLimitUsage {
        max_calls: u.limit.max_calls,
        period_ms: u.limit.period.as_millis() as u64,
        used: u.used,
    }
}

fn view(b: breaker::Breaker, rate_limit: Option<Usage>) -> Breaker {
    Breaker {
        service: b.service,
        state: match b.state {
            State::Closed => BreakerState::Closed,
            State::Open => BreakerState::Open,
            State::HalfOpen => BreakerState::HalfOpen,
        },
        forced: b.forced.map(|f| match f {
            Forced::Open => ForcedState::Open,
            Forced::Closed => ForcedState::Closed,
        }),
        consecutive_failures: b.consecutive_failures,
        window_successes: b.window_successes,
        window_failures: b.window_failures,
        opened_at: b.opened_at,
        half_open_at: b.half_open_at,
        times_opened: b.times_opened,
        updated_at: Some(b.updated_at),
        rate_limit: rate_limit.map(usage),
    }
}

#[OpenApi(tag = "Tag::Breakers")]
impl BreakersApi {
    /// Every external service with a breaker or a rate limit: the breaker's state, failures,
    /// opening and half-open times, override, and the rate limit's use (operator).
    #[oai(path = "/api/v1/breakers", method = "get")]
    async fn list(&self, creds: Credentials) -> Result<Json<Vec<Breaker>>, ApiError> {
        self.auth.require(&creds, Role::Operator).await?;
        let conn = self.auth.pool().get().await?;
        let mut limits: BTreeMap<String, Usage> = ratelimit::usage(&conn)
            .await?
            .into_iter()
            .map(|u| (u.service.clone(), u))
            .collect();
        let mut out: Vec<Breaker> = breaker::list(&conn)
            .await?
            .into_iter()
            .map(|b| {
                let limit = limits.remove(&b.service);
                view(b, limit)
            })
            .collect();
        // Services with a rate limit and no breaker row yet.
        out.extend(limits.into_values().map(|u| Breaker {
            service: u.service.clone(),
            state: BreakerState::Closed,
            forced: None,
            consecutive_failures: 0,
            window_successes: 0,
            window_failures: 0,
            opened_at: None,
            half_open_at: None,
            times_opened: 0,
            updated_at: None,
            rate_limit: Some(usage(u)),
        }));
        out.sort_by(|a, b| a.service.cmp(&b.service));
        Ok(Json(out))
    }

    /// Force a service's breaker open (no calls; jobs snoozed) or closed (calls whatever
    /// happens), or clear the override; workers see it within their cache period (operator).
    #[oai(path = "/api/v1/breakers/:service/force", method = "post")]
    async fn force(
        &self,
        creds: Credentials,
        service: Path<String>,
        body: Json<ForceRequest>,
    ) -> Result<Json<Breaker>, ApiError> {
        let who = self.auth.require(&creds, Role::Operator).await?;
        let service = service_name("service", &service.0)?;
        let (force, action) = match body.0.state {
            ForceState::Open => (Force::Open, "breaker.force_open"),
            ForceState::Closed => (Force::Closed, "breaker.force_closed"),
            ForceState::Clear => (Force::Clear, "breaker.clear"),
        };
        let mut conn = self.auth.pool().get().await?;
        let tx = conn.transaction().await.map_err(DbError::from)?;
        let out = breaker::force_in(&tx, &service, force).await?;
        audit(
            &tx,
            &who,
            action,
            Some(format!("breaker:{service}")),
            None,
            1,
        )
        .await?;
        tx.commit().await.map_err(DbError::from)?;
        Ok(Json(view(out.breaker, None)))
    }
}
