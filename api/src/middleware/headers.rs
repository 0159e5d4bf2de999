//! Response headers: security headers on every answer, and gzip/deflate for bodies over 1 KB.

use std::sync::Arc;

use poem::http::HeaderValue;
use poem::http::header;
use poem::web::{Compress, CompressionAlgo};
use poem::{Body, Endpoint, IntoResponse, Request, Response};

/// Bodies smaller than this are sent as they are: compressing them costs more than it saves.
pub const COMPRESS_MIN_BYTES: usize = 1024;

/// Add `X-Content-Type-Options`, `X-Frame-Options`, `Referrer-Policy`, and with `hsts`
/// (production, behind TLS) `Strict-Transport-Security`.
pub async fn security<E: Endpoint>(ep: Arc<E>, req: Request, hsts: bool) -> poem::Result<Response> {
    let mut resp = ep.get_response(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if hsts {
        h.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000; includeSubDomains"),
        );
    }
    Ok(resp)
}

/// Compress a body of at least [`COMPRESS_MIN_BYTES`] with gzip or deflate, whichever the
/// client accepts (gzip preferred). Request bodies are never decompressed: a small
/// compressed body could otherwise expand past the body limit.
pub async fn compress<E: Endpoint>(ep: Arc<E>, req: Request) -> poem::Result<Response> {
    let algo = accepted(req.headers().get(header::ACCEPT_ENCODING));
    let mut resp = ep.call(req).await?.into_response();
    let Some(algo) = algo else { return Ok(resp) };
    if resp.headers().contains_key(header::CONTENT_ENCODING) {
        return Ok(resp);
    }
    let bytes = resp.take_body().into_bytes().await?;
    if bytes.len() < COMPRESS_MIN_BYTES {
        resp.set_body(Body::from(bytes));
        return Ok(resp);
    }
    resp.set_body(Body::from(bytes));
    resp.headers_mut().remove(header::CONTENT_LENGTH);
    resp.headers_mut()
        .append(header::VARY, HeaderValue::from_static("accept-encoding"));
    Ok(Compress::new(resp, algo).into_response())
}

/// gzip if the client accepts it, else deflate, else nothing (`q=0` refuses).
fn accepted(value: Option<&HeaderValue>) -> Option<CompressionAlgo> {
    let value = value?.to_str().ok()?;
    let accepts = |name: &str| {
        value.split(',').any(|item| {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or("").trim();
            let refused = parts.any(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            coding.eq_ignore_ascii_case(name) && !refused
        })
    };
    if accepts("gzip") {
        Some(CompressionAlgo::GZIP)
    } else if accepts("deflate") {
        Some(CompressionAlgo::DEFLATE)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn algo(v: &str) -> Option<CompressionAlgo> {
        accepted(Some(&HeaderValue::from_str(v).unwrap()))
    }

    #[test]
    fn accept_encoding_is_negotiated() {
        assert!(matches!(
            algo("gzip, deflate, br"),
            Some(CompressionAlgo::GZIP)
        ));
        assert!(matches!(algo("deflate"), Some(CompressionAlgo::DEFLATE)));
        assert!(matches!(
            algo("gzip;q=0, deflate"),
            Some(CompressionAlgo::DEFLATE)
        ));
        assert!(algo("br, identity").is_none());
        assert!(accepted(None).is_none());
    }
}
