//! The `api` binary as deployed: a real listener, so peer addresses exist and
//! `X-Forwarded-For` handling can be seen end to end; start-up admin, JSON logs, SIGTERM.

use testkit::TestDb;
use testkit::fixtures::{ADMIN, PASSWORD, admin_env};
use testkit::http::Client;
use testkit::process::{Api, Logs};

/// The `api` on `db` with `env`, its logs kept.
async fn start(db: &TestDb, env: &[(&str, &str)]) -> Api {
    let mut all = vec![("DATABASE_URL", db.url.as_str())];
    all.extend_from_slice(env);
    Api::start_with(env!("CARGO_BIN_EXE_api"), &all, Logs::Captured).await
}

/// The status of `GET {path}` with `headers`.
async fn status(client: &Client, path: &str, headers: &[(&str, &str)]) -> u16 {
    let mut req = client.get(path);
    for (k, v) in headers {
        req = req.header(k, v);
    }
    req.send().await.status
}

#[tokio::test(flavor = "multi_thread")]
async fn forwarded_for_counts_per_client_only_behind_a_trusted_proxy() {
    let db = TestDb::new().await;
    // The test connects from 127.0.0.1, so it is the trusted proxy here.
    let behind_api = start(
        &db,
        &[
            ("RATE_LIMIT_REQUESTS", "2"),
            ("TRUSTED_PROXIES", "127.0.0.1"),
        ],
    )
    .await;
    let behind = behind_api.client();
    let a = [("X-Forwarded-For", "203.0.113.5")];
    let b = [("X-Forwarded-For", "203.0.113.6")];
    assert_eq!(status(&behind, "/nope", &a).await, 404);
    assert_eq!(status(&behind, "/nope", &a).await, 404);
    let limited = behind
        .get("/nope")
        .header("X-Forwarded-For", "203.0.113.5")
        .send()
        .await;
    assert_eq!(limited.status, 429);
    assert!(limited.header("retry-after").is_some(), "{limited:?}");
    assert_eq!(
        status(&behind, "/nope", &b).await,
        404,
        "another client has its own count"
    );

    // Not trusted: the header is the caller's invention and every request is the peer's.
    let direct_api = start(&db, &[("RATE_LIMIT_REQUESTS", "2")]).await;
    let direct = direct_api.client();
    assert_eq!(status(&direct, "/nope", &a).await, 404);
    assert_eq!(status(&direct, "/nope", &b).await, 404);
    assert_eq!(
        status(&direct, "/nope", &[("X-Forwarded-For", "198.51.100.1")]).await,
        429
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn starts_with_its_admin_logs_json_and_stops_on_sigterm() {
    let db = TestDb::new().await;
    let server = start(&db, &admin_env()).await;
    let login = server
        .client()
        .post("/api/v1/auth/login")
        .header("X-Request-Id", "srv-login-1")
        .json(&serde_json::json!({"username": ADMIN, "password": PASSWORD}))
        .send()
        .await;
    assert_eq!(login.status, 200, "{login:?}");
    assert_eq!(login.header("x-request-id"), Some("srv-login-1"));
    let (code, logs) = server.stop().await;
    assert_eq!(code, Some(0), "{logs}");
    let lines: Vec<serde_json::Value> = logs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
        .collect();
    let login = lines
        .iter()
        .find(|l| l["fields"]["route"] == "/api/v1/auth/login")
        .expect("an access line for the login");
    assert_eq!(login["span"]["request_id"], "srv-login-1");
    assert_eq!(login["fields"]["status"], 200);
    assert!(!logs.contains(PASSWORD), "the password reached the logs");
    assert!(
        lines
            .iter()
            .any(|l| l["fields"]["message"] == "admin from ADMIN_USERNAME")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn healthcheck_passes_on_a_serving_api_and_fails_on_a_closed_port() {
    let db = TestDb::new().await;
    let api = start(&db, &[]).await;
    let check = |port: u16| {
        std::process::Command::new(env!("CARGO_BIN_EXE_api"))
            .arg("healthcheck")
            .env_clear()
            .env("PORT", port.to_string())
            .output()
            .expect("run api healthcheck")
    };
    let ok = check(api.port);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let closed = check(testkit::free_port().unwrap());
    assert_eq!(closed.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&closed.stderr).starts_with("api healthcheck: "));
}
