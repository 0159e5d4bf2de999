//! The real binaries as child processes, as deployed: [`Api`] starts `api` on a free port and
//! waits until `/health` answers; [`Process`] is any started binary (a `worker`), killed when
//! dropped, with signals and a wait for its exit. Their output is silent unless `TEST_LOG` is
//! set (then it is their log filter and their stderr shows), or captured for a test that reads
//! the logs. [`binary`] finds (and builds) a workspace binary a test crate does not own.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::fixtures::{ADMIN, PASSWORD, SECRET_KEY};
use crate::http::Client;
use crate::{free_port, wait_for};

/// Set the log filter variable `var` of `cmd` and its stdio: silent, unless `TEST_LOG` is set
/// (then it is the filter and stderr shows).
pub fn quiet_unless_test_log<'a>(cmd: &'a mut Command, var: &str) -> &'a mut Command {
    let filter = std::env::var("TEST_LOG").ok();
    let stderr = if filter.is_some() {
        Stdio::inherit()
    } else {
        Stdio::null()
    };
    cmd.env(var, filter.unwrap_or_else(|| "warn".into()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
}

/// A started binary; killed when dropped.
pub struct Process {
    child: Child,
}

impl Process {
    /// Spawn `cmd`.
    pub fn spawn(cmd: &mut Command) -> Process {
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {:?}: {e}", cmd.get_program()));
        Process { child }
    }

    /// Start `binary` with `args`, `env` on top of the test's environment, its logs at `warn`
    /// through `log_var` unless `TEST_LOG` says otherwise (see [`quiet_unless_test_log`]).
    pub fn start(
        binary: impl AsRef<Path>,
        args: &[&str],
        env: &[(&str, String)],
        log_var: &str,
    ) -> Process {
        let mut cmd = Command::new(binary.as_ref());
        cmd.args(args)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())));
        Process::spawn(quiet_unless_test_log(&mut cmd, log_var))
    }

    /// Its process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Send it `sig` (`-TERM`, `-KILL`) with `kill`.
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill {sig} failed");
    }

    /// Wait for it to exit; returns its exit code (none if a signal ended it).
    pub async fn wait(mut self, timeout: Duration) -> Option<i32> {
        self.exit(timeout).await
    }

    async fn exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {timeout:?}",
                self.child.id()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM, then its exit code and everything it wrote to stderr (when captured).
    pub async fn stop(mut self) -> (Option<i32>, String) {
        self.signal("-TERM");
        let code = self.exit(Duration::from_secs(15)).await;
        let mut logs = String::new();
        if let Some(mut stderr) = self.child.stderr.take() {
            stderr.read_to_string(&mut logs).expect("read its stderr");
        }
        (code, logs)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What becomes of a started `api`'s logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logs {
    /// Silent at `warn`, unless `TEST_LOG` is set.
    Quiet,
    /// At the binary's default level, kept for [`Api::stop`] to return.
    Captured,
}

/// An `api` process on a free port of 127.0.0.1; killed when dropped.
pub struct Api {
    /// The process.
    pub process: Process,
    /// Its port.
    pub port: u16,
}

impl Api {
    /// Start `binary` (the `api`) with only `env` (and `PORT`, `API_HOST`) set, and wait until
    /// `/health` answers 200.
    pub async fn start(binary: impl AsRef<Path>, env: &[(&str, &str)]) -> Api {
        Api::start_with(binary, env, Logs::Quiet).await
    }

    /// [`Api::start`] with its logs as `logs` says.
    pub async fn start_with(binary: impl AsRef<Path>, env: &[(&str, &str)], logs: Logs) -> Api {
        Api::start_in(binary, None, env, logs).await
    }

    /// [`Api::start_with`] in the working directory `dir` (the test's, when `None`).
    /// `SECRET_KEY` is [`SECRET_KEY`] unless `env` sets it (an empty value counts as unset).
    pub async fn start_in(
        binary: impl AsRef<Path>,
        dir: Option<&Path>,
        env: &[(&str, &str)],
        logs: Logs,
    ) -> Api {
        let port = free_port().expect("a free port");
        let mut cmd = Command::new(binary.as_ref());
        cmd.env_clear()
            .env("PORT", port.to_string())
            .env("API_HOST", "127.0.0.1")
            .env("SECRET_KEY", SECRET_KEY)
            .envs(env.iter().copied());
        if let Some(dir) = dir {
            cmd.current_dir(dir);
        }
        match logs {
            Logs::Quiet => quiet_unless_test_log(&mut cmd, "LOG_LEVEL"),
            Logs::Captured => cmd
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped()),
        };
        let api = Api {
            process: Process::spawn(&mut cmd),
            port,
        };
        let client = api.client();
        wait_for("the api to answer /health", Duration::from_secs(30), || {
            let client = &client;
            async move {
                let r = client.get("/health").try_send().await.ok()?;
                (r.status == 200).then_some(())
            }
        })
        .await;
        api
    }

    /// `http://127.0.0.1:{port}`.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A client of it.
    pub fn client(&self) -> Client {
        Client::local(self.port)
    }

    /// A client of it logged in as the admin it created from [`crate::fixtures::admin_env`].
    pub async fn admin(&self) -> Client {
        self.client().logged_in(ADMIN, PASSWORD).await
    }

    /// SIGTERM, then its exit code and its logs (with [`Logs::Captured`]).
    pub async fn stop(self) -> (Option<i32>, String) {
        self.process.stop().await
    }
}

/// The workspace's binary `name` (`api`, `worker`) in the profile of the running test, built
/// first when missing or stale. Cargo builds only a package's own binaries for its tests (those
/// are `env!("CARGO_BIN_EXE_<name>")`), and `worker` must not depend on `api`, not even as a
/// dev-dependency, so the others are asked of cargo as `ops::stack::binary` does: same target
/// directory and profile as the test. Built once per name per test process.
pub fn binary(name: &str) -> PathBuf {
    static BUILT: std::sync::Mutex<Vec<(String, PathBuf)>> = std::sync::Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap();
    if let Some((_, path)) = built.iter().find(|(n, _)| n == name) {
        return path.clone();
    }
    // The test runs as <target>/<profile>/deps/<test binary>.
    let exe = std::env::current_exe().expect("the test binary's path");
    let mut profile_dir = exe.parent().expect("the test binary's directory");
    if profile_dir.ends_with("deps") {
        profile_dir = profile_dir.parent().expect("the profile directory");
    }
    let target_dir = profile_dir.parent().expect("the target directory");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args([
        "build",
        "--quiet",
        "-p",
        name,
        "--bin",
        name,
        "--target-dir",
    ])
    .arg(target_dir)
    .current_dir(env!("CARGO_MANIFEST_DIR"));
    if profile_dir.ends_with("release") {
        cmd.arg("--release");
    }
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("run cargo build -p {name}: {e}"));
    assert!(status.success(), "cargo build -p {name} failed");
    let path = profile_dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(path.is_file(), "{} not built", path.display());
    built.push((name.to_owned(), path.clone()));
    path
}
