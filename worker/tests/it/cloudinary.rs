//! `upload_logo` against a stand-in for Cloudinary's Upload API: a fake server on loopback
//! (`testkit::fake`) that checks each upload as Cloudinary would (the signature with the test's
//! secret, the multipart fields, the file's bytes), answers as Cloudinary does, and can be
//! told to fail (a status, a 429 with Retry-After, a hang).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use domain::registrations as reg;
use engine::queue::JobState;
use sha1::{Digest, Sha1};
use testkit::fake::{FakeServer, Received, Reply};
use testkit::fixtures::{LOGO_PNG, TEAM_NAME, insert_team};
use testkit::{TempDir, TestDb};

use crate::harness::{InProcess, fast_env, wait_final, with_env};
use crate::registrations::job;

pub const API_KEY: &str = "123456789";
pub const SECRET: &str = "s3cr3t-test";
const CLOUD: &str = "demo";
const FOLDER: &str = "quayside-test";
const WAIT: Duration = Duration::from_secs(30);

/// What the server does with the next request.
#[derive(Debug, Clone, Copy)]
pub enum Answer {
    /// Check the upload and, if it is right, store it and answer 200.
    Upload,
    /// Answer with this status and a Cloudinary error body.
    Status(u16),
    /// Answer 429 with `Retry-After: secs`.
    TooMany { retry_after_secs: u64 },
    /// Read the request and never answer.
    Hang,
}

/// One request the server received.
#[derive(Debug, Clone)]
pub struct Request {
    pub at: Instant,
    /// The status answered; none for a hang.
    pub status: Option<u16>,
    /// Why an upload was refused, if it was.
    pub refusal: Option<String>,
}

/// One asset stored by the server.
#[derive(Debug, Clone)]
pub struct Stored {
    pub public_id: String,
    pub folder: Option<String>,
    pub file_name: Option<String>,
    pub content_type: Option<String>,
    pub bytes: Vec<u8>,
    pub secure_url: String,
}

#[derive(Default)]
struct State {
    script: VecDeque<Answer>,
    /// While set, every request gets this answer (the script waits).
    failing: Option<Answer>,
    stored: Vec<Stored>,
}

/// The stand-in for Cloudinary.
pub struct FakeCloudinary {
    server: FakeServer,
    state: Arc<Mutex<State>>,
}

impl FakeCloudinary {
    /// A server that answers `script` in order, then uploads normally.
    pub async fn start(script: impl IntoIterator<Item = Answer>) -> FakeCloudinary {
        let state = Arc::new(Mutex::new(State {
            script: script.into_iter().collect(),
            ..State::default()
        }));
        let s = state.clone();
        let server = FakeServer::start(move |request| answer(request, &s)).await;
        FakeCloudinary { server, state }
    }

    pub fn requests(&self) -> Vec<Request> {
        self.server
            .received()
            .into_iter()
            .map(|r| Request {
                at: r.at,
                status: r.status,
                refusal: r.note,
            })
            .collect()
    }

    pub fn stored(&self) -> Vec<Stored> {
        self.state.lock().unwrap().stored.clone()
    }

    /// Answer every request with `answer` until called again with `None`.
    pub fn fail_with(&self, answer: Option<Answer>) {
        self.state.lock().unwrap().failing = answer;
    }

    /// Worker settings pointing at this server, with short timeouts and quick retries.
    pub fn env(&self, base: Vec<(&'static str, String)>) -> Vec<(&'static str, String)> {
        let env = with_env(
            base,
            "CLOUDINARY_URL",
            format!("cloudinary://{API_KEY}:{SECRET}@{CLOUD}"),
        );
        let env = with_env(env, "CLOUDINARY_API_BASE", self.server.base_url());
        let env = with_env(env, "CLOUDINARY_FOLDER", FOLDER);
        let env = with_env(env, "CLOUDINARY_REQUEST_TIMEOUT_MS", "1000");
        with_env(env, "CLOUDINARY_CALL_RETRY_MS", "20")
    }
}

/// The answer to `request`: the scripted one, or the upload checked and stored.
fn answer(request: &Received, state: &Mutex<State>) -> Reply {
    let answer = {
        let mut s = state.lock().unwrap();
        s.failing
            .or_else(|| s.script.pop_front())
            .unwrap_or(Answer::Upload)
    };
    match answer {
        Answer::Hang => Reply::hang(),
        Answer::Status(code) => Reply::json(code, &error_body("Told to fail")),
        Answer::TooMany { retry_after_secs } => {
            Reply::json(429, &error_body("Rate Limit Exceeded"))
                .header("Retry-After", retry_after_secs.to_string())
        }
        Answer::Upload => match check_upload(request) {
            Ok(mut stored) => {
                stored.secure_url = format!(
                    "https://res.cloudinary.example/{CLOUD}/image/upload/v1/{}/{}.png",
                    FOLDER, stored.public_id
                );
                let json = serde_json::json!({
                    "public_id": format!("{FOLDER}/{}", stored.public_id),
                    "secure_url": stored.secure_url,
                    "format": "png",
                    "bytes": stored.bytes.len(),
                });
                state.lock().unwrap().stored.push(stored);
                Reply::json(200, &json)
            }
            Err((code, why)) => Reply::json(code, &error_body(&why)).note(why),
        },
    }
}

fn error_body(message: &str) -> serde_json::Value {
    serde_json::json!({ "error": { "message": message } })
}

/// Check an upload as Cloudinary does; the asset to store, or the status and reason.
fn check_upload(request: &Received) -> Result<Stored, (u16, String)> {
    let bad = |why: &str| (400, why.to_owned());
    let route = format!("/v1_1/{CLOUD}/image/upload");
    if request.method != "POST" || request.path != route {
        return Err((
            404,
            format!("unexpected request {} {}", request.method, request.path),
        ));
    }
    let content_type = request
        .header("content-type")
        .ok_or_else(|| bad("no content type"))?;
    if !content_type.starts_with("multipart/form-data; boundary=") {
        return Err(bad("not multipart/form-data"));
    }
    let parts = request
        .form
        .as_ref()
        .ok_or_else(|| bad("malformed multipart body"))?;
    let field = |name: &str| request.field(name);
    let file = request
        .part("file")
        .ok_or_else(|| bad("Missing required parameter - file"))?;
    if field("api_key").as_deref() != Some(API_KEY) {
        return Err((401, "Unknown API key".into()));
    }
    let timestamp = field("timestamp").ok_or_else(|| bad("Missing timestamp"))?;
    let signature = field("signature").ok_or_else(|| bad("Missing signature"))?;
    // Every field but file, api_key, resource_type and cloud_name is signed.
    let mut signed: Vec<(String, String)> = parts
        .iter()
        .filter(|p| p.file_name.is_none())
        .filter(|p| {
            ![
                "file",
                "api_key",
                "resource_type",
                "cloud_name",
                "signature",
            ]
            .contains(&p.name.as_str())
        })
        .map(|p| {
            (
                p.name.clone(),
                String::from_utf8_lossy(&p.content).into_owned(),
            )
        })
        .collect();
    signed.sort();
    let to_sign = signed
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let expected: String = Sha1::digest(format!("{to_sign}{SECRET}").as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if signature != expected {
        return Err((
            401,
            format!("Invalid Signature {signature}. String to sign - '{to_sign}'."),
        ));
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let ts: u64 = timestamp.parse().map_err(|_| bad("bad timestamp"))?;
    if now.abs_diff(ts) > 3600 {
        return Err(bad("Stale request"));
    }
    if field("overwrite").as_deref() != Some("true") {
        return Err(bad("expected overwrite=true"));
    }
    Ok(Stored {
        public_id: field("public_id").ok_or_else(|| bad("no public_id"))?,
        folder: field("folder"),
        file_name: file.file_name.clone(),
        content_type: file.content_type.clone(),
        bytes: file.content.clone(),
        secure_url: String::new(),
    })
}

fn env(db: &TestDb, uploads: &TempDir, cloudinary: &FakeCloudinary) -> Vec<(&'static str, String)> {
    let env = with_env(
        fast_env(&db.url),
        "UPLOADS_DIR",
        uploads.0.to_str().unwrap(),
    );
    cloudinary.env(env)
}

/// Register a team, start an in-process worker against `cloudinary`, run its upload job
/// and return the job when final.
async fn upload(
    db: &TestDb,
    cloudinary: &FakeCloudinary,
    env_over: &[(&'static str, &str)],
) -> (String, engine::queue::JobRow) {
    let uploads = TempDir::new("uploads");
    let team_id = insert_team(db, TEAM_NAME).await;
    let mut e = env(db, &uploads, cloudinary);
    for (k, v) in env_over {
        e = with_env(e, k, *v);
    }
    let worker = InProcess::start(&e, "uploads", 2);
    let id = job(db, "upload_logo", &team_id).await;
    let done = wait_final(db, id, WAIT).await;
    worker.shutdown().await;
    assert_eq!(
        std::fs::read_dir(&uploads.0)
            .map(|d| d.count())
            .unwrap_or(0),
        0,
        "nothing is written locally when Cloudinary is configured"
    );
    (team_id, done)
}

async fn logo_url(db: &TestDb, team_id: &str) -> Option<String> {
    reg::team(&db.conn().await, team_id)
        .await
        .unwrap()
        .unwrap()
        .logo_url
}

#[tokio::test]
async fn the_logo_is_uploaded_signed_and_its_secure_url_stored() {
    let db = TestDb::new().await;
    let cloudinary = FakeCloudinary::start([]).await;
    let (team_id, done) = upload(&db, &cloudinary, &[]).await;

    assert_eq!(done.state, JobState::Completed, "{:?}", done.errors);
    assert_eq!(done.attempt, 1);
    let stored = cloudinary.stored();
    assert_eq!(stored.len(), 1, "{:?}", cloudinary.requests());
    let s = &stored[0];
    assert_eq!(
        s.bytes, LOGO_PNG,
        "the server received the registered bytes"
    );
    assert_eq!(s.public_id, "icct-001", "the public id follows the team id");
    assert_eq!(s.folder.as_deref(), Some(FOLDER));
    assert_eq!(s.file_name.as_deref(), Some("icct-001.png"));
    assert_eq!(s.content_type.as_deref(), Some("image/png"));
    assert_eq!(
        logo_url(&db, &team_id).await.as_deref(),
        Some(s.secure_url.as_str())
    );
    assert_eq!(done.result.unwrap()["logo_url"], s.secure_url.as_str());
    let left: i64 = db.scalar("SELECT count(*) FROM team_logos").await;
    assert_eq!(left, 0, "the bytes are dropped once uploaded");
}

#[tokio::test]
async fn two_5xx_answers_are_absorbed_by_the_quick_retries_of_one_attempt() {
    let db = TestDb::new().await;
    let cloudinary = FakeCloudinary::start([Answer::Status(500), Answer::Status(502)]).await;
    let (team_id, done) = upload(&db, &cloudinary, &[]).await;

    assert_eq!(done.state, JobState::Completed, "{:?}", done.errors);
    assert_eq!(
        done.attempt, 1,
        "the quick retries ran within the first attempt"
    );
    assert!(done.errors.is_empty());
    let statuses: Vec<_> = cloudinary.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [Some(500), Some(502), Some(200)]);
    assert_eq!(cloudinary.stored().len(), 1, "uploaded once");
    assert!(logo_url(&db, &team_id).await.is_some());
}

#[tokio::test]
async fn answers_5xx_past_the_quick_retries_go_back_to_the_queue() {
    let db = TestDb::new().await;
    let cloudinary = FakeCloudinary::start([Answer::Status(503); 2]).await;
    // One quick retry: both 503s land in the first attempt, which then fails.
    let (_, done) = upload(&db, &cloudinary, &[("CLOUDINARY_CALL_RETRIES", "1")]).await;

    assert_eq!(done.state, JobState::Completed, "{:?}", done.errors);
    assert_eq!(done.attempt, 2, "the second attempt uploaded");
    assert_eq!(done.errors.len(), 1);
    assert!(done.errors[0].message.contains("503"), "{:?}", done.errors);
    assert_eq!(cloudinary.requests().len(), 3);
    assert_eq!(cloudinary.stored().len(), 1);
}

#[tokio::test]
async fn bad_credentials_discard_the_job_with_cloudinarys_reason() {
    let db = TestDb::new().await;
    let cloudinary = FakeCloudinary::start([]).await;
    let wrong = format!("cloudinary://{API_KEY}:not-the-secret@{CLOUD}");
    let (team_id, done) = upload(&db, &cloudinary, &[("CLOUDINARY_URL", &wrong)]).await;

    assert_eq!(done.state, JobState::Discarded);
    assert_eq!(done.attempt, 1, "a 401 is not retried");
    let message = &done.errors[0].message;
    assert!(
        message.contains("401") && message.contains("Invalid Signature"),
        "{message}"
    );
    assert!(!message.contains("not-the-secret"), "{message}");
    let requests = cloudinary.requests();
    assert_eq!(requests.len(), 1);
    assert!(
        requests[0]
            .refusal
            .as_deref()
            .is_some_and(|r| r.starts_with("Invalid Signature")),
        "the server refused the signature: {requests:?}"
    );
    assert!(cloudinary.stored().is_empty());
    assert_eq!(logo_url(&db, &team_id).await, None);
    let left: i64 = db.scalar("SELECT count(*) FROM team_logos").await;
    assert_eq!(left, 1, "the bytes are kept for an operator to retry");
}

#[tokio::test]
async fn a_401_answer_is_permanent() {
    let db = TestDb::new().await;
    let cloudinary = FakeCloudinary::start([Answer::Status(401)]).await;
    let (_, done) = upload(&db, &cloudinary, &[]).await;
    assert_eq!(done.state, JobState::Discarded);
    assert_eq!(
        (done.attempt, done.errors[0].kind.as_str()),
        (1, "permanent")
    );
    assert!(
        done.errors[0].message.contains("Told to fail"),
        "{:?}",
        done.errors
    );
}

#[tokio::test]
async fn a_429_is_retried_no_earlier_than_its_retry_after() {
    let db = TestDb::new().await;
    // Longer than the kind's first backoff (5 s, at most 6.25 s with jitter), so only an
    // honoured Retry-After explains the wait.
    let cloudinary = FakeCloudinary::start([Answer::TooMany {
        retry_after_secs: 8,
    }])
    .await;
    let (_, done) = upload(&db, &cloudinary, &[]).await;

    assert_eq!(done.state, JobState::Completed, "{:?}", done.errors);
    assert_eq!(done.attempt, 2);
    assert!(done.errors[0].message.contains("429"), "{:?}", done.errors);
    let r = cloudinary.requests();
    assert_eq!(r.len(), 2, "a 429 is not retried within the attempt");
    let waited = r[1].at - r[0].at;
    assert!(waited >= Duration::from_secs(8), "retried after {waited:?}");
}

#[tokio::test]
async fn a_hung_upload_times_out_and_the_job_is_retried() {
    let db = TestDb::new().await;
    let cloudinary = FakeCloudinary::start([Answer::Hang]).await;
    let (team_id, done) = upload(&db, &cloudinary, &[]).await;

    assert_eq!(done.state, JobState::Completed, "{:?}", done.errors);
    assert_eq!(
        done.attempt, 2,
        "the hung attempt failed and the next one uploaded"
    );
    assert!(
        done.errors[0].message.contains("in time"),
        "{:?}",
        done.errors
    );
    let statuses: Vec<_> = cloudinary.requests().iter().map(|r| r.status).collect();
    assert_eq!(
        statuses,
        [None, Some(200)],
        "a timeout is not retried within the attempt"
    );
    assert!(logo_url(&db, &team_id).await.is_some());
}
