//! The deployment files checked against the real thing: each KEDA `ScaledObject` query in
//! `ops/deploy/k8s/base/keda.yaml` runs on a real PostgreSQL and counts exactly the jobs of
//! its worker group that want a worker (available, running, and scheduled or retryable ones
//! already due), from the counter's tables, also before the counter has folded the deltas.
//! The manifests' schemas are checked by `ops/deploy/check.sh` in CI.

use chrono::{Duration, Utc};
use engine::queue::{JobOptions, NewJob, counts, enqueue_many, fetch};
use testkit::TestDb;

/// Each `query: >-` block of the KEDA manifest, with the queues its worker group serves
/// (read from the query's first `queue IN (...)`).
fn keda_queries() -> Vec<(Vec<String>, String)> {
    let text = include_str!("../deploy/k8s/base/keda.yaml");
    let mut out = Vec::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        if line.trim() != "query: >-" {
            continue;
        }
        let indent = lines
            .peek()
            .map(|l| l.len() - l.trim_start().len())
            .unwrap();
        let mut sql = Vec::new();
        while let Some(l) = lines.peek() {
            if l.trim().is_empty() || l.len() - l.trim_start().len() < indent {
                break;
            }
            sql.push(l.trim().to_owned());
            lines.next();
        }
        let sql = sql.join(" ");
        let inside = sql
            .split("queue IN (")
            .nth(1)
            .unwrap()
            .split(')')
            .next()
            .unwrap();
        let queues = inside
            .split(',')
            .map(|q| q.trim().trim_matches('\'').to_owned())
            .collect();
        out.push((queues, sql));
    }
    out
}

fn jobs(queue: &str, n: usize, run_at: Option<chrono::DateTime<Utc>>) -> Vec<NewJob> {
    (0..n)
        .map(|i| {
            NewJob::unchecked("noop", serde_json::json!({ "i": i })).with(JobOptions {
                queue: Some(queue.parse().unwrap()),
                run_at,
                ..JobOptions::default()
            })
        })
        .collect()
}

#[tokio::test]
async fn each_keda_query_counts_its_groups_waiting_running_and_due_jobs() {
    let queries = keda_queries();
    assert_eq!(queries.len(), 2, "one ScaledObject per worker group");
    let db = TestDb::new().await;
    let conn = db.conn().await;
    let past = Some(Utc::now() - Duration::minutes(5));
    let future = Some(Utc::now() + Duration::hours(1));
    // email: 5 available, 2 of them then running; 3 due (scheduled in the past, never
    // promoted: no scheduler runs here); 4 in the future (not counted).
    enqueue_many(&conn, &jobs("email", 5, None)).await.unwrap();
    enqueue_many(&conn, &jobs("email", 3, past)).await.unwrap();
    enqueue_many(&conn, &jobs("email", 4, future))
        .await
        .unwrap();
    // uploads: 7 available; forecast: 2 available; another queue: 9 (counted by no group).
    enqueue_many(&conn, &jobs("uploads", 7, None))
        .await
        .unwrap();
    enqueue_many(&conn, &jobs("forecast", 2, None))
        .await
        .unwrap();
    enqueue_many(&conn, &jobs("default", 9, None))
        .await
        .unwrap();
    let email: std::sync::Arc<str> = "email".into();
    let fetched = fetch::fetch(&conn, &email, "w", std::time::Duration::from_secs(30), 2)
        .await
        .unwrap();
    assert_eq!(fetched.len(), 2, "two of email's jobs are running");

    let expected = |queues: &[String]| -> i64 {
        queues
            .iter()
            .map(|q| match q.as_str() {
                "email" => 5 + 3,
                "uploads" => 7,
                "forecast" => 2,
                _ => 0,
            })
            .sum()
    };
    for fold in [false, true] {
        if fold {
            counts::fold(&conn).await.unwrap();
        }
        for (queues, sql) in &queries {
            let n: i64 = conn.query_one(sql.as_str(), &[]).await.unwrap().get(0);
            assert_eq!(n, expected(queues), "{queues:?}, folded: {fold}\n{sql}");
        }
    }
}

/// The metric names in `expr`, without a histogram's `_bucket`.
fn metrics_in(expr: &str) -> Vec<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("quayside_"))
        .map(|w| w.trim_end_matches("_bucket").to_owned())
        .collect()
}

/// Whether the api or the worker exports `name`.
fn exported(name: &str) -> bool {
    [
        include_str!("../../api/src/metrics.rs"),
        include_str!("../../worker/src/runtime/metrics.rs"),
    ]
    .iter()
    .any(|src| src.contains(&format!("\"{name}\"")))
}

/// Every metric the alert rules read is exported: a renamed metric would silence an alert.
#[test]
fn the_alert_rules_read_only_metrics_that_exist() {
    let names = metrics_in(include_str!("../deploy/prometheus/alerts.yml"));
    assert!(names.len() >= 6, "{names:?}");
    for name in names {
        assert!(
            exported(&name),
            "alerts.yml reads {name}, which neither process exports"
        );
    }
}

/// Every metric the Grafana dashboard queries is one the api or the worker exports: a renamed
/// metric would leave a panel silently empty.
#[test]
fn the_dashboard_queries_only_metrics_that_exist() {
    let dashboard: serde_json::Value =
        serde_json::from_str(include_str!("../deploy/grafana/dashboards/quayside.json")).unwrap();
    let mut checked = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            for name in metrics_in(target["expr"].as_str().unwrap()) {
                assert!(
                    exported(&name),
                    "panel {:?} queries {name}, which neither process exports",
                    panel["title"]
                );
                checked += 1;
            }
        }
    }
    assert!(
        checked >= 10,
        "only {checked} metrics found in the dashboard"
    );
}
