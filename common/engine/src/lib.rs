//! What `api`, `worker` and `ops` share: settings, the database pool and migrations, the job
//! queue (enqueue, the job model and its states, the statements workers run), the registry of
//! job kinds, retry policies, the circuit breakers and rate limits of external services, and the private PostgreSQL cluster that `ops` and the tests start.
//!
//! **Architecture invariant:** this crate knows PostgreSQL and serde; it never imports poem,
//! apalis, reqwest or lettre.
#![warn(missing_docs)]

pub mod accounts;
pub mod audit;
pub mod breaker;
pub mod cluster;
pub mod config;
pub mod db;
pub mod jobs;
pub mod queue;
pub mod ratelimit;
pub mod registrations;
pub mod retry;
#[cfg(feature = "testing")]
pub mod testing;
