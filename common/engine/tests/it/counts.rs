//! Maintained job counts: always equal to counting the jobs table, before and after folding,
//! through every kind of change and under concurrent writers.

use std::sync::Arc;
use std::time::Duration;

use engine::queue::counts::{self, QueueDepth};
use engine::queue::outcome::{self, AttemptOutcome, Failure, Outcome};
use engine::queue::{control, enqueue, enqueue_many, fetch};
use testkit::TestDb;

use testkit::db::pool_of;

use crate::support::job;

const LEASE: Duration = Duration::from_secs(30);

/// What counting the jobs table says, in `counts::depth`'s order.
async fn counted(conn: &deadpool_postgres::Client) -> Vec<QueueDepth> {
    conn.query(
        "SELECT queue, state, count(*) FROM jobs GROUP BY queue, state ORDER BY queue, state",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| QueueDepth {
        queue: r.get(0),
        state: r.get(1),
        count: r.get(2),
    })
    .collect()
}

async fn assert_exact(conn: &deadpool_postgres::Client, when: &str) {
    let want = counted(conn).await;
    assert_eq!(
        counts::depth(conn).await.unwrap(),
        want,
        "{when}: before folding"
    );
    counts::fold(conn).await.unwrap();
    assert_eq!(
        counts::depth(conn).await.unwrap(),
        want,
        "{when}: after folding"
    );
}

#[tokio::test]
async fn counts_follow_every_kind_of_change() {
    let db = TestDb::new().await;
    let conn = db.conn().await;
    assert!(counts::depth(&conn).await.unwrap().is_empty());

    // Enqueue: one, a multi-row INSERT, and a COPY.
    enqueue(&conn, &job("a", 1)).await.unwrap();
    let few: Vec<_> = (0..10).map(|n| job("b", n)).collect();
    enqueue_many(&conn, &few).await.unwrap();
    let many: Vec<_> = (0..600).map(|n| job("a", n)).collect();
    enqueue_many(&conn, &many).await.unwrap();
    assert_exact(&conn, "enqueued").await;

    // Fetch, then complete some, retry some, discard and cancel others.
    let got = fetch::fetch(&conn, &Arc::from("a"), "w1", LEASE, 100)
        .await
        .unwrap();
    assert_exact(&conn, "fetched").await;
    let failure = || Failure::new("error", "boom");
    let batch: Vec<AttemptOutcome> = got
        .iter()
        .enumerate()
        .map(|(i, j)| AttemptOutcome {
            id: j.id,
            attempt: j.attempt,
            outcome: match i % 4 {
                0 | 1 => Outcome::Completed(None),
                2 => Outcome::Retry {
                    delay: Duration::from_secs(60),
                    error: failure(),
                },
                _ => Outcome::Discard(failure()),
            },
        })
        .collect();
    outcome::record(&conn, "w1", &batch).await.unwrap();
    assert_exact(&conn, "settled").await;

    // Operator actions and deletes.
    control::cancel(&conn, got[3].id).await.unwrap();
    control::retry(&conn, got[0].id).await.unwrap();
    conn.execute("DELETE FROM jobs WHERE queue = 'b' AND id % 2 = 0", &[])
        .await
        .unwrap();
    assert_exact(&conn, "after operator actions and deletes").await;

    // The last hour's finishes count what finished, however it was folded.
    let finished = counts::finished_since(&conn, Duration::from_secs(3600))
        .await
        .unwrap();
    assert_eq!(finished.len(), 1);
    assert_eq!((finished[0].completed, finished[0].discarded), (50, 25));

    // TRUNCATE empties the counts with the table.
    conn.batch_execute("TRUNCATE jobs").await.unwrap();
    assert!(counts::depth(&conn).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn counts_stay_exact_under_concurrent_writers_and_folders() {
    let db = TestDb::new().await;
    let pool = pool_of(&db.url, 8);
    let many: Vec<_> = (0..4000).map(|n| job("q", n)).collect();
    enqueue_many(&pool.get().await.unwrap(), &many)
        .await
        .unwrap();

    let mut tasks = Vec::new();
    for w in 0..4 {
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            let worker = format!("w{w}");
            loop {
                let conn = pool.get().await.unwrap();
                let got = fetch::fetch(&conn, &Arc::from("q"), &worker, LEASE, 150)
                    .await
                    .unwrap();
                if got.is_empty() {
                    return;
                }
                let done: Vec<_> = got
                    .iter()
                    .map(|j| AttemptOutcome {
                        id: j.id,
                        attempt: j.attempt,
                        outcome: Outcome::Completed(None),
                    })
                    .collect();
                outcome::record(&conn, &worker, &done).await.unwrap();
            }
        }));
    }
    // Folders racing the writers and each other.
    for _ in 0..2 {
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..20 {
                counts::fold(&pool.get().await.unwrap()).await.unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let conn = pool.get().await.unwrap();
    assert_exact(&conn, "after the race").await;
    let depth = counts::depth(&conn).await.unwrap();
    assert_eq!(depth.len(), 1);
    assert_eq!(depth[0].count, 4000);
}
