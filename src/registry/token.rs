//! The bearer-token exchange of the distribution token spec: a token per (realm,
//! service, scope, credential), cached until shortly before it expires, else asked of
//! the token endpoint (`GET` with basic auth or anonymously; the OAuth2 refresh-token
//! grant for an identity token). Every answer of the endpoint is classified like a
//! manifest answer; a 429 pauses the registry it speaks for.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use serde::Deserialize;

use super::{
    Endpoint, Failure, HostState, MAX_ERROR_BYTES, RegistryClient, classify, form_encode,
    has_password, host_of_url, read_capped, redact,
};
use crate::locks::lock;
use crate::{CheckOutcome, CheckStatus, RegistryCredential};

/// Token responses are read up to this size.
const MAX_TOKEN_BYTES: usize = 1 << 20;
/// Bearer tokens without `expires_in` live 60 s (the distribution token spec's default).
const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(60);
/// A token is not used in its last seconds, so it does not expire on the way.
const TOKEN_MARGIN: Duration = Duration::from_secs(10);

/// What a token is asked for: a challenge's realm and service, and the scope.
#[derive(Clone, Copy)]
pub(super) struct TokenScope<'a> {
    pub(super) realm: &'a str,
    pub(super) service: Option<&'a str>,
    pub(super) scope: &'a str,
}

/// A cached token's key: its scope and the credential it was issued to.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(super) struct TokenKey {
    pub(super) realm: String,
    service: Option<String>,
    scope: String,
    credential: u64,
}

impl TokenKey {
    fn new(asked: TokenScope<'_>, credential: Option<&RegistryCredential>) -> Self {
        TokenKey {
            realm: asked.realm.to_string(),
            service: asked.service.map(str::to_string),
            scope: asked.scope.to_string(),
            credential: RegistryCredential::fingerprint(credential),
        }
    }
}

/// The token endpoint's answer, its body read up to its cap.
struct TokenAnswer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    truncated: bool,
}

impl RegistryClient {
    /// A bearer token for `asked`: cached, else from the token endpoint, then kept.
    pub(super) async fn token(
        &self,
        state: &Arc<HostState>,
        endpoint: &Endpoint<'_>,
        asked: TokenScope<'_>,
        credential: Option<&RegistryCredential>,
        deadline: &super::Deadline,
    ) -> Result<String, Failure> {
        let key = TokenKey::new(asked, credential);
        if let Some(token) = self.cached_token(&key) {
            return Ok(token);
        }
        let realm_host = host_of_url(asked.realm);
        // The registry's series cover the token endpoints it sends us to.
        lock(&state.realms).insert(realm_host.clone());
        let what = format!("token endpoint {realm_host}");
        let request = token_request(endpoint, asked, credential);
        let answer = self
            .token_answer(state, request, &realm_host, &what, deadline)
            .await?;
        if !answer.status.is_success() {
            return Err(self.token_refused(state, &answer, &what, credential));
        }
        let (token, ttl) = issued_token(&answer, &what)
            .map_err(|(status, reason)| Failure::Outcome(CheckOutcome::new(status, reason)))?;
        self.keep_token(key, token.clone(), ttl);
        Ok(token)
    }

    /// The token kept for `key` while it is still good; an expired one is dropped.
    fn cached_token(&self, key: &TokenKey) -> Option<String> {
        let mut tokens = lock(&self.tokens);
        match tokens.get(key) {
            Some((token, expires)) if *expires > Instant::now() => Some(token.clone()),
            Some(_) => {
                tokens.remove(key);
                None
            }
            None => None,
        }
    }

    /// Forgets the token kept for `asked` (the registry rejected it).
    pub(super) fn forget_token(
        &self,
        asked: TokenScope<'_>,
        credential: Option<&RegistryCredential>,
    ) {
        lock(&self.tokens).remove(&TokenKey::new(asked, credential));
    }

    /// Keeps `token` for its lifetime less the margin (at least 1 s); expired tokens
    /// go whenever a new one comes.
    fn keep_token(&self, key: TokenKey, token: String, ttl: Duration) {
        let ttl = ttl.saturating_sub(TOKEN_MARGIN).max(Duration::from_secs(1));
        let now = Instant::now();
        let mut tokens = lock(&self.tokens);
        tokens.retain(|_, (_, expires)| *expires > now);
        tokens.insert(key, (token, now + ttl));
    }

    /// Sends the token request under the registry's pause and request rate, and reads
    /// the answer (a token up to [`MAX_TOKEN_BYTES`], an error body up to
    /// [`MAX_ERROR_BYTES`]).
    async fn token_answer(
        &self,
        state: &HostState,
        request: reqwest::RequestBuilder,
        realm_host: &str,
        what: &str,
        deadline: &super::Deadline,
    ) -> Result<TokenAnswer, Failure> {
        let response = match self.send(state, request, realm_host, deadline).await {
            Ok(response) => response,
            // The token endpoint's silence is the registry's: unavailable, never a
            // reason to try plain HTTP for the registry.
            Err(Failure::NoAnswer(_, outcome)) => {
                return Err(Failure::Outcome(CheckOutcome::new(
                    outcome.status,
                    format!("{what}: {}", outcome.reason),
                )));
            }
            Err(other) => return Err(other),
        };
        let status = response.status();
        let headers = response.headers().clone();
        let cap = if status.is_success() {
            MAX_TOKEN_BYTES
        } else {
            MAX_ERROR_BYTES
        };
        let (body, truncated) = read_capped(response, cap, deadline).await.map_err(|e| {
            Failure::Outcome(CheckOutcome::new(
                CheckStatus::RegistryUnavailable,
                format!("{what}: reading the answer: {e}"),
            ))
        })?;
        Ok(TokenAnswer {
            status,
            headers,
            body,
            truncated,
        })
    }

    /// The failure a token endpoint's refusal means (a 429 pauses the registry).
    fn token_refused(
        &self,
        state: &Arc<HostState>,
        answer: &TokenAnswer,
        what: &str,
        credential: Option<&RegistryCredential>,
    ) -> Failure {
        let mut outcome = classify::classify_token_response(answer.status, &answer.body, what);
        outcome.reason = redact(outcome.reason, credential);
        if answer.status == StatusCode::TOO_MANY_REQUESTS {
            // The registry's limit, whichever host said it: pause the registry.
            self.note_429(state, &answer.headers, &mut outcome);
        }
        Failure::Outcome(outcome)
    }

    /// Tokens held now (expired ones are evicted as new ones arrive).
    pub fn cached_tokens(&self) -> usize {
        lock(&self.tokens).len()
    }
}

/// The request for a token: the OAuth2 refresh-token grant (`POST`) for an identity
/// token without a password, else a `GET` with basic auth (or anonymous).
fn token_request(
    endpoint: &Endpoint<'_>,
    asked: TokenScope<'_>,
    credential: Option<&RegistryCredential>,
) -> reqwest::RequestBuilder {
    let identity = credential.and_then(|c| {
        c.identity_token
            .as_deref()
            .filter(|_| c.username.is_empty() || c.password.is_empty())
    });
    if let Some(refresh_token) = identity {
        let mut form = vec![
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
            ("client_id", "pullwatch"),
            ("scope", asked.scope),
        ];
        if let Some(service) = asked.service {
            form.push(("service", service));
        }
        let body = form
            .iter()
            .map(|(k, v)| format!("{k}={}", form_encode(v)))
            .collect::<Vec<_>>()
            .join("&");
        return endpoint
            .http
            .post(asked.realm)
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(body);
    }
    let realm = asked.realm;
    let mut url = format!(
        "{realm}{}scope={}",
        if realm.contains('?') { '&' } else { '?' },
        form_encode(asked.scope)
    );
    if let Some(service) = asked.service {
        url.push_str(&format!("&service={}", form_encode(service)));
    }
    let mut request = endpoint.http.get(url);
    if let Some(c) = has_password(credential) {
        request = request.basic_auth(&c.username, Some(&c.password));
    }
    request
}

/// The token a successful answer issued, and how long it lives; else the status and
/// reason of its absence. The body is a token: never quoted.
fn issued_token(
    answer: &TokenAnswer,
    what: &str,
) -> Result<(String, Duration), (CheckStatus, String)> {
    #[derive(Deserialize)]
    struct TokenResponse {
        #[serde(default)]
        token: String,
        #[serde(default)]
        access_token: String,
        expires_in: Option<u64>,
    }
    let parsed: Option<TokenResponse> = if answer.truncated {
        None
    } else {
        serde_json::from_slice(&answer.body).ok()
    };
    let Some(parsed) = parsed else {
        return Err((
            CheckStatus::RegistryUnavailable,
            format!(
                "{what} answered HTTP {} without a usable token",
                answer.status
            ),
        ));
    };
    let token = if parsed.access_token.is_empty() {
        parsed.token
    } else {
        parsed.access_token
    };
    if token.is_empty() {
        return Err((
            CheckStatus::AuthenticationFailure,
            format!("{what} answered without a token"),
        ));
    }
    let ttl = parsed
        .expires_in
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_TOKEN_TTL);
    Ok((token, ttl))
}
