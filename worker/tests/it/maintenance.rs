//! Maintenance across several workers: each pass once per interval, each periodic tick once,
//! and the fence that refuses a rescued job's stale outcome.

use std::sync::Arc;
use std::time::{Duration, Instant};

use engine::queue::maintenance::{enqueue_tick, rescue, runs};
use engine::queue::outcome::{AttemptOutcome, Outcome, record};
use engine::queue::{JobOptions, JobState, NewJob, control, fetch};
use serde_json::json;
use testkit::{TestDb, wait_for};

use testkit::process::Process;

use crate::harness::{enqueue_noop, fast_env, wait_count, with_env, worker};

#[tokio::test]
async fn each_maintenance_pass_runs_once_per_interval_across_three_workers() {
    let db = TestDb::new().await;
    let env = with_env(fast_env(&db.url), "WORKER_PRUNE_INTERVAL_MS", "500");
    // Every pass that can ever be counted happens after this instant.
    let start = Instant::now();
    let procs: Vec<Process> = (0..3).map(|_| worker(&env, &[])).collect();
    wait_count(
        &db,
        "SELECT count(*) FROM workers",
        3,
        Duration::from_secs(20),
    )
    .await;
    // All three race for every pass for a while (each tries four times per interval).
    tokio::time::sleep(Duration::from_secs(3)).await;

    let c = db.conn().await;
    let counts = (
        runs(&c, "pruner").await.unwrap(),
        runs(&c, "rescuer").await.unwrap(),
        runs(&c, "scheduler").await.unwrap(),
    );
    let elapsed = start.elapsed().as_millis() as i64;
    // Passes are at least an interval apart (by the database's clock), so at most one more
    // than the intervals that fit in the time since the first worker started.
    let most = |interval_ms: i64| elapsed / interval_ms + 1;
    let (pruner, rescuer, scheduler) = counts;
    assert!(
        (2..=most(500)).contains(&pruner),
        "pruner ran {pruner} times in {elapsed} ms"
    );
    assert!(
        (1..=most(300)).contains(&rescuer),
        "rescuer ran {rescuer} times in {elapsed} ms"
    );
    assert!(
        (1..=most(100)).contains(&scheduler),
        "scheduler ran {scheduler} times in {elapsed} ms"
    );
    drop(procs);
}

#[tokio::test]
async fn a_periodic_job_is_enqueued_once_per_tick_by_three_workers() {
    let db = TestDb::new().await;
    let env = with_env(
        fast_env(&db.url),
        "PERIODIC_JOBS",
        r#"[{"name":"tick","cron":"* * * * * *","kind":"noop","args":{}}]"#,
    );
    let procs: Vec<Process> = (0..3).map(|_| worker(&env, &[])).collect();
    wait_count(
        &db,
        "SELECT count(*) FROM workers",
        3,
        Duration::from_secs(20),
    )
    .await;
    // About four ticks with all three racing for each.
    wait_for("four ticks", Duration::from_secs(20), || async {
        let n: i64 = db
            .scalar("SELECT count(*) FROM periodic_ticks WHERE name = 'tick'")
            .await;
        (n >= 4).then_some(())
    })
    .await;
    for p in &procs {
        p.signal("-TERM");
    }
    for p in procs {
        assert_eq!(p.wait(Duration::from_secs(10)).await, Some(0));
    }

    let row = db
        .conn()
        .await
        .query_one(
            "SELECT (SELECT count(*) FROM periodic_ticks WHERE name = 'tick'),
                    (SELECT count(*) FROM jobs WHERE meta->'periodic'->>'schedule' = 'tick'),
                    (SELECT count(DISTINCT meta->'periodic'->>'tick') FROM jobs
                      WHERE meta->'periodic'->>'schedule' = 'tick'),
                    (SELECT count(*) FROM periodic_ticks t JOIN jobs j ON j.id = t.job_id
                      WHERE t.name = 'tick' AND j.kind = 'noop'
                        AND (j.meta->'periodic'->>'tick')::timestamptz = t.tick_at),
                    (SELECT count(*) FROM jobs)",
            &[],
        )
        .await
        .unwrap();
    let (ticks, jobs, distinct, matched, all): (i64, i64, i64, i64, i64) =
        (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
    assert!(ticks >= 4, "{ticks} ticks");
    assert_eq!(jobs, ticks, "one job per tick");
    assert_eq!(distinct, jobs, "no tick has two jobs");
    assert_eq!(matched, ticks, "each tick names its own job");
    assert_eq!(all, jobs, "no stray jobs");
}

#[tokio::test]
async fn a_stale_workers_late_outcome_is_refused_after_a_rescue() {
    let db = TestDb::new().await;
    let c = db.conn().await;
    let queue: Arc<str> = "default".into();
    let id = enqueue_noop(&db, json!({}), JobOptions::default()).await;

    let a = fetch::fetch(&c, &queue, "A", Duration::from_secs(1), 10)
        .await
        .unwrap();
    assert_eq!(a.len(), 1);
    assert_eq!((a[0].id, a[0].attempt), (id, 1));
    // A stalls; once its lease has run out, the rescuer takes the job back.
    wait_for("the rescue", Duration::from_secs(10), || async {
        let r = rescue(&c, 100).await.unwrap();
        (r.retried == 1).then_some(())
    })
    .await;
    let b = fetch::fetch(&c, &queue, "B", Duration::from_secs(30), 10)
        .await
        .unwrap();
    assert_eq!(b.len(), 1);
    assert_eq!((b[0].id, b[0].attempt), (id, 2));

    // A wakes up and reports its attempt: every write of A's is refused.
    let late = |attempt, outcome| AttemptOutcome {
        id,
        attempt,
        outcome,
    };
    let done = |r: serde_json::Value| Outcome::Completed(Some(r));
    assert_eq!(
        record(&c, "A", &[late(1, done(json!("A")))]).await.unwrap(),
        0
    );
    assert_eq!(
        record(&c, "A", &[late(2, done(json!("A")))]).await.unwrap(),
        0,
        "not even with B's attempt number"
    );
    assert_eq!(
        fetch::renew_leases(&c, &[id], "A", Duration::from_secs(60))
            .await
            .unwrap(),
        0
    );
    assert_eq!(fetch::hand_back(&c, &[id], "A").await.unwrap(), 0);
    let j = control::get(&c, id).await.unwrap().unwrap();
    assert_eq!(
        (j.state, j.attempt, j.attempted_by.as_deref(), j.result),
        (JobState::Running, 2, Some("B"), None)
    );
    assert_eq!(j.errors.len(), 1);
    assert_eq!(
        (j.errors[0].kind.as_str(), j.errors[0].attempt),
        ("lease_expired", 1)
    );

    // B's completion lands.
    assert_eq!(
        record(&c, "B", &[late(2, done(json!("B")))]).await.unwrap(),
        1
    );
    let j = control::get(&c, id).await.unwrap().unwrap();
    assert_eq!(
        (j.state, j.attempt, j.attempted_by.as_deref(), j.result),
        (JobState::Completed, 2, Some("B"), Some(json!("B")))
    );
}

#[tokio::test]
async fn a_tick_enqueues_one_job_even_after_that_job_finished() {
    let db = TestDb::new().await;
    let mut c = db.conn().await;
    let tick = chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap();
    let job = |tick: chrono::DateTime<chrono::Utc>| {
        let mut j = NewJob::from_json(&engine::jobs::noop::SPEC, json!({})).unwrap();
        j.opts.unique_key = Some(format!("cron:t:{}", tick.timestamp()));
        j
    };
    let first = enqueue_tick(&mut c, "t", tick, &job(tick))
        .await
        .unwrap()
        .expect("the first enqueue of a tick wins");
    // While the job is unfinished, and after it has finished (its unique key is free again),
    // the tick is taken.
    assert_eq!(
        enqueue_tick(&mut c, "t", tick, &job(tick)).await.unwrap(),
        None
    );
    let queue: Arc<str> = "default".into();
    let fetched = fetch::fetch(&c, &queue, "A", Duration::from_secs(30), 10)
        .await
        .unwrap();
    assert_eq!(fetched.len(), 1);
    let done = AttemptOutcome {
        id: first,
        attempt: 1,
        outcome: Outcome::Completed(None),
    };
    assert_eq!(record(&c, "A", &[done]).await.unwrap(), 1);
    assert_eq!(
        enqueue_tick(&mut c, "t", tick, &job(tick)).await.unwrap(),
        None
    );
    let jobs: i64 = db.scalar("SELECT count(*) FROM jobs").await;
    assert_eq!(jobs, 1);

    let next = tick + chrono::Duration::seconds(1);
    let second = enqueue_tick(&mut c, "t", next, &job(next)).await.unwrap();
    assert!(second.is_some_and(|id| id != first));
}

#[tokio::test]
async fn workers_that_stop_heartbeating_age_out() {
    let db = TestDb::new().await;
    db.conn()
        .await
        .execute(
            "INSERT INTO workers (id, host, pid, queues, concurrency, heartbeat_at)
             VALUES ('gone', 'h', 1, '{default}', 1, now() - interval '1 hour')",
            &[],
        )
        .await
        .unwrap();
    let env = with_env(fast_env(&db.url), "WORKER_TTL_MS", "1000");
    let w = crate::harness::InProcess::start(&env, "default", 1);
    wait_count(
        &db,
        "SELECT count(*) FROM workers WHERE id = 'gone'",
        0,
        Duration::from_secs(10),
    )
    .await;
    // The live worker heartbeats (every third of its 2 s lease) and stays.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let live: i64 = db.scalar("SELECT count(*) FROM workers").await;
    assert_eq!(live, 1);
    w.shutdown().await;
    let after: i64 = db.scalar("SELECT count(*) FROM workers").await;
    assert_eq!(after, 0, "a worker removes its own row when it stops");
}

/// Insert a committed idempotency record `age_secs` old.
async fn key(db: &TestDb, key: &str, age_secs: i32) {
    db.conn()
        .await
        .execute(
            "INSERT INTO idempotency_keys (scope, key, fingerprint, status, body, created_at)
             VALUES ('registration', $1, $2, 201, '{}', now() - $3::int * interval '1 second')",
            &[&key, &vec![1u8; 32], &age_secs],
        )
        .await
        .unwrap();
}

async fn keys_left(db: &TestDb) -> Vec<String> {
    db.conn()
        .await
        .query("SELECT key FROM idempotency_keys ORDER BY key", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test]
async fn expired_idempotency_keys_are_pruned_and_fresh_ones_stay() {
    let db = TestDb::new().await;
    let ttl = Duration::from_secs(3600);
    key(&db, "expired-a", 3 * 3600).await;
    key(&db, "expired-b", 3600 + 60).await;
    key(&db, "fresh", 3600 - 60).await;
    let n = worker::housekeeping::keys::run_once(db.conn().await, ttl)
        .await
        .unwrap();
    assert_eq!(n, 2);
    assert_eq!(keys_left(&db).await, ["fresh"]);

    // A running worker does it by itself, with IDEMPOTENCY_TTL, at the pruner's interval.
    key(&db, "expired-c", 2 * 3600).await;
    let env = with_env(fast_env(&db.url), "WORKER_PRUNE_INTERVAL_MS", "200");
    let env = with_env(env, "IDEMPOTENCY_TTL", "3600");
    let w = crate::harness::InProcess::start(&env, "default", 1);
    wait_count(
        &db,
        "SELECT count(*) FROM idempotency_keys WHERE key = 'expired-c'",
        0,
        Duration::from_secs(20),
    )
    .await;
    w.shutdown().await;
    assert_eq!(keys_left(&db).await, ["fresh"]);
    assert!(runs(&db.conn().await, "keys").await.unwrap() >= 1);
}

#[tokio::test]
async fn a_worker_drops_the_logo_bytes_of_an_abandoned_upload_and_keeps_a_pending_ones() {
    let db = TestDb::new().await;
    let c = db.conn().await;
    let mut ids = Vec::new();
    for name in ["Given Up", "Waiting"] {
        let team_id = testkit::fixtures::insert_team(&db, name).await;
        let job = NewJob::from_json(
            &domain::jobs::upload_logo::SPEC,
            json!({ "team_id": team_id }),
        )
        .unwrap();
        let id = engine::queue::enqueue(&c, &job).await.unwrap().id;
        domain::registrations::link_jobs(&c, &team_id, &[(id, "upload_logo")])
            .await
            .unwrap();
        ids.push(id);
    }
    // Both registered two hours ago; the first team's upload was cancelled an hour ago, the
    // second's still waits for a worker serving `uploads` (none here).
    assert_eq!(
        control::cancel(&c, ids[0]).await.unwrap(),
        Some(JobState::Available),
        "cancelled while it waited"
    );
    c.batch_execute(
        "UPDATE team_logos SET created_at = now() - interval '2 hours';
         UPDATE jobs SET finished_at = now() - interval '1 hour' WHERE state = 'cancelled'",
    )
    .await
    .unwrap();
    let env = with_env(fast_env(&db.url), "WORKER_PRUNE_INTERVAL_MS", "200");
    let env = with_env(env, "LOGO_RETENTION_HOURS", "1");
    let w = crate::harness::InProcess::start(&env, "default", 1);
    wait_count(
        &db,
        "SELECT count(*) FROM team_logos WHERE team_number = 1",
        0,
        Duration::from_secs(20),
    )
    .await;
    w.shutdown().await;
    let left: i64 = db
        .scalar("SELECT count(*) FROM team_logos WHERE team_number = 2")
        .await;
    assert_eq!(left, 1, "the pending upload keeps its bytes");
    assert!(runs(&db.conn().await, "logos").await.unwrap() >= 1);
}

#[tokio::test]
async fn a_running_worker_folds_job_count_changes_into_their_totals() {
    let db = TestDb::new().await;
    for n in 0..5 {
        enqueue_noop(&db, json!({ "result": n }), JobOptions::default()).await;
    }
    let pending: i64 = db.scalar("SELECT count(*) FROM job_count_deltas").await;
    assert!(pending > 0, "each enqueue records its change");
    let env = with_env(fast_env(&db.url), "WORKER_COUNT_INTERVAL_MS", "100");
    let w = crate::harness::InProcess::start(&env, "default", 4);
    // The jobs run, and the counter folds every change: the totals alone say 5 completed.
    wait_count(
        &db,
        "SELECT coalesce(sum(n), 0)::bigint FROM job_counts WHERE state = 'completed'",
        5,
        Duration::from_secs(10),
    )
    .await;
    wait_count(
        &db,
        "SELECT count(*) FROM job_count_deltas",
        0,
        Duration::from_secs(10),
    )
    .await;
    w.shutdown().await;
}
