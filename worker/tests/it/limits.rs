//! Global concurrency limits with real `worker` processes: the number of running jobs of a
//! limited queue, sampled continuously in the database, never exceeds the limit, whatever the
//! workers and their slots; per-key limits; a limit raised at run time; and kill -9 of a
//! worker holding limited jobs.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use engine::names::QueueName;
use engine::queue::limits::{self, QueueLimits};
use engine::queue::{JobOptions, NewJob, enqueue_many};
use serde_json::json;
use testkit::process::Process;
use testkit::{TestDb, wait_for};
use tokio::task::JoinHandle;

use crate::harness::{fast_env, wait_count, worker};

const QUEUE: &str = "limited";

/// The most seen at once over the samples.
#[derive(Debug, Default, Clone, Copy)]
struct Peaks {
    running: i64,
    per_key: i64,
    keys: i64,
    samples: u64,
}

/// Samples the queue's running jobs in one statement (one snapshot) until stopped.
struct Sampler {
    stop: Arc<AtomicBool>,
    task: JoinHandle<Peaks>,
}

impl Sampler {
    async fn start(db: &TestDb) -> Sampler {
        let conn = db.conn().await;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let stmt = conn
                .prepare(
                    "SELECT coalesce(sum(n), 0)::bigint, coalesce(max(n), 0), count(*)
                       FROM (SELECT count(*) AS n FROM jobs
                              WHERE queue = $1 AND state = 'running'
                              GROUP BY concurrency_key) AS k",
                )
                .await
                .unwrap();
            let mut p = Peaks::default();
            // One sample after the stop too: what the test saw just before it asked for the
            // peaks must be among them, however the sleeps fell.
            loop {
                let last = flag.load(Ordering::Relaxed);
                let r = conn.query_one(&stmt, &[&QUEUE]).await.unwrap();
                p.running = p.running.max(r.get(0));
                p.per_key = p.per_key.max(r.get(1));
                p.keys = p.keys.max(r.get(2));
                p.samples += 1;
                if last {
                    return p;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        });
        Sampler { stop, task }
    }

    async fn peaks(self) -> Peaks {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap()
    }
}

async fn set_limits(db: &TestDb, max: Option<i32>, per_key: Option<i32>) {
    let l = QueueLimits {
        max_running: max,
        max_running_per_key: per_key,
        key_path: None,
    };
    limits::set(&db.conn().await, &QueueName::parse(QUEUE).unwrap(), &l)
        .await
        .unwrap();
}

/// `n` noop jobs sleeping `sleep_ms`, job `i` with concurrency key `key(i)`.
async fn enqueue(db: &TestDb, n: usize, sleep_ms: u64, key: impl Fn(usize) -> Option<String>) {
    let jobs: Vec<NewJob> = (0..n)
        .map(|i| {
            NewJob::from_json(&engine::jobs::noop::SPEC, json!({ "sleep_ms": sleep_ms }))
                .unwrap()
                .with(JobOptions {
                    queue: Some(QueueName::parse(QUEUE).unwrap()),
                    concurrency_key: key(i),
                    ..Default::default()
                })
        })
        .collect();
    enqueue_many(&db.conn().await, &jobs).await.unwrap();
}

fn workers(db: &TestDb, n: usize, slots: usize) -> Vec<Process> {
    (0..n)
        .map(|_| {
            worker(
                &fast_env(&db.url),
                &["--queues", QUEUE, "--concurrency", &slots.to_string()],
            )
        })
        .collect()
}

async fn wait_registered(db: &TestDb, n: i64) {
    wait_count(
        db,
        "SELECT count(*) FROM workers",
        n,
        Duration::from_secs(20),
    )
    .await;
}

async fn wait_all_completed(db: &TestDb, n: i64, timeout: Duration) {
    wait_count(
        db,
        "SELECT count(*) FROM jobs WHERE state = 'completed'",
        n,
        timeout,
    )
    .await;
}

#[tokio::test]
async fn three_workers_with_twenty_slots_never_run_more_than_the_queue_limit() {
    let db = TestDb::new().await;
    set_limits(&db, Some(3), None).await;
    let _procs = workers(&db, 3, 20);
    wait_registered(&db, 3).await;
    let sampler = Sampler::start(&db).await;
    enqueue(&db, 60, 100, |_| None).await;
    wait_all_completed(&db, 60, Duration::from_secs(60)).await;
    let p = sampler.peaks().await;
    assert_eq!(p.running, 3, "at most the limit, and the limit used: {p:?}");
    assert!(p.samples > 100, "{p:?}");
    let by: i64 = db
        .scalar("SELECT count(DISTINCT attempted_by) FROM jobs")
        .await;
    assert!(by >= 2, "the jobs were shared among the workers ({by})");
}

#[tokio::test]
async fn a_per_key_limit_of_one_runs_every_key_in_parallel_but_never_a_key_twice() {
    let db = TestDb::new().await;
    set_limits(&db, None, Some(1)).await;
    let _procs = workers(&db, 3, 20);
    wait_registered(&db, 3).await;
    let sampler = Sampler::start(&db).await;
    // Key by key: every job of key 0 first, then key 1's... a queue that ran in order would
    // run one key at a time.
    enqueue(&db, 100, 100, |i| Some(format!("key{}", i / 10))).await;
    wait_all_completed(&db, 100, Duration::from_secs(60)).await;
    let p = sampler.peaks().await;
    assert_eq!(p.per_key, 1, "never two running with one key: {p:?}");
    assert!(p.keys >= 8, "the keys ran in parallel: {p:?}");
}

#[tokio::test]
async fn a_limit_raised_at_run_time_is_used_within_two_seconds() {
    let db = TestDb::new().await;
    set_limits(&db, Some(1), None).await;
    let _procs = workers(&db, 2, 10);
    wait_registered(&db, 2).await;
    enqueue(&db, 40, 2_000, |_| None).await;
    wait_count(
        &db,
        "SELECT count(*) FROM jobs WHERE state = 'running'",
        1,
        Duration::from_secs(20),
    )
    .await;
    let sampler = Sampler::start(&db).await;
    let raised = Instant::now();
    set_limits(&db, Some(6), None).await;
    wait_for("six running", Duration::from_secs(10), || async {
        let n: i64 = db
            .scalar("SELECT count(*) FROM jobs WHERE state = 'running'")
            .await;
        (n == 6).then_some(())
    })
    .await;
    let took = raised.elapsed();
    assert!(took < Duration::from_secs(2), "took {took:?}");
    let p = sampler.peaks().await;
    assert_eq!(p.running, 6, "{p:?}");
}

#[tokio::test]
async fn after_kill_minus_nine_and_the_rescue_the_limit_holds_and_nothing_is_lost() {
    const JOBS: i64 = 12;
    let db = TestDb::new().await;
    set_limits(&db, Some(2), None).await;
    let mut procs = workers(&db, 1, 10);
    wait_registered(&db, 1).await;
    let sampler = Sampler::start(&db).await;
    enqueue(&db, JOBS as usize, 1_000, |_| None).await;
    wait_count(
        &db,
        "SELECT count(*) FROM jobs WHERE state = 'running'",
        2,
        Duration::from_secs(20),
    )
    .await;
    // A second worker with free slots waits on the limit; the first is cut off mid-job.
    procs.extend(workers(&db, 1, 10));
    wait_registered(&db, 2).await;
    let first = procs.remove(0);
    first.signal("-KILL");
    assert_eq!(first.wait(Duration::from_secs(5)).await, None, "killed");
    // Until the rescue (2 s lease) the dead worker's jobs still count: the second waits.
    wait_all_completed(&db, JOBS, Duration::from_secs(60)).await;
    let p = sampler.peaks().await;
    assert_eq!(p.running, 2, "{p:?}");
    let rescued: i64 = db
        .scalar(
            "SELECT count(*) FROM jobs
              WHERE attempt = 2 AND errors -> 0 ->> 'kind' = 'lease_expired'",
        )
        .await;
    assert!(rescued >= 1, "the killed worker's jobs ran again");
    let total: i64 = db.scalar("SELECT count(*) FROM jobs").await;
    assert_eq!(total, JOBS, "nothing lost, nothing added");
}
