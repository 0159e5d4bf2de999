//! Settings, read once from the environment (and, for the worker, its flags) and validated.
//!
//! Raw text becomes typed, derived settings in one step; every failure is one line that names
//! the variable, so a bad deploy stops at start-up with a message an operator can act on.
//! Nothing below `main` reads the environment.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// A setting that could not be used: the variable's name and what was wrong with it.
#[derive(Debug, thiserror::Error)]
#[error("invalid setting {name}: {message}")]
pub struct ConfigError {
    /// The environment variable (or flag) at fault.
    pub name: &'static str,
    /// What was wrong, without the secret parts of the value.
    pub message: String,
}

impl ConfigError {
    /// A failure of `name` described by `message`.
    pub fn new(name: &'static str, message: impl Into<String>) -> Self {
        Self {
            name,
            message: message.into(),
        }
    }
}

/// Where settings come from: the process environment, or a map in tests.
pub trait Source {
    /// The raw value of `name`, if set and not empty.
    fn get(&self, name: &str) -> Option<String>;
}

/// The process environment.
pub struct Env;

impl Source for Env {
    fn get(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.trim().is_empty())
    }
}

impl Source for [(&str, &str)] {
    fn get(&self, name: &str) -> Option<String> {
        self.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    }
}

/// Parse `name` as a `T`, or take `default` when it is unset.
pub fn parse_or<T>(
    src: &(impl Source + ?Sized),
    name: &'static str,
    default: T,
) -> Result<T, ConfigError>
where
    T: FromStr,
    T::Err: fmt::Display,
{
    match src.get(name) {
        None => Ok(default),
        Some(raw) => raw
            .trim()
            .parse()
            .map_err(|e| ConfigError::new(name, format!("cannot parse {raw:?}: {e}"))),
    }
}

/// A positive integer setting with a default.
pub fn positive(
    src: &(impl Source + ?Sized),
    name: &'static str,
    default: u64,
) -> Result<u64, ConfigError> {
    let v: u64 = parse_or(src, name, default)?;
    if v == 0 {
        return Err(ConfigError::new(name, "must be greater than 0"));
    }
    Ok(v)
}

/// A duration given in whole milliseconds, greater than zero.
pub fn millis(
    src: &(impl Source + ?Sized),
    name: &'static str,
    default_ms: u64,
) -> Result<Duration, ConfigError> {
    positive(src, name, default_ms).map(Duration::from_millis)
}

/// A boolean: `true/false`, `1/0`, `yes/no`, `on/off`.
pub fn boolean(
    src: &(impl Source + ?Sized),
    name: &'static str,
    default: bool,
) -> Result<bool, ConfigError> {
    match src.get(name).map(|v| v.trim().to_ascii_lowercase()) {
        None => Ok(default),
        Some(v) => match v.as_str() {
            "true" | "1" | "yes" | "on" => Ok(true),
            "false" | "0" | "no" | "off" => Ok(false),
            _ => Err(ConfigError::new(
                name,
                format!("expected true or false, got {v:?}"),
            )),
        },
    }
}

/// A string that must not be logged: `Debug` and `Display` print a placeholder.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wrap a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Connection settings for PostgreSQL.
#[derive(Debug, Clone)]
pub struct DatabaseSettings {
    /// The connection string; may hold a password, hence secret.
    pub url: Secret,
    /// The most connections the pool opens.
    pub pool_size: usize,
    /// How long a caller waits for a pooled connection before failing.
    pub pool_timeout: Duration,
}

/// Default for `DATABASE_POOL_SIZE`: the worker's producer, completer, lease renewer and
/// maintenance each hold one at most, with headroom for the API's requests.
pub const DEFAULT_POOL_SIZE: u64 = 16;
/// Default for `DATABASE_POOL_TIMEOUT_MS`.
pub const DEFAULT_POOL_TIMEOUT_MS: u64 = 5_000;

impl DatabaseSettings {
    /// Read `DATABASE_URL`, `DATABASE_POOL_SIZE` and `DATABASE_POOL_TIMEOUT_MS`.
    pub fn from_source(src: &(impl Source + ?Sized)) -> Result<Self, ConfigError> {
        let url = src.get("DATABASE_URL").ok_or_else(|| {
            ConfigError::new(
                "DATABASE_URL",
                "is not set (postgres://user:password@host:port/database)",
            )
        })?;
        url.parse::<tokio_postgres::Config>().map_err(|e| {
            ConfigError::new(
                "DATABASE_URL",
                format!("is not a PostgreSQL connection string: {e}"),
            )
        })?;
        Ok(Self {
            url: Secret::new(url),
            pool_size: positive(src, "DATABASE_POOL_SIZE", DEFAULT_POOL_SIZE)? as usize,
            pool_timeout: millis(src, "DATABASE_POOL_TIMEOUT_MS", DEFAULT_POOL_TIMEOUT_MS)?,
        })
    }

    /// Settings for `url` with default pool sizes (tests, `ops`).
    pub fn for_url(url: impl Into<String>) -> Self {
        Self {
            url: Secret::new(url),
            pool_size: DEFAULT_POOL_SIZE as usize,
            pool_timeout: Duration::from_millis(DEFAULT_POOL_TIMEOUT_MS),
        }
    }

    /// The parsed connection config (validated when the settings were built).
    pub fn pg_config(&self) -> tokio_postgres::Config {
        self.url
            .expose()
            .parse()
            .expect("DATABASE_URL was validated when settings were read")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_setting_and_hide_nothing_else() {
        let src: &[(&str, &str)] = &[
            ("DATABASE_URL", "postgres://u:pw@h/db"),
            ("DATABASE_POOL_SIZE", "lots"),
        ];
        let err = DatabaseSettings::from_source(src).unwrap_err();
        assert_eq!(err.name, "DATABASE_POOL_SIZE");
        assert!(
            err.to_string()
                .starts_with("invalid setting DATABASE_POOL_SIZE: cannot parse \"lots\"")
        );

        let src: &[(&str, &str)] = &[
            ("DATABASE_URL", "postgres://u:pw@h/db"),
            ("DATABASE_POOL_SIZE", "0"),
        ];
        assert_eq!(
            DatabaseSettings::from_source(src).unwrap_err().name,
            "DATABASE_POOL_SIZE"
        );

        let src: &[(&str, &str)] = &[];
        assert_eq!(
            DatabaseSettings::from_source(src).unwrap_err().name,
            "DATABASE_URL"
        );
    }

    #[test]
    fn secrets_do_not_print() {
        let s = DatabaseSettings::for_url("postgres://u:hunter2@h/db");
        assert!(!format!("{s:?}").contains("hunter2"));
    }
}
