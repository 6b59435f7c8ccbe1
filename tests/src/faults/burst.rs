//! A burst of workload changes within one second: every Deployment moves to the next
//! tag (already checked, so no new check is due). The figure is the aggregator's
//! CPU-seconds per change (utime + stime from `/proc`, minus what the scrapes that
//! watched for the end cost it) as a ratio to the CPU a plain kube watcher with a
//! reflector store spends applying the same events, on a thread of its own here.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use kube::runtime::{reflector, watcher};
use tokio::sync::oneshot;

use super::env::{Env, EnvOptions, NAMESPACE, all_available, ref_key, tail};
use super::{Figure, Row, Scale, Scenario};
use crate::apiserver::{deployment, with_pull_secrets};
use crate::procfs::{process_cpu_seconds, thread_cpu_seconds};

/// Tags the workloads share; each change moves a workload to the next one.
const TAGS: usize = 10;
/// Scrapes measured at rest to learn what one costs the aggregator.
const CALIBRATION_SCRAPES: usize = 5;

pub(super) async fn run(scale: Scale) -> Result<Row> {
    let n = scale.burst;
    let env = Env::start(EnvOptions {
        workloads: n,
        tags: TAGS,
        spare_tags: &[],
        agents: 0,
        proxy: false,
        // No recheck during the measurement.
        check_interval: Duration::from_secs(3600),
    })
    .await?;
    let pid = env.aggregator.pid().context("the aggregator runs")?;

    // What a scrape of this many series costs the aggregator.
    let cpu = process_cpu_seconds(pid)?;
    for _ in 0..CALIBRATION_SCRAPES {
        env.scrape().await;
    }
    let per_scrape = (process_cpu_seconds(pid)? - cpu) / CALIBRATION_SCRAPES as f64;

    // The baseline: a plain watcher and reflector store on its own thread.
    let client = env.api.kube_client();
    let (ready_tx, ready_rx) = oneshot::channel();
    let baseline = std::thread::spawn(move || baseline_watcher(client, n, ready_tx));
    ready_rx
        .await
        .map_err(|_| anyhow!("the baseline watcher ended before its first list"))?;

    let images: Vec<String> = (0..TAGS).map(|t| env.image(&format!("v{t}"))).collect();
    let expected: Vec<String> = (0..n)
        .map(|i| {
            let image = &images[(i + 1) % TAGS];
            ref_key(NAMESPACE, "deployment", &format!("svc-{i}"), "c0", image)
        })
        .collect();

    let cpu_before = process_cpu_seconds(pid)?;
    // n changes within one second, in ten slices.
    let started = Instant::now();
    for slice in 0..10 {
        for i in (slice * n / 10)..((slice + 1) * n / 10) {
            env.api.apply(&with_pull_secrets(
                deployment(NAMESPACE, &format!("svc-{i}"), &[&images[(i + 1) % TAGS]]),
                &["regcred"],
            ))?;
        }
        let next = Duration::from_millis(100 * (slice as u64 + 1));
        tokio::time::sleep(next.saturating_sub(started.elapsed())).await;
    }
    let mut scrapes = 0usize;
    let mut done = false;
    let deadline = Instant::now() + scale.recover_within;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        scrapes += 1;
        if all_available(&env.scrape().await, &expected) {
            done = true;
            break;
        }
    }
    let cpu_after = process_cpu_seconds(pid)?;
    let aggregator_cpu = (cpu_after - cpu_before - scrapes as f64 * per_scrape).max(0.0);
    let baseline_cpu = baseline
        .join()
        .map_err(|_| anyhow!("the baseline watcher panicked"))??;
    // One clock tick at least: a ratio to zero says nothing.
    let baseline_cpu = baseline_cpu.max(0.01);

    let without_status = env.without_status(&expected).await;
    let statuses = super::env::canonical(&env.scrape().await);
    let wrong = expected
        .iter()
        .filter(|r| {
            statuses
                .get(*r)
                .is_some_and(|s| s.iter().any(|s| s != "available"))
        })
        .count();
    let detail = if done && wrong == 0 && without_status == 0 {
        String::new()
    } else {
        format!(
            "--- aggregator log (tail):\n{}",
            tail(&env.aggregator.log(), 60)
        )
    };
    Ok(Row {
        scenario: Scenario::Burst,
        panics: env.panics(),
        without_status,
        wrong,
        seen: done,
        figure: if done {
            Figure::CpuPerChange(aggregator_cpu / baseline_cpu)
        } else {
            Figure::NotRecovered
        },
        detail,
    })
}

/// Watches Deployments into a reflector store on a current-thread runtime of this
/// thread; after its first list, counts `changes` applied events and returns the CPU
/// this thread spent on them.
fn baseline_watcher(
    client: kube::Client,
    changes: usize,
    ready: oneshot::Sender<()>,
) -> Result<f64> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let api: Api<Deployment> = Api::all(client);
        let (store, writer) = reflector::store();
        let mut events = reflector(writer, watcher(api, watcher::Config::default())).boxed();
        let mut ready = Some(ready);
        let mut cpu_start = 0.0;
        let mut seen = 0;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
        while seen < changes {
            let event = tokio::time::timeout_at(deadline, events.next())
                .await
                .map_err(|_| anyhow!("the baseline watcher saw {seen} of {changes} changes"))?;
            match event {
                Some(Ok(watcher::Event::InitDone)) => {
                    if let Some(ready) = ready.take() {
                        cpu_start = thread_cpu_seconds()?;
                        let _ = ready.send(());
                    }
                }
                Some(Ok(watcher::Event::Apply(_))) if ready.is_none() => seen += 1,
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(anyhow!("baseline watch failed: {e}")),
                None => return Err(anyhow!("the baseline watch ended")),
            }
        }
        let spent = thread_cpu_seconds()? - cpu_start;
        // The store holds every object, as the aggregator's inventory does.
        if store.state().len() < changes {
            return Err(anyhow!(
                "the baseline store holds {} objects",
                store.state().len()
            ));
        }
        Ok(spent)
    })
}
