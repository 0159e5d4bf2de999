//! Queue bookkeeping under faults, driven piece by piece (producer, fetch, rescue, completer,
//! lease renewal) against a real PostgreSQL, so each fault lands exactly where the test puts
//! it; a lost reply is a real connection cut (`testkit::CutProxy`).

use std::sync::Arc;
use std::time::Duration;

use engine::queue::maintenance::{self as sql, WorkerInfo};
use engine::queue::outcome::{AttemptOutcome, Failure, Outcome};
use engine::queue::{JobOptions, JobState, control, fetch};
use serde_json::json;
use testkit::TestDb;
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use worker::runtime::completer::Completer;
use worker::runtime::lease::{self, Held};
use worker::runtime::metrics::QueueMetrics;
use worker::runtime::producer::Producer;

use crate::harness::enqueue_noop;

fn worker_info(id: &str) -> WorkerInfo {
    WorkerInfo {
        id: id.into(),
        host: "test".into(),
        pid: std::process::id() as i32,
        queues: vec!["default".into()],
        concurrency: 1,
    }
}

/// Write `outcomes` through a real completer and wait until it has written them.
async fn complete(
    pool: &deadpool_postgres::Pool,
    worker: &Arc<str>,
    held: &Arc<Held>,
    outcomes: Vec<AttemptOutcome>,
) {
    let (completer, handle) = Completer::new(pool.clone(), worker.clone(), held.clone(), 16);
    let task = tokio::spawn(completer.run(CancellationToken::new()));
    for o in outcomes {
        handle.send(o).await;
    }
    // The completer returns once its channel is closed and drained.
    drop(handle);
    task.await.expect("completer");
}

/// Attempt 1's lease lapses, the same worker fetches attempt 2, and attempt 1's late outcome
/// is refused by the fence: attempt 2 must stay held, so its lease is still renewed.
#[tokio::test]
async fn a_stale_outcome_leaves_the_current_attempt_renewed() {
    let db = TestDb::new().await;
    let id = enqueue_noop(&db, json!({}), JobOptions::default()).await;
    let pool = testkit::db::pool_of(&db.url, 2);
    let info = worker_info("w-stale");
    let worker: Arc<str> = info.id.as_str().into();
    let queue: Arc<str> = "default".into();
    let held = Arc::new(Held::default());
    let conn = pool.get().await.unwrap();

    // Attempt 1, whose lease runs out at once (as during a database hiccup), is rescued.
    let first = fetch::fetch(&conn, &queue, &worker, Duration::from_millis(1), 10)
        .await
        .unwrap();
    assert_eq!(first.len(), 1);
    held.add(first.iter().map(|j| (j.id, j.attempt)));
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(sql::rescue(&conn, 10).await.unwrap().retried, 1);

    // The same worker fetches attempt 2.
    let second = fetch::fetch(&conn, &queue, &worker, Duration::from_secs(30), 10)
        .await
        .unwrap();
    assert_eq!((second[0].id, second[0].attempt), (id, 2));
    held.add(second.iter().map(|j| (j.id, j.attempt)));

    // Attempt 1's handler finishes now; its outcome is refused.
    complete(
        &pool,
        &worker,
        &held,
        vec![AttemptOutcome {
            id,
            attempt: 1,
            outcome: Outcome::Completed(None),
        }],
    )
    .await;
    let job = control::get(&conn, id).await.unwrap().unwrap();
    assert_eq!((job.state, job.attempt), (JobState::Running, 2));
    let before = job.lease_expires_at.unwrap();

    // The next renewal still extends attempt 2's lease.
    lease::renew_once(&pool, &info, &held, Duration::from_secs(3600))
        .await
        .unwrap();
    let job = control::get(&conn, id).await.unwrap().unwrap();
    let after = job.lease_expires_at.unwrap();
    assert!(
        after - before > chrono::Duration::minutes(30),
        "attempt 2's lease was not renewed: {before} -> {after}"
    );

    // Attempt 2's own outcome then lands and releases it.
    complete(
        &pool,
        &worker,
        &held,
        vec![AttemptOutcome {
            id,
            attempt: 2,
            outcome: Outcome::Completed(None),
        }],
    )
    .await;
    assert!(held.is_empty());
    let job = control::get(&conn, id).await.unwrap().unwrap();
    assert_eq!((job.state, job.attempt), (JobState::Completed, 2));
}

/// One batch of outcomes with rows PostgreSQL would refuse: a NUL in an error message, a
/// delay past any timestamp, a NUL in a result's JSON. The first two are made storable; the
/// last still fails, and costs only its own job (left running, to be rescued).
#[tokio::test]
async fn a_poisoned_outcome_costs_only_itself() {
    let db = TestDb::new().await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(enqueue_noop(&db, json!({}), JobOptions::default()).await);
    }
    let pool = testkit::db::pool_of(&db.url, 2);
    let worker: Arc<str> = "w-poison".into();
    let queue: Arc<str> = "default".into();
    let held = Arc::new(Held::default());
    let conn = pool.get().await.unwrap();
    let fetched = fetch::fetch(&conn, &queue, &worker, Duration::from_secs(30), 10)
        .await
        .unwrap();
    assert_eq!(fetched.len(), 5);
    held.add(fetched.iter().map(|j| (j.id, j.attempt)));
    let out = |id: i64, outcome| AttemptOutcome {
        id,
        attempt: 1,
        outcome,
    };
    complete(
        &pool,
        &worker,
        &held,
        vec![
            out(ids[0], Outcome::Completed(None)),
            out(
                ids[1],
                Outcome::Retry {
                    delay: Duration::from_secs(1),
                    error: Failure::new("error", "the server said \0 and hung up"),
                },
            ),
            out(
                ids[2],
                Outcome::Retry {
                    delay: Duration::MAX,
                    error: Failure::new("error", "429"),
                },
            ),
            out(
                ids[3],
                Outcome::Completed(Some(json!({"echo": "nul \u{0} inside"}))),
            ),
            out(ids[4], Outcome::Snooze(Duration::from_secs(1))),
        ],
    )
    .await;
    let job = |id| {
        let conn = &conn;
        async move { control::get(conn, id).await.unwrap().unwrap() }
    };
    assert_eq!(job(ids[0]).await.state, JobState::Completed);
    let nul = job(ids[1]).await;
    assert_eq!(nul.state, JobState::Retryable);
    assert_eq!(nul.errors[0].message, "the server said  and hung up");
    let far = job(ids[2]).await;
    assert_eq!(far.state, JobState::Retryable);
    assert!(far.run_at > chrono::Utc::now() + chrono::Duration::days(365));
    assert_eq!(
        job(ids[3]).await.state,
        JobState::Running,
        "the refused row is left for the rescuer"
    );
    assert_eq!(job(ids[4]).await.state, JobState::Scheduled);
    assert!(held.is_empty());
}

/// The reply to a fetch is lost with its connection after PostgreSQL committed it: the job
/// is marked running for this worker, which never saw it. Its one and only attempt must not
/// be spent: the producer gives it back and fetches it again.
#[tokio::test]
async fn a_fetch_lost_in_transit_spends_no_attempt() {
    let db = TestDb::new().await;
    let proxy = testkit::CutProxy::start(&db.url).await;
    let pool = testkit::db::pool_of(proxy.url(), 1);
    // Prepared first on the pool's one connection, so the cut hits the fetch itself.
    fetch::prepare(&pool.get().await.unwrap()).await.unwrap();
    let id = enqueue_noop(
        &db,
        json!({}),
        JobOptions {
            max_attempts: Some(1),
            ..Default::default()
        },
    )
    .await;
    let queue: Arc<str> = "default".into();
    let (tx, mut rx) = mpsc::channel(4);
    let producer = Producer {
        queue: queue.clone(),
        pool: pool.clone(),
        worker: "w-lost".into(),
        lease: Duration::from_secs(30),
        batch: 4,
        poll_interval: Duration::from_millis(100),
        slots: Arc::new(Semaphore::new(4)),
        tx,
        wake: Arc::new(Notify::new()),
        held: Arc::new(Held::default()),
        metrics: Arc::new(QueueMetrics::new(&queue, ["noop"])),
    };
    proxy.cut_next_reply();
    let stop = CancellationToken::new();
    let task = tokio::spawn(producer.run(stop.clone()));
    let job = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("the job claimed by the lost fetch never reached a handler")
        .expect("producer running");
    assert_eq!(proxy.cuts(), 1);
    assert_eq!((job.id, job.attempt), (id, 1));
    let row = control::get(&db.conn().await, id).await.unwrap().unwrap();
    assert_eq!((row.state, row.attempt), (JobState::Running, 1));
    assert!(row.errors.is_empty(), "{:?}", row.errors);
    stop.cancel();
    task.await.unwrap();
}
