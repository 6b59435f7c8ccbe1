//! HTTP serving for both binaries: the aggregator's `/metrics`, `/healthz`, `/readyz`
//! and result views, the agent's per-node `/metrics` and `/healthz`. Each binary keeps
//! its own routes (a plain function from request to response); this module binds,
//! accepts, speaks HTTP/1.1 and h2c through hyper-util's `auto` builder, stops
//! accepting on shutdown, and builds the responses, streamed ones included.
//!
//! Why a small hyper module and not axum: every route here is a GET of a handful of
//! fixed paths answered from shared state, so a router, extractors and tower layers
//! would carry nothing; hyper, hyper-util and http-body-util are dependencies already
//! (the registry client and tonic bring them), and a streamed body (the aggregator's
//! scrape renders one metric family at a time, 160k series) is one `StreamBody` here.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use http::{Request, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tracing::{debug, warn};

/// A response body: a whole buffer or a stream of chunks.
pub type Body = BoxBody<Bytes, std::io::Error>;

/// The Prometheus text exposition format, as both binaries serve it.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// Plain text.
pub const TEXT: &str = "text/plain; charset=utf-8";

/// Why a listen address could not be used.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("invalid {flag} {address:?}: expected [HOST]:PORT, e.g. :8080 or 127.0.0.1:8080")]
    BadAddress { flag: &'static str, address: String },
    #[error("cannot listen on {address}: {source}")]
    Bind {
        address: String,
        source: std::io::Error,
    },
}

/// Binds like Go's `net.Listen("tcp", ":8080")`, the form the older exporter's flags
/// use: an empty host means every interface (IPv6 and IPv4 where the host has IPv6,
/// IPv4 alone where it has not). `flag` names the flag in errors.
pub async fn bind(flag: &'static str, address: &str) -> Result<TcpListener, BindError> {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

    let bad_address = || BindError::BadAddress {
        flag,
        address: address.to_string(),
    };
    let bind_error = |source| BindError::Bind {
        address: address.to_string(),
        source,
    };
    if let Some(port) = address.strip_prefix(':') {
        let port: u16 = port.parse().map_err(|_| bad_address())?;
        return match TcpListener::bind(SocketAddr::from((Ipv6Addr::UNSPECIFIED, port))).await {
            Ok(listener) => Ok(listener),
            Err(_) => TcpListener::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)))
                .await
                .map_err(bind_error),
        };
    }
    let socket: SocketAddr = address.parse().map_err(|_| bad_address())?;
    TcpListener::bind(socket).await.map_err(bind_error)
}

/// Serves every connection `listener` accepts with `routes` until `shutdown` completes;
/// then it stops accepting and returns (connections already open finish on their own
/// tasks).
pub async fn serve<R>(listener: TcpListener, routes: R, shutdown: impl Future<Output = ()>)
where
    R: Fn(&Request<Incoming>) -> Response<Body> + Send + Sync + 'static,
{
    let routes = Arc::new(routes);
    accept_each(listener, shutdown, |stream, peer| {
        let routes = routes.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let routes = routes.clone();
                async move { Ok::<_, Infallible>(routes(&request)) }
            });
            if let Err(error) = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                debug!(%peer, error = %error, "connection ended with an error");
            }
        });
    })
    .await;
}

/// Hands every connection `listener` accepts to `connection` until `shutdown`
/// completes. A failed accept (out of file descriptors) is logged and retried shortly
/// rather than ending the server. Shared by the HTTP servers and the aggregator's
/// agent (gRPC) server.
pub async fn accept_each(
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
    mut connection: impl FnMut(tokio::net::TcpStream, std::net::SocketAddr),
) {
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => return,
        };
        match accepted {
            Ok((stream, peer)) => connection(stream, peer),
            Err(error) => {
                warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// A whole-body response of `content_type`.
pub fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Body> {
    let full = Full::new(body.into()).map_err(|never| match never {});
    let mut response = Response::new(BodyExt::boxed(full));
    *response.status_mut() = status;
    set_type(&mut response, content_type);
    response
}

/// A plain-text response ([`TEXT`]).
pub fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    respond(status, TEXT, body)
}

/// A 200 response of `content_type` whose body is sent chunk by chunk as `chunks`
/// yields them (an error ends the response early).
pub fn streamed<S>(content_type: &'static str, chunks: S) -> Response<Body>
where
    S: Stream<Item = Result<Bytes, std::io::Error>> + Send + Sync + 'static,
{
    use futures::StreamExt;
    let frames = chunks.map(|chunk| chunk.map(Frame::data));
    let mut response = Response::new(BodyExt::boxed(StreamBody::new(frames)));
    set_type(&mut response, content_type);
    response
}

fn set_type(response: &mut Response<Body>, content_type: &'static str) {
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn listen_address_forms() {
        let error = bind("--bind-address", "nonsense").await.unwrap_err();
        assert!(matches!(error, BindError::BadAddress { .. }));
        assert!(
            error.to_string().starts_with("invalid --bind-address"),
            "{error}"
        );
        assert!(matches!(
            bind("--x", ":99999").await,
            Err(BindError::BadAddress { .. })
        ));
        let listener = bind("--x", "127.0.0.1:0").await.unwrap();
        assert!(listener.local_addr().unwrap().ip().is_loopback());
        let port = listener.local_addr().unwrap().port();
        // The port is taken: a clear bind error naming the address.
        let error = bind("--x", &format!("127.0.0.1:{port}")).await.unwrap_err();
        assert!(matches!(error, BindError::Bind { .. }), "{error}");
        let any = bind("--x", ":0").await.unwrap();
        assert!(any.local_addr().unwrap().ip().is_unspecified());
    }
}
