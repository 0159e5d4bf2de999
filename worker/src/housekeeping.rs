//! The application's maintenance passes: pruning of expired idempotency keys (`keys`) and of
//! abandoned logo bytes (`logos`). The runtime runs them beside its own passes, claimed the
//! same way, once per interval across all workers.

pub mod keys;
pub mod logos;

use std::time::Duration;

use engine::config::{ConfigError, Source};

use crate::runtime::maintenance::Pass;

/// The settings of the application's passes.
#[derive(Debug, Clone)]
pub struct HousekeepingSettings {
    /// `IDEMPOTENCY_TTL` (the API's setting): idempotency records older than this are deleted.
    pub idempotency_ttl: Duration,
    /// `LOGO_RETENTION_HOURS` (default 168): logo bytes no upload will read are deleted this
    /// long after the registration and the last upload's end.
    pub logo_retention: Duration,
}

impl HousekeepingSettings {
    /// Read and validate.
    pub fn from_source(src: &(impl Source + ?Sized)) -> Result<Self, ConfigError> {
        Ok(Self {
            idempotency_ttl: keys::ttl_from_source(src)?,
            logo_retention: logos::retention_from_source(src)?,
        })
    }
}

/// The passes, each run once per `interval` (the runtime's prune interval: a few minutes
/// more of a day-long TTL is noise).
pub fn passes(settings: &HousekeepingSettings, interval: Duration) -> Vec<Pass> {
    let (ttl, retention) = (settings.idempotency_ttl, settings.logo_retention);
    vec![
        Pass::new("keys", interval, move |c| async move {
            keys::run_once(c, ttl).await.map(drop)
        }),
        Pass::new("logos", interval, move |c| async move {
            logos::run_once(c, retention).await.map(drop)
        }),
    ]
}
