-- Sessions end on the next request, not when their access token expires: every access token
-- carries the user's `token_version` when it was issued, and the API compares it with the row
-- on each authenticated request (one primary-key read). A logout, a role change, a password
-- change or disabling the account bumps the version, so tokens issued before stop working.
-- Numbered 9 to leave 8 to a migration developed at the same time.
-- SQL: common/domain/src/accounts.rs.

ALTER TABLE users
  ADD COLUMN token_version bigint NOT NULL DEFAULT 0,
  -- Set when the account is disabled: it may not log in, refresh or use a token.
  ADD COLUMN disabled_at timestamptz;

-- Whoever changes the row (the API, an admin's SQL), the tokens issued before stop working.
CREATE FUNCTION users_bump_token_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.role IS DISTINCT FROM OLD.role
     OR NEW.password_hash IS DISTINCT FROM OLD.password_hash
     OR NEW.disabled_at IS DISTINCT FROM OLD.disabled_at THEN
    NEW.token_version := OLD.token_version + 1;
  END IF;
  RETURN NEW;
END
$$;

CREATE TRIGGER users_token_version BEFORE UPDATE ON users
  FOR EACH ROW EXECUTE FUNCTION users_bump_token_version();
