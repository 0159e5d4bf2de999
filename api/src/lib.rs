//! Quayside's HTTP API: the probes and the spec, behind the middleware stack that gives every
//! answer a request id and every error the one JSON shape ([`error::ApiError`]).

use std::time::Duration;

use deadpool_postgres::Pool;
use poem::{EndpointExt, Route};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi, OpenApiService};

pub mod config;
pub mod error;
pub mod middleware;

/// The API's version, reported by `/health`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The probes.
pub struct Probes {
    pool: Pool,
}

/// Health of the service and its database.
#[derive(Object)]
pub struct Health {
    /// `healthy` or `unhealthy`.
    pub status: String,
    /// `connected` or `unreachable`.
    pub database: String,
    /// The running version.
    pub version: String,
}

/// `/health` answers.
#[derive(ApiResponse)]
pub enum HealthResponse {
    /// The database answers.
    #[oai(status = 200)]
    Healthy(Json<Health>),
    /// The database does not answer within a second.
    #[oai(status = 503)]
    Unhealthy(Json<Health>),
}

#[OpenApi]
impl Probes {
    /// Liveness and database connectivity; answers within about a second.
    #[oai(path = "/health", method = "get")]
    async fn health(&self) -> HealthResponse {
        let ok = tokio::time::timeout(Duration::from_secs(1), async {
            let conn = self.pool.get().await.ok()?;
            conn.simple_query("SELECT 1").await.ok()
        })
        .await
        .ok()
        .flatten()
        .is_some();
        if ok {
            HealthResponse::Healthy(health("healthy", "connected"))
        } else {
            HealthResponse::Unhealthy(health("unhealthy", "unreachable"))
        }
    }

    /// Readiness: 200 once migrations are applied and the pool works, else 503.
    #[oai(path = "/ready", method = "get")]
    async fn ready(&self) -> HealthResponse {
        let ready =
            tokio::time::timeout(Duration::from_secs(1), common::db::is_migrated(&self.pool))
                .await
                .is_ok_and(|r| r.unwrap_or(false));
        if ready {
            HealthResponse::Healthy(health("ready", "connected"))
        } else {
            HealthResponse::Unhealthy(health("not_ready", "unreachable or not migrated"))
        }
    }
}

fn health(status: &str, database: &str) -> Json<Health> {
    Json(Health {
        status: status.into(),
        database: database.into(),
        version: VERSION.into(),
    })
}

/// The OpenAPI service (also the source of the committed `openapi.json`).
pub fn openapi(pool: Pool) -> OpenApiService<Probes, ()> {
    OpenApiService::new(Probes { pool }, "Quayside", VERSION)
}

/// The whole app: the API, Swagger UI at `/docs` and the spec at `/openapi.json`.
pub fn app(pool: Pool) -> impl poem::Endpoint {
    let api = openapi(pool);
    let docs = api.swagger_ui();
    let spec = api.spec_endpoint();
    Route::new()
        .nest("/", api)
        .nest("/docs", docs)
        .at("/openapi.json", spec)
        .with(middleware::context::RequestContext)
}

/// The spec as committed in `openapi.json`: pretty JSON with a trailing newline.
pub fn spec_json() -> String {
    let pool = common::db::pool(&common::config::DatabaseSettings::for_url(
        "postgres://localhost/unused",
    ))
    .expect("a pool never connects until used");
    openapi(pool).spec() + "\n"
}
