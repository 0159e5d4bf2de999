//! The audit log of operator actions: each row written in the transaction of its action (so
//! an action commits with its row or not at all), read newest first. A bulk action, which
//! commits batch by batch, writes its row with its first batch and adds each later batch's
//! count in that batch's transaction: the row always says what was committed.

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use engine::db::DbError;

/// An action to record.
#[derive(Debug, Clone)]
pub struct NewEntry<'a> {
    /// Who: `user:<name>` or `api_key:<name>`.
    pub actor: &'a str,
    /// What, e.g. `job.retry`.
    pub action: &'a str,
    /// The object acted on, e.g. `job:42`.
    pub target: Option<String>,
    /// The filter of a bulk action.
    pub filter: Option<serde_json::Value>,
    /// Rows changed.
    pub count: i64,
    /// The request's id.
    pub request_id: Option<String>,
}

/// A recorded action.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Increasing id; the cursor of the listing.
    pub id: i64,
    /// Who.
    pub actor: String,
    /// What.
    pub action: String,
    /// The object acted on.
    pub target: Option<String>,
    /// The filter of a bulk action.
    pub filter: Option<serde_json::Value>,
    /// Rows changed.
    pub count: i64,
    /// The request's id.
    pub request_id: Option<String>,
    /// When.
    pub at: DateTime<Utc>,
}

const INSERT: &str = "
INSERT INTO audit_log (actor, action, target, filter, count, request_id)
VALUES ($1, $2, $3, $4, $5, $6) RETURNING id";

/// Append `e`, in the transaction of its action; returns its id.
pub async fn record(client: &impl GenericClient, e: &NewEntry<'_>) -> Result<i64, DbError> {
    let stmt = client.prepare_cached(INSERT).await?;
    let row = client
        .query_one(
            &stmt,
            &[
                &e.actor,
                &e.action,
                &e.target,
                &e.filter,
                &e.count,
                &e.request_id,
            ],
        )
        .await?;
    Ok(row.get(0))
}

const ADD_COUNT: &str = "UPDATE audit_log SET count = count + $2 WHERE id = $1";

/// Add `n` rows to entry `id`'s count: a later batch of a bulk action, in its transaction.
pub async fn add_to_count(client: &impl GenericClient, id: i64, n: i64) -> Result<(), DbError> {
    let stmt = client.prepare_cached(ADD_COUNT).await?;
    client.execute(&stmt, &[&id, &n]).await?;
    Ok(())
}

const LIST: &str = "
SELECT id, actor, action, target, filter, count, request_id, at FROM audit_log
 WHERE ($1::bigint IS NULL OR id < $1)
   AND ($2::text IS NULL OR action = $2)
   AND ($3::text IS NULL OR actor = $3)
 ORDER BY id DESC LIMIT $4";

/// Entries older than `before` (an id; all when `None`), newest first, at most `limit`,
/// optionally only of `action` or `actor`.
pub async fn list(
    client: &impl GenericClient,
    before: Option<i64>,
    action: Option<&str>,
    actor: Option<&str>,
    limit: i64,
) -> Result<Vec<Entry>, DbError> {
    let stmt = client.prepare_cached(LIST).await?;
    let rows = client
        .query(&stmt, &[&before, &action, &actor, &limit])
        .await?;
    Ok(rows
        .iter()
        .map(|r| Entry {
            id: r.get(0),
            actor: r.get(1),
            action: r.get(2),
            target: r.get(3),
            filter: r.get(4),
            count: r.get(5),
            request_id: r.get(6),
            at: r.get(7),
        })
        .collect())
}
