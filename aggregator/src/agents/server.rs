//! The gRPC `AgentService` agents connect to: TLS (its key pair re-read when the files
//! change, see [`super::tls`]), authentication (shared token or TokenReview, see
//! [`super::auth`]), one session per agent feeding the [`AgentHub`].
//!
//! Tokens are only accepted over TLS: without a key pair the server does not start,
//! unless `--agent-insecure-plaintext-tokens-for-testing-only` says otherwise (tests).
//! A session that fails authentication is refused with a warning naming the peer and
//! the reason (never the token), and counted in
//! `pullwatch_agent_sessions_refused_total{reason}`.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::Stream;
use pullwatch::logging::Throttle;
use pullwatch::proto::agent_service_server::{AgentService, AgentServiceServer};
use pullwatch::proto::{
    AgentMessage, AggregatorMessage, Heartbeat, Registered, agent_message, aggregator_message,
};
use pullwatch::serve::{LimitArgs, Limits, Listener, Tracked};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tonic::transport::Server;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, error, info, warn};

use super::auth::{AgentIdentity, AuthError, Authenticator, TokenReviewer, check_transport};
use super::tls::ReloadingKeyPair;
use super::{AgentHub, AgentInfo, Outbound, SessionId};

/// How long an agent has to send its `Register` after opening the stream.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(10);
/// An agent silent for this many heartbeat intervals is gone.
const MISSED_HEARTBEATS: u32 = 3;
/// Outbound messages buffered per agent.
const OUTBOUND_BUFFER: usize = 256;
/// A refused session is logged at most once per this interval per reason, with the
/// count (every refusal is still counted in the metric).
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// Pending connections the agent listener queues (see [`bind`]).
const LISTEN_BACKLOG: u32 = 8192;
/// HTTP/2 flow-control window per stream and per connection: the protocol's messages
/// are far smaller (an image list of a few hundred references is ~20 KiB).
const HTTP2_WINDOW: u32 = 64 * 1024;
/// Request headers an agent may send (a bearer token and gRPC's own).
const HTTP2_MAX_HEADER_LIST: u32 = 16 * 1024;

/// Why the agent server could not start.
#[derive(Debug, thiserror::Error)]
pub enum AgentServerError {
    #[error("{flag} {path}: {source}")]
    Read {
        /// The flag that named the file.
        flag: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("starting the agent server's runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("invalid agent TLS configuration: {0}")]
    Tls(String),
    #[error(
        "agents must authenticate: set --agent-token-audience (TokenReview of their service account tokens) or --agent-shared-token-file"
    )]
    NoAuthentication,
    #[error("--agent-token-audience needs the Kubernetes API for TokenReviews: {0}")]
    TokenReviewClient(String),
    #[error("--agent-tls-cert and --agent-tls-key go together")]
    HalfTls,
    #[error("invalid --agent-listen {0:?}: expected HOST:PORT or :PORT")]
    Listen(String),
    #[error(
        "agents present tokens, which are only accepted over TLS: set --agent-tls-cert and --agent-tls-key (tests only: --agent-insecure-plaintext-tokens-for-testing-only)"
    )]
    PlaintextTokens,
    #[error(
        "--agent-token-audience needs --agent-service-account NAMESPACE:NAME (the agents' own service account)"
    )]
    NoServiceAccount,
    #[error("invalid --agent-service-account {0:?}: expected NAMESPACE:NAME")]
    ServiceAccount(String),
}

/// Where and how the agent server listens.
#[derive(Clone, Debug)]
pub struct AgentServerConfig {
    pub listen: SocketAddr,
    /// PEM certificate chain and key; None: plain HTTP/2 (pull credentials are then
    /// never sent).
    pub tls: Option<(PathBuf, PathBuf)>,
    /// File holding the token agents present as `authorization: Bearer <token>`;
    /// re-read for every new session, so it can be rotated in place.
    pub shared_token_file: Option<PathBuf>,
    /// Accept tokens without TLS (`--agent-insecure-plaintext-tokens-for-testing-only`).
    /// Never in production: whoever sees the traffic gets the token.
    pub insecure_plaintext_tokens: bool,
}

/// A running agent server.
#[derive(Debug)]
pub struct AgentServer {
    local_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
    /// The server's own runtime threads (see [`agent_runtime`]).
    runtime: Option<tokio::runtime::Runtime>,
}

impl AgentServer {
    /// The address it listens on (the real port when started on port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops: every agent session is ended (agents reconnect to the next server) and
    /// the listener closed.
    pub async fn stop(mut self) {
        let _ = self.shutdown.send(true);
        if let Some(task) = self.task.take() {
            let abort = task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Drop for AgentServer {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        if let Some(task) = &self.task {
            task.abort();
        }
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// The agent server runs on runtime threads of its own (half the CPUs, at least one):
/// a storm of thousands of TLS handshakes and registrations then queues there, not in
/// front of `/healthz`, `/metrics` and the scheduler on the main runtime; the OS
/// shares the CPUs between both.
fn agent_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let threads = std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1));
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name("pullwatch-agent-server")
        .enable_all()
        .build()
}

fn read(flag: &'static str, path: &Path) -> Result<Vec<u8>, AgentServerError> {
    std::fs::read(path).map_err(|source| AgentServerError::Read {
        flag,
        path: path.to_path_buf(),
        source,
    })
}

/// Starts serving `AgentService` for `hub`, agents authenticating with the shared
/// token file.
pub async fn start(
    hub: AgentHub,
    config: AgentServerConfig,
) -> Result<AgentServer, AgentServerError> {
    start_with_reviewer(hub, config, None).await
}

/// Starts serving `AgentService` for `hub`; agents authenticate with the shared token
/// file (if configured) or a service-account token `reviewer` accepts for the node
/// they claim.
pub async fn start_with_reviewer(
    hub: AgentHub,
    config: AgentServerConfig,
    reviewer: Option<Arc<TokenReviewer>>,
) -> Result<AgentServer, AgentServerError> {
    start_with_limits(hub, config, reviewer, LimitArgs::default().for_listener(2)).await
}

/// [`start_with_reviewer`] with the listener `limits` (`--max-connections`,
/// `--header-read-timeout`, `--idle-timeout`, `--send-timeout`): the deadline for the
/// first request covers the TLS handshake and the HTTP/2 preface, and a connection
/// carrying an agent's session is never idle.
pub(crate) async fn start_with_limits(
    hub: AgentHub,
    config: AgentServerConfig,
    reviewer: Option<Arc<TokenReviewer>>,
    limits: Limits,
) -> Result<AgentServer, AgentServerError> {
    let auth = Authenticator {
        shared_token_file: config.shared_token_file.clone(),
        reviewer,
    };
    if !auth.is_configured() {
        return Err(AgentServerError::NoAuthentication);
    }
    // Fail at start, not at the first agent, when the token file is unreadable.
    if let Some(token_file) = &auth.shared_token_file {
        read("--agent-shared-token-file", token_file)?;
    }
    let tls = match &config.tls {
        Some((cert, key)) => {
            let pair = ReloadingKeyPair::load(cert.clone(), key.clone()).map_err(|e| match e {
                super::tls::KeyPairError::Read { path, source } => AgentServerError::Read {
                    flag: if &path == cert {
                        "--agent-tls-cert"
                    } else {
                        "--agent-tls-key"
                    },
                    path,
                    source,
                },
                other => AgentServerError::Tls(other.to_string()),
            })?;
            let tls = Arc::new(pair)
                .server_config()
                .map_err(|e| AgentServerError::Tls(e.to_string()))?;
            Some(tokio_rustls::TlsAcceptor::from(Arc::new(tls)))
        }
        None if config.insecure_plaintext_tokens => None,
        None => return Err(AgentServerError::PlaintextTokens),
    };
    // Sized for the protocol: small messages on one long-lived stream per agent, and
    // thousands of agents. Flow-control windows bound what one agent can make us
    // buffer (a large Register still arrives, paced by window updates).
    let mut builder = Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .initial_stream_window_size(Some(HTTP2_WINDOW))
        .initial_connection_window_size(Some(HTTP2_WINDOW))
        .http2_adaptive_window(Some(false))
        .http2_max_header_list_size(Some(HTTP2_MAX_HEADER_LIST))
        .tcp_nodelay(true);
    let runtime = agent_runtime().map_err(AgentServerError::Runtime)?;
    // The listener, the accept loop and every session live on the server's runtime.
    let entered = runtime.enter();
    let listener = bind(config.listen).map_err(|source| AgentServerError::Bind {
        addr: config.listen,
        source,
    })?;
    let local_addr = listener
        .local_addr()
        .map_err(|source| AgentServerError::Bind {
            addr: config.listen,
            source,
        })?;
    let (shutdown, mut stopping) = watch::channel(false);
    let connections = Listener::new_for_sessions("agents", limits);
    let service = AgentServiceServer::new(Sessions {
        hub,
        auth,
        tls: tls.is_some(),
        insecure_plaintext_tokens: config.insecure_plaintext_tokens,
        shutdown: shutdown.subscribe(),
        connections: connections.clone(),
        refusals: Throttle::new(REFUSAL_LOG_INTERVAL),
    });
    let router = builder.add_service(service);
    let signal = async move {
        let _ = stopping.wait_for(|stop| *stop).await;
    };
    let task = match tls {
        Some(acceptor) => {
            let incoming = tls_incoming(listener, acceptor, connections, shutdown.subscribe());
            tokio::spawn(async move {
                if let Err(error) = router.serve_with_incoming_shutdown(incoming, signal).await {
                    warn!(%error, "agent server stopped");
                }
            })
        }
        None => {
            let incoming = plain_incoming(listener, connections, shutdown.subscribe());
            tokio::spawn(async move {
                if let Err(error) = router.serve_with_incoming_shutdown(incoming, signal).await {
                    warn!(%error, "agent server stopped");
                }
            })
        }
    };
    drop(entered);
    info!(%local_addr, tls = config.tls.is_some(), "agent server listening");
    if config.tls.is_none() {
        error!(
            "INSECURE: the agent server runs without TLS and accepts agent tokens in plain text (--agent-insecure-plaintext-tokens-for-testing-only); no pull secret is ever sent to agents"
        );
    }
    Ok(AgentServer {
        local_addr,
        shutdown,
        task: Some(task),
        runtime: Some(runtime),
    })
}

/// The agent listener, with an accept backlog for a fleet reconnecting at once (the
/// default of 128 overflows when thousands of agents come back after a restart; the
/// kernel caps it at `net.core.somaxconn`, 4096 by default since Linux 5.4).
fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    // As std's and tokio's own bind: a restarted aggregator rebinds at once.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Accepted TLS connections, within the listener's limits: each TCP connection's
/// handshake runs on its own task (a slow client delays no other), with the key pair
/// current at that moment, and must end within the header read timeout.
fn tls_incoming(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    connections: Arc<Listener>,
    mut stopping: watch::Receiver<bool>,
) -> impl Stream<Item = Result<tokio_rustls::server::TlsStream<Tracked<TcpStream>>, std::io::Error>>
{
    let (tx, mut rx) = mpsc::channel(64);
    let handshake_timeout = connections.limits().header_read_timeout;
    tokio::spawn(async move {
        let stop = async move {
            let _ = stopping.wait_for(|stop| *stop).await;
        };
        connections
            .accept_each(listener, stop, |tcp, peer| {
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let _ = tx.send(Ok(stream)).await;
                        }
                        Ok(Err(error)) => debug!(%peer, %error, "agent TLS handshake failed"),
                        Err(_) => debug!(%peer, "agent TLS handshake timed out"),
                    }
                });
            })
            .await;
    });
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// Accepted plain connections (tests only), within the listener's limits.
fn plain_incoming(
    listener: tokio::net::TcpListener,
    connections: Arc<Listener>,
    mut stopping: watch::Receiver<bool>,
) -> impl Stream<Item = Result<Tracked<TcpStream>, std::io::Error>> {
    let (tx, mut rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let stop = async move {
            let _ = stopping.wait_for(|stop| *stop).await;
        };
        connections
            .accept_each(listener, stop, |tcp, _peer| {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let _ = tx.send(Ok(tcp)).await;
                });
            })
            .await;
    });
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

struct Sessions {
    hub: AgentHub,
    auth: Authenticator,
    /// Whether connections arrive over TLS.
    tls: bool,
    insecure_plaintext_tokens: bool,
    /// Becomes true when the server stops: every session ends.
    shutdown: watch::Receiver<bool>,
    /// The listener's connections: a session in flight keeps its connection from
    /// counting as idle.
    connections: Arc<Listener>,
    /// One log line per interval and reason for refused sessions.
    refusals: Throttle,
}

impl Sessions {
    async fn authenticate<T>(&self, request: &Request<T>) -> Result<AgentIdentity, Status> {
        let presented = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let result = match check_transport(self.tls, self.insecure_plaintext_tokens) {
            Ok(()) => self.auth.authenticate(presented).await,
            Err(error) => Err(error),
        };
        result.map_err(|error| self.refuse(request.remote_addr(), None, &error))
    }

    /// Logs and counts a refused session; the status the agent gets.
    fn refuse(&self, peer: Option<SocketAddr>, node: Option<&str>, error: &AuthError) -> Status {
        if let Some(count) = self.refusals.hit(error.reason()) {
            warn!(?peer, node = node.unwrap_or(""), reason = error.reason(), %error, count, interval = ?REFUSAL_LOG_INTERVAL, "agent session refused");
        }
        self.hub.security_metrics().refused(error.reason());
        error.to_status()
    }
}

type SessionStream = Pin<Box<dyn Stream<Item = Result<AggregatorMessage, Status>> + Send>>;

#[tonic::async_trait]
impl AgentService for Sessions {
    type SessionStream = SessionStream;

    async fn session(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<SessionStream>, Status> {
        let peer = request.remote_addr();
        // In flight as long as the session's stream lives.
        let in_flight = peer
            .and_then(|peer| self.connections.connection_from(peer))
            .map(|connection| connection.request_started());
        let identity = self.authenticate(&request).await?;
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(REGISTER_TIMEOUT, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no Register within 10s"))??;
        let register = match first.and_then(|m| m.message) {
            Some(agent_message::Message::Register(register)) => register,
            _ => {
                return Err(Status::invalid_argument(
                    "the first message must be a Register",
                ));
            }
        };
        if register.node_name.trim().is_empty() {
            return Err(Status::invalid_argument("Register.node_name is empty"));
        }
        if let Err(error) = identity.check_node(&register.node_name) {
            return Err(self.refuse(peer, Some(&register.node_name), &error));
        }
        let config = self.hub.config().clone();
        let (tx, mut rx) = mpsc::channel::<Box<AggregatorMessage>>(OUTBOUND_BUFFER);
        let registered = AggregatorMessage {
            message: Some(aggregator_message::Message::Registered(Registered {
                heartbeat_interval_seconds: config.heartbeat_interval.as_secs().max(1) as u32,
                max_concurrent_checks: config.max_concurrent_checks,
            })),
        };
        tx.send(Box::new(registered))
            .await
            .map_err(|_| Status::internal("session closed"))?;
        let info = AgentInfo {
            node_name: register.node_name.clone(),
            runtime_name: register.runtime_name,
            runtime_version: register.runtime_version,
            agent_version: register.agent_version,
            images: register.images.into_iter().collect(),
            node_labels: register.node_labels.into_iter().collect(),
            connected_at: SystemTime::now(),
            in_flight: 0,
        };
        let who = identity.principal();
        let node = info.node_name.clone();
        let images = info.images.len();
        let runtime = info.runtime_name.clone();
        let session = self
            .hub
            .register_as(info, tx.clone(), &who)
            .map_err(|error| self.refuse(peer, Some(&node), &error))?;
        info!(node = %node, ?peer, %runtime, images, authenticated_as = %who, "agent session opened");
        tokio::spawn(run_session(
            self.hub.clone(),
            session,
            inbound,
            tx,
            self.shutdown.clone(),
        ));
        let outbound = futures::stream::poll_fn(move |cx| {
            let _in_flight = &in_flight;
            rx.poll_recv(cx).map(|m| m.map(|m| Ok(*m)))
        });
        Ok(Response::new(Box::pin(outbound)))
    }
}

/// Reads the agent's messages until the stream ends or the agent falls silent, sending
/// heartbeats meanwhile; then the agent is gone.
async fn run_session(
    hub: AgentHub,
    session: SessionId,
    mut inbound: Streaming<AgentMessage>,
    tx: Outbound,
    mut shutdown: watch::Receiver<bool>,
) {
    let interval = hub.config().heartbeat_interval;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => {
                debug!(node = %session.node, "server stopping; ending the session");
                break;
            }
            message = inbound.message() => match message {
                Ok(Some(message)) => {
                    hub.touch(&session);
                    match message.message {
                        Some(agent_message::Message::Result(result)) => hub.complete(&session, result),
                        Some(agent_message::Message::Inventory(inventory)) => {
                            hub.update_images(&session, inventory.images.into_iter().collect::<BTreeSet<_>>());
                        }
                        Some(agent_message::Message::Heartbeat(_)) => {}
                        Some(agent_message::Message::Register(_)) => {
                            warn!(node = %session.node, "second Register on one session; closing it");
                            break;
                        }
                        None => {}
                    }
                }
                Ok(None) => {
                    debug!(node = %session.node, "agent closed its stream");
                    break;
                }
                Err(status) => {
                    debug!(node = %session.node, %status, "agent stream broke");
                    break;
                }
            },
            _ = ticker.tick() => {
                match hub.silence(&session) {
                    // Replaced by a newer session of the same node.
                    None => break,
                    Some(silence) if silence > interval * MISSED_HEARTBEATS => {
                        warn!(node = %session.node, silence_s = silence.as_secs(), "agent missed its heartbeats");
                        break;
                    }
                    Some(_) => {}
                }
                let now = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map(|d| d.as_millis() as i64)
                    .unwrap_or_default();
                let heartbeat = AggregatorMessage {
                    message: Some(aggregator_message::Message::Heartbeat(Heartbeat { unix_millis: now })),
                };
                // A full buffer means the agent is not reading: its silence check decides.
                let _ = tx.try_send(Box::new(heartbeat));
            }
        }
    }
    hub.unregister(&session);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An agent that registers and then falls silent is dropped after three missed
    /// heartbeats, and its stream is closed.
    #[tokio::test]
    async fn a_silent_agent_is_dropped() {
        use pullwatch::proto::Register;
        use pullwatch::proto::agent_service_client::AgentServiceClient;

        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, "t0ken\n").unwrap();
        let hub = AgentHub::new(super::super::HubConfig {
            heartbeat_interval: Duration::from_millis(100),
            ..Default::default()
        });
        let server = start(
            hub.clone(),
            AgentServerConfig {
                listen: "127.0.0.1:0".parse().unwrap(),
                tls: None,
                shared_token_file: Some(token_file),
                insecure_plaintext_tokens: true,
            },
        )
        .await
        .unwrap();
        let mut client = AgentServiceClient::connect(format!("http://{}", server.local_addr()))
            .await
            .unwrap();
        let (tx, rx) = mpsc::channel(4);
        tx.send(AgentMessage {
            message: Some(agent_message::Message::Register(Register {
                node_name: "quiet".into(),
                ..Default::default()
            })),
        })
        .await
        .unwrap();
        let outbound = futures::stream::poll_fn({
            let mut rx = rx;
            move |cx| rx.poll_recv(cx)
        });
        let mut request = Request::new(outbound);
        request
            .metadata_mut()
            .insert("authorization", "Bearer t0ken".parse().unwrap());
        let mut inbound = client.session(request).await.unwrap().into_inner();
        let first = inbound.message().await.unwrap().unwrap();
        assert!(matches!(
            first.message,
            Some(aggregator_message::Message::Registered(_))
        ));
        assert_eq!(hub.nodes(), ["quiet"]);
        // Heartbeats arrive; the agent sends none; the stream ends after ~300 ms.
        let mut heartbeats = 0;
        let ended = tokio::time::timeout(Duration::from_secs(5), async {
            while let Ok(Some(message)) = inbound.message().await {
                if matches!(
                    message.message,
                    Some(aggregator_message::Message::Heartbeat(_))
                ) {
                    heartbeats += 1;
                }
            }
        })
        .await;
        assert!(ended.is_ok(), "the session was not closed");
        assert!(heartbeats >= 1);
        assert!(hub.nodes().is_empty());
        drop(tx);
        server.stop().await;
    }

    #[tokio::test]
    async fn refuses_to_start_without_authentication() {
        let hub = AgentHub::new(Default::default());
        let error = start(
            hub,
            AgentServerConfig {
                listen: "127.0.0.1:0".parse().unwrap(),
                tls: None,
                shared_token_file: None,
                insecure_plaintext_tokens: true,
            },
        )
        .await
        .unwrap_err();
        assert!(matches!(error, AgentServerError::NoAuthentication));
    }

    #[tokio::test]
    async fn refuses_to_start_without_tls_unless_told_it_is_a_test() {
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, "t0ken\n").unwrap();
        let config = AgentServerConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            tls: None,
            shared_token_file: Some(token_file),
            insecure_plaintext_tokens: false,
        };
        let error = start(AgentHub::new(Default::default()), config.clone())
            .await
            .unwrap_err();
        assert!(
            matches!(error, AgentServerError::PlaintextTokens),
            "{error}"
        );
        assert!(error.to_string().contains("TLS"));
        let server = start(
            AgentHub::new(Default::default()),
            AgentServerConfig {
                insecure_plaintext_tokens: true,
                ..config
            },
        )
        .await
        .unwrap();
        server.stop().await;
    }
}
