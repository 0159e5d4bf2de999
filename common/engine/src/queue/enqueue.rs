//! Enqueue: one job or many, inside the caller's transaction when given one.
//!
//! An application's rows and their jobs commit or roll back together because the caller passes its
//! own `Transaction`; a statement-level trigger NOTIFYs idle workers, and PostgreSQL delivers
//! that on commit, so a worker never wakes for a job it cannot see. A unique key makes a second
//! enqueue of an unfinished job return the existing one, also under concurrent inserts.

use crate::db::Conn as GenericClient;
use chrono::{DateTime, Utc};
use postgres_types::Type;
use tokio_postgres::binary_copy::BinaryCopyInWriter;

use super::QueueError;
use super::job::JobState;
use crate::jobs::{ArgsError, JobArgs, KindSpec};
use crate::names::QueueName;

/// An enqueue's result: a database error or one of its own refusals.
type Result<T, E = QueueError> = std::result::Result<T, E>;

/// The partial unique index holding one unfinished job per unique key (`V1__jobs.sql`). The
/// inserts below name its columns and predicate in `ON CONFLICT`, and an operator's retry
/// (`control::retry`) that would give a second unfinished job the same key is refused by it.
pub const UNIQUE_KEY_INDEX: &str = "jobs_unique_key_idx";

/// Batches at least this large, without unique keys, go through binary `COPY`; smaller ones
/// through one multi-row `INSERT`. Around a few hundred rows COPY's extra round trip (the id
/// reservation) is repaid by its cheaper per-row path.
pub const COPY_THRESHOLD: usize = 500;

/// A job to enqueue: its kind, its args and the options that override the kind's defaults.
#[derive(Debug, Clone)]
pub struct NewJob {
    kind: String,
    args: serde_json::Value,
    /// The kind's defaults, when the job was made from its spec.
    spec: Option<KindSpec>,
    /// Queue, priority, schedule and the rest.
    pub opts: JobOptions,
}

/// Options of one enqueue; `None` takes the kind's default.
#[derive(Debug, Clone, Default)]
pub struct JobOptions {
    /// The queue; default: the kind's queue.
    pub queue: Option<QueueName>,
    /// 0 (first) to 9 (last); default 0.
    pub priority: Option<i16>,
    /// Not before this time; default now.
    pub run_at: Option<DateTime<Utc>>,
    /// Attempt budget; default: the kind's.
    pub max_attempts: Option<i32>,
    /// At most one unfinished job per key.
    pub unique_key: Option<String>,
    /// The job's key for its queue's per-key concurrency limit (see [`super::limits`]); when
    /// absent, the queue's key path into the args gives it, if the queue has one.
    pub concurrency_key: Option<String>,
    /// Labels for filtering.
    pub tags: Vec<String>,
    /// Context such as a request id (a JSON object).
    pub meta: serde_json::Map<String, serde_json::Value>,
}

impl NewJob {
    /// A job of a registered kind from typed args, checked by the kind's `validate`.
    pub fn new<A: JobArgs>(args: &A) -> Result<Self> {
        args.validate()?;
        let args = serde_json::to_value(args).map_err(|e| ArgsError::Shape(e.to_string()))?;
        Ok(Self {
            spec: Some(A::SPEC),
            ..Self::unchecked(A::KIND, args)
        })
    }

    /// A job of the kind `spec` from JSON args, checked by the kind (the API's path, after it
    /// found the kind in the application's registry).
    pub fn from_json(spec: &KindSpec, args: serde_json::Value) -> Result<Self> {
        (spec.check)(&args)?;
        Ok(Self {
            spec: Some(*spec),
            ..Self::unchecked(spec.name, args)
        })
    }

    /// A job whose kind and args are not checked, and which takes no kind's defaults: for
    /// tests and tools that must write what a newer or older deploy might have written.
    pub fn unchecked(kind: &str, args: serde_json::Value) -> Self {
        Self {
            kind: kind.to_owned(),
            args,
            spec: None,
            opts: JobOptions::default(),
        }
    }

    /// Set the options.
    pub fn with(mut self, opts: JobOptions) -> Self {
        self.opts = opts;
        self
    }

    /// The job's kind.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// Options resolved against the kind's defaults, and checked.
    fn resolve(&self) -> Result<Resolved<'_>> {
        let spec = self.spec.as_ref();
        let queue = self
            .opts
            .queue
            .as_ref()
            .map(QueueName::as_str)
            // A kind's default queue is a queue name: `Kinds::new` checks it.
            .or(spec.map(|s| s.queue))
            .unwrap_or("default");
        let priority = self.opts.priority.unwrap_or(0);
        if !(0..=9).contains(&priority) {
            return Err(QueueError::InvalidOption(
                "priority",
                "must be between 0 and 9".into(),
            ));
        }
        let max_attempts = self
            .opts
            .max_attempts
            .or(spec.map(|s| s.max_attempts))
            .unwrap_or(DEFAULT_MAX_ATTEMPTS);
        if max_attempts < 1 {
            return Err(QueueError::InvalidOption(
                "max_attempts",
                "must be at least 1".into(),
            ));
        }
        if let Some(k) = &self.opts.unique_key
            && (k.is_empty() || k.len() > 512)
        {
            return Err(QueueError::InvalidOption(
                "unique_key",
                "must be 1 to 512 characters".into(),
            ));
        }
        if let Some(k) = &self.opts.concurrency_key
            && (k.is_empty() || k.len() > 512)
        {
            return Err(QueueError::InvalidOption(
                "concurrency_key",
                "must be 1 to 512 characters".into(),
            ));
        }
        Ok(Resolved {
            queue,
            priority,
            max_attempts,
        })
    }
}

/// Attempt budget of a kind the registry does not know.
const DEFAULT_MAX_ATTEMPTS: i32 = 20;

struct Resolved<'a> {
    queue: &'a str,
    priority: i16,
    max_attempts: i32,
}

/// The outcome of enqueueing one job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enqueued {
    /// The job's id: the new job's, or the existing one's for a duplicate unique key.
    pub id: i64,
    /// True when an unfinished job with the same unique key already existed.
    pub duplicate: bool,
}

const INSERT_ONE: &str = "
INSERT INTO jobs (queue, kind, args, state, priority, max_attempts, run_at, unique_key, tags, meta,
                  concurrency_key)
VALUES ($1, $2, $3,
        CASE WHEN $6::timestamptz > now() THEN 'scheduled' ELSE 'available' END::job_state,
        $4, $5, coalesce($6::timestamptz, now()), $7, $8, $9, $10)
ON CONFLICT (unique_key)
  WHERE unique_key IS NOT NULL AND state IN ('available', 'scheduled', 'running', 'retryable')
  DO NOTHING
RETURNING id";

const FIND_UNFINISHED: &str = "
SELECT id, unique_key FROM jobs
 WHERE unique_key = ANY($1) AND state IN ('available', 'scheduled', 'running', 'retryable')";

/// Enqueue one job on `client`: a pooled connection (its own transaction) or the caller's
/// transaction (commits or rolls back with the caller's rows).
pub async fn enqueue(client: &impl GenericClient, job: &NewJob) -> Result<Enqueued> {
    let r = job.resolve()?;
    let meta = serde_json::Value::Object(job.opts.meta.clone());
    let stmt = client.prepare_cached(INSERT_ONE).await?;
    // A conflicting job may finish between our INSERT and our SELECT; then the key is free and
    // the next INSERT takes it. Three rounds cover any real interleaving.
    for _ in 0..3 {
        let params: [&(dyn postgres_types::ToSql + Sync); 10] = [
            &r.queue,
            &job.kind,
            &job.args,
            &r.priority,
            &r.max_attempts,
            &job.opts.run_at,
            &job.opts.unique_key,
            &job.opts.tags,
            &meta,
            &job.opts.concurrency_key,
        ];
        if let Some(row) = client.query_opt(&stmt, &params).await? {
            return Ok(Enqueued {
                id: row.get(0),
                duplicate: false,
            });
        }
        let key = job
            .opts
            .unique_key
            .as_ref()
            .expect("only a unique key can conflict");
        let find = client.prepare_cached(FIND_UNFINISHED).await?;
        if let Some(row) = client.query_opt(&find, &[&vec![key.as_str()]]).await? {
            return Ok(Enqueued {
                id: row.get(0),
                duplicate: true,
            });
        }
    }
    Err(QueueError::UniqueKeyContention)
}

/// Reserve `$1` ids. The sequence is looked up once (`OFFSET 0` keeps the planner from
/// folding the lookup into every row): written as `nextval(pg_get_serial_sequence(...))` the
/// catalog lookup ran per row, and reserving 20,000 ids took 42 ms instead of 6.
const RESERVE_IDS: &str = "
SELECT nextval(s.seq)
  FROM (SELECT pg_get_serial_sequence('jobs', 'id')::regclass AS seq OFFSET 0) AS s,
       generate_series(1, $1::int)";

const INSERT_MANY: &str = "
INSERT INTO jobs (id, queue, kind, args, state, priority, max_attempts, run_at, unique_key, tags, meta,
                  concurrency_key)
SELECT id, queue, kind, args,
       CASE WHEN run_at > now() THEN 'scheduled' ELSE 'available' END::job_state,
       priority, max_attempts, coalesce(run_at, now()), unique_key,
       ARRAY(SELECT jsonb_array_elements_text(tags)), meta, concurrency_key
  FROM unnest($1::bigint[], $2::text[], $3::text[], $4::jsonb[], $5::int2[], $6::int4[],
              $7::timestamptz[], $8::text[], $9::jsonb[], $10::jsonb[], $11::text[])
       AS t(id, queue, kind, args, priority, max_attempts, run_at, unique_key, tags, meta,
            concurrency_key)
ON CONFLICT (unique_key)
  WHERE unique_key IS NOT NULL AND state IN ('available', 'scheduled', 'running', 'retryable')
  DO NOTHING
RETURNING id";

/// Enqueue many jobs, in input order, in as few round trips as the batch allows: ids are
/// reserved from the sequence in one statement, then the rows go in by one multi-row
/// `INSERT` or, for large batches without unique keys, by binary `COPY`.
///
/// Pass a transaction for all-or-nothing; on a bare connection a failure can leave the jobs of
/// an earlier statement (unique ones go separately from a COPY) committed.
pub async fn enqueue_many(client: &impl GenericClient, jobs: &[NewJob]) -> Result<Vec<Enqueued>> {
    if jobs.is_empty() {
        return Ok(Vec::new());
    }
    let resolved = jobs
        .iter()
        .map(NewJob::resolve)
        .collect::<Result<Vec<_>>>()?;
    let reserve = client.prepare_cached(RESERVE_IDS).await?;
    let ids: Vec<i64> = client
        .query(&reserve, &[&(jobs.len() as i32)])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let any_unique = jobs.iter().any(|j| j.opts.unique_key.is_some());
    if jobs.len() >= COPY_THRESHOLD && !any_unique {
        copy_in(client, jobs, &resolved, &ids).await?;
        return Ok(ids
            .into_iter()
            .map(|id| Enqueued {
                id,
                duplicate: false,
            })
            .collect());
    }
    insert_many(client, jobs, &resolved, &ids).await
}

async fn insert_many(
    client: &impl GenericClient,
    jobs: &[NewJob],
    resolved: &[Resolved<'_>],
    ids: &[i64],
) -> Result<Vec<Enqueued>> {
    let queues: Vec<&str> = resolved.iter().map(|r| r.queue).collect();
    let kinds: Vec<&str> = jobs.iter().map(|j| j.kind.as_str()).collect();
    let args: Vec<&serde_json::Value> = jobs.iter().map(|j| &j.args).collect();
    let priorities: Vec<i16> = resolved.iter().map(|r| r.priority).collect();
    let max_attempts: Vec<i32> = resolved.iter().map(|r| r.max_attempts).collect();
    let run_ats: Vec<Option<DateTime<Utc>>> = jobs.iter().map(|j| j.opts.run_at).collect();
    let keys: Vec<Option<&str>> = jobs.iter().map(|j| j.opts.unique_key.as_deref()).collect();
    let concurrency_keys: Vec<Option<&str>> = jobs
        .iter()
        .map(|j| j.opts.concurrency_key.as_deref())
        .collect();
    let tags: Vec<serde_json::Value> = jobs
        .iter()
        .map(|j| serde_json::json!(j.opts.tags))
        .collect();
    let metas: Vec<serde_json::Value> = jobs
        .iter()
        .map(|j| serde_json::Value::Object(j.opts.meta.clone()))
        .collect();

    let stmt = client.prepare_cached(INSERT_MANY).await?;
    let inserted: std::collections::HashSet<i64> = client
        .query(
            &stmt,
            &[
                &ids,
                &queues,
                &kinds,
                &args,
                &priorities,
                &max_attempts,
                &run_ats,
                &keys,
                &tags,
                &metas,
                &concurrency_keys,
            ],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut out: Vec<Enqueued> = ids
        .iter()
        .map(|&id| Enqueued {
            id,
            duplicate: !inserted.contains(&id),
        })
        .collect();
    if inserted.len() == ids.len() {
        return Ok(out);
    }
    // The rest lost to an unfinished job with the same key (in the table, or earlier in this
    // batch): answer with that job, or enqueue it alone if the holder has finished meanwhile.
    let missing: Vec<usize> = (0..jobs.len()).filter(|&i| out[i].duplicate).collect();
    let keys: Vec<&str> = missing
        .iter()
        .filter_map(|&i| jobs[i].opts.unique_key.as_deref())
        .collect();
    let find = client.prepare_cached(FIND_UNFINISHED).await?;
    let holders: std::collections::HashMap<String, i64> = client
        .query(&find, &[&keys])
        .await?
        .iter()
        .map(|r| (r.get::<_, String>(1), r.get::<_, i64>(0)))
        .collect();
    for i in missing {
        let key = jobs[i]
            .opts
            .unique_key
            .as_deref()
            .expect("only unique jobs conflict");
        out[i] = match holders.get(key) {
            Some(&id) => Enqueued {
                id,
                duplicate: true,
            },
            None => enqueue(client, &jobs[i]).await?,
        };
    }
    Ok(out)
}

async fn copy_in(
    client: &impl GenericClient,
    jobs: &[NewJob],
    resolved: &[Resolved<'_>],
    ids: &[i64],
) -> Result<()> {
    // The state is decided here from the client's clock; the fetch also requires
    // run_at <= now(), so a skewed clock can delay a job but never start it early.
    let now = Utc::now();
    let state_type = client
        .prepare_cached("SELECT NULL::job_state")
        .await?
        .columns()[0]
        .type_()
        .clone();
    let sink = client
        .copy_in(
            "COPY jobs (id, queue, kind, args, state, priority, max_attempts, run_at, tags, meta, \
             concurrency_key) FROM STDIN (FORMAT binary)",
        )
        .await?;
    let types = [
        Type::INT8,
        Type::TEXT,
        Type::TEXT,
        Type::JSONB,
        state_type,
        Type::INT2,
        Type::INT4,
        Type::TIMESTAMPTZ,
        Type::TEXT_ARRAY,
        Type::JSONB,
        Type::TEXT,
    ];
    let writer = BinaryCopyInWriter::new(sink, &types);
    futures::pin_mut!(writer);
    for ((job, r), id) in jobs.iter().zip(resolved).zip(ids) {
        let run_at = job.opts.run_at.unwrap_or(now);
        let state = if run_at > now {
            JobState::Scheduled
        } else {
            JobState::Available
        };
        let meta = serde_json::Value::Object(job.opts.meta.clone());
        writer
            .as_mut()
            .write(&[
                id,
                &r.queue,
                &job.kind,
                &job.args,
                &state,
                &r.priority,
                &r.max_attempts,
                &run_at,
                &job.opts.tags,
                &meta,
                &job.opts.concurrency_key,
            ])
            .await?;
    }
    writer.finish().await?;
    Ok(())
}
