//! The queue engine: typed settings primitives, the database pool and migrations, the job
//! queue (enqueue, the job model and its states, the statements workers run), the job-kind
//! contract and its registry type, retry policies, and the circuit breakers and rate limits
//! that guard calls to external services.
//!
//! **Architecture invariants:** this crate knows PostgreSQL and serde; it never imports poem,
//! apalis, reqwest or lettre, and it knows nothing of the application that runs on it: an
//! application hands it its kinds as a [`jobs::Kinds`] (checked by `testkit`'s tidy tests).
#![warn(missing_docs)]

pub mod breaker;
pub mod config;
pub mod db;
pub mod jobs;
pub mod queue;
pub mod ratelimit;
pub mod retry;
