//! `resolve` mode of the check stage: ask for the manifest along the route the node's
//! runtime would take ([`crate::route`]), then walk its pull path along the same route
//! (`--check-depth`), without downloading a layer.
//!
//! For each host that may resolve (tags need `pull`+`resolve`, digests only `pull`),
//! `HEAD /v2/<repo>/manifests/<ref>` (`?ns=<registry>` on mirrors), as containerd's
//! resolver does: a 404 moves on to the next host; another failure is remembered and
//! the next host tried; the first success wins. When no host has it, the first
//! remembered failure is the answer, else "not found". Digests fall back to
//! `HEAD .../blobs/<digest>`. One walk over the route's endpoints does this
//! (`first_to_serve`), for resolving and for fetching a manifest by
//! digest alike. Then the pull path ([`pullwatch::registry::pull_path`]): the
//! platform's child, the config and every layer's first byte, fetched as the runtime
//! fetches them: containerd from every host able to pull, in order; CRI-O from the
//! source that answered.
//!
//! Credentials: a keyring credential applies to every host (containerd does the same
//! with the kubelet's AuthConfig); without one, containerd's own
//! `registry.configs."<host>".auth` for the host being contacted ([`RuntimeAuth`]).
//!
//! On CRI-O nodes (`--runtime-dialect`, or `auto` and CRI `Version` says `cri-o`) the
//! route is CRI-O's ([`crate::route::crio`]): the endpoints come from registries.conf,
//! the kubelet's credential goes only to endpoints on the image's own domain (the auth
//! file answers elsewhere), blocked endpoints are refused without a request, and when
//! no endpoint has the manifest the primary's failure is the answer.
//!
//! Every request, token exchange and 429 pause goes through the root crate's
//! registry client ([`pullwatch::registry`]).

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pullwatch::error_chain;
use pullwatch::locks::lock;
use pullwatch::process::install_crypto_provider;
use pullwatch::registry::classify::Hints;
use pullwatch::registry::pull_path::{CheckDepth, PullPath, Schema1Pulls, Top, WalkSettings};
use pullwatch::registry::{
    Answer, ClientConfig, Deadline, Endpoint, Manifest, NoObserver, Object, RegistryClient,
    RegistryObserver, Scheme, Target,
};
use pullwatch::{CheckOutcome, CheckStatus, ImageReference, Platform, RegistryCredential};
use tracing::debug;

use crate::route::containerd::{HostsDialect, RuntimeAuth, registry_hosts_for};
use crate::route::crio::CrioRouteConfig;
use crate::route::{
    FailurePolicy, RegistryHost, Route, RouteEndpoint, RouteError, RouteRuntime, RuntimeDialect,
};

/// What containerd sends in `Accept` when it resolves a reference.
pub(crate) const RESOLVE_ACCEPT: &str = "application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, */*";
const USER_AGENT: &str = concat!("pullwatch-agent/", env!("CARGO_PKG_VERSION"));
/// Index contents remembered, by digest.
const INDEX_CACHE_ENTRIES: usize = 1024;

/// A route's endpoint as the registry client addresses it, through `client` (the
/// host's TLS settings); a mirror is asked on behalf of the image's registry (`?ns=`),
/// as containerd asks mirrors.
fn registry_endpoint<'a>(
    route_endpoint: &'a RouteEndpoint,
    client: &'a reqwest::Client,
) -> Endpoint<'a> {
    let host = &route_endpoint.host;
    Endpoint {
        http: client,
        scheme: if route_endpoint.http_fallback {
            Scheme::HttpsOrPlain
        } else if host.scheme == "http" {
            Scheme::Http
        } else {
            Scheme::Https
        },
        host: &host.host,
        api_root: &host.path,
        namespace: route_endpoint.namespace.as_deref(),
        headers: &host.headers,
        accept: RESOLVE_ACCEPT,
    }
}

/// Why the runtime would not ask an endpoint: what stopped it (`blocked`, `credentials`,
/// `configuration`) and the outcome that stands for the answer.
type NotAsked = Box<(&'static str, CheckOutcome)>;

/// What the endpoints of a route answered that did not serve: each one's short answer
/// for the reason ("tried …"), the first failure that was not a 404 (containerd's
/// answer), and the last endpoint's answer with whether it was a 404 (CRI-O's).
#[derive(Default)]
struct Tried {
    answers: Vec<String>,
    first_failure: Option<CheckOutcome>,
    last: Option<(CheckOutcome, bool)>,
}

impl Tried {
    /// The runtime would not ask `host`: `what` stopped it, `outcome` stands for it.
    fn not_asked(&mut self, host: &RegistryHost, (what, outcome): (&'static str, CheckOutcome)) {
        self.failed(format!("{} ({what})", host.url()), outcome);
    }

    /// `host` answered without serving: a 404 moves on, anything else is a failure.
    fn answered(&mut self, host: &RegistryHost, answer: Answer) {
        match answer.http_status {
            Some(404) => {
                self.answers.push(format!("{} (404)", host.url()));
                self.last = Some((answer.outcome, true));
            }
            Some(code) => self.failed(format!("{} ({code})", host.url()), answer.outcome),
            None => self.failed(format!("{} (no answer)", host.url()), answer.outcome),
        }
    }

    fn failed(&mut self, answer: String, outcome: CheckOutcome) {
        self.answers.push(answer);
        self.last = Some((outcome.clone(), false));
        self.first_failure.get_or_insert(outcome);
    }

    /// The failure that stands under `policy`; None: no endpoint had it (not found).
    fn failure(&self, policy: FailurePolicy) -> Option<&CheckOutcome> {
        match policy {
            FailurePolicy::FirstFailure => self.first_failure.as_ref(),
            FailurePolicy::Primary => self
                .last
                .as_ref()
                .and_then(|(outcome, not_found)| (!not_found).then_some(outcome)),
        }
    }

    /// `image`'s outcome when no endpoint served it: the failure that stands under
    /// `policy`, else absent, naming what each endpoint answered.
    fn outcome(&self, image: &ImageReference, policy: FailurePolicy) -> CheckOutcome {
        let tried = self.answers.join(", ");
        match self.failure(policy) {
            None => CheckOutcome::new(
                CheckStatus::Absent,
                format!("{image}: not found (tried {tried})"),
            ),
            Some(failure) => CheckOutcome::new(
                failure.status,
                format!("{} (tried {tried})", failure.reason),
            ),
        }
    }
}

/// What is asked of the endpoints of a route, one after the other, until one serves it
/// ([`Resolver::first_to_serve`]).
trait RouteRequest {
    type Served;
    /// `target`'s answer: what it served, or its answer when it did not.
    fn ask<'a>(
        &'a self,
        registry: &'a RegistryClient,
        target: Target<'a, 'a>,
    ) -> impl Future<Output = Result<Self::Served, Answer>> + Send + 'a;
}

/// Whether the manifest (or, containerd's fallback for a digest, the blob) exists:
/// `HEAD`, as the runtime resolves.
struct Existence<'r> {
    object: Object,
    reference: &'r str,
}

impl RouteRequest for Existence<'_> {
    type Served = Answer;

    async fn ask<'a>(
        &'a self,
        registry: &'a RegistryClient,
        target: Target<'a, 'a>,
    ) -> Result<Answer, Answer> {
        let host = target.endpoint.host;
        let answer = registry.check(target, self.object, self.reference).await;
        debug!(%host, status = %answer.outcome.status, http = ?answer.http_status, "resolve answer");
        if answer.outcome.is_available() {
            Ok(answer)
        } else {
            Err(answer)
        }
    }
}

/// The manifest or index `digest` itself, body and all.
struct ManifestBody<'r> {
    digest: &'r str,
}

impl RouteRequest for ManifestBody<'_> {
    type Served = Manifest;

    fn ask<'a>(
        &'a self,
        registry: &'a RegistryClient,
        target: Target<'a, 'a>,
    ) -> impl Future<Output = Result<Manifest, Answer>> + Send + 'a {
        registry.fetch_manifest(
            target.endpoint,
            target.repository,
            self.digest,
            target.credential,
            target.deadline,
        )
    }
}

/// Settings for [`Resolver`].
#[derive(Clone, Debug)]
pub struct ResolverConfig {
    /// `--containerd-hosts-dir`.
    pub hosts_dir: PathBuf,
    /// containerd's own `registry.configs` credentials.
    pub runtime_auth: RuntimeAuth,
    /// Deadline of one resolve: every request to every host of the route.
    pub request_timeout: Duration,
}

/// Resolves manifests along the node's runtime's route. Shareable; keeps HTTP clients (per TLS
/// settings) and the shared registry client (tokens, learned challenges, 429 pauses)
/// between checks.
pub struct Resolver {
    config: ResolverConfig,
    /// The node's containerd's hosts.toml rules, once its version is known.
    dialect: Mutex<HostsDialect>,
    /// `--runtime-dialect` and CRI-O's files.
    runtime_dialect: RuntimeDialect,
    crio: CrioRouteConfig,
    /// Whose route is taken: the explicit dialect, or what CRI `Version` said.
    route_runtime: Mutex<RouteRuntime>,
    clients: Mutex<HashMap<u64, reqwest::Client>>,
    registry: RegistryClient,
    depth: CheckDepth,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver")
            .field("config", &self.config)
            .finish()
    }
}

/// Outcome of a resolve plus the host that answered.
#[derive(Clone, Debug)]
pub struct Resolved {
    /// The status; when available, with the digest and media type the host answered.
    pub outcome: CheckOutcome,
    /// `scheme://host` of the host that had the manifest (None unless available).
    pub served_by: Option<String>,
}

impl Resolved {
    /// Not served: why.
    fn failed(outcome: CheckOutcome) -> Resolved {
        Resolved {
            outcome,
            served_by: None,
        }
    }
}

/// The outcome of a check whose route cannot be read.
fn unreadable_route(error: &RouteError) -> CheckOutcome {
    CheckOutcome::new(
        CheckStatus::UnknownError,
        format!("reading the registry route: {error}"),
    )
}

impl Resolver {
    /// A resolver that walks the whole pull path (the default depth).
    pub fn new(config: ResolverConfig) -> Resolver {
        Resolver::observed(config, WalkSettings::default(), Arc::new(NoObserver))
    }

    /// A resolver that walks the pull path as deep as `walk` says, and whose registry
    /// answers `observer` hears about (the pull quotas registries announce, for the
    /// agent's metrics and the aggregator).
    pub fn observed(
        config: ResolverConfig,
        walk: WalkSettings,
        observer: Arc<dyn RegistryObserver>,
    ) -> Resolver {
        install_crypto_provider();
        Resolver {
            depth: walk.depth,
            config,
            dialect: Mutex::new(HostsDialect::default()),
            runtime_dialect: RuntimeDialect::Auto,
            crio: CrioRouteConfig::default(),
            route_runtime: Mutex::new(RouteRuntime::Containerd),
            clients: Mutex::new(HashMap::new()),
            registry: RegistryClient::new(
                ClientConfig {
                    requests_per_second: None,
                    hints: Hints {
                        tls: "a private CA? set `ca` in the registry's hosts.toml under --containerd-hosts-dir".to_string(),
                        plain_http: "plain HTTP there? containerd needs `server = \"http://...\"` in the registry's hosts.toml".to_string(),
                    },
                    // An agent checks its own node's platform against every index.
                    index_platforms: Some(INDEX_CACHE_ENTRIES),
                    walk: WalkSettings {
                        cache_entries: INDEX_CACHE_ENTRIES,
                        ..walk
                    },
                },
                observer,
            ),
        }
    }

    /// Follows `dialect`'s route (`auto`: the runtime's, once CRI `Version` names it;
    /// containerd's until then), CRI-O's read from `crio`.
    pub(crate) fn with_runtime_dialect(
        mut self,
        dialect: RuntimeDialect,
        crio: CrioRouteConfig,
    ) -> Self {
        self.runtime_dialect = dialect;
        self.crio = crio;
        *lock(&self.route_runtime) = match dialect {
            RuntimeDialect::CriO => RouteRuntime::CriO,
            RuntimeDialect::Auto | RuntimeDialect::Containerd => RouteRuntime::Containerd,
        };
        self
    }

    /// Whose route checks take now.
    pub(crate) fn route_runtime(&self) -> RouteRuntime {
        *lock(&self.route_runtime)
    }

    /// The route for `image` (`by_digest`: for a manifest fetched by digest).
    pub(crate) fn route(
        &self,
        image: &ImageReference,
        by_digest: bool,
    ) -> Result<Route, RouteError> {
        match self.route_runtime() {
            RouteRuntime::CriO => self.crio.route(image, by_digest),
            RouteRuntime::Containerd => {
                let hosts =
                    registry_hosts_for(&self.config.hosts_dir, image.registry(), self.dialect())?;
                Ok(Route::containerd(
                    hosts,
                    image,
                    by_digest,
                    &self.config.runtime_auth,
                ))
            }
        }
    }

    /// The route that resolves `image` and, on containerd, the route by digest its
    /// pull path is fetched along (CRI-O fetches from the source that answered), from
    /// one read of the node's hosts.toml.
    fn resolve_routes(&self, image: &ImageReference) -> Result<(Route, Option<Route>), RouteError> {
        let by_digest = image.digest().is_some();
        match self.route_runtime() {
            RouteRuntime::CriO => Ok((self.crio.route(image, by_digest)?, None)),
            RouteRuntime::Containerd => {
                let hosts =
                    registry_hosts_for(&self.config.hosts_dir, image.registry(), self.dialect())?;
                let auth = &self.config.runtime_auth;
                let fetch = Route::containerd(hosts.clone(), image, true, auth);
                Ok((
                    Route::containerd(hosts, image, by_digest, auth),
                    Some(fetch),
                ))
            }
        }
    }

    /// Follows the hosts.toml rules of the runtime CRI `Version` reported.
    pub(crate) fn set_runtime(&self, name: &str, version: &str) {
        let dialect = HostsDialect::for_runtime(name, version);
        debug!(runtime = name, version, ?dialect, "hosts.toml rules");
        *lock(&self.dialect) = dialect;
        // A runtime that is neither containerd nor CRI-O: refused, as the newest do.
        let schema1 = Schema1Pulls::of_runtime(name, version).unwrap_or_default();
        debug!(
            runtime = name,
            version,
            schema1 = schema1.as_str(),
            "schema 1 manifests"
        );
        self.registry.set_schema1_pulls(&[schema1]);
        if self.runtime_dialect == RuntimeDialect::Auto {
            let runtime = RouteRuntime::from_runtime_name(name);
            debug!(runtime = name, ?runtime, "route of the runtime");
            *lock(&self.route_runtime) = runtime;
        }
    }

    pub(crate) fn dialect(&self) -> HostsDialect {
        *lock(&self.dialect)
    }

    /// Resolves `image` with `credential` (the kubelet's AuthConfig; None: containerd's
    /// own per-host credentials, or anonymous), for a node of this process's platform.
    pub async fn resolve(
        &self,
        image: &ImageReference,
        credential: Option<&RegistryCredential>,
    ) -> Resolved {
        self.resolve_for(image, credential, &Platform::host()).await
    }

    /// Resolves `image` with `credential` and walks its pull path for `platform` along
    /// the same route, as deep as the resolver's depth: what the node's containerd
    /// fetches (the child for its platform, the config and every layer's first byte).
    pub(crate) async fn resolve_for(
        &self,
        image: &ImageReference,
        credential: Option<&RegistryCredential>,
        platform: &Platform,
    ) -> Resolved {
        let deadline = Deadline::after(self.config.request_timeout);
        let (route, by_digest) = match self.resolve_routes(image) {
            Ok(routes) => routes,
            Err(error) => return Resolved::failed(unreadable_route(&error)),
        };
        if route.endpoints.is_empty() {
            return Resolved::failed(CheckOutcome::new(
                CheckStatus::Absent,
                format!(
                    "no host may resolve {} (hosts.toml capabilities)",
                    image.registry()
                ),
            ));
        }
        let mut tried = Tried::default();
        // The manifest; for a digest, containerd then tries `HEAD /blobs/<digest>`.
        let mut paths = vec![(Object::Manifest, image.manifest_reference().to_string())];
        if let Some(digest) = image.digest()
            && route.blob_fallback
        {
            paths.push((Object::Blob, digest.to_string()));
        }
        for (object, reference) in &paths {
            let ask = Existence {
                object: *object,
                reference,
            };
            let served = self
                .first_to_serve(&route, credential, &deadline, &mut tried, &ask)
                .await;
            if let Some((served_by, answer)) = served {
                let fetch_route = match by_digest {
                    Some(by_digest) => by_digest,
                    None => Self::fetch_route(&route, served_by),
                };
                let outcome = self
                    .walked(
                        image,
                        credential,
                        platform,
                        &fetch_route,
                        answer.outcome,
                        &deadline,
                    )
                    .await;
                return Resolved {
                    outcome,
                    served_by: Some(answer.origin),
                };
            }
        }
        Resolved::failed(tried.outcome(image, route.failure))
    }

    /// The route's endpoints in order, each asked with the HTTP client and the
    /// credential the runtime would use (an endpoint it would not ask is not asked),
    /// until one serves `request`: that endpoint and what it served. What the
    /// others answered goes to `tried`. The one walk over a route for a single answer,
    /// for resolving and for fetching by digest.
    async fn first_to_serve<'r, R: RouteRequest>(
        &self,
        route: &'r Route,
        credential: Option<&RegistryCredential>,
        deadline: &Deadline,
        tried: &mut Tried,
        request: &R,
    ) -> Option<(&'r RouteEndpoint, R::Served)> {
        for route_endpoint in &route.endpoints {
            let (client, sent) = match self.prepare(route_endpoint, credential) {
                Ok(prepared) => prepared,
                Err(not_asked) => {
                    tried.not_asked(&route_endpoint.host, *not_asked);
                    continue;
                }
            };
            let endpoint = registry_endpoint(route_endpoint, &client);
            let target = Target {
                endpoint: &endpoint,
                repository: &route_endpoint.repository,
                credential: sent,
                deadline,
            };
            match request.ask(&self.registry, target).await {
                Ok(served) => return Some((route_endpoint, served)),
                Err(answer) => tried.answered(&route_endpoint.host, answer),
            }
        }
        None
    }

    /// `outcome`, the answer that served `image` (a digest reference resolves to
    /// itself, whatever path answered), with its pull path walked below it, as deep as
    /// the resolver's depth, along `fetch_route`.
    async fn walked(
        &self,
        image: &ImageReference,
        credential: Option<&RegistryCredential>,
        platform: &Platform,
        fetch_route: &Route,
        mut outcome: CheckOutcome,
        deadline: &Deadline,
    ) -> CheckOutcome {
        if let Some(digest) = image.digest() {
            outcome.digest = Some(digest.to_string());
        }
        if self.depth != CheckDepth::Manifest
            && let Some(digest) = outcome.digest.clone()
        {
            let top = Top {
                digest,
                media_type: outcome.media_type.clone(),
                size: None,
                body: None,
            };
            self.walk_pull_path(credential, fetch_route, &top, platform, deadline)
                .await
                .apply(&mut outcome);
        }
        self.depth.note_skipped(&mut outcome);
        outcome
    }

    /// Where containers/image fetches what `served_by` resolved: everything from the
    /// source that answered (containerd fetches along its route by digest, from every
    /// endpoint able to pull, in order: [`Self::resolve_routes`]).
    fn fetch_route(route: &Route, served_by: &RouteEndpoint) -> Route {
        Route {
            endpoints: vec![served_by.clone()],
            ..route.clone()
        }
    }

    /// The HTTP client and the credential for one endpoint of a route, or why the
    /// runtime would not ask it: ("blocked" | "credentials" | "configuration", outcome).
    fn prepare<'a>(
        &self,
        endpoint: &'a RouteEndpoint,
        requested: Option<&'a RegistryCredential>,
    ) -> Result<(reqwest::Client, Option<&'a RegistryCredential>), NotAsked> {
        if let Some(refusal) = &endpoint.refused {
            return Err(Box::new(("blocked", refusal.clone())));
        }
        let credential = endpoint.credential(requested).map_err(|reason| {
            Box::new((
                "credentials",
                CheckOutcome::new(CheckStatus::UnknownError, reason),
            ))
        })?;
        let client = self.client(&endpoint.host).map_err(|reason| {
            Box::new((
                "configuration",
                CheckOutcome::new(CheckStatus::UnknownError, reason),
            ))
        })?;
        Ok((client, credential))
    }

    /// The pull path from `top` along the endpoints a node fetches from (`route`: the
    /// route by digest, every endpoint able to pull, in order; each with the
    /// credential the runtime would send it; endpoints it would not ask are skipped).
    async fn walk_pull_path(
        &self,
        credential: Option<&RegistryCredential>,
        route: &Route,
        top: &Top,
        platform: &Platform,
        deadline: &Deadline,
    ) -> PullPath {
        let prepared: Vec<(&RouteEndpoint, reqwest::Client, Option<&RegistryCredential>)> = route
            .endpoints
            .iter()
            .filter_map(|endpoint| {
                self.prepare(endpoint, credential)
                    .ok()
                    .map(|(client, credential)| (endpoint, client, credential))
            })
            .collect();
        let endpoints: Vec<Endpoint<'_>> = prepared
            .iter()
            .map(|(route_endpoint, client, _)| registry_endpoint(route_endpoint, client))
            .collect();
        let targets: Vec<Target<'_, '_>> = endpoints
            .iter()
            .zip(&prepared)
            .map(|(endpoint, (route_endpoint, _, credential))| Target {
                endpoint,
                repository: &route_endpoint.repository,
                credential: *credential,
                deadline,
            })
            .collect();
        self.registry
            .walk_pull_path(&targets, top, std::slice::from_ref(platform))
            .await
    }

    /// Fetches the manifest or index `digest` of `image`'s repository along the same
    /// route (hosts able to pull, in order; the first that has it wins), capped at 4 MiB
    /// and verified against the digest. Err: the failure that stands under the route's
    /// policy, else `absent`.
    pub async fn fetch_manifest(
        &self,
        image: &ImageReference,
        digest: &str,
        credential: Option<&RegistryCredential>,
    ) -> Result<Manifest, CheckOutcome> {
        let deadline = Deadline::after(self.config.request_timeout);
        let route = self
            .route(image, true)
            .map_err(|error| unreadable_route(&error))?;
        let mut tried = Tried::default();
        let fetch = ManifestBody { digest };
        match self
            .first_to_serve(&route, credential, &deadline, &mut tried, &fetch)
            .await
        {
            Some((_, manifest)) => Ok(manifest),
            None => Err(tried.failure(route.failure).cloned().unwrap_or_else(|| {
                CheckOutcome::new(
                    CheckStatus::Absent,
                    format!("{}@{digest}: not found on any host", image.name()),
                )
            })),
        }
    }

    /// The HTTP client for a host's TLS settings (CA, client certificate, skip_verify).
    /// Err: why the settings cannot be used.
    fn client(&self, host: &RegistryHost) -> Result<reqwest::Client, String> {
        let mut material = Vec::new();
        for ca in &host.ca {
            let pem = std::fs::read(ca)
                .map_err(|e| format!("unable to read CA cert {}: {e}", ca.display()))?;
            material.push(pem);
        }
        let mut identities = Vec::new();
        for (cert, key) in &host.client {
            let mut pem = std::fs::read(cert)
                .map_err(|e| format!("unable to read CERT file {}: {e}", cert.display()))?;
            if let Some(key) = key {
                pem.push(b'\n');
                pem.extend(
                    std::fs::read(key)
                        .map_err(|e| format!("unable to read key file {}: {e}", key.display()))?,
                );
            }
            identities.push(pem);
        }
        let mut hasher = DefaultHasher::new();
        (&material, &identities, host.skip_verify).hash(&mut hasher);
        let key = hasher.finish();
        if let Some(client) = lock(&self.clients).get(&key) {
            return Ok(client.clone());
        }
        // No per-request timeout: the resolve's deadline bounds every request.
        let mut builder = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .danger_accept_invalid_certs(host.skip_verify.unwrap_or(false));
        let mut certificates = Vec::new();
        for pem in &material {
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| format!("unable to load CA cert for {}: {e}", host.host))?;
            if certs.is_empty() {
                return Err(format!("no certificate in a CA file of {}", host.host));
            }
            certificates.extend(certs);
        }
        if !certificates.is_empty() {
            builder = builder.tls_certs_merge(certificates);
        }
        // reqwest takes one client identity; containerd offers every pair it has and
        // the server picks. One pair is by far the common case.
        if let Some(pem) = identities.first() {
            let identity = reqwest::Identity::from_pem(pem)
                .map_err(|e| format!("failed to load X509 key pair for {}: {e}", host.host))?;
            builder = builder.identity(identity);
        }
        let client = builder
            .build()
            .map_err(|e| format!("HTTP client for {}: {}", host.host, error_chain(&e)))?;
        lock(&self.clients).insert(key, client.clone());
        Ok(client)
    }
}
