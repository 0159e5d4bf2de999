-- Team registrations: teams, their players, logo bytes awaiting upload, and idempotency
-- records of the registration endpoint. SQL: common/src/registrations.rs (and, for the jobs
-- of a team, common/src/queue/admin.rs).

-- Team numbers. A sequence hands out numbers without locking anything, so concurrent
-- registrations never wait on one another for an id (a counter row locked with SELECT ... FOR
-- UPDATE serialised the original deployment). A rolled-back registration leaves a gap; a
-- number is never handed out twice.
CREATE SEQUENCE teams_number_seq AS bigint;

CREATE TABLE teams (
  number           bigint      PRIMARY KEY DEFAULT nextval('teams_number_seq'),
  -- `{TEAM_ID_PREFIX}-{number:03}` (wider past 999), written once at insert.
  team_id          text        NOT NULL UNIQUE CHECK (team_id ~ '^[A-Za-z0-9]{1,16}-[0-9]{3,}$'),
  team_name        text        NOT NULL CHECK (char_length(team_name) BETWEEN 3 AND 80),
  church_name      text        NOT NULL CHECK (char_length(church_name) BETWEEN 3 AND 80),
  captain_name     text        NOT NULL CHECK (char_length(captain_name) BETWEEN 3 AND 50),
  coach_name       text        NOT NULL CHECK (char_length(coach_name) BETWEEN 3 AND 50),
  captain_phone    text        NOT NULL CHECK (captain_phone ~ '^[0-9]{10}$'),
  captain_whatsapp text        NOT NULL CHECK (captain_whatsapp ~ '^[0-9]{10}$'),
  captain_email    text        NOT NULL CHECK (char_length(captain_email) BETWEEN 3 AND 254),
  -- Where the logo is served from, once the upload job has stored it; null until then.
  logo_url         text,
  -- The request that registered the team (joins the access log).
  request_id       text,
  created_at       timestamptz NOT NULL DEFAULT now()
);
ALTER SEQUENCE teams_number_seq OWNED BY teams.number;

CREATE TABLE players (
  team_number bigint   NOT NULL REFERENCES teams (number) ON DELETE CASCADE,
  -- 1-based order in the registration.
  position    smallint NOT NULL CHECK (position BETWEEN 1 AND 20),
  name        text     NOT NULL CHECK (char_length(name) BETWEEN 1 AND 50),
  role        text     NOT NULL CHECK (char_length(role) BETWEEN 1 AND 50),
  phone       text     NOT NULL CHECK (phone ~ '^[0-9]{10}$'),
  PRIMARY KEY (team_number, position)
);

-- A team's logo until the upload job has stored it elsewhere; the job then deletes the row.
CREATE TABLE team_logos (
  team_number  bigint      PRIMARY KEY REFERENCES teams (number) ON DELETE CASCADE,
  content_type text        NOT NULL CHECK (content_type IN ('image/png', 'image/jpeg')),
  size         integer     NOT NULL CHECK (size BETWEEN 1 AND 5242880),
  sha256       bytea       NOT NULL CHECK (octet_length(sha256) = 32),
  bytes        bytea       NOT NULL CHECK (octet_length(bytes) = size),
  created_at   timestamptz NOT NULL DEFAULT now()
);
-- PNG and JPEG are compressed already: store them out of line without trying to compress
-- them again.
ALTER TABLE team_logos ALTER COLUMN bytes SET STORAGE EXTERNAL;

-- Idempotency records: the first successful answer to a key, replayed to a repeat within
-- IDEMPOTENCY_TTL. The row is inserted in the registration's transaction, so concurrent
-- requests with one key queue on its primary key and exactly one registers.
CREATE TABLE idempotency_keys (
  -- The endpoint the key was used on, e.g. `registration`.
  scope       text        NOT NULL CHECK (char_length(scope) BETWEEN 1 AND 64),
  key         text        NOT NULL CHECK (char_length(key) BETWEEN 1 AND 255),
  -- SHA-256 of the canonical request.
  fingerprint bytea       NOT NULL CHECK (octet_length(fingerprint) = 32),
  -- The answer. Null only inside the claiming transaction, which fills it in before it
  -- commits; a committed row always has both.
  status      smallint    CHECK (status BETWEEN 100 AND 599),
  body        jsonb,
  created_at  timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (scope, key)
);
CREATE INDEX idempotency_keys_created_at_idx ON idempotency_keys (created_at);

-- The jobs of a team (GET /api/v1/registrations/{team_id}): its jobs carry the team id in
-- their args. Partial, so jobs of other kinds add nothing to it.
CREATE INDEX jobs_team_id_idx ON jobs ((args ->> 'team_id')) WHERE args ? 'team_id';
