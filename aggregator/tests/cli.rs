//! The `pullwatch-aggregator` binary end to end: `check` against real registries with
//! pull secrets from manifests, exit codes, progress and `--timeout` against a registry
//! that never answers, and `serve` with its HTTP endpoints and metrics (validated by the
//! real promtool).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use pullwatch_testbench::{
    CANARY_PASSWORD, ImageFormat, PrometheusServer, Registry, SilentServer, assert_no_canary,
    free_port, http_request, promtool_check_metrics, push_to, write_file,
};
use pullwatch_testbench::{assert_reason_contains, started};

const BIN: &str = env!("CARGO_BIN_EXE_pullwatch-aggregator");

fn run(args: &[&str], envs: &[(&str, &str)]) -> Output {
    Command::new(BIN)
        .args(args)
        .envs(envs.iter().copied())
        .env_remove("PULLWATCH_LOG")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// `check -f <path> -o json --allow-plain-http` with `extra` arguments and `envs`.
fn check_json(path: &str, extra: &[&str], envs: &[(&str, &str)]) -> Output {
    let args = ["check", "-f", path, "-o", "json", "--allow-plain-http"];
    run(&[&args, extra].concat(), envs)
}

fn secret_yaml(namespace: &str, name: &str, host: &str, user: &str, password: &str) -> String {
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let config = format!(r#"{{"auths":{{"{host}":{{"auth":"{auth}"}}}}}}"#);
    let data = base64::engine::general_purpose::STANDARD.encode(config);
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: {namespace}}}\ntype: kubernetes.io/dockerconfigjson\ndata:\n  .dockerconfigjson: {data}\n"
    )
}

fn deployment_yaml(
    namespace: &str,
    name: &str,
    images: &[&str],
    pull_secret: Option<&str>,
) -> String {
    let containers: Vec<String> = images
        .iter()
        .enumerate()
        .map(|(i, image)| format!("        - name: c{i}\n          image: \"{image}\"\n"))
        .collect();
    let secrets = pull_secret
        .map(|s| format!("      imagePullSecrets: [{{name: {s}}}]\n"))
        .unwrap_or_default();
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n  selector: {{matchLabels: {{app: {name}}}}}\n  template:\n    metadata: {{labels: {{app: {name}}}}}\n    spec:\n{secrets}      containers:\n{}",
        containers.concat()
    )
}

struct Fixture {
    open: Registry,
    private: Registry,
    public_image: String,
    private_image: String,
}

async fn fixture() -> Fixture {
    let open = started::open_registry().await;
    let private = started::private_registry("bob", CANARY_PASSWORD).await;
    let public_image = push_to(&open, "web/frontend", "v1", ImageFormat::Oci)
        .await
        .reference;
    let private_image = push_to(&private, "corp/billing", "2.0", ImageFormat::DockerV2S2)
        .await
        .reference;
    Fixture {
        open,
        private,
        public_image,
        private_image,
    }
}

fn rows(output: &Output) -> Vec<BTreeMap<String, String>> {
    let stdout = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

fn status_of<'a>(rows: &'a [BTreeMap<String, String>], name: &str, container: &str) -> &'a str {
    rows.iter()
        .find(|r| r["name"] == name && r["container"] == container)
        .map(|r| r["status"].as_str())
        .unwrap_or_else(|| panic!("no row for {name}/{container}: {rows:?}"))
}

#[tokio::test]
async fn check_reports_every_container_with_kubelet_credentials() {
    let f = fixture().await;
    let dir = tempfile::tempdir().unwrap();
    let private_host = f.private.host();
    let manifests = [
        deployment_yaml("shop", "web", &[&f.public_image, &format!("{}/web/frontend:nope", f.open.host())], None),
        secret_yaml("billing", "regcred", &private_host, "bob", CANARY_PASSWORD),
        deployment_yaml("billing", "with-secret", &[&f.private_image], Some("regcred")),
        // No imagePullSecrets on the pod: the service account's secret is used.
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: default, namespace: billing}\nimagePullSecrets: [{name: regcred}]\n".to_string(),
        deployment_yaml("billing", "via-service-account", &[&f.private_image], None),
        // Another namespace: the billing secret must not be borrowed.
        deployment_yaml("other", "no-secret", &[&f.private_image], Some("regcred")),
        deployment_yaml("other", "typo", &["Not A Valid Image"], None),
    ];
    write_file(&dir, "all.yaml", manifests.join("---\n"));

    let output = run(
        &["check", "-f", dir.path().to_str().unwrap(), "-o", "json"],
        &[("PULLWATCH_ALLOW_PLAIN_HTTP", "true")],
    );
    let rows = rows(&output);
    assert_eq!(
        output.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(rows.len(), 6, "{rows:?}");
    for row in &rows {
        let keys: Vec<&str> = row.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "container",
                "image",
                "kind",
                "name",
                "namespace",
                "reason",
                "status"
            ]
        );
        assert_eq!(row["kind"], "deployment");
    }
    assert_eq!(status_of(&rows, "web", "c0"), "available");
    assert_eq!(status_of(&rows, "web", "c1"), "absent");
    assert_eq!(status_of(&rows, "with-secret", "c0"), "available");
    assert_eq!(status_of(&rows, "via-service-account", "c0"), "available");
    assert_eq!(
        status_of(&rows, "no-secret", "c0"),
        "authentication_failure"
    );
    assert_eq!(status_of(&rows, "typo", "c0"), "bad_image_format");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_no_canary("check's log", &stderr);
    assert_no_canary("check's output", &String::from_utf8_lossy(&output.stdout));
    assert!(
        stderr.contains("pull secret other/regcred not found"),
        "{stderr}"
    );

    // Only the available ones: exit 0, and the table format.
    write_file(
        &dir,
        "all.yaml",
        [
            deployment_yaml("shop", "web", &[&f.public_image], None),
            secret_yaml("billing", "regcred", &private_host, "bob", CANARY_PASSWORD),
            deployment_yaml(
                "billing",
                "with-secret",
                &[&f.private_image],
                Some("regcred"),
            ),
        ]
        .join("---\n"),
    );
    let output = run(
        &[
            "check",
            "--manifests",
            dir.path().to_str().unwrap(),
            "--allow-plain-http",
        ],
        &[],
    );
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let table = String::from_utf8_lossy(&output.stdout);
    assert_no_canary("check's log", &String::from_utf8_lossy(&output.stderr));
    assert_no_canary("check's output", &table);
    assert!(table.starts_with("NAMESPACE"), "{table}");
    assert_eq!(table.lines().count(), 3, "{table}");
    assert_eq!(table.matches("available").count(), 2, "{table}");
}

fn raw_secret_yaml(namespace: &str, name: &str, payload: &str) -> String {
    let data = base64::engine::general_purpose::STANDARD.encode(payload);
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: {namespace}}}\ntype: kubernetes.io/dockerconfigjson\ndata:\n  .dockerconfigjson: {data}\n"
    )
}

/// What the kubelet refuses is reported without asking a registry; what it accepts is
/// checked; secrets decode as the kubelet decodes them; a secret the kubelet cannot
/// parse fails the pod's pulls; --default-registry moves central checks.
#[tokio::test]
async fn references_and_pull_secrets_follow_the_kubelet() {
    let f = fixture().await;
    let dir = tempfile::tempdir().unwrap();
    let host = f.private.host();
    let port = f.private.addr().port();
    let unpadded =
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(format!("bob:{CANARY_PASSWORD}"));
    let manifests = [
        // Unpadded `auth` and an upper-case field name: the kubelet reads both.
        raw_secret_yaml(
            "k",
            "unpadded",
            &format!(r#"{{"Auths":{{"{host}":{{"AUTH":"{unpadded}","identitytoken":"x"}}}}}}"#),
        ),
        deployment_yaml("k", "unpadded", &[&f.private_image], Some("unpadded")),
        // A secret the kubelet cannot parse (the password is not a JSON string).
        raw_secret_yaml(
            "k",
            "broken",
            &format!(
                r#"{{"auths":{{"{host}":{{"username":"bob","password":{CANARY_PASSWORD}}}}}}}"#
            ),
        ),
        deployment_yaml(
            "k",
            "broken",
            &[&format!("{host}/corp/untouched:1")],
            Some("broken"),
        ),
        deployment_yaml(
            "k",
            "refused",
            &[
                &"0123abcd".repeat(8),
                &format!("{host}/corp/billing@sha1:{}", "0".repeat(40)),
                &format!("[::ffff:127.0.0.1]:{port}/corp/billing:2.0"),
                &format!("{host}/corp/billing@sha256:{}", "A".repeat(64)),
            ],
            None,
        ),
        // No registry named: checked centrally at --default-registry.
        deployment_yaml("k", "short", &["web/frontend:v1"], None),
    ];
    write_file(&dir, "all.yaml", manifests.join("---\n"));
    let output = run(
        &[
            "check",
            "-f",
            dir.path().to_str().unwrap(),
            "-o",
            "json",
            "--allow-plain-http",
            "--default-registry",
            &f.open.host(),
            "--registry-timeout",
            "1m30s",
        ],
        &[],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    let rows = rows(&output);
    assert_eq!(rows.len(), 7, "{rows:?} {stderr}");
    assert_eq!(status_of(&rows, "unpadded", "c0"), "available", "{rows:?}");
    assert_eq!(status_of(&rows, "short", "c0"), "available", "{rows:?}");
    for container in ["c0", "c1", "c2", "c3"] {
        assert_eq!(
            status_of(&rows, "refused", container),
            "bad_image_format",
            "{rows:?}"
        );
    }
    assert_eq!(status_of(&rows, "broken", "c0"), "authentication_failure");
    let broken = rows.iter().find(|r| r["name"] == "broken").unwrap();
    assert!(broken["reason"].contains("secret/k/broken"), "{broken:?}");
    // The kubelet fails before contacting the registry; so does the check. And the
    // secret's content reaches neither the output nor the log.
    assert!(!f.private.log().contains("corp/untouched"));
    assert_no_canary("check's log", &stderr);
    assert_no_canary("check's output", &String::from_utf8_lossy(&output.stdout));
}

#[tokio::test]
async fn image_mirrors_and_proxies_route_the_check() {
    let f = fixture().await;
    let dir = tempfile::tempdir().unwrap();
    // The workload names a registry that does not exist; the mirror has the image.
    let repo_and_tag = f.public_image.split_once('/').unwrap().1;
    write_file(
        &dir,
        "w.yaml",
        deployment_yaml(
            "shop",
            "mirrored",
            &[&format!("upstream.invalid/{repo_and_tag}")],
            None,
        ),
    );
    let path = dir.path().to_str().unwrap();
    let output = check_json(path, &[], &[]);
    assert_eq!(
        status_of(&rows(&output), "mirrored", "c0"),
        "registry_unavailable"
    );
    let mirror = format!("upstream.invalid={}", f.open.host());
    let output = check_json(path, &["--image-mirror", &mirror], &[]);
    assert_eq!(
        status_of(&rows(&output), "mirrored", "c0"),
        "available",
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // A mirror without the image: the reason names the repository asked, not the
    // workload's.
    let empty_mirror = format!("upstream.invalid={}/elsewhere", f.open.host());
    let output = check_json(path, &["--image-mirror", &empty_mirror], &[]);
    let found = rows(&output);
    assert_eq!(status_of(&found, "mirrored", "c0"), "absent");
    let repo = repo_and_tag.split(':').next().unwrap();
    let reason = &found.iter().find(|r| r["name"] == "mirrored").unwrap()["reason"];
    assert!(
        reason.contains(&format!(
            "{}/elsewhere/{repo}: manifest not found",
            f.open.host()
        )),
        "{reason}"
    );

    // HTTP_PROXY: the plain-HTTP request for a host only the proxy can reach goes
    // through the proxy (here the open registry itself, which answers absolute-form
    // requests); NO_PROXY exempts the host again.
    let proxy = format!("http://{}", f.open.host());
    let env = [
        ("HTTP_PROXY", proxy.as_str()),
        ("http_proxy", proxy.as_str()),
    ];
    let output = run(
        &["check", "-f", path, "-o", "json", "--allow-plain-http"],
        &env,
    );
    assert_eq!(
        status_of(&rows(&output), "mirrored", "c0"),
        "available",
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let env = [
        ("HTTP_PROXY", proxy.as_str()),
        ("http_proxy", proxy.as_str()),
        ("NO_PROXY", "upstream.invalid"),
        ("no_proxy", "upstream.invalid"),
    ];
    let output = run(
        &["check", "-f", path, "-o", "json", "--allow-plain-http"],
        &env,
    );
    assert_eq!(
        status_of(&rows(&output), "mirrored", "c0"),
        "registry_unavailable"
    );
}

/// `check` with a registry that accepts connections and never answers: progress lines
/// on a stderr that is no terminal (every second here, `--progress-interval` being the
/// tests' knob; 10 s by default), and at `--timeout` the references not checked yet are
/// printed as such and the exit status is 3; `-q` silences the progress.
#[tokio::test(flavor = "multi_thread")]
async fn check_reports_progress_and_ends_at_its_timeout() {
    let open = started::open_registry().await;
    let image = push_to(&open, "web/frontend", "v1", ImageFormat::Oci)
        .await
        .reference;
    let silent = SilentServer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let stuck = [
        format!("{}/team/api:1", silent.host()),
        format!("{}/team/worker:1", silent.host()),
    ];
    write_file(
        &dir,
        "all.yaml",
        deployment_yaml("shop", "web", &[&image, &stuck[0], &stuck[1]], None),
    );
    let check = |extra: &[&str]| {
        let mut command = tokio::process::Command::new(BIN);
        command
            .args(["check", "-f", dir.path().to_str().unwrap(), "-o", "json"])
            .args(extra)
            .env("PULLWATCH_ALLOW_PLAIN_HTTP", "true")
            .env_remove("PULLWATCH_LOG")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        command
    };

    let started = Instant::now();
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        check(&["--timeout", "3s", "--progress-interval", "1s"]).output(),
    )
    .await
    .expect("check did not end")
    .unwrap();
    let elapsed = started.elapsed();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(3), "{stderr}");
    // It ends at its timeout, not at the registry's 10 s deadline nor later.
    assert!(
        elapsed >= Duration::from_secs(3) && elapsed < Duration::from_secs(9),
        "{elapsed:?}"
    );
    let progress: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("checked ") && l.ends_with(" in flight"))
        .collect();
    assert!(progress.len() >= 2, "{stderr}");
    for line in &progress {
        assert!(line.contains(" of 3 references, "), "{line}");
    }
    // The open registry answered; the two checks at the silent one are still in flight.
    assert!(
        progress.contains(&"checked 1 of 3 references, 2 in flight"),
        "{stderr}"
    );
    let printed = rows(&output);
    assert_eq!(printed.len(), 3, "{printed:?}");
    for row in &printed {
        if row["image"] == image {
            assert_eq!(row["status"], "available", "{row:?}");
        } else {
            assert!(stuck.contains(&row["image"]), "{row:?}");
            assert_eq!(row["status"], "unknown_error", "{row:?}");
            assert_eq!(row["reason"], "not checked within --timeout", "{row:?}");
        }
    }

    // -q: the same outcome without a word of progress.
    let output = check(&["--timeout", "1s", "--progress-interval", "1s", "-q"])
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(3), "{stderr}");
    assert!(!stderr.contains("references,"), "{stderr}");
    assert_eq!(rows(&output).len(), 3);
}

/// On a terminal (a pseudo-terminal from util-linux's `script`) the progress is a bar,
/// redrawn in place, and it stops where the run stopped.
#[tokio::test(flavor = "multi_thread")]
async fn check_draws_a_progress_bar_on_a_terminal() {
    let script = pullwatch_testbench::require_tool("script").unwrap();
    let silent = SilentServer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let stuck = format!("{}/team/api:1", silent.host());
    write_file(
        &dir,
        "all.yaml",
        deployment_yaml("shop", "web", &[&stuck, "Not A Valid Image"], None),
    );
    // stderr alone goes to the terminal; stdout (the results) to a file.
    let results = dir.path().join("results.json");
    let command = format!(
        "{BIN} check -f {} -o json --timeout 1s --log-level error > {}",
        dir.path().join("all.yaml").display(),
        results.display()
    );
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(script)
            .args(["-qec", &command, "/dev/null"])
            .env_remove("PULLWATCH_LOG")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("check did not end")
    .unwrap();
    let terminal = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(3), "{terminal}");
    assert!(
        terminal.contains("\u{1b}[2K"),
        "not redrawn in place: {terminal:?}"
    );
    let last = terminal
        .split(['\r', '\n'])
        .rfind(|l| l.contains("references ["))
        .unwrap_or_else(|| panic!("no bar: {terminal:?}"));
    assert!(
        last.contains("checked 1 of 2 references [") && last.contains("1 in flight"),
        "{last:?}"
    );
    assert!(
        !terminal.contains("references, "),
        "a line where a bar belongs: {terminal:?}"
    );
    let printed: Vec<BTreeMap<String, String>> =
        serde_json::from_str(&std::fs::read_to_string(&results).unwrap()).unwrap();
    assert_eq!(printed.len(), 2, "{printed:?}");
}

#[test]
fn usage_and_input_errors_exit_2_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let broken = write_file(
        &dir,
        "broken.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: [unclosed\n",
    );
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["check".into(), "-f".into(), broken.display().to_string()],
            "broken.yaml:",
        ),
        (
            vec![
                "check".into(),
                "-f".into(),
                dir.path().join("missing").display().to_string(),
            ],
            "cannot read",
        ),
        (
            vec![
                "check".into(),
                "-f".into(),
                broken.display().to_string(),
                "--ignored-images".into(),
                "(".into(),
            ],
            "--ignored-images",
        ),
        (
            vec![
                "check".into(),
                "-f".into(),
                broken.display().to_string(),
                "--image-mirror".into(),
                "nonsense".into(),
            ],
            "--image-mirror",
        ),
        (
            vec![
                "check".into(),
                "-f".into(),
                broken.display().to_string(),
                "--capath".into(),
                "/nonexistent/ca.pem".into(),
            ],
            "cannot read CA",
        ),
        (
            // A file that holds no certificate: the message names the flag, not
            // only a path that could be a manifest's.
            vec![
                "check".into(),
                "-f".into(),
                broken.display().to_string(),
                "--capath".into(),
                broken.display().to_string(),
            ],
            "--capath ",
        ),
        (
            vec!["check".into(), "--no-such-flag".into()],
            "unexpected argument",
        ),
        (
            vec![
                "serve".into(),
                "--kubeconfig".into(),
                "/nonexistent/kubeconfig".into(),
            ],
            "cannot read kubeconfig /nonexistent/kubeconfig",
        ),
        (
            vec![
                "serve".into(),
                "-f".into(),
                broken.display().to_string(),
                "--kubeconfig".into(),
                "x".into(),
            ],
            "cannot be used with",
        ),
    ];
    for (args, expected) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let output = run(&args, &[]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(expected),
            "{args:?}: expected {expected:?} in {stderr}"
        );
    }
    // The YAML error names the line of the file.
    let output = run(&["check", "-f", broken.to_str().unwrap()], &[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("broken.yaml:4") || stderr.contains("broken.yaml:5"),
        "{stderr}"
    );
}

/// `check ... | head`: the reader goes away before the results are all written. The
/// check still ends with its own exit status, not a panic ("failed printing to stdout:
/// Broken pipe", 101); progress on a closed stderr neither.
#[test]
fn check_whose_reader_stops_reading_exits_with_its_status() {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    // More rows than a pipe holds (64 KiB), so the writer meets the closed pipe.
    let images: Vec<String> = (0..2_000)
        .map(|i| format!("Not A Valid Image {i}"))
        .collect();
    let images: Vec<&str> = images.iter().map(String::as_str).collect();
    let path = write_file(
        &dir,
        "many.yaml",
        deployment_yaml("shop", "web", &images, None),
    );
    for format in ["table", "json", "junit"] {
        // stderr to a file: a pipe nobody reads would hold the check up (2,000 log lines).
        let log = dir.path().join(format!("{format}.log"));
        let mut child = Command::new(BIN)
            .args(["check", "-f", path.to_str().unwrap(), "-o", format])
            .args(["--progress-interval", "10ms"])
            .env_remove("PULLWATCH_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let mut first = [0u8; 16];
        stdout.read_exact(&mut first).unwrap();
        drop(stdout);
        let status = child.wait().unwrap();
        let stderr = std::fs::read_to_string(&log).unwrap();
        assert_eq!(status.code(), Some(1), "{format}: {stderr}");
        assert!(!stderr.contains("panicked"), "{format}: {stderr}");
    }
    // stderr closed too (`check 2>&- | head`): progress lines are dropped, not a panic.
    let output = Command::new(BIN)
        .args(["check", "-f", path.to_str().unwrap(), "-o", "json"])
        .args(["--progress-interval", "10ms"])
        .env_remove("PULLWATCH_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
}

/// Runs the binary with `input` on a pipe as its stdin, for at most 30 s.
fn run_with_piped_stdin(args: &[&str], input: &str) -> Output {
    use std::io::Write;
    let mut child = Command::new(BIN)
        .args(args)
        .env_remove("PULLWATCH_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    // A reader that never reads (serve refusing at start) closes the pipe: ignore that.
    let _ = stdin.write_all(input.as_bytes());
    drop(stdin);
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

/// `helm template ... | pullwatch-aggregator check -f /dev/stdin`: a pipe is read as a
/// file (it was refused with "No such file or directory"). `serve`, which re-reads its
/// manifests, refuses one at start, saying why: read again it would be empty.
#[test]
fn check_reads_manifests_from_a_pipe_and_serve_refuses_one() {
    let manifests = format!(
        "---\n# Source: chart/templates/web.yaml\n{}",
        deployment_yaml("shop", "web", &["Not A Valid Image"], None)
    );
    let output = run_with_piped_stdin(&["check", "-f", "/dev/stdin", "-o", "json"], &manifests);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    let rows = rows(&output);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(status_of(&rows, "web", "c0"), "bad_image_format");
    // `-f -` as kubectl has it.
    let dash = run_with_piped_stdin(&["check", "-f", "-", "-o", "json"], &manifests);
    assert_eq!(dash.status.code(), Some(1));
    assert_eq!(self::rows(&dash), rows);

    let output = run_with_piped_stdin(
        &["serve", "-f", "-", "--bind-address", "127.0.0.1:0"],
        &manifests,
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("/dev/stdin is not a regular file or a directory"),
        "{stderr}"
    );
}

async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    match http_request(addr, http::Method::GET, path, &[], Vec::new()).await {
        Ok(response) => (response.status, response.text()),
        Err(_) => (0, String::new()),
    }
}

async fn wait_for<F: AsyncFn() -> bool>(what: &str, timeout: Duration, condition: F) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if condition().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

/// A child process killed (and reaped) on drop.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `serve --manifests PATH` on a free loopback port, rechecking every second, once
/// ready.
async fn serve(manifests: &Path, extra: &[&str]) -> (KillOnDrop, SocketAddr) {
    let port = free_port();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let child = Command::new(BIN)
        .args(["serve", "--manifests", manifests.to_str().unwrap()])
        .args(["--bind-address", &format!("127.0.0.1:{port}")])
        .args(["--check-interval", "1s", "--allow-plain-http"])
        .args(extra)
        .env_remove("PULLWATCH_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let guard = KillOnDrop(child);
    wait_for("/healthz", Duration::from_secs(20), async || {
        get(addr, "/healthz").await.0 == 200
    })
    .await;
    wait_for("/readyz", Duration::from_secs(20), async || {
        get(addr, "/readyz").await.0 == 200
    })
    .await;
    (guard, addr)
}

fn series<'a>(metrics: &'a str, name: &str) -> Vec<&'a str> {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .collect()
}

#[tokio::test]
async fn serve_exports_canonical_metrics_and_follows_manifest_changes() {
    let f = fixture().await;
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("workloads.yaml");
    let write = |with_api: bool| {
        let mut docs = vec![
            deployment_yaml("shop", "web", &[&f.public_image], None),
            deployment_yaml("billing", "invoices", &[&f.private_image], None),
        ];
        if with_api {
            docs.push(deployment_yaml(
                "shop",
                "api",
                &[&format!("{}/web/frontend:missing", f.open.host())],
                None,
            ));
        }
        std::fs::write(&manifest, docs.join("---\n")).unwrap();
    };
    write(true);
    let (mut guard, addr) = serve(&manifest, &["--legacy-metric-names=true"]).await;
    let pid = guard.0.id();
    let (status, metrics) = get(addr, "/metrics").await;
    assert_eq!(status, 200);
    promtool_check_metrics(&metrics).unwrap();

    // Exactly one of the eight status gauges is 1 for each container reference.
    let mut ones: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for status in pullwatch::CheckStatus::ALL.map(pullwatch::CheckStatus::as_str) {
        let lines = series(
            &metrics,
            &format!("k8s_image_availability_exporter_{status}"),
        );
        assert_eq!(lines.len(), 3, "{status}: {lines:?}");
        for line in lines.iter().filter(|l| l.ends_with(" 1")) {
            let name = line
                .split("name=\"")
                .nth(1)
                .unwrap()
                .split('"')
                .next()
                .unwrap();
            ones.entry(name.to_string()).or_default().push(status);
        }
    }
    assert_eq!(ones["web"], ["available"]);
    assert_eq!(ones["api"], ["absent"]);
    assert_eq!(ones["invoices"], ["authentication_failure"]);
    assert!(metrics.contains(&format!(
        "k8s_image_availability_exporter_deployment_absent{{container=\"c0\",deployment=\"api\",image=\"{}/web/frontend:missing\",namespace=\"shop\"}} 1",
        f.open.host()
    )), "{metrics}");
    assert!(metrics.contains("k8s_image_availability_exporter_completed_rechecks_total"));
    assert!(metrics.contains("pullwatch_check_duration_seconds_bucket"));

    // The workload goes away: its series go with it at the next pass.
    write(false);
    wait_for(
        "api series to disappear",
        Duration::from_secs(20),
        async || {
            let (_, metrics) = get(addr, "/metrics").await;
            !metrics.contains("name=\"api\"")
                && !metrics.contains("deployment=\"api\"")
                && metrics.contains("name=\"web\"")
        },
    )
    .await;

    // SIGTERM: a clean exit.
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
    // Not ready from the first moment of shutdown, while still answering.
    let mut draining = None;
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if draining.is_none() {
            let (code, body) = get(addr, "/readyz").await;
            if code == 503 {
                draining = Some(body);
            }
        }
        if let Some(status) = guard.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "serve did not exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status:?}");
    let draining = draining.expect("/readyz never answered 503 during shutdown");
    assert!(draining.contains("shutting down"), "{draining}");
}

/// A real Prometheus scrapes the exposition gzip-encoded (its scraper always asks for
/// gzip) and stores exactly what a plain scrape says, scrape after scrape: the first
/// at a version (parts compressed and kept) and those after (the kept parts).
#[tokio::test(flavor = "multi_thread")]
async fn prometheus_reads_the_gzip_exposition_as_the_plain_one() {
    let f = fixture().await;
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("workloads.yaml");
    let missing = format!("{}/web/frontend:missing", f.open.host());
    let docs = [
        deployment_yaml("shop", "web", &[&f.public_image], None),
        deployment_yaml("shop", "api", &[&missing], None),
        deployment_yaml("billing", "invoices", &[&f.private_image], None),
    ];
    std::fs::write(&manifest, docs.join("---\n")).unwrap();
    let (_guard, addr) = serve(&manifest, &["--legacy-metric-names=true"]).await;
    let prometheus = PrometheusServer::start(&[addr], Duration::from_secs(1))
        .await
        .unwrap();
    let scrapes = async || {
        let result = prometheus
            .query("count_over_time(up[1m])")
            .await
            .unwrap_or_default();
        result
            .first()
            .and_then(|sample| sample["value"][1].as_str()?.parse::<u32>().ok())
            .unwrap_or(0)
    };
    wait_for("four scrapes", Duration::from_secs(30), async || {
        scrapes().await >= 4
    })
    .await;
    let up = prometheus.query("min_over_time(up[1m])").await.unwrap();
    assert_eq!(
        up[0]["value"][1],
        "1",
        "every scrape read: {up:?}\n{}",
        prometheus.log()
    );

    let canonical = |line: &str| {
        line.starts_with("k8s_image_availability_exporter_") && !line.contains("completed_rechecks")
    };
    let (_, plain) = get(addr, "/metrics").await;
    let expected: Vec<String> = plain
        .lines()
        .filter(|line| canonical(line))
        .map(str::to_string)
        .collect();
    // 3 references x 8 statuses, in the canonical and the legacy families.
    assert_eq!(expected.len(), 3 * 8 * 2, "{plain}");
    let stored = prometheus
        .query(r#"{__name__=~"k8s_image_availability_exporter_.+"}"#)
        .await
        .unwrap();
    let mut got: Vec<String> = stored
        .iter()
        .map(|sample| {
            let labels = sample["metric"].as_object().unwrap();
            let pairs: Vec<String> = labels
                .iter()
                .filter(|(name, _)| !["__name__", "job", "instance"].contains(&name.as_str()))
                .map(|(name, value)| format!("{name}={value}"))
                .collect();
            format!(
                "{}{{{}}} {}",
                labels["__name__"].as_str().unwrap(),
                pairs.join(","),
                sample["value"][1].as_str().unwrap()
            )
        })
        .filter(|line| canonical(line))
        .collect();
    got.sort();
    let mut expected = expected;
    expected.sort();
    assert_eq!(got, expected);
}

/// The value of the unlabelled sample `name`, which must appear exactly once.
fn sample(metrics: &str, name: &str) -> f64 {
    let values: Vec<f64> = metrics
        .lines()
        .filter_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .map(|value| value.trim().parse().unwrap())
        .collect();
    assert_eq!(values.len(), 1, "{name}: {values:?}\n{metrics}");
    values[0]
}

/// The binary runs on jemalloc and says how much heap it holds: what live
/// allocations take and what the allocator keeps resident, read afresh on each scrape
/// (a scrape's own buffers are live while the next one is read).
#[tokio::test]
async fn serve_exports_the_heap_as_its_allocator_counts_it() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("workloads.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: empty\n",
    )
    .unwrap();
    let (_guard, addr) = serve(&manifest, &[]).await;
    let (status, metrics) = get(addr, "/metrics").await;
    assert_eq!(status, 200);
    promtool_check_metrics(&metrics).unwrap();
    assert!(
        metrics.contains("# TYPE pullwatch_heap_allocated_bytes gauge")
            && metrics.contains("# TYPE pullwatch_heap_resident_bytes gauge"),
        "{metrics}"
    );
    let allocated = sample(&metrics, "pullwatch_heap_allocated_bytes");
    let resident = sample(&metrics, "pullwatch_heap_resident_bytes");
    // A running server's heap: its runtimes, its tables, its listeners.
    assert!(allocated > 64.0 * 1024.0, "allocated {allocated}");
    assert!(
        resident >= allocated,
        "resident {resident} < allocated {allocated}"
    );
}

#[test]
fn example_manifests_in_the_repo_parse() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/manifests");
    let inventory = pullwatch_aggregator::inventory::manifests::load(&examples).unwrap();
    assert_eq!(inventory.workloads.len(), 5);
    assert_eq!(inventory.namespaces.len(), 1);
}

/// `--platform`: a tag whose index has no entry for a platform the workload can land on
/// is `absent`, naming the platforms; a single-platform manifest is left alone; the
/// index is fetched once per digest, and never without `--platform`.
#[tokio::test(flavor = "multi_thread")]
async fn platforms_missing_from_an_index_are_absent() {
    let registry = started::open_registry().await;
    let index = push_to(&registry, "multi/app", "v1", ImageFormat::OciIndex).await;
    let list = push_to(
        &registry,
        "multi/list",
        "v1",
        ImageFormat::DockerManifestList,
    )
    .await;
    let single = push_to(&registry, "single/app", "v1", ImageFormat::Oci).await;
    let dir = tempfile::tempdir().unwrap();
    write_file(
        &dir,
        "web.yaml",
        deployment_yaml(
            "shop",
            "web",
            &[&index.reference, &list.reference, &single.reference],
            None,
        ),
    );
    // Another workload of the same image, pinned to arm64 nodes.
    let pinned = deployment_yaml("shop", "pinned", &[&index.reference], None).replace(
        "    spec:\n",
        "    spec:\n      nodeSelector: {kubernetes.io/arch: arm64}\n",
    );
    write_file(&dir, "pinned.yaml", pinned);
    let path = dir.path().to_str().unwrap();
    let index_gets = |log: &str| {
        log.lines()
            .filter(|l| l.contains("\"GET /v2/multi/app/manifests/"))
            .count()
    };

    // Without --platform the pull path is walked for this machine's platform (as a
    // runtime here would pull it): the index and its linux/amd64 child, read once each.
    let start = registry.log().len();
    let output = check_json(path, &[], &[]);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(index_gets(&registry.log()[start..]), 2);

    let start = registry.log().len();
    let output = check_json(path, &["--platform", "linux/s390x"], &[]);
    assert_eq!(output.status.code(), Some(1));
    let found = rows(&output);
    for name in ["c0", "c1"] {
        let row = found
            .iter()
            .find(|r| r["name"] == "web" && r["container"] == name)
            .unwrap();
        assert_eq!(row["status"], "absent", "{row:?}");
        assert!(
            row["reason"].starts_with("no match for platform linux/s390x in the manifest index (it has linux/amd64, linux/arm64"),
            "{row:?}"
        );
    }
    assert_eq!(
        status_of(&found, "web", "c2"),
        "available",
        "a single manifest"
    );
    // Two workloads, one check, one GET of the index.
    assert_eq!(index_gets(&registry.log()[start..]), 1);

    // From the environment, comma-separated: the pinned workload lands on arm64 only.
    let output = check_json(
        path,
        &[],
        &[("PULLWATCH_PLATFORMS", "linux/arm64/v8,linux/s390x")],
    );
    let found = rows(&output);
    assert_eq!(status_of(&found, "web", "c0"), "absent");
    assert_eq!(status_of(&found, "pinned", "c0"), "available");

    let output = check_json(
        path,
        &["--platform", "linux/arm64", "--platform", "linux/amd64"],
        &[],
    );
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );

    let output = run(&["check", "-f", path, "--platform", "linux"], &[]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("invalid platform"));
}

/// The shape of `/api/v1/images`, field for field: unknown or missing fields fail.
mod api {
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Images {
        pub summary: Summary,
        pub images: Vec<Image>,
        pub registries: Vec<RegistryQuota>,
    }

    /// Schema only here: no registry in this test announces a pull quota
    /// (aggregator/tests/agents.rs has one that does).
    #[allow(dead_code)]
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct RegistryQuota {
        pub registry: String,
        pub central: Option<Quota>,
        pub nodes: Vec<NodeQuota>,
    }

    /// A pull quota as one vantage point saw it: the struct `$name` with its own
    /// fields first, then the quota's.
    macro_rules! quota {
        ($name:ident { $($field:ident: $ty:ty),* }) => {
            #[allow(dead_code)]
            #[derive(Debug, Deserialize)]
            #[serde(deny_unknown_fields)]
            pub struct $name {
                $(pub $field: $ty,)*
                pub remaining: u64,
                pub limit: Option<u64>,
                pub window_seconds: Option<u64>,
                pub seen_at: Option<String>,
                pub source: Option<String>,
            }
        };
    }
    quota!(Quota {});
    quota!(NodeQuota { node: String });

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Summary {
        pub images: usize,
        pub available: usize,
        pub failing: usize,
        pub last_full_pass: Option<String>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Image {
        pub image: String,
        pub status: String,
        pub reason: String,
        pub checked_at: Option<String>,
        pub digest: Option<String>,
        pub tag_moved: Option<bool>,
        pub workloads: Vec<Workload>,
        pub nodes: Vec<Node>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Workload {
        pub namespace: String,
        pub kind: String,
        pub name: String,
        pub container: String,
        pub status: String,
        pub reason: String,
        pub checked_at: Option<String>,
        pub tag_moved: Option<bool>,
    }

    /// Schema only here: no agent answers in this test (aggregator/tests/agents.rs
    /// has nodes).
    #[allow(dead_code)]
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Node {
        pub node: String,
        pub status: String,
        pub reason: String,
    }
}

/// Results with reasons: `/api/v1/images` (schema, filters, no credential) and the page
/// at `/` as a real browser renders it (headless Chromium's DOM and a screenshot).
#[tokio::test(flavor = "multi_thread")]
async fn results_with_reasons_as_json_and_as_a_page() {
    let f = fixture().await;
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("workloads.yaml");
    let missing = format!("{}/web/frontend:gone", f.open.host());
    std::fs::write(
        &manifest,
        [
            deployment_yaml("shop", "web", &[&f.public_image], None),
            deployment_yaml("shop", "cart", &[&missing], None),
            deployment_yaml("billing", "invoices", &[&f.private_image], Some("regcred")),
            secret_yaml(
                "billing",
                "regcred",
                &f.private.host(),
                "bob",
                "wrong-password",
            ),
            deployment_yaml("ops", "tool", &["Not/A:Valid::Image"], None),
        ]
        .join("---\n"),
    )
    .unwrap();
    let (_serve, addr) = serve(&manifest, &[]).await;

    // Methods other than GET and HEAD: 405 with the Allow header RFC 9110 asks for.
    for path in ["/metrics", "/api/v1/images", "/"] {
        let refused = http_request(addr, http::Method::POST, path, &[], Vec::new())
            .await
            .unwrap();
        assert_eq!(
            (refused.status, refused.header("allow")),
            (405, Some("GET, HEAD")),
            "POST {path}"
        );
    }

    let (status, body) = get(addr, "/api/v1/images").await;
    assert_eq!(status, 200, "{body}");
    assert!(!body.contains("wrong-password"), "a credential in the API");
    let view: api::Images = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!(
        (
            view.summary.images,
            view.summary.available,
            view.summary.failing
        ),
        (4, 1, 3),
        "{body}"
    );
    assert!(view.summary.last_full_pass.is_some());
    assert!(
        view.registries.is_empty(),
        "no registry announced a quota: {body}"
    );
    let image = |name: &str| view.images.iter().find(|i| i.image == name).unwrap();
    let web = image(&f.public_image);
    assert_eq!(web.status, "available");
    assert!(
        web.digest
            .as_deref()
            .is_some_and(|d| d.starts_with("sha256:"))
    );
    assert!(web.checked_at.is_some());
    assert_eq!(web.tag_moved, None, "no running pods in manifests mode");
    assert!(web.nodes.is_empty(), "no agents");
    let cart = image(&missing);
    assert_eq!(cart.status, "absent");
    assert_eq!(
        (
            cart.workloads[0].namespace.as_str(),
            cart.workloads[0].kind.as_str(),
            cart.workloads[0].name.as_str(),
            cart.workloads[0].container.as_str()
        ),
        ("shop", "deployment", "cart", "c0")
    );
    let row = &cart.workloads[0];
    assert_eq!((row.status.as_str(), row.tag_moved), ("absent", None));
    assert_reason_contains!(row, "404");
    assert!(
        row.checked_at.as_deref().is_some_and(|t| t.ends_with('Z')),
        "{row:?}"
    );
    let invoices = image(&f.private_image);
    assert_eq!(invoices.status, "authentication_failure");
    assert_reason_contains!(invoices, "secret/billing/regcred");
    assert_eq!(image("Not/A:Valid::Image").status, "bad_image_format");

    let (_, body) = get(addr, "/api/v1/images?status=absent").await;
    let absent: api::Images = serde_json::from_str(&body).unwrap();
    assert_eq!(absent.images.len(), 1);
    assert_eq!(absent.images[0].image, missing);
    let (_, body) = get(addr, "/api/v1/images?namespace=billing").await;
    let billing: api::Images = serde_json::from_str(&body).unwrap();
    assert_eq!(billing.images.len(), 1);
    assert_eq!(billing.summary.images, 4, "the summary is over everything");
    let (status, body) = get(addr, "/api/v1/images?status=gone").await;
    assert_eq!(status, 400);
    assert!(body.contains("unknown status"), "{body}");

    // The page, in a real browser.
    let chromium = pullwatch_testbench::require_tool("chromium").unwrap();
    let profile = tempfile::tempdir().unwrap();
    let screenshot = dir.path().join("results.png");
    let browser = |extra: &[String]| {
        let mut command = Command::new(&chromium);
        command
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--window-size=1280,900",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args(extra)
            .arg(format!("http://{addr}/"))
            .stdin(Stdio::null());
        command
    };
    let dom = tokio::task::spawn_blocking({
        let mut command = browser(&["--dump-dom".to_string()]);
        move || command.output().unwrap()
    })
    .await
    .unwrap();
    let dom = String::from_utf8_lossy(&dom.stdout).to_string();
    assert!(
        dom.contains("4 images: 1 available, 3 failing; last full pass: 20"),
        "{dom}"
    );
    for (status, image) in [
        ("absent", missing.as_str()),
        ("authentication_failure", f.private_image.as_str()),
        ("bad_image_format", "Not/A:Valid::Image"),
    ] {
        let section = dom
            .split(&format!("<section class=\"cause\" id=\"cause-{status}\">"))
            .nth(1)
            .unwrap_or_else(|| panic!("no {status} section in {dom}"));
        let section = section.split("</section>").next().unwrap();
        assert!(section.contains(image), "{status}: {section}");
        assert!(section.contains("<tr class=\"row\""), "{section}");
        assert!(section.contains("Fix: "), "{section}");
    }
    assert!(
        !dom.contains(&f.public_image),
        "available images are not listed"
    );
    assert!(!dom.contains("wrong-password"));
    let shot = tokio::task::spawn_blocking({
        let mut command = browser(&[format!("--screenshot={}", screenshot.display())]);
        move || command.output().unwrap()
    })
    .await
    .unwrap();
    let png = std::fs::read(&screenshot).unwrap_or_else(|e| {
        panic!(
            "no screenshot ({e}): {}",
            String::from_utf8_lossy(&shot.stderr)
        )
    });
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    if let Some(keep) = std::env::var_os("PULLWATCH_KEEP_SCREENSHOT") {
        std::fs::copy(&screenshot, keep).unwrap();
    }
}

/// `check -o junit`: one test case per container reference, failures carrying status
/// and reason, parsed back with a JUnit reader; and the CI examples call `check` with
/// flags the binary has.
#[tokio::test(flavor = "multi_thread")]
async fn junit_output_for_ci_and_the_ci_examples() {
    let f = fixture().await;
    let dir = tempfile::tempdir().unwrap();
    let missing = format!("{}/web/frontend:gone", f.open.host());
    write_file(
        &dir,
        "shop.yaml",
        deployment_yaml("shop", "web", &[&f.public_image, &missing], None),
    );
    let output = run(
        &[
            "check",
            "-f",
            dir.path().to_str().unwrap(),
            "-o",
            "junit",
            "--allow-plain-http",
        ],
        &[],
    );
    assert_eq!(
        output.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let xml = String::from_utf8(output.stdout).unwrap();
    let report =
        quick_junit::Report::deserialize_from_str(&xml).unwrap_or_else(|e| panic!("{e}: {xml}"));
    assert_eq!(report.test_suites.len(), 1);
    let suite = &report.test_suites[0];
    assert_eq!((suite.tests, suite.failures), (2, 1), "{xml}");
    let case = |name: &str| {
        suite
            .test_cases
            .iter()
            .find(|c| c.name.as_str() == name)
            .unwrap_or_else(|| panic!("no case {name} in {xml}"))
    };
    let ok = case(&format!("c0: {}", f.public_image));
    assert_eq!(ok.classname.as_deref(), Some("shop/deployment/web"));
    assert!(matches!(
        ok.status,
        quick_junit::TestCaseStatus::Success { .. }
    ));
    match &case(&format!("c1: {missing}")).status {
        quick_junit::TestCaseStatus::NonSuccess {
            kind: quick_junit::NonSuccessKind::Failure,
            message,
            ty,
            description,
            ..
        } => {
            assert_eq!(ty.as_deref(), Some("absent"));
            assert!(
                message
                    .as_deref()
                    .is_some_and(|m| m.starts_with("absent: ")),
                "{message:?}"
            );
            assert!(
                description.as_deref().is_some_and(|d| d.contains("404")),
                "{description:?}"
            );
        }
        other => panic!("not a failure: {other:?}"),
    }

    // The examples: every `check` they run asks for JUnit and uses real flags.
    let help = String::from_utf8(run(&["check", "--help"], &[]).stdout).unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/ci");
    for file in ["github-actions.yaml", "gitlab-ci.yml"] {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        let _: serde_yaml::Value =
            serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
        let checks: Vec<&str> = text
            .lines()
            .filter_map(|l| l.split_once("pullwatch-aggregator check "))
            .map(|(_, args)| args)
            .collect();
        assert_eq!(
            checks.len(),
            2,
            "{file}: manifests and helm template output"
        );
        for args in checks {
            assert!(
                args.contains("-o junit") && args.contains("-f "),
                "{file}: {args}"
            );
            for flag in args.split_whitespace().filter(|a| a.starts_with("--")) {
                assert!(help.contains(flag), "{file}: {flag} is not a check flag");
            }
        }
    }
}

/// A registry whose certificate no trusted CA signed: the row says so, and the log has
/// no ERROR line of the TLS verifier's own for every check (rustls-platform-verifier
/// logs one per failed verification; the check's status already carries it). Its
/// warnings stay.
#[tokio::test]
async fn an_untrusted_registry_certificate_is_the_rows_reason_not_an_error_line_per_check() {
    let ca = pullwatch_testbench::TestCa::new().unwrap();
    let registry = Registry::start(pullwatch_testbench::RegistryOptions::tls(&ca))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let image = format!("{}/team/app:v1", registry.host());
    write_file(
        &dir,
        "w.yaml",
        deployment_yaml("shop", "tls", &[&image], None),
    );
    let output = run(
        &["check", "-f", dir.path().to_str().unwrap(), "-o", "json"],
        &[],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    let found = rows(&output);
    let row = found.iter().find(|r| r["name"] == "tls").unwrap();
    assert_ne!(row["status"], "available", "{row:?}");
    assert!(row["reason"].contains("certificate"), "{row:?}");
    assert!(
        !stderr.contains("failed to verify TLS certificate"),
        "{stderr}"
    );
}
