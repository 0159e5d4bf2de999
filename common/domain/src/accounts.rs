//! Accounts of the API: users, refresh-token families, API keys and failed logins.
//!
//! Every statement on those tables lives here; the API does the cryptography (argon2id, JWT,
//! SHA-256 of tokens) and hands this module only hashes. Nothing here sees a password or a
//! token in plain text.

use std::net::IpAddr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use engine::db::Result;
use postgres_types::{FromSql, ToSql};
use serde::{Deserialize, Serialize};

/// What a user (or an API key) may do. Ordered: an admin may do what an operator may, and an
/// operator what a user may.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, ToSql, FromSql, Serialize, Deserialize,
)]
#[postgres(name = "user_role")]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Registered users: their own account only.
    #[postgres(name = "user")]
    User,
    /// Operators: jobs, queues, workers, the audit log.
    #[postgres(name = "operator")]
    Operator,
    /// Admins: everything, including API keys.
    #[postgres(name = "admin")]
    Admin,
}

impl Role {
    /// The role's name in SQL and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    /// The role named `s`.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "user" => Some(Role::User),
            "operator" => Some(Role::Operator),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// A stored user.
#[derive(Debug, Clone)]
pub struct User {
    /// Its id.
    pub id: i64,
    /// Its name, unique whatever the case.
    pub username: String,
    /// The argon2id PHC string.
    pub password_hash: String,
    /// Its role.
    pub role: Role,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// Bumped by a logout, a role or password change and disabling the account; an access
    /// token issued with an older version is refused.
    pub token_version: i64,
    /// When the account was disabled: it may not log in, refresh or use a token.
    pub disabled_at: Option<DateTime<Utc>>,
}

const USER_COLUMNS: &str =
    "id, username, password_hash, role, created_at, token_version, disabled_at";

fn user(r: &tokio_postgres::Row) -> User {
    User {
        id: r.get(0),
        username: r.get(1),
        password_hash: r.get(2),
        role: r.get(3),
        created_at: r.get(4),
        token_version: r.get(5),
        disabled_at: r.get(6),
    }
}

const INSERT_USER: &str = "
INSERT INTO users (username, password_hash, role) VALUES ($1, $2, $3)
ON CONFLICT ((lower(username))) DO NOTHING
RETURNING id, username, password_hash, role, created_at, token_version, disabled_at";

/// Create a user; `None` when the name is taken (whatever its case).
pub async fn create_user(
    client: &impl GenericClient,
    username: &str,
    password_hash: &str,
    role: Role,
) -> Result<Option<User>> {
    let stmt = client.prepare_cached(INSERT_USER).await?;
    let row = client
        .query_opt(&stmt, &[&username, &password_hash, &role])
        .await?;
    Ok(row.as_ref().map(user))
}

/// The user named `username` (whatever its case).
pub async fn find_user(client: &impl GenericClient, username: &str) -> Result<Option<User>> {
    let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE lower(username) = lower($1)");
    let row = client.query_opt(&sql, &[&username]).await?;
    Ok(row.as_ref().map(user))
}

/// The user with `id`.
pub async fn get_user(client: &impl GenericClient, id: i64) -> Result<Option<User>> {
    let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1");
    let row = client.query_opt(&sql, &[&id]).await?;
    Ok(row.as_ref().map(user))
}

/// What an access token is checked against on every request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The user's name now.
    pub username: String,
    /// The user's role now.
    pub role: Role,
    /// The user's token version now.
    pub token_version: i64,
}

const SESSION: &str =
    "SELECT username, role, token_version FROM users WHERE id = $1 AND disabled_at IS NULL";

/// The live (not disabled) user `id` as an access token is checked against: one read by
/// primary key, prepared once per connection.
pub async fn session(client: &impl GenericClient, id: i64) -> Result<Option<Session>> {
    let stmt = client.prepare_cached(SESSION).await?;
    let row = client.query_opt(&stmt, &[&id]).await?;
    Ok(row.map(|r| Session {
        username: r.get(0),
        role: r.get(1),
        token_version: r.get(2),
    }))
}

const INSERT_REFRESH: &str = "
INSERT INTO refresh_tokens (user_id, family, token_hash, expires_at)
VALUES ($1, gen_random_uuid(), $2, now() + make_interval(secs => $3))";

/// Start a new refresh-token family for `user_id` with the token whose SHA-256 is `hash`.
pub async fn start_refresh_family(
    client: &impl GenericClient,
    user_id: i64,
    hash: &[u8],
    ttl: Duration,
) -> Result<()> {
    let stmt = client.prepare_cached(INSERT_REFRESH).await?;
    client
        .execute(&stmt, &[&user_id, &hash, &ttl.as_secs_f64()])
        .await?;
    Ok(())
}

/// What presenting a refresh token did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rotation {
    /// The token was current: it is now used, and the new one issued in its family. Carries
    /// the user.
    Rotated {
        /// The token's user.
        user_id: i64,
    },
    /// The token had been used before: its whole family is now revoked.
    Reused,
    /// Unknown, expired or revoked.
    Invalid,
}

const LOCK_REFRESH: &str = "
SELECT id, user_id, family, expires_at > now(), used_at IS NOT NULL, revoked_at IS NOT NULL
  FROM refresh_tokens WHERE token_hash = $1 FOR UPDATE";

const USE_REFRESH: &str = "UPDATE refresh_tokens SET used_at = now() WHERE id = $1";

const NEXT_REFRESH: &str = "
INSERT INTO refresh_tokens (user_id, family, token_hash, expires_at)
SELECT user_id, family, $2, now() + make_interval(secs => $3) FROM refresh_tokens WHERE id = $1";

const REVOKE_FAMILY_OF_ID: &str = "
UPDATE refresh_tokens SET revoked_at = now()
 WHERE family = (SELECT family FROM refresh_tokens WHERE id = $1) AND revoked_at IS NULL";

/// Exchange the refresh token hashed `old` for the one hashed `new` (same family, fresh
/// `ttl`). A token presented a second time revokes its family: whoever holds the newer one
/// must log in again. Run it in a transaction: the lock on the old row makes two concurrent
/// refreshes with one token resolve to one rotation and one reuse.
pub async fn rotate_refresh(
    client: &impl GenericClient,
    old: &[u8],
    new: &[u8],
    ttl: Duration,
) -> Result<Rotation> {
    let Some(row) = client.query_opt(LOCK_REFRESH, &[&old]).await? else {
        return Ok(Rotation::Invalid);
    };
    let id: i64 = row.get(0);
    let user_id: i64 = row.get(1);
    let (live, used, revoked): (bool, bool, bool) = (row.get(3), row.get(4), row.get(5));
    if revoked {
        return Ok(Rotation::Invalid);
    }
    if used {
        client.execute(REVOKE_FAMILY_OF_ID, &[&id]).await?;
        return Ok(Rotation::Reused);
    }
    if !live {
        return Ok(Rotation::Invalid);
    }
    client.execute(USE_REFRESH, &[&id]).await?;
    client
        .execute(NEXT_REFRESH, &[&id, &new, &ttl.as_secs_f64()])
        .await?;
    Ok(Rotation::Rotated { user_id })
}

const REVOKE_FAMILY_OF_HASH: &str = "
WITH revoked AS (
  UPDATE refresh_tokens SET revoked_at = now()
   WHERE family = (SELECT family FROM refresh_tokens WHERE token_hash = $1) AND revoked_at IS NULL
  RETURNING user_id),
bumped AS (
  UPDATE users SET token_version = token_version + 1
   WHERE id IN (SELECT user_id FROM revoked))
SELECT count(*) FROM revoked";

/// Revoke the family of the refresh token hashed `hash` (logout), and end the user's access
/// tokens by bumping their token version (every access token of the user: they do not say
/// which session issued them; other sessions get new ones at their next refresh). Returns
/// how many refresh tokens were revoked; 0 for an unknown or already revoked token.
pub async fn revoke_refresh_family(client: &impl GenericClient, hash: &[u8]) -> Result<u64> {
    let n: i64 = client
        .query_one(REVOKE_FAMILY_OF_HASH, &[&hash])
        .await?
        .get(0);
    Ok(n as u64)
}

/// An API key as listed (never the key itself).
#[derive(Debug, Clone, Serialize)]
pub struct ApiKey {
    /// Its id.
    pub id: i64,
    /// What it is for.
    pub name: String,
    /// Its first characters.
    pub prefix: String,
    /// What it may do (never admin).
    pub role: Role,
    /// The admin who created it.
    pub created_by: Option<i64>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it was last presented (updated at most once a minute).
    pub last_used_at: Option<DateTime<Utc>>,
    /// When it was revoked.
    pub revoked_at: Option<DateTime<Utc>>,
}

const KEY_COLUMNS: &str =
    "id, name, prefix, role, created_by, created_at, last_used_at, revoked_at";

fn api_key(r: &tokio_postgres::Row) -> ApiKey {
    ApiKey {
        id: r.get(0),
        name: r.get(1),
        prefix: r.get(2),
        role: r.get(3),
        created_by: r.get(4),
        created_at: r.get(5),
        last_used_at: r.get(6),
        revoked_at: r.get(7),
    }
}

/// Store a new API key by its SHA-256 `hash`.
pub async fn create_api_key(
    client: &impl GenericClient,
    name: &str,
    prefix: &str,
    hash: &[u8],
    role: Role,
    created_by: Option<i64>,
) -> Result<ApiKey> {
    let sql = format!(
        "INSERT INTO api_keys (name, prefix, key_hash, role, created_by)
         VALUES ($1, $2, $3, $4, $5) RETURNING {KEY_COLUMNS}"
    );
    let row = client
        .query_one(&sql, &[&name, &prefix, &hash, &role, &created_by])
        .await?;
    Ok(api_key(&row))
}

/// Every API key, newest first.
pub async fn list_api_keys(client: &impl GenericClient) -> Result<Vec<ApiKey>> {
    let sql = format!("SELECT {KEY_COLUMNS} FROM api_keys ORDER BY id DESC");
    Ok(client.query(&sql, &[]).await?.iter().map(api_key).collect())
}

/// Revoke key `id`; false when it does not exist or was already revoked.
pub async fn revoke_api_key(client: &impl GenericClient, id: i64) -> Result<bool> {
    Ok(client
        .execute(
            "UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL",
            &[&id],
        )
        .await?
        == 1)
}

const USE_KEY: &str = "
WITH k AS (SELECT id, name, role, last_used_at FROM api_keys
            WHERE key_hash = $1 AND revoked_at IS NULL),
touched AS (UPDATE api_keys a SET last_used_at = now() FROM k
             WHERE a.id = k.id AND (k.last_used_at IS NULL OR k.last_used_at < now() - interval '1 minute'))
SELECT id, name, role FROM k";

/// The live key hashed `hash`: its id, name and role. Marks it used (at most once a minute,
/// so a busy client does not write on every request).
pub async fn use_api_key(
    client: &impl GenericClient,
    hash: &[u8],
) -> Result<Option<(i64, String, Role)>> {
    let stmt = client.prepare_cached(USE_KEY).await?;
    let row = client.query_opt(&stmt, &[&hash]).await?;
    Ok(row.map(|r| (r.get(0), r.get(1), r.get(2))))
}

const COUNT_FAILURES: &str = "
SELECT (SELECT count(*) FROM login_failures
         WHERE lower(username) = lower($1) AND at > now() - make_interval(secs => $3)),
       (SELECT count(*) FROM login_failures
         WHERE $2::inet IS NOT NULL AND ip = $2 AND at > now() - make_interval(secs => $3))";

/// Failed logins within `window`: for the account `username`, and from `ip`.
pub async fn recent_login_failures(
    client: &impl GenericClient,
    username: &str,
    ip: Option<IpAddr>,
    window: Duration,
) -> Result<(i64, i64)> {
    let stmt = client.prepare_cached(COUNT_FAILURES).await?;
    let row = client
        .query_one(&stmt, &[&username, &ip, &window.as_secs_f64()])
        .await?;
    Ok((row.get(0), row.get(1)))
}

const RECORD_FAILURE: &str = "INSERT INTO login_failures (username, ip) VALUES ($1, $2)";

const PRUNE_FAILURES: &str =
    "DELETE FROM login_failures WHERE at < now() - make_interval(secs => $1)";

/// Record a failed login, and forget failures older than `window`.
pub async fn record_login_failure(
    client: &impl GenericClient,
    username: &str,
    ip: Option<IpAddr>,
    window: Duration,
) -> Result<()> {
    client.execute(RECORD_FAILURE, &[&username, &ip]).await?;
    client
        .execute(PRUNE_FAILURES, &[&window.as_secs_f64()])
        .await?;
    Ok(())
}

/// Forget the account's failed logins (after a successful one).
pub async fn clear_login_failures(client: &impl GenericClient, username: &str) -> Result<()> {
    client
        .execute(
            "DELETE FROM login_failures WHERE lower(username) = lower($1)",
            &[&username],
        )
        .await?;
    Ok(())
}
