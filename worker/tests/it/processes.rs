//! The real `worker` binary: many processes, kill -9, SIGTERM, database restarts; and the
//! worker's view of schedules, pauses and timeouts.

use std::time::Duration;

use chrono::Utc;
use engine::config::DatabaseSettings;
use engine::queue::{JobOptions, JobState, control};
use serde_json::json;
use testkit::{PrivateCluster, TestDb, wait_for};

use testkit::http::Client;
use testkit::process::Process;

use crate::harness::{
    InProcess, enqueue_noop, enqueue_noops, fast_env, wait_count, wait_final, with_env, worker,
};

/// The worker id running job `id`, once it runs.
async fn running_under(db: &TestDb, id: i64, timeout: Duration) -> String {
    wait_for(&format!("job {id} to run"), timeout, || async {
        control::get(&db.conn().await, id)
            .await
            .expect("get")
            .filter(|j| j.state == JobState::Running)
            .and_then(|j| j.attempted_by)
    })
    .await
}

#[tokio::test]
async fn four_processes_run_every_job_exactly_once() {
    const JOBS: i64 = 20_000;
    let db = TestDb::new().await;
    // A long lease: this test is about fetch races, not about rescues under a loaded CI box.
    let env = with_env(fast_env(&db.url), "WORKER_CONCURRENCY", "50");
    let env = with_env(env, "WORKER_LEASE_MS", "30000");
    let procs: Vec<Process> = (0..4).map(|_| worker(&env, &[])).collect();
    wait_count(
        &db,
        "SELECT count(*) FROM workers",
        4,
        Duration::from_secs(20),
    )
    .await;

    let ids = enqueue_noops(&db, "default", JOBS as usize, json!({})).await;
    assert_eq!(ids.len() as i64, JOBS);
    wait_count(
        &db,
        "SELECT count(*) FROM jobs WHERE state = 'completed'",
        JOBS,
        Duration::from_secs(90),
    )
    .await;

    // Every row completed by its first attempt: no job was fetched twice.
    let wrong: i64 = db
        .scalar(
            "SELECT count(*) FROM jobs
              WHERE state <> 'completed' OR attempt <> 1 OR errors <> '[]'
                 OR lease_expires_at IS NOT NULL OR finished_at IS NULL",
        )
        .await;
    assert_eq!(wrong, 0, "jobs not completed exactly once");
    let total: i64 = db.scalar("SELECT count(*) FROM jobs").await;
    assert_eq!(total, JOBS);
    let workers: i64 = db
        .scalar("SELECT count(DISTINCT attempted_by) FROM jobs")
        .await;
    assert_eq!(workers, 4, "every process took a share");

    for p in &procs {
        p.signal("-TERM");
    }
    for p in procs {
        assert_eq!(p.wait(Duration::from_secs(15)).await, Some(0));
    }
    wait_count(
        &db,
        "SELECT count(*) FROM workers",
        0,
        Duration::from_secs(1),
    )
    .await;
}

#[tokio::test]
async fn a_killed_workers_job_is_rescued_and_run_by_another() {
    let db = TestDb::new().await;
    let env = fast_env(&db.url); // 2 s lease, rescue every 300 ms
    let first = worker(&env, &[]);
    let id = enqueue_noop(&db, json!({"sleep_ms": 1500}), JobOptions::default()).await;
    let killed = running_under(&db, id, Duration::from_secs(20)).await;
    first.signal("-KILL");
    assert_eq!(first.wait(Duration::from_secs(5)).await, None, "killed");
    let row = control::get(&db.conn().await, id).await.unwrap().unwrap();
    assert_eq!(
        (row.state, row.attempt),
        (JobState::Running, 1),
        "the job was cut off mid-run"
    );

    let _second = worker(&env, &[]);
    let job = wait_final(&db, id, Duration::from_secs(20)).await;
    assert_eq!((job.state, job.attempt), (JobState::Completed, 2));
    assert_eq!(job.errors.len(), 1, "{:?}", job.errors);
    assert_eq!(job.errors[0].kind, "lease_expired");
    assert_eq!(job.errors[0].attempt, 1);
    assert!(
        job.errors[0].message.contains(&killed),
        "{}",
        job.errors[0].message
    );
    let by = job.attempted_by.expect("attempted_by");
    assert_ne!(by, killed, "completed by the second worker");
    // The rescue came after the lease ran out, not before.
    assert!(job.errors[0].at >= row.lease_expires_at.expect("leased"));
}

#[tokio::test]
async fn sigterm_lets_jobs_in_flight_finish_and_leaves_the_rest_available() {
    let db = TestDb::new().await;
    let p = worker(&fast_env(&db.url), &["--concurrency", "4"]);
    let ids = enqueue_noops(&db, "default", 8, json!({"sleep_ms": 1000})).await;
    wait_count(
        &db,
        "SELECT count(*) FROM jobs WHERE state = 'running'",
        4,
        Duration::from_secs(20),
    )
    .await;
    p.signal("-TERM");
    assert_eq!(p.wait(Duration::from_secs(10)).await, Some(0));

    let c = db.conn().await;
    let counts = control::count_by_state(&c, None).await.unwrap();
    assert_eq!(counts.get("completed"), Some(&4), "{counts:?}");
    assert_eq!(counts.get("available"), Some(&4), "{counts:?}");
    assert_eq!(counts.len(), 2, "{counts:?}");
    for id in ids {
        let j = control::get(&c, id).await.unwrap().unwrap();
        match j.state {
            JobState::Completed => assert_eq!(j.attempt, 1),
            _ => assert_eq!((j.attempt, j.attempted_by), (0, None), "never fetched"),
        }
        assert!(j.errors.is_empty());
    }
    let workers: i64 = db.scalar("SELECT count(*) FROM workers").await;
    assert_eq!(workers, 0, "deregistered on the way out");
}

#[tokio::test]
async fn sigterm_hands_back_jobs_that_outlive_the_shutdown_timeout() {
    let db = TestDb::new().await;
    let env = with_env(fast_env(&db.url), "WORKER_SHUTDOWN_TIMEOUT_MS", "500");
    let p = worker(&env, &["--concurrency", "2"]);
    let ids = enqueue_noops(&db, "default", 2, json!({"sleep_ms": 10_000})).await;
    wait_count(
        &db,
        "SELECT count(*) FROM jobs WHERE state = 'running'",
        2,
        Duration::from_secs(20),
    )
    .await;
    let sent = std::time::Instant::now();
    p.signal("-TERM");
    assert_eq!(p.wait(Duration::from_secs(5)).await, Some(0));
    assert!(sent.elapsed() < Duration::from_secs(5));

    let c = db.conn().await;
    for id in ids {
        let j = control::get(&c, id).await.unwrap().unwrap();
        assert_eq!(
            (j.state, j.attempt, j.lease_expires_at, j.finished_at),
            (JobState::Available, 0, None, None),
            "job {id} handed back without using up an attempt"
        );
        assert!(j.errors.is_empty(), "{:?}", j.errors);
    }
}

/// SIGTERM while PostgreSQL is down: the whole shutdown stays within
/// `WORKER_SHUTDOWN_TIMEOUT_MS` (the completer used to retry forever, so the process hung
/// until SIGKILL), and the jobs whose outcomes could not be written run again once the
/// database is back.
#[tokio::test]
async fn sigterm_during_a_database_outage_exits_in_time_and_loses_nothing() {
    let (pg, url) = PrivateCluster::start().await;
    let db = TestDb {
        pool: engine::db::pool(&DatabaseSettings::for_url(&url)).unwrap(),
        name: "quayside".into(),
        url: url.clone(),
    };
    let env = with_env(fast_env(&db.url), "WORKER_SHUTDOWN_TIMEOUT_MS", "2000");
    let p = worker(&env, &["--concurrency", "4"]);
    // They finish during the drain, with the database gone.
    let ids = enqueue_noops(&db, "default", 4, json!({"sleep_ms": 800})).await;
    wait_count(
        &db,
        "SELECT count(*) FROM jobs WHERE state = 'running'",
        4,
        Duration::from_secs(20),
    )
    .await;
    drop(db);
    // Blocks this test's runtime while the server stops; the worker is another process.
    pg.cluster.stop().expect("stop");
    let sent = std::time::Instant::now();
    p.signal("-TERM");
    assert_eq!(p.wait(Duration::from_secs(8)).await, Some(0));
    assert!(
        sent.elapsed() < Duration::from_millis(3500),
        "exited {:?} after SIGTERM, with a budget of 2 s",
        sent.elapsed()
    );

    pg.cluster.start_again().expect("start again");
    let db = TestDb {
        pool: engine::db::pool(&DatabaseSettings::for_url(&url)).unwrap(),
        name: "quayside".into(),
        url,
    };
    let w = InProcess::start(&fast_env(&db.url), "default", 4);
    for id in ids {
        let j = wait_final(&db, id, Duration::from_secs(30)).await;
        assert_eq!(j.state, JobState::Completed, "job {id}: {:?}", j.errors);
    }
    w.shutdown().await;
}

#[tokio::test]
async fn a_database_restart_under_a_running_worker_loses_nothing() {
    let (pg, url) = PrivateCluster::start().await;
    let db = TestDb {
        pool: engine::db::pool(&DatabaseSettings::for_url(&url)).unwrap(),
        name: "quayside".into(),
        url,
    };
    let p = worker(&fast_env(&db.url), &["--concurrency", "4"]);
    // About 2.5 s of work, so jobs are in flight when the server goes down.
    enqueue_noops(&db, "default", 200, json!({"sleep_ms": 50})).await;
    wait_for("some progress", Duration::from_secs(20), || async {
        let n: i64 = db
            .scalar("SELECT count(*) FROM jobs WHERE state = 'completed'")
            .await;
        (n >= 20).then_some(())
    })
    .await;
    // The test cluster commits asynchronously; flush so the enqueue survives the crash.
    db.conn().await.batch_execute("CHECKPOINT").await.unwrap();
    // Blocks this test's runtime for the restart; the worker is another process.
    pg.cluster.restart().expect("restart");

    // The test's own pool reconnects too, after a broken connection or two.
    wait_for(
        "enqueue after the restart",
        Duration::from_secs(20),
        || async {
            let conn = db.pool.get().await.ok()?;
            let jobs: Vec<_> = (0..100)
                .map(|_| {
                    engine::queue::NewJob::from_json(&engine::jobs::noop::SPEC, json!({})).unwrap()
                })
                .collect();
            engine::queue::enqueue_many(&conn, &jobs).await.ok()
        },
    )
    .await;
    wait_count(
        &db,
        "SELECT count(*) FROM jobs WHERE state = 'completed'",
        300,
        Duration::from_secs(60),
    )
    .await;
    let total: i64 = db.scalar("SELECT count(*) FROM jobs").await;
    assert_eq!(total, 300);
    p.signal("-TERM");
    assert_eq!(
        p.wait(Duration::from_secs(10)).await,
        Some(0),
        "the worker lived through the restart"
    );
}

#[tokio::test]
async fn a_scheduled_job_waits_for_its_time() {
    let db = TestDb::new().await;
    let w = InProcess::start(&fast_env(&db.url), "default", 4);
    let run_at = Utc::now() + chrono::Duration::milliseconds(1500);
    let id = enqueue_noop(
        &db,
        json!({}),
        JobOptions {
            run_at: Some(run_at),
            ..Default::default()
        },
    )
    .await;
    let j = control::get(&db.conn().await, id).await.unwrap().unwrap();
    assert_eq!(j.state, JobState::Scheduled);
    let j = wait_final(&db, id, Duration::from_secs(15)).await;
    assert_eq!((j.state, j.attempt), (JobState::Completed, 1));
    assert!((j.run_at - run_at).num_milliseconds().abs() < 1);
    let started = j.attempted_at.expect("attempted_at");
    assert!(started >= j.run_at, "started {started} before {}", j.run_at);
    // Promoted by the 100 ms scheduler: late by well under a few seconds.
    assert!(
        started - j.run_at < chrono::Duration::seconds(3),
        "started {started} for {}",
        j.run_at
    );
    w.shutdown().await;
}

#[tokio::test]
async fn a_paused_queue_keeps_its_jobs_until_resumed() {
    let db = TestDb::new().await;
    let w = InProcess::start(&fast_env(&db.url), "held,canary", 4);
    control::pause(&db.conn().await, &"held".parse().unwrap())
        .await
        .unwrap();
    enqueue_noops(&db, "held", 10, json!({})).await;
    // The same worker serves another queue: once its job is done, the worker is up, has
    // been notified of both enqueues and has polled.
    let canary = enqueue_noops(&db, "canary", 1, json!({})).await[0];
    wait_final(&db, canary, Duration::from_secs(20)).await;
    // Stay paused over several poll intervals (200 ms) and the notifications.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let c = db.conn().await;
    let counts = control::count_by_state(&c, Some("held")).await.unwrap();
    assert_eq!(counts.get("available"), Some(&10), "{counts:?}");
    assert_eq!(counts.len(), 1, "{counts:?}");
    let fetched: i64 = db
        .scalar("SELECT count(*) FROM jobs WHERE queue = 'held' AND attempt > 0")
        .await;
    assert_eq!(fetched, 0);

    control::resume(&c, &"held".parse().unwrap()).await.unwrap();
    wait_count(
        &db,
        "SELECT count(*) FROM jobs WHERE queue = 'held' AND state = 'completed' AND attempt = 1",
        10,
        Duration::from_secs(10),
    )
    .await;
    w.shutdown().await;
}

#[tokio::test]
async fn kind_timeouts_ms_overrides_the_kinds_timeout() {
    let db = TestDb::new().await;
    let env = with_env(fast_env(&db.url), "KIND_TIMEOUTS_MS", "noop=300");
    let _p = worker(&env, &[]);
    let once = JobOptions {
        max_attempts: Some(1),
        ..Default::default()
    };
    let slow = enqueue_noop(&db, json!({"sleep_ms": 2000}), once.clone()).await;
    let quick = enqueue_noop(&db, json!({"sleep_ms": 10}), once).await;

    let j = wait_final(&db, slow, Duration::from_secs(20)).await;
    assert_eq!((j.state, j.attempt), (JobState::Discarded, 1));
    assert_eq!(j.errors.len(), 1, "{:?}", j.errors);
    assert_eq!(j.errors[0].kind, "timeout");
    assert!(
        j.errors[0].message.contains("300ms"),
        "{}",
        j.errors[0].message
    );
    // Cut off at the override, long before the 2 s sleep (or noop's 60 s) was up.
    let ran = j.finished_at.unwrap() - j.attempted_at.unwrap();
    assert!(ran < chrono::Duration::milliseconds(1500), "ran {ran}");

    let j = wait_final(&db, quick, Duration::from_secs(20)).await;
    assert_eq!(j.state, JobState::Completed);
}

#[tokio::test]
async fn polling_only_mode_runs_jobs_without_listen() {
    let db = TestDb::new().await;
    // Notifications off, and a poll interval far shorter than the default: the jobs can only
    // be found by polling.
    let env = with_env(
        with_env(fast_env(&db.url), "WORKER_LISTEN", "false"),
        "WORKER_POLL_INTERVAL_MS",
        "100",
    );
    let w = InProcess::start(&env, "default", 4);
    enqueue_noops(&db, "default", 20, json!({})).await;
    wait_count(
        &db,
        "SELECT count(*) FROM jobs WHERE state = 'completed'",
        20,
        Duration::from_secs(10),
    )
    .await;
    let listeners: i64 = db
        .scalar("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND query ILIKE 'LISTEN%'")
        .await;
    assert_eq!(listeners, 0, "a polling-only worker must not LISTEN");
    w.shutdown().await;
}

#[tokio::test]
async fn the_metrics_endpoint_counts_outcomes_by_queue_and_kind() {
    let db = TestDb::new().await;
    let port = testkit::free_port().unwrap();
    let env = with_env(fast_env(&db.url), "METRICS_PORT", port.to_string());
    let worker = worker(&env, &["--queues", "default", "--concurrency", "4"]);
    enqueue_noops(&db, "default", 3, json!({})).await;
    enqueue_noop(&db, json!({"permanent": true}), JobOptions::default()).await;
    wait_count(
        &db,
        "SELECT count(*) FROM jobs WHERE state IN ('completed', 'discarded')",
        4,
        Duration::from_secs(15),
    )
    .await;
    let body = wait_for(
        "metrics to show the outcomes",
        Duration::from_secs(10),
        || async {
            let body = Client::local(port).try_text("/metrics").await?;
            body.contains("quayside_jobs_discarded_total")
                .then_some(body)
        },
    )
    .await;
    let line = |name: &str| {
        body.lines()
            .find(|l| l.starts_with(name) && l.contains("kind=\"noop\""))
            .map(str::to_owned)
    };
    let completed = line("quayside_jobs_completed_total").expect("completed counter");
    assert!(
        completed.contains("queue=\"default\"") && completed.ends_with(" 3"),
        "{completed}"
    );
    assert!(
        line("quayside_jobs_discarded_total")
            .expect("discarded counter")
            .ends_with(" 1")
    );
    assert!(body.contains("quayside_jobs_fetched_total"));
    assert!(body.contains("quayside_job_queue_latency_seconds_bucket"));
    assert!(body.contains("quayside_job_run_seconds_bucket"));
    worker.signal("-TERM");
    assert_eq!(worker.wait(Duration::from_secs(15)).await, Some(0));
}
