//! Hostile clients against the real binaries: no client can exhaust a listener, no
//! encoding of a secret gets out, no name reaches a terminal raw.
//!
//! Each attack runs against `pullwatch-aggregator` / `pullwatch-agent` processes with
//! the limits an operator would face (a memory cap, a low fd limit) and asserts: the
//! process lives, its RSS grows by less than 64 MiB, slow connections are closed
//! within the header timeout, `/metrics` answers in under 2 s throughout, and the
//! hostile password is in no output in any encoding.
//!
//! Needs the binaries: `cargo build -p pullwatch-aggregator -p pullwatch-agent`, then
//! `cargo test -p pullwatch-testbench --test hostile_clients`. The same attacks with
//! figures: `cargo bench -p pullwatch-testbench --bench hostile_clients`.

#[path = "../hostile/clients.rs"]
mod clients;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine;
use clients::{
    Process, big_inventory, closed_within, get_text, serve_manifests, slow_connection, timed_get,
    unread_get, wait_ready, zero_window_h2,
};
use pullwatch_testbench::{
    Containerd, ContainerdOptions, EchoMode, EchoRegistry, HOSTILE_PASSWORD, TestCa,
    assert_no_hostile_secret, free_port, output_within, workspace_binary, write_file,
};
use tokio::net::TcpStream;

/// Runs `pullwatch-aggregator check -f FILE ARGS...` with only `HOME` (at `home`) in
/// its environment, asserts it exits 1 (something is not available); its (stdout,
/// stderr).
async fn check_finds_problems(file: &Path, home: &Path, args: &[&str]) -> (String, String) {
    let mut command =
        tokio::process::Command::new(workspace_binary("pullwatch-aggregator").unwrap());
    command
        .args(["check", "-f"])
        .arg(file)
        .args(args)
        .env_clear()
        .env("HOME", home)
        .kill_on_drop(true);
    let out = output_within(&mut command, Duration::from_secs(120)).await;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    (stdout, stderr)
}

/// RSS growth allowed per attack.
const MAX_RSS_GROWTH_KIB: u64 = 64 * 1024;
/// `/metrics` must answer within this during every attack.
const METRICS_DEADLINE: Duration = Duration::from_secs(2);
/// The limits the processes run with in these tests (short, so the tests are).
const HEADER_TIMEOUT: Duration = Duration::from_secs(2);
const SEND_TIMEOUT: Duration = Duration::from_secs(3);
const IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// How late a close may come after its deadline (the watchdog's tick, scheduling).
const CLOSE_SLACK: Duration = Duration::from_millis(1500);

fn limit_flags() -> Vec<String> {
    vec![
        format!("--header-read-timeout={}s", HEADER_TIMEOUT.as_secs()),
        format!("--send-timeout={}s", SEND_TIMEOUT.as_secs()),
        format!("--idle-timeout={}s", IDLE_TIMEOUT.as_secs()),
        "--http2-max-streams=16".to_string(),
    ]
}

/// The aggregator's agent gRPC listener: a free loopback port, TLS with a certificate
/// from a throw-away CA, agents admitted by a shared token written under `dir`.
struct AgentListener {
    ca: TestCa,
    token: std::path::PathBuf,
    addr: SocketAddr,
    /// The `serve` flags that open it.
    flags: Vec<String>,
}

impl AgentListener {
    fn new(dir: &std::path::Path, shared_token: &str) -> AgentListener {
        let ca = TestCa::new().unwrap();
        let (cert, key) = ca.issue_server_cert(&[]).unwrap();
        let token = write_file(dir, "token", shared_token);
        let port = free_port();
        let flags = vec![
            format!("--agent-listen=127.0.0.1:{port}"),
            format!("--agent-tls-cert={}", cert.display()),
            format!("--agent-tls-key={}", key.display()),
            format!("--agent-shared-token-file={}", token.display()),
        ];
        AgentListener {
            ca,
            token,
            addr: format!("127.0.0.1:{port}").parse().unwrap(),
            flags,
        }
    }
}

/// What an attack did to the process: peak RSS growth, worst `/metrics` latency.
#[derive(Debug, Default)]
struct Watch {
    base_kib: u64,
    peak_kib: u64,
    worst_metrics: Duration,
    samples: u32,
}

impl Watch {
    fn new(process: &Process) -> Watch {
        let base = process.rss_kib();
        Watch {
            base_kib: base,
            peak_kib: base,
            ..Watch::default()
        }
    }

    /// One sample: RSS, liveness, and a `/metrics` answer within the deadline.
    async fn sample(&mut self, process: &mut Process, metrics: SocketAddr, what: &str) {
        assert!(
            process.alive(),
            "{what}: the process died:\n{}",
            process.log()
        );
        self.peak_kib = self.peak_kib.max(process.rss_kib());
        let (status, took) = timed_get(metrics, "/metrics").await;
        assert_eq!(
            status,
            Some(200),
            "{what}: /metrics did not answer ({took:?})"
        );
        assert!(took < METRICS_DEADLINE, "{what}: /metrics took {took:?}");
        self.worst_metrics = self.worst_metrics.max(took);
        self.samples += 1;
    }

    fn assert_bounded(&self, what: &str) {
        let growth = self.peak_kib.saturating_sub(self.base_kib);
        eprintln!(
            "{what}: RSS {} -> peak {} KiB (+{growth} KiB), worst /metrics {:?} over {} samples",
            self.base_kib, self.peak_kib, self.worst_metrics, self.samples
        );
        assert!(
            growth < MAX_RSS_GROWTH_KIB,
            "{what}: RSS grew by {growth} KiB"
        );
        assert!(self.samples > 0, "{what}: never sampled");
    }
}

/// Attack 1 and 2 of the issue: against a 20k-container inventory under a 1 GiB
/// address-space cap, h2c connections with a zero window flooding streams of
/// `/api/v1/images` and `/`, then 100 HTTP/1.1 connections that never read them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unread_responses_and_stream_floods_stay_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let inventory = big_inventory(dir.path(), 2_000);
    let mut flags = vec![
        "--check-interval=1h".to_string(),
        "--registry-timeout=2s".to_string(),
    ];
    flags.extend(limit_flags());
    let (mut aggregator, addr) =
        serve_manifests(dir.path(), &inventory, &flags, Some(1024), Some(1 << 30));
    wait_ready(addr, &mut aggregator).await;
    // Warm: each view once in full, so the shared snapshot and the allocator's pools
    // exist before the baseline.
    let (_, json) = get_text(addr, "/api/v1/images").await;
    assert!(json.len() > 1_000_000, "a big answer: {} bytes", json.len());
    let view: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(view["images"].as_array().unwrap().len(), 500);
    let (_, page) = get_text(addr, "/").await;
    assert!(page.ends_with("</html>\n"), "the page streams to its end");
    let _ = get_text(addr, "/metrics").await;

    // h2c: 8 connections, each asking for 200 streams with a zero window.
    let mut watch = Watch::new(&aggregator);
    let mut drivers = Vec::new();
    let mut held = Vec::new();
    for i in 0..8 {
        let path = if i % 2 == 0 { "/api/v1/images" } else { "/" };
        let (opened, driver, responses) = zero_window_h2(addr, path, 200).await;
        assert!(
            (1..=16).contains(&opened),
            "HTTP/2 streams per connection are capped at 16: {opened} opened"
        );
        drivers.push((Instant::now(), driver, None));
        held.push(responses);
        watch.sample(&mut aggregator, addr, "h2 flood").await;
    }
    // The server drops each once it has taken nothing for the send timeout.
    let deadline = SEND_TIMEOUT + CLOSE_SLACK;
    loop {
        let mut open = 0;
        for (opened, driver, closed) in &mut drivers {
            if closed.is_none() && driver.is_finished() {
                let ended = driver.await.unwrap();
                *closed = Some(ended.duration_since(*opened));
            }
            if closed.is_none() {
                open += 1;
                assert!(
                    opened.elapsed() < deadline + Duration::from_secs(1),
                    "a zero-window h2 connection is still open {:?} after its streams",
                    opened.elapsed()
                );
            }
        }
        if open == 0 {
            break;
        }
        watch.sample(&mut aggregator, addr, "h2 flood").await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(held);
    watch.assert_bounded("h2 zero-window stream flood");
    let slowest = drivers
        .iter()
        .filter_map(|(_, _, c)| *c)
        .max()
        .unwrap_or_default();
    eprintln!("h2 zero-window connections closed at most {slowest:?} after their last stream");
    assert!(slowest < deadline, "{slowest:?}");

    // HTTP/1.1: 100 connections with a tiny receive buffer that never read.
    let mut watch = Watch::new(&aggregator);
    let started = Instant::now();
    let mut stalled = Vec::new();
    for i in 0..100 {
        stalled.push(unread_get(addr, i).await.unwrap());
        if i % 20 == 0 {
            watch.sample(&mut aggregator, addr, "unread HTTP/1.1").await;
        }
    }
    while started.elapsed() < SEND_TIMEOUT {
        watch.sample(&mut aggregator, addr, "unread HTTP/1.1").await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    watch.assert_bounded("100 HTTP/1.1 connections that never read");
    // Each was closed by now: reading ends (the rest of the body is not coming).
    tokio::time::sleep(CLOSE_SLACK).await;
    let checked_at = started.elapsed();
    let mut slowest = Duration::ZERO;
    for stream in &mut stalled {
        let took = closed_within(stream, Duration::from_secs(4)).await;
        let took = took.unwrap_or_else(|| {
            panic!(
                "an unread connection is still open {:?} after its request",
                started.elapsed()
            )
        });
        slowest = slowest.max(took);
    }
    eprintln!(
        "unread HTTP/1.1 connections: all 100 closed when checked {checked_at:?} after the first request (send timeout {SEND_TIMEOUT:?}; draining took at most {slowest:?})"
    );
    assert!(aggregator.alive());
    let log = aggregator.log();
    assert!(!log.contains("memory allocation"), "{log}");
}

/// Attack 3: slow (half-sent headers, half a TLS hello) and idle connections on each
/// port under a 256-fd limit: the aggregator's HTTP port, its agent gRPC port (TLS),
/// and the agent's metrics port. Slow ones are closed within the header timeout, and
/// `/metrics` and `/healthz` keep answering while 300 are held.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_and_idle_connections_on_every_port() {
    let dir = tempfile::tempdir().unwrap();
    let inventory = big_inventory(dir.path(), 20);
    let listener = AgentListener::new(dir.path(), "shared-agent-token-123");
    let (ca, token, grpc) = (&listener.ca, &listener.token, listener.addr);
    let mut flags = listener.flags.clone();
    flags.extend([
        "--check-interval=1h".to_string(),
        "--registry-timeout=2s".to_string(),
    ]);
    flags.extend(limit_flags());
    let (mut aggregator, http) = serve_manifests(dir.path(), &inventory, &flags, Some(256), None);
    wait_ready(http, &mut aggregator).await;

    // An agent reporting to it, whose metrics port is attacked too.
    let node = Containerd::start(ContainerdOptions::default())
        .await
        .unwrap();
    let metrics_port = free_port();
    let metrics: SocketAddr = format!("127.0.0.1:{metrics_port}").parse().unwrap();
    let kubelet = dir.path().join("kubelet");
    std::fs::create_dir_all(&kubelet).unwrap();
    let mut agent_args = node.agent_run_args(grpc, ca.ca_cert_path(), token, &kubelet, metrics);
    agent_args.push("--node-name=node-a".to_string());
    agent_args.extend(limit_flags());
    let mut agent = Process::start("pullwatch-agent", &agent_args, dir.path(), Some(256), None);
    let deadline = Instant::now() + Duration::from_secs(30);
    while timed_get(metrics, "/healthz").await.0 != Some(200) {
        assert!(agent.alive(), "{}", agent.log());
        assert!(Instant::now() < deadline, "{}", agent.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Its session is registered before the attack.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, text) = get_text(http, "/metrics").await;
        if text.contains("pullwatch_agents_connected 1") {
            break;
        }
        assert!(Instant::now() < deadline, "{}", agent.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let targets = [
        (
            "aggregator HTTP",
            http,
            http,
            &b"GET /metrics HTTP/1.1\r\nHost"[..],
        ),
        // Half a TLS ClientHello record.
        (
            "aggregator agent gRPC",
            grpc,
            http,
            &b"\x16\x03\x01\x02\x00\x01"[..],
        ),
        (
            "agent metrics",
            metrics,
            metrics,
            &b"GET /metrics HTTP/1.1\r\nHost"[..],
        ),
    ];
    for (what, target, probe, partial) in targets {
        let process = if probe == metrics {
            &mut agent
        } else {
            &mut aggregator
        };
        let mut watch = Watch::new(process);
        let started = Instant::now();
        // Each connection is watched from its own task: the time from opening to the
        // server closing it (reading takes nothing from the attack: the server sends
        // nothing before a complete request).
        let mut watchers = Vec::new();
        for i in 0..300 {
            let Some(watcher) = slow_connection(target, (i % 2 == 0).then_some(partial)).await
            else {
                continue;
            };
            watchers.push(watcher);
            if i % 50 == 0 {
                watch.sample(process, probe, what).await;
                let (status, took) = timed_get(probe, "/healthz").await;
                assert_eq!(status, Some(200), "{what}: /healthz ({took:?})");
                assert!(took < METRICS_DEADLINE, "{what}: /healthz took {took:?}");
            }
        }
        assert!(
            watchers.len() >= 290,
            "{what}: only {} connected",
            watchers.len()
        );
        watch.sample(process, probe, what).await;
        let mut closes = Vec::new();
        for watcher in watchers {
            let closed = watcher.await.unwrap();
            let closed = closed.unwrap_or_else(|| panic!("{what}: a connection was never closed"));
            closes.push(closed);
        }
        watch.sample(process, probe, what).await;
        watch.assert_bounded(what);
        let latest = closes.iter().max().copied().unwrap_or_default();
        let evicted = closes.iter().filter(|c| **c < HEADER_TIMEOUT).count();
        eprintln!(
            "{what}: 300 slow and idle connections closed at most {latest:?} after opening (header timeout {HEADER_TIMEOUT:?}), {evicted} of them earlier to admit newer ones at the connection cap; attack took {:?}",
            started.elapsed()
        );
        assert!(
            latest < HEADER_TIMEOUT + CLOSE_SLACK,
            "{what}: a slow connection stayed {latest:?}"
        );
        assert!(
            evicted > 0,
            "{what}: the connection cap never evicted anyone"
        );
        let log = process.log();
        let accept_lines = log.matches("accept failed").count();
        assert!(
            accept_lines <= 3,
            "{what}: {accept_lines} accept-failure lines"
        );
    }
    // The agent's session lived through it all.
    let (_, text) = get_text(http, "/metrics").await;
    assert!(
        text.contains("pullwatch_agents_connected 1"),
        "the registered agent's session was cut"
    );
    assert!(aggregator.alive() && agent.alive());
}

fn docker_config(hosts: &[String], user: &str, password: &str) -> String {
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let auths: serde_json::Map<String, serde_json::Value> = hosts
        .iter()
        .map(|h| (h.clone(), serde_json::json!({ "auth": auth })))
        .collect();
    serde_json::json!({ "auths": auths }).to_string()
}

/// Attack: a registry and a token service that echo the credentials they get in every
/// encoding (raw, `Basic` base64 and base64 at other alignments, JSON-escaped,
/// form-encoded, the bearer token they issued), in bodies and reason phrases. Through
/// `check -o table|json|junit`, `serve`'s API, page, metrics and debug logs, and the
/// agent's reasons from containerd: the password in no encoding, anywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn echoed_credentials_never_get_out() {
    let refusing = EchoRegistry::start(EchoMode::TokenRefuses).await.unwrap();
    let issuing = EchoRegistry::start(EchoMode::TokenIssues).await.unwrap();
    let hosts = vec![refusing.host(), issuing.host()];
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("manifests");
    std::fs::create_dir_all(&manifests).unwrap();
    let config = docker_config(&hosts, "robot", HOSTILE_PASSWORD);
    let data = base64::engine::general_purpose::STANDARD.encode(&config);
    let mut images = Vec::new();
    for host in &hosts {
        for n in 0..9 {
            images.push(format!("{host}/enc{n}:v1"));
        }
        images.push(format!("{host}/all:v1"));
    }
    let containers: String = images
        .iter()
        .enumerate()
        .map(|(i, image)| format!("        - name: c{i}\n          image: \"{image}\"\n"))
        .collect();
    std::fs::write(
        manifests.join("app.yaml"),
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: regcred, namespace: tenant}}\ntype: kubernetes.io/dockerconfigjson\ndata:\n  .dockerconfigjson: {data}\n---\n\
             apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: app, namespace: tenant}}\nspec:\n  selector: {{matchLabels: {{app: a}}}}\n  template:\n    metadata: {{labels: {{app: a}}}}\n    spec:\n      imagePullSecrets: [{{name: regcred}}]\n      containers:\n{containers}---\n\
             apiVersion: v1\nkind: Secret\nmetadata: {{name: other, namespace: tenant-b}}\ntype: kubernetes.io/dockerconfigjson\ndata:\n  .dockerconfigjson: {data}\n---\n\
             apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: app, namespace: tenant-b}}\nspec:\n  selector: {{matchLabels: {{app: a}}}}\n  template:\n    metadata: {{labels: {{app: a}}}}\n    spec:\n      imagePullSecrets: [{{name: other}}]\n      containers:\n{containers}"
        ),
    )
    .unwrap();
    let mut redacted_somewhere = false;
    let mut outputs = String::new();
    for output in ["table", "json", "junit"] {
        let args = ["-o", output, "--allow-plain-http", "--log-level=debug"];
        let (stdout, stderr) = check_finds_problems(&manifests, dir.path(), &args).await;
        assert_no_hostile_secret(&format!("check -o {output}"), &stdout);
        assert_no_hostile_secret(&format!("check -o {output} log"), &stderr);
        redacted_somewhere |= stdout.contains("redacted");
        outputs.push_str(&stdout);
        if output == "json" {
            // Equal credentials in two namespaces share each check; each namespace's
            // reasons name its own secret only.
            let rows: Vec<serde_json::Value> = serde_json::from_str(&stdout).unwrap();
            for row in &rows {
                let reason = row["reason"].as_str().unwrap();
                let (own, other) = match row["namespace"].as_str().unwrap() {
                    "tenant" => ("secret/tenant/regcred", "secret/tenant-b/"),
                    _ => ("secret/tenant-b/other", "secret/tenant/"),
                };
                assert!(!reason.contains(other), "{row}");
                assert!(reason.contains(own), "{row}");
            }
            assert_eq!(rows.len(), 2 * images.len());
        }
    }
    assert!(
        redacted_somewhere,
        "no echo reached a reason: the test would prove nothing:\n{outputs}"
    );
    assert!(
        refusing.requests().iter().any(|r| r.contains("/token")),
        "{:?}",
        refusing.requests()
    );
    assert!(
        issuing.requests().len() > 10,
        "the issued token was used: {:?}",
        issuing.requests()
    );

    // serve: the API, the page, the metrics and the debug log.
    let (mut serve, addr) = serve_manifests(
        dir.path(),
        &manifests,
        &[
            "--allow-plain-http".to_string(),
            "--log-level=debug".to_string(),
        ],
        None,
        None,
    );
    wait_ready(addr, &mut serve).await;
    let (_, api) = get_text(addr, "/api/v1/images").await;
    assert!(api.contains("redacted"), "{api}");
    for path in ["/api/v1/images", "/", "/metrics"] {
        let (_, text) = get_text(addr, path).await;
        assert_no_hostile_secret(path, &text);
    }
    assert_no_hostile_secret("serve's debug log", &serve.log());
    drop(serve);

    // The agent: containerd talks to the echo servers with the node's credentials and
    // quotes what they answer.
    let node = Containerd::start(ContainerdOptions::default())
        .await
        .unwrap();
    for host in &hosts {
        node.write_hosts_toml(
            host,
            &format!("server = \"http://{host}\"\n[host.\"http://{host}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"),
        )
        .unwrap();
    }
    let kubelet = dir.path().join("kubelet");
    std::fs::create_dir_all(&kubelet).unwrap();
    std::fs::write(kubelet.join("config.json"), &config).unwrap();
    let agent = workspace_binary("pullwatch-agent").unwrap();
    let mut agent_redacted = false;
    for image in &images {
        for mode in ["pull", "resolve"] {
            let out = tokio::time::timeout(
                Duration::from_secs(60),
                tokio::process::Command::new(&agent)
                    .args(["check", image, "-o", "json", "--log-level=debug"])
                    .arg(format!("--mode={mode}"))
                    .arg("--pull-absent-images")
                    .arg(format!("--cri-endpoint={}", node.endpoint()))
                    .arg(format!("--kubelet-root-dir={}", kubelet.display()))
                    .arg(format!(
                        "--containerd-hosts-dir={}",
                        node.hosts_dir().display()
                    ))
                    .arg(format!(
                        "--containerd-config={}",
                        node.config_path().display()
                    ))
                    .env_clear()
                    .env("HOME", dir.path())
                    .current_dir(dir.path())
                    .kill_on_drop(true)
                    .output(),
            )
            .await
            .unwrap()
            .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_no_hostile_secret(&format!("agent check {image} --mode={mode}"), &stdout);
            assert_no_hostile_secret(&format!("agent check {image} log"), &stderr);
            agent_redacted |= stdout.contains("redacted");
        }
    }
    assert!(agent_redacted, "no echo reached an agent's reason");
}

/// Attack: control characters and bidi controls in an image string (which the API
/// server accepts): the table shows them as `\u{…}`, the text log escapes them (no
/// forged line), and no colour codes go to a stderr that is not a terminal.
#[tokio::test(flavor = "multi_thread")]
async fn control_characters_reach_no_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = write_file(
        dir.path(),
        "evil.yaml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: evil, namespace: ns}\nspec:\n  selector: {matchLabels: {app: a}}\n  template:\n    metadata: {labels: {app: a}}\n    spec:\n      containers:\n        - name: c\n          image: \"reg.io/app:v1\\e[2K\\r\\aFAKE LINE\\n2026-01-01T00:00:00Z ERROR forged\\u202Eevil\"\n",
    );
    let args = ["-o", "table", "--log-level=debug"];
    let (stdout, stderr) = check_finds_problems(&manifest, dir.path(), &args).await;
    for raw in ['\u{1b}', '\r', '\u{7}', '\u{202E}'] {
        assert!(
            !stdout.contains(raw),
            "{raw:?} raw in the table:\n{stdout:?}"
        );
        assert!(!stderr.contains(raw), "{raw:?} raw in the log:\n{stderr:?}");
    }
    assert_eq!(stdout.lines().count(), 2, "a header and one row:\n{stdout}");
    assert!(
        stdout.contains("\\u{1b}[2K\\u{d}\\u{7}FAKE LINE\\u{a}"),
        "{stdout}"
    );
    // Every log line is a real one: it starts with this run's timestamp, none with
    // the forged one. The only other lines are `check`'s progress, which carries
    // counts and nothing of the input.
    assert!(!stderr.is_empty(), "debug logging says something");
    let progress = |line: &str| {
        line.strip_prefix("checked ")
            .and_then(|rest| rest.strip_suffix(" in flight"))
            .is_some_and(|counts| {
                counts.split([' ', ',']).all(|word| {
                    ["", "of", "references"].contains(&word) || word.parse::<u64>().is_ok()
                })
            })
    };
    for line in stderr.lines().filter(|line| !progress(line)) {
        assert!(
            line.starts_with("20") && !line.starts_with("2026-01-01T00:00:00Z"),
            "a forged or foreign log line: {line:?}"
        );
    }
}

/// Attack: 1,000 unauthenticated agent sessions on one connection: every one counted,
/// logged once per interval with the count.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refused_sessions_are_counted_not_flooded() {
    use pullwatch::proto::agent_service_client::AgentServiceClient;
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

    let dir = tempfile::tempdir().unwrap();
    let inventory = big_inventory(dir.path(), 1);
    let listener = AgentListener::new(dir.path(), "the-real-token-456");
    let (mut aggregator, http) =
        serve_manifests(dir.path(), &inventory, &listener.flags, None, None);
    wait_ready(http, &mut aggregator).await;
    let ca = &listener.ca;
    let channel = Endpoint::from_shared(format!("https://{}", listener.addr))
        .unwrap()
        .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca.ca_pem())))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut refused = 0;
    let attempts: Vec<_> = (0..1000)
        .map(|_| {
            let mut client = AgentServiceClient::new(channel.clone());
            async move {
                let mut request = tonic::Request::new(futures::stream::pending::<
                    pullwatch::proto::AgentMessage,
                >());
                request
                    .metadata_mut()
                    .insert("authorization", "Bearer wrong".parse().unwrap());
                client.session(request).await.is_err()
            }
        })
        .collect();
    for refusal in futures::future::join_all(attempts).await {
        refused += usize::from(refusal);
    }
    assert_eq!(refused, 1000);
    let (_, metrics) = get_text(http, "/metrics").await;
    let counted: f64 = metrics
        .lines()
        .find(|l| l.starts_with("pullwatch_agent_sessions_refused_total{reason=\"invalid_token\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{metrics}"));
    assert_eq!(counted, 1000.0, "every refusal is counted");
    let log = aggregator.log();
    let lines = log.matches("agent session refused").count();
    assert!(
        (1..=2).contains(&lines),
        "{lines} refusal lines for 1,000 refusals:\n{log}"
    );
    assert!(log.contains("count=1"), "{log}");
}

/// Attack: more connections than file descriptors (a connection cap set above the fd
/// limit): accepts fail with "too many open files", which closes the connection
/// longest without a request, backs off, and is logged once per interval with a
/// count; `/metrics` still answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn out_of_descriptors_backs_off_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let inventory = big_inventory(dir.path(), 2);
    let flags = [
        "--check-interval=1h".to_string(),
        "--max-connections=4096".to_string(),
        // Idle connections stay: only the fd limit stops them.
        "--header-read-timeout=60s".to_string(),
        "--idle-timeout=60s".to_string(),
        "--registry-timeout=2s".to_string(),
    ];
    let (mut aggregator, addr) = serve_manifests(dir.path(), &inventory, &flags, Some(96), None);
    wait_ready(addr, &mut aggregator).await;
    let mut idle = Vec::new();
    for _ in 0..200 {
        if let Ok(Ok(stream)) =
            tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr)).await
        {
            idle.push(stream);
        }
    }
    let started = Instant::now();
    let (status, took) = timed_get(addr, "/metrics").await;
    assert_eq!(status, Some(200), "/metrics at the fd limit ({took:?})");
    eprintln!("/metrics answered in {took:?} with 200 idle connections against 96 fds");
    assert!(aggregator.alive());
    tokio::time::sleep(Duration::from_secs(1).saturating_sub(started.elapsed())).await;
    let log = aggregator.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("accept failed"))
        .collect();
    assert!(!lines.is_empty(), "the fd limit was never reached:\n{log}");
    assert!(
        lines.len() <= 2,
        "{} accept-failure lines:\n{log}",
        lines.len()
    );
    assert!(lines[0].contains("count="), "{}", lines[0]);
    drop(idle);
}
