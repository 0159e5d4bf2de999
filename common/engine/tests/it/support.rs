//! Small helpers shared by the test modules.

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use engine::config::DatabaseSettings;
use engine::queue::{JobOptions, NewJob};

/// A `noop` job for `queue` with args `{"n": n}`, options otherwise default.
pub fn job(queue: &str, n: i64) -> NewJob {
    NewJob::unchecked("noop", serde_json::json!({ "n": n })).with(JobOptions {
        queue: Some(engine::names::QueueName::parse(queue).unwrap()),
        ..JobOptions::default()
    })
}

/// Like [`job`], with a unique key.
pub fn unique_job(queue: &str, n: i64, key: &str) -> NewJob {
    let mut j = job(queue, n);
    j.opts.unique_key = Some(key.to_owned());
    j
}

/// Like [`job`], with a priority and a run_at.
pub fn timed_job(queue: &str, n: i64, priority: i16, run_at: DateTime<Utc>) -> NewJob {
    let mut j = job(queue, n);
    j.opts.priority = Some(priority);
    j.opts.run_at = Some(run_at);
    j
}

/// A pool of `size` connections on the database at `url` (the default pool holds 16).
pub fn pool_of(url: &str, size: usize) -> Pool {
    let mut settings = DatabaseSettings::for_url(url);
    settings.pool_size = size;
    engine::db::pool(&settings).expect("pool")
}

/// The URL of `database` on the server of `url`.
pub fn url_of_database(url: &str, database: &str) -> String {
    let (server, _) = url.rsplit_once('/').expect("a URL with a database");
    format!("{server}/{database}")
}

/// A plain (unpooled) connection to `url`, driven by a spawned task.
pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    client
}
