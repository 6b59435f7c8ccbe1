//! A minimal HTTP/1.1 client (hyper 1.x, optional rustls) for talking to bench servers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Every manifest media type the bench pushes, for `Accept` headers.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.v2+json, \
application/vnd.docker.distribution.manifest.list.v2+json";

/// A fully read HTTP response.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Response headers in order, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The whole body (empty for HEAD).
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// First value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as (lossy) UTF-8 text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as text, decoded first when `Content-Encoding` says gzip (as a
    /// Prometheus scraper reads it: every gzip member in turn).
    pub fn decoded_text(&self) -> Result<String> {
        if self.header("content-encoding") != Some("gzip") {
            return Ok(self.text());
        }
        let mut text = String::new();
        std::io::Read::read_to_string(
            &mut flate2::read::MultiGzDecoder::new(&self.body[..]),
            &mut text,
        )
        .context("decoding a gzip body")?;
        Ok(text)
    }
}

/// Builds a rustls client config trusting exactly the CA certificates in `ca_pem`.
pub fn tls_client_config(ca_pem: &[u8]) -> Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        roots
            .add(cert.context("parsing CA PEM")?)
            .context("adding CA certificate")?;
    }
    if roots.is_empty() {
        return Err(anyhow!("no certificate found in CA PEM"));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("rustls protocol versions")?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Where and how to reach one HTTP server.
#[derive(Clone)]
pub(crate) struct Endpoint {
    /// `host:port` as used in the `Host` header (IPv6 in brackets).
    pub host: String,
    pub addr: SocketAddr,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub creds: Option<(String, String)>,
}

impl Endpoint {
    /// Opens one keep-alive HTTP/1.1 connection.
    pub async fn connect(&self) -> Result<Conn> {
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(self.addr))
            .await
            .map_err(|_| anyhow!("connecting to {} timed out", self.addr))?
            .with_context(|| format!("connecting to {}", self.addr))?;
        tcp.set_nodelay(true)?;
        let sender = match &self.tls {
            None => handshake(tcp).await?,
            Some(cfg) => {
                let connector = tokio_rustls::TlsConnector::from(cfg.clone());
                let name = ServerName::from(self.addr.ip());
                let tls = tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(name, tcp))
                    .await
                    .map_err(|_| anyhow!("TLS handshake with {} timed out", self.addr))?
                    .with_context(|| format!("TLS handshake with {}", self.addr))?;
                handshake(tls).await?
            }
        };
        Ok(Conn {
            sender,
            endpoint: self.clone(),
        })
    }
}

async fn handshake<S>(io: S) -> Result<SendRequest<Full<Bytes>>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .context("HTTP/1 handshake")?;
    tokio::spawn(async move {
        // Errors surface on the request side; the connection task just ends.
        let _ = conn.await;
    });
    Ok(sender)
}

/// One open HTTP/1.1 connection to an [`Endpoint`].
pub(crate) struct Conn {
    sender: SendRequest<Full<Bytes>>,
    endpoint: Endpoint,
}

impl Conn {
    /// Sends one request and reads the whole response; `auth` adds basic auth if the
    /// endpoint has credentials.
    pub async fn send(
        &mut self,
        method: http::Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
        auth: bool,
    ) -> Result<HttpResponse> {
        let mut builder = http::Request::builder()
            .method(method.clone())
            .uri(path)
            .header(http::header::HOST, &self.endpoint.host)
            .header(http::header::USER_AGENT, "pullwatch-testbench");
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        if auth && let Some((user, pass)) = &self.endpoint.creds {
            let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
            builder = builder.header(http::header::AUTHORIZATION, format!("Basic {token}"));
        }
        let req = builder
            .body(Full::new(Bytes::from(body)))
            .context("building request")?;
        let what = format!("{method} {}{path}", self.endpoint.host);
        let fut = async {
            self.sender.ready().await.context("connection not ready")?;
            let resp = self.sender.send_request(req).await?;
            let (parts, body) = resp.into_parts();
            let body = body.collect().await?.to_bytes();
            anyhow::Ok(HttpResponse {
                status: parts.status.as_u16(),
                headers: header_pairs(&parts.headers),
                body: body.to_vec(),
            })
        };
        tokio::time::timeout(REQUEST_TIMEOUT, fut)
            .await
            .map_err(|_| anyhow!("{what} timed out after {REQUEST_TIMEOUT:?}"))?
            .with_context(|| what.clone())
    }
}

/// The headers as `(name, value)` pairs in order, names lower-cased, values lossy UTF-8.
pub(crate) fn header_pairs(headers: &http::HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(k, v)| {
            let value = String::from_utf8_lossy(v.as_bytes()).into_owned();
            (k.as_str().to_owned(), value)
        })
        .collect()
}

/// One plain-HTTP request to `addr` on a fresh connection (e.g. to a [`crate::StubServer`]).
pub async fn http_request(
    addr: SocketAddr,
    method: http::Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Result<HttpResponse> {
    let endpoint = Endpoint {
        host: addr.to_string(),
        addr,
        tls: None,
        creds: None,
    };
    let mut conn = endpoint.connect().await?;
    conn.send(method, path, headers, body, false).await
}
