//! The one error shape every endpoint and middleware answers with:
//! `{"success": false, "error_code", "message", "details", "request_id"}`.
//!
//! Handlers return `Result<_, ApiError>`. poem-openapi turns the `Err` into a `poem::Error`
//! that travels up to the request-context middleware ([`crate::middleware::context`]), which is
//! the single place where any error — ours, a poem-openapi parse or auth failure, poem's own
//! 404 and 405 — becomes the JSON body, and where a 5xx's cause is logged, once.
//!
//! poem-openapi's `bad_request_handler` is deliberately not used: for a `Result<T, E>` it is
//! taken from the success type `T`, so every response type would need one, and poem's routing
//! errors would still bypass it. Converting in one middleware covers every source.

use std::fmt;

use engine::db::DbError;
use poem::http::StatusCode;
use poem::{IntoResponse, Response};
use poem_openapi::payload::Json;
use poem_openapi::registry::{MetaResponses, Registry};
use poem_openapi::{ApiResponse, Object};
use serde_json::Value;

use crate::request_id::current_request_id;

/// The machine-readable error codes, each with its HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// 422: the request is well-formed HTTP but its content is refused.
    ValidationFailed,
    /// 401: no credentials, or bad ones.
    Unauthorized,
    /// 403: the caller may not do this.
    Forbidden,
    /// 404: no such resource or route.
    NotFound,
    /// 405: the route exists but not with this method.
    MethodNotAllowed,
    /// 409: the request conflicts with the current state.
    Conflict,
    /// 422: an idempotency key reused with a different request.
    IdempotencyKeyReused,
    /// 413: the body is larger than `MAX_REQUEST_SIZE`.
    PayloadTooLarge,
    /// 415: the body's content type is not one the endpoint takes.
    UnsupportedMediaType,
    /// 429: too many requests; `Retry-After` says when to come back.
    RateLimited,
    /// 408: the request took longer than `REQUEST_TIMEOUT`.
    RequestTimeout,
    /// 503: a dependency (the database) is unavailable.
    ServiceUnavailable,
    /// 500: a fault of ours; the body says nothing more.
    InternalError,
}

impl ErrorCode {
    /// The code as it appears in `error_code`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::ValidationFailed => "VALIDATION_FAILED",
            ErrorCode::Unauthorized => "UNAUTHORIZED",
            ErrorCode::Forbidden => "FORBIDDEN",
            ErrorCode::NotFound => "NOT_FOUND",
            ErrorCode::MethodNotAllowed => "METHOD_NOT_ALLOWED",
            ErrorCode::Conflict => "CONFLICT",
            ErrorCode::IdempotencyKeyReused => "IDEMPOTENCY_KEY_REUSED",
            ErrorCode::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            ErrorCode::UnsupportedMediaType => "UNSUPPORTED_MEDIA_TYPE",
            ErrorCode::RateLimited => "RATE_LIMITED",
            ErrorCode::RequestTimeout => "REQUEST_TIMEOUT",
            ErrorCode::ServiceUnavailable => "SERVICE_UNAVAILABLE",
            ErrorCode::InternalError => "INTERNAL_ERROR",
        }
    }

    /// The HTTP status that goes with the code.
    pub fn status(self) -> StatusCode {
        match self {
            ErrorCode::ValidationFailed | ErrorCode::IdempotencyKeyReused => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorCode::Forbidden => StatusCode::FORBIDDEN,
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::Conflict => StatusCode::CONFLICT,
            ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ErrorCode::ServiceUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::InternalError => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// The JSON body of every error answer.
#[derive(Debug, Clone, Object, serde::Deserialize)]
pub struct ErrorBody {
    /// Always `false`.
    pub success: bool,
    /// One of the codes listed in the API description (e.g. `VALIDATION_FAILED`).
    pub error_code: String,
    /// A human-readable explanation, safe to show to the caller.
    pub message: String,
    /// Structured detail, e.g. `{"field_errors": {"name": "..."}}`; `{}` when there is none.
    pub details: Value,
    /// The request's id (`X-Request-Id`), to quote when reporting a problem.
    pub request_id: String,
}

/// An error answer: a code, a message for the caller, optional details, and for 5xx a cause
/// that is logged but never sent.
#[derive(Debug)]
pub struct ApiError {
    code: ErrorCode,
    message: String,
    details: Value,
    retry_after_s: Option<u64>,
    cause: Option<String>,
}

/// The logged cause of a 5xx answer, carried in the response's data so that the context
/// middleware can log it once.
#[derive(Debug, Clone)]
pub struct ErrorCause(pub String);

impl ApiError {
    /// An error with `code` and a message for the caller.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            details: Value::Object(Default::default()),
            retry_after_s: None,
            cause: None,
        }
    }

    /// Attach structured details (an object).
    pub fn with_details(mut self, details: Value) -> Self {
        self.details = details;
        self
    }

    /// 422 VALIDATION_FAILED.
    pub fn validation(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::ValidationFailed, message)
    }

    /// 401 UNAUTHORIZED.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unauthorized, message)
    }

    /// 403 FORBIDDEN.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Forbidden, message)
    }

    /// 404 NOT_FOUND.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }

    /// 409 CONFLICT.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Conflict, message)
    }

    /// 429 RATE_LIMITED with `Retry-After: retry_after_s`.
    pub fn rate_limited(retry_after_s: u64) -> Self {
        let mut e = Self::new(ErrorCode::RateLimited, "too many requests, slow down");
        e.retry_after_s = Some(retry_after_s.max(1));
        e
    }

    /// 503 SERVICE_UNAVAILABLE; `cause` is logged, not sent.
    pub fn unavailable(cause: impl fmt::Display) -> Self {
        let mut e = Self::new(
            ErrorCode::ServiceUnavailable,
            "the service is temporarily unavailable",
        );
        e.cause = Some(cause.to_string());
        e
    }

    /// 500 INTERNAL_ERROR; `cause` is logged, not sent.
    pub fn internal(cause: impl fmt::Display) -> Self {
        let mut e = Self::new(ErrorCode::InternalError, "internal error");
        e.cause = Some(cause.to_string());
        e
    }

    /// The error's code.
    pub fn code(&self) -> ErrorCode {
        self.code
    }

    /// Any error that reached the edge as a `poem::Error`: ours as it is, anything else by
    /// its status. A 4xx keeps poem's message (it describes the request, e.g. a parse error);
    /// a 5xx gets a generic one and its text becomes the logged cause.
    pub fn from_poem(err: poem::Error) -> Self {
        if let Some(ours) = err.downcast_ref::<ApiError>() {
            return ours.clone_for_response();
        }
        let status = err.status();
        let code = match status {
            StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY => {
                ErrorCode::ValidationFailed
            }
            StatusCode::UNAUTHORIZED => ErrorCode::Unauthorized,
            StatusCode::FORBIDDEN => ErrorCode::Forbidden,
            StatusCode::NOT_FOUND => ErrorCode::NotFound,
            StatusCode::METHOD_NOT_ALLOWED => ErrorCode::MethodNotAllowed,
            StatusCode::CONFLICT => ErrorCode::Conflict,
            StatusCode::PAYLOAD_TOO_LARGE | StatusCode::LENGTH_REQUIRED => {
                ErrorCode::PayloadTooLarge
            }
            StatusCode::UNSUPPORTED_MEDIA_TYPE => ErrorCode::UnsupportedMediaType,
            StatusCode::TOO_MANY_REQUESTS => ErrorCode::RateLimited,
            StatusCode::REQUEST_TIMEOUT => ErrorCode::RequestTimeout,
            StatusCode::SERVICE_UNAVAILABLE => ErrorCode::ServiceUnavailable,
            s if s.is_client_error() => ErrorCode::ValidationFailed,
            _ => ErrorCode::InternalError,
        };
        if code == ErrorCode::InternalError || code == ErrorCode::ServiceUnavailable {
            let mut e = Self::new(
                code,
                if code == ErrorCode::InternalError {
                    "internal error"
                } else {
                    "the service is temporarily unavailable"
                },
            );
            e.cause = Some(err.to_string());
            return e;
        }
        let message = match code {
            ErrorCode::NotFound => "no such resource".to_owned(),
            ErrorCode::MethodNotAllowed => "method not allowed on this resource".to_owned(),
            _ => err.to_string(),
        };
        Self::new(code, message)
    }

    fn clone_for_response(&self) -> Self {
        Self {
            code: self.code,
            message: self.message.clone(),
            details: self.details.clone(),
            retry_after_s: self.retry_after_s,
            cause: self.cause.clone(),
        }
    }

    /// The body this error answers with, stamped with the current request's id.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            success: false,
            error_code: self.code.as_str().to_owned(),
            message: self.message.clone(),
            details: self.details.clone(),
            request_id: current_request_id().unwrap_or_default(),
        }
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

impl std::error::Error for ApiError {}

impl poem::error::ResponseError for ApiError {
    fn status(&self) -> StatusCode {
        self.code.status()
    }

    fn as_response(&self) -> Response {
        let mut resp = Json(self.body()).into_response();
        resp.set_status(self.code.status());
        if let Some(s) = self.retry_after_s {
            resp.headers_mut()
                .insert(poem::http::header::RETRY_AFTER, s.into());
        }
        if let Some(cause) = &self.cause {
            resp.set_data(ErrorCause(cause.clone()));
        }
        resp
    }
}

/// The error answers as they appear in the spec; [`ApiError`] borrows this description.
#[derive(ApiResponse)]
#[allow(dead_code)] // only its description is used
enum ErrorResponses {
    /// VALIDATION_FAILED: the body, a parameter or a value is refused (also
    /// IDEMPOTENCY_KEY_REUSED).
    #[oai(status = 422)]
    Unprocessable(Json<ErrorBody>),
    /// UNAUTHORIZED: missing, expired or invalid credentials.
    #[oai(status = 401)]
    Unauthorized(Json<ErrorBody>),
    /// FORBIDDEN: the caller's role may not do this.
    #[oai(status = 403)]
    Forbidden(Json<ErrorBody>),
    /// NOT_FOUND: no such resource.
    #[oai(status = 404)]
    NotFound(Json<ErrorBody>),
    /// CONFLICT: the request conflicts with the current state.
    #[oai(status = 409)]
    Conflict(Json<ErrorBody>),
    /// REQUEST_TIMEOUT: the request took longer than REQUEST_TIMEOUT.
    #[oai(status = 408)]
    Timeout(Json<ErrorBody>),
    /// PAYLOAD_TOO_LARGE: the body exceeds MAX_REQUEST_SIZE.
    #[oai(status = 413)]
    TooLarge(Json<ErrorBody>),
    /// UNSUPPORTED_MEDIA_TYPE: the body's content type is not accepted.
    #[oai(status = 415)]
    UnsupportedMediaType(Json<ErrorBody>),
    /// RATE_LIMITED: too many requests from this client.
    #[oai(status = 429)]
    RateLimited(
        Json<ErrorBody>,
        /// Seconds until a request will be accepted again.
        #[oai(header = "Retry-After")]
        u64,
    ),
    /// INTERNAL_ERROR: a fault of ours; the body says nothing more.
    #[oai(status = 500)]
    Internal(Json<ErrorBody>),
    /// SERVICE_UNAVAILABLE: the database is unreachable.
    #[oai(status = 503)]
    Unavailable(Json<ErrorBody>),
}

impl ApiResponse for ApiError {
    fn meta() -> MetaResponses {
        ErrorResponses::meta()
    }

    fn register(registry: &mut Registry) {
        ErrorResponses::register(registry);
    }
}

/// The one answer to a database error, whichever route met it: 503 when the database is out of
/// reach (the caller may try again), 409 when an operator's retry would give a second
/// unfinished job the same unique key, and 500 for anything else, its cause logged.
impl From<DbError> for ApiError {
    fn from(e: DbError) -> Self {
        if e.is_connection_lost() {
            ApiError::unavailable(e)
        } else if e.violates(engine::queue::UNIQUE_KEY_INDEX) {
            ApiError::conflict("an unfinished job already holds this job's unique key")
        } else {
            ApiError::internal(e)
        }
    }
}

/// No pooled connection: a database error like any other.
impl From<deadpool_postgres::PoolError> for ApiError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        ApiError::from(DbError::from(e))
    }
}

impl From<engine::queue::QueueError> for ApiError {
    fn from(e: engine::queue::QueueError) -> Self {
        use engine::jobs::ArgsError;
        use engine::queue::QueueError;
        match e {
            QueueError::Db(e) => ApiError::from(e),
            QueueError::Args(a) => {
                let (field, message) = match &a {
                    ArgsError::UnknownKind(_) => ("kind".to_owned(), a.to_string()),
                    ArgsError::Shape(m) => ("args".to_owned(), m.clone()),
                    ArgsError::Invalid { field, message } => {
                        (format!("args.{field}"), message.clone())
                    }
                };
                ApiError::validation(a.to_string())
                    .with_details(serde_json::json!({"field_errors": {field: message}}))
            }
            QueueError::InvalidOption(field, message) => {
                ApiError::validation(format!("invalid {field}: {message}"))
                    .with_details(serde_json::json!({"field_errors": {field: message}}))
            }
            e @ QueueError::UniqueKeyContention => ApiError::internal(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use poem::error::ResponseError;

    use super::*;

    async fn body_of(resp: Response) -> serde_json::Value {
        resp.into_body().into_json().await.unwrap()
    }

    #[tokio::test]
    async fn internals_are_logged_not_sent() {
        let resp =
            ApiError::internal("connection to 10.0.0.5 refused: password wrong").as_response();
        assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(resp.data::<ErrorCause>().unwrap().0.contains("10.0.0.5"));
        let body = body_of(resp).await;
        assert_eq!(body["error_code"], "INTERNAL_ERROR");
        assert!(!body.to_string().contains("10.0.0.5"));

        let foreign = poem::Error::from_string("secret detail", StatusCode::BAD_GATEWAY);
        let resp = ApiError::from_poem(foreign).as_response();
        assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!body_of(resp).await.to_string().contains("secret detail"));
    }

    #[tokio::test]
    async fn every_code_answers_with_its_status_and_shape() {
        for (code, status) in [
            (ErrorCode::ValidationFailed, 422),
            (ErrorCode::Unauthorized, 401),
            (ErrorCode::Forbidden, 403),
            (ErrorCode::NotFound, 404),
            (ErrorCode::Conflict, 409),
            (ErrorCode::IdempotencyKeyReused, 422),
            (ErrorCode::PayloadTooLarge, 413),
            (ErrorCode::UnsupportedMediaType, 415),
            (ErrorCode::RateLimited, 429),
            (ErrorCode::RequestTimeout, 408),
            (ErrorCode::ServiceUnavailable, 503),
            (ErrorCode::InternalError, 500),
        ] {
            let resp = ApiError::new(code, "m").as_response();
            assert_eq!(resp.status().as_u16(), status, "{code:?}");
            let body = body_of(resp).await;
            assert_eq!(body["success"], false);
            assert_eq!(body["error_code"], code.as_str());
            assert!(body["details"].is_object());
            assert!(body["request_id"].is_string());
        }
        let resp = ApiError::rate_limited(7).as_response();
        assert_eq!(resp.headers()["retry-after"], "7");
    }

    #[test]
    fn foreign_errors_map_by_status() {
        let e = |s| ApiError::from_poem(poem::Error::from_status(s)).code();
        assert_eq!(e(StatusCode::BAD_REQUEST), ErrorCode::ValidationFailed);
        assert_eq!(e(StatusCode::UNAUTHORIZED), ErrorCode::Unauthorized);
        assert_eq!(
            e(StatusCode::METHOD_NOT_ALLOWED),
            ErrorCode::MethodNotAllowed
        );
        assert_eq!(e(StatusCode::LENGTH_REQUIRED), ErrorCode::PayloadTooLarge);
        assert_eq!(
            e(StatusCode::UNSUPPORTED_MEDIA_TYPE),
            ErrorCode::UnsupportedMediaType
        );
        let ours: poem::Error = ApiError::conflict("taken").into();
        assert_eq!(ApiError::from_poem(ours).code(), ErrorCode::Conflict);
    }
}
