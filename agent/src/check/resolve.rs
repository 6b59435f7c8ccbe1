//! `resolve` mode of the check stage: ask for the manifest along the route the node's
//! runtime would take ([`crate::route`]), then walk its pull path along the same route
//! (`--check-depth`), without downloading a layer.
//!
//! For each host that may resolve (tags need `pull`+`resolve`, digests only `pull`),
//! `HEAD /v2/<repo>/manifests/<ref>` (`?ns=<registry>` on mirrors), as containerd's
//! resolver does: a 404 moves on to the next host; another failure is remembered and
//! the next host tried; the first success wins. When no host has it, the first
//! remembered failure is the answer, else "not found". Digests fall back to
//! `HEAD .../blobs/<digest>`. Then the walk ([`pullwatch::registry::pull_path`]): the
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
use pullwatch::registry::pull_path::{CheckDepth, Top, WalkSettings};
use pullwatch::registry::{
    ClientConfig, Deadline, Endpoint, Manifest, NoObserver, Object, RegistryClient,
    RegistryObserver, Scheme, Target,
};
use pullwatch::{CheckOutcome, CheckStatus, ImageReference, Platform, RegistryCredential};
use tracing::debug;

use crate::route::crio::CrioRouteConfig;
use crate::route::endpoints::{FailurePolicy, Route, RouteEndpoint, RouteRuntime, RuntimeDialect};
use crate::route::{HostsDialect, RegistryHost, RouteError, RuntimeAuth, registry_hosts_for};

/// What containerd sends in `Accept` when it resolves a reference.
pub const RESOLVE_ACCEPT: &str = "application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, */*";
const USER_AGENT: &str = concat!("pullwatch-agent/", env!("CARGO_PKG_VERSION"));
/// Index contents remembered, by digest.
const INDEX_CACHE_ENTRIES: usize = 1024;

/// `host` as the registry client addresses it; `namespace` is the registry a mirror
/// is asked on behalf of (`?ns=`), as containerd asks mirrors.
fn host_endpoint<'a>(
    host: &'a RegistryHost,
    client: &'a reqwest::Client,
    namespace: Option<&'a str>,
    http_fallback: bool,
) -> Endpoint<'a> {
    Endpoint {
        http: client,
        scheme: if http_fallback {
            Scheme::HttpsOrPlain
        } else if host.scheme == "http" {
            Scheme::Http
        } else {
            Scheme::Https
        },
        host: &host.host,
        api_root: &host.path,
        namespace,
        headers: &host.headers,
        accept: RESOLVE_ACCEPT,
    }
}

/// Why the runtime would not ask an endpoint: what stopped it (`blocked`, `credentials`,
/// `configuration`) and the outcome that stands for the answer.
type NotAsked = Box<(&'static str, CheckOutcome)>;

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

/// Resolves manifests along containerd's route. Shareable; keeps HTTP clients (per TLS
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
    pub fn with_runtime_dialect(mut self, dialect: RuntimeDialect, crio: CrioRouteConfig) -> Self {
        self.runtime_dialect = dialect;
        self.crio = crio;
        *lock(&self.route_runtime) = match dialect {
            RuntimeDialect::CriO => RouteRuntime::CriO,
            RuntimeDialect::Auto | RuntimeDialect::Containerd => RouteRuntime::Containerd,
        };
        self
    }

    /// Whose route checks take now.
    pub fn route_runtime(&self) -> RouteRuntime {
        *lock(&self.route_runtime)
    }

    /// The route for `image` (`by_digest`: for a manifest fetched by digest).
    pub fn route(&self, image: &ImageReference, by_digest: bool) -> Result<Route, RouteError> {
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

    pub fn runtime_auth(&self) -> &RuntimeAuth {
        &self.config.runtime_auth
    }

    /// Follows the hosts.toml rules of the runtime CRI `Version` reported.
    pub fn set_runtime(&self, name: &str, version: &str) {
        let dialect = HostsDialect::for_runtime(name, version);
        debug!(runtime = name, version, ?dialect, "hosts.toml rules");
        *lock(&self.dialect) = dialect;
        if self.runtime_dialect == RuntimeDialect::Auto {
            let runtime = RouteRuntime::from_runtime_name(name);
            debug!(runtime = name, ?runtime, "route of the runtime");
            *lock(&self.route_runtime) = runtime;
        }
    }

    pub fn dialect(&self) -> HostsDialect {
        *lock(&self.dialect)
    }

    /// The shared registry client this resolver asks through (for fetching manifests
    /// by digest with the same authentication and limits).
    pub fn registry_client(&self) -> &RegistryClient {
        &self.registry
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
    pub async fn resolve_for(
        &self,
        image: &ImageReference,
        credential: Option<&RegistryCredential>,
        platform: &Platform,
    ) -> Resolved {
        let deadline = Deadline::after(self.config.request_timeout);
        let registry = image.registry();
        let digest = image.digest();
        let route = match self.route(image, digest.is_some()) {
            Ok(route) => route,
            Err(e) => {
                return Resolved {
                    outcome: CheckOutcome::new(
                        CheckStatus::UnknownError,
                        format!("reading the registry route: {e}"),
                    ),
                    served_by: None,
                };
            }
        };
        if route.endpoints.is_empty() {
            return Resolved {
                outcome: CheckOutcome::new(
                    CheckStatus::Absent,
                    format!("no host may resolve {registry} (hosts.toml capabilities)"),
                ),
                served_by: None,
            };
        }
        let mut paths = vec![(Object::Manifest, image.manifest_reference().to_string())];
        if let Some(d) = digest
            && route.blob_fallback
        {
            paths.push((Object::Blob, d.to_string()));
        }
        let mut first_failure: Option<CheckOutcome> = None;
        // The last endpoint's answer, and whether it was a 404 (CRI-O's answer).
        let mut last: Option<(CheckOutcome, bool)> = None;
        let mut tried = Vec::new();
        for (object, reference) in &paths {
            for route_endpoint in &route.endpoints {
                let host = &route_endpoint.host;
                let (client, sent) = match self.prepare(route_endpoint, credential) {
                    Ok(prepared) => prepared,
                    Err(refused) => {
                        let (what, failure) = *refused;
                        tried.push(format!("{} ({what})", host.url()));
                        last = Some((failure.clone(), false));
                        first_failure.get_or_insert(failure);
                        continue;
                    }
                };
                let endpoint = host_endpoint(
                    host,
                    &client,
                    route_endpoint.namespace.as_deref(),
                    route_endpoint.http_fallback,
                );
                let target = Target {
                    endpoint: &endpoint,
                    repository: &route_endpoint.repository,
                    credential: sent,
                    deadline: &deadline,
                };
                let answer = self.registry.check(target, *object, reference).await;
                debug!(host = %host.url(), status = %answer.outcome.status, http = ?answer.http_status, "resolve answer");
                if answer.outcome.is_available() {
                    let mut outcome = answer.outcome;
                    // A digest reference resolves to itself, whatever path answered.
                    if let Some(d) = digest {
                        outcome.digest = Some(d.to_string());
                    }
                    if self.depth != CheckDepth::Manifest
                        && let Some(top) = outcome.digest.clone()
                    {
                        let top = Top {
                            digest: top,
                            media_type: outcome.media_type.clone(),
                            size: None,
                            body: None,
                        };
                        // containerd fetches what it resolved from every endpoint able
                        // to pull, in order (the route by digest); containers/image
                        // pulls everything from the source that answered.
                        let fetch_route = match self.route_runtime() {
                            RouteRuntime::CriO => Route {
                                endpoints: vec![route_endpoint.clone()],
                                ..route.clone()
                            },
                            RouteRuntime::Containerd => {
                                self.route(image, true).unwrap_or_else(|_| route.clone())
                            }
                        };
                        self.walk(credential, &fetch_route, &top, platform, &deadline)
                            .await
                            .apply(&mut outcome);
                    }
                    return Resolved {
                        outcome,
                        served_by: Some(answer.origin),
                    };
                }
                match answer.http_status {
                    Some(404) => {
                        tried.push(format!("{} (404)", host.url()));
                        last = Some((answer.outcome, true));
                    }
                    Some(code) => {
                        tried.push(format!("{} ({code})", host.url()));
                        last = Some((answer.outcome.clone(), false));
                        first_failure.get_or_insert(answer.outcome);
                    }
                    None => {
                        tried.push(format!("{} (no answer)", host.url()));
                        last = Some((answer.outcome.clone(), false));
                        first_failure.get_or_insert(answer.outcome);
                    }
                }
            }
        }
        let failure = match route.failure {
            FailurePolicy::FirstFailure => first_failure,
            FailurePolicy::Primary => {
                last.and_then(|(outcome, not_found)| (!not_found).then_some(outcome))
            }
        };
        let outcome = match failure {
            None => CheckOutcome::new(
                CheckStatus::Absent,
                format!("{image}: not found (tried {})", tried.join(", ")),
            ),
            Some(failure) => CheckOutcome::new(
                failure.status,
                format!("{} (tried {})", failure.reason, tried.join(", ")),
            ),
        };
        Resolved {
            outcome,
            served_by: None,
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
    async fn walk(
        &self,
        credential: Option<&RegistryCredential>,
        route: &Route,
        top: &Top,
        platform: &Platform,
        deadline: &Deadline,
    ) -> pullwatch::registry::pull_path::PullPath {
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
            .map(|(route_endpoint, client, _)| {
                host_endpoint(
                    &route_endpoint.host,
                    client,
                    route_endpoint.namespace.as_deref(),
                    route_endpoint.http_fallback,
                )
            })
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
    /// and verified against the digest. Err: the first failure, else `absent`.
    pub async fn fetch_manifest(
        &self,
        image: &ImageReference,
        digest: &str,
        credential: Option<&RegistryCredential>,
    ) -> Result<Manifest, CheckOutcome> {
        let deadline = Deadline::after(self.config.request_timeout);
        let route = self.route(image, true).map_err(|e| {
            CheckOutcome::new(
                CheckStatus::UnknownError,
                format!("reading the registry route: {e}"),
            )
        })?;
        let mut first_failure: Option<CheckOutcome> = None;
        for route_endpoint in &route.endpoints {
            let (client, credential) = match self.prepare(route_endpoint, credential) {
                Ok(prepared) => prepared,
                Err(refused) => {
                    first_failure.get_or_insert(refused.1);
                    continue;
                }
            };
            let endpoint = host_endpoint(
                &route_endpoint.host,
                &client,
                route_endpoint.namespace.as_deref(),
                route_endpoint.http_fallback,
            );
            match self
                .registry
                .fetch_manifest(
                    &endpoint,
                    &route_endpoint.repository,
                    digest,
                    credential,
                    &deadline,
                )
                .await
            {
                Ok(manifest) => return Ok(manifest),
                Err(answer) if answer.http_status == Some(404) => {}
                Err(answer) => {
                    first_failure.get_or_insert(answer.outcome);
                }
            }
        }
        Err(first_failure.unwrap_or_else(|| {
            CheckOutcome::new(
                CheckStatus::Absent,
                format!("{}@{digest}: not found on any host", image.name()),
            )
        }))
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
