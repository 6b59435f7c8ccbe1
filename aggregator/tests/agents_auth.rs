//! Agent authentication against the test API server's TokenReview, over TLS: a bound
//! token of the agents' own service account, from its own pod on its own node,
//! registers as that node. Refused, each with a log line and a count in
//! `pullwatch_agent_sessions_refused_total{reason}`: another service account with the
//! right audience and node, a token of one node claiming another, a token that names a
//! node but no pod, a pod that does not match, the wrong audience, unbound tokens,
//! users that are not service accounts and unknown tokens. Positive reviews are cached;
//! an API server that refuses TokenReviews refuses agents; the shared token still works
//! beside TokenReview; a second session of a node takes over only with the same
//! identity. The agent server's key pair and the agent's CA bundle rotate without a
//! restart. Agents are plain gRPC clients, except in the CA rotation test (the real
//! session loop).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use pullwatch::proto::agent_service_client::AgentServiceClient;
use pullwatch::proto::{AgentMessage, Register, agent_message, aggregator_message};
use pullwatch_aggregator::agents::auth::{ServiceAccountName, TokenReviewer};
use pullwatch_aggregator::agents::server::{self, AgentServer, AgentServerConfig};
use pullwatch_aggregator::agents::{AgentHub, HubConfig};
use pullwatch_testbench::{LOOPBACK_SANS, TestApiServer, TestCa, captured_process_logs};
use tokio::sync::mpsc;
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

const AUDIENCE: &str = "pullwatch-agents";
const NAMESPACE: &str = "pullwatch";
const AGENT_SA: &str = "pullwatch-agent";
const TIMEOUT: Duration = Duration::from_secs(60);

async fn bounded<F: std::future::Future<Output = ()>>(test: F) {
    pullwatch_testbench::bounded_without_canary(TIMEOUT, test).await;
}

/// The agent server's TLS material: a CA and a key pair it signed, at fixed paths
/// (rotation rewrites the files in place).
struct Tls {
    dir: tempfile::TempDir,
    ca: TestCa,
}

impl Tls {
    fn new() -> Tls {
        let tls = Tls {
            dir: tempfile::tempdir().unwrap(),
            ca: TestCa::new().unwrap(),
        };
        tls.install(&tls.ca);
        tls
    }
    fn cert(&self) -> PathBuf {
        self.dir.path().join("tls.crt")
    }
    fn key(&self) -> PathBuf {
        self.dir.path().join("tls.key")
    }
    /// Writes a key pair signed by `ca` at the server's paths, the way a Secret volume
    /// update does: new files renamed over the old ones.
    fn install(&self, ca: &TestCa) {
        let (cert, key) = ca.issue_server_cert(LOOPBACK_SANS).unwrap();
        for (from, to) in [(cert, self.cert()), (key, self.key())] {
            let staged = to.with_extension("new");
            std::fs::copy(from, &staged).unwrap();
            std::fs::rename(staged, to).unwrap();
        }
    }
}

async fn channel(addr: std::net::SocketAddr, ca_pem: Vec<u8>) -> Result<Channel, String> {
    Endpoint::from_shared(format!("https://127.0.0.1:{}", addr.port()))
        .map_err(|e| e.to_string())?
        .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem)))
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| format!("{e:?}"))
}

/// Opens a session as `node` with `token` over TLS trusting `ca`: Ok once `Registered`
/// arrives. The sender is returned so the session stays open.
async fn register_with(
    server: &AgentServer,
    ca: &TestCa,
    node: &str,
    token: &str,
) -> Result<mpsc::Sender<AgentMessage>, tonic::Status> {
    let channel = channel(server.local_addr(), ca.ca_pem())
        .await
        .map_err(tonic::Status::unavailable)?;
    let mut client = AgentServiceClient::new(channel);
    let (tx, mut rx) = mpsc::channel(4);
    tx.send(AgentMessage {
        message: Some(agent_message::Message::Register(Register {
            node_name: node.to_string(),
            ..Default::default()
        })),
    })
    .await
    .expect("queued");
    let mut request = tonic::Request::new(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)));
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

fn account() -> ServiceAccountName {
    ServiceAccountName::parse(&format!("{NAMESPACE}:{AGENT_SA}")).unwrap()
}

async fn start(
    api: &TestApiServer,
    tls: &Tls,
    shared_token: Option<&Path>,
) -> (AgentHub, AgentServer) {
    let hub = AgentHub::new(HubConfig {
        tls: true,
        ..HubConfig::default()
    });
    let reviewer = TokenReviewer::new(api.kube_client(), AUDIENCE, account());
    let server = server::start_with_reviewer(
        hub.clone(),
        AgentServerConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            tls: Some((tls.cert(), tls.key())),
            shared_token_file: shared_token.map(|p| p.to_path_buf()),
            insecure_plaintext_tokens: false,
        },
        Some(Arc::new(reviewer)),
    )
    .await
    .unwrap();
    (hub, server)
}

/// The refusal was logged (reason and node, never the token) and counted.
fn assert_refusal_logged(hub: &AgentHub, reason: &str, at_least: u64) {
    assert!(
        hub.security_metrics().refused_count(reason) >= at_least,
        "{reason}: counted {}",
        hub.security_metrics().refused_count(reason)
    );
    let logs = captured_process_logs();
    assert!(
        logs.lines().any(|l| l.contains("agent session refused")
            && (l.contains(&format!("reason=\"{reason}\""))
                || l.contains(&format!("reason={reason}")))),
        "no log line for {reason}:\n{logs}"
    );
}

#[tokio::test]
async fn only_the_agents_own_pod_on_its_node_registers() {
    bounded(async {
        let api = TestApiServer::start().await.unwrap();
        api.add_agent_pod_token(
            "token-a",
            NAMESPACE,
            AGENT_SA,
            "pullwatch-agent-x7",
            "node-a",
            &[AUDIENCE],
        )
        .unwrap();
        // A tenant pod on node-a projects a token for our audience: right audience,
        // right node, wrong service account.
        api.add_agent_pod_token(
            "token-tenant",
            "tenant",
            "default",
            "tenant-app",
            "node-a",
            &[AUDIENCE],
        )
        .unwrap();
        // Another service account in our own namespace.
        api.add_agent_pod_token(
            "token-other-sa",
            NAMESPACE,
            "pullwatch-aggregator",
            "agg-1",
            "node-a",
            &[AUDIENCE],
        )
        .unwrap();
        // Right account and node, but a Node-bound token: node-name, no pod extras.
        api.add_node_bound_token(
            "token-node-bound",
            NAMESPACE,
            AGENT_SA,
            "node-a",
            &[AUDIENCE],
        );
        // A pod-bound token whose pod is gone (deleted, recreated under another UID).
        api.add_service_account_token(
            "token-stale-pod",
            NAMESPACE,
            AGENT_SA,
            Some(("pullwatch-agent-gone", "node-a")),
            &[AUDIENCE],
        );
        // A pod-bound token naming node-d while its pod runs on node-e.
        api.add_agent_pod_token(
            "token-moved",
            NAMESPACE,
            AGENT_SA,
            "pullwatch-agent-m",
            "node-e",
            &[AUDIENCE],
        )
        .unwrap();
        api.add_service_account_token(
            "token-lying-node",
            NAMESPACE,
            AGENT_SA,
            Some(("pullwatch-agent-m", "node-d")),
            &[AUDIENCE],
        );
        api.add_service_account_token(
            "token-other-audience",
            NAMESPACE,
            AGENT_SA,
            Some(("pullwatch-agent-x8", "node-b")),
            &["https://kubernetes.default.svc.cluster.local"],
        );
        api.add_service_account_token("token-unbound", NAMESPACE, AGENT_SA, None, &[AUDIENCE]);
        api.add_token(
            "token-user",
            "alice",
            &["system:authenticated"],
            &[("authentication.kubernetes.io/node-name", "node-a")],
            &[AUDIENCE],
        );
        let tls = Tls::new();
        let (hub, server) = start(&api, &tls, None).await;
        let (srv, ca) = (&server, &tls.ca);
        let register =
            move |node: &'static str, token: &'static str| register_with(srv, ca, node, token);

        // Accepted: the agents' service account, its own pod, its own node.
        let session = register("node-a", "token-a").await.unwrap();
        assert_eq!(hub.nodes(), ["node-a"]);
        let reviews = api.token_reviews();
        assert_eq!(reviews, 1);

        // The same token claiming another node: refused, whatever the review says.
        let refused = register("node-b", "token-a").await.unwrap_err();
        assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
        assert!(refused.message().contains("node-a"), "{refused:?}");
        assert_eq!(hub.nodes(), ["node-a"]);
        assert_refusal_logged(&hub, "wrong_node", 1);
        // ...and that second session was answered from the cache.
        assert_eq!(api.token_reviews(), reviews, "a positive review is cached");

        for (token, node, code, why, reason) in [
            (
                "token-tenant",
                "node-a",
                Code::PermissionDenied,
                "not the agents' service account",
                "wrong_service_account",
            ),
            (
                "token-other-sa",
                "node-a",
                Code::PermissionDenied,
                "not the agents' service account",
                "wrong_service_account",
            ),
            (
                "token-node-bound",
                "node-a",
                Code::Unauthenticated,
                "no pod",
                "no_pod",
            ),
            (
                "token-stale-pod",
                "node-a",
                Code::PermissionDenied,
                "does not exist",
                "pod_mismatch",
            ),
            (
                "token-lying-node",
                "node-d",
                Code::PermissionDenied,
                "scheduled on node \"node-e\"",
                "pod_mismatch",
            ),
            (
                "token-other-audience",
                "node-b",
                Code::Unauthenticated,
                "audience",
                "rejected",
            ),
            (
                "token-unbound",
                "node-a",
                Code::Unauthenticated,
                "names no node",
                "no_node",
            ),
            (
                "token-user",
                "node-a",
                Code::Unauthenticated,
                "not a service account",
                "not_service_account",
            ),
            (
                "no-such-token",
                "node-a",
                Code::Unauthenticated,
                "invalid bearer token",
                "rejected",
            ),
        ] {
            let refused = register(node, token).await.unwrap_err();
            assert_eq!(refused.code(), code, "{token}: {refused:?}");
            assert!(
                refused.message().contains(why),
                "{token}: {:?} should say {why:?}",
                refused.message()
            );
            // The token never appears in what the agent is told, nor in the log.
            assert!(!refused.message().contains(token), "{refused:?}");
            assert_refusal_logged(&hub, reason, 1);
        }
        assert!(!captured_process_logs().contains("token-tenant"));
        assert_eq!(
            hub.nodes(),
            ["node-a"],
            "no refused agent replaced node-a's"
        );
        assert_eq!(
            hub.security_metrics()
                .refused_count("wrong_service_account"),
            2
        );
        // Refusals are not cached: each was reviewed.
        assert_eq!(api.token_reviews(), reviews + 9);

        // An API server that refuses TokenReviews (RBAC) refuses new tokens as
        // unavailable; the agent retries later. Same when the pod cannot be read.
        api.add_agent_pod_token(
            "token-c",
            NAMESPACE,
            AGENT_SA,
            "pullwatch-agent-x9",
            "node-c",
            &[AUDIENCE],
        )
        .unwrap();
        api.forbid("tokenreviews");
        let refused = register("node-c", "token-c").await.unwrap_err();
        assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
        api.allow("tokenreviews");
        api.forbid("pods");
        let refused = register("node-c", "token-c").await.unwrap_err();
        assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
        assert!(refused.message().contains("not available"), "{refused:?}");
        api.allow("pods");
        let _c = register("node-c", "token-c").await.unwrap();
        assert_eq!(hub.nodes(), ["node-a", "node-c"]);
        drop(session);
        server.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_second_session_takes_over_only_with_the_same_identity() {
    bounded(async {
        let api = TestApiServer::start().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "shared-secret\n").unwrap();
        api.add_agent_pod_token(
            "token-a1",
            NAMESPACE,
            AGENT_SA,
            "agent-a1",
            "node-a",
            &[AUDIENCE],
        )
        .unwrap();
        // The DaemonSet replaced the pod: a new pod of the same account on node-a.
        api.add_agent_pod_token(
            "token-a2",
            NAMESPACE,
            AGENT_SA,
            "agent-a2",
            "node-a",
            &[AUDIENCE],
        )
        .unwrap();
        let tls = Tls::new();
        let (hub, server) = start(&api, &tls, Some(&file)).await;
        let _first = register_with(&server, &tls.ca, "node-a", "token-a1")
            .await
            .unwrap();
        // Another identity (the shared token may claim any node) does not replace it.
        let refused = register_with(&server, &tls.ca, "node-a", "shared-secret")
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
        assert!(
            refused.message().contains("already has an agent session"),
            "{refused:?}"
        );
        assert_refusal_logged(&hub, "takeover_refused", 1);
        assert_eq!(hub.security_metrics().takeovers(), 0);
        // The same identity (service account on node-a), from the new pod: takes over.
        let _second = register_with(&server, &tls.ca, "node-a", "token-a2")
            .await
            .unwrap();
        assert_eq!(hub.nodes(), ["node-a"]);
        assert_eq!(hub.security_metrics().takeovers(), 1);
        assert!(
            captured_process_logs().contains("took over the node's open session"),
            "the takeover is logged"
        );
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
        api.add_agent_pod_token("token-a", NAMESPACE, AGENT_SA, "pod", "node-a", &[AUDIENCE])
            .unwrap();
        let tls = Tls::new();
        let (hub, server) = start(&api, &tls, Some(&file)).await;
        // The shared token may register any node, without a review.
        let _x = register_with(&server, &tls.ca, "outside-node", "shared-secret")
            .await
            .unwrap();
        assert_eq!(api.token_reviews(), 0);
        let _a = register_with(&server, &tls.ca, "node-a", "token-a")
            .await
            .unwrap();
        assert_eq!(hub.nodes(), ["node-a", "outside-node"]);
        let refused = register_with(&server, &tls.ca, "node-z", "wrong")
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::Unauthenticated);
        server.stop().await;
    })
    .await;
}

/// A checker whose runtime socket does not exist: enough for the session loop to
/// register (it reports no images) without a containerd.
fn idle_checker(dir: &Path) -> pullwatch_agent::check::Checker {
    use pullwatch_agent::check::resolve::{Resolver, ResolverConfig};
    use pullwatch_agent::check::{CheckOptions, Checker};
    use pullwatch_agent::cri::{CriClient, CriTimeouts};
    use pullwatch_agent::keyring::{KeyringConfig, NodeKeyring};
    use pullwatch_agent::route::containerd::RuntimeAuth;
    let kubelet = dir.join("kubelet");
    std::fs::create_dir_all(&kubelet).unwrap();
    let keyring = NodeKeyring::new(&KeyringConfig {
        kubelet_root_dir: kubelet.clone(),
        config_json_dirs: Some(vec![kubelet.clone()]),
        dockercfg_dirs: Some(vec![kubelet]),
        provider_config: None,
        provider_bin_dir: None,
    })
    .unwrap();
    let resolver = Resolver::new(ResolverConfig {
        hosts_dir: dir.join("certs.d"),
        runtime_auth: RuntimeAuth::default(),
        request_timeout: Duration::from_secs(1),
    });
    let cri = CriClient::new(
        &format!("unix://{}", dir.join("none.sock").display()),
        CriTimeouts {
            call: Duration::from_secs(1),
            pull: Duration::from_secs(1),
        },
        None,
    )
    .unwrap();
    Checker::new(
        cri,
        Arc::new(keyring),
        Arc::new(resolver),
        CheckOptions {
            pull_absent_images: false,
            keep_pulled_images: false,
        },
    )
}

/// cert-manager rotates the agent-server Secret (a new CA, a new key pair) and the
/// agents' CA bundle: the running server hands the new certificate to new
/// connections, and the agent trusts the new CA at its next session; neither restarts.
#[tokio::test(flavor = "multi_thread")]
async fn certificates_rotate_without_restarts() {
    bounded(async {
        let api = TestApiServer::start().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, "shared-secret\n").unwrap();
        let tls = Tls::new();
        let (hub, server) = start(&api, &tls, Some(&token_file)).await;
        let port = server.local_addr().port();

        // The agent's CA bundle file, as mounted from the Secret's ca.crt.
        let ca_file = dir.path().join("ca.crt");
        std::fs::write(&ca_file, tls.ca.ca_pem()).unwrap();
        let config = pullwatch_agent::session::SessionConfig {
            aggregator_ca: Some(ca_file.clone()),
            token_file: Some(token_file.clone()),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_millis(300),
            ..pullwatch_agent::session::SessionConfig::new(
                format!("https://127.0.0.1:{port}"),
                "node-r".to_string(),
            )
        };
        let metrics = Arc::new(pullwatch_agent::metrics::AgentMetrics::new().unwrap());
        let agent = tokio::spawn(pullwatch_agent::session::run(
            Arc::new(idle_checker(dir.path())),
            metrics,
            config,
        ));
        wait_for("the agent to register", || hub.nodes() == ["node-r"]).await;

        // Rotation: a new CA signs a new key pair; the agent's bundle is replaced.
        let new_ca = TestCa::new().unwrap();
        tls.install(&new_ca);
        std::fs::write(&ca_file, new_ca.ca_pem()).unwrap();
        // The running server presents the new certificate to new connections.
        let mut rotated = false;
        for _ in 0..50 {
            if channel(server.local_addr(), new_ca.ca_pem()).await.is_ok() {
                rotated = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(rotated, "the server never presented the new certificate");
        assert!(
            channel(server.local_addr(), tls.ca.ca_pem()).await.is_err(),
            "the old CA no longer verifies the server"
        );
        let _s = register_with(&server, &new_ca, "node-s", "shared-secret")
            .await
            .unwrap();
        // The open session kept its connection.
        assert!(hub.nodes().contains(&"node-r".to_string()));

        // The aggregator goes away and comes back on the same port (the new files):
        // the agent's next session trusts the new CA, read from the rotated file.
        server.stop().await;
        wait_for("node-r to go", || {
            !hub.nodes().contains(&"node-r".to_string())
        })
        .await;
        let hub2 = AgentHub::new(HubConfig {
            tls: true,
            ..HubConfig::default()
        });
        let server2 = server::start(
            hub2.clone(),
            AgentServerConfig {
                listen: format!("127.0.0.1:{port}").parse().unwrap(),
                tls: Some((tls.cert(), tls.key())),
                shared_token_file: Some(token_file.clone()),
                insecure_plaintext_tokens: false,
            },
        )
        .await
        .unwrap();
        wait_for("the agent to re-register with the new CA", || {
            hub2.nodes() == ["node-r"]
        })
        .await;
        agent.abort();
        server2.stop().await;
    })
    .await;
}

async fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    for _ in 0..300 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}
