//! Agent authentication against the test API server's TokenReview: a bound service
//! account token registers only as its own node; wrong audience, unbound tokens,
//! users that are not service accounts and unknown tokens are refused; positive
//! reviews are cached; an API server that refuses TokenReviews refuses agents; the
//! shared token still works beside TokenReview. Agents are plain gRPC clients.

use std::sync::Arc;
use std::time::Duration;

use pullwatch::proto::agent_service_client::AgentServiceClient;
use pullwatch::proto::{AgentMessage, Register, agent_message, aggregator_message};
use pullwatch_aggregator::agents::auth::TokenReviewer;
use pullwatch_aggregator::agents::server::{self, AgentServer, AgentServerConfig};
use pullwatch_aggregator::agents::{AgentHub, HubConfig};
use pullwatch_testbench::TestApiServer;
use tokio::sync::mpsc;
use tonic::Code;

const AUDIENCE: &str = "pullwatch-agents";
const TIMEOUT: Duration = Duration::from_secs(60);

async fn bounded<F: std::future::Future<Output = ()>>(test: F) {
    tokio::time::timeout(TIMEOUT, test)
        .await
        .expect("test did not finish in time");
}

/// Opens a session as `node` with `token`: Ok once `Registered` arrives. The sender is
/// returned so the session stays open.
async fn register(
    server: &AgentServer,
    node: &str,
    token: &str,
) -> Result<mpsc::Sender<AgentMessage>, tonic::Status> {
    let mut client = AgentServiceClient::connect(format!("http://{}", server.local_addr()))
        .await
        .expect("the agent server accepts connections");
    let (tx, rx) = mpsc::channel(4);
    tx.send(AgentMessage {
        message: Some(agent_message::Message::Register(Register {
            node_name: node.to_string(),
            ..Default::default()
        })),
    })
    .await
    .expect("queued");
    let mut request = tonic::Request::new(tokio_stream_from(rx));
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header value"),
    );
    let mut inbound = client.session(request).await?.into_inner();
    match inbound.message().await? {
        Some(m) if matches!(m.message, Some(aggregator_message::Message::Registered(_))) => Ok(tx),
        other => panic!("expected Registered, got {other:?}"),
    }
}

fn tokio_stream_from(
    mut rx: mpsc::Receiver<AgentMessage>,
) -> impl futures::Stream<Item = AgentMessage> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

async fn start(
    api: &TestApiServer,
    shared_token: Option<&std::path::Path>,
) -> (AgentHub, AgentServer) {
    let hub = AgentHub::new(HubConfig::default());
    let reviewer = TokenReviewer::new(api.kube_client(), AUDIENCE);
    let server = server::start_with_reviewer(
        hub.clone(),
        AgentServerConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            tls: None,
            shared_token_file: shared_token.map(|p| p.to_path_buf()),
        },
        Some(Arc::new(reviewer)),
    )
    .await
    .unwrap();
    (hub, server)
}

#[tokio::test]
async fn bound_service_account_tokens_register_only_as_their_node() {
    bounded(async {
        let api = TestApiServer::start().await.unwrap();
        api.add_service_account_token(
            "token-a",
            "pullwatch",
            "pullwatch-agent",
            Some(("pullwatch-agent-x7", "node-a")),
            &[AUDIENCE],
        );
        api.add_service_account_token(
            "token-other-audience",
            "pullwatch",
            "pullwatch-agent",
            Some(("pullwatch-agent-x8", "node-b")),
            &["https://kubernetes.default.svc.cluster.local"],
        );
        api.add_service_account_token(
            "token-unbound",
            "pullwatch",
            "pullwatch-agent",
            None,
            &[AUDIENCE],
        );
        api.add_token(
            "token-user",
            "alice",
            &["system:authenticated"],
            &[("authentication.kubernetes.io/node-name", "node-a")],
            &[AUDIENCE],
        );
        let (hub, server) = start(&api, None).await;

        // Accepted: its own node.
        let session = register(&server, "node-a", "token-a").await.unwrap();
        assert_eq!(hub.nodes(), ["node-a"]);
        let reviews = api.token_reviews();
        assert_eq!(reviews, 1);

        // The same token claiming another node: refused, whatever the review says.
        let refused = register(&server, "node-b", "token-a").await.unwrap_err();
        assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
        assert!(refused.message().contains("node-a"), "{refused:?}");
        assert_eq!(hub.nodes(), ["node-a"]);
        // ...and that second session was answered from the cache.
        assert_eq!(api.token_reviews(), reviews, "a positive review is cached");

        for (token, node, why) in [
            ("token-other-audience", "node-b", "audience"),
            ("token-unbound", "node-a", "names no node"),
            ("token-user", "node-a", "not a service account"),
            ("no-such-token", "node-a", "invalid bearer token"),
        ] {
            let refused = register(&server, node, token).await.unwrap_err();
            assert_eq!(
                refused.code(),
                Code::Unauthenticated,
                "{token}: {refused:?}"
            );
            assert!(
                refused.message().contains(why),
                "{token}: {:?} should say {why:?}",
                refused.message()
            );
            // The token never appears in what the agent is told.
            assert!(!refused.message().contains(token), "{refused:?}");
        }
        assert_eq!(hub.nodes(), ["node-a"]);
        // Refusals are not cached: each was reviewed.
        assert_eq!(api.token_reviews(), reviews + 4);

        // An API server that refuses TokenReviews (RBAC) refuses new tokens as
        // unavailable; the agent retries later.
        api.add_service_account_token(
            "token-c",
            "pullwatch",
            "pullwatch-agent",
            Some(("pullwatch-agent-x9", "node-c")),
            &[AUDIENCE],
        );
        api.forbid("tokenreviews");
        let refused = register(&server, "node-c", "token-c").await.unwrap_err();
        assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
        api.allow("tokenreviews");
        let _c = register(&server, "node-c", "token-c").await.unwrap();
        assert_eq!(hub.nodes(), ["node-a", "node-c"]);
        drop(session);
        server.stop().await;
    })
    .await;
}

#[tokio::test]
async fn the_shared_token_still_works_beside_token_review() {
    bounded(async {
        let api = TestApiServer::start().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "shared-secret\n").unwrap();
        api.add_service_account_token(
            "token-a",
            "pullwatch",
            "pullwatch-agent",
            Some(("pod", "node-a")),
            &[AUDIENCE],
        );
        let (hub, server) = start(&api, Some(&file)).await;
        // The shared token may register any node, without a review.
        let _x = register(&server, "outside-node", "shared-secret")
            .await
            .unwrap();
        assert_eq!(api.token_reviews(), 0);
        let _a = register(&server, "node-a", "token-a").await.unwrap();
        assert_eq!(hub.nodes(), ["node-a", "outside-node"]);
        let refused = register(&server, "node-z", "wrong").await.unwrap_err();
        assert_eq!(refused.code(), Code::Unauthenticated);
        server.stop().await;
    })
    .await;
}
