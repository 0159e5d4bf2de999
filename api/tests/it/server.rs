//! The `api` binary as deployed: a real listener, so peer addresses exist and
//! `X-Forwarded-For` handling can be seen end to end; start-up admin, JSON logs, SIGTERM.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use testkit::TestDb;

use crate::support::PASSWORD;

/// An `api` process; killed when dropped.
struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start(db: &TestDb, env: &[(&str, &str)]) -> Server {
        let port = testkit::cluster::free_port().unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_api"))
            .env_clear()
            .env("DATABASE_URL", &db.url)
            .env("PORT", port.to_string())
            .env("API_HOST", "127.0.0.1")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn api");
        let server = Server { child, port };
        let deadline = Instant::now() + Duration::from_secs(20);
        while server.try_get("/health").is_none() {
            assert!(Instant::now() < deadline, "api did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    fn try_get(&self, path: &str) -> Option<(u16, String)> {
        self.request("GET", path, &[], None).ok()
    }

    /// One HTTP/1.1 request; returns the status and the raw response.
    fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> std::io::Result<(u16, String)> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut req =
            format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        let body = body.unwrap_or("");
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ));
        s.write_all(req.as_bytes())?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        let status = out
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("no status line in {out:?}")))?;
        Ok((status, out))
    }

    fn status(&self, path: &str, headers: &[(&str, &str)]) -> u16 {
        self.request("GET", path, headers, None).unwrap().0
    }

    /// SIGTERM, then the exit code and everything the process logged.
    fn stop(mut self) -> (Option<i32>, String) {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
        let deadline = Instant::now() + Duration::from_secs(15);
        let code = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status.code();
            }
            assert!(Instant::now() < deadline, "api did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut logs = String::new();
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut logs)
            .unwrap();
        (code, logs)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn forwarded_for_counts_per_client_only_behind_a_trusted_proxy() {
    let db = TestDb::new().await;
    // The test connects from 127.0.0.1, so it is the trusted proxy here.
    let behind = Server::start(
        &db,
        &[
            ("RATE_LIMIT_REQUESTS", "2"),
            ("TRUSTED_PROXIES", "127.0.0.1"),
        ],
    );
    let a = [("X-Forwarded-For", "203.0.113.5")];
    let b = [("X-Forwarded-For", "203.0.113.6")];
    assert_eq!(behind.status("/nope", &a), 404);
    assert_eq!(behind.status("/nope", &a), 404);
    let (status, raw) = behind.request("GET", "/nope", &a, None).unwrap();
    assert_eq!(status, 429);
    assert!(raw.to_ascii_lowercase().contains("retry-after:"), "{raw}");
    assert_eq!(
        behind.status("/nope", &b),
        404,
        "another client has its own count"
    );

    // Not trusted: the header is the caller's invention and every request is the peer's.
    let direct = Server::start(&db, &[("RATE_LIMIT_REQUESTS", "2")]);
    assert_eq!(direct.status("/nope", &a), 404);
    assert_eq!(direct.status("/nope", &b), 404);
    assert_eq!(
        direct.status("/nope", &[("X-Forwarded-For", "198.51.100.1")]),
        429
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn starts_with_its_admin_logs_json_and_stops_on_sigterm() {
    let db = TestDb::new().await;
    let server = Server::start(
        &db,
        &[("ADMIN_USERNAME", "root"), ("ADMIN_PASSWORD", PASSWORD)],
    );
    let body = format!(r#"{{"username": "root", "password": "{PASSWORD}"}}"#);
    let (status, raw) = server
        .request(
            "POST",
            "/api/v1/auth/login",
            &[("X-Request-Id", "srv-login-1")],
            Some(&body),
        )
        .unwrap();
    assert_eq!(status, 200, "{raw}");
    assert!(
        raw.to_ascii_lowercase()
            .contains("x-request-id: srv-login-1")
    );
    let (code, logs) = server.stop();
    assert_eq!(code, Some(0), "{logs}");
    let lines: Vec<serde_json::Value> = logs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
        .collect();
    let login = lines
        .iter()
        .find(|l| l["fields"]["route"] == "/api/v1/auth/login")
        .expect("an access line for the login");
    assert_eq!(login["span"]["request_id"], "srv-login-1");
    assert_eq!(login["fields"]["status"], 200);
    assert!(!logs.contains(PASSWORD), "the password reached the logs");
    assert!(
        lines
            .iter()
            .any(|l| l["fields"]["message"] == "admin from ADMIN_USERNAME")
    );
}
