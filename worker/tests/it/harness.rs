//! Starting workers for tests: in-process (for outcomes) or as `worker` processes.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use engine::queue::{JobOptions, JobRow, NewJob, control, enqueue_many};
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
            .quiet_unless_test_log("RUST_LOG")
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

/// The `api` binary of this build, built first when missing or stale. Cargo builds only this
/// package's binaries for its tests, and `worker` must not depend on `api` (not even as a
/// dev-dependency), so the test asks cargo for it as `ops::stack::binary` does: same target
/// directory and profile as the `worker` binary beside it. Built once per test process.
pub fn api_binary() -> std::path::PathBuf {
    static BUILT: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let worker = std::path::Path::new(env!("CARGO_BIN_EXE_worker"));
            let profile_dir = worker.parent().expect("the worker binary's directory");
            let target_dir = profile_dir.parent().expect("the target directory");
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let mut cmd = Command::new(cargo);
            cmd.args([
                "build",
                "--quiet",
                "-p",
                "api",
                "--bin",
                "api",
                "--target-dir",
            ])
            .arg(target_dir)
            .current_dir(env!("CARGO_MANIFEST_DIR"));
            if profile_dir.ends_with("release") {
                cmd.arg("--release");
            }
            let status = cmd.status().expect("run cargo build -p api");
            assert!(status.success(), "cargo build -p api failed");
            let api = worker.with_file_name(format!("api{}", std::env::consts::EXE_SUFFIX));
            assert!(api.is_file(), "{} not built", api.display());
            api
        })
        .clone()
}

/// An `api` process on a free port; killed when dropped.
pub struct Api {
    child: Child,
    pub port: u16,
}

impl Api {
    /// Start the real `api` with only `env` (and `PORT`, `API_HOST`) set, and wait until
    /// `/health` answers.
    pub async fn start(env: &[(&str, &str)]) -> Api {
        let port = testkit::cluster::free_port().expect("a free port");
        let child = Command::new(api_binary())
            .env_clear()
            .env("PORT", port.to_string())
            .env("API_HOST", "127.0.0.1")
            .envs(env.iter().copied())
            .quiet_unless_test_log("LOG_LEVEL")
            .spawn()
            .expect("spawn api");
        let api = Api { child, port };
        wait_for("the api to answer /health", Duration::from_secs(30), || {
            let api = &api;
            async move {
                api.request("GET", "/health", &[], b"")
                    .ok()
                    .filter(|r| r.status == 200)
            }
        })
        .await;
        api
    }

    /// One HTTP/1.1 request on a new connection.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<HttpResponse> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut head =
            format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        s.write_all(head.as_bytes())?;
        s.write_all(body)?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)?;
        HttpResponse::parse(&raw)
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A parsed HTTP/1.1 response.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    fn parse(raw: &[u8]) -> std::io::Result<HttpResponse> {
        let bad = |m: &str| std::io::Error::other(format!("{m}: {}", String::from_utf8_lossy(raw)));
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| bad("no end of headers"))?;
        let head = std::str::from_utf8(&raw[..split]).map_err(|_| bad("headers not UTF-8"))?;
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| bad("no status line"))?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let mut body = raw[split + 4..].to_vec();
        let chunked = headers
            .iter()
            .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
        if chunked {
            body = dechunk(&body).ok_or_else(|| bad("bad chunked body"))?;
        }
        Ok(HttpResponse {
            status,
            headers,
            body,
        })
    }

    /// The first value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = b.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&b[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        b = &b[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(b.get(..size)?);
        b = b.get(size + 2..)?;
    }
}

/// Output of the binaries the tests start: silent, unless `TEST_LOG` is set (then it is the
/// log filter and stderr shows).
trait QuietUnlessTestLog {
    /// Set the log filter variable `var` and the child's stdio accordingly.
    fn quiet_unless_test_log(&mut self, var: &str) -> &mut Self;
}

impl QuietUnlessTestLog for Command {
    fn quiet_unless_test_log(&mut self, var: &str) -> &mut Self {
        let filter = std::env::var("TEST_LOG").ok();
        let stderr = if filter.is_some() {
            Stdio::inherit()
        } else {
            Stdio::null()
        };
        self.env(var, filter.unwrap_or_else(|| "warn".into()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
    }
}
