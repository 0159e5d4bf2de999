//! The application's job kinds and the registry ([`KINDS`]) it hands to the engine: the API
//! checks args against it before it enqueues, and the worker maps each kind to a handler.
//!
//! Args structs are a stored format: rows written by today's API are read by tomorrow's
//! worker, so new fields get serde defaults and a kind is never renamed in place.

pub mod send_confirmation_email;
pub mod upload_logo;

use engine::jobs::{ArgsError, KindSpec, Kinds, ScheduleSpec, noop};

/// Every kind this application runs: the engine's diagnostic `noop` and the registration's
/// two jobs.
pub static KINDS: Kinds =
    Kinds::new(&[noop::SPEC, upload_logo::SPEC, send_confirmation_email::SPEC]);

/// Every periodic job registered in code. None yet: the first ones come with the kinds that
/// need them (the forecast runs). The clean-up of abandoned logo bytes is a maintenance pass
/// instead (`worker::maintenance::logos` says why).
pub static SCHEDULES: &[ScheduleSpec] = &[];

/// The kind named `name`.
pub fn kind(name: &str) -> Result<&'static KindSpec, ArgsError> {
    KINDS.get(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn team_kinds_take_a_team_id_and_ignore_unknown_fields() {
        for name in ["upload_logo", "send_confirmation_email"] {
            let k = kind(name).unwrap();
            assert!((k.check)(&serde_json::json!({"team_id": "ICCT-001"})).is_ok());
            // A newer API may add fields; this worker must still read the row.
            assert!((k.check)(&serde_json::json!({"team_id": "ICCT-001", "later": 1})).is_ok());
            assert!(matches!(
                (k.check)(&serde_json::json!({})),
                Err(ArgsError::Shape(_))
            ));
            assert!(matches!(
                (k.check)(&serde_json::json!({"team_id": "../etc"})),
                Err(ArgsError::Invalid {
                    field: "team_id",
                    ..
                })
            ));
        }
    }
}
