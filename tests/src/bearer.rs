//! A registry that wants bearer tokens from a separate token service: two stub servers,
//! for the token endpoint answers no real registry gives on demand (401/403/429/503).

use std::sync::{Arc, Mutex};

use anyhow::Result;

use crate::stub::{RecordedRequest, StubResponse, StubServer};

/// The token the service issues when it answers 200 by default.
pub const GOOD_TOKEN: &str = "good-token";
/// The digest the stub registry answers for every manifest it serves.
pub const STUB_DIGEST: &str =
    "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

/// A stub registry whose manifests need `Bearer good-token`, and its token service.
pub struct BearerRegistry {
    pub registry: StubServer,
    pub tokens: StubServer,
    answer: Arc<Mutex<StubResponse>>,
}

impl std::fmt::Debug for BearerRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BearerRegistry")
            .field("registry", &self.registry)
            .field("tokens", &self.tokens)
            .finish()
    }
}

impl BearerRegistry {
    /// The token service answers `token_answer` to every request (change it with
    /// [`BearerRegistry::set_token_answer`]); [`BearerRegistry::token_ok`] is a good one.
    pub async fn start(token_answer: StubResponse) -> Result<BearerRegistry> {
        let answer = Arc::new(Mutex::new(token_answer));
        let shared = answer.clone();
        let tokens = StubServer::start_with(move |_: &RecordedRequest| match shared.lock() {
            Ok(a) => a.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        })
        .await?;
        let realm = format!("http://{}/token", tokens.host());
        let registry = StubServer::start_with(move |request: &RecordedRequest| {
            let authorized =
                request.header("authorization") == Some(format!("Bearer {GOOD_TOKEN}").as_str());
            if authorized && request.path.contains("/manifests/") {
                if request.path.contains("/manifests/missing") {
                    return StubResponse::new(404);
                }
                return StubResponse::new(200)
                    .with_header("Docker-Content-Digest", STUB_DIGEST)
                    .with_header("Content-Type", "application/vnd.oci.image.manifest.v1+json");
            }
            StubResponse::new(401).with_header(
                "WWW-Authenticate",
                &format!(r#"Bearer realm="{realm}",service="stub-registry""#),
            )
        })
        .await?;
        Ok(BearerRegistry {
            registry,
            tokens,
            answer,
        })
    }

    /// A token service answer with a good token valid for `expires_in` seconds.
    pub fn token_ok(expires_in: u64) -> StubResponse {
        StubResponse::new(200).with_body(&format!(
            r#"{{"token":"{GOOD_TOKEN}","expires_in":{expires_in}}}"#
        ))
    }

    /// Changes what the token service answers from now on.
    pub fn set_token_answer(&self, answer: StubResponse) {
        match self.answer.lock() {
            Ok(mut a) => *a = answer,
            Err(poisoned) => *poisoned.into_inner() = answer,
        }
    }

    /// `127.0.0.1:PORT` of the registry.
    pub fn host(&self) -> String {
        self.registry.host()
    }

    /// Manifest requests the registry received.
    pub fn manifest_requests(&self) -> usize {
        self.registry
            .requests()
            .iter()
            .filter(|(_, path)| path.contains("/manifests/"))
            .count()
    }

    /// Requests the token service received.
    pub fn token_requests(&self) -> usize {
        self.tokens.requests().len()
    }
}
