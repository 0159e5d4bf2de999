//! Team registrations: the multipart form, every field error at once, logos judged by their
//! bytes, idempotency under concurrency, race-safe ids, the transaction around the jobs, a
//! fuzz of malformed bodies, and the admin reads.

use domain::accounts::Role;
use futures::future::join_all;
use poem::Endpoint;
use poem::http::StatusCode;
use poem::test::{TestClient, TestForm, TestFormField, TestResponse};
use serde_json::{Value, json};
use testkit::fixtures::form_fields as fields;
use testkit::http::bearer;
use testkit::{TempDir, TestDb};

use crate::support::{assert_error, client_with, json, token};

/// A small valid PNG header (the signature is what counts).
const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x06\0\0\0";
const JPEG: &[u8] = &[0xFF, 0xD8, 0xFF, 0xE0, 0, 0x10, b'J', b'F', b'I', b'F'];
const ELF: &[u8] = b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0";

/// Settings that keep the rate limit out of the way of the concurrency tests.
const ROOMY: &[(&str, &str)] = &[("RATE_LIMIT_REQUESTS", "100000")];

fn form_of(fields: &[(&'static str, String)], logo: Option<(&[u8], &str, &str)>) -> TestForm {
    let mut form = TestForm::new();
    for (k, v) in fields {
        form = form.text(*k, v.clone());
    }
    if let Some((bytes, name, ct)) = logo {
        form = form.field(
            TestFormField::bytes(bytes.to_vec())
                .name("logo")
                .filename(name)
                .content_type(ct),
        );
    }
    form
}

/// A valid registration form for team `team` (also used by the authorization matrix).
pub fn valid_form(team: &str) -> TestForm {
    form_of(&fields(team), Some((PNG, "logo.png", "image/png")))
}

async fn post<E: Endpoint>(cli: &TestClient<E>, form: TestForm, key: Option<&str>) -> TestResponse {
    let mut req = cli.post("/api/v1/registrations").multipart(form);
    if let Some(k) = key {
        req = req.header("Idempotency-Key", k);
    }
    req.send().await
}

/// Rows of every registration table and of jobs.
async fn rows(db: &TestDb) -> [i64; 5] {
    let mut out = [0; 5];
    for (i, t) in ["teams", "players", "team_logos", "idempotency_keys", "jobs"]
        .iter()
        .enumerate()
    {
        out[i] = db.scalar(&format!("SELECT count(*) FROM {t}")).await;
    }
    out
}

#[tokio::test]
async fn a_registration_writes_the_team_and_enqueues_both_jobs() {
    let db = TestDb::new().await;
    let cli = client_with(&db, &[]);
    let resp = cli
        .post("/api/v1/registrations")
        .header("X-Request-Id", "reg-req-1")
        .multipart(valid_form("Harbour Lions"))
        .send()
        .await;
    resp.assert_status(StatusCode::CREATED);
    assert!(resp.0.headers().get("idempotent-replayed").is_none());
    let body = json(resp).await;
    assert_eq!(body["success"], true);
    assert_eq!(body["team_id"], "ICCT-001");
    assert_eq!(body["message"], "Team registered successfully");
    let jobs = body["jobs"].as_array().unwrap();
    assert_eq!(jobs[0]["kind"], "upload_logo");
    assert_eq!(jobs[1]["kind"], "send_confirmation_email");

    assert_eq!(rows(&db).await, [1, 2, 1, 0, 2]);
    let c = db.conn().await;
    for (job, queue) in jobs.iter().zip(["uploads", "email"]) {
        let row = c
            .query_one(
                "SELECT queue, args, meta FROM jobs WHERE id = $1",
                &[&job["id"].as_i64().unwrap()],
            )
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), queue);
        assert_eq!(row.get::<_, Value>(1), json!({"team_id": "ICCT-001"}));
        let meta: Value = row.get(2);
        assert_eq!(meta["request_id"], "reg-req-1");
    }
    let (ct, size, bytes): (String, i32, Vec<u8>) = {
        let r = c
            .query_one("SELECT content_type, size, bytes FROM team_logos", &[])
            .await
            .unwrap();
        (r.get(0), r.get(1), r.get(2))
    };
    assert_eq!(
        (ct.as_str(), size as usize, bytes.as_slice()),
        ("image/png", PNG.len(), PNG)
    );
    let request_id: String = db.scalar("SELECT request_id FROM teams").await;
    assert_eq!(request_id, "reg-req-1");
}

#[tokio::test]
async fn every_invalid_field_is_reported_at_once() {
    let db = TestDb::new().await;
    let cli = client_with(&db, &[]);
    let bad = vec![
        ("team_name", "ab".to_owned()),
        ("church_name", "x".repeat(81)),
        ("captain_name", "  ".into()),
        ("coach_name", "y".repeat(51)),
        ("captain_phone", "12345".into()),
        ("captain_whatsapp", "98765432ab".into()),
        ("captain_email", "not-an-address".into()),
        (
            "players",
            json!([{"name": "", "role": "bowler", "phone": "1"}]).to_string(),
        ),
    ];
    let resp = post(
        &cli,
        form_of(&bad, Some((ELF, "logo.png", "image/png"))),
        None,
    )
    .await;
    resp.assert_status(StatusCode::UNPROCESSABLE_ENTITY);
    let body = json(resp).await;
    assert_error(&body, "VALIDATION_FAILED");
    let errors = body["details"]["field_errors"].as_object().unwrap();
    let mut keys: Vec<&str> = errors.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "captain_email",
            "captain_name",
            "captain_phone",
            "captain_whatsapp",
            "church_name",
            "coach_name",
            "logo",
            "players[0].name",
            "players[0].phone",
            "team_name",
        ]
    );

    // Nothing at all: every part is named as missing, still a 422 in the one shape.
    let resp = post(&cli, TestForm::new().text("unrelated", "x"), None).await;
    resp.assert_status(StatusCode::UNPROCESSABLE_ENTITY);
    let body = json(resp).await;
    assert_error(&body, "VALIDATION_FAILED");
    assert_eq!(
        body["details"]["field_errors"].as_object().unwrap().len(),
        9
    );

    // Too many players, and players that are not JSON.
    for players in [
        json!(
            (0..21)
                .map(|i| json!({"name": format!("P{i}"), "role": "r", "phone": "9000000000"}))
                .collect::<Vec<_>>()
        )
        .to_string(),
        "[]".to_owned(),
        "{not json".to_owned(),
    ] {
        let mut f = fields("Harbour Lions");
        f.retain(|(k, _)| *k != "players");
        f.push(("players", players));
        let resp = post(&cli, form_of(&f, Some((PNG, "a.png", "image/png"))), None).await;
        resp.assert_status(StatusCode::UNPROCESSABLE_ENTITY);
        let body = json(resp).await;
        assert!(
            body["details"]["field_errors"]["players"].is_string(),
            "{body}"
        );
    }
    assert_eq!(rows(&db).await, [0; 5]);
}

#[tokio::test]
async fn logos_are_judged_by_their_bytes_not_their_names() {
    let db = TestDb::new().await;
    let cli = client_with(&db, &[]);
    // A PNG called .jpg and declared JPEG is a PNG.
    let resp = post(
        &cli,
        form_of(
            &fields("Harbour Lions"),
            Some((PNG, "logo.jpg", "image/jpeg")),
        ),
        None,
    )
    .await;
    resp.assert_status(StatusCode::CREATED);
    let ct: String = db.scalar("SELECT content_type FROM team_logos").await;
    assert_eq!(ct, "image/png");
    // A JPEG with no name or type at all is a JPEG.
    let resp = post(
        &cli,
        form_of(
            &fields("Quay Tigers"),
            Some((JPEG, "upload", "application/octet-stream")),
        ),
        None,
    )
    .await;
    resp.assert_status(StatusCode::CREATED);
    // An executable called .png is refused.
    let resp = post(
        &cli,
        form_of(&fields("Dock Bears"), Some((ELF, "logo.png", "image/png"))),
        None,
    )
    .await;
    resp.assert_status(StatusCode::UNPROCESSABLE_ENTITY);
    let body = json(resp).await;
    assert!(
        body["details"]["field_errors"]["logo"].is_string(),
        "{body}"
    );
    assert_eq!(rows(&db).await, [2, 4, 2, 0, 4]);
}

#[tokio::test]
async fn an_oversized_logo_is_refused() {
    let db = TestDb::new().await;
    let cli = client_with(&db, &[]);
    let mut big = PNG.to_vec();
    big.resize(5 * 1024 * 1024 + 1, 0);
    let resp = post(
        &cli,
        form_of(
            &fields("Harbour Lions"),
            Some((&big, "logo.png", "image/png")),
        ),
        None,
    )
    .await;
    resp.assert_status(StatusCode::UNPROCESSABLE_ENTITY);
    let body = json(resp).await;
    assert!(
        body["details"]["field_errors"]["logo"].is_string(),
        "{body}"
    );

    // Over MAX_REQUEST_SIZE the whole body is refused before it is read.
    let cli = client_with(&db, &[("MAX_REQUEST_SIZE", "1048576")]);
    let resp = post(
        &cli,
        form_of(
            &fields("Harbour Lions"),
            Some((&big, "logo.png", "image/png")),
        ),
        None,
    )
    .await;
    resp.assert_status(StatusCode::PAYLOAD_TOO_LARGE);
    assert_error(&json(resp).await, "PAYLOAD_TOO_LARGE");
    assert_eq!(rows(&db).await, [0; 5]);
}

#[tokio::test]
async fn twenty_concurrent_requests_with_one_key_register_one_team() {
    let db = TestDb::new().await;
    let cli = client_with(&db, ROOMY);
    let resps =
        join_all((0..20).map(|_| post(&cli, valid_form("Harbour Lions"), Some("key-20")))).await;
    let mut replayed = 0;
    let mut bodies = Vec::new();
    for resp in resps {
        resp.assert_status(StatusCode::CREATED);
        if let Some(v) = resp.0.headers().get("idempotent-replayed") {
            assert_eq!(v, "true");
            replayed += 1;
        }
        bodies.push(json(resp).await);
    }
    assert_eq!(replayed, 19);
    assert!(bodies.iter().all(|b| *b == bodies[0]), "{bodies:?}");
    assert_eq!(bodies[0]["team_id"], "ICCT-001");
    assert_eq!(rows(&db).await, [1, 2, 1, 1, 2]);
}

#[tokio::test]
async fn a_key_reused_with_another_request_is_refused_and_the_legacy_header_works() {
    let db = TestDb::new().await;
    let cli = client_with(&db, &[]);
    let first = post(&cli, valid_form("Harbour Lions"), Some("k")).await;
    first.assert_status(StatusCode::CREATED);
    let first = json(first).await;

    let other = post(&cli, valid_form("Quay Tigers"), Some("k")).await;
    other.assert_status(StatusCode::UNPROCESSABLE_ENTITY);
    assert_error(&json(other).await, "IDEMPOTENCY_KEY_REUSED");

    let again = cli
        .post("/api/v1/registrations")
        .header("X-Idempotency-Key", "k")
        .multipart(valid_form("Harbour Lions"))
        .send()
        .await;
    again.assert_status(StatusCode::CREATED);
    assert_eq!(again.0.headers()["idempotent-replayed"], "true");
    assert_eq!(json(again).await, first);

    // Once the TTL has passed the key is free again.
    db.conn()
        .await
        .execute(
            "UPDATE idempotency_keys SET created_at = now() - interval '2 days'",
            &[],
        )
        .await
        .unwrap();
    let later = post(&cli, valid_form("Quay Tigers"), Some("k")).await;
    later.assert_status(StatusCode::CREATED);
    assert_eq!(json(later).await["team_id"], "ICCT-002");
    // A malformed key is a field error.
    let resp = post(&cli, valid_form("Dock Bears"), Some(&"x".repeat(256))).await;
    resp.assert_status(StatusCode::UNPROCESSABLE_ENTITY);
    let body = json(resp).await;
    assert!(body["details"]["field_errors"]["Idempotency-Key"].is_string());
}

#[tokio::test]
async fn fifty_concurrent_registrations_get_fifty_distinct_ids() {
    let db = TestDb::new().await;
    let cli = client_with(&db, ROOMY);
    let resps =
        join_all((0..50).map(|i| post(&cli, valid_form(&format!("Team {i:02}")), None))).await;
    let mut ids = Vec::new();
    for resp in resps {
        resp.assert_status(StatusCode::CREATED);
        ids.push(json(resp).await["team_id"].as_str().unwrap().to_owned());
    }
    ids.sort();
    let want: Vec<String> = (1..=50).map(|n| format!("ICCT-{n:03}")).collect();
    assert_eq!(ids, want);
    assert_eq!(rows(&db).await, [50, 100, 50, 0, 100]);
}

#[tokio::test]
async fn a_failing_enqueue_rolls_the_registration_back() {
    let db = TestDb::new().await;
    db.refuse_writes("jobs").await;
    let cli = client_with(&db, &[]);
    let resp = post(&cli, valid_form("Harbour Lions"), Some("rollback-key")).await;
    resp.assert_status(StatusCode::INTERNAL_SERVER_ERROR);
    let body = json(resp).await;
    assert_error(&body, "INTERNAL_ERROR");
    assert!(!body.to_string().contains("refused by the test"), "{body}");
    assert_eq!(
        rows(&db).await,
        [0; 5],
        "team, players, logo and key all rolled back"
    );

    // The key was not consumed: once jobs can be written, the same request succeeds.
    db.conn()
        .await
        .batch_execute("DROP TRIGGER refuse_jobs ON jobs")
        .await
        .unwrap();
    let resp = post(&cli, valid_form("Harbour Lions"), Some("rollback-key")).await;
    resp.assert_status(StatusCode::CREATED);
    assert!(resp.0.headers().get("idempotent-replayed").is_none());
}

/// A small deterministic generator, so a failure names its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

#[tokio::test]
async fn malformed_multipart_bodies_always_answer_4xx_and_write_nothing() {
    let db = TestDb::new().await;
    let cli = client_with(&db, ROOMY);
    for seed in 1..=150u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let case = rng.below(7);
        let resp = match case {
            // A valid form with one part's text replaced by invalid UTF-8.
            0 => {
                let mut form = TestForm::new();
                let victim = rng.below(8) as usize;
                for (i, (k, v)) in fields("Harbour Lions").into_iter().enumerate() {
                    form = if i == victim {
                        form.bytes(k, vec![0xC3, 0x28, 0xFF, 0xFE])
                    } else {
                        form.text(k, v)
                    };
                }
                let form = form.field(
                    TestFormField::bytes(PNG.to_vec())
                        .name("logo")
                        .filename("a.png"),
                );
                post(&cli, form, None).await
            }
            // Some parts missing.
            1 => {
                let mut f = fields("Harbour Lions");
                let keep = rng.below(f.len() as u64) as usize;
                f.truncate(keep);
                let logo = (rng.below(2) == 0).then_some((PNG, "a.png", "image/png"));
                post(&cli, form_of(&f, logo), None).await
            }
            // One part oversized.
            2 => {
                let mut f = fields("Harbour Lions");
                let i = rng.below(f.len() as u64) as usize;
                f[i].1 = "9".repeat(10_000 + rng.below(100_000) as usize);
                post(&cli, form_of(&f, Some((PNG, "a.png", "image/png"))), None).await
            }
            // Random bytes as the logo, under a reassuring name.
            3 => {
                let n = 1 + rng.below(2048) as usize;
                let mut junk = rng.bytes(n);
                if junk.starts_with(&[0xFF, 0xD8, 0xFF]) || junk.starts_with(b"\x89PNG") {
                    junk[0] = 0;
                }
                post(
                    &cli,
                    form_of(
                        &fields("Harbour Lions"),
                        Some((&junk, "logo.png", "image/png")),
                    ),
                    None,
                )
                .await
            }
            // Random bytes as the whole body, claiming to be multipart.
            4 => {
                let n = rng.below(4096) as usize;
                cli.post("/api/v1/registrations")
                    .content_type("multipart/form-data; boundary=XyZ")
                    .body(rng.bytes(n))
                    .send()
                    .await
            }
            // A truncated multipart body.
            5 => {
                let n = rng.below(300) as usize;
                let mut body = b"--XyZ\r\nContent-Disposition: form-data; name=\"team_name\"\r\n\r\nHarbour Lions\r\n--XyZ\r\nContent-Disposition: form-data; name=\"logo\"; filename=\"a.png\"\r\n\r\n".to_vec();
                body.truncate(n.min(body.len()));
                cli.post("/api/v1/registrations")
                    .content_type("multipart/form-data; boundary=XyZ")
                    .body(body)
                    .send()
                    .await
            }
            // Not multipart at all.
            _ => {
                let ct = ["application/json", "text/plain", "multipart/form-data"]
                    [rng.below(3) as usize];
                let n = rng.below(512) as usize;
                cli.post("/api/v1/registrations")
                    .content_type(ct)
                    .body(rng.bytes(n))
                    .send()
                    .await
            }
        };
        let status = resp.0.status();
        assert!(
            status.is_client_error(),
            "seed {seed} (case {case}) answered {status}"
        );
        let body = json(resp).await;
        assert_eq!(body["success"], false, "seed {seed}: {body}");
        assert!(body["error_code"].is_string(), "seed {seed}: {body}");
    }
    assert_eq!(rows(&db).await, [0; 5], "nothing half-written");
}

#[tokio::test]
async fn admins_read_a_team_with_its_players_logo_and_jobs() {
    let db = TestDb::new().await;
    let cli = client_with(&db, &[]);
    let admin = token(&db, &cli, "root", Role::Admin).await;
    let body = json(post(&cli, valid_form("Harbour Lions"), None).await).await;
    let get = |id: &'static str| {
        cli.get(format!("/api/v1/registrations/{id}"))
            .header("Authorization", bearer(&admin))
            .send()
    };
    let resp = get("ICCT-001").await;
    resp.assert_status_is_ok();
    let detail = json(resp).await;
    assert_eq!(detail["team"]["team_id"], "ICCT-001");
    assert_eq!(detail["team"]["captain_email"], "captain@example.com");
    assert_eq!(detail["team"]["logo_pending"], true);
    assert!(detail["team"]["logo_url"].is_null());
    assert_eq!(detail["players"][1]["name"], "Ben Batter");
    let jobs = detail["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 2);
    assert_eq!(jobs[0]["id"], body["jobs"][0]["id"]);
    assert_eq!(jobs[0]["state"], "available");
    assert_eq!(jobs[1]["kind"], "send_confirmation_email");

    // Once the upload job has run, the URL shows and the bytes are gone.
    domain::registrations::logo_stored(&db.conn().await, "ICCT-001", "/files/icct-001.png", false)
        .await
        .unwrap();
    let detail = json(get("ICCT-001").await).await;
    assert_eq!(detail["team"]["logo_url"], "/files/icct-001.png");
    assert_eq!(detail["team"]["logo_pending"], false);

    for missing in ["ICCT-404", "nope"] {
        let resp = get(missing).await;
        resp.assert_status(StatusCode::NOT_FOUND);
        assert_error(&json(resp).await, "NOT_FOUND");
    }
}

#[tokio::test]
async fn admins_page_through_teams_newest_first() {
    let db = TestDb::new().await;
    let cli = client_with(&db, &[]);
    let admin = token(&db, &cli, "root", Role::Admin).await;
    for i in 0..5 {
        post(&cli, valid_form(&format!("Team {i}")), None)
            .await
            .assert_status(StatusCode::CREATED);
    }
    let page = |cursor: Option<String>| {
        let mut url = "/api/v1/admin/teams?limit=3".to_owned();
        if let Some(c) = cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        cli.get(url).header("Authorization", bearer(&admin)).send()
    };
    let first = json(page(None).await).await;
    let ids: Vec<&str> = first["teams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["team_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["ICCT-005", "ICCT-004", "ICCT-003"]);
    let cursor = first["next_cursor"].as_str().unwrap().to_owned();
    let second = json(page(Some(cursor)).await).await;
    let ids: Vec<&str> = second["teams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["team_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["ICCT-002", "ICCT-001"]);
    assert!(second["next_cursor"].is_null());
    let resp = page(Some("garbage".into())).await;
    resp.assert_status(StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn only_admins_read_registrations() {
    let db = TestDb::new().await;
    let cli = client_with(&db, &[]);
    post(&cli, valid_form("Harbour Lions"), None)
        .await
        .assert_status(StatusCode::CREATED);
    let user = token(&db, &cli, "ursula", Role::User).await;
    let operator = token(&db, &cli, "oscar", Role::Operator).await;
    let admin = token(&db, &cli, "ada", Role::Admin).await;
    for path in ["/api/v1/registrations/ICCT-001", "/api/v1/admin/teams"] {
        let resp = cli.get(path).send().await;
        resp.assert_status(StatusCode::UNAUTHORIZED);
        assert_error(&json(resp).await, "UNAUTHORIZED");
        for (tok, status) in [
            ("garbage", StatusCode::UNAUTHORIZED),
            (user.as_str(), StatusCode::FORBIDDEN),
            (operator.as_str(), StatusCode::FORBIDDEN),
            (admin.as_str(), StatusCode::OK),
        ] {
            let resp = cli
                .get(path)
                .header("Authorization", bearer(tok))
                .send()
                .await;
            resp.assert_status(status);
        }
    }
}

#[tokio::test]
async fn stored_files_are_served_by_safe_name_only() {
    let db = TestDb::new().await;
    let dir = TempDir::new("api-uploads");
    std::fs::write(dir.0.join("icct-001.png"), PNG).unwrap();
    std::fs::write(dir.0.join("icct-002.jpg"), JPEG).unwrap();
    std::fs::write(dir.0.join(".secret"), b"no").unwrap();
    let cli = client_with(&db, &[("UPLOADS_DIR", dir.0.to_str().unwrap())]);
    for (name, ct, bytes) in [
        ("icct-001.png", "image/png", PNG),
        ("icct-002.jpg", "image/jpeg", JPEG),
    ] {
        let resp = cli.get(format!("/files/{name}")).send().await;
        resp.assert_status_is_ok();
        assert_eq!(resp.0.headers()["content-type"], ct);
        assert_eq!(resp.0.into_body().into_vec().await.unwrap(), bytes);
    }
    for bad in [
        "/files/.secret",
        "/files/..%2Fetc%2Fpasswd",
        "/files/%2E%2E",
        "/files/missing.png",
        "/files/a%20b.png",
    ] {
        let resp = cli.get(bad).send().await;
        resp.assert_status(StatusCode::NOT_FOUND);
        assert_error(&json(resp).await, "NOT_FOUND");
    }
}
