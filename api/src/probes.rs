//! The probes and service information: `/health`, `/ready`, `/status`, `/metrics`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use poem_openapi::payload::{Json, PlainText};
use poem_openapi::{ApiResponse, Object, OpenApi};

use crate::VERSION;
use crate::metrics::Metrics;

/// The git commit the binary was built from, or `unknown`.
pub const GIT_COMMIT: &str = match option_env!("QUAYSIDE_GIT_COMMIT") {
    Some(c) => c,
    None => "unknown",
};

/// How long a probe waits for the database.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// How long a `/health` check of the database stands for the requests that follow it.
const CHECK_FRESH_FOR: Duration = Duration::from_millis(100);

/// The probes.
pub struct Probes {
    pool: Pool,
    metrics: Arc<Metrics>,
    started: Instant,
    check: DbCheck,
}

impl Probes {
    /// Probes of `pool`, reporting into `metrics`.
    pub fn new(pool: Pool, metrics: Arc<Metrics>) -> Self {
        Self {
            pool,
            metrics,
            started: Instant::now(),
            check: DbCheck::default(),
        }
    }
}

/// The database check behind `/health`, shared: one runs at a time, and its answer stands for
/// [`CHECK_FRESH_FOR`]. A round trip per request cost PostgreSQL a quarter of the machine at
/// 25,000 requests a second; shared, a load balancer polling hard costs ten checks a second,
/// and an outage still shows within the probe's one-second timeout.
#[derive(Default)]
struct DbCheck {
    last: std::sync::Mutex<Option<(Instant, bool)>>,
    running: tokio::sync::Mutex<()>,
}

impl DbCheck {
    async fn connected(&self, pool: &Pool) -> bool {
        if let Some(ok) = self.fresh() {
            return ok;
        }
        let _one_at_a_time = self.running.lock().await;
        // A check may have ended while we waited for our turn.
        if let Some(ok) = self.fresh() {
            return ok;
        }
        let ok = tokio::time::timeout(PROBE_TIMEOUT, async {
            let conn = pool.get().await.ok()?;
            conn.simple_query("SELECT 1").await.ok()
        })
        .await
        .ok()
        .flatten()
        .is_some();
        *self.last.lock().expect("health check lock") = Some((Instant::now(), ok));
        ok
    }

    fn fresh(&self) -> Option<bool> {
        self.last
            .lock()
            .expect("health check lock")
            .filter(|(at, _)| at.elapsed() < CHECK_FRESH_FOR)
            .map(|(_, ok)| ok)
    }
}

/// Health of the service and its database.
#[derive(Object)]
pub struct Health {
    /// `healthy` or `unhealthy` (`ready` or `not_ready` for `/ready`).
    pub status: String,
    /// `connected` or `unreachable`.
    pub database: String,
    /// The running version.
    pub version: String,
}

/// `/health` and `/ready` answers.
#[derive(ApiResponse)]
pub enum HealthResponse {
    /// The database answers.
    #[oai(status = 200)]
    Healthy(Json<Health>),
    /// The database does not answer within a second.
    #[oai(status = 503)]
    Unhealthy(Json<Health>),
}

/// What is running.
#[derive(Object)]
pub struct Status {
    /// The running version.
    pub version: String,
    /// The git commit it was built from, or `unknown`.
    pub git_commit: String,
    /// Seconds since the app was built (the process started serving).
    pub uptime_s: u64,
}

#[OpenApi]
impl Probes {
    /// Liveness and database connectivity; answers within about a second.
    #[oai(path = "/health", method = "get")]
    async fn health(&self) -> HealthResponse {
        if self.check.connected(&self.pool).await {
            HealthResponse::Healthy(health("healthy", "connected"))
        } else {
            HealthResponse::Unhealthy(health("unhealthy", "unreachable"))
        }
    }

    /// Readiness: 200 once migrations are applied and the pool works, else 503.
    #[oai(path = "/ready", method = "get")]
    async fn ready(&self) -> HealthResponse {
        let ready = tokio::time::timeout(PROBE_TIMEOUT, engine::db::is_migrated(&self.pool))
            .await
            .is_ok_and(|r| r.unwrap_or(false));
        if ready {
            HealthResponse::Healthy(health("ready", "connected"))
        } else {
            HealthResponse::Unhealthy(health("not_ready", "unreachable or not migrated"))
        }
    }

    /// Version, build commit and uptime.
    #[oai(path = "/status", method = "get")]
    async fn status(&self) -> Json<Status> {
        Json(Status {
            version: VERSION.into(),
            git_commit: GIT_COMMIT.into(),
            uptime_s: self.started.elapsed().as_secs(),
        })
    }

    /// Prometheus metrics (text format): requests by route and status, latency, the pool,
    /// jobs by queue and state, and the concurrency limits' use. Queue depth is left out of a scrape when the database
    /// does not answer within a second.
    #[oai(path = "/metrics", method = "get")]
    async fn metrics(&self) -> PlainText<String> {
        self.metrics.pool(self.pool.status());
        let depth = tokio::time::timeout(PROBE_TIMEOUT, async {
            let conn = self.pool.get().await.map_err(|e| e.to_string())?;
            let depth = engine::queue::admin::depth(&conn)
                .await
                .map_err(|e| e.to_string())?;
            let usage = engine::queue::limits::usage(&conn)
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>((depth, usage))
        })
        .await
        .unwrap_or_else(|_| Err("timed out".into()));
        match depth {
            Ok((depth, usage)) => {
                self.metrics.queue_depth(&depth);
                self.metrics.queue_limits(&usage);
            }
            Err(error) => tracing::warn!(%error, "queue depth not read for /metrics"),
        }
        PlainText(self.metrics.render())
    }
}

fn health(status: &str, database: &str) -> Json<Health> {
    Json(Health {
        status: status.into(),
        database: database.into(),
        version: VERSION.into(),
    })
}
