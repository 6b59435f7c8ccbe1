//! One registry client for the aggregator's central checks and the agent's resolve mode.
//!
//! A check asks for one manifest (`HEAD`, `GET` where the registry refuses `HEAD`) with
//! one credential and classifies whatever happened: every answer, of the registry or of
//! its token endpoint, maps to a status through [`classify`]. As deep as the check depth
//! asks, it then walks the pull path from that manifest ([`pull_path`]). What can be
//! learned once per registry host is learned once and reused: the scheme (HTTPS, or
//! plain HTTP after a permitted fallback) and the auth challenge ([`challenge`]: Basic,
//! or Bearer with its realm and service), so that once a registry is known a check
//! costs one token per repository (cached until it expires: the token exchange, in
//! `token.rs`) and one `HEAD`. Pull quotas announced on manifest answers are read
//! ([`quota`]).
//!
//! Bounds: every request of a check (token, manifest, retries, fallbacks) runs under
//! one deadline the caller gives; bodies are read up to a cap (manifests 4 MiB as
//! containerd, tokens 1 MiB, error bodies 64 KiB); at most a few hundred characters of
//! a body reach a reason, never a credential.
//!
//! Rate limits: a 429 (from the registry or its token endpoint) pauses the registry
//! host ([`pause`]); every request first consults the pause and, while it lasts,
//! reports `rate_limited` without contacting the registry. Optionally a request rate
//! per host.

pub mod challenge;
pub mod classify;
pub(crate) mod pause;
pub mod pull_path;
pub mod quota;
mod token;

use std::collections::{BTreeSet, HashMap};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use http::{HeaderMap, Method, StatusCode};
use tracing::debug;

use crate::error_chain;
use crate::locks::lock;
use crate::platform::Platform;
use crate::{CheckOutcome, CheckStatus, RegistryCredential};
use challenge::AuthScheme;
use classify::TransportFailure;
use pause::{Pause, PauseChange};
use token::{TokenKey, TokenScope};

/// Every manifest media type a runtime accepts, so registries answer for indexes,
/// manifest lists, OCI and Docker manifests alike.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.v1+prettyjws;q=0.5";
/// Manifests larger than this are refused, as containerd does (`limits.MaxManifestSize`).
pub(crate) const MAX_MANIFEST_BYTES: usize = 4 << 20;
/// Error bodies are read up to this size (only their start is ever quoted).
pub(crate) const MAX_ERROR_BYTES: usize = 64 << 10;
/// Responses one request may go through: a challenge, a HEAD->GET fallback, the answer.
const MAX_RESPONSES: usize = 4;

/// The deadline of one check: every request it makes runs before it. Time spent
/// waiting for pullwatch's own request rate (a [`ClientConfig::requests_per_second`]
/// turn) does not count: that wait is ours, not the registry's slowness.
#[derive(Debug)]
pub struct Deadline {
    start: Instant,
    budget: Duration,
    /// Nanoseconds spent waiting for a request-rate turn.
    waited: AtomicU64,
}

impl Deadline {
    /// `budget` from now.
    pub fn after(budget: Duration) -> Self {
        Deadline {
            start: Instant::now(),
            budget,
            waited: AtomicU64::new(0),
        }
    }

    /// When it passes, as things stand.
    pub fn at(&self) -> Instant {
        self.start + self.budget + Duration::from_nanos(self.waited.load(Ordering::Relaxed))
    }

    fn excuse(&self, waited: Duration) {
        self.waited.fetch_add(
            u64::try_from(waited.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }
}

/// Hears about requests, for metrics. Every method has a no-op default.
pub trait RegistryObserver: Send + Sync {
    /// A request to `host` ended with HTTP status `code` (None: no HTTP answer).
    fn request(&self, _host: &str, _code: Option<u16>) {}
    /// `host` (the registry) answered 429, itself or through its token endpoint.
    fn rate_limited(&self, _host: &str) {}
    /// `host` is paused until this Unix time; 0 when the pause has ended.
    fn paused_until(&self, _host: &str, _unix_seconds: f64) {}
    /// `host` announced its pull quota on a manifest answer ([`quota`]).
    fn quota(&self, _host: &str, _quota: &quota::Quota) {}
}

/// Observes nothing.
#[derive(Debug, Default)]
pub struct NoObserver;
impl RegistryObserver for NoObserver {}

/// Settings of a [`RegistryClient`].
#[derive(Clone, Debug, Default)]
pub struct ClientConfig {
    /// Requests per second to one host (None: unbounded).
    pub requests_per_second: Option<NonZeroU32>,
    /// What to tell the operator after a TLS failure or a plain-HTTP port.
    pub hints: classify::Hints,
    /// Read the platforms of an index a check answers (one `GET` by digest per new
    /// index, cached by digest with this many entries); None: never fetch index bodies.
    pub index_platforms: Option<usize>,
    /// How deep a check walks the pull path ([`pull_path`]).
    pub walk: pull_path::WalkSettings,
}

/// How to reach a host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    Https,
    Http,
    /// HTTPS; plain HTTP only where the port refuses the connection or answers the TLS
    /// handshake with non-TLS bytes (`--allow-plain-http`). Learned once per host.
    HttpsOrPlain,
}

/// Where and how to ask: one registry host (or mirror) and its request settings.
#[derive(Clone, Copy, Debug)]
pub struct Endpoint<'a> {
    /// The HTTP client (its TLS settings are the host's).
    pub http: &'a reqwest::Client,
    pub scheme: Scheme,
    /// `host[:port]`, IPv6 literals in brackets.
    pub host: &'a str,
    /// The API root, normally `/v2`.
    pub api_root: &'a str,
    /// `?ns=<registry>` on requests to a mirror (containerd's convention).
    pub namespace: Option<&'a str>,
    /// Extra headers on every request to the host (hosts.toml `header`).
    pub headers: &'a [(String, String)],
    /// The `Accept` header of manifest requests.
    pub accept: &'a str,
}

impl<'a> Endpoint<'a> {
    /// The usual endpoint: `/v2` on `host`, no namespace, no extra headers.
    pub fn new(http: &'a reqwest::Client, scheme: Scheme, host: &'a str) -> Self {
        Endpoint {
            http,
            scheme,
            host,
            api_root: "/v2",
            namespace: None,
            headers: &[],
            accept: MANIFEST_ACCEPT,
        }
    }
}

/// What is asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Object {
    Manifest,
    /// `HEAD /blobs/<digest>`: containerd's fallback for references by digest.
    Blob,
}

impl Object {
    fn path(self) -> &'static str {
        match self {
            Object::Manifest => "manifests",
            Object::Blob => "blobs",
        }
    }
}

/// How much of an object a request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Want {
    /// `HEAD` (`GET` where a registry refuses `HEAD` on manifests).
    Head,
    /// `GET`, the body read up to this many bytes.
    Body(usize),
    /// `GET` of the first byte only (`Range: bytes=0-0`): what a node's download meets
    /// (redirects followed to the storage), without downloading the object.
    FirstByte,
}

impl Want {
    /// `HEAD` for [`Want::Head`], else `GET`.
    fn method(self) -> Method {
        match self {
            Want::Head => Method::HEAD,
            Want::Body(_) | Want::FirstByte => Method::GET,
        }
    }
}

/// The result of one check against one host.
#[derive(Clone, Debug)]
pub struct Answer {
    /// The status; when available, with the manifest's digest and media type.
    pub outcome: CheckOutcome,
    /// The HTTP status of the registry's final answer to the manifest request. None
    /// when it gave none: no connection, a deadline, the pause, or a token endpoint
    /// failure.
    pub http_status: Option<u16>,
    /// `scheme://host` that was asked last.
    pub origin: String,
}

impl Answer {
    pub(crate) fn local(outcome: CheckOutcome, origin: String) -> Answer {
        Answer {
            outcome,
            http_status: None,
            origin,
        }
    }
}

/// A manifest (or index) fetched by digest.
#[derive(Clone, Debug)]
pub struct Manifest {
    pub digest: String,
    pub media_type: Option<String>,
    pub body: Bytes,
}

/// What is known about one host.
struct HostState {
    host: String,
    limiter: Option<DefaultDirectRateLimiter>,
    pause: Mutex<Pause>,
    /// Some(true): plain HTTP answered; Some(false): HTTPS answered.
    plain_http: Mutex<Option<bool>>,
    /// The challenge learned from the host, and over which scheme (plain = true): a
    /// challenge learned over HTTPS never makes credentials go out in clear.
    challenge: Mutex<Option<(bool, AuthScheme)>>,
    /// The token endpoints' hosts this host sent us to (their series are its own).
    realms: Mutex<BTreeSet<String>>,
}

/// The client. Shareable; all state (hosts, tokens, pauses) is internal.
pub struct RegistryClient {
    config: ClientConfig,
    observer: Arc<dyn RegistryObserver>,
    hosts: Mutex<HashMap<String, Arc<HostState>>>,
    tokens: Mutex<HashMap<TokenKey, (String, Instant)>>,
    /// Platforms of the indexes seen, by digest (content-addressed: never stale).
    indexes: Mutex<HashMap<String, Arc<[Platform]>>>,
    /// What the walk read of manifests, indexes and configs, by digest (immutable).
    documents: Mutex<pull_path::DocumentCache>,
    /// When each pull path's blobs were last verified.
    verified: Mutex<HashMap<pull_path::VerifiedKey, Instant>>,
    /// Documents being read now, by digest: concurrent misses wait for one read.
    reading: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// What the nodes' runtimes do with schema 1 manifests (distinct, sorted, never
    /// empty): the config's, until an agent learns its node's runtime or the aggregator
    /// its cluster's.
    schema1: Mutex<Arc<[pull_path::Schema1Pulls]>>,
}

impl std::fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryClient")
            .field("config", &self.config)
            .finish()
    }
}

/// How one request authenticates.
#[derive(Clone)]
enum Authorization {
    None,
    Basic,
    Bearer(String),
}

/// The final HTTP answer of a conversation about one object.
#[derive(Clone)]
pub(crate) struct Final {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
    /// The body was longer than its cap.
    pub(crate) truncated: bool,
    /// The bearer token the request carried, to keep out of the reason.
    pub(crate) bearer: Option<String>,
}

/// Why a conversation ended without a final answer.
enum Failure {
    /// No HTTP answer from the host itself.
    NoAnswer(TransportFailure, CheckOutcome),
    /// Ended for a classified reason (token endpoint, pause, deadline...).
    Outcome(CheckOutcome),
}

/// What every request of one check shares: where it goes, for which repository, with
/// which credential (None: anonymous), and until when.
#[derive(Clone, Copy)]
pub struct Target<'e, 'a> {
    pub endpoint: &'a Endpoint<'e>,
    pub repository: &'a str,
    pub credential: Option<&'a RegistryCredential>,
    pub deadline: &'a Deadline,
}

fn has_password(credential: Option<&RegistryCredential>) -> Option<&RegistryCredential> {
    credential.filter(|c| !c.username.is_empty() || !c.password.is_empty())
}

fn unix_seconds(at: Instant) -> f64 {
    let from_now = at.saturating_duration_since(Instant::now());
    SystemTime::now()
        .checked_add(from_now)
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0.0, |d| d.as_secs_f64())
}

/// `host[:port]` of a URL (the realm itself when it does not parse): the label a
/// token endpoint's requests are counted under.
fn host_of_url(url: &str) -> String {
    reqwest::Url::parse(url)
        .ok()
        .and_then(|u| {
            u.host_str().map(|h| {
                format!(
                    "{h}{}",
                    u.port().map(|p| format!(":{p}")).unwrap_or_default()
                )
            })
        })
        .unwrap_or_else(|| url.to_string())
}

/// `application/x-www-form-urlencoded` encoding of one value.
pub(crate) fn form_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(byte as char)
            }
            b' ' => out.push('+'),
            other => out.push_str(&format!("%{other:02X}")),
        }
    }
    out
}

/// Removes every form of the credential's secrets (and of the bearer token the
/// request carried) from a text bound for a reason: [`crate::redact::Redactor`].
fn redact(text: String, credential: Option<&RegistryCredential>) -> String {
    redact_with_bearer(text, credential, None)
}

fn redact_with_bearer(
    text: String,
    credential: Option<&RegistryCredential>,
    bearer: Option<&str>,
) -> String {
    let mut redactor = crate::redact::Redactor::for_credentials(credential);
    if let Some(token) = bearer {
        redactor.secret(token);
    }
    redactor.redact(&text)
}

/// `sha256:<hex>` of `bytes`: the digest of a manifest the registry named none for.
fn sha256_digest(bytes: &[u8]) -> String {
    use sha2::Digest;
    let hash = sha2::Sha256::digest(bytes);
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256:");
    for byte in hash {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

/// The `Content-Length` an answer declares.
pub(crate) fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// The media type without parameters.
pub(crate) fn media_type(headers: &HeaderMap) -> Option<String> {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or(v).trim().to_string())
        .filter(|v| !v.is_empty())
}

impl RegistryClient {
    pub fn new(config: ClientConfig, observer: Arc<dyn RegistryObserver>) -> Self {
        crate::process::install_crypto_provider();
        RegistryClient {
            observer,
            hosts: Mutex::new(HashMap::new()),
            tokens: Mutex::new(HashMap::new()),
            indexes: Mutex::new(HashMap::new()),
            documents: Mutex::new(pull_path::DocumentCache::new(config.walk.cache_entries)),
            verified: Mutex::new(HashMap::new()),
            reading: Mutex::new(HashMap::new()),
            schema1: Mutex::new(Arc::new([config.walk.schema1])),
            config,
        }
    }

    /// Says what the nodes' runtimes do with schema 1 manifests (an agent, once CRI
    /// `Version` named its node's runtime; the aggregator, from its cluster's nodes): a
    /// schema 1 image is pulled as each of them pulls it. None given: refused. A change
    /// makes every pull path's blobs due for verification again, as another runtime
    /// downloads other blobs.
    pub fn set_schema1_pulls(&self, pulls: &[pull_path::Schema1Pulls]) {
        let mut pulls = pulls.to_vec();
        pulls.sort_unstable();
        pulls.dedup();
        if pulls.is_empty() {
            pulls.push(pull_path::Schema1Pulls::default());
        }
        let mut current = lock(&self.schema1);
        if **current != *pulls {
            *current = pulls.into();
            lock(&self.verified).clear();
        }
    }

    fn state(&self, host: &str) -> Arc<HostState> {
        lock(&self.hosts)
            .entry(host.to_string())
            .or_insert_with(|| {
                Arc::new(HostState {
                    host: host.to_string(),
                    limiter: self
                        .config
                        .requests_per_second
                        .map(|rate| RateLimiter::direct(Quota::per_second(rate))),
                    pause: Mutex::new(Pause::default()),
                    plain_http: Mutex::new(None),
                    challenge: Mutex::new(None),
                    realms: Mutex::new(BTreeSet::new()),
                })
            })
            .clone()
    }

    /// Forgets every host not in `keep` (their pauses, learned schemes and
    /// challenges) and the tokens of realms no kept host uses. Returns the hosts whose
    /// series (requests, pauses) no longer describe anything pullwatch asks: the
    /// forgotten hosts and the token endpoints only they used.
    pub fn retain_hosts(&self, keep: &BTreeSet<&str>) -> BTreeSet<String> {
        let mut gone = BTreeSet::new();
        let mut kept_realms = BTreeSet::new();
        lock(&self.hosts).retain(|host, state| {
            let realms = lock(&state.realms);
            if keep.contains(host.as_str()) {
                kept_realms.extend(realms.iter().cloned());
                true
            } else {
                gone.insert(host.clone());
                gone.extend(realms.iter().cloned());
                false
            }
        });
        gone.retain(|host| !keep.contains(host.as_str()) && !kept_realms.contains(host));
        if !gone.is_empty() {
            lock(&self.tokens).retain(|key, _| !gone.contains(&host_of_url(&key.realm)));
        }
        gone
    }

    /// Hosts whose state the client keeps.
    #[cfg(test)]
    fn known_hosts(&self) -> usize {
        lock(&self.hosts).len()
    }

    /// How long `host` remains paused after a 429, if it is.
    pub fn paused_for(&self, host: &str) -> Option<Duration> {
        let state = lock(&self.hosts).get(host).cloned()?;
        lock(&state.pause).remaining(Instant::now())
    }

    /// The `rate_limited` outcome for a request not sent because `host` is paused.
    pub fn paused_outcome(remaining: Duration) -> CheckOutcome {
        CheckOutcome::new(
            CheckStatus::RateLimited,
            format!(
                "registry answered 429 earlier; paused for another {}s",
                remaining.as_secs().max(1)
            ),
        )
    }

    /// Checks that the manifest `reference` (tag or digest) of `repository` can be
    /// pulled: `available` with its digest and media type, or why not.
    ///
    /// A digest reference resolves to itself. When the manifest is an index and
    /// [`ClientConfig::index_platforms`] is set, `outcome.platforms` lists what its
    /// entries offer (None when it could not be read: the check then says nothing
    /// about platforms).
    pub async fn check_manifest(
        &self,
        endpoint: &Endpoint<'_>,
        repository: &str,
        reference: &str,
        credential: Option<&RegistryCredential>,
        deadline: &Deadline,
    ) -> Answer {
        let target = Target {
            endpoint,
            repository,
            credential,
            deadline,
        };
        self.check(target, Object::Manifest, reference).await
    }

    /// A manifest (as [`RegistryClient::check_manifest`]) or, for [`Object::Blob`],
    /// that the blob `reference` (a digest) exists: containerd's fallback for digests.
    pub async fn check(&self, target: Target<'_, '_>, object: Object, reference: &str) -> Answer {
        match object {
            Object::Manifest => self.manifest_check(target, reference).await,
            Object::Blob => self.blob_check(target, reference).await,
        }
    }

    async fn manifest_check(&self, target: Target<'_, '_>, reference: &str) -> Answer {
        let (mut answer, body, _) = self.manifest_answer(target, reference).await;
        if !answer.outcome.is_available() {
            return answer;
        }
        if reference.contains(':') {
            answer.outcome.digest = Some(reference.to_string());
        }
        let is_index = answer
            .outcome
            .media_type
            .as_deref()
            .is_some_and(crate::platform::is_index);
        // A deeper check's walk reads the index itself (once per digest, kept).
        let walks = self.config.walk.depth != pull_path::CheckDepth::Manifest;
        if let (Some(capacity), true, false, Some(digest)) = (
            self.config.index_platforms,
            is_index,
            walks,
            answer.outcome.digest.clone(),
        ) {
            answer.outcome.platforms = self.index_platforms(target, &digest, body, capacity).await;
        }
        answer
    }

    /// The platforms index `digest` offers: cached, else parsed from `body` (when the
    /// check already read it) or one `GET` by digest with the same authentication.
    async fn index_platforms(
        &self,
        target: Target<'_, '_>,
        digest: &str,
        body: Option<Bytes>,
        capacity: usize,
    ) -> Option<Arc<[Platform]>> {
        if let Some(known) = lock(&self.indexes).get(digest) {
            return Some(known.clone());
        }
        let body = match body {
            Some(body) => body,
            None => match self.fetch(target, digest).await {
                Ok(manifest) => manifest.body,
                Err(answer) => {
                    debug!(host = target.endpoint.host, %digest, reason = %answer.outcome.reason, "index not read; platforms not checked");
                    return None;
                }
            },
        };
        match crate::platform::index_platforms(&body) {
            Ok(platforms) => {
                let platforms: Arc<[Platform]> = platforms.into();
                let mut indexes = lock(&self.indexes);
                if indexes.len() >= capacity.max(1)
                    && let Some(evicted) = indexes.keys().next().cloned()
                {
                    indexes.remove(&evicted);
                }
                indexes.insert(digest.to_string(), platforms.clone());
                Some(platforms)
            }
            Err(error) => {
                debug!(host = target.endpoint.host, %digest, %error, "index not parsed; platforms not checked");
                None
            }
        }
    }

    /// The classified answer for a manifest, with its digest and media type, its body
    /// when one was read, and its size as the answer declared it (`Content-Length`).
    ///
    /// A `Docker-Content-Digest` that is not a valid digest is refused, as containerd's
    /// resolver refuses it.
    pub(crate) async fn manifest_answer(
        &self,
        target: Target<'_, '_>,
        reference: &str,
    ) -> (Answer, Option<Bytes>, Option<u64>) {
        let answer = self
            .ask(target, Object::Manifest, reference, Want::Head)
            .await;
        let (answer, final_) = match answer {
            Ok(pair) => pair,
            Err(answer) => return (answer, None, None),
        };
        if !answer.outcome.is_available() {
            return (answer, None, None);
        }
        let size = content_length(&final_.headers);
        let digest = final_
            .headers
            .get("docker-content-digest")
            .map(|v| String::from_utf8_lossy(v.as_bytes()).trim().to_string())
            .filter(|v| !v.is_empty());
        if let Some(digest) = &digest
            && crate::reference::validate_digest(digest).is_err()
        {
            let shown: String = digest.chars().take(100).collect();
            return (
                Answer {
                    outcome: CheckOutcome::new(
                        CheckStatus::UnknownError,
                        format!(
                            "{}: Docker-Content-Digest {shown:?} is not a valid digest (containerd refuses it)",
                            answer.origin
                        ),
                    ),
                    ..answer
                },
                None,
                None,
            );
        }
        match digest {
            Some(digest) => (
                Answer {
                    outcome: CheckOutcome::available_at(Some(digest), media_type(&final_.headers)),
                    ..answer
                },
                (!final_.body.is_empty()).then(|| final_.body.clone()),
                size,
            ),
            None if !final_.body.is_empty() || final_.truncated => {
                let body = final_.body.clone();
                (self.digest_of_body(answer, final_), Some(body), size)
            }
            None => self.manifest_by_body(target, reference).await,
        }
    }

    /// A manifest whose `HEAD` answer named no digest: fetched, the digest of its body.
    async fn manifest_by_body(
        &self,
        target: Target<'_, '_>,
        reference: &str,
    ) -> (Answer, Option<Bytes>, Option<u64>) {
        debug!(
            host = target.endpoint.host,
            repository = target.repository,
            reference,
            "no Docker-Content-Digest; fetching the manifest"
        );
        let want = Want::Body(MAX_MANIFEST_BYTES);
        match self.ask(target, Object::Manifest, reference, want).await {
            Ok((answer, final_)) if answer.outcome.is_available() => {
                let body = final_.body.clone();
                let size = Some(body.len() as u64);
                (self.digest_of_body(answer, final_), Some(body), size)
            }
            Ok((answer, _)) => (answer, None, None),
            Err(answer) => (answer, None, None),
        }
    }

    fn digest_of_body(&self, answer: Answer, final_: Final) -> Answer {
        if final_.truncated {
            return Answer {
                outcome: CheckOutcome::new(
                    CheckStatus::UnknownError,
                    format!(
                        "manifest larger than {} MiB (containerd refuses it too)",
                        MAX_MANIFEST_BYTES >> 20
                    ),
                ),
                ..answer
            };
        }
        Answer {
            outcome: CheckOutcome::available_at(
                Some(sha256_digest(&final_.body)),
                media_type(&final_.headers),
            ),
            ..answer
        }
    }

    async fn blob_check(&self, target: Target<'_, '_>, digest: &str) -> Answer {
        match self.ask(target, Object::Blob, digest, Want::Head).await {
            Ok((mut answer, _)) => {
                if answer.outcome.is_available() {
                    answer.outcome.digest = Some(digest.to_string());
                }
                answer
            }
            Err(answer) => answer,
        }
    }

    /// Fetches the manifest or index `digest` of `repository` (at most 4 MiB) with the
    /// same authentication, pause and limits as a check, and verifies its sha256.
    pub async fn fetch_manifest(
        &self,
        endpoint: &Endpoint<'_>,
        repository: &str,
        digest: &str,
        credential: Option<&RegistryCredential>,
        deadline: &Deadline,
    ) -> Result<Manifest, Answer> {
        let target = Target {
            endpoint,
            repository,
            credential,
            deadline,
        };
        self.fetch(target, digest).await
    }

    async fn fetch(&self, target: Target<'_, '_>, digest: &str) -> Result<Manifest, Answer> {
        let (answer, final_) = self
            .ask(
                target,
                Object::Manifest,
                digest,
                Want::Body(MAX_MANIFEST_BYTES),
            )
            .await?;
        if !answer.outcome.is_available() {
            return Err(answer);
        }
        let answer = self.digest_of_body(answer, final_.clone());
        if !answer.outcome.is_available() {
            return Err(answer);
        }
        let computed = answer.outcome.digest.clone().unwrap_or_default();
        if digest.starts_with("sha256:") && computed != digest {
            return Err(Answer {
                outcome: CheckOutcome::new(
                    CheckStatus::UnknownError,
                    format!("{}: manifest {digest} has digest {computed}", answer.origin),
                ),
                ..answer
            });
        }
        Ok(Manifest {
            digest: digest.to_string(),
            media_type: answer.outcome.media_type,
            body: final_.body,
        })
    }

    /// One object, over the scheme(s) the endpoint allows. Ok: the host answered
    /// (classified answer + the final response); Err: a classified failure.
    pub(crate) async fn ask(
        &self,
        target: Target<'_, '_>,
        object: Object,
        reference: &str,
        want: Want,
    ) -> Result<(Answer, Final), Answer> {
        let endpoint = target.endpoint;
        let state = self.state(endpoint.host);
        let learned = *lock(&state.plain_http);
        let schemes: &[bool] = match (endpoint.scheme, learned) {
            (Scheme::Https, _) => &[false],
            (Scheme::Http, _) => &[true],
            (Scheme::HttpsOrPlain, Some(plain)) => {
                if plain {
                    &[true]
                } else {
                    &[false]
                }
            }
            (Scheme::HttpsOrPlain, None) => &[false, true],
        };
        let mut last = None;
        for &plain in schemes {
            let origin = format!(
                "{}://{}",
                if plain { "http" } else { "https" },
                endpoint.host
            );
            match self
                .converse(&state, target, plain, &origin, object, reference, want)
                .await
            {
                Ok(final_) => {
                    let answer = self.answered(&state, target, plain, origin, object, &final_);
                    return Ok((answer, final_));
                }
                Err(Failure::Outcome(outcome)) => return Err(Answer::local(outcome, origin)),
                Err(Failure::NoAnswer(kind, outcome)) => {
                    let may_fall_back = !plain && kind.plain_http_may_answer();
                    debug!(%origin, ?kind, reason = %outcome.reason, "no HTTP answer");
                    last = Some(Answer::local(outcome, origin));
                    if !may_fall_back {
                        break;
                    }
                }
            }
        }
        Err(last.unwrap_or_else(|| {
            Answer::local(
                CheckOutcome::new(CheckStatus::UnknownError, "no scheme to try"),
                endpoint.host.to_string(),
            )
        }))
    }

    /// What the host's final answer over `plain` (or HTTPS) means, classified and
    /// redacted; what it taught is kept for the host: its scheme, its pull quota, the
    /// pause a 429 starts.
    fn answered(
        &self,
        state: &Arc<HostState>,
        target: Target<'_, '_>,
        plain: bool,
        origin: String,
        object: Object,
        final_: &Final,
    ) -> Answer {
        if object == Object::Manifest
            && let Some(quota) = quota::Quota::from_headers(&final_.headers)
        {
            self.observer.quota(&state.host, &quota);
        }
        if target.endpoint.scheme == Scheme::HttpsOrPlain {
            *lock(&state.plain_http) = Some(plain);
        }
        let mut outcome = classify::classify_response(final_.status, &final_.body);
        outcome.reason =
            redact_with_bearer(outcome.reason, target.credential, final_.bearer.as_deref());
        if final_.status == StatusCode::TOO_MANY_REQUESTS {
            self.note_429(state, &final_.headers, &mut outcome);
        }
        if !outcome.is_available() {
            // The repository asked, too: with --image-mirror, --default-registry or a
            // node's mirrors it is not the one the workload names.
            outcome.reason = format!("{origin}/{}: {}", target.repository, outcome.reason);
        }
        Answer {
            outcome,
            http_status: Some(final_.status.as_u16()),
            origin,
        }
    }

    /// Records a 429 of `state`'s host (pausing it) and says so in the reason.
    fn note_429(&self, state: &Arc<HostState>, headers: &HeaderMap, outcome: &mut CheckOutcome) {
        let retry_after = classify::retry_after(headers);
        self.observer.rate_limited(&state.host);
        let change = lock(&state.pause).on_429(retry_after, Instant::now());
        match change {
            PauseChange::Started {
                duration,
                until,
                generation,
                from_retry_after,
            } => {
                self.observer.paused_until(&state.host, unix_seconds(until));
                self.end_pause_later(state.clone(), until, generation);
                outcome.reason = format!(
                    "{}; registry paused for {}s ({})",
                    outcome.reason,
                    duration.as_secs(),
                    if from_retry_after {
                        "Retry-After"
                    } else {
                        "backoff"
                    }
                );
            }
            PauseChange::Unchanged { until } => {
                outcome.reason = format!(
                    "{}; registry already paused for another {}s",
                    outcome.reason,
                    until.saturating_duration_since(Instant::now()).as_secs()
                );
            }
        }
    }

    /// Sets the paused-until metric back to 0 when the pause `generation` ends (unless
    /// a later pause replaced it).
    fn end_pause_later(&self, state: Arc<HostState>, until: Instant, generation: u64) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let observer = self.observer.clone();
        runtime.spawn(async move {
            tokio::time::sleep_until(until.into()).await;
            if lock(&state.pause).generation() == generation {
                observer.paused_until(&state.host, 0.0);
            }
        });
    }

    /// One request to `state`'s host (or, for tokens, to `url` elsewhere): consults the
    /// pause and the request rate first, then sends under the deadline.
    async fn send(
        &self,
        state: &HostState,
        request: reqwest::RequestBuilder,
        metric_host: &str,
        deadline: &Deadline,
    ) -> Result<reqwest::Response, Failure> {
        if let Some(remaining) = lock(&state.pause).remaining(Instant::now()) {
            return Err(Failure::Outcome(Self::paused_outcome(remaining)));
        }
        if let Some(limiter) = &state.limiter {
            let waiting = Instant::now();
            limiter.until_ready().await;
            deadline.excuse(waiting.elapsed());
            // The pause may have begun while this request waited for its turn.
            if let Some(remaining) = lock(&state.pause).remaining(Instant::now()) {
                return Err(Failure::Outcome(Self::paused_outcome(remaining)));
            }
        }
        match tokio::time::timeout_at(deadline.at().into(), request.send()).await {
            Err(_) => {
                self.observer.request(metric_host, None);
                Err(Failure::NoAnswer(
                    TransportFailure::Timeout,
                    CheckOutcome::new(
                        CheckStatus::RegistryUnavailable,
                        format!("{metric_host} timed out (the check's deadline passed)"),
                    ),
                ))
            }
            Ok(Err(error)) => {
                self.observer.request(metric_host, None);
                let kind = classify::transport_failure(&error);
                Err(Failure::NoAnswer(
                    kind,
                    classify::classify_transport_error(&error, metric_host, &self.config.hints),
                ))
            }
            Ok(Ok(response)) => {
                self.observer
                    .request(metric_host, Some(response.status().as_u16()));
                Ok(response)
            }
        }
    }

    /// The requests about one object over one scheme: authentication (learned or
    /// challenged), HEAD->GET fallback, the final answer with its (capped) body.
    #[allow(clippy::too_many_arguments)]
    async fn converse(
        &self,
        state: &Arc<HostState>,
        target: Target<'_, '_>,
        plain: bool,
        origin: &str,
        object: Object,
        reference: &str,
        want: Want,
    ) -> Result<Final, Failure> {
        let endpoint = target.endpoint;
        let url = object_url(origin, endpoint, target.repository, object, reference);
        let default_scope = format!("repository:{}:pull", target.repository);
        let mut authorization = self
            .first_authorization(state, target, plain, &default_scope)
            .await?;
        let mut want = want;
        let mut challenged = false;
        for _ in 0..MAX_RESPONSES {
            let method = want.method();
            let request = object_request(target, &url, object, want, &authorization);
            let response = self
                .send(state, request, endpoint.host, target.deadline)
                .await?;
            let status = response.status();
            debug!(%url, %method, status = status.as_u16(), "registry request");
            if status != StatusCode::TOO_MANY_REQUESTS {
                lock(&state.pause).answered();
            }
            if status == StatusCode::UNAUTHORIZED && !challenged {
                challenged = true;
                let retry = self
                    .answer_challenge(
                        state,
                        target,
                        plain,
                        response.headers(),
                        &authorization,
                        &default_scope,
                    )
                    .await?;
                if let Some(retry) = retry {
                    authorization = retry;
                    continue;
                }
            }
            if method == Method::HEAD
                && object == Object::Manifest
                && matches!(
                    status,
                    StatusCode::METHOD_NOT_ALLOWED | StatusCode::NOT_IMPLEMENTED
                )
            {
                debug!(host = endpoint.host, %status, "registry refuses HEAD; asking with GET");
                want = Want::Body(MAX_MANIFEST_BYTES);
                continue;
            }
            return final_answer(response, want, origin, target.deadline, authorization).await;
        }
        Ok(Final {
            status: StatusCode::UNAUTHORIZED,
            headers: HeaderMap::new(),
            body: Bytes::from_static(b"registry kept asking for authentication"),
            truncated: false,
            bearer: None,
        })
    }

    /// How a conversation's first request authenticates: with the credential's own
    /// registry token, else as the host's challenge learned over this scheme asks
    /// (Basic, or a bearer token for the repository), else not at all.
    async fn first_authorization(
        &self,
        state: &Arc<HostState>,
        target: Target<'_, '_>,
        plain: bool,
        default_scope: &str,
    ) -> Result<Authorization, Failure> {
        let credential = target.credential;
        let learned = lock(&state.challenge)
            .clone()
            .filter(|(over_plain, _)| *over_plain == plain)
            .map(|(_, scheme)| scheme);
        Ok(
            match (credential.and_then(|c| c.registry_token.clone()), learned) {
                (Some(token), _) => Authorization::Bearer(token),
                (None, Some(AuthScheme::Basic)) if has_password(credential).is_some() => {
                    Authorization::Basic
                }
                (None, Some(AuthScheme::Bearer { realm, service, .. })) => {
                    let asked = TokenScope {
                        realm: &realm,
                        service: service.as_deref(),
                        scope: default_scope,
                    };
                    let token = self
                        .token(state, target.endpoint, asked, credential, target.deadline)
                        .await?;
                    Authorization::Bearer(token)
                }
                _ => Authorization::None,
            },
        )
    }

    /// A 401's challenge, learned for the host over this scheme: Some(how the retry
    /// authenticates), or None when a retry cannot help (no usable scheme, the
    /// credential's own registry token, Basic sent already or no password to send).
    #[allow(clippy::too_many_arguments)]
    async fn answer_challenge(
        &self,
        state: &Arc<HostState>,
        target: Target<'_, '_>,
        plain: bool,
        headers: &HeaderMap,
        authorization: &Authorization,
        default_scope: &str,
    ) -> Result<Option<Authorization>, Failure> {
        let scheme = challenge::auth_scheme(
            headers
                .get_all(http::header::WWW_AUTHENTICATE)
                .iter()
                .filter_map(|v| v.to_str().ok()),
        );
        if let Some(scheme) = &scheme {
            *lock(&state.challenge) = Some((plain, scheme.clone()));
        }
        let credential = target.credential;
        match scheme {
            Some(AuthScheme::Bearer {
                realm,
                service,
                scope,
            }) if credential.and_then(|c| c.registry_token.as_ref()).is_none() => {
                let scope = scope.unwrap_or_else(|| default_scope.to_string());
                let asked = TokenScope {
                    realm: &realm,
                    service: service.as_deref(),
                    scope: &scope,
                };
                // A rejected cached token is forgotten before asking again.
                self.forget_token(asked, credential);
                let token = self
                    .token(state, target.endpoint, asked, credential, target.deadline)
                    .await?;
                Ok(Some(Authorization::Bearer(token)))
            }
            Some(AuthScheme::Basic)
                if has_password(credential).is_some()
                    && !matches!(authorization, Authorization::Basic) =>
            {
                Ok(Some(Authorization::Basic))
            }
            _ => Ok(None),
        }
    }
}

/// `<origin><api root>/<repository>/<manifests|blobs>/<reference>`, with `?ns=` on
/// requests to a mirror.
fn object_url(
    origin: &str,
    endpoint: &Endpoint<'_>,
    repository: &str,
    object: Object,
    reference: &str,
) -> String {
    let mut url = format!(
        "{origin}{}/{repository}/{}/{reference}",
        endpoint.api_root,
        object.path()
    );
    if let Some(ns) = endpoint.namespace {
        url.push_str("?ns=");
        url.push_str(&form_encode(ns));
    }
    url
}

/// One request of a conversation: the `Accept` of the object (blobs are asked for as
/// containerd's fetcher does: any type), the range of a first-byte request, the
/// endpoint's headers, and the authorization.
fn object_request(
    target: Target<'_, '_>,
    url: &str,
    object: Object,
    want: Want,
    authorization: &Authorization,
) -> reqwest::RequestBuilder {
    let endpoint = target.endpoint;
    let accept = match object {
        Object::Manifest => endpoint.accept,
        Object::Blob => "*/*",
    };
    let mut request = endpoint
        .http
        .request(want.method(), url)
        .header(http::header::ACCEPT, accept);
    if want == Want::FirstByte {
        request = request.header(http::header::RANGE, "bytes=0-0");
    }
    for (name, value) in endpoint.headers {
        request = request.header(name.as_str(), value.as_str());
    }
    match (authorization, has_password(target.credential)) {
        (Authorization::Bearer(token), _) => request.bearer_auth(token),
        (Authorization::Basic, Some(c)) => request.basic_auth(&c.username, Some(&c.password)),
        _ => request,
    }
}

/// The answer that ends a conversation, its body read up to the cap: what `want`
/// asks of a success, the start of an error body (a `GET`'s; a `HEAD` has none).
async fn final_answer(
    response: reqwest::Response,
    want: Want,
    origin: &str,
    deadline: &Deadline,
    authorization: Authorization,
) -> Result<Final, Failure> {
    let status = response.status();
    let cap = match want {
        _ if !status.is_success() => MAX_ERROR_BYTES,
        Want::Body(cap) => cap,
        // The first byte is all a ranged request asks; a server that ignores
        // the range is not read further (the body is dropped unread).
        Want::Head | Want::FirstByte => 0,
    };
    let headers = response.headers().clone();
    let (body, truncated) = if want != Want::Head && cap > 0 {
        read_capped(response, cap, deadline).await.map_err(|e| {
            Failure::Outcome(CheckOutcome::new(
                CheckStatus::RegistryUnavailable,
                format!("{origin}: reading the answer: {e}"),
            ))
        })?
    } else {
        (Bytes::new(), false)
    };
    Ok(Final {
        status,
        headers,
        body,
        truncated,
        bearer: match authorization {
            Authorization::Bearer(token) => Some(token),
            _ => None,
        },
    })
}

/// Reads a body up to `cap` bytes under the deadline. Ok((body, truncated)).
async fn read_capped(
    mut response: reqwest::Response,
    cap: usize,
    deadline: &Deadline,
) -> Result<(Bytes, bool), String> {
    if response.content_length().is_some_and(|n| n > cap as u64) {
        return Ok((Bytes::new(), true));
    }
    let read = async {
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| error_chain(&e))? {
            if body.len() + chunk.len() > cap {
                return Ok((Bytes::new(), true));
            }
            body.extend_from_slice(&chunk);
        }
        Ok((Bytes::from(body), false))
    };
    match tokio::time::timeout_at(deadline.at().into(), read).await {
        Ok(result) => result,
        Err(_) => Err("timed out (the check's deadline passed)".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_that_leave_take_their_state_and_only_their_own_token_endpoints() {
        let client = RegistryClient::new(ClientConfig::default(), Arc::new(NoObserver));
        for (host, realm) in [
            ("a.example", "auth.shared"),
            ("b.example", "auth.shared"),
            ("c.example", "auth.c"),
        ] {
            lock(&client.state(host).realms).insert(realm.to_string());
        }
        assert_eq!(client.known_hosts(), 3);
        let gone = client.retain_hosts(&BTreeSet::from(["b.example"]));
        assert_eq!(
            gone,
            BTreeSet::from(["a.example".into(), "auth.c".into(), "c.example".into()]),
            "auth.shared still serves b.example"
        );
        assert_eq!(client.known_hosts(), 1);
        assert!(
            client
                .retain_hosts(&BTreeSet::from(["b.example"]))
                .is_empty()
        );
    }

    #[test]
    fn digests_and_media_types() {
        assert_eq!(
            sha256_digest(b""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let mut headers = HeaderMap::new();
        assert_eq!(media_type(&headers), None);
        headers.insert(
            http::header::CONTENT_TYPE,
            "application/vnd.oci.image.index.v1+json; charset=utf-8"
                .parse()
                .unwrap(),
        );
        assert_eq!(
            media_type(&headers).as_deref(),
            Some("application/vnd.oci.image.index.v1+json")
        );
    }

    #[test]
    fn secrets_are_redacted_from_reasons() {
        let credential = RegistryCredential {
            username: "alice".into(),
            password: "hunter22".into(),
            identity_token: Some("refresh-abc".into()),
            registry_token: None,
        };
        let text = redact(
            "bad password hunter22 and token refresh-abc".to_string(),
            Some(&credential),
        );
        assert_eq!(text, "bad password <redacted> and token <redacted>");
        assert_eq!(
            form_encode("repository:a/b:pull"),
            "repository%3Aa%2Fb%3Apull"
        );
    }
}
