//! Stage `session`, the link to the aggregator (`run`; proto/pullwatch/v1 `AgentService`).
//!
//! One bidirectional stream: the agent registers (node name, runtime name and version
//! from CRI `Version`, the images it holds from `ListImages`), waits for `Registered`,
//! then runs the `CheckTask`s it receives (at most `--max-concurrent-checks`, and at
//! most what the aggregator allows, at a time) and answers each with a `CheckResult`,
//! which also carries the registries' pull quotas that changed since the session's
//! previous result (all that are known, on the first).
//! Both sides send heartbeats; an aggregator silent for three intervals counts as
//! gone. When the stream ends or breaks, the agent reconnects after a pause drawn at
//! random below a window (`--reconnect-backoff-base`, 5 s; doubling per failed attempt
//! up to `--reconnect-backoff-max`, 1 min): "full jitter", so thousands of agents that
//! lost the same aggregator come back spread over the whole window, not in one burst
//! that overflows its accept queue.
//! Checks that were running when the stream broke are abandoned: the aggregator
//! re-places them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use pullwatch::backoff::Backoff;
use pullwatch::proto::agent_service_client::AgentServiceClient;
use pullwatch::proto::{
    AgentMessage, AggregatorMessage, CheckResult, CheckTask, Heartbeat, ImageInventory, Register,
    Registered, RegistryQuota, Status, agent_message, aggregator_message,
};
use pullwatch::{CheckMode, ImageReference, SourcedCredential};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tonic::Streaming;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tracing::{debug, info, warn};

use crate::check::{CheckReport, Checker};
use crate::metrics::AgentMetrics;

/// How long the aggregator has to answer `Register`.
const REGISTERED_TIMEOUT: Duration = Duration::from_secs(10);
/// The aggregator is gone after this many silent heartbeat intervals.
const MISSED_HEARTBEATS: u32 = 3;

/// Why one session attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("invalid --aggregator {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error(
        "https --aggregator needs --aggregator-ca (the CA that signed the aggregator's certificate)"
    )]
    CaRequired,
    #[error("reading {flag} {path}: {source}")]
    Read {
        flag: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "--aggregator-ca {path} holds no PEM certificate (expected -----BEGIN CERTIFICATE-----: the ca.crt of the aggregator's TLS Secret)"
    )]
    NoCaCertificate { path: PathBuf },
    #[error("--token-file {path}: {reason}")]
    Token { path: PathBuf, reason: &'static str },
    #[error(
        "--node-name is empty: set it, or NODE_NAME from the downward API's spec.nodeName (the aggregator refuses a Register without it)"
    )]
    NoNodeName,
    #[error("connecting to the aggregator: {0}")]
    Connect(String),
    #[error("the aggregator refused the session: {0}")]
    Refused(tonic::Status),
    #[error("the aggregator did not answer Register within {0:?}")]
    NoRegistered(Duration),
    #[error("the aggregator was silent for {0:?}")]
    Silent(Duration),
    #[error("the session stream broke: {0}")]
    Broken(tonic::Status),
    #[error("the aggregator closed the session")]
    Closed,
    #[error(
        "refusing to send the token in --token-file to a plain http:// aggregator: use https:// with --aggregator-ca (tests only: --insecure-plaintext-token-for-testing-only)"
    )]
    PlaintextToken,
}

/// Settings of `run`.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// `--aggregator`: `https://host:port` (or `http://` without TLS, for tests).
    pub aggregator: String,
    /// `--aggregator-ca`.
    pub aggregator_ca: Option<PathBuf>,
    /// `--token-file`, re-read on every connect (projected tokens rotate).
    pub token_file: Option<PathBuf>,
    /// `--insecure-plaintext-token-for-testing-only`: present the token to an
    /// `http://` aggregator (tests only; anyone on the path can read it).
    pub insecure_plaintext_token: bool,
    /// `--node-name`.
    pub node_name: String,
    /// `--max-concurrent-checks`.
    pub max_concurrent_checks: usize,
    /// The mode for tasks that do not name one (`--mode`).
    pub default_mode: CheckMode,
    /// The first reconnect window (`--reconnect-backoff-base`): the pause after a
    /// session ends is random below it.
    pub backoff_min: Duration,
    /// The largest reconnect window (`--reconnect-backoff-max`).
    pub backoff_max: Duration,
    /// How often the image inventory is re-read and sent when it changed.
    pub inventory_interval: Duration,
    /// `--node-labels`: sent in `Register` for placement by node group.
    pub node_labels: BTreeMap<String, String>,
}

impl SessionConfig {
    pub fn new(aggregator: String, node_name: String) -> SessionConfig {
        SessionConfig {
            aggregator,
            aggregator_ca: None,
            token_file: None,
            insecure_plaintext_token: false,
            node_name,
            max_concurrent_checks: 4,
            default_mode: CheckMode::Auto,
            backoff_min: Duration::from_secs(5),
            backoff_max: Duration::from_secs(60),
            inventory_interval: Duration::from_secs(60),
            node_labels: BTreeMap::new(),
        }
    }
}

impl SessionConfig {
    /// Errors no retry can fix: a token is only ever presented over TLS.
    pub fn validate(&self) -> Result<(), SessionError> {
        if self.node_name.trim().is_empty() {
            return Err(SessionError::NoNodeName);
        }
        // Any other scheme, or none, is an invalid URL (below), not a plain-http one.
        if self.token_file.is_some()
            && self.aggregator.starts_with("http://")
            && !self.insecure_plaintext_token
        {
            return Err(SessionError::PlaintextToken);
        }
        // A URL, scheme or CA that cannot work now will not work later: say so at start
        // rather than retry forever.
        endpoint(self).map(|_| ())
    }
}

/// Keeps a session with the aggregator open, forever.
pub async fn run(checker: Arc<Checker>, metrics: Arc<AgentMetrics>, config: SessionConfig) {
    let mut backoff = Backoff::new(config.backoff_min, config.backoff_max);
    loop {
        let started = Instant::now();
        let mut registered = false;
        let result = session(&checker, &metrics, &config, &mut registered).await;
        metrics.set_connected(false);
        match &result {
            Ok(()) => info!("session with the aggregator ended"),
            Err(error) => warn!(%error, "session with the aggregator failed"),
        }
        // A session that registered (the aggregator was there: it restarted or the
        // network blipped) starts over from the base window; failed attempts widen it.
        if registered || started.elapsed() > config.backoff_max {
            backoff.reset();
        }
        let pause = backoff.next_pause();
        debug!(
            pause_ms = pause.as_millis() as u64,
            "reconnecting after a pause"
        );
        tokio::time::sleep(pause).await;
    }
}

/// The aggregator's endpoint from the flags (the CA re-read each time, for rotation).
fn endpoint(config: &SessionConfig) -> Result<Endpoint, SessionError> {
    let url_error = |reason: String| SessionError::Url {
        url: config.aggregator.clone(),
        reason,
    };
    let mut endpoint = Endpoint::from_shared(config.aggregator.clone())
        .map_err(|e| url_error(e.to_string()))?
        .connect_timeout(Duration::from_secs(10))
        .tcp_keepalive(Some(Duration::from_secs(30)))
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10));
    if config.aggregator.starts_with("https://") {
        let ca_path = config
            .aggregator_ca
            .as_ref()
            .ok_or(SessionError::CaRequired)?;
        let ca = std::fs::read(ca_path).map_err(|source| SessionError::Read {
            flag: "--aggregator-ca",
            path: ca_path.clone(),
            source,
        })?;
        // tonic takes a file without a certificate as an empty trust store: every
        // handshake would then fail with "UnknownIssuer", blaming the aggregator.
        if !CertificateDer::pem_slice_iter(&ca).any(|cert| cert.is_ok()) {
            return Err(SessionError::NoCaCertificate {
                path: ca_path.clone(),
            });
        }
        endpoint = endpoint
            .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)))
            .map_err(|e| url_error(e.to_string()))?;
    } else if !config.aggregator.starts_with("http://") {
        return Err(url_error("expected an https:// (or http://) URL".into()));
    }
    Ok(endpoint)
}

/// Normalized references of the images the node holds.
async fn node_images(checker: &Checker) -> BTreeSet<String> {
    match checker.cri().list_images().await {
        Ok(images) => images
            .into_iter()
            .flat_map(|i| i.repo_tags)
            .filter_map(|tag| ImageReference::parse(&tag).ok())
            .map(|r| r.to_string())
            .collect(),
        Err(error) => {
            warn!(%error, "listing the node's images");
            BTreeSet::new()
        }
    }
}

fn outgoing(message: agent_message::Message) -> AgentMessage {
    AgentMessage {
        message: Some(message),
    }
}

/// One session: connect, register, serve tasks until the stream ends.
async fn session(
    checker: &Arc<Checker>,
    metrics: &Arc<AgentMetrics>,
    config: &SessionConfig,
    registered_once: &mut bool,
) -> Result<(), SessionError> {
    let mut client = connect(config, metrics).await?;
    let (register, images) = registration(checker, metrics, config).await;
    let (tx, rx) = mpsc::channel::<AgentMessage>(256);
    tx.send(outgoing(agent_message::Message::Register(register)))
        .await
        .map_err(|_| SessionError::Closed)?;
    let request = with_token(
        tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx)),
        config,
    )?;
    let (inbound, registered) = open(&mut client, request, metrics).await?;
    metrics.connection_attempt("registered");
    *registered_once = true;
    metrics.set_connected(true);
    metrics.contact();
    let live = LiveSession::new(checker, metrics, config, tx, images, &registered);
    live.serve(inbound).await
}

/// A channel to the aggregator's endpoint.
async fn connect(
    config: &SessionConfig,
    metrics: &AgentMetrics,
) -> Result<AgentServiceClient<Channel>, SessionError> {
    let channel = endpoint(config)?.connect().await.map_err(|e| {
        metrics.connection_attempt("connect_error");
        SessionError::Connect(pullwatch::error_chain(&e))
    })?;
    Ok(AgentServiceClient::new(channel))
}

/// `Register`: this node, its runtime (CRI `Version`, which the checker and the
/// metrics learn too) and the images it holds (also returned).
async fn registration(
    checker: &Checker,
    metrics: &AgentMetrics,
    config: &SessionConfig,
) -> (Register, BTreeSet<String>) {
    let (runtime_name, runtime_version) = match checker.cri().version().await {
        Ok(v) => {
            metrics.set_runtime(&v.runtime_name, &v.runtime_version);
            checker.runtime_is(&v.runtime_name, &v.runtime_version);
            (v.runtime_name, v.runtime_version)
        }
        Err(error) => {
            warn!(%error, "the container runtime does not answer; registering without it");
            (String::new(), String::new())
        }
    };
    let images = node_images(checker).await;
    let register = Register {
        node_name: config.node_name.clone(),
        runtime_name,
        runtime_version,
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        images: images.iter().cloned().collect(),
        node_labels: config.node_labels.clone().into_iter().collect(),
    };
    (register, images)
}

/// `request` with the `--token-file` token (re-read now: projected tokens rotate), once
/// the settings are known to present it only over TLS.
fn with_token<T>(
    mut request: tonic::Request<T>,
    config: &SessionConfig,
) -> Result<tonic::Request<T>, SessionError> {
    config.validate()?;
    if let Some(path) = &config.token_file {
        let token = std::fs::read_to_string(path).map_err(|source| SessionError::Read {
            flag: "--token-file",
            path: path.clone(),
            source,
        })?;
        let token_error = |reason| SessionError::Token {
            path: path.clone(),
            reason,
        };
        let token = token.trim();
        if token.is_empty() {
            return Err(token_error("the file is empty"));
        }
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| token_error("the token is not a valid HTTP header value"))?;
        request.metadata_mut().insert("authorization", value);
    }
    Ok(request)
}

/// Opens the stream and waits for the aggregator's `Registered`.
async fn open(
    client: &mut AgentServiceClient<Channel>,
    request: tonic::Request<tokio_stream::wrappers::ReceiverStream<AgentMessage>>,
    metrics: &AgentMetrics,
) -> Result<(Streaming<AggregatorMessage>, Registered), SessionError> {
    let refused = |status: tonic::Status| {
        // A status the aggregator sent has no source; one tonic made of a transport
        // failure (an h2 protocol error: plain HTTP to the TLS port) does. That is no
        // session at all, not a refusal.
        if std::error::Error::source(&status).is_some() {
            metrics.connection_attempt("connect_error");
            return SessionError::Connect(pullwatch::error_chain(&status));
        }
        metrics.connection_attempt("refused");
        SessionError::Refused(status)
    };
    let mut inbound = client.session(request).await.map_err(refused)?.into_inner();
    let first = tokio::time::timeout(REGISTERED_TIMEOUT, inbound.message())
        .await
        .map_err(|_| SessionError::NoRegistered(REGISTERED_TIMEOUT))?
        .map_err(refused)?;
    match first.and_then(|first| first.message) {
        Some(aggregator_message::Message::Registered(registered)) => Ok((inbound, registered)),
        _ => Err(SessionError::Closed),
    }
}

/// A registered session: tasks in, results, heartbeats and inventory updates out.
struct LiveSession<'a> {
    checker: &'a Arc<Checker>,
    metrics: &'a Arc<AgentMetrics>,
    config: &'a SessionConfig,
    tx: mpsc::Sender<AgentMessage>,
    /// The heartbeat interval the aggregator asked for.
    interval: Duration,
    permits: Arc<Semaphore>,
    /// Dropped with the session: checks still running are abandoned (and re-placed).
    running: JoinSet<CheckResult>,
    last_contact: Instant,
    /// The quota updates this session has sent (none yet: the first result sends all).
    quotas_sent: u64,
    /// The images the aggregator was last told the node holds.
    images: BTreeSet<String>,
    /// Checks the runtime did not answer: one warning per minute.
    runtime_failures: pullwatch::logging::Throttle,
}

impl<'a> LiveSession<'a> {
    fn new(
        checker: &'a Arc<Checker>,
        metrics: &'a Arc<AgentMetrics>,
        config: &'a SessionConfig,
        tx: mpsc::Sender<AgentMessage>,
        images: BTreeSet<String>,
        registered: &Registered,
    ) -> Self {
        let interval = Duration::from_secs(u64::from(registered.heartbeat_interval_seconds.max(1)));
        let limit = match registered.max_concurrent_checks {
            0 => config.max_concurrent_checks,
            n => config.max_concurrent_checks.min(n as usize),
        }
        .max(1);
        info!(node = %config.node_name, heartbeat_s = interval.as_secs(), concurrency = limit, "registered with the aggregator");
        LiveSession {
            checker,
            metrics,
            config,
            tx,
            interval,
            permits: Arc::new(Semaphore::new(limit)),
            running: JoinSet::new(),
            last_contact: Instant::now(),
            quotas_sent: 0,
            images,
            runtime_failures: pullwatch::logging::Throttle::new(Duration::from_secs(60)),
        }
    }

    /// Serves the session until the stream ends (Ok) or breaks.
    async fn serve(
        mut self,
        mut inbound: Streaming<AggregatorMessage>,
    ) -> Result<(), SessionError> {
        let mut heartbeat = tokio::time::interval(self.interval);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut inventory = tokio::time::interval(self.config.inventory_interval);
        inventory.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        inventory.reset();
        loop {
            tokio::select! {
                incoming = inbound.message() => match incoming {
                    Ok(Some(message)) => self.received(message),
                    Ok(None) => return Ok(()),
                    Err(status) => return Err(SessionError::Broken(status)),
                },
                Some(done) = self.running.join_next() => match done {
                    Ok(result) => self.send_result(result).await?,
                    Err(error) => warn!(%error, "a check task failed"),
                },
                _ = heartbeat.tick() => self.heartbeat().await?,
                _ = inventory.tick() => self.send_inventory_if_changed().await?,
            }
        }
    }

    /// A message from the aggregator: a task starts (within the concurrency limit).
    fn received(&mut self, message: AggregatorMessage) {
        self.last_contact = Instant::now();
        self.metrics.contact();
        match message.message {
            Some(aggregator_message::Message::Task(task)) => {
                let checker = self.checker.clone();
                let metrics = self.metrics.clone();
                let permits = self.permits.clone();
                let default_mode = self.config.default_mode;
                self.running.spawn(async move {
                    let _permit = permits.acquire_owned().await;
                    run_task(&checker, &metrics, task, default_mode).await
                });
            }
            Some(aggregator_message::Message::Heartbeat(_)) => {}
            Some(aggregator_message::Message::Registered(_)) | None => {}
        }
    }

    async fn send(&self, message: agent_message::Message) -> Result<(), SessionError> {
        self.tx
            .send(outgoing(message))
            .await
            .map_err(|_| SessionError::Closed)
    }

    /// A finished check's result, with the registries' pull quotas that changed since
    /// this session last sent them.
    async fn send_result(&mut self, mut result: CheckResult) -> Result<(), SessionError> {
        // Nothing else tells the operator why this node checks nothing any more; a dead
        // runtime fails every check, so once a minute with the count.
        if result.runtime_failure
            && let Some(checks) = self.runtime_failures.hit("runtime_failure")
        {
            warn!(image = %result.image, checks, reason = %result.reason, "the container runtime did not answer a check");
        }
        let (quotas, sequence) = self.metrics.quotas_after(self.quotas_sent);
        self.quotas_sent = sequence;
        result.quotas = quotas
            .into_iter()
            .map(|(registry, quota)| RegistryQuota {
                registry,
                remaining: quota.remaining,
                limit: quota.limit,
                window_seconds: quota.window.map(|w| w.as_secs()),
            })
            .collect();
        self.send(agent_message::Message::Result(result)).await
    }

    /// A heartbeat, unless the aggregator has been silent too long.
    async fn heartbeat(&self) -> Result<(), SessionError> {
        let silence = self.last_contact.elapsed();
        if silence > self.interval * MISSED_HEARTBEATS {
            return Err(SessionError::Silent(silence));
        }
        let unix_millis = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or_default();
        self.send(agent_message::Message::Heartbeat(Heartbeat { unix_millis }))
            .await
    }

    /// The node's images, when they changed since the aggregator was last told.
    async fn send_inventory_if_changed(&mut self) -> Result<(), SessionError> {
        let now = node_images(self.checker).await;
        if now == self.images {
            return Ok(());
        }
        self.images = now;
        let update = ImageInventory {
            images: self.images.iter().cloned().collect(),
        };
        self.send(agent_message::Message::Inventory(update)).await
    }
}

async fn run_task(
    checker: &Checker,
    metrics: &AgentMetrics,
    task: CheckTask,
    default_mode: CheckMode,
) -> CheckResult {
    let secrets: Vec<SourcedCredential> = task.credentials.iter().map(Into::into).collect();
    // A task that names no mode (the aggregator's today) runs in the node's `--mode`.
    let mode = CheckMode::try_from(task.mode).unwrap_or(default_mode);
    let report: CheckReport = checker.check(&task.image, mode, &secrets).await;
    metrics.record(&report);
    CheckResult {
        task_id: task.task_id,
        image: task.image,
        status: Status::from(report.status) as i32,
        reason: report.reason,
        mode: pullwatch::proto::CheckMode::from(report.mode) as i32,
        credential_source: report.credential_source,
        duration_millis: report.duration.as_millis() as u64,
        image_present: report.image_present,
        runtime_failure: report.runtime_failure,
        digest: report.digest.unwrap_or_default(),
        held_digest: report.held_digest.unwrap_or_default(),
        tag_moved: report.tag_moved,
        // Added when the result is sent (see `session`).
        quotas: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn https_needs_a_ca() {
        let mut config = SessionConfig::new("https://agg:9443".into(), "n".into());
        assert!(matches!(endpoint(&config), Err(SessionError::CaRequired)));
        config.aggregator = "ftp://agg".into();
        assert!(matches!(endpoint(&config), Err(SessionError::Url { .. })));
        config.aggregator = "http://127.0.0.1:1".into();
        assert!(endpoint(&config).is_ok());
    }

    /// A token file that cannot be presented names `--token-file` and its path, never
    /// the token; an empty one is not sent as an empty bearer token.
    #[test]
    fn an_unusable_token_file_names_the_flag_not_the_token() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = SessionConfig::new("http://127.0.0.1:1".into(), "n".into());
        config.insecure_plaintext_token = true;
        let cases = [
            ("missing", None, "reading --token-file"),
            ("empty", Some(" \n"), "is empty"),
            (
                "newline",
                Some("s3cret-a\ns3cret-b"),
                "not a valid HTTP header value",
            ),
        ];
        for (name, contents, says) in cases {
            let path = dir.path().join(name);
            if let Some(contents) = contents {
                std::fs::write(&path, contents).unwrap();
            }
            config.token_file = Some(path.clone());
            let error = with_token(tonic::Request::new(()), &config)
                .unwrap_err()
                .to_string();
            assert!(error.contains(says), "{name}: {error}");
            assert!(error.contains("--token-file"), "{name}: {error}");
            assert!(
                error.contains(&path.display().to_string()),
                "{name}: {error}"
            );
            assert!(!error.contains("--aggregator "), "{name}: {error}");
            assert!(!error.contains("s3cret"), "{name}: {error}");
        }
        std::fs::write(dir.path().join("good"), "t0ken\n").unwrap();
        config.token_file = Some(dir.path().join("good"));
        let request = with_token(tonic::Request::new(()), &config).unwrap();
        assert_eq!(
            request.metadata().get("authorization").unwrap(),
            "Bearer t0ken"
        );
    }

    /// An --aggregator without a scheme is named as such, not as a plain-http one.
    #[test]
    fn an_aggregator_without_a_scheme_is_an_invalid_url() {
        for url in ["agg:9443", "127.0.0.1:9443", "ftp://agg"] {
            let mut config = SessionConfig::new(url.into(), "n".into());
            config.token_file = Some("/t".into());
            let error = config.validate().unwrap_err();
            assert!(matches!(error, SessionError::Url { .. }), "{url}: {error}");
            assert!(
                error.to_string().contains("expected an https://"),
                "{url}: {error}"
            );
        }
    }

    #[test]
    fn a_token_goes_only_over_tls() {
        let mut config = SessionConfig::new("http://127.0.0.1:1".into(), "n".into());
        assert!(config.validate().is_ok(), "no token, nothing to protect");
        config.token_file = Some("/t".into());
        let error = config.validate().unwrap_err();
        assert!(matches!(error, SessionError::PlaintextToken));
        assert!(error.to_string().contains("https://"));
        config.insecure_plaintext_token = true;
        assert!(config.validate().is_ok());
        config.insecure_plaintext_token = false;
        config.aggregator = "https://agg:9443".into();
        // https with its CA: the token may go.
        let ca = pullwatch_testbench::TestCa::new().unwrap();
        config.aggregator_ca = Some(ca.ca_cert_path().to_path_buf());
        assert!(config.validate().is_ok());
        // https without one can never connect: refused at start too.
        config.aggregator_ca = None;
        assert!(matches!(config.validate(), Err(SessionError::CaRequired)));
    }
}
