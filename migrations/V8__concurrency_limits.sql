-- Global concurrency limits (issue 14): at most N running jobs per queue, and at most N per
-- key inside a queue. Enforced by the limited fetch (common/engine/src/queue/fetch.rs), which
-- counts running jobs under a per-queue transaction-level advisory lock.

-- The job's partition key for a per-key limit, given at enqueue. When it is NULL the key is
-- read from the args at the queue's `concurrency_key_path`, if it has one. The engine does not
-- know what a key means; a job with no key is bound only by the queue's limit.
ALTER TABLE jobs
  ADD COLUMN concurrency_key text CHECK (char_length(concurrency_key) BETWEEN 1 AND 512);

-- Limits, changed at run time by operators; NULL is no limit. A queue with neither limit is
-- fetched by the single-statement fast path, which refuses limited queues.
ALTER TABLE queues
  ADD COLUMN max_running integer CHECK (max_running >= 1),
  ADD COLUMN max_running_per_key integer CHECK (max_running_per_key >= 1),
  -- A path into the args (`{outlet_id}` for args.outlet_id), read with `args #>> path`.
  ADD COLUMN concurrency_key_path text[]
    CHECK (cardinality(concurrency_key_path) BETWEEN 1 AND 16),
  -- When an operator last set the limits; NULL while they are the workers' defaults from
  -- settings, which a starting worker may then overwrite.
  ADD COLUMN limits_set_at timestamptz;

-- The limited fetch counts a queue's running jobs (by key) through V1's jobs_lease_idx, which
-- holds only running rows (as many as the cluster's job slots). An index of its own on
-- (queue, concurrency_key) cost every fetched job one more index entry: the unlimited drain
-- fell from about 73k to 63k jobs/s (interleaved ops bench drain runs, same sitting), and the
-- limited fetch was no faster with it.

-- A job of a limited queue that stops running frees a slot another worker may be waiting for:
-- wake the queue's workers, as an insert does. Folded into the counting trigger of V6, which
-- already reads the statement's old rows; queues without limits cost one more scan of them.
CREATE OR REPLACE FUNCTION jobs_count_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO job_count_deltas (queue, state, n)
  SELECT queue, state, sum(n) FROM (
    SELECT queue, state, -count(*) AS n FROM old_jobs GROUP BY queue, state
    UNION ALL
    SELECT queue, state, count(*) FROM new_jobs GROUP BY queue, state) AS d
  GROUP BY queue, state
  HAVING sum(n) <> 0;
  PERFORM pg_notify('quayside_jobs', q.name)
     FROM queues q
    WHERE (q.max_running IS NOT NULL OR q.max_running_per_key IS NOT NULL)
      AND q.name IN (SELECT queue FROM old_jobs WHERE state = 'running');
  RETURN NULL;
END
$$;
