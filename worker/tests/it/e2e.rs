//! A registration end to end through the real binaries: an `api` process takes the form, a
//! `worker` process stores the logo and mails the captain, both on the test database and on
//! shared upload and outbox directories, and the API serves the stored logo back; and the
//! same happy path with the logo going to the fake Cloudinary and the mail to the fake SMTP
//! server.

use std::time::Duration;

use engine::queue::JobState;
use serde_json::{Value, json};
use testkit::fixtures::{LOGO_PNG as PNG, admin_env, registration_form};
use testkit::{TempDir, TestDb};

use crate::cloudinary::FakeCloudinary;
use crate::harness::{api, fast_env, wait_final, with_env, worker};
use crate::registrations::{header_line, the_one_eml};
use crate::smtp::FakeSmtp;

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread")]
async fn a_registration_goes_from_the_form_to_the_stored_logo_and_the_mail() {
    let db = TestDb::new().await;
    let (uploads, outbox) = (TempDir::new("e2e-uploads"), TempDir::new("e2e-outbox"));
    let (uploads_dir, outbox_dir) = (uploads.0.to_str().unwrap(), outbox.0.to_str().unwrap());
    let [admin_name, admin_password] = admin_env();
    let api = api(&[
        ("DATABASE_URL", &db.url),
        ("UPLOADS_DIR", uploads_dir),
        admin_name,
        admin_password,
    ])
    .await;
    let base = api.base_url();
    let env = with_env(fast_env(&db.url), "UPLOADS_DIR", uploads_dir);
    let env = with_env(env, "MAIL_OUTBOX_DIR", outbox_dir);
    let env = with_env(env, "PUBLIC_BASE_URL", base.as_str());
    let worker = worker(&env, &["--queues", "uploads,email"]);

    let client = api.client();
    let post = || {
        client
            .register(registration_form())
            .header("Idempotency-Key", "e2e-registration-1")
            .header("X-Request-Id", "e2e-request-1")
            .send()
    };
    let first = post().await;
    assert_eq!(first.status, 201, "{first:?}");
    let body = first.json();
    assert_eq!(body["success"], true, "{body}");
    assert_eq!(body["team_id"], "ICCT-001", "{body}");
    let jobs: Vec<(i64, &str)> = body["jobs"]
        .as_array()
        .expect("a list of jobs")
        .iter()
        .map(|j| (j["id"].as_i64().unwrap(), j["kind"].as_str().unwrap()))
        .collect();
    assert_eq!(jobs.len(), 2, "{body}");
    assert_eq!(
        (jobs[0].1, jobs[1].1),
        ("upload_logo", "send_confirmation_email")
    );

    // The worker process runs both jobs.
    for (id, kind) in &jobs {
        let done = wait_final(&db, *id, WAIT).await;
        assert_eq!(done.state, JobState::Completed, "{kind}: {:?}", done.errors);
        assert_eq!(done.meta["request_id"], "e2e-request-1");
    }

    // The logo: a file with the posted bytes, its bytes gone from PostgreSQL, its URL on the
    // team, and served back by the API.
    assert_eq!(std::fs::read(uploads.0.join("icct-001.png")).unwrap(), PNG);
    let left: i64 = db.scalar("SELECT count(*) FROM team_logos").await;
    assert_eq!(left, 0, "the bytes are dropped once stored");
    let team = api
        .admin()
        .await
        .get("/api/v1/registrations/ICCT-001")
        .send()
        .await;
    assert_eq!(team.status, 200, "{team:?}");
    let detail = team.json();
    assert_eq!(detail["team"]["logo_pending"], false, "{detail}");
    let states: Vec<&str> = detail["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["completed", "completed"], "{detail}");
    let logo_url = detail["team"]["logo_url"]
        .as_str()
        .unwrap_or_else(|| panic!("no logo_url: {detail}"))
        .to_owned();
    assert_eq!(logo_url, "/files/icct-001.png");
    let served = client.get(&logo_url).send().await;
    assert_eq!(served.status, 200);
    assert_eq!(served.header("content-type"), Some("image/png"));
    assert_eq!(served.body, PNG, "the API serves the posted bytes");

    // The mail: one .eml to the captain, the team id in the subject and in both bodies.
    let eml = the_one_eml(&outbox.0);
    let header = |name: &str| header_line(&eml, name);
    assert!(header("To").contains("captain@example.com"), "{eml}");
    assert_eq!(
        header("Subject"),
        "Subject: Registration confirmed: Harbour Lions (ICCT-001)"
    );
    let (_, after_text) = eml
        .split_once("Content-Type: text/plain")
        .expect("a text part");
    let (text, html) = after_text
        .split_once("Content-Type: text/html")
        .expect("an html part after the text part");
    assert!(text.contains("ICCT-001"), "text body: {text}");
    assert!(html.contains("ICCT-001"), "html body: {html}");
    // The jobs are independent: whether the mail links the logo depends on which ran first,
    // so the link is not asserted here (`registrations.rs` checks it with the order fixed).

    // The same request under the same key: the first answer again, marked as a replay, and
    // nothing new written.
    let again = post().await;
    assert_eq!(again.status, 201, "{again:?}");
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.json(), body);
    assert_eq!(first.header("idempotent-replayed"), None);
    let counts: Value = json!([
        db.scalar::<i64>("SELECT count(*) FROM teams").await,
        db.scalar::<i64>("SELECT count(*) FROM jobs").await,
    ]);
    assert_eq!(counts, json!([1, 2]));

    worker.signal("-TERM");
    assert_eq!(worker.wait(Duration::from_secs(15)).await, Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_registration_through_the_api_reaches_the_fake_cloudinary_and_smtp_server() {
    let db = TestDb::new().await;
    let outbox = TempDir::new("e2e-real-outbox");
    let cloudinary = FakeCloudinary::start([]).await;
    let smtp = FakeSmtp::start().await;
    let [admin_name, admin_password] = admin_env();
    let api = api(&[("DATABASE_URL", &db.url), admin_name, admin_password]).await;
    let base = api.base_url();
    let env = cloudinary.env(smtp.env(fast_env(&db.url)));
    // Set so that a fall-back to the outbox would show (it must stay empty).
    let env = with_env(env, "MAIL_OUTBOX_DIR", outbox.0.to_str().unwrap());
    let env = with_env(env, "PUBLIC_BASE_URL", base.as_str());
    let worker = worker(&env, &["--queues", "uploads,email"]);

    let posted = api.client().register(registration_form()).send().await;
    assert_eq!(posted.status, 201, "{posted:?}");
    let body = posted.json();
    let team_id = body["team_id"].as_str().expect("a team id").to_owned();
    let jobs: Vec<(i64, String)> = body["jobs"]
        .as_array()
        .expect("a list of jobs")
        .iter()
        .map(|j| {
            (
                j["id"].as_i64().unwrap(),
                j["kind"].as_str().unwrap().into(),
            )
        })
        .collect();
    let mut kinds: Vec<&str> = jobs.iter().map(|(_, k)| k.as_str()).collect();
    kinds.sort();
    assert_eq!(kinds, ["send_confirmation_email", "upload_logo"], "{body}");

    // Both jobs complete on their first attempt.
    for (id, kind) in &jobs {
        let done = wait_final(&db, *id, WAIT).await;
        assert_eq!(
            (done.state, done.attempt),
            (JobState::Completed, 1),
            "{kind}: {:?}",
            done.errors
        );
        assert!(done.errors.is_empty(), "{kind}: {:?}", done.errors);
    }

    // Cloudinary: exactly one request, a signed upload the fake checked and accepted, of the
    // posted bytes.
    let requests = cloudinary.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!(
        (requests[0].status, requests[0].refusal.as_deref()),
        (Some(200), None),
        "{requests:?}"
    );
    let stored = cloudinary.stored();
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(stored[0].bytes, PNG, "the fake received the posted logo");
    assert_eq!(stored[0].public_id, team_id.to_lowercase());

    // The team's logo URL, as the admin sees it, is the fake's secure_url; the bytes are gone.
    let team = api
        .admin()
        .await
        .get(&format!("/api/v1/registrations/{team_id}"))
        .send()
        .await;
    assert_eq!(team.status, 200, "{team:?}");
    let detail = team.json();
    assert_eq!(
        detail["team"]["logo_url"].as_str(),
        Some(stored[0].secure_url.as_str()),
        "{detail}"
    );
    assert_eq!(detail["team"]["logo_pending"], false, "{detail}");
    let left: i64 = db.scalar("SELECT count(*) FROM team_logos").await;
    assert_eq!(left, 0, "the bytes are dropped once uploaded");

    // SMTP: exactly one message, to the captain, the team id in the subject and both bodies.
    let messages = smtp.messages();
    assert_eq!(messages.len(), 1, "{messages:?}");
    let m = &messages[0];
    assert_eq!(m.to, ["captain@example.com"], "{m:?}");
    let subject = m.header("Subject").expect("a subject");
    assert!(subject.contains(&team_id), "{subject}");
    let (text, html) = m.text_and_html();
    assert!(text.contains(&team_id), "{}", m.data);
    assert!(html.contains(&team_id), "{}", m.data);
    let outboxed = std::fs::read_dir(&outbox.0).map_or(0, |d| d.count());
    assert_eq!(outboxed, 0, "nothing fell back to the outbox");

    worker.signal("-TERM");
    assert_eq!(worker.wait(Duration::from_secs(15)).await, Some(0));
}
