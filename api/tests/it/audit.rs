//! The audit log is complete and never lags its actions, against the real `api` binary:
//! every operator and admin action appears in `/api/v1/audit` (API key creation included),
//! and each row is written in the transaction of its action, so an action whose row cannot
//! be written changes nothing.

use serde_json::{Value, json};
use testkit::TestDb;
use testkit::fixtures::admin_env;
use testkit::http::Client;
use testkit::process::Api;

async fn start(db: &TestDb) -> Api {
    let mut env = vec![("DATABASE_URL", db.url.as_str())];
    env.extend(admin_env());
    Api::start(env!("CARGO_BIN_EXE_api"), &env).await
}

/// The audit log's entries, newest first.
async fn entries(admin: &Client) -> Vec<Value> {
    let resp = admin.get("/api/v1/audit").send().await;
    assert_eq!(resp.status, 200, "{resp:?}");
    resp.json()["entries"].as_array().unwrap().clone()
}

/// The action operators and admins can take, each with the audit action it records.
async fn act(admin: &Client, job: i64) -> Vec<(&'static str, u16)> {
    let mut out = Vec::new();
    let key = admin
        .post("/api/v1/admin/api-keys")
        .json(&json!({"name": "ci"}))
        .send()
        .await;
    out.push(("api_key.create", key.status));
    let enqueue = admin
        .post("/api/v1/jobs")
        .json(&json!({"kind": "noop", "queue": "q1"}))
        .send()
        .await;
    out.push(("job.enqueue", enqueue.status));
    let cancel = admin
        .post(&format!("/api/v1/jobs/{job}/cancel"))
        .send()
        .await;
    out.push(("job.cancel", cancel.status));
    let retry = admin
        .post(&format!("/api/v1/jobs/{job}/retry"))
        .send()
        .await;
    out.push(("job.retry", retry.status));
    let bulk = admin
        .post("/api/v1/jobs/bulk/cancel")
        .json(&json!({"queue": "q1"}))
        .send()
        .await;
    out.push(("jobs.bulk_cancel", bulk.status));
    let pause = admin.post("/api/v1/queues/q1/pause").send().await;
    out.push(("queue.pause", pause.status));
    let limits = admin
        .request(reqwest::Method::PUT, "/api/v1/queues/q1/limits")
        .json(&json!({"max_running": 2}))
        .send()
        .await;
    out.push(("queue.limits", limits.status));
    let force = admin
        .post("/api/v1/breakers/smtp/force")
        .json(&json!({"state": "open"}))
        .send()
        .await;
    out.push(("breaker.force_open", force.status));
    if key.status == 201 {
        let id = key.json()["id"].as_i64().unwrap();
        let revoke = admin
            .request(
                reqwest::Method::DELETE,
                &format!("/api/v1/admin/api-keys/{id}"),
            )
            .send()
            .await;
        out.push(("api_key.revoke", revoke.status));
    }
    out
}

/// A job of queue `q1`, enqueued through the API; its id.
async fn enqueue(admin: &Client) -> i64 {
    let resp = admin
        .post("/api/v1/jobs")
        .json(&json!({"kind": "noop", "queue": "q1"}))
        .send()
        .await;
    assert_eq!(resp.status, 201, "{resp:?}");
    resp.json()["id"].as_i64().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_action_api_key_creation_included_appears_in_the_audit_log() {
    let db = TestDb::new().await;
    let api = start(&db).await;
    let admin = api.admin().await;
    let job = enqueue(&admin).await;
    let done = act(&admin, job).await;
    let logged = entries(&admin).await;
    for (action, status) in done {
        assert!(status < 300, "{action} answered {status}");
        let entry = logged
            .iter()
            .find(|e| e["action"] == action)
            .unwrap_or_else(|| panic!("{action} is not in the audit log: {logged:?}"));
        assert_eq!(entry["actor"], "user:root", "{entry}");
    }
    let created = logged
        .iter()
        .find(|e| e["action"] == "api_key.create")
        .unwrap();
    assert!(
        created["target"].as_str().unwrap().starts_with("api_key:"),
        "{created}"
    );
}

/// What the actions change: API keys, jobs and their states, paused or limited queues, forced
/// breakers, audit rows.
type Snapshot = (i64, i64, Option<String>, i64, i64, i64);

async fn snapshot(conn: &tokio_postgres::Client) -> Snapshot {
    let row = conn
        .query_one(
            "SELECT (SELECT count(*) FROM api_keys),
                    (SELECT count(*) FROM jobs),
                    (SELECT string_agg(state::text, ',' ORDER BY id) FROM jobs),
                    (SELECT count(*) FROM queues WHERE paused OR max_running IS NOT NULL),
                    (SELECT count(*) FROM breakers WHERE forced IS NOT NULL),
                    (SELECT count(*) FROM audit_log)",
            &[],
        )
        .await
        .unwrap();
    (
        row.get(0),
        row.get(1),
        row.get(2),
        row.get(3),
        row.get(4),
        row.get(5),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn an_action_whose_audit_row_cannot_be_written_changes_nothing() {
    let db = TestDb::new().await;
    let api = start(&db).await;
    let admin = api.admin().await;
    let job = enqueue(&admin).await;
    let conn = db.conn().await;
    let before = snapshot(&conn).await;
    // The audit log refuses every row, as a full disk or a lost connection at that moment
    // would.
    db.refuse_writes("audit_log").await;
    for (action, status) in act(&admin, job).await {
        assert_eq!(status, 500, "{action} succeeded without its audit row");
    }
    assert_eq!(
        snapshot(&conn).await,
        before,
        "an unaudited action left a change"
    );
}
