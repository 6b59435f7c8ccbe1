//! The scenario table of issue 18: 31 registry states (four of them Docker schema 1,
//! six read by Go's encoding/json rules) built on a real registry (its
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

use pullwatch::CheckStatus::{self, Absent, Available, RegistryUnavailable, UnknownError};
use pullwatch_agent::cri::{CriClient, CriTimeouts};
use pullwatch_testbench::{
    Containerd, ContainerdOptions, ProxiedRequest, ProxyRule, PullProxy, Registry, RegistryOptions,
    free_port, raw, sha256_digest, stdout_json, workspace_binary,
};
use serde_json::json;

/// What the table says of a state: whether containerd pulls it, and what pullwatch says.
#[derive(Clone, Copy)]
struct Want {
    /// Whether containerd's PullImage succeeds (checked against the real one).
    pullable: bool,
    /// The status pullwatch gives (available when pullable).
    status: CheckStatus,
    /// Text the reason contains.
    reason_has: &'static str,
}

/// Pulled by containerd, `available` in every view.
const PULLABLE: Want = Want {
    pullable: true,
    status: Available,
    reason_has: "",
};

/// Not pulled by containerd; every view says `status` with `reason_has` in its reason.
const fn fails(status: CheckStatus, reason_has: &'static str) -> Want {
    Want {
        pullable: false,
        status,
        reason_has,
    }
}

/// One registry state and what containerd does with it.
struct Scenario {
    name: &'static str,
    image: String,
    want: Want,
}

async fn bounded<F: std::future::Future<Output = ()>>(test: F) {
    tokio::time::timeout(Duration::from_secs(600), test)
        .await
        .expect("the scenario table did not finish within 10 min");
}

/// An image config + one layer with content unique to `seed`, pushed to `repo`:
/// (manifest document, config digest, layer digest, layer bytes).
async fn image_parts(
    registry: &Registry,
    repo: &str,
    seed: &str,
    arch: &str,
) -> (serde_json::Value, String, String, Vec<u8>) {
    let (layer, diff_id) = raw::layer(&format!("{repo} {seed} {arch}")).unwrap();
    let config = raw::config(arch, &[&diff_id], seed);
    let manifest = oci_image(registry, repo, &config, &layer).await;
    let (config, layer_digest) = (sha256_digest(&config), sha256_digest(&layer));
    (manifest, config, layer_digest, layer)
}

/// Pushes `config` (of any content) and `layer` to `repo`; the OCI image manifest
/// naming them, not yet put.
async fn oci_image(
    registry: &Registry,
    repo: &str,
    config: &[u8],
    layer: &[u8],
) -> serde_json::Value {
    raw::push_blobs(registry, repo, &[config, layer])
        .await
        .unwrap();
    raw::manifest(
        raw::OCI_MANIFEST,
        raw::descriptor(raw::OCI_CONFIG, config),
        vec![raw::descriptor(raw::OCI_LAYER, layer)],
    )
}

/// Puts `document` as `repo:reference`; its digest.
async fn put(
    registry: &Registry,
    repo: &str,
    reference: &str,
    document: &serde_json::Value,
) -> String {
    raw::put_document(registry, repo, reference, document)
        .await
        .unwrap()
}

/// Pushes a single-platform image as `repo:v1`: (manifest digest, config, layer).
async fn single(registry: &Registry, repo: &str, arch: &str) -> (String, String, String) {
    let (manifest, config, layer, _) = image_parts(registry, repo, "single", arch).await;
    (put(registry, repo, "v1", &manifest).await, config, layer)
}

/// Pushes a child manifest by digest: (digest, body, layer digest).
async fn child(registry: &Registry, repo: &str, arch: &str) -> (String, Vec<u8>, String) {
    let (manifest, _, layer, _) = image_parts(registry, repo, "child", arch).await;
    let body = serde_json::to_vec(&manifest).unwrap();
    let digest = sha256_digest(&body);
    put(registry, repo, &digest, &manifest).await;
    (digest, body, layer)
}

/// Pushes an amd64 and an arm64 child and the index naming both, with their
/// platforms, as `repo:v1`: (amd64 child, arm64 child) as [`child`] gives them.
async fn two_platforms(
    registry: &Registry,
    repo: &str,
) -> ((String, Vec<u8>, String), (String, Vec<u8>, String)) {
    let a = child(registry, repo, "amd64").await;
    let b = child(registry, repo, "arm64").await;
    let entries = vec![
        raw::entry(&a.1, Some(("linux", "amd64"))),
        raw::entry(&b.1, Some(("linux", "arm64"))),
    ];
    put(registry, repo, "v1", &raw::index(entries)).await;
    (a, b)
}

/// Pushes a Helm chart as OCI (what `helm push` writes), with this chart config, as
/// `repo:v1`.
async fn helm_chart(registry: &Registry, repo: &str, chart_config: &[u8], chart: &[u8]) {
    raw::push_blobs(registry, repo, &[chart_config, chart])
        .await
        .unwrap();
    let helm = raw::manifest(
        raw::OCI_MANIFEST,
        raw::descriptor("application/vnd.cncf.helm.config.v1+json", chart_config),
        vec![raw::descriptor(
            "application/vnd.cncf.helm.chart.content.v1.tar+gzip",
            chart,
        )],
    );
    put(registry, repo, "v1", &helm).await;
}

/// Pushes, as `repo:v1`, a Docker image whose one layer is foreign, at `url/<digest>`;
/// the layer blob goes to the registry too when `blob_in_registry`.
async fn foreign_layer(
    registry: &Registry,
    repo: &str,
    seed: &str,
    url: &str,
    blob_in_registry: bool,
) {
    let (layer, diff_id) = raw::layer(&format!("foreign layer {seed}")).unwrap();
    let config = raw::config("amd64", &[&diff_id], seed);
    raw::push_blob(registry, repo, &config).await.unwrap();
    if blob_in_registry {
        raw::push_blob(registry, repo, &layer).await.unwrap();
    }
    let mut foreign = raw::descriptor(raw::DOCKER_FOREIGN_LAYER, &layer);
    foreign["urls"] = json!([format!("{url}/{}", sha256_digest(&layer))]);
    let manifest = raw::manifest(
        raw::DOCKER_MANIFEST,
        raw::descriptor(raw::DOCKER_CONFIG, &config),
        vec![foreign],
    );
    put(registry, repo, "v1", &manifest).await;
}

/// Every state: what it is, the repository whose `v1` tag [`build`] pushes it as, and
/// what containerd and pullwatch make of it.
#[rustfmt::skip]
const TABLE: [(&str, &str, Want); 31] = [
    ("a single image", "ok/single", PULLABLE),
    ("a multi-arch index", "ok/index", PULLABLE),
    ("the amd64 child manifest deleted", "gone/child", fails(Absent, "platform manifest")),
    ("a layer blob deleted", "gone/layer", fails(Absent, "layer 1 of 1")),
    ("the config blob deleted", "gone/config", fails(Absent, "config")),
    ("a layer of the amd64 child deleted", "gone/child-layer", fails(Absent, "for linux/amd64")),
    ("a Helm chart referenced as an image", "artifact/helm", fails(UnknownError, "application/vnd.cncf.helm.config.v1+json")),
    ("an OCI artifact (empty config, artifactType)", "artifact/empty", fails(UnknownError, "application/vnd.example.signature.v1")),
    ("a foreign layer: URL dead, blob missing", "foreign/dead", fails(RegistryUnavailable, "its URL")),
    ("a foreign layer: URL 404, blob in the registry", "foreign/fallback", PULLABLE),
    ("a Docker-Content-Digest that differs from the body's", "fault/digest-differs", fails(Absent, "not found")),
    ("a Docker-Content-Digest that is not a digest", "fault/digest-invalid", fails(UnknownError, "not a valid digest")),
    ("blob downloads redirected to storage that is down", "redirect/down", fails(RegistryUnavailable, "config")),
    ("blob downloads redirected to storage signed for GET only", "redirect/get-only", PULLABLE),
    ("a layer whose declared size is wrong", "size/layer", fails(UnknownError, "declares")),
    ("an index entry whose declared size is wrong", "size/child", fails(UnknownError, "declares")),
    ("a config blob that is not JSON", "config/not-json", fails(UnknownError, "not an image config")),
    ("an index entry without platform (amd64 by its config)", "unlabelled/amd64", PULLABLE),
    ("an index entry without platform (arm64 by its config)", "unlabelled/arm64", fails(Absent, "no match for platform linux/amd64")),
    ("an index nested in an index", "nested/index", PULLABLE),
    ("a tag that was never pushed", "never/pushed", fails(Absent, "")),
    ("keys in another case, a layers key repeated (Go's encoding/json)", "gojson/keys", PULLABLE),
    ("an index entry's platform given twice, merged into arm64", "gojson/platform", fails(Absent, "linux/arm64")),
    ("an index with \"layers\": null (a json.RawMessage to containerd)", "gojson/index-layers", fails(UnknownError, "expected index but found manifest")),
    ("a manifest with \"manifests\": null", "gojson/manifest-manifests", fails(UnknownError, "expected manifest but found index")),
    ("a config whose created is not an RFC 3339 time", "gojson/config-created", fails(UnknownError, "not an image config")),
    ("a config whose Env is a string, not a list", "gojson/config-env", fails(UnknownError, "not an image config")),
    // containerd 1.x converts schema 1 (the views are told so: see SCHEMA1_ROWS).
    ("a Docker schema 1 image", "schema1/ok", PULLABLE),
    ("a schema 1 image, its layer blob deleted", "schema1/gone-layer", fails(Absent, "layer 1 of 1")),
    ("a schema 1 image, its empty (throwaway) layer's blob deleted", "schema1/gone-empty", PULLABLE),
    ("an index whose amd64 entry is a schema 1 manifest", "schema1/in-index", fails(UnknownError, "schema 1 manifest in an index")),
];

/// The schema 1 rows of [`TABLE`], which CRI-O (containers/image: skopeo here) copies
/// differently: every layer blob, the empty one too.
const SCHEMA1_ROWS: [(&str, bool); 3] = [
    ("schema1/ok", true),
    ("schema1/gone-layer", false),
    ("schema1/gone-empty", false),
];

/// Pushes every state of [`TABLE`] to `registry` and sets the proxy's faults; the
/// table's rows, their images naming the proxy's host.
async fn build(registry: &Registry, proxy: &PullProxy) -> Vec<Scenario> {
    let host = proxy.host();
    let dead = format!("127.0.0.1:{}", free_port());

    single(registry, "ok/single", "amd64").await;
    two_platforms(registry, "ok/index").await;

    let (amd64, _) = two_platforms(registry, "gone/child").await;
    registry
        .delete_manifest("gone/child", &amd64.0)
        .await
        .unwrap();
    let (_, _, layer) = single(registry, "gone/layer", "amd64").await;
    raw::delete_blob(registry, "gone/layer", &layer)
        .await
        .unwrap();
    let (_, config, _) = single(registry, "gone/config", "amd64").await;
    raw::delete_blob(registry, "gone/config", &config)
        .await
        .unwrap();
    let (amd64, _) = two_platforms(registry, "gone/child-layer").await;
    raw::delete_blob(registry, "gone/child-layer", &amd64.2)
        .await
        .unwrap();

    // A Helm chart pushed as OCI.
    let chart_config = br#"{"name":"app","version":"1.0.0","apiVersion":"v2"}"#;
    let chart = b"not really a chart, but a blob of the chart's media type";
    helm_chart(registry, "artifact/helm", chart_config, chart).await;

    // An OCI artifact: empty config, artifactType.
    let (empty, payload) = (b"{}", b"signature payload");
    raw::push_blobs(registry, "artifact/empty", &[empty, payload])
        .await
        .unwrap();
    let signature = raw::descriptor("application/vnd.example.signature.v1+json", payload);
    let empty = raw::descriptor("application/vnd.oci.empty.v1+json", empty);
    let mut artifact = raw::manifest(raw::OCI_MANIFEST, empty, vec![signature]);
    artifact["artifactType"] = json!("application/vnd.example.signature.v1");
    put(registry, "artifact/empty", "v1", &artifact).await;

    // A foreign layer whose URL is dead and whose blob is not in the registry.
    let url = format!("http://{dead}/layers");
    foreign_layer(registry, "foreign/dead", "foreign", &url, false).await;
    // A foreign layer whose URL answers 404 and whose blob the registry has: containerd
    // moves on from the URL to the registry.
    let url = format!("http://{host}/no/such/layer");
    foreign_layer(registry, "foreign/fallback", "foreign-404", &url, true).await;

    // Docker-Content-Digest faults, and blob downloads redirected to storage that is
    // down or signed for GET only: injected by the proxy.
    let digest_header = |repo: &str, value: String| ProxyRule::DigestHeader {
        path: format!("/v2/{repo}/manifests/v1"),
        value,
    };
    let redirect = |repo: &str, to: String| ProxyRule::RedirectBlobs {
        repo: repo.into(),
        to,
    };
    let other_manifest = sha256_digest(b"some other manifest");
    for (repo, rule) in [
        (
            "fault/digest-differs",
            digest_header("fault/digest-differs", other_manifest),
        ),
        (
            "fault/digest-invalid",
            digest_header("fault/digest-invalid", "sha256:not-a-digest".into()),
        ),
        (
            "redirect/down",
            redirect("redirect/down", format!("http://{dead}/storage")),
        ),
        (
            "redirect/get-only",
            redirect("redirect/get-only", proxy.storage_url()),
        ),
    ] {
        single(registry, repo, "amd64").await;
        proxy.add(rule);
    }

    // Declared sizes that do not match what is served.
    let (mut manifest, _, _, layer) = image_parts(registry, "size/layer", "size", "amd64").await;
    manifest["layers"][0]["size"] = json!(layer.len() + 7);
    put(registry, "size/layer", "v1", &manifest).await;
    let a = child(registry, "size/child", "amd64").await;
    let mut wrong = raw::entry(&a.1, Some(("linux", "amd64")));
    wrong["size"] = json!(a.1.len() + 3);
    put(registry, "size/child", "v1", &raw::index(vec![wrong])).await;

    // A config blob that is not JSON.
    let (layer, _) = raw::layer("config not json").unwrap();
    let manifest = oci_image(registry, "config/not-json", b"this is not JSON", &layer).await;
    put(registry, "config/not-json", "v1", &manifest).await;

    // Index entries without `platform`: containerd matches them through the config.
    for (repo, arch) in [("unlabelled/amd64", "amd64"), ("unlabelled/arm64", "arm64")] {
        let unlabelled = child(registry, repo, arch).await;
        put(
            registry,
            repo,
            "v1",
            &raw::index(vec![raw::entry(&unlabelled.1, None)]),
        )
        .await;
    }

    // An index nested in an index.
    let a = child(registry, "nested/index", "amd64").await;
    let b = child(registry, "nested/index", "arm64").await;
    let inner = raw::index(vec![
        raw::entry(&a.1, Some(("linux", "amd64"))),
        raw::entry(&b.1, Some(("linux", "arm64"))),
    ]);
    let inner_body = serde_json::to_vec(&inner).unwrap();
    put(
        registry,
        "nested/index",
        &sha256_digest(&inner_body),
        &inner,
    )
    .await;
    let outer = raw::index(vec![raw::descriptor(raw::OCI_INDEX, &inner_body)]);
    put(registry, "nested/index", "v1", &outer).await;

    // Documents as Go's encoding/json reads them (containerd's, and the registry's,
    // which validates what is put with the same rules). Keys in another case, and a
    // repeated `layers` key whose {"size"} decodes into the first array's element.
    let (layer, diff_id) = raw::layer("go json keys").unwrap();
    let config = raw::config("amd64", &[&diff_id], "go-json");
    raw::push_blobs(registry, "gojson/keys", &[&config, &layer])
        .await
        .unwrap();
    let body = format!(
        r#"{{"SchemaVersion":2,"mediaType":"{}","Config":{},"layers":[{}],"LAYERS":[{{"size":{}}}]}}"#,
        raw::OCI_MANIFEST,
        raw::descriptor(raw::OCI_CONFIG, &config),
        raw::descriptor(raw::OCI_LAYER, &layer),
        layer.len()
    );
    raw::put_manifest(
        registry,
        "gojson/keys",
        "v1",
        raw::OCI_MANIFEST,
        body.as_bytes(),
    )
    .await
    .unwrap();
    // An index entry for amd64 whose `platform`, given again, is merged into arm64.
    let a = child(registry, "gojson/platform", "amd64").await;
    let entry = raw::entry(&a.1, Some(("linux", "amd64"))).to_string();
    let entry = format!(
        r#"{},"Platform":{{"architecture":"arm64"}}}}"#,
        entry.strip_suffix('}').unwrap()
    );
    let body = format!(
        r#"{{"schemaVersion":2,"mediaType":"{}","manifests":[{entry}]}}"#,
        raw::OCI_INDEX
    );
    raw::put_manifest(
        registry,
        "gojson/platform",
        "v1",
        raw::OCI_INDEX,
        body.as_bytes(),
    )
    .await
    .unwrap();
    // The other kind's field given as null: the registry (an interface{}) takes it,
    // containerd's validateMediaType (a json.RawMessage) does not.
    let a = child(registry, "gojson/index-layers", "amd64").await;
    let mut index = raw::index(vec![raw::entry(&a.1, Some(("linux", "amd64")))]);
    index["layers"] = serde_json::Value::Null;
    put(registry, "gojson/index-layers", "v1", &index).await;
    let (mut manifest, _, _, _) =
        image_parts(registry, "gojson/manifest-manifests", "null", "amd64").await;
    manifest["manifests"] = serde_json::Value::Null;
    put(registry, "gojson/manifest-manifests", "v1", &manifest).await;

    // Configs with a field of the wrong type for image-spec's Image, which
    // containerd's unpack decodes whole (the walk reads only the platform and rootfs).
    for (repo, field, value) in [
        ("gojson/config-created", "created", json!("yesterday")),
        ("gojson/config-env", "config", json!({"Env": "A=1"})),
    ] {
        let (layer, diff_id) = raw::layer(repo).unwrap();
        let mut config: serde_json::Value =
            serde_json::from_slice(&raw::config("amd64", &[&diff_id], repo)).unwrap();
        config[field] = value;
        let config = serde_json::to_vec(&config).unwrap();
        let manifest = oci_image(registry, repo, &config, &layer).await;
        put(registry, repo, "v1", &manifest).await;
    }

    // Docker schema 1, converted by the registry and put back.
    raw::schema1_image(registry, "schema1/ok").await.unwrap();
    let layer = raw::schema1_image(registry, "schema1/gone-layer")
        .await
        .unwrap();
    raw::delete_blob(registry, "schema1/gone-layer", &layer)
        .await
        .unwrap();
    raw::schema1_image(registry, "schema1/gone-empty")
        .await
        .unwrap();
    raw::delete_blob(registry, "schema1/gone-empty", raw::EMPTY_TAR_GZ)
        .await
        .unwrap();

    raw::schema1_image(registry, "schema1/in-index")
        .await
        .unwrap();
    let signed = registry
        .request(
            http::Method::GET,
            "/v2/schema1/in-index/manifests/v1",
            &[],
            Vec::new(),
        )
        .await
        .unwrap();
    let digest = signed.header("docker-content-digest").unwrap().to_string();
    let entry = json!({
        "mediaType": "application/vnd.docker.distribution.manifest.v1+prettyjws",
        "digest": digest,
        "size": signed.body.len(),
        "platform": { "os": "linux", "architecture": "amd64" },
    });
    put(registry, "schema1/in-index", "v1", &raw::index(vec![entry])).await;

    // "never/pushed": a tag that was never pushed.
    TABLE
        .iter()
        .map(|&(name, repo, want)| Scenario {
            name,
            image: format!("{host}/{repo}:v1"),
            want,
        })
        .collect()
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

/// `pullwatch-agent check IMAGE -o json` against `node`'s runtime and hosts dir, with
/// no containerd config and an empty kubelet dir under `dir`.
fn agent_check_args(image: &str, node: &Containerd, dir: &std::path::Path) -> Vec<String> {
    vec![
        "check".to_string(),
        image.to_string(),
        "-o".into(),
        "json".into(),
        format!("--cri-endpoint={}", node.endpoint()),
        format!("--containerd-hosts-dir={}", node.hosts_dir().display()),
        format!("--containerd-config={}", dir.join("none.toml").display()),
        format!("--kubelet-root-dir={}", dir.join("kubelet").display()),
    ]
}

/// A CRI client of `node`'s containerd, the truth the views are held to.
fn cri_of(node: &Containerd) -> CriClient {
    let timeouts = CriTimeouts {
        call: Duration::from_secs(30),
        pull: Duration::from_secs(60),
    };
    CriClient::new(&node.endpoint(), timeouts, None).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn each_view_agrees_with_containerd_on_every_registry_state() {
    bounded(async {
        let aggregator = workspace_binary("pullwatch-aggregator").unwrap();
        let agent = workspace_binary("pullwatch-agent").unwrap();
        let registry = Registry::start(RegistryOptions {
            allow_foreign_urls: true,
            schema1: true,
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
                // This node's containerd is 1.6 (agents learn it from CRI `Version`).
                "--schema1-images=converted".into(),
            ],
        )
        .await;
        let rows = stdout_json(&output);
        let central_requests = proxy.take_requests();

        let cri = cri_of(&node);

        let mut disagreements = Vec::new();
        for (i, scenario) in table.iter().enumerate() {
            let row = rows
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["name"] == format!("s{i}"))
                .unwrap_or_else(|| panic!("no row for {}", scenario.name));
            let mut args = agent_check_args(&scenario.image, &node, dir.path());
            args.push("--request-timeout=10s".into());
            let resolve_args = [args.clone(), vec!["--mode=resolve".into()]].concat();
            let resolve = stdout_json(&run(&agent, &resolve_args).await);
            let default = stdout_json(&run(&agent, &args).await);
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
            let want = scenario.want;
            if truth != want.pullable {
                disagreements.push(format!(
                    "{}: the table says pullable={} but containerd {truth_says}",
                    scenario.name, want.pullable
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
                } else if status != want.status || !reason.contains(want.reason_has) {
                    disagreements.push(format!(
                        "{}: {view} says {status} ({reason}); the table wants {} with {:?}",
                        scenario.name, want.status, want.reason_has
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

        schema1_on_other_runtimes(&aggregator, &proxy.host(), dir.path()).await;
        shallower_checks_say_what_they_skipped(&aggregator, &agent, &proxy.host(), &node, dir.path())
            .await;

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
        // A schema 1 image on containerd 1.x: its manifest, then the one layer that is
        // not empty (the throwaway blob is not asked for, as containerd does not).
        assert_eq!(
            of_repo(&central_requests, "schema1/ok"),
            ["HEAD manifests 200", "GET manifests 200", "GET blobs 206"],
            "{central_requests:?}"
        );
    })
    .await;
}

/// The schema 1 rows on runtimes other than this node's containerd 1.6: containerd 2
/// refuses them all (the aggregator's default), CRI-O copies every layer blob, the
/// empty one too, as skopeo (containers/image) does here.
async fn schema1_on_other_runtimes(
    aggregator: &std::path::Path,
    host: &str,
    dir: &std::path::Path,
) {
    let rows: Vec<Scenario> = SCHEMA1_ROWS
        .iter()
        .map(|(repo, _)| Scenario {
            name: repo,
            image: format!("{host}/{repo}:v1"),
            want: PULLABLE,
        })
        .collect();
    let files = dir.join("schema1");
    std::fs::create_dir_all(&files).unwrap();
    std::fs::write(files.join("all.yaml"), manifests(&rows)).unwrap();
    let check = |pulls: &'static str| {
        let files = files.clone();
        async move {
            let mut args: Vec<String> = ["check", "-f"].map(String::from).to_vec();
            args.push(files.display().to_string());
            args.extend(
                [
                    "-o",
                    "json",
                    "--allow-plain-http",
                    "--platform",
                    "linux/amd64",
                ]
                .map(String::from),
            );
            if !pulls.is_empty() {
                args.push(format!("--schema1-images={pulls}"));
            }
            stdout_json(&run(aggregator, &args).await)
        }
    };
    let policy = dir.join("policy.json");
    std::fs::write(
        &policy,
        r#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
    )
    .unwrap();
    let refused = check("").await;
    let copied = check("copied").await;
    for (i, ((repo, skopeo_copies), row)) in SCHEMA1_ROWS.iter().zip(&rows).enumerate() {
        let find = |value: &serde_json::Value| {
            value
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["name"] == format!("s{i}"))
                .cloned()
                .unwrap_or_else(|| panic!("no row for {repo}"))
        };
        let by_default = find(&refused);
        assert_eq!(status_of(&by_default), UnknownError, "{repo}: {by_default}");
        assert!(
            by_default["reason"]
                .as_str()
                .unwrap_or_default()
                .contains("containerd 2.0 and later refuse"),
            "{repo}: {by_default}"
        );
        let truth =
            tokio::process::Command::new(pullwatch_testbench::require_tool("skopeo").unwrap())
                .arg("--policy")
                .arg(&policy)
                .args(["copy", "--src-tls-verify=false"])
                .arg(format!("docker://{}", row.image))
                .arg(format!("dir:{}", dir.join(format!("skopeo-{i}")).display()))
                .output()
                .await
                .unwrap();
        let said = String::from_utf8_lossy(&truth.stderr);
        assert_eq!(
            truth.status.success(),
            *skopeo_copies,
            "{repo}: skopeo {said}"
        );
        let crio = find(&copied);
        assert_eq!(
            status_of(&crio) == Available,
            truth.status.success(),
            "{repo}: pullwatch (copied) says {crio} but skopeo {said}"
        );
    }
}

/// `--check-depth` below `blobs`: what a shallower check does not fetch it cannot see,
/// and its `available` says what it skipped, centrally and on a node; what it does
/// fetch still fails.
async fn shallower_checks_say_what_they_skipped(
    aggregator: &std::path::Path,
    agent: &std::path::Path,
    host: &str,
    node: &Containerd,
    dir: &std::path::Path,
) {
    // (repository, depth, status, the reason has)
    let rows = [
        (
            "gone/layer",
            "manifest",
            Available,
            "--check-depth manifest: the tag's manifest only",
        ),
        (
            "gone/child",
            "manifest",
            Available,
            "child manifest, the config and the layers were not checked",
        ),
        (
            "gone/layer",
            "platform",
            Available,
            "--check-depth platform: the config and the layers were not checked",
        ),
        (
            "gone/child-layer",
            "platform",
            Available,
            "--check-depth platform",
        ),
        ("gone/child", "platform", Absent, "platform manifest"),
        ("ok/single", "blobs", Available, ""),
    ];
    for (repo, depth, want, reason_has) in rows {
        let image = format!("{host}/{repo}:v1");
        let files = dir.join(format!("depth-{}-{depth}", repo.replace('/', "-")));
        std::fs::create_dir_all(&files).unwrap();
        let scenario = Scenario {
            name: repo,
            image: image.clone(),
            want: PULLABLE,
        };
        std::fs::write(files.join("all.yaml"), manifests(&[scenario])).unwrap();
        let central = stdout_json(
            &run(
                aggregator,
                &[
                    "check".into(),
                    "-f".into(),
                    files.display().to_string(),
                    "-o".into(),
                    "json".into(),
                    "--allow-plain-http".into(),
                    "--platform".into(),
                    "linux/amd64".into(),
                    format!("--check-depth={depth}"),
                ],
            )
            .await,
        )[0]
        .clone();
        let mut args = agent_check_args(&image, node, dir);
        args.extend(["--mode=resolve".into(), format!("--check-depth={depth}")]);
        let on_node = stdout_json(&run(agent, &args).await);
        for (view, value) in [("check", &central), ("agent", &on_node)] {
            let reason = value["reason"].as_str().unwrap_or_default();
            assert_eq!(status_of(value), want, "{repo} at {depth}, {view}: {value}");
            assert!(
                reason.contains(reason_has),
                "{repo} at {depth}, {view}: {reason:?} lacks {reason_has:?}"
            );
            if depth == "blobs" {
                assert_eq!(reason, "", "{repo}: a full check skipped nothing");
            }
        }
    }
}

/// After a failed pull of an artifact, containerd keeps an image record with its tag
/// but no repo digest: the agent does not take that tag as held.
#[tokio::test(flavor = "multi_thread")]
async fn a_tag_without_a_repo_digest_is_not_held() {
    bounded(async {
        let agent = workspace_binary("pullwatch-agent").unwrap();
        let registry = Registry::start(RegistryOptions::default()).await.unwrap();
        let node = Containerd::start(ContainerdOptions::default())
            .await
            .unwrap();
        let host = registry.host();
        node.write_hosts_toml(&host, &format!("server = \"http://{host}\"\n"))
            .unwrap();
        let chart_config = br#"{"name":"app","version":"1.0.0"}"#;
        helm_chart(&registry, "charts/app", chart_config, b"chart bytes").await;
        let image = format!("{host}/charts/app:v1");
        let cri = cri_of(&node);
        assert!(
            cri.pull_image(&image, None).await.is_err(),
            "containerd pulls no chart"
        );
        let record = cri.image_status(&image).await.unwrap();
        let kept = record
            .as_ref()
            .expect("containerd keeps a record of the failed pull");
        assert!(kept.repo_digests.is_empty(), "{kept:?}");
        let dir = tempfile::tempdir().unwrap();
        for extra in [None, Some("--pull-absent-images")] {
            let mut args = agent_check_args(&image, &node, dir.path());
            args.extend(extra.map(str::to_string));
            let value = stdout_json(&run(&agent, &args).await);
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
