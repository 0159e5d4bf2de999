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

use super::{MailError, Mailer};
use crate::config::{SmtpSettings, SmtpTls};
use crate::handlers::JobError;
use crate::runtime::breaker::Guards;

/// The guard name of the SMTP server: its breaker and rate limit.
pub const SERVICE: &str = "smtp";

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
