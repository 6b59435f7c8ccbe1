//! How agents prove who they are: a shared token (outside Kubernetes), or the pod's
//! bound service-account token, verified with a TokenReview and tied to the agent's own
//! service account, its own pod and the node the agent claims.
//!
//! TokenReview (`authentication.k8s.io/v1`, `spec.audiences = [--agent-token-audience]`):
//! the token must authenticate, for that audience, as the agent's service account
//! (`--agent-service-account NAMESPACE:NAME`; any other service account is refused even
//! with the right audience, since any pod can project a token for any audience), and
//! carry the node it was issued on in the extra `authentication.kubernetes.io/node-name`
//! (bound tokens of pods carry it since Kubernetes 1.30). The API server adds the extras
//! `authentication.kubernetes.io/pod-name` and `.../pod-uid` to every pod-bound token
//! (long before 1.30), so a token that names a node but no pod is not a pod's (it is
//! bound to a Node object, or forged by whoever may create tokens for the account) and
//! is refused. The pod it names must exist with that UID, run under the agent's service
//! account and be scheduled on that node (one GET of the pod, in the service account's
//! namespace). An agent may only register under that node name: a stolen token of one
//! node cannot ask for another node's pull secrets. Positive reviews are cached for a
//! minute under the token's SHA-256 (the token itself is not kept); negative ones are
//! not cached, and an API server that cannot answer refuses the session as unavailable
//! (the agent retries).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use pullwatch::locks::lock;
use sha2::{Digest, Sha256};
use tracing::warn;

/// The bound on each API call an agent's registration waits for (TokenReview, its pod):
/// the client's own read timeout is minutes long, made for watches.
const API_TIMEOUT: Duration = Duration::from_secs(10);

/// The extra of a bound token naming the node its pod runs on.
pub(crate) const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";
/// The extra of a pod-bound token naming its pod.
pub(crate) const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";
/// The extra of a pod-bound token carrying its pod's UID.
pub(crate) const POD_UID_EXTRA: &str = "authentication.kubernetes.io/pod-uid";
const SERVICE_ACCOUNT_PREFIX: &str = "system:serviceaccount:";
/// How long a positive TokenReview is trusted.
pub(crate) const REVIEW_CACHE_TTL: Duration = Duration::from_secs(60);
/// Cached reviews kept at most (one per agent token in practice).
const REVIEW_CACHE_MAX: usize = 10_000;

/// Why an agent was refused. Messages name users and nodes, never tokens.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum AuthError {
    #[error("no bearer token was presented")]
    Missing,
    #[error("invalid agent token")]
    Invalid,
    #[error("the token did not authenticate: {0}")]
    Rejected(String),
    #[error("the token is not valid for the audience {0:?}")]
    Audience(String),
    #[error("{0:?} is not a service account")]
    NotServiceAccount(String),
    #[error(
        "the token names no node (extra {NODE_NAME_EXTRA}): use a pod-bound projected service account token (Kubernetes 1.30 or later)"
    )]
    NoNode,
    #[error("the token was issued on node {token:?}, the agent claims node {claimed:?}")]
    WrongNode { token: String, claimed: String },
    #[error("service account {got:?} is not the agents' service account {expected:?}")]
    WrongServiceAccount { got: String, expected: String },
    #[error(
        "the token names node {0:?} but no pod (extras {POD_NAME_EXTRA}, {POD_UID_EXTRA}): only a pod-bound projected token of an agent pod is accepted"
    )]
    NoPod(String),
    #[error("the token's pod does not match: {0}")]
    PodMismatch(String),
    #[error("agent tokens are only accepted over TLS (configure --agent-tls-cert/--agent-tls-key)")]
    Plaintext,
    #[error("node {node:?} already has an agent session as {current}; refused a session as {new}")]
    TakeoverRefused {
        node: String,
        current: String,
        new: String,
    },
    #[error("cannot review the token: {0}")]
    Unavailable(String),
}

impl AuthError {
    /// The gRPC status the agent sees.
    pub(crate) fn to_status(&self) -> tonic::Status {
        match self {
            AuthError::Unavailable(_) => {
                tonic::Status::unavailable("agent authentication is not available")
            }
            AuthError::WrongNode { .. }
            | AuthError::WrongServiceAccount { .. }
            | AuthError::PodMismatch(_)
            | AuthError::TakeoverRefused { .. } => {
                tonic::Status::permission_denied(self.to_string())
            }
            AuthError::Plaintext => tonic::Status::failed_precondition(self.to_string()),
            _ => tonic::Status::unauthenticated(self.to_string()),
        }
    }

    /// A short, bounded label for the refusal metric.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing_token",
            AuthError::Invalid => "invalid_token",
            AuthError::Rejected(_) => "rejected",
            AuthError::Audience(_) => "audience",
            AuthError::NotServiceAccount(_) => "not_service_account",
            AuthError::NoNode => "no_node",
            AuthError::WrongNode { .. } => "wrong_node",
            AuthError::WrongServiceAccount { .. } => "wrong_service_account",
            AuthError::NoPod(_) => "no_pod",
            AuthError::PodMismatch(_) => "pod_mismatch",
            AuthError::Plaintext => "plaintext",
            AuthError::TakeoverRefused { .. } => "takeover_refused",
            AuthError::Unavailable(_) => "unavailable",
        }
    }
}

/// `--agent-service-account NAMESPACE:NAME`: the only service account agents may be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceAccountName {
    pub(crate) namespace: String,
    pub(crate) name: String,
}

impl ServiceAccountName {
    /// `NAMESPACE:NAME` (also accepts `NAMESPACE/NAME` and the full
    /// `system:serviceaccount:NAMESPACE:NAME`).
    pub fn parse(text: &str) -> Option<ServiceAccountName> {
        let text = text.trim();
        let text = text.strip_prefix(SERVICE_ACCOUNT_PREFIX).unwrap_or(text);
        let (namespace, name) = text.split_once(':').or_else(|| text.split_once('/'))?;
        let valid = |s: &str| {
            !s.is_empty()
                && s.len() <= 253
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        };
        (valid(namespace) && valid(name)).then(|| ServiceAccountName {
            namespace: namespace.to_string(),
            name: name.to_string(),
        })
    }
}

impl std::fmt::Display for ServiceAccountName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.namespace, self.name)
    }
}

/// A service account, the node its token was issued on, and the pod it was issued to
/// (name and UID) when the API server says so.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ServiceAccountIdentity {
    pub(crate) namespace: String,
    pub(crate) name: String,
    pub(crate) node: String,
    pub(crate) pod: Option<(String, String)>,
}

/// Who an agent is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum AgentIdentity {
    /// Holds the shared token: may register as any node.
    SharedToken,
    /// A reviewed service-account token: may register only as its node.
    ServiceAccount(ServiceAccountIdentity),
}

impl AgentIdentity {
    /// Who, for logs and for deciding whether a second session of a node may take over
    /// the first: the same service account on the same node (a restarted agent pod is
    /// a new pod of the same identity), or the shared token.
    pub(crate) fn principal(&self) -> String {
        match self {
            AgentIdentity::SharedToken => "shared token".to_string(),
            AgentIdentity::ServiceAccount(sa) => {
                format!(
                    "service account {}:{} on node {}",
                    sa.namespace, sa.name, sa.node
                )
            }
        }
    }

    /// Whether this identity may register as `node`.
    pub(crate) fn check_node(&self, node: &str) -> Result<(), AuthError> {
        match self {
            AgentIdentity::SharedToken => Ok(()),
            AgentIdentity::ServiceAccount(sa) if sa.node == node => Ok(()),
            AgentIdentity::ServiceAccount(sa) => Err(AuthError::WrongNode {
                token: sa.node.clone(),
                claimed: node.to_string(),
            }),
        }
    }
}

/// The identity a TokenReview status grants for `audience`.
pub(crate) fn identity_from_review(
    status: &TokenReviewStatus,
    audience: &str,
) -> Result<ServiceAccountIdentity, AuthError> {
    if status.authenticated != Some(true) {
        return Err(AuthError::Rejected(
            status
                .error
                .clone()
                .filter(|e| !e.is_empty())
                .unwrap_or_else(|| "not authenticated".to_string()),
        ));
    }
    // An audience-aware server returns the intersection; an empty one means the
    // token is only good for the API server itself.
    if !status.audiences.iter().flatten().any(|a| a == audience) {
        return Err(AuthError::Audience(audience.to_string()));
    }
    let user = status.user.as_ref();
    let username = user.and_then(|u| u.username.clone()).unwrap_or_default();
    let Some((namespace, name)) = username
        .strip_prefix(SERVICE_ACCOUNT_PREFIX)
        .and_then(|rest| rest.split_once(':'))
        .filter(|(ns, name)| !ns.is_empty() && !name.is_empty() && !name.contains(':'))
    else {
        return Err(AuthError::NotServiceAccount(username));
    };
    let nodes: Vec<&String> = user
        .and_then(|u| u.extra.as_ref())
        .and_then(|extra| extra.get(NODE_NAME_EXTRA))
        .into_iter()
        .flatten()
        .filter(|n| !n.is_empty())
        .collect();
    let [node] = nodes.as_slice() else {
        return Err(AuthError::NoNode);
    };
    let single = |key: &str| -> Option<String> {
        let values: Vec<&String> = user
            .and_then(|u| u.extra.as_ref())
            .and_then(|extra| extra.get(key))
            .into_iter()
            .flatten()
            .filter(|v| !v.is_empty())
            .collect();
        match values.as_slice() {
            [one] => Some((*one).clone()),
            _ => None,
        }
    };
    let pod = match (single(POD_NAME_EXTRA), single(POD_UID_EXTRA)) {
        (Some(pod), Some(uid)) => Some((pod, uid)),
        _ => None,
    };
    Ok(ServiceAccountIdentity {
        namespace: namespace.to_string(),
        name: name.to_string(),
        node: node.to_string(),
        pod,
    })
}

/// Whether `pod` is the pod a token of `identity` names: same UID, the same service
/// account, scheduled on the token's node, not finished.
pub(crate) fn check_pod(identity: &ServiceAccountIdentity, pod: &Pod) -> Result<(), AuthError> {
    let Some((pod_name, pod_uid)) = &identity.pod else {
        return Err(AuthError::NoPod(identity.node.clone()));
    };
    let who = format!("pod {}/{}", identity.namespace, pod_name);
    if pod.metadata.uid.as_deref() != Some(pod_uid.as_str()) {
        return Err(AuthError::PodMismatch(format!(
            "{who} has another UID (the token's pod is gone)"
        )));
    }
    let spec = pod.spec.as_ref();
    let account = spec
        .and_then(|s| s.service_account_name.as_deref())
        .unwrap_or("default");
    if account != identity.name {
        return Err(AuthError::PodMismatch(format!(
            "{who} runs as service account {account:?}, not {:?}",
            identity.name
        )));
    }
    let node = spec.and_then(|s| s.node_name.as_deref()).unwrap_or("");
    if node != identity.node {
        return Err(AuthError::PodMismatch(format!(
            "{who} is scheduled on node {node:?}, the token names {:?}",
            identity.node
        )));
    }
    if let Some(phase) = pod.status.as_ref().and_then(|s| s.phase.as_deref())
        && (phase == "Succeeded" || phase == "Failed")
    {
        return Err(AuthError::PodMismatch(format!(
            "{who} has finished ({phase})"
        )));
    }
    Ok(())
}

/// Verifies agent tokens with TokenReviews, caching positive answers briefly.
pub struct TokenReviewer {
    client: kube::Client,
    audience: String,
    service_account: ServiceAccountName,
    ttl: Duration,
    /// The bound on each API call (default [`API_TIMEOUT`]).
    api_timeout: Duration,
    cache: Mutex<HashMap<[u8; 32], (ServiceAccountIdentity, Instant)>>,
}

impl std::fmt::Debug for TokenReviewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenReviewer")
            .field("audience", &self.audience)
            .field("service_account", &self.service_account)
            .field("ttl", &self.ttl)
            .finish()
    }
}

impl TokenReviewer {
    /// Accepts tokens for `audience` of `service_account` only.
    pub fn new(
        client: kube::Client,
        audience: impl Into<String>,
        service_account: ServiceAccountName,
    ) -> TokenReviewer {
        TokenReviewer {
            client,
            audience: audience.into(),
            service_account,
            ttl: REVIEW_CACHE_TTL,
            api_timeout: API_TIMEOUT,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Changes the bound on each API call.
    #[cfg(test)]
    fn with_api_timeout(mut self, timeout: Duration) -> TokenReviewer {
        self.api_timeout = timeout;
        self
    }

    fn cache(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], (ServiceAccountIdentity, Instant)>> {
        lock(&self.cache)
    }

    /// `call` (an API request), abandoned as unavailable after the API timeout: the
    /// client's own read timeout is made for watches. Its own error is the caller's.
    async fn bounded<T>(
        &self,
        what: &str,
        call: impl std::future::Future<Output = T>,
    ) -> Result<T, AuthError> {
        tokio::time::timeout(self.api_timeout, call)
            .await
            .map_err(|_| {
                warn!(after = ?self.api_timeout, "{what} timed out");
                AuthError::Unavailable(format!("{what} timed out after {:?}", self.api_timeout))
            })
    }

    /// The service account and node `token` stands for.
    pub(crate) async fn review(&self, token: &str) -> Result<ServiceAccountIdentity, AuthError> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some((identity, at)) = self.cache().get(&digest)
            && at.elapsed() < self.ttl
        {
            return Ok(identity.clone());
        }
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                audiences: Some(vec![self.audience.clone()]),
            },
            ..Default::default()
        };
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let answered = self
            .bounded("TokenReview", api.create(&PostParams::default(), &review))
            .await?
            .map_err(|error| {
                warn!(%error, "TokenReview failed");
                AuthError::Unavailable(error.to_string())
            })?;
        let status = answered.status.unwrap_or_default();
        let identity = identity_from_review(&status, &self.audience)?;
        if identity.namespace != self.service_account.namespace
            || identity.name != self.service_account.name
        {
            return Err(AuthError::WrongServiceAccount {
                got: format!("{}:{}", identity.namespace, identity.name),
                expected: self.service_account.to_string(),
            });
        }
        let Some((pod_name, _)) = &identity.pod else {
            return Err(AuthError::NoPod(identity.node.clone()));
        };
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &identity.namespace);
        let pod = self
            .bounded(
                &format!("reading pod {}/{pod_name}", identity.namespace),
                pods.get_opt(pod_name),
            )
            .await?
            .map_err(|error| {
                warn!(%error, pod = %pod_name, "cannot read the agent's pod");
                AuthError::Unavailable(format!(
                    "cannot read pod {}/{pod_name} (needs get on pods)",
                    identity.namespace
                ))
            })?;
        let Some(pod) = pod else {
            return Err(AuthError::PodMismatch(format!(
                "pod {}/{pod_name} does not exist",
                identity.namespace
            )));
        };
        check_pod(&identity, &pod)?;
        let mut cache = self.cache();
        if cache.len() >= REVIEW_CACHE_MAX {
            let ttl = self.ttl;
            cache.retain(|_, (_, at)| at.elapsed() < ttl);
            if cache.len() >= REVIEW_CACHE_MAX {
                cache.clear();
            }
        }
        cache.insert(digest, (identity.clone(), Instant::now()));
        Ok(identity)
    }
}

/// The ways agents may authenticate; at least one is set.
#[derive(Clone, Debug, Default)]
pub(crate) struct Authenticator {
    /// File holding the shared token; re-read for every session (rotation in place).
    pub(crate) shared_token_file: Option<PathBuf>,
    pub(crate) reviewer: Option<Arc<TokenReviewer>>,
}

/// Whether a connection may present a token: only over TLS, unless the test-only
/// `--agent-insecure-plaintext-tokens-for-testing-only` allows it.
pub(crate) fn check_transport(
    tls: bool,
    insecure_plaintext_allowed: bool,
) -> Result<(), AuthError> {
    if tls || insecure_plaintext_allowed {
        Ok(())
    } else {
        Err(AuthError::Plaintext)
    }
}

/// Compares without an early exit, so timing does not tell how much of a token matched.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Authenticator {
    pub(crate) fn is_configured(&self) -> bool {
        self.shared_token_file.is_some() || self.reviewer.is_some()
    }

    /// Who presents `token`: the shared token if it matches, else a reviewed
    /// service-account token.
    pub(crate) async fn authenticate(
        &self,
        token: Option<&str>,
    ) -> Result<AgentIdentity, AuthError> {
        let token = token.map(str::trim).filter(|t| !t.is_empty());
        let Some(token) = token else {
            return Err(AuthError::Missing);
        };
        if let Some(path) = &self.shared_token_file {
            match std::fs::read(path) {
                Ok(expected) => {
                    let expected = String::from_utf8_lossy(&expected).trim().to_string();
                    if !expected.is_empty()
                        && constant_time_eq(token.as_bytes(), expected.as_bytes())
                    {
                        return Ok(AgentIdentity::SharedToken);
                    }
                }
                Err(error) => {
                    warn!(path = %path.display(), %error, "cannot read the agent token file");
                    if self.reviewer.is_none() {
                        return Err(AuthError::Unavailable(format!(
                            "cannot read {}",
                            path.display()
                        )));
                    }
                }
            }
        }
        match &self.reviewer {
            Some(reviewer) => reviewer
                .review(token)
                .await
                .map(AgentIdentity::ServiceAccount),
            None => Err(AuthError::Invalid),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_token_review_that_never_answers_is_bounded() {
        let silent = pullwatch_testbench::SilentServer::start().await.unwrap();
        let config = kube::Config::new(format!("http://{}", silent.host()).parse().unwrap());
        let reviewer = TokenReviewer::new(
            kube::Client::try_from(config).unwrap(),
            "pullwatch",
            ServiceAccountName::parse("pullwatch:agent").unwrap(),
        )
        .with_api_timeout(Duration::from_millis(300));
        let started = Instant::now();
        let answer = tokio::time::timeout(Duration::from_secs(5), reviewer.review("token"))
            .await
            .expect("the review is bounded by its own timeout");
        match answer {
            Err(AuthError::Unavailable(why)) => assert!(why.contains("timed out"), "{why}"),
            other => panic!("expected Unavailable, got {other:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(2));
    }
    use k8s_openapi::api::authentication::v1::UserInfo;

    fn status(
        authenticated: bool,
        username: &str,
        audiences: &[&str],
        nodes: &[&str],
    ) -> TokenReviewStatus {
        TokenReviewStatus {
            authenticated: Some(authenticated),
            audiences: Some(audiences.iter().map(|a| a.to_string()).collect()),
            error: (!authenticated).then(|| "invalid bearer token".to_string()),
            user: Some(UserInfo {
                username: Some(username.into()),
                extra: Some(
                    [(
                        NODE_NAME_EXTRA.to_string(),
                        nodes.iter().map(|n| n.to_string()).collect(),
                    )]
                    .into(),
                ),
                ..Default::default()
            }),
        }
    }

    const SA: &str = "system:serviceaccount:pullwatch:pullwatch-agent";

    #[test]
    fn reviews_must_name_a_service_account_its_node_and_our_audience() {
        let ok = identity_from_review(&status(true, SA, &["pullwatch"], &["node-a"]), "pullwatch")
            .unwrap();
        assert_eq!(
            ok,
            ServiceAccountIdentity {
                namespace: "pullwatch".into(),
                name: "pullwatch-agent".into(),
                node: "node-a".into(),
                pod: None,
            }
        );
        assert_eq!(
            identity_from_review(&status(false, SA, &[], &[]), "pullwatch"),
            Err(AuthError::Rejected("invalid bearer token".into()))
        );
        assert_eq!(
            identity_from_review(&status(true, SA, &["other"], &["node-a"]), "pullwatch"),
            Err(AuthError::Audience("pullwatch".into()))
        );
        assert_eq!(
            identity_from_review(&status(true, SA, &[], &["node-a"]), "pullwatch"),
            Err(AuthError::Audience("pullwatch".into())),
            "an audience-unaware answer is not good enough"
        );
        assert!(matches!(
            identity_from_review(
                &status(true, "alice", &["pullwatch"], &["node-a"]),
                "pullwatch"
            ),
            Err(AuthError::NotServiceAccount(_))
        ));
        assert!(matches!(
            identity_from_review(
                &status(
                    true,
                    "system:serviceaccount:ns",
                    &["pullwatch"],
                    &["node-a"]
                ),
                "pullwatch"
            ),
            Err(AuthError::NotServiceAccount(_))
        ));
        assert_eq!(
            identity_from_review(&status(true, SA, &["pullwatch"], &[]), "pullwatch"),
            Err(AuthError::NoNode)
        );
        assert_eq!(
            identity_from_review(&status(true, SA, &["pullwatch"], &["a", "b"]), "pullwatch"),
            Err(AuthError::NoNode)
        );
        let identity = AgentIdentity::ServiceAccount(ok);
        assert!(identity.check_node("node-a").is_ok());
        assert_eq!(
            identity.check_node("node-b"),
            Err(AuthError::WrongNode {
                token: "node-a".into(),
                claimed: "node-b".into()
            })
        );
        assert!(AgentIdentity::SharedToken.check_node("anything").is_ok());
    }

    #[test]
    fn pod_extras_and_the_pod_they_name() {
        use k8s_openapi::api::core::v1::{PodSpec, PodStatus};
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
        let mut review = status(true, SA, &["pullwatch"], &["node-a"]);
        let extra = review.user.as_mut().unwrap().extra.as_mut().unwrap();
        extra.insert(POD_NAME_EXTRA.into(), vec!["agent-x".into()]);
        extra.insert(POD_UID_EXTRA.into(), vec!["uid-1".into()]);
        let identity = identity_from_review(&review, "pullwatch").unwrap();
        assert_eq!(identity.pod, Some(("agent-x".into(), "uid-1".into())));
        let pod = |uid: &str, sa: &str, node: &str, phase: &str| Pod {
            metadata: ObjectMeta {
                name: Some("agent-x".into()),
                namespace: Some("pullwatch".into()),
                uid: Some(uid.into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                service_account_name: Some(sa.into()),
                node_name: Some(node.into()),
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some(phase.into()),
                ..Default::default()
            }),
        };
        assert_eq!(
            check_pod(
                &identity,
                &pod("uid-1", "pullwatch-agent", "node-a", "Running")
            ),
            Ok(())
        );
        for (bad, what) in [
            (pod("uid-2", "pullwatch-agent", "node-a", "Running"), "UID"),
            (
                pod("uid-1", "default", "node-a", "Running"),
                "service account",
            ),
            (pod("uid-1", "pullwatch-agent", "node-b", "Running"), "node"),
            (
                pod("uid-1", "pullwatch-agent", "node-a", "Failed"),
                "finished",
            ),
        ] {
            match check_pod(&identity, &bad) {
                Err(AuthError::PodMismatch(message)) => {
                    assert!(message.contains(what), "{message}")
                }
                other => panic!("{what}: {other:?}"),
            }
        }
        let no_pod =
            identity_from_review(&status(true, SA, &["pullwatch"], &["node-a"]), "pullwatch")
                .unwrap();
        assert_eq!(
            check_pod(
                &no_pod,
                &pod("uid-1", "pullwatch-agent", "node-a", "Running")
            ),
            Err(AuthError::NoPod("node-a".into()))
        );
    }

    #[test]
    fn service_account_names_and_transport() {
        assert_eq!(
            ServiceAccountName::parse("pullwatch:pullwatch-agent"),
            Some(ServiceAccountName {
                namespace: "pullwatch".into(),
                name: "pullwatch-agent".into()
            })
        );
        assert_eq!(
            ServiceAccountName::parse("system:serviceaccount:a:b"),
            ServiceAccountName::parse("a/b")
        );
        for bad in ["", "a", "a:", ":b", "A:b", "a:b:c"] {
            assert_eq!(ServiceAccountName::parse(bad), None, "{bad}");
        }
        assert_eq!(check_transport(false, false), Err(AuthError::Plaintext));
        assert!(check_transport(true, false).is_ok());
        assert!(check_transport(false, true).is_ok());
        assert_eq!(AuthError::Plaintext.reason(), "plaintext");
    }

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }

    #[tokio::test]
    async fn shared_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "s3cret\n").unwrap();
        let auth = Authenticator {
            shared_token_file: Some(file.clone()),
            reviewer: None,
        };
        assert_eq!(
            auth.authenticate(Some("s3cret")).await,
            Ok(AgentIdentity::SharedToken)
        );
        assert_eq!(
            auth.authenticate(Some("nope")).await,
            Err(AuthError::Invalid)
        );
        assert_eq!(auth.authenticate(None).await, Err(AuthError::Missing));
        std::fs::remove_file(&file).unwrap();
        assert!(matches!(
            auth.authenticate(Some("s3cret")).await,
            Err(AuthError::Unavailable(_))
        ));
    }
}
