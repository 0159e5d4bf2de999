//! The producer of one queue: fetches jobs in batches for the slots that are free and hands
//! them to the queue's apalis worker.
//!
//! It never fetches more jobs than there are free slots, so a fetched job starts at once and
//! its lease is not spent waiting. It wakes on a notification for its queue, on a poll tick
//! (the fallback, and the only wake-up in polling-only mode), or straight away after a full
//! batch, since more jobs are probably waiting.
//!
//! A queue with a concurrency limit is fetched by the limited fetch, which takes the queue's
//! lock in PostgreSQL; every other queue by the one-statement fetch. Which one is decided
//! from the queue's limits, read again at most every [`LIMITS_REFRESH`]: the one-statement
//! fetch refuses a limited queue, so a producer that has not yet seen a new limit fetches
//! nothing rather than too much. A job of a limited queue that stops running wakes the
//! queue's workers (a trigger in the database), so a freed slot is taken at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use engine::config::{ConfigError, Source, millis, positive};
use engine::names::QueueName;
use engine::queue::limits::{KeyPath, QueueLimits};
use engine::queue::{FetchedJob, fetch, limits};
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use super::lease::Held;
use super::metrics::QueueMetrics;

/// The queues served and how they are fetched.
#[derive(Debug, Clone)]
pub struct ProducerSettings {
    /// The queues served, each with its number of job slots.
    pub queues: Vec<(String, usize)>,
    /// Most jobs fetched in one statement.
    pub fetch_batch: usize,
    /// How long a fetched job is leased; renewed every third of it while the job runs.
    pub lease: Duration,
    /// Fallback poll of each queue when no notification arrives (and the only wake-up in
    /// polling-only mode).
    pub poll_interval: Duration,
    /// Default concurrency limits (`WORKER_QUEUE_LIMITS`), written at start for each queue
    /// whose limits no operator has set through the API.
    pub limit_defaults: Vec<(QueueName, QueueLimits)>,
}

/// Default `WORKER_CONCURRENCY`: job slots per queue.
pub const DEFAULT_CONCURRENCY: u64 = 16;
/// Default `WORKER_FETCH_BATCH`.
pub const DEFAULT_FETCH_BATCH: u64 = 1000;
/// Default `WORKER_LEASE_MS`: 30 s, renewed every 10 s, so a killed worker's jobs run again
/// within about half a minute, while a renewal can miss twice before the lease is lost.
pub const DEFAULT_LEASE_MS: u64 = 30_000;
/// Shortest `WORKER_LEASE_MS`: renewed every third, a lease shorter than this would keep the
/// lease loop busy.
pub const MIN_LEASE_MS: u64 = 300;
/// Default `WORKER_POLL_INTERVAL_MS`.
pub const DEFAULT_POLL_INTERVAL_MS: u64 = 1_000;
/// How long a producer trusts what it read of its queue's limits: a limit set or removed at
/// run time changes the fetch it uses within this (and the poll interval).
pub const LIMITS_REFRESH: Duration = Duration::from_secs(1);

impl ProducerSettings {
    /// Read and validate. `queues` and `concurrency` are the command-line flags, which win over
    /// `WORKER_QUEUES` and `WORKER_CONCURRENCY`.
    pub fn from_source(
        src: &(impl Source + ?Sized),
        queues: Option<String>,
        concurrency: Option<String>,
    ) -> Result<Self, ConfigError> {
        let concurrency = match concurrency {
            Some(c) => c
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| {
                    ConfigError::new(
                        "WORKER_CONCURRENCY",
                        format!("--concurrency {c:?} is not a positive integer"),
                    )
                })?,
            None => positive(src, "WORKER_CONCURRENCY", DEFAULT_CONCURRENCY)?,
        } as usize;
        let queues = parse_queues(
            &queues
                .or_else(|| src.get("WORKER_QUEUES"))
                .unwrap_or_else(|| "default".into()),
            concurrency,
        )?;
        let lease = millis(src, "WORKER_LEASE_MS", DEFAULT_LEASE_MS)?;
        if lease < Duration::from_millis(MIN_LEASE_MS) {
            return Err(ConfigError::new(
                "WORKER_LEASE_MS",
                format!("must be at least {MIN_LEASE_MS}"),
            ));
        }
        Ok(Self {
            queues,
            fetch_batch: positive(src, "WORKER_FETCH_BATCH", DEFAULT_FETCH_BATCH)? as usize,
            lease,
            poll_interval: millis(src, "WORKER_POLL_INTERVAL_MS", DEFAULT_POLL_INTERVAL_MS)?,
            limit_defaults: parse_limits(&src.get("WORKER_QUEUE_LIMITS").unwrap_or_default())?,
        })
    }

    /// Job slots over all queues.
    pub fn total_concurrency(&self) -> usize {
        self.queues.iter().map(|(_, n)| n).sum()
    }
}

/// `email,uploads:4`: queue names, each optionally with its own slot count.
fn parse_queues(raw: &str, default_slots: usize) -> Result<Vec<(String, usize)>, ConfigError> {
    let mut out: Vec<(String, usize)> = Vec::new();
    for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, slots) = match part.split_once(':') {
            Some((n, s)) => (
                n.trim(),
                s.trim()
                    .parse::<usize>()
                    .ok()
                    .filter(|&s| s > 0)
                    .ok_or_else(|| {
                        ConfigError::new(
                            "WORKER_QUEUES",
                            format!("{part:?}: slots must be a positive integer"),
                        )
                    })?,
            ),
            None => (part, default_slots),
        };
        engine::names::QueueName::parse(name)
            .map_err(|e| ConfigError::new("WORKER_QUEUES", e.to_string()))?;
        if out.iter().any(|(n, _)| n == name) {
            return Err(ConfigError::new(
                "WORKER_QUEUES",
                format!("{name:?} is listed twice"),
            ));
        }
        out.push((name.to_owned(), slots));
    }
    if out.is_empty() {
        return Err(ConfigError::new("WORKER_QUEUES", "names no queue"));
    }
    Ok(out)
}

/// `uploads max_running=3; forecasts per_key=1 key=args.outlet_id`: default limits per
/// queue, `;` between queues.
fn parse_limits(raw: &str) -> Result<Vec<(QueueName, QueueLimits)>, ConfigError> {
    const NAME: &str = "WORKER_QUEUE_LIMITS";
    let mut out: Vec<(QueueName, QueueLimits)> = Vec::new();
    for part in raw.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = |why: String| ConfigError::new(NAME, format!("{part:?}: {why}"));
        let mut words = part.split_whitespace();
        let queue =
            QueueName::parse(words.next().unwrap_or_default()).map_err(|e| bad(e.to_string()))?;
        let mut limits = QueueLimits::default();
        for word in words {
            let (k, v) = word
                .split_once('=')
                .ok_or_else(|| bad(format!("{word:?} is not key=value")))?;
            let n = || {
                v.parse::<i32>()
                    .ok()
                    .filter(|&n| n >= 1)
                    .ok_or_else(|| bad(format!("{k} must be a positive integer")))
            };
            match k {
                "max_running" => limits.max_running = Some(n()?),
                "per_key" => limits.max_running_per_key = Some(n()?),
                "key" => limits.key_path = Some(KeyPath::parse(v).map_err(|e| bad(e.to_string()))?),
                _ => return Err(bad(format!("unknown limit {k:?}"))),
            }
        }
        if !limits.is_limited() {
            return Err(bad("sets neither max_running nor per_key".into()));
        }
        if out.iter().any(|(q, _)| *q == queue) {
            return Err(bad("the queue is listed twice".into()));
        }
        out.push((queue, limits));
    }
    Ok(out)
}

/// One queue's producer.
pub struct Producer {
    /// The queue.
    pub queue: Arc<str>,
    /// The database.
    pub pool: Pool,
    /// This worker's id.
    pub worker: Arc<str>,
    /// Lease of each fetched job.
    pub lease: Duration,
    /// Most jobs per fetch.
    pub batch: usize,
    /// Poll even without a notification this often.
    pub poll_interval: Duration,
    /// Free job slots of this queue; the backend's layer returns each one.
    pub slots: Arc<Semaphore>,
    /// Where fetched jobs go.
    pub tx: mpsc::Sender<FetchedJob>,
    /// Notified when the queue has new jobs.
    pub wake: Arc<Notify>,
    /// Jobs this worker holds.
    pub held: Arc<Held>,
    /// This queue's metrics.
    pub metrics: Arc<QueueMetrics>,
}

impl Producer {
    /// Fetch until `stop`.
    pub async fn run(self, stop: CancellationToken) {
        let mut error_delay = Duration::from_millis(100);
        // When the last fetch was lost with its connection: it may have claimed jobs whose
        // reply never arrived. Those are given back before the next fetch.
        let mut lost_since: Option<Instant> = None;
        let mut limited = Limited::default();
        loop {
            // Wait for a free slot, then take every free slot up to a batch.
            let first = tokio::select! {
                p = self.slots.acquire() => p.expect("slots are never closed"),
                _ = stop.cancelled() => return,
            };
            first.forget();
            let extra = self.slots.available_permits().min(self.batch - 1);
            if let Ok(p) = self.slots.try_acquire_many(extra as u32) {
                p.forget();
            }
            let want = extra + 1;
            let started = Instant::now();
            let fetched = match lost_since {
                Some(since) => match self.hand_back_unseen(since).await {
                    Ok(()) => {
                        lost_since = None;
                        self.fetch(want, &mut limited).await
                    }
                    Err(e) => Err(e),
                },
                None => self.fetch(want, &mut limited).await,
            };
            let got = fetched.as_ref().map_or(0, Vec::len);
            self.slots.add_permits(want - got);
            match fetched {
                Ok(jobs) => {
                    error_delay = Duration::from_millis(100);
                    self.metrics.fetched(got);
                    self.held.add(jobs.iter().map(|j| (j.id, j.attempt)));
                    for job in jobs {
                        // Room is guaranteed: the channel holds as many jobs as there are slots.
                        if self.tx.send(job).await.is_err() {
                            return; // the worker has stopped; held jobs are handed back
                        }
                    }
                    // A limited fetch may stop short at a window of rows whose keys are busy;
                    // the next one skips those keys, so go on while fetches make progress.
                    if got == want || (limited.yes && got > 0) {
                        continue;
                    }
                }
                Err(e) => {
                    if e.is_connection_lost() && lost_since.is_none() {
                        lost_since = Some(started);
                    }
                    tracing::warn!(queue = %self.queue, error = %e, "fetch failed; backing off");
                    tokio::select! {
                        _ = tokio::time::sleep(error_delay) => {}
                        _ = stop.cancelled() => return,
                    }
                    error_delay = (error_delay * 2).min(Duration::from_secs(5));
                    continue;
                }
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(self.poll_interval) => {}
                _ = stop.cancelled() => return,
            }
        }
    }

    /// Give back the jobs of this queue that a fetch lost in transit claimed for this worker
    /// since `since` (plus a second of margin for clocks and round trips): running
    /// under our id, held by nobody here. Only this producer fetches the queue for this
    /// worker, and every job it received is held until its outcome is written, so they are
    /// exactly the jobs no handler saw; they go back with their attempt unspent.
    async fn hand_back_unseen(&self, since: Instant) -> Result<(), engine::db::DbError> {
        let conn = self.pool.get().await?;
        let within = since.elapsed();
        let n = fetch::hand_back_unseen(
            &conn,
            &self.queue,
            &self.worker,
            &self.held.attempts(),
            within + Duration::from_secs(1),
        )
        .await?;
        if n > 0 {
            tracing::warn!(queue = %self.queue, num_jobs = n, "a fetch was lost in transit; gave its jobs back unspent");
        }
        Ok(())
    }

    async fn fetch(
        &self,
        limit: usize,
        limited: &mut Limited,
    ) -> Result<Vec<FetchedJob>, engine::db::DbError> {
        let mut conn = self.pool.get().await?;
        if limited
            .read_at
            .is_none_or(|at| at.elapsed() >= LIMITS_REFRESH)
        {
            limited.yes = limits::get(&conn, &self.queue).await?.is_limited();
            limited.read_at = Some(Instant::now());
        }
        if limited.yes {
            fetch::fetch_limited(&mut conn, &self.queue, &self.worker, self.lease, limit).await
        } else {
            fetch::fetch(&conn, &self.queue, &self.worker, self.lease, limit).await
        }
    }
}

/// Whether the queue has a limit, as last read.
#[derive(Default)]
struct Limited {
    yes: bool,
    read_at: Option<Instant>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(
        env: &[(&str, &str)],
        queues: Option<&str>,
        conc: Option<&str>,
    ) -> Result<ProducerSettings, ConfigError> {
        ProducerSettings::from_source(env, queues.map(Into::into), conc.map(Into::into))
    }

    #[test]
    fn flags_win_over_env_and_queues_take_slot_counts() {
        let s = settings(
            &[("WORKER_QUEUES", "x"), ("WORKER_CONCURRENCY", "2")],
            Some("email, uploads:4"),
            Some("8"),
        )
        .unwrap();
        assert_eq!(
            s.queues,
            vec![("email".to_string(), 8), ("uploads".to_string(), 4)]
        );
        assert_eq!(s.total_concurrency(), 12);
        let s = settings(
            &[("WORKER_QUEUES", "x"), ("WORKER_CONCURRENCY", "2")],
            None,
            None,
        )
        .unwrap();
        assert_eq!(s.queues, vec![("x".to_string(), 2)]);
        let s = settings(&[], None, None).unwrap();
        assert_eq!(s.queues, vec![("default".to_string(), 16)]);
        assert_eq!(s.lease, Duration::from_millis(DEFAULT_LEASE_MS));
    }

    #[test]
    fn each_bad_setting_is_named() {
        for (env, queues, conc, name) in [
            (vec![], Some("a,a"), None, "WORKER_QUEUES"),
            (vec![], Some("a b"), None, "WORKER_QUEUES"),
            (vec![], Some("a:0"), None, "WORKER_QUEUES"),
            (vec![], Some(" , "), None, "WORKER_QUEUES"),
            (vec![], None, Some("many"), "WORKER_CONCURRENCY"),
            (
                vec![("WORKER_CONCURRENCY", "0")],
                None,
                None,
                "WORKER_CONCURRENCY",
            ),
            (
                vec![("WORKER_LEASE_MS", "10")],
                None,
                None,
                "WORKER_LEASE_MS",
            ),
            (
                vec![("WORKER_FETCH_BATCH", "0")],
                None,
                None,
                "WORKER_FETCH_BATCH",
            ),
        ] {
            let err = settings(&env, queues, conc).unwrap_err();
            assert_eq!(err.name, name, "{err}");
        }
    }

    #[test]
    fn default_limits_parse_and_bad_ones_are_named() {
        let s = settings(
            &[(
                "WORKER_QUEUE_LIMITS",
                "uploads max_running=3; forecasts per_key=1 key=args.outlet_id;",
            )],
            None,
            None,
        )
        .unwrap();
        assert_eq!(s.limit_defaults.len(), 2);
        assert_eq!(s.limit_defaults[0].1.max_running, Some(3));
        let f = &s.limit_defaults[1].1;
        assert_eq!(f.max_running_per_key, Some(1));
        assert_eq!(f.key_path.as_ref().unwrap().to_string(), "args.outlet_id");
        for bad in [
            "uploads",
            "uploads max_running=0",
            "uploads max=3",
            "uploads per_key=1 key=outlet_id",
            "a b max_running=1",
            "a max_running=1; a per_key=1",
        ] {
            let err = settings(&[("WORKER_QUEUE_LIMITS", bad)], None, None).unwrap_err();
            assert_eq!(err.name, "WORKER_QUEUE_LIMITS", "{bad}: {err}");
        }
    }
}
