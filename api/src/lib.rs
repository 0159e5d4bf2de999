//! Quayside's HTTP API: the probes, metrics and the spec, behind the middleware stack that gives every
//! answer a request id and every error the one JSON shape ([`error::ApiError`]).

use std::sync::Arc;

use deadpool_postgres::Pool;
use poem::http::Method;
use poem::middleware::Cors;
use poem::{Endpoint, EndpointExt, Route};
use poem_openapi::OpenApiService;

pub mod config;
pub mod error;
pub mod metrics;
pub mod middleware;
pub mod probes;

use metrics::Metrics;
use probes::Probes;

/// The API's version, reported by `/health` and `/status`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The OpenAPI service (also the source of the committed `openapi.json`).
pub fn openapi(pool: Pool, metrics: Arc<Metrics>) -> OpenApiService<Probes, ()> {
    OpenApiService::new(Probes::new(pool, metrics), "Quayside", VERSION)
}

/// The whole app: the API, Swagger UI at `/docs` and the spec at `/openapi.json`, behind the
/// middleware that `settings` configure (see [`middleware`] for the order).
pub fn app(
    pool: Pool,
    settings: &config::Settings,
) -> impl Endpoint<Output = poem::Response> + use<> {
    let metrics = Arc::new(Metrics::new());
    let api = openapi(pool, metrics.clone());
    let docs = api.swagger_ui();
    let spec = api.spec_endpoint();
    let max_body = settings.limits.max_request_size;
    let timeout = settings.limits.request_timeout;
    let limiter = Arc::new(middleware::rate_limit::RateLimiter::new(&settings.limits));
    let hsts = settings.environment == config::Environment::Production;
    let cors = cors(&settings.cors_origins);
    Route::new()
        .nest("/", api)
        .nest("/docs", docs)
        .at("/openapi.json", spec)
        .around(middleware::context::errors_as_json)
        .around(move |ep, req| middleware::limits::body_limit(ep, req, max_body))
        .around(move |ep, req| middleware::limits::timeout(ep, req, timeout))
        .around(move |ep, req| middleware::rate_limit::limit(ep, req, limiter.clone()))
        .with_if(cors.is_some(), cors.unwrap_or_default())
        .with(middleware::context::RequestContext::new(metrics))
        .around(middleware::headers::compress)
        .around(move |ep, req| middleware::headers::security(ep, req, hsts))
}

/// CORS for the allowed origins; `None` (no CORS headers: browsers refuse cross-origin
/// calls) when the list is empty. `*` allows any origin (refused in production by the
/// settings).
fn cors(origins: &[String]) -> Option<Cors> {
    if origins.is_empty() {
        return None;
    }
    let base = Cors::new()
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
            Method::OPTIONS,
        ])
        .allow_headers([
            "authorization",
            "content-type",
            "x-api-key",
            "x-request-id",
            "idempotency-key",
            "x-idempotency-key",
        ])
        .expose_headers(["x-request-id", "retry-after", "idempotent-replayed"])
        .max_age(600);
    if origins.iter().any(|o| o == "*") {
        return Some(base);
    }
    Some(base.allow_origins(origins.iter().map(String::as_str)))
}

/// The spec as committed in `openapi.json`: pretty JSON with a trailing newline.
pub fn spec_json() -> String {
    let pool = common::db::pool(&common::config::DatabaseSettings::for_url(
        "postgres://localhost/unused",
    ))
    .expect("a pool never connects until used");
    openapi(pool, Arc::new(Metrics::new())).spec() + "\n"
}
