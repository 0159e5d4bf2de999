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
use futures::future::BoxFuture;
use lettre::message::{Mailbox, MultiPart};
use lettre::{AsyncFileTransport, AsyncTransport, Message, Tokio1Executor};

use super::{JobContext, JobError, JobResult};
use crate::breaker::Guards;

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
    /// Sender, links and Reply-To from `delivery`, mail into its `.eml` outbox.
    pub fn embedded(delivery: &crate::config::DeliverySettings) -> Self {
        Self {
            from: delivery.from.clone(),
            reply_to: delivery.reply_to.clone(),
            public_base_url: delivery.public_base_url.clone(),
            mailer: Arc::new(OutboxMailer::new(&delivery.outbox_dir)),
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
