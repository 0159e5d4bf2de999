//! Registration, login, refresh, logout, tokens and API keys, end to end.

use std::time::{SystemTime, UNIX_EPOCH};

use domain::accounts::Role;
use poem::http::StatusCode;
use serde_json::json;
use testkit::TestDb;
use testkit::http::bearer;

use crate::support::{PASSWORD, assert_error, client, create_user, json, login, token};

#[tokio::test]
async fn register_creates_users_and_refuses_bad_or_taken_names() {
    let db = TestDb::new().await;
    let cli = client(&db);
    let resp = cli
        .post("/api/v1/auth/register")
        .body_json(&json!({"username": "Alice", "password": PASSWORD}))
        .send()
        .await;
    resp.assert_status(StatusCode::CREATED);
    let body = json(resp).await;
    assert_eq!(body["username"], "Alice");
    assert_eq!(body["role"], "user");
    assert!(body.get("password").is_none());
    let stored: String = db.scalar("SELECT password_hash FROM users").await;
    assert!(stored.starts_with("$argon2id$"));

    let resp = cli
        .post("/api/v1/auth/register")
        .body_json(&json!({"username": "alice", "password": PASSWORD}))
        .send()
        .await;
    resp.assert_status(StatusCode::CONFLICT);
    assert_error(&json(resp).await, "CONFLICT");

    // Every bad field is reported at once.
    let resp = cli
        .post("/api/v1/auth/register")
        .body_json(&json!({"username": "b c", "password": "short"}))
        .send()
        .await;
    resp.assert_status(StatusCode::UNPROCESSABLE_ENTITY);
    let body = json(resp).await;
    assert_error(&body, "VALIDATION_FAILED");
    assert!(body["details"]["field_errors"]["username"].is_string());
    assert!(body["details"]["field_errors"]["password"].is_string());
}

#[tokio::test]
async fn malformed_bodies_answer_in_the_error_shape() {
    let db = TestDb::new().await;
    let cli = client(&db);
    let resp = cli
        .post("/api/v1/auth/register")
        .body_json(&json!({"username": "alice"}))
        .send()
        .await;
    resp.assert_status(StatusCode::UNPROCESSABLE_ENTITY);
    assert_error(&json(resp).await, "VALIDATION_FAILED");

    let resp = cli
        .post("/api/v1/auth/register")
        .content_type("application/json")
        .body("{not json")
        .send()
        .await;
    resp.assert_status(StatusCode::UNPROCESSABLE_ENTITY);
    assert_error(&json(resp).await, "VALIDATION_FAILED");

    let resp = cli
        .post("/api/v1/auth/register")
        .content_type("text/plain")
        .body("alice")
        .send()
        .await;
    resp.assert_status(StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_error(&json(resp).await, "UNSUPPORTED_MEDIA_TYPE");
}

#[tokio::test]
async fn login_issues_tokens_that_identify_the_user() {
    let db = TestDb::new().await;
    let cli = client(&db);
    create_user(&db, "alice", Role::Operator).await;
    let resp = login(&cli, "alice", PASSWORD).await;
    resp.assert_status_is_ok();
    let body = json(resp).await;
    assert_eq!(body["token_type"], "bearer");
    assert_eq!(body["expires_in"], 1800);
    let access = body["access_token"].as_str().unwrap();
    let resp = cli
        .get("/api/v1/auth/me")
        .header("authorization", bearer(access))
        .send()
        .await;
    resp.assert_status_is_ok();
    assert_eq!(
        json(resp).await,
        json!({"actor": "user:alice", "role": "operator"})
    );
    let stored: i64 = db
        .scalar("SELECT count(*) FROM refresh_tokens WHERE octet_length(token_hash) = 32")
        .await;
    assert_eq!(stored, 1);

    let resp = login(&cli, "alice", "wrong password 123").await;
    resp.assert_status(StatusCode::UNAUTHORIZED);
    assert_error(&json(resp).await, "UNAUTHORIZED");
    let resp = login(&cli, "nobody", PASSWORD).await;
    resp.assert_status(StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn repeated_failed_logins_lock_the_account_for_a_while() {
    let db = TestDb::new().await;
    let cli = client(&db);
    create_user(&db, "alice", Role::User).await;
    for _ in 0..5 {
        login(&cli, "alice", "wrong password 123")
            .await
            .assert_status(StatusCode::UNAUTHORIZED);
    }
    // Even the right password is refused now.
    let resp = login(&cli, "alice", PASSWORD).await;
    resp.assert_status(StatusCode::TOO_MANY_REQUESTS);
    assert!(resp.0.headers().contains_key("retry-after"));
    assert_error(&json(resp).await, "RATE_LIMITED");
    // Another account is not affected (the test client has no address, so no per-IP count).
    create_user(&db, "bob", Role::User).await;
    login(&cli, "bob", PASSWORD).await.assert_status_is_ok();
}

#[tokio::test]
async fn refresh_rotates_and_a_reused_token_revokes_the_session() {
    let db = TestDb::new().await;
    let cli = client(&db);
    create_user(&db, "alice", Role::User).await;
    let first = json(login(&cli, "alice", PASSWORD).await).await;
    let r1 = first["refresh_token"].as_str().unwrap().to_owned();
    let refresh = |t: String| {
        let cli = &cli;
        async move {
            cli.post("/api/v1/auth/refresh")
                .body_json(&json!({"refresh_token": t}))
                .send()
                .await
        }
    };
    let resp = refresh(r1.clone()).await;
    resp.assert_status_is_ok();
    let second = json(resp).await;
    let r2 = second["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(r1, r2);
    assert!(second["access_token"].is_string());

    // The old token again: refused, and the newer one dies with it.
    let resp = refresh(r1).await;
    resp.assert_status(StatusCode::UNAUTHORIZED);
    assert_error(&json(resp).await, "UNAUTHORIZED");
    refresh(r2).await.assert_status(StatusCode::UNAUTHORIZED);

    // Logout revokes a session.
    let third = json(login(&cli, "alice", PASSWORD).await).await;
    let r3 = third["refresh_token"].as_str().unwrap().to_owned();
    cli.post("/api/v1/auth/logout")
        .body_json(&json!({"refresh_token": r3}))
        .send()
        .await
        .assert_status(StatusCode::NO_CONTENT);
    refresh(r3).await.assert_status(StatusCode::UNAUTHORIZED);
}

fn b64url(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn signed(claims: serde_json::Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

#[tokio::test]
async fn expired_tampered_foreign_and_unsigned_tokens_are_401() {
    let db = TestDb::new().await;
    let cli = client(&db);
    let good = token(&db, &cli, "alice", Role::User).await;
    let secret = crate::support::SECRET_KEY;
    let claims = |exp: u64, role: &str| {
        json!({"sub": "1", "name": "alice", "role": role, "ver": 0, "iss": api::auth::ISSUER,
               "aud": api::auth::AUDIENCE, "iat": now(), "exp": exp})
    };
    let expired = signed(claims(now() - 120, "user"), secret);
    let foreign = signed(
        claims(now() + 600, "admin"),
        "some other secret of 32 bytes!!!",
    );
    let unsigned = format!(
        "{}.{}.",
        b64url(br#"{"alg":"none","typ":"JWT"}"#),
        b64url(claims(now() + 600, "admin").to_string().as_bytes())
    );
    // Swap the payload for one claiming admin, keep the signature.
    let parts: Vec<&str> = good.split('.').collect();
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64url(claims(now() + 600, "admin").to_string().as_bytes()),
        parts[2]
    );
    for (what, t) in [
        ("expired", expired),
        ("foreign", foreign),
        ("alg none", unsigned),
        ("tampered", tampered),
        ("garbage", "not.a.jwt".to_owned()),
    ] {
        let resp = cli
            .get("/api/v1/auth/me")
            .header("authorization", bearer(&t))
            .send()
            .await;
        assert_eq!(resp.0.status(), StatusCode::UNAUTHORIZED, "{what}");
        assert_error(&json(resp).await, "UNAUTHORIZED");
    }
    // No credentials at all: 401 in the same shape, not a 400.
    let resp = cli.get("/api/v1/auth/me").send().await;
    resp.assert_status(StatusCode::UNAUTHORIZED);
    assert_error(&json(resp).await, "UNAUTHORIZED");
    // The good one works.
    cli.get("/api/v1/auth/me")
        .header("authorization", bearer(&good))
        .send()
        .await
        .assert_status_is_ok();
}

#[tokio::test]
async fn admins_manage_api_keys_and_keys_authenticate_until_revoked() {
    let db = TestDb::new().await;
    let cli = client(&db);
    let admin = token(&db, &cli, "root", Role::Admin).await;
    let operator = token(&db, &cli, "ops", Role::Operator).await;
    let user = token(&db, &cli, "joe", Role::User).await;
    let create = |token: Option<String>| {
        let cli = &cli;
        async move {
            let mut req = cli
                .post("/api/v1/admin/api-keys")
                .body_json(&json!({"name": "ci"}));
            if let Some(b) = token {
                req = req.header("authorization", bearer(&b));
            }
            req.send().await
        }
    };
    create(None).await.assert_status(StatusCode::UNAUTHORIZED);
    let resp = create(Some(operator)).await;
    resp.assert_status(StatusCode::FORBIDDEN);
    assert_error(&json(resp).await, "FORBIDDEN");
    create(Some(user))
        .await
        .assert_status(StatusCode::FORBIDDEN);

    let resp = create(Some(admin.clone())).await;
    resp.assert_status(StatusCode::CREATED);
    let created = json(resp).await;
    let key = created["key"].as_str().unwrap().to_owned();
    assert!(key.starts_with("qsk_"));
    assert_eq!(created["role"], "operator");
    assert!(key.starts_with(created["prefix"].as_str().unwrap()));
    let id = created["id"].as_i64().unwrap();

    let listed = json(
        cli.get("/api/v1/admin/api-keys")
            .header("authorization", bearer(&admin))
            .send()
            .await,
    )
    .await;
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert!(!listed.to_string().contains(&key), "the key is shown once");

    let me = cli
        .get("/api/v1/auth/me")
        .header("x-api-key", &key)
        .send()
        .await;
    me.assert_status_is_ok();
    assert_eq!(
        json(me).await,
        json!({"actor": "api_key:ci", "role": "operator"})
    );

    let revoke = || {
        cli.delete(format!("/api/v1/admin/api-keys/{id}"))
            .header("authorization", bearer(&admin))
            .send()
    };
    revoke().await.assert_status(StatusCode::NO_CONTENT);
    let resp = revoke().await;
    resp.assert_status(StatusCode::NOT_FOUND);
    assert_error(&json(resp).await, "NOT_FOUND");
    cli.get("/api/v1/auth/me")
        .header("x-api-key", &key)
        .send()
        .await
        .assert_status(StatusCode::UNAUTHORIZED);

    // Keys are never admins.
    let resp = cli
        .post("/api/v1/admin/api-keys")
        .header("authorization", bearer(&admin))
        .body_json(&json!({"name": "x", "role": "admin"}))
        .send()
        .await;
    resp.assert_status(StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn the_first_admin_is_created_once() {
    let db = TestDb::new().await;
    assert!(
        api::auth::ensure_admin(&db.pool, "root", PASSWORD)
            .await
            .unwrap()
    );
    assert!(
        !api::auth::ensure_admin(&db.pool, "root", PASSWORD)
            .await
            .unwrap()
    );
    assert!(
        api::auth::ensure_admin(&db.pool, "root2", "weak")
            .await
            .is_err()
    );
    let role: String = db
        .scalar("SELECT role::text FROM users WHERE username = 'root'")
        .await;
    assert_eq!(role, "admin");
    let cli = client(&db);
    login(&cli, "root", PASSWORD).await.assert_status_is_ok();
}

#[tokio::test]
async fn create_admin_reads_the_password_from_stdin() {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let db = TestDb::new().await;
    let run = |password: &str| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_api"))
            .args(["create-admin", "--username", "root"])
            .env_clear()
            .env("DATABASE_URL", &db.url)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
        child.wait_with_output().unwrap()
    };
    let weak = run("weak");
    assert_eq!(weak.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&weak.stderr).contains("password policy"));
    let ok = run(PASSWORD);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let again = run(PASSWORD);
    assert_eq!(again.status.code(), Some(1));
    login(&client(&db), "root", PASSWORD)
        .await
        .assert_status_is_ok();
}
