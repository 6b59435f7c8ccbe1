//! Command-line flags (each also read from a `PULLWATCH_*` environment variable) and
//! the wiring they describe: the checker (cri + keyring + resolver over the route),
//! the session settings, the `--pull-secret-file` credentials.

use pullwatch::registry::NoObserver;
use pullwatch::registry::pull_path::{CheckDepth, WalkSettings};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};
use pullwatch::{DockerConfig, ImageReference, Keyring, SourcedCredential};

use crate::check::resolve::{Resolver, ResolverConfig};
use crate::check::{CheckOptions, Checker};
use crate::cri::{CallObserver, CriClient, CriTimeouts};
use crate::keyring::{KeyringConfig, NodeKeyring};
use crate::metrics::AgentMetrics;
use crate::route::RuntimeDialect;
use crate::route::containerd::RuntimeAuth;
use crate::route::crio::CrioRouteConfig;
use pullwatch::CheckMode;

#[derive(Debug, Parser)]
#[command(
    name = "pullwatch-agent",
    version,
    about = "Checks, from this node, that images can still be pulled: through the node's container runtime (CRI), with the node's credentials and registry mirrors"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// Log filter, in tracing's EnvFilter syntax (e.g. `info`, `pullwatch_agent=debug`).
    /// Default: `info` for `run`, `warn` for `check`.
    #[arg(long, global = true, env = "PULLWATCH_LOG")]
    pub log_level: Option<String>,

    /// Log line format (logs go to stderr).
    #[arg(long, global = true, env = "PULLWATCH_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

pub use pullwatch::logging::LogFormat;

// Parsed once at start and matched at once: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check one image from this node and print the result.
    Check(CheckArgs),
    /// Connect to the aggregator, run the checks it sends, serve per-node /metrics.
    Run(RunArgs),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub node: NodeArgs,
    /// The aggregator's agent endpoint, e.g. https://pullwatch-aggregator:9443.
    #[arg(long, env = "PULLWATCH_AGGREGATOR")]
    pub aggregator: String,
    /// CA certificate (PEM) that signed the aggregator's agent certificate.
    #[arg(long, env = "PULLWATCH_AGGREGATOR_CA")]
    pub aggregator_ca: Option<PathBuf>,
    /// File with the token presented to the aggregator (a projected service account
    /// token, or the shared token); re-read on every connect.
    #[arg(long, env = "PULLWATCH_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// TESTS ONLY: present the token to an http:// aggregator. Anyone on the network
    /// path can then read it. Without this flag, a token goes only over https://.
    #[arg(long, env = "PULLWATCH_INSECURE_PLAINTEXT_TOKEN_FOR_TESTING_ONLY", action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_value = "false", default_missing_value = "true")]
    pub insecure_plaintext_token_for_testing_only: bool,
    /// This node's name (the downward API's spec.nodeName).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: String,
    /// Where to serve /metrics and /healthz.
    #[arg(long, env = "PULLWATCH_METRICS_ADDRESS", default_value = ":9102")]
    pub metrics_address: String,
    /// Limits of the metrics port.
    #[command(flatten)]
    pub limits: pullwatch::serve::LimitArgs,
    /// An image no check has asked about for this long loses its per-image series on
    /// /metrics (its workload went away).
    #[arg(long, env = "PULLWATCH_METRICS_SERIES_TTL", default_value = "1h", value_parser = parse_duration)]
    pub metrics_series_ttl: Duration,
    /// Checks run at the same time on this node (the aggregator may ask for fewer).
    #[arg(long, env = "PULLWATCH_MAX_CONCURRENT_CHECKS", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrent_checks: u32,
    /// Labels of this node sent to the aggregator for placement (KEY=VALUE,
    /// comma-separated or repeated), e.g. the label named by the aggregator's
    /// --node-group-label when it cannot read Nodes from the API server.
    #[arg(long = "node-labels", env = "PULLWATCH_NODE_LABELS", value_delimiter = ',', value_parser = parse_label)]
    pub node_labels: Vec<(String, String)>,
    /// After the session with the aggregator ends, the agent waits a random time below
    /// this before reconnecting, and the window doubles after every failed attempt
    /// (full jitter): a fleet that lost an aggregator restart comes back spread over
    /// this window instead of all at once.
    #[arg(long, env = "PULLWATCH_RECONNECT_BACKOFF_BASE", default_value = "5s", value_parser = parse_positive_duration)]
    pub reconnect_backoff_base: Duration,
    /// The largest reconnect window (see --reconnect-backoff-base).
    #[arg(long, env = "PULLWATCH_RECONNECT_BACKOFF_MAX", default_value = "1m", value_parser = parse_positive_duration)]
    pub reconnect_backoff_max: Duration,
}

/// `KEY=VALUE`, the key non-empty.
fn parse_label(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => {
            Ok((key.trim().to_string(), value.trim().to_string()))
        }
        _ => Err(format!("{text:?} is not KEY=VALUE")),
    }
}

impl RunArgs {
    pub fn session_config(&self) -> crate::session::SessionConfig {
        crate::session::SessionConfig {
            aggregator_ca: self.aggregator_ca.clone(),
            token_file: self.token_file.clone(),
            insecure_plaintext_token: self.insecure_plaintext_token_for_testing_only,
            max_concurrent_checks: self.max_concurrent_checks as usize,
            default_mode: self.node.mode,
            node_labels: self.node_labels.iter().cloned().collect(),
            backoff_min: self.reconnect_backoff_base,
            backoff_max: self.reconnect_backoff_max.max(self.reconnect_backoff_base),
            ..crate::session::SessionConfig::new(self.aggregator.clone(), self.node_name.clone())
        }
    }
}

/// How `check` prints its result.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The image reference, as in a pod spec.
    pub image: String,
    #[command(flatten)]
    pub node: NodeArgs,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value = "text")]
    pub output: OutputFormat,
    /// A docker config file (`.dockerconfigjson` or `.dockercfg` form) standing in for
    /// the workload's pull secrets; tried first. Repeatable.
    #[arg(
        long = "pull-secret-file",
        env = "PULLWATCH_PULL_SECRET_FILES",
        value_delimiter = ','
    )]
    pub pull_secret_files: Vec<PathBuf>,
}

/// The node-side settings shared by every command.
#[derive(Clone, Debug, Args)]
pub struct NodeArgs {
    /// The runtime's CRI socket. containerd: unix:///run/containerd/containerd.sock;
    /// CRI-O: unix:///var/run/crio/crio.sock; k3s: unix:///run/k3s/containerd/containerd.sock.
    #[arg(long, env = "PULLWATCH_CRI_ENDPOINT", default_value = crate::cri::DEFAULT_ENDPOINT)]
    pub cri_endpoint: String,
    /// auto: pull where the node holds the image, resolve where not; pull: CRI
    /// PullImage; resolve: manifest only, along the runtime's route (containerd's
    /// hosts.toml, or CRI-O's registries.conf: see --runtime-dialect).
    #[arg(long, env = "PULLWATCH_MODE", value_enum, default_value = "auto")]
    pub mode: CheckMode,
    /// The kubelet's --root-dir (first place the kubelet looks for config.json).
    #[arg(
        long,
        env = "PULLWATCH_KUBELET_ROOT_DIR",
        default_value = "/var/lib/kubelet"
    )]
    pub kubelet_root_dir: PathBuf,
    /// containerd's registry config_path (hosts.toml directories).
    #[arg(
        long,
        env = "PULLWATCH_CONTAINERD_HOSTS_DIR",
        default_value = "/etc/containerd/certs.d"
    )]
    pub containerd_hosts_dir: PathBuf,
    /// containerd's config.toml, for its registry.configs credentials in resolve mode
    /// (a missing file means none).
    #[arg(
        long,
        env = "PULLWATCH_CONTAINERD_CONFIG",
        default_value = "/etc/containerd/config.toml"
    )]
    pub containerd_config: PathBuf,
    /// Whose registry route resolve mode takes: `auto` (from CRI `Version`: CRI-O's on
    /// a node running `cri-o`, else containerd's), `containerd` (hosts.toml) or `cri-o`
    /// (registries.conf and the containers auth file). With an explicit dialect,
    /// `--mode resolve` needs no reachable runtime.
    #[arg(
        long,
        env = "PULLWATCH_RUNTIME_DIALECT",
        value_enum,
        default_value = "auto"
    )]
    pub runtime_dialect: RuntimeDialect,
    /// CRI-O: containers-registries.conf(5) (a missing file is an empty configuration).
    #[arg(
        long,
        env = "PULLWATCH_REGISTRIES_CONF",
        default_value = "/etc/containers/registries.conf"
    )]
    pub registries_conf: PathBuf,
    /// CRI-O: the drop-in directory of registries.conf (`*.conf`, in name order).
    #[arg(
        long,
        env = "PULLWATCH_REGISTRIES_CONF_DIR",
        default_value = "/etc/containers/registries.conf.d"
    )]
    pub registries_conf_dir: PathBuf,
    /// CRI-O: the auth file CRI-O reads (its `global_auth_file`). Unset: the containers
    /// default lookup of this process (`/run/containers/<uid>/auth.json`,
    /// `~/.config/containers/auth.json`, `~/.docker/config.json`, `~/.dockercfg`).
    #[arg(long, env = "PULLWATCH_CONTAINERS_AUTH_FILE")]
    pub containers_auth_file: Option<PathBuf>,
    /// CRI-O: directories of per-registry certificates (`<dir>/<host[:port]>/*.crt`,
    /// `*.cert` + `*.key`), in lookup order: the first with the host's directory wins.
    /// Comma-separated or repeated.
    #[arg(
        long,
        env = "PULLWATCH_CONTAINERS_CERTS_DIR",
        value_delimiter = ',',
        default_values = ["/etc/containers/certs.d", "/etc/docker/certs.d"]
    )]
    pub containers_certs_dir: Vec<PathBuf>,
    /// The kubelet's --image-credential-provider-config.
    #[arg(long, env = "PULLWATCH_IMAGE_CREDENTIAL_PROVIDER_CONFIG")]
    pub image_credential_provider_config: Option<PathBuf>,
    /// The kubelet's --image-credential-provider-bin-dir.
    #[arg(long, env = "PULLWATCH_IMAGE_CREDENTIAL_PROVIDER_BIN_DIR")]
    pub image_credential_provider_bin_dir: Option<PathBuf>,
    /// Allow pull checks of images the node does not hold (downloads every layer).
    /// `--pull-absent-images` or `--pull-absent-images=true|false`.
    #[arg(long, env = "PULLWATCH_PULL_ABSENT_IMAGES", action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_value = "false", default_missing_value = "true")]
    pub pull_absent_images: bool,
    /// Keep images that were pulled only for a check (default: remove them again).
    #[arg(long, env = "PULLWATCH_KEEP_PULLED_IMAGES", action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_value = "false", default_missing_value = "true")]
    pub keep_pulled_images: bool,
    /// Deadline of a CRI PullImage call.
    #[arg(long, env = "PULLWATCH_PULL_TIMEOUT", default_value = "5m", value_parser = parse_duration)]
    pub pull_timeout: Duration,
    /// Deadline of the other CRI calls, and of one resolve in resolve mode (every
    /// request to every host of the route).
    #[arg(long, env = "PULLWATCH_REQUEST_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub request_timeout: Duration,
    /// How deep a check goes: `manifest` (the tag's manifest only), `platform` (down to
    /// this node's child manifest), `blobs` (config and every layer, as the node pulls).
    #[arg(long, env = "PULLWATCH_CHECK_DEPTH", value_enum, default_value_t = CheckDepth::Blobs)]
    pub check_depth: CheckDepth,
    /// Blobs of a tag whose digest did not change are verified again after this long
    /// (at once when the digest changes); the runtime confirms a held image at most
    /// this often too.
    #[arg(long, env = "PULLWATCH_BLOB_CHECK_INTERVAL", default_value = "12h", value_parser = parse_duration)]
    pub blob_check_interval: Duration,
}

/// Go duration syntax (`30s`, `1m30s`, `1.5h`, `300ms`), as every duration flag.
fn parse_duration(text: &str) -> Result<Duration, String> {
    pullwatch::duration::flag_value_parser(text)
}

/// [`parse_duration`], above zero.
fn parse_positive_duration(text: &str) -> Result<Duration, String> {
    match parse_duration(text)? {
        Duration::ZERO => Err(format!("{text:?} must be above zero")),
        duration => Ok(duration),
    }
}

impl NodeArgs {
    pub(crate) fn keyring_config(&self) -> KeyringConfig {
        KeyringConfig {
            kubelet_root_dir: self.kubelet_root_dir.clone(),
            provider_config: self.image_credential_provider_config.clone(),
            provider_bin_dir: self.image_credential_provider_bin_dir.clone(),
            ..Default::default()
        }
    }

    /// CRI-O's route files.
    pub(crate) fn crio_route(&self) -> CrioRouteConfig {
        CrioRouteConfig {
            registries_conf: self.registries_conf.clone(),
            registries_conf_dir: self.registries_conf_dir.clone(),
            auth_file: self.containers_auth_file.clone(),
            certs_dirs: self.containers_certs_dir.clone(),
        }
    }

    /// The checker these flags describe; `metrics` (with `run`) hears its CRI calls and
    /// the quotas registries announce.
    pub fn checker(&self, metrics: Option<Arc<AgentMetrics>>) -> crate::Result<Checker> {
        let observer = metrics.clone().map(|m| m as Arc<dyn CallObserver>);
        let cri = CriClient::new(
            &self.cri_endpoint,
            CriTimeouts {
                call: self.request_timeout,
                pull: self.pull_timeout,
            },
            observer,
        )?;
        let keyring = NodeKeyring::new(&self.keyring_config())?;
        let resolver_config = ResolverConfig {
            hosts_dir: self.containerd_hosts_dir.clone(),
            runtime_auth: RuntimeAuth::load(&self.containerd_config)?,
            request_timeout: self.request_timeout,
        };
        let walk = WalkSettings {
            depth: self.check_depth,
            blob_check_interval: self.blob_check_interval,
            ..WalkSettings::default()
        };
        let resolver = match metrics {
            Some(metrics) => Resolver::observed(resolver_config, walk, metrics),
            None => Resolver::observed(resolver_config, walk, Arc::new(NoObserver)),
        }
        .with_runtime_dialect(self.runtime_dialect, self.crio_route());
        Ok(Checker::new(
            cri,
            Arc::new(keyring),
            Arc::new(resolver),
            CheckOptions {
                pull_absent_images: self.pull_absent_images,
                keep_pulled_images: self.keep_pulled_images,
            },
        )
        .with_runtime_confirmation(self.blob_check_interval))
    }
}

/// The credentials of `--pull-secret-file`s that match `image`, in file order.
pub fn pull_secrets_for(files: &[PathBuf], image: &str) -> crate::Result<Vec<SourcedCredential>> {
    let Ok(reference) = ImageReference::parse(image) else {
        // The check itself reports the bad reference.
        return Ok(Vec::new());
    };
    let mut found = Vec::new();
    for path in files {
        let bytes = std::fs::read(path).map_err(|e| crate::Error::PullSecret {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let config =
            DockerConfig::from_either_form(&bytes).map_err(|e| crate::Error::PullSecret {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        let mut keyring = Keyring::new();
        keyring.add(&format!("secret-file:{}", path.display()), &config);
        found.extend(keyring.lookup(&reference));
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_secret_files_of_both_forms() {
        let dir = tempfile::tempdir().unwrap();
        let json = dir.path().join("config.json");
        let legacy = dir.path().join("dockercfg");
        let broken = dir.path().join("broken");
        std::fs::write(&json, r#"{"auths":{"reg.io":{"auth":"YTpi"}}}"#).unwrap();
        std::fs::write(
            &legacy,
            r#"{"https://reg.io":{"username":"c","password":"d"}}"#,
        )
        .unwrap();
        std::fs::write(&broken, r#"{"auths":{"reg.io":{"password":sekrit}}}"#).unwrap();
        let found = pull_secrets_for(&[json, legacy], "reg.io/app:v1").unwrap();
        let users: Vec<&str> = found
            .iter()
            .map(|c| c.credential.username.as_str())
            .collect();
        assert_eq!(users, ["a", "c"]);
        let err = pull_secrets_for(&[broken], "reg.io/app")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 1"), "{err}");
        assert!(!err.contains("sekrit"), "{err}");
    }

    #[test]
    fn flags_and_defaults() {
        let cli = Cli::try_parse_from([
            "pullwatch-agent",
            "check",
            "nginx",
            "--cri-endpoint",
            "unix:///run/k3s/containerd/containerd.sock",
            "--mode",
            "resolve",
            "-o",
            "json",
        ])
        .unwrap();
        let Command::Check(args) = cli.command else {
            panic!("not check")
        };
        assert_eq!(args.image, "nginx");
        assert_eq!(args.output, OutputFormat::Json);
        assert_eq!(args.node.mode, CheckMode::Resolve);
        assert_eq!(
            args.node.cri_endpoint,
            "unix:///run/k3s/containerd/containerd.sock"
        );
        assert_eq!(
            args.node.kubelet_root_dir,
            PathBuf::from("/var/lib/kubelet")
        );
        assert_eq!(
            args.node.containerd_hosts_dir,
            PathBuf::from("/etc/containerd/certs.d")
        );
        assert_eq!(args.node.pull_timeout, Duration::from_secs(300));
        assert_eq!(args.node.runtime_dialect, RuntimeDialect::Auto);
        // containers/image's own defaults, spelled out in CrioRouteConfig::default.
        assert_eq!(args.node.crio_route(), CrioRouteConfig::default());
        let cli = Cli::try_parse_from([
            "pullwatch-agent",
            "check",
            "quay.io/team/app:v1",
            "--runtime-dialect=cri-o",
            "--registries-conf=/host/registries.conf",
            "--registries-conf-dir=/host/registries.conf.d",
            "--containers-auth-file=/host/auth.json",
            "--containers-certs-dir=/host/certs.d,/host/docker/certs.d",
        ])
        .unwrap();
        let Command::Check(crio) = cli.command else {
            panic!("not check")
        };
        assert_eq!(crio.node.runtime_dialect, RuntimeDialect::CriO);
        let route = crio.node.crio_route();
        assert_eq!(
            route.registries_conf,
            PathBuf::from("/host/registries.conf")
        );
        assert_eq!(
            route.registries_conf_dir,
            PathBuf::from("/host/registries.conf.d")
        );
        assert_eq!(route.auth_file, Some(PathBuf::from("/host/auth.json")));
        assert_eq!(
            route.certs_dirs,
            [
                PathBuf::from("/host/certs.d"),
                PathBuf::from("/host/docker/certs.d")
            ]
        );
        assert!(
            Cli::try_parse_from(["pullwatch-agent", "check", "x", "--runtime-dialect=crio"])
                .is_err()
        );
        assert!(!args.node.pull_absent_images);
        // Every duration flag takes Go syntax.
        let cli = Cli::try_parse_from([
            "pullwatch-agent",
            "check",
            "x",
            "--pull-timeout",
            "1.5h",
            "--request-timeout",
            "1m30s",
        ])
        .unwrap();
        let Command::Check(args) = cli.command else {
            panic!("not check")
        };
        assert_eq!(args.node.pull_timeout, Duration::from_secs(5400));
        assert_eq!(args.node.request_timeout, Duration::from_secs(90));
        assert!(
            Cli::try_parse_from(["pullwatch-agent", "check", "x", "--request-timeout", "0"])
                .is_err()
        );
        let error =
            Cli::try_parse_from(["pullwatch-agent", "check", "x", "--mode", "fetch"]).unwrap_err();
        assert_eq!(error.exit_code(), 2);
        let error = Cli::try_parse_from(["pullwatch-agent", "check"]).unwrap_err();
        assert_eq!(error.exit_code(), 2);

        let cli = Cli::try_parse_from([
            "pullwatch-agent",
            "run",
            "--aggregator",
            "https://agg:9443",
            "--node-name",
            "node-1",
            "--token-file",
            "/var/run/secrets/pullwatch/token",
            "--max-concurrent-checks",
            "2",
            "--node-labels",
            "topology.kubernetes.io/zone=z1,pool=gpu",
        ])
        .unwrap();
        let Command::Run(run) = cli.command else {
            panic!("not run")
        };
        assert_eq!(run.metrics_address, ":9102");
        let session = run.session_config();
        assert_eq!(session.node_name, "node-1");
        assert_eq!(session.max_concurrent_checks, 2);
        assert_eq!(
            session
                .node_labels
                .get("topology.kubernetes.io/zone")
                .map(String::as_str),
            Some("z1")
        );
        assert_eq!(session.node_labels.len(), 2);
        assert!(
            Cli::try_parse_from([
                "pullwatch-agent",
                "run",
                "--aggregator=https://a:9443",
                "--node-name=n",
                "--node-labels=novalue",
            ])
            .is_err()
        );
        // The Helm chart's spelling of booleans and log flags.
        let cli = Cli::try_parse_from([
            "pullwatch-agent",
            "run",
            "--aggregator=https://a:9443",
            "--node-name=n",
            "--pull-absent-images=true",
            "--keep-pulled-images=false",
            "--log-level=info",
            "--log-format=json",
        ])
        .unwrap();
        assert_eq!(cli.log_format, LogFormat::Json);
        let Command::Run(run) = cli.command else {
            panic!("not run")
        };
        assert!(run.node.pull_absent_images);
        assert!(!run.node.keep_pulled_images);
        // A bare boolean flag does not swallow the image that follows it.
        let cli =
            Cli::try_parse_from(["pullwatch-agent", "check", "--pull-absent-images", "nginx"])
                .unwrap();
        let Command::Check(check) = cli.command else {
            panic!("not check")
        };
        assert!(check.node.pull_absent_images);
        assert_eq!(check.image, "nginx");
        let zero = Cli::try_parse_from([
            "pullwatch-agent",
            "run",
            "--aggregator",
            "https://a",
            "--node-name",
            "n",
            "--max-concurrent-checks",
            "0",
        ]);
        assert!(zero.is_err());
    }

    /// agent/README.md: "Boolean flags take `--flag` or `--flag=true|false`", every one
    /// of them (the chart and operators write `=false` to turn one off explicitly).
    #[test]
    fn every_boolean_flag_takes_true_or_false() {
        use clap::CommandFactory;
        let cli = Cli::command();
        for sub in cli.get_subcommands() {
            for arg in sub.get_arguments() {
                assert!(
                    !matches!(arg.get_action(), ArgAction::SetTrue | ArgAction::SetFalse),
                    "{} --{}: a bare switch refuses =true|false",
                    sub.get_name(),
                    arg.get_id()
                );
            }
        }
        let run = |flag: &str| {
            let cli = Cli::try_parse_from([
                "pullwatch-agent",
                "run",
                "--aggregator=http://a:9443",
                "--node-name=n",
                flag,
            ])
            .unwrap_or_else(|e| panic!("{flag}: {e}"));
            let Command::Run(run) = cli.command else {
                panic!("not run")
            };
            run.insecure_plaintext_token_for_testing_only
        };
        assert!(run("--insecure-plaintext-token-for-testing-only"));
        assert!(run("--insecure-plaintext-token-for-testing-only=true"));
        assert!(!run("--insecure-plaintext-token-for-testing-only=false"));
    }

    #[test]
    fn pull_secret_files_match_like_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret.json");
        std::fs::write(
            &file,
            r#"{"auths":{"reg.io":{"username":"u","password":"p"}}}"#,
        )
        .unwrap();
        let found = pull_secrets_for(std::slice::from_ref(&file), "reg.io/app:v1").unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(&*found[0].source, format!("secret-file:{}", file.display()));
        assert!(
            pull_secrets_for(std::slice::from_ref(&file), "other.io/app")
                .unwrap()
                .is_empty()
        );
        assert!(pull_secrets_for(&[dir.path().join("missing")], "reg.io/app").is_err());
    }
}
