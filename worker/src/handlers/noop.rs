//! The `noop` handler: does what its args ask (sleep, fail, panic, snooze, cancel, call a URL
//! through a service's breaker and rate limit) so every outcome of the queue can be driven
//! through a real worker.

use std::sync::LazyLock;
use std::time::Duration;

use engine::jobs::noop::Noop;

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

/// The client of the diagnostic call: short timeouts, no redirects (the call is to the URL it
/// names, nowhere else).
static CLIENT: LazyLock<reqwest::Client> = LazyLock::new(|| {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("a reqwest client with static settings")
});

/// GET `url`: `Ok` with the status on a 2xx. The answer's body is never read, so its size
/// does not matter.
async fn http_get(url: &str) -> Result<u16, String> {
    let response = CLIENT
        .get(url)
        .send()
        .await
        .map_err(|e| format!("GET {url}: {}", e.without_url()))?;
    let status = response.status();
    if status.is_success() {
        Ok(status.as_u16())
    } else {
        Err(format!("{url} answered HTTP {}", status.as_u16()))
    }
}
