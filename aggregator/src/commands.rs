//! The two commands: `check` (the manifests once, a report on stdout) and `serve`
//! (the inventory, index builder, scheduler, agent server and HTTP endpoints started
//! and wired together, stopped in order on a signal).

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use crate::agents::auth::TokenReviewer;
use crate::agents::server::{AgentServer, AgentServerError};
use crate::agents::{self, AgentHub};
use crate::checker::CentralChecker;
use crate::endpoints::{self, EndpointState};
use crate::flags::{self, CheckArgs, Cli, Command, OutputFormat, ServeArgs};
use crate::index::ContainerRef;
use crate::index::{self, ImageIndex};
use crate::inventory::cluster::{self, InventoryMetrics};
use crate::inventory::manifests;
use crate::inventory::{SharedInventory, WatchState};
use crate::metrics::Metrics;
use crate::pipeline::{CycleProgress, Pipeline};
use crate::progress::Reporter;
use crate::report;
use crate::scheduler::{Scheduler, SchedulerStatus};
use crate::{Error, Result};
use pullwatch::locks::lock;
use pullwatch::serve::Limits;
use pullwatch::{CheckOutcome, CheckStatus};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

/// Runs `cli`'s command; the binary turns an error into a message and an exit code.
pub fn run(cli: Cli) -> Result<ExitCode> {
    let runtime = pullwatch::process::start(&cli.log_level, cli.log_format)?;
    match cli.command {
        Command::Check(args) => {
            let code = runtime.block_on(run_check(*args));
            // A run cut short by --timeout ends now, whatever its abandoned requests
            // still wait for (a name lookup runs on a blocking thread).
            runtime.shutdown_timeout(CHECK_EXIT_GRACE);
            code
        }
        Command::Serve(args) => runtime
            .block_on(run_serve(*args))
            .map(|()| ExitCode::SUCCESS),
    }
}

/// How long `check` waits at exit for work it abandoned.
const CHECK_EXIT_GRACE: Duration = Duration::from_millis(500);
/// The reason of a reference `check --timeout` cut off before its check ended.
const NOT_CHECKED: &str = "not checked within --timeout";
/// `check`'s exit status when not every reference was checked within --timeout.
const EXIT_NOT_CHECKED: u8 = 3;

/// Checks the manifests once: 0 when every image is available, 1 otherwise.
async fn run_check(args: CheckArgs) -> Result<ExitCode> {
    let options = flags::index_options(&args.checker, &args.filters)?;
    let metrics = Metrics::new(false)?;
    let checker = CentralChecker::new(&args.checker.checker_config(), metrics.checker.clone())?;
    let inventory = manifests::load(&args.manifests)?;
    let index = ImageIndex::build(&inventory, &options);
    index.log_new_warnings(None);
    if index.container_count() == 0 {
        warn!(path = %args.manifests.display(), "no container images to check (no workloads, or all filtered out)");
    }
    let pipeline = Pipeline::new(
        checker,
        metrics,
        args.checker.max_concurrent_checks as usize * 2,
    );
    let progress = Arc::new(CycleProgress::default());
    let reporter = if args.quiet {
        Reporter::quiet()
    } else {
        Reporter::start(
            index.container_count(),
            progress.clone(),
            args.progress_interval,
        )
    };
    let run = pipeline.run_cycle_with(&index, &progress);
    let finished = match args.timeout {
        Some(timeout) => tokio::time::timeout(timeout, run).await.ok(),
        None => Some(run.await),
    };
    reporter.finish().await;
    let mut results = pipeline.results();
    match &finished {
        Some(summary) => info!(
            distinct_checks = summary.distinct_checks,
            containers = summary.containers,
            unavailable = summary.unavailable,
            duration_ms = summary.duration.as_millis() as u64,
            "check finished"
        ),
        None => {
            // What the timeout cut off has no result: it is reported as not checked.
            let checked: HashSet<&ContainerRef> = results.iter().map(|(c, _)| c).collect();
            let unchecked: Vec<ContainerRef> = index
                .containers()
                .into_iter()
                .filter(|c| !checked.contains(c))
                .cloned()
                .collect();
            warn!(
                unchecked = unchecked.len(),
                containers = index.container_count(),
                "--timeout reached; the references not checked by then are reported as such"
            );
            results.extend(
                unchecked
                    .into_iter()
                    .map(|c| (c, CheckOutcome::new(CheckStatus::UnknownError, NOT_CHECKED))),
            );
            results.sort_by(|a, b| a.0.cmp(&b.0));
        }
    }
    let report = match args.output {
        OutputFormat::Table => report::table(&results),
        OutputFormat::Json => {
            report::json(&results).map_err(|e| Error::Report(e.to_string()))? + "\n"
        }
        OutputFormat::Junit => {
            report::junit(&results).map_err(|e| Error::Report(e.to_string()))? + "\n"
        }
    };
    pullwatch::terminal::write_stdout(&report).map_err(Error::Output)?;
    Ok(if finished.is_none() {
        ExitCode::from(EXIT_NOT_CHECKED)
    } else if results.iter().all(|(_, outcome)| outcome.is_available()) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

async fn run_serve(args: ServeArgs) -> Result<()> {
    let options = flags::index_options(&args.checker, &args.filters)?;
    let metrics = if args.agents.agent_listen.is_some() {
        Metrics::with_agents(args.legacy_metric_names)?
    } else {
        Metrics::new(args.legacy_metric_names)?
    };
    let inventory_metrics = metrics.inventory.clone();
    let mut checker_config = args.checker.checker_config();
    // In a cluster the nodes say which platforms workloads land on.
    checker_config.index_platforms |= args.manifests.is_none();
    let checker = CentralChecker::new(&checker_config, metrics.checker.clone())?;
    // With agents, the one watch of Nodes also keeps their group label for the hub.
    let shared = SharedInventory::with_node_group_label(
        args.agents
            .node_group_label
            .clone()
            .filter(|_| args.agents.agent_listen.is_some()),
    );

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut background = Vec::new();
    let (source, kube_client) =
        start_inventory(&args, &shared, inventory_metrics, &stop_rx, &mut background).await?;

    let listener = endpoints::bind(&args.bind_address).await?;
    // Each listener (HTTP, and agents with --agent-listen) applies the limits alone.
    let limits = args
        .limits
        .for_listener(1 + usize::from(args.agents.agent_listen.is_some()));
    let pipeline = Pipeline::new(
        checker,
        metrics,
        args.checker.max_concurrent_checks as usize * 2,
    )
    .with_inventory(shared.inventory.clone());
    let (pipeline, agent_server) = start_agents(
        &args,
        pipeline,
        &shared,
        kube_client,
        limits.clone(),
        &mut background,
    )
    .await?;
    let pipeline = Arc::new(pipeline);
    let state = Arc::new(EndpointState::new(pipeline.clone()));
    tokio::spawn(async move {
        pullwatch::process::shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    let local = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    info!(address = %local, interval = ?args.check_interval, %source, "serving /metrics, /healthz, /readyz");
    // The HTTP server outlives the rest: during shutdown /readyz answers 503.
    let (server_stop_tx, server_stop_rx) = watch::channel(false);
    let server = endpoints::spawn(listener, limits, state.clone(), server_stop_rx)
        .map_err(|e| Error::Start(pullwatch::Error::AsyncRuntime(e)))?;

    let (index_tx, index_rx) = watch::channel(None);
    background.push(tokio::spawn(index::build_indexes(
        shared.clone(),
        options,
        INDEX_DEBOUNCE,
        index_tx,
        stop_rx.clone(),
    )));
    let (status_tx, status_rx) = watch::channel(SchedulerStatus::default());
    let scheduler = tokio::spawn(
        Scheduler::new(pipeline.clone(), pipeline, args.check_interval).run(
            index_rx,
            status_tx,
            stop_rx.clone(),
        ),
    );
    report_readiness(shared, status_rx, state.clone(), stop_rx).await;

    // Not ready from the first moment of shutdown, so load balancers and scrapers of
    // readiness stop sending before the endpoints go.
    state.set_ready(false, "shutting down");
    info!("shutting down");
    shut_down(agent_server, background, scheduler).await;
    tokio::time::sleep(SHUTDOWN_DRAIN).await;
    let _ = server_stop_tx.send(true);
    server
        .wait()
        .await
        .map_err(|e| Error::ServerTask(e.to_string()))?;
    Ok(())
}

/// Starts the inventory source: manifest files (loaded now and reloaded every
/// interval), or watches of the cluster's API server. Returns what the source is, for
/// the log, and the API client in cluster mode (TokenReviews of agents use it too).
async fn start_inventory(
    args: &ServeArgs,
    shared: &SharedInventory,
    inventory_metrics: InventoryMetrics,
    stop: &watch::Receiver<bool>,
    background: &mut Vec<JoinHandle<()>>,
) -> Result<(String, Option<kube::Client>)> {
    match &args.manifests {
        Some(path) => {
            // Fail fast: a typo in the path must not look like an empty cluster.
            manifests::check_rereadable(path)?;
            let inventory = manifests::load(path)?;
            *lock(&shared.inventory) = inventory;
            shared.set_state(
                MANIFESTS,
                WatchState {
                    synced: true,
                    ..Default::default()
                },
            );
            shared.changed.notify_one();
            background.push(tokio::spawn(reload_manifests(
                path.clone(),
                args.check_interval,
                shared.clone(),
                stop.clone(),
            )));
            Ok((format!("manifests {}", path.display()), None))
        }
        None => {
            let client = cluster::client(args.kubeconfig.as_deref()).await?;
            background.extend(cluster::spawn_watches(
                client.clone(),
                shared.clone(),
                inventory_metrics,
            ));
            Ok(("cluster".to_string(), Some(client)))
        }
    }
}

/// With `--agent-listen`: the agent hub, its node groups (from the inventory's Nodes
/// in cluster mode) and its gRPC server, and `pipeline` checking through the agents
/// while any is connected.
async fn start_agents(
    args: &ServeArgs,
    pipeline: Pipeline,
    inventory: &SharedInventory,
    kube_client: Option<kube::Client>,
    limits: Limits,
    background: &mut Vec<JoinHandle<()>>,
) -> Result<(Pipeline, Option<AgentServer>)> {
    let Some(config) = args.agents.server_config()? else {
        return Ok((pipeline, None));
    };
    let reviewer = match args.agents.token_audience() {
        None => None,
        Some(audience) => {
            let client = match kube_client.clone() {
                Some(client) => client,
                None => cluster::client(None)
                    .await
                    .map_err(|e| AgentServerError::TokenReviewClient(e.to_string()))?,
            };
            let account = args
                .agents
                .service_account()?
                .ok_or(AgentServerError::NoServiceAccount)?;
            Some(Arc::new(TokenReviewer::new(client, audience, account)))
        }
    };
    let hub = AgentHub::with_metrics(args.agents.hub_config(), pipeline.metrics.agents.clone());
    if kube_client.is_some() && args.agents.node_group_label.is_some() {
        background.push(agents::groups::follow_node_groups(
            inventory.clone(),
            hub.clone(),
        ));
    }
    let server = agents::server::start_with_limits(hub.clone(), config, reviewer, limits).await?;
    Ok((pipeline.with_agents(hub), Some(server)))
}

/// Stops what runs behind the HTTP server: agent sessions get [`SHUTDOWN_GRACE`],
/// background tasks none; the scheduler, which drops its checks in flight when told to
/// stop, gets the grace to return.
async fn shut_down(
    agent_server: Option<AgentServer>,
    background: Vec<JoinHandle<()>>,
    scheduler: JoinHandle<()>,
) {
    if let Some(agent_server) = agent_server
        && tokio::time::timeout(SHUTDOWN_GRACE, agent_server.stop())
            .await
            .is_err()
    {
        warn!(grace = ?SHUTDOWN_GRACE, "agent sessions did not close in time; dropped");
    }
    for task in background {
        task.abort();
    }
    // The scheduler abandons its checks in flight on the stop signal: nothing is
    // recorded after this.
    let abandon = scheduler.abort_handle();
    if tokio::time::timeout(SHUTDOWN_GRACE, scheduler)
        .await
        .is_err()
    {
        abandon.abort();
        warn!(grace = ?SHUTDOWN_GRACE, "checks still in flight at shutdown; abandoned");
    }
}

/// How long shutdown waits for agent sessions and checks in flight.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// How long /readyz keeps answering 503 before the HTTP server stops.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(1);

/// The resource name the manifests source reports its state under.
const MANIFESTS: &str = "manifests";
/// A burst of watch events within this window is one index rebuild.
const INDEX_DEBOUNCE: Duration = Duration::from_millis(200);

/// Re-reads the manifests every interval; an unreadable file keeps the last good inventory.
async fn reload_manifests(
    path: PathBuf,
    interval: Duration,
    shared: SharedInventory,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
        let loaded = tokio::task::spawn_blocking({
            let path = path.clone();
            move || manifests::load(&path)
        })
        .await;
        match loaded {
            Ok(Ok(inventory)) => {
                *lock(&shared.inventory) = inventory;
                shared.changed.notify_one();
            }
            Ok(Err(error)) => {
                warn!(%error, "cannot re-read manifests; keeping the last good inventory")
            }
            Err(error) => {
                warn!(%error, "manifest reload task failed; keeping the last good inventory")
            }
        }
    }
}

/// Ready once the inventory is synced and every reference has been checked once;
/// `/readyz` says which of the two is missing, and what RBAC forbids.
async fn report_readiness(
    shared: SharedInventory,
    mut status: watch::Receiver<SchedulerStatus>,
    state: Arc<EndpointState>,
    mut stop: watch::Receiver<bool>,
) {
    let mut logged_first_pass = false;
    loop {
        let current = status.borrow_and_update().clone();
        let synced = shared.synced();
        let inventory = shared.describe();
        let ready = synced && current.passes > 0;
        let mut detail = if ready {
            format!(
                "{} container references, {} unavailable, {} distinct checks, {} passes",
                current.containers, current.unavailable, current.distinct_checks, current.passes
            )
        } else if synced {
            "first check pass has not finished".to_string()
        } else {
            "inventory not synced yet".to_string()
        };
        if !inventory.is_empty() {
            detail = format!("{detail}; {inventory}");
        }
        if ready && !logged_first_pass {
            logged_first_pass = true;
            info!(
                containers = current.containers,
                unavailable = current.unavailable,
                "first check pass finished; ready"
            );
        }
        state.set_ready(ready, detail);
        tokio::select! {
            changed = status.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
    }
}
