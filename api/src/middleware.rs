//! The middleware around every request, outermost first: security headers, compression,
//! request context (request id, the one error shape, access log), CORS, rate limit, timeout,
//! body limit, then the routes (with errors turned into JSON right above them).

pub mod context;
pub mod headers;
pub mod limits;
pub mod rate_limit;
