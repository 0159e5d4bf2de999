//! `/api/v1/audit` (operators): the log of operator actions, newest first.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use domain::accounts::Role;
use poem_openapi::param::Query;
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};
use serde_json::Value;

use super::{Tag, cursor, page_size};
use crate::auth::{Auth, Credentials};
use crate::error::ApiError;

/// The audit operations.
pub struct AuditApi {
    auth: Arc<Auth>,
}

impl AuditApi {
    /// The operations.
    pub fn new(auth: Arc<Auth>) -> Self {
        Self { auth }
    }
}

/// One recorded action.
#[derive(Object)]
pub struct AuditEntry {
    /// Its id.
    pub id: i64,
    /// Who: `user:<name>` or `api_key:<name>`.
    pub actor: String,
    /// What: `job.enqueue`, `job.retry`, `job.cancel`, `jobs.bulk_retry`, `jobs.bulk_cancel`,
    /// `jobs.bulk_delete`, `queue.pause`, `queue.resume`, `api_key.create`, `api_key.revoke`,
    /// `breaker.force_open`, `breaker.force_closed`, `breaker.clear`.
    pub action: String,
    /// The object acted on, e.g. `job:42`.
    pub target: Option<String>,
    /// The filter of a bulk action.
    pub filter: Option<Value>,
    /// How many rows it changed (a bulk action's grows as its batches commit).
    pub count: i64,
    /// The request that did it.
    pub request_id: Option<String>,
    /// When.
    pub at: DateTime<Utc>,
}

/// A page of the audit log.
#[derive(Object)]
pub struct AuditPage {
    /// Newest first.
    pub entries: Vec<AuditEntry>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

#[OpenApi(prefix_path = "/api/v1/audit", tag = "Tag::Audit")]
impl AuditApi {
    /// Operator actions, newest first (operator).
    #[oai(path = "/", method = "get")]
    async fn list(
        &self,
        creds: Credentials,
        /// Only this action.
        action: Query<Option<String>>,
        /// Only this actor.
        actor: Query<Option<String>>,
        /// From a previous page's `next_cursor`.
        cursor: Query<Option<String>>,
        /// Page size, 1 to 500.
        limit: Query<Option<u32>>,
    ) -> Result<Json<AuditPage>, ApiError> {
        self.auth.require(&creds, Role::Operator).await?;
        let limit = page_size(limit.0)?;
        let before = self::cursor(cursor.0.as_deref())?;
        let conn = self.auth.pool().get().await?;
        let entries = domain::audit::list(
            &conn,
            before,
            action.0.as_deref(),
            actor.0.as_deref(),
            limit,
        )
        .await?;
        let next_cursor = (entries.len() as i64 == limit)
            .then(|| entries.last().map(|e| e.id.to_string()))
            .flatten();
        Ok(Json(AuditPage {
            entries: entries
                .into_iter()
                .map(|e| AuditEntry {
                    id: e.id,
                    actor: e.actor,
                    action: e.action,
                    target: e.target,
                    filter: e.filter,
                    count: e.count,
                    request_id: e.request_id,
                    at: e.at,
                })
                .collect(),
            next_cursor,
        }))
    }
}
