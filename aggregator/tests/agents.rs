//! `pullwatch-aggregator serve` with node agents, all real: the serve binary, agents
//! (the agent library's session, in this process, so a test can kill one) on real
//! containerd nodes from the bench, a real htpasswd registry, and in cluster mode the
//! test API server (with TokenReview). Everything is observed through `/metrics`.
//!
//! - an image only node credentials can pull: `authentication_failure` from the
//!   central check, `available` once an agent on such a node is connected;
//! - two node groups disagreeing: the failing status canonically, both in
//!   `pullwatch_image_nodes`;
//! - an agent killed while checking: its task moves to another node;
//! - pull secrets reach only the node that runs the workload (and follow the pod);
//!   in `--manifests` mode none reaches any agent;
//! - a tag moved in the registry while a node holds the old image: the agent reports
//!   the move and the node keeps what it runs;
//! - a registry announcing Docker Hub's pull quota (a proxy in front of a real one):
//!   the aggregator's own series, the node's on its agent and on the aggregator, the
//!   quotas in `/api/v1/images` and on the page, gone with the agent and the registry.
//!
//! Loopback only; every wait is bounded.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use pullwatch_agent::metrics::AgentMetrics;
use pullwatch_agent::session::{self, SessionConfig};
use pullwatch_testbench::{
    Containerd, ImageFormat, LOOPBACK_SANS, QUOTA_WINDOW_SECONDS, QuotaProxy, Registry,
    TestApiServer, TestCa, assert_no_canary, assert_no_canary_in_file, deployment, free_port,
    http_request, namespace, node, pod, promtool_check_metrics, replicaset,
    secret_dockerconfigjson, with_owner, with_pull_secrets,
};
use pullwatch_testbench::{push_to, started};
use tokio::task::JoinHandle;

/// Checkers on bench nodes, wired as `pullwatch-agent run` wires them.
#[path = "../../agent/tests/common/mod.rs"]
mod node_checkers;
use node_checkers::NodeSetup;

const BIN: &str = env!("CARGO_BIN_EXE_pullwatch-aggregator");
const TEST_TIMEOUT: Duration = Duration::from_secs(180);
const USER: &str = "alice";
/// The test bench's canary: asserted absent from every log and /metrics here.
const PASSWORD: &str = pullwatch_testbench::CANARY_PASSWORD;
const SHARED_TOKEN: &str = "agents-shared-token";
const AGENT_NAMESPACE: &str = "pullwatch";
const AGENT_SERVICE_ACCOUNT: &str = "pullwatch-agent";
const ZONE: &str = "topology.kubernetes.io/zone";

/// Runs `test` with this process's logs (the in-process agents') captured, and
/// asserts the canary password never reached them.
async fn bounded<F: std::future::Future<Output = ()>>(test: F) {
    pullwatch_testbench::bounded_without_canary(TEST_TIMEOUT, test).await;
}

/// The serve binary, killed on drop; its stderr is printed when a wait fails.
struct Serve {
    child: Child,
    metrics: SocketAddr,
    agent_port: u16,
    ca: TestCa,
    dir: tempfile::TempDir,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The whole captured log of the aggregator process: no canary, ever.
        if !std::thread::panicking() {
            assert_no_canary_in_file("the aggregator's log", &self.dir.path().join("stderr.log"));
        }
    }
}

/// How agents authenticate to the serve under test.
enum Auth {
    /// `--agent-shared-token-file` with [`SHARED_TOKEN`].
    SharedToken,
    /// `--agent-token-audience` (and `--agent-service-account pullwatch:pullwatch-agent`):
    /// TokenReview through the cluster's API.
    TokenReview(&'static str),
}

impl Serve {
    /// `serve` with the agent server on TLS, `auth`, and `args` (the inventory source
    /// and more).
    fn start(args: &[String], auth: Auth) -> Serve {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new().unwrap();
        let (cert, key) = ca.issue_server_cert(LOOPBACK_SANS).unwrap();
        let token_file = dir.path().join("shared-token");
        std::fs::write(&token_file, SHARED_TOKEN).unwrap();
        let auth = match auth {
            Auth::SharedToken => format!("--agent-shared-token-file={}", token_file.display()),
            Auth::TokenReview(audience) => format!(
                "--agent-token-audience={audience}\n--agent-service-account={AGENT_NAMESPACE}:{AGENT_SERVICE_ACCOUNT}"
            ),
        };
        let (port, agent_port) = (free_port(), free_port());
        let child = Command::new(BIN)
            .arg("serve")
            .args(args)
            .args(auth.split('\n'))
            .args(["--bind-address", &format!("127.0.0.1:{port}")])
            .args(["--agent-listen", &format!("127.0.0.1:{agent_port}")])
            .arg(format!("--agent-tls-cert={}", cert.display()))
            .arg(format!("--agent-tls-key={}", key.display()))
            .args(["--allow-plain-http", "--registry-timeout", "5s"])
            .args(["--log-level", "info,pullwatch_aggregator=debug"])
            .env_remove("PULLWATCH_LOG")
            .env_remove("KUBECONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("stderr.log")).unwrap())
            .spawn()
            .unwrap();
        Serve {
            child,
            metrics: ([127, 0, 0, 1], port).into(),
            agent_port,
            ca,
            dir,
        }
    }

    fn shared_token_file(&self) -> PathBuf {
        self.dir.path().join("shared-token")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    /// `GET path` on the metrics port.
    async fn get(&self, path: &str) -> pullwatch_testbench::HttpResponse {
        http_request(self.metrics, http::Method::GET, path, &[], Vec::new())
            .await
            .unwrap()
    }

    /// The aggregator's /metrics (never carrying the canary).
    async fn metrics(&self) -> String {
        let text = match http_request(self.metrics, http::Method::GET, "/metrics", &[], Vec::new())
            .await
        {
            Ok(response) if response.status == 200 => response.text(),
            _ => String::new(),
        };
        assert_no_canary("the aggregator's /metrics", &text);
        text
    }

    /// Polls /metrics until `condition` holds (30 s at most); returns that exposition.
    async fn wait_metrics(&self, what: &str, condition: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = self.metrics().await;
            if condition(&text) {
                return text;
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out waiting for {what}\n--- /metrics:\n{text}\n--- serve log:\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Agents on two fresh nodes without credentials of their own, `node-a` and
    /// `node-b`, each with its token (see [`two_zoned_nodes_with_agent_tokens`]) written
    /// in `dir`, once both are connected.
    async fn connect_token_agents(&self, dir: &Path) -> [(Containerd, Agent); 2] {
        let mut agents = Vec::new();
        for name in ["node-a", "node-b"] {
            let node = started::bare_node().await;
            let session = self.session(name, &agent_token_file(dir, name), &[]);
            let agent = Agent::start(&node, None, session);
            agents.push((node, agent));
        }
        for (_, agent) in &agents {
            agent.wait_connected().await;
        }
        agents
            .try_into()
            .unwrap_or_else(|_| unreachable!("two agents"))
    }

    /// An agent on `node` registering as `name` with the shared token and node
    /// `labels`, once connected.
    async fn connect_agent(&self, node: &Containerd, name: &str, labels: &[(&str, &str)]) -> Agent {
        let agent = Agent::start(
            node,
            None,
            self.session(name, &self.shared_token_file(), labels),
        );
        agent.wait_connected().await;
        agent
    }

    /// A session config for an agent on `node` with `token_file` and node labels.
    fn session(&self, node: &str, token_file: &Path, labels: &[(&str, &str)]) -> SessionConfig {
        SessionConfig {
            aggregator_ca: Some(self.ca.ca_cert_path().to_path_buf()),
            token_file: Some(token_file.to_path_buf()),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_millis(500),
            inventory_interval: Duration::from_millis(500),
            node_labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..SessionConfig::new(
                format!("https://127.0.0.1:{}", self.agent_port),
                node.to_string(),
            )
        }
    }
}

/// `serve` arguments: workloads from the manifest files in `dir`, checked every
/// `interval`.
fn manifests_args(dir: &tempfile::TempDir, interval: &str) -> Vec<String> {
    let dir = dir.path().display().to_string();
    ["--manifests", &dir, "--check-interval", interval]
        .map(String::from)
        .to_vec()
}

/// `serve` arguments: workloads from the cluster `kubeconfig` names, checked every 2 s.
fn kubeconfig_args(kubeconfig: &Path) -> Vec<String> {
    let kubeconfig = kubeconfig.display().to_string();
    ["--kubeconfig", &kubeconfig, "--check-interval", "2s"]
        .map(String::from)
        .to_vec()
}

/// `serve` arguments: nodes grouped by zone.
fn zone_groups() -> Vec<String> {
    vec!["--node-group-label".into(), ZONE.into()]
}

/// Nodes `node-a` (zone z1) and `node-b` (zone z2), one per zone so both check, each
/// with its agent pod's projected token `token-<node>` for `audience`.
fn two_zoned_nodes_with_agent_tokens(api: &TestApiServer, audience: &str) {
    for (name, zone) in [("node-a", "z1"), ("node-b", "z2")] {
        api.apply(&node(name, &[(ZONE, zone)])).unwrap();
        api.add_agent_pod_token(
            &format!("token-{name}"),
            AGENT_NAMESPACE,
            AGENT_SERVICE_ACCOUNT,
            &format!("pullwatch-agent-{name}"),
            name,
            &[audience],
        )
        .unwrap();
    }
}

/// The token file of `node`'s agent (see [`two_zoned_nodes_with_agent_tokens`]), in `dir`.
fn agent_token_file(dir: &Path, node: &str) -> PathBuf {
    let path = dir.join(format!("token-{node}"));
    std::fs::write(&path, format!("token-{node}")).unwrap();
    path
}

/// An agent's series saying a resolve-mode check of `image` with credentials from
/// `source` ended in `status`.
fn node_check_status(source: &str, image: &str, status: &str) -> String {
    format!(
        "pullwatch_agent_check_status{{credential_source=\"{source}\",image=\"{image}\",mode=\"resolve\",status=\"{status}\"}} 1"
    )
}

/// The value of the series whose line starts with `prefix` (labels included).
fn value(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn canonical(status: &str, namespace: &str, name: &str, image: &str) -> String {
    format!(
        "k8s_image_availability_exporter_{status}{{container=\"c0\",image=\"{image}\",kind=\"deployment\",name=\"{name}\",namespace=\"{namespace}\"}} "
    )
}

fn image_nodes(image: &str, status: &str) -> String {
    format!("pullwatch_image_nodes{{image=\"{image}\",status=\"{status}\"}} ")
}

/// An agent on a bench node, as in the DaemonSet: its checker sees only the node's
/// files (kubelet dir, optional credential-provider plugin) and containerd.
struct Agent {
    metrics: Arc<AgentMetrics>,
    task: JoinHandle<()>,
}

impl Agent {
    /// Starts the agent's session loop with a checker for `node` (and its credential
    /// provider `plugin`: see [`node_checkers::plugin`]).
    fn start(
        node: &Containerd,
        plugin: Option<(String, String, String)>,
        config: SessionConfig,
    ) -> Agent {
        let metrics = Arc::new(AgentMetrics::new().unwrap());
        let checker = node_checkers::checker(
            node,
            NodeSetup {
                plugin,
                observer: Some(metrics.clone()),
                registry_observer: Some(metrics.clone()),
                ..NodeSetup::default()
            },
        );
        let task = tokio::spawn(session::run(Arc::new(checker), metrics.clone(), config));
        Agent { metrics, task }
    }

    /// The agent's /metrics (never carrying the canary).
    fn render(&self) -> String {
        let text = self.metrics.render();
        assert_no_canary("an agent's /metrics", &text);
        text
    }

    async fn wait_connected(&self) {
        for _ in 0..400 {
            if self.metrics.aggregator_connected.get() == 1 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the agent did not connect:\n{}", self.render());
    }

    /// Kills the agent, as a node going down would: its stream just ends.
    fn kill(self) {
        drop(self);
    }
}

/// An agent lives as long as its test's scope, even when the test fails.
impl Drop for Agent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A registry only `alice` may pull from, with one image; the manifest of a
/// Deployment `shop/web` using it without pull secrets.
async fn private_registry() -> (Registry, String) {
    let registry = started::private_registry(USER, PASSWORD).await;
    let image = push_to(&registry, "private/app", "v1", ImageFormat::Oci)
        .await
        .reference;
    (registry, image)
}

fn manifests_dir(image: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let doc = serde_json::json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "c0", "image": image}]}
            }
        }
    });
    std::fs::write(dir.path().join("web.json"), doc.to_string()).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread")]
async fn node_credentials_make_an_image_available_and_node_groups_can_disagree() {
    bounded(async {
        let (registry, image) = private_registry().await;
        let manifests = manifests_dir(&image);
        let serve = Serve::start(
            &[manifests_args(&manifests, "2s"), zone_groups()].concat(),
            Auth::SharedToken,
        );
        let web = |status: &str| canonical(status, "shop", "web", &image);

        // No agent yet: the aggregator's own check, which has no credential.
        let text = serve
            .wait_metrics("the central check", |t| {
                value(t, &web("authentication_failure")) == Some(1.0)
            })
            .await;
        assert!(value(&text, "pullwatch_checks_total{via=\"central\"}").unwrap_or(0.0) >= 1.0);
        assert!(
            !text.contains("pullwatch_image_nodes{"),
            "no node checked yet"
        );
        assert_eq!(value(&text, "pullwatch_agents_connected"), Some(0.0));

        // A node whose containerd has the registry's credentials: available.
        let node_a = started::node_with_credentials(&registry, USER, PASSWORD).await;
        let agent_a = serve
            .connect_agent(&node_a, "node-a", &[(ZONE, "z1")])
            .await;
        let text = serve
            .wait_metrics("the node's answer", |t| {
                value(t, &web("available")) == Some(1.0)
            })
            .await;
        assert_eq!(value(&text, &web("authentication_failure")), Some(0.0));
        assert_eq!(value(&text, &image_nodes(&image, "available")), Some(1.0));
        assert_eq!(
            value(&text, &image_nodes(&image, "authentication_failure")),
            Some(0.0)
        );
        assert!(value(&text, "pullwatch_checks_total{via=\"agents\"}").unwrap_or(0.0) >= 1.0);
        assert_eq!(value(&text, "pullwatch_agents_connected"), Some(1.0));
        assert!(
            value(
                &text,
                &format!("pullwatch_image_cached_nodes{{image=\"{image}\"}} ")
            )
            .is_some()
        );
        let node_view = agent_a.render();
        assert!(
            node_view.contains(&node_check_status("runtime", &image, "available")),
            "{node_view}"
        );
        promtool_check_metrics(&text).unwrap();

        // A node in another zone without credentials: the nodes disagree, and the
        // failing node's status is the canonical one (a pod there would not start).
        let node_b = started::bare_node().await;
        let agent_b = serve
            .connect_agent(&node_b, "node-b", &[(ZONE, "z2")])
            .await;
        let text = serve
            .wait_metrics("both zones' answers", |t| {
                value(t, &image_nodes(&image, "authentication_failure")) == Some(1.0)
                    && value(t, &web("authentication_failure")) == Some(1.0)
            })
            .await;
        assert_eq!(value(&text, &web("available")), Some(0.0));
        assert_eq!(value(&text, &image_nodes(&image, "available")), Some(1.0));
        assert_eq!(value(&text, "pullwatch_agents_connected"), Some(2.0));
        assert!(
            agent_b
                .render()
                .contains("status=\"authentication_failure\"")
        );
        promtool_check_metrics(&text).unwrap();
        // Secrets never appear anywhere.
        assert!(!text.contains(PASSWORD) && !serve.log().contains(PASSWORD));
        // The results say which node said what, and why.
        let api = serve.get("/api/v1/images").await.text();
        assert_no_canary("/api/v1/images", &api);
        let api: serde_json::Value = serde_json::from_str(&api).unwrap();
        let entry = api["images"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["image"] == image.as_str())
            .unwrap_or_else(|| panic!("{image} not in {api}"));
        assert_eq!(entry["status"], "authentication_failure", "{entry}");
        let nodes: Vec<(String, String)> = entry["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| {
                (
                    n["node"].as_str().unwrap().to_string(),
                    n["status"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        assert_eq!(
            nodes,
            [
                ("node-a".to_string(), "available".to_string()),
                ("node-b".to_string(), "authentication_failure".to_string())
            ],
            "{entry}"
        );
        assert!(
            entry["nodes"][1]["reason"]
                .as_str()
                .is_some_and(|r| r.contains("401")),
            "{entry}"
        );
        let page = serve.get("/").await.text();
        assert!(
            page.contains("node-a: available; node-b: authentication_failure"),
            "the page names the disagreement: {page}"
        );

        // node-b goes away: the next checks are node-a's alone again.
        agent_b.kill();
        let text = serve
            .wait_metrics("node-b's departure", |t| {
                value(t, "pullwatch_agents_connected") == Some(1.0)
                    && value(t, &web("available")) == Some(1.0)
                    && value(t, &image_nodes(&image, "authentication_failure")) == Some(0.0)
            })
            .await;
        assert_eq!(value(&text, &image_nodes(&image, "available")), Some(1.0));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_killed_while_checking_has_its_check_moved() {
    bounded(async {
        let registry = started::open_registry().await;
        let image = push_to(&registry, "team/app", "v1", ImageFormat::Oci)
            .await
            .reference;
        let manifests = manifests_dir(&image);
        // A long interval: only an agent joining makes the reference due again.
        let serve = Serve::start(&manifests_args(&manifests, "1h"), Auth::SharedToken);
        let web = |status: &str| canonical(status, "shop", "web", &image);
        serve
            .wait_metrics("the central check", |t| {
                value(t, &web("available")) == Some(1.0)
                    && value(t, "pullwatch_checks_total{via=\"central\"}") == Some(1.0)
            })
            .await;

        // node-1's credential provider answers only after a minute: its check hangs.
        let node_1 = started::bare_node().await;
        let plugin_log = node_1.dir().join("plugin.log");
        let agent_1 = Agent::start(
            &node_1,
            Some(node_checkers::plugin_answering_after(
                &registry.host(),
                &plugin_log,
                60,
            )),
            serve.session("node-1", &serve.shared_token_file(), &[]),
        );
        agent_1.wait_connected().await;
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::fs::read_to_string(&plugin_log)
            .unwrap_or_default()
            .is_empty()
        {
            assert!(
                Instant::now() < deadline,
                "node-1 was never asked to check\n{}",
                serve.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // node-2 joins while node-1 is busy; then node-1 dies mid-check.
        let node_2 = started::bare_node().await;
        let agent_2 = serve.connect_agent(&node_2, "node-2", &[]).await;
        let killed_at = Instant::now();
        agent_1.kill();

        let text = serve
            .wait_metrics("node-2's answer", |t| {
                value(t, "pullwatch_checks_total{via=\"agents\"}") == Some(1.0)
            })
            .await;
        assert!(
            killed_at.elapsed() < Duration::from_secs(30),
            "the check moved rather than waited for node-1's plugin"
        );
        assert_eq!(value(&text, &web("available")), Some(1.0));
        assert_eq!(value(&text, &image_nodes(&image, "available")), Some(1.0));
        assert_eq!(value(&text, "pullwatch_agents_connected"), Some(1.0));
        assert_eq!(
            value(&text, "pullwatch_checks_total{via=\"central\"}"),
            Some(1.0),
            "no central fallback was needed"
        );
        let node_2_view = agent_2.render();
        assert!(
            node_2_view.contains(&format!(
                "image=\"{image}\",mode=\"resolve\",status=\"available\""
            )),
            "{node_2_view}"
        );
        assert!(
            serve
                .log()
                .contains("re-placing the task of an agent that went away"),
            "{}",
            serve.log()
        );
    })
    .await;
}

/// `--manifests` mode: a Pod manifest may name a node, but nothing is known to run
/// there, so no pull secret goes to any agent; the node's failure without the secret is
/// not the kubelet's view, and the aggregator's own check (with the secret) decides.
#[tokio::test(flavor = "multi_thread")]
async fn manifests_mode_sends_no_pull_secret_to_agents() {
    bounded(async {
        let (registry, image) = private_registry().await;
        let dir = tempfile::tempdir().unwrap();
        let docs = [
            serde_json::to_value(secret_dockerconfigjson(
                "shop",
                "regcred",
                &registry.host(),
                USER,
                PASSWORD,
            ))
            .unwrap(),
            serde_json::to_value(with_pull_secrets(deployment("shop", "web", &[&image]), &["regcred"]))
                .unwrap(),
            serde_json::json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "web-1", "namespace": "shop"},
                "spec": {"nodeName": "node-a", "imagePullSecrets": [{"name": "regcred"}],
                         "containers": [{"name": "c0", "image": image}]}
            }),
        ];
        for (i, doc) in docs.iter().enumerate() {
            std::fs::write(dir.path().join(format!("{i}.json")), doc.to_string()).unwrap();
        }
        let serve = Serve::start(
            &manifests_args(&dir, "2s"),
            Auth::SharedToken,
        );
        let node_a = started::bare_node().await;
        let agent = serve.connect_agent(&node_a, "node-a", &[]).await;
        let failing_alone = node_check_status("runtime", &image, "authentication_failure");
        let web = canonical("available", "shop", "web", &image);
        let pod = format!(
            "k8s_image_availability_exporter_available{{container=\"c0\",image=\"{image}\",kind=\"pod\",name=\"web-1\",namespace=\"shop\"}} "
        );
        let text = serve
            .wait_metrics("node-a's answer and the central check after it", |t| {
                agent.render().contains(&failing_alone)
                    && value(t, "pullwatch_checks_total{via=\"central\"}").unwrap_or(0.0) >= 2.0
            })
            .await;
        // The agent never saw the secret, however often it checked.
        assert!(!agent.render().contains("secret/"), "{}", agent.render());
        assert_eq!(value(&text, &web), Some(1.0), "{text}");
        assert_eq!(value(&text, &pod), Some(1.0), "{text}");
        assert_eq!(value(&text, "pullwatch_checks_total{via=\"agents\"}"), None);
        assert!(!text.contains("pullwatch_image_nodes{"), "an inconclusive answer is no node view");
    })
    .await;
}

/// A ReplicaSet's pod of `shop/web` on `node`.
fn web_pod(api: &TestApiServer, name: &str, image: &str, node: &str) -> Pod {
    let owner = api
        .get::<k8s_openapi::api::apps::v1::ReplicaSet>("shop", "web-5d8f")
        .unwrap();
    let mut p = with_owner(pod("shop", name, &[image]), &owner);
    if let Some(spec) = p.spec.as_mut() {
        spec.node_name = Some(node.to_string());
    }
    p
}

/// Cluster mode, agents authenticated by TokenReview: the workload's pull secret is
/// sent to the node running its pod and to no other, and follows the pod when it moves.
#[tokio::test(flavor = "multi_thread")]
async fn pull_secrets_go_only_to_the_node_running_the_workload() {
    bounded(async {
        let (registry, image) = private_registry().await;
        let api = TestApiServer::start().await.unwrap();
        api.apply(&namespace("shop", &[])).unwrap();
        api.apply(&secret_dockerconfigjson(
            "shop",
            "regcred",
            &registry.host(),
            USER,
            PASSWORD,
        ))
        .unwrap();
        let web = api
            .apply(&with_pull_secrets(
                deployment("shop", "web", &[&image]),
                &["regcred"],
            ))
            .unwrap();
        // The Deployment's ReplicaSet: its pods are the Deployment's.
        api.apply(&with_owner(
            with_pull_secrets(replicaset("shop", "web-5d8f", &[&image]), &["regcred"]),
            &web,
        ))
        .unwrap();
        api.apply(&web_pod(&api, "web-5d8f-x1", &image, "node-a"))
            .unwrap();
        // One node per zone, so both check: serve reads the zone from the Node objects
        // (the agents send no labels).
        let audience = "pullwatch-agents";
        two_zoned_nodes_with_agent_tokens(&api, audience);
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = api.kubeconfig(dir.path()).unwrap();
        let serve = Serve::start(
            &[kubeconfig_args(&kubeconfig), zone_groups()].concat(),
            Auth::TokenReview(audience),
        );
        let web = |status: &str| canonical(status, "shop", "web", &image);
        // Central check, with the secret: available.
        serve
            .wait_metrics("the central check", |t| {
                value(t, &web("available")) == Some(1.0)
            })
            .await;

        // Neither node has credentials of its own.
        let [(_node_a, agent_a), (_node_b, agent_b)] = serve.connect_token_agents(dir.path()).await;
        assert!(api.token_reviews() >= 2);

        let secret_source = "secret/shop/regcred";
        let a_has = |status: &str| node_check_status(secret_source, &image, status);
        let b_alone = node_check_status("runtime", &image, "authentication_failure");
        let text = serve
            .wait_metrics("both nodes' answers", |t| {
                value(t, &image_nodes(&image, "available")) == Some(1.0)
                    && agent_a.render().contains(&a_has("available"))
                    && agent_b.render().contains(&b_alone)
            })
            .await;
        // node-a pulled with the workload's secret; node-b, which runs no pod of it,
        // got none and failed with its own keyring. That failure is not what its
        // kubelet would see (it would have the pod's secret): the image stays
        // available and node-b is not counted as disagreeing.
        assert!(
            !agent_b.render().contains(secret_source),
            "{}",
            agent_b.render()
        );
        assert_eq!(value(&text, &web("available")), Some(1.0));
        assert_eq!(
            value(&text, &image_nodes(&image, "authentication_failure")),
            Some(0.0)
        );
        // Nodes are watched once: the inventory's watch (platforms) also gives the hub
        // the zones both nodes were checked in.
        assert_eq!(api.open_watches(Some("nodes")), 1, "one watch of Nodes");
        assert!(value(&text, "pullwatch_checks_total{via=\"agents\"}").unwrap_or(0.0) >= 1.0);

        // The pod moves to node-b: from now on the secret goes there, and not to node-a.
        assert!(api.delete::<Pod>("shop", "web-5d8f-x1"));
        api.apply(&web_pod(&api, "web-5d8f-x2", &image, "node-b"))
            .unwrap();
        let b_has = node_check_status(secret_source, &image, "available");
        let a_alone = node_check_status("runtime", &image, "authentication_failure");
        serve
            .wait_metrics("the secret to follow the pod", |_| {
                agent_b.render().contains(&b_has) && agent_a.render().contains(&a_alone)
            })
            .await;
        let text = serve.metrics().await;
        assert_eq!(value(&text, &web("available")), Some(1.0));
        assert!(!text.contains(PASSWORD) && !serve.log().contains(PASSWORD));
        assert!(
            !serve.log().contains("token-node-a"),
            "tokens stay out of logs"
        );
    })
    .await;
}

#[tokio::test]
async fn serve_refuses_agent_flags_it_cannot_honour() {
    bounded(async {
        let manifests = manifests_dir("reg.invalid/app:1");
        let base = [
            "serve".to_string(),
            "--manifests".into(),
            manifests.path().display().to_string(),
            "--bind-address".into(),
            "127.0.0.1:0".into(),
            "--agent-listen".into(),
            "127.0.0.1:0".into(),
        ];
        for (extra, expected) in [
            (vec![], "agents must authenticate"),
            (
                vec![
                    "--agent-shared-token-file=/nonexistent/token".to_string(),
                    "--agent-insecure-plaintext-tokens-for-testing-only".into(),
                ],
                "--agent-shared-token-file /nonexistent/token",
            ),
            // Tokens only over TLS.
            (
                vec!["--agent-shared-token-file=/etc/hostname".to_string()],
                "only accepted over TLS",
            ),
            // TokenReview: only the agents' own service account.
            (
                vec![
                    "--agent-token-audience=pullwatch".to_string(),
                    "--agent-insecure-plaintext-tokens-for-testing-only".into(),
                ],
                "--agent-service-account",
            ),
            (
                vec![
                    "--agent-tls-cert=/nonexistent/cert".into(),
                    "--agent-shared-token-file=/etc/hostname".into(),
                ],
                "--agent-tls-key",
            ),
            // Files that cannot be read are named with their flag.
            (
                vec![
                    "--agent-tls-cert=/nonexistent/cert".into(),
                    "--agent-tls-key=/nonexistent/key".into(),
                    "--agent-shared-token-file=/etc/hostname".into(),
                ],
                "--agent-tls-cert /nonexistent/cert",
            ),
        ] {
            let output = tokio::time::timeout(
                Duration::from_secs(30),
                tokio::process::Command::new(BIN)
                    .args(&base)
                    .args(&extra)
                    .env_remove("KUBECONFIG")
                    .stdin(Stdio::null())
                    .output(),
            )
            .await
            .expect("serve exits")
            .unwrap();
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert_eq!(output.status.code(), Some(2), "{extra:?}: {stderr}");
            assert!(stderr.contains(expected), "{extra:?}: {stderr}");
        }
    })
    .await;
}

/// The image's tag is re-pushed while a node holds the old image: checks dispatched by
/// the aggregator report the move (agent metric), the canonical status stays
/// `available`, and the node still holds the old digest with no layer downloaded.
#[tokio::test(flavor = "multi_thread")]
async fn a_moved_tag_is_reported_through_the_aggregator_and_never_pulled() {
    bounded(async {
        let registry = started::open_registry().await;
        let v1 = push_to(&registry, "app/web", "v1", ImageFormat::Oci).await;
        let v2 = push_to(&registry, "app/web", "v2", ImageFormat::Oci).await;
        let image = v1.reference.clone();
        let node = started::bare_node().await;
        // The kubelet pulled v1 when the pod started.
        let cri = node_checkers::cri_client(&node, None);
        cri.pull_image(&image, None).await.unwrap();
        let held = || async {
            cri.image_status(&image)
                .await
                .unwrap()
                .map(|i| i.repo_digests)
                .unwrap_or_default()
        };
        let held_before = held().await;
        assert!(
            held_before.iter().any(|d| d.ends_with(&v1.digest)),
            "{held_before:?}"
        );

        registry.move_tag("app/web", "v2", "v1").await.unwrap();
        let log_start = registry.log().len();
        let manifests = manifests_dir(&image);
        let serve = Serve::start(&manifests_args(&manifests, "2s"), Auth::SharedToken);
        let agent = serve.connect_agent(&node, "node-a", &[]).await;
        let text = serve
            .wait_metrics("the node's answer", |t| {
                value(t, "pullwatch_checks_total{via=\"agents\"}").unwrap_or(0.0) >= 1.0
                    && value(t, &canonical("available", "shop", "web", &image)) == Some(1.0)
            })
            .await;
        promtool_check_metrics(&text).unwrap();
        let node_view = agent.render();
        assert!(
            node_view.contains(&format!(
                "pullwatch_agent_image_tag_moved{{image=\"{image}\"}} 1"
            )),
            "{node_view}"
        );
        assert!(
            node_view.contains(&node_check_status("runtime", &image, "available")),
            "a moved tag is resolved, never pulled: {node_view}"
        );
        assert_eq!(held().await, held_before, "the node's tag was re-pointed");
        let log = registry.log()[log_start..].to_string();
        // The agent's walk of the pull path reads the new config and the first byte of
        // each layer (a 1-byte ranged GET); nothing downloads a layer, and the runtime
        // (containerd) is never asked for the new image.
        let current = registry.get_manifest("app/web", "v1").await.unwrap();
        let current: serde_json::Value = serde_json::from_slice(&current.body).unwrap();
        let config = current["config"]["digest"].as_str().unwrap().to_string();
        let downloads: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("\"GET /v2/") && l.contains("/blobs/"))
            .filter(|l| !l.contains("\" 206 1 ") && !l.contains(config.as_str()))
            .collect();
        assert!(downloads.is_empty(), "layers were downloaded:\n{log}");
        assert!(
            !log.lines().any(|l| l.contains("containerd/")),
            "the runtime was asked for something:\n{log}"
        );
        assert!(
            !log.lines()
                .any(|l| l.contains(&format!("/manifests/{}", v2.digest))
                    && l.contains("containerd/")),
            "the runtime was asked for the new manifest:\n{log}"
        );
    })
    .await;
}

/// Issue 10: with `--image-mirror`, namespaces `a` and `b` share one check key (the
/// mirrored reference) while their own pull secrets for the original differ. Namespace
/// a's secret goes to the node running a's pod and never to the node running only b's.
#[tokio::test(flavor = "multi_thread")]
async fn with_mirrors_a_namespace_secret_reaches_only_its_own_nodes() {
    bounded(async {
        let (registry, image) = private_registry().await;
        let api = TestApiServer::start().await.unwrap();
        let pod_on = |ns: &str, node: &str| {
            let mut p = pod(ns, &format!("app-{node}"), &[&image]);
            if let Some(spec) = p.spec.as_mut() {
                spec.node_name = Some(node.to_string());
                spec.image_pull_secrets =
                    Some(vec![k8s_openapi::api::core::v1::LocalObjectReference {
                        name: "regcred".into(),
                    }]);
            }
            p
        };
        for (ns, password, node) in [
            ("a", PASSWORD, "node-a"),
            ("b", "another-password", "node-b"),
        ] {
            api.apply(&namespace(ns, &[])).unwrap();
            api.apply(&secret_dockerconfigjson(
                ns,
                "regcred",
                &registry.host(),
                USER,
                password,
            ))
            .unwrap();
            api.apply(&with_pull_secrets(
                deployment(ns, "app", &[&image]),
                &["regcred"],
            ))
            .unwrap();
            api.apply(&pod_on(ns, node)).unwrap();
        }
        let audience = "pullwatch-agents";
        two_zoned_nodes_with_agent_tokens(&api, audience);
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = api.kubeconfig(dir.path()).unwrap();
        // The original's repository is mirrored to a closed port: one check key for both
        // namespaces (no credentials match the mirror).
        let original = image
            .rsplit_once('/')
            .map(|(repo, _)| repo.to_string())
            .unwrap();
        let serve = Serve::start(
            &[
                kubeconfig_args(&kubeconfig),
                zone_groups(),
                vec![format!("--image-mirror={original}=127.0.0.1:1/mirror")],
            ]
            .concat(),
            Auth::TokenReview(audience),
        );
        let [(_node_a, agent_a), (_node_b, agent_b)] = serve.connect_token_agents(dir.path()).await;
        let a_has = format!(
            "pullwatch_agent_check_status{{credential_source=\"secret/a/regcred\",image=\"{image}\""
        );
        serve
            .wait_metrics("node-a's check with a's secret, and node-b's own", |_| {
                agent_a.render().contains(&a_has)
                    && agent_b.render().contains("pullwatch_agent_check_status{")
            })
            .await;
        // Let a few more passes run: b's node never gets a's secret.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let b = agent_b.render();
        assert!(!b.contains("secret/a/"), "a's secret reached node-b:\n{b}");
        assert!(b.contains("credential_source=\"runtime\""), "{b}");
    })
    .await;
}

/// Docker Hub's pull quota, announced by a proxy in front of a real registry on every
/// manifest answer: the aggregator's central checks export it per registry and follow
/// it; an agent (auto mode: it resolves the image it does not hold through its route)
/// exports its node's and reports it, and the aggregator's node series follows; both
/// show in `/api/v1/images` and on the page; the node's series go with its agent and
/// the registry's with the last workload using it. Checks send `HEAD`, which does not
/// spend the quota; the pull-path walk spends one manifest `GET` per new digest and
/// vantage point (its documents are cached by digest), none in steady state.
#[tokio::test(flavor = "multi_thread")]
async fn a_registry_pull_quota_is_exported_for_the_aggregator_and_each_node() {
    bounded(async {
        let registry = started::open_registry().await;
        push_to(&registry, "team/app", "v1", ImageFormat::Oci).await;
        let proxy = QuotaProxy::start(registry.addr(), 100).await.unwrap();
        proxy.set_remaining(76);
        let host = proxy.host();
        let image = format!("{host}/team/app:v1");
        let manifests = manifests_dir(&image);
        let serve = Serve::start(&manifests_args(&manifests, "2s"), Auth::SharedToken);
        let central =
            |name: &str| format!("pullwatch_registry_ratelimit_{name}{{registry=\"{host}\"}} ");
        // 76, less the one pull the first walk spent fetching the manifest by digest.
        // The quota is seen at that GET, the status once the walk below it is done.
        let text = serve
            .wait_metrics("the aggregator's quota series and the check", |t| {
                value(t, &central("remaining")) == Some(75.0)
                    && value(t, &canonical("available", "shop", "web", &image)).is_some()
            })
            .await;
        assert_eq!(proxy.manifest_requests().0, 1, "one GET by digest, once");
        assert_eq!(value(&text, &central("limit")), Some(100.0), "{text}");
        assert_eq!(
            value(&text, &central("window_seconds")),
            Some(QUOTA_WINDOW_SECONDS as f64),
            "{text}"
        );
        assert_eq!(
            value(&text, &canonical("available", "shop", "web", &image)),
            Some(1.0)
        );
        // The gauge follows the latest answer.
        proxy.set_remaining(42);
        serve
            .wait_metrics("the aggregator's quota to follow", |t| {
                value(t, &central("remaining")) == Some(42.0)
            })
            .await;

        let node = started::bare_node().await;
        let agent = serve.connect_agent(&node, "node-q", &[]).await;
        proxy.set_remaining(7);
        // The agent's own walk spends one pull for the digest it had not seen (before or
        // after the reset to 7): the node's series follows the proxy's latest answer.
        let node_series = |name: &str| {
            format!(
                "pullwatch_node_registry_ratelimit_{name}{{node=\"node-q\",registry=\"{host}\"}} "
            )
        };
        let text = serve
            .wait_metrics("the node's quota on the aggregator", |t| {
                proxy.manifest_requests().0 == 2
                    && value(t, &node_series("remaining")) == Some(proxy.remaining() as f64)
            })
            .await;
        let left = proxy.remaining();
        assert!(left == 6 || left == 7, "{left}");
        assert_eq!(value(&text, &node_series("limit")), Some(100.0), "{text}");
        let agent_text = agent.render();
        let on_agent = |name: &str| {
            format!("pullwatch_agent_registry_ratelimit_{name}{{registry=\"{host}\"}} ")
        };
        assert_eq!(
            value(&agent_text, &on_agent("remaining")),
            Some(left as f64),
            "{agent_text}"
        );
        assert_eq!(
            value(&agent_text, &on_agent("limit")),
            Some(100.0),
            "{agent_text}"
        );
        assert_eq!(
            value(&agent_text, &on_agent("window_seconds")),
            Some(QUOTA_WINDOW_SECONDS as f64),
            "{agent_text}"
        );
        assert!(
            agent_text.contains(&format!(
                "image=\"{image}\",mode=\"resolve\",status=\"available\""
            )),
            "{agent_text}"
        );

        // Results with reasons carry the quota per registry and vantage point.
        let api = serve.get("/api/v1/images").await;
        let json: serde_json::Value = serde_json::from_slice(&api.body).unwrap();
        let quotas = json["registries"].as_array().unwrap();
        assert_eq!(quotas.len(), 1, "{json}");
        assert_eq!(quotas[0]["registry"], host.as_str());
        assert_eq!(quotas[0]["central"]["limit"], 100, "{json}");
        // Docker's docker-ratelimit-source: whose quota it is (the proxy names the IP).
        assert_eq!(quotas[0]["central"]["source"], "127.0.0.1", "{json}");
        assert_eq!(quotas[0]["nodes"][0]["node"], "node-q", "{json}");
        assert_eq!(quotas[0]["nodes"][0]["remaining"], left, "{json}");
        assert_eq!(
            quotas[0]["nodes"][0]["window_seconds"],
            QUOTA_WINDOW_SECONDS
        );
        let page = serve.get("/").await.text();
        let low = page
            .lines()
            .find(|l| l.starts_with("<tr class=\"quota low\"") && l.contains("node node-q"))
            .unwrap_or_else(|| panic!("no low quota row for node-q:\n{page}"));
        assert!(
            low.contains(&format!("<td>{left}</td><td>100</td><td>6h</td>")),
            "{low}"
        );
        // Checks ask with HEAD, which on Docker Hub spends nothing; the walks spent one
        // GET each (aggregator, node) and none since.
        let (gets, heads) = proxy.manifest_requests();
        assert_eq!(
            gets, 2,
            "manifest GETs beyond one per digest and vantage point"
        );
        assert!(heads >= 3, "{heads} HEADs");
        assert_eq!(proxy.remaining(), left);

        // The node's series go with its agent.
        agent.kill();
        serve
            .wait_metrics("the node's quota to go with its agent", |t| {
                !t.contains("pullwatch_node_registry_ratelimit_")
            })
            .await;
        // The registry's go with the last workload using it.
        let direct = format!("{}/team/app:v1", registry.host());
        std::fs::write(
            manifests.path().join("web.json"),
            std::fs::read_to_string(manifests.path().join("web.json"))
                .unwrap()
                .replace(&image, &direct),
        )
        .unwrap();
        let text = serve
            .wait_metrics("the registry's quota to go with the registry", |t| {
                value(t, &canonical("available", "shop", "web", &direct)) == Some(1.0)
                    && !t.contains("pullwatch_registry_ratelimit_")
            })
            .await;
        assert!(!text.contains(&host), "{text}");
    })
    .await;
}
