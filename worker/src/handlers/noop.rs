//! The `noop` handler: does what its args ask (sleep, fail, panic, snooze, cancel, call a URL
//! through a service's breaker and rate limit) so every outcome of the queue can be driven
//! through a real worker.
//!
//! Anyone who may enqueue could point `call_url` anywhere the worker can reach, so a call is
//! made only to a host listed in `NOOP_CALL_HOSTS` ([`CallHosts`]); none is by default.

use std::sync::LazyLock;
use std::time::Duration;

use engine::config::{ConfigError, Source};
use engine::jobs::noop::Noop;

use crate::runtime::handlers::JobContext;
use crate::runtime::job::{JobError, JobResult};

/// The hosts a `noop` job may call (`NOOP_CALL_HOSTS`: comma-separated `host` or
/// `host:port`); empty, the default, allows none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallHosts {
    hosts: Vec<(String, Option<u16>)>,
}

impl CallHosts {
    /// Read and validate `NOOP_CALL_HOSTS`.
    pub fn from_source(src: &(impl Source + ?Sized)) -> Result<Self, ConfigError> {
        let Some(raw) = src.get("NOOP_CALL_HOSTS") else {
            return Ok(Self::default());
        };
        let mut hosts = Vec::new();
        for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (host, port) = match part.rsplit_once(':') {
                Some((h, p)) => {
                    let port = p.parse::<u16>().map_err(|_| {
                        ConfigError::new("NOOP_CALL_HOSTS", format!("{part:?} has no valid port"))
                    })?;
                    (h, Some(port))
                }
                None => (part, None),
            };
            if host.is_empty() || host.contains('/') {
                return Err(ConfigError::new(
                    "NOOP_CALL_HOSTS",
                    format!("{part:?} is not a host or host:port"),
                ));
            }
            hosts.push((host.to_ascii_lowercase(), port));
        }
        Ok(Self { hosts })
    }

    /// Whether `url` names an allowed host (and port, where the entry gives one).
    pub fn allow(&self, url: &str) -> bool {
        let Ok(url) = reqwest::Url::parse(url) else {
            return false;
        };
        let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
            return false;
        };
        let host = host.to_ascii_lowercase();
        self.hosts
            .iter()
            .any(|(h, p)| *h == host && p.is_none_or(|p| p == port))
    }
}

/// Run one `noop` job that may call no host (see [`run_with`]).
pub async fn run(args: Noop, ctx: JobContext) -> JobResult {
    run_with(args, ctx, &CallHosts::default()).await
}

/// Run one `noop` job, its call (if any) only to a host of `hosts`.
pub async fn run_with(args: Noop, ctx: JobContext, hosts: &CallHosts) -> JobResult {
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
        if !hosts.allow(url) {
            return Err(JobError::Permanent(
                "call_url names a host that NOOP_CALL_HOSTS does not allow".into(),
            ));
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_listed_hosts_and_ports_are_called() {
        let none: &[(&str, &str)] = &[];
        assert!(
            !CallHosts::from_source(none)
                .unwrap()
                .allow("http://127.0.0.1:9/x")
        );
        let hosts =
            CallHosts::from_source(&[("NOOP_CALL_HOSTS", "127.0.0.1, Example.com:8080")][..])
                .unwrap();
        assert!(hosts.allow("http://127.0.0.1:9/x"));
        assert!(hosts.allow("http://example.COM:8080/"));
        assert!(!hosts.allow("http://example.com:8081/"));
        assert!(!hosts.allow("http://example.com/"));
        assert!(!hosts.allow("http://10.0.0.1:9/"));
        assert!(!hosts.allow("not a url"));
        for bad in ["a:b", ":80", "a/b"] {
            let err = CallHosts::from_source(&[("NOOP_CALL_HOSTS", bad)][..]).unwrap_err();
            assert!(err.to_string().contains("NOOP_CALL_HOSTS"), "{err}");
        }
    }
}
