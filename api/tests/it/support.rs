//! Helpers shared by the test modules.

use api::config::Settings;
use domain::accounts::Role;
use poem::endpoint::BoxEndpoint;
use poem::test::{TestClient, TestResponse};
use poem::{Endpoint, EndpointExt};
use serde_json::Value;
use testkit::TestDb;

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

/// Settings for `db` with `extra` on top of the defaults and [`SECRET_KEY`].
pub fn settings(db: &TestDb, extra: &[(&str, &str)]) -> Settings {
    settings_for_url(&db.url, extra)
}

/// Settings for the database at `url` with `extra` on top of the defaults and [`SECRET_KEY`].
pub fn settings_for_url(url: &str, extra: &[(&str, &str)]) -> Settings {
    // The first of a name wins: `extra` before the defaults.
    let mut all = extra.to_vec();
    all.extend_from_slice(&[("DATABASE_URL", url), ("SECRET_KEY", SECRET_KEY)]);
    Settings::from_source(all.as_slice()).expect("valid test settings")
}

/// An access token the test apps accept for user `id` (if the row agrees: its name, its
/// token version 0), signed with [`SECRET_KEY`] and expiring in `ttl_s` seconds (negative:
/// expired).
pub fn signed_token(id: i64, name: &str, role: &str, ttl_s: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    sign(
        &serde_json::json!({
            "sub": id.to_string(), "name": name, "role": role, "ver": 0,
            "iss": api::auth::ISSUER, "aud": api::auth::AUDIENCE,
            "iat": now, "exp": now + ttl_s,
        }),
        SECRET_KEY,
    )
}

/// `claims` signed with HS256 and `secret`.
pub fn sign(claims: &Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// A client of the app on `db` with default settings.
pub fn client(db: &TestDb) -> TestClient<BoxEndpoint<'static>> {
    client_with(db, &[])
}

/// A client of the app on `db` with `extra` settings.
pub fn client_with(db: &TestDb, extra: &[(&str, &str)]) -> TestClient<BoxEndpoint<'static>> {
    TestClient::new(api::app(db.pool.clone(), &settings(db, extra)).boxed())
}

pub use testkit::fixtures::{PASSWORD, SECRET_KEY};

/// Create a user with `role` directly in the database (registration only makes `user`s).
pub async fn create_user(db: &TestDb, username: &str, role: Role) {
    let hash = api::auth::hash_password(PASSWORD.into()).await.unwrap();
    domain::accounts::create_user(&db.conn().await, username, &hash, role)
        .await
        .unwrap()
        .expect("a new user");
}

/// Log in and return the token pair.
pub async fn login<E: Endpoint>(
    cli: &TestClient<E>,
    username: &str,
    password: &str,
) -> TestResponse {
    cli.post("/api/v1/auth/login")
        .body_json(&serde_json::json!({"username": username, "password": password}))
        .send()
        .await
}

/// A user with `role` and an access token for it.
pub async fn token<E: Endpoint>(
    db: &TestDb,
    cli: &TestClient<E>,
    username: &str,
    role: Role,
) -> String {
    create_user(db, username, role).await;
    let resp = login(cli, username, PASSWORD).await;
    resp.assert_status_is_ok();
    json(resp).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// A `MakeWriter` into a shared buffer.
#[derive(Clone, Default)]
pub struct Captured(pub std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

impl Captured {
    /// Everything written so far.
    pub fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}
