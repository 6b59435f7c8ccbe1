//! Command-line flags. Names carried over from k8s-image-availability-exporter keep
//! their names and meaning; every flag can also come from a `PULLWATCH_*` variable.
//! Boolean flags accept Go's forms too (`--flag`, `--flag=true`, `--flag=false`, `=1`, `=0`).

use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};

use crate::checker::CheckerConfig;
use crate::checker::limits::RegistryLimits;
use crate::index::{Filters, IndexOptions, LabelSelector, parse_image_regexes, parse_kinds};
use crate::mirrors::Mirrors;
use pullwatch::registry::pull_path::{CheckDepth, Schema1Pulls, WalkSettings};

#[derive(Debug, Parser)]
#[command(
    name = "pullwatch-aggregator",
    version,
    about = "Tells you, before a pod restart does, that an image your workloads need can no longer be pulled."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// Log filter, in tracing's EnvFilter syntax (e.g. `info`, `pullwatch_aggregator=debug`).
    #[arg(long, global = true, env = "PULLWATCH_LOG", default_value = "info")]
    pub(crate) log_level: String,

    /// Log line format.
    #[arg(long, global = true, env = "PULLWATCH_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub(crate) log_format: LogFormat,
}

pub(crate) use pullwatch::logging::LogFormat;

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check every image of the given manifests once and print the result.
    /// Exit status: 0 all available, 1 any not available, 2 usage or input error,
    /// 3 not every reference checked within --timeout.
    Check(Box<CheckArgs>),
    /// Re-check every --check-interval and serve /metrics, /healthz and /readyz.
    Serve(Box<ServeArgs>),
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Manifest file, directory of .yaml/.yml/.json files (multi-document and `kind: List` allowed), or `-` for standard input.
    #[arg(
        short = 'f',
        long = "manifests",
        env = "PULLWATCH_MANIFESTS",
        value_name = "PATH"
    )]
    pub(crate) manifests: PathBuf,

    /// Output format.
    #[arg(short = 'o', long, env = "PULLWATCH_OUTPUT", value_enum, default_value_t = OutputFormat::Table)]
    pub(crate) output: OutputFormat,

    /// Bound on the whole run: references not checked by then are reported with the
    /// reason "not checked within --timeout", and the exit status is 3.
    #[arg(long, env = "PULLWATCH_CHECK_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    pub(crate) timeout: Option<Duration>,

    /// No progress on stderr (by default a bar on a terminal, else a line every 10 s).
    #[arg(short = 'q', long, env = "PULLWATCH_QUIET", action = ArgAction::Set, num_args = 0..=1, value_parser = go_bool(), default_value = "false", default_missing_value = "true")]
    pub(crate) quiet: bool,

    /// How often progress lines are printed when stderr is not a terminal (tests).
    #[arg(long, env = "PULLWATCH_PROGRESS_INTERVAL", hide = true, default_value = "10s", value_parser = parse_duration)]
    pub(crate) progress_interval: Duration,

    #[command(flatten)]
    pub(crate) checker: CheckerArgs,

    #[command(flatten)]
    pub(crate) filters: FilterArgs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum OutputFormat {
    Table,
    Json,
    /// JUnit XML: one test case per container reference, for CI systems.
    Junit,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Manifest file or directory (re-read every interval) instead of a live cluster.
    #[arg(
        short = 'f',
        long = "manifests",
        env = "PULLWATCH_MANIFESTS",
        value_name = "PATH"
    )]
    pub(crate) manifests: Option<PathBuf>,

    /// Kubeconfig of the cluster to watch; default: in-cluster config, else KUBECONFIG, else ~/.kube/config.
    #[arg(
        long,
        env = "PULLWATCH_KUBECONFIG",
        value_name = "PATH",
        conflicts_with = "manifests"
    )]
    pub(crate) kubeconfig: Option<PathBuf>,

    /// Address for /metrics, /healthz and /readyz: [HOST]:PORT, an empty host meaning all interfaces.
    #[arg(long, env = "PULLWATCH_BIND_ADDRESS", default_value = ":8080")]
    pub(crate) bind_address: String,

    /// How often every image is re-checked (Go-style durations: 30s, 5m, 1h30m).
    #[arg(long, env = "PULLWATCH_CHECK_INTERVAL", default_value = "5m", value_parser = parse_duration)]
    pub(crate) check_interval: Duration,

    /// Also export the older per-kind metric names
    /// (k8s_image_availability_exporter_<kind>_<status>{namespace,<kind>,container,image}).
    #[arg(long, env = "PULLWATCH_LEGACY_METRIC_NAMES", action = ArgAction::Set, num_args = 0..=1, value_parser = go_bool(), default_value = "false", default_missing_value = "true")]
    pub(crate) legacy_metric_names: bool,

    #[command(flatten)]
    pub(crate) checker: CheckerArgs,

    #[command(flatten)]
    pub(crate) filters: FilterArgs,

    #[command(flatten)]
    pub(crate) agents: crate::agents::flags::AgentServerArgs,

    #[command(flatten)]
    pub(crate) limits: pullwatch::serve::LimitArgs,
}

/// How registries are reached.
#[derive(Debug, Args)]
pub(crate) struct CheckerArgs {
    /// Do not verify registries' TLS certificates.
    #[arg(long, env = "PULLWATCH_SKIP_REGISTRY_CERT_VERIFICATION", action = ArgAction::Set, num_args = 0..=1, value_parser = go_bool(), default_value = "false", default_missing_value = "true")]
    pub(crate) skip_registry_cert_verification: bool,

    /// Fall back to plain HTTP where a registry's HTTPS port refuses the connection or
    /// answers in plain HTTP (or its name does not resolve); never after a certificate
    /// error or a timeout.
    #[arg(long, env = "PULLWATCH_ALLOW_PLAIN_HTTP", action = ArgAction::Set, num_args = 0..=1, value_parser = go_bool(), default_value = "false", default_missing_value = "true")]
    pub(crate) allow_plain_http: bool,

    /// Registry for images that name none.
    #[arg(long, env = "PULLWATCH_DEFAULT_REGISTRY", default_value = "docker.io")]
    pub(crate) default_registry: String,

    /// PEM file, or directory of .crt/.pem files, with extra CA certificates (repeatable).
    #[arg(
        long = "capath",
        env = "PULLWATCH_CAPATH",
        value_delimiter = ',',
        value_name = "PATH"
    )]
    pub(crate) ca_paths: Vec<PathBuf>,

    /// Check images at a mirror: ORIGINAL=MIRROR, registry[/path] prefixes (repeatable; longest prefix wins).
    #[arg(
        long = "image-mirror",
        env = "PULLWATCH_IMAGE_MIRROR",
        value_delimiter = ',',
        value_name = "ORIG=MIRROR"
    )]
    pub(crate) image_mirrors: Vec<String>,

    /// A platform the workloads can land on (`OS/ARCH[/VARIANT]`, repeatable; env:
    /// comma-separated). A tag resolving to an index without an entry one of them runs
    /// is `absent` for the workload. In cluster mode the nodes' platforms are used
    /// when this is unset; elsewhere unset means no platform check.
    #[arg(
        long = "platform",
        env = "PULLWATCH_PLATFORMS",
        value_delimiter = ',',
        value_name = "OS/ARCH[/VARIANT]"
    )]
    pub(crate) platforms: Vec<pullwatch::Platform>,

    /// Deadline of one check: every request it makes (tokens, manifests, fallbacks,
    /// every credential), connect to last byte.
    #[arg(long, env = "PULLWATCH_REGISTRY_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub(crate) registry_timeout: Duration,

    /// Checks in flight at once, across all registries.
    #[arg(long, env = "PULLWATCH_MAX_CONCURRENT_CHECKS", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) max_concurrent_checks: u32,

    /// Checks in flight at once against one registry.
    #[arg(long, env = "PULLWATCH_REGISTRY_MAX_CONCURRENCY", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) registry_max_concurrency: u32,

    /// Requests per second to one registry.
    #[arg(long, env = "PULLWATCH_REGISTRY_QPS", default_value_t = NonZeroU32::new(20).unwrap_or(NonZeroU32::MIN))]
    pub(crate) registry_qps: NonZeroU32,

    /// How deep a check goes: `manifest` (the tag's manifest only), `platform` (down to
    /// the platform's child manifest), `blobs` (config and every layer, as a node pulls).
    #[arg(long, env = "PULLWATCH_CHECK_DEPTH", value_enum, default_value_t = CheckDepth::Blobs)]
    pub(crate) check_depth: CheckDepth,

    /// Blobs of a tag whose digest did not change are verified again after this long
    /// (at once when the digest changes).
    #[arg(long, env = "PULLWATCH_BLOB_CHECK_INTERVAL", default_value = "12h", value_parser = parse_duration)]
    pub(crate) blob_check_interval: Duration,

    /// What the nodes' runtime does with a Docker schema 1 manifest: `refused`
    /// (containerd 2.0 and later), `converted` (containerd 1.x: layers the history marks
    /// empty are not downloaded), `copied` (CRI-O: every layer blob). Unset: what the
    /// cluster's nodes run (their `containerRuntimeVersion`; each, when they differ),
    /// else `refused`. Agents use their own node's runtime.
    #[arg(long, env = "PULLWATCH_SCHEMA1_IMAGES", value_enum)]
    pub(crate) schema1_images: Option<Schema1Pulls>,
}

/// Which container references are checked.
#[derive(Debug, Args)]
pub(crate) struct FilterArgs {
    /// Regexes separated by `~`: images matching any are not checked.
    #[arg(long, env = "PULLWATCH_IGNORED_IMAGES", default_value = "")]
    pub(crate) ignored_images: String,

    /// Regexes separated by `~`: when set, only images matching one are checked.
    #[arg(long, env = "PULLWATCH_ALLOWED_IMAGES", default_value = "")]
    pub(crate) allowed_images: String,

    /// Label selector (`key`, `!key`, `key=value`, `key!=value`, comma-separated): only namespaces matching it are checked.
    #[arg(long, env = "PULLWATCH_NAMESPACE_LABEL")]
    pub(crate) namespace_label: Option<String>,

    /// Comma-separated kinds (deployment, statefulset, daemonset, cronjob, job, pod) or `*`,
    /// checked even when disabled (replicas 0, suspended, scheduled nowhere).
    #[arg(
        long,
        env = "PULLWATCH_FORCE_CHECK_DISABLED_CONTROLLERS",
        default_value = ""
    )]
    pub(crate) force_check_disabled_controllers: String,
}

/// A flag value that makes no sense.
#[derive(Debug, thiserror::Error)]
pub enum FlagError {
    #[error("--{flag}: invalid regex: {source}")]
    Regex {
        flag: &'static str,
        source: regex::Error,
    },
    #[error("--{flag}: {message}")]
    Invalid { flag: &'static str, message: String },
    #[error(transparent)]
    Mirror(#[from] crate::mirrors::MirrorError),
}

impl CheckerArgs {
    pub(crate) fn checker_config(&self) -> CheckerConfig {
        CheckerConfig {
            allow_plain_http: self.allow_plain_http,
            skip_tls_verify: self.skip_registry_cert_verification,
            ca_paths: self.ca_paths.clone(),
            request_timeout: self.registry_timeout,
            max_concurrent_checks: self.max_concurrent_checks as usize,
            registry_limits: RegistryLimits {
                max_concurrency: self.registry_max_concurrency as usize,
                requests_per_second: self.registry_qps,
            },
            index_platforms: !self.platforms.is_empty(),
            walk: WalkSettings {
                depth: self.check_depth,
                blob_check_interval: self.blob_check_interval,
                schema1: self.schema1_images.unwrap_or_default(),
                ..WalkSettings::default()
            },
            platforms: self.platforms.clone(),
        }
    }
}

/// Index options from the flags, validated.
pub(crate) fn index_options(
    checker: &CheckerArgs,
    filters: &FilterArgs,
) -> Result<IndexOptions, FlagError> {
    let default_registry = checker
        .default_registry
        .trim()
        .trim_end_matches('/')
        .to_string();
    pullwatch::ImageReference::parse_with_default_registry("probe", &default_registry)
        .ok()
        .filter(|r| r.registry().contains(['.', ':']) || r.registry() == "localhost")
        .ok_or_else(|| FlagError::Invalid {
            flag: "default-registry",
            message: format!(
                "{default_registry:?} is not a registry host (e.g. docker.io, registry.local:5000)"
            ),
        })?;
    Ok(IndexOptions {
        default_registry,
        platforms: checker.platforms.clone(),
        schema1: checker.schema1_images,
        mirrors: Mirrors::parse(&checker.image_mirrors)?,
        filters: Filters {
            allowed_images: parse_image_regexes(&filters.allowed_images).map_err(|source| {
                FlagError::Regex {
                    flag: "allowed-images",
                    source,
                }
            })?,
            ignored_images: parse_image_regexes(&filters.ignored_images).map_err(|source| {
                FlagError::Regex {
                    flag: "ignored-images",
                    source,
                }
            })?,
            namespace_selector: filters
                .namespace_label
                .as_deref()
                .filter(|s| !s.trim().is_empty())
                .map(LabelSelector::parse)
                .transpose()
                .map_err(|message| FlagError::Invalid {
                    flag: "namespace-label",
                    message,
                })?,
            force_check_disabled: parse_kinds(&filters.force_check_disabled_controllers).map_err(
                |message| FlagError::Invalid {
                    flag: "force-check-disabled-controllers",
                    message,
                },
            )?,
        },
    })
}

/// Boolean flag values as Go's flag package (k8s-image-availability-exporter's) takes
/// them, `1`, `t`, `True`, `0`, `F`... as well as `true` and `false`.
pub(crate) fn go_bool() -> clap::builder::BoolishValueParser {
    clap::builder::BoolishValueParser::new()
}

/// Go durations (`30s`, `1m30s`, `1.5h`, `250ms`), plus the spellings accepted
/// before (`1d`, `5min`); zero and negative durations are refused.
pub(crate) fn parse_duration(value: &str) -> Result<Duration, String> {
    pullwatch::duration::flag_value_parser(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn flags_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn go_style_durations_and_booleans() {
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1.5h").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(
            parse_duration("2d").unwrap(),
            Duration::from_secs(2 * 86400)
        );
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("-5m").is_err());
        assert!(parse_duration("soon").is_err());
        for (args, expected) in [
            (vec!["--skip-registry-cert-verification"], true),
            (vec!["--skip-registry-cert-verification=true"], true),
            (vec!["--skip-registry-cert-verification=false"], false),
            (vec![], false),
            // Go's flag package (k8s-image-availability-exporter's) also takes these.
            (vec!["--skip-registry-cert-verification=1"], true),
            (vec!["--skip-registry-cert-verification=True"], true),
            (vec!["--skip-registry-cert-verification=0"], false),
            (vec!["--skip-registry-cert-verification=F"], false),
        ] {
            let mut argv = vec!["pullwatch-aggregator", "check", "-f", "x"];
            argv.extend(args);
            let cli = Cli::try_parse_from(&argv).unwrap();
            let Command::Check(check) = cli.command else {
                panic!("check")
            };
            assert_eq!(
                check.checker.skip_registry_cert_verification, expected,
                "{argv:?}"
            );
        }
    }

    /// Every boolean flag takes `--flag`, `--flag=true` and `--flag=false`, as README
    /// says, the tests-only one of the agent server too.
    #[test]
    fn every_boolean_flag_takes_true_and_false() {
        let serve = |extra: &[&str]| {
            let mut argv = vec!["p", "serve", "-f", "x"];
            argv.extend(extra);
            match Cli::try_parse_from(argv).map(|c| c.command) {
                Ok(Command::Serve(serve)) => serve,
                Ok(_) => panic!("serve"),
                Err(e) => panic!("{extra:?}: {e}"),
            }
        };
        for flag in [
            "--legacy-metric-names",
            "--skip-registry-cert-verification",
            "--allow-plain-http",
            "--agent-insecure-plaintext-tokens-for-testing-only",
        ] {
            for (form, expected) in [
                (flag.to_string(), true),
                (format!("{flag}=true"), true),
                (format!("{flag}=false"), false),
            ] {
                let args = serve(&[&form]);
                let value = match flag {
                    "--legacy-metric-names" => args.legacy_metric_names,
                    "--skip-registry-cert-verification" => {
                        args.checker.skip_registry_cert_verification
                    }
                    "--allow-plain-http" => args.checker.allow_plain_http,
                    _ => args.agents.agent_insecure_plaintext_tokens_for_testing_only,
                };
                assert_eq!(value, expected, "{form}");
            }
        }
    }

    #[test]
    fn flag_validation_names_the_flag() {
        let cli =
            Cli::try_parse_from(["p", "check", "-f", "x", "--ignored-images", "a~(b"]).unwrap();
        let Command::Check(check) = cli.command else {
            panic!("check")
        };
        let err = index_options(&check.checker, &check.filters).unwrap_err();
        assert!(err.to_string().starts_with("--ignored-images"), "{err}");

        let cli =
            Cli::try_parse_from(["p", "check", "-f", "x", "--default-registry", "not a host"])
                .unwrap();
        let Command::Check(check) = cli.command else {
            panic!("check")
        };
        let err = index_options(&check.checker, &check.filters).unwrap_err();
        assert!(err.to_string().starts_with("--default-registry"), "{err}");

        let cli = Cli::try_parse_from([
            "p",
            "check",
            "-f",
            "x",
            "--image-mirror",
            "a.io=b.io",
            "--image-mirror",
            "c.io=d.io/x",
        ])
        .unwrap();
        let Command::Check(check) = cli.command else {
            panic!("check")
        };
        assert!(index_options(&check.checker, &check.filters).is_ok());
        assert!(
            Cli::try_parse_from(["p", "check", "-f", "x", "--max-concurrent-checks", "0"]).is_err()
        );
    }

    #[test]
    fn check_timeout_quiet_and_progress_interval() {
        let parse = |extra: &[&str]| {
            let mut argv = vec!["p", "check", "-f", "x"];
            argv.extend(extra);
            match Cli::try_parse_from(argv).map(|c| c.command) {
                Ok(Command::Check(check)) => Ok(check),
                Ok(_) => panic!("check"),
                Err(e) => Err(e),
            }
        };
        let defaults = parse(&[]).unwrap();
        assert_eq!(defaults.timeout, None, "unbounded unless asked");
        assert!(!defaults.quiet);
        assert_eq!(defaults.progress_interval, Duration::from_secs(10));
        let set = parse(&["--timeout", "1m30s", "-q"]).unwrap();
        assert_eq!(set.timeout, Some(Duration::from_secs(90)));
        assert!(set.quiet);
        assert!(parse(&["--timeout", "0s"]).is_err());
        // The interval is for tests: not in --help.
        let help = Cli::command()
            .find_subcommand_mut("check")
            .unwrap()
            .render_long_help()
            .to_string();
        assert!(
            help.contains("--timeout") && help.contains("--quiet"),
            "{help}"
        );
        assert!(!help.contains("--progress-interval"), "{help}");
    }
}
