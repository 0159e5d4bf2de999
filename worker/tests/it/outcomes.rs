//! Outcomes of attempts through a real in-process worker: completion, retries on the kind's
//! schedule, discard after max_attempts, permanent errors, snooze, cancel, timeout, panic.

use std::time::Duration;

use engine::queue::{JobOptions, JobState, NewJob, enqueue};
use serde_json::json;
use testkit::TestDb;

use crate::harness::{InProcess, enqueue_noops, fast_env, wait_count, wait_final};

#[tokio::test]
async fn jobs_complete_with_their_result() {
    let db = TestDb::new().await;
    let w = InProcess::start(&fast_env(&db.url), "default", 8);
    let ids = enqueue_noops(&db, "default", 50, json!({})).await;
    let with_result = enqueue(
        &db.conn().await,
        &NewJob::from_json(&engine::jobs::noop::SPEC, json!({"result": {"ok": 1}})).unwrap(),
    )
    .await
    .unwrap();
    wait_count(
        &db,
        "SELECT count(*) FROM jobs WHERE state = 'completed'",
        51,
        Duration::from_secs(20),
    )
    .await;
    let job = wait_final(&db, with_result.id, Duration::from_secs(1)).await;
    assert_eq!(job.result, Some(json!({"ok": 1})));
    assert_eq!(job.attempt, 1);
    assert!(job.lease_expires_at.is_none() && job.finished_at.is_some());
    let first = wait_final(&db, ids[0], Duration::from_secs(1)).await;
    assert!(first.attempted_by.is_some());
    w.shutdown().await;
}

#[tokio::test]
async fn failures_retry_on_schedule_then_discard_with_every_error() {
    let db = TestDb::new().await;
    let w = InProcess::start(&fast_env(&db.url), "default", 4);
    // noop retries after ~200 ms, then ~400 ms (±25 %); 3 attempts, all failing.
    let job = enqueue(
        &db.conn().await,
        &NewJob::from_json(&engine::jobs::noop::SPEC, json!({"fail_attempts": 5})).unwrap(),
    )
    .await
    .unwrap();
    let recovering = enqueue(
        &db.conn().await,
        &NewJob::from_json(&engine::jobs::noop::SPEC, json!({"fail_attempts": 2})).unwrap(),
    )
    .await
    .unwrap();
    let done = wait_final(&db, job.id, Duration::from_secs(20)).await;
    assert_eq!(done.state, JobState::Discarded);
    assert_eq!(done.attempt, 3);
    assert_eq!(done.errors.len(), 3, "{:?}", done.errors);
    for (i, e) in done.errors.iter().enumerate() {
        assert_eq!(e.attempt, i as i32 + 1);
        assert_eq!(e.kind, "error");
    }
    // The gaps between failures follow the backoff: at least 150 ms, then at least 300 ms.
    let gap1 = done.errors[1].at - done.errors[0].at;
    let gap2 = done.errors[2].at - done.errors[1].at;
    assert!(
        gap1.num_milliseconds() >= 150,
        "first retry came after {gap1}"
    );
    assert!(
        gap2.num_milliseconds() >= 300,
        "second retry came after {gap2}"
    );
    let ok = wait_final(&db, recovering.id, Duration::from_secs(20)).await;
    assert_eq!(
        (ok.state, ok.attempt, ok.errors.len()),
        (JobState::Completed, 3, 2)
    );
    w.shutdown().await;
}

#[tokio::test]
async fn permanent_errors_panics_timeouts_snoozes_and_cancels() {
    let db = TestDb::new().await;
    let w = InProcess::start(&fast_env(&db.url), "default", 8);
    let c = db.conn().await;
    let one = |args: serde_json::Value, max: i32| {
        NewJob::from_json(&engine::jobs::noop::SPEC, args)
            .unwrap()
            .with(JobOptions {
                max_attempts: Some(max),
                ..Default::default()
            })
    };
    let permanent = enqueue(&c, &one(json!({"permanent": true}), 5))
        .await
        .unwrap()
        .id;
    let panics = enqueue(&c, &one(json!({"panic": true}), 2))
        .await
        .unwrap()
        .id;
    let snoozes = enqueue(&c, &one(json!({"snooze_ms": 100, "snooze_times": 3}), 1))
        .await
        .unwrap()
        .id;
    let cancels = enqueue(&c, &one(json!({"cancel": true}), 5))
        .await
        .unwrap()
        .id;
    let unknown = enqueue(&c, &NewJob::unchecked("no_such_kind", json!({})))
        .await
        .unwrap()
        .id;
    let bad_args = enqueue(&c, &NewJob::unchecked("noop", json!({"sleep_ms": "x"})))
        .await
        .unwrap()
        .id;

    let j = wait_final(&db, permanent, Duration::from_secs(10)).await;
    assert_eq!(
        (j.state, j.attempt, j.errors[0].kind.as_str()),
        (JobState::Discarded, 1, "permanent")
    );

    // A panic is caught, counts as a failed attempt, and the worker goes on.
    let j = wait_final(&db, panics, Duration::from_secs(10)).await;
    assert_eq!((j.state, j.attempt), (JobState::Discarded, 2));
    assert!(
        j.errors
            .iter()
            .all(|e| e.kind == "panic" && e.message.contains("panicked as asked")),
        "{:?}",
        j.errors
    );

    // Snoozed three times with a budget of one attempt: snoozes use none.
    let j = wait_final(&db, snoozes, Duration::from_secs(10)).await;
    assert_eq!((j.state, j.attempt), (JobState::Completed, 1));
    assert_eq!(j.meta["snoozes"], json!(3));

    let j = wait_final(&db, cancels, Duration::from_secs(10)).await;
    assert_eq!(j.state, JobState::Cancelled);

    let j = wait_final(&db, unknown, Duration::from_secs(10)).await;
    assert_eq!(
        (j.state, j.errors[0].kind.as_str()),
        (JobState::Discarded, "unknown_kind")
    );
    let j = wait_final(&db, bad_args, Duration::from_secs(10)).await;
    assert_eq!(
        (j.state, j.errors[0].kind.as_str()),
        (JobState::Discarded, "bad_args")
    );
    w.shutdown().await;
}

#[tokio::test]
async fn kind_retry_overrides_the_kinds_backoff() {
    let db = TestDb::new().await;
    // noop's own backoff starts at 200 ms ±25 %; KIND_RETRY makes it 40 ms with no jitter.
    let mut env = fast_env(&db.url);
    env.push(("KIND_RETRY", "noop=40:2:1000:0".into()));
    let w = InProcess::start(&env, "default", 4);
    let job = enqueue(
        &db.conn().await,
        &NewJob::from_json(&engine::jobs::noop::SPEC, json!({"fail_attempts": 1})).unwrap(),
    )
    .await
    .unwrap();
    let done = wait_final(&db, job.id, Duration::from_secs(20)).await;
    assert_eq!(
        (done.state, done.attempt, done.errors.len()),
        (JobState::Completed, 2, 1),
        "{:?}",
        done.errors
    );
    // The retry's run_at was set in the statement that recorded the failure.
    let gap = (done.run_at - done.errors[0].at).num_milliseconds();
    let default_floor = engine::jobs::noop::SPEC.retry.initial.as_secs_f64()
        * (1.0 - engine::jobs::noop::SPEC.retry.jitter)
        * 1000.0;
    assert!(
        gap >= 40 && (gap as f64) < default_floor,
        "retry scheduled {gap} ms after the failure; want >= 40 and < {default_floor}"
    );
    w.shutdown().await;
}
