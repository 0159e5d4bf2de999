-- Job counts by queue and state, exact, without counting the jobs table.
--
-- Counting a table of millions of jobs takes seconds. Instead, every statement that inserts,
-- updates, deletes or truncates jobs records its net change per (queue, state) in
-- job_count_deltas: a few rows per statement (a fetch of 1,000 jobs writes two), not one per
-- job, and appends only, so concurrent writers never wait on one another. The counter pass
-- of the worker's maintenance folds the deltas into job_counts and into per-minute
-- finishes (queue_minutes). A reader adds job_counts and the deltas not folded yet; both are
-- small, so the sum is exact and fast whatever the size of jobs.

CREATE TABLE job_counts (
  queue text      NOT NULL,
  state job_state NOT NULL,
  n     bigint    NOT NULL,
  PRIMARY KEY (queue, state)
);

CREATE TABLE job_count_deltas (
  queue text        NOT NULL,
  state job_state   NOT NULL,
  n     bigint      NOT NULL,
  at    timestamptz NOT NULL DEFAULT now()
);

-- Jobs that finished per queue and minute: completed, and discarded (failed for good).
CREATE TABLE queue_minutes (
  queue     text        NOT NULL,
  minute    timestamptz NOT NULL,
  completed bigint      NOT NULL DEFAULT 0,
  discarded bigint      NOT NULL DEFAULT 0,
  PRIMARY KEY (queue, minute)
);

CREATE FUNCTION jobs_count_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO job_count_deltas (queue, state, n)
  SELECT queue, state, count(*) FROM new_jobs GROUP BY queue, state;
  RETURN NULL;
END
$$;

CREATE FUNCTION jobs_count_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO job_count_deltas (queue, state, n)
  SELECT queue, state, sum(n) FROM (
    SELECT queue, state, -count(*) AS n FROM old_jobs GROUP BY queue, state
    UNION ALL
    SELECT queue, state, count(*) FROM new_jobs GROUP BY queue, state) AS d
  GROUP BY queue, state
  HAVING sum(n) <> 0;
  RETURN NULL;
END
$$;

CREATE FUNCTION jobs_count_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO job_count_deltas (queue, state, n)
  SELECT queue, state, -count(*) FROM old_jobs GROUP BY queue, state;
  RETURN NULL;
END
$$;

CREATE FUNCTION jobs_count_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  DELETE FROM job_counts;
  DELETE FROM job_count_deltas;
  RETURN NULL;
END
$$;

-- No writes between the backfill and the triggers: both happen under this lock.
LOCK TABLE jobs IN SHARE ROW EXCLUSIVE MODE;

CREATE TRIGGER jobs_count_insert AFTER INSERT ON jobs
  REFERENCING NEW TABLE AS new_jobs
  FOR EACH STATEMENT EXECUTE FUNCTION jobs_count_insert();
CREATE TRIGGER jobs_count_update AFTER UPDATE ON jobs
  REFERENCING OLD TABLE AS old_jobs NEW TABLE AS new_jobs
  FOR EACH STATEMENT EXECUTE FUNCTION jobs_count_update();
CREATE TRIGGER jobs_count_delete AFTER DELETE ON jobs
  REFERENCING OLD TABLE AS old_jobs
  FOR EACH STATEMENT EXECUTE FUNCTION jobs_count_delete();
CREATE TRIGGER jobs_count_truncate AFTER TRUNCATE ON jobs
  FOR EACH STATEMENT EXECUTE FUNCTION jobs_count_truncate();

INSERT INTO job_counts (queue, state, n)
SELECT queue, state, count(*) FROM jobs GROUP BY queue, state;
