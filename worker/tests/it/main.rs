//! Worker integration tests against a real PostgreSQL: in-process workers for outcomes, and
//! the real `worker` binary for signals, kills and multi-process runs.

mod breakers;
mod cloudinary;
mod harness;
mod maintenance;
mod outcomes;
mod processes;
mod registrations;
mod scenarios;
mod smtp;
