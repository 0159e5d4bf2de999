//! The probes against a real database, and the committed OpenAPI contract.

use poem::test::TestClient;
use testkit::TestDb;

use crate::support::{client, json};

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
    let port = testkit::free_port().unwrap();
    let pool = engine::db::pool(&engine::config::DatabaseSettings::for_url(format!(
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

#[tokio::test]
async fn status_reports_version_commit_and_uptime() {
    let db = TestDb::new().await;
    let resp = client(&db).get("/status").send().await;
    resp.assert_status_is_ok();
    let body = json(resp).await;
    assert_eq!(body["version"], api::VERSION);
    let commit = body["git_commit"].as_str().unwrap();
    assert!(
        commit == "unknown"
            || (commit.len() == 40 && commit.bytes().all(|b| b.is_ascii_hexdigit())),
        "{commit}"
    );
    assert!(body["uptime_s"].as_u64().is_some());
}

#[tokio::test]
async fn metrics_count_requests_by_route_and_report_pool_and_queues() {
    let db = TestDb::new().await;
    {
        let conn = db.conn().await;
        for n in 0..2 {
            engine::queue::enqueue(
                &conn,
                &engine::queue::NewJob::unchecked("noop", serde_json::json!({"n": n})).with(
                    engine::queue::JobOptions {
                        queue: Some("mail".parse().unwrap()),
                        ..Default::default()
                    },
                ),
            )
            .await
            .unwrap();
        }
        // A limit of 1 with both jobs of "mail" available and none running: nothing waits
        // yet; one running: the other waits on the limit.
        let limit = engine::queue::limits::QueueLimits {
            max_running: Some(1),
            ..Default::default()
        };
        engine::queue::limits::set(&conn, &"mail".parse().unwrap(), &limit)
            .await
            .unwrap();
        let mut conn = conn;
        let got = engine::queue::fetch::fetch_limited(
            &mut conn,
            &"mail".into(),
            "w1",
            std::time::Duration::from_secs(30),
            5,
        )
        .await
        .unwrap();
        assert_eq!(got.len(), 1);
    }
    let cli = client(&db);
    for _ in 0..3 {
        cli.get("/health").send().await.assert_status_is_ok();
    }
    cli.get("/nope/123").send().await;
    cli.get("/api/v1/jobs/123")
        .send()
        .await
        .assert_status(poem::http::StatusCode::UNAUTHORIZED);
    let resp = cli.get("/metrics").send().await;
    resp.assert_status_is_ok();
    let text = resp.0.into_body().into_string().await.unwrap();
    let line = |prefix: &str| {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
            .to_owned()
    };
    assert!(
        line(r#"quayside_http_requests_total{method="GET",route="/health",status="200"}"#)
            .ends_with(" 3")
    );
    // Unknown paths share one label, so a scanner cannot blow up the series count.
    line(r#"quayside_http_requests_total{method="GET",route="unmatched",status="404"}"#);
    assert!(!text.contains("/nope/123"));
    // Routes with parameters are counted by their template, not the raw path (poem-openapi
    // names path parameters `param0`, `param1`, ... in the routes it builds).
    assert!(
        text.contains(r#"route="/api/v1/jobs/:param0",status="401""#),
        "{text}"
    );
    assert!(!text.contains("/api/v1/jobs/123"));
    line(
        r#"quayside_http_request_duration_seconds_bucket{method="GET",route="/health",le="0.005"}"#,
    );
    assert!(line(r#"quayside_queue_jobs{queue="mail",state="available"}"#).ends_with(" 1"));
    assert!(line(r#"quayside_queue_limit_max_running{queue="mail"}"#).ends_with(" 1"));
    assert!(line(r#"quayside_queue_limit_running{queue="mail"}"#).ends_with(" 1"));
    assert!(line(r#"quayside_queue_limit_waiting{queue="mail"}"#).ends_with(" 1"));
    assert!(line(r#"quayside_queue_jobs{queue="mail",state="completed"}"#).ends_with(" 0"));
    assert!(line("quayside_db_pool_max_connections").ends_with(" 16"));
    line("quayside_db_pool_available_connections");
    line("quayside_db_pool_in_use_connections");
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

#[tokio::test]
async fn health_follows_the_database_going_away_and_coming_back() {
    let db = TestDb::new().await;
    let cli = client(&db);
    cli.get("/health").send().await.assert_status_is_ok();

    // The database refuses new connections and drops the pool's: the next check fails.
    // (Altered from another database: a session cannot bar its own.)
    let (server, _) = db.url.rsplit_once('/').unwrap();
    let (admin, conn) = deadpool_postgres::tokio_postgres::connect(
        &format!("{server}/postgres"),
        deadpool_postgres::tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let refuse = |allow: bool| format!("ALTER DATABASE {} WITH ALLOW_CONNECTIONS {allow}", db.name);
    admin.batch_execute(&refuse(false)).await.unwrap();
    admin
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
            &[&db.name],
        )
        .await
        .unwrap();
    // A check's answer stands for 100 ms; after that, /health sees the outage.
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    let started = std::time::Instant::now();
    cli.get("/health")
        .send()
        .await
        .assert_status(poem::http::StatusCode::SERVICE_UNAVAILABLE);
    assert!(started.elapsed() < std::time::Duration::from_secs(2));

    admin.batch_execute(&refuse(true)).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    cli.get("/health").send().await.assert_status_is_ok();
}

/// `.env.example` lists exactly the settings the API reads (under its heading and the one
/// both processes share): what `Settings` asks of its source, with and without the settings
/// that make it read more.
#[test]
fn env_example_lists_every_setting_the_api_reads() {
    use testkit::settings::{API, Recorder, documented};
    let mut read = std::collections::BTreeSet::new();
    for values in [
        &[("DATABASE_URL", "postgres://u@h/db")][..],
        &[
            ("DATABASE_URL", "postgres://u@h/db"),
            ("PORT", "8080"),
            ("ADMIN_USERNAME", "root"),
            ("ADMIN_PASSWORD", "pw"),
        ],
    ] {
        let src = Recorder::new(values);
        api::config::Settings::from_source(&src).expect("valid settings");
        read.extend(src.asked());
    }
    assert_eq!(
        documented(API),
        read,
        ".env.example (left) against the code"
    );
}
