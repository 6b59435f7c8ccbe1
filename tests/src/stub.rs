//! A tiny programmable HTTP/1 server for responses no real registry gives here.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::Result;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;

use crate::http_client::header_pairs;
use crate::serve::{LoopbackListener, LoopbackServer, serve_http1};

/// What the stub answers to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StubResponse {
    /// Status code (an invalid code is answered with 500).
    pub status: u16,
    /// Extra response headers.
    pub headers: Vec<(String, String)>,
    /// Response body (not sent for HEAD).
    pub body: String,
}

impl StubResponse {
    /// A response with this status, no headers and an empty body.
    pub fn new(status: u16) -> StubResponse {
        StubResponse {
            status,
            headers: Vec::new(),
            body: String::new(),
        }
    }

    /// Adds a header.
    pub fn with_header(mut self, name: &str, value: &str) -> StubResponse {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Sets the body.
    pub fn with_body(mut self, body: &str) -> StubResponse {
        self.body = body.to_owned();
        self
    }
}

/// One request the stub received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedRequest {
    /// `GET`, `HEAD`, ...
    pub method: String,
    /// Path with query string, e.g. `/v2/app/manifests/v1`.
    pub path: String,
    /// Request headers, names lower-cased.
    pub headers: Vec<(String, String)>,
}

impl RecordedRequest {
    /// First value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

type Handler = dyn Fn(&RecordedRequest) -> StubResponse + Send + Sync + 'static;

/// An HTTP/1 server on `127.0.0.1:<free port>` that answers every request with what the
/// handler returns and records the requests. Shuts down on drop.
pub struct StubServer {
    server: LoopbackServer,
    requests: Arc<Mutex<Vec<RecordedRequest>>>,
}

impl std::fmt::Debug for StubServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StubServer")
            .field("addr", &self.server.addr())
            .finish()
    }
}

impl StubServer {
    /// Binds a free loopback port and starts serving. The handler gets the method and the
    /// path with its query string. Must be called inside a tokio runtime.
    pub async fn start<F>(handler: F) -> Result<StubServer>
    where
        F: Fn(&http::Method, &str) -> StubResponse + Send + Sync + 'static,
    {
        Self::start_with(move |request: &RecordedRequest| {
            let method =
                http::Method::from_bytes(request.method.as_bytes()).unwrap_or(http::Method::GET);
            handler(&method, &request.path)
        })
        .await
    }

    /// Like [`StubServer::start`], the handler seeing the whole request (method, path
    /// with query, headers): for answers that depend on `Authorization`.
    pub async fn start_with<F>(handler: F) -> Result<StubServer>
    where
        F: Fn(&RecordedRequest) -> StubResponse + Send + Sync + 'static,
    {
        let listener = LoopbackListener::bind("stub server").await?;
        let requests: Arc<Mutex<Vec<RecordedRequest>>> = Arc::default();
        let handler: Arc<Handler> = Arc::new(handler);
        let recorded = requests.clone();
        let server = listener.serve(move |stream, _peer| {
            let handler = handler.clone();
            let recorded = recorded.clone();
            let service = service_fn(move |req: http::Request<Incoming>| {
                let handler = handler.clone();
                let recorded = recorded.clone();
                async move { Ok::<_, Infallible>(answer(req, &*handler, &recorded).await) }
            });
            serve_http1(stream, service)
        });
        Ok(StubServer { server, requests })
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        self.server.addr().to_string()
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.server.addr())
    }

    /// Every `(method, path)` seen so far, in arrival order.
    pub fn requests(&self) -> Vec<(String, String)> {
        self.recorded()
            .into_iter()
            .map(|r| (r.method, r.path))
            .collect()
    }

    /// Every request seen so far with its headers, in arrival order.
    pub fn recorded(&self) -> Vec<RecordedRequest> {
        match self.requests.lock() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

async fn answer(
    req: http::Request<Incoming>,
    handler: &Handler,
    recorded: &Mutex<Vec<RecordedRequest>>,
) -> http::Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    // Read (and discard) the body so the connection stays usable.
    let _ = body.collect().await;
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| parts.uri.path().to_owned());
    let entry = RecordedRequest {
        method: parts.method.as_str().to_owned(),
        path: path.clone(),
        headers: header_pairs(&parts.headers),
    };
    let stub = handler(&entry);
    match recorded.lock() {
        Ok(mut g) => g.push(entry),
        Err(poisoned) => poisoned.into_inner().push(entry),
    }
    let mut builder = http::Response::builder().status(stub.status);
    for (k, v) in &stub.headers {
        builder = builder.header(k.as_str(), v.as_str());
    }
    builder
        .body(Full::new(Bytes::from(stub.body)))
        .unwrap_or_else(|e| {
            let mut resp = http::Response::new(Full::new(Bytes::from(format!(
                "stub handler returned an invalid response: {e}"
            ))));
            *resp.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
            resp
        })
}
