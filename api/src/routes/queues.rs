//! `/api/v1/queues` and `/api/v1/workers` (operators): per-queue statistics, pause and
//! resume, and the live workers.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use domain::accounts::Role;
use engine::db::DbError;
use engine::queue::limits::{KeyPath, QueueLimits};
use engine::queue::{JobState, admin, control, limits};
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};

use super::{Tag, audit, queue_name};
use crate::auth::{Auth, Credentials};
use crate::error::ApiError;

/// The queue and worker operations.
pub struct QueuesApi {
    auth: Arc<Auth>,
}

impl QueuesApi {
    /// The operations.
    pub fn new(auth: Arc<Auth>) -> Self {
        Self { auth }
    }
}

/// Jobs of a queue by state.
#[derive(Object, Default)]
pub struct StateCounts {
    /// May be fetched now.
    pub available: i64,
    /// Waiting for their run_at.
    pub scheduled: i64,
    /// Held by workers.
    pub running: i64,
    /// Failed an attempt, will run again.
    pub retryable: i64,
    /// Succeeded.
    pub completed: i64,
    /// Failed for good.
    pub discarded: i64,
    /// Cancelled.
    pub cancelled: i64,
}

/// One queue.
#[derive(Object)]
pub struct Queue {
    /// Its name.
    pub name: String,
    /// Workers do not fetch from it.
    pub paused: bool,
    /// Jobs by state.
    pub counts: StateCounts,
    /// Seconds the oldest available job has been due; absent when none is available.
    pub oldest_available_age_s: Option<f64>,
    /// Jobs completed per minute over the last hour.
    pub completed_per_minute: f64,
    /// Jobs discarded (failed for good) per minute over the last hour.
    pub failed_per_minute: f64,
    /// Its global concurrency limits.
    pub limits: Limits,
}

/// A queue's global concurrency limits, across every worker; an absent limit is no limit.
#[derive(Object, Default)]
pub struct Limits {
    /// Most jobs of the queue running at once.
    pub max_running: Option<i32>,
    /// Most jobs with the same concurrency key running at once. A job's key is the
    /// `concurrency_key` it was enqueued with, else its args at `key_path`; a job without a
    /// key is bound by `max_running` alone.
    pub max_running_per_key: Option<i32>,
    /// Where in a job's args its key is, e.g. `args.outlet_id`.
    pub key_path: Option<String>,
}

impl From<QueueLimits> for Limits {
    fn from(l: QueueLimits) -> Self {
        Limits {
            max_running: l.max_running,
            max_running_per_key: l.max_running_per_key,
            key_path: l.key_path.map(|p| p.to_string()),
        }
    }
}

/// A queue after its limits were set.
#[derive(Object)]
pub struct QueueLimitsSet {
    /// Its name.
    pub name: String,
    /// Its limits now.
    pub limits: Limits,
}

/// A queue after pause or resume.
#[derive(Object)]
pub struct QueuePaused {
    /// Its name.
    pub name: String,
    /// Whether workers skip it now.
    pub paused: bool,
}

/// A live worker process.
#[derive(Object)]
pub struct Worker {
    /// Unique per process start.
    pub id: String,
    /// Its host.
    pub host: String,
    /// Its process id.
    pub pid: i32,
    /// The queues it serves.
    pub queues: Vec<String>,
    /// Its job slots.
    pub concurrency: i32,
    /// Jobs it held at its last heartbeat.
    pub in_flight: i32,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// Its last heartbeat.
    pub last_heartbeat: DateTime<Utc>,
}

#[OpenApi(tag = "Tag::Queues")]
impl QueuesApi {
    /// Every queue with jobs or settings: counts by state, paused, age of the oldest
    /// available job, and completed and failed jobs per minute over the last hour
    /// (operator).
    #[oai(path = "/api/v1/queues", method = "get")]
    async fn list(&self, creds: Credentials) -> Result<Json<Vec<Queue>>, ApiError> {
        self.auth.require(&creds, Role::Operator).await?;
        let conn = self.auth.pool().get().await?;
        let stats = admin::queue_stats(&conn).await?;
        Ok(Json(
            stats
                .into_iter()
                .map(|q| {
                    let mut c = StateCounts::default();
                    for (state, n) in q.counts {
                        let slot = match state {
                            JobState::Available => &mut c.available,
                            JobState::Scheduled => &mut c.scheduled,
                            JobState::Running => &mut c.running,
                            JobState::Retryable => &mut c.retryable,
                            JobState::Completed => &mut c.completed,
                            JobState::Discarded => &mut c.discarded,
                            JobState::Cancelled => &mut c.cancelled,
                        };
                        *slot = n;
                    }
                    Queue {
                        name: q.name,
                        paused: q.paused,
                        counts: c,
                        oldest_available_age_s: q.oldest_available_age_s,
                        completed_per_minute: q.completed_per_minute,
                        failed_per_minute: q.failed_per_minute,
                        limits: q.limits.into(),
                    }
                })
                .collect(),
        ))
    }

    /// Stop workers fetching from a queue; running jobs finish (operator).
    #[oai(path = "/api/v1/queues/:name/pause", method = "post")]
    async fn pause(
        &self,
        creds: Credentials,
        name: Path<String>,
    ) -> Result<Json<QueuePaused>, ApiError> {
        self.set_paused(creds, name.0, true).await
    }

    /// Let workers fetch from a queue again (operator).
    #[oai(path = "/api/v1/queues/:name/resume", method = "post")]
    async fn resume(
        &self,
        creds: Credentials,
        name: Path<String>,
    ) -> Result<Json<QueuePaused>, ApiError> {
        self.set_paused(creds, name.0, false).await
    }

    /// Set a queue's global concurrency limits, replacing the previous ones (absent fields
    /// remove a limit). Every worker uses them from its next fetch, within a second or two;
    /// jobs already running finish even above a lowered limit (operator).
    #[oai(path = "/api/v1/queues/:name/limits", method = "put")]
    async fn set_limits(
        &self,
        creds: Credentials,
        name: Path<String>,
        body: Json<Limits>,
    ) -> Result<Json<QueueLimitsSet>, ApiError> {
        let who = self.auth.require(&creds, Role::Operator).await?;
        let name = queue_name("name", &name.0)?;
        let body = body.0;
        let new = QueueLimits {
            max_running: body.max_running,
            max_running_per_key: body.max_running_per_key,
            key_path: body.key_path.as_deref().map(KeyPath::parse).transpose()?,
        };
        new.validate()?;
        let mut conn = self.auth.pool().get().await?;
        let tx = conn.transaction().await.map_err(DbError::from)?;
        limits::set(&tx, &name, &new).await?;
        let detail = serde_json::to_value(&new).ok();
        audit(
            &tx,
            &who,
            "queue.limits",
            Some(format!("queue:{name}")),
            detail,
            1,
        )
        .await?;
        tx.commit().await.map_err(DbError::from)?;
        Ok(Json(QueueLimitsSet {
            name: name.into(),
            limits: new.into(),
        }))
    }

    /// The live workers: queues, concurrency, in-flight jobs, last heartbeat (operator).
    #[oai(path = "/api/v1/workers", method = "get")]
    async fn workers(&self, creds: Credentials) -> Result<Json<Vec<Worker>>, ApiError> {
        self.auth.require(&creds, Role::Operator).await?;
        let conn = self.auth.pool().get().await?;
        Ok(Json(
            admin::list_workers(&conn)
                .await?
                .into_iter()
                .map(|w| Worker {
                    id: w.id,
                    host: w.host,
                    pid: w.pid,
                    queues: w.queues,
                    concurrency: w.concurrency,
                    in_flight: w.in_flight,
                    started_at: w.started_at,
                    last_heartbeat: w.heartbeat_at,
                })
                .collect(),
        ))
    }
}

impl QueuesApi {
    async fn set_paused(
        &self,
        creds: Credentials,
        name: String,
        paused: bool,
    ) -> Result<Json<QueuePaused>, ApiError> {
        let who = self.auth.require(&creds, Role::Operator).await?;
        let name = queue_name("name", &name)?;
        let mut conn = self.auth.pool().get().await?;
        let tx = conn.transaction().await.map_err(DbError::from)?;
        if paused {
            control::pause(&tx, &name).await?;
        } else {
            control::resume(&tx, &name).await?;
        }
        let action = if paused {
            "queue.pause"
        } else {
            "queue.resume"
        };
        audit(&tx, &who, action, Some(format!("queue:{name}")), None, 1).await?;
        tx.commit().await.map_err(DbError::from)?;
        Ok(Json(QueuePaused {
            name: name.into(),
            paused,
        }))
    }
}
