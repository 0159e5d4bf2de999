//! The worker's settings: flags and environment, read once and validated into the pieces
//! that each component owns (the runtime's, the metrics port, the application's). No
//! component imports this module; each piece is handed down from `main`.

use engine::config::{ConfigError, Source};

use crate::app::{AppSettings, REGISTRY};
use crate::runtime::RuntimeSettings;
use crate::runtime::metrics;

/// Everything a worker process needs to know, validated.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// The queue runtime: database, queues, leases, maintenance, periodic jobs, per-kind
    /// overrides, breakers and rate limits.
    pub runtime: RuntimeSettings,
    /// Port of the Prometheus `/metrics` endpoint (`METRICS_PORT`); none when unset.
    pub metrics_port: Option<u16>,
    /// The application: where logos and mail go, and its maintenance passes.
    pub app: AppSettings,
}

impl WorkerSettings {
    /// Read and validate. `queues` and `concurrency` are the command-line flags, which win over
    /// `WORKER_QUEUES` and `WORKER_CONCURRENCY`.
    pub fn from_source(
        src: &(impl Source + ?Sized),
        queues: Option<String>,
        concurrency: Option<String>,
    ) -> Result<Self, ConfigError> {
        Ok(Self {
            runtime: RuntimeSettings::from_source(src, queues, concurrency, REGISTRY)?,
            metrics_port: metrics::port_from_source(src)?,
            app: AppSettings::from_source(src)?,
        })
    }
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
    fn flags_reach_the_runtime_and_defaults_need_only_the_database() {
        let s = settings(
            &[("WORKER_QUEUES", "x")],
            Some("email, uploads:4"),
            Some("8"),
        )
        .unwrap();
        assert_eq!(
            s.runtime.producer.queues,
            vec![("email".to_string(), 8), ("uploads".to_string(), 4)]
        );
        assert_eq!(s.metrics_port, None);
        assert!(s.runtime.listen && !s.runtime.synchronous_commit);
        assert!(s.runtime.periodic.is_empty());
        assert!(s.app.upload.cloudinary.is_none() && s.app.mail.smtp.is_none());
        assert!(settings(&[], None, None).is_ok());
    }

    #[test]
    fn each_bad_setting_is_named_whichever_component_owns_it() {
        for (env, queues, name) in [
            (vec![], Some("a,a"), "WORKER_QUEUES"),
            (vec![("WORKER_LISTEN", "maybe")], None, "WORKER_LISTEN"),
            (
                vec![("WORKER_SYNCHRONOUS_COMMIT", "maybe")],
                None,
                "WORKER_SYNCHRONOUS_COMMIT",
            ),
            (
                vec![("WORKER_SHUTDOWN_TIMEOUT_MS", "soon")],
                None,
                "WORKER_SHUTDOWN_TIMEOUT_MS",
            ),
            (
                vec![("WORKER_RETRY_AFTER_MAX_MS", "0")],
                None,
                "WORKER_RETRY_AFTER_MAX_MS",
            ),
            (vec![("METRICS_PORT", "99999")], None, "METRICS_PORT"),
            (
                vec![("JOB_RETENTION_HOURS", "18446744073709551615")],
                None,
                "JOB_RETENTION_HOURS",
            ),
            (
                vec![(
                    "PERIODIC_JOBS",
                    r#"[{"name":"t","cron":"* * * * *","kind":"nope"}]"#,
                )],
                None,
                "PERIODIC_JOBS",
            ),
            (
                vec![("KIND_TIMEOUTS_MS", "nope=300")],
                None,
                "KIND_TIMEOUTS_MS",
            ),
            (vec![("KIND_RETRY", "noop=50")], None, "KIND_RETRY"),
            (vec![("SMTP_RATE_LIMIT", "0/1s")], None, "SMTP_RATE_LIMIT"),
            (
                vec![("SMTP_FROM_EMAIL", "not an address")],
                None,
                "SMTP_FROM_EMAIL",
            ),
            (vec![("UPLOADS_DIR", " ")], None, "UPLOADS_DIR"),
            (
                vec![("CLOUDINARY_URL", "cloudinary://123@demo")],
                None,
                "CLOUDINARY_URL",
            ),
            (vec![("IDEMPOTENCY_TTL", "0")], None, "IDEMPOTENCY_TTL"),
            (
                vec![("LOGO_RETENTION_HOURS", "0")],
                None,
                "LOGO_RETENTION_HOURS",
            ),
        ] {
            let err = settings(&env, queues, None).unwrap_err();
            assert_eq!(err.name, name, "{err}");
            assert!(!err.to_string().contains('\n'), "{err}");
        }
    }

    /// `.env.example` lists exactly the settings the worker reads (under its heading and the
    /// one both processes share): what its components ask of the source, with and without
    /// the settings that make them read more, and `RUST_LOG`, which `main` reads itself.
    #[test]
    fn env_example_lists_every_setting_the_worker_reads() {
        use testkit::settings::{Recorder, WORKER, documented};
        let url = ("DATABASE_URL", "postgres://u@localhost/db");
        let mut read = std::collections::BTreeSet::from(["RUST_LOG".to_owned()]);
        for values in [
            &[url][..],
            &[
                url,
                ("CLOUDINARY_URL", "cloudinary://key:secret@cloud"),
                ("SMTP_SERVER", "smtp.example.org"),
                ("SMTP_USERNAME", "u"),
                ("SMTP_PASSWORD", "p"),
            ],
        ] {
            let src = Recorder::new(values);
            WorkerSettings::from_source(&src, None, None).expect("valid settings");
            read.extend(src.asked());
        }
        assert_eq!(
            documented(WORKER),
            read,
            ".env.example (left) against the code"
        );
    }
}
