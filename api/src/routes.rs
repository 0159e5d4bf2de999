//! The API's operations under `/api/v1`, one module per resource.

pub mod api_keys;
pub mod auth;

use poem_openapi::Tags;

/// Operation groups in the spec.
#[derive(Tags)]
pub enum Tag {
    /// Registration, login, token refresh and logout.
    Auth,
    /// API keys of service clients (admins).
    ApiKeys,
}
