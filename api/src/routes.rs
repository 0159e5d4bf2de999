//! The API's operations under `/api/v1`, one module per resource.

pub mod api_keys;
pub mod audit;
pub mod auth;
pub mod breakers;
pub mod files;
pub mod jobs;
pub mod queues;
pub mod registrations;

use deadpool_postgres::GenericClient;
use engine::names::{QueueName, ServiceName};
use poem_openapi::Tags;

use crate::auth::Principal;
use crate::error::ApiError;
use crate::request_id::current_request_id;

/// Operation groups in the spec.
#[derive(Tags)]
pub enum Tag {
    /// Registration, login, token refresh and logout.
    Auth,
    /// API keys of service clients (admins).
    ApiKeys,
    /// Enqueue, inspect, retry, cancel and delete jobs (operators).
    Jobs,
    /// Queues and workers (operators).
    Queues,
    /// The log of operator actions (operators).
    Audit,
    /// Circuit breakers and rate limits of external services (operators).
    Breakers,
    /// Team registrations (public) and their inspection (admins).
    Registrations,
    /// Stored files such as team logos (public).
    Files,
}

/// Most items one page of a listing holds.
pub const MAX_PAGE: u32 = 500;
/// Items per page when the caller does not say.
pub const DEFAULT_PAGE: u32 = 50;

/// The page size asked for, checked.
pub fn page_size(limit: Option<u32>) -> Result<i64, ApiError> {
    match limit.unwrap_or(DEFAULT_PAGE) {
        n @ 1..=MAX_PAGE => Ok(i64::from(n)),
        _ => Err(field_error("limit", format!("1 to {MAX_PAGE}"))),
    }
}

/// A cursor given back by a listing: the last id of the previous page.
pub fn cursor(cursor: Option<&str>) -> Result<Option<i64>, ApiError> {
    cursor
        .map(|c| {
            c.parse::<i64>()
                .map_err(|_| field_error("cursor", "not a cursor from a previous page"))
        })
        .transpose()
}

/// 422 naming one field.
pub fn field_error(field: &str, message: impl Into<String>) -> ApiError {
    let message = message.into();
    ApiError::validation(format!("invalid {field}: {message}"))
        .with_details(serde_json::json!({"field_errors": {field: message}}))
}

/// The queue name `raw` given as `field`, or 422 naming the field and the rule.
pub fn queue_name(field: &str, raw: &str) -> Result<QueueName, ApiError> {
    QueueName::parse(raw).map_err(|e| field_error(field, e.rule()))
}

/// The service name `raw` given as `field`, or 422 naming the field and the rule.
pub fn service_name(field: &str, raw: &str) -> Result<ServiceName, ApiError> {
    ServiceName::parse(raw).map_err(|e| field_error(field, e.rule()))
}

/// Record an operator action in the audit log, in the transaction of the action (`client`),
/// so that the action commits with its record or not at all. Returns the record's id.
pub async fn audit(
    client: &impl GenericClient,
    who: &Principal,
    action: &str,
    target: Option<String>,
    filter: Option<serde_json::Value>,
    count: u64,
) -> Result<i64, ApiError> {
    Ok(domain::audit::record(
        client,
        &domain::audit::NewEntry {
            actor: &who.actor(),
            action,
            target,
            filter,
            count: count as i64,
            request_id: current_request_id(),
        },
    )
    .await?)
}
