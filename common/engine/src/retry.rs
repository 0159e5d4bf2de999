//! Retry delays: exponential backoff with jitter, computed with the `backoff` crate.
//!
//! This is the only module that names `backoff` (flagged unmaintained, RUSTSEC-2025-0012), so
//! swapping it for `backon` is a one-file change.

use std::time::Duration;

use backoff::ExponentialBackoffBuilder;
use backoff::backoff::Backoff;

/// How a kind's failed attempts are spaced out.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// The delay before the first retry, before jitter.
    pub initial: Duration,
    /// Each further retry waits this many times longer.
    pub multiplier: f64,
    /// No delay exceeds this, before jitter.
    pub max: Duration,
    /// Each delay is drawn from `[d * (1 - j), d * (1 + j)]`; 0 means no jitter.
    pub jitter: f64,
}

impl RetryPolicy {
    /// The default policy: 1 s, doubling, capped at 1 h, ±25 % jitter.
    pub const DEFAULT: RetryPolicy = RetryPolicy {
        initial: Duration::from_secs(1),
        multiplier: 2.0,
        max: Duration::from_secs(3600),
        jitter: 0.25,
    };

    /// The delay before the retry that follows failed attempt number `attempt` (1-based).
    pub fn delay(&self, attempt: u32) -> Duration {
        let mut b = ExponentialBackoffBuilder::new()
            .with_initial_interval(self.initial)
            .with_multiplier(self.multiplier)
            .with_max_interval(self.max)
            .with_randomization_factor(self.jitter)
            // Our attempt count lives in the row; the crate must never give up on its own.
            .with_max_elapsed_time(None)
            .build();
        // Past the cap every further step is the cap, so there is no need to walk further.
        let steps = attempt.clamp(1, 64);
        let mut delay = self.max;
        for _ in 0..steps {
            delay = b.next_backoff().unwrap_or(self.max);
        }
        delay
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self::DEFAULT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_exponentially_within_the_jitter_band() {
        let p = RetryPolicy {
            initial: Duration::from_secs(2),
            multiplier: 3.0,
            max: Duration::from_secs(60),
            jitter: 0.5,
        };
        for (attempt, base) in [
            (1u32, 2.0f64),
            (2, 6.0),
            (3, 18.0),
            (4, 54.0),
            (5, 60.0),
            (30, 60.0),
        ] {
            for _ in 0..50 {
                let d = p.delay(attempt).as_secs_f64();
                assert!(
                    d >= base * 0.5 - 1e-6 && d <= base * 1.5 + 1e-6,
                    "attempt {attempt}: {d} not within 50% of {base}"
                );
            }
        }
    }

    #[test]
    fn no_jitter_is_exact() {
        let p = RetryPolicy {
            initial: Duration::from_millis(100),
            multiplier: 2.0,
            max: Duration::from_secs(1),
            jitter: 0.0,
        };
        let got: Vec<u128> = (1..=6).map(|a| p.delay(a).as_millis()).collect();
        assert_eq!(got, vec![100, 200, 400, 800, 1000, 1000]);
    }
}
