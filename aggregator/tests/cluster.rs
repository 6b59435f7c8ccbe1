//! `pullwatch-aggregator serve` watching a cluster: the test API server from the bench
//! (real list/watch wire protocol, real k8s-openapi objects), or a real cluster when
//! `PULLWATCH_TEST_KUBECONFIG` names one (tests needing test-server hooks then skip
//! those steps). Registries are real (docker-registry, htpasswd). Loopback only.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Secret};
use pullwatch_testbench::faults::canonical;
use pullwatch_testbench::started;
use pullwatch_testbench::{
    ApiTarget, CANARY_PASSWORD, ClusterScenario, ImageFormat, RegistryOptions, assert_no_canary,
    assert_no_canary_in_file, cronjob, deployment, free_port, http_request, job, namespace, node,
    pod, promtool_check_metrics, push_to, replicaset, running, secret_dockercfg,
    secret_dockerconfigjson, service_account, statefulset, suspended, with_controller, with_owner,
    with_pull_secrets, with_replicas,
};

const BIN: &str = env!("CARGO_BIN_EXE_pullwatch-aggregator");

struct Aggregator {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Aggregator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The whole captured log of the aggregator process: no canary, ever.
        if !std::thread::panicking() {
            assert_no_canary_in_file("the aggregator's log", &self._dir.path().join("stderr.log"));
        }
    }
}

impl Aggregator {
    fn start(target: &ApiTarget, extra: &[&str]) -> Aggregator {
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = target.kubeconfig(dir.path()).unwrap();
        let port = free_port();
        let child = Command::new(BIN)
            .args(["serve", "--kubeconfig", kubeconfig.to_str().unwrap()])
            .args(["--bind-address", &format!("127.0.0.1:{port}")])
            .args([
                "--allow-plain-http",
                "--log-level",
                "info,pullwatch_aggregator=debug",
            ])
            // Rechecks only when a test asks for them.
            .args(
                (!extra.contains(&"--check-interval"))
                    .then_some(["--check-interval", "1h"])
                    .into_iter()
                    .flatten(),
            )
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("stderr.log")).unwrap())
            .spawn()
            .unwrap();
        Aggregator {
            child,
            addr: ([127, 0, 0, 1], port).into(),
            _dir: dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("stderr.log")).unwrap_or_default()
    }

    async fn get(&self, path: &str) -> (u16, String) {
        match http_request(self.addr, http::Method::GET, path, &[], Vec::new()).await {
            Ok(r) => (r.status, r.text()),
            Err(_) => (0, String::new()),
        }
    }

    async fn metrics(&self) -> String {
        let text = self.get("/metrics").await.1;
        assert_no_canary("the aggregator's /metrics", &text);
        text
    }

    /// Waits until /readyz answers 200; panics with the aggregator's log otherwise.
    async fn wait_ready(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (status, body) = self.get("/readyz").await;
            if status == 200 {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "not ready: {body}\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until `condition` holds on /metrics; returns how long it took.
    async fn wait_metrics(
        &self,
        what: &str,
        timeout: Duration,
        condition: impl Fn(&str) -> bool,
    ) -> Duration {
        let started = Instant::now();
        loop {
            let metrics = self.metrics().await;
            if condition(&metrics) {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < timeout,
                "timed out waiting for {what}:\n{metrics}\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// `namespace/kind/name/container` -> the statuses whose canonical gauge is 1: the
/// test bench's reading of the series, keyed without the image.
fn statuses(metrics: &str) -> BTreeMap<String, Vec<String>> {
    canonical(metrics)
        .into_iter()
        .filter_map(|(key, found)| {
            let (reference, _image) = key.split_once(' ')?;
            Some((reference.to_string(), found))
        })
        .collect()
}

fn status_of(metrics: &str, key: &str) -> Option<String> {
    let all = statuses(metrics);
    let found = all.get(key)?;
    assert_eq!(
        found.len(),
        1,
        "exactly one status gauge is 1 for {key}: {found:?}"
    );
    Some(found[0].clone())
}

/// The `kind/name/container`s of namespace `ns` with a canonical series, in order.
fn containers_in(metrics: &str, ns: &str) -> Vec<String> {
    statuses(metrics)
        .into_keys()
        .filter_map(|key| Some(key.strip_prefix(&format!("{ns}/"))?.to_string()))
        .collect()
}

/// [`status_of`] `kind/name/container` in namespace `ns`.
fn status_in(metrics: &str, ns: &str, container: &str) -> Option<String> {
    status_of(metrics, &format!("{ns}/{container}"))
}

#[tokio::test]
async fn watch_events_drive_checks_and_series() {
    let cluster = ClusterScenario::start().await;
    let good = cluster.image("shop/web", "v1", ImageFormat::Oci).await;
    let other = cluster
        .image("shop/api", "v1", ImageFormat::DockerV2S2)
        .await;
    let missing = format!("{}/shop/web:gone", cluster.registry().host());
    let ns = "pw-watch";
    cluster.namespace(ns).await;
    let web = cluster.apply(&deployment(ns, "web", &[&good])).await;
    cluster.apply(&statefulset(ns, "db", &[&missing])).await;
    cluster.apply(&pod(ns, "bare", &[&good])).await;
    cluster
        .apply(&suspended(cronjob(ns, "nightly", &[&other]), true))
        .await;
    cluster
        .apply(&with_replicas(deployment(ns, "scaled-down", &[&other]), 0))
        .await;
    let cron = cluster.apply(&cronjob(ns, "hourly", &[&good])).await;
    // Owned objects are covered by their owners and must not get series of their own.
    cluster
        .apply(&with_owner(job(ns, "hourly-1", &[&good]), &cron))
        .await;
    let rs = cluster
        .apply(&with_owner(replicaset(ns, "web-abc", &[&good]), &web))
        .await;
    cluster
        .apply(&with_owner(pod(ns, "web-abc-1", &[&good]), &rs))
        .await;

    let aggregator = Aggregator::start(cluster.target(), &[]);
    let ready = aggregator.wait_ready().await;
    assert!(ready.contains("ready"), "{ready}");
    let metrics = aggregator.metrics().await;
    promtool_check_metrics(&metrics).unwrap();
    assert_eq!(
        containers_in(&metrics, ns),
        [
            "cronjob/hourly/c0",
            "deployment/web/c0",
            "pod/bare/c0",
            "statefulset/db/c0"
        ],
        "{metrics}"
    );
    assert_eq!(
        status_in(&metrics, ns, "deployment/web/c0").as_deref(),
        Some("available")
    );
    assert_eq!(
        status_in(&metrics, ns, "statefulset/db/c0").as_deref(),
        Some("absent")
    );
    assert!(
        metrics.contains("pullwatch_inventory_synced{resource=\"deployments\"} 1"),
        "{metrics}"
    );

    // A new Deployment is checked within seconds of its ADDED event (the interval is 1h).
    cluster.apply(&deployment(ns, "api", &[&other])).await;
    let took = aggregator
        .wait_metrics(
            "the new deployment's series",
            Duration::from_secs(10),
            |m| status_of(m, &format!("{ns}/deployment/api/c0")).as_deref() == Some("available"),
        )
        .await;
    assert!(took < Duration::from_secs(10));

    // A changed image: re-checked at once.
    cluster.apply(&statefulset(ns, "db", &[&good])).await;
    aggregator
        .wait_metrics("the fixed statefulset", Duration::from_secs(10), |m| {
            status_of(m, &format!("{ns}/statefulset/db/c0")).as_deref() == Some("available")
        })
        .await;

    // A deleted workload's series disappear at once.
    cluster.delete::<Deployment>(ns, "web").await;
    aggregator
        .wait_metrics(
            "the deleted deployment's series to go",
            Duration::from_secs(5),
            |m| !m.contains("name=\"web\"") && m.contains("name=\"api\""),
        )
        .await;

    // Un-suspending a CronJob makes it checked.
    cluster
        .apply(&suspended(cronjob(ns, "nightly", &[&other]), false))
        .await;
    aggregator
        .wait_metrics("the resumed cronjob", Duration::from_secs(10), |m| {
            status_of(m, &format!("{ns}/cronjob/nightly/c0")).as_deref() == Some("available")
        })
        .await;
    cluster.remove_namespace_if_real(ns).await;
}

/// The canonical series (one line per status family) of one workload.
fn series_of(metrics: &str, ns: &str, kind: &str, name: &str) -> usize {
    metrics
        .lines()
        .filter(|l| {
            l.starts_with("k8s_image_availability_exporter_")
                && l.contains(&format!("namespace=\"{ns}\""))
                && l.contains(&format!("kind=\"{kind}\""))
                && l.contains(&format!("name=\"{name}\""))
        })
        .count()
}

#[tokio::test]
async fn pods_of_unwatched_controllers_are_checked_once_under_their_controller() {
    let cluster = ClusterScenario::start().await;
    let good = cluster.image("shop/web", "v1", ImageFormat::Oci).await;
    let missing = format!("{}/db/postgres:gone", cluster.registry().host());
    let ns = "pw-owners";
    cluster.namespace(ns).await;

    // Argo Rollouts' shape: Rollout -> ReplicaSet -> two Pods.
    let rollout_rs = cluster
        .apply(&with_controller(
            replicaset(ns, "shop-7f9", &[&good]),
            "argoproj.io/v1alpha1",
            "Rollout",
            "shop",
            "uid-shop",
        ))
        .await;
    for pod_name in ["shop-7f9-a", "shop-7f9-b"] {
        cluster
            .apply(&with_owner(pod(ns, pod_name, &[&good]), &rollout_rs))
            .await;
    }
    // An operator's custom resource owning its pods directly, no StatefulSet between.
    for pod_name in ["db-0", "db-1"] {
        cluster
            .apply(&with_controller(
                pod(ns, pod_name, &[&missing]),
                "postgres-operator.crunchydata.com/v1beta1",
                "PostgresCluster",
                "db",
                "uid-db",
            ))
            .await;
    }
    // A bare ReplicaSet is its own top-most controller.
    let bare = cluster.apply(&replicaset(ns, "solo", &[&good])).await;
    cluster
        .apply(&with_owner(pod(ns, "solo-x", &[&good]), &bare))
        .await;
    // A Deployment's pods are covered by the Deployment, never twice.
    let web = cluster.apply(&deployment(ns, "web", &[&good])).await;
    let web_rs = cluster
        .apply(&with_owner(replicaset(ns, "web-6d8", &[&good]), &web))
        .await;
    cluster
        .apply(&with_owner(pod(ns, "web-6d8-q", &[&good]), &web_rs))
        .await;

    let aggregator = Aggregator::start(cluster.target(), &[]);
    aggregator.wait_ready().await;
    aggregator
        .wait_metrics("every controller's series", Duration::from_secs(20), |m| {
            statuses(m)
                .keys()
                .filter(|k| k.starts_with(&format!("{ns}/")))
                .count()
                == 4
        })
        .await;
    let metrics = aggregator.metrics().await;
    promtool_check_metrics(&metrics).unwrap();
    assert_eq!(
        containers_in(&metrics, ns),
        [
            "deployment/web/c0",
            "postgrescluster/db/c0",
            "replicaset/solo/c0",
            "rollout/shop/c0"
        ],
        "{metrics}"
    );
    assert_eq!(
        status_in(&metrics, ns, "rollout/shop/c0").as_deref(),
        Some("available")
    );
    assert_eq!(
        status_in(&metrics, ns, "postgrescluster/db/c0").as_deref(),
        Some("absent")
    );
    // One series set however many replicas: one line per status family.
    let families = series_of(&metrics, ns, "deployment", "web");
    assert!(families > 0, "{metrics}");
    for (kind, name) in [("rollout", "shop"), ("postgrescluster", "db")] {
        assert_eq!(
            series_of(&metrics, ns, kind, name),
            families,
            "{kind} {name}"
        );
    }

    // The series stay while a replica is left, and go with the last pod.
    cluster.delete::<Pod>(ns, "shop-7f9-a").await;
    cluster.delete::<Pod>(ns, "db-0").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let metrics = aggregator.metrics().await;
    assert_eq!(series_of(&metrics, ns, "rollout", "shop"), families);
    assert_eq!(series_of(&metrics, ns, "postgrescluster", "db"), families);
    cluster.delete::<Pod>(ns, "shop-7f9-b").await;
    cluster.delete::<Pod>(ns, "db-1").await;
    aggregator
        .wait_metrics(
            "the last pods' controllers to go",
            Duration::from_secs(10),
            |m| {
                series_of(m, ns, "rollout", "shop") == 0
                    && series_of(m, ns, "postgrescluster", "db") == 0
                    && series_of(m, ns, "replicaset", "solo") == families
            },
        )
        .await;
    cluster.remove_namespace_if_real(ns).await;
}

#[tokio::test]
async fn a_registry_that_leaves_the_index_takes_its_series_along() {
    let cluster = ClusterScenario::start().await;
    let kept = cluster.registry();
    let left = started::open_registry().await;
    let kept_image = cluster.image("app", "v1", ImageFormat::Oci).await;
    let left_image = push_to(&left, "app", "v1", ImageFormat::Oci)
        .await
        .reference;
    let ns = "pw-registries";
    cluster.namespace(ns).await;
    cluster.apply(&deployment(ns, "kept", &[&kept_image])).await;
    cluster.apply(&deployment(ns, "left", &[&left_image])).await;
    let aggregator = Aggregator::start(cluster.target(), &[]);
    aggregator.wait_ready().await;
    let requests = |host: &str| {
        format!("pullwatch_registry_requests_total{{code=\"200\",registry=\"{host}\"}}")
    };
    aggregator
        .wait_metrics("both registries asked", Duration::from_secs(20), |m| {
            m.contains(&requests(&kept.host())) && m.contains(&requests(&left.host()))
        })
        .await;

    cluster.delete::<Deployment>(ns, "left").await;
    aggregator
        .wait_metrics(
            "the departed registry's series to go",
            Duration::from_secs(10),
            |m| !m.contains(&left.host()) && m.contains(&requests(&kept.host())),
        )
        .await;
    cluster.remove_namespace_if_real(ns).await;
}

/// Applies Deployment `namespace/name` of `image` listing the pull secrets `secrets`.
async fn deploy_with_secrets(
    cluster: &ClusterScenario,
    namespace: &str,
    name: &str,
    image: &str,
    secrets: &[&str],
) {
    let workload = deployment(namespace, name, &[image]);
    cluster.apply(&with_pull_secrets(workload, secrets)).await;
}

#[tokio::test]
async fn pull_secrets_are_resolved_per_namespace_like_the_kubelet() {
    let cluster = ClusterScenario::with_registry(RegistryOptions {
        htpasswd: Some(("carol".into(), CANARY_PASSWORD.into())),
        ..Default::default()
    })
    .await;
    let image = cluster.image("corp/app", "1.0", ImageFormat::Oci).await;
    let host = cluster.registry().host();
    cluster.namespaces(&["pw-a", "pw-b", "pw-c"]).await;
    // pw-a: the default service account carries the secret; the pod names none.
    cluster
        .apply(&secret_dockerconfigjson(
            "pw-a",
            "regcred",
            &host,
            "carol",
            CANARY_PASSWORD,
        ))
        .await;
    cluster
        .apply(&service_account("pw-a", "default", &["regcred"]))
        .await;
    cluster
        .apply(&deployment("pw-a", "via-sa", &[&image]))
        .await;
    // pw-b: names a secret that exists only in pw-a: never borrowed across namespaces.
    deploy_with_secrets(&cluster, "pw-b", "borrower", &image, &["regcred"]).await;
    // pw-c: a legacy dockercfg secret; and a broken one, which makes the kubelet fail
    // every pull of a pod that lists it, even beside a good one.
    cluster
        .apply(&secret_dockercfg(
            "pw-c",
            "legacy",
            &host,
            "carol",
            CANARY_PASSWORD,
        ))
        .await;
    let mut broken = secret_dockerconfigjson("pw-c", "broken", &host, "x", "y");
    broken.data = Some(
        [(
            ".dockerconfigjson".to_string(),
            k8s_openapi::ByteString(b"{not json".to_vec()),
        )]
        .into(),
    );
    cluster.apply(&broken).await;
    deploy_with_secrets(&cluster, "pw-c", "legacy-user", &image, &["legacy"]).await;
    deploy_with_secrets(
        &cluster,
        "pw-c",
        "broken-user",
        &image,
        &["broken", "legacy"],
    )
    .await;
    // An unrelated secret type that must never be listed.
    let mut opaque = Secret::default();
    opaque.metadata.name = Some("tls".into());
    opaque.metadata.namespace = Some("pw-c".into());
    opaque.type_ = Some("kubernetes.io/tls".into());
    cluster.apply(&opaque).await;

    let aggregator = Aggregator::start(cluster.target(), &[]);
    aggregator.wait_ready().await;
    let metrics = aggregator.metrics().await;
    assert_eq!(
        status_of(&metrics, "pw-a/deployment/via-sa/c0").as_deref(),
        Some("available"),
        "{metrics}"
    );
    assert_eq!(
        status_of(&metrics, "pw-b/deployment/borrower/c0").as_deref(),
        Some("authentication_failure")
    );
    assert_eq!(
        status_of(&metrics, "pw-c/deployment/legacy-user/c0").as_deref(),
        Some("available")
    );
    assert_eq!(
        status_of(&metrics, "pw-c/deployment/broken-user/c0").as_deref(),
        Some("authentication_failure"),
        "{metrics}"
    );
    let log = aggregator.log();
    assert!(log.contains("pull secret pw-b/regcred not found"), "{log}");
    assert!(log.contains("pull secret pw-c/broken is unusable"), "{log}");
    assert_no_canary("the aggregator's log", &log);

    // A rotated password: the secret's MODIFIED event is picked up and re-checked.
    cluster
        .apply(&secret_dockerconfigjson(
            "pw-a", "regcred", &host, "carol", "wrong",
        ))
        .await;
    aggregator
        .wait_metrics(
            "the rotated secret's failure",
            Duration::from_secs(10),
            |m| {
                status_of(m, "pw-a/deployment/via-sa/c0").as_deref()
                    == Some("authentication_failure")
            },
        )
        .await;

    if let Some(requests) = cluster.target().requests() {
        // The aggregator lists and watches cluster-wide; the test's own writes go
        // through namespaced paths.
        let secret_requests: Vec<&(String, String)> = requests
            .iter()
            .filter(|(method, p)| method == "GET" && p.starts_with("/api/v1/secrets"))
            .collect();
        assert!(!secret_requests.is_empty());
        for (_, path) in &secret_requests {
            assert!(
                path.contains("fieldSelector=type%3Dkubernetes.io%2Fdockerconfigjson")
                    || path.contains("fieldSelector=type%3Dkubernetes.io%2Fdockercfg"),
                "secrets are only ever listed by pull-secret type: {path}"
            );
        }
    }
}

#[tokio::test]
async fn forbidden_secrets_warn_once_and_the_rest_keeps_working() {
    let cluster = ClusterScenario::with_registry(RegistryOptions {
        htpasswd: Some(("dave".into(), CANARY_PASSWORD.into())),
        ..Default::default()
    })
    .await;
    let Some(server) = cluster.target().test_server() else {
        return; // Needs the test server's RBAC hook.
    };
    let image = cluster.image("corp/app", "1.0", ImageFormat::Oci).await;
    cluster.namespace("pw-rbac").await;
    cluster
        .apply(&secret_dockerconfigjson(
            "pw-rbac",
            "regcred",
            &cluster.registry().host(),
            "dave",
            CANARY_PASSWORD,
        ))
        .await;
    deploy_with_secrets(&cluster, "pw-rbac", "app", &image, &["regcred"]).await;
    server.forbid("secrets");

    let aggregator = Aggregator::start(cluster.target(), &[]);
    let ready = aggregator.wait_ready().await;
    assert!(ready.contains("forbidden by RBAC"), "{ready}");
    assert!(ready.contains("secrets/dockerconfigjson"), "{ready}");
    let metrics = aggregator.metrics().await;
    assert!(
        metrics.contains("pullwatch_inventory_forbidden{resource=\"secrets/dockerconfigjson\"} 1"),
        "{metrics}"
    );
    assert_eq!(
        status_of(&metrics, "pw-rbac/deployment/app/c0").as_deref(),
        Some("authentication_failure")
    );
    let log = aggregator.log();
    assert_eq!(
        log.matches("forbidden by RBAC: running without it").count(),
        2,
        "warned once per secret watch: {log}"
    );

    // Access granted later: the secret arrives and the check follows.
    server.allow("secrets");
    aggregator
        .wait_metrics(
            "the secret after RBAC allows it",
            Duration::from_secs(40),
            |m| {
                status_of(m, "pw-rbac/deployment/app/c0").as_deref() == Some("available")
                    && m.contains(
                        "pullwatch_inventory_forbidden{resource=\"secrets/dockerconfigjson\"} 0",
                    )
            },
        )
        .await;
}

#[tokio::test]
async fn relists_after_410_and_keeps_state_while_the_api_server_is_away() {
    let cluster = ClusterScenario::start().await;
    let Some(server) = cluster.target().test_server() else {
        return; // Needs the test server's hooks.
    };
    let image = cluster.image("app", "v1", ImageFormat::Oci).await;
    server.apply(&namespace("pw-relist", &[])).unwrap();
    server
        .apply(&deployment("pw-relist", "keep", &[&image]))
        .unwrap();
    server
        .apply(&deployment("pw-relist", "doomed", &[&image]))
        .unwrap();

    let aggregator = Aggregator::start(cluster.target(), &[]);
    aggregator.wait_ready().await;
    assert!(aggregator.metrics().await.contains("name=\"doomed\""));
    let lists_before = server.list_requests("deployments").len();

    // History compacted, watches cut: the watch's resourceVersion is gone (410), so
    // kube relists; a deletion that happened meanwhile must be noticed by the relist.
    server.compact();
    server.drop_watches();
    server.delete::<Deployment>("pw-relist", "doomed");
    server.compact();
    aggregator
        .wait_metrics(
            "the relist to drop the deleted deployment",
            Duration::from_secs(20),
            |m| !m.contains("name=\"doomed\"") && m.contains("name=\"keep\""),
        )
        .await;
    assert!(
        server.list_requests("deployments").len() > lists_before,
        "relisted after 410"
    );

    // API server gone: last known state kept, still serving, still ready.
    server.stop().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (status, _) = aggregator.get("/readyz").await;
    assert_eq!(status, 200);
    assert!(aggregator.metrics().await.contains("name=\"keep\""));
    assert!(
        aggregator
            .metrics()
            .await
            .contains("pullwatch_inventory_watch_errors_total")
    );

    // Back: changes flow again.
    server.start_again().await.unwrap();
    server
        .apply(&deployment("pw-relist", "newcomer", &[&image]))
        .unwrap();
    aggregator
        .wait_metrics(
            "a deployment created after the API server came back",
            Duration::from_secs(40),
            |m| m.contains("name=\"newcomer\""),
        )
        .await;
}

#[tokio::test]
async fn namespace_label_and_forced_disabled_controllers() {
    let cluster = ClusterScenario::start().await;
    let image = cluster.image("app", "v1", ImageFormat::Oci).await;
    cluster
        .apply(&namespace("pw-on", &[("pullwatch", "enabled")]))
        .await;
    cluster.apply(&namespace("pw-off", &[])).await;
    cluster
        .apply(&with_replicas(deployment("pw-on", "idle", &[&image]), 0))
        .await;
    cluster
        .apply(&with_replicas(
            statefulset("pw-on", "idle-db", &[&image]),
            0,
        ))
        .await;
    cluster
        .apply(&deployment("pw-off", "ignored", &[&image]))
        .await;

    let aggregator = Aggregator::start(
        cluster.target(),
        &[
            "--namespace-label",
            "pullwatch=enabled",
            "--force-check-disabled-controllers",
            "deployment",
        ],
    );
    aggregator.wait_ready().await;
    let metrics = aggregator.metrics().await;
    let found = statuses(&metrics);
    let keys: Vec<&String> = found.keys().filter(|k| k.starts_with("pw-")).collect();
    assert_eq!(keys, [&"pw-on/deployment/idle/c0".to_string()], "{metrics}");

    // Labelling the other namespace brings its workloads in.
    cluster
        .apply(&namespace("pw-off", &[("pullwatch", "enabled")]))
        .await;
    aggregator
        .wait_metrics(
            "the newly labelled namespace",
            Duration::from_secs(10),
            |m| m.contains("name=\"ignored\""),
        )
        .await;
}

/// The moved-tag series of workload `name` (kind/name) in `ns`: its value, if exported.
fn tag_moved(metrics: &str, ns: &str, kind: &str, name: &str) -> Option<String> {
    metrics
        .lines()
        .find(|l| {
            l.starts_with("pullwatch_image_tag_moved{")
                && l.contains(&format!(
                    "kind=\"{kind}\",name=\"{name}\",namespace=\"{ns}\""
                ))
        })
        .and_then(|l| l.rsplit(' ').next())
        .map(str::to_string)
}

/// Running pods' `imageID`s against what the tag resolves to now: 0 while they match,
/// 1 once the tag moves (or a pod runs another digest), absent when nothing is known.
#[tokio::test(flavor = "multi_thread")]
async fn a_moved_tag_shows_against_what_running_pods_run() {
    let cluster = ClusterScenario::start().await;
    if cluster.target().is_real() {
        // Pod statuses with made-up image IDs are only for the test server.
        return;
    }
    let v1 = cluster.push("shop/web", "v1", ImageFormat::Oci).await;
    let v2 = cluster.push("shop/web", "v2", ImageFormat::Oci).await;
    let image = v1.reference.clone();
    let pinned = format!("{}/shop/web@{}", cluster.registry().host(), v1.digest);
    let runs = |digest: &str| format!("{}/shop/web@{digest}", cluster.registry().host());
    let ns = "pw-drift";
    cluster.namespace(ns).await;
    let web = cluster.apply(&deployment(ns, "web", &[&image])).await;
    cluster.apply(&deployment(ns, "idle", &[&image])).await;
    let rs = cluster
        .apply(&with_owner(replicaset(ns, "web-abc", &[&image]), &web))
        .await;
    let web_pod = |name: &str| {
        let mut p = with_owner(pod(ns, name, &[&image]), &rs);
        p.metadata.labels = Some([("pod-template-hash".to_string(), "abc".to_string())].into());
        p
    };
    let web1 = cluster.apply(&web_pod("web-abc-1")).await;
    cluster
        .apply_status(&running(web1, "node-a", &[&runs(&v1.digest)]))
        .await;
    // A digest reference cannot move: never a series.
    let solo = cluster.apply(&pod(ns, "solo", &[&pinned])).await;
    cluster
        .apply_status(&running(solo, "node-a", &[&runs(&v1.digest)]))
        .await;

    let aggregator = Aggregator::start(cluster.target(), &["--check-interval", "1s"]);
    aggregator.wait_ready().await;
    aggregator
        .wait_metrics("web's drift at 0", Duration::from_secs(30), |m| {
            tag_moved(m, ns, "deployment", "web").as_deref() == Some("0")
        })
        .await;
    let metrics = aggregator.metrics().await;
    promtool_check_metrics(&metrics).unwrap();
    assert_eq!(
        tag_moved(&metrics, ns, "deployment", "idle"),
        None,
        "no running pod"
    );
    assert_eq!(
        tag_moved(&metrics, ns, "pod", "solo"),
        None,
        "digest reference"
    );
    assert_eq!(
        status_in(&metrics, ns, "pod/solo/c0").as_deref(),
        Some("available")
    );

    // The release tag is re-pushed: the running pod runs what a restart would not.
    cluster
        .registry()
        .move_tag("shop/web", "v2", "v1")
        .await
        .unwrap();
    aggregator
        .wait_metrics("web's drift at 1", Duration::from_secs(30), |m| {
            tag_moved(m, ns, "deployment", "web").as_deref() == Some("1")
        })
        .await;
    // A new pod started from the moved tag runs the new digest; the old one still
    // runs the old: still moved. Once the old pod is gone, all match again.
    let web2 = cluster.apply(&web_pod("web-abc-2")).await;
    cluster
        .apply_status(&running(web2, "node-b", &[&runs(&v2.digest)]))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        tag_moved(&aggregator.metrics().await, ns, "deployment", "web").as_deref(),
        Some("1")
    );
    cluster
        .delete::<k8s_openapi::api::core::v1::Pod>(ns, "web-abc-1")
        .await;
    aggregator
        .wait_metrics("web's drift back at 0", Duration::from_secs(30), |m| {
            tag_moved(m, ns, "deployment", "web").as_deref() == Some("0")
        })
        .await;
    // The tag deleted: no digest to compare with, the series goes.
    cluster
        .registry()
        .delete_manifest("shop/web", &v2.digest)
        .await
        .unwrap();
    aggregator
        .wait_metrics("web's drift unknown", Duration::from_secs(30), |m| {
            tag_moved(m, ns, "deployment", "web").is_none()
                && status_of(m, &format!("{ns}/deployment/web/c0")).as_deref() == Some("absent")
        })
        .await;
}

/// A Node as its kubelet reports it: `info` in `status.nodeInfo`.
async fn reported_node(
    cluster: &ClusterScenario,
    name: &str,
    info: k8s_openapi::api::core::v1::NodeSystemInfo,
) {
    use k8s_openapi::api::core::v1::{Node, NodeStatus};
    let created: Node = cluster.apply(&node(name, &[])).await;
    let reported = Node {
        status: Some(NodeStatus {
            node_info: Some(info),
            ..Default::default()
        }),
        ..created
    };
    cluster.apply_status(&reported).await;
}

/// A Node whose kubelet reports `os/arch`.
async fn platform_node(cluster: &ClusterScenario, name: &str, os: &str, arch: &str) {
    let info = k8s_openapi::api::core::v1::NodeSystemInfo {
        operating_system: os.into(),
        architecture: arch.into(),
        ..Default::default()
    };
    reported_node(cluster, name, info).await;
}

/// The cluster's node platforms, narrowed by each pod template's nodeSelector: an index
/// without an entry for one of them is `absent` for that workload only, and follows the
/// nodes as they come and go.
#[tokio::test(flavor = "multi_thread")]
async fn platforms_come_from_the_nodes_and_the_node_selector() {
    let cluster = ClusterScenario::start().await;
    if cluster.target().is_real() {
        // Made-up nodes are only for the test server.
        return;
    }
    let image = cluster
        .image("multi/app", "v1", ImageFormat::OciIndex)
        .await;
    let ns = "pw-platforms";
    cluster.namespace(ns).await;
    platform_node(&cluster, "arm-1", "linux", "arm64").await;
    platform_node(&cluster, "z-1", "linux", "s390x").await;
    let on_arch = |name: &str, arch: &str| {
        let mut d = deployment(ns, name, &[&image]);
        if let Some(spec) = d.spec.as_mut().and_then(|s| s.template.spec.as_mut()) {
            spec.node_selector =
                Some([("kubernetes.io/arch".to_string(), arch.to_string())].into());
        }
        d
    };
    cluster.apply(&deployment(ns, "anywhere", &[&image])).await;
    cluster.apply(&on_arch("arm-only", "arm64")).await;
    cluster.apply(&on_arch("z-only", "s390x")).await;

    let aggregator = Aggregator::start(cluster.target(), &[]);
    aggregator.wait_ready().await;
    let key = |name: &str| format!("{ns}/deployment/{name}/c0");
    aggregator
        .wait_metrics("platform statuses", Duration::from_secs(30), |m| {
            status_of(m, &key("z-only")).as_deref() == Some("absent")
        })
        .await;
    let metrics = aggregator.metrics().await;
    assert_eq!(
        status_of(&metrics, &key("anywhere")).as_deref(),
        Some("absent")
    );
    assert_eq!(
        status_of(&metrics, &key("arm-only")).as_deref(),
        Some("available")
    );
    promtool_check_metrics(&metrics).unwrap();

    // The s390x node goes: every workload can run what the index has.
    cluster
        .delete::<k8s_openapi::api::core::v1::Node>("", "z-1")
        .await;
    aggregator
        .wait_metrics("the s390x node's departure", Duration::from_secs(30), |m| {
            status_of(m, &key("anywhere")).as_deref() == Some("available")
        })
        .await;
    // z-only now lands nowhere known: nothing to hold against the image.
    assert_eq!(
        status_of(&aggregator.metrics().await, &key("z-only")).as_deref(),
        Some("available")
    );
}

/// A Node whose kubelet reports `runtime` (`name://version`) as its container runtime.
async fn runtime_node(cluster: &ClusterScenario, name: &str, runtime: &str) {
    let info = k8s_openapi::api::core::v1::NodeSystemInfo {
        container_runtime_version: runtime.into(),
        ..Default::default()
    };
    reported_node(cluster, name, info).await;
}

/// The reason `/api/v1/images` gives for `image`.
async fn reason_of(aggregator: &Aggregator, image: &str) -> String {
    let api: serde_json::Value =
        serde_json::from_str(&aggregator.get("/api/v1/images").await.1).unwrap();
    let entry = api["images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["image"] == image)
        .unwrap_or_else(|| panic!("{image} not in {api}"));
    entry["reason"].as_str().unwrap_or_default().to_string()
}

/// Without `--schema1-images`, a Docker schema 1 image is pulled as the cluster's
/// nodes' runtimes pull it (their `containerRuntimeVersion`): containerd 1.x converts it
/// and skips the empty layer's blob, containerd 2.x refuses it, CRI-O copies every blob;
/// with several runtimes in the cluster, the first that fails it answers, named. A
/// change takes effect from each image's next check.
#[tokio::test(flavor = "multi_thread")]
async fn schema1_images_are_pulled_as_the_nodes_runtimes_pull_them() {
    let cluster = ClusterScenario::with_registry(RegistryOptions {
        schema1: true,
        ..RegistryOptions::default()
    })
    .await;
    if cluster.target().is_real() {
        // Made-up nodes are only for the test server.
        return;
    }
    let registry = cluster.registry();
    let app_layer = pullwatch_testbench::raw::schema1_image(registry, "old/app")
        .await
        .unwrap();
    pullwatch_testbench::raw::schema1_image(registry, "old/no-empty")
        .await
        .unwrap();
    pullwatch_testbench::raw::delete_blob(
        registry,
        "old/no-empty",
        pullwatch_testbench::raw::EMPTY_TAR_GZ,
    )
    .await
    .unwrap();
    // old/app through a proxy that counts what the registry is asked.
    let proxy = pullwatch_testbench::PullProxy::start(registry)
        .await
        .unwrap();
    let app = format!("{}/old/app:v1", proxy.host());
    let no_empty = format!("{}/old/no-empty:v1", registry.host());
    let ns = "pw-schema1";
    cluster.namespace(ns).await;
    cluster.apply(&deployment(ns, "app", &[&app])).await;
    cluster
        .apply(&deployment(ns, "no-empty", &[&no_empty]))
        .await;
    runtime_node(&cluster, "old-1", "containerd://1.7.27").await;

    let aggregator = Aggregator::start(cluster.target(), &["--check-interval", "1s"]);
    aggregator.wait_ready().await;
    let key = |name: &str| format!("{ns}/deployment/{name}/c0");
    let statuses_are = |app_status: &'static str, no_empty_status: &'static str| {
        move |m: &str| {
            status_of(m, &key("app")).as_deref() == Some(app_status)
                && status_of(m, &key("no-empty")).as_deref() == Some(no_empty_status)
        }
    };
    // containerd 1.x: converted; the deleted empty layer is never fetched.
    aggregator
        .wait_metrics(
            "schema 1 pulled as containerd 1.x converts it",
            Duration::from_secs(30),
            statuses_are("available", "available"),
        )
        .await;

    // A CRI-O node joins: it copies the empty layer's blob too, which is gone.
    runtime_node(&cluster, "crio-1", "cri-o://1.31.3").await;
    aggregator
        .wait_metrics(
            "schema 1 pulled as CRI-O copies it as well",
            Duration::from_secs(30),
            statuses_are("available", "absent"),
        )
        .await;
    let reason = reason_of(&aggregator, &no_empty).await;
    assert!(
        reason.contains("on CRI-O nodes")
            && reason.contains(pullwatch_testbench::raw::EMPTY_TAR_GZ),
        "{reason}"
    );
    // Cost, counted at the registry: the layer blob both runtimes download is asked once
    // per verification (once with containerd 1.x alone, once again when CRI-O joined),
    // not once per runtime; CRI-O's empty blob once.
    let blob_gets = |requests: &[pullwatch_testbench::ProxiedRequest], digest: &str| {
        let path = format!("/v2/old/app/blobs/{digest}");
        requests
            .iter()
            .filter(|r| r.method == "GET" && r.path == path)
            .count()
    };
    let mut requests = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while blob_gets(&requests, pullwatch_testbench::raw::EMPTY_TAR_GZ) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "CRI-O's empty blob never asked: {requests:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        requests.extend(proxy.take_requests());
    }
    // Rechecks go on every second; the blobs, verified, are not asked again.
    tokio::time::sleep(Duration::from_secs(2)).await;
    requests.extend(proxy.take_requests());
    assert_eq!(blob_gets(&requests, &app_layer), 2, "{requests:?}");
    assert_eq!(
        blob_gets(&requests, pullwatch_testbench::raw::EMPTY_TAR_GZ),
        1,
        "{requests:?}"
    );

    // Every node on containerd 2: refused, whatever its blobs.
    runtime_node(&cluster, "old-1", "containerd://2.1.4").await;
    cluster
        .delete::<k8s_openapi::api::core::v1::Node>("", "crio-1")
        .await;
    aggregator
        .wait_metrics(
            "schema 1 refused as containerd 2 refuses it",
            Duration::from_secs(30),
            statuses_are("unknown_error", "unknown_error"),
        )
        .await;
    let reason = reason_of(&aggregator, &app).await;
    assert!(
        reason.contains("containerd 2.0 and later refuse") && !reason.contains("on containerd"),
        "one runtime: not named; {reason}"
    );

    // The flag overrides what the nodes run.
    drop(aggregator);
    let aggregator = Aggregator::start(
        cluster.target(),
        &["--check-interval", "1s", "--schema1-images", "converted"],
    );
    aggregator.wait_ready().await;
    aggregator
        .wait_metrics(
            "schema 1 converted as --schema1-images says",
            Duration::from_secs(30),
            statuses_are("available", "available"),
        )
        .await;
}
