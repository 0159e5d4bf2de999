//! The registration jobs through real `worker` processes when the outside world misbehaves:
//! an SMTP server that goes away and comes back, a worker killed during an upload, a slow SMTP
//! server under a burst of registrations (also posted through the real `api`), Cloudinary
//! failing for two processes and then recovering, and Cloudinary's rate limit shared by two
//! processes.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use engine::queue::{JobState, control};
use testkit::fixtures::{TEAM_NAME, insert_team, registration_form};
use testkit::http::Response;
use testkit::{TempDir, TestDb, wait_for};

use crate::cloudinary::{Answer, FakeCloudinary};
use crate::harness::{api, fast_env, wait_count, wait_final, with_env, worker};
use crate::registrations::job;
use crate::smtp::FakeSmtp;

const WAIT: Duration = Duration::from_secs(90);

#[tokio::test]
async fn smtp_down_opens_the_breaker_and_every_email_arrives_once_after() {
    const N: usize = 12;
    let db = TestDb::new().await;
    let outbox = TempDir::new("outbox");
    let smtp = FakeSmtp::start().await;
    smtp.stop();
    let ids = teams_with_a_job(&db, "send_confirmation_email", N).await;
    let env = smtp.env(with_env(
        fast_env(&db.url),
        "MAIL_OUTBOX_DIR",
        outbox.0.to_str().unwrap(),
    ));
    let env = with_env(env, "SMTP_BREAKER_FAILURE_THRESHOLD", "3");
    let env = with_env(env, "SMTP_BREAKER_COOL_DOWN_MS", "1000");
    let env = with_env(env, "SMTP_CONNECT_TIMEOUT_MS", "500");
    let workers = [
        worker(&env, &["--queues", "email", "--concurrency", "4"]),
        worker(&env, &["--queues", "email", "--concurrency", "4"]),
    ];

    // Down: the breaker opens for both processes, and the jobs wait without using attempts.
    wait_count(
        &db,
        "SELECT count(*) FROM breakers WHERE service = 'smtp' AND times_opened >= 2",
        1,
        WAIT,
    )
    .await;
    wait_for("jobs snoozed by the open breaker", WAIT, || async {
        let snoozed: i64 = db
            .scalar("SELECT count(*) FROM jobs WHERE (meta->>'snoozes')::int > 0")
            .await;
        (snoozed >= (N / 2) as i64).then_some(())
    })
    .await;
    // Read together: the failures are bounded by the breaker, not by the jobs waiting. At most
    // the calls in flight when it opened fail (every slot of both processes), and then one
    // probe per reopening after a cool-down; everything else is snoozed.
    let row = db
        .conn()
        .await
        .query_one(
            "SELECT (SELECT coalesce(sum(jsonb_array_length(errors)), 0) FROM jobs)::bigint,
                    (SELECT coalesce(sum((meta->>'snoozes')::int), 0) FROM jobs)::bigint,
                    (SELECT times_opened FROM breakers WHERE service = 'smtp')::bigint",
            &[],
        )
        .await
        .unwrap();
    let (failed_while_down, snoozes_while_down, times_opened): (i64, i64, i64) =
        (row.get(0), row.get(1), row.get(2));
    const SLOTS: i64 = 2 * 4;
    assert!(
        failed_while_down <= SLOTS + times_opened,
        "failed attempts bounded by the slots in flight and one probe per opening: \
         {failed_while_down} failures, {times_opened} openings"
    );

    // Back: every message is delivered, each exactly once.
    smtp.restart().await;
    let mut attempts = Vec::new();
    for &id in &ids {
        let done = wait_final(&db, id, WAIT).await;
        assert_eq!(done.state, JobState::Completed, "{:?}", done.errors);
        attempts.push(done.attempt);
    }
    drop(workers);
    assert_each_confirmed_once(&smtp, &ids);
    eprintln!(
        "smtp down: {failed_while_down} failed attempts and {snoozes_while_down} snoozes while \
         down; attempts per job {attempts:?}"
    );
}

#[tokio::test]
async fn an_upload_cut_by_kill_9_completes_after_the_rescue() {
    let db = TestDb::new().await;
    let uploads = TempDir::new("uploads");
    let cloudinary = FakeCloudinary::start([Answer::Hang]).await;
    let team_id = insert_team(&db, TEAM_NAME).await;
    let id = job(&db, "upload_logo", &team_id).await;
    let env = cloudinary.env(with_env(
        fast_env(&db.url),
        "UPLOADS_DIR",
        uploads.0.to_str().unwrap(),
    ));
    // The hung request would outlive the lease (2 s) by far.
    let env = with_env(env, "CLOUDINARY_REQUEST_TIMEOUT_MS", "60000");
    let args = ["--queues", "uploads", "--concurrency", "2"];
    let first = worker(&env, &args);
    wait_for("the upload to reach the server", WAIT, || async {
        (!cloudinary.requests().is_empty()).then_some(())
    })
    .await;
    first.signal("-KILL");
    first.wait(Duration::from_secs(10)).await;
    let row = control::get(&db.conn().await, id).await.unwrap().unwrap();
    assert_eq!(row.state, JobState::Running, "the killed worker held it");

    let _second = worker(&env, &args);
    let done = wait_final(&db, id, WAIT).await;
    assert_eq!(done.state, JobState::Completed, "{:?}", done.errors);
    assert_eq!(done.attempt, 2, "the rescue handed it to the second worker");
    let statuses: Vec<_> = cloudinary.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [None, Some(200)]);
    assert_eq!(cloudinary.stored().len(), 1, "uploaded once");
    let team = domain::registrations::team(&db.conn().await, &team_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        team.logo_url.as_deref(),
        Some(cloudinary.stored()[0].secure_url.as_str())
    );
    eprintln!(
        "kill -9 during upload: errors after rescue {:?}",
        done.errors
    );
}

#[tokio::test]
async fn a_burst_of_200_confirmations_to_a_slow_server_arrives_once_each() {
    const N: usize = 200;
    let db = TestDb::new().await;
    let outbox = TempDir::new("outbox");
    let smtp = FakeSmtp::start().await;
    smtp.slow(Duration::from_secs(1));
    let ids = teams_with_a_job(&db, "send_confirmation_email", N).await;
    let env = smtp.env(with_env(
        fast_env(&db.url),
        "MAIL_OUTBOX_DIR",
        outbox.0.to_str().unwrap(),
    ));
    let started = std::time::Instant::now();
    let args = ["--queues", "email", "--concurrency", "10"];
    let workers = [worker(&env, &args), worker(&env, &args)];
    wait_count(
        &db,
        "SELECT count(*) FROM jobs WHERE kind = 'send_confirmation_email' AND state = 'completed'",
        N as i64,
        Duration::from_secs(180),
    )
    .await;
    let took = started.elapsed();
    drop(workers);
    let retried: i64 = db
        .scalar("SELECT count(*) FROM jobs WHERE attempt > 1 OR errors <> '[]'::jsonb")
        .await;
    assert_eq!(retried, 0, "a slow server is not a failing one");
    assert_each_confirmed_once(&smtp, &ids);
    eprintln!("200 confirmations at 1 s each, 2 workers x 10 slots: all delivered in {took:?}");
}

/// Uploads grouped by public id, as the server stored them (only successful requests store).
fn uploads_by_public_id(cloudinary: &FakeCloudinary) -> HashMap<String, usize> {
    let mut by_id: HashMap<String, usize> = HashMap::new();
    for s in cloudinary.stored() {
        *by_id.entry(s.public_id).or_default() += 1;
    }
    by_id
}

#[tokio::test]
async fn cloudinary_failing_opens_one_breaker_for_both_processes_and_each_logo_is_uploaded_once_after()
 {
    const N: usize = 12;
    const THRESHOLD: i64 = 5;
    const CONCURRENCY: i64 = 2;
    const SLOTS: i64 = 2 * CONCURRENCY;
    let db = TestDb::new().await;
    let uploads = TempDir::new("uploads");
    let cloudinary = FakeCloudinary::start([]).await;
    cloudinary.fail_with(Some(Answer::Status(500)));
    let mut ids = Vec::new();
    let mut teams = Vec::new();
    for _ in 0..N {
        let team_id = insert_team(&db, TEAM_NAME).await;
        ids.push(job(&db, "upload_logo", &team_id).await);
        teams.push(team_id);
    }
    let env = cloudinary.env(with_env(
        fast_env(&db.url),
        "UPLOADS_DIR",
        uploads.0.to_str().unwrap(),
    ));
    let env = with_env(
        env,
        "CLOUDINARY_BREAKER_FAILURE_THRESHOLD",
        THRESHOLD.to_string(),
    );
    let env = with_env(env, "CLOUDINARY_BREAKER_FAILURE_RATE", "0");
    let env = with_env(env, "CLOUDINARY_BREAKER_COOL_DOWN_MS", "1500");
    let env = with_env(env, "CLOUDINARY_BREAKER_HALF_OPEN_PROBES", "1");
    let concurrency = CONCURRENCY.to_string();
    let args = ["--queues", "uploads", "--concurrency", concurrency.as_str()];
    let workers = [worker(&env, &args), worker(&env, &args)];

    // Failing: the one breaker opens, then reopens on failed probes, and both processes snooze
    // their jobs meanwhile.
    wait_count(
        &db,
        "SELECT count(*) FROM breakers WHERE service = 'cloudinary' AND times_opened >= 3",
        1,
        WAIT,
    )
    .await;
    wait_count(
        &db,
        "SELECT count(DISTINCT attempted_by) FROM jobs WHERE (meta->>'snoozes')::int > 0",
        2,
        WAIT,
    )
    .await;
    // Every request, the quick retries within an attempt included, passes the breaker. The
    // server's count is read first, then the database: a request counted at the server has
    // had its failure recorded by the time of the second read, except perhaps the one probe
    // allowed at a time (its failure not yet written, so not yet an opening).
    let requests_while_failing = cloudinary.requests().len() as i64;
    let row = db
        .conn()
        .await
        .query_one(
            "SELECT (SELECT times_opened FROM breakers WHERE service = 'cloudinary')::bigint,
                    (SELECT coalesce(sum(jsonb_array_length(errors)), 0) FROM jobs)::bigint,
                    (SELECT coalesce(sum((meta->>'snoozes')::int), 0) FROM jobs)::bigint",
            &[],
        )
        .await
        .unwrap();
    let (times_opened, failed_attempts, snoozes_while_failing): (i64, i64, i64) =
        (row.get(0), row.get(1), row.get(2));
    // The threshold's failures, the other slots' calls already in flight when it opened, a
    // failed probe for each reopening (times_opened - 1) and the probe perhaps in flight. A
    // breaker per process would allow the threshold in each before either opened, and a
    // probe from each per cool-down.
    let bound = THRESHOLD + (SLOTS - 1) + (times_opened - 1) + 1;
    assert!(
        requests_while_failing <= bound,
        "{requests_while_failing} requests while failing, more than {bound} \
         ({times_opened} openings)"
    );
    assert!(
        failed_attempts <= requests_while_failing,
        "no attempt is burnt without a request: {failed_attempts} failed attempts"
    );
    assert!(cloudinary.stored().is_empty());
    assert!(snoozes_while_failing > 0);

    // Recovered: a probe closes the breaker and every logo is uploaded, each exactly once.
    cloudinary.fail_with(None);
    let failed_requests = cloudinary.requests().len();
    let mut attempts = Vec::new();
    for &id in &ids {
        let done = wait_final(&db, id, WAIT).await;
        assert_eq!(done.state, JobState::Completed, "{:?}", done.errors);
        // Snoozed runs used no attempt: each attempt before the last ended in an error.
        assert_eq!(
            done.attempt as usize,
            done.errors.len() + 1,
            "{:?}",
            done.errors
        );
        attempts.push(done.attempt);
    }
    drop(workers);
    let state: String = db
        .scalar("SELECT state FROM breakers WHERE service = 'cloudinary'")
        .await;
    assert_eq!(state, "closed");
    let requests = cloudinary.requests();
    assert!(
        requests[failed_requests..]
            .iter()
            .all(|r| r.status == Some(200))
    );
    let by_id = uploads_by_public_id(&cloudinary);
    assert_eq!(by_id.len(), N, "one asset per team: {by_id:?}");
    assert!(by_id.values().all(|&n| n == 1), "none twice: {by_id:?}");
    for team_id in &teams {
        assert!(by_id.contains_key(&team_id.to_lowercase()), "{team_id}");
    }
    let total_failed: i64 = db
        .scalar("SELECT coalesce(sum(jsonb_array_length(errors)), 0)::bigint FROM jobs")
        .await;
    assert!(total_failed as usize <= failed_requests);
    eprintln!(
        "cloudinary failing: {requests_while_failing} requests (bound {bound}) for \
         {times_opened} openings, {failed_attempts} failed attempts and \
         {snoozes_while_failing} snoozes; after recovery {} uploads, attempts per job \
         {attempts:?}",
        requests.len() - failed_requests
    );
}

#[tokio::test]
async fn a_cloudinary_rate_limit_of_10_per_5_s_holds_over_40_uploads_from_two_processes() {
    const N: usize = 40;
    let db = TestDb::new().await;
    let uploads = TempDir::new("uploads");
    let cloudinary = FakeCloudinary::start([]).await;
    let ids = teams_with_a_job(&db, "upload_logo", N).await;
    let env = cloudinary.env(with_env(
        fast_env(&db.url),
        "UPLOADS_DIR",
        uploads.0.to_str().unwrap(),
    ));
    let env = with_env(env, "CLOUDINARY_RATE_LIMIT", "10/5s");
    let args = ["--queues", "uploads", "--concurrency", "4"];
    let started = std::time::Instant::now();
    let workers = [worker(&env, &args), worker(&env, &args)];
    wait_count(
        &db,
        "SELECT count(*) FROM jobs WHERE kind = 'upload_logo' AND state = 'completed'",
        N as i64,
        Duration::from_secs(120),
    )
    .await;
    let took = started.elapsed();
    drop(workers);

    let mut requests = cloudinary.requests();
    assert_eq!(requests.len(), N, "one request per upload: {requests:?}");
    assert!(requests.iter().all(|r| r.status == Some(200)));
    requests.sort_by_key(|r| r.at);
    // No 11 requests within one period as the server saw them. The limit grants slots in
    // PostgreSQL; a request reaches the server a little after its grant (the breaker's round
    // trip, the connection, the multipart body), and that delay differs from one request to
    // the next, so the spread seen here can fall short of the granted one by that jitter:
    // 500 ms of margin, as the noop test allows.
    let window = Duration::from_millis(4500);
    let mut tightest = Duration::MAX;
    for w in requests.windows(11) {
        let spread = w[10].at - w[0].at;
        tightest = tightest.min(spread);
        assert!(spread >= window, "11 requests within {spread:?}");
    }
    let by_id = uploads_by_public_id(&cloudinary);
    assert_eq!(by_id.len(), N, "every logo uploaded: {by_id:?}");
    assert!(by_id.values().all(|&n| n == 1), "none twice: {by_id:?}");
    let c = db.conn().await;
    let mut snoozes = 0;
    for id in ids {
        let done = control::get(&c, id).await.unwrap().unwrap();
        assert_eq!(
            (done.state, done.attempt),
            (JobState::Completed, 1),
            "{:?}",
            done.errors
        );
        snoozes += done.meta["snoozes"].as_u64().unwrap_or(0);
    }
    assert!(
        snoozes >= 30,
        "uploads waited for their slot ({snoozes} snoozes)"
    );
    eprintln!(
        "cloudinary 10/5s: 40 uploads in {took:?}, tightest 11-request spread {tightest:?}, \
         {snoozes} snoozes"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn two_hundred_registrations_through_the_api_never_wait_for_a_slow_smtp_server() {
    const N: usize = 200;
    const CLIENTS: usize = 16;
    const PER_MESSAGE: Duration = Duration::from_secs(1);
    let db = TestDb::new().await;
    let (uploads, outbox) = (TempDir::new("uploads"), TempDir::new("outbox"));
    let (uploads_dir, outbox_dir) = (uploads.0.to_str().unwrap(), outbox.0.to_str().unwrap());
    let smtp = FakeSmtp::start().await;
    smtp.slow(PER_MESSAGE);
    let api = api(&[
        ("DATABASE_URL", &db.url),
        ("UPLOADS_DIR", uploads_dir),
        // 200 posts from one address: the per-IP abuse limit is not under test here.
        ("RATE_LIMIT_REQUESTS", "10000"),
    ])
    .await;
    let env = smtp.env(with_env(fast_env(&db.url), "UPLOADS_DIR", uploads_dir));
    let env = with_env(env, "MAIL_OUTBOX_DIR", outbox_dir);
    let env = with_env(env, "PUBLIC_BASE_URL", api.base_url());
    let args = ["--queues", "uploads,email", "--concurrency", "10"];
    let workers = [worker(&env, &args), worker(&env, &args)];

    // 200 registrations, 16 at a time, each on a connection of its own.
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (client, next) = (api.client(), next.clone());
            tokio::spawn(async move {
                let mut out = Vec::new();
                while next.fetch_add(1, Ordering::SeqCst) < N {
                    let t = Instant::now();
                    let r = client.register(registration_form()).send().await;
                    out.push((t.elapsed(), r));
                }
                out
            })
        })
        .collect();
    let mut answers: Vec<(Duration, Response)> = Vec::new();
    for c in clients {
        answers.extend(c.await.expect("a client task"));
    }
    let posting_took = started.elapsed();
    let delivered_by_then = smtp.messages().len();
    assert_eq!(answers.len(), N);
    let mut latencies = Vec::new();
    let mut teams = HashSet::new();
    let mut mail_jobs = Vec::new();
    for (took, r) in &answers {
        assert_eq!(r.status, 201, "{r:?}");
        latencies.push(*took);
        let body = r.json();
        teams.insert(body["team_id"].as_str().unwrap().to_owned());
        let mail = body["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|j| j["kind"] == "send_confirmation_email")
            .unwrap_or_else(|| panic!("no mail job: {body}"));
        mail_jobs.push(mail["id"].as_i64().unwrap());
    }
    assert_eq!(teams.len(), N, "a team per registration");
    latencies.sort();
    let (p50, p99, max) = (
        latencies[N / 2 - 1],
        latencies[N * 99 / 100 - 1],
        latencies[N - 1],
    );
    // The API only writes the team and its jobs: a registration that waited for its mail
    // would take at least the server's second per message.
    assert!(
        p99 < PER_MESSAGE,
        "p99 {p99:?} (p50 {p50:?}, max {max:?}): registrations waited for the mail"
    );

    // Then the workers deliver every confirmation, each exactly once.
    wait_count(
        &db,
        "SELECT count(*) FROM jobs WHERE state = 'completed'",
        2 * N as i64,
        Duration::from_secs(60),
    )
    .await;
    let all_done = started.elapsed();
    drop(workers);
    let retried: i64 = db
        .scalar("SELECT count(*) FROM jobs WHERE attempt > 1 OR errors <> '[]'::jsonb")
        .await;
    assert_eq!(retried, 0, "a slow server is not a failing one");
    assert_each_confirmed_once(&smtp, &mail_jobs);
    eprintln!(
        "200 registrations via the API, 16 at a time, SMTP 1 s per message: posted in \
         {posting_took:?} (p50 {p50:?}, p99 {p99:?}, max {max:?}), {delivered_by_then} mails \
         delivered by then, all 200 in {all_done:?}"
    );
}

/// FakeSmtp received exactly one confirmation per job of `jobs`, by Message-ID, and nothing
/// else.
fn assert_each_confirmed_once(smtp: &FakeSmtp, jobs: &[i64]) {
    let mut by_id: HashMap<String, usize> = HashMap::new();
    for m in smtp.messages() {
        *by_id
            .entry(m.header("Message-ID").expect("a Message-ID"))
            .or_default() += 1;
    }
    assert_eq!(
        by_id.len(),
        jobs.len(),
        "one distinct message per job: {by_id:?}"
    );
    assert!(by_id.values().all(|&n| n == 1), "none twice: {by_id:?}");
    for id in jobs {
        assert!(
            by_id.contains_key(&format!("<confirmation-{id}@localhost>")),
            "job {id} has its message"
        );
    }
}

/// `n` registered teams, each with one job of `kind`; the jobs' ids.
async fn teams_with_a_job(db: &TestDb, kind: &str, n: usize) -> Vec<i64> {
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        let team_id = insert_team(db, TEAM_NAME).await;
        ids.push(job(db, kind, &team_id).await);
    }
    ids
}
