//! A small HTTP/1.1 load generator: keep-alive connections, each sending its requests back to
//! back, every latency recorded. Written on hyper's connection API, so the client costs as
//! little CPU as it can on a machine it shares with the server it measures.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// What a load run saw.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Latency of every 2xx answer.
    pub latencies: Vec<Duration>,
    /// Answers that were not 2xx, by status.
    pub failures: Vec<u16>,
    /// Wall time of the run.
    pub elapsed: Duration,
}

impl Outcome {
    /// 2xx answers per second.
    pub fn per_second(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64()
    }

    /// The `p`-quantile (0..=1) of the latencies, in milliseconds.
    pub fn quantile_ms(&self, p: f64) -> f64 {
        let mut l = self.latencies.clone();
        l.sort_unstable();
        if l.is_empty() {
            return f64::NAN;
        }
        let i = ((l.len() as f64 * p).ceil() as usize).clamp(1, l.len()) - 1;
        l[i].as_secs_f64() * 1e3
    }
}

/// When a run stops.
#[derive(Debug, Clone, Copy)]
pub enum Until {
    /// After this long.
    Elapsed(Duration),
    /// After this many requests in all.
    Requests(usize),
}

/// Send requests made by `make(i)` (i counts from 0 across all connections) over `conns`
/// connections to `addr` until `until`.
pub async fn run<F>(
    addr: SocketAddr,
    conns: usize,
    until: Until,
    make: F,
) -> anyhow::Result<Outcome>
where
    F: Fn(usize) -> Request<Full<Bytes>> + Send + Sync + Clone + 'static,
{
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..conns {
        let (make, next) = (make.clone(), next.clone());
        tasks.spawn(async move {
            let stream = TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            let (mut send, conn) = http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(conn);
            let mut out = Outcome::default();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let done = match until {
                    Until::Elapsed(d) => start.elapsed() >= d,
                    Until::Requests(n) => i >= n,
                };
                if done {
                    return anyhow::Ok(out);
                }
                send.ready().await?;
                let t = Instant::now();
                let res = send.send_request(make(i)).await?;
                let status = res.status();
                res.into_body().collect().await?;
                if status.is_success() {
                    out.latencies.push(t.elapsed());
                } else {
                    out.failures.push(status.as_u16());
                }
            }
        });
    }
    let mut all = Outcome::default();
    while let Some(r) = tasks.join_next().await {
        let o = r??;
        all.latencies.extend(o.latencies);
        all.failures.extend(o.failures);
    }
    all.elapsed = start.elapsed();
    Ok(all)
}

/// One request, answered: its status and body.
pub async fn once(addr: SocketAddr, req: Request<Full<Bytes>>) -> anyhow::Result<(u16, Bytes)> {
    let stream = TcpStream::connect(addr).await?;
    let (mut send, conn) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let res = send.send_request(req).await?;
    let status = res.status().as_u16();
    Ok((status, res.into_body().collect().await?.to_bytes()))
}
