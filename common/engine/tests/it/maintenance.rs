//! The maintenance statements: claiming a pass, pruning, rescuing expired leases, promoting
//! due jobs.

use std::sync::Arc;
use std::time::Duration;

use engine::queue::maintenance::{self, Rescued};
use engine::queue::{AttemptError, JobState, control};
use testkit::TestDb;
use tokio::sync::Barrier;

use testkit::db::pool_of;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_claim_per_interval_among_concurrent_callers() {
    const CALLERS: usize = 5;
    let db = TestDb::new().await;
    let pool = pool_of(&db.url, CALLERS + 1);
    let interval = Duration::from_secs(60);

    let round = || {
        let barrier = Arc::new(Barrier::new(CALLERS));
        let tasks: Vec<_> = (0..CALLERS)
            .map(|i| {
                let pool = pool.clone();
                let barrier = barrier.clone();
                tokio::spawn(async move {
                    let conn = pool.get().await.unwrap();
                    barrier.wait().await;
                    maintenance::claim(&conn, "prune", interval, &format!("w{i}"))
                        .await
                        .unwrap()
                })
            })
            .collect();
        async move {
            let mut won = 0;
            for t in tasks {
                won += usize::from(t.await.unwrap());
            }
            won
        }
    };

    assert_eq!(round().await, 1, "the first pass is claimed once");
    assert_eq!(round().await, 0, "nothing more within the interval");
    let conn = db.conn().await;
    assert_eq!(maintenance::runs(&conn, "prune").await.unwrap(), 1);
    // Another service has its own interval.
    assert!(
        maintenance::claim(&conn, "rescue", interval, "w0")
            .await
            .unwrap()
    );

    // Once the interval has passed, the next pass is claimed once again.
    conn.execute(
        "UPDATE maintenance_runs SET last_run_at = now() - interval '61 seconds' WHERE service = 'prune'",
        &[],
    )
    .await
    .unwrap();
    assert_eq!(round().await, 1);
    assert_eq!(maintenance::runs(&conn, "prune").await.unwrap(), 2);
}

/// Insert a job row directly with `columns` set to `values` (SQL), returning its id.
async fn insert(conn: &deadpool_postgres::Client, columns: &str, values: &str) -> i64 {
    let sql = format!(
        "INSERT INTO jobs (queue, kind, {columns}) VALUES ('m', 'noop', {values}) RETURNING id"
    );
    conn.query_one(&sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

async fn exists(conn: &deadpool_postgres::Client, id: i64) -> bool {
    control::get(conn, id).await.unwrap().is_some()
}

#[tokio::test]
async fn prune_deletes_only_final_jobs_older_than_the_retention() {
    let db = TestDb::new().await;
    let conn = db.conn().await;
    let cols = "state, finished_at";
    let old_completed = insert(&conn, cols, "'completed', now() - interval '2 hours'").await;
    let old_discarded = insert(&conn, cols, "'discarded', now() - interval '3 hours'").await;
    let old_cancelled = insert(&conn, cols, "'cancelled', now() - interval '4 hours'").await;
    let recent = insert(&conn, cols, "'completed', now() - interval '10 minutes'").await;
    let cols = "state, created_at, run_at";
    let old_available = insert(
        &conn,
        cols,
        "'available', now() - interval '1 day', now() - interval '1 day'",
    )
    .await;
    let old_scheduled = insert(
        &conn,
        cols,
        "'scheduled', now() - interval '1 day', now() + interval '1 day'",
    )
    .await;
    let old_retryable = insert(
        &conn,
        cols,
        "'retryable', now() - interval '1 day', now() - interval '1 day'",
    )
    .await;
    let old_running = insert(
        &conn,
        "state, created_at, attempt, attempted_by, lease_expires_at",
        "'running', now() - interval '1 day', 1, 'w', now() - interval '1 hour'",
    )
    .await;

    let retention = Duration::from_secs(3600);
    // Bounded: a pass deletes at most its limit.
    assert_eq!(maintenance::prune(&conn, retention, 2).await.unwrap(), 2);
    assert_eq!(maintenance::prune(&conn, retention, 100).await.unwrap(), 1);
    assert_eq!(maintenance::prune(&conn, retention, 100).await.unwrap(), 0);
    for id in [old_completed, old_discarded, old_cancelled] {
        assert!(!exists(&conn, id).await, "old final job {id} pruned");
    }
    for id in [
        recent,
        old_available,
        old_scheduled,
        old_retryable,
        old_running,
    ] {
        assert!(exists(&conn, id).await, "job {id} kept");
    }
}

#[tokio::test]
async fn rescue_takes_back_expired_leases() {
    let db = TestDb::new().await;
    let conn = db.conn().await;
    let cols = "state, attempt, max_attempts, attempted_by, attempted_at, lease_expires_at";
    let expired = insert(
        &conn,
        cols,
        "'running', 1, 3, 'dead', now() - interval '2 minutes', now() - interval '1 minute'",
    )
    .await;
    let last_attempt = insert(
        &conn,
        cols,
        "'running', 3, 3, 'dead', now() - interval '2 minutes', now() - interval '1 second'",
    )
    .await;
    let leased = insert(
        &conn,
        cols,
        "'running', 1, 3, 'alive', now(), now() + interval '1 minute'",
    )
    .await;

    let rescued = maintenance::rescue(&conn, 100).await.unwrap();
    assert_eq!(
        rescued,
        Rescued {
            retried: 1,
            discarded: 1
        }
    );

    let lease_expired = |errors: &[AttemptError], attempt: i32| {
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].kind, "lease_expired");
        assert_eq!(errors[0].attempt, attempt);
        assert!(errors[0].message.contains("dead"), "{}", errors[0].message);
    };
    let row = control::get(&conn, expired).await.unwrap().unwrap();
    assert_eq!(row.state, JobState::Available);
    assert_eq!(row.attempt, 1, "the lost attempt still counts");
    assert!(row.lease_expires_at.is_none() && row.finished_at.is_none());
    assert!(row.run_at <= chrono::Utc::now());
    lease_expired(&row.errors, 1);

    let row = control::get(&conn, last_attempt).await.unwrap().unwrap();
    assert_eq!(row.state, JobState::Discarded);
    assert!(row.finished_at.is_some() && row.lease_expires_at.is_none());
    lease_expired(&row.errors, 3);

    let row = control::get(&conn, leased).await.unwrap().unwrap();
    assert_eq!(row.state, JobState::Running);
    assert!(row.errors.is_empty());

    assert_eq!(
        maintenance::rescue(&conn, 100).await.unwrap(),
        Rescued::default()
    );
}

#[tokio::test]
async fn promote_makes_due_jobs_available_and_leaves_future_ones() {
    let db = TestDb::new().await;
    let conn = db.conn().await;
    let cols = "state, run_at";
    let due = insert(&conn, cols, "'scheduled', now() - interval '1 second'").await;
    let retry_due = insert(&conn, cols, "'retryable', now() - interval '1 minute'").await;
    let future = insert(&conn, cols, "'scheduled', now() + interval '1 hour'").await;
    let future_at: chrono::DateTime<chrono::Utc> = conn
        .query_one("SELECT run_at FROM jobs WHERE id = $1", &[&future])
        .await
        .unwrap()
        .get(0);

    let (promoted, next) = maintenance::promote_due(&conn, 100).await.unwrap();
    assert_eq!(promoted, 2);
    assert_eq!(next, Some(future_at), "the next one due");
    for id in [due, retry_due] {
        let row = control::get(&conn, id).await.unwrap().unwrap();
        assert_eq!(row.state, JobState::Available, "job {id}");
    }
    let row = control::get(&conn, future).await.unwrap().unwrap();
    assert_eq!(row.state, JobState::Scheduled);

    assert_eq!(
        maintenance::promote_due(&conn, 100).await.unwrap(),
        (0, Some(future_at))
    );
}
