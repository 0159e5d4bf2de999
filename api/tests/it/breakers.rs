//! The circuit breakers and rate limits of external services through the API, and who may see
//! and force them.

use std::time::Duration;

use domain::accounts::Role;
use engine::breaker::{self, Call, Policy};
use engine::ratelimit::{self, Limit};
use poem::http::StatusCode;
use serde_json::{Value, json};
use testkit::TestDb;
use testkit::http::bearer;

use crate::support::{assert_error, client, json, token};

#[tokio::test]
async fn breakers_list_their_state_and_rate_limit_use_to_operators_only() {
    let db = TestDb::new().await;
    let cli = client(&db);
    let user = token(&db, &cli, "player", Role::User).await;
    let ops = token(&db, &cli, "ops", Role::Operator).await;

    let resp = cli.get("/api/v1/breakers").send().await;
    resp.assert_status(StatusCode::UNAUTHORIZED);
    assert_error(&json(resp).await, "UNAUTHORIZED");
    let resp = cli
        .get("/api/v1/breakers")
        .header("authorization", bearer(&user))
        .send()
        .await;
    resp.assert_status(StatusCode::FORBIDDEN);
    assert_error(&json(resp).await, "FORBIDDEN");

    let list = |who: String| {
        let cli = &cli;
        async move {
            let resp = cli
                .get("/api/v1/breakers")
                .header("authorization", bearer(&who))
                .send()
                .await;
            resp.assert_status_is_ok();
            json(resp).await
        }
    };
    assert_eq!(list(ops.clone()).await, json!([]));

    // Workers opened smtp's breaker and used Cloudinary's rate limit.
    let policy = Policy {
        failure_threshold: 2,
        ..Policy::default()
    };
    let mut c = db.conn().await;
    for _ in 0..2 {
        breaker::record(&mut c, "smtp", Call::Failure, false, &policy)
            .await
            .unwrap();
    }
    let limit = Limit {
        max_calls: 500,
        period: Duration::from_secs(60),
    };
    for _ in 0..3 {
        ratelimit::take(&mut c, "cloudinary", limit).await.unwrap();
    }
    let got = list(ops).await;
    let got = got.as_array().unwrap();
    assert_eq!(got.len(), 2, "{got:?}");
    let (cloudinary, smtp) = (&got[0], &got[1]);
    assert_eq!(cloudinary["service"], "cloudinary");
    assert_eq!(cloudinary["state"], "closed");
    assert_eq!(
        cloudinary["rate_limit"],
        json!({"max_calls": 500, "period_ms": 60000, "used": 3})
    );
    assert_eq!(smtp["service"], "smtp");
    assert_eq!(smtp["state"], "open");
    assert_eq!(smtp["consecutive_failures"], 2);
    assert_eq!(smtp["times_opened"], 1);
    assert!(smtp["opened_at"].is_string() && smtp["half_open_at"].is_string());
    assert_eq!(smtp["forced"], Value::Null);
    assert_eq!(smtp["rate_limit"], Value::Null);
}

#[tokio::test]
async fn operators_and_admins_force_breakers_and_each_force_is_audited() {
    let db = TestDb::new().await;
    let cli = client(&db);
    let user = token(&db, &cli, "player", Role::User).await;
    let ops = token(&db, &cli, "ops", Role::Operator).await;
    let admin = token(&db, &cli, "root", Role::Admin).await;
    let force = |who: String, service: &'static str, body: Value| {
        let cli = &cli;
        async move {
            cli.post(format!("/api/v1/breakers/{service}/force"))
                .header("authorization", bearer(&who))
                .header("x-request-id", "req-force")
                .body_json(&body)
                .send()
                .await
        }
    };

    let resp = force(user, "smtp", json!({"state": "open"})).await;
    resp.assert_status(StatusCode::FORBIDDEN);
    let resp = force(ops.clone(), "smtp", json!({"state": "open"})).await;
    resp.assert_status_is_ok();
    let b = json(resp).await;
    assert_eq!(
        (&b["service"], &b["state"], &b["forced"]),
        (&json!("smtp"), &json!("open"), &json!("open"))
    );
    // Workers are denied.
    let mut c = db.conn().await;
    let decision = breaker::acquire(&mut c, "smtp", &Policy::default())
        .await
        .unwrap()
        .value;
    assert!(matches!(decision, breaker::Decision::Denied { .. }));

    let resp = force(admin.clone(), "smtp", json!({"state": "clear"})).await;
    resp.assert_status_is_ok();
    assert_eq!(json(resp).await["forced"], Value::Null);
    let resp = force(admin, "cloudinary", json!({"state": "closed"})).await;
    resp.assert_status_is_ok();
    assert_eq!(json(resp).await["forced"], "closed");

    // Refused: a bad service name, a bad state. Nothing is recorded for them.
    let resp = force(ops.clone(), "no%20spaces", json!({"state": "open"})).await;
    assert_eq!(resp.0.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_error(&json(resp).await, "VALIDATION_FAILED");
    let resp = force(ops.clone(), "smtp", json!({"state": "half_open"})).await;
    assert!(resp.0.status().is_client_error(), "{}", resp.0.status());

    let resp = cli
        .get("/api/v1/audit?limit=10")
        .header("authorization", bearer(&ops))
        .send()
        .await;
    resp.assert_status_is_ok();
    let entries = json(resp).await["entries"].clone();
    let got: Vec<(String, String, String)> = entries
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["actor"].as_str().unwrap().to_owned(),
                e["action"].as_str().unwrap().to_owned(),
                e["target"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let want = [
        ("user:root", "breaker.force_closed", "breaker:cloudinary"),
        ("user:root", "breaker.clear", "breaker:smtp"),
        ("user:ops", "breaker.force_open", "breaker:smtp"),
    ];
    assert_eq!(
        got,
        want.map(|(a, b, c)| (a.to_owned(), b.to_owned(), c.to_owned()))
    );
    assert_eq!(entries[0]["request_id"], "req-force");
}
