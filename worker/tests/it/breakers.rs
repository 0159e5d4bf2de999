//! Circuit breakers and rate limits of external services through real `worker` processes:
//! `noop` jobs call a fake service (`testkit::fake`), which counts and times the calls and can
//! be told to fail.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use engine::queue::{JobOptions, JobState, NewJob, control, enqueue_many};
use serde_json::json;
use testkit::fake::{FakeServer, Reply};
use testkit::http::Client;
use testkit::process::Process;
use testkit::{TestDb, wait_for};

use crate::harness::{InProcess, fast_env, wait_count, wait_final, with_env, worker};

/// A stand-in for an external service: answers 200, or 500 while failing.
struct FakeService {
    server: FakeServer,
    failing: Arc<AtomicBool>,
}

impl FakeService {
    async fn start(failing: bool) -> FakeService {
        let failing = Arc::new(AtomicBool::new(failing));
        let f = failing.clone();
        let server = FakeServer::start(move |_| {
            Reply::status(if f.load(Ordering::SeqCst) { 500 } else { 200 })
        })
        .await;
        FakeService { server, failing }
    }

    fn url(&self, path: &str) -> String {
        self.server.url(path)
    }

    /// The calls received, each with whether it was answered 200.
    fn calls(&self) -> Vec<Call> {
        self.server
            .received()
            .into_iter()
            .map(|r| Call {
                ok: r.status == Some(200),
                path: r.path,
                at: r.at,
            })
            .collect()
    }
}

/// One call the server received.
#[derive(Debug, Clone)]
struct Call {
    path: String,
    at: Instant,
    ok: bool,
}

/// Enqueue `n` noop jobs calling `/job/<i>` of `server` as `service`; returns their ids.
async fn enqueue_calls(
    db: &TestDb,
    server: &FakeService,
    service: &str,
    n: usize,
    max_attempts: i32,
) -> Vec<i64> {
    let jobs: Vec<NewJob> = (0..n)
        .map(|i| {
            NewJob::from_json(
                &engine::jobs::noop::SPEC,
                json!({"call_url": server.url(&format!("/job/{i}")), "service": service}),
            )
            .unwrap()
            .with(JobOptions {
                max_attempts: Some(max_attempts),
                ..Default::default()
            })
        })
        .collect();
    enqueue_many(&db.conn().await, &jobs)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect()
}

/// Two `worker` processes on `env`, each serving metrics on a port of its own (returned).
async fn start_two(db: &TestDb, env: &[(&'static str, String)]) -> ([Process; 2], [u16; 2]) {
    let ports = [(); 2].map(|_| testkit::free_port().expect("a free port"));
    let procs = ports.map(|port| {
        worker(
            &with_env(env.to_vec(), "METRICS_PORT", port.to_string()),
            &[],
        )
    });
    wait_count(
        db,
        "SELECT count(*) FROM workers",
        2,
        Duration::from_secs(20),
    )
    .await;
    (procs, ports)
}

/// The sum over `ports` of the samples of `metric` whose labels include all of `labels`
/// (`name="value"` each).
async fn metric_sum(ports: &[u16], metric: &str, labels: &[&str]) -> f64 {
    let mut sum = 0.0;
    for port in ports {
        let Some(body) = Client::local(*port).try_text("/metrics").await else {
            continue;
        };
        for line in body.lines() {
            let Some(rest) = line.strip_prefix(metric) else {
                continue;
            };
            if rest.starts_with('{') && labels.iter().all(|l| rest.contains(l)) {
                sum += rest
                    .rsplit(' ')
                    .next()
                    .and_then(|v| v.parse::<f64>().ok())
                    .unwrap_or(0.0);
            }
        }
    }
    sum
}

#[tokio::test]
async fn a_failing_service_opens_the_breaker_for_every_process_and_recovers_through_a_probe() {
    const THRESHOLD: usize = 3;
    const JOBS: usize = 12;
    let db = TestDb::new().await;
    let server = FakeService::start(true).await;
    let env = with_env(fast_env(&db.url), "WORKER_CONCURRENCY", "1");
    let env = with_env(env, "BREAKER_FAILURE_THRESHOLD", THRESHOLD.to_string());
    let env = with_env(env, "BREAKER_FAILURE_RATE", "0");
    let env = with_env(env, "BREAKER_COOL_DOWN_MS", "1500");
    let env = with_env(env, "BREAKER_HALF_OPEN_PROBES", "1");
    let (_procs, ports) = start_two(&db, &env).await;
    let ids = enqueue_calls(&db, &server, "flaky", JOBS, 30).await;

    // Open, then reopened twice by failed probes; jobs snoozed in both processes meanwhile.
    wait_count(
        &db,
        "SELECT count(*) FROM breakers WHERE service = 'flaky' AND times_opened >= 3",
        1,
        Duration::from_secs(60),
    )
    .await;
    wait_count(
        &db,
        "SELECT count(DISTINCT attempted_by) FROM jobs WHERE (meta->>'snoozes')::int > 0",
        2,
        Duration::from_secs(60),
    )
    .await;
    let failed = server.calls().len();
    let times_opened: i64 = db
        .scalar("SELECT times_opened FROM breakers WHERE service = 'flaky'")
        .await;
    // The threshold's calls, one call already in flight in the other process, and one probe
    // per opening. Breakers per process would allow twice the threshold and a probe from each.
    let bound = THRESHOLD + 1 + times_opened as usize;
    assert!(
        failed <= bound,
        "{failed} calls while failing, more than {bound} ({times_opened} openings)"
    );
    assert!(server.calls().iter().all(|c| !c.ok));

    // The service recovers: a probe closes the breaker and every job completes exactly once.
    server.failing.store(false, Ordering::SeqCst);
    wait_count(
        &db,
        "SELECT count(*) FROM jobs WHERE state = 'completed'",
        JOBS as i64,
        Duration::from_secs(90),
    )
    .await;
    let state: String = db
        .scalar("SELECT state FROM breakers WHERE service = 'flaky'")
        .await;
    assert_eq!(state, "closed");
    let calls = server.calls();
    let c = db.conn().await;
    let mut snoozed = 0;
    for (i, id) in ids.iter().enumerate() {
        let job = control::get(&c, *id).await.unwrap().unwrap();
        assert_eq!(job.state, JobState::Completed);
        let path = format!("/job/{i}");
        let mine: Vec<_> = calls.iter().filter(|c| c.path == path).collect();
        assert_eq!(
            mine.iter().filter(|c| c.ok).count(),
            1,
            "job {i} succeeded once"
        );
        // Each attempt made exactly one call: snoozed runs used up no attempt.
        assert_eq!(
            job.attempt as usize,
            mine.len(),
            "job {i}: {:?}",
            job.errors
        );
        assert_eq!(job.errors.len(), mine.len() - 1);
        snoozed += job.meta["snoozes"].as_u64().unwrap_or(0);
    }
    assert!(snoozed > 0);

    // The processes' metrics agree with the database: one opening from closed, one closing,
    // a reopening for every failed probe, and calls denied while open.
    let opened = times_opened_now(&db).await;
    let flaky = r#"service="flaky""#;
    let want = [
        (r#"from="closed",to="open""#, 1.0),
        (r#"from="half_open",to="closed""#, 1.0),
        (r#"from="half_open",to="open""#, (opened - 1) as f64),
    ];
    wait_for("transition metrics", Duration::from_secs(10), || async {
        for (labels, n) in want {
            let got = metric_sum(
                &ports,
                "quayside_breaker_transitions_total",
                &[flaky, labels],
            )
            .await;
            if got != n {
                return None;
            }
        }
        Some(())
    })
    .await;
    assert!(metric_sum(&ports, "quayside_breaker_denied_total", &[flaky]).await > 0.0);
    let successes = metric_sum(
        &ports,
        "quayside_external_calls_total",
        &[flaky, r#"result="success""#],
    )
    .await;
    assert_eq!(successes, JOBS as f64);
}

async fn times_opened_now(db: &TestDb) -> i64 {
    db.scalar("SELECT times_opened FROM breakers WHERE service = 'flaky'")
        .await
}

#[tokio::test]
async fn a_global_rate_limit_holds_across_processes() {
    const JOBS: usize = 40;
    let db = TestDb::new().await;
    let server = FakeService::start(false).await;
    let env = with_env(fast_env(&db.url), "WORKER_CONCURRENCY", "4");
    let env = with_env(env, "RATE_LIMITS", "limited=10/5s");
    let (_procs, _) = start_two(&db, &env).await;
    let ids = enqueue_calls(&db, &server, "limited", JOBS, 3).await;
    wait_count(
        &db,
        "SELECT count(*) FROM jobs WHERE state = 'completed'",
        JOBS as i64,
        Duration::from_secs(120),
    )
    .await;

    let mut calls = server.calls();
    assert_eq!(calls.len(), JOBS, "one call per job");
    calls.sort_by_key(|c| c.at);
    // No 11 calls within one period, as the server saw them (less a margin for the time
    // between the grant and the call's arrival).
    let window = Duration::from_millis(4500);
    for w in calls.windows(11) {
        let spread = w[10].at - w[0].at;
        assert!(spread >= window, "11 calls within {spread:?}");
    }
    let c = db.conn().await;
    let mut snoozed = 0;
    for id in ids {
        let job = control::get(&c, id).await.unwrap().unwrap();
        assert_eq!((job.state, job.attempt), (JobState::Completed, 1));
        snoozed += job.meta["snoozes"].as_u64().unwrap_or(0);
    }
    assert!(
        snoozed >= 30,
        "jobs waited for their slot ({snoozed} snoozes)"
    );
}

#[tokio::test]
async fn a_noop_call_to_a_host_not_allowed_is_discarded_without_a_connection() {
    let db = TestDb::new().await;
    let server = FakeService::start(false).await;
    // The server listens on 127.0.0.1; the worker may call only another host.
    let env = with_env(fast_env(&db.url), "NOOP_CALL_HOSTS", "allowed.example:80");
    let w = InProcess::start(&env, "default", 4);
    let ids = enqueue_calls(&db, &server, "elsewhere", 1, 3).await;
    let job = wait_final(&db, ids[0], Duration::from_secs(20)).await;
    w.shutdown().await;
    assert_eq!(job.state, JobState::Discarded);
    assert_eq!(job.attempt, 1, "refused at once, not retried");
    assert!(
        job.errors[0].message.contains("NOOP_CALL_HOSTS"),
        "{:?}",
        job.errors
    );
    assert!(server.calls().is_empty(), "no request reached the server");
}
