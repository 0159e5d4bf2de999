//! The middleware around every request, outermost first: request context (request id, the
//! one error shape, access log).

pub mod context;
