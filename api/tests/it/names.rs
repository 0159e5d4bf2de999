//! Queue and service names keep the one rule a worker's settings keep: a name no worker could
//! serve is refused where it enters, with the usual field error.

use domain::accounts::Role;
use poem::http::StatusCode;
use poem::test::TestResponse;
use serde_json::json;
use testkit::TestDb;

use crate::support::{assert_error, client, json, token};

/// Assert that `resp` is a 422 whose field error for `field` states the name rule.
async fn check_refused(resp: TestResponse, field: &str, rule: &str) {
    resp.assert_status(StatusCode::UNPROCESSABLE_ENTITY);
    let body = json(resp).await;
    assert_error(&body, "VALIDATION_FAILED");
    assert_eq!(body["details"]["field_errors"][field], rule, "{body}");
}

const QUEUE_RULE: &str = "1 to 128 letters, digits, _ - .";

#[tokio::test]
async fn a_queue_name_no_worker_can_serve_is_refused() {
    let db = TestDb::new().await;
    let cli = client(&db);
    let bearer = format!("Bearer {}", token(&db, &cli, "ops", Role::Operator).await);

    let enqueue = cli
        .post("/api/v1/jobs")
        .header("authorization", &bearer)
        .body_json(&json!({"kind": "noop", "queue": "my queue"}))
        .send()
        .await;
    check_refused(enqueue, "queue", QUEUE_RULE).await;
    let pause = cli
        .post("/api/v1/queues/my%20queue/pause")
        .header("authorization", &bearer)
        .send()
        .await;
    check_refused(pause, "name", QUEUE_RULE).await;
    let list = cli
        .get("/api/v1/jobs?queue=a,b")
        .header("authorization", &bearer)
        .send()
        .await;
    check_refused(list, "queue", QUEUE_RULE).await;
    let bulk = cli
        .post("/api/v1/jobs/bulk/cancel")
        .header("authorization", &bearer)
        .body_json(&json!({"queue": "email:4"}))
        .send()
        .await;
    check_refused(bulk, "queue", QUEUE_RULE).await;
    let n: i64 = db
        .scalar("SELECT (SELECT count(*) FROM jobs) + (SELECT count(*) FROM queues)")
        .await;
    assert_eq!(n, 0, "nothing was written");

    // A name a worker can serve goes through.
    cli.post("/api/v1/queues/my-queue.2/pause")
        .header("authorization", &bearer)
        .send()
        .await
        .assert_status_is_ok();
}

#[tokio::test]
async fn a_bad_service_name_is_refused() {
    let db = TestDb::new().await;
    let cli = client(&db);
    let bearer = format!("Bearer {}", token(&db, &cli, "ops", Role::Operator).await);
    let force = cli
        .post(format!("/api/v1/breakers/{}/force", "s".repeat(65)))
        .header("authorization", &bearer)
        .body_json(&json!({"state": "open"}))
        .send()
        .await;
    check_refused(force, "service", "1 to 64 letters, digits, _ - .").await;
    let args = cli
        .post("/api/v1/jobs")
        .header("authorization", &bearer)
        .body_json(&json!({"kind": "noop", "args": {"service": "no such"}}))
        .send()
        .await;
    check_refused(args, "args.service", "1 to 64 letters, digits, _ - .").await;
}
