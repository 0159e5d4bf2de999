//! The `noop` handler: does what its args ask (sleep, fail, panic, snooze, cancel, call a URL
//! through a service's breaker and rate limit) so every outcome of the queue can be driven
//! through a real worker.

use std::time::Duration;

use engine::jobs::noop::Noop;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::runtime::handlers::JobContext;
use crate::runtime::job::{JobError, JobResult};

/// Run one `noop` job.
pub async fn run(args: Noop, ctx: JobContext) -> JobResult {
    if args.report_start == Some(true) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        return Ok(Some(
            serde_json::json!({"started_at_us": now.as_micros() as u64}),
        ));
    }
    if let Some(ms) = args.snooze_ms {
        let snoozed = ctx
            .meta
            .get("snoozes")
            .and_then(|v| v.as_u64())
            .unwrap_or(0);
        if snoozed < u64::from(args.snooze_times.unwrap_or(1)) {
            return Err(JobError::Snooze(Duration::from_millis(ms)));
        }
    }
    if let Some(ms) = args.sleep_ms.filter(|&ms| ms > 0) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if let Some(url) = &args.call_url {
        let service = args.service.as_deref().unwrap_or("noop");
        // Every answer but a 2xx, and no answer, counts against the service.
        ctx.guards
            .call(service, http_get(url), |_| true)
            .await?
            .map_err(JobError::Retry)?;
    }
    if args.panic == Some(true) {
        panic!("noop job {} panicked as asked", ctx.id);
    }
    if args.cancel == Some(true) {
        return Err(JobError::Cancel("noop asked to cancel".into()));
    }
    if args.permanent == Some(true) {
        return Err(JobError::Permanent(
            "noop asked for a permanent failure".into(),
        ));
    }
    if let Some(n) = args.fail_attempts
        && ctx.attempt <= n as i32
    {
        return Err(JobError::Retry(format!(
            "noop failing attempt {} of the first {n}",
            ctx.attempt
        )));
    }
    Ok(args.result)
}

/// GET `url` (plain `http://host:port/path`) with a minimal HTTP/1.1 client: `Ok` on a 2xx
/// status. Enough for the diagnostic call; real integrations use a real client.
async fn http_get(url: &str) -> Result<u16, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url:?} is not an http:// URL"))?;
    let (host, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, "/"),
    };
    let mut stream = TcpStream::connect(host)
        .await
        .map_err(|e| format!("connect to {host}: {e}"))?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("send to {host}: {e}"))?;
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .await
        .map_err(|e| format!("read from {host}: {e}"))?;
    let status = std::str::from_utf8(&answer)
        .ok()
        .and_then(|a| a.split_whitespace().nth(1))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| format!("no HTTP status from {host}"))?;
    if (200..300).contains(&status) {
        Ok(status)
    } else {
        Err(format!("{url} answered HTTP {status}"))
    }
}
