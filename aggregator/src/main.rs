//! `pullwatch-aggregator`: `check` once, or `serve` metrics continuously.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use pullwatch_aggregator::checker::Checker;
use pullwatch_aggregator::cli::{
    self, CheckArgs, Cli, Command, LogFormat, OutputFormat, ServeArgs,
};
use pullwatch_aggregator::index::{ImageIndex, IndexOptions};
use pullwatch_aggregator::inventory::manifests;
use pullwatch_aggregator::metrics::Metrics;
use pullwatch_aggregator::report;
use pullwatch_aggregator::scheduler::Pipeline;
use pullwatch_aggregator::server::{self, ServerState};
use tokio::sync::watch;
use tracing::{error, info, warn};

/// Exit status for usage and input errors, as for clap's own usage errors.
const USAGE_ERROR: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(error) = init_logging(&cli) {
        eprintln!("error: {error:#}");
        return ExitCode::from(USAGE_ERROR);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        match cli.command {
            Command::Check(args) => run_check(args).await,
            Command::Serve(args) => match run_serve(args).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(Failure::Usage(error)) => {
                    error!("{error:#}");
                    ExitCode::from(USAGE_ERROR)
                }
                Err(Failure::Runtime(error)) => {
                    error!("{error:#}");
                    ExitCode::FAILURE
                }
            },
        }
    })
}

fn init_logging(cli: &Cli) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log_level)
        .with_context(|| format!("--log-level {:?} is not a valid filter", cli.log_level))?;
    // Logs go to stderr so `check -o json` output on stdout stays machine-readable.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}

enum Failure {
    Usage(anyhow::Error),
    Runtime(anyhow::Error),
}

async fn run_check(args: CheckArgs) -> ExitCode {
    let prepared = (|| -> anyhow::Result<(IndexOptions, Checker, Metrics)> {
        let options = cli::index_options(&args.checker, &args.filters)?;
        let metrics = Metrics::new(false)?;
        let checker = Checker::new(&args.checker.checker_config(), metrics.checker.clone())?;
        Ok((options, checker, metrics))
    })();
    let (options, checker, metrics) = match prepared {
        Ok(prepared) => prepared,
        Err(error) => {
            eprintln!("error: {error:#}");
            return ExitCode::from(USAGE_ERROR);
        }
    };
    let inventory = match manifests::load(&args.manifests) {
        Ok(inventory) => inventory,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(USAGE_ERROR);
        }
    };
    let index = ImageIndex::build(&inventory, &options);
    if index.container_count() == 0 {
        warn!(path = %args.manifests.display(), "no container images to check (no workloads, or all filtered out)");
    }
    let pipeline = Pipeline::new(
        checker,
        metrics,
        args.checker.max_concurrent_checks as usize * 2,
    );
    let summary = pipeline.run_cycle(&index).await;
    info!(
        distinct_checks = summary.distinct_checks,
        containers = summary.containers,
        unavailable = summary.unavailable,
        duration_ms = summary.duration.as_millis() as u64,
        "check finished"
    );

    let results = pipeline.results();
    match args.output {
        OutputFormat::Table => print!("{}", report::table(&results)),
        OutputFormat::Json => match report::json(&results) {
            Ok(json) => println!("{json}"),
            Err(error) => {
                eprintln!("error: cannot encode results: {error}");
                return ExitCode::FAILURE;
            }
        },
    }
    if results.iter().all(|(_, outcome)| outcome.is_available()) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

async fn run_serve(args: ServeArgs) -> Result<(), Failure> {
    let Some(manifests_path) = args.manifests.clone() else {
        return Err(Failure::Usage(anyhow::anyhow!(
            "--manifests is required: watching a live cluster is not supported by this build yet"
        )));
    };
    let options =
        cli::index_options(&args.checker, &args.filters).map_err(|e| Failure::Usage(e.into()))?;
    let metrics = Metrics::new(args.legacy_metric_names).map_err(|e| Failure::Runtime(e.into()))?;
    let checker = Checker::new(&args.checker.checker_config(), metrics.checker.clone())
        .map_err(|e| Failure::Usage(e.into()))?;
    // Fail fast on unreadable manifests: a typo in the path should not look like an empty cluster.
    let mut inventory = manifests::load(&manifests_path).map_err(|e| Failure::Usage(e.into()))?;

    let listener = server::bind(&args.bind_address)
        .await
        .map_err(|e| Failure::Usage(e.into()))?;
    let pipeline = Arc::new(Pipeline::new(
        checker,
        metrics,
        args.checker.max_concurrent_checks as usize * 2,
    ));
    let state = Arc::new(ServerState::new(pipeline.clone()));
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    let local = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    info!(address = %local, interval = ?args.check_interval, manifests = %manifests_path.display(), "serving /metrics, /healthz, /readyz");
    let server = tokio::spawn(server::serve(listener, state.clone(), stop_rx.clone()));

    let mut stop = stop_rx;
    let mut first = true;
    loop {
        if !first {
            match manifests::load(&manifests_path) {
                Ok(fresh) => inventory = fresh,
                Err(error) => {
                    warn!(%error, "cannot re-read manifests; keeping the last good inventory")
                }
            }
        }
        first = false;
        let started = Instant::now();
        let index = ImageIndex::build(&inventory, &options);
        let summary = tokio::select! {
            summary = pipeline.run_cycle(&index) => summary,
            _ = stop.wait_for(|stop| *stop) => break,
        };
        info!(
            distinct_checks = summary.distinct_checks,
            containers = summary.containers,
            unavailable = summary.unavailable,
            duration_ms = summary.duration.as_millis() as u64,
            "check pass finished"
        );
        state.set_ready(
            true,
            format!(
                "{} container references, {} unavailable",
                summary.containers, summary.unavailable
            ),
        );
        let next = started + args.check_interval;
        tokio::select! {
            _ = tokio::time::sleep_until(next.into()) => {}
            _ = stop.wait_for(|stop| *stop) => break,
        }
    }
    info!("shutting down");
    server
        .await
        .map_err(|e| Failure::Runtime(anyhow::anyhow!("HTTP server task failed: {e}")))?;
    Ok(())
}

/// SIGTERM (Kubernetes stopping the pod) or Ctrl-C.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
