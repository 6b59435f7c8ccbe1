//! The `pullwatch-aggregator check` binary against registry behaviours that
//! `pullwatch-agent check --mode resolve` must classify the same way (the agent's
//! tests/registry_behaviour.rs runs the same table): token endpoints answering
//! 401/403/429/503, a port speaking plain HTTP where HTTPS is expected, a certificate
//! no CA signed, a token endpoint that never answers; and a burst of 429s.

use std::process::{Command, Output, Stdio};

use base64::Engine;
use pullwatch_testbench::answers::{
    assert_behaviour_answer, assert_output_without_behaviour_password,
};
use pullwatch_testbench::{
    BEHAVIOUR_PASSWORD, BEHAVIOUR_USER, Behaviour, StubResponse, StubServer, registry_behaviours,
};

const BIN: &str = env!("CARGO_BIN_EXE_pullwatch-aggregator");

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("PULLWATCH_LOG")
        .env_remove("PULLWATCH_ALLOW_PLAIN_HTTP")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn manifests(behaviours: &[&Behaviour]) -> String {
    let mut docs = Vec::new();
    for b in behaviours {
        let auth = base64::engine::general_purpose::STANDARD
            .encode(format!("{BEHAVIOUR_USER}:{BEHAVIOUR_PASSWORD}"));
        let config = format!(r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#, b.host);
        let data = base64::engine::general_purpose::STANDARD.encode(config);
        docs.push(format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: pull-{n}, namespace: ns}}\ntype: kubernetes.io/dockerconfigjson\ndata:\n  .dockerconfigjson: {data}\n",
            n = b.name
        ));
        docs.push(format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: {n}, namespace: ns}}\nspec:\n  selector: {{matchLabels: {{app: {n}}}}}\n  template:\n    metadata: {{labels: {{app: {n}}}}}\n    spec:\n      imagePullSecrets: [{{name: pull-{n}}}]\n      containers:\n        - name: c\n          image: \"{image}\"\n",
            n = b.name,
            image = b.image
        ));
    }
    docs.join("---\n")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_binary_classifies_every_registry_behaviour() {
    let behaviours = registry_behaviours().await.unwrap();
    for https in [false, true] {
        let group: Vec<&Behaviour> = behaviours.iter().filter(|b| b.https == https).collect();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("all.yaml"), manifests(&group)).unwrap();
        let mut args = vec![
            "check",
            "-f",
            dir.path().to_str().unwrap(),
            "-o",
            "json",
            "--registry-timeout",
            "2s",
            // The behaviours are stubs answering made-up digests with no image behind
            // them: the manifest request (what they classify) is all that is made.
            "--check-depth",
            "manifest",
        ];
        if !https {
            args.push("--allow-plain-http");
        }
        let output = tokio::task::spawn_blocking({
            let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
            move || run(&args.iter().map(String::as_str).collect::<Vec<_>>())
        })
        .await
        .unwrap();
        assert_output_without_behaviour_password(&output);
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        let rows: Vec<serde_json::Value> = serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}\n{stderr}"));
        for b in &group {
            let row = rows
                .iter()
                .find(|r| r["name"] == b.name)
                .unwrap_or_else(|| panic!("no row for {}: {rows:?}", b.name));
            let reason = assert_behaviour_answer(b, row);
            if b.expected != "available" && b.name.starts_with("token-") {
                assert!(
                    reason.contains(&format!("secret/ns/pull-{}", b.name)),
                    "the credential's source is named: {reason}"
                );
            }
            if b.name == "bad-certificate" {
                assert!(reason.contains("--capath"), "{reason}");
            }
            if b.name == "plain-port" {
                assert!(reason.contains("--allow-plain-http"), "{reason}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_burst_of_429s_reaches_the_registry_at_most_once_per_slot() {
    let stub = StubServer::start(|_, _| StubResponse::new(429))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let containers: String = (0..40)
        .map(|i| {
            format!(
                "        - name: c{i}\n          image: \"{}/burst/app:v{i}\"\n",
                stub.host()
            )
        })
        .collect();
    std::fs::write(
        dir.path().join("burst.yaml"),
        format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: burst, namespace: ns}}\nspec:\n  selector: {{matchLabels: {{app: burst}}}}\n  template:\n    metadata: {{labels: {{app: burst}}}}\n    spec:\n      containers:\n{containers}"
        ),
    )
    .unwrap();
    let path = dir.path().to_str().unwrap().to_string();
    let output = tokio::task::spawn_blocking(move || {
        run(&[
            "check",
            "-f",
            &path,
            "-o",
            "json",
            "--allow-plain-http",
            "--registry-max-concurrency",
            "8",
        ])
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let rows: Vec<serde_json::Value> =
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"));
    assert_eq!(rows.len(), 40);
    assert!(
        rows.iter().all(|r| r["status"] == "rate_limited"),
        "{rows:?}"
    );
    let sent = stub.requests().len();
    assert!(
        (1..=8).contains(&sent),
        "{sent} requests reached a registry that said 429"
    );
}
