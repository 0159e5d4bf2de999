//! `ops bench api`: the HTTP API's figures, as one JSON line.
//!
//! It runs the real `api` binary on a free loopback port against the bench database and
//! drives it with [`super::load`]: `/health` throughput at concurrency 64, then the latency of
//! the operator reads that suffer most as the jobs table grows, `GET /api/v1/queues` and a
//! filtered `GET /api/v1/jobs` page, with millions of jobs in the table.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::Request;
use serde_json::json;

use super::load::{self, Until};

/// Run the API benchmark against the database at `url` with `jobs` jobs in the table.
pub async fn run(url: &str, api_bin: &Path, jobs: usize) -> anyhow::Result<serde_json::Value> {
    let pool = engine::db::pool(&engine::config::DatabaseSettings::for_url(url))?;
    engine::db::migrate(&pool).await?;
    let conn = pool.get().await?;
    conn.batch_execute("TRUNCATE jobs").await?;

    let port = testkit::free_port()?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    // The admin the bench logs in as, created by the API at start-up; new on every run, since
    // the API never changes the password of an admin that exists.
    let admin = format!("bench-{}", run_id());
    let password = format!("Bench-{}", run_id());
    let mut api = tokio::process::Command::new(api_bin)
        .env("DATABASE_URL", url)
        .env("API_HOST", "127.0.0.1")
        .env("PORT", port.to_string())
        .env("ENVIRONMENT", "development")
        .env("LOG_LEVEL", "warn")
        // One client address sends everything: the per-IP limit must not be what is measured.
        .env("RATE_LIMIT_REQUESTS", "1000000000")
        .env("ADMIN_USERNAME", &admin)
        .env("ADMIN_PASSWORD", &password)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let result = async {
        wait_ready(addr).await?;
        let token = login(addr, &admin, &password).await?;

        // /health: 64 keep-alive connections for 5 s, after a 1 s warm-up.
        load::run(
            addr,
            64,
            Until::Elapsed(Duration::from_secs(1)),
            get("/health", None),
        )
        .await?;
        let health = load::run(
            addr,
            64,
            Until::Elapsed(Duration::from_secs(5)),
            get("/health", None),
        )
        .await?;
        anyhow::ensure!(
            health.failures.is_empty(),
            "/health failed: {:?}",
            &health.failures[..health.failures.len().min(5)]
        );
        eprintln!("bench: /health {:.0}/s", health.per_second());

        // Registrations: 2,000 at concurrency 16, then 2,000 at 64, each a multipart form
        // with 11 players and a 100 KB PNG.
        let logo = std::sync::Arc::new(png_of_size(LOGO_BYTES));
        let mut registrations = serde_json::Map::new();
        for conns in [16, 64] {
            let out = load::run(
                addr,
                conns,
                Until::Requests(REGISTRATIONS),
                registration(conns, logo.clone()),
            )
            .await?;
            anyhow::ensure!(
                out.failures.is_empty(),
                "registrations failed: {:?}",
                &out.failures[..out.failures.len().min(5)]
            );
            eprintln!(
                "bench: registrations at concurrency {conns}: {:.0}/s, p50 {:.1} ms, p99 {:.1} ms",
                out.per_second(),
                out.quantile_ms(0.5),
                out.quantile_ms(0.99)
            );
            registrations.insert(
                format!("registrations_per_s_c{conns}"),
                json!(out.per_second().round()),
            );
            registrations.insert(
                format!("registration_p50_ms_c{conns}"),
                json!(round2(out.quantile_ms(0.5))),
            );
            registrations.insert(
                format!("registration_p99_ms_c{conns}"),
                json!(round2(out.quantile_ms(0.99))),
            );
        }

        let t = Instant::now();
        fill(&conn, jobs).await?;
        eprintln!(
            "bench: {jobs} jobs in the table after {:.0} s",
            t.elapsed().as_secs_f64()
        );

        let queues = sequential(addr, get("/api/v1/queues", Some(&token))).await?;
        eprintln!(
            "bench: GET /api/v1/queues p50 {:.1} ms, p99 {:.1} ms",
            queues.quantile_ms(0.5),
            queues.quantile_ms(0.99)
        );
        let page = sequential(
            addr,
            get(
                "/api/v1/jobs?queue=email&state=discarded&limit=50",
                Some(&token),
            ),
        )
        .await?;
        eprintln!(
            "bench: GET /api/v1/jobs (queue and state filter) p50 {:.1} ms, p99 {:.1} ms",
            page.quantile_ms(0.5),
            page.quantile_ms(0.99)
        );

        let mut line = json!({
            "bench": "api",
            "cpu": super::cpu_model(),
            "health_per_s": health.per_second().round(),
            "health_p99_ms": round2(health.quantile_ms(0.99)),
            "registrations": REGISTRATIONS,
            "logo_bytes": LOGO_BYTES,
            "jobs_in_table": jobs,
            "queues_p50_ms": round2(queues.quantile_ms(0.5)),
            "queues_p99_ms": round2(queues.quantile_ms(0.99)),
            "jobs_page_p50_ms": round2(page.quantile_ms(0.5)),
            "jobs_page_p99_ms": round2(page.quantile_ms(0.99)),
        });
        line.as_object_mut()
            .expect("an object")
            .extend(registrations);
        anyhow::Ok(line)
    }
    .await;
    let _ = api.kill().await;
    result
}

/// Registrations per concurrency level, as the original deployment was measured.
const REGISTRATIONS: usize = 2_000;
/// The size of the logo the original deployment was measured with.
const LOGO_BYTES: usize = 101_850;
const BOUNDARY: &str = "quayside-bench-boundary";

/// A PNG of `size` bytes: a real 1x1 image whose file is padded with an ancillary chunk, so
/// that it is judged by its bytes, not its name, and still weighs what a logo weighs.
fn png_of_size(size: usize) -> Vec<u8> {
    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let start = out.len();
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        let crc = crc32(&out[start..]);
        out.extend_from_slice(&crc.to_be_bytes());
    }
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    // 1x1, 8-bit greyscale.
    chunk(&mut png, b"IHDR", &[0, 0, 0, 1, 0, 0, 0, 1, 8, 0, 0, 0, 0]);
    // One scanline (filter byte 0, one pixel), zlib-compressed with a stored block.
    chunk(
        &mut png,
        b"IDAT",
        &[
            0x78, 0x01, 0x01, 0x02, 0x00, 0xfd, 0xff, 0x00, 0x00, 0x00, 0x02, 0x00, 0x01,
        ],
    );
    let pad = size.saturating_sub(png.len() + 12 + 12);
    chunk(&mut png, b"tEXt", &[b'x'].repeat(pad));
    chunk(&mut png, b"IEND", &[]);
    png
}

/// CRC-32 (ISO 3309), as PNG chunks carry it.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Registration number `i` as a multipart form: distinct team names, 11 players, the logo.
fn registration(
    run: usize,
    logo: std::sync::Arc<Vec<u8>>,
) -> impl Fn(usize) -> Request<Full<Bytes>> + Send + Sync + Clone + 'static {
    move |i| {
        let players: Vec<serde_json::Value> = (1..=11)
            .map(|p| json!({"name": format!("Player {p}"), "role": "batsman", "phone": "9876543210"}))
            .collect();
        let fields = [
            ("team_name", format!("Bench Team {run}-{i}")),
            ("church_name", "St. Bench Church".to_owned()),
            ("captain_name", "Captain Bench".to_owned()),
            ("coach_name", "Coach Bench".to_owned()),
            ("captain_phone", "9876543210".to_owned()),
            ("captain_whatsapp", "9876543210".to_owned()),
            ("captain_email", format!("captain{run}-{i}@example.org")),
            ("players", serde_json::Value::Array(players).to_string()),
        ];
        let mut body = Vec::with_capacity(logo.len() + 2048);
        for (name, value) in fields {
            body.extend_from_slice(
                format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n")
                    .as_bytes(),
            );
        }
        body.extend_from_slice(
            format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"logo\"; filename=\"logo.png\"\r\nContent-Type: image/png\r\n\r\n").as_bytes(),
        );
        body.extend_from_slice(&logo);
        body.extend_from_slice(format!("\r\n--{BOUNDARY}--\r\n").as_bytes());
        Request::post("/api/v1/registrations")
            .header("host", "127.0.0.1")
            .header(
                "content-type",
                format!("multipart/form-data; boundary={BOUNDARY}"),
            )
            .header("content-length", body.len())
            .body(Full::new(Bytes::from(body)))
            .expect("a valid request")
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Different on every run.
fn run_id() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!("{:x}{:x}", std::process::id(), now.as_nanos())
}

/// A GET of `path`, with a bearer token if given.
fn get(
    path: &'static str,
    token: Option<&str>,
) -> impl Fn(usize) -> Request<Full<Bytes>> + Send + Sync + Clone + 'static {
    let auth = token.map(|t| format!("Bearer {t}"));
    move |_| {
        let mut req = Request::get(path).header("host", "127.0.0.1");
        if let Some(a) = &auth {
            req = req.header("authorization", a);
        }
        req.body(Full::new(Bytes::new())).expect("a valid request")
    }
}

/// 200 requests one after another (after 10 unrecorded ones): latency of an idle server.
async fn sequential(
    addr: SocketAddr,
    make: impl Fn(usize) -> Request<Full<Bytes>> + Send + Sync + Clone + 'static,
) -> anyhow::Result<load::Outcome> {
    load::run(addr, 1, Until::Requests(10), make.clone()).await?;
    let out = load::run(addr, 1, Until::Requests(200), make).await?;
    anyhow::ensure!(
        out.failures.is_empty(),
        "requests failed: {:?}",
        &out.failures[..out.failures.len().min(5)]
    );
    Ok(out)
}

async fn wait_ready(addr: SocketAddr) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok((200, _)) = load::once(addr, get("/ready", None)(0)).await {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "the API did not become ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn login(addr: SocketAddr, username: &str, password: &str) -> anyhow::Result<String> {
    let body = json!({"username": username, "password": password}).to_string();
    let req = Request::post("/api/v1/auth/login")
        .header("host", "127.0.0.1")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))?;
    let (status, body) = load::once(addr, req).await?;
    anyhow::ensure!(
        status == 200,
        "login answered {status}: {}",
        String::from_utf8_lossy(&body)
    );
    let v: serde_json::Value = serde_json::from_slice(&body)?;
    v["access_token"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("no access_token in {v}"))
}

/// Fill the jobs table with `total` jobs over three queues, as a busy system's history looks:
/// 97 % completed, 1 % discarded, 1 % available, 1 % scheduled for later.
async fn fill(c: &deadpool_postgres::Client, total: usize) -> anyhow::Result<()> {
    const CHUNK: usize = 500_000;
    let mut done = 0;
    while done < total {
        let n = CHUNK.min(total - done) as i64;
        c.execute(
            "INSERT INTO jobs (queue, kind, args, state, attempt, run_at, attempted_at,
                               attempted_by, finished_at, created_at, errors)
             SELECT (ARRAY['email', 'uploads', 'default'])[1 + g % 3], 'noop', '{}',
                    s.state, CASE WHEN s.state IN ('available', 'scheduled') THEN 0 ELSE 1 END,
                    CASE WHEN s.state = 'scheduled' THEN now() + interval '1 day' ELSE now() END,
                    CASE WHEN s.state IN ('available', 'scheduled') THEN NULL ELSE now() END,
                    CASE WHEN s.state IN ('available', 'scheduled') THEN NULL ELSE 'bench' END,
                    CASE WHEN s.state IN ('completed', 'discarded') THEN now() END,
                    now() - make_interval(secs => ($2::bigint - g) / 100.0),
                    CASE WHEN s.state = 'discarded'
                         THEN '[{\"attempt\": 1, \"kind\": \"error\", \"message\": \"bench\"}]'::jsonb
                         ELSE '[]' END
               FROM generate_series($1::bigint, $1::bigint + $3::bigint - 1) AS g,
                    LATERAL (SELECT (CASE g % 100 WHEN 0 THEN 'discarded' WHEN 1 THEN 'available'
                                     WHEN 2 THEN 'scheduled' ELSE 'completed' END)::job_state AS state) AS s",
            &[&(done as i64), &(total as i64), &n],
        )
        .await?;
        done += n as usize;
    }
    c.batch_execute("VACUUM ANALYZE jobs").await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bench_logo_is_a_png_of_the_asked_size() {
        let png = png_of_size(LOGO_BYTES);
        assert_eq!(png.len(), LOGO_BYTES);
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        // The IHDR chunk's CRC, as any PNG reader computes it.
        assert_eq!(&png[29..33], &0x3a7e_9b55u32.to_be_bytes());
        assert_eq!(&png[png.len() - 12..], b"\0\0\0\0IEND\xaeB`\x82");
    }
}
