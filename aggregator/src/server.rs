//! HTTP endpoints: `/metrics` (Prometheus text), `/healthz` (the process serves),
//! `/readyz` (the first full check pass has finished; its body says why not),
//! `/api/v1/images` (results with reasons, JSON) and `/` (the same as a page).

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::checker::limits::lock;
use crate::results;
use crate::scheduler::Pipeline;

/// What the endpoints report on.
pub struct ServerState {
    pub pipeline: Arc<Pipeline>,
    ready: AtomicBool,
    /// Human-readable detail for `/readyz`.
    detail: Mutex<String>,
}

impl ServerState {
    pub fn new(pipeline: Arc<Pipeline>) -> Self {
        ServerState {
            pipeline,
            ready: AtomicBool::new(false),
            detail: Mutex::new("first check pass has not finished".to_string()),
        }
    }

    pub fn set_ready(&self, ready: bool, detail: impl Into<String>) {
        *lock(&self.detail) = detail.into();
        self.ready.store(ready, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

pub use pullwatch::support::BindError as ServerError;

/// Binds `--bind-address` (`:8080` means every interface, as in Go).
pub async fn bind(address: &str) -> Result<TcpListener, ServerError> {
    pullwatch::support::bind_listener("--bind-address", address).await
}

/// Serves until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    state: Arc<ServerState>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        let (stream, peer) = match accepted {
            Ok(connection) => connection,
            Err(error) => {
                warn!(%error, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(route(&state, &request)) }
            });
            if let Err(error) = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                debug!(%peer, error = %error, "connection ended with an error");
            }
        });
    }
}

type Body = BoxBody<Bytes, std::io::Error>;

fn route(state: &ServerState, request: &Request<Incoming>) -> Response<Body> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
    }
    match request.uri().path() {
        "/metrics" => metrics_response(state.pipeline.clone()),
        "/api/v1/images" => match results::Filter::parse(request.uri().query()) {
            Ok(filter) => match serde_json::to_vec_pretty(&state.pipeline.images(&filter)) {
                Ok(body) => with_type(
                    text(StatusCode::OK, body),
                    "application/json; charset=utf-8",
                ),
                Err(error) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{error}\n")),
            },
            Err(error) => text(StatusCode::BAD_REQUEST, format!("{error}\n")),
        },
        "/" => with_type(
            text(
                StatusCode::OK,
                results::page(&state.pipeline.images(&results::Filter::default())),
            ),
            "text/html; charset=utf-8",
        ),
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => {
            let detail = lock(&state.detail).clone();
            if state.is_ready() {
                text(StatusCode::OK, format!("ready: {detail}\n"))
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("not ready: {detail}\n"),
                )
            }
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /, /api/v1/images, /metrics, /healthz or /readyz\n",
        ),
    }
}

/// The exposition, streamed one metric family at a time.
fn metrics_response(pipeline: Arc<Pipeline>) -> Response<Body> {
    let parts = pipeline.metrics_part_count();
    let stream = futures::stream::unfold(0usize, move |part| {
        let pipeline = pipeline.clone();
        async move {
            if part >= parts {
                return None;
            }
            let chunk = pipeline
                .render_metrics_part(part)
                .map(|text| Frame::data(Bytes::from(text)))
                .map_err(std::io::Error::other);
            Some((chunk, part + 1))
        }
    });
    let mut response = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let full = Full::new(body.into()).map_err(|never| match never {});
    let mut response = Response::new(BodyExt::boxed(full));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn with_type(mut response: Response<Body>, content_type: &'static str) -> Response<Body> {
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}
