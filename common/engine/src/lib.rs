//! The queue engine: typed settings primitives, the database pool and migrations, the job
//! queue (enqueue, the job model and its states, the statements workers run), the job-kind
//! contract and its registry type, retry policies, and the circuit breakers and rate limits
//! that guard calls to external services.
//!
//! **Architecture invariants:** this crate knows PostgreSQL and serde; it never imports poem,
//! apalis, reqwest or lettre, and it knows nothing of the application that runs on it, not
//! even in SQL: an application hands it its kinds as a [`jobs::Kinds`], keeps in its own
//! tables which jobs belong to its rows, and reads those jobs by id
//! (`queue::admin::jobs_by_ids`). `testkit`'s tidy tests check it.
#![warn(missing_docs)]

pub mod breaker;
pub mod config;
pub mod db;
pub mod jobs;
pub mod names;
pub mod queue;
pub mod ratelimit;
pub mod retry;
pub mod signal;
