//! The `noop` handler: does what its args ask (sleep, fail, panic, snooze, cancel) so every
//! outcome of the queue can be driven through a real worker.

use std::time::Duration;

use common::jobs::noop::Noop;

use super::{JobContext, JobError, JobResult};

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
