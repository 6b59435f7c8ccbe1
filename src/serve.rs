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
//!
//! No client controls the process's memory or file descriptors: every listener (these
//! and the aggregator's agent gRPC port, through [`Listener::accept_each`]) has a
//! connection cap (at the cap the connection longest without a complete request is
//! closed to admit the new one), a deadline for the first complete request (TLS
//! handshake and HTTP/2 preface included), an idle timeout, a deadline for a client
//! that stops reading, a cap on HTTP/2 streams per connection, and accept errors
//! (out of file descriptors) that back off and are logged once per interval.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::Stream;
use futures::task::AtomicWaker;
use http::{Request, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, warn};

pub mod gzip;

use crate::locks::lock;
use crate::logging::Throttle;

/// A response body: a whole buffer or a stream of chunks.
pub type Body = BoxBody<Bytes, std::io::Error>;

/// The Prometheus text exposition format, as both binaries serve it.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// Plain text.
pub(crate) const TEXT: &str = "text/plain; charset=utf-8";

/// File descriptors kept out of the default connection cap: the process's own files,
/// sockets to registries, the API server and the runtime.
const RESERVED_FDS: u64 = 64;
/// The default cap never exceeds this many connections per listener.
const MAX_DEFAULT_CONNECTIONS: u64 = 16384;
/// What hyper buffers per connection (HTTP/1 read buffer, HTTP/2 send buffer per
/// stream): with the stream cap, the memory one connection can hold.
const CONNECTION_BUFFER: usize = 64 * 1024;
/// The kernel's send buffer per accepted connection: what a client that does not read
/// makes the process render (and the kernel hold) before its writes block. Autotuning
/// would let it grow to megabytes per connection.
const SOCKET_SEND_BUFFER: usize = 256 * 1024;
/// HTTP/2 data buffered per stream beyond what the peer's window takes.
const STREAM_SEND_BUFFER: usize = 16 * 1024;
/// Accept errors are logged at most once per this interval, with their count.
const ACCEPT_ERROR_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The listener limits, the same flags in both binaries (`serve` of the aggregator,
/// `run` of the agent); each listener applies them on its own.
#[derive(Clone, Debug, clap::Args)]
pub struct LimitArgs {
    /// Open connections per listener; at the cap the connection that has gone longest
    /// without a complete request is closed to admit the new one. Default: from the
    /// process's file descriptor limit, with 64 held in reserve, shared by the
    /// process's listeners (at most 16384 each).
    #[arg(long, env = "PULLWATCH_MAX_CONNECTIONS", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: Option<u32>,
    /// A connection must complete its first request (TLS handshake and HTTP/2 preface
    /// included) within this, and an HTTP/1 request its headers.
    #[arg(long, env = "PULLWATCH_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = crate::duration::flag_value_parser)]
    pub header_read_timeout: Duration,
    /// A connection with no request in flight for this long is closed (never an
    /// agent's open session).
    #[arg(long, env = "PULLWATCH_IDLE_TIMEOUT", default_value = "60s", value_parser = crate::duration::flag_value_parser)]
    pub idle_timeout: Duration,
    /// A connection whose client has taken none of a response for this long (a full
    /// socket, a zero HTTP/2 window) is closed.
    #[arg(long, env = "PULLWATCH_SEND_TIMEOUT", default_value = "30s", value_parser = crate::duration::flag_value_parser)]
    pub send_timeout: Duration,
    /// Concurrent HTTP/2 streams per connection.
    #[arg(long = "http2-max-streams", env = "PULLWATCH_HTTP2_MAX_STREAMS", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    pub http2_max_streams: u32,
}

impl Default for LimitArgs {
    fn default() -> Self {
        LimitArgs {
            max_connections: None,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(30),
            http2_max_streams: 16,
        }
    }
}

/// [`LimitArgs`] resolved for one listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub send_timeout: Duration,
    pub http2_max_streams: u32,
}

impl LimitArgs {
    /// The limits of one of the process's `listeners` listeners: the default
    /// connection cap splits what the file descriptor limit leaves between them.
    pub fn for_listener(&self, listeners: usize) -> Limits {
        let max_connections = match self.max_connections {
            Some(n) => n as usize,
            None => default_max_connections(open_files_limit(), listeners),
        };
        Limits {
            max_connections,
            header_read_timeout: self.header_read_timeout,
            idle_timeout: self.idle_timeout,
            send_timeout: self.send_timeout,
            http2_max_streams: self.http2_max_streams,
        }
    }
}

/// The soft `RLIMIT_NOFILE` (1024 where it cannot be read).
fn open_files_limit() -> u64 {
    #[cfg(unix)]
    {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into the struct it is given, nothing else.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
            return limit.rlim_cur;
        }
    }
    1024
}

fn default_max_connections(fd_limit: u64, listeners: usize) -> usize {
    let free = fd_limit.saturating_sub(RESERVED_FDS.max(fd_limit / 8));
    (free / listeners.max(1) as u64).clamp(8, MAX_DEFAULT_CONNECTIONS) as usize
}

/// Why a listen address could not be used.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error(
        "invalid {flag} {address:?}: expected [HOST]:PORT, e.g. :8080, 127.0.0.1:8080, [::1]:8080 or localhost:8080"
    )]
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
    use std::net::{Ipv4Addr, Ipv6Addr};

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
    if let Ok(socket) = address.parse::<SocketAddr>() {
        return TcpListener::bind(socket).await.map_err(bind_error);
    }
    // A host name, as Go's net.Listen takes it: the first of its addresses that binds.
    let (host, port) = address.rsplit_once(':').ok_or_else(bad_address)?;
    let port: u16 = port.parse().map_err(|_| bad_address())?;
    if host.is_empty() || host.contains(':') {
        return Err(bad_address());
    }
    TcpListener::bind((host, port)).await.map_err(bind_error)
}

/// Serves every connection `listener` accepts with `routes`, within `limits`, until
/// `shutdown` completes; then it stops accepting and returns (connections already open
/// finish on their own tasks). `name` names the listener in logs.
pub async fn serve<R>(
    name: &'static str,
    listener: TcpListener,
    limits: Limits,
    routes: R,
    shutdown: impl Future<Output = ()>,
) where
    R: Fn(&Request<Incoming>) -> Response<Body> + Send + Sync + 'static,
{
    let routes = Arc::new(routes);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(CONNECTION_BUFFER);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.http2_max_streams)
        .max_send_buf_size(STREAM_SEND_BUFFER)
        .max_header_list_size(16 * 1024);
    let builder = Arc::new(builder);
    let connections = Listener::new(name, limits);
    connections
        .accept_each(listener, shutdown, |stream, peer| {
            let routes = routes.clone();
            let builder = builder.clone();
            let connection = stream.connection();
            tokio::spawn(async move {
                let service = service_fn(move |request| {
                    let in_flight = connection.request_started();
                    let response = routes(&request)
                        .map(|body| BodyExt::boxed(SendWatch::new(body, in_flight)));
                    async move { Ok::<_, Infallible>(response) }
                });
                if let Err(error) = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .await
                {
                    debug!(%peer, error = %error, "connection ended with an error");
                }
            });
        })
        .await;
}

/// One listener's open connections: the cap, eviction, and the deadlines a watchdog
/// enforces.
pub struct Listener {
    name: &'static str,
    limits: Limits,
    /// At the cap, a connection with a request in flight (an agent's session) is never
    /// closed to admit a new one: the new one is refused instead.
    protect_in_flight: bool,
    epoch: Instant,
    next_id: AtomicU64,
    open: Mutex<HashMap<u64, Arc<ConnectionState>>>,
}

/// What the watchdog knows of one connection. Times are milliseconds since the
/// listener's epoch; 0 means never.
struct ConnectionState {
    id: u64,
    peer: SocketAddr,
    accepted: u64,
    /// When the last request arrived.
    last_request: AtomicU64,
    /// When the connection last went without a request in flight.
    idle_since: AtomicU64,
    in_flight: AtomicUsize,
    /// Since when a write has waited on a full socket (0: it has not).
    write_blocked_since: AtomicU64,
    /// Responses waiting for the client to take their next piece, by id: since when.
    waiting_bodies: Mutex<HashMap<u64, u64>>,
    next_body: AtomicU64,
    closed: AtomicBool,
    read_waker: AtomicWaker,
    write_waker: AtomicWaker,
    epoch: Instant,
}

impl ConnectionState {
    fn now(&self) -> u64 {
        millis_since(self.epoch)
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.read_waker.wake();
        self.write_waker.wake();
    }

    /// Why the connection is to be closed now, if it is.
    fn expired(&self, limits: &Limits, now: u64) -> Option<&'static str> {
        let past = |since: u64, limit: Duration| {
            since != 0 && now.saturating_sub(since) > limit.as_millis() as u64
        };
        let in_flight = self.in_flight.load(Ordering::Acquire);
        if self.last_request.load(Ordering::Acquire) == 0
            && in_flight == 0
            && past(self.accepted, limits.header_read_timeout)
        {
            return Some("no complete request within the header read timeout");
        }
        if in_flight == 0 && past(self.idle_since.load(Ordering::Acquire), limits.idle_timeout) {
            return Some("idle");
        }
        if past(
            self.write_blocked_since.load(Ordering::Acquire),
            limits.send_timeout,
        ) {
            return Some("the client stopped reading");
        }
        let oldest_wait = lock(&self.waiting_bodies).values().min().copied();
        if oldest_wait.is_some_and(|since| past(since, limits.send_timeout)) {
            return Some("the client stopped taking the response");
        }
        None
    }

    /// Eviction order: connections without a request in flight first, then the one
    /// that has gone longest without a request.
    fn eviction_rank(&self) -> (bool, u64) {
        let last = self.last_request.load(Ordering::Acquire);
        (
            self.in_flight.load(Ordering::Acquire) > 0,
            if last == 0 { self.accepted } else { last },
        )
    }
}

fn millis_since(epoch: Instant) -> u64 {
    // +1: 0 stands for never.
    epoch.elapsed().as_millis() as u64 + 1
}

/// A handle on one connection, for the code serving it: requests in flight keep it
/// from counting as idle.
#[derive(Clone)]
pub struct Connection(Arc<ConnectionState>);

impl Connection {
    /// A request arrived; the connection is not idle until the guard is dropped (its
    /// response sent or abandoned).
    pub fn request_started(&self) -> InFlight {
        let now = self.0.now();
        self.0.last_request.store(now, Ordering::Release);
        self.0.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.0.clone())
    }
}

/// A request in flight on a [`Connection`].
pub struct InFlight(Arc<ConnectionState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle_since.store(self.0.now(), Ordering::Release);
        }
    }
}

impl Listener {
    /// An empty connection table with `limits`, and its watchdog (which ends when the
    /// listener is dropped).
    pub fn new(name: &'static str, limits: Limits) -> Arc<Listener> {
        Listener::build(name, limits, false)
    }

    /// Like [`Listener::new`], for long-lived sessions: at the cap only connections
    /// with nothing in flight make room; when every one carries a session, the new
    /// connection is refused (closed at once) rather than a live session cut.
    pub fn new_for_sessions(name: &'static str, limits: Limits) -> Arc<Listener> {
        Listener::build(name, limits, true)
    }

    fn build(name: &'static str, limits: Limits, protect_in_flight: bool) -> Arc<Listener> {
        let listener = Arc::new(Listener {
            name,
            limits,
            protect_in_flight,
            epoch: Instant::now(),
            next_id: AtomicU64::new(1),
            open: Mutex::new(HashMap::new()),
        });
        let tick = [
            listener.limits.header_read_timeout,
            listener.limits.idle_timeout,
            listener.limits.send_timeout,
        ]
        .into_iter()
        .min()
        .unwrap_or(Duration::from_secs(1))
            / 4;
        let tick = tick.clamp(Duration::from_millis(20), Duration::from_secs(1));
        tokio::spawn(watchdog(Arc::downgrade(&listener), tick));
        listener
    }

    /// This listener's limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Connections open now.
    #[cfg(test)]
    fn open_connections(&self) -> usize {
        lock(&self.open).len()
    }

    /// The open connection from `peer`, if there is one.
    pub fn connection_from(&self, peer: SocketAddr) -> Option<Connection> {
        lock(&self.open)
            .values()
            .find(|c| c.peer == peer)
            .map(|c| Connection(c.clone()))
    }

    /// Tracks `stream` from now on; at the cap the connection longest without a
    /// complete request (one with nothing in flight first) is closed to make room.
    pub(crate) fn admit<S>(self: &Arc<Self>, stream: S, peer: SocketAddr) -> Tracked<S> {
        let now = millis_since(self.epoch);
        let state = Arc::new(ConnectionState {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            peer,
            accepted: now,
            last_request: AtomicU64::new(0),
            idle_since: AtomicU64::new(now),
            in_flight: AtomicUsize::new(0),
            write_blocked_since: AtomicU64::new(0),
            waiting_bodies: Mutex::new(HashMap::new()),
            next_body: AtomicU64::new(1),
            closed: AtomicBool::new(false),
            read_waker: AtomicWaker::new(),
            write_waker: AtomicWaker::new(),
            epoch: self.epoch,
        });
        let (evicted, refused) = {
            let mut open = lock(&self.open);
            let full = open.len() >= self.limits.max_connections;
            let evicted = if full {
                self.pick_eviction(&mut open)
            } else {
                None
            };
            let refused = full && evicted.is_none();
            if !refused {
                open.insert(state.id, state.clone());
            }
            (evicted, refused)
        };
        if let Some(evicted) = evicted {
            debug!(listener = self.name, peer = %evicted.peer, "connection cap reached: closed the connection longest without a request");
            evicted.close();
        }
        if refused {
            debug!(listener = self.name, %peer, "connection cap reached and every connection carries a session: refused");
            state.close();
        }
        Tracked {
            io: stream,
            state,
            listener: Arc::downgrade(self),
        }
    }

    fn pick_eviction(
        &self,
        open: &mut HashMap<u64, Arc<ConnectionState>>,
    ) -> Option<Arc<ConnectionState>> {
        let (busy, _, id) = open
            .values()
            .map(|c| {
                let (busy, since) = c.eviction_rank();
                (busy, since, c.id)
            })
            .min()?;
        if busy && self.protect_in_flight {
            return None;
        }
        open.remove(&id)
    }

    /// Closes the connection longest without a request, to free its descriptor.
    fn evict_one(&self) -> bool {
        let evicted = self.pick_eviction(&mut lock(&self.open));
        if let Some(evicted) = &evicted {
            evicted.close();
        }
        evicted.is_some()
    }

    /// Hands every connection `listener` accepts, tracked, to `connection` until
    /// `shutdown` completes. A failed accept (out of file descriptors) closes the
    /// connection longest without a request, backs off (up to a second) and is
    /// logged once per interval with a count, rather than ending the server or
    /// flooding the log.
    pub async fn accept_each(
        self: &Arc<Self>,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
        mut connection: impl FnMut(Tracked<TcpStream>, SocketAddr),
    ) {
        tokio::pin!(shutdown);
        let throttle = Throttle::new(ACCEPT_ERROR_LOG_INTERVAL);
        let mut backoff = Duration::from_millis(5);
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = &mut shutdown => return,
            };
            match accepted {
                Ok((stream, peer)) => {
                    backoff = Duration::from_millis(5);
                    let _ =
                        socket2::SockRef::from(&stream).set_send_buffer_size(SOCKET_SEND_BUFFER);
                    connection(self.admit(stream, peer), peer);
                }
                Err(error) => {
                    if let Some(count) = throttle.hit("accept") {
                        warn!(listener = self.name, %error, count, interval = ?ACCEPT_ERROR_LOG_INTERVAL, "accept failed");
                    }
                    let out_of_files =
                        matches!(error.raw_os_error(), Some(libc::EMFILE | libc::ENFILE));
                    if out_of_files {
                        self.evict_one();
                    }
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = &mut shutdown => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    }
}

/// Closes what has expired, every `tick`, until the listener goes.
async fn watchdog(listener: Weak<Listener>, tick: Duration) {
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let Some(listener) = listener.upgrade() else {
            return;
        };
        let now = millis_since(listener.epoch);
        let expired: Vec<(Arc<ConnectionState>, &'static str)> = {
            let mut open = lock(&listener.open);
            let expired: Vec<_> = open
                .values()
                .filter_map(|c| c.expired(&listener.limits, now).map(|why| (c.clone(), why)))
                .collect();
            for (c, _) in &expired {
                open.remove(&c.id);
            }
            expired
        };
        for (connection, why) in expired {
            debug!(listener = listener.name, peer = %connection.peer, why, "closing connection");
            connection.close();
        }
    }
}

/// A connection's I/O, tracked by its [`Listener`]: once closed (evicted, expired) every
/// read and write fails, which ends whatever serves it and frees the descriptor.
pub struct Tracked<S> {
    io: S,
    state: Arc<ConnectionState>,
    listener: Weak<Listener>,
}

impl<S> Tracked<S> {
    /// The handle for the code serving this connection.
    pub(crate) fn connection(&self) -> Connection {
        Connection(self.state.clone())
    }

    fn closed_error() -> io::Error {
        io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "closed by the server's limits",
        )
    }
}

impl<S> Drop for Tracked<S> {
    fn drop(&mut self) {
        if let Some(listener) = self.listener.upgrade() {
            lock(&listener.open).remove(&self.state.id);
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.state.read_waker.register(cx.waker());
        if self.state.closed.load(Ordering::Acquire) {
            return Poll::Ready(Err(Self::closed_error()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.state.write_waker.register(cx.waker());
        if self.state.closed.load(Ordering::Acquire) {
            return Poll::Ready(Err(Self::closed_error()));
        }
        let result = Pin::new(&mut self.io).poll_write(cx, buf);
        self.note_write(result.is_pending());
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.state.write_waker.register(cx.waker());
        if self.state.closed.load(Ordering::Acquire) {
            return Poll::Ready(Err(Self::closed_error()));
        }
        let result = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.note_write(result.is_pending());
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.state.write_waker.register(cx.waker());
        if self.state.closed.load(Ordering::Acquire) {
            return Poll::Ready(Err(Self::closed_error()));
        }
        let result = Pin::new(&mut self.io).poll_flush(cx);
        self.note_write(result.is_pending());
        result
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.state.closed.load(Ordering::Acquire) {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl<S> Tracked<S> {
    fn note_write(&self, blocked: bool) {
        let since = &self.state.write_blocked_since;
        if blocked {
            if since.load(Ordering::Acquire) == 0 {
                since.store(self.state.now(), Ordering::Release);
            }
        } else {
            since.store(0, Ordering::Release);
        }
    }
}

/// The peer address, as tonic's own TCP listener gives it, so `request.remote_addr()`
/// keeps working behind a [`Tracked`] stream.
impl tonic::transport::server::Connected for Tracked<TcpStream> {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

/// A response body that counts as in flight on its connection until it ends, and
/// tells the watchdog since when it has waited for the client to take its next piece.
struct SendWatch {
    body: Body,
    in_flight: InFlight,
    /// Set while waiting on the client.
    id: Option<u64>,
}

impl SendWatch {
    /// Waiting from the start: a client with a zero HTTP/2 window is never asked for
    /// the first piece.
    fn new(body: Body, in_flight: InFlight) -> Self {
        let mut watch = SendWatch {
            body,
            in_flight,
            id: None,
        };
        watch.waiting();
        watch
    }

    fn waiting(&mut self) {
        let state = &self.in_flight.0;
        let id = *self
            .id
            .get_or_insert_with(|| state.next_body.fetch_add(1, Ordering::Relaxed));
        lock(&state.waiting_bodies).insert(id, state.now());
    }

    fn not_waiting(&mut self) {
        if let Some(id) = self.id {
            lock(&self.in_flight.0.waiting_bodies).remove(&id);
        }
    }
}

impl Drop for SendWatch {
    fn drop(&mut self) {
        self.not_waiting();
    }
}

impl hyper::body::Body for SendWatch {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.not_waiting();
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if let Poll::Ready(Some(_)) = &polled {
            self.waiting();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
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

/// 405 for a method other than GET and HEAD, with the `Allow` header RFC 9110 asks
/// of it: what both binaries' HTTP ports answer.
pub fn only_get_and_head() -> Response<Body> {
    let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
    response.headers_mut().insert(
        hyper::header::ALLOW,
        hyper::header::HeaderValue::from_static("GET, HEAD"),
    );
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

    #[test]
    fn the_default_cap_keeps_descriptors_in_reserve() {
        assert_eq!(default_max_connections(256, 2), 96);
        assert_eq!(default_max_connections(256, 1), 192);
        assert_eq!(default_max_connections(1024, 2), 448);
        assert_eq!(default_max_connections(1 << 20, 1), 16384, "capped");
        assert_eq!(default_max_connections(32, 1), 8, "never below a few");
    }

    /// At the cap, the connection longest without a request goes first, one with a
    /// request in flight last; a closed connection's reads and writes fail.
    #[tokio::test]
    async fn the_cap_evicts_the_longest_idle() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let limits = Limits {
            max_connections: 2,
            header_read_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(60),
            http2_max_streams: 4,
        };
        let listener = Listener::new("test", limits);
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let (a, _a_far) = tokio::io::duplex(64);
        let (b, _b_far) = tokio::io::duplex(64);
        let (c, _c_far) = tokio::io::duplex(64);
        let mut a = listener.admit(a, peer);
        tokio::time::sleep(Duration::from_millis(5)).await;
        let b = listener.admit(b, "127.0.0.1:2".parse().unwrap());
        // a is older, but busy: b goes.
        let _busy = a.connection().request_started();
        let mut b = b;
        let _c = listener.admit(c, "127.0.0.1:3".parse().unwrap());
        assert_eq!(listener.open_connections(), 2);
        let mut byte = [0u8; 1];
        assert!(b.read(&mut byte).await.is_err(), "b was closed");
        assert!(b.write_all(b"x").await.is_err());
        assert!(a.write_all(b"x").await.is_ok(), "a lives");
        assert!(listener.connection_from(peer).is_some());

        // For sessions: a connection with a request in flight is never evicted; the
        // newcomer is refused instead.
        let listener = Listener::new_for_sessions("sessions", listener.limits().clone());
        let (a, _a_far) = tokio::io::duplex(64);
        let (b, _b_far) = tokio::io::duplex(64);
        let (c, _c_far) = tokio::io::duplex(64);
        let mut a = listener.admit(a, peer);
        let mut b = listener.admit(b, "127.0.0.1:2".parse().unwrap());
        let _a_session = a.connection().request_started();
        let _b_session = b.connection().request_started();
        let mut c = listener.admit(c, "127.0.0.1:3".parse().unwrap());
        assert!(c.write_all(b"x").await.is_err(), "the newcomer is refused");
        assert!(a.write_all(b"x").await.is_ok() && b.write_all(b"x").await.is_ok());
        assert_eq!(listener.open_connections(), 2);
    }

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
        // A host name, as Go's net.Listen takes it (one of its addresses): the error
        // said "expected [HOST]:PORT" to `localhost:9102`.
        let named = bind("--x", "localhost:0").await.unwrap();
        assert!(named.local_addr().unwrap().ip().is_loopback());
        for bad in [
            "localhost",
            "localhost:",
            "localhost:http",
            "localhost:99999",
            ":",
        ] {
            let error = bind("--x", bad).await.unwrap_err();
            assert!(
                matches!(error, BindError::BadAddress { .. }),
                "{bad}: {error}"
            );
        }
    }
}
