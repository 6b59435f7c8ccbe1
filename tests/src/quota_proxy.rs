//! An HTTP/1 proxy in front of a real registry that announces a pull quota the way
//! Docker Hub does: every manifest answer (`HEAD` included) carries
//! `ratelimit-limit: N;w=21600`, `ratelimit-remaining: M;w=21600` and
//! `docker-ratelimit-source`, and, as on Docker Hub, a manifest `GET` spends one pull
//! while a `HEAD` does not. Everything else passes through untouched.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Result;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::serve::{LoopbackListener, LoopbackServer, serve_http1};

/// The window the proxy announces (Docker Hub's: 6 h).
pub const QUOTA_WINDOW_SECONDS: u64 = 21600;

#[derive(Debug)]
struct Quota {
    limit: AtomicU64,
    remaining: AtomicU64,
    manifest_gets: AtomicU64,
    manifest_heads: AtomicU64,
}

/// The proxy, on `127.0.0.1:<free port>`. Stops on drop.
pub struct QuotaProxy {
    server: LoopbackServer,
    quota: Arc<Quota>,
}

impl QuotaProxy {
    /// Starts proxying to `backend` (a plain-HTTP registry) with `limit` pulls, all left.
    /// Must be called inside a tokio runtime.
    pub async fn start(backend: SocketAddr, limit: u64) -> Result<QuotaProxy> {
        let listener = LoopbackListener::bind("the quota proxy").await?;
        let quota = Arc::new(Quota {
            limit: AtomicU64::new(limit),
            remaining: AtomicU64::new(limit),
            manifest_gets: AtomicU64::new(0),
            manifest_heads: AtomicU64::new(0),
        });
        let client: Client<HttpConnector, Incoming> =
            Client::builder(TokioExecutor::new()).build_http();
        let state = quota.clone();
        let server = listener.serve(move |stream, _peer| {
            let (client, state) = (client.clone(), state.clone());
            let service =
                service_fn(move |request| forward(client.clone(), backend, state.clone(), request));
            serve_http1(stream, service)
        });
        Ok(QuotaProxy { server, quota })
    }

    /// `127.0.0.1:PORT`: the registry host images name.
    pub fn host(&self) -> String {
        self.server.addr().to_string()
    }

    /// Sets the pulls left (as if other clients of the same IP had pulled).
    pub fn set_remaining(&self, remaining: u64) {
        self.quota.remaining.store(remaining, Ordering::SeqCst);
    }

    /// The pulls left now.
    pub fn remaining(&self) -> u64 {
        self.quota.remaining.load(Ordering::SeqCst)
    }

    /// Manifest requests seen: (GET, HEAD).
    pub fn manifest_requests(&self) -> (u64, u64) {
        (
            self.quota.manifest_gets.load(Ordering::SeqCst),
            self.quota.manifest_heads.load(Ordering::SeqCst),
        )
    }
}

async fn forward(
    client: Client<HttpConnector, Incoming>,
    backend: SocketAddr,
    quota: Arc<Quota>,
    request: http::Request<Incoming>,
) -> Result<http::Response<Incoming>, hyper_util::client::legacy::Error> {
    let manifest = request.uri().path().contains("/manifests/");
    let method = request.method().clone();
    let (mut parts, body) = request.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    parts.uri = format!("http://{backend}{path}")
        .parse()
        .unwrap_or_else(|_| http::Uri::from_static("http://127.0.0.1/"));
    let mut response = client
        .request(http::Request::from_parts(parts, body))
        .await?;
    if manifest {
        let remaining = if method == http::Method::GET {
            quota.manifest_gets.fetch_add(1, Ordering::SeqCst);
            // A GET is a pull: it spends one (never below 0).
            let _ = quota
                .remaining
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |r| r.checked_sub(1));
            quota.remaining.load(Ordering::SeqCst)
        } else {
            quota.manifest_heads.fetch_add(1, Ordering::SeqCst);
            quota.remaining.load(Ordering::SeqCst)
        };
        let limit = quota.limit.load(Ordering::SeqCst);
        let headers = response.headers_mut();
        for (name, value) in [
            (
                "ratelimit-limit",
                format!("{limit};w={QUOTA_WINDOW_SECONDS}"),
            ),
            (
                "ratelimit-remaining",
                format!("{remaining};w={QUOTA_WINDOW_SECONDS}"),
            ),
            ("docker-ratelimit-source", "127.0.0.1".to_string()),
        ] {
            if let Ok(value) = http::HeaderValue::from_str(&value) {
                headers.insert(name, value);
            }
        }
    }
    Ok(response)
}
