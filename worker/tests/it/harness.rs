//! Starting workers for tests: in-process (for outcomes) or as `worker` processes (through
//! `testkit::process`, as is the `api`); enqueueing and waiting on jobs.

use std::time::Duration;

use engine::queue::{JobOptions, JobRow, NewJob, control, enqueue_many};
use testkit::process::{Api, Process};
use testkit::{TestDb, wait_for};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use worker::config::WorkerSettings;

/// Settings that make tests quick: short leases and intervals.
pub fn fast_env(url: &str) -> Vec<(&'static str, String)> {
    vec![
        ("DATABASE_URL", url.to_string()),
        ("WORKER_LEASE_MS", "2000".into()),
        ("WORKER_POLL_INTERVAL_MS", "200".into()),
        ("WORKER_RESCUE_INTERVAL_MS", "300".into()),
        ("WORKER_SCHEDULE_INTERVAL_MS", "100".into()),
        ("WORKER_SHUTDOWN_TIMEOUT_MS", "5000".into()),
        // The tests' stand-ins for outside services listen on loopback.
        ("NOOP_CALL_HOSTS", "127.0.0.1".into()),
    ]
}

/// A worker running inside the test process.
pub struct InProcess {
    pub stop: CancellationToken,
    pub task: JoinHandle<anyhow::Result<()>>,
}

impl InProcess {
    pub fn start(env: &[(&'static str, String)], queues: &str, concurrency: usize) -> InProcess {
        let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let settings = WorkerSettings::from_source(
            &pairs[..],
            Some(queues.into()),
            Some(concurrency.to_string()),
        )
        .expect("settings");
        let stop = CancellationToken::new();
        let task = tokio::spawn(worker::run(settings, stop.clone()));
        InProcess { stop, task }
    }

    pub async fn shutdown(self) {
        self.stop.cancel();
        self.task.await.expect("worker task").expect("worker run");
    }
}

/// A `worker` process with `args` and `env` (on top of the test's own environment); killed
/// when dropped.
pub fn worker(env: &[(&'static str, String)], args: &[&str]) -> Process {
    Process::start(env!("CARGO_BIN_EXE_worker"), args, env, "RUST_LOG")
}

/// An `api` process (built first if need be) with only `env` set; see [`Api::start`].
pub async fn api(env: &[(&str, &str)]) -> Api {
    Api::start(testkit::process::binary("api"), env).await
}

/// Enqueue `n` noop jobs with `args` on `queue`.
pub async fn enqueue_noops(
    db: &TestDb,
    queue: &str,
    n: usize,
    args: serde_json::Value,
) -> Vec<i64> {
    let jobs: Vec<NewJob> = (0..n)
        .map(|_| {
            NewJob::from_json(&engine::jobs::noop::SPEC, args.clone())
                .expect("noop args")
                .with(JobOptions {
                    queue: Some(engine::names::QueueName::parse(queue).unwrap()),
                    ..Default::default()
                })
        })
        .collect();
    enqueue_many(&db.conn().await, &jobs)
        .await
        .expect("enqueue")
        .into_iter()
        .map(|e| e.id)
        .collect()
}

/// Wait until job `id` is in a final state, and return it.
pub async fn wait_final(db: &TestDb, id: i64, timeout: Duration) -> JobRow {
    wait_for(&format!("job {id} to finish"), timeout, || async {
        control::get(&db.conn().await, id)
            .await
            .expect("get")
            .filter(|j| j.state.is_final())
    })
    .await
}

/// Wait until `sql` (a count) returns `want`.
pub async fn wait_count(db: &TestDb, sql: &str, want: i64, timeout: Duration) {
    wait_for(&format!("{sql} = {want}"), timeout, || async {
        let n: i64 = db.scalar(sql).await;
        (n == want).then_some(())
    })
    .await
}

/// `env` with `key` set to `value`, replacing any earlier value (the in-process settings
/// source takes the first match, a process the last: one value avoids both surprises).
pub fn with_env(
    mut env: Vec<(&'static str, String)>,
    key: &'static str,
    value: impl Into<String>,
) -> Vec<(&'static str, String)> {
    env.retain(|(k, _)| *k != key);
    env.push((key, value.into()));
    env
}

/// Enqueue one noop job with `args` and `opts`; returns its id.
pub async fn enqueue_noop(db: &TestDb, args: serde_json::Value, opts: JobOptions) -> i64 {
    engine::queue::enqueue(
        &db.conn().await,
        &NewJob::from_json(&engine::jobs::noop::SPEC, args)
            .expect("noop args")
            .with(opts),
    )
    .await
    .expect("enqueue")
    .id
}
