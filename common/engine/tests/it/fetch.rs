//! The fetch: order, limit, the pause fence and the run_at fence, and its plan on a table
//! full of finished jobs.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use engine::queue::fetch::fetch;
use engine::queue::{JobState, control, enqueue};
use testkit::TestDb;

use crate::support::{job, timed_job};

const LEASE: Duration = Duration::from_secs(30);

async fn fetch_ids(conn: &deadpool_postgres::Client, queue: &Arc<str>, limit: usize) -> Vec<i64> {
    fetch(conn, queue, "w1", LEASE, limit)
        .await
        .unwrap()
        .iter()
        .map(|j| j.id)
        .collect()
}

#[tokio::test]
async fn fetches_by_priority_then_run_at_within_the_limit() {
    let db = TestDb::new().await;
    let conn = db.conn().await;
    let q: Arc<str> = "orders".into();
    let ago = |mins| Utc::now() - chrono::Duration::minutes(mins);
    let id = |r: engine::queue::Enqueued| r.id;

    let p9_oldest = id(enqueue(&conn, &timed_job("orders", 1, 9, ago(10)))
        .await
        .unwrap());
    let p0_recent = id(enqueue(&conn, &timed_job("orders", 2, 0, ago(1)))
        .await
        .unwrap());
    let p0_older = id(enqueue(&conn, &timed_job("orders", 3, 0, ago(5)))
        .await
        .unwrap());
    let p5 = id(enqueue(&conn, &timed_job("orders", 4, 5, ago(3)))
        .await
        .unwrap());
    // Another queue's job is never handed out here, however urgent.
    enqueue(&conn, &timed_job("other", 5, 0, ago(60)))
        .await
        .unwrap();
    // Available but not yet due (written directly: enqueue would make it scheduled).
    let future = id(enqueue(&conn, &job("orders", 6)).await.unwrap());
    conn.execute(
        "UPDATE jobs SET run_at = now() + interval '1 hour' WHERE id = $1",
        &[&future],
    )
    .await
    .unwrap();

    let mut first_two = fetch_ids(&conn, &q, 2).await;
    first_two.sort();
    let mut expected = vec![p0_recent, p0_older];
    expected.sort();
    assert_eq!(first_two, expected, "priority 0 first, LIMIT 2 honoured");
    assert_eq!(fetch_ids(&conn, &q, 1).await, [p5]);
    assert_eq!(fetch_ids(&conn, &q, 1).await, [p9_oldest]);
    assert_eq!(
        fetch_ids(&conn, &q, 10).await,
        [] as [i64; 0],
        "future run_at"
    );

    // A batch comes back in the queue's order too, not in id order.
    let q3: Arc<str> = "batch".into();
    let b_p9 = id(enqueue(&conn, &timed_job("batch", 1, 9, ago(10)))
        .await
        .unwrap());
    let b_p0_recent = id(enqueue(&conn, &timed_job("batch", 2, 0, ago(1)))
        .await
        .unwrap());
    let b_p0_older = id(enqueue(&conn, &timed_job("batch", 3, 0, ago(5)))
        .await
        .unwrap());
    let b_p5 = id(enqueue(&conn, &timed_job("batch", 4, 5, ago(3)))
        .await
        .unwrap());
    assert_eq!(
        fetch_ids(&conn, &q3, 10).await,
        [b_p0_older, b_p0_recent, b_p5, b_p9],
        "a batch in (priority, run_at, id) order"
    );

    // Within one priority, the older run_at first.
    let q2: Arc<str> = "tie".into();
    let newer = id(enqueue(&conn, &timed_job("tie", 1, 3, ago(1)))
        .await
        .unwrap());
    let older = id(enqueue(&conn, &timed_job("tie", 2, 3, ago(2)))
        .await
        .unwrap());
    assert_eq!(fetch_ids(&conn, &q2, 1).await, [older]);
    assert_eq!(fetch_ids(&conn, &q2, 1).await, [newer]);

    // A fetched job is running under our lease, with its attempt counted.
    let row = control::get(&conn, p0_older).await.unwrap().unwrap();
    assert_eq!(row.state, JobState::Running);
    assert_eq!(row.attempt, 1);
    assert_eq!(row.attempted_by.as_deref(), Some("w1"));
    assert!(row.lease_expires_at.unwrap() > Utc::now());
    let row = control::get(&conn, future).await.unwrap().unwrap();
    assert_eq!((row.state, row.attempt), (JobState::Available, 0));
}

#[tokio::test]
async fn a_paused_queue_yields_nothing_until_resumed() {
    let db = TestDb::new().await;
    let conn = db.conn().await;
    let q: Arc<str> = "reports".into();
    let a = enqueue(&conn, &job("reports", 1)).await.unwrap().id;
    let b = enqueue(&conn, &job("elsewhere", 2)).await.unwrap().id;

    control::pause(&conn, &"reports".parse().unwrap())
        .await
        .unwrap();
    assert!(fetch_ids(&conn, &q, 10).await.is_empty());
    // Only that queue is paused.
    assert_eq!(fetch_ids(&conn, &"elsewhere".into(), 10).await, [b]);
    let row = control::get(&conn, a).await.unwrap().unwrap();
    assert_eq!((row.state, row.attempt), (JobState::Available, 0));

    control::resume(&conn, &"reports".parse().unwrap())
        .await
        .unwrap();
    assert_eq!(fetch_ids(&conn, &q, 10).await, [a]);
}

/// Every node of an EXPLAIN (FORMAT JSON) plan, flattened.
fn plan_nodes(plan: &serde_json::Value, out: &mut Vec<serde_json::Value>) {
    out.push(plan.clone());
    if let Some(children) = plan.get("Plans").and_then(|p| p.as_array()) {
        for c in children {
            plan_nodes(c, out);
        }
    }
}

async fn explain(conn: &deadpool_postgres::Client, sql: &str) -> Vec<serde_json::Value> {
    let v: serde_json::Value = conn
        .query_one(&format!("EXPLAIN (FORMAT JSON) {sql}"), &[])
        .await
        .unwrap_or_else(|e| panic!("EXPLAIN {sql}: {e}"))
        .get(0);
    let mut nodes = Vec::new();
    plan_nodes(&v[0]["Plan"], &mut nodes);
    nodes
}

fn seq_scans_on_jobs(nodes: &[serde_json::Value]) -> usize {
    nodes
        .iter()
        .filter(|n| n["Node Type"] == "Seq Scan" && n["Relation Name"] == "jobs")
        .count()
}

/// The fetch statement, `engine::queue::fetch::FETCH`, read from its source so that this test
/// always plans the statement the workers run.
fn fetch_statement() -> &'static str {
    const SRC: &str = include_str!("../../src/queue/fetch.rs");
    const START: &str = "const FETCH: &str = \"";
    let start = SRC.find(START).expect("FETCH in fetch.rs") + START.len();
    let len = SRC[start..].find("\";").expect("the end of FETCH");
    &SRC[start..start + len]
}

/// `sql` with the fetch's parameters as literals: queue `default`, LIMIT 1000.
fn with_literals(sql: &str) -> String {
    sql.replace("$1", "'default'")
        .replace("$2", "'w1'")
        .replace("$3", "30")
        .replace("$4", "1000")
}

#[tokio::test]
async fn the_fetch_is_an_index_scan_among_many_finished_jobs() {
    let db = TestDb::new().await;
    let conn = db.conn().await;
    conn.batch_execute(
        "INSERT INTO jobs (queue, kind, state, finished_at, created_at)
         SELECT 'default', 'noop', 'completed', now(), now() FROM generate_series(1, 200000);
         INSERT INTO jobs (queue, kind) SELECT 'default', 'noop' FROM generate_series(1, 10);
         ANALYZE jobs;",
    )
    .await
    .unwrap();

    let whole_sql = with_literals(fetch_statement());
    // The inner SELECT: from `ANY(ARRAY(` to the closing `))`.
    let start = whole_sql.find("ANY(ARRAY(").expect("the inner SELECT") + "ANY(ARRAY(".len();
    let end = whole_sql.rfind("))").expect("the end of the inner SELECT");
    let inner_sql = &whole_sql[start..end];
    assert!(
        inner_sql.trim_start().starts_with("SELECT id FROM jobs"),
        "{inner_sql}"
    );
    assert!(inner_sql.contains("LIMIT 1000"), "{inner_sql}");

    let inner = explain(&conn, inner_sql).await;
    assert!(
        inner.iter().any(|n| n["Index Name"] == "jobs_fetch_idx"),
        "the fetch walks jobs_fetch_idx: {inner:#?}"
    );
    assert_eq!(seq_scans_on_jobs(&inner), 0, "{inner:#?}");

    let whole = explain(&conn, &whole_sql).await;
    assert_eq!(seq_scans_on_jobs(&whole), 0, "{whole:#?}");
    assert!(
        whole.iter().any(|n| n["Index Name"] == "jobs_fetch_idx"),
        "{whole:#?}"
    );

    // The worker's prepared statement switches to a generic plan after five runs: that plan
    // must not scan the table either.
    conn.batch_execute(&format!(
        "SET plan_cache_mode = force_generic_plan;
         PREPARE f(text, text, float8, bigint) AS {}",
        fetch_statement()
    ))
    .await
    .unwrap();
    let generic = explain(&conn, "EXECUTE f('default', 'w1', 30, 1000)").await;
    assert_eq!(seq_scans_on_jobs(&generic), 0, "{generic:#?}");
    assert!(
        generic.iter().any(|n| n["Index Name"] == "jobs_fetch_idx"),
        "{generic:#?}"
    );

    // And the statement itself hands out the 10 available jobs, none of the finished ones.
    let got = fetch(&conn, &"default".into(), "w1", LEASE, 1000)
        .await
        .unwrap();
    assert_eq!(got.len(), 10);
}
