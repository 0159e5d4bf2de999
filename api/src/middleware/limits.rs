//! Request timeout (`REQUEST_TIMEOUT` → 408) and body limit (`MAX_REQUEST_SIZE` → 413).
//!
//! The body limit answers 413 at once when `Content-Length` says too much; a body without a
//! length (chunked) is read up to the limit and handed on as bytes, so an endpoint never sees
//! more than `MAX_REQUEST_SIZE` and no client is refused for omitting the header (poem's
//! `SizeLimit` answers 411 then). The timeout sits outside the body limit, so a client that
//! stalls mid-body is cut off too.

use std::sync::Arc;
use std::time::Duration;

use poem::error::ReadBodyError;
use poem::http::header::CONTENT_LENGTH;
use poem::{Endpoint, IntoResponse, Request, Response};

use crate::error::{ApiError, ErrorCode};

/// Answer 408 when `ep` takes longer than `timeout`.
pub async fn timeout<E: Endpoint>(
    ep: Arc<E>,
    req: Request,
    timeout: Duration,
) -> poem::Result<Response> {
    match tokio::time::timeout(timeout, ep.call(req)).await {
        Ok(r) => r.map(IntoResponse::into_response),
        Err(_) => Err(ApiError::new(
            ErrorCode::RequestTimeout,
            format!("the request took longer than {} s", timeout.as_secs_f64()),
        )
        .into()),
    }
}

/// Answer 413 when the body is larger than `max` bytes.
pub async fn body_limit<E: Endpoint>(
    ep: Arc<E>,
    mut req: Request,
    max: usize,
) -> poem::Result<Response> {
    let too_large = || {
        ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("the body is larger than {max} bytes"),
        )
    };
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match declared {
        // hyper holds the body to its declared length.
        Some(len) if len > max as u64 => return Err(too_large().into()),
        Some(_) => {}
        None => {
            let body = req.take_body();
            let bytes = body.into_bytes_limit(max).await.map_err(|e| match e {
                ReadBodyError::PayloadTooLarge => too_large(),
                e => ApiError::validation(format!("cannot read the body: {e}")),
            })?;
            req.set_body(bytes);
        }
    }
    ep.call(req).await.map(IntoResponse::into_response)
}
