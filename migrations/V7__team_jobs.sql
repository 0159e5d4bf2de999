-- The jobs of a team, linked by the registration that enqueued them. The application's reads
-- of a team's jobs (an admin's view of a team, the clean-up of logo bytes) go through this
-- table, so the queue engine's generic `jobs` table carries nothing of the application: V4's
-- index on `args ->> 'team_id'` there, which every insert of every kind paid for, goes.
-- SQL: common/domain/src/registrations.rs.

CREATE TABLE team_jobs (
  team_number bigint NOT NULL REFERENCES teams (number) ON DELETE CASCADE,
  -- No foreign key to jobs, on purpose. The engine's pruner deletes finished jobs by the
  -- thousand; a key with ON DELETE CASCADE would make each of those deletes look this table
  -- up by job_id (a second index, and a row-level trigger per deleted job of every kind),
  -- charging the engine for one application's table. A link whose job was pruned dangles
  -- harmlessly: every read joins jobs, and a pruned job was finished longer ago than any
  -- read here looks back. Dangling links are a few per team and go with their team.
  job_id      bigint NOT NULL,
  -- The job's kind, copied at enqueue (a job's kind never changes), so a read can pick one
  -- kind without touching jobs for the others.
  kind        text   NOT NULL CHECK (char_length(kind) BETWEEN 1 AND 128),
  PRIMARY KEY (team_number, job_id)
);

-- Existing jobs are linked the way V4's index found them: by the team id in their args.
INSERT INTO team_jobs (team_number, job_id, kind)
SELECT t.number, j.id, j.kind
  FROM jobs j JOIN teams t ON t.team_id = j.args ->> 'team_id'
 WHERE j.args ? 'team_id';

DROP INDEX jobs_team_id_idx;
