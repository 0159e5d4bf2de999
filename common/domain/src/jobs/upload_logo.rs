//! `upload_logo`: store a registered team's logo (kept in PostgreSQL by the registration) where
//! it is served from, set the team's `logo_url`, and drop the bytes from the database.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::team_id::is_team_id;
use engine::jobs::{ArgsError, JobArgs, KindSpec, check_args};
use engine::retry::RetryPolicy;

/// The args of an `upload_logo` job. A stored format: fields added later get serde defaults,
/// and unknown fields are ignored so an older worker can read a newer row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadLogo {
    /// The team whose logo to store, e.g. `ICCT-001`.
    pub team_id: String,
}

impl JobArgs for UploadLogo {
    const KIND: &'static str = "upload_logo";
    const SPEC: KindSpec = SPEC;

    fn validate(&self) -> Result<(), ArgsError> {
        team_id_ok(&self.team_id)
    }
}

/// Refuse a malformed team id.
pub(super) fn team_id_ok(team_id: &str) -> Result<(), ArgsError> {
    if is_team_id(team_id) {
        Ok(())
    } else {
        Err(ArgsError::Invalid {
            field: "team_id",
            message: "not a team id such as ICCT-001".into(),
        })
    }
}

/// The `upload_logo` kind: queue `uploads`; 8 attempts spaced from 5 s to 10 min (about half
/// an hour in all, enough to ride out a storage provider's short outage); 2 min per attempt,
/// ample for a 5 MB upload.
pub const SPEC: KindSpec = KindSpec {
    name: UploadLogo::KIND,
    queue: "uploads",
    max_attempts: 8,
    retry: RetryPolicy {
        initial: Duration::from_secs(5),
        multiplier: 2.0,
        max: Duration::from_secs(600),
        jitter: 0.25,
    },
    timeout: Duration::from_secs(120),
    check: check_args::<UploadLogo>,
};
