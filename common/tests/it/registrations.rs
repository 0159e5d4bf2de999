//! Registrations: teams with race-safe ids, players, logo bytes, idempotency records.

use std::time::Duration;

use common::queue::{NewJob, admin, enqueue};
use common::registrations::{
    self as reg, LogoState, NewLogo, NewTeam, Player, REGISTRATION_SCOPE as SCOPE,
};
use common::testing::TestDb;

const PNG: &[u8] = b"\x89PNG\r\n\x1a\nfake";

fn players(n: usize) -> Vec<Player> {
    (1..=n)
        .map(|i| Player {
            name: format!("Player {i}"),
            role: "batter".into(),
            phone: format!("98765432{i:02}"),
        })
        .collect()
}

fn team<'a>(name: &'a str, players: &'a [Player]) -> NewTeam<'a> {
    NewTeam {
        team_name: name,
        church_name: "St Mark's",
        captain_name: "Cap Tain",
        coach_name: "Co Ach",
        captain_phone: "9876543210",
        captain_whatsapp: "9876543211",
        captain_email: "cap@example.com",
        players,
        logo: NewLogo {
            content_type: "image/png",
            bytes: PNG,
            sha256: &[7; 32],
        },
        request_id: Some("req-1"),
    }
}

#[tokio::test]
async fn a_team_is_stored_with_its_players_and_logo_under_a_sequential_id() {
    let db = TestDb::new().await;
    let c = db.conn().await;
    let ps = players(3);
    let first = reg::insert_team(&c, "ICCT", &team("Lions", &ps))
        .await
        .unwrap();
    let second = reg::insert_team(&c, "ICCT", &team("Tigers", &ps[..1]))
        .await
        .unwrap();
    assert_eq!(first.team_id, "ICCT-001");
    assert_eq!(second.team_id, "ICCT-002");

    let t = reg::team(&c, "ICCT-001").await.unwrap().unwrap();
    assert_eq!(t.team_name, "Lions");
    assert_eq!(t.players, ps);
    assert!(t.logo_pending);
    assert_eq!(t.logo_url, None);
    assert!(reg::team(&c, "ICCT-404").await.unwrap().is_none());
    let sizes: i64 = db
        .scalar("SELECT count(*) FROM team_logos WHERE size = 12")
        .await;
    assert_eq!(sizes, 2);
}

#[tokio::test]
async fn ids_widen_past_999() {
    let db = TestDb::new().await;
    let c = db.conn().await;
    c.execute("SELECT setval('teams_number_seq', 998)", &[])
        .await
        .unwrap();
    let ps = players(1);
    let a = reg::insert_team(&c, "X", &team("Lions", &ps))
        .await
        .unwrap();
    let b = reg::insert_team(&c, "X", &team("Lions", &ps))
        .await
        .unwrap();
    assert_eq!(
        (a.team_id.as_str(), b.team_id.as_str()),
        ("X-999", "X-1000")
    );
    assert!(reg::is_team_id(&b.team_id));
}

#[tokio::test]
async fn concurrent_registrations_get_distinct_ids() {
    let db = TestDb::new().await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..30 {
        let pool = db.pool.clone();
        tasks.spawn(async move {
            let mut c = pool.get().await.unwrap();
            let tx = c.transaction().await.unwrap();
            let ps = players(2);
            let name = format!("Team {i}");
            let r = reg::insert_team(&tx, "ICCT", &team(&name, &ps))
                .await
                .unwrap();
            tx.commit().await.unwrap();
            r.team_id
        });
    }
    let mut ids = tasks.join_all().await;
    ids.sort();
    let want: Vec<String> = (1..=30).map(|n| format!("ICCT-{n:03}")).collect();
    assert_eq!(ids, want);
}

#[tokio::test]
async fn a_rolled_back_registration_leaves_no_rows_and_the_next_id_is_not_reused() {
    let db = TestDb::new().await;
    let mut c = db.conn().await;
    let ps = players(2);
    let tx = c.transaction().await.unwrap();
    reg::insert_team(&tx, "ICCT", &team("Lions", &ps))
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    let rows: i64 = db
        .scalar(
            "SELECT (SELECT count(*) FROM teams) + (SELECT count(*) FROM players)
                  + (SELECT count(*) FROM team_logos)",
        )
        .await;
    assert_eq!(rows, 0);
    let next = reg::insert_team(&c, "ICCT", &team("Lions", &ps))
        .await
        .unwrap();
    assert_eq!(next.team_id, "ICCT-002");
}

#[tokio::test]
async fn the_schema_refuses_what_validation_should_have_caught() {
    let db = TestDb::new().await;
    let c = db.conn().await;
    let mut t = team("Lions", &[]);
    t.captain_phone = "12345";
    assert!(reg::insert_team(&c, "ICCT", &t).await.is_err());
    let too_many = players(21);
    assert!(
        reg::insert_team(&c, "ICCT", &team("Lions", &too_many))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn a_stored_logo_sets_the_url_and_drops_the_bytes() {
    let db = TestDb::new().await;
    let c = db.conn().await;
    let ps = players(1);
    reg::insert_team(&c, "ICCT", &team("Lions", &ps))
        .await
        .unwrap();
    assert_eq!(
        reg::logo(&c, "ICCT-001").await.unwrap(),
        LogoState::Pending {
            content_type: "image/png".into(),
            bytes: PNG.to_vec()
        }
    );
    assert!(
        reg::logo_stored(&c, "ICCT-001", "/files/icct-001.png")
            .await
            .unwrap()
    );
    assert_eq!(
        reg::logo(&c, "ICCT-001").await.unwrap(),
        LogoState::Stored(Some("/files/icct-001.png".into()))
    );
    let t = reg::team(&c, "ICCT-001").await.unwrap().unwrap();
    assert!(!t.logo_pending);
    assert_eq!(reg::logo(&c, "ICCT-404").await.unwrap(), LogoState::NoTeam);
    assert!(!reg::logo_stored(&c, "ICCT-404", "/x").await.unwrap());
}

#[tokio::test]
async fn teams_list_newest_first_by_cursor() {
    let db = TestDb::new().await;
    let c = db.conn().await;
    let ps = players(1);
    for _ in 0..5 {
        reg::insert_team(&c, "ICCT", &team("Lions", &ps))
            .await
            .unwrap();
    }
    let page = reg::list_teams(&c, None, 2).await.unwrap();
    let ids: Vec<_> = page.iter().map(|t| t.team_id.as_str()).collect();
    assert_eq!(ids, ["ICCT-005", "ICCT-004"]);
    let page = reg::list_teams(&c, Some(page[1].number), 10).await.unwrap();
    let ids: Vec<_> = page.iter().map(|t| t.team_id.as_str()).collect();
    assert_eq!(ids, ["ICCT-003", "ICCT-002", "ICCT-001"]);
}

#[tokio::test]
async fn a_team_s_jobs_are_found_by_the_id_in_their_args() {
    let db = TestDb::new().await;
    let c = db.conn().await;
    for (kind, team) in [
        ("upload_logo", "ICCT-001"),
        ("send_confirmation_email", "ICCT-001"),
        ("upload_logo", "ICCT-002"),
    ] {
        enqueue(
            &c,
            &NewJob::unchecked(kind, serde_json::json!({ "team_id": team })),
        )
        .await
        .unwrap();
    }
    let jobs = admin::team_jobs(&c, "ICCT-001").await.unwrap();
    let kinds: Vec<_> = jobs.iter().map(|j| j.kind.as_str()).collect();
    assert_eq!(kinds, ["upload_logo", "send_confirmation_email"]);
    c.execute("SET enable_seqscan = off", &[]).await.unwrap();
    let plan: Vec<String> = c
        .query(
            "EXPLAIN SELECT id FROM jobs j WHERE j.args ? 'team_id' AND j.args ->> 'team_id' = 'ICCT-001'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(plan.join(" ").contains("jobs_team_id_idx"), "{plan:?}");
}

#[tokio::test]
async fn one_key_one_answer_and_concurrent_claims_wait_for_the_first() {
    let db = TestDb::new().await;
    let ttl = Duration::from_secs(3600);
    let mut a = db.conn().await;
    let tx = a.transaction().await.unwrap();
    assert!(
        reg::claim_key(&tx, SCOPE, "k1", &[1; 32], ttl)
            .await
            .unwrap()
    );

    // A second claim of the same key blocks until the first transaction ends.
    let pool = db.pool.clone();
    let second = tokio::spawn(async move {
        let mut b = pool.get().await.unwrap();
        let tx = b.transaction().await.unwrap();
        let claimed = reg::claim_key(&tx, SCOPE, "k1", &[2; 32], ttl)
            .await
            .unwrap();
        let record = reg::key_record(&tx, SCOPE, "k1").await.unwrap();
        tx.rollback().await.unwrap();
        (claimed, record)
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!second.is_finished(), "the second claim must wait");

    let body = serde_json::json!({"team_id": "ICCT-001"});
    reg::store_answer(&tx, SCOPE, "k1", 201, &body)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let (claimed, record) = second.await.unwrap();
    assert!(!claimed);
    let record = record.unwrap();
    assert_eq!(
        (record.fingerprint, record.status, record.body),
        (vec![1; 32], 201, body)
    );
    // Another scope is another key.
    let c = db.conn().await;
    assert!(
        reg::claim_key(&c, "other", "k1", &[1; 32], ttl)
            .await
            .unwrap()
    );
}

#[tokio::test]
async fn an_expired_key_is_claimed_afresh_and_pruned() {
    let db = TestDb::new().await;
    let c = db.conn().await;
    let ttl = Duration::from_secs(3600);
    assert!(reg::claim_key(&c, SCOPE, "k", &[1; 32], ttl).await.unwrap());
    reg::store_answer(&c, SCOPE, "k", 201, &serde_json::json!({}))
        .await
        .unwrap();
    assert!(!reg::claim_key(&c, SCOPE, "k", &[1; 32], ttl).await.unwrap());
    c.execute(
        "UPDATE idempotency_keys SET created_at = now() - interval '2 hours'",
        &[],
    )
    .await
    .unwrap();
    assert!(reg::claim_key(&c, SCOPE, "k", &[3; 32], ttl).await.unwrap());
    // An unanswered claim is no record.
    assert!(reg::key_record(&c, SCOPE, "k").await.unwrap().is_none());
    c.execute(
        "UPDATE idempotency_keys SET created_at = now() - interval '2 hours'",
        &[],
    )
    .await
    .unwrap();
    assert_eq!(reg::prune_keys(&c, ttl, 10).await.unwrap(), 1);
}

#[tokio::test]
async fn keys_are_pruned_oldest_first_in_bounded_batches() {
    let db = TestDb::new().await;
    let c = db.conn().await;
    let ttl = Duration::from_secs(3600);
    for (key, age_hours) in [("old-3", 3), ("old-2", 2), ("old-1", 1), ("fresh", 0)] {
        c.execute(
            "INSERT INTO idempotency_keys (scope, key, fingerprint, status, body, created_at)
             VALUES ($1, $2, $3, 201, '{}', now() - $4::int * interval '1 hour'
                                                     - interval '1 minute')",
            &[&SCOPE, &key, &vec![1u8; 32], &age_hours],
        )
        .await
        .unwrap();
    }
    let left = || async {
        let rows = db
            .conn()
            .await
            .query("SELECT key FROM idempotency_keys ORDER BY key", &[])
            .await
            .unwrap();
        rows.iter().map(|r| r.get(0)).collect::<Vec<String>>()
    };
    // The fresh key is a minute old: under the TTL.
    assert_eq!(reg::prune_keys(&c, ttl, 1).await.unwrap(), 1);
    assert_eq!(
        left().await,
        ["fresh", "old-1", "old-2"],
        "the oldest went first"
    );
    assert_eq!(reg::prune_keys(&c, ttl, 10).await.unwrap(), 2);
    assert_eq!(left().await, ["fresh"]);
    assert_eq!(reg::prune_keys(&c, ttl, 10).await.unwrap(), 0);
}
