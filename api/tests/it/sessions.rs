//! Who can sign tokens and how long a token outlives its session, against the real `api`
//! binary: no environment but development starts without a strong `SECRET_KEY`, development
//! signs with a random key it keeps under `./.data` (never a published one), and a role
//! change, a disabled account or a logout ends the user's access tokens on the next request.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use testkit::TestDb;
use testkit::dir::TempDir;
use testkit::fixtures::{ADMIN, PASSWORD, admin_env};
use testkit::process::{Api, Logs};

use crate::support::sign;

/// The key earlier versions signed with in development, as published in the code and in
/// `.env.example`.
const PUBLISHED_KEY: &str = "quayside-development-secret-key-change-me";

/// Run the `api` with only `env`; its exit code and its stderr. Panics if it is still
/// running after 20 seconds (it started when it should have refused to).
fn run_to_exit(env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_api"))
        .env_clear()
        .env("API_HOST", "127.0.0.1")
        .env("PORT", testkit::free_port().unwrap().to_string())
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the api");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the api started with {env:?}: it should have refused to");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    (status.code(), stderr)
}

#[tokio::test]
async fn staging_and_production_refuse_to_start_without_a_strong_key() {
    let db = TestDb::new().await;
    for environment in ["staging", "production"] {
        for key in [None, Some("short"), Some(PUBLISHED_KEY)] {
            let mut env = vec![
                ("DATABASE_URL", db.url.as_str()),
                ("ENVIRONMENT", environment),
            ];
            env.extend(key.map(|k| ("SECRET_KEY", k)));
            let (code, stderr) = run_to_exit(&env);
            assert_eq!(code, Some(2), "{environment} {key:?}: {stderr}");
            assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
            assert!(stderr.contains("SECRET_KEY"), "{stderr}");
        }
    }
}

/// An access token for the admin (user 1 of a fresh database) signed with `key`.
fn admin_token(key: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    sign(
        &json!({"sub": "1", "name": ADMIN, "role": "admin", "ver": 0,
                "iss": api::auth::ISSUER, "aud": api::auth::AUDIENCE,
                "iat": now, "exp": now + 600}),
        key,
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn development_signs_with_a_kept_random_key_never_the_published_one() {
    let db = TestDb::new().await;
    let dir = TempDir::new("quayside-devkey");
    let [admin_name, admin_password] = admin_env();
    let env = [
        ("DATABASE_URL", db.url.as_str()),
        admin_name,
        admin_password,
        // Unset: development generates its key.
        ("SECRET_KEY", ""),
    ];
    let api = Api::start_in(env!("CARGO_BIN_EXE_api"), Some(&dir.0), &env, Logs::Quiet).await;
    let forged = api.client().with_bearer(&admin_token(PUBLISHED_KEY));
    let resp = forged.get("/api/v1/admin/api-keys").send().await;
    assert_eq!(
        resp.status, 401,
        "the published key signs nothing: {resp:?}"
    );

    let login = api.client().login(ADMIN, PASSWORD).await;
    assert_eq!(login.status, 200, "{login:?}");
    let token = login.json()["access_token"].as_str().unwrap().to_owned();
    let admin = api.client().with_bearer(&token);
    assert_eq!(admin.get("/api/v1/admin/api-keys").send().await.status, 200);
    let key_file = dir.0.join(".data/secret_key");
    let key = std::fs::read_to_string(&key_file).expect("the key is kept in ./.data");
    assert!(key.trim().len() >= 64, "32 random bytes, hex");
    assert_ne!(key.trim(), PUBLISHED_KEY);
    let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "only its owner reads it");
    drop(api);

    // Restarted, the same key: the session survives.
    let api = Api::start_in(env!("CARGO_BIN_EXE_api"), Some(&dir.0), &env, Logs::Quiet).await;
    let admin = api.client().with_bearer(&token);
    let again = admin.get("/api/v1/admin/api-keys").send().await;
    assert_eq!(again.status, 200, "{again:?}");
    let again = api.client().with_bearer(&admin_token(key.trim()));
    assert_eq!(again.get("/api/v1/admin/api-keys").send().await.status, 200);
    drop(api);
    assert_eq!(std::fs::read_to_string(&key_file).unwrap(), key);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_role_change_a_disabled_account_or_a_logout_ends_old_tokens_at_once() {
    let db = TestDb::new().await;
    let mut env = vec![("DATABASE_URL", db.url.as_str())];
    env.extend(admin_env());
    let api = Api::start(env!("CARGO_BIN_EXE_api"), &env).await;
    let conn = db.conn().await;

    // A demoted admin's token stops opening admin operations on the next request.
    let admin = api.admin().await;
    assert_eq!(admin.get("/api/v1/admin/api-keys").send().await.status, 200);
    conn.execute(
        "UPDATE users SET role = 'operator' WHERE username = $1",
        &[&ADMIN],
    )
    .await
    .unwrap();
    let resp = admin.get("/api/v1/admin/api-keys").send().await;
    assert_eq!(resp.status, 401, "{resp:?}");
    // Logged in again, the operator gets what operators get.
    let operator = api.admin().await;
    assert_eq!(operator.get("/api/v1/audit").send().await.status, 200);
    assert_eq!(
        operator.get("/api/v1/admin/api-keys").send().await.status,
        403
    );

    // A disabled account: its token and its logins are refused.
    conn.execute(
        "UPDATE users SET disabled_at = now() WHERE username = $1",
        &[&ADMIN],
    )
    .await
    .unwrap();
    assert_eq!(operator.get("/api/v1/audit").send().await.status, 401);
    assert_eq!(api.client().login(ADMIN, PASSWORD).await.status, 401);
    conn.execute(
        "UPDATE users SET disabled_at = NULL WHERE username = $1",
        &[&ADMIN],
    )
    .await
    .unwrap();

    // A logout ends the access token too, not 30 minutes later.
    let login = api.client().login(ADMIN, PASSWORD).await;
    assert_eq!(login.status, 200, "{login:?}");
    let tokens = login.json();
    let session = api
        .client()
        .with_bearer(tokens["access_token"].as_str().unwrap());
    assert_eq!(session.get("/api/v1/audit").send().await.status, 200);
    let out = api
        .client()
        .post("/api/v1/auth/logout")
        .json(&json!({"refresh_token": tokens["refresh_token"]}))
        .send()
        .await;
    assert_eq!(out.status, 204, "{out:?}");
    assert_eq!(session.get("/api/v1/audit").send().await.status, 401);
}
