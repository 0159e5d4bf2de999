//! Integration tests of `domain` against a real PostgreSQL: each test gets a fresh, migrated
//! database (`TestDb`) on the run's private cluster. One binary; a module per feature.

mod accounts;
mod audit;
mod register;
mod registrations;
