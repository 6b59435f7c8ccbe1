//! `pullwatch-agent`: see the crate docs of `pullwatch_agent`.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use std::sync::Arc;

use pullwatch_agent::cli::{CheckArgs, Cli, Command, Output, RunArgs, pull_secrets_for};
use pullwatch_agent::metrics::AgentMetrics;

/// Exit codes: 0 available, 1 checked and not available, 2 usage or setup error (a
/// configuration that can never work), 3 the check could not be made (the container
/// runtime did not answer): nothing is known about the image.
const EXIT_USAGE: u8 = 2;
const EXIT_NOT_CHECKED: u8 = 3;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(error) = init_logging(&cli) {
        eprintln!("error: {error:#}");
        return ExitCode::from(EXIT_USAGE);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: starting the async runtime: {error}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Check(args) => check(args).await,
            Command::Run(args) => run(args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}

fn init_logging(cli: &Cli) -> Result<(), pullwatch::support::LoggingError> {
    let default = match cli.command {
        Command::Check(_) => "warn",
        Command::Run(_) => "info",
    };
    pullwatch::support::init_logging(cli.log_level.as_deref().unwrap_or(default), cli.log_format)
}

async fn check(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let checker = args.node.checker(None).context("setting up the checker")?;
    let secrets = pull_secrets_for(&args.pull_secret_files, &args.image)?;
    let report = checker.check(&args.image, args.node.mode, &secrets).await;
    match args.output {
        Output::Json => println!("{}", serde_json::to_string(&report)?),
        Output::Text => {
            let via = if report.credential_source.is_empty() {
                String::new()
            } else {
                format!(" credential_source={}", report.credential_source)
            };
            if report.reason.is_empty() {
                println!(
                    "{} {} mode={}{via}",
                    report.image, report.status, report.mode
                );
            } else {
                println!(
                    "{} {} mode={}{via}: {}",
                    report.image, report.status, report.mode, report.reason
                );
            }
        }
    }
    Ok(if report.runtime_failure {
        ExitCode::from(EXIT_NOT_CHECKED)
    } else if report.is_available() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let session_config = args.session_config();
    if let Err(error) = session_config.validate() {
        tracing::error!(%error, "invalid configuration");
        return Ok(ExitCode::from(EXIT_USAGE));
    }
    let metrics = Arc::new(
        AgentMetrics::new()
            .context("setting up metrics")?
            .with_series_ttl(args.metrics_series_ttl),
    );
    let checker = args
        .node
        .checker(Some(metrics.clone()))
        .context("setting up the checker")?;
    metrics.set_providers(&checker.keyring().plugin_names());
    let listener = pullwatch_agent::metrics::bind(&args.metrics_address).await?;
    tracing::info!(address = %args.metrics_address, "serving /metrics");
    let server = tokio::spawn(pullwatch_agent::metrics::serve(listener, metrics.clone()));
    let session = pullwatch_agent::session::run(Arc::new(checker), metrics, session_config);
    tokio::select! {
        () = session => {}
        _ = shutdown_signal() => tracing::info!("shutting down"),
    }
    server.abort();
    Ok(ExitCode::SUCCESS)
}

/// SIGTERM (the kubelet stopping the pod) or Ctrl-C.
async fn shutdown_signal() {
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
