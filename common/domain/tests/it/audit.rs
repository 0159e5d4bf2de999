//! The operators' audit log: append and read back.

use testkit::TestDb;

#[tokio::test]
async fn the_audit_log_reads_newest_first() {
    let db = TestDb::new().await;
    let conn = db.conn().await;
    for (i, action) in ["job.retry", "queue.pause", "job.retry"].iter().enumerate() {
        domain::audit::record(
            &conn,
            &domain::audit::NewEntry {
                actor: "user:alice",
                action,
                target: Some(format!("job:{i}")),
                filter: None,
                count: 1,
                request_id: Some("r".into()),
            },
        )
        .await
        .unwrap();
    }
    let all = domain::audit::list(&conn, None, None, None, 10)
        .await
        .unwrap();
    assert_eq!(all.len(), 3);
    assert_eq!(all[0].target.as_deref(), Some("job:2"));
    let retries = domain::audit::list(&conn, None, Some("job.retry"), None, 10)
        .await
        .unwrap();
    assert_eq!(retries.len(), 2);
    let older = domain::audit::list(&conn, Some(all[0].id), None, None, 1)
        .await
        .unwrap();
    assert_eq!(older[0].id, all[1].id);
}
