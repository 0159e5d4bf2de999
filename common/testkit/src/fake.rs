//! A real HTTP server on loopback for standing in for an external service (Cloudinary, any
//! service a `noop` job calls): poem underneath, multipart bodies parsed by poem's parser, and
//! every request recorded with what was answered, so a test can assert on what the service
//! received. What to answer is the test's to decide: a function from the request to a
//! [`Reply`], which may also be to never answer.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use poem::http::{HeaderMap, StatusCode};
use poem::listener::TcpAcceptor;
use poem::web::Multipart;
use poem::{FromRequest, Response};
use tokio::task::JoinHandle;

/// One request the server received, and what it answered.
#[derive(Debug, Clone)]
pub struct Received {
    /// When its body had been read.
    pub at: Instant,
    /// Its method, `POST`.
    pub method: String,
    /// Its path, without the query.
    pub path: String,
    /// Its headers.
    pub headers: HeaderMap,
    /// Its body.
    pub body: Bytes,
    /// The parts of a multipart/form-data body; `None` for any other body, or one that does not
    /// parse.
    pub form: Option<Vec<Part>>,
    /// The status answered; `None` for a request left hanging.
    pub status: Option<u16>,
    /// The reply's note (why a request was refused, say).
    pub note: Option<String>,
}

impl Received {
    /// The first value of header `name`, if it is there and text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The text of the form's field `name` (a part without a file name).
    pub fn field(&self, name: &str) -> Option<String> {
        self.form
            .as_ref()?
            .iter()
            .find(|p| p.name == name && p.file_name.is_none())
            .map(|p| String::from_utf8_lossy(&p.content).into_owned())
    }

    /// The form's part `name`, file or not.
    pub fn part(&self, name: &str) -> Option<&Part> {
        self.form.as_ref()?.iter().find(|p| p.name == name)
    }
}

/// One part of a multipart/form-data body.
#[derive(Debug, Clone)]
pub struct Part {
    /// Its field name.
    pub name: String,
    /// Its file name, for a file.
    pub file_name: Option<String>,
    /// Its declared content type.
    pub content_type: Option<String>,
    /// Its bytes.
    pub content: Vec<u8>,
}

/// What the server answers to a request.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The status; `None` to hold the connection open and never answer.
    status: Option<u16>,
    headers: Vec<(String, String)>,
    body: String,
    note: Option<String>,
}

impl Reply {
    /// An empty answer with `status`.
    pub fn status(status: u16) -> Reply {
        Reply {
            status: Some(status),
            headers: Vec::new(),
            body: String::new(),
            note: None,
        }
    }

    /// `status` with `body` as JSON.
    pub fn json(status: u16, body: &serde_json::Value) -> Reply {
        Reply::status(status)
            .header("Content-Type", "application/json")
            .body(body.to_string())
    }

    /// No answer at all: the connection stays open, silent.
    pub fn hang() -> Reply {
        Reply {
            status: None,
            ..Reply::status(0)
        }
    }

    /// With header `name: value`.
    pub fn header(mut self, name: &str, value: impl Into<String>) -> Reply {
        self.headers.push((name.to_owned(), value.into()));
        self
    }

    /// With `body`.
    pub fn body(mut self, body: impl Into<String>) -> Reply {
        self.body = body.into();
        self
    }

    /// With a note kept beside the request in [`Received::note`].
    pub fn note(mut self, note: impl Into<String>) -> Reply {
        self.note = Some(note.into());
        self
    }
}

type Handler = dyn Fn(&Received) -> Reply + Send + Sync;

/// The server; it stops when dropped.
pub struct FakeServer {
    /// Where it listens.
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    task: JoinHandle<()>,
}

impl FakeServer {
    /// Start a server on a free port of 127.0.0.1 that answers each request with
    /// `answer(&request)`.
    pub async fn start(answer: impl Fn(&Received) -> Reply + Send + Sync + 'static) -> FakeServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake server");
        let addr = listener.local_addr().expect("the fake server's address");
        let received = Arc::new(Mutex::new(Vec::new()));
        let answer: Arc<Handler> = Arc::new(answer);
        let log = received.clone();
        let endpoint = poem::endpoint::make(move |req: poem::Request| {
            let (answer, log) = (answer.clone(), log.clone());
            async move { serve(req, &*answer, &log).await }
        });
        let acceptor = TcpAcceptor::from_tokio(listener).expect("the fake server's listener");
        let task = tokio::spawn(async move {
            let _ = poem::Server::new_with_acceptor(acceptor)
                .run(endpoint)
                .await;
        });
        FakeServer {
            addr,
            received,
            task,
        }
    }

    /// `http://{addr}`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The URL of `path` on this server.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url())
    }

    /// Every request received so far, in order.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    req: poem::Request,
    answer: &Handler,
    log: &Mutex<Vec<Received>>,
) -> poem::Result<Response> {
    let (req, mut body) = req.split();
    let bytes = body.take()?.into_bytes().await?;
    let is_form = req
        .content_type()
        .is_some_and(|ct| ct.starts_with("multipart/form-data"));
    let form = if is_form {
        parse_form(&req, bytes.clone()).await
    } else {
        None
    };
    let mut received = Received {
        at: Instant::now(),
        method: req.method().to_string(),
        path: req.uri().path().to_owned(),
        headers: req.headers().clone(),
        body: bytes,
        form,
        status: None,
        note: None,
    };
    let reply = answer(&received);
    received.status = reply.status;
    received.note = reply.note.clone();
    log.lock().unwrap().push(received);
    let Some(status) = reply.status else {
        // Hold the connection open, silent, until the server is dropped.
        std::future::pending::<()>().await;
        unreachable!()
    };
    let mut resp =
        Response::builder().status(StatusCode::from_u16(status).expect("a valid status"));
    for (k, v) in &reply.headers {
        resp = resp.header(k.as_str(), v.as_str());
    }
    Ok(resp.body(reply.body))
}

async fn parse_form(req: &poem::Request, bytes: Bytes) -> Option<Vec<Part>> {
    let mut body = poem::RequestBody::new(poem::Body::from(bytes));
    let mut multipart = Multipart::from_request(req, &mut body).await.ok()?;
    let mut parts = Vec::new();
    while let Some(field) = multipart.next_field().await.ok()? {
        let name = field.name()?.to_owned();
        let file_name = field.file_name().map(str::to_owned);
        let content_type = field.content_type().map(str::to_owned);
        parts.push(Part {
            name,
            file_name,
            content_type,
            content: field.bytes().await.ok()?,
        });
    }
    Some(parts)
}
