//! Operator reads and bulk actions (`queue::admin`).

use common::queue::admin::{self, QueueDepth};
use common::queue::{JobState, control, enqueue};
use common::testing::TestDb;

use crate::support::job;

#[tokio::test]
async fn depth_counts_jobs_by_queue_and_state() {
    let db = TestDb::new().await;
    let conn = db.conn().await;
    assert!(admin::depth(&conn).await.unwrap().is_empty());
    for n in 0..3 {
        enqueue(&conn, &job("a", n)).await.unwrap();
    }
    let cancelled = enqueue(&conn, &job("a", 9)).await.unwrap();
    control::cancel(&conn, cancelled.id).await.unwrap();
    enqueue(&conn, &job("b", 1)).await.unwrap();
    assert_eq!(
        admin::depth(&conn).await.unwrap(),
        vec![
            QueueDepth {
                queue: "a".into(),
                state: JobState::Available,
                count: 3
            },
            QueueDepth {
                queue: "a".into(),
                state: JobState::Cancelled,
                count: 1
            },
            QueueDepth {
                queue: "b".into(),
                state: JobState::Available,
                count: 1
            },
        ]
    );
}
