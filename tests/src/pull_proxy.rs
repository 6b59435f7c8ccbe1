//! A small HTTP proxy in front of a real registry, for pull-path states no registry
//! produces by itself: it passes every request through and records it (method, path,
//! status), and on demand rewrites the `Docker-Content-Digest` of a manifest's answers,
//! or redirects blob downloads (`GET`, not `HEAD`: Distribution answers a blob `HEAD`
//! itself) to "storage": a dead port (storage down), or its own `/storage/` path that
//! serves `GET` and refuses `HEAD`, as pre-signed URLs signed for `GET` do.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use anyhow::Result;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;

use crate::http_client::Endpoint;
use crate::registry::Registry;
use crate::serve::{LoopbackListener, LoopbackServer, serve_http1};

/// A fault the proxy injects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProxyRule {
    /// Answers to requests for `path` (`/v2/<repo>/manifests/<reference>`) carry this
    /// `Docker-Content-Digest`.
    DigestHeader { path: String, value: String },
    /// `GET`s of blobs of `repo` are answered `307` to `<to>/<repo>/<digest>`.
    RedirectBlobs { repo: String, to: String },
}

/// One request the proxy saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxiedRequest {
    pub method: String,
    /// Path and query.
    pub path: String,
    pub status: u16,
}

#[derive(Default)]
struct State {
    rules: Vec<ProxyRule>,
    requests: Vec<ProxiedRequest>,
}

/// The proxy on `127.0.0.1:<free port>`; stops on drop.
pub struct PullProxy {
    server: LoopbackServer,
    state: Arc<Mutex<State>>,
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

impl PullProxy {
    /// Starts passing everything to `registry` (plain HTTP, no auth).
    pub async fn start(registry: &Registry) -> Result<PullProxy> {
        let backend = registry.endpoint().clone();
        let listener = LoopbackListener::bind("the pull proxy").await?;
        let state: Arc<Mutex<State>> = Arc::default();
        let shared = state.clone();
        let server = listener.serve(move |stream, _peer| {
            let (state, backend) = (shared.clone(), backend.clone());
            let service = service_fn(move |req: http::Request<Incoming>| {
                let (state, backend) = (state.clone(), backend.clone());
                async move { Ok::<_, Infallible>(answer(req, &backend, &state).await) }
            });
            serve_http1(stream, service)
        });
        Ok(PullProxy { server, state })
    }

    /// `127.0.0.1:PORT`: the registry host images name.
    pub fn host(&self) -> String {
        self.server.addr().to_string()
    }

    /// The base URL of the proxy's own GET-only "storage".
    pub fn storage_url(&self) -> String {
        format!("http://{}/storage", self.server.addr())
    }

    pub fn add(&self, rule: ProxyRule) {
        lock(&self.state).rules.push(rule);
    }

    /// The requests seen since the last call (and forgets them).
    pub fn take_requests(&self) -> Vec<ProxiedRequest> {
        std::mem::take(&mut lock(&self.state).requests)
    }
}

fn reply(status: u16, headers: &[(String, String)], body: Vec<u8>) -> http::Response<Full<Bytes>> {
    let mut builder = http::Response::builder().status(status);
    for (name, value) in headers {
        builder = builder.header(name.as_str(), value.as_str());
    }
    builder
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| http::Response::new(Full::new(Bytes::new())))
}

async fn answer(
    req: http::Request<Incoming>,
    backend: &Endpoint,
    state: &Mutex<State>,
) -> http::Response<Full<Bytes>> {
    let method = req.method().clone();
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let forwarded: Vec<(String, String)> = ["accept", "range", "authorization"]
        .iter()
        .filter_map(|name| {
            req.headers()
                .get(*name)
                .and_then(|v| v.to_str().ok())
                .map(|v| (name.to_string(), v.to_string()))
        })
        .collect();
    let rules = lock(state).rules.clone();
    let record = |status: u16| {
        lock(state).requests.push(ProxiedRequest {
            method: method.to_string(),
            path: path.clone(),
            status,
        });
    };

    // The GET-only storage: /storage/<repo>/<digest>.
    let upstream_path = if let Some(rest) = path.strip_prefix("/storage/") {
        if method == http::Method::HEAD {
            record(403);
            return reply(403, &[], Vec::new());
        }
        match rest.rsplit_once('/') {
            Some((repo, digest)) => format!("/v2/{repo}/blobs/{digest}"),
            None => {
                record(404);
                return reply(404, &[], Vec::new());
            }
        }
    } else {
        path.clone()
    };
    if method == http::Method::GET {
        for rule in &rules {
            if let ProxyRule::RedirectBlobs { repo, to } = rule
                && let Some(digest) = path.strip_prefix(&format!("/v2/{repo}/blobs/"))
            {
                record(307);
                let location = format!("{to}/{repo}/{digest}");
                return reply(307, &[("location".into(), location)], Vec::new());
            }
        }
    }
    let headers: Vec<(&str, &str)> = forwarded
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let sent = async {
        let mut conn = backend.connect().await?;
        conn.send(method.clone(), &upstream_path, &headers, Vec::new(), false)
            .await
    };
    let response = match sent.await {
        Ok(response) => response,
        Err(_) => {
            record(502);
            return reply(502, &[], Vec::new());
        }
    };
    let mut out: Vec<(String, String)> = response
        .headers
        .iter()
        .filter(|(name, _)| {
            !matches!(
                name.as_str(),
                "transfer-encoding" | "connection" | "keep-alive"
            ) && (method == http::Method::HEAD || name != "content-length")
        })
        .cloned()
        .collect();
    for rule in &rules {
        if let ProxyRule::DigestHeader { path: p, value } = rule
            && *p == path
        {
            out.retain(|(name, _)| name != "docker-content-digest");
            out.push(("docker-content-digest".into(), value.clone()));
        }
    }
    record(response.status);
    reply(response.status, &out, response.body)
}
