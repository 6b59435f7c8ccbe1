//! `cargo bench -p pullwatch-aggregator --bench cluster_scale`
//!
//! 20,000 Deployments in 200 namespaces using 5,000 distinct images (tags in one
//! local docker-registry) and 2,000 pull secrets, served by the test API server; the
//! real `pullwatch-aggregator serve` binary watches it. Prints, each against a
//! baseline measured in the same run:
//!
//! - time to first full inventory sync, as a ratio to a plain kube client paging
//!   through the same lists;
//! - steady-state RSS after the first check pass (target: under 96 MiB) and bytes
//!   per workload;
//! - time from a new Deployment's ADDED event to its series on /metrics, as a ratio
//!   to the time a plain kube watcher takes to see that event.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use kube::api::ListParams;
use kube::runtime::watcher;
use pullwatch_testbench::{
    Registry, RegistryOptions, TestApiServer, deployment, free_port, http_request, namespace,
    push_tags, secret_dockerconfigjson, with_pull_secrets,
};

const WORKLOADS: usize = 20_000;
const IMAGES: usize = 5_000;
const NAMESPACES: usize = 200;
const SECRETS_PER_NAMESPACE: usize = 10;
const RSS_TARGET_MIB: f64 = 96.0;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
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
        wait_until(Duration::from_secs(300), || async {
            let metrics = get(addr, "/metrics").await;
            metrics.matches("pullwatch_inventory_synced{").count() >= 10
                && !metrics
                    .lines()
                    .any(|l| l.starts_with("pullwatch_inventory_synced{") && l.ends_with(" 0"))
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
        anyhow::Ok((synced_at, ready_at, rss, raw_event, to_series))
    }
    .await;
    let _ = child.kill();
    let _ = child.wait();
    let (synced_at, ready_at, rss, raw_event, to_series) = result?;

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
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .ok_or_else(|| anyhow::anyhow!("no VmRSS"))?
        .parse()?;
    Ok(kib * 1024)
}
