//! The application's maintenance passes: pruning of expired idempotency keys (`keys`) and of
//! abandoned logo bytes (`logos`). They run beside the runtime's own passes, claimed the same
//! way, once per interval across all workers.

pub mod keys;
pub mod logos;
