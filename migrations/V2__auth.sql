-- Accounts of the API: users and their roles, refresh tokens (rotated, in families), API keys
-- for service clients, and failed logins (rate limiting). Secrets are never stored: passwords
-- as argon2id PHC strings, tokens and keys as SHA-256 digests.
-- SQL: common/src/accounts.rs.

CREATE TYPE user_role AS ENUM ('admin', 'operator', 'user');

CREATE TABLE users (
  id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  username      text        NOT NULL CHECK (char_length(username) BETWEEN 3 AND 64),
  -- argon2id PHC string ($argon2id$v=19$...).
  password_hash text        NOT NULL CHECK (password_hash LIKE '$argon2id$%'),
  role          user_role   NOT NULL DEFAULT 'user',
  created_at    timestamptz NOT NULL DEFAULT now()
);
-- User names are unique whatever their case.
CREATE UNIQUE INDEX users_username_idx ON users (lower(username));

-- One row per refresh token ever issued. A login starts a family; each refresh marks its token
-- used and issues the next in the same family. A used token presented again means it was
-- stolen (or replayed): the whole family is revoked.
CREATE TABLE refresh_tokens (
  id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  user_id    bigint      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
  family     uuid        NOT NULL,
  -- SHA-256 of the token.
  token_hash bytea       NOT NULL UNIQUE CHECK (octet_length(token_hash) = 32),
  created_at timestamptz NOT NULL DEFAULT now(),
  expires_at timestamptz NOT NULL,
  -- Set when exchanged for the next token of the family.
  used_at    timestamptz,
  -- Set by logout, by reuse detection, or when the user is removed.
  revoked_at timestamptz
);
CREATE INDEX refresh_tokens_family_idx ON refresh_tokens (family);
CREATE INDEX refresh_tokens_expires_idx ON refresh_tokens (expires_at);

-- Keys of service clients (X-API-Key). The plaintext is shown once, at creation.
CREATE TABLE api_keys (
  id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  name         text        NOT NULL CHECK (char_length(name) BETWEEN 1 AND 100),
  -- The key's first characters, to tell keys apart in listings.
  prefix       text        NOT NULL,
  -- SHA-256 of the key.
  key_hash     bytea       NOT NULL UNIQUE CHECK (octet_length(key_hash) = 32),
  role         user_role   NOT NULL CHECK (role <> 'admin'),
  created_by   bigint      REFERENCES users (id) ON DELETE SET NULL,
  created_at   timestamptz NOT NULL DEFAULT now(),
  last_used_at timestamptz,
  revoked_at   timestamptz
);

-- Failed logins, counted per account and per client address over a window; cleared for the
-- account by a successful login and pruned as they age.
CREATE TABLE login_failures (
  id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  username text        NOT NULL,
  ip       inet,
  at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX login_failures_username_idx ON login_failures (lower(username), at);
CREATE INDEX login_failures_ip_idx ON login_failures (ip, at) WHERE ip IS NOT NULL;
