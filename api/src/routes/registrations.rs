//! `POST /api/v1/registrations` (public): register a team with its players and logo, and
//! enqueue its `upload_logo` and `send_confirmation_email` jobs, all in one transaction;
//! idempotent under `Idempotency-Key`. `GET /api/v1/registrations/{team_id}` and
//! `GET /api/v1/admin/teams` (admins) read them back.
//!
//! The registration itself is the domain's use-case, `domain::registrations::register`, and
//! its rules are `domain::registrations::validation`: this module reads the form, calls them
//! and turns their outcome into the answer.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use domain::accounts::Role;
use domain::registrations as reg;
use domain::registrations::register::{
    Outcome, REGISTERED_MESSAGE, RegisterSettings, Registered, register,
};
use domain::registrations::validation::{FieldErrors, IdempotencyKey, NewRegistration, Submission};
use engine::queue::admin;
use poem_openapi::param::{Header, Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::types::Binary;
use poem_openapi::{ApiResponse, Multipart, Object, OpenApi};
use serde::{Deserialize, Serialize};

use super::jobs::Job;
use super::{Tag, cursor, page_size};
use crate::auth::{Auth, Credentials};
use crate::error::{ApiError, ErrorCode};
use crate::request_id::current_request_id;

/// The registration operations.
pub struct RegistrationsApi {
    auth: Arc<Auth>,
    pool: Pool,
    settings: RegisterSettings,
}

impl RegistrationsApi {
    /// The operations; team ids get `team_id_prefix`, idempotency keys live for
    /// `idempotency_ttl`.
    pub fn new(auth: Arc<Auth>, team_id_prefix: String, idempotency_ttl: Duration) -> Self {
        Self {
            pool: auth.pool().clone(),
            auth,
            settings: RegisterSettings {
                team_id_prefix,
                idempotency_ttl,
            },
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
        let (registration, key) = check(form, key)?;
        let request_id = current_request_id();
        let outcome = register(
            &self.pool,
            &self.settings,
            &registration,
            key.as_ref(),
            request_id.as_deref(),
        )
        .await
        .map_err(registration_error)?;
        match outcome {
            Outcome::Created(r) => Ok(RegisterResponse::Created(Json(r.into()), None)),
            Outcome::Replayed(r) => Ok(RegisterResponse::Created(
                Json(r.into()),
                Some("true".into()),
            )),
            Outcome::KeyReusedWithDifferentRequest => Err(ApiError::new(
                ErrorCode::IdempotencyKeyReused,
                "this idempotency key was used with a different request",
            )),
            Outcome::KeyBusy => Err(ApiError::conflict(
                "this idempotency key is being used by another request; try again",
            )),
        }
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
        let ids = reg::team_job_ids(&conn, &team.team_id).await?;
        let jobs = admin::jobs_by_ids(&conn, &ids).await?;
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

/// A database error of `domain::registrations` as an answer.
fn registration_error(e: reg::RegistrationError) -> ApiError {
    match e {
        reg::RegistrationError::Db(d) => ApiError::from(d),
        reg::RegistrationError::Queue(q) => ApiError::from(q),
        reg::RegistrationError::Answer(a) => ApiError::internal(a),
    }
}

impl From<Registered> for Registration {
    fn from(r: Registered) -> Self {
        Registration {
            success: true,
            team_id: r.team_id,
            message: REGISTERED_MESSAGE.into(),
            jobs: r
                .jobs
                .into_iter()
                .map(|j| RegistrationJob {
                    id: j.id,
                    kind: j.kind,
                })
                .collect(),
        }
    }
}

/// The form and the key checked by the domain's rules, every problem reported at once
/// (the key's under its header's name).
fn check(
    form: RegistrationForm,
    key: Option<String>,
) -> Result<(NewRegistration, Option<IdempotencyKey>), ApiError> {
    let submission = Submission {
        team_name: form.team_name,
        church_name: form.church_name,
        captain_name: form.captain_name,
        coach_name: form.coach_name,
        captain_phone: form.captain_phone,
        captain_whatsapp: form.captain_whatsapp,
        captain_email: form.captain_email,
        players: form.players,
        logo: form.logo.map(|Binary(bytes)| bytes),
    };
    let (registration, mut errors) = match submission.validate() {
        Ok(r) => (Some(r), FieldErrors::new()),
        Err(errors) => (None, errors),
    };
    let key = key
        .map(IdempotencyKey::parse)
        .transpose()
        .unwrap_or_else(|message| {
            errors.insert("Idempotency-Key".to_owned(), message);
            None
        });
    match registration {
        Some(registration) if errors.is_empty() => Ok((registration, key)),
        _ => {
            let fields: Vec<&str> = errors.keys().map(String::as_str).collect();
            Err(
                ApiError::validation(format!("invalid registration: {}", fields.join(", ")))
                    .with_details(serde_json::json!({ "field_errors": errors })),
            )
        }
    }
}
