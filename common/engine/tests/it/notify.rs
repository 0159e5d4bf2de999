//! NOTIFY on commit: idle workers are woken only for jobs they can see.

use std::time::Duration;

use engine::queue::{NOTIFY_CHANNEL, enqueue, enqueue_many};
use futures::StreamExt;
use testkit::TestDb;
use tokio::sync::mpsc;
use tokio_postgres::AsyncMessage;

use crate::support::job;

/// A connection of its own that LISTENs on the queue's channel and forwards each
/// notification's (channel, payload); the client must be kept alive.
async fn listen(
    url: &str,
) -> (
    tokio_postgres::Client,
    mpsc::UnboundedReceiver<(String, String)>,
) {
    let (client, mut conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect the listener");
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(Ok(msg)) = messages.next().await {
            if let AsyncMessage::Notification(n) = msg {
                let _ = tx.send((n.channel().to_owned(), n.payload().to_owned()));
            }
        }
    });
    client
        .batch_execute(&format!("LISTEN {NOTIFY_CHANNEL}"))
        .await
        .expect("LISTEN");
    (client, rx)
}

/// Assert nothing arrives within a short while.
async fn assert_silent(rx: &mut mpsc::UnboundedReceiver<(String, String)>, when: &str) {
    if let Ok(Some(n)) = tokio::time::timeout(Duration::from_millis(250), rx.recv()).await {
        panic!("notification {n:?} {when}");
    }
}

async fn next(rx: &mut mpsc::UnboundedReceiver<(String, String)>) -> (String, String) {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("a notification within 5 s")
        .expect("listener alive")
}

#[tokio::test]
async fn notifies_the_queue_on_commit_only() {
    let db = TestDb::new().await;
    let (_listener, mut rx) = listen(&db.url).await;
    let mut conn = db.conn().await;

    // Committed: one notification naming the queue, after the commit and not before.
    let tx = conn.transaction().await.unwrap();
    enqueue(&tx, &job("mail", 1)).await.unwrap();
    assert_silent(&mut rx, "before the commit").await;
    tx.commit().await.unwrap();
    assert_eq!(next(&mut rx).await, (NOTIFY_CHANNEL.into(), "mail".into()));
    assert_silent(&mut rx, "after the one expected").await;

    // Rolled back: nothing, ever.
    let tx = conn.transaction().await.unwrap();
    enqueue(&tx, &job("mail", 2)).await.unwrap();
    tx.rollback().await.unwrap();
    assert_silent(&mut rx, "after a rollback").await;

    // A batch (COPY) over two queues: one notification per queue.
    let jobs: Vec<_> = (0..600)
        .map(|i| job(if i % 2 == 0 { "mail" } else { "sms" }, i))
        .collect();
    let tx = conn.transaction().await.unwrap();
    enqueue_many(&tx, &jobs).await.unwrap();
    assert_silent(&mut rx, "before the batch committed").await;
    tx.commit().await.unwrap();
    let mut got = vec![next(&mut rx).await.1, next(&mut rx).await.1];
    got.sort();
    assert_eq!(got, ["mail", "sms"]);
    assert_silent(&mut rx, "after one per queue").await;

    // A job that is not available yet wakes nobody.
    let mut later = job("mail", 3);
    later.opts.run_at = Some(chrono::Utc::now() + chrono::Duration::hours(1));
    enqueue(&conn, &later).await.unwrap();
    assert_silent(&mut rx, "for a scheduled job").await;
}
