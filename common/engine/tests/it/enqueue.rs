//! Enqueue inside the caller's transaction: the caller's rows and the job commit or roll back
//! together.

use engine::queue::{JobState, control, enqueue};
use testkit::TestDb;

use crate::support::job;

#[tokio::test]
async fn job_commits_and_rolls_back_with_the_callers_rows() {
    let db = TestDb::new().await;
    let mut conn = db.conn().await;
    conn.batch_execute(
        "CREATE TABLE scratch_teams (id bigserial PRIMARY KEY, name text NOT NULL UNIQUE)",
    )
    .await
    .unwrap();
    let other = db.conn().await;
    let teams = |name: &'static str| {
        let other = &other;
        async move {
            other
                .query_one(
                    "SELECT count(*) FROM scratch_teams WHERE name = $1",
                    &[&name],
                )
                .await
                .unwrap()
                .get::<_, i64>(0)
        }
    };

    // Committed: the team and its job appear together.
    let tx = conn.transaction().await.unwrap();
    tx.execute("INSERT INTO scratch_teams (name) VALUES ('harbour')", &[])
        .await
        .unwrap();
    let committed = enqueue(&tx, &job("teams", 1)).await.unwrap();
    assert!(!committed.duplicate);
    assert_eq!(teams("harbour").await, 0, "uncommitted team visible");
    assert!(
        control::get(&other, committed.id).await.unwrap().is_none(),
        "uncommitted job visible"
    );
    tx.commit().await.unwrap();
    assert_eq!(teams("harbour").await, 1);
    let row = control::get(&other, committed.id)
        .await
        .unwrap()
        .expect("committed job");
    assert_eq!(row.queue, "teams");
    assert_eq!(row.kind, "noop");
    assert_eq!(row.state, JobState::Available);
    assert_eq!(row.args, serde_json::json!({ "n": 1 }));

    // Rolled back: neither the team nor the job exists.
    let tx = conn.transaction().await.unwrap();
    tx.execute("INSERT INTO scratch_teams (name) VALUES ('quay')", &[])
        .await
        .unwrap();
    let rolled_back = enqueue(&tx, &job("teams", 2)).await.unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(teams("quay").await, 0);
    assert!(
        control::get(&other, rolled_back.id)
            .await
            .unwrap()
            .is_none()
    );
    let jobs: i64 = db.scalar("SELECT count(*) FROM jobs").await;
    assert_eq!(jobs, 1, "only the committed job exists");
}
