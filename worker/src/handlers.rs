//! The application's job handlers: one module per kind of `domain::jobs`. Each takes its
//! args, a [`JobContext`](crate::runtime::handlers::JobContext) and what it needs besides
//! (a pool, a storage, a mailer); `app::handlers` registers them with the runtime, and the
//! worker refuses to start if a registered kind has no handler.

pub mod noop;
pub mod send_confirmation_email;
pub mod upload_logo;
