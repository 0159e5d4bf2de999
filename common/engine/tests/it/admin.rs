//! Operator reads and bulk actions (`queue::admin`).

use engine::queue::admin::{self, JobFilter, QueueDepth};
use engine::queue::outcome::{self, AttemptOutcome, Outcome};
use engine::queue::{JobState, control, enqueue, fetch};
use testkit::TestDb;

use crate::support::{job, unique_job};

#[tokio::test]
async fn depth_counts_jobs_by_queue_and_state() {
    let db = TestDb::new().await;
    let conn = db.conn().await;
    assert!(admin::depth(&conn).await.unwrap().is_empty());
    for n in 0..3 {
        enqueue(&conn, &job("a", n)).await.unwrap();
    }
    let cancelled = enqueue(&conn, &job("a", 9)).await.unwrap();
    control::cancel(&conn, cancelled.id).await.unwrap();
    enqueue(&conn, &job("b", 1)).await.unwrap();
    assert_eq!(
        admin::depth(&conn).await.unwrap(),
        vec![
            QueueDepth {
                queue: "a".into(),
                state: JobState::Available,
                count: 3
            },
            QueueDepth {
                queue: "a".into(),
                state: JobState::Cancelled,
                count: 1
            },
            QueueDepth {
                queue: "b".into(),
                state: JobState::Available,
                count: 1
            },
        ]
    );
}

async fn finish(db: &TestDb, id: i64, state: &str) {
    db.conn()
        .await
        .execute(
            "UPDATE jobs SET state = $2::text::job_state, finished_at = now() WHERE id = $1",
            &[&id, &state],
        )
        .await
        .unwrap();
}

fn tagged(queue: &str, n: i64, tag: &str) -> engine::queue::NewJob {
    let mut j = job(queue, n);
    j.opts.tags = vec![tag.to_owned()];
    j
}

#[tokio::test]
async fn list_jobs_filters_and_pages_newest_first() {
    let db = TestDb::new().await;
    let conn = db.conn().await;
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(enqueue(&conn, &tagged("a", n, "red")).await.unwrap().id);
    }
    let other = enqueue(&conn, &tagged("b", 9, "blue")).await.unwrap().id;
    let all = JobFilter::default();
    let page1 = admin::list_jobs(&conn, &all, None, 4).await.unwrap();
    let got: Vec<i64> = page1.iter().map(|j| j.id).collect();
    assert_eq!(got, vec![other, ids[4], ids[3], ids[2]]);
    let page2 = admin::list_jobs(&conn, &all, Some(ids[2]), 4)
        .await
        .unwrap();
    assert_eq!(
        page2.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![ids[1], ids[0]]
    );

    let red = JobFilter {
        tag: Some("red".into()),
        ..Default::default()
    };
    assert_eq!(
        admin::list_jobs(&conn, &red, None, 100)
            .await
            .unwrap()
            .len(),
        5
    );
    let b = JobFilter {
        queue: Some("b".parse().unwrap()),
        state: Some(JobState::Available),
        kind: Some("noop".into()),
        ..Default::default()
    };
    assert_eq!(
        admin::list_jobs(&conn, &b, None, 100).await.unwrap()[0].id,
        other
    );
    let future = JobFilter {
        created_after: Some(chrono::Utc::now() + chrono::Duration::hours(1)),
        ..Default::default()
    };
    assert!(
        admin::list_jobs(&conn, &future, None, 100)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn bulk_actions_work_in_batches_and_count_what_they_changed() {
    let db = TestDb::new().await;
    let conn = db.conn().await;
    for n in 0..7 {
        enqueue(&conn, &job("a", n)).await.unwrap();
    }
    let done = enqueue(&conn, &job("a", 99)).await.unwrap().id;
    finish(&db, done, "completed").await;
    enqueue(&conn, &job("b", 1)).await.unwrap();
    let a = JobFilter {
        queue: Some("a".parse().unwrap()),
        ..Default::default()
    };
    // Batches of 3: 3 + 3 + 1, the completed job untouched.
    assert_eq!(admin::bulk_cancel(&conn, &a, 3).await.unwrap(), 7);
    assert_eq!(admin::bulk_cancel(&conn, &a, 3).await.unwrap(), 0);
    // Retry brings back the 7 cancelled and the completed one.
    assert_eq!(admin::bulk_retry(&conn, &a, 3).await.unwrap(), 8);
    let available: i64 = db
        .scalar("SELECT count(*) FROM jobs WHERE queue = 'a' AND state = 'available' AND finished_at IS NULL")
        .await;
    assert_eq!(available, 8);
    assert_eq!(admin::bulk_retry(&conn, &a, 3).await.unwrap(), 0);
    assert_eq!(admin::bulk_delete(&conn, &a, 3).await.unwrap(), 8);
    let left: i64 = db.scalar("SELECT count(*) FROM jobs").await;
    assert_eq!(left, 1, "queue b is untouched");
}

/// Jobs that a bulk retry made available run and complete before its next batch: they
/// match the filter again, and must not be retried a second time.
#[tokio::test]
async fn bulk_retry_touches_each_job_once_while_jobs_complete_between_batches() {
    let db = TestDb::new().await;
    let conn = db.conn().await;
    let mut ids = Vec::new();
    for n in 0..4 {
        let id = enqueue(&conn, &job("r", n)).await.unwrap().id;
        finish(&db, id, "completed").await;
        ids.push(id);
    }
    let completed = JobFilter {
        queue: Some("r".parse().unwrap()),
        state: Some(JobState::Completed),
        ..Default::default()
    };
    // Hold the third job's row, so the second batch waits on it after the first committed.
    let mut blocker = testkit::db::connect(&db.url).await;
    let tx = blocker.transaction().await.unwrap();
    tx.execute("SELECT 1 FROM jobs WHERE id = $1 FOR UPDATE", &[&ids[2]])
        .await
        .unwrap();
    let retry = {
        let pool = testkit::db::pool_of(&db.url, 1);
        let filter = completed.clone();
        tokio::spawn(async move {
            let conn = pool.get().await.unwrap();
            admin::bulk_retry(&conn, &filter, 2).await.unwrap()
        })
    };
    // The first batch made the first two available; a worker runs and completes them.
    testkit::wait_for(
        "the first batch",
        std::time::Duration::from_secs(10),
        || async {
            let n: i64 = db
                .scalar("SELECT count(*) FROM jobs WHERE queue = 'r' AND state = 'available'")
                .await;
            (n == 2).then_some(())
        },
    )
    .await;
    let queue: std::sync::Arc<str> = "r".into();
    let fetched = fetch::fetch(&conn, &queue, "w", std::time::Duration::from_secs(30), 10)
        .await
        .unwrap();
    assert_eq!(fetched.iter().map(|j| j.id).collect::<Vec<_>>(), ids[..2]);
    let done: Vec<AttemptOutcome> = fetched
        .iter()
        .map(|j| AttemptOutcome {
            id: j.id,
            attempt: j.attempt,
            outcome: Outcome::Completed(None),
        })
        .collect();
    assert_eq!(outcome::record(&conn, "w", &done).await.unwrap(), 2);
    tx.rollback().await.unwrap();

    assert_eq!(retry.await.unwrap(), 4, "each of the 4 jobs retried once");
    let available: i64 = db
        .scalar("SELECT count(*) FROM jobs WHERE queue = 'r' AND state = 'available'")
        .await;
    assert_eq!(
        available, 2,
        "the two that ran are completed, not retried again"
    );
}

#[tokio::test]
async fn bulk_retry_never_breaks_a_unique_key() {
    let db = TestDb::new().await;
    let conn = db.conn().await;
    // Two finished jobs that held one key, and a finished one whose key is now held.
    let first = enqueue(&conn, &unique_job("q", 1, "k")).await.unwrap().id;
    finish(&db, first, "discarded").await;
    let second = enqueue(&conn, &unique_job("q", 2, "k")).await.unwrap().id;
    finish(&db, second, "cancelled").await;
    let held = enqueue(&conn, &unique_job("q", 3, "h")).await.unwrap().id;
    finish(&db, held, "discarded").await;
    enqueue(&conn, &unique_job("q", 4, "h")).await.unwrap();
    let q = JobFilter {
        queue: Some("q".parse().unwrap()),
        ..Default::default()
    };
    assert_eq!(admin::bulk_retry(&conn, &q, 1000).await.unwrap(), 1);
    let state = |id: i64| {
        let db = &db;
        async move {
            db.conn()
                .await
                .query_one("SELECT state::text FROM jobs WHERE id = $1", &[&id])
                .await
                .unwrap()
                .get::<_, String>(0)
        }
    };
    assert_eq!(state(first).await, "available");
    assert_eq!(state(second).await, "cancelled");
    assert_eq!(state(held).await, "discarded");
}

#[tokio::test]
async fn queue_stats_report_counts_pause_age_and_throughput() {
    let db = TestDb::new().await;
    let conn = db.conn().await;
    enqueue(&conn, &job("a", 1)).await.unwrap();
    let c = enqueue(&conn, &job("a", 2)).await.unwrap().id;
    finish(&db, c, "completed").await;
    let d = enqueue(&conn, &job("a", 3)).await.unwrap().id;
    finish(&db, d, "discarded").await;
    control::pause(&conn, &"idle".parse().unwrap())
        .await
        .unwrap();
    conn.execute(
        "UPDATE jobs SET run_at = now() - interval '90 seconds' WHERE state = 'available'",
        &[],
    )
    .await
    .unwrap();
    let stats = admin::queue_stats(&conn).await.unwrap();
    assert_eq!(stats.len(), 2);
    let a = &stats[0];
    assert_eq!(a.name, "a");
    assert!(!a.paused);
    assert_eq!(a.counts.len(), 7);
    assert!(a.counts.contains(&(JobState::Available, 1)));
    assert!(a.counts.contains(&(JobState::Completed, 1)));
    assert!(a.counts.contains(&(JobState::Running, 0)));
    let age = a.oldest_available_age_s.unwrap();
    assert!((89.0..120.0).contains(&age), "{age}");
    assert!((a.completed_per_minute - 1.0 / 60.0).abs() < 1e-9);
    assert!((a.failed_per_minute - 1.0 / 60.0).abs() < 1e-9);
    let idle = &stats[1];
    assert_eq!((idle.name.as_str(), idle.paused), ("idle", true));
    assert_eq!(idle.oldest_available_age_s, None);
}

#[tokio::test]
async fn workers_are_listed_as_they_reported() {
    let db = TestDb::new().await;
    let conn = db.conn().await;
    let w = engine::queue::maintenance::WorkerInfo {
        id: "w-1".into(),
        host: "h".into(),
        pid: 42,
        queues: vec!["email".into()],
        concurrency: 8,
    };
    engine::queue::maintenance::heartbeat(&conn, &w, 3)
        .await
        .unwrap();
    let listed = admin::list_workers(&conn).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (
            listed[0].id.as_str(),
            listed[0].pid,
            listed[0].in_flight,
            listed[0].concurrency
        ),
        ("w-1", 42, 3, 8)
    );
    assert_eq!(listed[0].queues, ["email"]);
}
