//! Starting workers for tests: in-process (for outcomes) or as `worker` processes.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::queue::{JobOptions, JobRow, NewJob, control, enqueue_many};
use common::testing::{TestDb, wait_for};
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

/// A `worker` process.
pub struct Process {
    pub child: Child,
}

impl Process {
    pub fn start(env: &[(&'static str, String)], args: &[&str]) -> Process {
        let child = Command::new(env!("CARGO_BIN_EXE_worker"))
            .args(args)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .env(
                "RUST_LOG",
                std::env::var("TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(if std::env::var("TEST_LOG").is_ok() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .spawn()
            .expect("spawn worker");
        Process { child }
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill {sig} failed");
    }

    /// Wait for the process to exit; returns its exit code.
    pub async fn wait(mut self, timeout: Duration) -> Option<i32> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status.code();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "worker did not exit within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
            NewJob::from_json("noop", args.clone())
                .expect("noop args")
                .with(JobOptions {
                    queue: Some(queue.into()),
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
    common::queue::enqueue(
        &db.conn().await,
        &NewJob::from_json("noop", args)
            .expect("noop args")
            .with(opts),
    )
    .await
    .expect("enqueue")
    .id
}
