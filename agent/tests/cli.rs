//! `pullwatch-agent check` as a process: output contract, exit codes, flags from the
//! environment, against a real containerd and registry.

use std::process::Output;
use std::time::Duration;

use pullwatch_testbench::started;
use pullwatch_testbench::{ImageFormat, hermetic_command, output_within, push_to, stdout_json};

const BINARY: &str = env!("CARGO_BIN_EXE_pullwatch-agent");

/// Runs the agent with a hermetic HOME and working dir (the kubelet's docker config
/// search path includes both), bounded in time.
async fn run(home: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = hermetic_command(BINARY, home);
    command.args(args);
    for (k, v) in env {
        command.env(k, v);
    }
    output_within(&mut command, Duration::from_secs(60)).await
}

#[tokio::test(flavor = "multi_thread")]
async fn check_command_contract() {
    let registry = started::open_registry().await;
    let image = push_to(&registry, "team/app", "v1", ImageFormat::Oci).await;
    let node = started::bare_node().await;
    let home = tempfile::tempdir().unwrap();
    let kubelet = home.path().join("kubelet");
    let kubelet = kubelet.to_str().unwrap();
    let hosts = node.hosts_dir();
    let hosts = hosts.to_str().unwrap();
    let endpoint = node.endpoint();
    let common = [
        "--cri-endpoint",
        endpoint.as_str(),
        "--kubelet-root-dir",
        kubelet,
        "--containerd-hosts-dir",
        hosts,
        "--containerd-config",
        node.config_path().to_str().unwrap(),
    ];

    let check = |extra: &'static [&'static str]| {
        let args = [&["check", image.reference.as_str()], extra, &common[..]].concat();
        let home = home.path();
        async move { run(home, &args, &[]).await }
    };
    let output = check(&["-o", "json"]).await;
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Every field, and no other: the node does not hold the image (resolve mode), so
    // whether its tag moved is unknown.
    assert_eq!(
        stdout_json(&output),
        serde_json::json!({
            "image": image.reference,
            "status": "available",
            "mode": "resolve",
            "credential_source": "runtime",
            "reason": "",
            "digest": image.digest,
            "held_digest": null,
            "tag_moved": null,
        })
    );

    // The node holds v1; the tag moves in the registry: the JSON says so with both
    // digests, and the node keeps the old image.
    let v2 = push_to(&registry, "team/app", "v2", ImageFormat::Oci).await;
    let output = check(&["--pull-absent-images", "--keep-pulled-images", "-o", "json"]).await;
    assert_eq!(
        stdout_json(&output)["mode"],
        "pull",
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    registry.move_tag("team/app", "v2", "v1").await.unwrap();
    let output = check(&["-o", "json"]).await;
    assert_eq!(
        output.status.code(),
        Some(0),
        "a moved tag is still pullable"
    );
    let value = stdout_json(&output);
    assert_eq!(value["tag_moved"], true, "{value}");
    assert_eq!(value["digest"], v2.digest.as_str());
    assert_eq!(value["held_digest"], image.digest.as_str());
    assert_eq!(value["mode"], "resolve");
    let output = check(&["-o", "json"]).await;
    assert_eq!(
        stdout_json(&output)["held_digest"],
        image.digest.as_str(),
        "still the old image"
    );

    // Flags from the environment; an absent tag exits 1.
    let missing = format!("{}/team/app:gone", registry.host());
    let output = run(
        home.path(),
        &["check", &missing, "-o", "json"],
        &[
            ("PULLWATCH_CRI_ENDPOINT", endpoint.as_str()),
            ("PULLWATCH_MODE", "pull"),
            ("PULLWATCH_PULL_ABSENT_IMAGES", "true"),
            ("PULLWATCH_KUBELET_ROOT_DIR", kubelet),
            ("PULLWATCH_CONTAINERD_HOSTS_DIR", hosts),
        ],
    )
    .await;
    assert_eq!(output.status.code(), Some(1));
    let value = stdout_json(&output);
    assert_eq!(value["status"], "absent");
    assert_eq!(value["mode"], "pull");

    // Text output names image, status and mode.
    let mut args = vec!["check", &missing];
    args.extend(common);
    let output = run(home.path(), &args, &[]).await;
    assert_eq!(output.status.code(), Some(1));
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.starts_with(&format!("{missing} absent mode=resolve")),
        "{text}"
    );

    // Usage errors exit 2.
    for bad in [
        vec!["check"],
        vec!["check", "x", "--mode", "fetch"],
        vec!["check", "x", "--cri-endpoint", "tcp://127.0.0.1:1"],
        vec!["frobnicate"],
    ] {
        let output = run(home.path(), &bad, &[]).await;
        assert_eq!(output.status.code(), Some(2), "{bad:?}");
    }
    // A runtime that is not there: the check could not be made (exit 3), and says why.
    let output = run(
        home.path(),
        &[
            "check",
            "nginx",
            "--cri-endpoint",
            &format!("unix://{}/nothing.sock", home.path().display()),
            "-o",
            "json",
        ],
        &[],
    )
    .await;
    assert_eq!(output.status.code(), Some(3));
    let value = stdout_json(&output);
    assert_eq!(value["status"], "unknown_error");
    assert!(
        value["reason"]
            .as_str()
            .unwrap()
            .contains("runtime unreachable"),
        "{value}"
    );

    // A reader that stops reading (`check ... | head -c0`): the check's own exit
    // status, not a panic on the closed pipe.
    let mut command = hermetic_command(BINARY, home.path());
    command
        .args([&["check", missing.as_str(), "-o", "json"][..], &common[..]].concat())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = command.spawn().unwrap();
    drop(child.stdout.take());
    let output = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// Issue 10: `run` never presents its token to an `http://` aggregator; only the loudly
/// named test flag allows it. Refused at start with exit 2, before any connection.
#[tokio::test(flavor = "multi_thread")]
async fn run_refuses_to_send_its_token_over_plain_http() {
    let home = tempfile::tempdir().unwrap();
    let token = home.path().join("token");
    std::fs::write(&token, "t0ken-plain").unwrap();
    // Something listening, so a connection attempt would be seen.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let output = run(
        home.path(),
        &[
            "run",
            &format!("--aggregator=http://127.0.0.1:{port}"),
            &format!("--token-file={}", token.display()),
            "--node-name=n",
            "--metrics-address=127.0.0.1:0",
            "--cri-endpoint=unix:///nonexistent/cri.sock",
        ],
        &[],
    )
    .await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("plain http://"), "{stderr}");
    assert!(
        stderr.contains("--insecure-plaintext-token-for-testing-only"),
        "{stderr}"
    );
    assert!(!stderr.contains("t0ken-plain"), "{stderr}");
    assert!(
        matches!(listener.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the agent connected to the plain-text aggregator"
    );
}

/// A configuration that can never work fails at start with exit 2 and says why,
/// instead of retrying forever: https without --aggregator-ca, a CA file that is not
/// there or holds no certificate (empty, a private key, anything else: every
/// handshake would fail with "UnknownIssuer", which blames the aggregator's
/// certificate), a URL that is not one.
#[tokio::test(flavor = "multi_thread")]
async fn run_fails_at_start_on_a_configuration_that_cannot_work() {
    let home = tempfile::tempdir().unwrap();
    let missing_ca = home.path().join("no-such-ca.crt");
    let empty_ca = pullwatch_testbench::write_file(home.path(), "empty-ca.crt", "");
    let key_as_ca = pullwatch_testbench::write_file(
        home.path(),
        "ca.key",
        "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIJ+DYvh6SEqVTm50DFtMDoQikTmiCqirVv9mWG9qfSnF\n-----END PRIVATE KEY-----\n",
    );
    let text_as_ca = pullwatch_testbench::write_file(home.path(), "notes.txt", "not a PEM file\n");
    let ca_flag = |path: &std::path::Path| {
        vec![
            "--aggregator=https://127.0.0.1:1".to_string(),
            format!("--aggregator-ca={}", path.display()),
        ]
    };
    for (flags, says) in [
        (
            vec!["--aggregator=https://127.0.0.1:1".to_string()],
            "needs --aggregator-ca",
        ),
        (ca_flag(&missing_ca), "--aggregator-ca"),
        (ca_flag(&missing_ca), "no-such-ca.crt"),
        (ca_flag(&empty_ca), "empty-ca.crt holds no PEM certificate"),
        (ca_flag(&key_as_ca), "ca.key holds no PEM certificate"),
        (ca_flag(&text_as_ca), "notes.txt holds no PEM certificate"),
        (
            vec!["--aggregator=ftp://agg".to_string()],
            "invalid --aggregator",
        ),
    ] {
        let mut args = vec![
            "run".to_string(),
            "--node-name=n".to_string(),
            "--metrics-address=127.0.0.1:0".to_string(),
            "--cri-endpoint=unix:///nonexistent/cri.sock".to_string(),
        ];
        args.extend(flags);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let started = std::time::Instant::now();
        let output = run(home.path(), &args, &[]).await;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        assert!(started.elapsed() < Duration::from_secs(20), "no retrying");
    }
    // An empty node name (NODE_NAME set from nothing): every Register is refused.
    for (flags, env) in [
        (vec!["--node-name= "], vec![]),
        (vec![], vec![("NODE_NAME", "")]),
    ] {
        let mut args = vec![
            "run",
            "--aggregator=http://127.0.0.1:1",
            "--metrics-address=127.0.0.1:0",
            "--cri-endpoint=unix:///nonexistent/cri.sock",
        ];
        args.extend(flags);
        let output = run(home.path(), &args, &env).await;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?} {env:?}: {stderr}");
        assert!(stderr.contains("--node-name"), "{args:?} {env:?}: {stderr}");
        assert!(stderr.contains("NODE_NAME"), "{args:?} {env:?}: {stderr}");
    }
}

/// `pullwatch-agent run` whose session is refused (no aggregator listens), so its
/// metrics port is what runs; its pid and that port, once `/metrics` answers.
async fn agent_serving_metrics(
    home: &std::path::Path,
) -> (tokio::process::Child, u32, std::net::SocketAddr) {
    use pullwatch_testbench::{TestCa, free_port};
    let ca = TestCa::new().unwrap();
    let token = pullwatch_testbench::write_file(home, "token", "t0ken");
    let metrics: std::net::SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let agent = hermetic_command(BINARY, home)
        .args([
            "run",
            &format!("--aggregator=https://127.0.0.1:{}", free_port()),
            &format!("--aggregator-ca={}", ca.ca_cert_path().display()),
            &format!("--token-file={}", token.display()),
            "--node-name=n",
            &format!("--metrics-address={metrics}"),
            "--mode=resolve",
            "--runtime-dialect=containerd",
            "--cri-endpoint=unix:///nonexistent/cri.sock",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = agent.id().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !scrape(metrics).await {
        assert!(
            std::time::Instant::now() < deadline,
            "no /metrics within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (agent, pid, metrics)
}

async fn scrape(metrics: std::net::SocketAddr) -> bool {
    pullwatch_testbench::http_request(metrics, http::Method::GET, "/metrics", &[], Vec::new())
        .await
        .is_ok_and(|r| r.status == 200)
}

/// glibc gives each thread that finds the heap locked an arena of its own, and each
/// keeps what it freed; `run` caps them at one (without the cap, concurrent scrapes
/// made two or more on a 2-core machine).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[tokio::test(flavor = "multi_thread")]
async fn run_keeps_one_heap_arena_under_concurrent_scrapes() {
    let home = tempfile::tempdir().unwrap();
    let (mut agent, pid, metrics) = agent_serving_metrics(home.path()).await;
    let scrapers: Vec<_> = (0..8)
        .map(|_| {
            tokio::spawn(async move {
                let mut answered = 0;
                for _ in 0..30 {
                    if scrape(metrics).await {
                        answered += 1;
                    }
                }
                answered
            })
        })
        .collect();
    let mut answered = 0;
    for scraper in scrapers {
        answered += scraper.await.unwrap();
    }
    assert_eq!(answered, 240, "every scrape answered");
    assert_eq!(pullwatch_testbench::extra_malloc_arenas(pid).unwrap(), 0);
    agent.kill().await.unwrap();
}

/// A scraper that accepts gzip (Prometheus does) gets the exposition gzip-encoded, the
/// same series as the plain one; either answer says it varies with Accept-Encoding.
#[tokio::test(flavor = "multi_thread")]
async fn metrics_are_gzip_encoded_for_scrapers_that_accept_it() {
    let home = tempfile::tempdir().unwrap();
    let (mut agent, _, metrics) = agent_serving_metrics(home.path()).await;
    let get = |accept: &'static [(&'static str, &'static str)]| async move {
        pullwatch_testbench::http_request(
            metrics,
            http::Method::GET,
            "/metrics",
            accept,
            Vec::new(),
        )
        .await
        .unwrap()
    };
    let plain = get(&[]).await;
    let gzipped = get(&[("accept-encoding", "gzip")]).await;
    let refused = get(&[("accept-encoding", "gzip;q=0, identity")]).await;
    for answer in [&plain, &gzipped, &refused] {
        assert_eq!(answer.status, 200);
        assert_eq!(answer.header("vary"), Some("Accept-Encoding"));
    }
    assert_eq!(plain.header("content-encoding"), None);
    assert_eq!(refused.header("content-encoding"), None);
    assert_eq!(gzipped.header("content-encoding"), Some("gzip"));
    assert_eq!(&gzipped.body[..2], [0x1f, 0x8b], "a gzip member");
    // The same series (their values, such as uptime, move between scrapes).
    let series = |text: String| -> Vec<String> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| {
                l.rsplit_once(' ')
                    .map_or(l, |(series, _)| series)
                    .to_string()
            })
            .collect()
    };
    let plain_series = series(plain.text());
    assert!(
        plain_series.contains(&"pullwatch_agent_aggregator_connected".to_string()),
        "{plain_series:?}"
    );
    assert_eq!(series(gzipped.decoded_text().unwrap()), plain_series);
    agent.kill().await.unwrap();
}

/// The metrics port answers as the aggregator's does: `HEAD` like `GET` without a body
/// (HTTP requires both of a general-purpose server; load balancers and `curl -I` probe
/// with it), 405 with `Allow` for other methods, 404 for other paths.
#[tokio::test(flavor = "multi_thread")]
async fn metrics_port_answers_head_and_refuses_other_methods() {
    let home = tempfile::tempdir().unwrap();
    let (mut agent, _, metrics) = agent_serving_metrics(home.path()).await;
    let ask = |method: http::Method, path: &'static str| async move {
        pullwatch_testbench::http_request(metrics, method, path, &[], Vec::new())
            .await
            .unwrap()
    };
    for path in ["/metrics", "/healthz"] {
        let get = ask(http::Method::GET, path).await;
        let head = ask(http::Method::HEAD, path).await;
        assert_eq!((get.status, head.status), (200, 200), "{path}");
        assert!(head.body.is_empty(), "{path}");
        assert_eq!(
            head.header("content-type"),
            get.header("content-type"),
            "{path}"
        );
        for method in [http::Method::POST, http::Method::PUT, http::Method::DELETE] {
            let refused = ask(method.clone(), path).await;
            assert_eq!(refused.status, 405, "{method} {path}");
            assert_eq!(
                refused.header("allow"),
                Some("GET, HEAD"),
                "{method} {path}"
            );
        }
    }
    assert_eq!(ask(http::Method::GET, "/nope").await.status, 404);
    assert_eq!(ask(http::Method::HEAD, "/nope").await.status, 404);
    agent.kill().await.unwrap();
}
