//! `/api/v1/jobs` (operators): enqueue a job of a registered kind, list and inspect jobs,
//! retry or cancel one, and retry, cancel or delete every job matching a filter.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use domain::accounts::Role;
use engine::db::DbError;
use engine::queue::admin::{self, BULK_BATCH, JobFilter};
use engine::queue::{JobOptions, JobRow, JobState, NewJob, control};
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Enum, Object, OpenApi};
use serde_json::Value;

use super::{Tag, audit, cursor, field_error, page_size, queue_name};
use crate::auth::{Auth, Credentials};
use crate::error::ApiError;
use crate::request_id::current_request_id;

/// Most tags a job may carry, and their longest length.
const MAX_TAGS: usize = 20;
const MAX_TAG_CHARS: usize = 64;

/// The job operations.
pub struct JobsApi {
    auth: Arc<Auth>,
}

impl JobsApi {
    /// The operations.
    pub fn new(auth: Arc<Auth>) -> Self {
        Self { auth }
    }
}

/// A job state.
#[derive(Enum, Clone, Copy, PartialEq, Eq)]
#[oai(rename_all = "snake_case")]
pub enum State {
    /// May be fetched now.
    Available,
    /// Waits for its run_at.
    Scheduled,
    /// Held by a worker.
    Running,
    /// Failed an attempt, will run again.
    Retryable,
    /// Final: succeeded.
    Completed,
    /// Final: failed for good.
    Discarded,
    /// Final: cancelled.
    Cancelled,
}

impl From<State> for JobState {
    fn from(s: State) -> Self {
        match s {
            State::Available => JobState::Available,
            State::Scheduled => JobState::Scheduled,
            State::Running => JobState::Running,
            State::Retryable => JobState::Retryable,
            State::Completed => JobState::Completed,
            State::Discarded => JobState::Discarded,
            State::Cancelled => JobState::Cancelled,
        }
    }
}

/// A job to enqueue.
#[derive(Object)]
pub struct EnqueueRequest {
    /// A registered kind, e.g. `noop`.
    pub kind: String,
    /// The kind's args; checked against the kind. Default `{}`.
    pub args: Option<Value>,
    /// The queue; default: the kind's.
    pub queue: Option<String>,
    /// 0 (first) to 9 (last); default 0.
    pub priority: Option<i16>,
    /// Not before this time; default now.
    pub run_at: Option<DateTime<Utc>>,
    /// Attempts before the job is discarded; default: the kind's.
    pub max_attempts: Option<i32>,
    /// At most one unfinished job per key: a second enqueue returns the first job.
    pub unique_key: Option<String>,
    /// The job's key for its queue's per-key concurrency limit (1 to 512 characters); when
    /// absent, the queue's key path into the args gives it, if the queue has one.
    pub concurrency_key: Option<String>,
    /// Labels for filtering (at most 20, each 1 to 64 characters).
    pub tags: Option<Vec<String>>,
}

/// An enqueued job.
#[derive(Object)]
pub struct EnqueuedJob {
    /// The job's id (the existing job's for a duplicate unique key).
    pub id: i64,
    /// True when an unfinished job with the same unique key already existed.
    pub duplicate: bool,
}

/// Answer of an enqueue.
#[derive(ApiResponse)]
pub enum EnqueueResponse {
    /// Enqueued.
    #[oai(status = 201)]
    Created(Json<EnqueuedJob>),
    /// An unfinished job with the same unique key exists; its id is returned.
    #[oai(status = 200)]
    Existing(Json<EnqueuedJob>),
}

/// One failed attempt.
#[derive(Object)]
pub struct AttemptError {
    /// The attempt (1-based).
    pub attempt: i32,
    /// When it failed.
    pub at: DateTime<Utc>,
    /// `error`, `permanent`, `timeout`, `panic`, `lease_expired`, `unknown_kind`, `bad_args`.
    pub kind: String,
    /// The error's message.
    pub message: String,
}

/// A job, every field.
#[derive(Object)]
pub struct Job {
    /// Its id.
    pub id: i64,
    /// Its queue.
    pub queue: String,
    /// Its kind.
    pub kind: String,
    /// Its args.
    pub args: Value,
    /// Where it is in its life.
    pub state: State,
    /// 0 runs first, 9 last.
    pub priority: i16,
    /// Attempts started so far.
    pub attempt: i32,
    /// Attempts before it is discarded.
    pub max_attempts: i32,
    /// Not run before this time.
    pub run_at: DateTime<Utc>,
    /// When its latest attempt started.
    pub attempted_at: Option<DateTime<Utc>>,
    /// The worker of its latest attempt.
    pub worker: Option<String>,
    /// While running: when the worker's lease ends unless renewed.
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// Every failed attempt, oldest first.
    pub errors: Vec<AttemptError>,
    /// What the handler returned on success.
    pub result: Option<Value>,
    /// Its unique key.
    pub unique_key: Option<String>,
    /// Its tags.
    pub tags: Vec<String>,
    /// Context such as the request that enqueued it.
    pub meta: Value,
    /// When it was enqueued.
    pub created_at: DateTime<Utc>,
    /// When it reached a final state.
    pub finished_at: Option<DateTime<Utc>>,
}

fn state(s: JobState) -> State {
    match s {
        JobState::Available => State::Available,
        JobState::Scheduled => State::Scheduled,
        JobState::Running => State::Running,
        JobState::Retryable => State::Retryable,
        JobState::Completed => State::Completed,
        JobState::Discarded => State::Discarded,
        JobState::Cancelled => State::Cancelled,
    }
}

impl From<JobRow> for Job {
    fn from(j: JobRow) -> Self {
        Job {
            id: j.id,
            queue: j.queue,
            kind: j.kind,
            args: j.args,
            state: state(j.state),
            priority: j.priority,
            attempt: j.attempt,
            max_attempts: j.max_attempts,
            run_at: j.run_at,
            attempted_at: j.attempted_at,
            worker: j.attempted_by,
            lease_expires_at: j.lease_expires_at,
            errors: j
                .errors
                .into_iter()
                .map(|e| AttemptError {
                    attempt: e.attempt,
                    at: e.at,
                    kind: e.kind,
                    message: e.message,
                })
                .collect(),
            result: j.result,
            unique_key: j.unique_key,
            tags: j.tags,
            meta: j.meta,
            created_at: j.created_at,
            finished_at: j.finished_at,
        }
    }
}

/// A page of jobs.
#[derive(Object)]
pub struct JobPage {
    /// Newest first.
    pub jobs: Vec<Job>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// Which jobs a bulk action is about. At least one criterion is required.
#[derive(Object, Default)]
pub struct BulkFilter {
    /// Only this queue.
    pub queue: Option<String>,
    /// Only this kind.
    pub kind: Option<String>,
    /// Only this state.
    pub state: Option<State>,
    /// Only jobs with this tag.
    pub tag: Option<String>,
    /// Only jobs created at or after this time.
    pub created_after: Option<DateTime<Utc>>,
    /// Only jobs created before this time.
    pub created_before: Option<DateTime<Utc>>,
}

impl TryFrom<BulkFilter> for JobFilter {
    type Error = ApiError;

    fn try_from(f: BulkFilter) -> Result<Self, ApiError> {
        Ok(JobFilter {
            queue: f
                .queue
                .as_deref()
                .map(|q| queue_name("queue", q))
                .transpose()?,
            kind: f.kind,
            state: f.state.map(JobState::from),
            tag: f.tag,
            created_after: f.created_after,
            created_before: f.created_before,
        })
    }
}

/// How many jobs a bulk action changed.
#[derive(Object)]
pub struct BulkResult {
    /// Jobs changed.
    pub count: u64,
}

/// A job after a retry or cancel.
#[derive(Object)]
pub struct JobAction {
    /// The job's id.
    pub id: i64,
    /// Its state before the action.
    pub previous_state: State,
    /// Its state now.
    pub state: State,
}

#[OpenApi(prefix_path = "/api/v1/jobs", tag = "Tag::Jobs")]
impl JobsApi {
    /// Enqueue a job of a registered kind (operator). Unknown kinds, args the kind refuses
    /// and out-of-range options answer 422 with `details.field_errors`. The job's meta
    /// records the request id and the caller.
    #[oai(path = "/", method = "post")]
    async fn enqueue(
        &self,
        creds: Credentials,
        body: Json<EnqueueRequest>,
    ) -> Result<EnqueueResponse, ApiError> {
        let who = self.auth.require(&creds, Role::Operator).await?;
        let r = body.0;
        let tags = r.tags.unwrap_or_default();
        if tags.len() > MAX_TAGS
            || tags
                .iter()
                .any(|t| t.is_empty() || t.chars().count() > MAX_TAG_CHARS)
        {
            return Err(field_error(
                "tags",
                format!("at most {MAX_TAGS}, each 1 to {MAX_TAG_CHARS} characters"),
            ));
        }
        let mut meta = serde_json::Map::new();
        if let Some(id) = current_request_id() {
            meta.insert("request_id".into(), id.into());
        }
        meta.insert("enqueued_by".into(), who.actor().into());
        let job = NewJob::from_json(
            domain::jobs::kind(&r.kind).map_err(engine::queue::QueueError::from)?,
            r.args.unwrap_or_else(|| serde_json::json!({})),
        )?
        .with(JobOptions {
            queue: r
                .queue
                .as_deref()
                .map(|q| queue_name("queue", q))
                .transpose()?,
            priority: r.priority,
            run_at: r.run_at,
            max_attempts: r.max_attempts,
            unique_key: r.unique_key,
            concurrency_key: r.concurrency_key,
            tags,
            meta,
        });
        let mut conn = self.auth.pool().get().await?;
        let tx = conn.transaction().await.map_err(DbError::from)?;
        let e = engine::queue::enqueue(&tx, &job).await?;
        let target = Some(format!("job:{}", e.id));
        let count = u64::from(!e.duplicate);
        audit(&tx, &who, "job.enqueue", target, None, count).await?;
        tx.commit().await.map_err(DbError::from)?;
        let out = Json(EnqueuedJob {
            id: e.id,
            duplicate: e.duplicate,
        });
        Ok(if e.duplicate {
            EnqueueResponse::Existing(out)
        } else {
            EnqueueResponse::Created(out)
        })
    }

    /// Jobs, newest first, filtered (operator). Pages of `limit` (default 50, at most 500);
    /// pass `next_cursor` back as `cursor` for the next page.
    #[oai(path = "/", method = "get")]
    #[allow(clippy::too_many_arguments)]
    async fn list(
        &self,
        creds: Credentials,
        /// Only this queue.
        queue: Query<Option<String>>,
        /// Only this kind.
        kind: Query<Option<String>>,
        /// Only this state.
        state: Query<Option<State>>,
        /// Only jobs with this tag.
        tag: Query<Option<String>>,
        /// Only jobs created at or after this time.
        created_after: Query<Option<DateTime<Utc>>>,
        /// Only jobs created before this time.
        created_before: Query<Option<DateTime<Utc>>>,
        /// From a previous page's `next_cursor`.
        cursor: Query<Option<String>>,
        /// Page size, 1 to 500.
        limit: Query<Option<u32>>,
    ) -> Result<Json<JobPage>, ApiError> {
        self.auth.require(&creds, Role::Operator).await?;
        let limit = page_size(limit.0)?;
        let before = self::cursor(cursor.0.as_deref())?;
        let filter = JobFilter {
            queue: queue
                .0
                .as_deref()
                .map(|q| queue_name("queue", q))
                .transpose()?,
            kind: kind.0,
            state: state.0.map(JobState::from),
            tag: tag.0,
            created_after: created_after.0,
            created_before: created_before.0,
        };
        let conn = self.auth.pool().get().await?;
        let rows = admin::list_jobs(&conn, &filter, before, limit).await?;
        let next_cursor = (rows.len() as i64 == limit)
            .then(|| rows.last().map(|j| j.id.to_string()))
            .flatten();
        Ok(Json(JobPage {
            jobs: rows.into_iter().map(Job::from).collect(),
            next_cursor,
        }))
    }

    /// One job with its args, state, every attempt's error, result, timestamps and worker
    /// (operator).
    #[oai(path = "/:id", method = "get")]
    async fn get(&self, creds: Credentials, id: Path<i64>) -> Result<Json<Job>, ApiError> {
        self.auth.require(&creds, Role::Operator).await?;
        let conn = self.auth.pool().get().await?;
        control::get(&conn, id.0)
            .await?
            .map(|j| Json(j.into()))
            .ok_or_else(|| ApiError::not_found("no such job"))
    }

    /// Run a waiting or finished job again now, with a fresh attempt if its budget is used
    /// (operator). 409 for a running job or when an unfinished job holds its unique key.
    #[oai(path = "/:id/retry", method = "post")]
    async fn retry(&self, creds: Credentials, id: Path<i64>) -> Result<Json<JobAction>, ApiError> {
        let who = self.auth.require(&creds, Role::Operator).await?;
        let mut conn = self.auth.pool().get().await?;
        let tx = conn.transaction().await.map_err(DbError::from)?;
        let before = control::get(&tx, id.0)
            .await?
            .ok_or_else(|| ApiError::not_found("no such job"))?;
        if !control::retry(&tx, id.0).await? {
            return Err(ApiError::conflict("a running job cannot be retried"));
        }
        audit(
            &tx,
            &who,
            "job.retry",
            Some(format!("job:{}", id.0)),
            None,
            1,
        )
        .await?;
        tx.commit().await.map_err(DbError::from)?;
        Ok(Json(JobAction {
            id: id.0,
            previous_state: state(before.state),
            state: State::Available,
        }))
    }

    /// Cancel an unfinished job (operator); a running job's late outcome is refused. 409
    /// when it is already final.
    #[oai(path = "/:id/cancel", method = "post")]
    async fn cancel(&self, creds: Credentials, id: Path<i64>) -> Result<Json<JobAction>, ApiError> {
        let who = self.auth.require(&creds, Role::Operator).await?;
        let mut conn = self.auth.pool().get().await?;
        let tx = conn.transaction().await.map_err(DbError::from)?;
        match control::cancel(&tx, id.0).await? {
            Some(previous) => {
                audit(
                    &tx,
                    &who,
                    "job.cancel",
                    Some(format!("job:{}", id.0)),
                    None,
                    1,
                )
                .await?;
                tx.commit().await.map_err(DbError::from)?;
                Ok(Json(JobAction {
                    id: id.0,
                    previous_state: state(previous),
                    state: State::Cancelled,
                }))
            }
            None => match control::get(&tx, id.0).await? {
                Some(_) => Err(ApiError::conflict("the job is already finished")),
                None => Err(ApiError::not_found("no such job")),
            },
        }
    }

    /// Retry every waiting or finished job matching the filter (operator), in batches of
    /// 1,000. Answers how many were retried.
    #[oai(path = "/bulk/retry", method = "post")]
    async fn bulk_retry(
        &self,
        creds: Credentials,
        body: Json<BulkFilter>,
    ) -> Result<Json<BulkResult>, ApiError> {
        self.bulk(creds, body.0, Bulk::Retry).await
    }

    /// Cancel every unfinished job matching the filter (operator), in batches of 1,000.
    #[oai(path = "/bulk/cancel", method = "post")]
    async fn bulk_cancel(
        &self,
        creds: Credentials,
        body: Json<BulkFilter>,
    ) -> Result<Json<BulkResult>, ApiError> {
        self.bulk(creds, body.0, Bulk::Cancel).await
    }

    /// Delete every job matching the filter except running ones (operator), in batches of
    /// 1,000.
    #[oai(path = "/bulk/delete", method = "post")]
    async fn bulk_delete(
        &self,
        creds: Credentials,
        body: Json<BulkFilter>,
    ) -> Result<Json<BulkResult>, ApiError> {
        self.bulk(creds, body.0, Bulk::Delete).await
    }
}

/// A bulk action.
#[derive(Clone, Copy)]
enum Bulk {
    Retry,
    Cancel,
    Delete,
}

impl JobsApi {
    async fn bulk(
        &self,
        creds: Credentials,
        filter: BulkFilter,
        action: Bulk,
    ) -> Result<Json<BulkResult>, ApiError> {
        let who = self.auth.require(&creds, Role::Operator).await?;
        let filter = JobFilter::try_from(filter)?;
        if filter.is_empty() {
            return Err(field_error(
                "filter",
                "give at least one of queue, kind, state, tag, created_after, created_before",
            ));
        }
        let (bulk, name) = match action {
            Bulk::Retry => (admin::Bulk::Retry, "jobs.bulk_retry"),
            Bulk::Cancel => (admin::Bulk::Cancel, "jobs.bulk_cancel"),
            Bulk::Delete => (admin::Bulk::Delete, "jobs.bulk_delete"),
        };
        let filter_json = serde_json::to_value(&filter).map_err(ApiError::internal)?;
        // Each batch commits on its own (see `admin::BULK_BATCH`), with its share of the
        // audit row: written with the first batch, its count grown by each later one.
        let mut conn = self.auth.pool().get().await?;
        let mut run = admin::bulk_start(&conn, bulk).await?;
        let mut entry = None;
        let mut count = 0;
        loop {
            let tx = conn.transaction().await.map_err(DbError::from)?;
            let changed = admin::bulk_batch(&tx, &mut run, &filter, BULK_BATCH).await?;
            let n = changed.unwrap_or(0);
            match entry {
                None => {
                    let filter = Some(filter_json.clone());
                    entry = Some(audit(&tx, &who, name, None, filter, n).await?);
                }
                Some(id) if n > 0 => domain::audit::add_to_count(&tx, id, n as i64).await?,
                Some(_) => {}
            }
            tx.commit().await.map_err(DbError::from)?;
            count += n;
            if changed.is_none() {
                break;
            }
        }
        Ok(Json(BulkResult { count }))
    }
}
