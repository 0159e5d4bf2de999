//! The one error shape: unknown routes, wrong methods and parse errors all answer with it,
//! and its request id is the one echoed in `X-Request-Id`.

use poem::http::StatusCode;
use testkit::TestDb;
use testkit::http::bearer;

use crate::support::{Captured, assert_error, client, json};

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

#[tokio::test]
async fn a_lost_database_is_a_503_logged_once_and_not_described() {
    let port = testkit::free_port().unwrap();
    let url = format!("postgres://nobody@127.0.0.1:{port}/none");
    let pool = engine::db::pool(&engine::config::DatabaseSettings::for_url(&url)).unwrap();
    let settings = crate::support::settings_for_url(&url, &[]);
    let cli = poem::test::TestClient::new(api::app(pool, &settings));
    let token = crate::support::signed_token(1, "ops", "operator", 600);
    let logs = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_writer(logs.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let resp = cli
        .get("/api/v1/jobs")
        .header("authorization", bearer(&token))
        .header("x-request-id", "lost-db")
        .send()
        .await;
    resp.assert_status(StatusCode::SERVICE_UNAVAILABLE);
    let body = json(resp).await;
    assert_eq!(assert_error(&body, "SERVICE_UNAVAILABLE"), "lost-db");
    assert!(!body.to_string().contains(&port.to_string()), "{body}");
    let text = logs.text();
    let errors: Vec<&str> = text.lines().filter(|l| l.contains("\"ERROR\"")).collect();
    assert_eq!(errors.len(), 1, "{text}");
    assert!(errors[0].contains("lost-db"));
    assert!(errors[0].contains("cause"));
}
