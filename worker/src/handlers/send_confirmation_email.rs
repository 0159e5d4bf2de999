//! The `send_confirmation_email` handler: render the confirmation (text and HTML, from the
//! templates in `worker/templates/`) for a registered team and hand it to a [`Mailer`].
//!
//! The Message-ID is derived from the job id, so a retry that sends again sends the same
//! message, which mail clients show once.

pub mod smtp;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use domain::jobs::send_confirmation_email::SendConfirmationEmail;
use domain::registrations::{self, Team};
use engine::config::{ConfigError, Source};
use futures::future::BoxFuture;
use lettre::message::{Mailbox, MultiPart};
use lettre::{AsyncFileTransport, AsyncTransport, Message, Tokio1Executor};

use crate::runtime::breaker::Guards;
use crate::runtime::handlers::JobContext;
use crate::runtime::job::{JobError, JobResult};
use smtp::SmtpSettings;

/// Who confirmation mail is from, what its links start with, and where it goes.
#[derive(Debug, Clone)]
pub struct MailSettings {
    /// `MAIL_OUTBOX_DIR`: where confirmation mail is written as `.eml` files.
    pub outbox_dir: PathBuf,
    /// `SMTP_FROM_EMAIL`: the sender of confirmation mail, `Name <address>` or an address.
    pub from: Mailbox,
    /// `SMTP_REPLY_TO`: the Reply-To of confirmation mail, if any (outbox or SMTP alike).
    pub reply_to: Option<Mailbox>,
    /// `PUBLIC_BASE_URL`: the API's address as mail readers reach it; links to logos start
    /// with it.
    pub public_base_url: String,
    /// An SMTP server, when `SMTP_SERVER` is set: mail goes there instead of `outbox_dir`.
    pub smtp: Option<SmtpSettings>,
}

/// Default `MAIL_OUTBOX_DIR`.
pub const DEFAULT_OUTBOX_DIR: &str = "./.data/outbox";
/// Default `SMTP_FROM_EMAIL`.
pub const DEFAULT_FROM: &str = "Quayside <noreply@localhost>";
/// Default `PUBLIC_BASE_URL`: the API on its default port (8080).
pub const DEFAULT_PUBLIC_BASE_URL: &str = "http://localhost:8080";

impl MailSettings {
    /// Read and validate.
    pub fn from_source(src: &(impl Source + ?Sized)) -> Result<Self, ConfigError> {
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
        let outbox_dir = src
            .get("MAIL_OUTBOX_DIR")
            .unwrap_or_else(|| DEFAULT_OUTBOX_DIR.to_owned());
        if outbox_dir.trim().is_empty() {
            return Err(ConfigError::new("MAIL_OUTBOX_DIR", "must name a directory"));
        }
        Ok(Self {
            outbox_dir: PathBuf::from(outbox_dir),
            from,
            reply_to,
            public_base_url: public_base_url.trim_end_matches('/').to_owned(),
            smtp: SmtpSettings::from_source(src)?,
        })
    }
}

/// Where mail goes: [`OutboxMailer`] (the embedded default) or [`smtp::SmtpMailer`], chosen
/// once at start-up.
pub trait Mailer: Send + Sync {
    /// Deliver `message`. A mailer behind an external service passes each call to it through
    /// `guards`.
    fn send<'a>(
        &'a self,
        message: Message,
        guards: &'a Guards,
    ) -> BoxFuture<'a, Result<(), MailError>>;
}

/// Why a message was not delivered, said as what the queue should do.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum MailError {
    /// A transient failure (disk, no connection, a 4xx from a server): retry.
    #[error("mail delivery failed: {0}")]
    Transient(String),
    /// Delivery refused for good (a 5xx from a server).
    #[error("mail refused: {0}")]
    Refused(String),
    /// The service's breaker or rate limit said not now: nothing was sent.
    #[error("mail held back for {0:?}")]
    Snoozed(Duration),
}

impl From<MailError> for JobError {
    fn from(e: MailError) -> Self {
        match e {
            MailError::Transient(_) => JobError::Retry(e.to_string()),
            MailError::Refused(_) => JobError::Permanent(e.to_string()),
            MailError::Snoozed(d) => JobError::Snooze(d),
        }
    }
}

/// Messages written as `.eml` files into a directory (lettre's file transport).
pub struct OutboxMailer {
    dir: PathBuf,
    transport: AsyncFileTransport<Tokio1Executor>,
}

impl OutboxMailer {
    /// Files under `dir`, created on first use.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        let dir = dir.into();
        Self {
            transport: AsyncFileTransport::new(&dir),
            dir,
        }
    }
}

impl Mailer for OutboxMailer {
    fn send<'a>(
        &'a self,
        message: Message,
        _guards: &'a Guards,
    ) -> BoxFuture<'a, Result<(), MailError>> {
        Box::pin(async move {
            tokio::fs::create_dir_all(&self.dir)
                .await
                .map_err(|e| MailError::Transient(e.to_string()))?;
            self.transport
                .send(message)
                .await
                .map_err(|e| MailError::Transient(e.to_string()))?;
            Ok(())
        })
    }
}

/// What the handler needs besides the database.
pub struct Confirmation {
    /// The sender.
    pub from: Mailbox,
    /// Where replies go, when not to the sender.
    pub reply_to: Option<Mailbox>,
    /// Prefix of links to the API (logo URLs are relative to it).
    pub public_base_url: String,
    /// The delivery.
    pub mailer: Arc<dyn Mailer>,
}

impl Confirmation {
    /// Sender, links and Reply-To from `mail`, mail into its `.eml` outbox.
    pub fn embedded(mail: &MailSettings) -> Self {
        Self {
            from: mail.from.clone(),
            reply_to: mail.reply_to.clone(),
            public_base_url: mail.public_base_url.clone(),
            mailer: Arc::new(OutboxMailer::new(&mail.outbox_dir)),
        }
    }
}

const TEXT_TEMPLATE: &str = include_str!("../../templates/confirmation.txt");
const HTML_TEMPLATE: &str = include_str!("../../templates/confirmation.html");

/// Run one `send_confirmation_email` job.
pub async fn run(
    args: SendConfirmationEmail,
    ctx: JobContext,
    pool: Pool,
    conf: Arc<Confirmation>,
) -> JobResult {
    let conn = pool
        .get()
        .await
        .map_err(|e| JobError::Retry(e.to_string()))?;
    let team = registrations::team(&conn, &args.team_id)
        .await
        .map_err(|e| JobError::Retry(e.to_string()))?
        .ok_or_else(|| JobError::Permanent(format!("no team {:?}", args.team_id)))?;
    drop(conn);
    let message = message(&team, ctx.id, &conf)?;
    conf.mailer.send(message, &ctx.guards).await?;
    Ok(Some(serde_json::json!({ "to": team.captain_email })))
}

/// The confirmation of `team`, sent by job `job_id`.
pub fn message(team: &Team, job_id: i64, conf: &Confirmation) -> Result<Message, JobError> {
    let to_address = team
        .captain_email
        .parse()
        .map_err(|e| JobError::Permanent(format!("the captain's address is refused: {e}")))?;
    let to = Mailbox::new(Some(team.captain_name.clone()), to_address);
    let logo = team
        .logo_url
        .as_deref()
        .map(|u| absolute(&conf.public_base_url, u));
    let domain = conf.from.email.domain();
    let mut builder = Message::builder().from(conf.from.clone()).to(to);
    if let Some(reply_to) = &conf.reply_to {
        builder = builder.reply_to(reply_to.clone());
    }
    builder
        .subject(format!(
            "Registration confirmed: {} ({})",
            team.team_name, team.team_id
        ))
        .message_id(Some(format!("<confirmation-{job_id}@{domain}>")))
        .multipart(MultiPart::alternative_plain_html(
            render_text(team, logo.as_deref()),
            render_html(team, logo.as_deref()),
        ))
        .map_err(|e| JobError::Permanent(format!("cannot build the message: {e}")))
}

fn absolute(base: &str, url: &str) -> String {
    if url.starts_with('/') {
        format!("{base}{url}")
    } else {
        url.to_owned()
    }
}

/// Fill the `{{name}}` placeholders of `template`; `escape` is applied to each field's text.
fn fill(
    template: &str,
    team: &Team,
    escape: fn(&str) -> String,
    players: &str,
    logo: &str,
) -> String {
    template
        .replace("{{team_id}}", &escape(&team.team_id))
        .replace("{{team_name}}", &escape(&team.team_name))
        .replace("{{church_name}}", &escape(&team.church_name))
        .replace("{{captain_name}}", &escape(&team.captain_name))
        .replace("{{coach_name}}", &escape(&team.coach_name))
        .replace("{{players}}", players)
        .replace("{{logo}}", logo)
}

/// The plain-text body.
pub fn render_text(team: &Team, logo: Option<&str>) -> String {
    let players: Vec<String> = team
        .players
        .iter()
        .enumerate()
        .map(|(i, p)| format!("{}. {} ({})", i + 1, p.name, p.role))
        .collect();
    let logo = logo
        .map(|u| format!("\nYour logo: {u}\n"))
        .unwrap_or_default();
    fill(
        TEXT_TEMPLATE,
        team,
        str::to_owned,
        &players.join("\n"),
        &logo,
    )
}

/// The HTML body; every value from the registration is escaped.
pub fn render_html(team: &Team, logo: Option<&str>) -> String {
    let players: Vec<String> = team
        .players
        .iter()
        .map(|p| format!("<li>{} ({})</li>", escape(&p.name), escape(&p.role)))
        .collect();
    let logo = logo
        .map(|u| {
            let u = escape(u);
            format!("<p>Your logo: <a href=\"{u}\">{u}</a></p>")
        })
        .unwrap_or_default();
    fill(HTML_TEMPLATE, team, escape, &players.join("\n"), &logo)
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use domain::registrations::Player;

    use super::*;

    fn team() -> Team {
        Team {
            number: 1,
            team_id: "ICCT-001".into(),
            team_name: "Lions <&> Co".into(),
            church_name: "St Mark's".into(),
            captain_name: "Cap Tain".into(),
            coach_name: "Co Ach".into(),
            captain_phone: "9876543210".into(),
            captain_whatsapp: "9876543210".into(),
            captain_email: "cap@example.com".into(),
            logo_url: None,
            logo_pending: true,
            players: vec![Player {
                name: "Ann <b>".into(),
                role: "bowler".into(),
                phone: "9876543210".into(),
            }],
            created_at: chrono::Utc::now(),
        }
    }

    #[test]
    fn mail_defaults_to_the_outbox_and_takes_overrides() {
        let d = |pairs: &[(&str, &str)]| MailSettings::from_source(pairs);
        let s = d(&[]).unwrap();
        assert_eq!(s.outbox_dir, PathBuf::from(DEFAULT_OUTBOX_DIR));
        assert_eq!(s.from.email.to_string(), "noreply@localhost");
        assert_eq!(s.public_base_url, DEFAULT_PUBLIC_BASE_URL);
        let s = d(&[
            ("SMTP_FROM_EMAIL", "Cup <cup@example.org>"),
            ("PUBLIC_BASE_URL", "https://cup.example.org/"),
        ])
        .unwrap();
        assert_eq!(s.from.name.as_deref(), Some("Cup"));
        assert_eq!(s.public_base_url, "https://cup.example.org");
        for (name, value) in [
            ("SMTP_FROM_EMAIL", "not an address"),
            ("PUBLIC_BASE_URL", "example.com"),
            ("MAIL_OUTBOX_DIR", " "),
        ] {
            let err = d(&[(name, value)]).unwrap_err();
            assert_eq!(err.name, name, "{value}: {err}");
        }
    }

    #[test]
    fn smtp_is_configured_by_its_server_and_hides_its_password() {
        use smtp::SmtpTls;
        let d = |pairs: &[(&str, &str)]| MailSettings::from_source(pairs);
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

    #[test]
    fn bodies_name_the_team_and_escape_html() {
        let t = team();
        let text = render_text(&t, Some("http://x/files/icct-001.png"));
        assert!(text.contains("Team id: ICCT-001"), "{text}");
        assert!(text.contains("1. Ann <b> (bowler)"), "{text}");
        assert!(text.contains("Your logo: http://x/files/icct-001.png"));
        assert!(!text.contains("{{"), "{text}");
        let html = render_html(&t, None);
        assert!(html.contains("Lions &lt;&amp;&gt; Co"), "{html}");
        assert!(html.contains("<li>Ann &lt;b&gt; (bowler)</li>"), "{html}");
        assert!(!html.contains("Your logo"));
        assert!(!html.contains("{{"), "{html}");
    }

    #[test]
    fn the_message_id_follows_the_job_and_a_bad_address_is_permanent() {
        let conf = Confirmation {
            from: "Quayside <noreply@example.org>".parse().unwrap(),
            reply_to: Some("Desk <desk@example.org>".parse().unwrap()),
            public_base_url: "http://localhost:8080".into(),
            mailer: Arc::new(OutboxMailer::new("/nonexistent")),
        };
        let m = message(&team(), 42, &conf).unwrap();
        let raw = String::from_utf8(m.formatted()).unwrap();
        assert!(
            raw.contains("Message-ID: <confirmation-42@example.org>"),
            "{raw}"
        );
        assert!(raw.contains("Reply-To: Desk <desk@example.org>"), "{raw}");
        let mut bad = team();
        bad.captain_email = "nope".into();
        assert!(matches!(
            message(&bad, 1, &conf),
            Err(JobError::Permanent(_))
        ));
    }
}
