//! The one error shape: unknown routes, wrong methods and parse errors all answer with it,
//! and its request id is the one echoed in `X-Request-Id`.

use common::testing::TestDb;
use poem::http::StatusCode;

use crate::support::{assert_error, client, json};

#[tokio::test]
async fn unknown_route_is_a_json_404_with_the_request_id() {
    let db = TestDb::new().await;
    let cli = client(&db);
    let resp = cli
        .get("/nope")
        .header("X-Request-Id", "req-42")
        .send()
        .await;
    resp.assert_status(StatusCode::NOT_FOUND);
    resp.assert_header("x-request-id", "req-42");
    resp.assert_content_type("application/json; charset=utf-8");
    let id = assert_error(&json(resp).await, "NOT_FOUND");
    assert_eq!(id, "req-42");
}

#[tokio::test]
async fn wrong_method_is_a_json_405() {
    let db = TestDb::new().await;
    let cli = client(&db);
    let resp = cli.post("/health").send().await;
    resp.assert_status(StatusCode::METHOD_NOT_ALLOWED);
    assert_error(&json(resp).await, "METHOD_NOT_ALLOWED");
}

#[tokio::test]
async fn a_request_id_is_made_when_missing_or_unsafe() {
    let db = TestDb::new().await;
    let cli = client(&db);
    let resp = cli
        .get("/nope")
        .header("X-Request-Id", "bad id with spaces")
        .send()
        .await;
    let echoed = resp
        .0
        .headers()
        .get("x-request-id")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert_ne!(echoed, "bad id with spaces");
    assert_eq!(echoed.len(), 36, "a uuid: {echoed}");
    assert_eq!(assert_error(&json(resp).await, "NOT_FOUND"), echoed);
}
