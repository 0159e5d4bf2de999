//! The queue runtime.
//!
//! Per queue: a [`producer`] fetches jobs in batches for the free slots and feeds an apalis
//! worker through our [`backend`]; the backend's layer decides each job's outcome and hands it
//! to the [`completer`], which writes outcomes in batches. Per process: a [`notifier`]
//! (LISTEN) wakes the producers, the [`lease`] loop renews the leases of held jobs and the
//! worker's heartbeat, and [`maintenance`] runs the rescuer, scheduler, pruner and periodic
//! jobs. On shutdown, fetching stops, in-flight jobs get until the deadline, and whatever is
//! still held is handed back to the queue as available.
//!
//! The runtime knows no job kind of the application: its caller builds a [`Runtime`] from
//! [`RuntimeSettings`], registers a handler per kind in a [`Handlers`] (with the runtime's
//! pool, [`Runtime::pool`], for the handlers' own statements), lists any maintenance passes of
//! its own ([`Pass`]), and calls [`Runtime::run`].

pub mod backend;
pub mod breaker;
pub mod completer;
pub mod handlers;
pub mod job;
pub mod lease;
pub mod maintenance;
pub mod metrics;
pub mod notifier;
pub mod producer;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use apalis::layers::WorkerBuilderExt;
use apalis::layers::catch_panic::CatchPanicLayer;
use apalis_core::error::BoxDynError;
use apalis_core::monitor::Monitor;
use apalis_core::task::data::Data;
use apalis_core::worker::builder::WorkerBuilder;
use engine::config::{ConfigError, DatabaseSettings, Source, boolean, millis};
use engine::db::{Plans, worker_pool};
use engine::jobs::{Kinds, ScheduleSpec};
use engine::queue::FetchedJob;
use engine::queue::maintenance::WorkerInfo;
use futures::future::try_join_all;
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::runtime::backend::QueueBackend;
use crate::runtime::breaker::{NamedService, ServicesSettings};
use crate::runtime::completer::Completer;
use crate::runtime::handlers::{Handlers, KindSettings};
use crate::runtime::lease::Held;
use crate::runtime::maintenance::periodic::PeriodicJob;
use crate::runtime::maintenance::{MaintenanceSettings, Pass};
use crate::runtime::producer::{Producer, ProducerSettings};

/// Everything the runtime needs to know, validated; each piece owned by its component.
#[derive(Debug, Clone)]
pub struct RuntimeSettings {
    /// The database.
    pub database: DatabaseSettings,
    /// The queues served, their slots, fetch batch, lease and poll interval.
    pub producer: ProducerSettings,
    /// LISTEN for new jobs; off for PgBouncer in transaction mode (`WORKER_LISTEN`).
    pub listen: bool,
    /// Whether the worker's own state changes (fetch, outcomes, lease renewals) wait for
    /// their WAL to reach disk (`WORKER_SYNCHRONOUS_COMMIT`); see `engine::db::batch_pool`.
    pub synchronous_commit: bool,
    /// The whole shutdown, from SIGTERM to exit (`WORKER_SHUTDOWN_TIMEOUT_MS`): in-flight
    /// jobs get all of it but [`shutdown_reserve`]; the final outcome writes and the hand-back
    /// get the rest, and are cut off at the end even if the database does not answer.
    pub shutdown_timeout: Duration,
    /// The longest wait a handler can ask for before the next run, through a `Retry-After`
    /// or a snooze (`WORKER_RETRY_AFTER_MAX_MS`).
    pub retry_after_max: Duration,
    /// Maintenance intervals and limits.
    pub maintenance: MaintenanceSettings,
    /// Periodic jobs: those registered in code and those of `PERIODIC_JOBS`.
    pub periodic: Vec<PeriodicJob>,
    /// Per-kind overrides of the registry's timeouts and retry backoffs.
    pub kinds: KindSettings,
    /// Circuit breakers and rate limits of external services.
    pub services: ServicesSettings,
}

/// What the application tells the runtime's settings about itself: its job kinds (to check
/// the kinds that settings name), its schedules and its external services with settings of
/// their own.
#[derive(Debug, Clone, Copy)]
pub struct Registry {
    /// Every job kind.
    pub kinds: Kinds,
    /// The periodic jobs registered in code.
    pub schedules: &'static [ScheduleSpec],
    /// The external services with breaker and rate-limit settings of their own.
    pub services: &'static [NamedService],
}

/// Default `WORKER_SHUTDOWN_TIMEOUT_MS`: 25 s, so the whole shutdown ends within
/// Kubernetes' default grace period of 30 s, with room for the process to exit.
pub const DEFAULT_SHUTDOWN_TIMEOUT_MS: u64 = 25_000;

/// The part of the shutdown budget kept for the final outcome writes, the hand-back and
/// deregistering: a fifth, at most 5 s. On a healthy database they take milliseconds; the
/// reserve only matters when it is slow or gone, and then the jobs are rescued later.
pub fn shutdown_reserve(budget: Duration) -> Duration {
    (budget / 5).min(Duration::from_secs(5))
}

impl RuntimeSettings {
    /// Read and validate. `queues` and `concurrency` are the command-line flags, which win over
    /// `WORKER_QUEUES` and `WORKER_CONCURRENCY`.
    pub fn from_source(
        src: &(impl Source + ?Sized),
        queues: Option<String>,
        concurrency: Option<String>,
        registry: Registry,
    ) -> Result<Self, ConfigError> {
        let producer = ProducerSettings::from_source(src, queues, concurrency)?;
        let periodic = maintenance::periodic::from_source(src, registry.schedules, registry.kinds)?;
        Ok(Self {
            database: DatabaseSettings::from_source(src)?,
            producer,
            listen: boolean(src, "WORKER_LISTEN", true)?,
            synchronous_commit: boolean(src, "WORKER_SYNCHRONOUS_COMMIT", false)?,
            shutdown_timeout: millis(
                src,
                "WORKER_SHUTDOWN_TIMEOUT_MS",
                DEFAULT_SHUTDOWN_TIMEOUT_MS,
            )?,
            retry_after_max: millis(
                src,
                "WORKER_RETRY_AFTER_MAX_MS",
                backend::DEFAULT_RETRY_AFTER_MAX_MS,
            )?,
            maintenance: MaintenanceSettings::from_source(src)?,
            periodic,
            kinds: KindSettings::from_source(src, registry.kinds)?,
            services: ServicesSettings::from_source(src, registry.services)?,
        })
    }
}

/// A worker's runtime: its settings and its pools, made (not yet connected) by
/// [`Runtime::new`] and run by [`Runtime::run`].
pub struct Runtime {
    settings: RuntimeSettings,
    /// Maintenance, heartbeats, periodic enqueues and the handlers' own statements.
    pool: deadpool_postgres::Pool,
    /// The producers' fetches.
    fetch_pool: deadpool_postgres::Pool,
    /// The completer's outcomes and the lease renewals.
    outcome_pool: deadpool_postgres::Pool,
}

/// A new worker id: host, pid and a random suffix, unique per process start (containers
/// reuse host names and pids).
pub fn new_worker_id(host: &str) -> String {
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}-{}-{}", std::process::id(), &suffix[..8])
}

impl Runtime {
    /// The pools of `settings`; nothing connects before [`Runtime::run`].
    pub fn new(settings: RuntimeSettings) -> anyhow::Result<Self> {
        // A pool fit for each kind of statement (`engine::db::Plans`). The hot path (fetches;
        // outcomes and lease renewals) commits without waiting for the WAL flush unless
        // WORKER_SYNCHRONOUS_COMMIT; maintenance, heartbeats and periodic enqueues are durable.
        let db = &settings.database;
        let sized = |pool_size| DatabaseSettings {
            pool_size,
            ..db.clone()
        };
        let sync = settings.synchronous_commit;
        let pool = worker_pool(db, Plans::PerExecution, true)?;
        let fetch_pool = worker_pool(&sized(settings.producer.queues.len()), Plans::Cached, sync)?;
        let outcome_pool = worker_pool(&sized(2), Plans::PerExecution, sync)?;
        Ok(Self {
            settings,
            pool,
            fetch_pool,
            outcome_pool,
        })
    }

    /// The durable pool: give it to handlers for their own statements.
    pub fn pool(&self) -> &deadpool_postgres::Pool {
        &self.pool
    }

    /// Migrate, then serve the queues with `handlers` and run the maintenance services and
    /// `passes` until `stop` is cancelled; then shut down gracefully.
    pub async fn run(
        self,
        handlers: Handlers,
        passes: Vec<Pass>,
        stop: CancellationToken,
    ) -> anyhow::Result<()> {
        let Runtime {
            settings,
            pool,
            fetch_pool,
            outcome_pool,
        } = self;
        let handlers = handlers.with_kind_settings(settings.kinds.clone());
        let n_queues = settings.producer.queues.len();
        // Connect the hot path while migrations run, so the first batch pays for neither.
        let (applied, fetch_conns, outcome_conns) = tokio::try_join!(
            async { anyhow::Ok(engine::db::migrate(&pool).await?) },
            connect(&fetch_pool, n_queues),
            connect(&outcome_pool, 1),
        )?;
        if !settings.producer.limit_defaults.is_empty() {
            engine::queue::limits::set_defaults(
                &pool.get().await?,
                &settings.producer.limit_defaults,
            )
            .await?;
        }
        let handlers = handlers.with_guards(breaker::Guards::new(
            pool.clone(),
            settings.services.clone(),
        ));
        let host = gethostname::gethostname().to_string_lossy().into_owned();
        let info = Arc::new(WorkerInfo {
            id: new_worker_id(&host),
            host,
            pid: std::process::id() as i32,
            queues: settings
                .producer
                .queues
                .iter()
                .map(|(q, _)| q.clone())
                .collect(),
            concurrency: settings.producer.total_concurrency() as i32,
        });
        let worker: Arc<str> = info.id.as_str().into();
        tokio::try_join!(
            try_join_all(fetch_conns.iter().map(engine::queue::fetch::prepare)),
            try_join_all(outcome_conns.iter().map(engine::queue::outcome::prepare)),
        )?;
        drop((fetch_conns, outcome_conns));

        // Background services stop on `services`; fetching stops on `stop` itself.
        let services = CancellationToken::new();
        let held = Arc::new(Held::default());
        let (completer, completer_handle) = Completer::new(
            outcome_pool.clone(),
            worker.clone(),
            held.clone(),
            4 * settings.producer.total_concurrency().max(1000),
        );
        let completer_stop = CancellationToken::new();
        let mut completer_task = tokio::spawn(completer.run(completer_stop.clone()));

        let mut tasks = tokio::task::JoinSet::new();
        let mut wakers = HashMap::new();
        let budget = settings.shutdown_timeout;
        let mut monitor = Monitor::new().shutdown_timeout(budget - shutdown_reserve(budget));
        for (queue, slots) in &settings.producer.queues {
            let queue: Arc<str> = queue.as_str().into();
            let sem = Arc::new(Semaphore::new(*slots));
            let (tx, rx) = mpsc::channel::<FetchedJob>(*slots);
            let wake = Arc::new(Notify::new());
            wakers.insert(queue.to_string(), wake.clone());
            let queue_metrics = Arc::new(metrics::QueueMetrics::new(&queue, handlers.kinds()));
            let producer = Producer {
                queue: queue.clone(),
                pool: fetch_pool.clone(),
                worker: worker.clone(),
                lease: settings.producer.lease,
                batch: settings.producer.fetch_batch,
                poll_interval: settings.producer.poll_interval,
                slots: sem.clone(),
                tx,
                wake,
                held: held.clone(),
                metrics: queue_metrics.clone(),
            };
            tasks.spawn(producer.run(stop.clone()));
            let backend = QueueBackend::new(
                rx,
                sem,
                completer_handle.clone(),
                handlers.clone(),
                queue_metrics,
                settings.retry_after_max,
            );
            let name = format!("{worker}/{queue}");
            let handlers = handlers.clone();
            let slots = *slots;
            monitor = monitor.register(move |_| {
                WorkerBuilder::new(name.clone())
                    .backend(backend.clone())
                    .data(handlers.clone())
                    .layer(CatchPanicLayer::with_panic_handler(backend::on_panic))
                    .concurrency(slots)
                    .build(dispatch)
            });
        }
        drop(completer_handle);
        // Registered while the first fetches run: nothing waits on the workers row.
        engine::queue::maintenance::heartbeat(&pool.get().await?, &info, 0).await?;
        tracing::info!(worker.id = %worker, queues = ?info.queues, concurrency = info.concurrency, migrations_applied = applied, "worker started");
        if settings.listen {
            tasks.spawn(notifier::run(
                settings.database.pg_config(),
                wakers,
                services.clone(),
            ));
        }
        tasks.spawn(lease::run(
            outcome_pool.clone(),
            info.clone(),
            held.clone(),
            settings.producer.lease,
            services.clone(),
        ));
        tasks.spawn(maintenance::run(
            pool.clone(),
            worker.clone(),
            settings.maintenance.clone(),
            passes,
            services.clone(),
        ));
        tasks.spawn(maintenance::periodic::run(
            pool.clone(),
            settings.periodic.clone(),
            handlers.registry(),
            services.clone(),
        ));

        let stopped_at = Arc::new(std::sync::OnceLock::new());
        let signal = {
            let (stop, stopped_at) = (stop.clone(), stopped_at.clone());
            async move {
                stop.cancelled().await;
                let _ = stopped_at.set(tokio::time::Instant::now());
                tracing::info!("shutting down: no new jobs; waiting for jobs in flight");
                Ok(())
            }
        };
        if let Err(e) = monitor.run_with_signal(signal).await {
            tracing::error!(error = %e, "worker monitor failed");
        }

        // Every apalis worker has stopped. What follows is bounded by the shutdown budget, a
        // lost database included: whatever cannot be written by then stays `running` under
        // this worker and is rescued once its lease lapses (run again, never lost).
        let deadline = *stopped_at.get_or_init(tokio::time::Instant::now) + budget;
        // Write the outcomes still queued, in the first half of what is left...
        let flush_by =
            deadline - deadline.saturating_duration_since(tokio::time::Instant::now()) / 2;
        completer_stop.cancel();
        let flush = tokio::time::timeout_at(flush_by, &mut completer_task).await;
        if flush.is_err() {
            completer_task.abort();
            tracing::error!(
                "out of time writing outcomes; their jobs will be rescued when their leases expire"
            );
        }
        // ...then hand back what is held (jobs cut off by the deadline, fetched jobs that
        // never started, and jobs whose outcome could not be written: they run again).
        let rest = held.ids();
        if !rest.is_empty() {
            match tokio::time::timeout_at(deadline, handback(&pool, &rest, &worker)).await {
                Ok(Ok(n)) => tracing::info!(
                    num_handed_back = n,
                    "handed unfinished jobs back to the queue"
                ),
                Ok(Err(e)) => {
                    tracing::error!(error = %e, num_jobs = rest.len(), "cannot hand jobs back; they will be rescued when their leases expire")
                }
                Err(_) => {
                    tracing::error!(
                        num_jobs = rest.len(),
                        "out of time handing jobs back; they will be rescued when their leases expire"
                    )
                }
            }
        }
        services.cancel();
        if tokio::time::timeout_at(deadline, async {
            while tasks.join_next().await.is_some() {}
        })
        .await
        .is_err()
        {
            tasks.abort_all();
        }
        let _ = tokio::time::timeout_at(deadline, async {
            if let Ok(conn) = pool.get().await {
                let _ = engine::queue::maintenance::deregister(&conn, &worker).await;
            }
        })
        .await;
        tracing::info!("worker stopped");
        Ok(())
    }
}

/// `n` connections of `pool`, opened at once.
async fn connect(
    pool: &deadpool_postgres::Pool,
    n: usize,
) -> anyhow::Result<Vec<deadpool_postgres::Object>> {
    Ok(try_join_all((0..n).map(|_| pool.get())).await?)
}

async fn handback(
    pool: &deadpool_postgres::Pool,
    ids: &[i64],
    worker: &str,
) -> anyhow::Result<u64> {
    let conn = pool.get().await?;
    Ok(engine::queue::fetch::hand_back(&conn, ids, worker).await?)
}

/// The apalis handler of every queue: run the job's kind.
async fn dispatch(
    job: FetchedJob,
    handlers: Data<Handlers>,
) -> Result<serde_json::Value, BoxDynError> {
    match handlers.run(job).await {
        Ok(result) => Ok(result.unwrap_or(serde_json::Value::Null)),
        Err(e) => Err(Box::new(e)),
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    /// The runtime's source files: `runtime.rs` and everything under `runtime/`.
    fn files(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                files(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    /// Architecture invariant: the runtime knows nothing of the application, so it can run
    /// any set of kinds and passes handed to it.
    #[test]
    fn the_runtime_imports_nothing_of_the_application() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut all = vec![src.join("runtime.rs")];
        files(&src.join("runtime"), &mut all);
        const FORBIDDEN: &[&str] = &[
            "crate::app",
            "crate::handlers",
            "crate::housekeeping",
            "crate::config",
            // The application's crate: accounts, registrations, its kinds and their registry.
            "domain::",
            "reqwest",
            "lettre",
        ];
        for path in all {
            let text = std::fs::read_to_string(&path).unwrap();
            // Tests may say anything; the rule is about the code.
            let code = text.split("#[cfg(test)]").next().unwrap_or_default();
            for word in FORBIDDEN {
                assert!(
                    !code.contains(word),
                    "{} names {word}: the runtime must not import the application",
                    path.display()
                );
            }
        }
    }
}
