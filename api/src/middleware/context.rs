//! The request context: the outermost middleware.
//!
//! It takes the caller's `X-Request-Id` (when it is a sane token) or makes one, runs the rest
//! of the stack inside a span and a task-local holding that id (so every log line and every
//! error body of the request carries it), turns any error that reaches it into the one JSON
//! error shape ([`ApiError`]), echoes the id in the response, and writes the access log line.
//! A 5xx's cause is logged here, once, and never sent.

use std::sync::Arc;
use std::time::Instant;

use poem::error::ResponseError;
use poem::http::HeaderValue;
use poem::{Endpoint, IntoResponse, Middleware, PathPattern, Request, Response};
use tracing::Instrument;

use crate::error::{ApiError, ErrorCause};
use crate::metrics::Metrics;
use crate::request_id;

/// The request id header, read and echoed.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Longest accepted caller-supplied request id; longer ones are replaced.
const MAX_REQUEST_ID_LEN: usize = 128;

/// The request-context middleware; it also counts each answer in the app's metrics.
pub struct RequestContext {
    metrics: Arc<Metrics>,
}

impl RequestContext {
    /// The middleware, recording into `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics }
    }
}

impl<E: Endpoint> Middleware<E> for RequestContext {
    type Output = RequestContextEndpoint<E>;

    fn transform(&self, ep: E) -> Self::Output {
        RequestContextEndpoint {
            inner: ep,
            metrics: self.metrics.clone(),
        }
    }
}

/// The endpoint made by [`RequestContext`].
pub struct RequestContextEndpoint<E> {
    inner: E,
    metrics: Arc<Metrics>,
}

impl<E: Endpoint> Endpoint for RequestContextEndpoint<E> {
    type Output = Response;

    async fn call(&self, req: Request) -> poem::Result<Response> {
        let id: Arc<str> = req
            .headers()
            .get(REQUEST_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .filter(|v| is_sane_id(v))
            .map(Arc::from)
            .unwrap_or_else(|| Arc::from(uuid::Uuid::new_v4().to_string()));
        let method = req.method().clone();
        let span = tracing::info_span!("request", request_id = %id, method = %method);
        let started = Instant::now();
        let inner = &self.inner;
        let mut resp = request_id::scope(id.clone(), async move {
            match inner.call(req).await {
                Ok(r) => r.into_response(),
                Err(e) => error_response(e),
            }
        })
        .instrument(span.clone())
        .await;
        let elapsed = started.elapsed().as_secs_f64();
        let duration_ms = elapsed * 1000.0;
        let route = match resp.data::<PathPattern>() {
            Some(p) if !p.0.is_empty() => p.0.to_string(),
            _ => "unmatched".to_owned(),
        };
        let status = resp.status().as_u16();
        self.metrics
            .request(method.as_str(), &route, status, elapsed);
        span.in_scope(|| {
            if let Some(ErrorCause(cause)) = resp.data::<ErrorCause>() {
                tracing::error!(%method, %route, status, duration_ms, %cause, "request failed");
            } else {
                tracing::info!(%method, %route, status, duration_ms, "request");
            }
        });
        if let Ok(v) = HeaderValue::from_str(&id) {
            resp.headers_mut().insert(REQUEST_ID_HEADER, v);
        }
        Ok(resp)
    }
}

/// Turn errors into the JSON shape right above the routes, so that middleware which renders
/// errors on its own (CORS does) passes ours on rather than poem's plain text.
pub async fn errors_as_json<E: Endpoint>(ep: Arc<E>, req: Request) -> poem::Result<Response> {
    Ok(match ep.call(req).await {
        Ok(r) => r.into_response(),
        Err(e) => error_response(e),
    })
}

/// The JSON answer for `e`, keeping the matched route for the access log and metrics.
fn error_response(e: poem::Error) -> Response {
    // No route matched: a nest's prefix may have left a partial pattern, which is not a route.
    let pattern = if e.is::<poem::error::NotFoundError>() {
        None
    } else {
        e.data::<PathPattern>().cloned()
    };
    let mut r = ApiError::from_poem(e).as_response();
    if let Some(p) = pattern {
        r.set_data(p);
    }
    r
}

/// A caller's id is kept when it is 1 to 128 characters of letters, digits, `-`, `_`, `.`:
/// anything else could forge log lines or headers.
fn is_sane_id(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= MAX_REQUEST_ID_LEN
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sane_request_ids_are_kept() {
        assert!(is_sane_id("abc-123_X.y"));
        assert!(!is_sane_id(""));
        assert!(!is_sane_id("has space"));
        assert!(!is_sane_id("line\nbreak"));
        assert!(!is_sane_id(&"a".repeat(129)));
    }
}
