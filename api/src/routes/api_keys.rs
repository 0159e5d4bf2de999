//! `/api/v1/admin/api-keys`: admins create, list and revoke the keys of service clients.
//! The key itself is shown once, in the answer to its creation; only its SHA-256 is kept.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use domain::accounts::{self, Role};
use engine::db::DbError;
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};

use super::{Tag, audit};
use crate::auth::{Auth, Credentials, random_token, sha256};
use crate::error::ApiError;

/// Prefix of every key, so that a leaked one is recognisable (secret scanners).
pub const KEY_PREFIX: &str = "qsk_";

/// Characters of a key kept for listings.
const SHOWN_CHARS: usize = 12;

/// The API-key operations.
pub struct ApiKeysApi {
    auth: Arc<Auth>,
}

impl ApiKeysApi {
    /// The operations.
    pub fn new(auth: Arc<Auth>) -> Self {
        Self { auth }
    }
}

/// A key to create.
#[derive(Object)]
pub struct NewApiKey {
    /// What the key is for, 1 to 100 characters.
    pub name: String,
    /// `operator` (default) or `user`; keys are never admins.
    pub role: Option<String>,
}

/// A key as listed.
#[derive(Object)]
pub struct ApiKeyInfo {
    /// Its id.
    pub id: i64,
    /// What it is for.
    pub name: String,
    /// Its first characters.
    pub prefix: String,
    /// `operator` or `user`.
    pub role: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it was last used (to the minute).
    pub last_used_at: Option<DateTime<Utc>>,
    /// When it was revoked.
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A key just created, with its plaintext.
#[derive(Object)]
pub struct CreatedApiKey {
    /// The key, for `X-API-Key`. Shown only now: store it.
    pub key: String,
    /// The stored description of it.
    #[oai(flatten)]
    pub info: ApiKeyInfo,
}

/// Answer of a creation.
#[derive(ApiResponse)]
pub enum Created {
    /// Created.
    #[oai(status = 201)]
    Created(Json<CreatedApiKey>),
}

/// Answer of a revocation.
#[derive(ApiResponse)]
pub enum Revoked {
    /// Revoked.
    #[oai(status = 204)]
    Done,
}

fn info(k: accounts::ApiKey) -> ApiKeyInfo {
    ApiKeyInfo {
        id: k.id,
        name: k.name,
        prefix: k.prefix,
        role: k.role.as_str().into(),
        created_at: k.created_at,
        last_used_at: k.last_used_at,
        revoked_at: k.revoked_at,
    }
}

#[OpenApi(prefix_path = "/api/v1/admin/api-keys", tag = "Tag::ApiKeys")]
impl ApiKeysApi {
    /// Create a key (admin), recorded in the audit log. The answer holds the key; it is not
    /// shown again.
    #[oai(path = "/", method = "post")]
    async fn create(&self, creds: Credentials, body: Json<NewApiKey>) -> Result<Created, ApiError> {
        let admin = self.auth.require(&creds, Role::Admin).await?;
        let NewApiKey { name, role } = body.0;
        let name = name.trim().to_owned();
        if name.is_empty() || name.chars().count() > 100 {
            return Err(ApiError::validation("invalid name").with_details(
                serde_json::json!({"field_errors": {"name": "1 to 100 characters"}}),
            ));
        }
        let role = match role.as_deref().map(Role::parse) {
            None => Role::Operator,
            Some(Some(r)) if r != Role::Admin => r,
            Some(_) => {
                return Err(ApiError::validation("invalid role").with_details(
                    serde_json::json!({"field_errors": {"role": "operator or user"}}),
                ));
            }
        };
        let key = random_token(KEY_PREFIX);
        let prefix: String = key.chars().take(SHOWN_CHARS).collect();
        let mut conn = self.auth.pool().get().await?;
        let tx = conn.transaction().await.map_err(DbError::from)?;
        let stored =
            accounts::create_api_key(&tx, &name, &prefix, &sha256(&key), role, admin.user_id())
                .await?;
        let target = Some(format!("api_key:{}", stored.id));
        audit(&tx, &admin, "api_key.create", target, None, 1).await?;
        tx.commit().await.map_err(DbError::from)?;
        Ok(Created::Created(Json(CreatedApiKey {
            key,
            info: info(stored),
        })))
    }

    /// Every key, newest first (admin). Keys themselves are never shown.
    #[oai(path = "/", method = "get")]
    async fn list(&self, creds: Credentials) -> Result<Json<Vec<ApiKeyInfo>>, ApiError> {
        self.auth.require(&creds, Role::Admin).await?;
        let conn = self.auth.pool().get().await?;
        let keys = accounts::list_api_keys(&conn).await?;
        Ok(Json(keys.into_iter().map(info).collect()))
    }

    /// Revoke a key (admin); 404 when there is no such live key.
    #[oai(path = "/:id", method = "delete")]
    async fn revoke(&self, creds: Credentials, id: Path<i64>) -> Result<Revoked, ApiError> {
        let admin = self.auth.require(&creds, Role::Admin).await?;
        let mut conn = self.auth.pool().get().await?;
        let tx = conn.transaction().await.map_err(DbError::from)?;
        if accounts::revoke_api_key(&tx, id.0).await? {
            let target = Some(format!("api_key:{}", id.0));
            audit(&tx, &admin, "api_key.revoke", target, None, 1).await?;
            tx.commit().await.map_err(DbError::from)?;
            Ok(Revoked::Done)
        } else {
            Err(ApiError::not_found("no such live API key"))
        }
    }
}
