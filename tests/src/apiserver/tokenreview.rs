//! TokenReview (`POST /apis/authentication.k8s.io/v1/tokenreviews`), as the API server
//! answers it for tokens it issued: tests register a token with the identity and
//! audiences it stands for, and the server reviews it like the real one does.
//!
//! - An unknown token: `status.authenticated: false`, `error: "invalid bearer token"`.
//! - `spec.audiences` (default: the API server's own) must intersect the token's
//!   audiences; `status.audiences` is the intersection, else the token is refused.
//! - A projected service-account token carries `system:serviceaccount:<ns>:<name>`,
//!   the groups `system:serviceaccounts` and `system:serviceaccounts:<ns>`, and, bound
//!   to a pod (Kubernetes 1.30+), the extras `authentication.kubernetes.io/node-name`,
//!   `.../pod-name`, `.../pod-uid`, `.../credential-id`.
//! - [`TestApiServer::forbid`]`("tokenreviews")` answers 403, as RBAC without
//!   `create tokenreviews` does.
//!
//! The answer is `201 Created` with the review echoed (spec and status).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, Weak};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewStatus, UserInfo};
use serde_json::{Value, json};

use super::TestApiServer;
use super::http::{Body, Shared};

/// The path of the TokenReview collection.
pub(crate) const PATH: &str = "/apis/authentication.k8s.io/v1/tokenreviews";
/// The API server's own audience, used when a review names none.
pub const API_SERVER_AUDIENCE: &str = "https://kubernetes.default.svc.cluster.local";
/// The extra naming the node of a pod-bound token.
const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";

#[derive(Clone, Debug)]
struct Identity {
    user: UserInfo,
    audiences: Vec<String>,
}

/// Registered tokens per server. Keyed by the server's shared state through a `Weak`,
/// which keeps the allocation (so its address) from being reused by another server.
type Registry = Vec<(Weak<Shared>, HashMap<String, Identity>)>;
static TOKENS: Mutex<Registry> = Mutex::new(Vec::new());

fn with_tokens<T>(shared: &Arc<Shared>, f: impl FnOnce(&mut HashMap<String, Identity>) -> T) -> T {
    let mut registry = TOKENS.lock().unwrap_or_else(|e| e.into_inner());
    registry.retain(|(server, _)| server.strong_count() > 0);
    let index = match registry
        .iter()
        .position(|(server, _)| std::ptr::eq(server.as_ptr(), Arc::as_ptr(shared)))
    {
        Some(index) => index,
        None => {
            registry.push((Arc::downgrade(shared), HashMap::new()));
            registry.len() - 1
        }
    };
    f(&mut registry[index].1)
}

impl TestApiServer {
    /// Makes `token` review as `username` (with `groups` and `extra`) for `audiences`.
    pub fn add_token(
        &self,
        token: &str,
        username: &str,
        groups: &[&str],
        extra: &[(&str, &str)],
        audiences: &[&str],
    ) {
        let mut extras: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (key, value) in extra {
            extras
                .entry((*key).to_string())
                .or_default()
                .push((*value).to_string());
        }
        let identity = Identity {
            user: UserInfo {
                username: Some(username.to_string()),
                uid: Some(format!("uid-{username}")),
                groups: Some(groups.iter().map(|g| g.to_string()).collect()),
                extra: (!extras.is_empty()).then_some(extras),
            },
            audiences: audiences.iter().map(|a| a.to_string()).collect(),
        };
        with_tokens(&self.shared, |tokens| {
            tokens.insert(token.to_string(), identity);
        });
    }

    /// Makes `token` review as a projected token of the service account
    /// `namespace/name` for `audiences`, bound to pod `pod` on `node` (None: a token
    /// bound to no pod, as before Kubernetes 1.30 or from the TokenRequest API alone).
    pub fn add_service_account_token(
        &self,
        token: &str,
        namespace: &str,
        name: &str,
        pod_on_node: Option<(&str, &str)>,
        audiences: &[&str],
    ) {
        let mut extra = Vec::new();
        let pod_uid;
        if let Some((pod, node)) = pod_on_node {
            pod_uid = format!("uid-{pod}");
            extra.push((NODE_NAME_EXTRA, node));
            extra.push(("authentication.kubernetes.io/pod-name", pod));
            extra.push(("authentication.kubernetes.io/pod-uid", pod_uid.as_str()));
        }
        self.add_account_token(token, namespace, name, &extra, audiences);
    }

    /// Makes `token` review as a token of the service account `namespace/name`, with
    /// its username and groups as the API server gives them, and `extra`.
    fn add_account_token(
        &self,
        token: &str,
        namespace: &str,
        name: &str,
        extra: &[(&str, &str)],
        audiences: &[&str],
    ) {
        let username = format!("system:serviceaccount:{namespace}:{name}");
        let namespace_group = format!("system:serviceaccounts:{namespace}");
        let groups = [
            "system:serviceaccounts",
            namespace_group.as_str(),
            "system:authenticated",
        ];
        self.add_token(token, &username, &groups, extra, audiences);
    }

    /// Makes `token` review as a projected token of the service account
    /// `namespace/name` bound to pod `pod` on `node` (extras node-name, pod-name,
    /// pod-uid `uid-<pod>`), and stores that pod: running on `node` under that service
    /// account, with that UID. Its image is on a closed loopback port, so an
    /// aggregator inventorying it never contacts anything else. Returns the stored pod.
    pub fn add_agent_pod_token(
        &self,
        token: &str,
        namespace: &str,
        service_account: &str,
        pod: &str,
        node: &str,
        audiences: &[&str],
    ) -> anyhow::Result<k8s_openapi::api::core::v1::Pod> {
        use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, PodStatus};
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
        self.add_service_account_token(
            token,
            namespace,
            service_account,
            Some((pod, node)),
            audiences,
        );
        self.apply(&Pod {
            metadata: ObjectMeta {
                name: Some(pod.to_string()),
                namespace: Some(namespace.to_string()),
                uid: Some(format!("uid-{pod}")),
                ..Default::default()
            },
            spec: Some(PodSpec {
                service_account_name: Some(service_account.to_string()),
                node_name: Some(node.to_string()),
                containers: vec![Container {
                    name: "agent".into(),
                    image: Some("127.0.0.1:1/pullwatch/agent:test".into()),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some("Running".into()),
                ..Default::default()
            }),
        })
    }

    /// Makes `token` review as a token of the service account `namespace/name` bound
    /// to the Node object `node` (TokenRequest with a Node bound object, Kubernetes
    /// 1.31+): the node-name extra, and no pod extras.
    pub fn add_node_bound_token(
        &self,
        token: &str,
        namespace: &str,
        name: &str,
        node: &str,
        audiences: &[&str],
    ) {
        let extra = [(NODE_NAME_EXTRA, node)];
        self.add_account_token(token, namespace, name, &extra, audiences);
    }

    /// Revokes a token: it reviews as unknown from now on. Returns whether it was known.
    pub fn remove_token(&self, token: &str) -> bool {
        with_tokens(&self.shared, |tokens| tokens.remove(token).is_some())
    }

    /// How many TokenReviews were requested so far.
    pub fn token_reviews(&self) -> usize {
        self.requests()
            .iter()
            .filter(|(method, path)| method == "POST" && path.split('?').next() == Some(PATH))
            .count()
    }
}

fn json_response(code: StatusCode, value: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(value.to_string())).boxed())
        .expect("valid response")
}

fn status_response(code: StatusCode, reason: &str, message: &str) -> Response<Body> {
    json_response(
        code,
        &json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": reason,
            "details": {"group": "authentication.k8s.io", "kind": "tokenreviews"},
            "code": code.as_u16(),
        }),
    )
}

/// The review of `review.spec` against the registered tokens.
fn review_status(shared: &Arc<Shared>, review: &TokenReview) -> TokenReviewStatus {
    let token = review.spec.token.clone().unwrap_or_default();
    let requested: Vec<String> = match review.spec.audiences.as_deref() {
        Some(audiences) if !audiences.is_empty() => audiences.to_vec(),
        _ => vec![API_SERVER_AUDIENCE.to_string()],
    };
    let Some(identity) = with_tokens(shared, |tokens| tokens.get(&token).cloned()) else {
        return TokenReviewStatus {
            authenticated: Some(false),
            error: Some("invalid bearer token".to_string()),
            ..Default::default()
        };
    };
    let granted: Vec<String> = requested
        .iter()
        .filter(|a| identity.audiences.contains(a))
        .cloned()
        .collect();
    if granted.is_empty() {
        return TokenReviewStatus {
            authenticated: Some(false),
            error: Some(format!(
                "[invalid bearer token, token audiences {:?} is invalid for the target audiences {:?}]",
                identity.audiences, requested
            )),
            ..Default::default()
        };
    }
    TokenReviewStatus {
        authenticated: Some(true),
        audiences: Some(granted),
        user: Some(identity.user),
        error: None,
    }
}

/// Answers a request to [`PATH`].
pub(crate) async fn handle(shared: &Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    if shared.state().forbidden.contains("tokenreviews") {
        return status_response(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "tokenreviews.authentication.k8s.io is forbidden: User \"system:anonymous\" cannot create resource \"tokenreviews\" in API group \"authentication.k8s.io\" at the cluster scope",
        );
    }
    if req.method() != Method::POST {
        return status_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            &format!(
                "{} is not supported on tokenreviews: only create",
                req.method()
            ),
        );
    }
    let body = match req.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(error) => {
            return status_response(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                &format!("reading the request body: {error}"),
            );
        }
    };
    let mut review: TokenReview = match serde_json::from_slice(&body) {
        Ok(review) => review,
        Err(error) => {
            return status_response(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                &format!("the body is not a TokenReview: {error}"),
            );
        }
    };
    review.status = Some(review_status(shared, &review));
    match serde_json::to_value(&review) {
        Ok(value) => json_response(StatusCode::CREATED, &value),
        Err(error) => status_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            &error.to_string(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::authentication::v1::TokenReviewSpec;
    use kube::api::{Api, PostParams};

    async fn review(api: &Api<TokenReview>, token: &str, audiences: &[&str]) -> TokenReviewStatus {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                audiences: Some(audiences.iter().map(|a| a.to_string()).collect()),
            },
            ..Default::default()
        };
        api.create(&PostParams::default(), &review)
            .await
            .unwrap()
            .status
            .unwrap()
    }

    #[tokio::test]
    async fn reviews_tokens_as_the_api_server_does() {
        let server = TestApiServer::start().await.unwrap();
        let api: Api<TokenReview> = Api::all(server.kube_client());
        server.add_service_account_token(
            "tok-a",
            "pullwatch",
            "agent",
            Some(("agent-x1", "node-a")),
            &["pullwatch"],
        );

        let ok = review(&api, "tok-a", &["pullwatch", "other"]).await;
        assert_eq!(ok.authenticated, Some(true));
        assert_eq!(
            ok.audiences.as_deref(),
            Some(&["pullwatch".to_string()][..])
        );
        let user = ok.user.unwrap();
        assert_eq!(
            user.username.as_deref(),
            Some("system:serviceaccount:pullwatch:agent")
        );
        assert_eq!(user.extra.unwrap()[NODE_NAME_EXTRA], ["node-a"]);

        // Wrong audience, the API server's default audience, an unknown token.
        for (token, audiences) in [
            ("tok-a", &["api"][..]),
            ("tok-a", &[][..]),
            ("nope", &["pullwatch"][..]),
        ] {
            let refused = review(&api, token, audiences).await;
            assert_eq!(refused.authenticated, Some(false), "{token} {audiences:?}");
            assert!(refused.user.is_none());
            assert!(refused.error.unwrap().contains("invalid bearer token"));
        }
        assert!(server.remove_token("tok-a"));
        assert_eq!(
            review(&api, "tok-a", &["pullwatch"]).await.authenticated,
            Some(false)
        );
        assert_eq!(server.token_reviews(), 5);

        // RBAC without create tokenreviews.
        server.forbid("tokenreviews");
        let error = api
            .create(&PostParams::default(), &TokenReview::default())
            .await
            .unwrap_err();
        assert!(matches!(error, kube::Error::Api(status) if status.code == 403));

        // Another server does not know this one's tokens.
        let other = TestApiServer::start().await.unwrap();
        server.add_token("shared", "alice", &[], &[], &["x"]);
        let other_api: Api<TokenReview> = Api::all(other.kube_client());
        assert_eq!(
            review(&other_api, "shared", &["x"]).await.authenticated,
            Some(false)
        );
    }
}
