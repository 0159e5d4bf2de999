//! Integration tests of `engine` against a real PostgreSQL: each test gets a fresh, migrated
//! database (`TestDb`) on the run's private cluster. One binary; a module per feature.

mod admin;
mod breaker;
mod counts;
mod db_error;
mod enqueue;
mod enqueue_many;
mod fetch;
mod limits;
mod maintenance;
mod migrate;
mod notify;
mod support;
mod unique;
