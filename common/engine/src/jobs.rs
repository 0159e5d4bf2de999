//! The job-kind contract: what a kind declares (its name, typed args, default queue, attempt
//! budget, retry policy and timeout) and [`Kinds`], the registry an application builds from
//! its kinds and hands to the engine.
//!
//! The engine knows no kind but its own diagnostic [`noop`]. The application lists its kinds
//! in one [`Kinds`]; the API checks args against it before it enqueues, and the worker maps
//! each kind to a handler and refuses to start if one is missing. Args structs are a stored format: rows written by
//! today's API are read by tomorrow's worker, so new fields get serde defaults and a kind is
//! never renamed in place.

pub mod noop;

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
    /// The kind's defaults; its `name` is [`Self::KIND`].
    const SPEC: KindSpec;

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

/// The registry of an application's job kinds, checked once when it is built: names are
/// unique.
#[derive(Debug, Clone, Copy)]
pub struct Kinds {
    specs: &'static [KindSpec],
}

impl Kinds {
    /// The registry of `specs`. Panics (at compile time, in a `const`) on a duplicate name.
    pub const fn new(specs: &'static [KindSpec]) -> Self {
        let mut i = 0;
        while i < specs.len() {
            let mut j = i + 1;
            while j < specs.len() {
                assert!(
                    !const_str_eq(specs[i].name, specs[j].name),
                    "a job kind is registered twice"
                );
                j += 1;
            }
            i += 1;
        }
        Kinds { specs }
    }

    /// The kind named `name`.
    pub fn get(&self, name: &str) -> Result<&'static KindSpec, ArgsError> {
        self.specs
            .iter()
            .find(|k| k.name == name)
            .ok_or_else(|| ArgsError::UnknownKind(name.to_owned()))
    }

    /// Every kind, in the order given to [`Kinds::new`].
    pub fn all(&self) -> &'static [KindSpec] {
        self.specs
    }
}

const fn const_str_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    const KINDS: Kinds = Kinds::new(&[noop::SPEC]);

    fn kind(name: &str) -> Result<&'static KindSpec, ArgsError> {
        KINDS.get(name)
    }

    #[test]
    fn duplicate_kind_names_are_caught() {
        assert!(!const_str_eq("noop", "noo"));
        assert!(const_str_eq("noop", "noop"));
        let twice = std::panic::catch_unwind(|| Kinds::new(&[noop::SPEC, noop::SPEC]));
        assert!(twice.is_err());
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
}
