//! The registration use-case, called directly (no HTTP) against a real PostgreSQL: created,
//! replayed, refused, and rolled back whole when a step fails.

use std::time::Duration;

use domain::registrations::RegistrationError;
use domain::registrations::register::{Outcome, RegisterSettings, Registered, register};
use domain::registrations::validation::{IdempotencyKey, NewRegistration, Submission};
use testkit::TestDb;

const PNG: &[u8] = b"\x89PNG\r\n\x1a\nfake";

fn settings() -> RegisterSettings {
    RegisterSettings {
        team_id_prefix: "ICCT".into(),
        idempotency_ttl: Duration::from_secs(3600),
    }
}

fn submission(team: &str) -> Submission {
    Submission {
        team_name: Some(team.into()),
        church_name: Some("St Mark's".into()),
        captain_name: Some("Cap Tain".into()),
        coach_name: Some("Co Ach".into()),
        captain_phone: Some("9876543210".into()),
        captain_whatsapp: Some("9876543211".into()),
        captain_email: Some("cap@example.com".into()),
        players: Some(r#"[{"name": "Ann", "role": "bowler", "phone": "9876543212"}]"#.into()),
        logo: Some(PNG.to_vec()),
    }
}

fn valid(team: &str) -> NewRegistration {
    submission(team).validate().unwrap()
}

fn key(k: &str) -> IdempotencyKey {
    IdempotencyKey::parse(k.into()).unwrap()
}

/// Rows of teams, players, team_logos, idempotency_keys and jobs.
async fn rows(db: &TestDb) -> [i64; 5] {
    let mut out = [0; 5];
    for (i, t) in ["teams", "players", "team_logos", "idempotency_keys", "jobs"]
        .iter()
        .enumerate()
    {
        out[i] = db.scalar(&format!("SELECT count(*) FROM {t}")).await;
    }
    out
}

fn created(outcome: Outcome) -> Registered {
    match outcome {
        Outcome::Created(r) => r,
        other => panic!("expected Created, got {other:?}"),
    }
}

#[tokio::test]
async fn a_registration_writes_the_team_and_enqueues_its_two_jobs() {
    let db = TestDb::new().await;
    let r = created(
        register(&db.pool, &settings(), &valid("Lions"), None, Some("req-9"))
            .await
            .unwrap(),
    );
    assert_eq!(r.team_id, "ICCT-001");
    let kinds: Vec<_> = r.jobs.iter().map(|j| j.kind.as_str()).collect();
    assert_eq!(kinds, ["upload_logo", "send_confirmation_email"]);
    assert_eq!(rows(&db).await, [1, 1, 1, 0, 2], "no key, no record");
    let c = db.conn().await;
    for (job, queue) in r.jobs.iter().zip(["uploads", "email"]) {
        let row = c
            .query_one(
                "SELECT queue, args, meta FROM jobs WHERE id = $1",
                &[&job.id],
            )
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), queue);
        assert_eq!(
            row.get::<_, serde_json::Value>(1),
            serde_json::json!({"team_id": "ICCT-001"})
        );
        assert_eq!(
            row.get::<_, serde_json::Value>(2),
            serde_json::json!({"request_id": "req-9", "team_id": "ICCT-001"})
        );
    }
    let request_id: String = db.scalar("SELECT request_id FROM teams").await;
    assert_eq!(request_id, "req-9");
    let linked = domain::registrations::team_job_ids(&c, "ICCT-001")
        .await
        .unwrap();
    let ids: Vec<i64> = r.jobs.iter().map(|j| j.id).collect();
    assert_eq!(linked, ids, "the jobs are linked to their team");
}

#[tokio::test]
async fn the_same_request_with_the_same_key_replays_the_first_answer() {
    let db = TestDb::new().await;
    let k = key("replay-me");
    let first = created(
        register(&db.pool, &settings(), &valid("Lions"), Some(&k), None)
            .await
            .unwrap(),
    );
    assert_eq!(rows(&db).await, [1, 1, 1, 1, 2]);
    // Surrounding whitespace is trimmed away: the same request.
    let mut again = submission("  Lions ");
    again.captain_email = Some(" cap@example.com".into());
    let again = register(
        &db.pool,
        &settings(),
        &again.validate().unwrap(),
        Some(&k),
        Some("req-2"),
    )
    .await
    .unwrap();
    assert_eq!(again, Outcome::Replayed(first));
    assert_eq!(rows(&db).await, [1, 1, 1, 1, 2], "nothing new written");
    // The record keeps the API's 201 answer, field for field.
    let body: serde_json::Value = db.scalar("SELECT body FROM idempotency_keys").await;
    assert_eq!(body["success"], true);
    assert_eq!(body["message"], "Team registered successfully");
    assert_eq!(body["team_id"], "ICCT-001");
}

#[tokio::test]
async fn a_key_reused_with_another_request_is_refused_and_writes_nothing() {
    let db = TestDb::new().await;
    let k = key("used-once");
    created(
        register(&db.pool, &settings(), &valid("Lions"), Some(&k), None)
            .await
            .unwrap(),
    );
    let other = register(&db.pool, &settings(), &valid("Tigers"), Some(&k), None)
        .await
        .unwrap();
    assert_eq!(other, Outcome::KeyReusedWithDifferentRequest);
    assert_eq!(rows(&db).await, [1, 1, 1, 1, 2]);
    // Another key registers the other team.
    let r = created(
        register(
            &db.pool,
            &settings(),
            &valid("Tigers"),
            Some(&key("k2")),
            None,
        )
        .await
        .unwrap(),
    );
    assert_eq!(r.team_id, "ICCT-002");
}

#[tokio::test]
async fn a_failing_enqueue_writes_nothing_and_leaves_the_key_unused() {
    let db = TestDb::new().await;
    db.refuse_writes("jobs").await;
    let k = key("rollback-key");
    let err = register(&db.pool, &settings(), &valid("Lions"), Some(&k), None)
        .await
        .unwrap_err();
    assert!(matches!(err, RegistrationError::Queue(_)), "{err:?}");
    assert_eq!(
        rows(&db).await,
        [0; 5],
        "team, players, logo and key all rolled back"
    );
    let links: i64 = db.scalar("SELECT count(*) FROM team_jobs").await;
    assert_eq!(links, 0);

    db.conn()
        .await
        .batch_execute("DROP TRIGGER refuse_jobs ON jobs")
        .await
        .unwrap();
    let r = created(
        register(&db.pool, &settings(), &valid("Lions"), Some(&k), None)
            .await
            .unwrap(),
    );
    assert_eq!(
        r.team_id, "ICCT-002",
        "the rolled-back number is not reused"
    );
}

#[tokio::test]
async fn every_invalid_field_is_reported_at_once() {
    let mut s = submission("Li");
    s.captain_phone = Some("12345".into());
    s.captain_email = Some("not-an-address".into());
    s.players = Some(r#"[{"name": "", "role": "bowler", "phone": "1"}]"#.into());
    s.logo = Some(b"GIF89a".to_vec());
    let errors = s.validate().unwrap_err();
    let fields: Vec<_> = errors.keys().map(String::as_str).collect();
    assert_eq!(
        fields,
        [
            "captain_email",
            "captain_phone",
            "logo",
            "players[0].name",
            "players[0].phone",
            "team_name"
        ]
    );
    let empty = Submission::default().validate().unwrap_err();
    assert_eq!(empty["players"], "is required");
    assert_eq!(empty["logo"], "is required");
}
