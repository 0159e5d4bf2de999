//! Quayside's HTTP API: auth, the operator endpoints for jobs, queues, workers and the audit
//! log, the probes, metrics and the spec, behind the middleware stack that gives every answer
//! a request id and every error the one JSON shape ([`error::ApiError`]).

use std::sync::Arc;

use deadpool_postgres::Pool;
use poem::http::Method;
use poem::middleware::Cors;
use poem::{Endpoint, EndpointExt, Route};
use poem_openapi::OpenApiService;

pub mod auth;
pub mod config;
pub mod error;
pub mod metrics;
pub mod middleware;
pub mod probes;
pub mod request_id;
pub mod routes;

use metrics::Metrics;
use probes::Probes;

/// The API's version, reported by `/health` and `/status`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Every group of operations.
pub type Apis = (
    Probes,
    routes::auth::AuthApi,
    routes::api_keys::ApiKeysApi,
    routes::jobs::JobsApi,
    routes::queues::QueuesApi,
    routes::audit::AuditApi,
    routes::breakers::BreakersApi,
    routes::registrations::RegistrationsApi,
    routes::files::FilesApi,
);

/// The OpenAPI service (also the source of the committed `openapi.json`).
pub fn openapi(
    pool: Pool,
    metrics: Arc<Metrics>,
    settings: &config::Settings,
) -> OpenApiService<Apis, ()> {
    // Without a key (development, when `main` did not provide the kept one) tokens are
    // signed with a random key that lives as long as this app.
    let key = settings
        .secret_key
        .as_ref()
        .map_or_else(config::random_key, |k| k.expose().to_owned());
    let auth = auth::Auth::new(pool.clone(), key.as_bytes());
    OpenApiService::new(
        (
            Probes::new(pool, metrics),
            routes::auth::AuthApi::new(auth.clone(), settings.limits.trusted_proxies.clone()),
            routes::api_keys::ApiKeysApi::new(auth.clone()),
            routes::jobs::JobsApi::new(auth.clone()),
            routes::queues::QueuesApi::new(auth.clone()),
            routes::audit::AuditApi::new(auth.clone()),
            routes::breakers::BreakersApi::new(auth.clone()),
            routes::registrations::RegistrationsApi::new(
                auth,
                settings.team_id_prefix.clone(),
                settings.idempotency_ttl,
            ),
            routes::files::FilesApi::new(settings.uploads_dir.clone()),
        ),
        "Quayside",
        VERSION,
    )
    .description(API_DESCRIPTION)
}

/// The spec's description: how errors look and how to authenticate.
const API_DESCRIPTION: &str = "Quayside's job-queue API.

Every error answers `{\"success\": false, \"error_code\", \"message\", \"details\", \"request_id\"}`. \
Codes: VALIDATION_FAILED (422), UNAUTHORIZED (401), FORBIDDEN (403), NOT_FOUND (404), \
METHOD_NOT_ALLOWED (405), CONFLICT (409), IDEMPOTENCY_KEY_REUSED (422), PAYLOAD_TOO_LARGE (413), \
UNSUPPORTED_MEDIA_TYPE (415), RATE_LIMITED (429, with Retry-After), REQUEST_TIMEOUT (408), \
SERVICE_UNAVAILABLE (503), INTERNAL_ERROR (500).

Authenticate with `Authorization: Bearer <access token>` from `/api/v1/auth/login`, or, for \
service clients, `X-API-Key: <key>` created by an admin. Roles: admin > operator > user.";

/// The whole app: the API, Swagger UI at `/docs` and the spec at `/openapi.json`, behind the
/// middleware that `settings` configure (see [`middleware`] for the order).
pub fn app(
    pool: Pool,
    settings: &config::Settings,
) -> impl Endpoint<Output = poem::Response> + use<> {
    let metrics = Arc::new(Metrics::new());
    let api = openapi(pool, metrics.clone(), settings);
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
        .around(middleware::input::refuse_control_chars)
        // Boxed: the type of the whole stack otherwise outgrows the compiler's depth limit.
        .boxed()
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
    let pool = engine::db::pool(&engine::config::DatabaseSettings::for_url(
        "postgres://localhost/unused",
    ))
    .expect("a pool never connects until used");
    let settings = config::Settings::for_database_url("postgres://localhost/unused");
    openapi(pool, Arc::new(Metrics::new()), &settings).spec() + "\n"
}
