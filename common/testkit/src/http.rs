//! An HTTP client for the tests that talk to a real listener (the `api` and `worker` binaries,
//! their `/metrics`): reqwest underneath, a base URL, an optional bearer token, and answers
//! read whole into a [`Response`] that prints itself usefully in an assertion message.

use std::time::Duration;

use bytes::Bytes;
use reqwest::Method;
use reqwest::header::HeaderMap;
use serde_json::Value;

/// The `Authorization` value for `token`.
pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// A client of one server.
#[derive(Clone)]
pub struct Client {
    base: String,
    inner: reqwest::Client,
    token: Option<String>,
}

impl Client {
    /// A client of the server at `base` (`http://127.0.0.1:1234`). Each request is on a
    /// connection of its own, as each client of a deployed server would be, and may take 30 s.
    pub fn new(base: impl Into<String>) -> Client {
        let inner = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(30))
            .build()
            .expect("an HTTP client");
        Client {
            base: base.into(),
            inner,
            token: None,
        }
    }

    /// A client of `http://127.0.0.1:{port}`.
    pub fn local(port: u16) -> Client {
        Client::new(format!("http://127.0.0.1:{port}"))
    }

    /// The server's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// This client, sending `Authorization: Bearer {token}` on every request.
    pub fn with_bearer(&self, token: &str) -> Client {
        Client {
            token: Some(token.to_owned()),
            ..self.clone()
        }
    }

    /// A request of `method` to `path`, to be built further.
    pub fn request(&self, method: Method, path: &str) -> Request {
        let mut inner = self.inner.request(method, format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            inner = inner.header("Authorization", bearer(t));
        }
        Request { inner }
    }

    /// A GET of `path`.
    pub fn get(&self, path: &str) -> Request {
        self.request(Method::GET, path)
    }

    /// A POST to `path`.
    pub fn post(&self, path: &str) -> Request {
        self.request(Method::POST, path)
    }

    /// The body of `GET {path}` as text (a `/metrics` scrape), or `None` while nothing answers.
    pub async fn try_text(&self, path: &str) -> Option<String> {
        self.get(path).try_send().await.ok().map(|r| r.text())
    }

    /// `POST /api/v1/registrations` with `form` (see [`crate::fixtures::registration_form`]).
    pub fn register(&self, form: reqwest::multipart::Form) -> Request {
        self.post("/api/v1/registrations").multipart(form)
    }

    /// `POST /api/v1/auth/login` as `username` with `password`.
    pub async fn login(&self, username: &str, password: &str) -> Response {
        self.post("/api/v1/auth/login")
            .json(&serde_json::json!({"username": username, "password": password}))
            .send()
            .await
    }

    /// This client, logged in as `username`: panics unless the login succeeds.
    pub async fn logged_in(&self, username: &str, password: &str) -> Client {
        let login = self.login(username, password).await;
        assert_eq!(login.status, 200, "log in as {username}: {login:?}");
        let token = login.json()["access_token"]
            .as_str()
            .unwrap_or_else(|| panic!("no access token: {login:?}"))
            .to_owned();
        self.with_bearer(&token)
    }
}

/// A request being built.
pub struct Request {
    inner: reqwest::RequestBuilder,
}

impl Request {
    /// Add header `name: value`.
    pub fn header(self, name: &str, value: &str) -> Request {
        Request {
            inner: self.inner.header(name, value),
        }
    }

    /// Send `value` as the JSON body.
    pub fn json(self, value: &Value) -> Request {
        Request {
            inner: self.inner.json(value),
        }
    }

    /// Send `form` as a multipart/form-data body.
    pub fn multipart(self, form: reqwest::multipart::Form) -> Request {
        Request {
            inner: self.inner.multipart(form),
        }
    }

    /// Send it and read the whole answer, or the transport's error.
    pub async fn try_send(self) -> reqwest::Result<Response> {
        let resp = self.inner.send().await?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.bytes().await?;
        Ok(Response {
            status,
            headers,
            body,
        })
    }

    /// Send it and read the whole answer; panics if there is none.
    pub async fn send(self) -> Response {
        self.try_send().await.expect("an HTTP answer")
    }
}

/// An answer, read whole.
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The headers.
    pub headers: HeaderMap,
    /// The body.
    pub body: Bytes,
}

impl Response {
    /// The first value of header `name`, if it is there and text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics with the body if it is not.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

impl std::fmt::Debug for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Response")
            .field("status", &self.status)
            .field("headers", &self.headers)
            .field("body", &self.text())
            .finish()
    }
}
