//! Unique jobs: at most one unfinished job per key, also under concurrent inserts.

use std::sync::Arc;

use engine::queue::enqueue;
use testkit::TestDb;
use tokio::sync::Barrier;

use testkit::db::pool_of;

use crate::support::unique_job;

#[tokio::test]
async fn a_key_is_held_until_its_job_finishes() {
    let db = TestDb::new().await;
    let conn = db.conn().await;

    let first = enqueue(&conn, &unique_job("default", 1, "report:7"))
        .await
        .unwrap();
    assert!(!first.duplicate);
    let second = enqueue(&conn, &unique_job("default", 2, "report:7"))
        .await
        .unwrap();
    assert!(second.duplicate);
    assert_eq!(second.id, first.id);
    let n: i64 = db
        .scalar("SELECT count(*) FROM jobs WHERE unique_key = 'report:7'")
        .await;
    assert_eq!(n, 1);

    // Another key is independent.
    let other = enqueue(&conn, &unique_job("default", 3, "report:8"))
        .await
        .unwrap();
    assert!(!other.duplicate);
    assert_ne!(other.id, first.id);

    // Finishing the holder frees the key.
    conn.execute(
        "UPDATE jobs SET state = 'completed', finished_at = now() WHERE id = $1",
        &[&first.id],
    )
    .await
    .unwrap();
    let third = enqueue(&conn, &unique_job("default", 4, "report:7"))
        .await
        .unwrap();
    assert!(!third.duplicate);
    assert_ne!(third.id, first.id);
    // And the new holder holds it again.
    let fourth = enqueue(&conn, &unique_job("default", 5, "report:7"))
        .await
        .unwrap();
    assert_eq!((fourth.id, fourth.duplicate), (third.id, true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_enqueues_of_one_key_make_one_job() {
    const TASKS: usize = 20;
    let db = TestDb::new().await;
    let pool = pool_of(&db.url, TASKS + 2);
    let barrier = Arc::new(Barrier::new(TASKS));
    let tasks: Vec<_> = (0..TASKS)
        .map(|i| {
            let pool = pool.clone();
            let barrier = barrier.clone();
            tokio::spawn(async move {
                let mut conn = pool.get().await.unwrap();
                let tx = conn.transaction().await.unwrap();
                // Every task has its own connection and open transaction before any inserts.
                tx.execute("SELECT 1", &[]).await.unwrap();
                barrier.wait().await;
                let got = enqueue(&tx, &unique_job("default", i as i64, "invoice:42"))
                    .await
                    .unwrap();
                tx.commit().await.unwrap();
                got
            })
        })
        .collect();
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }

    let rows = db
        .conn()
        .await
        .query("SELECT id FROM jobs WHERE unique_key = 'invoice:42'", &[])
        .await
        .unwrap();
    assert_eq!(rows.len(), 1, "exactly one job holds the key");
    let id: i64 = rows[0].get(0);
    assert!(
        results.iter().all(|r| r.id == id),
        "every caller got the holder's id {id}: {results:?}"
    );
    assert_eq!(
        results.iter().filter(|r| !r.duplicate).count(),
        1,
        "one caller inserted, the rest were told duplicate: {results:?}"
    );
}
