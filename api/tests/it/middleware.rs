//! Each middleware, configured through settings, driving the whole app in-process.

use std::time::Duration;

use futures::StreamExt;
use poem::Body;
use poem::http::StatusCode;
use testkit::TestDb;

use crate::support::{Captured, assert_error, client, client_with, json};

#[tokio::test]
async fn rate_limit_answers_429_with_retry_after_and_spares_probes() {
    let db = TestDb::new().await;
    let cli = client_with(
        &db,
        &[("RATE_LIMIT_REQUESTS", "3"), ("RATE_LIMIT_WINDOW", "60")],
    );
    for _ in 0..3 {
        cli.get("/nope")
            .send()
            .await
            .assert_status(StatusCode::NOT_FOUND);
    }
    let resp = cli.get("/nope").send().await;
    resp.assert_status(StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = resp.0.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    assert_error(&json(resp).await, "RATE_LIMITED");
    // A load balancer's probe is never limited.
    cli.get("/health").send().await.assert_status_is_ok();
}

#[tokio::test]
async fn declared_oversized_body_is_413() {
    let db = TestDb::new().await;
    let cli = client_with(&db, &[("MAX_REQUEST_SIZE", "100")]);
    let resp = cli
        .post("/nope")
        .header("content-type", "application/json")
        .body(vec![b'x'; 101])
        .send()
        .await;
    resp.assert_status(StatusCode::PAYLOAD_TOO_LARGE);
    assert_error(&json(resp).await, "PAYLOAD_TOO_LARGE");
    // At the limit the request goes through to routing.
    let resp = cli.post("/nope").body(vec![b'x'; 100]).send().await;
    resp.assert_status(StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn chunked_oversized_body_is_413_not_411() {
    let db = TestDb::new().await;
    let cli = client_with(&db, &[("MAX_REQUEST_SIZE", "100")]);
    let chunks = futures::stream::iter(
        (0..3).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b'x'; 40]))),
    );
    let resp = cli
        .post("/nope")
        .body(Body::from_bytes_stream(chunks))
        .send()
        .await;
    resp.assert_status(StatusCode::PAYLOAD_TOO_LARGE);
    assert_error(&json(resp).await, "PAYLOAD_TOO_LARGE");
}

#[tokio::test]
async fn a_stalled_request_times_out_with_408() {
    let db = TestDb::new().await;
    let cli = client_with(&db, &[("REQUEST_TIMEOUT", "1")]);
    // One chunk, then the client goes quiet for good.
    let stalled = futures::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from_static(b"{"))])
        .chain(futures::stream::pending());
    let started = std::time::Instant::now();
    let resp = cli
        .post("/nope")
        .body(Body::from_bytes_stream(stalled))
        .send()
        .await;
    resp.assert_status(StatusCode::REQUEST_TIMEOUT);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_error(&json(resp).await, "REQUEST_TIMEOUT");
}

#[tokio::test]
async fn large_bodies_are_compressed_small_ones_not() {
    let db = TestDb::new().await;
    let cli = client(&db);
    let plain = cli.get("/openapi.json").send().await;
    plain.assert_status_is_ok();
    assert!(plain.0.headers().get("content-encoding").is_none());
    let plain_len = plain.0.into_body().into_bytes().await.unwrap().len();
    assert!(plain_len > 1024);

    let gz = cli
        .get("/openapi.json")
        .header("accept-encoding", "gzip")
        .send()
        .await;
    gz.assert_header("content-encoding", "gzip");
    let gz_bytes = gz.0.into_body().into_bytes().await.unwrap();
    assert_eq!(&gz_bytes[..2], &[0x1f, 0x8b], "gzip magic");
    assert!(gz_bytes.len() < plain_len);

    let deflate = cli
        .get("/openapi.json")
        .header("accept-encoding", "deflate")
        .send()
        .await;
    deflate.assert_header("content-encoding", "deflate");

    let small = cli
        .get("/health")
        .header("accept-encoding", "gzip")
        .send()
        .await;
    assert!(small.0.headers().get("content-encoding").is_none());
}

#[tokio::test]
async fn cors_allows_only_listed_origins() {
    let db = TestDb::new().await;
    let cli = client_with(&db, &[("CORS_ORIGINS", "https://app.example")]);
    let resp = cli
        .options("/health")
        .header("origin", "https://app.example")
        .header("access-control-request-method", "GET")
        .send()
        .await;
    resp.assert_status_is_ok();
    resp.assert_header("access-control-allow-origin", "https://app.example");

    let resp = cli
        .get("/health")
        .header("origin", "https://app.example")
        .send()
        .await;
    resp.assert_header("access-control-allow-origin", "https://app.example");

    let resp = cli
        .get("/health")
        .header("origin", "https://evil.example")
        .send()
        .await;
    resp.assert_status(StatusCode::FORBIDDEN);
    assert!(
        resp.0
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
    assert_error(&json(resp).await, "FORBIDDEN");

    // Unknown routes from an allowed origin still answer in the JSON shape.
    let resp = cli
        .get("/nope")
        .header("origin", "https://app.example")
        .send()
        .await;
    resp.assert_status(StatusCode::NOT_FOUND);
    assert_error(&json(resp).await, "NOT_FOUND");

    // With no list, no cross-origin headers at all.
    let cli = client(&db);
    let resp = cli
        .get("/health")
        .header("origin", "https://app.example")
        .send()
        .await;
    assert!(
        resp.0
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
}

#[tokio::test]
async fn security_headers_on_every_answer_and_hsts_in_production() {
    let db = TestDb::new().await;
    for resp in [
        client(&db).get("/health").send().await,
        client(&db).get("/nope").send().await,
    ] {
        resp.assert_header("x-content-type-options", "nosniff");
        resp.assert_header("x-frame-options", "DENY");
        resp.assert_header("referrer-policy", "no-referrer");
        assert!(resp.0.headers().get("strict-transport-security").is_none());
    }
    let prod = client_with(
        &db,
        &[
            ("ENVIRONMENT", "production"),
            ("SECRET_KEY", "0123456789abcdef0123456789abcdef"),
        ],
    );
    let resp = prod.get("/health").send().await;
    resp.assert_header(
        "strict-transport-security",
        "max-age=31536000; includeSubDomains",
    );
}

#[tokio::test]
async fn access_log_is_json_with_the_request_id_and_no_secrets() {
    let db = TestDb::new().await;
    let cli = client(&db);
    let logs = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_writer(logs.clone())
        .finish();
    // The test runtime is single-threaded, so the request runs under this subscriber.
    let _guard = tracing::subscriber::set_default(subscriber);
    cli.get("/health")
        .query("token", &"query-secret")
        .header("authorization", "Bearer bearer-secret")
        .header("x-api-key", "key-secret")
        .header("x-request-id", "log-test-1")
        .send()
        .await
        .assert_status_is_ok();
    cli.get("/nope").send().await;
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("every log line is JSON"))
        .collect();
    let access = lines
        .iter()
        .find(|l| l["span"]["request_id"] == "log-test-1")
        .expect("an access line for the request");
    assert_eq!(access["fields"]["route"], "/health");
    assert_eq!(access["fields"]["status"], 200);
    assert_eq!(access["fields"]["method"], "GET");
    assert!(access["fields"]["duration_ms"].as_f64().is_some());
    let unmatched = lines
        .iter()
        .find(|l| l["fields"]["status"] == 404)
        .expect("an access line for the 404");
    assert_eq!(unmatched["fields"]["route"], "unmatched");
    for secret in ["query-secret", "bearer-secret", "key-secret"] {
        assert!(!text.contains(secret), "{secret} leaked into {text}");
    }
}
