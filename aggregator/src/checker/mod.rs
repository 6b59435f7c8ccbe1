//! The central checker: the fourth stage. Asks registries, from the aggregator's own
//! vantage point, whether each distinct reference can be pulled with the credentials
//! the kubelet would try.

pub mod limits;
mod metrics;

pub(crate) use metrics::CheckerMetrics;

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use pullwatch::{CheckOutcome, CheckStatus, CredentialAttempt, most_informative_failure};
use tokio::sync::Semaphore;
use tracing::{Instrument, debug, info_span, warn};

use pullwatch::registry::classify::Hints;
use pullwatch::registry::pull_path::{Schema1Pulls, WalkSettings};
use pullwatch::registry::{
    ClientConfig, Deadline, Endpoint, MANIFEST_ACCEPT, RegistryClient, RegistryObserver, Scheme,
    Target,
};
use pullwatch::{ImageReference, Platform, RegistryCredential};

use crate::index::CheckKey;
use limits::{Registries, RegistryLimits};
use pullwatch::locks::lock;
use pullwatch::process::install_crypto_provider;

/// How the checker talks to registries.
#[derive(Clone, Debug)]
pub struct CheckerConfig {
    pub allow_plain_http: bool,
    pub skip_tls_verify: bool,
    /// PEM files (or directories of them) with extra CA certificates.
    pub ca_paths: Vec<PathBuf>,
    /// Deadline of one check: every request it makes (tokens, manifests, retries,
    /// fallbacks, every credential), connect to last byte.
    pub request_timeout: Duration,
    /// Checks in flight across all registries.
    pub max_concurrent_checks: usize,
    pub registry_limits: RegistryLimits,
    /// Read the platforms of indexes (one GET per new index digest): on when the
    /// platforms workloads land on are checked (`--platform`, or a cluster's nodes).
    pub index_platforms: bool,
    /// How deep a check walks the pull path (`--check-depth`, `--blob-check-interval`).
    pub walk: WalkSettings,
    /// The platforms an index's pull path is walked for until the index says which
    /// platforms workloads land on (`--platform`); none: this process's own.
    pub platforms: Vec<Platform>,
}

impl Default for CheckerConfig {
    fn default() -> Self {
        CheckerConfig {
            allow_plain_http: false,
            skip_tls_verify: false,
            ca_paths: Vec::new(),
            request_timeout: Duration::from_secs(10),
            max_concurrent_checks: 32,
            registry_limits: RegistryLimits {
                max_concurrency: 8,
                requests_per_second: NonZeroU32::new(20).unwrap_or(NonZeroU32::MIN),
            },
            index_platforms: false,
            walk: WalkSettings::default(),
            platforms: Vec::new(),
        }
    }
}

/// Why a checker could not be built.
#[derive(Debug, thiserror::Error)]
pub enum CheckerError {
    #[error("--capath {path}: cannot read CA certificates: {source}")]
    CaRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--capath {path}: no PEM certificates found")]
    CaEmpty { path: PathBuf },
    #[error("--capath {path}: invalid certificate: {reason}")]
    CaInvalid { path: PathBuf, reason: String },
    #[error("cannot build HTTP client: {0}")]
    Client(String),
}

/// Index contents remembered, by digest (content-addressed: never stale).
const INDEX_CACHE_ENTRIES: usize = 4096;

type SharedCheck = Shared<BoxFuture<'static, CheckOutcome>>;

/// The aggregator's own registry checker (the agents check on the nodes). Cheap to share (`Arc`); all state is internal.
pub struct CentralChecker {
    inner: Arc<Inner>,
}

struct Inner {
    client: RegistryClient,
    http: reqwest::Client,
    scheme: Scheme,
    registries: Registries,
    global: Semaphore,
    in_flight: Mutex<HashMap<CheckKey, SharedCheck>>,
    metrics: CheckerMetrics,
    request_timeout: Duration,
    /// The platforms an index's pull path is walked for: every platform a workload
    /// can land on (the index's candidates), else `--platform`, else this process's.
    platforms: Mutex<Arc<[Platform]>>,
}

impl CentralChecker {
    pub fn new(config: &CheckerConfig, metrics: CheckerMetrics) -> Result<Self, CheckerError> {
        install_crypto_provider();
        let certificates = load_certificates(&config.ca_paths)?;
        let http = http_client(config, &certificates)?;
        let client = RegistryClient::new(
            ClientConfig {
                requests_per_second: Some(config.registry_limits.requests_per_second),
                hints: Hints {
                    tls: if config.ca_paths.is_empty() {
                        "a private CA? add it with --capath".to_string()
                    } else {
                        "is the registry's CA among --capath?".to_string()
                    },
                    plain_http: if config.allow_plain_http {
                        String::new()
                    } else {
                        "plain HTTP there? see --allow-plain-http".to_string()
                    },
                },
                index_platforms: config.index_platforms.then_some(INDEX_CACHE_ENTRIES),
                walk: WalkSettings {
                    cache_entries: INDEX_CACHE_ENTRIES,
                    ..config.walk
                },
            },
            Arc::new(MetricsObserver(metrics.clone())),
        );
        Ok(CentralChecker {
            inner: Arc::new(Inner {
                client,
                http,
                scheme: if config.allow_plain_http {
                    Scheme::HttpsOrPlain
                } else {
                    Scheme::Https
                },
                registries: Registries::new(config.registry_limits),
                global: Semaphore::new(config.max_concurrent_checks.max(1)),
                in_flight: Mutex::new(HashMap::new()),
                metrics,
                request_timeout: config.request_timeout,
                platforms: Mutex::new(config.platforms.clone().into()),
            }),
        })
    }

    /// The platforms workloads can land on, as the index found them (the nodes', or
    /// `--platform`): an index's pull path is walked for each. Empty keeps the last.
    pub(crate) fn set_platforms(&self, platforms: &[Platform]) {
        if platforms.is_empty() {
            return;
        }
        let mut current = lock(&self.inner.platforms);
        if &**current != platforms {
            *current = platforms.to_vec().into();
        }
    }

    /// What the nodes' runtimes do with a Docker schema 1 manifest, as the index found
    /// them (`--schema1-images`, or the nodes'); none known: refused.
    pub(crate) fn set_schema1_pulls(&self, pulls: &[Schema1Pulls]) {
        self.inner.client.set_schema1_pulls(pulls);
    }

    /// Forgets what is kept per registry host for hosts not in `hosts` (the index's
    /// registries): the client's host state, the concurrency slots, and their series
    /// (requests, 429s, pauses, quotas), with those of token endpoints only they used.
    pub(crate) fn retain_registries(&self, hosts: &std::collections::BTreeSet<&str>) {
        let gone = self.inner.client.retain_hosts(hosts);
        self.inner.registries.retain(hosts);
        let metrics = &self.inner.metrics;
        for host in &gone {
            let _ = metrics
                .registry_paused_until
                .remove_label_values(&[host.as_str()]);
            let _ = metrics.rate_limited.remove_label_values(&[host.as_str()]);
            metrics.quotas.forget(host);
            metrics.registry_requests.forget(host);
        }
        if !gone.is_empty() {
            tracing::debug!(hosts = ?gone, "registries left the index; their state and series are gone");
        }
    }

    /// Checks one distinct reference. Identical checks already in flight (same
    /// reference, same credentials) are joined rather than repeated.
    pub async fn check(&self, key: &CheckKey) -> CheckOutcome {
        let shared = {
            let mut in_flight = lock(&self.inner.in_flight);
            if let Some(existing) = in_flight.get(key) {
                self.inner.metrics.coalesced_checks.inc();
                existing.clone()
            } else {
                let inner = self.inner.clone();
                let owned_key = key.clone();
                let future = async move {
                    let outcome = inner.check_uncoalesced(&owned_key).await;
                    lock(&inner.in_flight).remove(&owned_key);
                    outcome
                }
                .boxed()
                .shared();
                in_flight.insert(key.clone(), future.clone());
                future
            }
        };
        shared.await
    }
}

impl Inner {
    async fn check_uncoalesced(&self, key: &CheckKey) -> CheckOutcome {
        let reference = &key.reference;
        let span = info_span!("check", registry = %reference.registry(), repository = %reference.repository(), reference = %reference.manifest_reference(), credentials = key.credentials.len());
        async {
            let _queued = QueueSlot::new(&self.metrics.queue_depth);
            let started = Instant::now();
            let outcome = self.check_limited(key).await;
            self.metrics
                .check_duration
                .with_label_values(&[outcome.status.as_str()])
                .observe(started.elapsed().as_secs_f64());
            match outcome.status {
                CheckStatus::Available => debug!("available"),
                CheckStatus::UnknownError => {
                    warn!(reason = %outcome.reason, "check failed for an unclassified reason")
                }
                status => debug!(%status, reason = %outcome.reason, "not available"),
            }
            outcome
        }
        .instrument(span)
        .await
    }

    async fn check_limited(&self, key: &CheckKey) -> CheckOutcome {
        let reference = &key.reference;
        let host = reference.api_host();
        // A paused registry is not even queued for; the client consults the pause again
        // before every request, so checks already queued behind the semaphores when a
        // 429 arrives do not reach the registry either.
        if let Some(paused) = self.client.paused_for(host) {
            return RegistryClient::paused_outcome(paused);
        }
        let registry = self.registries.get(host);
        // Both semaphores live as long as the checker and are never closed.
        let Ok(_registry_slot) = registry.slots.acquire().await else {
            return CheckOutcome::new(CheckStatus::UnknownError, "checker is shutting down");
        };
        let Ok(_global_slot) = self.global.acquire().await else {
            return CheckOutcome::new(CheckStatus::UnknownError, "checker is shutting down");
        };
        // One deadline for everything this check sends.
        let deadline = Deadline::after(self.request_timeout);

        if key.credentials.is_empty() {
            return self.check_one(reference, None, &deadline).await;
        }
        // As the kubelet: each matching credential in turn until one works.
        let mut failures: Vec<CredentialAttempt> = Vec::new();
        for sourced in key.credentials.iter() {
            let outcome = self
                .check_one(reference, Some(&sourced.credential), &deadline)
                .await;
            if outcome.is_available() {
                return outcome;
            }
            debug!(source = %sourced.source, status = %outcome.status, "credential did not work");
            let rate_limited = outcome.status == CheckStatus::RateLimited;
            failures.push(CredentialAttempt {
                source: sourced.source.to_string(),
                outcome,
            });
            if rate_limited {
                // Every further attempt would only deepen the registry's displeasure.
                break;
            }
        }
        summarize(&failures)
    }

    async fn check_one(
        &self,
        reference: &ImageReference,
        credential: Option<&RegistryCredential>,
        deadline: &Deadline,
    ) -> CheckOutcome {
        let endpoint = Endpoint {
            accept: MANIFEST_ACCEPT,
            ..Endpoint::new(&self.http, self.scheme, reference.api_host())
        };
        let target = Target {
            endpoint: &endpoint,
            repository: reference.repository(),
            credential,
            deadline,
        };
        let platforms = lock(&self.platforms).clone();
        let mut outcome = self
            .client
            .check_pull_path(target, reference.manifest_reference(), &platforms)
            .await
            .outcome;
        if outcome.status == CheckStatus::AuthenticationFailure && credential.is_none() {
            outcome.reason = format!(
                "{} and no pull secret matches this registry",
                outcome.reason
            );
        }
        outcome
    }
}

/// Feeds the client's request events into the aggregator's metrics.
struct MetricsObserver(CheckerMetrics);

impl RegistryObserver for MetricsObserver {
    fn request(&self, host: &str, code: Option<u16>) {
        let code = code.map_or_else(|| "error".to_string(), |c| c.to_string());
        self.0.registry_requests.inc(host, &code);
    }

    fn rate_limited(&self, host: &str) {
        self.0.rate_limited.with_label_values(&[host]).inc();
    }

    fn paused_until(&self, host: &str, unix_seconds: f64) {
        self.0
            .registry_paused_until
            .with_label_values(&[host])
            .set(unix_seconds);
    }

    fn quota(&self, host: &str, quota: &pullwatch::registry::quota::Quota) {
        debug!(registry = host, remaining = quota.remaining, limit = ?quota.limit, source = ?quota.source, "pull quota announced");
        self.0.quotas.record(host, quota);
    }
}

/// Counts a check in the queue-depth gauge for as long as it lives, even when the
/// check is cancelled midway.
struct QueueSlot(prometheus::IntGauge);

impl QueueSlot {
    fn new(gauge: &prometheus::IntGauge) -> Self {
        gauge.inc();
        QueueSlot(gauge.clone())
    }
}

impl Drop for QueueSlot {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// One outcome for failed credentials, by the rule the agent reports by too
/// ([`most_informative_failure`]). An outcome has no source field, so a single
/// credential's source (never its value) goes into the reason; several are each
/// listed there with their source already.
fn summarize(failures: &[CredentialAttempt]) -> CheckOutcome {
    let failed = most_informative_failure(failures);
    let reason = match failures {
        [_] => format!("{} (credentials from {})", failed.reason, failed.source),
        _ => failed.reason,
    };
    CheckOutcome::new(failed.status, reason)
}

/// DER certificates from every `--capath` (files, or directories of `.crt`/`.pem`).
fn load_certificates(paths: &[PathBuf]) -> Result<Vec<Vec<u8>>, CheckerError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;

    let mut certificates = Vec::new();
    for path in paths {
        let read = |p: &PathBuf| {
            std::fs::read(p).map_err(|source| CheckerError::CaRead {
                path: p.clone(),
                source,
            })
        };
        let files: Vec<PathBuf> = if path.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(|source| CheckerError::CaRead {
                    path: path.clone(),
                    source,
                })?
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| {
                    p.extension()
                        .and_then(|e| e.to_str())
                        .is_some_and(|e| matches!(e, "crt" | "pem" | "cert"))
                })
                .collect();
            files.sort();
            files
        } else {
            vec![path.clone()]
        };
        let before = certificates.len();
        for file in &files {
            let bytes = read(file)?;
            for cert in CertificateDer::pem_slice_iter(&bytes) {
                let cert = cert.map_err(|e| CheckerError::CaInvalid {
                    path: file.clone(),
                    reason: e.to_string(),
                })?;
                certificates.push(cert.as_ref().to_vec());
            }
        }
        if certificates.len() == before {
            return Err(CheckerError::CaEmpty { path: path.clone() });
        }
    }
    Ok(certificates)
}

/// One HTTP client for every registry (HTTPS and, with `--allow-plain-http`, plain
/// HTTP alike): the deadline of each check bounds its requests.
fn http_client(
    config: &CheckerConfig,
    certificates: &[Vec<u8>],
) -> Result<reqwest::Client, CheckerError> {
    let reqwest_certs = certificates
        .iter()
        .map(|der| reqwest::Certificate::from_der(der))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CheckerError::Client(e.to_string()))?;
    reqwest::Client::builder()
        .user_agent(concat!("pullwatch/", env!("CARGO_PKG_VERSION")))
        .danger_accept_invalid_certs(config.skip_tls_verify)
        .tls_certs_merge(reqwest_certs)
        .pool_max_idle_per_host(config.registry_limits.max_concurrency)
        .build()
        .map_err(|e| CheckerError::Client(pullwatch::error_chain(&e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(source: &str, status: CheckStatus, reason: &str) -> CredentialAttempt {
        CredentialAttempt {
            source: source.into(),
            outcome: CheckOutcome::new(status, reason),
        }
    }

    #[test]
    fn failed_credentials_are_summarized_with_their_sources() {
        let one = summarize(&[failure(
            "secret/ops/old",
            CheckStatus::AuthenticationFailure,
            "401",
        )]);
        assert_eq!(
            one,
            CheckOutcome::new(
                CheckStatus::AuthenticationFailure,
                "401 (credentials from secret/ops/old)"
            )
        );
        let several = summarize(&[
            failure("secret/ops/old", CheckStatus::AuthenticationFailure, "401"),
            failure("secret/ops/new", CheckStatus::Absent, "manifest unknown"),
        ]);
        assert_eq!(
            several,
            CheckOutcome::new(
                CheckStatus::Absent,
                "no credential worked: secret/ops/old: 401; secret/ops/new: manifest unknown"
            )
        );
    }
}
