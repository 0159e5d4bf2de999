-- Circuit breakers and global rate limits of external services (`cloudinary`, `smtp`, any
-- name), shared by every worker process. One row per service in each table, created on first
-- use and locked (`FOR UPDATE`) by every change, so a decision is race-safe across processes.
-- The policy (thresholds, cool-down, probes, limit) comes from each caller's settings.
-- SQL: common/src/breaker.rs and common/src/ratelimit.rs.

CREATE TABLE breakers (
  service              text PRIMARY KEY,
  -- `closed`: calls go through; `open`: no calls until `half_open_at`; `half_open`: up to the
  -- policy's number of probe calls across the cluster, whose result closes or reopens it.
  state                text        NOT NULL DEFAULT 'closed'
                       CHECK (state IN ('closed', 'open', 'half_open')),
  -- Failures since the last success.
  consecutive_failures integer     NOT NULL DEFAULT 0,
  -- The failure-rate window: a fixed window from `window_started_at`, reset when it ends.
  window_started_at    timestamptz NOT NULL DEFAULT now(),
  window_successes     integer     NOT NULL DEFAULT 0,
  window_failures      integer     NOT NULL DEFAULT 0,
  -- When it last opened, and when that cool-down ends (the first probe may go then).
  opened_at            timestamptz,
  half_open_at         timestamptz,
  -- In `half_open`: probe permits granted, and when the first of them was; permits taken by a
  -- process that never reported back are granted again after one cool-down.
  probes_granted       integer     NOT NULL DEFAULT 0,
  probes_granted_at    timestamptz,
  -- How many times it has opened (also from half-open), for operators and tests.
  times_opened         bigint      NOT NULL DEFAULT 0,
  -- Operator override: `open` (no calls) or `closed` (calls, whatever happens); NULL: none.
  forced               text        CHECK (forced IN ('open', 'closed')),
  updated_at           timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE rate_limits (
  service    text PRIMARY KEY,
  -- The limit last applied: `max_calls` per `period_ms` (shown to operators).
  max_calls  integer     NOT NULL,
  period_ms  bigint      NOT NULL,
  -- Times of the calls granted within the last period, oldest first (a sliding log of at
  -- most `max_calls` entries).
  grants     timestamptz[] NOT NULL DEFAULT '{}',
  updated_at timestamptz NOT NULL DEFAULT now()
);
