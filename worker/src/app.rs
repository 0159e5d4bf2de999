//! The application on the runtime: its settings, the [`Services`] its handlers use (storage
//! and mail delivery chosen once at start-up), the table of its kinds' [`handlers`], its
//! external services with settings of their own ([`NAMED_SERVICES`]) and its maintenance
//! passes (`housekeeping`). `worker::run` hands these to the runtime.

use std::sync::Arc;

use deadpool_postgres::Pool;
use engine::config::{ConfigError, Source};

use crate::handlers::send_confirmation_email::smtp::{self, SmtpMailer};
use crate::handlers::send_confirmation_email::{Confirmation, MailSettings};
use crate::handlers::upload_logo::cloudinary::{self, Cloudinary};
use crate::handlers::upload_logo::{LocalStorage, Storage, UploadSettings};
use crate::handlers::{noop, send_confirmation_email, upload_logo};
use crate::housekeeping::HousekeepingSettings;
use crate::runtime::Registry;
use crate::runtime::breaker::NamedService;
use crate::runtime::handlers::Handlers;

/// The application's settings, validated.
#[derive(Debug, Clone)]
pub struct AppSettings {
    /// Where logos go.
    pub upload: UploadSettings,
    /// Where confirmation mail goes, and what it says about its sender.
    pub mail: MailSettings,
    /// The application's maintenance passes.
    pub housekeeping: HousekeepingSettings,
    /// The hosts the diagnostic `noop` kind may call.
    pub noop_calls: noop::CallHosts,
}

/// What handlers use besides their args: a pool, and the storage and mail delivery chosen once
/// at start-up.
#[derive(Clone)]
pub struct Services {
    /// Connections for the handlers' own statements.
    pub pool: Pool,
    /// Where logos are stored.
    pub storage: Arc<dyn Storage>,
    /// How confirmations are sent.
    pub confirmation: Arc<Confirmation>,
    /// Keep a logo's bytes after its upload succeeded (`LOGO_KEEP_AFTER_UPLOAD`).
    pub keep_logo_bytes: bool,
    /// The hosts a `noop` job may call (`NOOP_CALL_HOSTS`).
    pub noop_calls: Arc<noop::CallHosts>,
}

/// The external services with breaker and rate-limit settings of their own, each declared by
/// its integration.
pub static NAMED_SERVICES: &[NamedService] = &[cloudinary::GUARD_SETTINGS, smtp::GUARD_SETTINGS];

/// What the runtime's settings need to know of the application.
pub const REGISTRY: Registry = Registry {
    kinds: domain::jobs::KINDS,
    schedules: domain::jobs::SCHEDULES,
    services: NAMED_SERVICES,
};

impl AppSettings {
    /// Read and validate.
    pub fn from_source(src: &(impl Source + ?Sized)) -> Result<Self, ConfigError> {
        Ok(Self {
            mail: MailSettings::from_source(src)?,
            upload: UploadSettings::from_source(src)?,
            housekeeping: HousekeepingSettings::from_source(src)?,
            noop_calls: noop::CallHosts::from_source(src)?,
        })
    }
}

impl Services {
    /// The delivery `settings` ask for: Cloudinary when it is configured, else files under
    /// `uploads_dir`; an SMTP server when `SMTP_SERVER` is set, else the `.eml` outbox. The
    /// choice is made here, once.
    pub fn new(pool: Pool, settings: &AppSettings) -> anyhow::Result<Self> {
        let mut services = Self::embedded(pool, settings);
        if let Some(c) = &settings.upload.cloudinary {
            tracing::info!(cloud = %c.cloud_name, api_base = %c.api_base, "logos go to Cloudinary");
            services.storage = Arc::new(Cloudinary::new(c.clone())?);
        }
        if let Some(s) = &settings.mail.smtp {
            tracing::info!(server = %s.server, port = s.port, tls = ?s.tls, "mail goes to SMTP");
            services.confirmation = Arc::new(Confirmation {
                mailer: Arc::new(SmtpMailer::new(s)?),
                ..Confirmation::embedded(&settings.mail)
            });
        }
        Ok(services)
    }

    /// The embedded defaults: logos as local files, mail as `.eml` files in an outbox.
    pub fn embedded(pool: Pool, settings: &AppSettings) -> Self {
        Self {
            pool,
            storage: Arc::new(LocalStorage::new(&settings.upload.uploads_dir)),
            confirmation: Arc::new(Confirmation::embedded(&settings.mail)),
            keep_logo_bytes: settings.upload.keep_logo_bytes,
            noop_calls: Arc::new(settings.noop_calls.clone()),
        }
    }
}

/// Every handler of the application; one per registered kind.
pub fn handlers(services: &Services) -> anyhow::Result<Handlers> {
    let mut h = Handlers::new(domain::jobs::KINDS);
    let calls = services.noop_calls.clone();
    h.register(move |args, ctx| {
        let calls = calls.clone();
        async move { noop::run_with(args, ctx, &calls).await }
    })?;
    let (pool, storage) = (services.pool.clone(), services.storage.clone());
    let keep = services.keep_logo_bytes;
    h.register(move |args, ctx| upload_logo::run(args, ctx, pool.clone(), storage.clone(), keep))?;
    let (pool, conf) = (services.pool.clone(), services.confirmation.clone());
    h.register(move |args, ctx| {
        send_confirmation_email::run(args, ctx, pool.clone(), conf.clone())
    })?;
    h.check_complete()?;
    Ok(h)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use domain::jobs::KINDS;
    use engine::config::DatabaseSettings;

    use super::*;
    use crate::runtime::breaker::ServicesSettings;

    fn all() -> Handlers {
        let pool =
            engine::db::pool(&DatabaseSettings::for_url("postgres://localhost/unused")).unwrap();
        let no_env: &[(&str, &str)] = &[];
        let settings = AppSettings::from_source(no_env).unwrap();
        handlers(&Services::embedded(pool, &settings)).unwrap()
    }

    #[test]
    fn every_kind_has_a_handler_and_every_handler_a_kind() {
        let h = all();
        assert_eq!(h.kinds().count(), KINDS.all().len());
        for k in KINDS.all() {
            assert_eq!(h.retry_policy(k.name), Some(k.retry), "{}", k.name);
        }
    }

    #[test]
    fn the_schedules_registered_today_are_all_valid() {
        let no_env: &[(&str, &str)] = &[];
        crate::runtime::maintenance::periodic::from_source(
            no_env,
            REGISTRY.schedules,
            REGISTRY.kinds,
        )
        .unwrap();
    }

    #[test]
    fn breakers_and_rate_limits_are_read_per_service_over_the_defaults() {
        let read = |env: &[(&str, &str)]| ServicesSettings::from_source(env, NAMED_SERVICES);
        let s = read(&[
            ("BREAKER_FAILURE_THRESHOLD", "7"),
            ("BREAKER_COOL_DOWN_MS", "5000"),
            ("SMTP_BREAKER_FAILURE_THRESHOLD", "2"),
            ("SMTP_BREAKER_HALF_OPEN_PROBES", "3"),
            ("CLOUDINARY_RATE_LIMIT", "500/60s"),
            ("RATE_LIMITS", "flaky=10/5s, smtp=1/1s"),
            ("BREAKER_CACHE_TTL_MS", "250"),
        ])
        .unwrap();
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
        let none = read(&[]).unwrap();
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
            let err = read(&[(name, value)]).unwrap_err();
            assert_eq!(err.name, name, "{value}: {err}");
            assert!(!err.to_string().contains('\n'));
        }
    }
}
