//! The registration use-case, callable without HTTP: claim the idempotency key, insert the
//! team, enqueue its `upload_logo` and `send_confirmation_email` jobs and link them to it,
//! store the answer and commit, all in one transaction; or replay the answer a key already has, or refuse a key
//! reused with another request.

use std::time::Duration;

use deadpool_postgres::Pool;
use serde::{Deserialize, Serialize};

use super::validation::{IdempotencyKey, NewRegistration};
use super::{NewLogo, NewTeam, REGISTRATION_SCOPE, RegistrationError};
use crate::jobs::send_confirmation_email::SendConfirmationEmail;
use crate::jobs::upload_logo::UploadLogo;
use engine::db::DbError;
use engine::jobs::JobArgs;
use engine::queue::{JobOptions, NewJob, enqueue_many};

/// How registrations are numbered and how long their answers are remembered; fixed at
/// start-up.
#[derive(Debug, Clone)]
pub struct RegisterSettings {
    /// Team ids are `{team_id_prefix}-NNN`.
    pub team_id_prefix: String,
    /// How long an idempotency key's answer is replayed.
    pub idempotency_ttl: Duration,
}

/// What became of a registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The team was registered now.
    Created(Registered),
    /// The key's first request, identical to this one, registered this team: nothing new
    /// was written.
    Replayed(Registered),
    /// The key was first used with a different request: nothing was written.
    KeyReusedWithDifferentRequest,
    /// The key's record vanished between the claim and the read (pruned as it expired):
    /// rare enough that the client's retry is the simplest answer. Nothing was written.
    KeyBusy,
}

/// A registered team and the jobs that store its logo and mail its captain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registered {
    /// The team's id, e.g. `ICCT-001`.
    pub team_id: String,
    /// `upload_logo` then `send_confirmation_email`.
    pub jobs: Vec<RegisteredJob>,
}

/// A job enqueued by a registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisteredJob {
    /// The job's id.
    pub id: i64,
    /// Its kind.
    pub kind: String,
}

/// The message of a successful registration, as answered and as stored with its key.
pub const REGISTERED_MESSAGE: &str = "Team registered successfully";

/// The status stored with a key: the API answers a registration with 201 Created.
const CREATED: i16 = 201;

/// The body stored with an idempotency key: the API's 201 answer, field for field. A stored
/// format: records outlive a deploy, and the API of the previous release, which replays a
/// record by reading all four fields, may be answering beside this one.
#[derive(Serialize, Deserialize)]
struct StoredAnswer {
    success: bool,
    team_id: String,
    message: String,
    jobs: Vec<RegisteredJob>,
}

/// Register `registration`: with `key`, at most once per key within the settings'
/// `idempotency_ttl`. A concurrent request with the same key waits for this one and then
/// replays its committed answer. Any failure rolls everything back, the key's claim
/// included, so the same request may simply be sent again. `request_id` goes into the team
/// row and the jobs' `meta`, so the logs of the API and of the worker join up.
pub async fn register(
    pool: &Pool,
    settings: &RegisterSettings,
    registration: &NewRegistration,
    key: Option<&IdempotencyKey>,
    request_id: Option<&str>,
) -> Result<Outcome, RegistrationError> {
    let fingerprint = registration.fingerprint();
    let mut conn = pool.get().await.map_err(DbError::from)?;
    let tx = conn.transaction().await.map_err(DbError::from)?;
    if let Some(key) = key {
        let claimed = super::claim_key(
            &tx,
            REGISTRATION_SCOPE,
            key.as_str(),
            &fingerprint,
            settings.idempotency_ttl,
        )
        .await?;
        if !claimed {
            let record = super::key_record(&tx, REGISTRATION_SCOPE, key.as_str()).await?;
            tx.rollback().await.map_err(DbError::from)?;
            let Some(record) = record else {
                return Ok(Outcome::KeyBusy);
            };
            if record.fingerprint != fingerprint {
                return Ok(Outcome::KeyReusedWithDifferentRequest);
            }
            let answer: StoredAnswer = serde_json::from_value(record.body)?;
            return Ok(Outcome::Replayed(Registered {
                team_id: answer.team_id,
                jobs: answer.jobs,
            }));
        }
    }
    let team = super::insert_team(
        &tx,
        &settings.team_id_prefix,
        &NewTeam {
            team_name: &registration.team_name,
            church_name: &registration.church_name,
            captain_name: &registration.captain_name,
            coach_name: &registration.coach_name,
            captain_phone: &registration.captain_phone,
            captain_whatsapp: &registration.captain_whatsapp,
            captain_email: &registration.captain_email,
            players: &registration.players,
            logo: NewLogo {
                content_type: registration.logo_type,
                bytes: &registration.logo,
                sha256: &registration.logo_sha256,
            },
            request_id,
        },
    )
    .await?;
    let mut meta = serde_json::Map::new();
    if let Some(id) = request_id {
        meta.insert("request_id".into(), id.into());
    }
    meta.insert("team_id".into(), team.team_id.clone().into());
    let opts = JobOptions {
        meta,
        ..Default::default()
    };
    let jobs = [
        NewJob::new(&UploadLogo {
            team_id: team.team_id.clone(),
        })?
        .with(opts.clone()),
        NewJob::new(&SendConfirmationEmail {
            team_id: team.team_id.clone(),
        })?
        .with(opts),
    ];
    let enqueued = enqueue_many(&tx, &jobs).await?;
    let links: Vec<(i64, &str)> = enqueued
        .iter()
        .zip([UploadLogo::KIND, SendConfirmationEmail::KIND])
        .map(|(e, kind)| (e.id, kind))
        .collect();
    super::link_jobs(&tx, &team.team_id, &links).await?;
    let registered = Registered {
        team_id: team.team_id,
        jobs: links
            .into_iter()
            .map(|(id, kind)| RegisteredJob {
                id,
                kind: kind.into(),
            })
            .collect(),
    };
    if let Some(key) = key {
        let answer = serde_json::to_value(StoredAnswer {
            success: true,
            team_id: registered.team_id.clone(),
            message: REGISTERED_MESSAGE.into(),
            jobs: registered.jobs.clone(),
        })?;
        super::store_answer(&tx, REGISTRATION_SCOPE, key.as_str(), CREATED, &answer).await?;
    }
    tx.commit().await.map_err(DbError::from)?;
    Ok(Outcome::Created(registered))
}
