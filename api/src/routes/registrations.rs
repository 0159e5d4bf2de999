//! `POST /api/v1/registrations` (public): register a team with its players and logo, and
//! enqueue its `upload_logo` and `send_confirmation_email` jobs, all in one transaction;
//! idempotent under `Idempotency-Key`. `GET /api/v1/registrations/{team_id}` and
//! `GET /api/v1/admin/teams` (admins) read them back.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use domain::accounts::Role;
use domain::jobs::send_confirmation_email::SendConfirmationEmail;
use domain::jobs::upload_logo::UploadLogo;
use domain::registrations::{
    self as reg, MAX_LOGO_BYTES, MAX_PLAYERS, NewLogo, NewTeam, Player, REGISTRATION_SCOPE,
};
use engine::db::DbError;
use engine::jobs::JobArgs;
use engine::queue::{JobOptions, NewJob, admin, enqueue_many};
use poem_openapi::param::{Header, Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::types::Binary;
use poem_openapi::{ApiResponse, Multipart, Object, OpenApi};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::jobs::Job;
use super::{Tag, cursor, page_size};
use crate::auth::{Auth, Credentials};
use crate::error::{ApiError, ErrorCode};
use crate::request_id::current_request_id;

/// The registration operations.
pub struct RegistrationsApi {
    auth: Arc<Auth>,
    pool: Pool,
    team_id_prefix: String,
    idempotency_ttl: Duration,
}

impl RegistrationsApi {
    /// The operations; team ids get `team_id_prefix`, idempotency keys live for
    /// `idempotency_ttl`.
    pub fn new(auth: Arc<Auth>, team_id_prefix: String, idempotency_ttl: Duration) -> Self {
        Self {
            pool: auth.pool().clone(),
            auth,
            team_id_prefix,
            idempotency_ttl,
        }
    }
}

/// A team registration (multipart/form-data). Every part is checked and every problem
/// reported at once in `details.field_errors`.
#[derive(Multipart)]
pub struct RegistrationForm {
    /// 3 to 80 characters.
    pub team_name: Option<String>,
    /// 3 to 80 characters.
    pub church_name: Option<String>,
    /// 3 to 50 characters.
    pub captain_name: Option<String>,
    /// 3 to 50 characters.
    pub coach_name: Option<String>,
    /// 10 digits.
    pub captain_phone: Option<String>,
    /// 10 digits.
    pub captain_whatsapp: Option<String>,
    /// An email address.
    pub captain_email: Option<String>,
    /// A JSON array of 1 to 20 `{"name", "role", "phone"}` (name and role 1 to 50
    /// characters, phone 10 digits).
    pub players: Option<String>,
    // Read into memory (the body limit, MAX_REQUEST_SIZE, bounds it): spooled to a temporary
    // file, as poem-openapi's `Upload` does, each logo was written and read back through the
    // kernel.
    /// PNG or JPEG (judged by its bytes, not its name or declared type), at most 5 MB.
    pub logo: Option<Binary<Vec<u8>>>,
}

/// A job enqueued by a registration.
#[derive(Object, Serialize, Deserialize)]
pub struct RegistrationJob {
    /// The job's id.
    pub id: i64,
    /// `upload_logo` or `send_confirmation_email`.
    pub kind: String,
}

/// A registered team.
#[derive(Object, Serialize, Deserialize)]
pub struct Registration {
    /// Always `true`.
    pub success: bool,
    /// The team's id, e.g. `ICCT-001`.
    pub team_id: String,
    /// `Team registered successfully`.
    pub message: String,
    /// The jobs that store the logo and mail the captain.
    pub jobs: Vec<RegistrationJob>,
}

/// Answer of a registration.
#[derive(ApiResponse)]
pub enum RegisterResponse {
    /// Registered (or, with `Idempotent-Replayed: true`, the first answer to this
    /// idempotency key, replayed).
    #[oai(status = 201)]
    Created(
        Json<Registration>,
        /// `true` when this answer is a replay of an earlier request with the same key.
        #[oai(header = "Idempotent-Replayed")]
        Option<String>,
    ),
}

/// A player of a registered team.
#[derive(Object)]
pub struct PlayerOut {
    /// The player's name.
    pub name: String,
    /// What they play.
    pub role: String,
    /// Their phone.
    pub phone: String,
}

/// A registered team as admins see it.
#[derive(Object)]
pub struct TeamOut {
    /// The team's id.
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
    /// Where the logo is served, once the upload job has stored it.
    pub logo_url: Option<String>,
    /// True while the logo waits in the database for the upload job.
    pub logo_pending: bool,
    /// When the team registered.
    pub created_at: DateTime<Utc>,
}

impl From<&reg::Team> for TeamOut {
    fn from(t: &reg::Team) -> Self {
        TeamOut {
            team_id: t.team_id.clone(),
            team_name: t.team_name.clone(),
            church_name: t.church_name.clone(),
            captain_name: t.captain_name.clone(),
            coach_name: t.coach_name.clone(),
            captain_phone: t.captain_phone.clone(),
            captain_whatsapp: t.captain_whatsapp.clone(),
            captain_email: t.captain_email.clone(),
            logo_url: t.logo_url.clone(),
            logo_pending: t.logo_pending,
            created_at: t.created_at,
        }
    }
}

/// A registered team with its players and the state of its jobs.
#[derive(Object)]
pub struct TeamDetail {
    /// The team.
    pub team: TeamOut,
    /// Its players, in registration order.
    pub players: Vec<PlayerOut>,
    /// Its jobs (`upload_logo`, `send_confirmation_email`), oldest first.
    pub jobs: Vec<Job>,
}

/// A page of teams.
#[derive(Object)]
pub struct TeamPage {
    /// Newest first.
    pub teams: Vec<TeamOut>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// The registration operations: one public, two for admins.
#[OpenApi(tag = "Tag::Registrations")]
impl RegistrationsApi {
    /// Register a team (no authentication; the per-IP rate limit applies). Team, players,
    /// logo bytes and the two jobs are written in one transaction. With `Idempotency-Key`,
    /// a repeat of the same request within IDEMPOTENCY_TTL replays the first answer
    /// (`Idempotent-Replayed: true`), and the same key with a different request answers 422
    /// IDEMPOTENCY_KEY_REUSED. Invalid or missing parts answer 422 with every problem in
    /// `details.field_errors`.
    #[oai(path = "/api/v1/registrations", method = "post")]
    async fn register(
        &self,
        form: RegistrationForm,
        /// Makes the request safe to repeat: 1 to 255 visible ASCII characters.
        #[oai(name = "Idempotency-Key")]
        idempotency_key: Header<Option<String>>,
        /// The older name of `Idempotency-Key`, still accepted.
        #[oai(name = "X-Idempotency-Key")]
        legacy_idempotency_key: Header<Option<String>>,
    ) -> Result<RegisterResponse, ApiError> {
        let key = idempotency_key.0.or(legacy_idempotency_key.0);
        let valid = Valid::check(form, key).await?;
        let fingerprint = valid.fingerprint();
        let mut conn = self.pool.get().await?;
        let tx = conn.transaction().await.map_err(DbError::from)?;
        if let Some(key) = &valid.key {
            let claimed = reg::claim_key(
                &tx,
                REGISTRATION_SCOPE,
                key,
                &fingerprint,
                self.idempotency_ttl,
            )
            .await?;
            if !claimed {
                let record = reg::key_record(&tx, REGISTRATION_SCOPE, key).await?;
                tx.rollback().await.map_err(DbError::from)?;
                return replay(record, &fingerprint);
            }
        }
        let request_id = current_request_id();
        let team = reg::insert_team(
            &tx,
            &self.team_id_prefix,
            &NewTeam {
                team_name: &valid.team_name,
                church_name: &valid.church_name,
                captain_name: &valid.captain_name,
                coach_name: &valid.coach_name,
                captain_phone: &valid.captain_phone,
                captain_whatsapp: &valid.captain_whatsapp,
                captain_email: &valid.captain_email,
                players: &valid.players,
                logo: NewLogo {
                    content_type: valid.logo_type,
                    bytes: &valid.logo,
                    sha256: &valid.logo_sha256,
                },
                request_id: request_id.as_deref(),
            },
        )
        .await?;
        let mut meta = serde_json::Map::new();
        if let Some(id) = &request_id {
            meta.insert("request_id".into(), id.clone().into());
        }
        meta.insert("team_id".into(), team.team_id.clone().into());
        let opts = JobOptions {
            meta,
            ..Default::default()
        };
        let team_id = team.team_id.clone();
        let jobs = [
            NewJob::new(&UploadLogo {
                team_id: team_id.clone(),
            })?
            .with(opts.clone()),
            NewJob::new(&SendConfirmationEmail {
                team_id: team_id.clone(),
            })?
            .with(opts),
        ];
        let enqueued = enqueue_many(&tx, &jobs).await?;
        let body = Registration {
            success: true,
            team_id,
            message: "Team registered successfully".into(),
            jobs: enqueued
                .iter()
                .zip([UploadLogo::KIND, SendConfirmationEmail::KIND])
                .map(|(e, kind)| RegistrationJob {
                    id: e.id,
                    kind: kind.into(),
                })
                .collect(),
        };
        if let Some(key) = &valid.key {
            let json = serde_json::to_value(&body).map_err(ApiError::internal)?;
            reg::store_answer(&tx, REGISTRATION_SCOPE, key, 201, &json).await?;
        }
        tx.commit().await.map_err(DbError::from)?;
        Ok(RegisterResponse::Created(Json(body), None))
    }

    /// A registered team with its players, its logo URL once uploaded, and the state of its
    /// jobs (admin).
    #[oai(path = "/api/v1/registrations/:team_id", method = "get")]
    async fn get(
        &self,
        creds: Credentials,
        /// E.g. `ICCT-001`.
        team_id: Path<String>,
    ) -> Result<Json<TeamDetail>, ApiError> {
        self.auth.require(&creds, Role::Admin).await?;
        let not_found = || ApiError::not_found("no such team");
        if !reg::is_team_id(&team_id.0) {
            return Err(not_found());
        }
        let conn = self.pool.get().await?;
        let team = reg::team(&conn, &team_id.0).await?.ok_or_else(not_found)?;
        let jobs = admin::team_jobs(&conn, &team.team_id).await?;
        Ok(Json(TeamDetail {
            team: TeamOut::from(&team),
            players: team
                .players
                .into_iter()
                .map(|p| PlayerOut {
                    name: p.name,
                    role: p.role,
                    phone: p.phone,
                })
                .collect(),
            jobs: jobs.into_iter().map(Job::from).collect(),
        }))
    }

    /// Registered teams, newest first, a page at a time (admin).
    #[oai(path = "/api/v1/admin/teams", method = "get")]
    async fn list(
        &self,
        creds: Credentials,
        /// From a previous page's `next_cursor`.
        cursor: Query<Option<String>>,
        /// Page size, 1 to 500.
        limit: Query<Option<u32>>,
    ) -> Result<Json<TeamPage>, ApiError> {
        self.auth.require(&creds, Role::Admin).await?;
        let limit = page_size(limit.0)?;
        let before = self::cursor(cursor.0.as_deref())?;
        let conn = self.pool.get().await?;
        let teams = reg::list_teams(&conn, before, limit).await?;
        let next_cursor = (teams.len() as i64 == limit)
            .then(|| teams.last().map(|t| t.number.to_string()))
            .flatten();
        Ok(Json(TeamPage {
            teams: teams.iter().map(TeamOut::from).collect(),
            next_cursor,
        }))
    }
}

/// The answer to a key that was already used: the first answer when the request is the
/// same, 422 IDEMPOTENCY_KEY_REUSED when it is not.
fn replay(
    record: Option<reg::KeyRecord>,
    fingerprint: &[u8],
) -> Result<RegisterResponse, ApiError> {
    let Some(record) = record else {
        // The key's record vanished between the claim and the read (pruned): rare enough
        // that the client's retry is the simplest answer.
        return Err(ApiError::conflict(
            "this idempotency key is being used by another request; try again",
        ));
    };
    if record.fingerprint != fingerprint {
        return Err(ApiError::new(
            ErrorCode::IdempotencyKeyReused,
            "this idempotency key was used with a different request",
        ));
    }
    let body: Registration = serde_json::from_value(record.body).map_err(ApiError::internal)?;
    Ok(RegisterResponse::Created(Json(body), Some("true".into())))
}

/// A registration that passed every check.
struct Valid {
    team_name: String,
    church_name: String,
    captain_name: String,
    coach_name: String,
    captain_phone: String,
    captain_whatsapp: String,
    captain_email: String,
    players: Vec<Player>,
    logo: Vec<u8>,
    logo_type: &'static str,
    logo_sha256: Vec<u8>,
    key: Option<String>,
}

/// Longest idempotency key.
const MAX_KEY_CHARS: usize = 255;

impl Valid {
    /// Check every part, collecting every problem.
    async fn check(form: RegistrationForm, key: Option<String>) -> Result<Valid, ApiError> {
        let mut errors = BTreeMap::new();
        let mut text = |field: &'static str, value: Option<String>, min: usize, max: usize| {
            let value = value.map(|v| v.trim().to_owned()).unwrap_or_default();
            let n = value.chars().count();
            if n < min || n > max || value.chars().any(char::is_control) {
                errors.insert(
                    field.to_owned(),
                    format!("must be {min} to {max} characters"),
                );
            }
            value
        };
        let team_name = text("team_name", form.team_name, 3, 80);
        let church_name = text("church_name", form.church_name, 3, 80);
        let captain_name = text("captain_name", form.captain_name, 3, 50);
        let coach_name = text("coach_name", form.coach_name, 3, 50);
        let mut digits = |field: &'static str, value: Option<String>| {
            let value = value.map(|v| v.trim().to_owned()).unwrap_or_default();
            if !is_phone(&value) {
                errors.insert(field.to_owned(), "must be 10 digits".to_owned());
            }
            value
        };
        let captain_phone = digits("captain_phone", form.captain_phone);
        let captain_whatsapp = digits("captain_whatsapp", form.captain_whatsapp);
        let captain_email = form
            .captain_email
            .map(|v| v.trim().to_owned())
            .unwrap_or_default();
        if !is_email(&captain_email) {
            errors.insert(
                "captain_email".to_owned(),
                "must be an email address such as name@example.com".to_owned(),
            );
        }
        let players = parse_players(form.players.as_deref(), &mut errors);
        let (logo, logo_type) = read_logo(form.logo, &mut errors).await;
        if let Some(k) = &key
            && (k.is_empty() || k.len() > MAX_KEY_CHARS || !k.bytes().all(|b| b.is_ascii_graphic()))
        {
            errors.insert(
                "Idempotency-Key".to_owned(),
                format!("must be 1 to {MAX_KEY_CHARS} visible ASCII characters"),
            );
        }
        if !errors.is_empty() {
            let fields: Vec<&str> = errors.keys().map(String::as_str).collect();
            return Err(ApiError::validation(format!(
                "invalid registration: {}",
                fields.join(", ")
            ))
            .with_details(serde_json::json!({ "field_errors": errors })));
        }
        let logo_sha256 = Sha256::digest(&logo).to_vec();
        Ok(Valid {
            team_name,
            church_name,
            captain_name,
            coach_name,
            captain_phone,
            captain_whatsapp,
            captain_email,
            players,
            logo,
            logo_type: logo_type.unwrap_or("image/png"),
            logo_sha256,
            key,
        })
    }

    /// SHA-256 of the canonical request: the checked values as a JSON object with sorted
    /// keys, the logo by its digest. Whitespace trimmed away or a different file name makes
    /// the same request.
    fn fingerprint(&self) -> Vec<u8> {
        let hex: String = self
            .logo_sha256
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let canonical = serde_json::json!({
            "team_name": self.team_name,
            "church_name": self.church_name,
            "captain_name": self.captain_name,
            "coach_name": self.coach_name,
            "captain_phone": self.captain_phone,
            "captain_whatsapp": self.captain_whatsapp,
            "captain_email": self.captain_email,
            "players": self.players,
            "logo_sha256": hex,
            "logo_type": self.logo_type,
        });
        Sha256::digest(canonical.to_string().as_bytes()).to_vec()
    }
}

fn is_phone(s: &str) -> bool {
    s.len() == 10 && s.bytes().all(|b| b.is_ascii_digit())
}

/// A practical address check: `local@domain`, the local part of atext and dots, the domain
/// of at least two dot-separated labels of letters, digits and inner hyphens.
fn is_email(s: &str) -> bool {
    if s.len() > 254 {
        return false;
    }
    let Some((local, domain)) = s.rsplit_once('@') else {
        return false;
    };
    let local_ok = !local.is_empty()
        && local.len() <= 64
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..")
        && local
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+/=?^_`{|}~.-".contains(&b));
    let labels: Vec<&str> = domain.split('.').collect();
    let domain_ok = labels.len() >= 2
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    local_ok && domain_ok
}

/// The players part: a JSON array of 1 to 20 `{name, role, phone}`.
fn parse_players(raw: Option<&str>, errors: &mut BTreeMap<String, String>) -> Vec<Player> {
    let Some(raw) = raw else {
        errors.insert("players".into(), "is required".into());
        return Vec::new();
    };
    let Ok(serde_json::Value::Array(items)) = serde_json::from_str::<serde_json::Value>(raw) else {
        errors.insert(
            "players".into(),
            "must be a JSON array of {\"name\", \"role\", \"phone\"}".into(),
        );
        return Vec::new();
    };
    if items.is_empty() || items.len() > MAX_PLAYERS {
        errors.insert(
            "players".into(),
            format!("must list 1 to {MAX_PLAYERS} players"),
        );
        return Vec::new();
    }
    let mut players = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let field = |name: &str| {
            item.get(name)
                .and_then(|v| v.as_str())
                .map(|s| s.trim().to_owned())
        };
        let mut bad = |name: &str, message: &str| {
            errors.insert(format!("players[{i}].{name}"), message.to_owned());
        };
        let name = field("name").unwrap_or_default();
        let role = field("role").unwrap_or_default();
        let phone = field("phone").unwrap_or_default();
        for (n, v) in [("name", &name), ("role", &role)] {
            let chars = v.chars().count();
            if !(1..=50).contains(&chars) || v.chars().any(char::is_control) {
                bad(n, "must be 1 to 50 characters");
            }
        }
        if !is_phone(&phone) {
            bad("phone", "must be 10 digits");
        }
        players.push(Player { name, role, phone });
    }
    players
}

/// The logo part: its bytes and type, judged from the bytes.
async fn read_logo(
    upload: Option<Binary<Vec<u8>>>,
    errors: &mut BTreeMap<String, String>,
) -> (Vec<u8>, Option<&'static str>) {
    let Some(Binary(bytes)) = upload else {
        errors.insert("logo".into(), "is required".into());
        return (Vec::new(), None);
    };
    if bytes.len() > MAX_LOGO_BYTES {
        errors.insert(
            "logo".into(),
            format!("must be at most {MAX_LOGO_BYTES} bytes"),
        );
        return (Vec::new(), None);
    }
    let kind = sniff_image(&bytes);
    if kind.is_none() {
        errors.insert(
            "logo".into(),
            "must be a PNG or JPEG image (judged by its content)".into(),
        );
    }
    (bytes, kind)
}

/// `image/png` or `image/jpeg` from the file's signature, whatever its name says.
pub fn sniff_image(bytes: &[u8]) -> Option<&'static str> {
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some("image/png")
    } else if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some("image/jpeg")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_phones() {
        for ok in ["a@b.co", "first.last+tag@sub.example.org", "x_y@a-b.in"] {
            assert!(is_email(ok), "{ok}");
        }
        for bad in [
            "", "a", "a@b", "@b.co", "a@.co", "a@b..co", ".a@b.co", "a b@c.co", "a@-b.co",
            "a@b.co ", "a@@b.co",
        ] {
            assert!(!is_email(bad), "{bad}");
        }
        assert!(is_phone("0123456789"));
        assert!(!is_phone("012345678"));
        assert!(!is_phone("01234567890"));
        assert!(!is_phone("01234 6789"));
    }

    #[test]
    fn images_are_judged_by_their_bytes() {
        assert_eq!(sniff_image(b"\x89PNG\r\n\x1a\nrest"), Some("image/png"));
        assert_eq!(sniff_image(&[0xFF, 0xD8, 0xFF, 0xE0]), Some("image/jpeg"));
        assert_eq!(sniff_image(b"\x7fELF\x02\x01"), None);
        assert_eq!(sniff_image(b"MZ\x90\0"), None);
        assert_eq!(sniff_image(b""), None);
    }
}
