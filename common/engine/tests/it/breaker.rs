//! Circuit breakers and rate limits against the real database, raced from many connections.

use std::time::Duration;

use chrono::{DateTime, Utc};
use engine::breaker::{self, Call, Decision, Force, Forced, Policy, State};
use engine::ratelimit::{self, Limit, Take};
use futures::future::join_all;
use testkit::TestDb;

fn policy(probes: u32) -> Policy {
    Policy {
        failure_threshold: 5,
        failure_rate: 0.0,
        min_calls: 1,
        window: Duration::from_secs(3600),
        // Long: nothing in these tests waits for a cool-down to end.
        recovery_timeout: Duration::from_secs(3600),
        half_open_max_calls: probes,
    }
}

/// `n` pooled connections of their own, held at once (the pool holds 16).
async fn conns(db: &TestDb, n: usize) -> Vec<deadpool_postgres::Client> {
    join_all((0..n).map(|_| db.conn())).await
}

#[tokio::test]
async fn concurrent_acquires_in_half_open_grant_at_most_the_probe_count() {
    let db = TestDb::new().await;
    let p = policy(3);
    let mut c = db.conn().await;
    // Opened, then the override lifted: due to probe at once.
    breaker::force(&mut c, &"cloudinary".parse().unwrap(), Force::Open)
        .await
        .unwrap();
    breaker::force(&mut c, &"cloudinary".parse().unwrap(), Force::Clear)
        .await
        .unwrap();

    let mut clients = conns(&db, 12).await;
    let decisions = join_all(
        clients
            .iter_mut()
            .map(|c| breaker::acquire(c, "cloudinary", &p)),
    )
    .await;
    let decisions: Vec<_> = decisions.into_iter().map(|d| d.unwrap()).collect();
    let probes = decisions
        .iter()
        .filter(|o| o.value == Decision::Allowed { probe: true })
        .count();
    assert_eq!(probes, 3, "{decisions:#?}");
    assert!(
        decisions
            .iter()
            .all(|o| o.value == Decision::Allowed { probe: true }
                || matches!(o.value, Decision::Denied { .. }))
    );
    // Exactly one of them moved it to half-open.
    let half_opened = decisions
        .iter()
        .filter(|o| {
            o.transition
                .as_ref()
                .is_some_and(|t| t.to == State::HalfOpen)
        })
        .count();
    assert_eq!(half_opened, 1);
    let row = &breaker::list(&c).await.unwrap()[0];
    assert_eq!((row.state, row.probes_granted), (State::HalfOpen, 3));

    // A probe's success closes it for everyone.
    let out = breaker::record(&mut c, "cloudinary", Call::Success, true, &p)
        .await
        .unwrap();
    assert_eq!(out.transition.unwrap().to, State::Closed);
    assert_eq!(
        breaker::acquire(&mut c, "cloudinary", &p)
            .await
            .unwrap()
            .value,
        Decision::Allowed { probe: false }
    );
}

#[tokio::test]
async fn concurrent_failures_from_many_connections_open_it_exactly_once() {
    let db = TestDb::new().await;
    let p = policy(1);
    let mut clients = conns(&db, 14).await;
    let outs = join_all(
        clients
            .iter_mut()
            .map(|c| breaker::record(c, "smtp", Call::Failure, false, &p)),
    )
    .await;
    let opened: Vec<_> = outs
        .into_iter()
        .filter_map(|o| o.unwrap().transition)
        .collect();
    assert_eq!(opened.len(), 1, "{opened:?}");
    assert_eq!(
        (opened[0].from, opened[0].to, opened[0].reason),
        (State::Closed, State::Open, "consecutive failures")
    );
    let c = db.conn().await;
    let b = &breaker::list(&c).await.unwrap()[0];
    assert_eq!(b.state, State::Open);
    assert_eq!(b.times_opened, 1);
    assert_eq!(b.consecutive_failures, 14);
    assert_eq!(b.window_failures, 14);
    // The cool-down runs from the opening, by the database's clock.
    assert_eq!(
        b.half_open_at.unwrap() - b.opened_at.unwrap(),
        chrono::Duration::seconds(3600)
    );
    // Everyone is denied until then; a probe failure later would reopen it afresh.
    let mut c = db.conn().await;
    assert_eq!(
        breaker::acquire(&mut c, "smtp", &p).await.unwrap().value,
        Decision::Denied {
            until: b.half_open_at.unwrap()
        }
    );
}

#[tokio::test]
async fn overrides_are_stored_and_listed_per_service() {
    let db = TestDb::new().await;
    let p = policy(1);
    let mut c = db.conn().await;
    let out = breaker::force(&mut c, &"smtp".parse().unwrap(), Force::Closed)
        .await
        .unwrap();
    assert_eq!(out.transition, None, "a new breaker is already closed");
    breaker::force(&mut c, &"cloudinary".parse().unwrap(), Force::Open)
        .await
        .unwrap();
    for _ in 0..10 {
        breaker::record(&mut c, "smtp", Call::Failure, false, &p)
            .await
            .unwrap();
    }
    let all = breaker::list(&c).await.unwrap();
    let got: Vec<_> = all
        .iter()
        .map(|b| (b.service.as_str(), b.state, b.forced))
        .collect();
    assert_eq!(
        got,
        [
            ("cloudinary", State::Open, Some(Forced::Open)),
            ("smtp", State::Closed, Some(Forced::Closed)),
        ]
    );
    assert!(matches!(
        breaker::acquire(&mut c, "cloudinary", &p)
            .await
            .unwrap()
            .value,
        Decision::Denied { .. }
    ));
    assert_eq!(
        breaker::acquire(&mut c, "smtp", &p).await.unwrap().value,
        Decision::Allowed { probe: false }
    );
}

#[tokio::test]
async fn concurrent_takers_never_get_more_than_the_limit_in_any_period() {
    let db = TestDb::new().await;
    let limit = Limit {
        max_calls: 5,
        period: Duration::from_millis(400),
    };
    let mut clients = conns(&db, 6).await;
    // Each connection takes in a loop, sleeping until the slot it was told, until it has 4.
    let grants = join_all(clients.iter_mut().map(|c| async move {
        let mut got: Vec<DateTime<Utc>> = Vec::new();
        while got.len() < 4 {
            match ratelimit::take(c, "cloudinary", limit).await.unwrap() {
                Take::Allowed { at } => got.push(at),
                Take::Wait { until } => {
                    let wait = (until - Utc::now()).to_std().unwrap_or_default();
                    tokio::time::sleep(wait).await;
                }
            }
        }
        got
    }))
    .await;
    let mut all: Vec<_> = grants.into_iter().flatten().collect();
    all.sort_unstable();
    assert_eq!(all.len(), 24);
    let period = chrono::Duration::from_std(limit.period).unwrap();
    for w in all.windows(6) {
        assert!(w[5] - w[0] >= period, "6 grants within one period: {:?}", w);
    }
    let usage = ratelimit::usage(&db.conn().await).await.unwrap();
    assert_eq!(usage[0].limit, limit);
}

#[tokio::test]
async fn the_wait_is_the_real_next_free_slot() {
    let db = TestDb::new().await;
    let limit = Limit {
        max_calls: 3,
        period: Duration::from_secs(3600),
    };
    let mut clients = conns(&db, 8).await;
    let takes: Vec<Take> = join_all(
        clients
            .iter_mut()
            .map(|c| ratelimit::take(c, "smtp", limit)),
    )
    .await
    .into_iter()
    .map(Result::unwrap)
    .collect();
    let mut granted: Vec<_> = takes
        .iter()
        .filter_map(|t| match t {
            Take::Allowed { at } => Some(*at),
            Take::Wait { .. } => None,
        })
        .collect();
    granted.sort_unstable();
    assert_eq!(granted.len(), 3);
    // Every refused taker is told the same slot: the first grant plus one period.
    let free = granted[0] + chrono::Duration::seconds(3600);
    for t in &takes {
        if let Take::Wait { until } = t {
            assert_eq!(*until, free);
        }
    }
    let stored: Vec<DateTime<Utc>> = db.scalar("SELECT grants FROM rate_limits").await;
    assert_eq!(stored, granted);
    let usage = ratelimit::usage(&db.conn().await).await.unwrap();
    assert_eq!((usage[0].service.as_str(), usage[0].used), ("smtp", 3));
}
