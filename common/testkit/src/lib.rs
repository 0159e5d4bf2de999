//! Development infrastructure and the support every test shares, so that each helper has one
//! home:
//!
//! - [`cluster`]: a private PostgreSQL from the system's binaries (for `ops` and the tests);
//! - [`db`]: a fresh, migrated database per test ([`TestDb`]) on the run's throwaway cluster,
//!   a [`PrivateCluster`] for tests that stop the server, plain connections and pools;
//! - [`cut`]: a TCP proxy in front of PostgreSQL that loses a reply in transit ([`CutProxy`]);
//! - [`wait`]: waiting on the database (or anything) with a deadline ([`wait_for`]);
//! - [`dir`]: temporary directories ([`TempDir`]);
//! - [`http`]: an HTTP client on reqwest for talking to the real binaries, with bearer tokens,
//!   JSON and the registration form;
//! - [`fake`]: a real HTTP server (poem) standing in for Cloudinary and other services, which
//!   parses multipart bodies and records every request it received;
//! - [`process`]: the real `api` and `worker` binaries as child processes: a free port, waiting
//!   for `/health`, their logs, signals, the admin login;
//! - [`fixtures`]: the team every registration test registers, and the password they log in
//!   with;
//! - [`settings`]: the settings a process reads, against those `.env.example` lists.
//!
//! [`free_port`] is the one way to pick a port.

#![warn(missing_docs)]

pub mod cluster;
pub mod cut;
pub mod db;
pub mod dir;
pub mod fake;
pub mod fixtures;
pub mod http;
pub mod process;
pub mod settings;
pub mod wait;

pub use cluster::free_port;
pub use cut::CutProxy;
pub use db::{PrivateCluster, TestDb};
pub use dir::TempDir;
pub use wait::wait_for;
