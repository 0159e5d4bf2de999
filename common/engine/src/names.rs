//! Names that travel between processes: a queue's and an external service's.
//!
//! Each is parsed once, where it enters (an API request, a worker's settings, job args), into
//! a type whose field is private, so code further in never meets an invalid one and never
//! checks again. A queue name is what a worker can be told to serve in `WORKER_QUEUES`; a
//! service name is what keys its breaker and rate-limit rows and the `RATE_LIMITS` setting.

use std::fmt;

use bytes::BytesMut;
use postgres_types::{IsNull, ToSql, Type, to_sql_checked};

/// A name was refused: it says which kind of name, the value and the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not a {what} name: {}", rule(*max))]
pub struct NameError {
    what: &'static str,
    value: String,
    max: usize,
}

impl NameError {
    /// The rule the name broke, e.g. "1 to 128 letters, digits, _ - .": what an API answers
    /// as the field's error.
    pub fn rule(&self) -> String {
        rule(self.max)
    }
}

fn rule(max: usize) -> String {
    format!("1 to {max} letters, digits, _ - .")
}

/// The one rule of both names: 1 to `max` ASCII letters, digits, `_`, `-` or `.`. No spaces,
/// commas or colons, so a name can stand in a list such as `WORKER_QUEUES=email:4,uploads`.
/// A `const fn`, so that the kinds' default queues are checked when the registry is built.
pub(crate) const fn keeps_rule(s: &str, max: usize) -> bool {
    let b = s.as_bytes();
    if b.is_empty() || b.len() > max {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if !(b[i].is_ascii_alphanumeric() || matches!(b[i], b'_' | b'-' | b'.')) {
            return false;
        }
        i += 1;
    }
    true
}

fn check(what: &'static str, max: usize, s: &str) -> Result<String, NameError> {
    if keeps_rule(s, max) {
        Ok(s.to_owned())
    } else {
        Err(NameError {
            what,
            value: s.to_owned(),
            max,
        })
    }
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $what:literal, $max:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[derive(serde::Serialize, serde::Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// The longest name accepted, in bytes (every accepted character is one byte).
            pub const MAX_LEN: usize = $max;

            /// The name `s`, if it keeps the rule.
            pub fn parse(s: &str) -> Result<Self, NameError> {
                check($what, Self::MAX_LEN, s).map(Self)
            }

            /// The name as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<&str> for $name {
            type Error = NameError;
            fn try_from(s: &str) -> Result<Self, NameError> {
                Self::parse(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = NameError;
            fn try_from(s: String) -> Result<Self, NameError> {
                Self::parse(&s)
            }
        }

        impl std::str::FromStr for $name {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, NameError> {
                Self::parse(s)
            }
        }

        impl From<$name> for String {
            fn from(n: $name) -> String {
                n.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl ToSql for $name {
            fn to_sql(
                &self,
                ty: &Type,
                out: &mut BytesMut,
            ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
                self.0.to_sql(ty, out)
            }

            fn accepts(ty: &Type) -> bool {
                <String as ToSql>::accepts(ty)
            }

            to_sql_checked!();
        }
    };
}

name_type!(
    /// A queue's name: 1 to 128 letters, digits, `_`, `-` or `.`, the names a worker can be
    /// told to serve. The `jobs` table allows any 1 to 128 characters; rows written before
    /// this rule are read as plain text.
    QueueName,
    "queue",
    128
);

name_type!(
    /// An external service's name (`images`, `mail`): 1 to 64 letters, digits, `_`, `-`
    /// or `.`. It keys the service's breaker and rate-limit rows.
    ServiceName,
    "service",
    64
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_queue_name_is_what_a_worker_can_serve() {
        for ok in ["email", "uploads", "a", "q-1_x.y", &"q".repeat(128)] {
            assert_eq!(QueueName::parse(ok).unwrap().as_str(), ok);
        }
        for bad in [
            "",
            "my queue",
            "a,b",
            "a:4",
            "é",
            " email",
            &"q".repeat(129),
        ] {
            let e = QueueName::parse(bad).unwrap_err();
            assert_eq!(e.rule(), "1 to 128 letters, digits, _ - .", "{bad:?}");
        }
        assert_eq!(
            QueueName::parse("my queue").unwrap_err().to_string(),
            r#""my queue" is not a queue name: 1 to 128 letters, digits, _ - ."#
        );
    }

    #[test]
    fn a_service_name_is_at_most_64() {
        assert!(ServiceName::parse(&"s".repeat(64)).is_ok());
        assert!(ServiceName::parse(&"s".repeat(65)).is_err());
        assert!(ServiceName::parse("cloud inary").is_err());
    }

    #[test]
    fn serde_checks_the_name() {
        let q: QueueName = serde_json::from_str(r#""email""#).unwrap();
        assert_eq!(serde_json::to_string(&q).unwrap(), r#""email""#);
        assert!(serde_json::from_str::<QueueName>(r#""my queue""#).is_err());
        assert!(serde_json::from_str::<ServiceName>(r#""""#).is_err());
    }
}
