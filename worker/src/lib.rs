//! Quayside's worker: apalis workers over the PostgreSQL job queue.
//!
//! Per queue: a [`producer`] fetches jobs in batches for the free slots and feeds an apalis
//! worker through our [`backend`]; the backend's layer decides each job's outcome and hands it
//! to the [`completer`], which writes outcomes in batches. Per process: a [`notifier`]
//! (LISTEN) wakes the producers, the [`lease`] loop renews the leases of held jobs and the
//! worker's heartbeat, and [`maintenance`] runs the rescuer, scheduler, pruner and periodic
//! jobs. On shutdown, fetching stops, in-flight jobs get until the deadline, and whatever is
//! still held is handed back to the queue as available.

pub mod backend;
pub mod breaker;
pub mod completer;
pub mod config;
pub mod handlers;
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
use engine::config::DatabaseSettings;
use engine::db::{Plans, worker_pool};
use engine::queue::FetchedJob;
use engine::queue::maintenance::WorkerInfo;
use futures::future::try_join_all;
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::backend::QueueBackend;
use crate::completer::Completer;
use crate::config::WorkerSettings;
use crate::handlers::{Handlers, Services};
use crate::lease::Held;
use crate::producer::Producer;

/// A new worker id: host, pid and a random suffix, unique per process start (containers
/// reuse host names and pids).
pub fn new_worker_id(host: &str) -> String {
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}-{}-{}", std::process::id(), &suffix[..8])
}

/// Run the worker until `stop` is cancelled, then shut down gracefully.
pub async fn run(settings: WorkerSettings, stop: CancellationToken) -> anyhow::Result<()> {
    // A pool fit for each kind of statement (`engine::db::Plans`). The hot path (fetches;
    // outcomes and lease renewals) commits without waiting for the WAL flush unless
    // WORKER_SYNCHRONOUS_COMMIT; maintenance, heartbeats and periodic enqueues are durable.
    let db = &settings.database;
    let sized = |pool_size| DatabaseSettings {
        pool_size,
        ..db.clone()
    };
    let n_queues = settings.queues.len();
    let sync = settings.synchronous_commit;
    let pool = worker_pool(db, Plans::PerExecution, true)?;
    let handlers = Handlers::all(&Services::new(pool.clone(), &settings.delivery)?)?
        .with_timeouts(settings.kind_timeouts.clone())
        .with_retries(settings.kind_retries.clone());
    let fetch_pool = worker_pool(&sized(n_queues), Plans::Cached, sync)?;
    let outcome_pool = worker_pool(&sized(2), Plans::PerExecution, sync)?;
    // Connect the hot path while migrations run, so the first batch pays for neither.
    let (applied, fetch_conns, outcome_conns) = tokio::try_join!(
        async { anyhow::Ok(engine::db::migrate(&pool).await?) },
        connect(&fetch_pool, n_queues),
        connect(&outcome_pool, 1),
    )?;
    let handlers = handlers.with_guards(breaker::Guards::new(
        pool.clone(),
        settings.services.clone(),
    ));
    let host = gethostname::gethostname().to_string_lossy().into_owned();
    let info = Arc::new(WorkerInfo {
        id: new_worker_id(&host),
        host,
        pid: std::process::id() as i32,
        queues: settings.queues.iter().map(|(q, _)| q.clone()).collect(),
        concurrency: settings.total_concurrency() as i32,
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
        4 * settings.total_concurrency().max(1000),
    );
    let completer_stop = CancellationToken::new();
    let completer_task = tokio::spawn(completer.run(completer_stop.clone()));

    let mut tasks = tokio::task::JoinSet::new();
    let mut wakers = HashMap::new();
    let mut monitor = Monitor::new().shutdown_timeout(settings.shutdown_timeout);
    for (queue, slots) in &settings.queues {
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
            lease: settings.lease,
            batch: settings.fetch_batch,
            poll_interval: settings.poll_interval,
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
        settings.lease,
        services.clone(),
    ));
    tasks.spawn(maintenance::run(
        pool.clone(),
        worker.clone(),
        settings.maintenance.clone(),
        services.clone(),
    ));
    tasks.spawn(maintenance::periodic::run(
        pool.clone(),
        settings.periodic.clone(),
        services.clone(),
    ));

    let signal = {
        let stop = stop.clone();
        async move {
            stop.cancelled().await;
            tracing::info!("shutting down: no new jobs; waiting for jobs in flight");
            Ok(())
        }
    };
    if let Err(e) = monitor.run_with_signal(signal).await {
        tracing::error!(error = %e, "worker monitor failed");
    }

    // Every apalis worker has stopped: write the outcomes still queued, then hand back what is
    // held (jobs cut off by the deadline, and fetched jobs that never started).
    completer_stop.cancel();
    let _ = completer_task.await;
    let rest = held.ids();
    if !rest.is_empty() {
        match handback(&pool, &rest, &worker).await {
            Ok(n) => tracing::info!(
                num_handed_back = n,
                "handed unfinished jobs back to the queue"
            ),
            Err(e) => {
                tracing::error!(error = %e, num_jobs = rest.len(), "cannot hand jobs back; they will be rescued when their leases expire")
            }
        }
    }
    services.cancel();
    while tasks.join_next().await.is_some() {}
    if let Ok(conn) = pool.get().await {
        let _ = engine::queue::maintenance::deregister(&conn, &worker).await;
    }
    tracing::info!("worker stopped");
    Ok(())
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
    let conn = tokio::time::timeout(Duration::from_secs(5), pool.get()).await??;
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
