//! Jobs, queues, workers and the audit log through the API, and who may use them.

use domain::accounts::Role;
use poem::http::StatusCode;
use serde_json::{Value, json};
use testkit::TestDb;
use testkit::http::bearer;

use crate::registrations::valid_form;
use crate::support::{assert_error, client, json, token};

#[tokio::test]
async fn enqueue_checks_kind_args_and_options_and_records_the_request() {
    let db = TestDb::new().await;
    let cli = client(&db);
    let ops = token(&db, &cli, "ops", Role::Operator).await;
    let post = |body: Value, request_id: &'static str| {
        let cli = &cli;
        let ops = ops.clone();
        async move {
            cli.post("/api/v1/jobs")
                .header("authorization", bearer(&ops))
                .header("x-request-id", request_id)
                .body_json(&body)
                .send()
                .await
        }
    };
    let resp = post(
        json!({"kind": "noop", "args": {"sleep_ms": 5}, "queue": "q1", "priority": 3,
               "tags": ["red"], "unique_key": "k1", "max_attempts": 2}),
        "req-enqueue-1",
    )
    .await;
    resp.assert_status(StatusCode::CREATED);
    let created = json(resp).await;
    assert_eq!(created["duplicate"], false);
    let id = created["id"].as_i64().unwrap();
    let row = db
        .conn()
        .await
        .query_one(
            "SELECT queue, priority, max_attempts, tags, meta FROM jobs WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "q1");
    assert_eq!(row.get::<_, i16>(1), 3);
    assert_eq!(row.get::<_, i32>(2), 2);
    assert_eq!(row.get::<_, Vec<String>>(3), ["red"]);
    let meta: Value = row.get(4);
    assert_eq!(meta["request_id"], "req-enqueue-1");
    assert_eq!(meta["enqueued_by"], "user:ops");

    // The same unique key: the existing job, 200.
    let resp = post(json!({"kind": "noop", "unique_key": "k1"}), "r2").await;
    resp.assert_status_is_ok();
    assert_eq!(json(resp).await, json!({"id": id, "duplicate": true}));

    for (body, field) in [
        (json!({"kind": "nope"}), "kind"),
        (
            json!({"kind": "noop", "args": {"sleep_ms": "soon"}}),
            "args",
        ),
        (
            json!({"kind": "noop", "args": {"sleep_ms": 999_999_999}}),
            "args.sleep_ms",
        ),
        (json!({"kind": "noop", "priority": 12}), "priority"),
        (json!({"kind": "noop", "max_attempts": 0}), "max_attempts"),
        (json!({"kind": "noop", "tags": [""]}), "tags"),
    ] {
        let resp = post(body.clone(), "r3").await;
        assert_eq!(resp.0.status(), StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        let err = json(resp).await;
        assert_error(&err, "VALIDATION_FAILED");
        assert!(
            err["details"]["field_errors"][field].is_string(),
            "{field} in {err}"
        );
    }
    let jobs: i64 = db.scalar("SELECT count(*) FROM jobs").await;
    assert_eq!(jobs, 1, "nothing refused was written");
}

#[tokio::test]
async fn jobs_list_filters_and_pages_and_show_their_attempts() {
    let db = TestDb::new().await;
    let cli = client(&db);
    let ops = token(&db, &cli, "ops", Role::Operator).await;
    let mut ids = Vec::new();
    for (q, tag) in [("a", "red"), ("a", "blue"), ("b", "red")] {
        let resp = cli
            .post("/api/v1/jobs")
            .header("authorization", bearer(&ops))
            .body_json(&json!({"kind": "noop", "queue": q, "tags": [tag]}))
            .send()
            .await;
        ids.push(json(resp).await["id"].as_i64().unwrap());
    }
    let get = |query: &'static str| {
        let cli = &cli;
        let ops = ops.clone();
        async move {
            cli.get(format!("/api/v1/jobs{query}"))
                .header("authorization", bearer(&ops))
                .send()
                .await
        }
    };
    let page = json(get("?limit=2").await).await;
    let got: Vec<i64> = page["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_i64().unwrap())
        .collect();
    assert_eq!(got, [ids[2], ids[1]]);
    let cursor = page["next_cursor"].as_str().unwrap().to_owned();
    let resp = cli
        .get(format!("/api/v1/jobs?limit=2&cursor={cursor}"))
        .header("authorization", bearer(&ops))
        .send()
        .await;
    let page2 = json(resp).await;
    assert_eq!(page2["jobs"][0]["id"], ids[0]);
    assert!(page2.get("next_cursor").is_none_or(Value::is_null));

    let red = json(get("?tag=red&state=available").await).await;
    assert_eq!(red["jobs"].as_array().unwrap().len(), 2);
    let a = json(get("?queue=a&kind=noop").await).await;
    assert_eq!(a["jobs"].as_array().unwrap().len(), 2);
    let resp = get("?state=exploded").await;
    resp.assert_status(StatusCode::UNPROCESSABLE_ENTITY);
    assert_error(&json(resp).await, "VALIDATION_FAILED");
    get("?limit=0")
        .await
        .assert_status(StatusCode::UNPROCESSABLE_ENTITY);

    // A job that failed once on a worker: its detail shows the attempt and the worker.
    db.conn()
        .await
        .execute(
            r#"UPDATE jobs SET state = 'retryable', attempt = 1, attempted_by = 'w-1',
                      attempted_at = now(),
                      errors = '[{"attempt": 1, "at": "2026-01-01T00:00:00Z", "kind": "error", "message": "boom"}]'
                WHERE id = $1"#,
            &[&ids[0]],
        )
        .await
        .unwrap();
    let resp = cli
        .get(format!("/api/v1/jobs/{}", ids[0]))
        .header("authorization", bearer(&ops))
        .send()
        .await;
    resp.assert_status_is_ok();
    let job = json(resp).await;
    assert_eq!(job["state"], "retryable");
    assert_eq!(job["worker"], "w-1");
    assert_eq!(job["errors"][0]["message"], "boom");
    assert_eq!(job["args"], json!({}));
    let resp = cli
        .get("/api/v1/jobs/999999")
        .header("authorization", bearer(&ops))
        .send()
        .await;
    resp.assert_status(StatusCode::NOT_FOUND);
    assert_error(&json(resp).await, "NOT_FOUND");
}

#[tokio::test]
async fn retry_cancel_and_bulk_actions_are_audited() {
    let db = TestDb::new().await;
    let cli = client(&db);
    let ops = token(&db, &cli, "ops", Role::Operator).await;
    let post = |path: String, body: Value| {
        let cli = &cli;
        let ops = ops.clone();
        async move {
            cli.post(path)
                .header("authorization", bearer(&ops))
                .header("x-request-id", "req-audit")
                .body_json(&body)
                .send()
                .await
        }
    };
    let id = json(
        post(
            "/api/v1/jobs".into(),
            json!({"kind": "noop", "tags": ["t"]}),
        )
        .await,
    )
    .await["id"]
        .as_i64()
        .unwrap();
    let resp = post(format!("/api/v1/jobs/{id}/cancel"), json!({})).await;
    resp.assert_status_is_ok();
    assert_eq!(
        json(resp).await,
        json!({"id": id, "previous_state": "available", "state": "cancelled"})
    );
    let resp = post(format!("/api/v1/jobs/{id}/cancel"), json!({})).await;
    resp.assert_status(StatusCode::CONFLICT);
    assert_error(&json(resp).await, "CONFLICT");
    post("/api/v1/jobs/424242/cancel".into(), json!({}))
        .await
        .assert_status(StatusCode::NOT_FOUND);
    let resp = post(format!("/api/v1/jobs/{id}/retry"), json!({})).await;
    resp.assert_status_is_ok();
    assert_eq!(json(resp).await["previous_state"], "cancelled");
    post("/api/v1/jobs/424242/retry".into(), json!({}))
        .await
        .assert_status(StatusCode::NOT_FOUND);

    for _ in 0..4 {
        post(
            "/api/v1/jobs".into(),
            json!({"kind": "noop", "tags": ["t"]}),
        )
        .await;
    }
    let resp = post("/api/v1/jobs/bulk/cancel".into(), json!({})).await;
    resp.assert_status(StatusCode::UNPROCESSABLE_ENTITY);
    let resp = post("/api/v1/jobs/bulk/cancel".into(), json!({"tag": "t"})).await;
    resp.assert_status_is_ok();
    assert_eq!(json(resp).await, json!({"count": 5}));
    let resp = post(
        "/api/v1/jobs/bulk/retry".into(),
        json!({"tag": "t", "state": "cancelled"}),
    )
    .await;
    assert_eq!(json(resp).await, json!({"count": 5}));
    post("/api/v1/jobs/bulk/cancel".into(), json!({"tag": "t"})).await;
    let resp = post("/api/v1/jobs/bulk/delete".into(), json!({"tag": "t"})).await;
    assert_eq!(json(resp).await, json!({"count": 5}));
    let left: i64 = db.scalar("SELECT count(*) FROM jobs").await;
    assert_eq!(left, 0);

    let resp = cli
        .get("/api/v1/audit?limit=50")
        .header("authorization", bearer(&ops))
        .send()
        .await;
    resp.assert_status_is_ok();
    let log = json(resp).await;
    let actions: Vec<&str> = log["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "jobs.bulk_delete",
            "jobs.bulk_cancel",
            "jobs.bulk_retry",
            "jobs.bulk_cancel",
            "job.enqueue",
            "job.enqueue",
            "job.enqueue",
            "job.enqueue",
            "job.retry",
            "job.cancel",
            "job.enqueue"
        ]
    );
    let newest = &log["entries"][0];
    assert_eq!(newest["actor"], "user:ops");
    assert_eq!(newest["count"], 5);
    assert_eq!(newest["filter"], json!({"tag": "t"}));
    assert_eq!(newest["request_id"], "req-audit");
    assert_eq!(log["entries"][9]["target"], format!("job:{id}"));
}

#[tokio::test]
async fn queues_report_and_pause_and_workers_are_listed() {
    let db = TestDb::new().await;
    let cli = client(&db);
    let ops = token(&db, &cli, "ops", Role::Operator).await;
    cli.post("/api/v1/jobs")
        .header("authorization", bearer(&ops))
        .body_json(&json!({"kind": "noop", "queue": "mail"}))
        .send()
        .await
        .assert_status(StatusCode::CREATED);
    let resp = cli
        .post("/api/v1/queues/mail/pause")
        .header("authorization", bearer(&ops))
        .send()
        .await;
    resp.assert_status_is_ok();
    assert_eq!(json(resp).await, json!({"name": "mail", "paused": true}));
    let queues = json(
        cli.get("/api/v1/queues")
            .header("authorization", bearer(&ops))
            .send()
            .await,
    )
    .await;
    let mail = &queues[0];
    assert_eq!(mail["name"], "mail");
    assert_eq!(mail["paused"], true);
    assert_eq!(mail["counts"]["available"], 1);
    assert_eq!(mail["counts"]["running"], 0);
    assert!(mail["oldest_available_age_s"].as_f64().unwrap() >= 0.0);
    assert_eq!(mail["completed_per_minute"], 0.0);
    let resp = cli
        .post("/api/v1/queues/mail/resume")
        .header("authorization", bearer(&ops))
        .send()
        .await;
    assert_eq!(json(resp).await["paused"], false);
    let audited: i64 = db
        .scalar("SELECT count(*) FROM audit_log WHERE target = 'queue:mail'")
        .await;
    assert_eq!(audited, 2);
    assert_eq!(
        queues[0]["limits"],
        json!({"max_running": null, "max_running_per_key": null, "key_path": null}),
        "no limits"
    );
}

#[tokio::test]
async fn queue_limits_are_set_audited_listed_and_checked() {
    let db = TestDb::new().await;
    let cli = client(&db);
    let ops = token(&db, &cli, "ops", Role::Operator).await;
    let put = |body: Value| {
        let cli = &cli;
        let ops = ops.clone();
        async move {
            cli.put("/api/v1/queues/fc/limits")
                .header("authorization", bearer(&ops))
                .body_json(&body)
                .send()
                .await
        }
    };
    let limits = json!({"max_running": 3, "max_running_per_key": 1, "key_path": "args.outlet_id"});
    let resp = put(limits.clone()).await;
    resp.assert_status_is_ok();
    assert_eq!(json(resp).await, json!({"name": "fc", "limits": limits}));
    let queues = json(
        cli.get("/api/v1/queues")
            .header("authorization", bearer(&ops))
            .send()
            .await,
    )
    .await;
    assert_eq!(queues[0]["name"], "fc");
    assert_eq!(queues[0]["limits"], limits);
    let detail: Value = db
        .scalar(
            "SELECT filter FROM audit_log WHERE action = 'queue.limits' AND target = 'queue:fc'",
        )
        .await;
    assert_eq!(detail["max_running"], 3);

    // Bad limits: one 422 naming the field; nothing changes.
    for (body, field) in [
        (json!({"max_running": 0}), "max_running"),
        (json!({"max_running_per_key": -1}), "max_running_per_key"),
        (
            json!({"max_running_per_key": 1, "key_path": "outlet_id"}),
            "key_path",
        ),
    ] {
        let resp = put(body).await;
        resp.assert_status(StatusCode::UNPROCESSABLE_ENTITY);
        let body = json(resp).await;
        assert_error(&body, "VALIDATION_FAILED");
        assert!(body["details"]["field_errors"][field].is_string(), "{body}");
    }
    // Absent fields remove the limits.
    let resp = put(json!({})).await;
    assert_eq!(
        json(resp).await["limits"],
        json!({"max_running": null, "max_running_per_key": null, "key_path": null})
    );

    // A job's concurrency key is taken at enqueue.
    let resp = cli
        .post("/api/v1/jobs")
        .header("authorization", bearer(&ops))
        .body_json(&json!({"kind": "noop", "queue": "fc", "concurrency_key": "outlet-7"}))
        .send()
        .await;
    resp.assert_status(StatusCode::CREATED);
    let key: String = db
        .scalar("SELECT concurrency_key FROM jobs WHERE queue = 'fc'")
        .await;
    assert_eq!(key, "outlet-7");

    let w = engine::queue::maintenance::WorkerInfo {
        id: "w-9".into(),
        host: "box".into(),
        pid: 7,
        queues: vec!["mail".into()],
        concurrency: 4,
    };
    engine::queue::maintenance::heartbeat(&db.conn().await, &w, 2)
        .await
        .unwrap();
    let workers = json(
        cli.get("/api/v1/workers")
            .header("authorization", bearer(&ops))
            .send()
            .await,
    )
    .await;
    assert_eq!(workers[0]["id"], "w-9");
    assert_eq!(workers[0]["in_flight"], 2);
    assert_eq!(workers[0]["queues"], json!(["mail"]));
    assert!(workers[0]["last_heartbeat"].is_string());
}

/// A request body in the authorization matrix.
enum Body {
    Empty,
    Json(Value),
    /// A valid registration form (multipart).
    Form,
}

#[tokio::test]
async fn authorization_matrix() {
    use Body::{Empty, Form, Json};
    let db = TestDb::new().await;
    let uploads = testkit::TempDir::new("matrix-uploads");
    std::fs::write(uploads.0.join("icct-001.png"), b"\x89PNG\r\n\x1a\n").unwrap();
    let cli = crate::support::client_with(
        &db,
        &[
            ("RATE_LIMIT_REQUESTS", "1000"),
            ("UPLOADS_DIR", uploads.0.to_str().unwrap()),
        ],
    );
    let user = token(&db, &cli, "joe", Role::User).await;
    let ops = token(&db, &cli, "ops", Role::Operator).await;
    let admin = token(&db, &cli, "root", Role::Admin).await;
    let key = json(
        cli.post("/api/v1/admin/api-keys")
            .header("authorization", bearer(&admin))
            .body_json(&json!({"name": "svc"}))
            .send()
            .await,
    )
    .await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let job = json(
        cli.post("/api/v1/jobs")
            .header("authorization", bearer(&ops))
            .body_json(&json!({"kind": "noop"}))
            .send()
            .await,
    )
    .await["id"]
        .as_i64()
        .unwrap();
    // A registered team, ICCT-001, for the admins' read.
    cli.post("/api/v1/registrations")
        .multipart(valid_form("Matrix Lions"))
        .send()
        .await
        .assert_status(StatusCode::CREATED);
    // (method, path, body, [anonymous, user, operator, admin, operator API key])
    let cases: Vec<(&str, String, Body, [u16; 5])> = vec![
        (
            "GET",
            "/api/v1/auth/me".into(),
            Empty,
            [401, 200, 200, 200, 200],
        ),
        (
            "GET",
            "/api/v1/jobs".into(),
            Empty,
            [401, 403, 200, 200, 200],
        ),
        (
            "POST",
            "/api/v1/jobs".into(),
            Json(json!({"kind": "noop"})),
            [401, 403, 201, 201, 201],
        ),
        (
            "GET",
            format!("/api/v1/jobs/{job}"),
            Empty,
            [401, 403, 200, 200, 200],
        ),
        (
            "POST",
            "/api/v1/jobs/bulk/cancel".into(),
            Json(json!({"queue": "none"})),
            [401, 403, 200, 200, 200],
        ),
        (
            "GET",
            "/api/v1/queues".into(),
            Empty,
            [401, 403, 200, 200, 200],
        ),
        (
            "POST",
            "/api/v1/queues/x/pause".into(),
            Empty,
            [401, 403, 200, 200, 200],
        ),
        (
            "PUT",
            "/api/v1/queues/x/limits".into(),
            Json(json!({"max_running": 2})),
            [401, 403, 200, 200, 200],
        ),
        (
            "GET",
            "/api/v1/workers".into(),
            Empty,
            [401, 403, 200, 200, 200],
        ),
        (
            "GET",
            "/api/v1/audit".into(),
            Empty,
            [401, 403, 200, 200, 200],
        ),
        (
            "GET",
            "/api/v1/admin/api-keys".into(),
            Empty,
            [401, 403, 403, 200, 403],
        ),
        // Registrations: the form is public (credentials are ignored, not refused); reading
        // teams is for admins; stored logos are public.
        (
            "POST",
            "/api/v1/registrations".into(),
            Form,
            [201, 201, 201, 201, 201],
        ),
        (
            "GET",
            "/api/v1/registrations/ICCT-001".into(),
            Empty,
            [401, 403, 403, 200, 403],
        ),
        (
            "GET",
            "/api/v1/admin/teams".into(),
            Empty,
            [401, 403, 403, 200, 403],
        ),
        (
            "GET",
            "/files/icct-001.png".into(),
            Empty,
            [200, 200, 200, 200, 200],
        ),
        // The breakers of external services: operators.
        (
            "GET",
            "/api/v1/breakers".into(),
            Empty,
            [401, 403, 200, 200, 200],
        ),
        (
            "POST",
            "/api/v1/breakers/smtp/force".into(),
            Json(json!({"state": "clear"})),
            [401, 403, 200, 200, 200],
        ),
    ];
    let creds: [Option<(&str, String)>; 5] = [
        None,
        Some(("authorization", bearer(&user))),
        Some(("authorization", bearer(&ops))),
        Some(("authorization", bearer(&admin))),
        Some(("x-api-key", key)),
    ];
    let who = ["anonymous", "user", "operator", "admin", "api key"];
    for (method, path, body, expected) in &cases {
        for (i, cred) in creds.iter().enumerate() {
            let mut req = match *method {
                "GET" => cli.get(path),
                "PUT" => cli.put(path),
                _ => cli.post(path),
            };
            if let Some((h, v)) = cred {
                req = req.header(*h, v);
            }
            match body {
                Empty => {}
                Json(b) => req = req.body_json(b),
                Form => req = req.multipart(valid_form("Matrix Tigers")),
            }
            let resp = req.send().await;
            let status = resp.0.status().as_u16();
            assert_eq!(status, expected[i], "{method} {path} as {}", who[i]);
            if status >= 400 {
                let code = if status == 401 {
                    "UNAUTHORIZED"
                } else {
                    "FORBIDDEN"
                };
                assert_error(&json(resp).await, code);
            }
        }
    }
}
