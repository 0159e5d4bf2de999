//! The API's settings, read once in `main` from the environment (and, in development, a
//! `.env` file) and validated: a bad value stops the process with one line naming the setting.
//!
//! Built on `engine::config` (`Source`, `parse_or`, `ConfigError`); tests pass a map, never
//! the process environment.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use engine::config::{ConfigError, DatabaseSettings, Env, Secret, Source, parse_or, positive};

/// Default for `PORT`.
pub const DEFAULT_PORT: u16 = 8080;
/// Default for `API_HOST`.
pub const DEFAULT_HOST: &str = "0.0.0.0";
/// Keys that were published (the development default of earlier versions, shipped in the
/// code and in `.env.example`): anyone could sign tokens with them, so every environment
/// refuses them.
pub const PUBLISHED_SECRET_KEYS: &[&str] = &["quayside-development-secret-key-change-me"];
/// Shortest `SECRET_KEY` accepted, in bytes (HS256 wants at least 256 bits).
pub const MIN_SECRET_KEY_BYTES: usize = 32;
/// Where development keeps the signing key it generates when `SECRET_KEY` is unset.
pub const DEV_SECRET_KEY_FILE: &str = "./.data/secret_key";
/// Default for `LOG_LEVEL`.
pub const DEFAULT_LOG_LEVEL: &str = "info";
/// Default for `RATE_LIMIT_REQUESTS`: requests per window per client IP.
pub const DEFAULT_RATE_LIMIT_REQUESTS: u64 = 30;
/// Default for `RATE_LIMIT_WINDOW`, in seconds.
pub const DEFAULT_RATE_LIMIT_WINDOW_S: u64 = 60;
/// Default for `REQUEST_TIMEOUT`, in seconds.
pub const DEFAULT_REQUEST_TIMEOUT_S: u64 = 60;
/// Default for `MAX_REQUEST_SIZE`, in bytes: 10 MiB.
pub const DEFAULT_MAX_REQUEST_SIZE_BYTES: u64 = 10 * 1024 * 1024;
/// Default for `IDEMPOTENCY_TTL`, in seconds: one day (the worker's default too).
pub const DEFAULT_IDEMPOTENCY_TTL_S: u64 = domain::registrations::DEFAULT_IDEMPOTENCY_TTL_S;
/// Default for `TEAM_ID_PREFIX`.
pub const DEFAULT_TEAM_ID_PREFIX: &str = "ICCT";
/// Default for `UPLOADS_DIR` (the worker's default too).
pub const DEFAULT_UPLOADS_DIR: &str = "./.data/uploads";

/// Where the service runs; production refuses insecure settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Environment {
    /// A developer's machine: `.env` is read, and without `SECRET_KEY` a random key is
    /// generated and kept in [`DEV_SECRET_KEY_FILE`].
    Development,
    /// A production-like deployment: `SECRET_KEY` is required.
    Staging,
    /// Production: insecure settings refuse to start, HSTS is sent.
    Production,
}

impl FromStr for Environment {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "development" | "dev" => Ok(Environment::Development),
            "staging" => Ok(Environment::Staging),
            "production" | "prod" => Ok(Environment::Production),
            _ => Err("expected development, staging or production".into()),
        }
    }
}

impl fmt::Display for Environment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Environment::Development => "development",
            Environment::Staging => "staging",
            Environment::Production => "production",
        })
    }
}

/// An IP network (`10.0.0.0/8`, `::1/128`, or a bare address): a trusted proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// True when `ip` is inside this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// An IPv4 address mapped into IPv6 (`::ffff:a.b.c.d`) compares as the IPv4 address.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

impl FromStr for IpNet {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not an IP address or network"))?;
        let addr = canonical(addr);
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?} has a bad prefix length"))?,
        };
        Ok(IpNet { addr, prefix })
    }
}

/// Limits applied by the middleware.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Requests a client IP may make per window.
    pub rate_limit_requests: u64,
    /// The rate-limit window.
    pub rate_limit_window: Duration,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpNet>,
    /// Longest a request may take before it is answered 408.
    pub request_timeout: Duration,
    /// Largest accepted request body, in bytes.
    pub max_request_size: usize,
}

/// Every setting of the API.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `DATABASE_URL`, `DATABASE_POOL_SIZE`, `DATABASE_POOL_TIMEOUT_MS`.
    pub database: DatabaseSettings,
    /// `API_HOST`.
    pub host: String,
    /// `PORT` (or the older `API_PORT`).
    pub port: u16,
    /// `ENVIRONMENT`.
    pub environment: Environment,
    /// `SECRET_KEY`: signs access tokens. `None` only in development, where `main` uses
    /// [`development_secret_key`] (and an app built without one signs with a random key
    /// that lives as long as the app).
    pub secret_key: Option<Secret>,
    /// `CORS_ORIGINS`: origins allowed to call the API from a browser; empty allows none.
    pub cors_origins: Vec<String>,
    /// `LOG_LEVEL`: a `tracing` filter such as `info` or `api=debug,info`.
    pub log_level: String,
    /// Rate limit, timeout, body size, trusted proxies.
    pub limits: Limits,
    /// `IDEMPOTENCY_TTL`: how long an idempotency key is remembered.
    pub idempotency_ttl: Duration,
    /// `TEAM_ID_PREFIX`.
    pub team_id_prefix: String,
    /// `UPLOADS_DIR`: where the worker stores uploaded files, served at `/files/<name>`.
    pub uploads_dir: PathBuf,
    /// `ADMIN_USERNAME`: with `ADMIN_PASSWORD`, the admin created at start-up.
    pub admin_username: Option<String>,
    /// `ADMIN_PASSWORD`: the start-up admin's password, also read by `api create-admin`.
    pub admin_password: Option<Secret>,
}

impl Settings {
    /// Read and validate every setting from `src`.
    pub fn from_source(src: &(impl Source + ?Sized)) -> Result<Self, ConfigError> {
        let environment: Environment = parse_or(src, "ENVIRONMENT", Environment::Development)?;
        let port = match src.get("PORT") {
            Some(_) => parse_or(src, "PORT", DEFAULT_PORT)?,
            None => parse_or(src, "API_PORT", DEFAULT_PORT)?,
        };
        let secret_key = src.get("SECRET_KEY").map(Secret::new);
        match &secret_key {
            None if environment != Environment::Development => {
                return Err(ConfigError::new(
                    "SECRET_KEY",
                    format!(
                        "must be set in {environment}: at least {MIN_SECRET_KEY_BYTES} random bytes, e.g. `openssl rand -hex 32`"
                    ),
                ));
            }
            None => {}
            Some(k) if PUBLISHED_SECRET_KEYS.contains(&k.expose().trim()) => {
                return Err(ConfigError::new(
                    "SECRET_KEY",
                    "is a published example key that anyone can sign tokens with: set a random one, e.g. `openssl rand -hex 32`",
                ));
            }
            Some(k) if k.expose().len() < MIN_SECRET_KEY_BYTES => {
                return Err(ConfigError::new(
                    "SECRET_KEY",
                    format!("must be at least {MIN_SECRET_KEY_BYTES} bytes"),
                ));
            }
            Some(_) => {}
        }
        let cors_origins = list(src, "CORS_ORIGINS");
        for origin in &cors_origins {
            if origin != "*" && !(origin.starts_with("http://") || origin.starts_with("https://")) {
                return Err(ConfigError::new(
                    "CORS_ORIGINS",
                    format!("{origin:?} is not an origin such as https://example.com"),
                ));
            }
        }
        if environment == Environment::Production && cors_origins.iter().any(|o| o == "*") {
            return Err(ConfigError::new(
                "CORS_ORIGINS",
                "`*` is refused in production: list the allowed origins",
            ));
        }
        let trusted_proxies = list(src, "TRUSTED_PROXIES")
            .iter()
            .map(|p| p.parse())
            .collect::<Result<Vec<IpNet>, String>>()
            .map_err(|e| ConfigError::new("TRUSTED_PROXIES", e))?;
        let max_request_size = positive(src, "MAX_REQUEST_SIZE", DEFAULT_MAX_REQUEST_SIZE_BYTES)?;
        let team_id_prefix: String =
            parse_or(src, "TEAM_ID_PREFIX", DEFAULT_TEAM_ID_PREFIX.to_owned())?;
        if team_id_prefix.is_empty()
            || team_id_prefix.len() > 16
            || !team_id_prefix.bytes().all(|b| b.is_ascii_alphanumeric())
        {
            return Err(ConfigError::new(
                "TEAM_ID_PREFIX",
                "must be 1 to 16 letters or digits",
            ));
        }
        let log_level: String = parse_or(src, "LOG_LEVEL", DEFAULT_LOG_LEVEL.to_owned())?;
        tracing_subscriber::EnvFilter::try_new(&log_level)
            .map_err(|e| ConfigError::new("LOG_LEVEL", format!("{log_level:?}: {e}")))?;
        let admin_username = src.get("ADMIN_USERNAME");
        let admin_password = src.get("ADMIN_PASSWORD").map(Secret::new);
        if admin_username.is_some() && admin_password.is_none() {
            return Err(ConfigError::new(
                "ADMIN_PASSWORD",
                "must be set when ADMIN_USERNAME is",
            ));
        }
        Ok(Settings {
            database: DatabaseSettings::from_source(src)?,
            host: parse_or(src, "API_HOST", DEFAULT_HOST.to_owned())?,
            port,
            environment,
            secret_key,
            cors_origins,
            log_level,
            limits: Limits {
                rate_limit_requests: positive(
                    src,
                    "RATE_LIMIT_REQUESTS",
                    DEFAULT_RATE_LIMIT_REQUESTS,
                )?,
                rate_limit_window: Duration::from_secs(positive(
                    src,
                    "RATE_LIMIT_WINDOW",
                    DEFAULT_RATE_LIMIT_WINDOW_S,
                )?),
                trusted_proxies,
                request_timeout: Duration::from_secs(positive(
                    src,
                    "REQUEST_TIMEOUT",
                    DEFAULT_REQUEST_TIMEOUT_S,
                )?),
                max_request_size: usize::try_from(max_request_size)
                    .map_err(|_| ConfigError::new("MAX_REQUEST_SIZE", "too large"))?,
            },
            idempotency_ttl: Duration::from_secs(positive(
                src,
                "IDEMPOTENCY_TTL",
                DEFAULT_IDEMPOTENCY_TTL_S,
            )?),
            team_id_prefix,
            uploads_dir: match src.get("UPLOADS_DIR") {
                Some(d) if d.trim().is_empty() => {
                    return Err(ConfigError::new("UPLOADS_DIR", "must name a directory"));
                }
                Some(d) => PathBuf::from(d),
                None => PathBuf::from(DEFAULT_UPLOADS_DIR),
            },
            admin_username,
            admin_password,
        })
    }

    /// The admin to create at start-up, when both its name and password are set.
    pub fn bootstrap_admin(&self) -> Option<(&str, &Secret)> {
        Some((
            self.admin_username.as_deref()?,
            self.admin_password.as_ref()?,
        ))
    }

    /// Defaults for a database URL: what the tests start from.
    pub fn for_database_url(url: &str) -> Self {
        let src: &[(&str, &str)] = &[("DATABASE_URL", url)];
        Self::from_source(src).expect("the defaults are valid")
    }
}

/// The signing key of development kept in `path` (mode 0600), generated there (32 random
/// bytes, hex) the first time, so that tokens survive restarts without any key being shared.
pub fn development_secret_key(path: &Path) -> Result<Secret, ConfigError> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};

    let fail = |what: &str, e: std::io::Error| {
        ConfigError::new("SECRET_KEY", format!("{what} {}: {e}", path.display()))
    };
    match std::fs::read_to_string(path) {
        Ok(key) => {
            let key = key.trim().to_owned();
            if key.len() < MIN_SECRET_KEY_BYTES {
                return Err(ConfigError::new(
                    "SECRET_KEY",
                    format!("{} holds too short a key: delete it", path.display()),
                ));
            }
            // Whoever loosened it, only the owner reads it.
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| fail("cannot restrict", e))?;
            return Ok(Secret::new(key));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(fail("cannot read", e)),
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| fail("cannot create the directory of", e))?;
    }
    let key = random_key();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| fail("cannot create", e))?;
    file.write_all(key.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| fail("cannot write", e))?;
    Ok(Secret::new(key))
}

/// 32 random bytes from the OS-seeded CSPRNG, hex-encoded: a signing key.
pub fn random_key() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The environment, then (in development only) a `.env` file in the working directory.
///
/// The file is read into a map rather than into the process environment: setting variables
/// once the runtime's threads exist is unsound, and a map keeps real variables winning.
pub struct EnvWithDotenv {
    dotenv: HashMap<String, String>,
}

impl EnvWithDotenv {
    /// Read `.env` if `ENVIRONMENT` (from the real environment) is development.
    pub fn load() -> Result<Self, ConfigError> {
        let environment: Environment = parse_or(&Env, "ENVIRONMENT", Environment::Development)?;
        let mut dotenv = HashMap::new();
        if environment == Environment::Development {
            match dotenvy::dotenv_iter() {
                Ok(iter) => {
                    for item in iter {
                        let (k, v) = item.map_err(|e| ConfigError::new(".env", e.to_string()))?;
                        dotenv.insert(k, v);
                    }
                }
                Err(e) if e.not_found() => {}
                Err(e) => return Err(ConfigError::new(".env", e.to_string())),
            }
        }
        Ok(Self { dotenv })
    }
}

impl Source for EnvWithDotenv {
    fn get(&self, name: &str) -> Option<String> {
        Env.get(name).or_else(|| {
            self.dotenv
                .get(name)
                .filter(|v| !v.trim().is_empty())
                .cloned()
        })
    }
}

/// A comma-separated list; empty items are dropped.
fn list(src: &(impl Source + ?Sized), name: &str) -> Vec<String> {
    src.get(name)
        .map(|v| {
            v.split(',')
                .map(|s| s.trim().trim_end_matches('/').to_owned())
                .filter(|s| !s.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const URL: (&str, &str) = ("DATABASE_URL", "postgres://u:pw@h/db");

    fn err(pairs: &[(&str, &str)]) -> ConfigError {
        let mut all = vec![URL];
        all.extend_from_slice(pairs);
        Settings::from_source(all.as_slice()).unwrap_err()
    }

    #[test]
    fn defaults_are_development_and_valid() {
        let s = Settings::from_source([URL].as_slice()).unwrap();
        assert_eq!(s.environment, Environment::Development);
        assert_eq!(s.port, 8080);
        assert_eq!(s.limits.rate_limit_requests, 30);
        assert_eq!(s.limits.rate_limit_window, Duration::from_secs(60));
        assert_eq!(s.limits.max_request_size, 10 * 1024 * 1024);
        assert!(s.cors_origins.is_empty());
        assert!(s.bootstrap_admin().is_none());
    }

    #[test]
    fn port_falls_back_to_api_port() {
        let s = Settings::from_source([URL, ("API_PORT", "9000")].as_slice()).unwrap();
        assert_eq!(s.port, 9000);
        let s = Settings::from_source([URL, ("API_PORT", "9000"), ("PORT", "9001")].as_slice())
            .unwrap();
        assert_eq!(s.port, 9001);
    }

    #[test]
    fn bad_values_name_their_setting() {
        for (name, value) in [
            ("PORT", "eighty"),
            ("ENVIRONMENT", "prodution"),
            ("RATE_LIMIT_REQUESTS", "0"),
            ("RATE_LIMIT_WINDOW", "-1"),
            ("REQUEST_TIMEOUT", "1m"),
            ("MAX_REQUEST_SIZE", "big"),
            ("IDEMPOTENCY_TTL", "0"),
            ("TRUSTED_PROXIES", "10.0.0.0/33"),
            ("CORS_ORIGINS", "example.com"),
            ("TEAM_ID_PREFIX", "IC-CT"),
            ("LOG_LEVEL", "info,[=bad"),
        ] {
            let e = err(&[(name, value)]);
            assert_eq!(e.name, name, "{e}");
            assert!(
                e.to_string()
                    .starts_with(&format!("invalid setting {name}: "))
            );
        }
    }

    #[test]
    fn admin_bootstrap_needs_a_password() {
        assert_eq!(err(&[("ADMIN_USERNAME", "root")]).name, "ADMIN_PASSWORD");
        // A password alone is for `api create-admin`: no admin at start-up.
        let s = Settings::from_source([URL, ("ADMIN_PASSWORD", "pw")].as_slice()).unwrap();
        assert!(s.bootstrap_admin().is_none());
    }

    #[test]
    fn production_refuses_insecure_settings() {
        let strong = "0123456789abcdef0123456789abcdef";
        let prod = ("ENVIRONMENT", "production");
        assert_eq!(err(&[prod]).name, "SECRET_KEY");
        assert_eq!(err(&[prod, ("SECRET_KEY", "short")]).name, "SECRET_KEY");
        assert_eq!(
            err(&[prod, ("SECRET_KEY", PUBLISHED_SECRET_KEYS[0])]).name,
            "SECRET_KEY"
        );
        assert_eq!(
            err(&[
                prod,
                ("SECRET_KEY", strong),
                ("CORS_ORIGINS", "https://a.example,*")
            ])
            .name,
            "CORS_ORIGINS"
        );
        let ok = Settings::from_source(
            [
                URL,
                prod,
                ("SECRET_KEY", strong),
                ("CORS_ORIGINS", "https://a.example/"),
            ]
            .as_slice(),
        )
        .unwrap();
        assert_eq!(ok.cors_origins, ["https://a.example"]);
        // Development accepts what production refuses.
        assert!(Settings::from_source([URL, ("CORS_ORIGINS", "*")].as_slice()).is_ok());
    }

    #[test]
    fn every_environment_but_development_needs_a_strong_key() {
        for env in ["staging", "production"] {
            let e = err(&[("ENVIRONMENT", env)]);
            assert_eq!(e.name, "SECRET_KEY", "{env}");
            assert!(!e.to_string().contains('\n'), "one line: {e}");
        }
        let s = Settings::from_source([URL].as_slice()).unwrap();
        assert!(s.secret_key.is_none(), "development generates one");
        // The published key and short keys are refused everywhere, development included.
        assert_eq!(
            err(&[("SECRET_KEY", PUBLISHED_SECRET_KEYS[0])]).name,
            "SECRET_KEY"
        );
        assert_eq!(err(&[("SECRET_KEY", "short")]).name, "SECRET_KEY");
    }

    #[test]
    fn the_development_key_is_random_private_and_kept() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("quayside-key-{}", random_key()));
        let path = dir.join(".data/secret_key");
        let first = development_secret_key(&path).unwrap();
        assert_eq!(first.expose().len(), 64);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            development_secret_key(&path).unwrap().expose(),
            first.expose()
        );
        let other = dir.join("other/secret_key");
        assert_ne!(
            development_secret_key(&other).unwrap().expose(),
            first.expose()
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn secrets_do_not_print() {
        let s = Settings::from_source(
            [
                URL,
                ("SECRET_KEY", "hunter2hunter2hunter2hunter2hunter2"),
                ("ADMIN_USERNAME", "root"),
                ("ADMIN_PASSWORD", "pa55word-xyz"),
            ]
            .as_slice(),
        )
        .unwrap();
        let printed = format!("{s:?}");
        assert!(!printed.contains("hunter2"));
        assert!(!printed.contains("pa55word"));
        assert!(!printed.contains(":pw@"));
    }

    #[test]
    fn trusted_proxies_match_networks() {
        let net: IpNet = "10.1.0.0/16".parse().unwrap();
        assert!(net.contains("10.1.200.3".parse().unwrap()));
        assert!(!net.contains("10.2.0.1".parse().unwrap()));
        assert!(net.contains("::ffff:10.1.0.9".parse().unwrap()));
        let one: IpNet = "::1".parse().unwrap();
        assert!(one.contains("::1".parse().unwrap()));
        assert!(!one.contains("127.0.0.1".parse().unwrap()));
        let all: IpNet = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("203.0.113.7".parse().unwrap()));
    }
}
