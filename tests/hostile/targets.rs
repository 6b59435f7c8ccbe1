//! Hostile-input targets, shared by `tests/tests/hostile_input.rs` (proptest, fixed seeds,
//! 10,000 cases each) and `tests/benches/hostile_input.rs` (a larger budget that counts
//! cases and panics instead of stopping at the first).
//!
//! Every parser that reads bytes pullwatch does not control, through its public entry
//! point (a private parser through the nearest public one, named in each target):
//!
//! | target | untrusted input | entry point |
//! |---|---|---|
//! | `image_references` | image fields of pod specs | `ImageReference::parse`, `parse_with_default_registry` |
//! | `docker_configs` | Secret data, node config.json / .dockercfg | `DockerConfig::from_config_json`, `from_dockercfg`, then `Keyring` |
//! | `manifest_documents` | manifest YAML/JSON files | `inventory::manifests::load_text`, then `ImageIndex::build` |
//! | `containerd_config` | containerd's config.toml | `route::containerd::RuntimeAuth::parse` |
//! | `hosts_toml` | containerd's hosts.toml | `route::containerd::registry_hosts` (reads the file) |
//! | `cri_errors` | CRI error statuses and messages | `cri::classify_pull_error` |
//! | `www_authenticate` | registry challenge headers (shared client) | `registry::challenge::parse`, `auth_scheme` |
//! | `registry_bodies` | registry status and error bodies (shared client) | `registry::classify::classify_response` |
//! | `ratelimit_headers` | pull-quota headers of manifest answers (shared client) | `registry::quota::Quota::from_headers` |
//! | `registry_exchanges` | a registry's whole answers: challenges, token bodies, manifest answers | agent `Resolver::resolve` (its challenge and token parsers are private) every case, aggregator `CentralChecker::check` every fourth, against a loopback stub |
//! | `credential_provider_responses` | kubelet credential-provider plugin stdout | agent `NodeKeyring::lookup` running a plugin |
//! | `agent_messages` | what the aggregator receives from agents | `AgentMessage::decode`, then the hub (`register`, `update_images`, `check_target` with the decoded result) |
//! | `aggregator_messages` | what an agent receives from the aggregator | `AggregatorMessage::decode`, then the task's reference and mode |
//! | `pull_path_documents` | what the pull-path walk reads from a registry: indexes and manifest lists, image manifests, image configs | `registry::pull_path::hostile` (`#[doc(hidden)]`: the walk's private `parse_manifest`, `choose`, `parse_config`, `unpackable`), asserting the child chosen is containerd's, every digest the walk would fetch is valid, unpack only passes what containerd unpacks, reasons stay short |
//! | `schema1_documents` | Docker schema 1 manifests, signed (libtrust's pretty JWS) or not, with hostile history entries | `registry::pull_path::hostile::schema1_plan` for containerd 1.x, containers/image and containerd 2, asserting each blob downloaded is in the manifest, once, with a valid digest; reasons stay short; and, for well-formed documents, exactly the blobs each runtime downloads (computed here) |
//! | `cri_responses` | what the agent receives from the container runtime | `VersionResponse`, `ListImagesResponse`, `ImageStatusResponse`, `PullImageResponse`, `RemoveImageResponse` decode, then the image tags |
//!
//! No target contacts anything but loopback: the stub registry's challenges point at the
//! stub itself, and random header values contain neither ':' nor '/', so no realm or
//! redirect can name another host.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proptest::prelude::*;
use proptest::strategy::BoxedStrategy;
use prost::Message;

/// One parser under attack.
pub trait Target {
    type Input: std::fmt::Debug + Clone;
    fn name(&self) -> &'static str;
    fn strategy(&self) -> BoxedStrategy<Self::Input>;
    fn run(&self, input: Self::Input);
}

// ---------------------------------------------------------------------------------
// Input generators

/// Pieces that make parsers take their less travelled paths.
const FRAGMENTS: &[&str] = &[
    "",
    " ",
    "\t",
    "\n",
    "\r\n",
    "\0",
    ":",
    "::",
    "/",
    "//",
    "@",
    "@sha256:",
    "sha256:",
    ".",
    "..",
    "-",
    "_",
    "__",
    "[",
    "]",
    "[::1]",
    "[::1]:5000",
    "localhost",
    "localhost:5000",
    "docker.io",
    "index.docker.io",
    "library/",
    "reg.io",
    "reg.io:5000",
    "*.reg.io",
    "127.0.0.1",
    ":0",
    ":65536",
    ":99999999999999999999",
    "a",
    "A",
    "z",
    "0",
    "9",
    "é",
    "ß",
    "İ",
    "\u{202e}",
    "\u{feff}",
    "😀",
    "\\",
    "\"",
    "'",
    "=",
    ",",
    ";",
    "{",
    "}",
    "[[",
    "]]",
    "#",
    "%",
    "%00",
    "%2F",
    "?",
    "&",
    "+",
    "==",
    "Bearer ",
    "Basic ",
    "realm=",
    "service=",
    "scope=",
    "error=",
    "\"\"",
    "\\\"",
    "repository:app:pull",
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "auths",
    "auth",
    "username",
    "password",
    "identitytoken",
    "registrytoken",
    "email",
    "apiVersion",
    "kind",
    "metadata",
    "spec",
    "containers",
    "image",
    "---",
    "- ",
    "  ",
    "|",
    ">",
    "&anchor",
    "*anchor",
    "!!binary",
    "~",
    "null",
    "true",
    "1e309",
    "-0",
    "0x10",
    "[host.\"",
    "\"]",
    "capabilities",
    "server",
    "skip_verify",
    "ca",
    "client",
    "header",
    "override_path",
    "plugins",
    "registry",
    "configs",
    "mirrors",
    "endpoint",
];

fn fragment_text(max: usize) -> BoxedStrategy<String> {
    prop::collection::vec(prop::sample::select(FRAGMENTS), 0..max)
        .prop_map(|parts| parts.concat())
        .boxed()
}

/// Arbitrary text, reference-shaped text, fragment soup, and lossy bytes.
pub fn hostile_text() -> BoxedStrategy<String> {
    prop_oneof![
        3 => any::<String>(),
        3 => "[a-zA-Z0-9:/@._\\-\\[\\]+=]{0,80}",
        3 => fragment_text(24),
        1 => prop::collection::vec(any::<u8>(), 0..128)
            .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        1 => (1usize..4096).prop_map(|n| "a".repeat(n)),
    ]
    .boxed()
}

/// Text safe for a header value: no ':' and no '/' (no URL can name another host).
pub fn header_text() -> BoxedStrategy<String> {
    prop_oneof![
        "[ -.0-9;-~]{0,80}",
        fragment_text(12).prop_map(|s| s.replace([':', '/'], "")),
    ]
    .boxed()
}

/// Arbitrary JSON, leaves from [`hostile_text`].
pub fn json_value() -> BoxedStrategy<serde_json::Value> {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        hostile_text().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    prop::sample::select(FRAGMENTS).prop_map(String::from),
                    hostile_text()
                ],
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
    .boxed()
}

fn base64(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// Random mutations of valid bytes: flips, truncations, insertions.
fn mutated(bytes: Vec<u8>) -> BoxedStrategy<Vec<u8>> {
    let len = bytes.len();
    prop::collection::vec((0usize..len.max(1) + 1, any::<u8>(), 0u8..4), 0..6)
        .prop_map(move |edits| {
            let mut out = bytes.clone();
            for (at, byte, kind) in edits {
                let at = at.min(out.len());
                match kind {
                    0 if at < out.len() => out[at] ^= byte | 1,
                    1 => out.truncate(at),
                    2 => out.insert(at, byte),
                    _ => {
                        if at < out.len() {
                            out.remove(at);
                        }
                    }
                }
            }
            out
        })
        .boxed()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

// ---------------------------------------------------------------------------------
// Image references

pub struct ImageReferences;

impl Target for ImageReferences {
    type Input = String;
    fn name(&self) -> &'static str {
        "image_references"
    }
    fn strategy(&self) -> BoxedStrategy<String> {
        prop_oneof![
            2 => hostile_text(),
            // name[:port]/path[:tag][@digest], pieces hostile.
            3 => (
                prop_oneof![Just(String::new()), hostile_text().prop_map(|h| format!("{h}/"))],
                "[a-z0-9._\\-/]{0,40}",
                prop_oneof![Just(String::new()), "[:][a-zA-Z0-9._\\-]{0,130}"],
                prop_oneof![Just(String::new()), "@sha256:[a-f0-9]{0,70}", "@[a-z0-9+._\\-]{0,10}:[a-zA-Z0-9=_\\-]{0,70}"],
            )
                .prop_map(|(host, path, tag, digest)| format!("{host}{path}{tag}{digest}")),
        ]
        .boxed()
    }
    fn run(&self, input: String) {
        for parsed in [
            pullwatch::ImageReference::parse(&input),
            pullwatch::ImageReference::parse_with_default_registry(&input, "reg.example:5000"),
        ] {
            match parsed {
                Ok(reference) => {
                    let text = reference.to_string();
                    let _ = (
                        reference.registry(),
                        reference.api_host(),
                        reference.repository(),
                        reference.tag(),
                        reference.digest(),
                        reference.manifest_reference(),
                        reference.name(),
                    );
                    // What it prints parses again (the aggregator sends it to agents).
                    let _ = pullwatch::ImageReference::parse(&text);
                }
                Err(error) => {
                    let _ = error.to_string();
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------
// Docker configs

pub struct DockerConfigs;

fn docker_config_json() -> BoxedStrategy<Vec<u8>> {
    use serde_json::{Value, json};
    let entry = (
        hostile_text(),
        prop_oneof![json_value(), hostile_text().prop_map(|t| Value::String(base64(&t))), (hostile_text(), hostile_text()).prop_map(|(u, p)| Value::String(base64(&format!("{u}:{p}"))))],
        json_value(),
        json_value(),
        json_value(),
    )
        .prop_map(|(key, auth, user, password, token)| {
            (key, json!({"auth": auth, "username": user, "password": password, "identitytoken": token, "email": "e"}))
        });
    prop_oneof![
        2 => prop::collection::vec(any::<u8>(), 0..256),
        2 => json_value().prop_map(|v| v.to_string().into_bytes()),
        4 => (prop::collection::vec(entry.clone(), 0..4), any::<bool>()).prop_map(|(entries, legacy)| {
            let map: serde_json::Map<String, Value> = entries.into_iter().collect();
            let value = if legacy { Value::Object(map) } else { json!({"auths": map}) };
            value.to_string().into_bytes()
        }),
        2 => (prop::collection::vec(entry, 0..4), any::<bool>()).prop_flat_map(|(entries, legacy)| {
            let map: serde_json::Map<String, Value> = entries.into_iter().collect();
            let value = if legacy { Value::Object(map) } else { json!({"auths": map}) };
            mutated(value.to_string().into_bytes())
        }),
    ]
    .boxed()
}

impl Target for DockerConfigs {
    type Input = Vec<u8>;
    fn name(&self) -> &'static str {
        "docker_configs"
    }
    fn strategy(&self) -> BoxedStrategy<Vec<u8>> {
        docker_config_json()
    }
    fn run(&self, input: Vec<u8>) {
        let images: Vec<pullwatch::ImageReference> = [
            "reg.io/app:1",
            "docker.io/library/nginx:1",
            "[::1]:5000/a/b:c",
        ]
        .iter()
        .filter_map(|i| pullwatch::ImageReference::parse(i).ok())
        .collect();
        for parsed in [
            pullwatch::DockerConfig::from_config_json(&input),
            pullwatch::DockerConfig::from_dockercfg(&input),
        ] {
            match parsed {
                Ok(config) => {
                    let mut keyring = pullwatch::Keyring::new();
                    keyring.add("secret/fuzz/config", &config);
                    for image in &images {
                        let _ = keyring.lookup(image);
                    }
                    // Lookups for references named after the config's own keys.
                    for key in config.entries.keys() {
                        if let Ok(image) = pullwatch::ImageReference::parse(&format!("{key}/app:1"))
                        {
                            let _ = keyring.lookup(&image);
                        }
                    }
                }
                Err(error) => {
                    let _ = error.to_string();
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------
// Manifest documents

pub struct ManifestDocuments;

fn manifest_text() -> BoxedStrategy<String> {
    use serde_json::{Value, json};
    let kinds = prop::sample::select(vec![
        "Deployment",
        "StatefulSet",
        "DaemonSet",
        "CronJob",
        "Job",
        "Pod",
        "ReplicaSet",
        "Secret",
        "ServiceAccount",
        "Namespace",
        "List",
        "ConfigMap",
        "",
    ]);
    let container = (
        hostile_text(),
        prop_oneof![json_value(), hostile_text().prop_map(Value::String)],
    )
        .prop_map(|(name, image)| json!({"name": name, "image": image}));
    let pod_spec = (
        prop::collection::vec(container.clone(), 0..3),
        prop::collection::vec(container, 0..2),
        json_value(),
        prop_oneof![Just(Value::Null), hostile_text().prop_map(Value::String)],
    )
        .prop_map(|(containers, init, secrets, sa)| {
            json!({"containers": containers, "initContainers": init, "imagePullSecrets": secrets, "serviceAccountName": sa})
        });
    let document = (kinds, hostile_text(), hostile_text(), pod_spec, json_value(), any::<u8>()).prop_map(
        |(kind, name, namespace, pod_spec, extra, shape)| {
            let spec = match shape % 4 {
                0 => json!({"template": {"spec": pod_spec}, "replicas": extra}),
                1 => json!({"jobTemplate": {"spec": {"template": {"spec": pod_spec}}}, "suspend": extra}),
                2 => pod_spec,
                _ => extra,
            };
            let mut doc = json!({
                "apiVersion": if kind == "Deployment" { "apps/v1" } else { "v1" },
                "kind": kind,
                "metadata": {"name": name, "namespace": namespace},
                "spec": spec,
            });
            if kind == "Secret" {
                doc["type"] = json!("kubernetes.io/dockerconfigjson");
                doc["data"] = json!({".dockerconfigjson": base64(&doc.to_string())});
            }
            if kind == "List" {
                doc["items"] = json!([doc.clone()]);
            }
            doc
        },
    );
    prop_oneof![
        2 => hostile_text(),
        3 => prop::collection::vec(document.clone(), 0..4).prop_map(|docs| {
            docs.iter()
                .map(|d| serde_yaml::to_string(d).unwrap_or_default())
                .collect::<Vec<_>>()
                .join("---\n")
        }),
        1 => prop::collection::vec(document, 0..3).prop_map(|docs| serde_json::Value::Array(docs).to_string()),
        1 => (fragment_text(40), fragment_text(40)).prop_map(|(a, b)| format!("{a}\n---\n{b}")),
    ]
    .boxed()
}

impl Target for ManifestDocuments {
    type Input = String;
    fn name(&self) -> &'static str {
        "manifest_documents"
    }
    fn strategy(&self) -> BoxedStrategy<String> {
        manifest_text()
    }
    fn run(&self, input: String) {
        use pullwatch_aggregator::index::{Filters, ImageIndex, IndexOptions};
        use pullwatch_aggregator::inventory::Inventory;
        let mut inventory = Inventory::default();
        if let Err(error) = pullwatch_aggregator::inventory::manifests::load_text(
            Path::new("hostile.yaml"),
            &input,
            &mut inventory,
        ) {
            let _ = error.to_string();
        }
        let options = IndexOptions {
            default_registry: "docker.io".into(),
            platforms: Vec::new(),
            schema1: None,
            mirrors: pullwatch_aggregator::mirrors::Mirrors::default(),
            filters: Filters::default(),
        };
        let index = ImageIndex::build(&inventory, &options);
        let _ = (index.containers(), index.container_count());
    }
}

// ---------------------------------------------------------------------------------
// containerd config and hosts.toml

fn toml_text() -> BoxedStrategy<String> {
    let value = prop_oneof![
        hostile_text().prop_map(|s| format!("{s:?}")),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<bool>().prop_map(|b| b.to_string()),
        prop::collection::vec(hostile_text(), 0..3).prop_map(|v| format!("{v:?}")),
        hostile_text(),
    ];
    let line = prop_oneof![
        (prop::sample::select(FRAGMENTS), value.clone()).prop_map(|(k, v)| format!("{k} = {v}")),
        (hostile_text(), value).prop_map(|(k, v)| format!("{k:?} = {v}")),
        hostile_text().prop_map(|s| format!("[host.{s:?}]")),
        hostile_text().prop_map(|s| format!(
            "[plugins.\"io.containerd.grpc.v1.cri\".registry.configs.{s:?}.auth]"
        )),
        Just("[plugins.\"io.containerd.grpc.v1.cri\".registry]".to_string()),
        Just("version = 2".to_string()),
        Just("version = 3".to_string()),
        hostile_text(),
    ];
    prop_oneof![
        1 => hostile_text(),
        4 => prop::collection::vec(line, 0..12).prop_map(|l| l.join("\n")),
    ]
    .boxed()
}

pub struct ContainerdConfig;

impl Target for ContainerdConfig {
    type Input = String;
    fn name(&self) -> &'static str {
        "containerd_config"
    }
    fn strategy(&self) -> BoxedStrategy<String> {
        toml_text()
    }
    fn run(&self, input: String) {
        if let Ok(auth) = pullwatch_agent::route::containerd::RuntimeAuth::parse(&input) {
            for host in auth.hosts() {
                let _ = auth.get(&host);
            }
            let _ = auth.get("reg.io");
        }
    }
}

pub struct HostsToml {
    root: tempfile::TempDir,
}

impl HostsToml {
    pub fn new() -> HostsToml {
        HostsToml {
            root: tempfile::tempdir().expect("a temp dir"),
        }
    }
}

impl Target for HostsToml {
    type Input = (String, String);
    fn name(&self) -> &'static str {
        "hosts_toml"
    }
    fn strategy(&self) -> BoxedStrategy<(String, String)> {
        (
            prop_oneof![
                3 => Just("reg.fuzz:5000".to_string()),
                1 => hostile_text(),
            ],
            toml_text(),
        )
            .boxed()
    }
    fn run(&self, (registry, toml): (String, String)) {
        let root = self.root.path();
        let dir: PathBuf = root.join("reg.fuzz:5000");
        let _ = std::fs::create_dir_all(&dir);
        let _ = std::fs::write(dir.join("hosts.toml"), &toml);
        let _ = pullwatch_agent::route::containerd::host_dir(root, &registry);
        if let Err(error) = pullwatch_agent::route::containerd::registry_hosts(root, &registry) {
            let _ = error.to_string();
        }
        if let Ok(hosts) = pullwatch_agent::route::containerd::registry_hosts(root, "reg.fuzz:5000")
        {
            for host in hosts {
                let _ = host.url();
            }
        }
    }
}

// ---------------------------------------------------------------------------------
// CRI errors

pub struct CriErrors;

impl Target for CriErrors {
    type Input = (i32, String, u8);
    fn name(&self) -> &'static str {
        "cri_errors"
    }
    fn strategy(&self) -> BoxedStrategy<(i32, String, u8)> {
        let message = prop_oneof![
            hostile_text(),
            (
                prop::sample::select(vec![
                    "failed to pull and unpack image",
                    "failed to resolve reference",
                    "not found",
                    "401 Unauthorized",
                    "403 Forbidden",
                    "429 Too Many Requests",
                    "connect: connection refused",
                    "i/o timeout",
                    "x509: certificate signed by unknown authority",
                    "unexpected status from HEAD request to",
                    "rpc error: code = ",
                    "desc = ",
                    "toomanyrequests",
                    "DENIED",
                    "manifest unknown",
                ]),
                hostile_text(),
                hostile_text()
            )
                .prop_map(|(known, a, b)| format!("{a}{known}{b}")),
        ];
        (any::<i32>(), message, any::<u8>()).boxed()
    }
    fn run(&self, (code, message, kind): (i32, String, u8)) {
        use pullwatch_agent::cri::{CriError, classify_pull_error};
        let error = match kind % 3 {
            0 => CriError::Rpc {
                rpc: "PullImage",
                code: tonic::Code::from_i32(code),
                message,
            },
            1 => CriError::Unreachable {
                rpc: "PullImage",
                endpoint: "unix:///run/containerd/containerd.sock".into(),
                message,
            },
            _ => CriError::Rpc {
                rpc: "ImageStatus",
                code: tonic::Code::from_i32(code % 17),
                message,
            },
        };
        let outcome = classify_pull_error(&error);
        let _ = (outcome.status, outcome.reason.len(), error.to_string());
    }
}

// ---------------------------------------------------------------------------------
// Aggregator: WWW-Authenticate and registry answers

pub struct WwwAuthenticate;

fn challenge_text() -> BoxedStrategy<String> {
    prop_oneof![
        hostile_text(),
        (
            prop::sample::select(vec![
                "Bearer",
                "bearer",
                "Basic",
                "BASIC",
                "Digest",
                "",
                "Bearer,",
                "Negotiate"
            ]),
            prop::collection::vec(
                (
                    prop::sample::select(vec![
                        "realm", "service", "scope", "error", "REALM", "", "x"
                    ]),
                    prop_oneof![
                        hostile_text().prop_map(|s| format!("{s:?}")),
                        hostile_text()
                    ],
                ),
                0..5
            ),
            prop::sample::select(vec![",", ", ", " ", ",,", ";"]),
        )
            .prop_map(|(scheme, params, sep)| {
                let params: Vec<String> = params
                    .into_iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                format!("{scheme} {}", params.join(sep))
            }),
    ]
    .boxed()
}

impl Target for WwwAuthenticate {
    type Input = Vec<String>;
    fn name(&self) -> &'static str {
        "www_authenticate"
    }
    fn strategy(&self) -> BoxedStrategy<Vec<String>> {
        prop::collection::vec(challenge_text(), 0..3).boxed()
    }
    fn run(&self, values: Vec<String>) {
        for value in &values {
            let _ = pullwatch::registry::challenge::parse(value);
        }
        let _ = pullwatch::registry::challenge::auth_scheme(values.iter().map(String::as_str));
    }
}

pub struct RatelimitHeaders;

/// A quota header value: hostile text, or Docker's and the IETF drafts' shapes with
/// hostile pieces.
fn quota_value() -> BoxedStrategy<String> {
    prop_oneof![
        hostile_text(),
        (
            prop_oneof![
                any::<u64>().prop_map(|n| n.to_string()),
                any::<i64>().prop_map(|n| n.to_string()),
                hostile_text()
            ],
            prop::sample::select(vec![";w=", ";W=", "; w = ", ";q=", ";r=", ";t=", ";", ","]),
            prop_oneof![any::<i64>().prop_map(|n| n.to_string()), hostile_text()],
            prop::sample::select(vec![
                "",
                ", ",
                ",",
                ";w=60",
                "\"p\";r=1",
                "\"",
                "?1",
                ":YQ==:"
            ]),
        )
            .prop_map(|(a, sep, b, tail)| format!("{a}{sep}{b}{tail}")),
    ]
    .boxed()
}

impl Target for RatelimitHeaders {
    type Input = Vec<(usize, String)>;
    fn name(&self) -> &'static str {
        "ratelimit_headers"
    }
    fn strategy(&self) -> BoxedStrategy<Self::Input> {
        prop::collection::vec((0..6usize, quota_value()), 0..6).boxed()
    }
    fn run(&self, fields: Self::Input) {
        const NAMES: [&str; 6] = [
            "ratelimit-limit",
            "ratelimit-remaining",
            "ratelimit-reset",
            "ratelimit",
            "ratelimit-policy",
            "docker-ratelimit-source",
        ];
        let mut headers = http::HeaderMap::new();
        for (name, value) in fields {
            // What a server could send: any value that is a valid header value.
            if let Ok(value) = http::HeaderValue::from_str(&value) {
                headers.append(NAMES[name % NAMES.len()], value);
            }
        }
        let _ = format!(
            "{:?}",
            pullwatch::registry::quota::Quota::from_headers(&headers)
        );
    }
}

pub struct RegistryBodies;

impl Target for RegistryBodies {
    type Input = (u16, Vec<u8>);
    fn name(&self) -> &'static str {
        "registry_bodies"
    }
    fn strategy(&self) -> BoxedStrategy<(u16, Vec<u8>)> {
        use serde_json::json;
        let errors = prop::collection::vec(
            (
                prop_oneof![
                    prop::sample::select(vec!["MANIFEST_UNKNOWN", "NAME_UNKNOWN", "NAME_INVALID", "TAG_INVALID", "DENIED", "UNAUTHORIZED", "TOOMANYREQUESTS", "UNSUPPORTED"]).prop_map(String::from),
                    hostile_text(),
                ],
                json_value(),
                json_value(),
            ),
            0..4,
        )
        .prop_map(|e| {
            let errors: Vec<serde_json::Value> = e
                .into_iter()
                .map(|(code, message, detail)| json!({"code": code, "message": message, "detail": detail}))
                .collect();
            json!({"errors": errors}).to_string().into_bytes()
        });
        (
            100u16..1000,
            prop_oneof![
                prop::collection::vec(any::<u8>(), 0..256),
                json_value().prop_map(|v| v.to_string().into_bytes()),
                errors,
            ],
        )
            .boxed()
    }
    fn run(&self, (status, body): (u16, Vec<u8>)) {
        if let Ok(status) = http::StatusCode::from_u16(status) {
            let outcome = pullwatch::registry::classify::classify_response(status, &body);
            let _ = outcome.reason.len();
        }
    }
}

// ---------------------------------------------------------------------------------
// Whole registry exchanges, aggregator and agent, against a loopback stub

/// What the stub registry answers during one case.
#[derive(Clone, Debug)]
pub struct Exchange {
    /// WWW-Authenticate of the first manifest answer (401); None: no challenge.
    pub challenge: Option<Challenge>,
    pub token_status: u16,
    pub token_body: String,
    pub manifest_status: u16,
    pub manifest_headers: Vec<(String, String)>,
    pub manifest_body: String,
}

#[derive(Clone, Debug)]
pub enum Challenge {
    /// `Bearer realm="<stub>/token<suffix>"` followed by hostile parameters.
    StubRealm {
        suffix: String,
        params: String,
    },
    Basic,
    /// Hostile text (without ':' or '/').
    Hostile(String),
}

struct StubState {
    /// The stub's own URL, for the realms it hands out.
    url: String,
    exchange: Option<Exchange>,
    /// Manifest paths already answered with the challenge this case.
    challenged: std::collections::HashSet<String>,
}

pub struct RegistryExchanges {
    runtime: tokio::runtime::Runtime,
    stub: pullwatch_testbench::StubServer,
    state: Arc<Mutex<StubState>>,
    case: AtomicUsize,
    checker: Mutex<Option<Arc<pullwatch_aggregator::checker::CentralChecker>>>,
    resolver: pullwatch_agent::check::resolve::Resolver,
    _hosts: tempfile::TempDir,
}

fn status_code() -> BoxedStrategy<u16> {
    prop_oneof![
        3 => prop::sample::select(vec![200u16, 201, 202, 204, 206, 301, 302, 304, 307, 308, 400, 401, 403, 404, 405, 406, 409, 410, 413, 418, 429, 500, 501, 502, 503, 504]),
        1 => 100u16..600,
    ]
    .boxed()
}

impl RegistryExchanges {
    pub fn new() -> RegistryExchanges {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let state = Arc::new(Mutex::new(StubState {
            url: String::new(),
            exchange: None,
            challenged: Default::default(),
        }));
        let handler_state = state.clone();
        let stub = runtime
            .block_on(pullwatch_testbench::StubServer::start(
                move |_method, path| stub_answer(&handler_state, path),
            ))
            .expect("the stub registry starts");
        state.lock().unwrap_or_else(|e| e.into_inner()).url = stub.url();
        let hosts = tempfile::tempdir().expect("a temp dir");
        let resolver = pullwatch_agent::check::resolve::Resolver::new(
            pullwatch_agent::check::resolve::ResolverConfig {
                hosts_dir: hosts.path().to_path_buf(),
                runtime_auth: pullwatch_agent::route::containerd::RuntimeAuth::default(),
                request_timeout: Duration::from_secs(3),
            },
        );
        RegistryExchanges {
            runtime,
            stub,
            state,
            case: AtomicUsize::new(0),
            checker: Mutex::new(None),
            resolver,
            _hosts: hosts,
        }
    }

    fn checker(&self) -> Arc<pullwatch_aggregator::checker::CentralChecker> {
        let mut slot = self.checker.lock().unwrap_or_else(|e| e.into_inner());
        slot.get_or_insert_with(|| {
            let metrics = pullwatch_aggregator::metrics::Metrics::new(false).expect("metrics");
            let config = pullwatch_aggregator::checker::CheckerConfig {
                allow_plain_http: true,
                request_timeout: Duration::from_secs(3),
                registry_limits: pullwatch_aggregator::checker::limits::RegistryLimits {
                    max_concurrency: 64,
                    requests_per_second: std::num::NonZeroU32::new(1_000_000).expect("non-zero"),
                },
                ..Default::default()
            };
            Arc::new(
                pullwatch_aggregator::checker::CentralChecker::new(
                    &config,
                    metrics.checker.clone(),
                )
                .expect("a checker"),
            )
        })
        .clone()
    }
}

fn stub_answer(state: &Mutex<StubState>, path: &str) -> pullwatch_testbench::StubResponse {
    use pullwatch_testbench::StubResponse;
    let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
    let Some(exchange) = state.exchange.clone() else {
        return StubResponse::new(503);
    };
    if path.starts_with("/token") {
        return StubResponse::new(exchange.token_status)
            .with_header("content-type", "application/json")
            .with_body(&exchange.token_body);
    }
    if path == "/v2/" || path == "/v2" {
        return StubResponse::new(200);
    }
    let manifest = path.split('?').next().unwrap_or(path).to_string();
    if state.challenged.insert(manifest)
        && let Some(challenge) = &exchange.challenge
    {
        let header = match challenge {
            Challenge::StubRealm { suffix, params } => {
                format!("Bearer realm=\"{}/token{suffix}\"{params}", state.url)
            }
            Challenge::Basic => "Basic realm=\"fuzz\"".to_string(),
            Challenge::Hostile(text) => text.clone(),
        };
        return StubResponse::new(401).with_header("www-authenticate", &header);
    }
    let mut response =
        StubResponse::new(exchange.manifest_status).with_body(&exchange.manifest_body);
    for (name, value) in &exchange.manifest_headers {
        response = response.with_header(name, value);
    }
    response
}

impl Target for RegistryExchanges {
    type Input = Exchange;
    fn name(&self) -> &'static str {
        "registry_exchanges"
    }
    fn strategy(&self) -> BoxedStrategy<Exchange> {
        use serde_json::json;
        let challenge = prop_oneof![
            1 => Just(None),
            1 => Just(Some(Challenge::Basic)),
            4 => (header_text(), prop_oneof![Just(String::new()), header_text().prop_map(|p| format!(",{p}")), Just(",service=\"fuzz\",scope=\"repository:fuzz/app:pull\"".to_string())])
                .prop_map(|(suffix, params)| Some(Challenge::StubRealm { suffix: suffix.replace('"', ""), params })),
            2 => header_text().prop_map(|t| Some(Challenge::Hostile(t))),
        ];
        let token_body = prop_oneof![
            hostile_text(),
            json_value().prop_map(|v| v.to_string()),
            (json_value(), json_value(), json_value()).prop_map(|(t, a, e)| {
                json!({"token": t, "access_token": a, "expires_in": e}).to_string()
            }),
            (hostile_text(), any::<i64>())
                .prop_map(|(t, e)| json!({"token": t, "expires_in": e}).to_string()),
        ];
        let header_name = prop::sample::select(vec![
            "content-type",
            "docker-content-digest",
            "retry-after",
            "location",
            "www-authenticate",
            "docker-distribution-api-version",
            "x-fuzz",
        ]);
        let header_value = prop_oneof![
            header_text(),
            Just("application/vnd.oci.image.manifest.v1+json".to_string()),
            Just("application/vnd.docker.distribution.manifest.list.v2+json".to_string()),
            "sha256:[a-f0-9]{0,70}",
            (0u64..100_000).prop_map(|n| n.to_string()),
        ];
        let manifest_body = prop_oneof![
            hostile_text(),
            json_value().prop_map(|v| v.to_string()),
            (json_value(), json_value()).prop_map(|(m, l)| {
                json!({"schemaVersion": 2, "mediaType": m, "manifests": l, "errors": l}).to_string()
            }),
        ];
        (
            challenge,
            status_code(),
            token_body,
            status_code(),
            prop::collection::vec((header_name, header_value), 0..4),
            manifest_body,
        )
            .prop_map(
                |(challenge, token_status, token_body, manifest_status, headers, manifest_body)| {
                    Exchange {
                        challenge,
                        token_status,
                        token_body,
                        manifest_status,
                        // A redirect goes back to the stub, never elsewhere.
                        manifest_headers: headers
                            .into_iter()
                            .map(|(n, v)| {
                                (
                                    n.to_string(),
                                    if n == "location" {
                                        format!("/v2/fuzz/{}", v.replace(['/', ':'], ""))
                                    } else {
                                        v
                                    },
                                )
                            })
                            .collect(),
                        manifest_body,
                    }
                },
            )
            .boxed()
    }
    fn run(&self, exchange: Exchange) {
        let case = self.case.fetch_add(1, Ordering::Relaxed);
        {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            state.exchange = Some(exchange.clone());
            state.challenged.clear();
        }
        // A fresh repository per case and side: no cached token short-circuits the
        // exchange, and each side gets its own challenge.
        let image =
            pullwatch::ImageReference::parse(&format!("{}/fuzz/agg{case}:v1", self.stub.host()))
                .expect("a valid reference");
        let node_image =
            pullwatch::ImageReference::parse(&format!("{}/fuzz/node{case}:v1", self.stub.host()))
                .expect("a valid reference");
        let credential = pullwatch::RegistryCredential {
            username: "fuzz".into(),
            password: pullwatch_testbench::CANARY_PASSWORD.into(),
            ..Default::default()
        };
        let key = pullwatch_aggregator::index::CheckKey::new(
            image.clone(),
            vec![pullwatch::SourcedCredential {
                source: Arc::from("secret/fuzz/regcred"),
                credential: credential.clone(),
            }]
            .into(),
        );
        let checker = self.checker();
        // Both sides at once, each on its own repository, against the same script. The
        // shared client's parsers (challenge, error bodies) get their 10,000 cases in
        // `www_authenticate` and `registry_bodies`; its whole conversation (token
        // exchange included) runs here every case through the agent's
        // `Resolver::resolve` and every fourth case through the aggregator's checker.
        let central_too = case.is_multiple_of(4);
        let (central, node) = self.runtime.block_on(async {
            tokio::join!(
                async {
                    if central_too {
                        tokio::time::timeout(Duration::from_secs(20), checker.check(&key))
                            .await
                            .map(Some)
                    } else {
                        Ok(None)
                    }
                },
                tokio::time::timeout(
                    Duration::from_secs(20),
                    self.resolver.resolve(&node_image, Some(&credential))
                ),
            )
        });
        // A 429 pauses the registry in the checker: start the next case afresh.
        if exchange.manifest_status == 429 || exchange.token_status == 429 {
            *self.checker.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
        let central = central.expect("the aggregator's check finishes");
        let node = node.expect("the agent's resolve finishes");
        // Reasons never carry the password.
        if let Some(central) = central {
            pullwatch_testbench::assert_no_canary("the aggregator's reason", &central.reason);
        }
        pullwatch_testbench::assert_no_canary("the agent's reason", &node.outcome.reason);
    }
}

// ---------------------------------------------------------------------------------
// Credential-provider plugin responses

pub struct CredentialProviderResponses {
    runtime: tokio::runtime::Runtime,
    dir: tempfile::TempDir,
    case: AtomicUsize,
    /// Rebuilt after a response that could have been cached (a cached answer would
    /// stand in for the plugin in later cases).
    keyring: Mutex<Option<Arc<pullwatch_agent::keyring::NodeKeyring>>>,
}

impl CredentialProviderResponses {
    pub fn new() -> CredentialProviderResponses {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("a temp dir");
        let bin = dir.path().join("bin");
        std::fs::create_dir_all(&bin).expect("bin dir");
        let plugin = bin.join("fuzz-provider");
        let response = dir.path().join("response.json");
        // Shell builtins only: one process per case, no more.
        std::fs::write(
            &plugin,
            format!(
                "#!/bin/sh\nwhile IFS= read -r l || [ -n \"$l\" ]; do printf '%s\\n' \"$l\"; done < '{}'\n",
                response.display()
            ),
        )
        .expect("plugin");
        std::fs::set_permissions(&plugin, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        std::fs::write(
            dir.path().join("config.yaml"),
            "apiVersion: kubelet.config.k8s.io/v1\nkind: CredentialProviderConfig\nproviders:\n  - name: fuzz-provider\n    matchImages: [\"*.fuzz\"]\n    defaultCacheDuration: 1m\n    apiVersion: credentialprovider.kubelet.k8s.io/v1\n",
        )
        .expect("config");
        CredentialProviderResponses {
            runtime: runtime(),
            dir,
            case: AtomicUsize::new(0),
            keyring: Mutex::new(None),
        }
    }
}

impl Target for CredentialProviderResponses {
    type Input = String;
    fn name(&self) -> &'static str {
        "credential_provider_responses"
    }
    fn strategy(&self) -> BoxedStrategy<String> {
        use serde_json::json;
        let auth = prop::collection::btree_map(
            prop_oneof![Just("*.fuzz".to_string()), hostile_text()],
            (json_value(), json_value()).prop_map(|(u, p)| json!({"username": u, "password": p})),
            0..4,
        );
        prop_oneof![
            1 => hostile_text(),
            1 => json_value().prop_map(|v| v.to_string()),
            4 => (
                prop_oneof![Just(json!("credentialprovider.kubelet.k8s.io/v1")), json_value()],
                prop_oneof![Just(json!("CredentialProviderResponse")), json_value()],
                prop_oneof![Just(json!("Image")), Just(json!("Registry")), Just(json!("Global")), json_value()],
                prop_oneof![Just(json!("0s")), Just(json!("1h30m")), hostile_text().prop_map(serde_json::Value::String), json_value()],
                auth,
            )
                .prop_map(|(api, kind, key_type, duration, auth)| {
                    json!({"apiVersion": api, "kind": kind, "cacheKeyType": key_type, "cacheDuration": duration, "auth": auth}).to_string()
                }),
        ]
        .boxed()
    }
    fn run(&self, response: String) {
        use pullwatch_agent::keyring::{KeyringConfig, NodeKeyring};
        let case = self.case.fetch_add(1, Ordering::Relaxed);
        std::fs::write(self.dir.path().join("response.json"), &response).expect("response");
        let keyring = {
            let mut slot = self.keyring.lock().unwrap_or_else(|e| e.into_inner());
            slot.get_or_insert_with(|| {
                let empty = self.dir.path().join("kubelet");
                let _ = std::fs::create_dir_all(&empty);
                Arc::new(
                    NodeKeyring::new(&KeyringConfig {
                        kubelet_root_dir: empty.clone(),
                        config_json_dirs: Some(vec![empty.clone()]),
                        dockercfg_dirs: Some(vec![empty]),
                        provider_config: Some(self.dir.path().join("config.yaml")),
                        provider_bin_dir: Some(self.dir.path().join("bin")),
                    })
                    .expect("the keyring"),
                )
            })
            .clone()
        };
        // Another registry per case: an Image- or Registry-keyed cache never answers.
        let image = pullwatch::ImageReference::parse(&format!("reg{case}.fuzz/app:1"))
            .expect("a reference");
        let lookup = self.runtime.block_on(keyring.lookup(&image, &[]));
        let _ = format!("{:?}", lookup.credentials.len());
        if response.contains("Global") {
            *self.keyring.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
    }
}

// ---------------------------------------------------------------------------------
// Protobuf: what the aggregator receives, what an agent receives

fn check_result() -> BoxedStrategy<pullwatch::proto::CheckResult> {
    (
        (
            any::<u64>(),
            hostile_text(),
            any::<i32>(),
            hostile_text(),
            any::<i32>(),
            hostile_text(),
        ),
        (
            any::<u64>(),
            any::<bool>(),
            any::<bool>(),
            hostile_text(),
            hostile_text(),
            any::<Option<bool>>(),
        ),
        prop::collection::vec(
            (
                hostile_text(),
                any::<u64>(),
                any::<Option<u64>>(),
                any::<Option<u64>>(),
            )
                .prop_map(|(registry, remaining, limit, window_seconds)| {
                    pullwatch::proto::RegistryQuota {
                        registry,
                        remaining,
                        limit,
                        window_seconds,
                    }
                }),
            0..4,
        ),
    )
        .prop_map(
            |(
                (task_id, image, status, reason, mode, source),
                (duration, present, runtime, digest, held, moved),
                quotas,
            )| {
                pullwatch::proto::CheckResult {
                    task_id,
                    image,
                    status: if status % 3 == 0 {
                        status
                    } else {
                        status.rem_euclid(10)
                    },
                    reason,
                    mode,
                    credential_source: source,
                    duration_millis: duration,
                    image_present: present,
                    runtime_failure: runtime,
                    digest,
                    held_digest: held,
                    tag_moved: moved,
                    quotas,
                }
            },
        )
        .boxed()
}

fn agent_message_bytes() -> BoxedStrategy<Vec<u8>> {
    use pullwatch::proto::{
        AgentMessage, Heartbeat, ImageInventory, Register, agent_message::Message,
    };
    let register = (
        hostile_text(),
        hostile_text(),
        prop::collection::vec(hostile_text(), 0..4),
        prop::collection::btree_map(hostile_text(), hostile_text(), 0..3),
    )
        .prop_map(|(node, runtime, images, labels)| {
            Message::Register(Register {
                node_name: node,
                runtime_name: runtime.clone(),
                runtime_version: runtime,
                agent_version: String::new(),
                images,
                node_labels: labels.into_iter().collect(),
            })
        });
    let message = prop_oneof![
        register,
        check_result().prop_map(Message::Result),
        any::<i64>().prop_map(|t| Message::Heartbeat(Heartbeat { unix_millis: t })),
        prop::collection::vec(hostile_text(), 0..6)
            .prop_map(|images| Message::Inventory(ImageInventory { images })),
    ];
    prop_oneof![
        1 => prop::collection::vec(any::<u8>(), 0..128),
        3 => message.prop_flat_map(|m| mutated(AgentMessage { message: Some(m) }.encode_to_vec())),
    ]
    .boxed()
}

/// The aggregator's side: decode, then hand it to the hub as the server would.
pub struct AgentMessages {
    runtime: tokio::runtime::Runtime,
    hub: pullwatch_aggregator::agents::AgentHub,
    answer: Arc<Mutex<Option<pullwatch::proto::CheckResult>>>,
    session: pullwatch_aggregator::agents::SessionId,
}

impl AgentMessages {
    pub fn new() -> AgentMessages {
        use pullwatch::proto::aggregator_message::Message;
        let runtime = runtime();
        let hub =
            pullwatch_aggregator::agents::AgentHub::new(pullwatch_aggregator::agents::HubConfig {
                tls: true,
                task_timeout: Duration::from_secs(5),
                ..Default::default()
            });
        let answer: Arc<Mutex<Option<pullwatch::proto::CheckResult>>> = Arc::default();
        let (tx, mut rx) = tokio::sync::mpsc::channel(16);
        let session = hub.register(agent_info("fuzz-node", BTreeMap::new(), Vec::new()), tx);
        let (h, s, a) = (hub.clone(), session.clone(), answer.clone());
        runtime.spawn(async move {
            while let Some(message) = rx.recv().await {
                if let Some(Message::Task(task)) = message.message {
                    let result = a.lock().unwrap_or_else(|e| e.into_inner()).clone();
                    if let Some(mut result) = result {
                        result.task_id = task.task_id;
                        h.complete(&s, result);
                    }
                }
            }
        });
        AgentMessages {
            runtime,
            hub,
            answer,
            session,
        }
    }
}

fn agent_info(
    node: &str,
    labels: BTreeMap<String, String>,
    images: Vec<String>,
) -> pullwatch_aggregator::agents::AgentInfo {
    pullwatch_aggregator::agents::AgentInfo {
        node_name: node.to_string(),
        runtime_name: "containerd".into(),
        runtime_version: "fuzz".into(),
        agent_version: "fuzz".into(),
        images: images.into_iter().collect(),
        node_labels: labels,
        connected_at: std::time::SystemTime::now(),
        in_flight: 0,
    }
}

impl Target for AgentMessages {
    type Input = Vec<u8>;
    fn name(&self) -> &'static str {
        "agent_messages"
    }
    fn strategy(&self) -> BoxedStrategy<Vec<u8>> {
        agent_message_bytes()
    }
    fn run(&self, bytes: Vec<u8>) {
        use pullwatch::proto::agent_message::Message;
        let Ok(message) = pullwatch::proto::AgentMessage::decode(bytes.as_slice()) else {
            return;
        };
        let _ = format!("{message:?}");
        match message.message {
            Some(Message::Register(register)) => {
                // As the server does: an empty node name is refused before the hub.
                if register.node_name.trim().is_empty() {
                    return;
                }
                let (tx, _rx) = tokio::sync::mpsc::channel(1);
                let session = self.hub.register(
                    agent_info(
                        &register.node_name,
                        register.node_labels.into_iter().collect(),
                        register.images,
                    ),
                    tx,
                );
                let _ = (self.hub.agents(), self.hub.holders("reg.io/app:1"));
                self.hub.unregister(&session);
            }
            Some(Message::Inventory(inventory)) => {
                self.hub
                    .update_images(&self.session, inventory.images.into_iter().collect());
                let _ = self.hub.holders("reg.io/app:1");
            }
            Some(Message::Result(result)) => {
                // The hub sends a task; the fake agent answers with the decoded result.
                *self.answer.lock().unwrap_or_else(|e| e.into_inner()) = Some(result);
                let target = pullwatch_aggregator::index::AgentTarget {
                    image: pullwatch::ImageReference::parse("reg.io/app:1").expect("a reference"),
                    credentials: Vec::new().into(),
                    sources: Default::default(),
                    workload_nodes: Default::default(),
                };
                let check = self.runtime.block_on(self.hub.check_target(&target));
                let _ = check.outcome();
                let _ = self.hub.node_quotas().by_registry();
            }
            Some(Message::Heartbeat(_)) => self.hub.touch(&self.session),
            None => {}
        }
    }
}

/// An agent's side: decode, then read the task as the session does.
pub struct AggregatorMessages;

impl Target for AggregatorMessages {
    type Input = Vec<u8>;
    fn name(&self) -> &'static str {
        "aggregator_messages"
    }
    fn strategy(&self) -> BoxedStrategy<Vec<u8>> {
        use pullwatch::proto::{
            AggregatorMessage, CheckTask, Heartbeat, PullCredential, Registered,
            aggregator_message::Message,
        };
        let credential = (
            hostile_text(),
            hostile_text(),
            hostile_text(),
            hostile_text(),
        )
            .prop_map(|(source, username, token, registry)| PullCredential {
                source,
                username,
                password: pullwatch_testbench::CANARY_PASSWORD.into(),
                identity_token: token,
                registry_token: registry,
            });
        let message = prop_oneof![
            (any::<u32>(), any::<u32>()).prop_map(|(h, m)| Message::Registered(Registered {
                heartbeat_interval_seconds: h,
                max_concurrent_checks: m
            })),
            (
                any::<u64>(),
                hostile_text(),
                any::<i32>(),
                prop::collection::vec(credential, 0..3)
            )
                .prop_map(|(id, image, mode, credentials)| Message::Task(CheckTask {
                    task_id: id,
                    image,
                    mode,
                    credentials
                })),
            any::<i64>().prop_map(|t| Message::Heartbeat(Heartbeat { unix_millis: t })),
        ];
        prop_oneof![
            1 => prop::collection::vec(any::<u8>(), 0..128),
            3 => message.prop_flat_map(|m| mutated(AggregatorMessage { message: Some(m) }.encode_to_vec())),
        ]
        .boxed()
    }
    fn run(&self, bytes: Vec<u8>) {
        use pullwatch::proto::aggregator_message::Message;
        let Ok(message) = pullwatch::proto::AggregatorMessage::decode(bytes.as_slice()) else {
            return;
        };
        // Debug output of a decoded message never shows a password.
        pullwatch_testbench::assert_no_canary("a decoded task's Debug", &format!("{message:?}"));
        if let Some(Message::Task(task)) = message.message {
            let _ = pullwatch::proto::CheckMode::try_from(task.mode);
            if let Ok(image) = pullwatch::ImageReference::parse(&task.image) {
                let _ = image.to_string();
            }
        }
    }
}

/// What the agent receives from the container runtime.
pub struct CriResponses;

impl Target for CriResponses {
    type Input = (u8, Vec<u8>);
    fn name(&self) -> &'static str {
        "cri_responses"
    }
    fn strategy(&self) -> BoxedStrategy<(u8, Vec<u8>)> {
        use pullwatch::cri::{Image, ImageSpec, ListImagesResponse};
        let image = (
            hostile_text(),
            prop::collection::vec(hostile_text(), 0..3),
            prop::collection::vec(hostile_text(), 0..3),
            any::<u64>(),
        )
            .prop_map(|(id, tags, digests, size)| Image {
                id,
                repo_tags: tags,
                repo_digests: digests,
                size,
                spec: Some(ImageSpec::default()),
                ..Default::default()
            });
        let list = prop::collection::vec(image, 0..4)
            .prop_map(|images| ListImagesResponse { images }.encode_to_vec());
        (
            any::<u8>(),
            prop_oneof![
                1 => prop::collection::vec(any::<u8>(), 0..160),
                2 => list.prop_flat_map(mutated),
            ],
        )
            .boxed()
    }
    fn run(&self, (which, bytes): (u8, Vec<u8>)) {
        use pullwatch::cri::{
            ImageStatusResponse, ListImagesResponse, PullImageResponse, RemoveImageResponse,
            VersionResponse,
        };
        match which % 5 {
            0 => {
                if let Ok(list) = ListImagesResponse::decode(bytes.as_slice()) {
                    // As the session does with the node's images.
                    for tag in list.images.iter().flat_map(|i| i.repo_tags.iter()) {
                        if let Ok(reference) = pullwatch::ImageReference::parse(tag) {
                            let _ = reference.to_string();
                        }
                    }
                }
            }
            1 => {
                let _ = VersionResponse::decode(bytes.as_slice()).map(|v| format!("{v:?}"));
            }
            2 => {
                let _ = ImageStatusResponse::decode(bytes.as_slice()).map(|v| format!("{v:?}"));
            }
            3 => {
                let _ = PullImageResponse::decode(bytes.as_slice()).map(|v| format!("{v:?}"));
            }
            _ => {
                let _ = RemoveImageResponse::decode(bytes.as_slice()).map(|v| format!("{v:?}"));
            }
        }
    }
}

// ---------------------------------------------------------------------------------
// The pull-path walk's documents: indexes, manifests, image configs

/// A descriptor field's value: plausible, or hostile in type and content.
fn descriptor_digest() -> BoxedStrategy<serde_json::Value> {
    use serde_json::Value;
    prop_oneof![
        4 => "sha256:[a-f0-9]{64}".prop_map(Value::String),
        1 => "sha512:[a-f0-9]{128}".prop_map(Value::String),
        2 => "sha256:[a-fA-F0-9]{0,70}".prop_map(Value::String),
        1 => "[a-z0-9+._\\-]{0,10}:[a-zA-Z0-9=_\\-]{0,70}".prop_map(Value::String),
        1 => "sha256:(\\.\\./){1,4}[a-f0-9]{0,64}".prop_map(Value::String),
        1 => hostile_text().prop_map(Value::String),
        1 => json_value(),
    ]
    .boxed()
}

fn descriptor_media_type() -> BoxedStrategy<serde_json::Value> {
    use serde_json::Value;
    prop_oneof![
        6 => prop::sample::select(vec![
            "application/vnd.oci.image.index.v1+json",
            "application/vnd.docker.distribution.manifest.list.v2+json",
            "application/vnd.oci.image.manifest.v1+json",
            "application/vnd.docker.distribution.manifest.v2+json",
            "application/vnd.docker.distribution.manifest.v1+prettyjws",
            "application/vnd.oci.image.config.v1+json",
            "application/vnd.docker.container.image.v1+json",
            "application/vnd.oci.image.layer.v1.tar+gzip",
            "application/vnd.oci.image.layer.v1.tar+zstd",
            "application/vnd.docker.image.rootfs.diff.tar.gzip",
            "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
            "application/vnd.cncf.helm.config.v1+json",
            "application/vnd.cncf.helm.chart.content.v1.tar+gzip",
            "APPLICATION/VND.OCI.IMAGE.INDEX.V1+JSON",
            "application/vnd.oci.image.index.v1+json; charset=utf-8",
            "",
        ])
        .prop_map(|m| Value::String(m.into())),
        1 => hostile_text().prop_map(Value::String),
        1 => (1usize..20_000).prop_map(|n| Value::String("m".repeat(n))),
        1 => json_value(),
    ]
    .boxed()
}

fn descriptor_platform() -> BoxedStrategy<serde_json::Value> {
    use serde_json::{Value, json};
    let os = prop_oneof![
        4 => prop::sample::select(vec!["linux", "windows", "unknown", "", "LINUX", "macos", "darwin"]).prop_map(String::from),
        1 => hostile_text(),
    ];
    let arch = prop_oneof![
        4 => prop::sample::select(vec!["amd64", "arm64", "arm", "386", "aarch64", "x86_64", "armhf", "i386", "s390x", "ppc64le", "unknown", ""]).prop_map(String::from),
        1 => hostile_text(),
    ];
    let variant = prop_oneof![
        4 => prop::sample::select(vec!["", "v5", "v6", "v7", "v8", "8", "v1", "v2", "v3", "v99999999999999999999"]).prop_map(String::from),
        1 => hostile_text(),
    ];
    prop_oneof![
        6 => (os, arch, variant).prop_map(|(o, a, v)| json!({"os": o, "architecture": a, "variant": v})),
        1 => Just(Value::Null),
        1 => json_value(),
    ]
    .boxed()
}

/// A descriptor: each field plausible, hostile, or missing; sizes a placeholder the
/// document's text replaces with a hostile number (beyond what a JSON value holds).
fn descriptor(with_platform: bool) -> BoxedStrategy<serde_json::Value> {
    use serde_json::Value;
    (
        prop::option::weighted(0.9, descriptor_media_type()),
        prop::option::weighted(0.9, descriptor_digest()),
        prop::option::weighted(
            0.9,
            prop_oneof![
                4 => Just(Value::String(SIZE.into())),
                1 => json_value(),
            ],
        ),
        prop::option::weighted(
            if with_platform { 0.8 } else { 0.05 },
            descriptor_platform(),
        ),
        prop::option::weighted(0.05, json_value()),
    )
        .prop_map(|(media_type, digest, size, platform, urls)| {
            let mut map = serde_json::Map::new();
            for (key, value) in [
                ("mediaType", media_type),
                ("digest", digest),
                ("size", size),
                ("platform", platform),
                ("urls", urls),
            ] {
                if let Some(value) = value {
                    map.insert(key.into(), value);
                }
            }
            Value::Object(map)
        })
        .boxed()
}

/// The placeholder of a descriptor's size in a document's text.
const SIZE: &str = "@@size@@";

/// What sizes become in a document's text.
fn size_text() -> BoxedStrategy<String> {
    prop_oneof![
        4 => (0i64..1 << 40).prop_map(|n| n.to_string()),
        1 => any::<i64>().prop_map(|n| n.to_string()),
        1 => prop::sample::select(vec![
            "-1",
            "0",
            "9223372036854775807",
            "9223372036854775808",
            "18446744073709551616",
            "-9223372036854775809",
            "1e400",
            "-0",
            "1.5",
            "1e3",
            "\"12\"",
            "null",
            "99999999999999999999999999999999999999999999",
        ])
        .prop_map(String::from),
    ]
    .boxed()
}

/// An index, a manifest or a config, as a registry could serve it: plausible
/// documents with hostile fields, then hostile in form (duplicated keys, deep nesting,
/// huge arrays, mutated bytes), and raw bytes.
fn walk_document() -> BoxedStrategy<Vec<u8>> {
    use serde_json::{Value, json};
    let index = (
        prop::option::weighted(0.7, descriptor_media_type()),
        prop::collection::vec(descriptor(true), 0..8),
        prop::option::weighted(0.05, prop::collection::vec(descriptor(false), 0..2)),
    )
        .prop_map(|(media_type, manifests, layers)| {
            let mut doc = json!({"schemaVersion": 2, "manifests": manifests});
            if let Some(m) = media_type {
                doc["mediaType"] = m;
            }
            if let Some(l) = layers {
                doc["layers"] = Value::Array(l);
            }
            doc
        });
    let manifest = (
        prop::option::weighted(0.7, descriptor_media_type()),
        prop::option::weighted(0.95, descriptor(false)),
        prop::collection::vec(descriptor(false), 0..6),
        prop::option::weighted(0.1, descriptor_media_type()),
        prop::option::weighted(0.03, json_value()),
    )
        .prop_map(|(media_type, config, layers, artifact, fs_layers)| {
            let mut doc = json!({"schemaVersion": 2, "layers": layers});
            if let Some(m) = media_type {
                doc["mediaType"] = m;
            }
            if let Some(c) = config {
                doc["config"] = c;
            }
            if let Some(a) = artifact {
                doc["artifactType"] = a;
            }
            if let Some(f) = fs_layers {
                doc["fsLayers"] = f;
            }
            doc
        });
    let config = (
        descriptor_platform(),
        prop_oneof![
            4 => prop::collection::vec(descriptor_digest(), 0..6).prop_map(Value::Array),
            1 => json_value(),
        ],
        any::<bool>(),
    )
        .prop_map(|(platform, diff_ids, rootfs)| {
            let mut doc = if platform.is_object() {
                platform
            } else {
                json!({})
            };
            if rootfs {
                doc["rootfs"] = json!({"type": "layers", "diff_ids": diff_ids});
            }
            doc
        });
    let document = (
        prop_oneof![3 => index, 3 => manifest, 2 => config],
        size_text(),
    )
        .prop_map(|(doc, size)| doc.to_string().replace(&format!("\"{SIZE}\""), &size));
    prop_oneof![
        8 => document.clone().prop_map(String::into_bytes),
        // A key again: Go's encoding/json decodes it into the value already there.
        1 => (document.clone(), prop::sample::select(vec!["manifests", "layers", "config", "mediaType", "digest", "size", "platform"]), json_value())
            .prop_map(|(text, key, value)| match text.strip_prefix('{') {
                Some(rest) if rest != "}" => format!("{{{key:?}:{value},{rest}").into_bytes(),
                _ => text.into_bytes(),
            }),
        // A key again at the end: Go decodes it into the value already there.
        1 => (document.clone(), prop::sample::select(vec!["manifests", "layers", "config", "mediaType", "platform", "rootfs", "fsLayers"]), descriptor(true))
            .prop_map(|(text, key, value)| {
                let value = value.to_string().replace(&format!("\"{SIZE}\""), "1");
                let value = match key {
                    "manifests" | "layers" => format!("[{value},null]"),
                    _ => value,
                };
                match text.strip_suffix('}') {
                    Some(rest) if rest != "{" => format!("{rest},{key:?}:{value}}}").into_bytes(),
                    _ => text.into_bytes(),
                }
            }),
        // Keys in another case (Go matches them case-insensitively, ſ as s, K as k),
        // and null elements in arrays.
        1 => (document.clone(), prop::sample::subsequence(vec![
                ("\"manifests\"", "\"Manifests\""),
                ("\"layers\"", "\"LAYER\u{17F}\""),
                ("\"platform\"", "\"PLATFORM\""),
                ("\"digest\"", "\"Digest\""),
                ("\"mediaType\"", "\"mediatype\""),
                ("\"architecture\"", "\"Architecture\""),
                ("\"os\"", "\"OS\""),
                ("\"diff_ids\"", "\"Diff_IDs\""),
                ("[{", "[null,{"),
                ("}]", "},null]"),
            ], 1..5))
            .prop_map(|(text, edits)| {
                edits
                    .into_iter()
                    .fold(text, |text, (from, to)| text.replace(from, to))
                    .into_bytes()
            }),
        // Nested deep where a descriptor goes, up to and past Go's 10,000 levels.
        1 => (1usize..12_000, prop::sample::select(vec!["[", "{\"a\":"]))
            .prop_map(|(depth, open)| {
                let close = if open == "[" { "]" } else { "}" };
                format!("{{\"manifests\":[{}{}],\"config\":{{}}}}", open.repeat(depth), close.repeat(depth)).into_bytes()
            }),
        // Many entries (the walk keeps them all; they come in up to 4 MiB).
        1 => (descriptor(true), 50usize..600, size_text()).prop_map(|(entry, n, size)| {
            let entry = entry.to_string().replace(&format!("\"{SIZE}\""), &size);
            format!("{{\"manifests\":[{}]}}", vec![entry; n].join(",")).into_bytes()
        }),
        2 => document.prop_flat_map(|text| mutated(text.into_bytes())),
        1 => prop::collection::vec(any::<u8>(), 0..256),
    ]
    .boxed()
}

/// Whether `digest` is what go-digest's `Validate` takes (checked here independently
/// of the walk's own check).
fn containerd_digest(digest: &str) -> bool {
    let Some((algorithm, hex)) = digest.split_once(':') else {
        return false;
    };
    let len = match algorithm {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ => return false,
    };
    hex.len() == len
        && hex
            .chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
}

/// A reason quotes a registry's text short: a reason's length does not grow with it.
const MAX_REASON: usize = 600;

#[derive(Clone, Debug)]
pub struct WalkCase {
    /// The media type the parent's descriptor names (empty: the walk sniffs the body's).
    pub media_type: String,
    pub body: Vec<u8>,
    /// The image config, read for its `rootfs.diff_ids`.
    pub config: Vec<u8>,
    /// The node's platform: os, architecture, variant.
    pub node: (String, String, String),
}

pub struct PullPathDocuments;

impl Target for PullPathDocuments {
    type Input = WalkCase;
    fn name(&self) -> &'static str {
        "pull_path_documents"
    }
    fn strategy(&self) -> BoxedStrategy<WalkCase> {
        let node = prop_oneof![
            6 => prop::sample::select(vec![
                ("linux", "amd64", ""),
                ("linux", "arm64", ""),
                ("linux", "arm64", "v8"),
                ("linux", "arm", "v7"),
                ("linux", "arm", "v5"),
                ("linux", "amd64", "v3"),
                ("linux", "386", ""),
                ("linux", "s390x", ""),
                ("windows", "amd64", ""),
            ])
            .prop_map(|(o, a, v)| (o.to_string(), a.to_string(), v.to_string())),
            1 => (hostile_text(), hostile_text(), hostile_text()),
        ];
        (
            prop_oneof![
                2 => Just(String::new()),
                3 => descriptor_media_type().prop_map(|m| m.as_str().unwrap_or_default().to_string()),
            ],
            walk_document(),
            walk_document(),
            node,
        )
            .prop_map(|(media_type, body, config, node)| WalkCase {
                media_type,
                body,
                config,
                node,
            })
            .boxed()
    }
    fn run(&self, case: WalkCase) {
        use pullwatch::registry::pull_path::hostile::{self, Read};
        let node = pullwatch::Platform::new(&case.node.0, &case.node.1, &case.node.2);
        // The config: its platform normalized (normalizing again changes nothing), at
        // most one diff_id per three bytes of it.
        let diff_ids = match hostile::read_config(&case.config) {
            Ok((platform, diff_ids)) => {
                let again = pullwatch::Platform::new(
                    &platform.os,
                    &platform.architecture,
                    &platform.variant,
                );
                assert_eq!(again, platform, "a config's platform is normalized");
                assert!(diff_ids <= case.config.len() / 3, "{diff_ids} diff_ids");
                Some(diff_ids)
            }
            Err(why) => {
                assert!(
                    !why.is_empty() && why.len() <= MAX_REASON,
                    "config reason {why:?}"
                );
                None
            }
        };
        let media_type = if case.media_type.is_empty() {
            hostile::sniffed_media_type(&case.body).unwrap_or_default()
        } else {
            case.media_type.clone()
        };
        let essence = media_type
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        match hostile::read_manifest(&case.body, &case.media_type, &node, diff_ids) {
            Read::Index { entries, chosen } => {
                assert!(
                    essence == "application/vnd.oci.image.index.v1+json"
                        || essence == "application/vnd.docker.distribution.manifest.list.v2+json",
                    "read as an index under {media_type:?}"
                );
                // containerd's choice: the entry of the best-preferred platform the node
                // runs, the first of equals, else the first without a platform.
                let vector = hostile::runnable(&node);
                let rank = |e: &hostile::Entry| match &e.platform {
                    None => Some(usize::MAX),
                    Some(p) => vector.iter().position(|v| v == p),
                };
                let best = entries
                    .iter()
                    .enumerate()
                    .filter_map(|(i, e)| rank(e).map(|r| (r, i)))
                    .min();
                match (chosen, best) {
                    (None, None) => {}
                    (Some(Ok(i)), Some((_, expected))) => {
                        assert_eq!(i, expected, "the chosen child of {entries:?} for {node}");
                        assert!(
                            containerd_digest(&entries[i].digest),
                            "the walk would fetch the child {:?}",
                            entries[i].digest
                        );
                    }
                    (Some(Err(why)), Some((_, expected))) => {
                        assert!(
                            !containerd_digest(&entries[expected].digest),
                            "a valid child refused: {why}"
                        );
                        assert!(why.len() <= MAX_REASON, "child reason {why:?}");
                    }
                    (chosen, best) => {
                        panic!("chose {chosen:?}, containerd {best:?}, of {entries:?} for {node}")
                    }
                }
            }
            Read::Image {
                config,
                layers,
                unpack,
            } => {
                assert!(
                    essence == "application/vnd.oci.image.manifest.v1+json"
                        || essence == "application/vnd.docker.distribution.manifest.v2+json",
                    "read as an image manifest under {media_type:?}"
                );
                // Every digest the walk would put in a URL is one containerd takes.
                for desc in std::iter::once(&config).chain(&layers) {
                    assert!(
                        containerd_digest(&desc.digest),
                        "would fetch {:?}",
                        desc.digest
                    );
                }
                match unpack {
                    Ok(()) => {
                        assert!(
                            diff_ids.is_none_or(|d| d == layers.len()),
                            "unpacks {} layers with {diff_ids:?} diff_ids",
                            layers.len()
                        );
                        for layer in &layers {
                            assert!(
                                layer
                                    .media_type
                                    .starts_with("application/vnd.oci.image.layer.")
                                    || layer
                                        .media_type
                                        .starts_with("application/vnd.docker.image.rootfs."),
                                "unpacks a layer of type {:?}",
                                layer.media_type
                            );
                        }
                    }
                    Err(why) => assert!(
                        !why.is_empty() && why.len() <= MAX_REASON,
                        "unpack reason {why:?}"
                    ),
                }
            }
            Read::Schema1 => assert!(
                essence.starts_with("application/vnd.docker.distribution.manifest.v1+"),
                "read as schema 1 under {media_type:?}"
            ),
            Read::Refused(why) => {
                assert!(
                    !why.is_empty() && why.len() <= MAX_REASON,
                    "manifest reason {why:?}"
                )
            }
        }
    }
}

/// One generated schema 1 manifest: its layers (top first), their history entries, and
/// what containerd 1.x and containers/image download when the entries are well-formed
/// (computed here from the generator's own choices, not by the walk's code).
#[derive(Clone, Debug)]
pub struct Schema1Case {
    pub media_type: String,
    pub body: Vec<u8>,
    /// containerd 1.x: the blobs downloaded, or None when the case is not one whose
    /// answer is known here (an entry of hostile form, a broken signature).
    pub converted: Option<Result<Vec<String>, ()>>,
    /// containers/image: the same.
    pub copied: Option<Result<Vec<String>, ()>>,
}

/// A history entry: (v1Compatibility text, whether containerd reads it as empty, whether
/// its form is known good).
fn schema1_entry() -> BoxedStrategy<(serde_json::Value, Option<bool>, bool)> {
    use serde_json::{Value, json};
    let throwaway = prop_oneof![
        3 => Just(None),
        3 => any::<bool>().prop_map(|b| Some(Value::Bool(b))),
        1 => json_value().prop_map(Some),
    ];
    let size = prop_oneof![
        3 => Just(None),
        3 => prop_oneof![Just(0i64), 1i64..10_000].prop_map(|n| Some(Value::from(n))),
        1 => json_value().prop_map(Some),
    ];
    let created = prop_oneof![
        3 => Just(None),
        3 => Just(Some(Value::from("2016-06-01T12:00:00.123456789Z"))),
        1 => Just(Some(Value::from("2016-06-01T14:00:00+02:00"))),
        1 => json_value().prop_map(Some),
    ];
    (throwaway, size, created)
        .prop_map(|(throwaway, size, created)| {
            let good_bool =
                |v: &Option<Value>| v.as_ref().is_none_or(|v| v.is_boolean() || v.is_null());
            let good_int = |v: &Option<Value>| v.as_ref().is_none_or(|v| v.is_i64() || v.is_null());
            let good_time = |v: &Option<Value>| {
                v.as_ref().is_none_or(|v| {
                    v.is_null() || v.as_str().is_some_and(|t| t.starts_with("2016-06-01T"))
                })
            };
            let good = good_bool(&throwaway) && good_int(&size) && good_time(&created);
            let empty = match (
                throwaway.as_ref().and_then(Value::as_bool),
                size.as_ref().and_then(Value::as_i64),
            ) {
                (Some(t), _) => Some(t),
                (None, Some(n)) => Some(n == 0),
                (None, None) => Some(false),
            };
            let mut v1 = json!({"architecture": "amd64", "os": "linux"});
            for (key, value) in [
                ("throwaway", throwaway),
                ("Size", size),
                ("created", created),
            ] {
                if let Some(value) = value {
                    v1[key] = value;
                }
            }
            (v1, good.then_some(empty).flatten(), good)
        })
        .boxed()
}

/// libtrust's pretty JWS around `payload` (what containerd strips).
fn jws(payload: &str) -> String {
    use base64::Engine;
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let length = payload.rfind('}').unwrap_or(0);
    let protected = serde_json::json!({"formatLength": length, "formatTail": b64(&payload.as_bytes()[length..])});
    format!(
        "{},\"signatures\":[{{\"protected\":\"{}\"}}]}}",
        &payload[..length],
        b64(protected.to_string().as_bytes())
    )
}

pub struct Schema1Documents;

impl Target for Schema1Documents {
    type Input = Schema1Case;
    fn name(&self) -> &'static str {
        "schema1_documents"
    }
    fn strategy(&self) -> BoxedStrategy<Schema1Case> {
        use serde_json::json;
        // A few valid digests (repeats are likely) and some hostile ones.
        let blob = prop_oneof![
            6 => (0u8..4).prop_map(|n| format!("sha256:{}", format!("{n:02x}").repeat(32))),
            1 => descriptor_digest().prop_map(|d| d.as_str().unwrap_or_default().to_string()),
        ];
        let layers = prop::collection::vec((blob, schema1_entry()), 0..6);
        let document = (layers, any::<bool>(), 0u8..10).prop_map(|(layers, signed, fault)| {
            let ids: Vec<String> = (0..layers.len())
                .map(|i| format!("{:064x}", i + 1))
                .collect();
            let mut history = Vec::new();
            let mut fs_layers = Vec::new();
            for (i, (blob, (mut v1, _, _))) in layers.iter().cloned().enumerate() {
                v1["id"] = ids[i].clone().into();
                if i + 1 < layers.len() {
                    v1["parent"] = ids[i + 1].clone().into();
                }
                history.push(json!({"v1Compatibility": v1.to_string()}));
                fs_layers.push(json!({"blobSum": blob}));
            }
            // A fault in one of ten: a history entry fewer than layers.
            if fault == 0 {
                history.pop();
            }
            let payload = serde_json::to_string_pretty(&json!({
                "schemaVersion": 1, "name": "a/b", "tag": "v1", "architecture": "amd64",
                "fsLayers": fs_layers, "history": history,
            }))
            .unwrap_or_default();
            let body = if signed { jws(&payload) } else { payload };
            let clean = fault != 0 && layers.iter().all(|(_, (_, _, good))| *good);
            // containerd: each blob once at its first entry, unless that entry is empty.
            let converted = (clean && signed).then(|| {
                let mut seen = std::collections::HashSet::new();
                let mut blobs = Vec::new();
                for (blob, (_, empty, _)) in &layers {
                    if seen.insert(blob.clone()) && *empty == Some(false) {
                        blobs.push(blob.clone());
                    }
                }
                if blobs.iter().all(|b| containerd_digest(b)) {
                    if layers.is_empty() {
                        Err(())
                    } else {
                        Ok(blobs)
                    }
                } else {
                    Err(())
                }
            });
            // containers/image: every blob once, base first.
            let copied = clean.then(|| {
                let mut seen = std::collections::HashSet::new();
                let blobs: Vec<String> = layers
                    .iter()
                    .rev()
                    .filter(|(blob, _)| seen.insert(blob.clone()))
                    .map(|(blob, _)| blob.clone())
                    .collect();
                if !layers.is_empty() && blobs.iter().all(|b| containerd_digest(b)) {
                    Ok(blobs)
                } else {
                    Err(())
                }
            });
            (body.into_bytes(), converted, copied)
        });
        let media_type = prop_oneof![
            4 => Just("application/vnd.docker.distribution.manifest.v1+prettyjws".to_string()),
            1 => Just("application/vnd.docker.distribution.manifest.v1+json".to_string()),
        ];
        prop_oneof![
            6 => (document.clone(), media_type.clone()).prop_map(|((body, converted, copied), media_type)| {
                let signed_type = media_type.ends_with("prettyjws");
                Schema1Case {
                    converted: if signed_type { converted } else { Some(Err(())) },
                    copied,
                    media_type,
                    body,
                }
            }),
            2 => (document.prop_flat_map(|(body, _, _)| mutated(body)), media_type.clone())
                .prop_map(|(body, media_type)| Schema1Case { media_type, body, converted: None, copied: None }),
            1 => (json_value(), media_type).prop_map(|(value, media_type)| Schema1Case {
                media_type,
                body: jws(&value.to_string()).into_bytes(),
                converted: None,
                copied: None,
            }),
        ]
        .boxed()
    }
    fn run(&self, case: Schema1Case) {
        use pullwatch::registry::pull_path::{Schema1Pulls, hostile};
        let blob_sums = String::from_utf8_lossy(&case.body).into_owned();
        for (pulls, known) in [
            (Schema1Pulls::Converted, &case.converted),
            (Schema1Pulls::Copied, &case.copied),
            (Schema1Pulls::Refused, &Some(Err(()))),
        ] {
            let plan = hostile::schema1_plan(&case.body, &case.media_type, pulls);
            match &plan {
                Err(why) => assert!(
                    !why.is_empty() && why.len() <= MAX_REASON,
                    "{pulls:?}: {why:?}"
                ),
                Ok((blobs, after)) => {
                    assert_ne!(
                        pulls,
                        Schema1Pulls::Refused,
                        "containerd 2 downloads nothing"
                    );
                    let mut distinct = std::collections::HashSet::new();
                    for blob in blobs {
                        assert!(containerd_digest(blob), "{pulls:?} would fetch {blob:?}");
                        assert!(distinct.insert(blob), "{pulls:?} fetches {blob} twice");
                        assert!(
                            blob_sums.contains(blob.as_str()),
                            "{pulls:?}: {blob} is not in the manifest"
                        );
                    }
                    if let Err(why) = after {
                        assert!(
                            !why.is_empty() && why.len() <= MAX_REASON,
                            "{pulls:?}: {why:?}"
                        );
                    }
                }
            }
            if let Some(known) = known {
                let got = match plan {
                    Ok((blobs, Ok(()))) => Ok(blobs),
                    _ => Err(()),
                };
                assert_eq!(
                    &got,
                    known,
                    "{pulls:?} on {}",
                    String::from_utf8_lossy(&case.body)
                );
            }
        }
    }
}
