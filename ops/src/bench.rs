//! `ops bench queue`: enqueue, drain and pickup figures of the queue, as one JSON line.
//!
//! It starts its own PostgreSQL with default durability (fsync on) unless DATABASE_URL is set,
//! and drives the real `worker` binary, so the figures include everything a deployment pays.
//! Progress and the fetch plan go to stderr; stdout gets the JSON line only.

use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::Subcommand;
use deadpool_postgres::Pool;
use engine::config::DatabaseSettings;
use engine::names::QueueName;
use engine::queue::limits::{self, QueueLimits};
use engine::queue::{JobOptions, NewJob, enqueue, enqueue_many};
use serde_json::json;
use testkit::cluster::Durability;

use crate::stack::{Database, binary};

mod api;
mod load;

/// Which benchmark.
#[derive(Subcommand, Clone)]
pub enum Which {
    /// The queue: bulk and single enqueue, drain (empty and 1M-row history), pickup latency.
    Queue {
        #[command(flatten)]
        drain: DrainArgs,
        /// Finished jobs in the table for the history drain.
        #[arg(long, default_value_t = 1_000_000)]
        history: usize,
    },
    /// Only the drain of an empty table, each run printed: quick comparisons of worker
    /// changes.
    Drain {
        #[command(flatten)]
        drain: DrainArgs,
        /// Also drain with a per-key limit of 1 over 1,000 keys, printed beside.
        #[arg(long)]
        key_limit: bool,
    },
    /// The HTTP API: `/health` throughput, and operator reads with millions of jobs.
    Api {
        /// Jobs in the table while the operator reads are timed.
        #[arg(long, default_value_t = 5_000_000)]
        jobs: usize,
    },
}

/// How the drains run.
#[derive(clap::Args, Clone)]
pub struct DrainArgs {
    /// Jobs drained per drain run.
    #[arg(long, default_value_t = 20_000)]
    jobs: usize,
    /// Worker job slots for the drains: two fetch batches (WORKER_FETCH_BATCH, 1,000), so
    /// the next batch is fetched while the last one runs (2,000 drained 14 % faster than
    /// 1,000, same sitting).
    #[arg(long, default_value_t = 2_000)]
    concurrency: usize,
    /// Runs of each drain; the median is reported (this machine's figures vary by tens of
    /// percent from one run to the next).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..))]
    reps: u16,
}

/// Run a benchmark.
pub async fn run(which: Which) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("quayside-bench-{}", std::process::id()));
    let db = Database::open(&dir, "quayside_bench", Durability::Full).await?;
    let drain = |args: &DrainArgs| -> anyhow::Result<Drain> {
        Ok(Drain {
            url: db.url.clone(),
            worker_bin: binary("worker")?,
            args: args.clone(),
        })
    };
    let result = match &which {
        Which::Queue {
            drain: args,
            history,
        } => queue(&drain(args)?, *history).await,
        Which::Drain {
            drain: args,
            key_limit,
        } => drain_only(&drain(args)?, *key_limit).await,
        Which::Api { jobs } => async { api::run(&db.url, &binary("api")?, *jobs).await }.await,
    };
    db.stop();
    let _ = std::fs::remove_dir_all(&dir);
    let line = result?;
    println!("{line}");
    Ok(())
}

async fn drain_only(drain: &Drain, key_limit: bool) -> anyhow::Result<serde_json::Value> {
    let pool = engine::db::pool(&DatabaseSettings::for_url(&drain.url))?;
    engine::db::migrate(&pool).await?;
    let drain_per_s = drain.median(&pool, true).await?;
    if key_limit {
        let limited = drain.median_per_key(&pool).await?;
        return Ok(json!({
            "bench": "drain",
            "cpu": cpu_model(),
            "jobs": drain.args.jobs,
            "worker_concurrency": drain.args.concurrency,
            "drain_reps": drain.args.reps,
            "drain_per_s": drain_per_s.round(),
            "drain_per_s_key_limit_1": limited.round(),
            "key_limit_keys": LIMIT_KEYS,
        }));
    }
    Ok(json!({
        "bench": "drain",
        "cpu": cpu_model(),
        "jobs": drain.args.jobs,
        "worker_concurrency": drain.args.concurrency,
        "drain_reps": drain.args.reps,
        "drain_per_s": drain_per_s.round(),
    }))
}

async fn queue(drain: &Drain, history: usize) -> anyhow::Result<serde_json::Value> {
    let (url, worker_bin, jobs) = (
        drain.url.as_str(),
        drain.worker_bin.as_path(),
        drain.args.jobs,
    );
    let pool = engine::db::pool(&DatabaseSettings::for_url(url))?;
    engine::db::migrate(&pool).await?;
    let conn = pool.get().await?;
    let settings: Vec<String> = conn
        .query("SELECT name || '=' || setting FROM pg_settings WHERE name IN ('fsync', 'synchronous_commit', 'full_page_writes', 'shared_buffers') ORDER BY name", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let version: String = conn.query_one("SHOW server_version", &[]).await?.get(0);
    eprintln!("bench: PostgreSQL {version}, {}", settings.join(", "));
    drop(conn);

    // Bulk enqueue: one call, COPY.
    reset(&pool).await?;
    let batch: Vec<NewJob> = (0..jobs).map(|_| noop(json!({}))).collect();
    let t = Instant::now();
    enqueue_many(&pool.get().await?, &batch).await?;
    let enqueue_batch_per_s = jobs as f64 / t.elapsed().as_secs_f64();
    eprintln!("bench: enqueue_batch {enqueue_batch_per_s:.0}/s");

    // Single enqueues: each its own transaction (autocommit), one after another.
    reset(&pool).await?;
    let conn = pool.get().await?;
    let single = noop(json!({}));
    let n_single = 2_000;
    let t = Instant::now();
    for _ in 0..n_single {
        enqueue(&conn, &single).await?;
    }
    let enqueue_single_per_s = n_single as f64 / t.elapsed().as_secs_f64();
    drop(conn);
    eprintln!("bench: enqueue_single {enqueue_single_per_s:.0}/s");

    let drain_per_s = drain.median(&pool, true).await?;
    eprintln!("bench: drain {drain_per_s:.0}/s (median)");
    let drain_per_s_key_limit_1 = drain.median_per_key(&pool).await?;
    eprintln!(
        "bench: drain with a per-key limit of 1 over {LIMIT_KEYS} keys \
         {drain_per_s_key_limit_1:.0}/s (median)"
    );

    let (pickup_p50_ms, pickup_p99_ms) = pickup(&pool, url, worker_bin).await?;
    eprintln!("bench: pickup p50 {pickup_p50_ms:.2} ms, p99 {pickup_p99_ms:.2} ms");

    reset(&pool).await?;
    let t = Instant::now();
    pool.get()
        .await?
        .execute(
            "INSERT INTO jobs (queue, kind, args, state, attempt, attempted_at, attempted_by, finished_at)
             SELECT 'default', 'noop', '{}', 'completed', 1, now(), 'bench', now() FROM generate_series(1, $1::int)",
            &[&(history as i32)],
        )
        .await?;
    pool.get()
        .await?
        .batch_execute("VACUUM ANALYZE jobs")
        .await?;
    eprintln!(
        "bench: {history} finished jobs inserted in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let drain_per_s_1m_history = drain.median(&pool, false).await?;
    eprintln!("bench: drain with history {drain_per_s_1m_history:.0}/s (median)");

    Ok(json!({
        "bench": "queue",
        "postgres": version,
        "settings": settings.join(","),
        "cpu": cpu_model(),
        "jobs": jobs,
        "history": history,
        "worker_concurrency": drain.args.concurrency,
        "drain_reps": drain.args.reps,
        "enqueue_batch_per_s": enqueue_batch_per_s.round(),
        "enqueue_single_per_s": enqueue_single_per_s.round(),
        "drain_per_s": drain_per_s.round(),
        "drain_per_s_key_limit_1": drain_per_s_key_limit_1.round(),
        "key_limit_keys": LIMIT_KEYS,
        "pickup_p50_ms": (pickup_p50_ms * 100.0).round() / 100.0,
        "pickup_p99_ms": (pickup_p99_ms * 100.0).round() / 100.0,
        "drain_per_s_1m_history": drain_per_s_1m_history.round(),
    }))
}

/// Keys of the per-key-limited drain: its jobs take them in turn, each may run one at a time.
const LIMIT_KEYS: usize = 1000;

fn noop(args: serde_json::Value) -> NewJob {
    NewJob::from_json(&engine::jobs::noop::SPEC, args)
        .expect("noop args")
        .with(JobOptions {
            queue: Some("default".parse().expect("a queue name")),
            ..Default::default()
        })
}

/// Empty the jobs table and settle the server, so each timed step starts from the same state.
async fn reset(pool: &Pool) -> anyhow::Result<()> {
    let c = pool.get().await?;
    // One statement per call: VACUUM cannot run inside the implicit transaction of a batch.
    for sql in [
        "TRUNCATE jobs, periodic_ticks, workers, maintenance_runs",
        "VACUUM ANALYZE jobs",
        "CHECKPOINT",
    ] {
        c.batch_execute(sql).await?;
    }
    Ok(())
}

/// Whether any job is unfinished. Each `EXISTS` matches one partial index's predicate and
/// stops at its first row, so the poll stays cheap however the table looks: counting instead
/// was planned as a (parallel) sequential scan while the queue was full, and took 10 % of the
/// machine's CPU away from the very drain it watched.
const UNFINISHED: &str = "SELECT EXISTS (SELECT 1 FROM jobs WHERE state = 'available')
     OR EXISTS (SELECT 1 FROM jobs WHERE state = 'running')
     OR EXISTS (SELECT 1 FROM jobs WHERE state IN ('scheduled', 'retryable'))";

/// The drain measurement: one worker process with `concurrency` slots drains `jobs` noops.
struct Drain {
    url: String,
    worker_bin: std::path::PathBuf,
    args: DrainArgs,
}

impl Drain {
    /// The median rate of `reps` drains; with `empty`, each starts from an empty table,
    /// otherwise on top of whatever the table holds.
    async fn median(&self, pool: &Pool, empty: bool) -> anyhow::Result<f64> {
        let mut rates = Vec::with_capacity(self.args.reps.into());
        for _ in 0..self.args.reps {
            if empty {
                reset(pool).await?;
            }
            let rate = drain_queued(pool, self, None).await?;
            eprintln!("bench: one drain {rate:.0}/s");
            rates.push(rate);
        }
        rates.sort_by(f64::total_cmp);
        Ok(rates[rates.len() / 2])
    }

    /// Like [`Drain::median`] from an empty table, with the queue limited to one running job
    /// per key and the jobs spread over [`LIMIT_KEYS`] keys: the limited fetch's cost.
    async fn median_per_key(&self, pool: &Pool) -> anyhow::Result<f64> {
        let queue: QueueName = "default".parse().expect("a queue name");
        let per_key = QueueLimits {
            max_running_per_key: Some(1),
            ..Default::default()
        };
        limits::set(&pool.get().await?, &queue, &per_key).await?;
        let mut rates = Vec::with_capacity(self.args.reps.into());
        for _ in 0..self.args.reps {
            reset(pool).await?;
            let rate = drain_queued(pool, self, Some(LIMIT_KEYS)).await;
            if rate.is_err() {
                limits::set(&pool.get().await?, &queue, &QueueLimits::default()).await?;
            }
            let rate = rate?;
            eprintln!("bench: one per-key drain {rate:.0}/s");
            rates.push(rate);
        }
        limits::set(&pool.get().await?, &queue, &QueueLimits::default()).await?;
        rates.sort_by(f64::total_cmp);
        Ok(rates[rates.len() / 2])
    }
}

/// Enqueue `jobs` noops (on top of whatever the table holds) and time one worker process
/// draining them: jobs per second from the worker's start to the last completion in the
/// database. With `keys`, job `i` gets the concurrency key `k{i % keys}`.
async fn drain_queued(pool: &Pool, d: &Drain, keys: Option<usize>) -> anyhow::Result<f64> {
    let (url, worker_bin, jobs) = (&d.url, &d.worker_bin, d.args.jobs);
    let batch: Vec<NewJob> = (0..jobs)
        .map(|i| {
            let mut job = noop(json!({}));
            job.opts.concurrency_key = keys.map(|k| format!("k{}", i % k));
            job
        })
        .collect();
    enqueue_many(&pool.get().await?, &batch).await?;
    let c = pool.get().await?;
    c.batch_execute("VACUUM ANALYZE jobs").await?;
    c.batch_execute("CHECKPOINT").await?;
    print_fetch_plan(&c).await?;
    let t0: SystemTime = SystemTime::now();
    let mut worker = spawn_worker(url, worker_bin, d.args.concurrency)?;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let unfinished: bool = c.query_one(UNFINISHED, &[]).await?.get(0);
        if !unfinished {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "drain did not finish in time");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let last: chrono::DateTime<chrono::Utc> = c
        .query_one("SELECT max(finished_at) FROM jobs", &[])
        .await?
        .get(0);
    let twice: i64 = c
        .query_one("SELECT count(*) FROM jobs WHERE attempt <> 1", &[])
        .await?
        .get(0);
    anyhow::ensure!(twice == 0, "{twice} jobs ran more than once");
    stop_worker(&mut worker).await;
    let first: chrono::DateTime<chrono::Utc> = c
        .query_one(
            "SELECT min(attempted_at) FROM jobs WHERE finished_at >= $1",
            &[&chrono::DateTime::<chrono::Utc>::from(t0)],
        )
        .await?
        .get(0);
    eprintln!(
        "bench: worker start to first fetch {} ms, first fetch to last completion {} ms",
        (first - chrono::DateTime::<chrono::Utc>::from(t0)).num_milliseconds(),
        (last - first).num_milliseconds()
    );
    let secs = (last - chrono::DateTime::<chrono::Utc>::from(t0))
        .num_microseconds()
        .context("duration")? as f64
        / 1e6;
    Ok(jobs as f64 / secs)
}

/// Pickup latency of an idle worker: 200 single enqueues 20 ms apart; from the enqueue's
/// commit returning to the handler starting (both on this machine's clock).
async fn pickup(
    pool: &Pool,
    url: &str,
    worker_bin: &std::path::Path,
) -> anyhow::Result<(f64, f64)> {
    reset(pool).await?;
    let mut worker = spawn_worker(url, worker_bin, 16)?;
    let c = pool.get().await?;
    // Warm up: the worker is up and listening once a job completes.
    let warm = enqueue(&c, &noop(json!({}))).await?.id;
    wait_completed(&c, &[warm]).await?;
    let job = noop(json!({"report_start": true}));
    let mut sent = Vec::with_capacity(200);
    for _ in 0..200 {
        let id = enqueue(&c, &job).await?.id;
        sent.push((id, now_us()));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ids: Vec<i64> = sent.iter().map(|(id, _)| *id).collect();
    wait_completed(&c, &ids).await?;
    stop_worker(&mut worker).await;
    let rows = c
        .query(
            "SELECT id, (result->>'started_at_us')::bigint FROM jobs WHERE id = ANY($1)",
            &[&ids],
        )
        .await?;
    let started: std::collections::HashMap<i64, i64> =
        rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let mut lat: Vec<f64> = sent
        .iter()
        .map(|(id, at)| (started[id] - *at) as f64 / 1000.0)
        .collect();
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| lat[((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1];
    Ok((pct(0.50), pct(0.99)))
}

async fn wait_completed(c: &deadpool_postgres::Client, ids: &[i64]) -> anyhow::Result<()> {
    let ids = ids.to_vec();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let done: i64 = c
            .query_one(
                "SELECT count(*) FROM jobs WHERE id = ANY($1) AND state = 'completed'",
                &[&ids],
            )
            .await?
            .get(0);
        if done as usize == ids.len() {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "jobs did not complete");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros() as i64
}

fn spawn_worker(
    url: &str,
    worker_bin: &std::path::Path,
    concurrency: usize,
) -> anyhow::Result<tokio::process::Child> {
    Ok(tokio::process::Command::new(worker_bin)
        .env("DATABASE_URL", url)
        .env("WORKER_QUEUES", "default")
        .env("WORKER_CONCURRENCY", concurrency.to_string())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()?)
}

async fn stop_worker(child: &mut tokio::process::Child) {
    if let Some(pid) = child.id() {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
    }
    if tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
}

/// EXPLAIN ANALYZE of the fetch's inner scan, to stderr: it must stay an index scan on
/// `jobs_fetch_idx` however many finished jobs the table holds.
async fn print_fetch_plan(c: &deadpool_postgres::Client) -> anyhow::Result<()> {
    let rows = c
        .query(
            "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) SELECT id FROM jobs
              WHERE state = 'available' AND queue = 'default' AND run_at <= now()
                AND NOT EXISTS (SELECT 1 FROM queues WHERE name = 'default' AND paused)
              ORDER BY priority, run_at, id LIMIT 1000 FOR UPDATE SKIP LOCKED",
            &[],
        )
        .await?;
    let total: i64 = c.query_one("SELECT count(*) FROM jobs", &[]).await?.get(0);
    eprintln!("bench: fetch plan with {total} rows in jobs:");
    for r in rows {
        eprintln!("  {}", r.get::<_, String>(0));
    }
    Ok(())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default()
}
