//! Agents in session with the aggregator's agent server (TLS, shared token): checks
//! dispatched to real containerd nodes, pull secrets over TLS, per-node /metrics, an
//! aggregator restart (agents reconnect, results resume), an agent killed mid-check
//! (its task moves), a wrong token, and the real `pullwatch-agent run` binary as the
//! Helm chart starts it.
//!
//! These need both crates, so they live in the test bench: the agent crate does not
//! depend on the aggregator. The simulated-node set-up is the agent's own test harness
//! (agent/tests/common), shared by path rather than copied.

#[path = "../../agent/tests/common/mod.rs"]
mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use pullwatch::proto::{CheckMode, CheckTask, PullCredential, Status};
use pullwatch_agent::check::{CheckOptions, Checker};
use pullwatch_agent::metrics::AgentMetrics;
use pullwatch_agent::session::{self, SessionConfig};
use pullwatch_aggregator::agents::server::{self as agent_server, AgentServer, AgentServerConfig};
use pullwatch_aggregator::agents::{AgentHub, HubConfig};
use pullwatch_testbench::{
    Containerd, ContainerdOptions, ImageFormat, LOOPBACK_SANS, Registry, RegistryOptions, TestCa,
    free_port, push_to, write_file,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;

const TEST_TIMEOUT: Duration = Duration::from_secs(120);
const TOKEN: &str = "shared-agent-token";

/// Also: this process's logs (the agents', in process) are captured, and the test
/// bench's canary password (`PASSWORD`) must never appear in them.
async fn bounded<F: std::future::Future<Output = ()>>(test: F) {
    pullwatch_testbench::bounded_without_canary(TEST_TIMEOUT, test).await;
}

/// TLS material and the token file for one aggregator.
struct Aggregator {
    _dir: tempfile::TempDir,
    ca: TestCa,
    cert: PathBuf,
    key: PathBuf,
    token_file: PathBuf,
}

impl Aggregator {
    fn new() -> Aggregator {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new().unwrap();
        let (cert, key) = ca.issue_server_cert(LOOPBACK_SANS).unwrap();
        let token_file = write_file(dir.path(), "token", format!("{TOKEN}\n"));
        Aggregator {
            _dir: dir,
            ca,
            cert,
            key,
            token_file,
        }
    }

    /// A fresh hub and server (a restarted aggregator keeps nothing) on `port`.
    async fn start(&self, port: u16) -> (AgentHub, AgentServer) {
        let hub = AgentHub::new(HubConfig {
            heartbeat_interval: Duration::from_secs(1),
            max_concurrent_checks: 2,
            task_timeout: Duration::from_secs(60),
            node_group_label: None,
            tls: true,
        });
        let server = agent_server::start(
            hub.clone(),
            AgentServerConfig {
                listen: format!("127.0.0.1:{port}").parse().unwrap(),
                tls: Some((self.cert.clone(), self.key.clone())),
                shared_token_file: Some(self.token_file.clone()),
                insecure_plaintext_tokens: false,
            },
        )
        .await
        .unwrap();
        (hub, server)
    }

    fn session(&self, server: &AgentServer, node: &str, token_file: PathBuf) -> SessionConfig {
        SessionConfig {
            aggregator_ca: Some(self.ca.ca_cert_path().to_path_buf()),
            token_file: Some(token_file),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_millis(500),
            inventory_interval: Duration::from_millis(300),
            ..SessionConfig::new(
                format!("https://127.0.0.1:{}", server.local_addr().port()),
                node.to_string(),
            )
        }
    }
}

/// Starts an agent on `node`; aborting the handle is killing the agent.
fn spawn_agent(
    node: &Containerd,
    setup: NodeSetup,
    config: SessionConfig,
) -> (Arc<AgentMetrics>, JoinHandle<()>) {
    let metrics = Arc::new(AgentMetrics::new().unwrap());
    let checker: Checker = checker(
        node,
        NodeSetup {
            observer: Some(metrics.clone()),
            ..setup
        },
    );
    let handle = tokio::spawn(session::run(Arc::new(checker), metrics.clone(), config));
    (metrics, handle)
}

/// Polls `condition` every 50 ms for up to 20 s.
async fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    for _ in 0..400 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

fn task(image: &str, mode: CheckMode) -> CheckTask {
    CheckTask {
        image: image.to_string(),
        mode: mode as i32,
        ..Default::default()
    }
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

#[tokio::test(flavor = "multi_thread")]
async fn agents_check_through_their_nodes_and_reconnect_after_an_aggregator_restart() {
    bounded(async {
        let registry = Registry::start(RegistryOptions::htpasswd(USER, PASSWORD))
        .await
        .unwrap();
        let image = push_to(&registry, "private/app", "v1", ImageFormat::Oci).await;
        let aggregator = Aggregator::new();
        let (hub, server) = aggregator.start(0).await;
        let port = server.local_addr().port();

        // node-b has a kubelet config.json for the registry; node-d has nothing.
        let node_b = Containerd::start(ContainerdOptions::default()).await.unwrap();
        let node_d = Containerd::start(ContainerdOptions::default()).await.unwrap();
        let (metrics_b, _agent_b) = spawn_agent(
            &node_b,
            NodeSetup {
                kubelet_config_json: Some(config_json(&registry.host(), USER, PASSWORD)),
                options: Some(CheckOptions {
                    pull_absent_images: true,
                    keep_pulled_images: true,
                }),
                ..Default::default()
            },
            aggregator.session(&server, "node-b", aggregator.token_file.clone()),
        );
        let (_metrics_d, _agent_d) = spawn_agent(
            &node_d,
            NodeSetup::default(),
            aggregator.session(&server, "node-d", aggregator.token_file.clone()),
        );
        wait_for("both agents to register", || {
            hub.nodes() == ["node-b", "node-d"]
        })
        .await;
        let agents = hub.agents();
        assert_eq!(agents[0].runtime_name, "containerd");
        assert!(agents[0].runtime_version.starts_with("1."), "{agents:?}");

        // node-b's own credentials make the image available there...
        let done = hub
            .dispatch("node-b", task(&image.reference, CheckMode::Resolve))
            .await
            .unwrap();
        assert_eq!(done.node, "node-b");
        assert_eq!(done.result.status, Status::Available as i32, "{:?}", done.result);
        assert_eq!(done.result.mode, CheckMode::Resolve as i32);
        assert!(done.result.credential_source.starts_with("config.json:"));
        // ...node-d has none...
        let done = hub
            .dispatch("node-d", task(&image.reference, CheckMode::Auto))
            .await
            .unwrap();
        assert_eq!(
            done.result.status,
            Status::AuthenticationFailure as i32,
            "{:?}",
            done.result
        );
        // ...unless the workload's pull secret comes along (over TLS).
        let mut with_secret = task(&image.reference, CheckMode::Auto);
        with_secret.credentials.push(PullCredential {
            source: "secret/team/regcred".into(),
            username: USER.into(),
            password: PASSWORD.into(),
            ..Default::default()
        });
        let done = hub.dispatch("node-d", with_secret).await.unwrap();
        assert_eq!(done.result.status, Status::Available as i32, "{:?}", done.result);
        assert_eq!(done.result.credential_source, "secret/team/regcred");

        // A pull that node-b keeps shows up in its inventory on the hub.
        let done = hub
            .dispatch("node-b", task(&image.reference, CheckMode::Pull))
            .await
            .unwrap();
        assert_eq!(done.result.status, Status::Available as i32, "{:?}", done.result);
        assert!(done.result.image_present);
        wait_for("node-b's inventory to list the pulled image", || {
            hub.agents()[0].images.contains(&image.reference)
        })
        .await;

        // The agent's /metrics: this node's results, CRI calls, keyring sources,
        // connection state.
        let listener = pullwatch_agent::metrics::bind("127.0.0.1:0").await.unwrap();
        let metrics_addr = listener.local_addr().unwrap();
        let metrics_server = tokio::spawn(pullwatch_agent::metrics::serve(
            listener,
            pullwatch::serve::LimitArgs::default().for_listener(1),
            metrics_b.clone(),
        ));
        let response = http_get(metrics_addr, "/metrics").await;
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        for needle in [
            format!("pullwatch_agent_check_status{{credential_source=\"config.json:{}\",image=\"{}\",mode=\"pull\",status=\"available\"}} 1", node_b.dir().join("kubelet/config.json").display(), image.reference),
            "pullwatch_agent_cri_requests_total{code=\"OK\",rpc=\"PullImage\"} 1".to_string(),
            "pullwatch_agent_cri_requests_total{code=\"OK\",rpc=\"Version\"} 1".to_string(),
            "pullwatch_agent_aggregator_connected 1".to_string(),
            "pullwatch_agent_runtime_info{runtime_name=\"containerd\"".to_string(),
        ] {
            assert!(response.contains(&needle), "missing {needle} in\n{response}");
        }
        pullwatch_testbench::assert_no_canary("the agent's /metrics", &response);
        metrics_server.abort();

        // The aggregator restarts on the same port with an empty hub.
        server.stop().await;
        wait_for("node-b to notice", || {
            metrics_b.aggregator_connected.get() == 0
        })
        .await;
        let (hub, _server) = aggregator.start(port).await;
        wait_for("both agents to reconnect", || {
            hub.nodes() == ["node-b", "node-d"]
        })
        .await;
        // Results resume, and the re-registration carried node-b's image list.
        assert!(hub.agents()[0].images.contains(&image.reference));
        let done = hub
            .dispatch("node-b", task(&image.reference, CheckMode::Auto))
            .await
            .unwrap();
        assert_eq!(done.result.status, Status::Available as i32, "{:?}", done.result);
        assert_eq!(done.result.mode, CheckMode::Pull as i32, "node-b holds it now");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_killed_mid_check_has_its_task_moved() {
    bounded(async {
        let registry = Registry::start(RegistryOptions::default()).await.unwrap();
        let image = push_to(&registry, "team/app", "v1", ImageFormat::Oci).await;
        let aggregator = Aggregator::new();
        let (hub, server) = aggregator.start(0).await;

        // node-1's credential provider takes its time: its checks are slow.
        let node_1 = Containerd::start(ContainerdOptions::default())
            .await
            .unwrap();
        let node_2 = Containerd::start(ContainerdOptions::default())
            .await
            .unwrap();
        let slow_log = node_1.dir().join("slow-plugin.log");
        let (yaml, name, body) = plugin(&registry.host(), &slow_log);
        let (_, agent_1) = spawn_agent(
            &node_1,
            NodeSetup {
                plugin: Some((yaml, name, format!("sleep 30\n{body}"))),
                ..Default::default()
            },
            aggregator.session(&server, "node-1", aggregator.token_file.clone()),
        );
        let (_, _agent_2) = spawn_agent(
            &node_2,
            NodeSetup::default(),
            aggregator.session(&server, "node-2", aggregator.token_file.clone()),
        );
        wait_for("both agents", || hub.nodes() == ["node-1", "node-2"]).await;

        let waiting = {
            let hub = hub.clone();
            let t = task(&image.reference, CheckMode::Resolve);
            tokio::spawn(async move { hub.dispatch("node-1", t).await })
        };
        wait_for("the task to be in flight on node-1", || {
            hub.agents()
                .iter()
                .any(|a| a.node_name == "node-1" && a.in_flight == 1)
        })
        .await;
        agent_1.abort();
        let done = waiting.await.unwrap().unwrap();
        assert_eq!(done.node, "node-2");
        assert_eq!(done.replaced_from, ["node-1"]);
        assert_eq!(
            done.result.status,
            Status::Available as i32,
            "{:?}",
            done.result
        );
        assert_eq!(hub.nodes(), ["node-2"]);
    })
    .await;
}

/// A node whose runtime stops answering says so in its log (a warning naming the
/// runtime's error), not only in a counter: its checks carry `runtime_failure` and
/// nothing else would tell the operator why that node checks nothing any more.
#[tokio::test(flavor = "multi_thread")]
async fn a_runtime_that_stops_answering_is_logged() {
    bounded(async {
        let aggregator = Aggregator::new();
        let (hub, server) = aggregator.start(0).await;
        let mut node = Containerd::start(ContainerdOptions::default())
            .await
            .unwrap();
        let socket = node.socket_path().display().to_string();
        let (_, agent) = spawn_agent(
            &node,
            NodeSetup::default(),
            aggregator.session(&server, "runtime-gone", aggregator.token_file.clone()),
        );
        wait_for("the agent to register", || hub.nodes() == ["runtime-gone"]).await;
        node.stop();
        let image = "127.0.0.1:1/runtime-gone/app:v1";
        let done = hub
            .dispatch("runtime-gone", task(image, CheckMode::Auto))
            .await
            .unwrap();
        assert!(done.result.runtime_failure, "{:?}", done.result);
        let logs = pullwatch_testbench::captured_process_logs();
        let warned = logs.lines().find(|line| {
            line.contains("WARN")
                && line.contains("the container runtime did not answer a check")
                && line.contains(image)
        });
        let warned = warned.unwrap_or_else(|| panic!("no warning in:\n{logs}"));
        assert!(warned.contains(&socket), "{warned}");
        agent.abort();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_token_is_refused() {
    bounded(async {
        let aggregator = Aggregator::new();
        let (hub, server) = aggregator.start(0).await;
        let node = Containerd::start(ContainerdOptions::default())
            .await
            .unwrap();
        let wrong = write_file(node.dir(), "wrong-token", "not-the-token");
        let (metrics, agent) = spawn_agent(
            &node,
            NodeSetup::default(),
            aggregator.session(&server, "intruder", wrong.clone()),
        );
        wait_for("refused attempts", || {
            metrics.render().contains(
                "pullwatch_agent_aggregator_connection_attempts_total{result=\"refused\"} 2",
            )
        })
        .await;
        assert!(hub.nodes().is_empty());
        assert_eq!(metrics.aggregator_connected.get(), 0);
        // The token file is re-read on every attempt: fixing it lets the agent in.
        std::fs::write(&wrong, TOKEN).unwrap();
        wait_for("the agent to register", || hub.nodes() == ["intruder"]).await;
        agent.abort();
    })
    .await;
}

/// An `http://` agent pointed at the TLS port: no session can open, and that is a
/// connection failure, not the aggregator refusing the agent (the h2 protocol error was
/// counted and logged as a refusal).
#[tokio::test(flavor = "multi_thread")]
async fn plain_http_to_the_tls_port_is_a_connection_failure_not_a_refusal() {
    bounded(async {
        let aggregator = Aggregator::new();
        let (hub, server) = aggregator.start(0).await;
        let node = Containerd::start(ContainerdOptions::default())
            .await
            .unwrap();
        let tls = aggregator.session(&server, "plain", aggregator.token_file.clone());
        let config = SessionConfig {
            aggregator: tls.aggregator.replace("https://", "http://"),
            aggregator_ca: None,
            insecure_plaintext_token: true,
            ..tls
        };
        let (metrics, agent) = spawn_agent(&node, NodeSetup::default(), config);
        wait_for("failed attempts", || {
            metrics.render().contains(
                "pullwatch_agent_aggregator_connection_attempts_total{result=\"connect_error\"} 2",
            )
        })
        .await;
        let rendered = metrics.render();
        assert!(!rendered.contains("result=\"refused\""), "{rendered}");
        assert!(hub.nodes().is_empty());
        agent.abort();
    })
    .await;
}

/// `pullwatch-agent run` as the Helm chart starts it: registers with the aggregator's
/// agent server, answers a dispatched check, serves /metrics, exits 0 on SIGTERM.
#[tokio::test(flavor = "multi_thread")]
async fn run_command_as_the_chart_starts_it() {
    let registry = Registry::start(RegistryOptions::default()).await.unwrap();
    let image = push_to(&registry, "team/app", "v1", ImageFormat::Oci).await;
    let node = Containerd::start(ContainerdOptions::default())
        .await
        .unwrap();
    let home = tempfile::tempdir().unwrap();
    let ca = TestCa::new().unwrap();
    let (cert, key) = ca.issue_server_cert(LOOPBACK_SANS).unwrap();
    let token = write_file(home.path(), "token", "t0ken");
    let hub = AgentHub::new(HubConfig {
        tls: true,
        heartbeat_interval: Duration::from_secs(1),
        ..Default::default()
    });
    let server = agent_server::start(
        hub.clone(),
        AgentServerConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            tls: Some((cert, key)),
            shared_token_file: Some(token.clone()),
            insecure_plaintext_tokens: false,
        },
    )
    .await
    .unwrap();
    let metrics_port = free_port();

    let binary = pullwatch_testbench::workspace_binary("pullwatch-agent").unwrap();
    let mut child = tokio::process::Command::new(binary)
        .args(node.agent_run_args(
            server.local_addr(),
            ca.ca_cert_path(),
            &token,
            &home.path().join("kubelet"),
            ([127, 0, 0, 1], metrics_port).into(),
        ))
        .args([
            "--mode=auto".to_string(),
            "--pull-absent-images=true".to_string(),
            "--max-concurrent-checks=2".to_string(),
            "--log-level=info".to_string(),
            "--log-format=json".to_string(),
        ])
        .env_clear()
        .env("HOME", home.path())
        .env("NODE_NAME", "bin-node")
        .current_dir(home.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    let mut registered = false;
    for _ in 0..200 {
        if hub.nodes() == ["bin-node"] {
            registered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(registered, "the agent did not register");
    let done = hub
        .dispatch(
            "bin-node",
            CheckTask {
                image: image.reference.clone(),
                mode: CheckMode::Auto as i32,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        done.result.status,
        Status::Available as i32,
        "{:?}",
        done.result
    );
    assert_eq!(done.result.mode, CheckMode::Pull as i32);

    let metrics = http_get(
        (std::net::Ipv4Addr::LOCALHOST, metrics_port).into(),
        "/metrics",
    )
    .await;
    assert!(
        metrics.contains("pullwatch_agent_aggregator_connected 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("pullwatch_agent_cri_requests_total{code=\"OK\",rpc=\"PullImage\"} 1"),
        "{metrics}"
    );

    let pid = child.id().unwrap().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("the agent did not stop on SIGTERM")
        .unwrap();
    assert_eq!(status.code(), Some(0));
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .await
        .unwrap();
    // JSON log lines, and no token in them.
    let first = stderr.lines().next().unwrap_or_default();
    assert!(first.starts_with('{'), "{stderr}");
    assert!(!stderr.contains("t0ken"), "{stderr}");
}
