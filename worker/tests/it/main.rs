//! Worker integration tests against a real PostgreSQL: in-process workers for outcomes, the
//! real `worker` binary for signals, kills and multi-process runs, the real `api` binary for a
//! registration end to end, and real HTTP and SMTP servers standing in for Cloudinary and mail.

mod bookkeeping;
mod breakers;
mod cloudinary;
mod e2e;
mod harness;
mod limits;
mod maintenance;
mod new_kind;
mod outcomes;
mod processes;
mod registrations;
mod scenarios;
mod smtp;
