//! A TCP proxy in front of PostgreSQL that can lose a reply in transit: the server gets the
//! request, acts on it and commits, and the client never hears back because the connection
//! is cut. This is the real fault (a network drop after the server acted), not a mock.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// The proxy; it stops when dropped (connections already open stay up until either side
/// closes them).
pub struct CutProxy {
    url: String,
    armed: Arc<AtomicBool>,
    cuts: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl CutProxy {
    /// A proxy to the server of `url` (a PostgreSQL URL on TCP).
    pub async fn start(url: &str) -> CutProxy {
        let config: tokio_postgres::Config = url.parse().expect("valid url");
        let host = match config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            _ => "127.0.0.1".into(),
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let target = format!("{host}:{port}");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let local = listener.local_addr().expect("proxy address").port();
        let proxied = format!("127.0.0.1:{local}");
        let url = url.replacen(&target, &proxied, 1);
        assert!(url.contains(&proxied), "{url} does not name {target}");
        let armed = Arc::new(AtomicBool::new(false));
        let cuts = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn({
            let (armed, cuts) = (armed.clone(), cuts.clone());
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    let Ok(server) = TcpStream::connect(&target).await else {
                        continue;
                    };
                    tokio::spawn(relay(client, server, armed.clone(), cuts.clone()));
                }
            }
        });
        CutProxy {
            url,
            armed,
            cuts,
            task,
        }
    }

    /// The URL of the same database through the proxy.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Lose the reply to the next request the proxy carries, on whichever connection sends
    /// it: the request reaches the server, the server's whole answer (up to its
    /// `ReadyForQuery`, so the statement has committed) is thrown away, and both sides of
    /// that connection are closed.
    pub fn cut_next_reply(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }

    /// How many replies have been lost so far.
    pub fn cuts(&self) -> usize {
        self.cuts.load(Ordering::SeqCst)
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn relay(
    mut client: TcpStream,
    mut server: TcpStream,
    armed: Arc<AtomicBool>,
    cuts: Arc<AtomicUsize>,
) {
    let cutting = AtomicBool::new(false);
    let (mut client_rx, mut client_tx) = client.split();
    let (mut server_rx, mut server_tx) = server.split();
    let up = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match client_rx.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if armed.swap(false, Ordering::SeqCst) {
                cutting.store(true, Ordering::SeqCst);
            }
            if server_tx.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    let down = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match server_rx.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if cutting.load(Ordering::SeqCst) {
                // Drop the reply; once it is complete (ends with ReadyForQuery: 'Z', length
                // 5, status), cut the connection.
                if n >= 6 && buf[n - 6] == b'Z' && buf[n - 5..n - 1] == [0, 0, 0, 5] {
                    cuts.fetch_add(1, Ordering::SeqCst);
                    return;
                }
                continue;
            }
            if client_tx.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    // Either direction ending ends the connection: both sockets drop here.
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
}
