//! The pullwatch test bench: real `docker-registry` and `containerd` processes, images pushed with
//! `skopeo`, a throw-away CA, `promtool`, a programmable stub HTTP server, a proxy announcing
//! Docker Hub's pull quota in front of a real registry, and a test Kubernetes
//! API server (`TestApiServer`), all on loopback in temp dirs, with bounded waits and child
//! processes killed on drop.

pub mod answers;
mod apiserver;
mod bearer;
mod behaviours;
mod binaries;
mod ca;
mod canary;
mod containerd;
mod echo;
pub mod faults;
pub mod fleet;
mod http_client;
mod procfs;
mod prometheus;
mod promtool;
mod pull_proxy;
mod push;
mod quota_proxy;
mod registry;
mod scenario;
mod serve;
pub mod started;
mod stub;
mod tools;
mod util;

pub use apiserver::{
    ApiTarget, ClusterObject, PodSpecMut, Replicated, TEST_KUBECONFIG_ENV, TestApiServer,
    container_name_and_image, cronjob, daemonset, decode_query, deployment, job, namespace, node,
    pod, pod_spec, replicaset, running, secret_dockercfg, secret_dockerconfigjson, secret_opaque,
    service_account, statefulset, suspended, with_annotations, with_controller, with_init_images,
    with_labels, with_owner, with_pull_secrets, with_replicas, with_service_account,
};
pub use bearer::{BearerRegistry, GOOD_TOKEN, STUB_DIGEST};
pub use behaviours::{
    BEHAVIOUR_PASSWORD, BEHAVIOUR_USER, Behaviour, SilentServer, registry_behaviours,
};
pub use binaries::{hermetic_command, output_within, stdout_json, workspace_binary};
pub use ca::{LOOPBACK_SANS, TestCa};
pub use canary::{
    CANARY_PASSWORD, HOSTILE_PASSWORD, assert_no_canary, assert_no_canary_in_file,
    assert_no_canary_in_process_logs, assert_no_hostile_secret, bounded_without_canary,
    canary_forms, capture_process_logs, captured_process_logs, find_canary, secret_forms,
};
pub use containerd::{Containerd, ContainerdOptions, RegistryAuthConfig};
pub use echo::{EchoMode, EchoRegistry, ISSUED_TOKEN, echo_encodings};
pub use http_client::{HttpResponse, MANIFEST_ACCEPT, http_request, tls_client_config};
pub use procfs::{
    extra_malloc_arenas, owns_tcp_port, process_cpu_seconds, process_status_kib, thread_cpu_seconds,
};
pub use prometheus::PrometheusServer;
pub use promtool::promtool_check_metrics;
pub use pull_proxy::{ProxiedRequest, ProxyRule, PullProxy};
pub use push::{
    ImageFormat, PlatformManifest, PushedImage, push_image, push_tags, raw, sha256_digest,
};
pub use quota_proxy::{QUOTA_WINDOW_SECONDS, QuotaProxy};
pub use registry::{Registry, RegistryOptions};
pub use scenario::{ClusterScenario, push_to};
pub use stub::{RecordedRequest, StubResponse, StubServer};
pub use tools::{
    HELM_NPM_PACKAGE, ToolOutput, helm, helm_ok, locate_helm, promtool, promtool_check_rules,
    promtool_test_rules, require_helm, workspace_root,
};
pub use util::{free_port, free_port_on, require_tool, write_file};
