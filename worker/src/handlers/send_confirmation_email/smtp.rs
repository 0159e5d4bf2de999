//! Mail sent to an SMTP server: lettre's pooled async transport over tokio with rustls (on
//! aws-lc-rs), STARTTLS, implicit TLS or plain as `SMTP_TLS` says.
//!
//! Each message passes the `smtp` guard (global rate limit and shared breaker). Failures are
//! sorted at the call site ([`SmtpErrorExt`]): a connection error, a timeout or a 4xx reply is
//! transient; a 5xx reply (mailbox unknown, message rejected) is permanent. Only the
//! transient ones count against the breaker: a 5xx is the server's answer about this message.

use std::time::Duration;

use futures::future::BoxFuture;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use engine::config::{ConfigError, Secret, Source, millis, parse_or};

use super::{MailError, Mailer};
use crate::runtime::breaker::{Guards, NamedService, policy_names};
use crate::runtime::job::JobError;

/// The guard name of the SMTP server: its breaker and rate limit.
pub const SERVICE: &str = "smtp";

/// The SMTP server's breaker and rate-limit settings: `SMTP_BREAKER_*` over `BREAKER_*`,
/// and `SMTP_RATE_LIMIT`.
pub const GUARD_SETTINGS: NamedService = NamedService {
    service: SERVICE,
    breaker: policy_names!("SMTP_BREAKER_"),
    rate_limit: "SMTP_RATE_LIMIT",
};

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

/// Default `SMTP_CONNECT_TIMEOUT_MS`.
pub const DEFAULT_SMTP_CONNECT_TIMEOUT_MS: u64 = 10_000;
/// Default `SMTP_SEND_TIMEOUT_MS`: inside the kind's 60 s attempt timeout, so a stuck server
/// is reported as such rather than as a job timeout.
pub const DEFAULT_SMTP_SEND_TIMEOUT_MS: u64 = 30_000;

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

/// An SMTP server, with a pool of connections to it.
pub struct SmtpMailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    send_timeout: Duration,
}

/// Sorting of lettre's SMTP errors into [`MailError`].
pub trait SmtpErrorExt {
    /// What the queue should do about this error.
    fn mail_error(&self) -> MailError;
}

impl SmtpErrorExt for lettre::transport::smtp::Error {
    fn mail_error(&self) -> MailError {
        let text = error_chain(self);
        if self.is_permanent() {
            MailError::Refused(format!("the SMTP server refused the message: {text}"))
        } else if self.is_transient() {
            MailError::Transient(format!("the SMTP server deferred the message: {text}"))
        } else if self.is_timeout() {
            MailError::Transient(format!("the SMTP server did not answer in time: {text}"))
        } else {
            // Connection refused or lost, TLS, an unreadable reply: the server may be fine
            // on the next try.
            MailError::Transient(format!("cannot talk to the SMTP server: {text}"))
        }
    }
}

impl SmtpMailer {
    /// A transport for `settings`; connects lazily, on the first message.
    pub fn new(settings: &SmtpSettings) -> anyhow::Result<Self> {
        let builder = match settings.tls {
            SmtpTls::StartTls => {
                AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&settings.server)?
            }
            SmtpTls::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(&settings.server)?,
            SmtpTls::None => {
                AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(settings.server.as_str())
            }
        };
        let mut builder = builder
            .port(settings.port)
            .timeout(Some(settings.connect_timeout));
        if let Some((user, password)) = &settings.credentials {
            builder =
                builder.credentials(Credentials::new(user.clone(), password.expose().to_owned()));
        }
        Ok(Self {
            transport: builder.build(),
            send_timeout: settings.send_timeout,
        })
    }

    async fn send_once(&self, message: Message) -> Result<(), MailError> {
        match tokio::time::timeout(self.send_timeout, self.transport.send(message)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.mail_error()),
            Err(_) => Err(MailError::Transient(format!(
                "the SMTP server did not take the message within {:?}",
                self.send_timeout
            ))),
        }
    }
}

impl Mailer for SmtpMailer {
    fn send<'a>(
        &'a self,
        message: Message,
        guards: &'a Guards,
    ) -> BoxFuture<'a, Result<(), MailError>> {
        Box::pin(async move {
            guards
                .call(SERVICE, self.send_once(message), |e| {
                    matches!(e, MailError::Transient(_))
                })
                .await
                .map_err(|e| match e {
                    JobError::Snooze(d) => MailError::Snoozed(d),
                    other => MailError::Transient(other.to_string()),
                })?
        })
    }
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let line = cause.to_string();
        if !text.contains(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        source = cause.source();
    }
    text
}
