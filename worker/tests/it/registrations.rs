//! The registration jobs with the embedded defaults, through a real in-process worker: the logo
//! stored as a file and its bytes dropped, the confirmation written as an `.eml` file.

use std::time::Duration;

use domain::registrations as reg;
use engine::queue::{JobState, NewJob, enqueue};
use testkit::fixtures::{LOGO_PNG, TEAM_NAME, insert_team};
use testkit::{TempDir, TestDb};

use crate::harness::{InProcess, fast_env, wait_final, with_env};

const WAIT: Duration = Duration::from_secs(20);

pub(crate) async fn job(db: &TestDb, kind: &str, team_id: &str) -> i64 {
    enqueue(
        &db.conn().await,
        &NewJob::from_json(
            domain::jobs::kind(kind).unwrap(),
            serde_json::json!({ "team_id": team_id }),
        )
        .unwrap(),
    )
    .await
    .unwrap()
    .id
}

fn env(db: &TestDb, uploads: &TempDir, outbox: &TempDir) -> Vec<(&'static str, String)> {
    let env = with_env(
        fast_env(&db.url),
        "UPLOADS_DIR",
        uploads.0.to_str().unwrap(),
    );
    let env = with_env(env, "MAIL_OUTBOX_DIR", outbox.0.to_str().unwrap());
    with_env(env, "PUBLIC_BASE_URL", "https://cup.example.org")
}

#[tokio::test]
async fn the_logo_is_stored_then_the_captain_is_mailed_with_its_link() {
    let db = TestDb::new().await;
    let (uploads, outbox) = (TempDir::new("uploads"), TempDir::new("outbox"));
    let team_id = insert_team(&db, TEAM_NAME).await;
    let upload = job(&db, "upload_logo", &team_id).await;
    let worker = InProcess::start(&env(&db, &uploads, &outbox), "uploads,email", 2);

    let done = wait_final(&db, upload, WAIT).await;
    assert_eq!(done.state, JobState::Completed, "{:?}", done.errors);
    assert_eq!(
        std::fs::read(uploads.0.join("icct-001.png")).unwrap(),
        LOGO_PNG,
        "the file holds the registered bytes"
    );
    let team = reg::team(&db.conn().await, &team_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(team.logo_url.as_deref(), Some("/files/icct-001.png"));
    assert!(!team.logo_pending);
    let left: i64 = db.scalar("SELECT count(*) FROM team_logos").await;
    assert_eq!(left, 0, "the bytes are dropped once stored");

    // A second run (a retry after the update) finds nothing to do and succeeds.
    let again = wait_final(&db, job(&db, "upload_logo", &team_id).await, WAIT).await;
    assert_eq!(again.state, JobState::Completed);

    let mail = job(&db, "send_confirmation_email", &team_id).await;
    let done = wait_final(&db, mail, WAIT).await;
    assert_eq!(done.state, JobState::Completed, "{:?}", done.errors);
    worker.shutdown().await;

    let eml = the_one_eml(&outbox.0);
    let header = |name: &str| header_line(&eml, name);
    assert!(header("To").contains("captain@example.com"), "{eml}");
    assert!(header("From").contains("noreply@localhost"), "{eml}");
    assert_eq!(
        header("Subject"),
        "Subject: Registration confirmed: Harbour Lions (ICCT-001)"
    );
    assert_eq!(
        header("Message-ID"),
        format!("Message-ID: <confirmation-{mail}@localhost>")
    );
    assert!(eml.contains("multipart/alternative"), "{eml}");
    assert!(eml.contains("Content-Type: text/plain"), "{eml}");
    assert!(eml.contains("Content-Type: text/html"), "{eml}");
    assert!(eml.contains("Team id: ICCT-001"), "{eml}");
    assert!(eml.contains("2. Ben Batter (batter)"), "{eml}");
    assert!(eml.contains("<li>Ann Bowler (bowler)</li>"), "{eml}");
    assert!(
        eml.contains("Your logo: https://cup.example.org/files/icct-001.png"),
        "{eml}"
    );
}

#[tokio::test]
async fn jobs_of_a_missing_team_are_discarded_at_once() {
    let db = TestDb::new().await;
    let (uploads, outbox) = (TempDir::new("uploads"), TempDir::new("outbox"));
    let upload = job(&db, "upload_logo", "ICCT-404").await;
    let mail = job(&db, "send_confirmation_email", "ICCT-404").await;
    let worker = InProcess::start(&env(&db, &uploads, &outbox), "uploads,email", 2);
    for id in [upload, mail] {
        let done = wait_final(&db, id, WAIT).await;
        assert_eq!(done.state, JobState::Discarded);
        assert_eq!(done.attempt, 1, "a permanent error is not retried");
        assert!(
            done.errors[0].message.contains("no team"),
            "{:?}",
            done.errors
        );
    }
    worker.shutdown().await;
    assert_eq!(std::fs::read_dir(&outbox.0).unwrap().count(), 0);
    assert_eq!(std::fs::read_dir(&uploads.0).unwrap().count(), 0);
}

#[tokio::test]
async fn an_upload_whose_bytes_were_cleaned_up_is_discarded_not_completed() {
    let db = TestDb::new().await;
    let (uploads, outbox) = (TempDir::new("uploads"), TempDir::new("outbox"));
    let team_id = insert_team(&db, TEAM_NAME).await;
    // As the logo clean-up leaves a team whose upload was given up: no bytes, no URL.
    db.conn()
        .await
        .execute(
            "DELETE FROM team_logos WHERE team_number = (SELECT number FROM teams WHERE team_id = $1)",
            &[&team_id],
        )
        .await
        .unwrap();
    let upload = job(&db, "upload_logo", &team_id).await;
    let worker = InProcess::start(&env(&db, &uploads, &outbox), "uploads", 1);
    let done = wait_final(&db, upload, WAIT).await;
    worker.shutdown().await;
    assert_eq!(done.state, JobState::Discarded);
    assert!(
        done.errors[0].message.contains("no longer kept"),
        "{:?}",
        done.errors
    );
    assert_eq!(std::fs::read_dir(&uploads.0).unwrap().count(), 0);
}

/// The text of the only `.eml` file in `outbox` (there must be exactly one).
pub(crate) fn the_one_eml(outbox: &std::path::Path) -> String {
    let files: Vec<_> = std::fs::read_dir(outbox)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(files[0].extension().unwrap(), "eml");
    std::fs::read_to_string(&files[0]).unwrap()
}

/// The line of header `name` in the message `eml`.
pub(crate) fn header_line(eml: &str, name: &str) -> String {
    eml.lines()
        .find(|l| l.starts_with(&format!("{name}: ")))
        .unwrap_or_else(|| panic!("no {name} header in {eml}"))
        .to_owned()
}
