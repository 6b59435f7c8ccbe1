//! The scenario table of issue 18: 21 registry states built on a real registry (its
//! `DELETE` API, pushed artifacts and indexes, a small proxy for header and redirect
//! faults), the truth taken from a real containerd's CRI `PullImage` for linux/amd64,
//! and three views of pullwatch that must each agree with it: the aggregator's `check`,
//! the agent's `--mode resolve`, and the agent's default mode. Registry request counts
//! come from the proxy every request goes through.
//!
//! Needs `cargo build -p pullwatch-aggregator -p pullwatch-agent` (the bench's
//! `workspace_binary`).

use std::process::Output;
use std::time::Duration;

use pullwatch::CheckStatus;
use pullwatch_agent::cri::{CriClient, CriTimeouts};
use pullwatch_testbench::{
    Containerd, ContainerdOptions, ProxiedRequest, ProxyRule, PullProxy, Registry, RegistryOptions,
    free_port, raw, sha256_digest, workspace_binary,
};
use serde_json::json;

/// One registry state and what containerd does with it.
struct Scenario {
    name: &'static str,
    image: String,
    /// Whether containerd's PullImage succeeds (checked against the real one).
    pullable: bool,
    /// The status pullwatch gives (available when pullable).
    status: CheckStatus,
    /// Text the reason contains.
    reason_has: &'static str,
}

async fn bounded<F: std::future::Future<Output = ()>>(test: F) {
    tokio::time::timeout(Duration::from_secs(600), test)
        .await
        .expect("the scenario table did not finish within 10 min");
}

/// An image config + one layer with content unique to `seed`, pushed to `repo`:
/// (manifest body, config digest, layer digest, layer bytes).
async fn image_parts(
    registry: &Registry,
    repo: &str,
    seed: &str,
    arch: &str,
) -> (serde_json::Value, String, String, Vec<u8>) {
    let (layer, diff_id) = raw::layer(&format!("{repo} {seed} {arch}")).unwrap();
    let config = raw::config(arch, &[&diff_id], seed);
    let config_digest = raw::push_blob(registry, repo, &config).await.unwrap();
    let layer_digest = raw::push_blob(registry, repo, &layer).await.unwrap();
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": raw::OCI_MANIFEST,
        "config": raw::descriptor(raw::OCI_CONFIG, &config),
        "layers": [raw::descriptor(raw::OCI_LAYER, &layer)],
    });
    (manifest, config_digest, layer_digest, layer)
}

/// Pushes a single-platform image as `repo:v1`: (manifest digest, config, layer).
async fn single(registry: &Registry, repo: &str, arch: &str) -> (String, String, String) {
    let (manifest, config, layer, _) = image_parts(registry, repo, "single", arch).await;
    let body = serde_json::to_vec(&manifest).unwrap();
    let digest = raw::put_manifest(registry, repo, "v1", raw::OCI_MANIFEST, &body)
        .await
        .unwrap();
    (digest, config, layer)
}

/// Pushes a child manifest by digest: (digest, body).
async fn child(registry: &Registry, repo: &str, arch: &str) -> (String, Vec<u8>, String) {
    let (manifest, _, layer, _) = image_parts(registry, repo, "child", arch).await;
    let body = serde_json::to_vec(&manifest).unwrap();
    let digest = sha256_digest(&body);
    raw::put_manifest(registry, repo, &digest, raw::OCI_MANIFEST, &body)
        .await
        .unwrap();
    (digest, body, layer)
}

fn entry(body: &[u8], platform: Option<(&str, &str)>) -> serde_json::Value {
    let mut d = raw::descriptor(raw::OCI_MANIFEST, body);
    if let Some((os, arch)) = platform {
        d["platform"] = json!({ "os": os, "architecture": arch });
    }
    d
}

async fn put_index(
    registry: &Registry,
    repo: &str,
    tag: &str,
    entries: Vec<serde_json::Value>,
) -> String {
    let body = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": raw::OCI_INDEX,
        "manifests": entries,
    }))
    .unwrap();
    raw::put_manifest(registry, repo, tag, raw::OCI_INDEX, &body)
        .await
        .unwrap()
}

/// Builds every state of the table; images name the proxy's host.
async fn build(registry: &Registry, proxy: &PullProxy) -> Vec<Scenario> {
    let host = proxy.host();
    let image = |repo: &str| format!("{host}/{repo}:v1");
    let dead = format!("127.0.0.1:{}", free_port());
    let mut table = Vec::new();
    let mut add = |name, repo: &str, pullable, status, reason_has| {
        table.push(Scenario {
            name,
            image: image(repo),
            pullable,
            status,
            reason_has,
        })
    };

    single(registry, "ok/single", "amd64").await;
    add(
        "a single image",
        "ok/single",
        true,
        CheckStatus::Available,
        "",
    );

    let a = child(registry, "ok/index", "amd64").await;
    let b = child(registry, "ok/index", "arm64").await;
    put_index(
        registry,
        "ok/index",
        "v1",
        vec![
            entry(&a.1, Some(("linux", "amd64"))),
            entry(&b.1, Some(("linux", "arm64"))),
        ],
    )
    .await;
    add(
        "a multi-arch index",
        "ok/index",
        true,
        CheckStatus::Available,
        "",
    );

    let a = child(registry, "gone/child", "amd64").await;
    let b = child(registry, "gone/child", "arm64").await;
    put_index(
        registry,
        "gone/child",
        "v1",
        vec![
            entry(&a.1, Some(("linux", "amd64"))),
            entry(&b.1, Some(("linux", "arm64"))),
        ],
    )
    .await;
    registry.delete_manifest("gone/child", &a.0).await.unwrap();
    add(
        "the amd64 child manifest deleted",
        "gone/child",
        false,
        CheckStatus::Absent,
        "platform manifest",
    );

    let (_, _, layer) = single(registry, "gone/layer", "amd64").await;
    raw::delete_blob(registry, "gone/layer", &layer)
        .await
        .unwrap();
    add(
        "a layer blob deleted",
        "gone/layer",
        false,
        CheckStatus::Absent,
        "layer 1 of 1",
    );

    let (_, config, _) = single(registry, "gone/config", "amd64").await;
    raw::delete_blob(registry, "gone/config", &config)
        .await
        .unwrap();
    add(
        "the config blob deleted",
        "gone/config",
        false,
        CheckStatus::Absent,
        "config",
    );

    let a = child(registry, "gone/child-layer", "amd64").await;
    let b = child(registry, "gone/child-layer", "arm64").await;
    put_index(
        registry,
        "gone/child-layer",
        "v1",
        vec![
            entry(&a.1, Some(("linux", "amd64"))),
            entry(&b.1, Some(("linux", "arm64"))),
        ],
    )
    .await;
    raw::delete_blob(registry, "gone/child-layer", &a.2)
        .await
        .unwrap();
    add(
        "a layer of the amd64 child deleted",
        "gone/child-layer",
        false,
        CheckStatus::Absent,
        "for linux/amd64",
    );

    // A Helm chart pushed as OCI (what `helm push` writes).
    let chart_config = br#"{"name":"app","version":"1.0.0","apiVersion":"v2"}"#.to_vec();
    let chart = b"not really a chart, but a blob of the chart's media type".to_vec();
    raw::push_blob(registry, "artifact/helm", &chart_config)
        .await
        .unwrap();
    raw::push_blob(registry, "artifact/helm", &chart)
        .await
        .unwrap();
    let helm = json!({
        "schemaVersion": 2,
        "mediaType": raw::OCI_MANIFEST,
        "config": raw::descriptor("application/vnd.cncf.helm.config.v1+json", &chart_config),
        "layers": [raw::descriptor("application/vnd.cncf.helm.chart.content.v1.tar+gzip", &chart)],
    });
    raw::put_manifest(
        registry,
        "artifact/helm",
        "v1",
        raw::OCI_MANIFEST,
        &serde_json::to_vec(&helm).unwrap(),
    )
    .await
    .unwrap();
    add(
        "a Helm chart referenced as an image",
        "artifact/helm",
        false,
        CheckStatus::UnknownError,
        "application/vnd.cncf.helm.config.v1+json",
    );

    // An OCI artifact: empty config, artifactType.
    let empty = b"{}".to_vec();
    let payload = b"signature payload".to_vec();
    raw::push_blob(registry, "artifact/empty", &empty)
        .await
        .unwrap();
    raw::push_blob(registry, "artifact/empty", &payload)
        .await
        .unwrap();
    let artifact = json!({
        "schemaVersion": 2,
        "mediaType": raw::OCI_MANIFEST,
        "artifactType": "application/vnd.example.signature.v1",
        "config": raw::descriptor("application/vnd.oci.empty.v1+json", &empty),
        "layers": [raw::descriptor("application/vnd.example.signature.v1+json", &payload)],
    });
    raw::put_manifest(
        registry,
        "artifact/empty",
        "v1",
        raw::OCI_MANIFEST,
        &serde_json::to_vec(&artifact).unwrap(),
    )
    .await
    .unwrap();
    add(
        "an OCI artifact (empty config, artifactType)",
        "artifact/empty",
        false,
        CheckStatus::UnknownError,
        "application/vnd.example.signature.v1",
    );

    // A foreign layer whose URL is dead and whose blob is not in the registry.
    let (layer, diff_id) = raw::layer("foreign layer content").unwrap();
    let config = raw::config("amd64", &[&diff_id], "foreign");
    raw::push_blob(registry, "foreign/dead", &config)
        .await
        .unwrap();
    let mut foreign = raw::descriptor(raw::DOCKER_FOREIGN_LAYER, &layer);
    foreign["urls"] = json!([format!("http://{dead}/layers/{}", sha256_digest(&layer))]);
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": raw::DOCKER_MANIFEST,
        "config": raw::descriptor(raw::DOCKER_CONFIG, &config),
        "layers": [foreign],
    });
    raw::put_manifest(
        registry,
        "foreign/dead",
        "v1",
        raw::DOCKER_MANIFEST,
        &serde_json::to_vec(&manifest).unwrap(),
    )
    .await
    .unwrap();
    add(
        "a foreign layer: URL dead, blob missing",
        "foreign/dead",
        false,
        CheckStatus::RegistryUnavailable,
        "its URL",
    );

    // A foreign layer whose URL answers 404 and whose blob the registry has: containerd
    // moves on from the URL to the registry.
    let (layer, diff_id) = raw::layer("foreign layer served by the registry").unwrap();
    let config = raw::config("amd64", &[&diff_id], "foreign-404");
    raw::push_blob(registry, "foreign/fallback", &config)
        .await
        .unwrap();
    raw::push_blob(registry, "foreign/fallback", &layer)
        .await
        .unwrap();
    let mut foreign = raw::descriptor(raw::DOCKER_FOREIGN_LAYER, &layer);
    foreign["urls"] = json!([format!("http://{host}/no/such/layer")]);
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": raw::DOCKER_MANIFEST,
        "config": raw::descriptor(raw::DOCKER_CONFIG, &config),
        "layers": [foreign],
    });
    raw::put_manifest(
        registry,
        "foreign/fallback",
        "v1",
        raw::DOCKER_MANIFEST,
        &serde_json::to_vec(&manifest).unwrap(),
    )
    .await
    .unwrap();
    add(
        "a foreign layer: URL 404, blob in the registry",
        "foreign/fallback",
        true,
        CheckStatus::Available,
        "",
    );

    // Docker-Content-Digest faults, injected by the proxy.
    single(registry, "fault/digest-differs", "amd64").await;
    proxy.add(ProxyRule::DigestHeader {
        path: "/v2/fault/digest-differs/manifests/v1".into(),
        value: sha256_digest(b"some other manifest"),
    });
    add(
        "a Docker-Content-Digest that differs from the body's",
        "fault/digest-differs",
        false,
        CheckStatus::Absent,
        "not found",
    );

    single(registry, "fault/digest-invalid", "amd64").await;
    proxy.add(ProxyRule::DigestHeader {
        path: "/v2/fault/digest-invalid/manifests/v1".into(),
        value: "sha256:not-a-digest".into(),
    });
    add(
        "a Docker-Content-Digest that is not a digest",
        "fault/digest-invalid",
        false,
        CheckStatus::UnknownError,
        "not a valid digest",
    );

    // Blob downloads redirected to storage.
    single(registry, "redirect/down", "amd64").await;
    proxy.add(ProxyRule::RedirectBlobs {
        repo: "redirect/down".into(),
        to: format!("http://{dead}/storage"),
    });
    add(
        "blob downloads redirected to storage that is down",
        "redirect/down",
        false,
        CheckStatus::RegistryUnavailable,
        "config",
    );

    single(registry, "redirect/get-only", "amd64").await;
    proxy.add(ProxyRule::RedirectBlobs {
        repo: "redirect/get-only".into(),
        to: proxy.storage_url(),
    });
    add(
        "blob downloads redirected to storage signed for GET only",
        "redirect/get-only",
        true,
        CheckStatus::Available,
        "",
    );

    // Declared sizes that do not match what is served.
    let (mut manifest, _, _, layer) = image_parts(registry, "size/layer", "size", "amd64").await;
    manifest["layers"][0]["size"] = json!(layer.len() + 7);
    raw::put_manifest(
        registry,
        "size/layer",
        "v1",
        raw::OCI_MANIFEST,
        &serde_json::to_vec(&manifest).unwrap(),
    )
    .await
    .unwrap();
    add(
        "a layer whose declared size is wrong",
        "size/layer",
        false,
        CheckStatus::UnknownError,
        "declares",
    );

    let a = child(registry, "size/child", "amd64").await;
    let mut wrong = entry(&a.1, Some(("linux", "amd64")));
    wrong["size"] = json!(a.1.len() + 3);
    put_index(registry, "size/child", "v1", vec![wrong]).await;
    add(
        "an index entry whose declared size is wrong",
        "size/child",
        false,
        CheckStatus::UnknownError,
        "declares",
    );

    // A config blob that is not JSON.
    let (layer, _) = raw::layer("config not json").unwrap();
    let config = b"this is not JSON".to_vec();
    raw::push_blob(registry, "config/not-json", &config)
        .await
        .unwrap();
    raw::push_blob(registry, "config/not-json", &layer)
        .await
        .unwrap();
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": raw::OCI_MANIFEST,
        "config": raw::descriptor(raw::OCI_CONFIG, &config),
        "layers": [raw::descriptor(raw::OCI_LAYER, &layer)],
    });
    raw::put_manifest(
        registry,
        "config/not-json",
        "v1",
        raw::OCI_MANIFEST,
        &serde_json::to_vec(&manifest).unwrap(),
    )
    .await
    .unwrap();
    add(
        "a config blob that is not JSON",
        "config/not-json",
        false,
        CheckStatus::UnknownError,
        "not an image config",
    );

    // Index entries without `platform`: containerd matches them through the config.
    let a = child(registry, "unlabelled/amd64", "amd64").await;
    put_index(registry, "unlabelled/amd64", "v1", vec![entry(&a.1, None)]).await;
    add(
        "an index entry without platform (amd64 by its config)",
        "unlabelled/amd64",
        true,
        CheckStatus::Available,
        "",
    );

    let b = child(registry, "unlabelled/arm64", "arm64").await;
    put_index(registry, "unlabelled/arm64", "v1", vec![entry(&b.1, None)]).await;
    add(
        "an index entry without platform (arm64 by its config)",
        "unlabelled/arm64",
        false,
        CheckStatus::Absent,
        "no match for platform linux/amd64",
    );

    // An index nested in an index.
    let a = child(registry, "nested/index", "amd64").await;
    let b = child(registry, "nested/index", "arm64").await;
    let inner_body = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": raw::OCI_INDEX,
        "manifests": [entry(&a.1, Some(("linux", "amd64"))), entry(&b.1, Some(("linux", "arm64")))],
    }))
    .unwrap();
    let inner = sha256_digest(&inner_body);
    raw::put_manifest(
        registry,
        "nested/index",
        &inner,
        raw::OCI_INDEX,
        &inner_body,
    )
    .await
    .unwrap();
    put_index(
        registry,
        "nested/index",
        "v1",
        vec![raw::descriptor(raw::OCI_INDEX, &inner_body)],
    )
    .await;
    add(
        "an index nested in an index",
        "nested/index",
        true,
        CheckStatus::Available,
        "",
    );

    add(
        "a tag that was never pushed",
        "never/pushed",
        false,
        CheckStatus::Absent,
        "",
    );
    table
}

fn manifests(table: &[Scenario]) -> String {
    table
        .iter()
        .enumerate()
        .map(|(i, s)| {
            format!(
                "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: s{i}, namespace: ns}}\nspec:\n  selector: {{matchLabels: {{app: s{i}}}}}\n  template:\n    metadata: {{labels: {{app: s{i}}}}}\n    spec:\n      containers:\n        - name: c\n          image: \"{}\"\n",
                s.image
            )
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

async fn run(binary: &std::path::Path, args: &[String]) -> Output {
    let mut command = tokio::process::Command::new(binary);
    command
        .args(args)
        .env_remove("PULLWATCH_LOG")
        .kill_on_drop(true);
    tokio::time::timeout(Duration::from_secs(120), command.output())
        .await
        .expect("the binary did not finish")
        .unwrap()
}

fn json_of(output: &Output) -> serde_json::Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

fn status_of(value: &serde_json::Value) -> CheckStatus {
    value["status"]
        .as_str()
        .unwrap_or_default()
        .parse()
        .unwrap()
}

/// The requests of `repo` among `requests`, as `METHOD kind status` (kind: the path
/// segment after the repository, `manifests` or `blobs`).
fn of_repo(requests: &[ProxiedRequest], repo: &str) -> Vec<String> {
    let prefix = format!("/v2/{repo}/");
    requests
        .iter()
        .filter_map(|r| {
            let rest = r.path.strip_prefix(&prefix)?;
            let kind = rest.split('/').next().unwrap_or_default();
            Some(format!("{} {kind} {}", r.method, r.status))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn each_view_agrees_with_containerd_on_every_registry_state() {
    bounded(async {
        let aggregator = workspace_binary("pullwatch-aggregator").unwrap();
        let agent = workspace_binary("pullwatch-agent").unwrap();
        let registry = Registry::start(RegistryOptions {
            allow_foreign_urls: true,
            ..RegistryOptions::default()
        })
        .await
        .unwrap();
        let proxy = PullProxy::start(&registry).await.unwrap();
        let node = Containerd::start(ContainerdOptions::default()).await.unwrap();
        node.write_hosts_toml(
            &proxy.host(),
            &format!(
                "server = \"http://{0}\"\n\n[host.\"http://{0}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
                proxy.host()
            ),
        )
        .unwrap();
        let table = build(&registry, &proxy).await;
        let _ = proxy.take_requests();

        // 1. The aggregator's `check`, every state at once.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("all.yaml"), manifests(&table)).unwrap();
        let output = run(
            &aggregator,
            &[
                "check".into(),
                "-f".into(),
                dir.path().display().to_string(),
                "-o".into(),
                "json".into(),
                "--allow-plain-http".into(),
                "--platform".into(),
                "linux/amd64".into(),
                "--registry-timeout".into(),
                "10s".into(),
            ],
        )
        .await;
        let rows = json_of(&output);
        let central_requests = proxy.take_requests();

        let agent_args = |image: &str, mode: Option<&str>| {
            let mut args = vec![
                "check".to_string(),
                image.to_string(),
                "-o".into(),
                "json".into(),
                format!("--cri-endpoint={}", node.endpoint()),
                format!("--containerd-hosts-dir={}", node.hosts_dir().display()),
                format!("--containerd-config={}", dir.path().join("none.toml").display()),
                format!("--kubelet-root-dir={}", dir.path().join("kubelet").display()),
                "--request-timeout=10s".into(),
            ];
            if let Some(mode) = mode {
                args.push(format!("--mode={mode}"));
            }
            args
        };
        let cri = CriClient::new(
            &node.endpoint(),
            CriTimeouts {
                call: Duration::from_secs(30),
                pull: Duration::from_secs(60),
            },
            None,
        )
        .unwrap();

        let mut disagreements = Vec::new();
        for (i, scenario) in table.iter().enumerate() {
            let row = rows
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["name"] == format!("s{i}"))
                .unwrap_or_else(|| panic!("no row for {}", scenario.name));
            let resolve = json_of(&run(&agent, &agent_args(&scenario.image, Some("resolve"))).await);
            let default = json_of(&run(&agent, &agent_args(&scenario.image, None)).await);
            // The truth: the node's containerd pulls it, as the kubelet asks.
            let pulled = cri.pull_image(&scenario.image, None).await;
            let truth = pulled.is_ok();
            if truth {
                cri.remove_image(&scenario.image).await.unwrap();
            }
            let truth_says = match &pulled {
                Ok(_) => "pulled".to_string(),
                Err(e) => format!("failed: {e}"),
            };
            if truth != scenario.pullable {
                disagreements.push(format!(
                    "{}: the table says pullable={} but containerd {truth_says}",
                    scenario.name, scenario.pullable
                ));
            }
            for (view, value) in [("check", row), ("resolve", &resolve), ("default", &default)] {
                let status = status_of(value);
                let reason = value["reason"].as_str().unwrap_or_default();
                eprintln!("{}: containerd {truth_says}; {view}: {status} {reason}", scenario.name);
                if (status == CheckStatus::Available) != truth {
                    disagreements.push(format!(
                        "{}: {view} says {status} ({reason}) but containerd {truth_says}",
                        scenario.name
                    ));
                } else if status != scenario.status || !reason.contains(scenario.reason_has) {
                    disagreements.push(format!(
                        "{}: {view} says {status} ({reason}); the table wants {} with {:?}",
                        scenario.name, scenario.status, scenario.reason_has
                    ));
                }
            }
        }
        assert!(
            disagreements.is_empty(),
            "{} disagreement(s):\n{}",
            disagreements.len(),
            disagreements.join("\n")
        );

        // First-pass cost of a central check, counted at the registry (through the
        // proxy): the tag's HEAD, the manifest by digest, the config, one ranged GET per
        // layer (answered 206); an index adds itself and the chosen child only.
        assert_eq!(
            of_repo(&central_requests, "ok/single"),
            ["HEAD manifests 200", "GET manifests 200", "GET blobs 200", "GET blobs 206"],
            "{central_requests:?}"
        );
        assert_eq!(
            of_repo(&central_requests, "ok/index"),
            [
                "HEAD manifests 200",
                "GET manifests 200",
                "GET manifests 200",
                "GET blobs 200",
                "GET blobs 206"
            ],
            "{central_requests:?}"
        );
    })
    .await;
}

/// After a failed pull of an artifact, containerd keeps an image record with its tag
/// but no repo digest: the agent does not take that tag as held.
#[tokio::test(flavor = "multi_thread")]
async fn a_tag_without_a_repo_digest_is_not_held() {
    bounded(async {
        let agent = workspace_binary("pullwatch-agent").unwrap();
        let registry = Registry::start(RegistryOptions::default()).await.unwrap();
        let node = Containerd::start(ContainerdOptions::default()).await.unwrap();
        let host = registry.host();
        node.write_hosts_toml(&host, &format!("server = \"http://{host}\"\n"))
            .unwrap();
        let chart_config = br#"{"name":"app","version":"1.0.0"}"#.to_vec();
        let chart = b"chart bytes".to_vec();
        raw::push_blob(&registry, "charts/app", &chart_config).await.unwrap();
        raw::push_blob(&registry, "charts/app", &chart).await.unwrap();
        let helm = json!({
            "schemaVersion": 2,
            "mediaType": raw::OCI_MANIFEST,
            "config": raw::descriptor("application/vnd.cncf.helm.config.v1+json", &chart_config),
            "layers": [raw::descriptor("application/vnd.cncf.helm.chart.content.v1.tar+gzip", &chart)],
        });
        raw::put_manifest(&registry, "charts/app", "v1", raw::OCI_MANIFEST, &serde_json::to_vec(&helm).unwrap())
            .await
            .unwrap();
        let image = format!("{host}/charts/app:v1");
        let cri = CriClient::new(
            &node.endpoint(),
            CriTimeouts {
                call: Duration::from_secs(30),
                pull: Duration::from_secs(60),
            },
            None,
        )
        .unwrap();
        assert!(cri.pull_image(&image, None).await.is_err(), "containerd pulls no chart");
        let record = cri.image_status(&image).await.unwrap();
        let kept = record.as_ref().expect("containerd keeps a record of the failed pull");
        assert!(kept.repo_digests.is_empty(), "{kept:?}");
        let dir = tempfile::tempdir().unwrap();
        for extra in [None, Some("--pull-absent-images")] {
            let mut args = vec![
                "check".to_string(),
                image.clone(),
                "-o".into(),
                "json".into(),
                format!("--cri-endpoint={}", node.endpoint()),
                format!("--containerd-hosts-dir={}", node.hosts_dir().display()),
                format!("--containerd-config={}", dir.path().join("none.toml").display()),
                format!("--kubelet-root-dir={}", dir.path().join("kubelet").display()),
            ];
            args.extend(extra.map(str::to_string));
            let value = json_of(&run(&agent, &args).await);
            assert_ne!(
                status_of(&value),
                CheckStatus::Available,
                "{extra:?}: {value} (the runtime's record: {record:?})"
            );
            assert_eq!(value["held_digest"], serde_json::Value::Null, "{value}");
            assert_eq!(value["mode"], "resolve", "never pulled over: {value}");
        }
        // Observe, never change: the runtime's record is still there as it was.
        assert_eq!(cri.image_status(&image).await.unwrap(), record);
    })
    .await;
}
