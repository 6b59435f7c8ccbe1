//! `cargo bench -p pullwatch-aggregator --bench cluster_scale`
//!
//! 20,000 Deployments in 200 namespaces using 5,000 distinct images (tags in one
//! local docker-registry) and 2,000 pull secrets, served by the test API server; the
//! real `pullwatch-aggregator serve` binary watches it. Prints, each against a
//! baseline measured in the same run:
//!
//! - time to first full inventory sync, as a ratio to a plain kube client paging
//!   through the same lists;
//! - steady-state RSS after the first check pass (target: under 64 MiB) and bytes
//!   per workload;
//! - time from a new Deployment's ADDED event to its series on /metrics, as a ratio
//!   to the time a plain kube watcher takes to see that event;
//! - pod churn: 200 pod events per second for 30 s (replicas of Deployments created
//!   and deleted, through their ReplicaSets, running on 50 nodes): the aggregator's
//!   CPU time as a ratio to a plain kube pod watcher's (a reflector store, in a child
//!   process) over the same events, and the RSS after the churn (target: under
//!   64 MiB, as at steady state).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use kube::api::ListParams;
use kube::runtime::watcher;
use pullwatch_testbench::{
    Registry, RegistryOptions, TestApiServer, deployment, free_port, http_request, namespace, pod,
    process_cpu_seconds, process_status_kib, push_tags, replicaset, running,
    secret_dockerconfigjson, with_owner, with_pull_secrets,
};

const WORKLOADS: usize = 20_000;
const IMAGES: usize = 5_000;
const NAMESPACES: usize = 200;
const SECRETS_PER_NAMESPACE: usize = 10;
const RSS_TARGET_MIB: f64 = 64.0;
/// Pod events per second during the churn, and for how long.
const CHURN_RATE: u64 = 200;
const CHURN_SECONDS: u64 = 30;
/// Deployments whose replicas churn, and the nodes they land on.
const CHURN_DEPLOYMENTS: usize = 200;
const NODES: usize = 50;
/// The flag that makes this binary the baseline's plain pod watcher.
const PLAIN_WATCHER: &str = "--plain-pod-watcher";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == PLAIN_WATCHER) {
        let kubeconfig = args
            .get(at + 1)
            .ok_or_else(|| anyhow::anyhow!("{PLAIN_WATCHER} KUBECONFIG"))?;
        return plain_pod_watcher(kubeconfig).await;
    }
    let registry = Registry::start(RegistryOptions::default()).await?;
    let mut tags: Vec<String> = (0..IMAGES).map(|i| format!("v{i}")).collect();
    tags.push("fresh".into());
    push_tags(&registry, "scale/app", &tags).await?;
    let host = registry.host();

    let server = TestApiServer::start().await?;
    for n in 0..NAMESPACES {
        let ns = format!("team-{n}");
        server.apply(&namespace(&ns, &[]))?;
        for s in 0..SECRETS_PER_NAMESPACE {
            // One organisation-wide robot account: equal values, so checks deduplicate.
            server.apply(&secret_dockerconfigjson(
                &ns,
                &format!("pull-{s}"),
                &host,
                "robot",
                "token",
            ))?;
        }
    }
    for i in 0..WORKLOADS {
        let ns = format!("team-{}", i % NAMESPACES);
        let image = format!("{host}/scale/app:v{}", i % IMAGES);
        let secret = format!("pull-{}", i % SECRETS_PER_NAMESPACE);
        server.apply(&with_pull_secrets(
            deployment(&ns, &format!("svc-{i}"), &[&image]),
            &[&secret],
        ))?;
    }

    // Baseline 1: a plain kube client paging through every list the aggregator syncs.
    let client = server.kube_client();
    let started = Instant::now();
    let mut listed = 0;
    listed += page_all::<Deployment>(&client).await?;
    listed += page_all::<k8s_openapi::api::core::v1::Secret>(&client).await?;
    listed += page_all::<k8s_openapi::api::core::v1::Namespace>(&client).await?;
    let raw_list = started.elapsed();

    let dir = tempfile::tempdir()?;
    let kubeconfig = server.kubeconfig(dir.path())?;
    let port = free_port();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_pullwatch-aggregator"))
        .args([
            "serve",
            "--kubeconfig",
            kubeconfig.to_str().unwrap_or_default(),
        ])
        .args([
            "--bind-address",
            &format!("127.0.0.1:{port}"),
            "--allow-plain-http",
        ])
        .args(["--check-interval", "1h", "--log-level", "warn"])
        .args(["--registry-qps", "2000", "--registry-max-concurrency", "32"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let pid = child.id();
    let result = async {
        // Synced once the lists the baseline pages through are applied (counting
        // synced series alone was met by the small lists before the large ones).
        wait_until(Duration::from_secs(300), || async {
            let metrics = get(addr, "/metrics").await;
            ["deployments", "secrets/dockerconfigjson", "namespaces"]
                .iter()
                .all(|r| {
                    metrics.contains(&format!("pullwatch_inventory_synced{{resource=\"{r}\"}} 1"))
                })
        })
        .await?;
        let synced_at = started.elapsed();
        wait_until(Duration::from_secs(600), || async {
            http_request(addr, http::Method::GET, "/readyz", &[], Vec::new())
                .await
                .is_ok_and(|r| r.status == 200)
        })
        .await?;
        let ready_at = started.elapsed();
        tokio::time::sleep(Duration::from_secs(3)).await;
        let rss = rss_bytes(pid)?;

        // Baseline 2: how long a plain watcher takes to see an ADDED event.
        let api: Api<Deployment> = Api::all(client.clone());
        let mut events = watcher::watcher(api, watcher::Config::default()).boxed();
        loop {
            if let Some(Ok(watcher::Event::InitDone)) = events.next().await {
                break;
            }
        }
        let probe_started = Instant::now();
        server.apply(&deployment(
            "team-0",
            "probe",
            &[&format!("{host}/scale/app:v0")],
        ))?;
        loop {
            match events.next().await {
                Some(Ok(watcher::Event::Apply(d)))
                    if d.metadata.name.as_deref() == Some("probe") =>
                {
                    break;
                }
                Some(_) => continue,
                None => anyhow::bail!("watch ended"),
            }
        }
        let raw_event = probe_started.elapsed();

        let added = Instant::now();
        server.apply(&deployment(
            "team-1",
            "newcomer",
            &[&format!("{host}/scale/app:fresh")],
        ))?;
        wait_until(Duration::from_secs(60), || async {
            get(addr, "/metrics").await.contains("name=\"newcomer\"")
        })
        .await?;
        let to_series = added.elapsed();
        let churn = pod_churn(&server, &kubeconfig, pid, &host).await?;
        anyhow::Ok((synced_at, ready_at, rss, raw_event, to_series, churn))
    }
    .await;
    let _ = child.kill();
    let _ = child.wait();
    let (synced_at, ready_at, rss, raw_event, to_series, churn) = result?;

    let rss_mib = rss as f64 / (1024.0 * 1024.0);
    println!(
        "workloads: {WORKLOADS}, distinct images: {IMAGES}, pull secrets: {}, namespaces: {NAMESPACES}",
        NAMESPACES * SECRETS_PER_NAMESPACE
    );
    println!(
        "first full sync: {:.2}x a plain paged list of the same {listed} objects ({:.0} ms vs {:.0} ms)",
        synced_at.as_secs_f64() / raw_list.as_secs_f64(),
        synced_at.as_secs_f64() * 1e3,
        raw_list.as_secs_f64() * 1e3
    );
    println!(
        "first full check pass done {:.1}x later than sync",
        ready_at.as_secs_f64() / synced_at.as_secs_f64()
    );
    println!(
        "steady-state RSS: {rss_mib:.1} MiB ({:.0} bytes per workload), target < {RSS_TARGET_MIB} MiB: {}",
        rss as f64 / WORKLOADS as f64,
        if rss_mib < RSS_TARGET_MIB {
            "OK"
        } else {
            "ABOVE TARGET"
        }
    );
    println!(
        "ADDED -> series on /metrics: {:.1}x a plain watcher's ADDED latency ({:.0} ms vs {:.1} ms)",
        to_series.as_secs_f64() / raw_event.as_secs_f64(),
        to_series.as_secs_f64() * 1e3,
        raw_event.as_secs_f64() * 1e3
    );
    let churn_rss_mib = churn.rss as f64 / (1024.0 * 1024.0);
    println!(
        "pod churn ({} events in {CHURN_SECONDS} s, {CHURN_RATE}/s): aggregator CPU {:.2}x a plain pod watcher's over the same events ({:.2} vs {:.2} CPU-s), {:.3} CPU-ms per event",
        churn.events,
        churn.aggregator_cpu / churn.watcher_cpu.max(1e-3),
        churn.aggregator_cpu,
        churn.watcher_cpu,
        churn.aggregator_cpu * 1e3 / churn.events.max(1) as f64
    );
    println!(
        "RSS after the churn: {churn_rss_mib:.1} MiB, target < {RSS_TARGET_MIB} MiB: {}",
        if churn_rss_mib < RSS_TARGET_MIB {
            "OK"
        } else {
            "ABOVE TARGET"
        }
    );
    Ok(())
}

/// What the pod churn cost.
struct Churn {
    events: u64,
    /// CPU-seconds (user + system) over the churn.
    aggregator_cpu: f64,
    watcher_cpu: f64,
    rss: u64,
}

/// Replicas of `CHURN_DEPLOYMENTS` Deployments created and deleted at `CHURN_RATE` per
/// second for `CHURN_SECONDS`, as a Deployment's ReplicaSet would, while the
/// aggregator (`pid`) and a plain pod watcher both watch.
async fn pod_churn(
    server: &TestApiServer,
    kubeconfig: &std::path::Path,
    pid: u32,
    host: &str,
) -> anyhow::Result<Churn> {
    let mut watcher = Command::new(std::env::current_exe()?)
        .args([PLAIN_WATCHER, kubeconfig.to_str().unwrap_or_default()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let result = async {
        // Each churned Deployment's ReplicaSet, owned by it as the controller makes it.
        let mut replicasets = Vec::with_capacity(CHURN_DEPLOYMENTS);
        for i in 0..CHURN_DEPLOYMENTS {
            let ns = format!("team-{}", i % NAMESPACES);
            let image = format!("{host}/scale/app:v{}", i % IMAGES);
            let owner = server
                .get::<Deployment>(&ns, &format!("svc-{i}"))
                .ok_or_else(|| anyhow::anyhow!("svc-{i} is missing"))?;
            let rs = server.apply(&with_owner(
                replicaset(&ns, &format!("svc-{i}-5d8f"), &[&image]),
                &owner,
            ))?;
            replicasets.push((ns, image, rs));
        }
        // Let both watchers settle before measuring.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let (aggregator_before, watcher_before) = (
            process_cpu_seconds(pid)?,
            process_cpu_seconds(watcher.id())?,
        );
        let mut alive = std::collections::VecDeque::new();
        let mut events = 0u64;
        let started = Instant::now();
        let every = Duration::from_micros(1_000_000 / CHURN_RATE);
        let mut next = started;
        while started.elapsed() < Duration::from_secs(CHURN_SECONDS) {
            // Keep about 400 replicas: create until then, then replace the oldest.
            if alive.len() >= 400 && events % 2 == 1 {
                let (ns, name): (String, String) = alive.pop_front().unwrap_or_default();
                server.delete::<k8s_openapi::api::core::v1::Pod>(&ns, &name);
            } else {
                let (ns, image, rs) = &replicasets[(events as usize / 2) % CHURN_DEPLOYMENTS];
                let name = format!(
                    "{}-{events}",
                    rs.metadata.name.as_deref().unwrap_or_default()
                );
                let replica = with_owner(pod(ns, &name, &[image]), rs);
                let node = format!("node-{}", events as usize % NODES);
                let digest = format!("{image}@sha256:{:064x}", events % 7);
                server.apply(&running(replica, &node, &[&digest]))?;
                alive.push_back((ns.clone(), name));
            }
            events += 1;
            next += every;
            tokio::time::sleep_until(next.into()).await;
        }
        // The events still in flight reach both watchers.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let aggregator_cpu = process_cpu_seconds(pid)? - aggregator_before;
        let watcher_cpu = process_cpu_seconds(watcher.id())? - watcher_before;
        anyhow::Ok(Churn {
            events,
            aggregator_cpu,
            watcher_cpu,
            rss: rss_bytes(pid)?,
        })
    }
    .await;
    let _ = watcher.kill();
    let _ = watcher.wait();
    result
}

/// The baseline: a plain kube watcher on every pod, keeping them in a reflector store.
async fn plain_pod_watcher(kubeconfig: &str) -> anyhow::Result<()> {
    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(kubeconfig)?,
        &Default::default(),
    )
    .await?;
    let client = kube::Client::try_from(config)?;
    let api: Api<k8s_openapi::api::core::v1::Pod> = Api::all(client);
    let (_store, writer) = kube::runtime::reflector::store();
    let mut stream =
        kube::runtime::reflector(writer, watcher::watcher(api, watcher::Config::default())).boxed();
    while stream.next().await.is_some() {}
    Ok(())
}

async fn page_all<K>(client: &kube::Client) -> anyhow::Result<usize>
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let api: Api<K> = Api::all(client.clone());
    let mut params = ListParams::default().limit(500);
    let mut count = 0;
    loop {
        let page = api.list(&params).await?;
        count += page.items.len();
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(count),
        }
    }
}

async fn get(addr: std::net::SocketAddr, path: &str) -> String {
    http_request(addr, http::Method::GET, path, &[], Vec::new())
        .await
        .map(|r| r.text())
        .unwrap_or_default()
}

async fn wait_until<F, Fut>(timeout: Duration, condition: F) -> anyhow::Result<()>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if condition().await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("timed out after {timeout:?}")
}

fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    Ok(process_status_kib(pid, "VmRSS:")? * 1024)
}
