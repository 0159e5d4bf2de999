//! `send_confirmation_email` against a real SMTP server on loopback: a small in-process one
//! (EHLO, MAIL FROM, RCPT TO, DATA, RSET, NOOP, QUIT) that keeps every message as received
//! over the wire, and can be told to answer RCPT with a 4xx or 5xx, to take its time over
//! each message, or to stop listening and come back.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use engine::queue::JobState;
use testkit::fixtures::{TEAM_NAME, insert_team};
use testkit::{TempDir, TestDb};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::harness::{InProcess, fast_env, wait_final, with_env};
use crate::registrations::job;

const WAIT: Duration = Duration::from_secs(40);

/// One message as the server received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub from: String,
    pub to: Vec<String>,
    /// The DATA, dot-unstuffed, CRLF line ends.
    pub data: String,
}

impl Received {
    /// The value of header `name` (unfolded), if present.
    pub fn header(&self, name: &str) -> Option<String> {
        let head = self.data.split("\r\n\r\n").next()?;
        let mut value: Option<String> = None;
        for line in head.split("\r\n") {
            if let Some(v) = value.as_mut()
                && (line.starts_with(' ') || line.starts_with('\t'))
            {
                v.push_str(line);
                continue;
            }
            if value.is_some() {
                break;
            }
            if let Some((k, v)) = line.split_once(':')
                && k.eq_ignore_ascii_case(name)
            {
                value = Some(v.trim().to_owned());
            }
        }
        value
    }

    /// The text part and the HTML part, from their `Content-Type` on; panics unless both are
    /// there, text first.
    pub fn text_and_html(&self) -> (&str, &str) {
        let text = self
            .data
            .find("Content-Type: text/plain")
            .expect("a text part");
        let html = self
            .data
            .find("Content-Type: text/html")
            .expect("an HTML part");
        assert!(text < html, "text first, then HTML: {}", self.data);
        (&self.data[text..html], &self.data[html..])
    }
}

#[derive(Default)]
struct State {
    /// Replies to the next RCPT commands, e.g. `550 5.1.1 ...`; 250 once empty.
    rcpt_replies: VecDeque<String>,
    /// How long the server takes over each message after its data.
    per_message: Duration,
    messages: Vec<Received>,
}

/// The SMTP server.
pub struct FakeSmtp {
    pub port: u16,
    state: Arc<Mutex<State>>,
    accept: Mutex<Option<JoinHandle<()>>>,
}

impl FakeSmtp {
    pub async fn start() -> FakeSmtp {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let smtp = FakeSmtp {
            port,
            state: Arc::new(Mutex::new(State::default())),
            accept: Mutex::new(None),
        };
        smtp.listen(listener);
        smtp
    }

    fn listen(&self, listener: TcpListener) {
        let state = self.state.clone();
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                tokio::spawn(session(sock, state.clone()));
            }
        });
        *self.accept.lock().unwrap() = Some(task);
    }

    /// Stop listening: new connections are refused (open sessions are cut too).
    pub fn stop(&self) {
        if let Some(task) = self.accept.lock().unwrap().take() {
            task.abort();
        }
    }

    /// Listen again on the same port.
    pub async fn restart(&self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port)).await.unwrap();
        self.listen(listener);
    }

    /// Answer the next RCPT commands with these replies, in order.
    pub fn reply_to_rcpt(&self, replies: &[&str]) {
        let mut s = self.state.lock().unwrap();
        s.rcpt_replies = replies.iter().map(|r| r.to_string()).collect();
    }

    /// Take `d` over each message before accepting it.
    pub fn slow(&self, d: Duration) {
        self.state.lock().unwrap().per_message = d;
    }

    pub fn messages(&self) -> Vec<Received> {
        self.state.lock().unwrap().messages.clone()
    }

    /// Worker settings sending to this server, in plain text.
    pub fn env(&self, base: Vec<(&'static str, String)>) -> Vec<(&'static str, String)> {
        let env = with_env(base, "SMTP_SERVER", "127.0.0.1");
        let env = with_env(env, "SMTP_PORT", self.port.to_string());
        with_env(env, "SMTP_TLS", "none")
    }
}

impl Drop for FakeSmtp {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn session(sock: TcpStream, state: Arc<Mutex<State>>) {
    let (read, mut write) = sock.into_split();
    let mut lines = BufReader::new(read);
    macro_rules! reply {
        ($text:expr) => {
            if write
                .write_all(format!("{}\r\n", $text).as_bytes())
                .await
                .is_err()
            {
                return;
            }
        };
    }
    reply!("220 fake.smtp.test ESMTP ready");
    let (mut from, mut to) = (None::<String>, Vec::<String>::new());
    let mut line = String::new();
    loop {
        line.clear();
        match lines.read_line(&mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let command = line.trim_end().to_owned();
        let verb = command
            .split([' ', ':'])
            .next()
            .unwrap_or("")
            .to_ascii_uppercase();
        match verb.as_str() {
            "EHLO" => reply!("250-fake.smtp.test\r\n250-8BITMIME\r\n250 SMTPUTF8"),
            "HELO" => reply!("250 fake.smtp.test"),
            "MAIL" => {
                from = Some(address(&command));
                to.clear();
                reply!("250 2.1.0 Ok");
            }
            "RCPT" => {
                let scripted = state.lock().unwrap().rcpt_replies.pop_front();
                match scripted {
                    Some(r) => reply!(r),
                    None => {
                        to.push(address(&command));
                        reply!("250 2.1.5 Ok");
                    }
                }
            }
            "DATA" => {
                if from.is_none() || to.is_empty() {
                    reply!("503 5.5.1 No valid recipients");
                    continue;
                }
                reply!("354 End data with <CR><LF>.<CR><LF>");
                let mut data = String::new();
                loop {
                    line.clear();
                    match lines.read_line(&mut line).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                    if line == ".\r\n" {
                        break;
                    }
                    data.push_str(line.strip_prefix('.').unwrap_or(&line));
                }
                let per_message = state.lock().unwrap().per_message;
                tokio::time::sleep(per_message).await;
                state.lock().unwrap().messages.push(Received {
                    from: from.take().unwrap_or_default(),
                    to: std::mem::take(&mut to),
                    data,
                });
                reply!("250 2.0.0 Ok: queued");
            }
            "RSET" => {
                from = None;
                to.clear();
                reply!("250 2.0.0 Ok");
            }
            "NOOP" => reply!("250 2.0.0 Ok"),
            "QUIT" => {
                reply!("221 2.0.0 Bye");
                return;
            }
            _ => reply!("502 5.5.2 Command not recognized"),
        }
    }
}

/// The address in `MAIL FROM:<a@b> ...` or `RCPT TO:<a@b>`.
fn address(command: &str) -> String {
    command
        .split_once('<')
        .and_then(|(_, rest)| rest.split_once('>'))
        .map(|(a, _)| a.to_owned())
        .unwrap_or_default()
}

fn env(db: &TestDb, outbox: &TempDir, smtp: &FakeSmtp) -> Vec<(&'static str, String)> {
    let env = with_env(
        fast_env(&db.url),
        "MAIL_OUTBOX_DIR",
        outbox.0.to_str().unwrap(),
    );
    let env = with_env(env, "SMTP_FROM_EMAIL", "Quayside Cup <cup@example.org>");
    let env = with_env(env, "SMTP_REPLY_TO", "Cup Desk <desk@example.org>");
    smtp.env(env)
}

/// Register a team, start an in-process worker mailing through `smtp`, run its confirmation
/// job and return the job when final.
async fn confirm(db: &TestDb, smtp: &FakeSmtp) -> engine::queue::JobRow {
    let outbox = TempDir::new("outbox");
    let team_id = insert_team(db, TEAM_NAME).await;
    let worker = InProcess::start(&env(db, &outbox, smtp), "email", 2);
    let id = job(db, "send_confirmation_email", &team_id).await;
    let done = wait_final(db, id, WAIT).await;
    worker.shutdown().await;
    assert_eq!(
        std::fs::read_dir(&outbox.0).map(|d| d.count()).unwrap_or(0),
        0,
        "nothing goes to the outbox when SMTP is configured"
    );
    done
}

#[tokio::test]
async fn the_confirmation_arrives_over_smtp_with_both_bodies() {
    let db = TestDb::new().await;
    let smtp = FakeSmtp::start().await;
    let done = confirm(&db, &smtp).await;

    assert_eq!(done.state, JobState::Completed, "{:?}", done.errors);
    assert_eq!(done.attempt, 1);
    let messages = smtp.messages();
    assert_eq!(messages.len(), 1);
    let m = &messages[0];
    assert_eq!(m.from, "cup@example.org");
    assert_eq!(m.to, ["captain@example.com"]);
    assert_eq!(
        m.header("To").as_deref(),
        Some("\"Cap Tain\" <captain@example.com>")
    );
    assert_eq!(
        m.header("Subject").as_deref(),
        Some("Registration confirmed: Harbour Lions (ICCT-001)")
    );
    assert_eq!(
        m.header("Message-ID"),
        Some(format!("<confirmation-{}@example.org>", done.id))
    );
    assert_eq!(
        m.header("Reply-To").as_deref(),
        Some("\"Cup Desk\" <desk@example.org>")
    );
    assert!(m.data.contains("multipart/alternative"), "{}", m.data);
    let (text, html) = m.text_and_html();
    assert!(text.contains("Team id: ICCT-001"), "{}", m.data);
    assert!(text.contains("2. Ben Batter (batter)"), "{}", m.data);
    assert!(html.contains("<li>Ann Bowler (bowler)</li>"), "{}", m.data);
}

#[tokio::test]
async fn a_rejected_mailbox_discards_the_job_with_the_servers_reason() {
    let db = TestDb::new().await;
    let smtp = FakeSmtp::start().await;
    smtp.reply_to_rcpt(&[
        "550 5.1.1 <captain@example.com>: Recipient address rejected: User unknown",
    ]);
    let done = confirm(&db, &smtp).await;

    assert_eq!(done.state, JobState::Discarded);
    assert_eq!(done.attempt, 1, "a 5xx is not retried");
    assert_eq!(done.errors[0].kind, "permanent");
    let message = &done.errors[0].message;
    assert!(
        message.contains("550") && message.contains("User unknown"),
        "{message}"
    );
    assert!(smtp.messages().is_empty());
}

#[tokio::test]
async fn a_deferred_message_is_retried_and_delivered_once() {
    let db = TestDb::new().await;
    let smtp = FakeSmtp::start().await;
    smtp.reply_to_rcpt(&["451 4.3.0 Try again later"]);
    let done = confirm(&db, &smtp).await;

    assert_eq!(done.state, JobState::Completed, "{:?}", done.errors);
    assert_eq!(done.attempt, 2, "the 451 used up the first attempt");
    assert!(done.errors[0].message.contains("451"), "{:?}", done.errors);
    assert_eq!(smtp.messages().len(), 1);
}
