//! Team registrations: teams, their players, logo bytes awaiting upload, the links to their
//! jobs, and the idempotency records of the registration endpoint.
//!
//! Every statement on `teams`, `players`, `team_logos`, `team_jobs` and `idempotency_keys`
//! lives here. A team is inserted by one statement (team, players and logo bytes through
//! data-modifying CTEs); the use-case, [`register::register`], runs it in the transaction that
//! also enqueues the team's jobs, links them to the team and records the idempotency answer,
//! so all of it commits or none does. Team ids come from a sequence: no row is locked to
//! number a team. What a submission must satisfy before any of this runs is in
//! [`validation`].

pub mod register;
pub mod validation;

use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use engine::db::{DbError, Result};
use engine::jobs::JobArgs;

use crate::jobs::upload_logo::UploadLogo;
pub use crate::team_id::is_team_id;

/// Why a registration ([`register::register`]) failed: the database, its jobs, or its stored
/// answer. Every statement of this module returns a plain [`DbError`].
#[derive(Debug, thiserror::Error)]
pub enum RegistrationError {
    /// A statement failed, or no connection could be had.
    #[error(transparent)]
    Db(#[from] DbError),
    /// A registration's jobs could not be enqueued.
    #[error(transparent)]
    Queue(#[from] engine::queue::QueueError),
    /// An idempotency record's answer could not be written or read back.
    #[error("idempotency answer: {0}")]
    Answer(#[from] serde_json::Error),
}

/// Most players a team may register.
pub const MAX_PLAYERS: usize = 20;
/// Largest logo accepted, in bytes: 5 MB.
pub const MAX_LOGO_BYTES: usize = 5 * 1024 * 1024;
/// The idempotency scope of `POST /api/v1/registrations`.
pub const REGISTRATION_SCOPE: &str = "registration";
/// Default `IDEMPOTENCY_TTL`, in seconds: one day. The API replays an answer that long, and
/// workers delete the record after it.
pub const DEFAULT_IDEMPOTENCY_TTL_S: u64 = 86_400;

/// A team to insert, already validated by the caller (the schema's CHECKs are the backstop).
#[derive(Debug, Clone)]
pub struct NewTeam<'a> {
    /// The team's name, 3 to 80 characters.
    pub team_name: &'a str,
    /// The church's name, 3 to 80 characters.
    pub church_name: &'a str,
    /// The captain, 3 to 50 characters.
    pub captain_name: &'a str,
    /// The coach, 3 to 50 characters.
    pub coach_name: &'a str,
    /// 10 digits.
    pub captain_phone: &'a str,
    /// 10 digits.
    pub captain_whatsapp: &'a str,
    /// An email address.
    pub captain_email: &'a str,
    /// 1 to [`MAX_PLAYERS`] players, in order.
    pub players: &'a [Player],
    /// The logo, kept here until the upload job stores it.
    pub logo: NewLogo<'a>,
    /// The request that registers the team.
    pub request_id: Option<&'a str>,
}

/// A player of a team.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Player {
    /// 1 to 50 characters.
    pub name: String,
    /// What they play, 1 to 50 characters.
    pub role: String,
    /// 10 digits.
    pub phone: String,
}

/// Logo bytes to keep until they are uploaded.
#[derive(Debug, Clone, Copy)]
pub struct NewLogo<'a> {
    /// `image/png` or `image/jpeg`, judged from the bytes.
    pub content_type: &'a str,
    /// The bytes, at most [`MAX_LOGO_BYTES`].
    pub bytes: &'a [u8],
    /// Their SHA-256.
    pub sha256: &'a [u8],
}

/// An inserted team's number and id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InsertedTeam {
    /// The sequence number behind the id.
    pub number: i64,
    /// The human-readable id, e.g. `ICCT-001`.
    pub team_id: String,
}

/// A stored team with its players.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Team {
    /// The sequence number behind the id (also the listing's cursor).
    pub number: i64,
    /// The human-readable id.
    pub team_id: String,
    /// The team's name.
    pub team_name: String,
    /// The church's name.
    pub church_name: String,
    /// The captain.
    pub captain_name: String,
    /// The coach.
    pub coach_name: String,
    /// The captain's phone.
    pub captain_phone: String,
    /// The captain's WhatsApp number.
    pub captain_whatsapp: String,
    /// The captain's email address.
    pub captain_email: String,
    /// Where the logo is served from; `None` until the upload job has stored it.
    pub logo_url: Option<String>,
    /// Whether the logo bytes still wait in the database for the upload job.
    pub logo_pending: bool,
    /// The players, in registration order (empty in listings).
    pub players: Vec<Player>,
    /// When the team registered.
    pub created_at: DateTime<Utc>,
}

/// One statement: a number from the sequence, the team with its id formatted from it, the
/// players (parallel arrays, in order) and the logo bytes. The id is `prefix-NNN`, zero-padded
/// to 3 digits and wider once past 999.
const INSERT_TEAM: &str = "
WITH n AS (SELECT nextval('teams_number_seq') AS number),
t AS (
  INSERT INTO teams (number, team_id, team_name, church_name, captain_name, coach_name,
                     captain_phone, captain_whatsapp, captain_email, request_id)
  SELECT number, $1 || '-' || lpad(number::text, greatest(3, length(number::text)), '0'),
         $2, $3, $4, $5, $6, $7, $8, $9
    FROM n
  RETURNING number, team_id
),
p AS (
  INSERT INTO players (team_number, position, name, role, phone)
  SELECT t.number, u.position, u.name, u.role, u.phone
    FROM t, unnest($10::text[], $11::text[], $12::text[]) WITH ORDINALITY
            AS u(name, role, phone, position)
),
l AS (
  INSERT INTO team_logos (team_number, content_type, size, sha256, bytes)
  SELECT t.number, $13, $14, $15, $16 FROM t
)
SELECT number, team_id FROM t";

/// Insert `team`, its players and its logo bytes with a new id `{prefix}-NNN`.
pub async fn insert_team(
    client: &impl GenericClient,
    prefix: &str,
    team: &NewTeam<'_>,
) -> Result<InsertedTeam> {
    let names: Vec<&str> = team.players.iter().map(|p| p.name.as_str()).collect();
    let roles: Vec<&str> = team.players.iter().map(|p| p.role.as_str()).collect();
    let phones: Vec<&str> = team.players.iter().map(|p| p.phone.as_str()).collect();
    let size = i32::try_from(team.logo.bytes.len()).unwrap_or(i32::MAX);
    let stmt = client.prepare_cached(INSERT_TEAM).await?;
    let row = client
        .query_one(
            &stmt,
            &[
                &prefix,
                &team.team_name,
                &team.church_name,
                &team.captain_name,
                &team.coach_name,
                &team.captain_phone,
                &team.captain_whatsapp,
                &team.captain_email,
                &team.request_id,
                &names,
                &roles,
                &phones,
                &team.logo.content_type,
                &size,
                &team.logo.sha256,
                &team.logo.bytes,
            ],
        )
        .await?;
    Ok(InsertedTeam {
        number: row.get(0),
        team_id: row.get(1),
    })
}

const TEAM_COLUMNS: &str = "t.number, t.team_id, t.team_name, t.church_name, t.captain_name, \
     t.coach_name, t.captain_phone, t.captain_whatsapp, t.captain_email, t.logo_url, \
     t.logo_url IS NULL AND EXISTS (SELECT 1 FROM team_logos l WHERE l.team_number = t.number), \
     t.created_at";

fn team_from_row(r: &tokio_postgres::Row) -> Team {
    Team {
        number: r.get(0),
        team_id: r.get(1),
        team_name: r.get(2),
        church_name: r.get(3),
        captain_name: r.get(4),
        coach_name: r.get(5),
        captain_phone: r.get(6),
        captain_whatsapp: r.get(7),
        captain_email: r.get(8),
        logo_url: r.get(9),
        logo_pending: r.get(10),
        players: Vec::new(),
        created_at: r.get(11),
    }
}

const PLAYERS: &str = "
SELECT p.name, p.role, p.phone
  FROM players p JOIN teams t ON t.number = p.team_number
 WHERE t.team_id = $1
 ORDER BY p.position";

/// The team `team_id` with its players, if it exists.
pub async fn team(client: &impl GenericClient, team_id: &str) -> Result<Option<Team>> {
    let sql = format!("SELECT {TEAM_COLUMNS} FROM teams t WHERE t.team_id = $1");
    let Some(row) = client.query_opt(&sql, &[&team_id]).await? else {
        return Ok(None);
    };
    let mut team = team_from_row(&row);
    team.players = client
        .query(PLAYERS, &[&team_id])
        .await?
        .iter()
        .map(|r| Player {
            name: r.get(0),
            role: r.get(1),
            phone: r.get(2),
        })
        .collect();
    Ok(Some(team))
}

/// Up to `limit` teams, newest first, after the cursor `before` (a team number from the
/// previous page); players are left out.
pub async fn list_teams(
    client: &impl GenericClient,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<Team>> {
    let sql = format!(
        "SELECT {TEAM_COLUMNS} FROM teams t
          WHERE $1::bigint IS NULL OR t.number < $1
          ORDER BY t.number DESC LIMIT $2"
    );
    Ok(client
        .query(&sql, &[&before, &limit])
        .await?
        .iter()
        .map(team_from_row)
        .collect())
}

/// A team's logo as the upload job finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogoState {
    /// No team has that id.
    NoTeam,
    /// The bytes wait to be stored.
    Pending {
        /// `image/png` or `image/jpeg`.
        content_type: String,
        /// The bytes.
        bytes: Vec<u8>,
    },
    /// Nothing waits: already stored at this URL (or, with `None`, never had bytes).
    Stored(Option<String>),
}

const LOGO: &str = "
SELECT t.logo_url, l.content_type, l.bytes
  FROM teams t LEFT JOIN team_logos l ON l.team_number = t.number
 WHERE t.team_id = $1";

/// The logo of `team_id` as the upload job needs it.
pub async fn logo(client: &impl GenericClient, team_id: &str) -> Result<LogoState> {
    let Some(row) = client.query_opt(LOGO, &[&team_id]).await? else {
        return Ok(LogoState::NoTeam);
    };
    // A URL means an upload succeeded, whether or not its bytes are still kept.
    Ok(
        match (
            row.get::<_, Option<String>>(0),
            row.get::<_, Option<String>>(1),
        ) {
            (Some(url), _) => LogoState::Stored(Some(url)),
            (None, Some(content_type)) => LogoState::Pending {
                content_type,
                bytes: row.get(2),
            },
            (None, None) => LogoState::Stored(None),
        },
    )
}

/// Set the logo's URL and drop its bytes, in one statement.
const LOGO_STORED: &str = "
WITH t AS (UPDATE teams SET logo_url = $2 WHERE team_id = $1 RETURNING number),
d AS (DELETE FROM team_logos l USING t WHERE l.team_number = t.number AND NOT $3)
SELECT count(*) FROM t";

/// Record that the logo of `team_id` is stored at `url`, and drop its bytes unless
/// `keep_bytes` (then the logo clean-up, [`prune_logos`], drops them one retention after the
/// upload). Returns whether the team exists.
pub async fn logo_stored(
    client: &impl GenericClient,
    team_id: &str,
    url: &str,
    keep_bytes: bool,
) -> Result<bool> {
    let n: i64 = client
        .query_one(LOGO_STORED, &[&team_id, &url, &keep_bytes])
        .await?
        .get(0);
    Ok(n > 0)
}

/// Logo bytes that no upload will read: older than the retention, with no job of kind `$3`
/// (`upload_logo`) linked to their team unfinished (available, scheduled, retryable or
/// running) and none finished within the retention either. So bytes wait as long as an upload
/// of them may still run, and after the last upload was discarded or cancelled they stay one
/// retention more, for an operator to retry it. Bytes the upload job is dropping right now
/// (row locked) are skipped. A link whose job the engine has pruned joins nothing: that job
/// finished long ago.
const PRUNE_LOGOS: &str = "
DELETE FROM team_logos WHERE team_number IN (
  SELECT l.team_number
    FROM team_logos l
   WHERE l.created_at < now() - $1::bigint * interval '1 millisecond'
     AND NOT EXISTS (
           SELECT 1 FROM team_jobs tj JOIN jobs j ON j.id = tj.job_id
            WHERE tj.team_number = l.team_number
              AND tj.kind = $3
              AND (j.state NOT IN ('completed', 'discarded', 'cancelled')
                   OR j.finished_at >= now() - $1::bigint * interval '1 millisecond'))
   ORDER BY l.team_number
   LIMIT $2
   FOR UPDATE OF l SKIP LOCKED)";

/// Delete up to `limit` logo bytes older than `retention` that no upload will read: no
/// `upload_logo` job of the team is unfinished, and none finished within `retention` (the
/// time an operator has to retry a discarded or cancelled upload). Returns how many went.
/// The team keeps no logo (`logo_url` stays null); a later retry finds nothing to store.
pub async fn prune_logos(
    client: &impl GenericClient,
    retention: Duration,
    limit: usize,
) -> Result<u64> {
    let retention_ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let stmt = client.prepare_cached(PRUNE_LOGOS).await?;
    Ok(client
        .execute(&stmt, &[&retention_ms, &limit, &UploadLogo::KIND])
        .await?)
}

/// Link jobs to the team `$1`: parallel arrays of job ids and their kinds.
const LINK_JOBS: &str = "
INSERT INTO team_jobs (team_number, job_id, kind)
SELECT t.number, u.job_id, u.kind
  FROM teams t, unnest($2::bigint[], $3::text[]) AS u(job_id, kind)
 WHERE t.team_id = $1";

/// Link `jobs` (id and kind) to the team `team_id`, in the transaction that enqueued them:
/// a team's jobs are found through these links ([`team_job_ids`], [`prune_logos`]), never by
/// reading their args. Returns how many links were written (none if the team does not exist).
pub async fn link_jobs(
    client: &impl GenericClient,
    team_id: &str,
    jobs: &[(i64, &str)],
) -> Result<u64> {
    let ids: Vec<i64> = jobs.iter().map(|(id, _)| *id).collect();
    let kinds: Vec<&str> = jobs.iter().map(|(_, kind)| *kind).collect();
    let stmt = client.prepare_cached(LINK_JOBS).await?;
    Ok(client.execute(&stmt, &[&team_id, &ids, &kinds]).await?)
}

const TEAM_JOB_IDS: &str = "
SELECT tj.job_id
  FROM team_jobs tj JOIN teams t ON t.number = tj.team_number
 WHERE t.team_id = $1
 ORDER BY tj.job_id";

/// The ids of the jobs linked to `team_id`, oldest first; read the jobs themselves with
/// `engine::queue::admin::jobs_by_ids`. Ids of jobs the engine has pruned since are among
/// them, and that read skips them.
pub async fn team_job_ids(client: &impl GenericClient, team_id: &str) -> Result<Vec<i64>> {
    Ok(client
        .query(TEAM_JOB_IDS, &[&team_id])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// A remembered answer to an idempotency key.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyRecord {
    /// SHA-256 of the request that first used the key.
    pub fingerprint: Vec<u8>,
    /// The answer's status.
    pub status: i16,
    /// The answer's body.
    pub body: serde_json::Value,
}

/// Claim a key: insert it, or take over a row older than the TTL. A concurrent claim of the
/// same key waits here until the first transaction ends; if that one committed, this claim
/// fails and the caller reads the committed answer.
const CLAIM_KEY: &str = "
INSERT INTO idempotency_keys (scope, key, fingerprint)
VALUES ($1, $2, $3)
ON CONFLICT (scope, key) DO UPDATE
   SET fingerprint = EXCLUDED.fingerprint, status = NULL, body = NULL, created_at = now()
 WHERE idempotency_keys.created_at < now() - $4::bigint * interval '1 millisecond'
RETURNING true";

/// Claim `key` in `scope` for a request with `fingerprint`, in the caller's transaction.
/// Returns `false` when an unexpired record of the key exists: read it with [`key_record`].
pub async fn claim_key(
    client: &impl GenericClient,
    scope: &str,
    key: &str,
    fingerprint: &[u8],
    ttl: Duration,
) -> Result<bool> {
    let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
    let stmt = client.prepare_cached(CLAIM_KEY).await?;
    Ok(client
        .query_opt(&stmt, &[&scope, &key, &fingerprint, &ttl_ms])
        .await?
        .is_some())
}

const KEY_RECORD: &str = "
SELECT fingerprint, status, body FROM idempotency_keys
 WHERE scope = $1 AND key = $2 AND status IS NOT NULL";

/// The committed answer to `key` in `scope`, if any.
pub async fn key_record(
    client: &impl GenericClient,
    scope: &str,
    key: &str,
) -> Result<Option<KeyRecord>> {
    Ok(client
        .query_opt(KEY_RECORD, &[&scope, &key])
        .await?
        .map(|r| KeyRecord {
            fingerprint: r.get(0),
            status: r.get(1),
            body: r.get(2),
        }))
}

const STORE_ANSWER: &str = "
UPDATE idempotency_keys SET status = $3, body = $4 WHERE scope = $1 AND key = $2";

/// Record the answer to a key claimed in this transaction.
pub async fn store_answer(
    client: &impl GenericClient,
    scope: &str,
    key: &str,
    status: i16,
    body: &serde_json::Value,
) -> Result<()> {
    let stmt = client.prepare_cached(STORE_ANSWER).await?;
    client
        .execute(&stmt, &[&scope, &key, &status, body])
        .await?;
    Ok(())
}

/// Up to `$2` records older than the TTL, oldest first. A record locked by a claim that is
/// taking it over is skipped: that claim renews it.
const PRUNE_KEYS: &str = "
DELETE FROM idempotency_keys WHERE (scope, key) IN (
  SELECT scope, key FROM idempotency_keys
   WHERE created_at < now() - $1::bigint * interval '1 millisecond'
   ORDER BY created_at
   LIMIT $2
   FOR UPDATE SKIP LOCKED)";

/// Delete up to `limit` idempotency records older than `ttl`; returns how many.
pub async fn prune_keys(client: &impl GenericClient, ttl: Duration, limit: usize) -> Result<u64> {
    let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let stmt = client.prepare_cached(PRUNE_KEYS).await?;
    Ok(client.execute(&stmt, &[&ttl_ms, &limit]).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn team_ids_are_recognised() {
        for ok in ["ICCT-001", "A-123", "ICCT-1000", "abc9-0042"] {
            assert!(is_team_id(ok), "{ok}");
        }
        for bad in [
            "ICCT-01",
            "ICCT001",
            "-001",
            "IC CT-001",
            "ICCT-00a",
            "../x-001",
            "",
        ] {
            assert!(!is_team_id(bad), "{bad}");
        }
    }
}
