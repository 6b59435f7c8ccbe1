//! `pullwatch-agent check --mode resolve` against the registry behaviours the
//! aggregator's binary is tested with (aggregator/tests/registry_behaviour.rs): the same
//! status for the same registry behaviour. No runtime is needed in resolve mode.

use std::process::Output;
use std::time::Duration;

use base64::Engine;
use pullwatch_testbench::answers::{
    assert_behaviour_answer, assert_output_without_behaviour_password,
};
use pullwatch_testbench::started;
use pullwatch_testbench::{
    BEHAVIOUR_PASSWORD, BEHAVIOUR_USER, Behaviour, StubResponse, StubServer, hermetic_command,
    output_within, registry_behaviours, stdout_json,
};

const BINARY: &str = env!("CARGO_BIN_EXE_pullwatch-agent");

async fn resolve(home: &std::path::Path, image: &str, extra: &[&str]) -> Output {
    let hosts = home.join("certs.d");
    let mut command = hermetic_command(BINARY, home);
    command
        .args(["check", image, "--mode", "resolve", "-o", "json"])
        .args([
            "--cri-endpoint",
            &format!("unix://{}", home.join("no-runtime.sock").display()),
            "--kubelet-root-dir",
            home.join("kubelet").to_str().unwrap(),
            "--containerd-hosts-dir",
            hosts.to_str().unwrap(),
            "--containerd-config",
            home.join("no-config.toml").to_str().unwrap(),
            "--request-timeout",
            "2s",
            // The behaviours are stubs answering made-up digests with no image behind
            // them: the manifest request (what they classify) is all that is made.
            "--check-depth",
            "manifest",
        ])
        .args(extra);
    output_within(&mut command, Duration::from_secs(60)).await
}

fn pull_secret_file(home: &std::path::Path, b: &Behaviour) -> std::path::PathBuf {
    let auth = base64::engine::general_purpose::STANDARD
        .encode(format!("{BEHAVIOUR_USER}:{BEHAVIOUR_PASSWORD}"));
    let path = home.join(format!("{}.json", b.name));
    std::fs::write(
        &path,
        format!(r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#, b.host),
    )
    .unwrap();
    path
}

#[tokio::test(flavor = "multi_thread")]
async fn resolve_mode_classifies_every_registry_behaviour_like_the_aggregator() {
    let behaviours = registry_behaviours().await.unwrap();
    let home = tempfile::tempdir().unwrap();
    for b in &behaviours {
        if b.https {
            // What an operator writes for a registry served over HTTPS.
            let dir = home.path().join("certs.d").join(&b.host);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(
                dir.join("hosts.toml"),
                format!("server = \"https://{}\"\n", b.host),
            )
            .unwrap();
        }
        let secret = pull_secret_file(home.path(), b);
        let output = resolve(
            home.path(),
            &b.image,
            &["--pull-secret-file", secret.to_str().unwrap()],
        )
        .await;
        assert_output_without_behaviour_password(&output);
        let value = stdout_json(&output);
        let reason = assert_behaviour_answer(b, &value);
        assert_eq!(value["mode"], "resolve");
        assert_eq!(
            value["credential_source"],
            format!("secret-file:{}", secret.display()),
            "{}",
            b.name
        );
        if b.name == "bad-certificate" || b.name == "plain-port" {
            // The hint names the agent's configuration, not an aggregator flag.
            assert!(
                reason.contains("hosts.toml") && !reason.contains("--capath"),
                "{reason}"
            );
        }
    }
}

#[tokio::test]
async fn a_paused_registry_is_not_asked_again_by_the_resolver() {
    use pullwatch::ImageReference;
    use pullwatch_agent::check::resolve::{Resolver, ResolverConfig};
    use pullwatch_agent::route::containerd::RuntimeAuth;

    let stub = StubServer::start(|_, _| StubResponse::new(429).with_header("Retry-After", "60"))
        .await
        .unwrap();
    let hosts = tempfile::tempdir().unwrap();
    let resolver = Resolver::new(ResolverConfig {
        hosts_dir: hosts.path().to_path_buf(),
        runtime_auth: RuntimeAuth::default(),
        request_timeout: Duration::from_secs(5),
    });
    let first = resolver
        .resolve(
            &ImageReference::parse(&format!("{}/a/app:v1", stub.host())).unwrap(),
            None,
        )
        .await;
    assert_eq!(
        first.outcome.status.as_str(),
        "rate_limited",
        "{}",
        first.outcome.reason
    );
    assert!(
        first
            .outcome
            .reason
            .contains("paused for 60s (Retry-After)"),
        "{}",
        first.outcome.reason
    );
    let sent = stub.requests().len();
    let second = resolver
        .resolve(
            &ImageReference::parse(&format!("{}/b/app:v1", stub.host())).unwrap(),
            None,
        )
        .await;
    assert_eq!(second.outcome.status.as_str(), "rate_limited");
    assert_eq!(
        stub.requests().len(),
        sent,
        "the paused registry was contacted"
    );
}

#[tokio::test]
async fn the_resolver_fetches_an_index_by_digest_along_the_route() {
    use pullwatch::ImageReference;
    use pullwatch_agent::check::resolve::{Resolver, ResolverConfig};
    use pullwatch_agent::route::containerd::RuntimeAuth;
    use pullwatch_testbench::{ImageFormat, push_to};

    let registry = started::open_registry().await;
    let index = push_to(&registry, "multi/app", "v1", ImageFormat::OciIndex).await;
    let hosts = tempfile::tempdir().unwrap();
    let resolver = Resolver::new(ResolverConfig {
        hosts_dir: hosts.path().to_path_buf(),
        runtime_auth: RuntimeAuth::default(),
        request_timeout: Duration::from_secs(5),
    });
    let image = ImageReference::parse(&index.reference).unwrap();
    let resolved = resolver.resolve(&image, None).await;
    assert_eq!(
        resolved.outcome.digest.as_deref(),
        Some(index.digest.as_str())
    );
    assert_eq!(
        resolved.outcome.media_type.as_deref(),
        Some("application/vnd.oci.image.index.v1+json")
    );
    let manifest = resolver
        .fetch_manifest(&image, &index.digest, None)
        .await
        .unwrap();
    assert_eq!(manifest.digest, index.digest);
    let parsed: serde_json::Value = serde_json::from_slice(&manifest.body).unwrap();
    assert!(parsed["manifests"].is_array(), "{parsed}");
    let missing = resolver
        .fetch_manifest(&image, &format!("sha256:{}", "0".repeat(64)), None)
        .await
        .unwrap_err();
    assert_eq!(missing.status.as_str(), "absent", "{}", missing.reason);
}
