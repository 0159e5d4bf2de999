//! The middleware around every request, outermost first: security headers, compression,
//! request context (request id, the one error shape, access log), CORS, rate limit, timeout,
//! body limit, then the routes (with errors turned into JSON right above them, and control
//! characters in any input refused below that).

pub mod context;
pub mod headers;
pub mod input;
pub mod limits;
pub mod rate_limit;
