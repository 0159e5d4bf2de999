//! Database errors answer alike on every route: 503 when the database is out of reach, 500
//! for anything else, and the job unique-key conflict only for the jobs' unique-key index.

use poem::http::StatusCode;
use poem::test::TestClient;
use serde_json::json;
use testkit::TestDb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{assert_error, client, json, token};

/// A server that speaks just enough of PostgreSQL's protocol to let a client connect, then
/// hangs up at the client's first statement: a connection lost mid-request. Returns its port.
async fn hanging_up_server() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                // The startup message: its length, then the rest.
                let len = socket.read_i32().await? as usize;
                let mut rest = vec![0; len.saturating_sub(4)];
                socket.read_exact(&mut rest).await?;
                // AuthenticationOk, then ReadyForQuery (idle).
                socket
                    .write_all(&[b'R', 0, 0, 0, 8, 0, 0, 0, 0, b'Z', 0, 0, 0, 5, b'I'])
                    .await?;
                // The first statement: hang up.
                let _ = socket.read(&mut [0; 1]).await?;
                std::io::Result::Ok(())
            });
        }
    });
    port
}

/// An admin's access token signed with the test apps' key.
fn operator_token() -> String {
    crate::support::signed_token(1, "ops", "admin", 600)
}

#[tokio::test]
async fn a_connection_lost_mid_request_is_a_503_on_every_route() {
    let url = format!(
        "postgres://nobody@127.0.0.1:{}/none",
        hanging_up_server().await
    );
    let pool = engine::db::pool(&engine::config::DatabaseSettings::for_url(&url)).unwrap();
    let cli = TestClient::new(api::app(pool, &crate::support::settings_for_url(&url, &[])));
    let bearer = format!("Bearer {}", operator_token());
    let login = json!({"username": "someone", "password": "whatever it is"});
    for (method, path) in [
        ("POST", "/api/v1/auth/login"),
        ("GET", "/api/v1/audit"),
        ("GET", "/api/v1/breakers"),
        ("GET", "/api/v1/admin/teams"),
        ("GET", "/api/v1/admin/api-keys"),
        ("GET", "/api/v1/queues"),
        ("POST", "/api/v1/queues/mail/pause"),
        ("GET", "/api/v1/jobs"),
    ] {
        let req = match method {
            "POST" => cli.post(path).body_json(&login),
            _ => cli.get(path),
        };
        let resp = req.header("Authorization", &bearer).send().await;
        resp.assert_status(StatusCode::SERVICE_UNAVAILABLE);
        assert_error(&json(resp).await, "SERVICE_UNAVAILABLE");
    }
}

#[tokio::test]
async fn another_unique_violation_is_not_the_job_unique_key() {
    let db = TestDb::new().await;
    let cli = client(&db);
    let bearer = format!(
        "Bearer {}",
        token(&db, &cli, "ops", domain::accounts::Role::Operator).await
    );
    // An audit log that refuses the same action on the same target twice: the second pause's
    // audit entry is a unique violation, but of no job's key.
    db.conn()
        .await
        .batch_execute("CREATE UNIQUE INDEX audit_once ON audit_log (action, target)")
        .await
        .unwrap();
    let pause = || {
        cli.post("/api/v1/queues/mail/pause")
            .header("Authorization", &bearer)
            .send()
    };
    pause().await.assert_status_is_ok();
    let resp = pause().await;
    resp.assert_status(StatusCode::INTERNAL_SERVER_ERROR);
    let body = json(resp).await;
    assert_error(&body, "INTERNAL_ERROR");
    assert!(!body.to_string().contains("unique key"), "{body}");
}
