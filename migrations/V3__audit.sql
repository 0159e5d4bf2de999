-- The audit log: one row per operator action (retry, cancel, delete, pause, resume, API key
-- creation and revocation), written after the action with what it affected. Append-only.
-- SQL: common/src/audit.rs.

CREATE TABLE audit_log (
  id     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  -- Who: `user:<name>` or `api_key:<name>`.
  actor  text        NOT NULL,
  -- What: e.g. `job.retry`, `jobs.bulk_cancel`, `queue.pause`, `api_key.create`.
  action text        NOT NULL,
  -- The single object acted on (`job:42`, `queue:email`, `api_key:3`), if any.
  target text,
  -- The filter of a bulk action, if any.
  filter jsonb,
  -- How many rows the action changed.
  count  bigint      NOT NULL DEFAULT 0,
  -- The request that did it (joins the access log).
  request_id text,
  at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX audit_log_at_idx ON audit_log (at);
