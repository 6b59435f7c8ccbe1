//! Shared set-up for the integration tests that run checkers on simulated nodes (a real
//! containerd each): the agent's own, and the aggregator's agent tests (which include
//! this file by path: the test bench cannot depend on the agent crate).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use pullwatch::registry::{NoObserver, RegistryObserver};
use pullwatch_agent::check::resolve::{Resolver, ResolverConfig};
use pullwatch_agent::check::{CheckOptions, Checker};
use pullwatch_agent::cri::{CallObserver, CriClient, CriTimeouts};
use pullwatch_agent::keyring::{KeyringConfig, NodeKeyring};
use pullwatch_agent::route::containerd::RuntimeAuth;
use pullwatch_testbench::Containerd;

pub const USER: &str = "alice";
/// The test bench's canary: every test asserts it never reaches a log or /metrics.
pub const PASSWORD: &str = pullwatch_testbench::CANARY_PASSWORD;

/// What a simulated node has besides its containerd.
#[derive(Default)]
pub struct NodeSetup {
    /// A kubelet `config.json` in the node's kubelet root dir.
    pub kubelet_config_json: Option<String>,
    /// A credential-provider plugin: (config YAML, plugin name, shell script body).
    pub plugin: Option<(String, String, String)>,
    pub options: Option<CheckOptions>,
    /// Receives every CRI call (the agent's metrics).
    pub observer: Option<Arc<dyn CallObserver>>,
    /// Hears the registries' answers to the resolver (the agent's metrics, as in
    /// `pullwatch-agent run`: the pull quotas registries announce).
    pub registry_observer: Option<Arc<dyn RegistryObserver>>,
}

pub const PULL_ABSENT: CheckOptions = CheckOptions {
    pull_absent_images: true,
    keep_pulled_images: false,
};

/// Pulls absent images for the check and keeps them, as a kubelet's pull would.
pub const PULL_AND_KEEP: CheckOptions = CheckOptions {
    pull_absent_images: true,
    keep_pulled_images: true,
};

pub const DEFAULT_OPTIONS: CheckOptions = CheckOptions {
    pull_absent_images: false,
    keep_pulled_images: false,
};

/// A checker for `node`, whose node files (kubelet root dir, plugin bin dir) live in
/// the node's temp dir. The docker config search path is the kubelet root dir only,
/// so the machine's own ~/.docker never leaks into a test.
pub fn checker(node: &Containerd, setup: NodeSetup) -> Checker {
    let kubelet_dir = kubelet_dir(node.dir());
    if let Some(json) = &setup.kubelet_config_json {
        std::fs::write(kubelet_dir.join("config.json"), json).unwrap();
    }
    let provider = setup
        .plugin
        .as_ref()
        .map(|(yaml, name, body)| node.install_credential_provider(name, body, yaml).unwrap());
    let resolver = Resolver::observed(
        ResolverConfig {
            hosts_dir: node.hosts_dir(),
            runtime_auth: RuntimeAuth::load(node.config_path()).unwrap(),
            request_timeout: Duration::from_secs(10),
        },
        pullwatch::registry::pull_path::WalkSettings::default(),
        setup
            .registry_observer
            .unwrap_or_else(|| Arc::new(NoObserver)),
    );
    Checker::new(
        cri_client(node, setup.observer),
        Arc::new(keyring(&kubelet_dir, provider)),
        Arc::new(resolver),
        setup.options.unwrap_or(DEFAULT_OPTIONS),
    )
}

/// A checker for `node` with nothing on the node but containerd, checking with `options`.
pub fn checker_with(node: &Containerd, options: CheckOptions) -> Checker {
    checker(
        node,
        NodeSetup {
            options: Some(options),
            ..NodeSetup::default()
        },
    )
}

/// A checker whose runtime socket does not exist: enough for the session loop to
/// register (it reports no images) without a containerd. Its node files live in `dir`.
pub fn idle_checker(dir: &Path) -> Checker {
    let resolver = Resolver::new(ResolverConfig {
        hosts_dir: dir.join("certs.d"),
        runtime_auth: RuntimeAuth::default(),
        request_timeout: Duration::from_secs(1),
    });
    let absent_socket = format!("unix://{}", dir.join("none.sock").display());
    let timeouts = CriTimeouts {
        call: Duration::from_secs(1),
        pull: Duration::from_secs(1),
    };
    Checker::new(
        CriClient::new(&absent_socket, timeouts, None).unwrap(),
        Arc::new(keyring(&kubelet_dir(dir), None)),
        Arc::new(resolver),
        DEFAULT_OPTIONS,
    )
}

/// A CRI client for `node`'s containerd with the agent's default timeouts.
pub fn cri_client(node: &Containerd, observer: Option<Arc<dyn CallObserver>>) -> CriClient {
    let timeouts = CriTimeouts {
        call: Duration::from_secs(10),
        pull: Duration::from_secs(60),
    };
    CriClient::new(&node.endpoint(), timeouts, observer).unwrap()
}

/// The kubelet root dir under a node's `dir`, created.
fn kubelet_dir(dir: &Path) -> PathBuf {
    let kubelet_dir = dir.join("kubelet");
    std::fs::create_dir_all(&kubelet_dir).unwrap();
    kubelet_dir
}

/// The node keyring reading the kubelet root dir only, and the credential-provider
/// plugin installed as `(config, bin dir)`, if any.
fn keyring(kubelet_dir: &Path, provider: Option<(PathBuf, PathBuf)>) -> NodeKeyring {
    let (provider_config, provider_bin_dir) = provider.unzip();
    NodeKeyring::new(&KeyringConfig {
        kubelet_root_dir: kubelet_dir.to_path_buf(),
        config_json_dirs: Some(vec![kubelet_dir.to_path_buf()]),
        dockercfg_dirs: Some(vec![kubelet_dir.to_path_buf()]),
        provider_config,
        provider_bin_dir,
    })
    .unwrap()
}

/// A kubelet config.json with `user:password` for `host`.
pub fn config_json(host: &str, user: &str, password: &str) -> String {
    serde_json::json!({"auths": {host: {"username": user, "password": password}}}).to_string()
}

/// A CredentialProviderConfig for one plugin matching `host`, and a plugin script
/// answering with `user:password` for it (and logging each request to `log`).
pub fn plugin(host: &str, log: &Path) -> (String, String, String) {
    plugin_answering_after(host, log, 0)
}

/// [`plugin`], answering only after `delay` seconds.
pub fn plugin_answering_after(host: &str, log: &Path, delay: u32) -> (String, String, String) {
    let yaml = format!(
        r#"apiVersion: kubelet.config.k8s.io/v1
kind: CredentialProviderConfig
providers:
  - name: test-provider
    matchImages: ["{host}"]
    defaultCacheDuration: 1m
    apiVersion: credentialprovider.kubelet.k8s.io/v1
"#
    );
    let response = serde_json::json!({
        "apiVersion": "credentialprovider.kubelet.k8s.io/v1",
        "kind": "CredentialProviderResponse",
        "cacheKeyType": "Registry",
        "cacheDuration": "30s",
        "auth": {host: {"username": USER, "password": PASSWORD}},
    })
    .to_string();
    let body = format!(
        "cat >> '{log}'\necho >> '{log}'\nsleep {delay}\nprintf '%s' '{response}'",
        log = log.display()
    );
    (yaml, "test-provider".to_string(), body)
}

/// Image references (repo tags) the node holds, via CRI ListImages.
pub async fn node_images(checker: &Checker) -> Vec<String> {
    checker
        .cri()
        .list_images()
        .await
        .unwrap()
        .into_iter()
        .flat_map(|i| i.repo_tags)
        .collect()
}

/// Access-log lines of a registry that fetched blobs (layer or config downloads).
pub fn blob_gets(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains("\"GET /v2/") && l.contains("/blobs/"))
        .map(str::to_string)
        .collect()
}

/// The config digests `reference` of `repo` leads to (through an index's children).
pub async fn config_digests(
    registry: &pullwatch_testbench::Registry,
    repo: &str,
    reference: &str,
) -> Vec<String> {
    let read = |reference: String| async move {
        let answer = registry.get_manifest(repo, &reference).await.unwrap();
        serde_json::from_slice::<serde_json::Value>(&answer.body).unwrap()
    };
    let top = read(reference.to_string()).await;
    let mut manifests = vec![top.clone()];
    for child in top["manifests"].as_array().into_iter().flatten() {
        manifests.push(read(child["digest"].as_str().unwrap().to_string()).await);
    }
    manifests
        .iter()
        .filter_map(|m| m["config"]["digest"].as_str().map(str::to_string))
        .collect()
}

/// Blob downloads in an access log: `GET`s of blobs other than a config in `configs`
/// that were not a 1-byte ranged answer (the pull-path walk reads a layer's first byte
/// only, as a node's download would start, and configs whole).
pub fn layer_downloads(log: &str, configs: &[String]) -> Vec<String> {
    blob_gets(log)
        .into_iter()
        .filter(|l| !l.contains("\" 206 1 "))
        .filter(|l| !configs.iter().any(|c| l.contains(c.as_str())))
        .collect()
}

pub fn path_buf(p: &Path) -> PathBuf {
    p.to_path_buf()
}
