//! Per-client-IP rate limit: at most `RATE_LIMIT_REQUESTS` per `RATE_LIMIT_WINDOW` (a fixed
//! window per client), then 429 with `Retry-After`.
//!
//! The client is the peer address, or — only when the peer is one of `TRUSTED_PROXIES` — the
//! right-most `X-Forwarded-For` address that is not itself a trusted proxy: entries left of
//! that are the caller's to invent. Counts live in memory, per process: with N replicas a
//! client gets N times the limit, which is acceptable for abuse protection (login attempts
//! have their own limit in the database). Probes and metrics are not limited.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use poem::http::HeaderMap;
use poem::{Endpoint, IntoResponse, Request, Response};

use crate::config::{IpNet, Limits, canonical};
use crate::error::ApiError;

/// Paths never limited: a load balancer polls them.
const EXEMPT: &[&str] = &["/health", "/ready", "/metrics"];

/// Past this many tracked clients, expired windows are swept on the next request.
const SWEEP_AT: usize = 10_000;

/// The shared state of the limit.
pub struct RateLimiter {
    limit: u64,
    window: Duration,
    trusted: Vec<IpNet>,
    clients: Mutex<HashMap<Option<IpAddr>, Window>>,
}

struct Window {
    started: Instant,
    count: u64,
}

impl RateLimiter {
    /// A limiter from the settings.
    pub fn new(limits: &Limits) -> Self {
        Self {
            limit: limits.rate_limit_requests,
            window: limits.rate_limit_window,
            trusted: limits.trusted_proxies.clone(),
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// Count a request from `client`; `Err(seconds)` when it is over the limit.
    pub fn check(&self, client: Option<IpAddr>, now: Instant) -> Result<(), u64> {
        let mut clients = self.clients.lock().expect("rate limiter lock");
        if clients.len() >= SWEEP_AT {
            clients.retain(|_, w| now.duration_since(w.started) < self.window);
        }
        let w = clients.entry(client).or_insert(Window {
            started: now,
            count: 0,
        });
        if now.duration_since(w.started) >= self.window {
            *w = Window {
                started: now,
                count: 0,
            };
        }
        if w.count >= self.limit {
            let left = self.window.saturating_sub(now.duration_since(w.started));
            return Err(left.as_secs() + u64::from(left.subsec_nanos() > 0));
        }
        w.count += 1;
        Ok(())
    }

    /// The client's address as far as it can be believed.
    pub fn client_ip(&self, peer: Option<IpAddr>, headers: &HeaderMap) -> Option<IpAddr> {
        client_ip(peer, headers, &self.trusted)
    }
}

/// The middleware function: limit every path but the exempt ones.
pub async fn limit<E: Endpoint>(
    ep: Arc<E>,
    req: Request,
    limiter: Arc<RateLimiter>,
) -> poem::Result<Response> {
    if !EXEMPT.contains(&req.uri().path()) {
        let peer = req.remote_addr().as_socket_addr().map(|a| a.ip());
        let client = limiter.client_ip(peer, req.headers());
        if let Err(retry_after) = limiter.check(client, Instant::now()) {
            return Err(ApiError::rate_limited(retry_after).into());
        }
    }
    ep.call(req).await.map(IntoResponse::into_response)
}

/// The client behind `peer`: `peer` itself unless it is a trusted proxy, in which case the
/// right-most untrusted `X-Forwarded-For` entry (or the left-most, when all are trusted).
pub fn client_ip(peer: Option<IpAddr>, headers: &HeaderMap, trusted: &[IpNet]) -> Option<IpAddr> {
    let peer = peer.map(canonical);
    let is_trusted = |ip: IpAddr| trusted.iter().any(|n| n.contains(ip));
    let p = peer?;
    if !is_trusted(p) {
        return peer;
    }
    let forwarded: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect();
    let mut client = peer;
    for entry in forwarded.iter().rev() {
        // Garbage ends the walk: nothing left of it can be believed.
        let Ok(ip) = entry.trim().parse::<IpAddr>() else {
            break;
        };
        let ip = canonical(ip);
        client = Some(ip);
        if !is_trusted(ip) {
            break;
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn xff(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", v.parse().unwrap());
        h
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let h = xff("203.0.113.9, 198.51.100.2");
        // An untrusted peer: its header is ignored.
        assert_eq!(
            client_ip(Some(ip("192.0.2.1")), &h, &trusted),
            Some(ip("192.0.2.1"))
        );
        // A trusted peer: the right-most entry not added by a trusted proxy.
        assert_eq!(
            client_ip(Some(ip("10.0.0.2")), &h, &trusted),
            Some(ip("198.51.100.2"))
        );
        let chain = xff("203.0.113.9, 10.0.0.7");
        assert_eq!(
            client_ip(Some(ip("10.0.0.2")), &chain, &trusted),
            Some(ip("203.0.113.9"))
        );
        // Garbage stops the walk; nothing to the left of it is believed.
        let forged = xff("1.1.1.1, not-an-ip");
        assert_eq!(
            client_ip(Some(ip("10.0.0.2")), &forged, &trusted),
            Some(ip("10.0.0.2"))
        );
        assert_eq!(
            client_ip(Some(ip("10.0.0.2")), &HeaderMap::new(), &trusted),
            Some(ip("10.0.0.2"))
        );
    }

    #[test]
    fn windows_count_and_reset() {
        let limits = crate::config::Settings::for_database_url("postgres://h/db").limits;
        let limiter = RateLimiter {
            limit: 2,
            window: Duration::from_secs(10),
            ..RateLimiter::new(&limits)
        };
        let t0 = Instant::now();
        let a = Some(ip("192.0.2.1"));
        assert!(limiter.check(a, t0).is_ok());
        assert!(limiter.check(a, t0).is_ok());
        assert_eq!(limiter.check(a, t0 + Duration::from_millis(2500)), Err(8));
        // Another client has its own window.
        assert!(limiter.check(Some(ip("192.0.2.2")), t0).is_ok());
        // The window ends.
        assert!(limiter.check(a, t0 + Duration::from_secs(10)).is_ok());
    }
}
