//! Integration tests of the API: the app runs in-process (`poem::test::TestClient`) against a
//! fresh, migrated database per test. One binary; a module per feature.

mod audit;
mod auth;
mod breakers;
mod db_errors;
mod errors;
mod fuzz;
mod jobs;
mod middleware;
mod names;
mod probes;
mod registrations;
mod server;
mod sessions;
mod support;
