//! ARCHITECTURE.md's recipe "Adding a job kind", followed step by step for a trivial kind,
//! `greet`: its args and spec, its place in a registry, its handler, and a real runtime that
//! runs it. The application's own kinds take the same steps in `domain::jobs` and
//! `worker::app`; here the registry is the test's, so the steps stay visible in one file.

use std::time::Duration;

use engine::jobs::{ArgsError, JobArgs, KindSpec, Kinds, check_args, noop};
use engine::queue::{JobState, NewJob, enqueue};
use engine::retry::RetryPolicy;
use serde::{Deserialize, Serialize};
use serde_json::json;
use testkit::TestDb;
use tokio_util::sync::CancellationToken;
use worker::runtime::handlers::{Handlers, JobContext};
use worker::runtime::job::{JobError, JobResult};
use worker::runtime::{Registry, Runtime, RuntimeSettings};

use crate::harness::{fast_env, wait_final};

// Step 1: the args, a stored format (new fields get serde defaults; never renamed), with the
// checks serde cannot make, and the kind's defaults.

/// The args of a `greet` job.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Greet {
    name: String,
}

impl JobArgs for Greet {
    const KIND: &'static str = "greet";
    const SPEC: KindSpec = GREET;

    fn validate(&self) -> Result<(), ArgsError> {
        if self.name.trim().is_empty() || self.name.len() > 100 {
            return Err(ArgsError::Invalid {
                field: "name",
                message: "1 to 100 characters".into(),
            });
        }
        Ok(())
    }
}

/// `greet`: queue `greetings`, 3 attempts a second apart, 5 s per attempt.
const GREET: KindSpec = KindSpec {
    name: Greet::KIND,
    queue: "greetings",
    max_attempts: 3,
    retry: RetryPolicy {
        initial: Duration::from_secs(1),
        multiplier: 2.0,
        max: Duration::from_secs(10),
        jitter: 0.1,
    },
    timeout: Duration::from_secs(5),
    check: check_args::<Greet>,
};

// Step 2: the kind in the application's registry (for the application: `domain::jobs::KINDS`).
const KINDS: Kinds = Kinds::new(&[noop::SPEC, GREET]);

// Step 3: the handler (for the application: `worker/src/handlers/greet.rs`). What it returns
// is stored as the job's result; an error says what the queue should do next.
async fn greet(args: Greet, _ctx: JobContext) -> JobResult {
    if args.name == "nobody" {
        return Err(JobError::Permanent("nobody to greet".into()));
    }
    Ok(Some(json!({ "greeting": format!("hello, {}", args.name) })))
}

// Step 4: every kind gets its handler (for the application: `worker::app::handlers`).
fn handlers() -> anyhow::Result<Handlers> {
    let mut h = Handlers::new(KINDS);
    h.register(worker::handlers::noop::run)?;
    h.register(greet)?;
    h.check_complete()?;
    Ok(h)
}

#[test]
fn a_kind_without_its_handler_is_refused_at_start() {
    let mut h = Handlers::new(KINDS);
    h.register(worker::handlers::noop::run).unwrap();
    let err = h.check_complete().unwrap_err().to_string();
    assert!(err.contains("greet"), "{err}");
}

#[test]
fn its_args_are_checked_before_they_are_enqueued() {
    let empty = NewJob::new(&Greet { name: " ".into() }).unwrap_err();
    assert!(empty.to_string().contains("name"), "{empty}");
    let shape = NewJob::from_json(&GREET, json!({ "nom": "x" })).unwrap_err();
    assert!(shape.to_string().contains("name"), "{shape}");
    assert_eq!(KINDS.get("greet").unwrap().queue, "greetings");
}

#[tokio::test]
async fn a_new_kind_runs_on_a_real_runtime() {
    let db = TestDb::new().await;
    // Step 5: the runtime serves the kind's queue with the registry and handlers.
    let env = fast_env(&db.url);
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let registry = Registry {
        kinds: KINDS,
        schedules: &[],
        services: &[],
    };
    let settings = RuntimeSettings::from_source(
        &pairs[..],
        Some("greetings".into()),
        Some("4".into()),
        registry,
    )
    .unwrap();
    let stop = CancellationToken::new();
    let runtime = Runtime::new(settings).unwrap();
    let task = tokio::spawn(runtime.run(handlers().unwrap(), vec![], stop.clone()));

    // Step 6: enqueue it from typed args (for the application: in the use-case's transaction).
    let conn = db.conn().await;
    let hello = enqueue(
        &conn,
        &NewJob::new(&Greet {
            name: "Meena".into(),
        })
        .unwrap(),
    )
    .await
    .unwrap();
    let nobody = enqueue(
        &conn,
        &NewJob::new(&Greet {
            name: "nobody".into(),
        })
        .unwrap(),
    )
    .await
    .unwrap();

    let done = wait_final(&db, hello.id, Duration::from_secs(20)).await;
    assert_eq!(done.state, JobState::Completed);
    assert_eq!(done.queue, "greetings");
    assert_eq!(done.max_attempts, 3);
    assert_eq!(done.result, Some(json!({ "greeting": "hello, Meena" })));
    let refused = wait_final(&db, nobody.id, Duration::from_secs(20)).await;
    assert_eq!(refused.state, JobState::Discarded);

    stop.cancel();
    task.await.unwrap().unwrap();
}
