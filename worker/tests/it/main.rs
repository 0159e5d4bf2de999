//! Worker integration tests against a real PostgreSQL: in-process workers for outcomes, and
//! the real `worker` binary for signals, kills and multi-process runs, and with the real `api`
//! binary for a registration end to end.

mod breakers;
mod e2e;
mod harness;
mod maintenance;
mod outcomes;
mod processes;
mod registrations;
