//! `pullwatch-agent check` as a process: output contract, exit codes, flags from the
//! environment, against a real containerd and registry.

use std::process::Output;
use std::time::Duration;

use pullwatch_testbench::{
    Containerd, ContainerdOptions, ImageFormat, Registry, RegistryOptions, push_image,
};

const BINARY: &str = env!("CARGO_BIN_EXE_pullwatch-agent");

/// Runs the agent with a hermetic HOME and working dir (the kubelet's docker config
/// search path includes both), bounded in time.
async fn run(home: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = tokio::process::Command::new(BINARY);
    command
        .args(args)
        .env_clear()
        .env("HOME", home)
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .current_dir(home)
        .kill_on_drop(true);
    for (k, v) in env {
        command.env(k, v);
    }
    tokio::time::timeout(Duration::from_secs(60), command.output())
        .await
        .expect("pullwatch-agent did not finish")
        .unwrap()
}

fn json(output: &Output) -> serde_json::Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn check_command_contract() {
    let registry = Registry::start(RegistryOptions::default()).await.unwrap();
    let image = push_image(&registry, "team/app", "v1", ImageFormat::Oci)
        .await
        .unwrap();
    let node = Containerd::start(ContainerdOptions::default())
        .await
        .unwrap();
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

    let mut args = vec!["check", image.reference.as_str(), "-o", "json"];
    args.extend(common);
    let output = run(home.path(), &args, &[]).await;
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let value = json(&output);
    let mut keys: Vec<&str> = value
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        ["credential_source", "image", "mode", "reason", "status"]
    );
    assert_eq!(value["image"], image.reference.as_str());
    assert_eq!(value["status"], "available");
    assert_eq!(value["mode"], "resolve", "the node does not hold the image");
    assert_eq!(value["credential_source"], "runtime");
    assert_eq!(value["reason"], "");

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
    let value = json(&output);
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
    // A runtime that is not there: not available (exit 1), and says why.
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
    assert_eq!(output.status.code(), Some(1));
    let value = json(&output);
    assert_eq!(value["status"], "unknown_error");
    assert!(
        value["reason"]
            .as_str()
            .unwrap()
            .contains("runtime unreachable"),
        "{value}"
    );
}
