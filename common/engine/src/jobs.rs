//! The registry of job kinds: for each its name, typed args, default queue, attempt budget,
//! retry policy and timeout.
//!
//! The API checks args against it before it enqueues; the worker maps each kind to a handler
//! and refuses to start if one is missing. Args structs are a stored format: rows written by
//! today's API are read by tomorrow's worker, so new fields get serde defaults and a kind is
//! never renamed in place.

pub mod noop;
pub mod send_confirmation_email;
pub mod upload_logo;

use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::retry::RetryPolicy;

/// Why a kind's args were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArgsError {
    /// No kind of that name is registered.
    #[error("unknown job kind {0:?}")]
    UnknownKind(String),
    /// The JSON does not have the kind's shape.
    #[error("args do not match the kind: {0}")]
    Shape(String),
    /// A field has a value the kind refuses.
    #[error("invalid {field}: {message}")]
    Invalid {
        /// The field at fault.
        field: &'static str,
        /// Why.
        message: String,
    },
}

/// The typed args of one job kind.
pub trait JobArgs: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The kind's registered name; never renamed once jobs of it exist.
    const KIND: &'static str;

    /// Check values serde cannot (ranges, formats).
    fn validate(&self) -> Result<(), ArgsError> {
        Ok(())
    }
}

/// A kind's name and default policy.
#[derive(Debug, Clone, Copy)]
pub struct KindSpec {
    /// The registered name.
    pub name: &'static str,
    /// The queue its jobs go to unless the enqueuer says otherwise.
    pub queue: &'static str,
    /// Attempts before a failing job is discarded.
    pub max_attempts: i32,
    /// How retries are spaced.
    pub retry: RetryPolicy,
    /// How long one attempt may run before it counts as failed.
    pub timeout: Duration,
    /// Parses and validates args given as JSON.
    pub check: fn(&serde_json::Value) -> Result<(), ArgsError>,
}

/// Parse `args` as `A` and validate it; the `check` of every [`KindSpec`].
pub fn check_args<A: JobArgs>(args: &serde_json::Value) -> Result<(), ArgsError> {
    let parsed = A::deserialize(args).map_err(|e| ArgsError::Shape(e.to_string()))?;
    parsed.validate()
}

/// Every registered kind.
pub static KINDS: &[KindSpec] = &[noop::SPEC, upload_logo::SPEC, send_confirmation_email::SPEC];

/// A periodic job registered in code. Every worker enqueues it on its schedule, once per tick
/// across the cluster, beside the schedules of `PERIODIC_JOBS` (which replace one of the same
/// name, so an operator can change or silence a built-in schedule without a deploy).
#[derive(Debug, Clone, Copy)]
pub struct ScheduleSpec {
    /// The schedule's name, unique; part of each tick's unique key.
    pub name: &'static str,
    /// A cron expression: 5 fields, or 6 with seconds first.
    pub cron: &'static str,
    /// The kind it enqueues.
    pub kind: &'static str,
    /// Its args, as JSON text.
    pub args: &'static str,
}

/// Every periodic job registered in code. None yet: the first ones come with the kinds that
/// need them (the forecast runs). The clean-up of abandoned logo bytes is a maintenance pass
/// instead (`worker::maintenance::logos` says why).
pub static SCHEDULES: &[ScheduleSpec] = &[];

/// The kind named `name`.
pub fn kind(name: &str) -> Result<&'static KindSpec, ArgsError> {
    KINDS
        .iter()
        .find(|k| k.name == name)
        .ok_or_else(|| ArgsError::UnknownKind(name.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_names_are_unique() {
        let mut names: Vec<_> = KINDS.iter().map(|k| k.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), KINDS.len());
    }

    #[test]
    fn unknown_kinds_and_bad_args_are_refused() {
        assert_eq!(
            kind("nope").unwrap_err(),
            ArgsError::UnknownKind("nope".into())
        );
        let noop = kind("noop").unwrap();
        assert!((noop.check)(&serde_json::json!({"sleep_ms": 5})).is_ok());
        assert!(matches!(
            (noop.check)(&serde_json::json!({"sleep_ms": "soon"})),
            Err(ArgsError::Shape(_))
        ));
        assert!(
            (noop.check)(&serde_json::json!({"call_url": "http://127.0.0.1:9/x", "service": "s"}))
                .is_ok()
        );
        for (args, field) in [
            (serde_json::json!({"call_url": "https://x/y"}), "call_url"),
            (serde_json::json!({"call_url": "http:///y"}), "call_url"),
            (serde_json::json!({"service": "a b"}), "service"),
        ] {
            assert!(
                matches!((noop.check)(&args), Err(ArgsError::Invalid { field: f, .. }) if f == field),
                "{args}"
            );
        }
        assert!(matches!(
            (noop.check)(&serde_json::json!({"sleep_ms": 86_400_001})),
            Err(ArgsError::Invalid {
                field: "sleep_ms",
                ..
            })
        ));
    }

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
