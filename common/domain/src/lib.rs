//! The application's domain: API accounts, the operators' audit log, team registrations, and
//! the job kinds the application registers into the queue engine ([`jobs::KINDS`]).
//!
//! **Architecture invariant:** the engine (`engine`) never imports this crate; what the
//! application adds to the queue (kinds, their args and SQL) it registers here and in the
//! worker's handlers. This crate knows PostgreSQL and serde, never poem, apalis, reqwest or
//! lettre.
#![warn(missing_docs)]

pub mod accounts;
pub mod audit;
pub mod jobs;
pub mod registrations;
pub mod team_id;
