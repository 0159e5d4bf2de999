//! `DbError::kind`: one classification of database failures for every caller.

use engine::db::{DbError, DbErrorKind};
use engine::queue::{UNIQUE_KEY_INDEX, control, enqueue};
use testkit::TestDb;
use testkit::db::{connect, pool_of};

use crate::support::unique_job;

/// The kind of the error PostgreSQL raises with SQLSTATE `code`.
async fn kind_of_code(db: &TestDb, code: &str) -> String {
    let conn = db.conn().await;
    let err = conn
        .batch_execute(&format!(
            "DO $$ BEGIN RAISE EXCEPTION 'raised' USING ERRCODE = '{code}'; END $$"
        ))
        .await
        .unwrap_err();
    format!("{:?}", DbError::from(err).kind())
}

#[tokio::test]
async fn sqlstates_are_sorted_into_kinds() {
    let db = TestDb::new().await;
    for (code, kind) in [
        ("08006", "ConnectionLost"),
        ("08003", "ConnectionLost"),
        ("57P01", "ConnectionLost"),
        ("57P03", "ConnectionLost"),
        ("40001", "SerializationFailure"),
        ("40P01", "SerializationFailure"),
        ("42P01", "Other"),
        ("57014", "Other"),
        ("P0001", "Other"),
    ] {
        assert_eq!(kind_of_code(&db, code).await, kind, "{code}");
    }
}

#[tokio::test]
async fn a_unique_violation_names_its_index() {
    let db = TestDb::new().await;
    let conn = db.conn().await;
    let first = enqueue(&conn, &unique_job("default", 1, "k"))
        .await
        .unwrap();
    conn.execute(
        "UPDATE jobs SET state = 'completed', finished_at = now() WHERE id = $1",
        &[&first.id],
    )
    .await
    .unwrap();
    enqueue(&conn, &unique_job("default", 2, "k"))
        .await
        .unwrap();

    // Retrying the finished job would make two unfinished holders of "k".
    let err = control::retry(&conn, first.id).await.unwrap_err();
    assert_eq!(
        err.kind(),
        DbErrorKind::UniqueViolation {
            constraint: Some(UNIQUE_KEY_INDEX)
        }
    );
    assert!(err.violates(UNIQUE_KEY_INDEX));
    assert!(!err.is_connection_lost());

    // Another table's unique violation is a unique violation, but not of the jobs' key.
    conn.batch_execute(
        "CREATE TABLE t (k int CONSTRAINT t_k_key UNIQUE); INSERT INTO t VALUES (1)",
    )
    .await
    .unwrap();
    let err = DbError::from(
        conn.execute("INSERT INTO t VALUES (1)", &[])
            .await
            .unwrap_err(),
    );
    assert!(err.violates("t_k_key"));
    assert!(!err.violates(UNIQUE_KEY_INDEX));
}

#[tokio::test]
async fn no_server_is_a_lost_connection() {
    let port = testkit::cluster::free_port().unwrap();
    let pool = pool_of(&format!("postgres://nobody@127.0.0.1:{port}/none"), 1);
    let err = DbError::from(pool.get().await.unwrap_err());
    assert_eq!(err.kind(), DbErrorKind::ConnectionLost);
}

#[tokio::test]
async fn a_connection_closed_under_a_client_is_lost() {
    let db = TestDb::new().await;
    let client = connect(&db.url).await;
    let pid: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    db.conn()
        .await
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    let err = testkit::wait_for(
        "the terminated session to fail",
        std::time::Duration::from_secs(5),
        || async { client.query_one("SELECT 1", &[]).await.err() },
    )
    .await;
    assert!(DbError::from(err).is_connection_lost());
}
