//! `resolve` mode of the check stage: ask for the manifest along the route containerd
//! would take ([`crate::route`]), without downloading anything.
//!
//! For each host that may resolve (tags need `pull`+`resolve`, digests only `pull`),
//! `HEAD /v2/<repo>/manifests/<ref>` (`?ns=<registry>` on mirrors), as containerd's
//! resolver does: a 404 moves on to the next host; another failure is remembered and
//! the next host tried; the first success wins. When no host has it, the first
//! remembered failure is the answer, else "not found". Digests fall back to
//! `HEAD .../blobs/<digest>`. Nothing is ever fetched with GET except a manifest from a
//! registry that refuses HEAD.
//!
//! Credentials: a keyring credential applies to every host (containerd does the same
//! with the kubelet's AuthConfig); without one, containerd's own
//! `registry.configs."<host>".auth` for the host being contacted ([`RuntimeAuth`]).
//! Every request, token exchange and 429 pause goes through the root crate's
//! registry client ([`pullwatch::registry`]).

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pullwatch::registry::classify::Hints;
use pullwatch::registry::pull_path::{CheckDepth, Top, WalkSettings};
use pullwatch::registry::{
    ClientConfig, Deadline, Endpoint, Manifest, NoObserver, Object, RegistryClient, Scheme, Target,
};
use pullwatch::support::{error_chain, install_crypto_provider, lock};
use pullwatch::{CheckOutcome, CheckStatus, ImageReference, Platform, RegistryCredential};
use tracing::debug;

use crate::route::{HostsDialect, RegistryHost, RuntimeAuth, registry_hosts_for};

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
) -> Endpoint<'a> {
    Endpoint {
        http: client,
        scheme: if host.scheme == "http" {
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
        Resolver::with_walk(config, WalkSettings::default())
    }

    /// A resolver that walks the pull path as deep as `walk` says.
    pub fn with_walk(config: ResolverConfig, walk: WalkSettings) -> Resolver {
        install_crypto_provider();
        Resolver {
            depth: walk.depth,
            config,
            dialect: Mutex::new(HostsDialect::default()),
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
                Arc::new(NoObserver),
            ),
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
        let hosts = match registry_hosts_for(&self.config.hosts_dir, registry, self.dialect()) {
            Ok(hosts) => hosts,
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
        let digest = image.digest();
        // containerd fetches what it resolved from every host able to pull, in order.
        let fetch_hosts: Vec<&RegistryHost> =
            hosts.iter().filter(|h| h.capabilities.pull).collect();
        let hosts: Vec<&RegistryHost> = hosts
            .iter()
            .filter(|h| h.capabilities.pull && (digest.is_some() || h.capabilities.resolve))
            .collect();
        if hosts.is_empty() {
            return Resolved {
                outcome: CheckOutcome::new(
                    CheckStatus::Absent,
                    format!("no host may resolve {registry} (hosts.toml capabilities)"),
                ),
                served_by: None,
            };
        }
        let mut paths = vec![(Object::Manifest, image.manifest_reference().to_string())];
        if let Some(d) = digest {
            paths.push((Object::Blob, d.to_string()));
        }
        let mut first_failure: Option<CheckOutcome> = None;
        let mut tried = Vec::new();
        for (object, reference) in &paths {
            for host in &hosts {
                let mirror = host.host != registry;
                let credential = credential.or_else(|| self.config.runtime_auth.get(&host.host));
                let client = match self.client(host) {
                    Ok(client) => client,
                    Err(reason) => {
                        tried.push(format!("{} (configuration)", host.url()));
                        first_failure
                            .get_or_insert(CheckOutcome::new(CheckStatus::UnknownError, reason));
                        continue;
                    }
                };
                let endpoint = host_endpoint(host, &client, mirror.then_some(registry));
                let target = Target {
                    endpoint: &endpoint,
                    repository: image.repository(),
                    credential,
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
                        self.walk(image, credential, &fetch_hosts, &top, platform, &deadline)
                            .await
                            .apply(&mut outcome);
                    }
                    return Resolved {
                        outcome,
                        served_by: Some(host.url()),
                    };
                }
                match answer.http_status {
                    Some(404) => tried.push(format!("{} (404)", host.url())),
                    Some(code) => {
                        tried.push(format!("{} ({code})", host.url()));
                        first_failure.get_or_insert(answer.outcome);
                    }
                    None => {
                        tried.push(format!("{} (no answer)", host.url()));
                        first_failure.get_or_insert(answer.outcome);
                    }
                }
            }
        }
        let outcome = match first_failure {
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

    /// The pull path from `top` along the hosts a node fetches from (every host able to
    /// pull, in order; each with the credential containerd would send it).
    async fn walk(
        &self,
        image: &ImageReference,
        credential: Option<&RegistryCredential>,
        hosts: &[&RegistryHost],
        top: &Top,
        platform: &Platform,
        deadline: &Deadline,
    ) -> pullwatch::registry::pull_path::PullPath {
        let registry = image.registry();
        let prepared: Vec<(&RegistryHost, reqwest::Client)> = hosts
            .iter()
            .filter_map(|host| self.client(host).ok().map(|client| (*host, client)))
            .collect();
        let endpoints: Vec<Endpoint<'_>> = prepared
            .iter()
            .map(|(host, client)| {
                host_endpoint(host, client, (host.host != registry).then_some(registry))
            })
            .collect();
        let targets: Vec<Target<'_, '_>> = endpoints
            .iter()
            .zip(&prepared)
            .map(|(endpoint, (host, _))| Target {
                endpoint,
                repository: image.repository(),
                credential: credential.or_else(|| self.config.runtime_auth.get(&host.host)),
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
        let registry = image.registry();
        let hosts =
            registry_hosts_for(&self.config.hosts_dir, registry, self.dialect()).map_err(|e| {
                CheckOutcome::new(
                    CheckStatus::UnknownError,
                    format!("reading the registry route: {e}"),
                )
            })?;
        let mut first_failure: Option<CheckOutcome> = None;
        for host in hosts.iter().filter(|h| h.capabilities.pull) {
            let credential = credential.or_else(|| self.config.runtime_auth.get(&host.host));
            let client = match self.client(host) {
                Ok(client) => client,
                Err(reason) => {
                    first_failure
                        .get_or_insert(CheckOutcome::new(CheckStatus::UnknownError, reason));
                    continue;
                }
            };
            let endpoint =
                host_endpoint(host, &client, (host.host != registry).then_some(registry));
            match self
                .registry
                .fetch_manifest(&endpoint, image.repository(), digest, credential, &deadline)
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
