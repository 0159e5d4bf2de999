//! Helpers shared by the test modules.

use poem::test::TestResponse;
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
