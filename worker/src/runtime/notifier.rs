//! The notifier: one LISTEN connection per worker process that wakes the producer of a queue
//! when jobs become available in it.
//!
//! Pooled connections cannot LISTEN (deadpool's connection task drops notifications), so this
//! is a connection of its own, driven by `poll_message`, reconnected with backoff when it
//! breaks. After each (re)connect every producer is woken once, to catch up on jobs enqueued
//! while nobody listened.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use engine::queue::NOTIFY_CHANNEL;
use futures::StreamExt;
use tokio::sync::Notify;
use tokio_postgres::AsyncMessage;
use tokio_util::sync::CancellationToken;

/// Listen until `stop`, waking `wakers[queue]` for each notification.
pub async fn run(
    config: tokio_postgres::Config,
    wakers: HashMap<String, Arc<Notify>>,
    stop: CancellationToken,
) {
    let mut delay = Duration::from_millis(100);
    loop {
        match listen_once(&config, &wakers, &stop).await {
            Ok(()) => return,
            Err(e) => tracing::warn!(error = %e, "LISTEN connection lost; reconnecting"),
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.cancelled() => return,
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// One connection's life: Ok when stopped, Err when the connection failed.
async fn listen_once(
    config: &tokio_postgres::Config,
    wakers: &HashMap<String, Arc<Notify>>,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    let (client, mut conn) = config.connect(tokio_postgres::NoTls).await?;
    let mut messages = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
    let sql = format!("LISTEN {NOTIFY_CHANNEL}");
    let listen = client.batch_execute(&sql);
    futures::pin_mut!(listen);
    // The connection must be driven while LISTEN runs.
    loop {
        tokio::select! {
            r = &mut listen => { r?; break; }
            m = messages.next() => match m {
                Some(Ok(msg)) => deliver(msg, wakers),
                Some(Err(e)) => return Err(e.into()),
                None => anyhow::bail!("connection closed"),
            },
        }
    }
    for w in wakers.values() {
        w.notify_one();
    }
    tracing::debug!("listening for new jobs");
    loop {
        tokio::select! {
            m = messages.next() => match m {
                Some(Ok(msg)) => deliver(msg, wakers),
                Some(Err(e)) => return Err(e.into()),
                None => anyhow::bail!("connection closed"),
            },
            _ = stop.cancelled() => return Ok(()),
        }
    }
}

fn deliver(msg: AsyncMessage, wakers: &HashMap<String, Arc<Notify>>) {
    if let AsyncMessage::Notification(n) = msg
        && let Some(w) = wakers.get(n.payload())
    {
        w.notify_one();
    }
}
