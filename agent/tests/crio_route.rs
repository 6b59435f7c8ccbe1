//! CRI-O's route, differential: each scenario (a registries.conf, drop-ins, an auth
//! file, certificates, credentials from the kubelet) is run through `skopeo inspect
//! --raw` (Debian's skopeo, built on containers/image, CRI-O's registry library) and
//! through `pullwatch-agent check --mode resolve --runtime-dialect cri-o`, against
//! the same real registries (open, htpasswd, TLS; one port with nothing listening).
//! Truth is skopeo's answer plus the registries' logs: which registries got a
//! manifest request, in which order. The agent must reach the same answer asking the
//! same registries in the same order; each scenario also states both, so neither
//! side can drift unnoticed.
//!
//! Where containers/image changed a rule after the 5.23.1 that Debian's skopeo is
//! built with, the agent follows current containers/image (what current CRI-O
//! ships) and the scenario names the difference (`differs_from_skopeo_5_23`).

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use base64::Engine;
use pullwatch_testbench::started;
use pullwatch_testbench::{
    ImageFormat, Registry, RegistryOptions, TestCa, free_port_on, push_to, require_tool,
    sha256_digest,
};

const BINARY: &str = env!("CARGO_BIN_EXE_pullwatch-agent");
const USER: &str = "crio-user";
const PASSWORD: &str = "crio-Pa55word";
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// What both must answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// Available; the agent's digest is the sha256 of skopeo's raw manifest.
    Available,
    /// skopeo fails with this text in its error; the agent says this status.
    Fails(&'static str, &'static str),
    /// skopeo 5.23.1 fails with this text where current containers/image pulls: the
    /// agent follows current (available).
    DiffersFromSkopeo523(&'static str),
}

struct Scenario {
    name: &'static str,
    /// registries.conf; `{A}` `{B}` `{C}` `{S}` `{T}` `{D}` stand for the registries.
    conf: &'static str,
    /// One drop-in (`50-override.conf`).
    drop_in: Option<&'static str>,
    /// Registries (by letter) the auth file holds the htpasswd credential for.
    auth_file_for: &'static [&'static str],
    /// The kubelet sends the htpasswd credential (a pull secret; skopeo `--creds`).
    kubelet_credential: bool,
    /// The TLS registry's CA is installed (agent: certs dir; skopeo: `--cert-dir`).
    ca_installed: bool,
    /// The image; `{DIGEST}`: the digest of team/app:v1.
    image: &'static str,
    /// Registries (by letter) that get a manifest request, in order.
    asked: &'static [&'static str],
    expect: Expect,
}

/// The set-up a scenario has unless it says otherwise: no drop-in, no auth file, no
/// kubelet credential, the TLS registry's CA not installed. Every scenario states its
/// own name, registries.conf, image, registries asked and answer.
const PLAIN: Scenario = Scenario {
    name: "",
    conf: "",
    drop_in: None,
    auth_file_for: &[],
    kubelet_credential: false,
    ca_installed: false,
    image: "",
    asked: &[],
    expect: Expect::Available,
};

const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "no entry: HTTPS only, a plain-HTTP registry is unreachable",
        conf: "",
        image: "{A}/team/app:v1",
        asked: &[],
        expect: Expect::Fails("HTTP response to HTTPS client", "registry_unavailable"),
        ..PLAIN
    },
    Scenario {
        name: "insecure registry",
        conf: "[[registry]]\nlocation = \"{A}\"\ninsecure = true\n",
        image: "{A}/team/app:v1",
        asked: &["A"],
        expect: Expect::Available,
        ..PLAIN
    },
    Scenario {
        name: "a mirror that has it answers first",
        conf: "[[registry]]\nlocation = \"{C}\"\ninsecure = true\n[[registry.mirror]]\nlocation = \"{B}\"\ninsecure = true\n",
        image: "{C}/team/app:v1",
        asked: &["B"],
        expect: Expect::Available,
        ..PLAIN
    },
    Scenario {
        name: "mirrors down or without the tag, then the primary",
        conf: "[[registry]]\nlocation = \"{A}\"\ninsecure = true\n[[registry.mirror]]\nlocation = \"{D}\"\ninsecure = true\n[[registry.mirror]]\nlocation = \"{C}\"\ninsecure = true\n",
        image: "{A}/team/app:v1",
        asked: &["C", "A"],
        expect: Expect::Available,
        ..PLAIN
    },
    Scenario {
        // containerd's rule (first failure) would say authentication_failure here.
        name: "all fail: the primary's answer stands (404), not the mirror's 401",
        conf: "[[registry]]\nlocation = \"{C}\"\ninsecure = true\n[[registry.mirror]]\nlocation = \"{S}\"\ninsecure = true\n",
        image: "{C}/team/app:v1",
        asked: &["S", "C"],
        expect: Expect::Fails("manifest unknown", "absent"),
        ..PLAIN
    },
    Scenario {
        name: "all fail: the primary is down",
        conf: "[[registry]]\nlocation = \"{D}\"\ninsecure = true\n[[registry.mirror]]\nlocation = \"{C}\"\ninsecure = true\n",
        image: "{D}/team/app:v1",
        asked: &["C"],
        expect: Expect::Fails("connection refused", "registry_unavailable"),
        ..PLAIN
    },
    Scenario {
        name: "blocked registry: no request at all",
        conf: "[[registry]]\nlocation = \"{A}\"\ninsecure = true\nblocked = true\n",
        image: "{A}/team/app:v1",
        asked: &[],
        expect: Expect::Fails("is blocked in", "authorization_failure"),
        ..PLAIN
    },
    Scenario {
        name: "blocked registry: its mirror still serves",
        conf: "[[registry]]\nlocation = \"{A}\"\ninsecure = true\nblocked = true\n[[registry.mirror]]\nlocation = \"{B}\"\ninsecure = true\n",
        image: "{A}/team/app:v1",
        asked: &["B"],
        expect: Expect::Available,
        ..PLAIN
    },
    Scenario {
        name: "mirror-by-digest-only: a tag skips the mirror",
        conf: "[[registry]]\nlocation = \"{C}\"\ninsecure = true\nmirror-by-digest-only = true\n[[registry.mirror]]\nlocation = \"{B}\"\ninsecure = true\n",
        image: "{C}/team/app:v1",
        asked: &["C"],
        expect: Expect::Fails("manifest unknown", "absent"),
        ..PLAIN
    },
    Scenario {
        name: "mirror-by-digest-only: a digest uses the mirror",
        conf: "[[registry]]\nlocation = \"{C}\"\ninsecure = true\nmirror-by-digest-only = true\n[[registry.mirror]]\nlocation = \"{B}\"\ninsecure = true\n",
        image: "{C}/team/app@{DIGEST}",
        asked: &["B"],
        expect: Expect::Available,
        ..PLAIN
    },
    Scenario {
        name: "pull-from-mirror = tag-only: a digest skips the mirror",
        conf: "[[registry]]\nlocation = \"{C}\"\ninsecure = true\n[[registry.mirror]]\nlocation = \"{B}\"\ninsecure = true\npull-from-mirror = \"tag-only\"\n",
        image: "{C}/team/app@{DIGEST}",
        asked: &["C"],
        expect: Expect::Fails("manifest unknown", "absent"),
        ..PLAIN
    },
    Scenario {
        name: "a drop-in entry for the same prefix replaces the whole entry",
        conf: "[[registry]]\nlocation = \"{C}\"\ninsecure = true\n[[registry.mirror]]\nlocation = \"{S}\"\ninsecure = true\n",
        drop_in: Some(
            "[[registry]]\nlocation = \"{C}\"\ninsecure = true\n[[registry.mirror]]\nlocation = \"{B}\"\ninsecure = true\n",
        ),
        image: "{C}/team/app:v1",
        asked: &["B"],
        expect: Expect::Available,
        ..PLAIN
    },
    Scenario {
        name: "credentials in the auth file for the mirror only",
        conf: "[[registry]]\nlocation = \"{C}\"\ninsecure = true\n[[registry.mirror]]\nlocation = \"{S}\"\ninsecure = true\n",
        auth_file_for: &["S"],
        image: "{C}/team/app:v1",
        asked: &["S"],
        expect: Expect::Available,
        ..PLAIN
    },
    Scenario {
        name: "the kubelet's credential does not go to a mirror on another domain",
        conf: "[[registry]]\nlocation = \"{C}\"\ninsecure = true\n[[registry.mirror]]\nlocation = \"{S}\"\ninsecure = true\n",
        kubelet_credential: true,
        image: "{C}/team/app:v1",
        asked: &["S", "C"],
        expect: Expect::Fails("manifest unknown", "absent"),
        ..PLAIN
    },
    Scenario {
        name: "the kubelet's credential goes to the image's own registry",
        conf: "[[registry]]\nlocation = \"{S}\"\ninsecure = true\n",
        kubelet_credential: true,
        image: "{S}/team/app:v1",
        asked: &["S"],
        expect: Expect::Available,
        ..PLAIN
    },
    Scenario {
        name: "no credential anywhere: 401",
        conf: "[[registry]]\nlocation = \"{S}\"\ninsecure = true\n",
        image: "{S}/team/app:v1",
        asked: &["S"],
        expect: Expect::Fails("authentication required", "authentication_failure"),
        ..PLAIN
    },
    Scenario {
        name: "location rewrites the repository",
        conf: "[[registry]]\nprefix = \"{C}/team\"\nlocation = \"{B}/ns/team\"\ninsecure = true\n",
        image: "{C}/team/app:v1",
        asked: &["B"],
        expect: Expect::Available,
        ..PLAIN
    },
    Scenario {
        name: "TLS mirror with its CA in the certs dir",
        conf: "[[registry]]\nlocation = \"{C}\"\ninsecure = true\n[[registry.mirror]]\nlocation = \"{T}\"\n",
        ca_installed: true,
        image: "{C}/team/app:v1",
        asked: &["T"],
        expect: Expect::Available,
        ..PLAIN
    },
    Scenario {
        name: "TLS mirror without its CA: the primary's answer",
        conf: "[[registry]]\nlocation = \"{C}\"\ninsecure = true\n[[registry.mirror]]\nlocation = \"{T}\"\n",
        image: "{C}/team/app:v1",
        asked: &["C"],
        expect: Expect::Fails("manifest unknown", "absent"),
        ..PLAIN
    },
    Scenario {
        name: "insecure TLS mirror: not verified",
        conf: "[[registry]]\nlocation = \"{C}\"\ninsecure = true\n[[registry.mirror]]\nlocation = \"{T}\"\ninsecure = true\n",
        image: "{C}/team/app:v1",
        asked: &["T"],
        expect: Expect::Available,
        ..PLAIN
    },
    Scenario {
        // containers/image 5.23.1 normalized mirror locations on a copy (a trailing
        // slash stayed and broke the rewrite); since 5.24 they are normalized.
        name: "differs_from_skopeo_5_23: a mirror location with a trailing slash",
        conf: "[[registry]]\nlocation = \"{C}\"\ninsecure = true\n[[registry.mirror]]\nlocation = \"{B}/ns/\"\ninsecure = true\n",
        image: "{C}/team/app:v1",
        asked: &["B"],
        expect: Expect::DiffersFromSkopeo523("invalid reference format"),
        ..PLAIN
    },
];

struct Bench {
    /// Letter -> registry (D: a port with nothing listening).
    registries: Vec<(&'static str, Registry)>,
    down: String,
    tls_ca: TestCa,
    digest: String,
    /// Of B's ns/team/app:v1 (location rewrites land there).
    namespaced_digest: String,
}

impl Bench {
    async fn start() -> Bench {
        let tls_ca = TestCa::new().unwrap();
        let open = || Registry::start(RegistryOptions::default());
        let a = open().await.unwrap();
        let b = open().await.unwrap();
        let c = open().await.unwrap();
        let s = started::private_registry(USER, PASSWORD).await;
        let t = started::tls_registry(&tls_ca).await;
        let pushed = push_to(&a, "team/app", "v1", ImageFormat::Oci).await;
        for registry in [&b, &s, &t] {
            let again = push_to(registry, "team/app", "v1", ImageFormat::Oci).await;
            assert_eq!(again.digest, pushed.digest, "the same image everywhere");
        }
        let namespaced = push_to(&b, "ns/team/app", "v1", ImageFormat::Oci).await;
        let down = format!(
            "127.0.0.1:{}",
            free_port_on(std::net::Ipv4Addr::LOCALHOST.into()).unwrap()
        );
        Bench {
            registries: vec![("A", a), ("B", b), ("C", c), ("S", s), ("T", t)],
            down,
            tls_ca,
            digest: pushed.digest,
            namespaced_digest: namespaced.digest,
        }
    }

    fn host(&self, letter: &str) -> String {
        if letter == "D" {
            return self.down.clone();
        }
        self.registries
            .iter()
            .find(|(l, _)| *l == letter)
            .map(|(_, r)| r.host())
            .unwrap()
    }

    fn fill(&self, text: &str) -> String {
        let mut text = text.replace("{DIGEST}", &self.digest);
        for letter in ["A", "B", "C", "S", "T", "D"] {
            text = text.replace(&format!("{{{letter}}}"), &self.host(letter));
        }
        text
    }

    fn log_lengths(&self) -> Vec<usize> {
        self.registries.iter().map(|(_, r)| r.log().len()).collect()
    }

    /// The registries that got a manifest request since `before`, in time order,
    /// repeats in a row folded.
    fn asked_since(&self, before: &[usize]) -> Vec<String> {
        let mut events: Vec<((u64, u64), String)> = Vec::new();
        for ((letter, registry), start) in self.registries.iter().zip(before) {
            let log = registry.log();
            for line in log.get(*start..).unwrap_or_default().lines() {
                if !line.contains("/manifests/") || !line.contains("http.request.uri=") {
                    continue;
                }
                if let Some(at) = timestamp(line) {
                    events.push((at, letter.to_string()));
                }
            }
        }
        events.sort();
        let mut asked: Vec<String> = Vec::new();
        for (_, letter) in events {
            if asked.last() != Some(&letter) {
                asked.push(letter);
            }
        }
        asked
    }
}

/// `time="2026-12-07T08:57:35.99279024Z"` as (seconds of the day, nanoseconds): the
/// fraction is trimmed of trailing zeros, so it is compared as a number.
fn timestamp(line: &str) -> Option<(u64, u64)> {
    let rest = line.split("time=\"").nth(1)?;
    let stamp = rest.split('"').next()?;
    let (_, clock) = stamp.split_once('T')?;
    let clock = clock.trim_end_matches('Z');
    let (hms, fraction) = clock.split_once('.').unwrap_or((clock, "0"));
    let mut parts = hms.split(':').map(|p| p.parse::<u64>().ok());
    let seconds = parts.next()?? * 3600 + parts.next()?? * 60 + parts.next()??;
    let nanos: u64 = format!("{fraction:0<9}").get(..9)?.parse().ok()?;
    Some((seconds, nanos))
}

async fn run(mut command: tokio::process::Command) -> Output {
    command.kill_on_drop(true);
    tokio::time::timeout(RUN_TIMEOUT, command.output())
        .await
        .expect("did not finish in time")
        .unwrap()
}

fn basic(user: &str, password: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
}

/// Writes the scenario's files under `dir`; returns (registries.conf, drop-in dir,
/// auth file, pull secret file, certs dir (per host), skopeo's cert dir).
struct Files {
    conf: std::path::PathBuf,
    drop_ins: std::path::PathBuf,
    auth: std::path::PathBuf,
    pull_secret: std::path::PathBuf,
    certs: std::path::PathBuf,
    skopeo_cert_dir: std::path::PathBuf,
}

fn write_files(bench: &Bench, scenario: &Scenario, dir: &Path) -> Files {
    let conf = dir.join("registries.conf");
    std::fs::write(&conf, bench.fill(scenario.conf)).unwrap();
    // skopeo reads the per-user drop-in directory of its HOME; the agent is told.
    let drop_ins = dir.join("home/.config/containers/registries.conf.d");
    std::fs::create_dir_all(&drop_ins).unwrap();
    if let Some(drop_in) = scenario.drop_in {
        std::fs::write(drop_ins.join("50-override.conf"), bench.fill(drop_in)).unwrap();
    }
    let auths: serde_json::Map<String, serde_json::Value> = scenario
        .auth_file_for
        .iter()
        .map(|letter| {
            (
                bench.host(letter),
                serde_json::json!({ "auth": basic(USER, PASSWORD) }),
            )
        })
        .collect();
    let auth = dir.join("auth.json");
    std::fs::write(&auth, serde_json::json!({ "auths": auths }).to_string()).unwrap();
    // The pull secret stands for the kubelet's AuthConfig: keyed for the image's
    // registry (its first component), as a pod's secret would be.
    let image = bench.fill(scenario.image);
    let image_registry = image.split('/').next().unwrap().to_string();
    let pull_secret = dir.join("pull-secret.json");
    std::fs::write(
        &pull_secret,
        serde_json::json!({ "auths": { image_registry: { "auth": basic(USER, PASSWORD) } } })
            .to_string(),
    )
    .unwrap();
    let certs = dir.join("certs.d");
    let skopeo_cert_dir = dir.join("skopeo-certs");
    std::fs::create_dir_all(&certs).unwrap();
    std::fs::create_dir_all(&skopeo_cert_dir).unwrap();
    if scenario.ca_installed {
        let host_dir = certs.join(bench.host("T"));
        std::fs::create_dir_all(&host_dir).unwrap();
        std::fs::write(host_dir.join("ca.crt"), bench.tls_ca.ca_pem()).unwrap();
        std::fs::write(skopeo_cert_dir.join("ca.crt"), bench.tls_ca.ca_pem()).unwrap();
    }
    Files {
        conf,
        drop_ins,
        auth,
        pull_secret,
        certs,
        skopeo_cert_dir,
    }
}

async fn skopeo(bench: &Bench, scenario: &Scenario, files: &Files, home: &Path) -> Output {
    let mut command = tokio::process::Command::new(require_tool("skopeo").unwrap());
    command
        .env_clear()
        .env("HOME", home)
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .arg("--registries-conf")
        .arg(&files.conf)
        .args(["inspect", "--raw", "--retry-times", "0"])
        .arg("--authfile")
        .arg(&files.auth);
    if scenario.ca_installed {
        command.arg("--cert-dir").arg(&files.skopeo_cert_dir);
    }
    if scenario.kubelet_credential {
        command.arg("--creds").arg(format!("{USER}:{PASSWORD}"));
    }
    command.arg(format!("docker://{}", bench.fill(scenario.image)));
    run(command).await
}

async fn agent(bench: &Bench, scenario: &Scenario, files: &Files, home: &Path) -> Output {
    let mut command = tokio::process::Command::new(BINARY);
    command
        .env_clear()
        .env("HOME", home)
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .arg("check")
        .arg(bench.fill(scenario.image))
        .args([
            "--mode",
            "resolve",
            "--runtime-dialect",
            "cri-o",
            "-o",
            "json",
        ])
        // No runtime at all: an explicit dialect needs none in resolve mode.
        .arg("--cri-endpoint")
        .arg(format!("unix://{}", home.join("no-crio.sock").display()))
        .arg("--kubelet-root-dir")
        .arg(home.join("kubelet"))
        .arg("--registries-conf")
        .arg(&files.conf)
        .arg("--registries-conf-dir")
        .arg(&files.drop_ins)
        .arg("--containers-auth-file")
        .arg(&files.auth)
        .arg("--containers-certs-dir")
        .arg(&files.certs)
        .args(["--request-timeout", "20s"]);
    if scenario.kubelet_credential {
        command.arg("--pull-secret-file").arg(&files.pull_secret);
    }
    run(command).await
}

fn text(output: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn the_agent_takes_the_route_skopeo_takes() {
    pullwatch_testbench::capture_process_logs();
    tokio::time::timeout(Duration::from_secs(600), async {
        let bench = Bench::start().await;
        let mut failures = Vec::new();
        for scenario in SCENARIOS {
            let dir = tempfile::tempdir().unwrap();
            let files = write_files(&bench, scenario, dir.path());
            let home = dir.path().join("home");

            let before = bench.log_lengths();
            let truth = skopeo(&bench, scenario, &files, &home).await;
            let skopeo_asked = bench.asked_since(&before);

            let before = bench.log_lengths();
            let checked = agent(&bench, scenario, &files, &home).await;
            let agent_asked = bench.asked_since(&before);

            let mut problems = Vec::new();
            let report: serde_json::Value =
                serde_json::from_slice(&checked.stdout).unwrap_or(serde_json::Value::Null);
            let status = report["status"].as_str().unwrap_or("<no report>");
            let skopeo_error = String::from_utf8_lossy(&truth.stderr).to_string();
            match scenario.expect {
                Expect::Available => {
                    if !truth.status.success() {
                        problems.push(format!("skopeo failed: {skopeo_error}"));
                    } else {
                        let digest = sha256_digest(&truth.stdout);
                        if status != "available" || report["digest"] != digest.as_str() {
                            problems.push(format!(
                                "agent says {status} {} where skopeo read {digest}",
                                report["digest"]
                            ));
                        }
                    }
                    if checked.status.code() != Some(0) {
                        problems.push("agent exit code is not 0".into());
                    }
                }
                Expect::Fails(skopeo_says, agent_status) => {
                    if truth.status.success() || !skopeo_error.contains(skopeo_says) {
                        problems.push(format!(
                            "skopeo should fail with {skopeo_says:?}: {}",
                            text(&truth)
                        ));
                    }
                    if status != agent_status {
                        problems.push(format!("agent says {status}, expected {agent_status}"));
                    }
                    if checked.status.code() != Some(1) {
                        problems.push("agent exit code is not 1".into());
                    }
                }
                Expect::DiffersFromSkopeo523(skopeo_says) => {
                    if truth.status.success() || !skopeo_error.contains(skopeo_says) {
                        problems.push(format!(
                            "skopeo 5.23 should fail with {skopeo_says:?}: {}",
                            text(&truth)
                        ));
                    }
                    if status != "available" || report["digest"] != bench.namespaced_digest.as_str()
                    {
                        problems.push(format!("agent says {status}, current CRI-O pulls it"));
                    }
                }
            }
            let expected: Vec<String> = scenario.asked.iter().map(|s| s.to_string()).collect();
            if !matches!(scenario.expect, Expect::DiffersFromSkopeo523(_))
                && skopeo_asked != expected
            {
                problems.push(format!(
                    "skopeo asked {skopeo_asked:?}, expected {expected:?}"
                ));
            }
            if agent_asked != expected {
                problems.push(format!(
                    "agent asked {agent_asked:?}, expected {expected:?}"
                ));
            }
            // The credential never shows in what the agent prints.
            let printed = text(&checked);
            for form in [PASSWORD.to_string(), basic(USER, PASSWORD)] {
                if printed.contains(&form) {
                    problems.push("the agent printed the credential".into());
                }
            }
            eprintln!(
                "{}: skopeo {} asked {skopeo_asked:?}; agent {status} asked {agent_asked:?}",
                scenario.name,
                if truth.status.success() {
                    "ok"
                } else {
                    "failed"
                },
            );
            if !problems.is_empty() {
                failures.push(format!(
                    "{}:\n  {}\n  agent: {}",
                    scenario.name,
                    problems.join("\n  "),
                    text(&checked)
                ));
            }
        }
        assert!(
            failures.is_empty(),
            "{} of {} scenarios disagree:\n{}",
            failures.len(),
            SCENARIOS.len(),
            failures.join("\n\n")
        );
    })
    .await
    .expect("the differential table did not finish in time");
}

/// A CRI stand-in (real CRI gRPC on a unix socket) that answers `Version` as
/// `runtime_name` and holds no image; everything else is unimplemented. CRI-O itself
/// cannot be installed here: this is only for the runtime's name.
mod cri_stand_in {
    use pullwatch::cri::image_service_server::{ImageService, ImageServiceServer};
    use pullwatch::cri::runtime_service_server::{RuntimeService, RuntimeServiceServer};
    use pullwatch::cri::*;
    use tonic::{Request, Response, Status};

    #[derive(Clone)]
    struct Runtime {
        name: &'static str,
    }

    #[tonic::async_trait]
    impl RuntimeService for Runtime {
        async fn version(
            &self,
            _: Request<VersionRequest>,
        ) -> Result<Response<VersionResponse>, Status> {
            Ok(Response::new(VersionResponse {
                version: "0.1.0".into(),
                runtime_name: self.name.into(),
                runtime_version: "1.31.0".into(),
                runtime_api_version: "v1".into(),
            }))
        }
    }

    #[tonic::async_trait]
    impl ImageService for Runtime {
        async fn list_images(
            &self,
            _: Request<ListImagesRequest>,
        ) -> Result<Response<ListImagesResponse>, Status> {
            Ok(Response::new(ListImagesResponse::default()))
        }
        async fn image_status(
            &self,
            _: Request<ImageStatusRequest>,
        ) -> Result<Response<ImageStatusResponse>, Status> {
            Ok(Response::new(ImageStatusResponse::default()))
        }
        async fn pull_image(
            &self,
            _: Request<PullImageRequest>,
        ) -> Result<Response<PullImageResponse>, Status> {
            Err(Status::unimplemented("a stand-in pulls nothing"))
        }
        async fn remove_image(
            &self,
            _: Request<RemoveImageRequest>,
        ) -> Result<Response<RemoveImageResponse>, Status> {
            Err(Status::unimplemented("a stand-in removes nothing"))
        }
        async fn image_fs_info(
            &self,
            _: Request<ImageFsInfoRequest>,
        ) -> Result<Response<ImageFsInfoResponse>, Status> {
            Err(Status::unimplemented("no image filesystem"))
        }
    }

    /// Serves on `socket` until the returned sender is dropped.
    pub fn start(socket: &std::path::Path, name: &'static str) -> tokio::sync::oneshot::Sender<()> {
        let listener = tokio::net::UnixListener::bind(socket).unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let runtime = Runtime { name };
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(RuntimeServiceServer::new(runtime.clone()))
                .add_service(ImageServiceServer::new(runtime))
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::UnixListenerStream::new(listener),
                    async {
                        let _ = stopped.await;
                    },
                )
                .await
                .unwrap();
        });
        stop
    }
}

/// `--runtime-dialect auto` (the default) takes CRI-O's route when CRI `Version` says
/// `cri-o`, containerd's otherwise: a registry that registries.conf blocks is refused
/// on the CRI-O node and pulled on the containerd node.
#[tokio::test(flavor = "multi_thread")]
async fn auto_dialect_follows_the_runtime_name() {
    pullwatch_testbench::capture_process_logs();
    tokio::time::timeout(Duration::from_secs(120), async {
        let registry = started::open_registry().await;
        push_to(&registry, "team/app", "v1", ImageFormat::Oci).await;
        let image = format!("{}/team/app:v1", registry.host());
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("registries.conf");
        std::fs::write(
            &conf,
            format!(
                "[[registry]]\nlocation = \"{}\"\ninsecure = true\nblocked = true\n",
                registry.host()
            ),
        )
        .unwrap();
        for (runtime_name, status) in [
            ("cri-o", "authorization_failure"),
            ("containerd", "available"),
        ] {
            let socket = dir.path().join(format!("{runtime_name}.sock"));
            let _serving = cri_stand_in::start(&socket, runtime_name);
            let mut command = tokio::process::Command::new(BINARY);
            command
                .env_clear()
                .env("HOME", dir.path())
                .arg("check")
                .arg(&image)
                .args(["--mode", "resolve", "-o", "json"])
                .arg("--cri-endpoint")
                .arg(format!("unix://{}", socket.display()))
                .arg("--kubelet-root-dir")
                .arg(dir.path().join("kubelet"))
                .arg("--containerd-hosts-dir")
                .arg(dir.path().join("certs.d"))
                .arg("--containerd-config")
                .arg(dir.path().join("config.toml"))
                .arg("--registries-conf")
                .arg(&conf)
                .arg("--registries-conf-dir")
                .arg(dir.path().join("registries.conf.d"))
                .arg("--containers-auth-file")
                .arg(dir.path().join("auth.json"));
            let output = run(command).await;
            let report: serde_json::Value = serde_json::from_slice(&output.stdout)
                .unwrap_or_else(|_| panic!("{runtime_name}: {}", text(&output)));
            assert_eq!(
                report["status"],
                status,
                "{runtime_name}: {}",
                text(&output)
            );
            if runtime_name == "cri-o" {
                let reason = report["reason"].as_str().unwrap();
                assert!(reason.contains("is blocked in"), "{reason}");
            }
        }
    })
    .await
    .expect("did not finish in time");
}

/// CRI-O resolves short names through registries.conf, not as Docker Hub names: on a
/// CRI-O node they are reported, not checked against Docker Hub; on a containerd
/// node `team/app` is Docker Hub's.
#[tokio::test(flavor = "multi_thread")]
async fn short_names_are_reported_on_cri_o() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = tokio::process::Command::new(BINARY);
    command
        .env_clear()
        .env("HOME", dir.path())
        .args(["check", "team/app:v1", "--mode", "resolve", "-o", "json"])
        .args(["--runtime-dialect", "cri-o"])
        .arg("--cri-endpoint")
        .arg(format!("unix://{}", dir.path().join("none.sock").display()))
        .arg("--registries-conf")
        .arg(dir.path().join("registries.conf"))
        .arg("--containers-auth-file")
        .arg(dir.path().join("auth.json"));
    let output = run(command).await;
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["status"], "bad_image_format", "{}", text(&output));
    let reason = report["reason"].as_str().unwrap();
    assert!(reason.starts_with("short name \"team/app:v1\""), "{reason}");
    assert_eq!(output.status.code(), Some(1));
}
