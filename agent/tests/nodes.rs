//! Checks through real containerd nodes against real registries: node credentials of
//! every kind, absent tags, a registry that is down, resolve without downloads, a
//! hosts.toml mirror, a moved tag that no check may re-point, a containerd restart, and
//! a failing credential plugin (asked once per check).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use pullwatch::CheckMode;
use pullwatch::{CheckStatus, RegistryCredential, SourcedCredential};
use pullwatch_testbench::{ImageFormat, Registry};
use pullwatch_testbench::{assert_reason_contains, assert_status, push_to, started};

/// Every test is bounded: a hung runtime or registry fails the test instead of the run.
const TEST_TIMEOUT: Duration = Duration::from_secs(120);

/// Also: this process's logs (the agents', in process) are captured, and the test
/// bench's canary password (`PASSWORD`) must never appear in them.
async fn bounded<F: std::future::Future<Output = ()>>(test: F) {
    pullwatch_testbench::bounded_without_canary(TEST_TIMEOUT, test).await;
}

async fn private_registry() -> Registry {
    started::private_registry(USER, PASSWORD).await
}

#[tokio::test(flavor = "multi_thread")]
async fn node_credentials_of_every_kind() {
    bounded(async {
        let registry = private_registry().await;
        let image = push_to(&registry, "private/app", "v1", ImageFormat::Oci).await;
        let host = registry.host();

        // Node A: containerd's own registry.configs auth.
        let node_a = started::node_with_credentials(&registry, USER, PASSWORD).await;
        // Node B: a kubelet config.json.
        let node_b = started::bare_node().await;
        // Node C: a kubelet credential-provider plugin.
        let node_c = started::bare_node().await;
        // Node D: nothing.
        let node_d = started::bare_node().await;

        let plugin_log = node_c.dir().join("plugin-requests.log");
        let nodes = [
            (
                "A",
                checker_with(&node_a, PULL_ABSENT),
                "runtime".to_string(),
            ),
            (
                "B",
                checker(
                    &node_b,
                    NodeSetup {
                        kubelet_config_json: Some(config_json(&host, USER, PASSWORD)),
                        options: Some(PULL_ABSENT),
                        ..Default::default()
                    },
                ),
                format!(
                    "config.json:{}",
                    node_b.dir().join("kubelet/config.json").display()
                ),
            ),
            (
                "C",
                checker(
                    &node_c,
                    NodeSetup {
                        plugin: Some(plugin(&host, &plugin_log)),
                        options: Some(PULL_ABSENT),
                        ..Default::default()
                    },
                ),
                "plugin:test-provider".to_string(),
            ),
            (
                "D",
                checker_with(&node_d, PULL_ABSENT),
                "runtime".to_string(),
            ),
        ];

        for (name, checker, source) in &nodes {
            for mode in [CheckMode::Resolve, CheckMode::Pull] {
                let report = checker.check(&image.reference, mode, &[]).await;
                assert_eq!(report.mode, mode, "node {name}");
                assert_eq!(&report.credential_source, source, "node {name} {mode:?}");
                if *name == "D" {
                    assert_status!(
                        report,
                        CheckStatus::AuthenticationFailure,
                        "node D {mode:?}"
                    );
                    assert_reason_contains!(report, "401");
                } else {
                    assert_status!(report, CheckStatus::Available, "node {name} {mode:?}");
                }
                // Reasons never carry the password.
                assert!(!report.reason.contains(PASSWORD), "{}", report.reason);
            }
            // The pull was only for the check: the image is gone again.
            assert!(
                !node_images(checker)
                    .await
                    .iter()
                    .any(|t| t == &image.reference),
                "node {name} kept the image"
            );
        }

        // The plugin got the kubelet's request, for the image name without tag, and
        // its Registry-keyed answer was cached: one run for both checks.
        let requests = std::fs::read_to_string(&plugin_log).unwrap();
        assert_eq!(
            requests.matches("CredentialProviderRequest").count(),
            1,
            "{requests}"
        );
        assert!(
            requests.contains(&format!("\"image\":\"{host}/private/app\"")),
            "{requests}"
        );

        // Like the kubelet: a wrong pull secret first, then the node's working
        // config.json: the second credential decides.
        let stale = SourcedCredential {
            source: "secret/team/stale".into(),
            credential: RegistryCredential {
                username: USER.into(),
                password: "expired".into(),
                ..Default::default()
            },
        };
        let (_, node_b_checker, node_b_source) = &nodes[1];
        for mode in [CheckMode::Resolve, CheckMode::Pull] {
            let report = node_b_checker
                .check(&image.reference, mode, std::slice::from_ref(&stale))
                .await;
            assert_status!(report, CheckStatus::Available);
            assert_eq!(&report.credential_source, node_b_source);
        }
        // Only the stale secret on a node without credentials: it fails, and says which
        // secret failed.
        let (_, node_d_checker, _) = &nodes[3];
        let report = node_d_checker
            .check(
                &image.reference,
                CheckMode::Pull,
                std::slice::from_ref(&stale),
            )
            .await;
        assert_eq!(report.status, CheckStatus::AuthenticationFailure);
        assert_eq!(report.credential_source, "secret/team/stale");
        assert!(!report.reason.contains("expired"), "{}", report.reason);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn absent_tags_and_a_registry_that_is_down() {
    bounded(async {
        let mut registry = started::open_registry().await;
        let image = push_to(&registry, "team/app", "v1", ImageFormat::DockerV2S2).await;
        let node = started::bare_node().await;
        let checker = checker_with(&node, PULL_AND_KEEP);

        // Kept after the pull: the node now holds it, so auto mode pulls from here on.
        let report = checker.check(&image.reference, CheckMode::Pull, &[]).await;
        assert_status!(report, CheckStatus::Available);
        assert!(report.image_present);
        assert!(node_images(&checker).await.contains(&image.reference));

        let missing_tag = format!("{}/team/app:v2", registry.host());
        let missing_repo = format!("{}/team/nothing:v1", registry.host());
        for reference in [&missing_tag, &missing_repo] {
            for mode in [CheckMode::Auto, CheckMode::Pull, CheckMode::Resolve] {
                let report = checker.check(reference, mode, &[]).await;
                assert_status!(report, CheckStatus::Absent, "{reference} {mode:?}");
                assert_reason_contains!(report, "not found");
            }
        }
        let missing_digest = format!("{}/team/app@sha256:{}", registry.host(), "0".repeat(64));
        let report = checker
            .check(&missing_digest, CheckMode::Resolve, &[])
            .await;
        assert_status!(report, CheckStatus::Absent);

        let report = checker.check("Team/App:v1", CheckMode::Auto, &[]).await;
        assert_eq!(report.status, CheckStatus::BadImageFormat);

        registry.stop();
        for mode in [CheckMode::Auto, CheckMode::Pull, CheckMode::Resolve] {
            let report = checker.check(&image.reference, mode, &[]).await;
            assert_status!(report, CheckStatus::RegistryUnavailable, "{mode:?}");
            assert_reason_contains!(report, "refused");
        }
        // auto on a present tag resolves first: with the registry down nothing is
        // known about the tag's digest, so the runtime is not asked (a tag pull could
        // re-point the node's tag).
        let report = checker.check(&image.reference, CheckMode::Auto, &[]).await;
        assert_eq!(report.mode, CheckMode::Resolve);
        assert_eq!(report.tag_moved, None);
        registry.start_again().await.unwrap();
        let report = checker.check(&image.reference, CheckMode::Auto, &[]).await;
        assert_status!(report, CheckStatus::Available);
        // Back up, the digest matches the node's: the runtime confirms by digest.
        assert_eq!(report.mode, CheckMode::Pull);
        assert_eq!(report.tag_moved, Some(false));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn resolve_downloads_no_layers_and_pull_of_present_images_only_asks() {
    bounded(async {
        let registry = started::open_registry().await;
        let absent = push_to(&registry, "big/app", "v1", ImageFormat::OciIndex).await;
        let present = push_to(&registry, "small/app", "v1", ImageFormat::Oci).await;
        let node = started::bare_node().await;
        let checker = checker(&node, NodeSetup::default());
        let before = node_images(&checker).await;

        // auto on an absent image, absent pulls not allowed: resolve, nothing fetched.
        let log_start = registry.log().len();
        let report = checker.check(&absent.reference, CheckMode::Auto, &[]).await;
        assert_status!(report, CheckStatus::Available);
        assert_eq!(report.mode, CheckMode::Resolve);
        assert!(!report.image_present);
        let by_digest = format!("{}/big/app@{}", registry.host(), absent.digest);
        let report = checker.check(&by_digest, CheckMode::Resolve, &[]).await;
        assert_status!(report, CheckStatus::Available);
        // Even an explicit pull of an absent image resolves without --pull-absent-images.
        let report = checker.check(&absent.reference, CheckMode::Pull, &[]).await;
        assert_eq!(report.mode, CheckMode::Resolve);
        assert_status!(report, CheckStatus::Available);

        let log = registry.log()[log_start..].to_string();
        let configs = common::config_digests(&registry, "big/app", "v1").await;
        assert!(
            common::layer_downloads(&log, &configs).is_empty(),
            "layers were downloaded:\n{log}"
        );
        assert!(
            log.contains("\"HEAD /v2/big/app/manifests/v1 HTTP/1.1\" 200"),
            "{log}"
        );
        assert_eq!(
            node_images(&checker).await,
            before,
            "resolve pulled something"
        );

        // A pull check of an image the node holds asks for the manifest only.
        let puller = common::checker_with(&node, PULL_AND_KEEP);
        let report = puller.check(&present.reference, CheckMode::Auto, &[]).await;
        assert_eq!(report.mode, CheckMode::Pull);
        assert_status!(report, CheckStatus::Available);
        let first_pull_log = registry.log();
        assert!(
            !blob_gets(&first_pull_log[log_start..]).is_empty(),
            "the first pull downloads the image"
        );
        let log_start = first_pull_log.len();
        let report = puller.check(&present.reference, CheckMode::Auto, &[]).await;
        assert_eq!(report.mode, CheckMode::Pull);
        assert_status!(report, CheckStatus::Available);
        let log = registry.log()[log_start..].to_string();
        let configs = common::config_digests(&registry, "small/app", "v1").await;
        assert!(common::layer_downloads(&log, &configs).is_empty(), "{log}");
        assert!(
            log.contains("\"HEAD /v2/small/app/manifests/v1 HTTP/1.1\" 200"),
            "{log}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hosts_toml_mirror_serves_what_the_upstream_lost() {
    bounded(async {
        let upstream = started::open_registry().await;
        let mirror = started::open_registry().await;
        let image = push_to(&upstream, "team/app", "v1", ImageFormat::Oci).await;
        push_to(&mirror, "team/app", "v1", ImageFormat::Oci).await;
        upstream
            .delete_manifest("team/app", &image.digest)
            .await
            .unwrap();
        let head = upstream.head_manifest("team/app", "v1").await.unwrap();
        assert_eq!(head.status, 404, "the upstream lost the image");

        let with_mirror = started::bare_node().await;
        with_mirror
            .write_hosts_toml(
                &upstream.host(),
                &format!(
                    "server = \"http://{}\"\n\n[host.\"http://{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  [host.\"http://{}\".header]\n    x-pullwatch-test = \"mirror-route\"\n",
                    upstream.host(),
                    mirror.host(),
                    mirror.host()
                ),
            )
            .unwrap();
        let without_mirror = started::bare_node().await;
        let mirrored = checker_with(&with_mirror, PULL_ABSENT);
        let direct = checker_with(&without_mirror, PULL_ABSENT);
        for mode in [CheckMode::Resolve, CheckMode::Pull] {
            let report = mirrored.check(&image.reference, mode, &[]).await;
            assert_status!(report, CheckStatus::Available, "{mode:?} via mirror");
            let report = direct.check(&image.reference, mode, &[]).await;
            assert_status!(report, CheckStatus::Absent, "{mode:?} direct");
        }
        // The mirror was asked the way containerd asks mirrors: with ?ns=<upstream>.
        let ns = format!(
            "\"HEAD /v2/team/app/manifests/v1?ns={}",
            upstream.host().replace(':', "%3A")
        );
        let mirror_log = mirror.log();
        assert!(
            mirror_log.matches(&ns).count() >= 2,
            "resolve and pull both asked the mirror:\n{mirror_log}"
        );

        // A mirror that is down does not hide an upstream that has the image; an
        // upstream that lost it, behind a mirror that is down, is unavailable (the
        // mirror's failure is the first error, as containerd reports it).
        let other = push_to(&upstream, "team/other", "v1", ImageFormat::Oci).await;
        let mut mirror = mirror;
        mirror.stop();
        for mode in [CheckMode::Resolve, CheckMode::Pull] {
            let report = mirrored.check(&other.reference, mode, &[]).await;
            assert_status!(report, CheckStatus::Available);
            let report = mirrored.check(&image.reference, mode, &[]).await;
            assert_status!(report, CheckStatus::RegistryUnavailable, "{mode:?}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn containerd_restarted_mid_run() {
    bounded(async {
        let registry = started::open_registry().await;
        let image = push_to(&registry, "team/app", "v1", ImageFormat::Oci).await;
        let mut node = started::bare_node().await;
        let checker = checker_with(&node, PULL_AND_KEEP);
        let report = checker.check(&image.reference, CheckMode::Auto, &[]).await;
        assert_status!(report, CheckStatus::Available);
        let version = checker.cri().version().await.unwrap();
        assert_eq!(version.runtime_name, "containerd");

        node.stop();
        let report = checker.check(&image.reference, CheckMode::Auto, &[]).await;
        // The runtime being down says nothing about the image.
        assert!(report.runtime_failure, "{report:?}");
        assert_eq!(report.status, CheckStatus::UnknownError);
        assert_reason_contains!(report, "runtime unreachable");

        node.restart().await.unwrap();
        // The same client reconnects by itself; the image survived the restart.
        let report = checker.check(&image.reference, CheckMode::Auto, &[]).await;
        assert_status!(report, CheckStatus::Available);
        assert_eq!(report.mode, CheckMode::Pull);
        assert!(node_images(&checker).await.contains(&image.reference));
    })
    .await;
}

/// The digests the node holds for `reference` (CRI ImageStatus repo digests).
async fn held_digests(checker: &pullwatch_agent::check::Checker, reference: &str) -> Vec<String> {
    checker
        .cri()
        .image_status(reference)
        .await
        .unwrap()
        .map(|image| image.repo_digests)
        .unwrap_or_default()
}

/// Registry access-log lines in which the runtime (containerd, not the agent's own
/// walk of the pull path) asked for a manifest by `digest`.
fn manifest_requests_by_digest(log: &str, digest: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains(&format!("/manifests/{digest}")) && l.contains("containerd/"))
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_moved_tag_is_reported_and_the_node_keeps_what_it_runs() {
    bounded(async {
        let registry = started::open_registry().await;
        let v1 = push_to(&registry, "app/web", "v1", ImageFormat::Oci).await;
        let v2 = push_to(&registry, "app/web", "v2", ImageFormat::Oci).await;
        assert_ne!(v1.digest, v2.digest);
        let node = started::bare_node().await;
        // The node pulled app/web:v1 when its pod started (as the kubelet would).
        let kubelet = checker_with(&node, PULL_AND_KEEP);
        let report = kubelet.check(&v1.reference, CheckMode::Pull, &[]).await;
        assert_status!(report, CheckStatus::Available);
        assert_eq!(report.digest.as_deref(), Some(v1.digest.as_str()));
        let held_before = held_digests(&kubelet, &v1.reference).await;
        assert!(
            held_before.iter().any(|d| d.ends_with(&v1.digest)),
            "{held_before:?}"
        );
        let images_before = node_images(&kubelet).await;

        // Nothing moved: auto confirms through the runtime, by digest.
        let checker = checker(&node, NodeSetup::default());
        let log_start = registry.log().len();
        let report = checker.check(&v1.reference, CheckMode::Auto, &[]).await;
        assert_status!(report, CheckStatus::Available);
        assert_eq!(report.mode, CheckMode::Pull);
        assert_eq!(report.tag_moved, Some(false));
        assert_eq!(report.digest.as_deref(), Some(v1.digest.as_str()));
        assert_eq!(report.held_digest.as_deref(), Some(v1.digest.as_str()));
        let log = registry.log()[log_start..].to_string();
        assert!(
            !manifest_requests_by_digest(&log, &v1.digest).is_empty(),
            "the runtime confirms by digest:\n{log}"
        );

        // The release tag is re-pushed: v1 now has v2's manifest.
        assert_eq!(
            registry.move_tag("app/web", "v2", "v1").await.unwrap(),
            v2.digest
        );
        let log_start = registry.log().len();
        for mode in [CheckMode::Auto, CheckMode::Pull, CheckMode::Resolve] {
            let report = checker.check(&v1.reference, mode, &[]).await;
            assert_status!(report, CheckStatus::Available, "{mode:?}");
            assert_eq!(report.tag_moved, Some(true), "{mode:?}");
            assert_eq!(
                report.mode,
                CheckMode::Resolve,
                "{mode:?}: a moved tag is never pulled"
            );
            assert_eq!(
                report.digest.as_deref(),
                Some(v2.digest.as_str()),
                "{mode:?}"
            );
            assert_eq!(
                report.held_digest.as_deref(),
                Some(v1.digest.as_str()),
                "{mode:?}"
            );
            assert!(
                report.reason.contains("tag moved"),
                "{mode:?}: {}",
                report.reason
            );
            assert!(report.image_present);
        }
        // The node still holds v1 at the old digest, and nothing else changed.
        assert_eq!(held_digests(&checker, &v1.reference).await, held_before);
        assert_eq!(node_images(&checker).await, images_before);
        let log = registry.log()[log_start..].to_string();
        let configs = common::config_digests(&registry, "app/web", "v1").await;
        assert!(
            common::layer_downloads(&log, &configs).is_empty(),
            "layers were downloaded:\n{log}"
        );
        assert!(
            manifest_requests_by_digest(&log, &v2.digest).is_empty(),
            "the runtime was asked for the new manifest:\n{log}"
        );
        assert!(
            log.contains("\"HEAD /v2/app/web/manifests/v1 HTTP/1.1\" 200"),
            "{log}"
        );

        // A digest reference cannot move: the held one is confirmed through the runtime.
        let pinned = format!("{}/app/web@{}", registry.host(), v1.digest);
        let report = checker.check(&pinned, CheckMode::Auto, &[]).await;
        assert_status!(report, CheckStatus::Available);
        assert_eq!(report.mode, CheckMode::Pull);
        assert_eq!(report.tag_moved, None);
        assert_eq!(report.digest.as_deref(), Some(v1.digest.as_str()));
        assert_eq!(node_images(&checker).await, images_before);

        // The tag deleted altogether: absent, still nothing pulled or removed.
        registry
            .delete_manifest("app/web", &v2.digest)
            .await
            .unwrap();
        let report = checker.check(&v1.reference, CheckMode::Auto, &[]).await;
        assert_status!(report, CheckStatus::Absent);
        assert_eq!(report.tag_moved, None);
        assert_eq!(report.held_digest.as_deref(), Some(v1.digest.as_str()));
        assert_eq!(held_digests(&checker, &v1.reference).await, held_before);
    })
    .await;
}

/// Which of `registries` saw manifest requests for `repo` since `starts` (log offsets).
fn asked(registries: &[&Registry], starts: &[usize], repo: &str) -> Vec<bool> {
    registries
        .iter()
        .zip(starts)
        .map(|(r, start)| r.log()[*start..].contains(&format!("/v2/{repo}/manifests/")))
        .collect()
}

/// The agent's route emulation against the real containerd of the bench, scenario by
/// scenario: the same status, and the same registries asked for the manifest.
#[tokio::test(flavor = "multi_thread")]
async fn the_route_is_the_one_the_node_containerd_takes() {
    bounded(async {
        let upstream = started::open_registry().await;
        let server = started::open_registry().await;
        // Only `server` has the image: which registry a route asks decides the answer.
        push_to(&server, "team/app", "v1", ImageFormat::Oci).await;
        let image = format!("{}/team/app:v1", upstream.host());
        let node = started::bare_node().await;
        let checker = checker(&node, NodeSetup::default());
        let version = checker.cri().version().await.unwrap();
        let dialect = pullwatch_agent::route::containerd::HostsDialect::for_runtime(
            &version.runtime_name,
            &version.runtime_version,
        );
        let s = server.host();
        let scenarios = [
            // containerd < 1.7.32 rejects a file without [host] ("invalid `host` tree").
            ("server without [host]", format!("server = \"http://{s}\"\n")),
            (
                "server with an empty [host]",
                format!("server = \"http://{s}\"\n[host]\n"),
            ),
            // A file containerd cannot decode is ignored: the registry itself.
            (
                "unknown capability",
                format!("[host.\"http://{s}\"]\n  capabilities = [\"pull\", \"resolve\", \"teleport\"]\n"),
            ),
            ("not TOML", format!("[host.\"http://{s}\"\n")),
            (
                "a mirror",
                format!("[host.\"http://{s}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"),
            ),
            (
                "a mirror that may not resolve tags",
                format!("[host.\"http://{s}\"]\n  capabilities = [\"pull\"]\n"),
            ),
        ];
        for (name, hosts_toml) in scenarios {
            node.write_hosts_toml(&upstream.host(), &hosts_toml).unwrap();

            let starts = [upstream.log().len(), server.log().len()];
            let runtime = match checker.cri().pull_image(&image, None).await {
                Ok(_) => {
                    checker.cri().remove_image(&image).await.unwrap();
                    CheckStatus::Available
                }
                Err(error) => pullwatch_agent::cri::classify_pull_error(&error).status,
            };
            let runtime_asked = asked(&[&upstream, &server], &starts, "team/app");

            let starts = [upstream.log().len(), server.log().len()];
            let report = checker.check(&image, CheckMode::Resolve, &[]).await;
            let agent_asked = asked(&[&upstream, &server], &starts, "team/app");
            assert_eq!(
                report.status, runtime,
                "{name} ({} {}): the agent says {} ({}), containerd {runtime}",
                version.runtime_name, version.runtime_version, report.status, report.reason
            );
            assert_eq!(
                agent_asked, runtime_asked,
                "{name}: registries asked (upstream, server) by the agent vs containerd"
            );
        }
        // The bench's containerd is 1.6: the first scenario is the one that differs
        // between versions, so say which rule was exercised.
        if dialect == pullwatch_agent::route::containerd::HostsDialect::RequiresHostTable {
            node.write_hosts_toml(&upstream.host(), &format!("server = \"http://{s}\"\n"))
                .unwrap();
            let report = checker.check(&image, CheckMode::Resolve, &[]).await;
            assert_status!(report, CheckStatus::Absent);
        }
    })
    .await;
}

/// An index without an entry for the node's platform: the agent says `absent`, as the
/// node's containerd does ("no match for platform"), and reads each index once.
#[tokio::test(flavor = "multi_thread")]
async fn an_index_without_the_node_platform_is_absent_here() {
    bounded(async {
        let registry = started::open_registry().await;
        let foreign = push_to(
            &registry,
            "foreign/app",
            "v1",
            ImageFormat::OciIndexOf(&["arm64/v8", "s390x"]),
        ).await;
        let multi = push_to(&registry, "multi/app", "v1", ImageFormat::OciIndex).await;
        let node = started::bare_node().await;
        let checker = checker(&node, NodeSetup::default());
        let here = pullwatch::Platform::host();
        assert_eq!(here.to_string(), "linux/amd64", "the bench runs on linux/amd64");

        let report = checker.check(&foreign.reference, CheckMode::Auto, &[]).await;
        assert_status!(report, CheckStatus::Absent);
        assert_eq!(
            report.reason,
            "no match for platform linux/amd64 in the manifest index (it has linux/arm64, linux/s390x)"
        );
        assert_eq!(report.digest.as_deref(), Some(foreign.digest.as_str()));
        // The node's containerd agrees.
        let runtime = checker
            .cri()
            .pull_image(&foreign.reference, None)
            .await
            .map(|_| CheckStatus::Available)
            .unwrap_or_else(|e| pullwatch_agent::cri::classify_pull_error(&e).status);
        assert_eq!(runtime, CheckStatus::Absent);

        let start = registry.log().len();
        for _ in 0..2 {
            let report = checker.check(&multi.reference, CheckMode::Resolve, &[]).await;
            assert_status!(report, CheckStatus::Available);
        }
        let log = registry.log()[start..].to_string();
        let index_gets = log
            .lines()
            .filter(|l| l.contains(&format!("\"GET /v2/multi/app/manifests/{}", multi.digest)))
            .count();
        assert_eq!(index_gets, 1, "one GET per index digest:\n{log}");
        let configs = common::config_digests(&registry, "multi/app", "v1").await;
        assert!(common::layer_downloads(&log, &configs).is_empty(), "{log}");
    })
    .await;
}

/// A credential plugin that fails runs once per check: the keyring lookup the check
/// made is also what its reason is redacted with (it was asked a second time, so a
/// failing plugin ran, and logged its failure, twice).
#[tokio::test(flavor = "multi_thread")]
async fn a_failing_credential_plugin_runs_once_per_check() {
    bounded(async {
        let registry = private_registry().await;
        let host = registry.host();
        let image = push_to(&registry, "private/app", "v1", ImageFormat::Oci).await;
        let node = started::bare_node().await;
        let plugin_log = node.dir().join("plugin.log");
        let (yaml, name, _) = plugin(&host, &plugin_log);
        let failing = format!(
            "cat >> '{log}'\necho >> '{log}'\necho 'no credentials today' >&2\nexit 1",
            log = plugin_log.display()
        );
        let checker = checker(
            &node,
            NodeSetup {
                plugin: Some((yaml, name, failing)),
                ..Default::default()
            },
        );
        let report = checker
            .check(&image.reference, CheckMode::Resolve, &[])
            .await;
        assert_status!(report, CheckStatus::AuthenticationFailure);
        let requests = std::fs::read_to_string(&plugin_log).unwrap();
        assert_eq!(
            requests.matches("CredentialProviderRequest").count(),
            1,
            "{requests}"
        );
    })
    .await;
}

/// With `--pull-absent-images`, what a check pulled goes again even when the check is
/// abandoned after the pull (its session with the aggregator broke, and the session's
/// checks are dropped): the node is left as it was. The check is dropped exactly
/// there: the CRI observer hears PullImage answer, and the test (on the same
/// single-threaded runtime) aborts the check at its next await, the ImageStatus that
/// follows the pull.
#[tokio::test(flavor = "current_thread")]
async fn an_abandoned_pull_of_an_absent_image_is_removed_again() {
    struct PullAnswered(Arc<tokio::sync::Notify>);
    impl pullwatch_agent::cri::CallObserver for PullAnswered {
        fn observe(&self, rpc: &'static str, code: &'static str, _: Duration) {
            if rpc == "PullImage" && code == "OK" {
                self.0.notify_one();
            }
        }
    }
    bounded(async {
        let registry = started::open_registry().await;
        let image = push_to(&registry, "team/app", "v1", ImageFormat::Oci).await;
        let node = started::bare_node().await;
        let pulled = Arc::new(tokio::sync::Notify::new());
        let checker = Arc::new(checker(
            &node,
            NodeSetup {
                options: Some(PULL_ABSENT),
                observer: Some(Arc::new(PullAnswered(pulled.clone()))),
                ..NodeSetup::default()
            },
        ));
        let check = {
            let checker = checker.clone();
            let image = image.reference.clone();
            tokio::spawn(async move { checker.check(&image, CheckMode::Pull, &[]).await })
        };
        pulled.notified().await;
        check.abort();
        assert!(
            check.await.unwrap_err().is_cancelled(),
            "the check was abandoned"
        );
        // The removal runs on its own; the node's image list says when it is done.
        let mut held = held_digests(&checker, &image.reference).await;
        for _ in 0..100 {
            if held.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            held = held_digests(&checker, &image.reference).await;
        }
        assert!(
            held.is_empty(),
            "the node kept the image a check pulled: {held:?}"
        );
    })
    .await;
}
