//! One manifest check against one registry with one credential: the HTTP part.
//!
//! The token dance (WWW-Authenticate challenge, token endpoint, scopes) is oci-client's
//! `Client::auth`. The manifest request itself is sent here because oci-client's
//! `fetch_manifest_digest` hides the response headers, and a 429's `Retry-After` is
//! something we must honour.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::StatusCode;
use oci_client::secrets::RegistryAuth;
use oci_client::{Reference, RegistryOperation};
use pullwatch::{CheckOutcome, CheckStatus, ImageReference, Platform, RegistryCredential};
use tracing::debug;

use super::classify::{self, Challenge};
use super::limits::{RegistryState, lock};
use crate::metrics::CheckerMetrics;

/// Every manifest media type a runtime accepts, so registries answer for indexes,
/// manifest lists, OCI and Docker manifests alike.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.v1+prettyjws;q=0.5";

/// Bearer tokens are reused for this long at most (registries commonly issue 300 s).
const TOKEN_TTL: Duration = Duration::from_secs(240);

/// HTTP clients for one scheme.
pub struct SchemeClients {
    /// `https` or `http`.
    pub scheme: &'static str,
    pub http: reqwest::Client,
    pub oci: oci_client::Client,
}

/// Indexes bigger than this are not read (containerd's limit for manifests).
const MAX_INDEX_BYTES: usize = 4 * 1024 * 1024;
/// Index contents remembered, by digest (content-addressed: never stale).
const INDEX_CACHE_ENTRIES: usize = 4096;

/// Clients for both schemes plus the token cache.
pub struct Transport {
    pub https: SchemeClients,
    /// Present only with `--allow-plain-http`.
    pub plain: Option<SchemeClients>,
    tokens: Mutex<HashMap<TokenKey, (String, Instant)>>,
    /// Platforms of the indexes seen, by digest; None when platforms are not checked
    /// (then no index body is ever fetched).
    index_platforms: Option<Mutex<HashMap<String, Arc<[Platform]>>>>,
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct TokenKey {
    plain_http: bool,
    host: String,
    repository: String,
    credential: u64,
}

/// How a request authenticates.
enum Authorization {
    Anonymous,
    Basic,
    Bearer(String),
}

impl Transport {
    pub fn new(https: SchemeClients, plain: Option<SchemeClients>) -> Self {
        Transport {
            https,
            plain,
            tokens: Mutex::new(HashMap::new()),
            index_platforms: None,
        }
    }

    /// Reads the platforms of indexes (one GET per new index digest), for checks of
    /// the platforms workloads land on.
    pub fn with_index_platforms(mut self) -> Self {
        self.index_platforms = Some(Mutex::new(HashMap::new()));
        self
    }

    /// Checks `reference` with `credential` (None: anonymous), falling back to plain
    /// HTTP when allowed and HTTPS gets no answer.
    pub async fn check(
        &self,
        registry: &RegistryState,
        metrics: &CheckerMetrics,
        reference: &ImageReference,
        credential: Option<&RegistryCredential>,
    ) -> CheckOutcome {
        let known_plain = *lock(&registry.plain_http);
        let order: &[bool] = match (known_plain, self.plain.is_some()) {
            (Some(true), true) => &[true, false],
            (_, true) => &[false, true],
            (_, false) => &[false],
        };
        let mut last = None;
        for &plain_http in order {
            match self
                .check_with_scheme(registry, metrics, reference, credential, plain_http)
                .await
            {
                Ok(outcome) => {
                    *lock(&registry.plain_http) = Some(plain_http);
                    return outcome;
                }
                Err(no_answer) => {
                    debug!(registry = %registry.host, plain_http, reason = %no_answer.reason, "no HTTP answer");
                    last = Some(no_answer);
                }
            }
        }
        last.unwrap_or_else(|| CheckOutcome::new(CheckStatus::UnknownError, "no scheme to try"))
    }

    /// Ok: the registry answered (whatever the status). Err: no HTTP answer at all.
    async fn check_with_scheme(
        &self,
        registry: &RegistryState,
        metrics: &CheckerMetrics,
        reference: &ImageReference,
        credential: Option<&RegistryCredential>,
        plain_http: bool,
    ) -> Result<CheckOutcome, CheckOutcome> {
        let clients = if plain_http {
            self.plain.as_ref().unwrap_or(&self.https)
        } else {
            &self.https
        };
        let scheme = if plain_http { "http" } else { "https" };
        let url = format!(
            "{scheme}://{}/v2/{}/manifests/{}",
            reference.api_host(),
            reference.repository(),
            reference.manifest_reference()
        );
        let token_key = TokenKey {
            plain_http,
            host: reference.api_host().to_string(),
            repository: reference.repository().to_string(),
            credential: RegistryCredential::fingerprint(credential),
        };

        let mut method = http::Method::HEAD;
        let mut authorization = self.initial_authorization(registry, &token_key, credential);
        let mut authenticated_after_challenge = false;
        // At most: one challenge round, one HEAD->GET fallback, one final request.
        for _ in 0..4 {
            registry.before_request().await;
            let mut request = clients
                .http
                .request(method.clone(), &url)
                .header(http::header::ACCEPT, MANIFEST_ACCEPT);
            request = match (&authorization, credential) {
                (Authorization::Bearer(token), _) => request.bearer_auth(token),
                (Authorization::Basic, Some(c)) => {
                    request.basic_auth(&c.username, Some(&c.password))
                }
                _ => request,
            };
            let response = match request.send().await {
                Ok(response) => response,
                Err(error) => {
                    metrics
                        .registry_requests
                        .with_label_values(&[&registry.host, "error"])
                        .inc();
                    return Err(classify::classify_transport_error(&error));
                }
            };
            let status = response.status();
            metrics
                .registry_requests
                .with_label_values(&[&registry.host, status.as_str()])
                .inc();
            let headers = response.headers().clone();

            if status == StatusCode::UNAUTHORIZED && !authenticated_after_challenge {
                authenticated_after_challenge = true;
                let challenge = classify::challenge(&headers);
                *lock(&registry.challenge) = Some(challenge);
                lock(&self.tokens).remove(&token_key);
                match challenge {
                    Challenge::Bearer => {
                        match self.fetch_token(clients, reference, credential).await {
                            Ok(Some(token)) => {
                                lock(&self.tokens).insert(
                                    token_key.clone(),
                                    (token.clone(), Instant::now() + TOKEN_TTL),
                                );
                                authorization = Authorization::Bearer(token);
                                continue;
                            }
                            Ok(None) => {}
                            Err(outcome) => return Ok(outcome),
                        }
                    }
                    Challenge::Basic
                        if credential.is_some()
                            && !matches!(authorization, Authorization::Basic) =>
                    {
                        authorization = Authorization::Basic;
                        continue;
                    }
                    _ => {}
                }
            }
            if method == http::Method::HEAD
                && matches!(
                    status,
                    StatusCode::METHOD_NOT_ALLOWED | StatusCode::NOT_IMPLEMENTED
                )
            {
                debug!(registry = %registry.host, %status, "registry refuses HEAD; asking with GET");
                method = http::Method::GET;
                continue;
            }

            let body = if method == http::Method::GET && !status.is_success() {
                response.bytes().await.unwrap_or_default()
            } else {
                bytes::Bytes::new()
            };
            let mut outcome = classify::classify_response(status, &body);
            if outcome.is_available() {
                // What the reference resolves to now: tag-drift detection compares it
                // with what running pods run.
                let header = |name: &str| {
                    headers
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string)
                };
                outcome.digest = reference
                    .digest()
                    .map(str::to_string)
                    .or_else(|| header("docker-content-digest").filter(|d| d.contains(':')));
                outcome.media_type = header("content-type")
                    .map(|t| t.split(';').next().unwrap_or_default().trim().to_string());
                if let (Some(digest), Some(media_type)) = (&outcome.digest, &outcome.media_type)
                    && pullwatch::platform::is_index(media_type)
                {
                    outcome.platforms = self
                        .index_platforms(clients, reference, digest, &authorization, credential)
                        .await;
                }
            }
            if status == StatusCode::TOO_MANY_REQUESTS {
                let retry_after = classify::retry_after(&headers);
                let (pause, until) = registry.rate_limited(retry_after);
                metrics
                    .rate_limited
                    .with_label_values(&[&registry.host])
                    .inc();
                metrics
                    .registry_paused_until
                    .with_label_values(&[&registry.host])
                    .set(until);
                let source = if retry_after.is_some() {
                    "Retry-After"
                } else {
                    "backoff"
                };
                outcome.reason = format!(
                    "{}; registry paused for {}s ({source})",
                    outcome.reason,
                    pause.as_secs()
                );
            } else {
                registry.answered();
            }
            if status == StatusCode::UNAUTHORIZED && credential.is_none() {
                outcome.reason = format!(
                    "{} and no pull secret matches this registry",
                    outcome.reason
                );
            }
            return Ok(outcome);
        }
        Ok(CheckOutcome::new(
            CheckStatus::UnknownError,
            "registry kept asking for authentication",
        ))
    }

    /// The platforms index `digest` offers: from the cache, else one GET of it with
    /// the authorization that just worked. None when platforms are not checked or the
    /// index could not be read (the check then says nothing about platforms).
    async fn index_platforms(
        &self,
        clients: &SchemeClients,
        reference: &ImageReference,
        digest: &str,
        authorization: &Authorization,
        credential: Option<&RegistryCredential>,
    ) -> Option<Arc<[Platform]>> {
        let cache = self.index_platforms.as_ref()?;
        if let Some(known) = lock(cache).get(digest) {
            return Some(known.clone());
        }
        let url = reference_url(clients, reference, digest);
        let mut request = clients
            .http
            .get(&url)
            .header(http::header::ACCEPT, MANIFEST_ACCEPT);
        request = match (authorization, credential) {
            (Authorization::Bearer(token), _) => request.bearer_auth(token),
            (Authorization::Basic, Some(c)) => request.basic_auth(&c.username, Some(&c.password)),
            _ => request,
        };
        let body = match request.send().await {
            Ok(response) if response.status().is_success() => {
                read_capped(response, MAX_INDEX_BYTES).await
            }
            Ok(response) => Err(format!("index GET answered {}", response.status())),
            Err(error) => Err(classify::error_chain(&error)),
        };
        let platforms = body.and_then(|body| {
            pullwatch::platform::index_platforms(&body).map_err(|e| e.to_string())
        });
        match platforms {
            Ok(platforms) => {
                let platforms: Arc<[Platform]> = platforms.into();
                let mut cache = lock(cache);
                if cache.len() >= INDEX_CACHE_ENTRIES
                    && let Some(evicted) = cache.keys().next().cloned()
                {
                    cache.remove(&evicted);
                }
                cache.insert(digest.to_string(), platforms.clone());
                Some(platforms)
            }
            Err(reason) => {
                debug!(registry = %reference.registry(), %digest, %reason, "index not read; platforms not checked");
                None
            }
        }
    }

    fn initial_authorization(
        &self,
        registry: &RegistryState,
        key: &TokenKey,
        credential: Option<&RegistryCredential>,
    ) -> Authorization {
        match *lock(&registry.challenge) {
            Some(Challenge::Bearer) => match lock(&self.tokens).get(key) {
                Some((token, expires)) if *expires > Instant::now() => {
                    Authorization::Bearer(token.clone())
                }
                _ => Authorization::Anonymous,
            },
            Some(Challenge::Basic) if credential.is_some() => Authorization::Basic,
            _ => Authorization::Anonymous,
        }
    }

    /// The bearer token dance, by oci-client. Ok(None): the registry wants no token.
    async fn fetch_token(
        &self,
        clients: &SchemeClients,
        reference: &ImageReference,
        credential: Option<&RegistryCredential>,
    ) -> Result<Option<String>, CheckOutcome> {
        let oci_reference = Reference::with_tag(
            reference.api_host().to_string(),
            reference.repository().to_string(),
            "latest".to_string(),
        );
        let auth = registry_auth(credential);
        match clients
            .oci
            .auth(&oci_reference, &auth, RegistryOperation::Pull)
            .await
        {
            Ok(token) => Ok(token),
            Err(oci_client::errors::OciDistributionError::AuthenticationFailure(body)) => {
                Err(CheckOutcome::new(
                    CheckStatus::AuthenticationFailure,
                    format!("token endpoint refused the credentials: {}", body.trim()),
                ))
            }
            Err(oci_client::errors::OciDistributionError::RequestError(error)) => {
                Err(classify::classify_transport_error(&error))
            }
            Err(other) => Err(CheckOutcome::new(
                CheckStatus::UnknownError,
                format!("token request failed: {}", classify::error_chain(&other)),
            )),
        }
    }
}

fn registry_auth(credential: Option<&RegistryCredential>) -> RegistryAuth {
    match credential {
        None => RegistryAuth::Anonymous,
        Some(c) => {
            if let Some(token) = &c.registry_token {
                RegistryAuth::Bearer(token.clone())
            } else if !c.username.is_empty() || !c.password.is_empty() {
                RegistryAuth::Basic(c.username.clone(), c.password.clone())
            } else if let Some(token) = &c.identity_token {
                // Docker's convention for identity tokens sent to a token endpoint.
                RegistryAuth::Basic("<token>".to_string(), token.clone())
            } else {
                RegistryAuth::Anonymous
            }
        }
    }
}

/// `<scheme>://<host>/v2/<repository>/manifests/<reference>` for `clients`' scheme.
fn reference_url(clients: &SchemeClients, reference: &ImageReference, manifest: &str) -> String {
    format!(
        "{}://{}/v2/{}/manifests/{manifest}",
        clients.scheme,
        reference.api_host(),
        reference.repository()
    )
}

/// A response body, refused past `limit` bytes.
async fn read_capped(mut response: reqwest::Response, limit: usize) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| classify::error_chain(&e))?
    {
        if body.len() + chunk.len() > limit {
            return Err(format!("body larger than {limit} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
