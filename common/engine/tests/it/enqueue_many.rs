//! Bulk enqueue: a multi-row INSERT for batches with unique keys, binary COPY for large
//! batches without; results always in input order.

use std::collections::HashMap;

use chrono::{Duration, Utc};
use engine::queue::enqueue::COPY_THRESHOLD;
use engine::queue::{enqueue, enqueue_many};
use testkit::TestDb;

use crate::support::{job, timed_job, unique_job};

#[tokio::test]
async fn a_mixed_batch_answers_in_input_order_and_flags_duplicates() {
    let db = TestDb::new().await;
    let conn = db.conn().await;
    let holder = enqueue(&conn, &unique_job("batch", -1, "held"))
        .await
        .unwrap();

    let key = |i: i64| match i {
        10 | 20 => Some("dup".to_owned()),
        30 => Some("held".to_owned()),
        i if i % 7 == 0 => Some(format!("k{i}")),
        _ => None,
    };
    let jobs: Vec<_> = (0..100)
        .map(|i| match key(i) {
            Some(k) => unique_job("batch", i, &k),
            None => job("batch", i),
        })
        .collect();
    assert!(jobs.len() < COPY_THRESHOLD);
    let out = enqueue_many(&conn, &jobs).await.unwrap();
    assert_eq!(out.len(), 100);

    // The second job with a key already taken earlier in the batch points to the first; the
    // one whose key the table already held points to the holder; no other is a duplicate.
    assert!(!out[10].duplicate);
    assert_eq!((out[20].id, out[20].duplicate), (out[10].id, true));
    assert_eq!((out[30].id, out[30].duplicate), (holder.id, true));
    for (i, r) in out.iter().enumerate() {
        if i != 20 && i != 30 {
            assert!(!r.duplicate, "job {i} is not a duplicate: {r:?}");
        }
    }

    // Each new job's id is the row holding that job's args and key, ids rise in input order.
    let rows: HashMap<i64, (i64, Option<String>)> = conn
        .query(
            "SELECT id, (args->>'n')::bigint, unique_key FROM jobs WHERE queue = 'batch'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect();
    assert_eq!(rows.len(), 1 + 98, "the holder and 98 new jobs");
    assert_eq!(rows[&holder.id], (-1, Some("held".to_owned())));
    let mut last = holder.id;
    for (i, r) in out.iter().enumerate().filter(|(_, r)| !r.duplicate) {
        let i = i as i64;
        assert_eq!(rows[&r.id], (i, key(i)), "row of job {i}");
        assert!(r.id > last, "ids rise in input order");
        last = r.id;
    }
}

#[tokio::test]
async fn a_large_batch_without_keys_is_copied() {
    const N: usize = 2_000;
    const { assert!(N >= COPY_THRESHOLD) };
    let db = TestDb::new().await;
    let conn = db.conn().await;
    let jobs: Vec<_> = (0..N as i64)
        .map(|i| {
            let mut j = job("copy", i);
            j.opts.priority = Some((i % 10) as i16);
            j.opts.tags = vec!["bulk".into(), format!("t{}", i % 3)];
            j
        })
        .collect();
    let out = enqueue_many(&conn, &jobs).await.unwrap();
    assert_eq!(out.len(), N);
    assert!(out.iter().all(|r| !r.duplicate));

    let rows = conn
        .query(
            "SELECT id, (args->>'n')::bigint, state::text, priority, run_at <= now(), tags, meta
               FROM jobs WHERE queue = 'copy' ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), N);
    let by_id: HashMap<i64, &tokio_postgres::Row> = rows.iter().map(|r| (r.get(0), r)).collect();
    for (i, r) in out.iter().enumerate() {
        let row = by_id
            .get(&r.id)
            .unwrap_or_else(|| panic!("no row {}", r.id));
        assert_eq!(row.get::<_, i64>(1), i as i64, "args of job {i}");
        assert_eq!(row.get::<_, String>(2), "available");
        assert_eq!(row.get::<_, i16>(3), (i % 10) as i16);
        assert!(row.get::<_, bool>(4), "run_at set, not in the future");
        assert_eq!(
            row.get::<_, Vec<String>>(5),
            vec!["bulk".to_owned(), format!("t{}", i % 3)]
        );
        assert_eq!(row.get::<_, serde_json::Value>(6), serde_json::json!({}));
    }
}

#[tokio::test]
async fn a_future_run_at_makes_a_job_scheduled_on_every_path() {
    let db = TestDb::new().await;
    let conn = db.conn().await;
    let later = Utc::now() + Duration::hours(1);
    let state = |id: i64| {
        let conn = &conn;
        async move {
            conn.query_one("SELECT state::text FROM jobs WHERE id = $1", &[&id])
                .await
                .unwrap()
                .get::<_, String>(0)
        }
    };

    // One job.
    let one = enqueue(&conn, &timed_job("sched", 0, 0, later))
        .await
        .unwrap();
    assert_eq!(state(one.id).await, "scheduled");

    // A small batch (multi-row INSERT).
    let small = enqueue_many(
        &conn,
        &[
            job("sched", 1),
            timed_job("sched", 2, 0, later),
            job("sched", 3),
        ],
    )
    .await
    .unwrap();
    assert_eq!(state(small[0].id).await, "available");
    assert_eq!(state(small[1].id).await, "scheduled");
    assert_eq!(state(small[2].id).await, "available");

    // A COPY batch.
    let mut jobs: Vec<_> = (0..COPY_THRESHOLD as i64)
        .map(|i| job("sched", i))
        .collect();
    jobs[7] = timed_job("sched", 7, 0, later);
    let big = enqueue_many(&conn, &jobs).await.unwrap();
    assert_eq!(state(big[7].id).await, "scheduled");
    assert_eq!(state(big[8].id).await, "available");
    let scheduled: i64 = db
        .scalar("SELECT count(*) FROM jobs WHERE state = 'scheduled'")
        .await;
    assert_eq!(scheduled, 3);
    let run_at: chrono::DateTime<Utc> = conn
        .query_one("SELECT run_at FROM jobs WHERE id = $1", &[&big[7].id])
        .await
        .unwrap()
        .get(0);
    assert!((run_at - later).num_milliseconds().abs() < 1, "run_at kept");
}
