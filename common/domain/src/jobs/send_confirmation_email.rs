//! `send_confirmation_email`: mail a registered team's captain the confirmation of their
//! registration (team id, team, players, the logo link once there is one).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::upload_logo::team_id_ok;
use engine::jobs::{ArgsError, JobArgs, KindSpec, check_args};
use engine::retry::RetryPolicy;

/// The args of a `send_confirmation_email` job. A stored format: fields added later get serde
/// defaults, and unknown fields are ignored so an older worker can read a newer row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendConfirmationEmail {
    /// The team whose captain to mail, e.g. `ICCT-001`.
    pub team_id: String,
}

impl JobArgs for SendConfirmationEmail {
    const KIND: &'static str = "send_confirmation_email";
    const SPEC: KindSpec = SPEC;

    fn validate(&self) -> Result<(), ArgsError> {
        team_id_ok(&self.team_id)
    }
}

/// The `send_confirmation_email` kind: queue `email`; 10 attempts spaced from 10 s to 30 min
/// (a few hours in all: mail servers defer for minutes at a time); 60 s per attempt.
pub const SPEC: KindSpec = KindSpec {
    name: SendConfirmationEmail::KIND,
    queue: "email",
    max_attempts: 10,
    retry: RetryPolicy {
        initial: Duration::from_secs(10),
        multiplier: 2.0,
        max: Duration::from_secs(1800),
        jitter: 0.25,
    },
    timeout: Duration::from_secs(60),
    check: check_args::<SendConfirmationEmail>,
};
