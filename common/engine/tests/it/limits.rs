//! Concurrency limits in the fetch: the queue limit, the per-key limit (an explicit key or
//! a path into the args), no head-of-line blocking, the fast path refusing limited queues,
//! concurrent fetchers never exceeding a limit, usage for metrics, and the wake-up when a
//! limited job stops running.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use engine::names::QueueName;
use engine::queue::limits::{self, KeyPath, QueueLimits};
use engine::queue::{FetchedJob, control, enqueue_many, fetch};
use testkit::TestDb;
use testkit::db::pool_of;

use crate::support::job;

const LEASE: Duration = Duration::from_secs(30);

fn qn(q: &str) -> QueueName {
    QueueName::parse(q).unwrap()
}

async fn set(conn: &deadpool_postgres::Client, q: &str, max: Option<i32>, per_key: Option<i32>) {
    set_path(conn, q, max, per_key, None).await
}

async fn set_path(
    conn: &deadpool_postgres::Client,
    q: &str,
    max: Option<i32>,
    per_key: Option<i32>,
    path: Option<&str>,
) {
    let l = QueueLimits {
        max_running: max,
        max_running_per_key: per_key,
        key_path: path.map(|p| KeyPath::parse(p).unwrap()),
    };
    limits::set(conn, &qn(q), &l).await.unwrap();
}

async fn take(conn: &mut deadpool_postgres::Client, q: &str, n: usize) -> Vec<FetchedJob> {
    fetch::fetch_limited(conn, &Arc::from(q), "w1", LEASE, n)
        .await
        .unwrap()
}

/// `n` jobs of `q` with `{"n": i, "k": key(i)}` args and an explicit concurrency key
/// `ckey(i)`.
async fn add(
    conn: &deadpool_postgres::Client,
    q: &str,
    n: i64,
    ckey: impl Fn(i64) -> Option<String>,
    akey: impl Fn(i64) -> Option<String>,
) -> Vec<i64> {
    let jobs: Vec<_> = (0..n)
        .map(|i| {
            let mut j = job(q, i);
            j.opts.concurrency_key = ckey(i);
            if let Some(k) = akey(i) {
                j = engine::queue::NewJob::unchecked("noop", serde_json::json!({"n": i, "k": k}))
                    .with(j.opts);
            }
            j
        })
        .collect();
    enqueue_many(conn, &jobs)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect()
}

fn args_n(j: &FetchedJob) -> i64 {
    let v: serde_json::Value = serde_json::from_str(&j.args.0).unwrap();
    v["n"].as_i64().unwrap()
}

#[tokio::test]
async fn a_queue_limit_caps_running_jobs_and_the_fast_path_refuses_the_queue() {
    let db = TestDb::new().await;
    let mut conn = db.conn().await;
    add(&conn, "lim", 10, |_| None, |_| None).await;
    set(&conn, "lim", Some(3), None).await;

    // The one-statement fetch takes nothing from a limited queue.
    let fast = fetch::fetch(&conn, &Arc::from("lim"), "w1", LEASE, 100)
        .await
        .unwrap();
    assert!(fast.is_empty());

    let first = take(&mut conn, "lim", 100).await;
    assert_eq!(first.len(), 3);
    assert_eq!(first.iter().map(args_n).collect::<Vec<_>>(), [0, 1, 2]);
    assert!(take(&mut conn, "lim", 100).await.is_empty(), "at the limit");

    // One stops running: one slot.
    control::cancel(&conn, first[0].id).await.unwrap();
    assert_eq!(take(&mut conn, "lim", 100).await.len(), 1);
    assert!(take(&mut conn, "lim", 100).await.is_empty());

    // Raised at run time: the next fetch uses it.
    set(&conn, "lim", Some(5), None).await;
    assert_eq!(take(&mut conn, "lim", 100).await.len(), 2);
    // Fewer free slots than room: the slots win.
    set(&conn, "lim", Some(9), None).await;
    assert_eq!(take(&mut conn, "lim", 1).await.len(), 1);

    // Paused: nothing, limit or not.
    control::pause(&conn, &qn("lim")).await.unwrap();
    assert!(take(&mut conn, "lim", 100).await.is_empty());
    control::resume(&conn, &qn("lim")).await.unwrap();

    // Lowered below what runs: nothing more until enough finish; running jobs stay.
    set(&conn, "lim", Some(2), None).await;
    assert!(take(&mut conn, "lim", 100).await.is_empty());
    let running: i64 = db
        .scalar("SELECT count(*) FROM jobs WHERE queue = 'lim' AND state = 'running'")
        .await;
    assert_eq!(running, 6);

    // Limits removed: the fast path takes the rest.
    set(&conn, "lim", None, None).await;
    let rest = fetch::fetch(&conn, &Arc::from("lim"), "w1", LEASE, 100)
        .await
        .unwrap();
    assert_eq!(rest.len(), 3);
}

#[tokio::test]
async fn a_per_key_limit_holds_per_key_and_a_busy_key_blocks_no_other() {
    let db = TestDb::new().await;
    let mut conn = db.conn().await;
    // 200 jobs of key "busy" first, then one each of "a" and "b", then two without a key.
    let busy = add(&conn, "pk", 200, |_| Some("busy".into()), |_| None).await;
    add(&conn, "pk", 2, |i| Some(format!("k{i}")), |_| None).await;
    add(&conn, "pk", 2, |_| None, |_| None).await;
    set(&conn, "pk", None, Some(1)).await;

    let mut got: Vec<FetchedJob> = Vec::new();
    // The first fetch may spend its window on "busy" rows; from the second on, "busy" is at
    // its limit and skipped, so the rest of the queue flows.
    for _ in 0..2 {
        got.extend(take(&mut conn, "pk", 10).await);
    }
    assert_eq!(got.len(), 5, "busy once, k0, k1 and both keyless jobs");
    assert_eq!(got.iter().filter(|j| busy.contains(&j.id)).count(), 1);
    assert!(take(&mut conn, "pk", 10).await.is_empty());

    // Two per key: one more "busy" job.
    set(&conn, "pk", None, Some(2)).await;
    let more = take(&mut conn, "pk", 10).await;
    assert_eq!(more.len(), 1);
    assert!(busy.contains(&more[0].id));

    // Both limits: the queue limit caps the total.
    set(&conn, "pk", Some(6), Some(200)).await;
    assert_eq!(
        take(&mut conn, "pk", 100).await.len(),
        0,
        "6 running already"
    );
    set(&conn, "pk", Some(10), Some(200)).await;
    assert_eq!(take(&mut conn, "pk", 100).await.len(), 4);
}

#[tokio::test]
async fn the_key_comes_from_the_args_path_unless_given_at_enqueue() {
    let db = TestDb::new().await;
    let mut conn = db.conn().await;
    // Keys from the args: o0, o1, o2, o0, o1, o2 ...; job 0 also has an explicit key "x",
    // which wins over its args.
    add(
        &conn,
        "ap",
        9,
        |i| (i == 0).then(|| "x".into()),
        |i| Some(format!("o{}", i % 3)),
    )
    .await;
    set_path(&conn, "ap", None, Some(1), Some("args.k")).await;
    let got = take(&mut conn, "ap", 100).await;
    let mut ns: Vec<i64> = got.iter().map(args_n).collect();
    ns.sort();
    // x (job 0), o1 (job 1), o2 (job 2), o0 (job 3).
    assert_eq!(ns, [0, 1, 2, 3]);

    let usage = limits::usage(&conn).await.unwrap();
    assert_eq!(usage.len(), 1);
    assert_eq!(usage[0].queue, "ap");
    assert_eq!(usage[0].running, 4);
    assert_eq!(usage[0].waiting, 5, "every other job's key is at its limit");
    assert_eq!(
        usage[0].limits.key_path.as_ref().unwrap().to_string(),
        "args.k"
    );
    assert_eq!(
        limits::get(&conn, "ap").await.unwrap(),
        usage[0].limits,
        "the same limits both ways"
    );
}

#[tokio::test]
async fn concurrent_fetchers_never_exceed_the_limits() {
    let db = TestDb::new().await;
    let pool = pool_of(&db.url, 10);
    let conn = pool.get().await.unwrap();
    add(
        &conn,
        "race",
        300,
        |i| Some(format!("k{}", i % 5)),
        |_| None,
    )
    .await;
    set(&conn, "race", Some(4), Some(1)).await;
    drop(conn);

    // Eight fetchers at once, each asking for many: four jobs in all, at most one per key.
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..8 {
        let pool = pool.clone();
        tasks.spawn(async move {
            let mut conn = pool.get().await.unwrap();
            fetch::fetch_limited(&mut conn, &Arc::from("race"), &format!("w{w}"), LEASE, 50)
                .await
                .unwrap()
        });
    }
    let mut per_key: HashMap<i64, usize> = HashMap::new();
    let mut total = 0;
    while let Some(jobs) = tasks.join_next().await {
        for j in jobs.unwrap() {
            *per_key.entry(args_n(&j) % 5).or_default() += 1;
            total += 1;
        }
    }
    assert_eq!(total, 4);
    assert!(per_key.values().all(|&n| n == 1), "{per_key:?}");
}

#[tokio::test]
async fn operator_limits_win_over_worker_defaults() {
    let db = TestDb::new().await;
    let conn = db.conn().await;
    let defaults = |n| {
        vec![(
            qn("d"),
            QueueLimits {
                max_running: Some(n),
                ..Default::default()
            },
        )]
    };
    limits::set_defaults(&conn, &defaults(2)).await.unwrap();
    assert_eq!(limits::get(&conn, "d").await.unwrap().max_running, Some(2));
    limits::set_defaults(&conn, &defaults(3)).await.unwrap();
    assert_eq!(limits::get(&conn, "d").await.unwrap().max_running, Some(3));
    set(&conn, "d", Some(7), None).await;
    limits::set_defaults(&conn, &defaults(4)).await.unwrap();
    assert_eq!(limits::get(&conn, "d").await.unwrap().max_running, Some(7));
    assert!(
        limits::set(
            &conn,
            &qn("d"),
            &QueueLimits {
                max_running: Some(0),
                ..Default::default()
            }
        )
        .await
        .is_err()
    );
}
