//! `/api/v1/auth`: register, log in, refresh, log out, and who am I.
//!
//! Failed logins are limited per account and per client address through the
//! `login_failures` table, so the limit holds across replicas and restarts; a successful
//! login clears the account's count.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use domain::accounts::{self, Role, Rotation};
use engine::db::DbError;
use poem::Request;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};
use serde_json::json;

use super::Tag;
use crate::auth::{
    ACCESS_TTL, Auth, Credentials, LOGIN_FAILURE_WINDOW, MAX_FAILURES_PER_ACCOUNT,
    MAX_FAILURES_PER_IP, REFRESH_TTL, hash_password, password_problem, random_token, sha256,
    username_problem, verify_password,
};
use crate::config::IpNet;
use crate::error::ApiError;
use crate::middleware::rate_limit::client_ip;

/// The auth operations.
pub struct AuthApi {
    auth: Arc<Auth>,
    trusted_proxies: Vec<IpNet>,
}

impl AuthApi {
    /// The operations, with `trusted_proxies` to find the client's address.
    pub fn new(auth: Arc<Auth>, trusted_proxies: Vec<IpNet>) -> Self {
        Self {
            auth,
            trusted_proxies,
        }
    }
}

/// A user name and password.
#[derive(Object)]
pub struct LoginRequest {
    /// 3 to 64 letters, digits, `.`, `_` or `-`; unique whatever the case.
    pub username: String,
    /// 12 to 128 characters of at least two kinds (lower case, upper case, digits,
    /// symbols), not containing the user name.
    #[oai(write_only)]
    pub password: String,
}

/// A refresh token.
#[derive(Object)]
pub struct RefreshRequest {
    /// The refresh token from the last login or refresh.
    pub refresh_token: String,
}

/// A user.
#[derive(Object)]
pub struct UserInfo {
    /// Its id.
    pub id: i64,
    /// Its name.
    pub username: String,
    /// `admin`, `operator` or `user`.
    pub role: String,
    /// When it registered.
    pub created_at: DateTime<Utc>,
}

/// Tokens for a session.
#[derive(Object)]
pub struct TokenPair {
    /// A JWT for `Authorization: Bearer`, valid for `expires_in` seconds.
    pub access_token: String,
    /// Exchange it at `/api/v1/auth/refresh` for new tokens; single use, valid 7 days.
    pub refresh_token: String,
    /// Always `bearer`.
    pub token_type: String,
    /// Seconds the access token is valid.
    pub expires_in: u64,
}

/// The caller.
#[derive(Object)]
pub struct Me {
    /// `user:<name>` or `api_key:<name>`.
    pub actor: String,
    /// `admin`, `operator` or `user`.
    pub role: String,
}

/// Answer of a registration.
#[derive(ApiResponse)]
pub enum Registered {
    /// The user was created with the `user` role.
    #[oai(status = 201)]
    Created(Json<UserInfo>),
}

/// Answer of a logout.
#[derive(ApiResponse)]
pub enum LoggedOut {
    /// The refresh token's family is revoked (also when it was unknown).
    #[oai(status = 204)]
    Done,
}

#[OpenApi(prefix_path = "/api/v1/auth", tag = "Tag::Auth")]
impl AuthApi {
    /// Register a user (role `user`). 409 when the name is taken; 422 with
    /// `details.field_errors` when the name or password is refused.
    #[oai(path = "/register", method = "post")]
    async fn register(&self, body: Json<LoginRequest>) -> Result<Registered, ApiError> {
        let LoginRequest { username, password } = body.0;
        let mut field_errors = serde_json::Map::new();
        if let Some(p) = username_problem(&username) {
            field_errors.insert("username".into(), p.into());
        }
        if let Some(p) = password_problem(&password, &username) {
            field_errors.insert("password".into(), p.into());
        }
        if !field_errors.is_empty() {
            return Err(ApiError::validation("the registration is invalid")
                .with_details(json!({ "field_errors": field_errors })));
        }
        let hash = hash_password(password).await?;
        let conn = self.auth.pool().get().await?;
        let user = accounts::create_user(&conn, &username, &hash, Role::User)
            .await?
            .ok_or_else(|| ApiError::conflict("that user name is taken"))?;
        Ok(Registered::Created(Json(UserInfo {
            id: user.id,
            username: user.username,
            role: user.role.as_str().into(),
            created_at: user.created_at,
        })))
    }

    /// Log in: an access token (30 minutes) and a refresh token (7 days). 401 for a wrong
    /// name or password; 429 after too many failures for the account or from the address.
    #[oai(path = "/login", method = "post")]
    async fn login(
        &self,
        req: &Request,
        body: Json<LoginRequest>,
    ) -> Result<Json<TokenPair>, ApiError> {
        let LoginRequest { username, password } = body.0;
        let ip = client_ip(
            req.remote_addr().as_socket_addr().map(|a| a.ip()),
            req.headers(),
            &self.trusted_proxies,
        );
        let conn = self.auth.pool().get().await?;
        let (by_account, by_ip) =
            accounts::recent_login_failures(&conn, &username, ip, LOGIN_FAILURE_WINDOW).await?;
        if by_account >= MAX_FAILURES_PER_ACCOUNT || by_ip >= MAX_FAILURES_PER_IP {
            return Err(ApiError::rate_limited(LOGIN_FAILURE_WINDOW.as_secs()));
        }
        let user = accounts::find_user(&conn, &username).await?;
        let ok = verify_password(password, user.as_ref().map(|u| u.password_hash.clone())).await?;
        let Some(user) = user.filter(|u| ok && u.disabled_at.is_none()) else {
            accounts::record_login_failure(&conn, &username, ip, LOGIN_FAILURE_WINDOW).await?;
            return Err(ApiError::unauthorized("wrong user name or password"));
        };
        accounts::clear_login_failures(&conn, &user.username).await?;
        let refresh = random_token("");
        accounts::start_refresh_family(&conn, user.id, &sha256(&refresh), REFRESH_TTL).await?;
        Ok(Json(self.tokens(&user, refresh)?))
    }

    /// Exchange a refresh token for new tokens. The old one stops working; presenting it
    /// again revokes every token of its session (401), since only a thief would.
    #[oai(path = "/refresh", method = "post")]
    async fn refresh(&self, body: Json<RefreshRequest>) -> Result<Json<TokenPair>, ApiError> {
        let mut conn = self.auth.pool().get().await?;
        let tx = conn.transaction().await.map_err(DbError::from)?;
        let next = random_token("");
        let rotation = accounts::rotate_refresh(
            &tx,
            &sha256(&body.0.refresh_token),
            &sha256(&next),
            REFRESH_TTL,
        )
        .await?;
        let user_id = match rotation {
            Rotation::Rotated { user_id } => user_id,
            Rotation::Reused => {
                tx.commit().await.map_err(DbError::from)?;
                return Err(ApiError::unauthorized(
                    "refresh token reused: the session is revoked, log in again",
                ));
            }
            Rotation::Invalid => {
                return Err(ApiError::unauthorized("invalid or expired refresh token"));
            }
        };
        let user = accounts::get_user(&tx, user_id)
            .await?
            .filter(|u| u.disabled_at.is_none())
            .ok_or_else(|| ApiError::unauthorized("invalid or expired refresh token"))?;
        tx.commit().await.map_err(DbError::from)?;
        Ok(Json(self.tokens(&user, next)?))
    }

    /// Log out: revoke the refresh token and every token of its session, and end the user's
    /// access tokens at once (other sessions get new ones at their next refresh).
    #[oai(path = "/logout", method = "post")]
    async fn logout(&self, body: Json<RefreshRequest>) -> Result<LoggedOut, ApiError> {
        let conn = self.auth.pool().get().await?;
        accounts::revoke_refresh_family(&conn, &sha256(&body.0.refresh_token)).await?;
        Ok(LoggedOut::Done)
    }

    /// The caller, as its credentials say.
    #[oai(path = "/me", method = "get")]
    async fn me(&self, creds: Credentials) -> Result<Json<Me>, ApiError> {
        let p = self.auth.require(&creds, Role::User).await?;
        Ok(Json(Me {
            actor: p.actor(),
            role: p.role.as_str().into(),
        }))
    }
}

impl AuthApi {
    fn tokens(&self, user: &accounts::User, refresh_token: String) -> Result<TokenPair, ApiError> {
        Ok(TokenPair {
            access_token: self.auth.access_token(
                user.id,
                &user.username,
                user.role,
                user.token_version,
            )?,
            refresh_token,
            token_type: "bearer".into(),
            expires_in: ACCESS_TTL.as_secs(),
        })
    }
}
