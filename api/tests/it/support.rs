//! Helpers shared by the test modules.

use api::config::Settings;
use common::testing::TestDb;
use poem::EndpointExt;
use poem::endpoint::BoxEndpoint;
use poem::test::{TestClient, TestResponse};
use serde_json::Value;

/// The JSON body of `resp`.
pub async fn json(resp: TestResponse) -> Value {
    resp.0.into_body().into_json().await.expect("a JSON body")
}

/// Assert that `body` is the one error shape with `code`, and return its request id.
pub fn assert_error(body: &Value, code: &str) -> String {
    assert_eq!(body["success"], Value::Bool(false), "{body}");
    assert_eq!(body["error_code"], code, "{body}");
    assert!(body["message"].is_string(), "{body}");
    assert!(body["details"].is_object(), "{body}");
    let id = body["request_id"]
        .as_str()
        .expect("a request id")
        .to_owned();
    assert!(!id.is_empty());
    id
}

/// Settings for `db` with `extra` on top of the defaults.
pub fn settings(db: &TestDb, extra: &[(&str, &str)]) -> Settings {
    let mut all = vec![("DATABASE_URL", db.url.as_str())];
    all.extend_from_slice(extra);
    Settings::from_source(all.as_slice()).expect("valid test settings")
}

/// A client of the app on `db` with default settings.
pub fn client(db: &TestDb) -> TestClient<BoxEndpoint<'static>> {
    client_with(db, &[])
}

/// A client of the app on `db` with `extra` settings.
pub fn client_with(db: &TestDb, extra: &[(&str, &str)]) -> TestClient<BoxEndpoint<'static>> {
    TestClient::new(api::app(db.pool.clone(), &settings(db, extra)).boxed())
}
