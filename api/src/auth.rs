//! Who is calling and what they may do: password hashing (argon2id), access tokens (JWT,
//! HS256 with `SECRET_KEY`, with issuer, audience and the user's token version, checked
//! against the user's row on every request), refresh tokens and API keys (random, stored as SHA-256), the
//! password policy, and the security schemes every protected operation declares.
//!
//! The SQL is in `domain::accounts`; this module does the cryptography and the HTTP side.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use deadpool_postgres::Pool;
use domain::accounts::{self, Role};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use poem_openapi::SecurityScheme;
use poem_openapi::auth::{ApiKey, Bearer};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::ApiError;

/// The `iss` of every access token, checked.
pub const ISSUER: &str = "quayside";
/// The `aud` of every access token, checked: tokens of another service that shares the key
/// are refused.
pub const AUDIENCE: &str = "quayside-api";
/// Lifetime of an access token.
pub const ACCESS_TTL: Duration = Duration::from_secs(30 * 60);
/// Lifetime of a refresh token; each refresh issues a new one with a fresh lifetime.
pub const REFRESH_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Window over which failed logins are counted.
pub const LOGIN_FAILURE_WINDOW: Duration = Duration::from_secs(15 * 60);
/// Failed logins of one account within the window before its logins are refused (429).
/// Five is the usual lockout threshold (OWASP suggests a small single-digit number).
pub const MAX_FAILURES_PER_ACCOUNT: i64 = 5;
/// Failed logins from one address within the window, over all accounts, before its logins
/// are refused: enough for an office behind one NAT mistyping, not for password spraying.
pub const MAX_FAILURES_PER_IP: i64 = 20;
/// Shortest password accepted.
pub const MIN_PASSWORD_CHARS: usize = 12;
/// Longest password accepted (argon2 would take more, but nobody types more).
pub const MAX_PASSWORD_CHARS: usize = 128;

/// Bearer access token (JWT).
#[derive(SecurityScheme)]
#[oai(ty = "bearer", bearer_format = "JWT")]
pub struct BearerAuth(pub Bearer);

/// API key of a service client, created by an admin.
#[derive(SecurityScheme)]
#[oai(ty = "api_key", key_name = "X-API-Key", key_in = "header")]
pub struct ApiKeyAuth(pub ApiKey);

/// Either credential: a user's bearer token or a service client's API key.
#[derive(SecurityScheme)]
pub enum Credentials {
    /// A user's access token.
    Bearer(BearerAuth),
    /// A service client's key.
    ApiKey(ApiKeyAuth),
}

/// Who made a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A logged-in user.
    User {
        /// The user's id.
        id: i64,
        /// The user's name.
        username: String,
    },
    /// A service client.
    ApiKey {
        /// The key's id.
        id: i64,
        /// The key's name.
        name: String,
    },
}

/// An authenticated caller and its role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Who.
    pub caller: Caller,
    /// What it may do.
    pub role: Role,
}

impl Principal {
    /// How the audit log names the caller: `user:alice` or `api_key:ci`.
    pub fn actor(&self) -> String {
        match &self.caller {
            Caller::User { username, .. } => format!("user:{username}"),
            Caller::ApiKey { name, .. } => format!("api_key:{name}"),
        }
    }

    /// The user's id, when the caller is a user.
    pub fn user_id(&self) -> Option<i64> {
        match self.caller {
            Caller::User { id, .. } => Some(id),
            Caller::ApiKey { .. } => None,
        }
    }
}

/// The claims of an access token.
#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    /// The user's id.
    pub sub: String,
    /// The user's name.
    pub name: String,
    /// The user's role when the token was issued (for clients; the role checked is the one
    /// the user has now).
    pub role: Role,
    /// The user's token version when the token was issued; refused once it changed.
    pub ver: i64,
    /// Issuer: [`ISSUER`].
    pub iss: String,
    /// Audience: [`AUDIENCE`].
    pub aud: String,
    /// Issued at (unix seconds).
    pub iat: u64,
    /// Expires at (unix seconds).
    pub exp: u64,
}

/// Signs and checks tokens, and authenticates callers.
pub struct Auth {
    pool: Pool,
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl Auth {
    /// Tokens signed with `secret`, accounts in `pool`.
    pub fn new(pool: Pool, secret: &[u8]) -> Arc<Self> {
        // HS256 only: a token naming another algorithm, `none` included, is refused.
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        validation.set_required_spec_claims(&["exp", "sub", "iss", "aud"]);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[AUDIENCE]);
        Arc::new(Self {
            pool,
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
        })
    }

    /// The pool (for the auth routes).
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// A signed access token for `user`, valid while its token version is `version`.
    pub fn access_token(
        &self,
        id: i64,
        username: &str,
        role: Role,
        version: i64,
    ) -> Result<String, ApiError> {
        let now = unix_now();
        let claims = Claims {
            sub: id.to_string(),
            name: username.to_owned(),
            role,
            ver: version,
            iss: ISSUER.to_owned(),
            aud: AUDIENCE.to_owned(),
            iat: now,
            exp: now + ACCESS_TTL.as_secs(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(ApiError::internal)
    }

    /// The caller behind `creds`, if its role is at least `min`: 401 for bad credentials,
    /// 403 for too small a role.
    ///
    /// A token is checked against its user's row (one read by primary key): a disabled
    /// account or a changed token version (logout, role or password change) ends it at once,
    /// and the role checked is the user's role now.
    pub async fn require(&self, creds: &Credentials, min: Role) -> Result<Principal, ApiError> {
        let principal = match creds {
            Credentials::Bearer(BearerAuth(b)) => {
                let data =
                    jsonwebtoken::decode::<Claims>(&b.token, &self.decoding, &self.validation)
                        .map_err(|_| ApiError::unauthorized("invalid or expired access token"))?;
                let id = data
                    .claims
                    .sub
                    .parse()
                    .map_err(|_| ApiError::unauthorized("invalid or expired access token"))?;
                let conn = self.pool.get().await?;
                let session = accounts::session(&conn, id)
                    .await?
                    .filter(|s| s.token_version == data.claims.ver)
                    .ok_or_else(|| ApiError::unauthorized("the session has ended: log in again"))?;
                Principal {
                    caller: Caller::User {
                        id,
                        username: session.username,
                    },
                    role: session.role,
                }
            }
            Credentials::ApiKey(ApiKeyAuth(k)) => {
                let conn = self.pool.get().await?;
                let (id, name, role) = accounts::use_api_key(&conn, &sha256(&k.key))
                    .await?
                    .ok_or_else(|| ApiError::unauthorized("invalid or revoked API key"))?;
                Principal {
                    caller: Caller::ApiKey { id, name },
                    role,
                }
            }
        };
        if principal.role < min {
            return Err(ApiError::forbidden(format!(
                "this needs the {} role",
                min.as_str()
            )));
        }
        Ok(principal)
    }
}

/// Seconds since the Unix epoch.
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// SHA-256 of a token or key, as stored.
pub fn sha256(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// A fresh random token: 32 bytes from the OS-seeded CSPRNG, hex-encoded, after `prefix`.
pub fn random_token(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let mut s = String::with_capacity(prefix.len() + 64);
    s.push_str(prefix);
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Hash `password` with argon2id (default parameters: m = 19 MiB, t = 2, p = 1), off the
/// async threads: one hash takes tens of milliseconds of CPU.
pub async fn hash_password(password: String) -> Result<String, ApiError> {
    tokio::task::spawn_blocking(move || {
        Argon2::default()
            .hash_password(password.as_bytes())
            .map(|h| h.to_string())
            .map_err(ApiError::internal)
    })
    .await
    .map_err(ApiError::internal)?
}

/// A hash of a password nobody knows, checked when the user does not exist so that a login
/// for an unknown name takes as long as one for a known name.
static DUMMY_HASH: LazyLock<String> = LazyLock::new(|| {
    Argon2::default()
        .hash_password(random_token("").as_bytes())
        .expect("hashing a random password")
        .to_string()
});

/// Check `password` against `hash` (or against a dummy when there is no user), off the async
/// threads.
pub async fn verify_password(password: String, hash: Option<String>) -> Result<bool, ApiError> {
    tokio::task::spawn_blocking(move || {
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| DUMMY_HASH.clone());
        let parsed = PasswordHash::new(&hash).map_err(ApiError::internal)?;
        let ok = Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok();
        Ok(known && ok)
    })
    .await
    .map_err(ApiError::internal)?
}

/// Why a user name is refused, if it is.
pub fn username_problem(username: &str) -> Option<String> {
    let ok_chars = username
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !(3..=64).contains(&username.chars().count()) || !ok_chars {
        return Some("3 to 64 letters, digits, '.', '_' or '-'".into());
    }
    None
}

/// Why a password is refused, if it is.
///
/// The policy: 12 to 128 characters, at least two of the four classes (lower case, upper
/// case, digits, anything else), and not containing the user name. Length does most of the
/// work (NIST SP 800-63B favours length over composition rules); the two-class rule only
/// refuses the weakest long passwords, such as twelve digits or a single repeated letter case.
pub fn password_problem(password: &str, username: &str) -> Option<String> {
    let chars = password.chars().count();
    if chars < MIN_PASSWORD_CHARS {
        return Some(format!("at least {MIN_PASSWORD_CHARS} characters"));
    }
    if chars > MAX_PASSWORD_CHARS {
        return Some(format!("at most {MAX_PASSWORD_CHARS} characters"));
    }
    let classes = [
        password.chars().any(char::is_lowercase),
        password.chars().any(char::is_uppercase),
        password.chars().any(|c| c.is_ascii_digit()),
        password
            .chars()
            .any(|c| !c.is_lowercase() && !c.is_uppercase() && !c.is_ascii_digit()),
    ]
    .iter()
    .filter(|x| **x)
    .count();
    if classes < 2 {
        return Some(
            "at least two kinds of character (lower case, upper case, digits, symbols)".into(),
        );
    }
    if username.len() >= 3 && password.to_lowercase().contains(&username.to_lowercase()) {
        return Some("must not contain the user name".into());
    }
    None
}

/// Create the admin `username` unless a user of that name exists. Returns whether it was
/// created. Used at start-up (`ADMIN_USERNAME`/`ADMIN_PASSWORD`) and by `api create-admin`.
pub async fn ensure_admin(pool: &Pool, username: &str, password: &str) -> anyhow::Result<bool> {
    if let Some(p) = username_problem(username) {
        anyhow::bail!("invalid admin user name: {p}");
    }
    if let Some(p) = password_problem(password, username) {
        anyhow::bail!("the admin password is refused by the password policy: {p}");
    }
    let conn = pool.get().await?;
    if accounts::find_user(&conn, username).await?.is_some() {
        return Ok(false);
    }
    let hash = hash_password(password.to_owned())
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(accounts::create_user(&conn, username, &hash, Role::Admin)
        .await?
        .is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_policy() {
        assert!(password_problem("short1A", "u").is_some());
        assert!(password_problem("123456789012", "u").is_some());
        assert!(password_problem("abcdefghijkl", "u").is_some());
        assert!(password_problem(&"aB".repeat(65), "u").is_some());
        assert!(password_problem("xx-Alice-2026xx", "alice").is_some());
        assert!(password_problem("correct horse battery", "bob").is_none());
        assert!(password_problem("Tr0ub4dor&3xyz", "bob").is_none());
    }

    #[test]
    fn user_names() {
        assert!(username_problem("al").is_some());
        assert!(username_problem("al ice").is_some());
        assert!(username_problem("alice.o-k_1").is_none());
    }

    #[tokio::test]
    async fn passwords_hash_with_argon2id_and_verify() {
        let h = hash_password("Tr0ub4dor&3xyz".into()).await.unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(
            verify_password("Tr0ub4dor&3xyz".into(), Some(h.clone()))
                .await
                .unwrap()
        );
        assert!(
            !verify_password("tr0ub4dor&3xyz".into(), Some(h))
                .await
                .unwrap()
        );
        assert!(!verify_password("anything".into(), None).await.unwrap());
    }

    #[test]
    fn random_tokens_differ_and_hash_to_32_bytes() {
        let (a, b) = (random_token("qk_"), random_token("qk_"));
        assert_ne!(a, b);
        assert_eq!(a.len(), 3 + 64);
        assert_eq!(sha256(&a).len(), 32);
    }
}
