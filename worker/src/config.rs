//! The worker's settings: flags and environment, validated into one typed struct.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use engine::breaker::Policy;
use engine::config::{
    ConfigError, DatabaseSettings, Secret, Source, boolean, millis, parse_or, positive,
};
use engine::ratelimit::Limit;
use engine::retry::RetryPolicy;

use crate::breaker::{ServiceSettings, ServicesSettings};
use lettre::message::Mailbox;

/// Everything a worker process needs to know, validated.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// The database.
    pub database: DatabaseSettings,
    /// The queues served, each with its number of job slots.
    pub queues: Vec<(String, usize)>,
    /// Most jobs fetched in one statement.
    pub fetch_batch: usize,
    /// How long a fetched job is leased; renewed every third of it while the job runs.
    pub lease: Duration,
    /// Fallback poll of each queue when no notification arrives (and the only wake-up in
    /// polling-only mode).
    pub poll_interval: Duration,
    /// LISTEN for new jobs; off for PgBouncer in transaction mode.
    pub listen: bool,
    /// Whether the worker's own state changes (fetch, outcomes, lease renewals) wait for
    /// their WAL to reach disk; see `engine::db::batch_pool`.
    pub synchronous_commit: bool,
    /// How long in-flight jobs may run on after SIGTERM before they are handed back.
    pub shutdown_timeout: Duration,
    /// Port of the Prometheus `/metrics` endpoint; none when unset.
    pub metrics_port: Option<u16>,
    /// Maintenance intervals and limits.
    pub maintenance: MaintenanceSettings,
    /// Periodic jobs from configuration (`PERIODIC_JOBS`, a JSON list).
    pub periodic: Vec<PeriodicJob>,
    /// Per-kind overrides of the registry's attempt timeout (`KIND_TIMEOUTS_MS`,
    /// `kind=ms,kind=ms`).
    pub kind_timeouts: HashMap<String, Duration>,
    /// Per-kind overrides of the registry's job-level retry backoff (`KIND_RETRY`,
    /// `kind=initial_ms:multiplier:max_ms[:jitter],...`). Attempt counts are not here: they
    /// are stored with each job when it is enqueued.
    pub kind_retries: HashMap<String, RetryPolicy>,
    /// Circuit breakers and rate limits of external services.
    pub services: ServicesSettings,
    /// Where the registration jobs put logos and mail.
    pub delivery: DeliverySettings,
}

/// The embedded defaults of the registration jobs: logos stored as local files that the API
/// serves, and mail written as `.eml` files to an outbox directory.
#[derive(Debug, Clone)]
pub struct DeliverySettings {
    /// `UPLOADS_DIR`: where logos are stored (the API serves them at `/files/<name>`).
    pub uploads_dir: PathBuf,
    /// `MAIL_OUTBOX_DIR`: where confirmation mail is written as `.eml` files.
    pub outbox_dir: PathBuf,
    /// `SMTP_FROM_EMAIL`: the sender of confirmation mail, `Name <address>` or an address.
    pub from: Mailbox,
    /// `SMTP_REPLY_TO`: the Reply-To of confirmation mail, if any (outbox or SMTP alike).
    pub reply_to: Option<Mailbox>,
    /// `PUBLIC_BASE_URL`: the API's address as mail readers reach it; links to logos start
    /// with it.
    pub public_base_url: String,
    /// Cloudinary, when configured: logos go there instead of `uploads_dir`.
    pub cloudinary: Option<CloudinarySettings>,
    /// An SMTP server, when `SMTP_SERVER` is set: mail goes there instead of `outbox_dir`.
    pub smtp: Option<SmtpSettings>,
    /// `LOGO_KEEP_AFTER_UPLOAD` (default false): keep a logo's bytes in PostgreSQL after its
    /// upload succeeded, for `LOGO_RETENTION_HOURS` after it (as for a given-up upload), so
    /// that it can be uploaded again elsewhere; by default they are dropped with the upload.
    pub keep_logo_bytes: bool,
}

/// Cloudinary's Upload API: `CLOUDINARY_URL` (`cloudinary://key:secret@cloud`) or
/// `CLOUDINARY_CLOUD_NAME`, `CLOUDINARY_API_KEY` and `CLOUDINARY_API_SECRET`.
#[derive(Debug, Clone)]
pub struct CloudinarySettings {
    /// The cloud (account) name, part of the upload URL.
    pub cloud_name: String,
    /// The API key, sent with each upload.
    pub api_key: String,
    /// The API secret: signs uploads and is never sent, logged or shown.
    pub api_secret: Secret,
    /// `CLOUDINARY_API_BASE`: scheme and host of the API, without a trailing slash.
    pub api_base: String,
    /// `CLOUDINARY_FOLDER`: the folder logos are put in; none puts them at the root.
    pub folder: Option<String>,
    /// `CLOUDINARY_CONNECT_TIMEOUT_MS`.
    pub connect_timeout: Duration,
    /// `CLOUDINARY_REQUEST_TIMEOUT_MS`: one whole upload request, answer included.
    pub request_timeout: Duration,
    /// `CLOUDINARY_CALL_RETRIES`: quick retries of one upload within an attempt, after a
    /// connection error or a 5xx (0 turns them off); job-level retries come after these.
    pub call_retries: u32,
    /// `CLOUDINARY_CALL_RETRY_MS`: the pause before the first quick retry, doubled for each
    /// further one.
    pub call_retry_delay: Duration,
}

/// How mail reaches the SMTP server: `SMTP_TLS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpTls {
    /// `starttls`: plain connection upgraded with STARTTLS, which is required.
    StartTls,
    /// `tls`: TLS from the first byte (SMTPS, usually port 465).
    Tls,
    /// `none`: no encryption; for a relay on the same host or a test server only.
    None,
}

/// An SMTP server for confirmation mail.
#[derive(Debug, Clone)]
pub struct SmtpSettings {
    /// `SMTP_SERVER`: host name (also the name its certificate must carry).
    pub server: String,
    /// `SMTP_PORT`: defaults to 587 for `starttls`, 465 for `tls`, 25 for `none`.
    pub port: u16,
    /// `SMTP_USERNAME` and `SMTP_PASSWORD`, when the server wants a login.
    pub credentials: Option<(String, Secret)>,
    /// `SMTP_TLS`.
    pub tls: SmtpTls,
    /// `SMTP_CONNECT_TIMEOUT_MS`: connecting (lettre's timeout).
    pub connect_timeout: Duration,
    /// `SMTP_SEND_TIMEOUT_MS`: the whole exchange of one message, from taking a connection to
    /// the server's answer to the data (lettre's async client has no per-command timeout).
    pub send_timeout: Duration,
}

/// Intervals of the maintenance services; each pass runs once per interval across all workers.
#[derive(Debug, Clone)]
pub struct MaintenanceSettings {
    /// How often expired leases are looked for.
    pub rescue_interval: Duration,
    /// How often due scheduled and retryable jobs are made available (at most; sooner when the
    /// next one is due sooner).
    pub schedule_interval: Duration,
    /// How often finished jobs are pruned.
    pub prune_interval: Duration,
    /// How often the changes of job counts are folded into their totals.
    pub count_interval: Duration,
    /// Finished jobs older than this are deleted.
    pub retention: Duration,
    /// Workers silent for this long are removed from the workers table.
    pub worker_ttl: Duration,
    /// `IDEMPOTENCY_TTL` (the API's setting): idempotency records older than this are deleted.
    pub idempotency_ttl: Duration,
    /// `LOGO_RETENTION_HOURS` (default 168): logo bytes no upload will read are deleted this
    /// long after the registration and the last upload's end.
    pub logo_retention: Duration,
}

/// A job enqueued on a cron schedule.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct PeriodicJob {
    /// The schedule's name, unique; part of each tick's unique key.
    pub name: String,
    /// A cron expression: 5 fields, or 6 with seconds first.
    pub cron: String,
    /// The job kind.
    pub kind: String,
    /// Its args.
    #[serde(default)]
    pub args: serde_json::Value,
}

/// Default `WORKER_CONCURRENCY`: job slots per queue.
pub const DEFAULT_CONCURRENCY: u64 = 16;
/// Default `WORKER_FETCH_BATCH`.
pub const DEFAULT_FETCH_BATCH: u64 = 1000;
/// Default `WORKER_LEASE_MS`: 30 s, renewed every 10 s, so a killed worker's jobs run again
/// within about half a minute, while a renewal can miss twice before the lease is lost.
pub const DEFAULT_LEASE_MS: u64 = 30_000;
/// Default `WORKER_POLL_INTERVAL_MS`.
pub const DEFAULT_POLL_INTERVAL_MS: u64 = 1_000;
/// Default `WORKER_SHUTDOWN_TIMEOUT_MS`.
pub const DEFAULT_SHUTDOWN_TIMEOUT_MS: u64 = 30_000;
/// Default `WORKER_RESCUE_INTERVAL_MS`.
pub const DEFAULT_RESCUE_INTERVAL_MS: u64 = 5_000;
/// Default `WORKER_SCHEDULE_INTERVAL_MS`: scheduled jobs start at most this late.
pub const DEFAULT_SCHEDULE_INTERVAL_MS: u64 = 1_000;
/// Largest `JOB_RETENTION_HOURS`: longer would overflow the seconds and PostgreSQL's
/// intervals.
pub const MAX_RETENTION_HOURS: u64 = 876_000;
/// Default `WORKER_COUNT_INTERVAL_MS`.
pub const DEFAULT_COUNT_INTERVAL_MS: u64 = 1_000;
/// Default `WORKER_PRUNE_INTERVAL_MS`.
pub const DEFAULT_PRUNE_INTERVAL_MS: u64 = 60_000;
/// Default `JOB_RETENTION_HOURS`: a week of history for operators.
pub const DEFAULT_RETENTION_HOURS: u64 = 168;
/// Default `WORKER_TTL_MS`.
pub const DEFAULT_WORKER_TTL_MS: u64 = 120_000;
/// Default `UPLOADS_DIR` (the API's default too).
pub const DEFAULT_UPLOADS_DIR: &str = "./.data/uploads";
/// Default `MAIL_OUTBOX_DIR`.
pub const DEFAULT_OUTBOX_DIR: &str = "./.data/outbox";
/// Default `SMTP_FROM_EMAIL`.
pub const DEFAULT_FROM: &str = "Quayside <noreply@localhost>";
/// Default `PUBLIC_BASE_URL`: the API on its default port (8080).
pub const DEFAULT_PUBLIC_BASE_URL: &str = "http://localhost:8080";
/// Default `CLOUDINARY_API_BASE`.
pub const DEFAULT_CLOUDINARY_API_BASE: &str = "https://api.cloudinary.com";
/// Default `CLOUDINARY_CONNECT_TIMEOUT_MS`: a healthy API answers the handshake in well under
/// a second; 5 s leaves room for a slow DNS resolver.
pub const DEFAULT_CLOUDINARY_CONNECT_TIMEOUT_MS: u64 = 5_000;
/// Default `CLOUDINARY_REQUEST_TIMEOUT_MS`: a 5 MB logo at 1 Mbit/s takes about 40 s; 60 s
/// stays inside the kind's 2 min attempt timeout with room for a quick retry.
pub const DEFAULT_CLOUDINARY_REQUEST_TIMEOUT_MS: u64 = 60_000;
/// Default `CLOUDINARY_CALL_RETRIES`: two quick retries ride out a dropped connection or a
/// single 502 without waiting for the job's backoff.
pub const DEFAULT_CLOUDINARY_CALL_RETRIES: u32 = 2;
/// Default `CLOUDINARY_CALL_RETRY_MS`.
pub const DEFAULT_CLOUDINARY_CALL_RETRY_MS: u64 = 250;
/// Default `SMTP_CONNECT_TIMEOUT_MS`.
pub const DEFAULT_SMTP_CONNECT_TIMEOUT_MS: u64 = 10_000;
/// Default `SMTP_SEND_TIMEOUT_MS`: inside the kind's 60 s attempt timeout, so a stuck server
/// is reported as such rather than as a job timeout.
pub const DEFAULT_SMTP_SEND_TIMEOUT_MS: u64 = 30_000;

impl WorkerSettings {
    /// Read and validate. `queues` and `concurrency` are the command-line flags, which win over
    /// `WORKER_QUEUES` and `WORKER_CONCURRENCY`.
    pub fn from_source(
        src: &(impl Source + ?Sized),
        queues: Option<String>,
        concurrency: Option<String>,
    ) -> Result<Self, ConfigError> {
        let concurrency = match concurrency {
            Some(c) => c
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| {
                    ConfigError::new(
                        "WORKER_CONCURRENCY",
                        format!("--concurrency {c:?} is not a positive integer"),
                    )
                })?,
            None => positive(src, "WORKER_CONCURRENCY", DEFAULT_CONCURRENCY)?,
        } as usize;
        let queues = parse_queues(
            &queues
                .or_else(|| src.get("WORKER_QUEUES"))
                .unwrap_or_else(|| "default".into()),
            concurrency,
        )?;
        let lease = millis(src, "WORKER_LEASE_MS", DEFAULT_LEASE_MS)?;
        if lease < Duration::from_millis(300) {
            return Err(ConfigError::new("WORKER_LEASE_MS", "must be at least 300"));
        }
        let configured = match src.get("PERIODIC_JOBS") {
            None => Vec::new(),
            Some(raw) => serde_json::from_str(&raw).map_err(|e| {
                ConfigError::new(
                    "PERIODIC_JOBS",
                    format!("expected [{{\"name\", \"cron\", \"kind\", \"args\"}}]: {e}"),
                )
            })?,
        };
        let periodic = schedules(domain::jobs::SCHEDULES, configured)?;
        Ok(Self {
            database: DatabaseSettings::from_source(src)?,
            queues,
            fetch_batch: positive(src, "WORKER_FETCH_BATCH", DEFAULT_FETCH_BATCH)? as usize,
            lease,
            poll_interval: millis(src, "WORKER_POLL_INTERVAL_MS", DEFAULT_POLL_INTERVAL_MS)?,
            listen: boolean(src, "WORKER_LISTEN", true)?,
            synchronous_commit: boolean(src, "WORKER_SYNCHRONOUS_COMMIT", false)?,
            shutdown_timeout: millis(
                src,
                "WORKER_SHUTDOWN_TIMEOUT_MS",
                DEFAULT_SHUTDOWN_TIMEOUT_MS,
            )?,
            metrics_port: match src.get("METRICS_PORT") {
                None => None,
                Some(_) => Some(parse_or(src, "METRICS_PORT", 0u16)?),
            },
            maintenance: MaintenanceSettings {
                rescue_interval: millis(
                    src,
                    "WORKER_RESCUE_INTERVAL_MS",
                    DEFAULT_RESCUE_INTERVAL_MS,
                )?,
                schedule_interval: millis(
                    src,
                    "WORKER_SCHEDULE_INTERVAL_MS",
                    DEFAULT_SCHEDULE_INTERVAL_MS,
                )?,
                prune_interval: millis(src, "WORKER_PRUNE_INTERVAL_MS", DEFAULT_PRUNE_INTERVAL_MS)?,
                count_interval: millis(src, "WORKER_COUNT_INTERVAL_MS", DEFAULT_COUNT_INTERVAL_MS)?,
                retention: match src.get("JOB_RETENTION_SECS") {
                    Some(_) => Duration::from_secs(positive(src, "JOB_RETENTION_SECS", 1)?),
                    None => {
                        let hours = positive(src, "JOB_RETENTION_HOURS", DEFAULT_RETENTION_HOURS)?;
                        if hours > MAX_RETENTION_HOURS {
                            return Err(ConfigError::new(
                                "JOB_RETENTION_HOURS",
                                format!("must be at most {MAX_RETENTION_HOURS} (100 years)"),
                            ));
                        }
                        Duration::from_secs(3600 * hours)
                    }
                },
                worker_ttl: millis(src, "WORKER_TTL_MS", DEFAULT_WORKER_TTL_MS)?,
                idempotency_ttl: Duration::from_secs(positive(
                    src,
                    "IDEMPOTENCY_TTL",
                    domain::registrations::DEFAULT_IDEMPOTENCY_TTL_S,
                )?),
                logo_retention: Duration::from_secs(3600u64.saturating_mul(positive(
                    src,
                    "LOGO_RETENTION_HOURS",
                    crate::maintenance::logos::DEFAULT_LOGO_RETENTION_HOURS,
                )?)),
            },
            periodic,
            kind_timeouts: match src.get("KIND_TIMEOUTS_MS") {
                None => HashMap::new(),
                Some(raw) => parse_kind_timeouts(&raw)?,
            },
            kind_retries: match src.get("KIND_RETRY") {
                None => HashMap::new(),
                Some(raw) => parse_kind_retries(&raw)?,
            },
            services: services(src)?,
            delivery: DeliverySettings::from_source(src)?,
        })
    }

    /// Job slots over all queues.
    pub fn total_concurrency(&self) -> usize {
        self.queues.iter().map(|(_, n)| n).sum()
    }
}

impl DeliverySettings {
    /// Read and validate.
    pub fn from_source(src: &(impl Source + ?Sized)) -> Result<Self, ConfigError> {
        let dir = |name: &'static str, default: &str| -> Result<PathBuf, ConfigError> {
            let raw = src.get(name).unwrap_or_else(|| default.to_owned());
            if raw.trim().is_empty() {
                return Err(ConfigError::new(name, "must name a directory"));
            }
            Ok(PathBuf::from(raw))
        };
        let from_raw = src
            .get("SMTP_FROM_EMAIL")
            .unwrap_or_else(|| DEFAULT_FROM.to_owned());
        let from = from_raw.parse::<Mailbox>().map_err(|e| {
            ConfigError::new(
                "SMTP_FROM_EMAIL",
                format!("{from_raw:?} is not an address such as Name <a@example.com>: {e}"),
            )
        })?;
        let public_base_url = src
            .get("PUBLIC_BASE_URL")
            .unwrap_or_else(|| DEFAULT_PUBLIC_BASE_URL.to_owned());
        if !(public_base_url.starts_with("http://") || public_base_url.starts_with("https://")) {
            return Err(ConfigError::new(
                "PUBLIC_BASE_URL",
                format!("{public_base_url:?} is not an http(s) URL"),
            ));
        }
        let reply_to = match src.get("SMTP_REPLY_TO") {
            None => None,
            Some(raw) => Some(raw.parse::<Mailbox>().map_err(|e| {
                ConfigError::new("SMTP_REPLY_TO", format!("{raw:?} is not an address: {e}"))
            })?),
        };
        Ok(Self {
            uploads_dir: dir("UPLOADS_DIR", DEFAULT_UPLOADS_DIR)?,
            outbox_dir: dir("MAIL_OUTBOX_DIR", DEFAULT_OUTBOX_DIR)?,
            from,
            reply_to,
            public_base_url: public_base_url.trim_end_matches('/').to_owned(),
            cloudinary: CloudinarySettings::from_source(src)?,
            smtp: SmtpSettings::from_source(src)?,
            keep_logo_bytes: boolean(src, "LOGO_KEEP_AFTER_UPLOAD", false)?,
        })
    }
}

impl CloudinarySettings {
    /// Read and validate; `None` when Cloudinary is not configured at all.
    pub fn from_source(src: &(impl Source + ?Sized)) -> Result<Option<Self>, ConfigError> {
        let (cloud_name, api_key, api_secret) = match src.get("CLOUDINARY_URL") {
            Some(url) => parse_cloudinary_url(url.trim())?,
            None => {
                const NAMES: [&str; 3] = [
                    "CLOUDINARY_CLOUD_NAME",
                    "CLOUDINARY_API_KEY",
                    "CLOUDINARY_API_SECRET",
                ];
                let [cloud, key, secret] = NAMES.map(|n| src.get(n));
                match (cloud, key, secret) {
                    (None, None, None) => return Ok(None),
                    (Some(c), Some(k), Some(s)) => (
                        c.trim().to_owned(),
                        k.trim().to_owned(),
                        Secret::new(s.trim()),
                    ),
                    (c, k, _) => {
                        let missing = if c.is_none() {
                            NAMES[0]
                        } else if k.is_none() {
                            NAMES[1]
                        } else {
                            NAMES[2]
                        };
                        return Err(ConfigError::new(
                            missing,
                            "must be set with the other CLOUDINARY_* credentials",
                        ));
                    }
                }
            }
        };
        let api_base = src
            .get("CLOUDINARY_API_BASE")
            .unwrap_or_else(|| DEFAULT_CLOUDINARY_API_BASE.to_owned());
        if !(api_base.starts_with("http://") || api_base.starts_with("https://")) {
            return Err(ConfigError::new(
                "CLOUDINARY_API_BASE",
                format!("{api_base:?} is not an http(s) URL"),
            ));
        }
        let folder = src
            .get("CLOUDINARY_FOLDER")
            .map(|f| f.trim().trim_matches('/').to_owned())
            .filter(|f| !f.is_empty());
        Ok(Some(CloudinarySettings {
            cloud_name,
            api_key,
            api_secret,
            api_base: api_base.trim_end_matches('/').to_owned(),
            folder,
            connect_timeout: millis(
                src,
                "CLOUDINARY_CONNECT_TIMEOUT_MS",
                DEFAULT_CLOUDINARY_CONNECT_TIMEOUT_MS,
            )?,
            request_timeout: millis(
                src,
                "CLOUDINARY_REQUEST_TIMEOUT_MS",
                DEFAULT_CLOUDINARY_REQUEST_TIMEOUT_MS,
            )?,
            call_retries: parse_or(
                src,
                "CLOUDINARY_CALL_RETRIES",
                DEFAULT_CLOUDINARY_CALL_RETRIES,
            )?,
            call_retry_delay: millis(
                src,
                "CLOUDINARY_CALL_RETRY_MS",
                DEFAULT_CLOUDINARY_CALL_RETRY_MS,
            )?,
        }))
    }
}

/// `cloudinary://key:secret@cloud` into its parts; errors never quote the value (it holds the
/// secret).
fn parse_cloudinary_url(url: &str) -> Result<(String, String, Secret), ConfigError> {
    let bad = || {
        ConfigError::new(
            "CLOUDINARY_URL",
            "is not of the form cloudinary://api_key:api_secret@cloud_name",
        )
    };
    let rest = url.strip_prefix("cloudinary://").ok_or_else(bad)?;
    let (credentials, cloud) = rest.rsplit_once('@').ok_or_else(bad)?;
    let (key, secret) = credentials.split_once(':').ok_or_else(bad)?;
    let cloud = cloud.trim_end_matches('/');
    if key.is_empty() || secret.is_empty() || cloud.is_empty() || cloud.contains('/') {
        return Err(bad());
    }
    Ok((cloud.to_owned(), key.to_owned(), Secret::new(secret)))
}

impl SmtpSettings {
    /// Read and validate; `None` when `SMTP_SERVER` is unset.
    pub fn from_source(src: &(impl Source + ?Sized)) -> Result<Option<Self>, ConfigError> {
        let Some(server) = src.get("SMTP_SERVER").map(|s| s.trim().to_owned()) else {
            return Ok(None);
        };
        let tls = match src
            .get("SMTP_TLS")
            .map(|t| t.trim().to_ascii_lowercase())
            .as_deref()
        {
            None | Some("starttls") => SmtpTls::StartTls,
            Some("tls") => SmtpTls::Tls,
            Some("none") => SmtpTls::None,
            Some(other) => {
                return Err(ConfigError::new(
                    "SMTP_TLS",
                    format!("{other:?} is not one of starttls, tls, none"),
                ));
            }
        };
        let default_port = match tls {
            SmtpTls::StartTls => 587,
            SmtpTls::Tls => 465,
            SmtpTls::None => 25,
        };
        let port: u16 = parse_or(src, "SMTP_PORT", default_port)?;
        if port == 0 {
            return Err(ConfigError::new("SMTP_PORT", "must be greater than 0"));
        }
        let credentials = match (src.get("SMTP_USERNAME"), src.get("SMTP_PASSWORD")) {
            (None, None) => None,
            (Some(user), Some(password)) => Some((user.trim().to_owned(), Secret::new(password))),
            (None, Some(_)) => {
                return Err(ConfigError::new(
                    "SMTP_USERNAME",
                    "must be set when SMTP_PASSWORD is",
                ));
            }
            (Some(_), None) => {
                return Err(ConfigError::new(
                    "SMTP_PASSWORD",
                    "must be set when SMTP_USERNAME is",
                ));
            }
        };
        Ok(Some(SmtpSettings {
            server,
            port,
            credentials,
            tls,
            connect_timeout: millis(
                src,
                "SMTP_CONNECT_TIMEOUT_MS",
                DEFAULT_SMTP_CONNECT_TIMEOUT_MS,
            )?,
            send_timeout: millis(src, "SMTP_SEND_TIMEOUT_MS", DEFAULT_SMTP_SEND_TIMEOUT_MS)?,
        }))
    }
}

/// The schedules a worker runs: those registered in code, each replaced by a configured one
/// of the same name, then the other configured ones. Each must parse and name a known kind.
fn schedules(
    in_code: &[engine::jobs::ScheduleSpec],
    configured: Vec<PeriodicJob>,
) -> Result<Vec<PeriodicJob>, ConfigError> {
    let mut all = Vec::with_capacity(in_code.len() + configured.len());
    for s in in_code {
        if configured.iter().all(|c| c.name != s.name) {
            let args = serde_json::from_str(s.args).map_err(|e| {
                ConfigError::new(
                    "PERIODIC_JOBS",
                    format!("built-in schedule {:?}: {e}", s.name),
                )
            })?;
            all.push(PeriodicJob {
                name: s.name.into(),
                cron: s.cron.into(),
                kind: s.kind.into(),
                args,
            });
        }
    }
    all.extend(configured);
    for (i, j) in all.iter().enumerate() {
        let bad =
            |e: String| ConfigError::new("PERIODIC_JOBS", format!("schedule {:?}: {e}", j.name));
        if all[..i].iter().any(|o| o.name == j.name) {
            return Err(bad("named twice".into()));
        }
        crate::maintenance::periodic::parse_cron(&j.cron).map_err(|e| bad(e.to_string()))?;
        domain::jobs::kind(&j.kind).map_err(|e| bad(e.to_string()))?;
    }
    Ok(all)
}

/// The names of one breaker policy's settings.
struct PolicyNames {
    threshold: &'static str,
    rate: &'static str,
    min_calls: &'static str,
    window: &'static str,
    cool_down: &'static str,
    probes: &'static str,
}

macro_rules! policy_names {
    ($prefix:literal) => {
        PolicyNames {
            threshold: concat!($prefix, "FAILURE_THRESHOLD"),
            rate: concat!($prefix, "FAILURE_RATE"),
            min_calls: concat!($prefix, "MIN_CALLS"),
            window: concat!($prefix, "WINDOW_MS"),
            cool_down: concat!($prefix, "COOL_DOWN_MS"),
            probes: concat!($prefix, "HALF_OPEN_PROBES"),
        }
    };
}

/// The services with settings of their own: name, breaker settings, rate-limit setting.
const NAMED_SERVICES: [(&str, PolicyNames, &str); 2] = [
    (
        "cloudinary",
        policy_names!("CLOUDINARY_BREAKER_"),
        "CLOUDINARY_RATE_LIMIT",
    ),
    ("smtp", policy_names!("SMTP_BREAKER_"), "SMTP_RATE_LIMIT"),
];

/// The breaker policy read from `names`, each unset one taken from `base`.
fn policy(
    src: &(impl Source + ?Sized),
    names: &PolicyNames,
    base: &Policy,
) -> Result<Policy, ConfigError> {
    let ms = |name, d: Duration| millis(src, name, d.as_millis() as u64);
    let failure_rate: f64 = parse_or(src, names.rate, base.failure_rate)?;
    if !(0.0..=1.0).contains(&failure_rate) {
        return Err(ConfigError::new(names.rate, "must be between 0 and 1"));
    }
    Ok(Policy {
        failure_threshold: parse_or(src, names.threshold, base.failure_threshold)?,
        failure_rate,
        min_calls: positive(src, names.min_calls, u64::from(base.min_calls))?
            .try_into()
            .map_err(|_| ConfigError::new(names.min_calls, "too large"))?,
        window: ms(names.window, base.window)?,
        recovery_timeout: ms(names.cool_down, base.recovery_timeout)?,
        half_open_max_calls: positive(src, names.probes, u64::from(base.half_open_max_calls))?
            .try_into()
            .map_err(|_| ConfigError::new(names.probes, "too large"))?,
    })
}

/// Breakers and rate limits: `BREAKER_*` for every service, `CLOUDINARY_BREAKER_*` and
/// `SMTP_BREAKER_*` over them, `CLOUDINARY_RATE_LIMIT`, `SMTP_RATE_LIMIT`, and `RATE_LIMITS`
/// (`service=calls/period,...`) for any service.
fn services(src: &(impl Source + ?Sized)) -> Result<ServicesSettings, ConfigError> {
    let default = policy(src, &policy_names!("BREAKER_"), &Policy::default())?;
    let mut services = HashMap::new();
    let limit =
        |name: &'static str, raw: &str| raw.parse::<Limit>().map_err(|e| ConfigError::new(name, e));
    if let Some(raw) = src.get("RATE_LIMITS") {
        for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (service, l) = part.split_once('=').ok_or_else(|| {
                ConfigError::new(
                    "RATE_LIMITS",
                    format!("{part:?} is not service=calls/period"),
                )
            })?;
            let service = service.trim();
            engine::names::ServiceName::parse(service)
                .map_err(|e| ConfigError::new("RATE_LIMITS", e.to_string()))?;
            let rate_limit = Some(limit("RATE_LIMITS", l)?);
            let old = services.insert(
                service.to_owned(),
                ServiceSettings {
                    breaker: default,
                    rate_limit,
                },
            );
            if old.is_some() {
                return Err(ConfigError::new(
                    "RATE_LIMITS",
                    format!("{service:?} is listed twice"),
                ));
            }
        }
    }
    for (service, names, limit_name) in &NAMED_SERVICES {
        let breaker = policy(src, names, &default)?;
        let rate_limit = match src.get(limit_name) {
            Some(raw) => Some(limit(limit_name, &raw)?),
            None => services.get(*service).and_then(|s| s.rate_limit),
        };
        services.insert(
            service.to_string(),
            ServiceSettings {
                breaker,
                rate_limit,
            },
        );
    }
    Ok(ServicesSettings {
        default,
        services,
        cache_ttl: millis(src, "BREAKER_CACHE_TTL_MS", 1000)?,
    })
}

/// `noop=300,email=5000`: each a registered kind and its attempt timeout in milliseconds.
fn parse_kind_timeouts(raw: &str) -> Result<HashMap<String, Duration>, ConfigError> {
    let bad = |message: String| ConfigError::new("KIND_TIMEOUTS_MS", message);
    let mut out = HashMap::new();
    for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (kind, ms) = part
            .split_once('=')
            .ok_or_else(|| bad(format!("{part:?} is not kind=milliseconds")))?;
        let kind = domain::jobs::kind(kind.trim())
            .map_err(|e| bad(format!("{part:?}: {e}")))?
            .name;
        let ms = ms
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|&ms| ms > 0)
            .ok_or_else(|| bad(format!("{part:?}: milliseconds must be a positive integer")))?;
        if out
            .insert(kind.to_owned(), Duration::from_millis(ms))
            .is_some()
        {
            return Err(bad(format!("{kind:?} is listed twice")));
        }
    }
    Ok(out)
}

/// `upload_logo=500:2:60000,noop=50:1.5:1000:0`: per kind, the first retry's delay in
/// milliseconds, the multiplier, the cap in milliseconds and optionally the jitter (a
/// fraction in `[0, 1)`; the kind's own when left out).
fn parse_kind_retries(raw: &str) -> Result<HashMap<String, RetryPolicy>, ConfigError> {
    const SHAPE: &str = "kind=initial_ms:multiplier:max_ms[:jitter]";
    let bad = |message: String| ConfigError::new("KIND_RETRY", message);
    let mut out = HashMap::new();
    for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (kind, policy) = part
            .split_once('=')
            .ok_or_else(|| bad(format!("{part:?} is not {SHAPE}")))?;
        let spec = domain::jobs::kind(kind.trim()).map_err(|e| bad(format!("{part:?}: {e}")))?;
        let fields: Vec<&str> = policy.split(':').map(str::trim).collect();
        if !(3..=4).contains(&fields.len()) {
            return Err(bad(format!("{part:?} is not {SHAPE}")));
        }
        let ms = |raw: &str, what: &str| {
            raw.parse::<u64>()
                .ok()
                .filter(|&ms| ms > 0)
                .map(Duration::from_millis)
                .ok_or_else(|| bad(format!("{part:?}: {what} must be a positive integer")))
        };
        let initial = ms(fields[0], "initial_ms")?;
        let multiplier = fields[1]
            .parse::<f64>()
            .ok()
            .filter(|m| m.is_finite() && *m >= 1.0)
            .ok_or_else(|| bad(format!("{part:?}: multiplier must be a number >= 1")))?;
        let max = ms(fields[2], "max_ms")?;
        if max < initial {
            return Err(bad(format!("{part:?}: max_ms must be >= initial_ms")));
        }
        let jitter = match fields.get(3) {
            None => spec.retry.jitter,
            Some(raw) => raw
                .parse::<f64>()
                .ok()
                .filter(|j| (0.0..1.0).contains(j))
                .ok_or_else(|| bad(format!("{part:?}: jitter must be a number in [0, 1)")))?,
        };
        let policy = RetryPolicy {
            initial,
            multiplier,
            max,
            jitter,
        };
        if out.insert(spec.name.to_owned(), policy).is_some() {
            return Err(bad(format!("{:?} is listed twice", spec.name)));
        }
    }
    Ok(out)
}

/// `email,uploads:4`: queue names, each optionally with its own slot count.
fn parse_queues(raw: &str, default_slots: usize) -> Result<Vec<(String, usize)>, ConfigError> {
    let mut out: Vec<(String, usize)> = Vec::new();
    for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, slots) = match part.split_once(':') {
            Some((n, s)) => (
                n.trim(),
                s.trim()
                    .parse::<usize>()
                    .ok()
                    .filter(|&s| s > 0)
                    .ok_or_else(|| {
                        ConfigError::new(
                            "WORKER_QUEUES",
                            format!("{part:?}: slots must be a positive integer"),
                        )
                    })?,
            ),
            None => (part, default_slots),
        };
        engine::names::QueueName::parse(name)
            .map_err(|e| ConfigError::new("WORKER_QUEUES", e.to_string()))?;
        if out.iter().any(|(n, _)| n == name) {
            return Err(ConfigError::new(
                "WORKER_QUEUES",
                format!("{name:?} is listed twice"),
            ));
        }
        out.push((name.to_owned(), slots));
    }
    if out.is_empty() {
        return Err(ConfigError::new("WORKER_QUEUES", "names no queue"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(
        env: &[(&str, &str)],
        queues: Option<&str>,
        conc: Option<&str>,
    ) -> Result<WorkerSettings, ConfigError> {
        let mut all = vec![("DATABASE_URL", "postgres://u@localhost/db")];
        all.extend_from_slice(env);
        WorkerSettings::from_source(&all[..], queues.map(Into::into), conc.map(Into::into))
    }

    #[test]
    fn flags_win_over_env_and_queues_take_slot_counts() {
        let s = settings(
            &[("WORKER_QUEUES", "x"), ("WORKER_CONCURRENCY", "2")],
            Some("email, uploads:4"),
            Some("8"),
        )
        .unwrap();
        assert_eq!(
            s.queues,
            vec![("email".to_string(), 8), ("uploads".to_string(), 4)]
        );
        assert_eq!(s.total_concurrency(), 12);
        let s = settings(
            &[("WORKER_QUEUES", "x"), ("WORKER_CONCURRENCY", "2")],
            None,
            None,
        )
        .unwrap();
        assert_eq!(s.queues, vec![("x".to_string(), 2)]);
    }

    #[test]
    fn delivery_defaults_to_local_files_and_takes_overrides() {
        let s = settings(&[], None, None).unwrap().delivery;
        assert_eq!(s.uploads_dir, PathBuf::from(DEFAULT_UPLOADS_DIR));
        assert_eq!(s.outbox_dir, PathBuf::from(DEFAULT_OUTBOX_DIR));
        assert_eq!(s.from.email.to_string(), "noreply@localhost");
        assert!(!s.keep_logo_bytes, "bytes go with the upload by default");
        let s = settings(
            &[
                ("SMTP_FROM_EMAIL", "Cup <cup@example.org>"),
                ("PUBLIC_BASE_URL", "https://cup.example.org/"),
                ("LOGO_KEEP_AFTER_UPLOAD", "true"),
            ],
            None,
            None,
        )
        .unwrap()
        .delivery;
        assert_eq!(s.from.name.as_deref(), Some("Cup"));
        assert_eq!(s.public_base_url, "https://cup.example.org");
        assert!(s.keep_logo_bytes);
    }

    #[test]
    fn each_bad_setting_is_named() {
        for (env, queues, conc, name) in [
            (vec![], Some("a,a"), None, "WORKER_QUEUES"),
            (vec![], Some("a b"), None, "WORKER_QUEUES"),
            (vec![], Some("a:0"), None, "WORKER_QUEUES"),
            (vec![], None, Some("many"), "WORKER_CONCURRENCY"),
            (
                vec![("WORKER_CONCURRENCY", "0")],
                None,
                None,
                "WORKER_CONCURRENCY",
            ),
            (
                vec![("WORKER_LEASE_MS", "10")],
                None,
                None,
                "WORKER_LEASE_MS",
            ),
            (vec![("METRICS_PORT", "99999")], None, None, "METRICS_PORT"),
            (
                vec![("JOB_RETENTION_HOURS", "18446744073709551615")],
                None,
                None,
                "JOB_RETENTION_HOURS",
            ),
            (
                vec![("SMTP_FROM_EMAIL", "not an address")],
                None,
                None,
                "SMTP_FROM_EMAIL",
            ),
            (
                vec![("PUBLIC_BASE_URL", "example.com")],
                None,
                None,
                "PUBLIC_BASE_URL",
            ),
            (vec![("UPLOADS_DIR", " ")], None, None, "UPLOADS_DIR"),
            (
                vec![("WORKER_LISTEN", "maybe")],
                None,
                None,
                "WORKER_LISTEN",
            ),
            (
                vec![(
                    "PERIODIC_JOBS",
                    r#"[{"name":"t","cron":"nope","kind":"noop"}]"#,
                )],
                None,
                None,
                "PERIODIC_JOBS",
            ),
            (
                vec![(
                    "PERIODIC_JOBS",
                    r#"[{"name":"t","cron":"* * * * *","kind":"nope"}]"#,
                )],
                None,
                None,
                "PERIODIC_JOBS",
            ),
        ] {
            let err = settings(&env, queues, conc).unwrap_err();
            assert_eq!(err.name, name, "{err}");
        }
    }

    #[test]
    fn schedules_registered_in_code_are_run_unless_config_replaces_them() {
        use engine::jobs::ScheduleSpec;
        let in_code = [
            ScheduleSpec {
                name: "nightly",
                cron: "0 3 * * *",
                kind: "noop",
                args: r#"{"sleep_ms": 1}"#,
            },
            ScheduleSpec {
                name: "hourly",
                cron: "0 * * * *",
                kind: "noop",
                args: "{}",
            },
        ];
        let configured: Vec<PeriodicJob> = serde_json::from_str(
            r#"[{"name":"hourly","cron":"30 * * * *","kind":"noop"},
                {"name":"extra","cron":"*/5 * * * *","kind":"noop","args":{"result":1}}]"#,
        )
        .unwrap();
        let all = schedules(&in_code, configured).unwrap();
        let got: Vec<(&str, &str)> = all
            .iter()
            .map(|j| (j.name.as_str(), j.cron.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("nightly", "0 3 * * *"),
                ("hourly", "30 * * * *"),
                ("extra", "*/5 * * * *")
            ]
        );
        assert_eq!(all[0].args, serde_json::json!({"sleep_ms": 1}));

        // A bad built-in schedule stops the worker like a bad configured one.
        let bad = [ScheduleSpec {
            cron: "never",
            ..in_code[0]
        }];
        assert_eq!(schedules(&bad, vec![]).unwrap_err().name, "PERIODIC_JOBS");
        let twice: Vec<PeriodicJob> = serde_json::from_str(
            r#"[{"name":"a","cron":"* * * * *","kind":"noop"},
                {"name":"a","cron":"* * * * *","kind":"noop"}]"#,
        )
        .unwrap();
        assert!(schedules(&[], twice).unwrap_err().message.contains("twice"));
        // And the schedules registered today are all valid.
        schedules(domain::jobs::SCHEDULES, vec![]).unwrap();
    }

    #[test]
    fn breakers_and_rate_limits_are_read_per_service_over_the_defaults() {
        let s = settings(
            &[
                ("BREAKER_FAILURE_THRESHOLD", "7"),
                ("BREAKER_COOL_DOWN_MS", "5000"),
                ("SMTP_BREAKER_FAILURE_THRESHOLD", "2"),
                ("SMTP_BREAKER_HALF_OPEN_PROBES", "3"),
                ("CLOUDINARY_RATE_LIMIT", "500/60s"),
                ("RATE_LIMITS", "flaky=10/5s, smtp=1/1s"),
                ("BREAKER_CACHE_TTL_MS", "250"),
            ],
            None,
            None,
        )
        .unwrap()
        .services;
        assert_eq!(s.cache_ttl, Duration::from_millis(250));
        assert_eq!(s.default.failure_threshold, 7);
        let smtp = s.of("smtp");
        assert_eq!(
            (
                smtp.breaker.failure_threshold,
                smtp.breaker.half_open_max_calls,
                smtp.breaker.recovery_timeout
            ),
            (2, 3, Duration::from_secs(5))
        );
        assert_eq!(smtp.rate_limit, Some("1/1s".parse().unwrap()));
        let cl = s.of("cloudinary");
        assert_eq!(cl.breaker.failure_threshold, 7);
        assert_eq!(cl.rate_limit, Some("500/60s".parse().unwrap()));
        let flaky = s.of("flaky");
        assert_eq!(flaky.rate_limit, Some("10/5s".parse().unwrap()));
        assert_eq!(flaky.breaker.failure_threshold, 7);
        assert_eq!(s.of("other").rate_limit, None);
        let none = settings(&[], None, None).unwrap().services;
        assert_eq!(none.of("smtp").breaker, engine::breaker::Policy::default());
        assert_eq!(none.of("cloudinary").rate_limit, None);

        for (name, value) in [
            ("BREAKER_FAILURE_RATE", "1.5"),
            ("BREAKER_COOL_DOWN_MS", "0"),
            ("SMTP_BREAKER_HALF_OPEN_PROBES", "0"),
            ("CLOUDINARY_BREAKER_FAILURE_THRESHOLD", "-1"),
            ("CLOUDINARY_RATE_LIMIT", "500"),
            ("SMTP_RATE_LIMIT", "0/1s"),
            ("RATE_LIMITS", "flaky"),
            ("RATE_LIMITS", "a b=1/1s"),
            ("RATE_LIMITS", "a=1/1s,a=2/1s"),
        ] {
            let err = settings(&[(name, value)], None, None).unwrap_err();
            assert_eq!(err.name, name, "{value}: {err}");
            assert!(!err.to_string().contains('\n'));
        }
    }

    #[test]
    fn kind_timeouts_parse_and_bad_ones_are_named() {
        let s = settings(&[("KIND_TIMEOUTS_MS", " noop = 300 ,")], None, None).unwrap();
        assert_eq!(
            s.kind_timeouts,
            HashMap::from([("noop".to_string(), Duration::from_millis(300))])
        );
        assert!(settings(&[], None, None).unwrap().kind_timeouts.is_empty());
        for bad in [
            "noop",
            "noop=",
            "noop=0",
            "noop=-5",
            "noop=soon",
            "nope=300",
            "noop=300,noop=400",
        ] {
            let err = settings(&[("KIND_TIMEOUTS_MS", bad)], None, None).unwrap_err();
            assert_eq!(err.name, "KIND_TIMEOUTS_MS", "{bad}: {err}");
            let line = err.to_string();
            assert!(
                line.contains("KIND_TIMEOUTS_MS") && !line.contains('\n'),
                "{bad}: {line}"
            );
        }
    }

    #[test]
    fn kind_retries_parse_and_bad_ones_are_named() {
        let s = settings(
            &[(
                "KIND_RETRY",
                " noop = 50 : 1.5 : 1000 , upload_logo=500:2:60000:0,",
            )],
            None,
            None,
        )
        .unwrap();
        assert_eq!(
            s.kind_retries,
            HashMap::from([
                (
                    "noop".to_string(),
                    RetryPolicy {
                        initial: Duration::from_millis(50),
                        multiplier: 1.5,
                        max: Duration::from_secs(1),
                        jitter: engine::jobs::noop::SPEC.retry.jitter,
                    }
                ),
                (
                    "upload_logo".to_string(),
                    RetryPolicy {
                        initial: Duration::from_millis(500),
                        multiplier: 2.0,
                        max: Duration::from_secs(60),
                        jitter: 0.0,
                    }
                ),
            ])
        );
        assert!(settings(&[], None, None).unwrap().kind_retries.is_empty());
        for bad in [
            "noop",
            "noop=",
            "noop=50",
            "noop=50:2",
            "noop=50:2:1000:0.1:9",
            "nope=50:2:1000",
            "noop=0:2:1000",
            "noop=-5:2:1000",
            "noop=soon:2:1000",
            "noop=50:0.5:1000",
            "noop=50:NaN:1000",
            "noop=50:inf:1000",
            "noop=50:x:1000",
            "noop=50:2:0",
            "noop=500:2:100",
            "noop=50:2:1000:1",
            "noop=50:2:1000:-0.1",
            "noop=50:2:1000,noop=60:2:1000",
        ] {
            let err = settings(&[("KIND_RETRY", bad)], None, None).unwrap_err();
            assert_eq!(err.name, "KIND_RETRY", "{bad}: {err}");
            let line = err.to_string();
            assert!(
                line.contains("KIND_RETRY") && !line.contains('\n'),
                "{bad}: {line}"
            );
        }
    }

    #[test]
    fn cloudinary_is_configured_by_url_or_by_parts_and_hides_its_secret() {
        let d = |pairs: &[(&str, &str)]| DeliverySettings::from_source(pairs);
        assert!(d(&[]).unwrap().cloudinary.is_none());
        let c = d(&[("CLOUDINARY_URL", "cloudinary://123:s3cr3t-x@demo")])
            .unwrap()
            .cloudinary
            .unwrap();
        assert_eq!((c.cloud_name.as_str(), c.api_key.as_str()), ("demo", "123"));
        assert_eq!(c.api_secret.expose(), "s3cr3t-x");
        assert_eq!(c.api_base, DEFAULT_CLOUDINARY_API_BASE);
        assert_eq!(c.folder, None);
        assert_eq!(c.call_retries, DEFAULT_CLOUDINARY_CALL_RETRIES);
        assert!(!format!("{c:?}").contains("s3cr3t"), "{c:?}");
        let c = d(&[
            ("CLOUDINARY_CLOUD_NAME", "demo"),
            ("CLOUDINARY_API_KEY", "123"),
            ("CLOUDINARY_API_SECRET", "s3cr3t"),
            ("CLOUDINARY_API_BASE", "http://127.0.0.1:9/"),
            ("CLOUDINARY_FOLDER", "/logos/"),
            ("CLOUDINARY_CALL_RETRIES", "0"),
        ])
        .unwrap()
        .cloudinary
        .unwrap();
        assert_eq!(c.api_base, "http://127.0.0.1:9");
        assert_eq!(c.folder.as_deref(), Some("logos"));
        assert_eq!(c.call_retries, 0);
        for (pairs, name) in [
            (
                &[("CLOUDINARY_URL", "cloudinary://123@demo")][..],
                "CLOUDINARY_URL",
            ),
            (
                &[("CLOUDINARY_URL", "https://123:s3cr3t@demo")][..],
                "CLOUDINARY_URL",
            ),
            (
                &[
                    ("CLOUDINARY_API_KEY", "1"),
                    ("CLOUDINARY_API_SECRET", "s3cr3t"),
                ][..],
                "CLOUDINARY_CLOUD_NAME",
            ),
            (
                &[("CLOUDINARY_CLOUD_NAME", "d"), ("CLOUDINARY_API_KEY", "1")][..],
                "CLOUDINARY_API_SECRET",
            ),
            (
                &[
                    ("CLOUDINARY_URL", "cloudinary://1:s3cr3t@d"),
                    ("CLOUDINARY_API_BASE", "ftp://x"),
                ][..],
                "CLOUDINARY_API_BASE",
            ),
        ] {
            let err = d(pairs).unwrap_err();
            assert_eq!(err.name, name, "{pairs:?}: {err}");
            assert!(!err.to_string().contains("s3cr3t"), "{err}");
        }
    }

    #[test]
    fn smtp_is_configured_by_its_server_and_hides_its_password() {
        let d = |pairs: &[(&str, &str)]| DeliverySettings::from_source(pairs);
        assert!(d(&[("SMTP_PORT", "25")]).unwrap().smtp.is_none());
        let s = d(&[("SMTP_SERVER", "smtp.example.org")])
            .unwrap()
            .smtp
            .unwrap();
        assert_eq!((s.tls, s.port), (SmtpTls::StartTls, 587));
        assert!(s.credentials.is_none());
        let all = d(&[
            ("SMTP_SERVER", "127.0.0.1"),
            ("SMTP_TLS", "none"),
            ("SMTP_PORT", "2525"),
            ("SMTP_USERNAME", "quay"),
            ("SMTP_PASSWORD", "pa55word"),
            ("SMTP_REPLY_TO", "Desk <desk@example.org>"),
        ])
        .unwrap();
        assert_eq!(all.reply_to.unwrap().email.to_string(), "desk@example.org");
        let s = all.smtp.unwrap();
        assert_eq!((s.tls, s.port), (SmtpTls::None, 2525));
        assert!(!format!("{:?}", s.credentials).contains("pa55word"));
        assert_eq!(
            d(&[("SMTP_SERVER", "x"), ("SMTP_TLS", "tls")])
                .unwrap()
                .smtp
                .unwrap()
                .port,
            465
        );
        for (pairs, name) in [
            (&[("SMTP_SERVER", "x"), ("SMTP_TLS", "ssl")][..], "SMTP_TLS"),
            (&[("SMTP_SERVER", "x"), ("SMTP_PORT", "0")][..], "SMTP_PORT"),
            (
                &[("SMTP_SERVER", "x"), ("SMTP_PASSWORD", "pa55word")][..],
                "SMTP_USERNAME",
            ),
            (
                &[("SMTP_SERVER", "x"), ("SMTP_REPLY_TO", "nope")][..],
                "SMTP_REPLY_TO",
            ),
        ] {
            let err = d(pairs).unwrap_err();
            assert_eq!(err.name, name, "{pairs:?}: {err}");
            assert!(!err.to_string().contains("pa55word"), "{err}");
        }
    }
}
