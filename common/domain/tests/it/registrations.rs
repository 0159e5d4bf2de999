//! Registrations: teams with race-safe ids, players, logo bytes, idempotency records.

use std::time::Duration;

use domain::registrations::{
    self as reg, LogoState, NewLogo, NewTeam, Player, REGISTRATION_SCOPE as SCOPE,
};
use engine::queue::{NewJob, admin, enqueue};
use testkit::TestDb;

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
        reg::logo_stored(&c, "ICCT-001", "/files/icct-001.png", false)
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
    assert!(!reg::logo_stored(&c, "ICCT-404", "/x", false).await.unwrap());
    let left: i64 = db.scalar("SELECT count(*) FROM team_logos").await;
    assert_eq!(left, 0, "the bytes went with the upload");
}

#[tokio::test]
async fn bytes_kept_after_an_upload_are_not_uploaded_again_and_go_with_the_clean_up() {
    let db = TestDb::new().await;
    let c = db.conn().await;
    let ps = players(1);
    reg::insert_team(&c, "ICCT", &team("Lions", &ps))
        .await
        .unwrap();
    assert!(
        reg::logo_stored(&c, "ICCT-001", "/files/icct-001.png", true)
            .await
            .unwrap()
    );
    // The URL says it is done: a retried upload stores nothing again, and admins see no
    // logo pending, though the bytes are still there.
    assert_eq!(
        reg::logo(&c, "ICCT-001").await.unwrap(),
        LogoState::Stored(Some("/files/icct-001.png".into()))
    );
    assert!(
        !reg::team(&c, "ICCT-001")
            .await
            .unwrap()
            .unwrap()
            .logo_pending
    );
    let kept: i64 = db.scalar("SELECT count(*) FROM team_logos").await;
    assert_eq!(kept, 1);
    // Within the retention they stay; past it (no upload running) the clean-up drops them.
    let hour = std::time::Duration::from_secs(3600);
    assert_eq!(reg::prune_logos(&c, hour, 100).await.unwrap(), 0);
    assert_eq!(
        reg::prune_logos(&c, std::time::Duration::ZERO, 100)
            .await
            .unwrap(),
        1
    );
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
async fn a_team_s_jobs_are_found_through_their_links_not_their_args() {
    let db = TestDb::new().await;
    let c = db.conn().await;
    let ps = players(1);
    for name in ["Lions", "Tigers"] {
        reg::insert_team(&c, "ICCT", &team(name, &ps))
            .await
            .unwrap();
    }
    let mut ids = Vec::new();
    for (kind, team) in [
        ("upload_logo", "ICCT-001"),
        ("send_confirmation_email", "ICCT-001"),
        ("upload_logo", "ICCT-002"),
        // Names the team in its args but was never linked to it: not the team's.
        ("upload_logo", "ICCT-001"),
    ] {
        let id = enqueue(
            &c,
            &NewJob::unchecked(kind, serde_json::json!({ "team_id": team })),
        )
        .await
        .unwrap()
        .id;
        ids.push((id, kind, team));
    }
    for (id, kind, team) in &ids[..3] {
        assert_eq!(reg::link_jobs(&c, team, &[(*id, kind)]).await.unwrap(), 1);
    }
    assert_eq!(
        reg::link_jobs(&c, "ICCT-404", &[(ids[3].0, "upload_logo")])
            .await
            .unwrap(),
        0,
        "no team, no link"
    );
    let linked = reg::team_job_ids(&c, "ICCT-001").await.unwrap();
    assert_eq!(linked, [ids[0].0, ids[1].0]);
    let jobs = admin::jobs_by_ids(&c, &linked).await.unwrap();
    let kinds: Vec<_> = jobs.iter().map(|j| j.kind.as_str()).collect();
    assert_eq!(kinds, ["upload_logo", "send_confirmation_email"]);
    // A job the engine prunes leaves its link dangling, and the read skips it.
    c.execute("DELETE FROM jobs WHERE id = $1", &[&ids[0].0])
        .await
        .unwrap();
    let linked = reg::team_job_ids(&c, "ICCT-001").await.unwrap();
    let jobs = admin::jobs_by_ids(&c, &linked).await.unwrap();
    let kinds: Vec<_> = jobs.iter().map(|j| j.kind.as_str()).collect();
    assert_eq!(kinds, ["send_confirmation_email"]);
    let index: i64 = db
        .scalar("SELECT count(*) FROM pg_indexes WHERE indexname = 'jobs_team_id_idx'")
        .await;
    assert_eq!(index, 0, "jobs carries no index on the application's args");
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

/// An `upload_logo` job of `team_id` in `state`, finished `hours_ago` if final.
async fn upload_job(db: &TestDb, team_id: &str, state: &str, hours_ago: i32) -> i64 {
    let c = db.conn().await;
    let job = NewJob::from_json(
        &domain::jobs::upload_logo::SPEC,
        serde_json::json!({ "team_id": team_id }),
    )
    .unwrap();
    let id = enqueue(&c, &job).await.unwrap().id;
    reg::link_jobs(&c, team_id, &[(id, "upload_logo")])
        .await
        .unwrap();
    c.execute(
        "UPDATE jobs SET state = $2::text::job_state,
                attempt = CASE WHEN $2 = 'available' THEN 0 ELSE 1 END,
                attempted_by = CASE WHEN $2 = 'running' THEN 'w' END,
                lease_expires_at = CASE WHEN $2 = 'running' THEN now() + interval '1 hour' END,
                run_at = CASE WHEN $2 = 'retryable' THEN now() + interval '1 hour' ELSE run_at END,
                finished_at = CASE WHEN $2 IN ('completed', 'discarded', 'cancelled')
                                   THEN now() - $3::int * interval '1 hour' END
          WHERE id = $1",
        &[&id, &state, &hours_ago],
    )
    .await
    .unwrap();
    id
}

#[tokio::test]
async fn logo_bytes_go_only_once_no_upload_can_use_them() {
    let db = TestDb::new().await;
    let c = db.conn().await;
    let ps = players(1);
    let retention = Duration::from_secs(168 * 3600);
    // (team, its upload jobs as (state, finished hours ago), whether the bytes may go)
    type Case = (&'static str, &'static [(&'static str, i32)], bool);
    let cases: &[Case] = &[
        ("Fresh", &[("discarded", 200)], false),
        ("Waiting", &[("available", 0)], false),
        ("Backing off", &[("retryable", 0)], false),
        ("Uploading", &[("running", 0)], false),
        ("Given up", &[("discarded", 200)], true),
        ("Cancelled", &[("cancelled", 170)], true),
        ("Just discarded", &[("discarded", 1)], false),
        ("Orphaned", &[], true),
        (
            "Tried again",
            &[("discarded", 200), ("available", 0)],
            false,
        ),
        ("Retried", &[("discarded", 200)], false),
    ];
    for (name, jobs, _) in cases {
        let id = reg::insert_team(&c, "ICCT", &team(name, &ps))
            .await
            .unwrap()
            .team_id;
        for (state, hours) in *jobs {
            upload_job(&db, &id, state, *hours).await;
        }
    }
    // All but the first logo are older than the retention.
    c.execute(
        "UPDATE team_logos SET created_at = now() - interval '169 hours' WHERE team_number > 1",
        &[],
    )
    .await
    .unwrap();
    // An operator retries the last team's discarded upload: its bytes are needed again.
    let retried: i64 = db
        .scalar("SELECT max(id) FROM jobs WHERE args->>'team_id' = 'ICCT-010'")
        .await;
    assert!(engine::queue::control::retry(&c, retried).await.unwrap());

    let pending = || async {
        let rows = db
            .conn()
            .await
            .query(
                "SELECT t.team_name FROM team_logos l JOIN teams t ON t.number = l.team_number
                  ORDER BY l.team_number",
                &[],
            )
            .await
            .unwrap();
        rows.iter().map(|r| r.get(0)).collect::<Vec<String>>()
    };
    let kept: Vec<&str> = cases
        .iter()
        .filter(|(_, _, goes)| !goes)
        .map(|(n, _, _)| *n)
        .collect();
    // Bounded: one at a time, then the rest.
    assert_eq!(reg::prune_logos(&c, retention, 1).await.unwrap(), 1);
    assert_eq!(reg::prune_logos(&c, retention, 10).await.unwrap(), 2);
    assert_eq!(pending().await, kept);
    assert_eq!(reg::prune_logos(&c, retention, 10).await.unwrap(), 0);
    // The team stays, without a logo.
    let t = reg::team(&c, "ICCT-005").await.unwrap().unwrap();
    assert_eq!(
        (t.team_name.as_str(), t.logo_pending, t.logo_url),
        ("Given up", false, None)
    );
    assert_eq!(t.players, ps);
}
