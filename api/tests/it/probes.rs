//! The probes against a real database, and the committed OpenAPI contract.

use common::testing::TestDb;
use poem::test::TestClient;

use crate::support::client;

#[tokio::test]
async fn health_and_ready_answer_from_the_database() {
    let db = TestDb::new().await;
    let cli = client(&db);
    let resp = cli.get("/health").send().await;
    resp.assert_status_is_ok();
    resp.assert_json(
        serde_json::json!({"status": "healthy", "database": "connected", "version": api::VERSION}),
    )
    .await;
    cli.get("/ready").send().await.assert_status_is_ok();
}

#[tokio::test]
async fn health_is_503_when_the_database_is_unreachable() {
    let port = common::cluster::free_port().unwrap();
    let pool = common::db::pool(&common::config::DatabaseSettings::for_url(format!(
        "postgres://nobody@127.0.0.1:{port}/none"
    )))
    .unwrap();
    let settings = api::config::Settings::for_database_url("postgres://unused@127.0.0.1/none");
    let cli = TestClient::new(api::app(pool, &settings));
    let started = std::time::Instant::now();
    let resp = cli.get("/health").send().await;
    resp.assert_status(poem::http::StatusCode::SERVICE_UNAVAILABLE);
    assert!(started.elapsed() < std::time::Duration::from_secs(3));
    cli.get("/ready")
        .send()
        .await
        .assert_status(poem::http::StatusCode::SERVICE_UNAVAILABLE);
}

#[test]
fn committed_openapi_json_matches_the_code() {
    let committed =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../openapi.json")).unwrap();
    assert!(
        committed == api::spec_json(),
        "openapi.json is stale: regenerate with `cargo run -p api -- openapi > openapi.json`"
    );
}
