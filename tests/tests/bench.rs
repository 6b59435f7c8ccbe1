//! Tests of the test bench itself, against the real tools.

use std::time::Duration;

use pullwatch_testbench::{
    ImageFormat, MANIFEST_ACCEPT, PushedImage, Registry, RegistryOptions, StubResponse, StubServer,
    TestCa, http_request, promtool_check_metrics, push_tags, push_to, sha256_digest,
};

/// Pushes a generated image as `repo:tag`, then HEADs the tag and checks status 200,
/// the digest, the media type and the registry's access log.
async fn push_served(
    registry: &Registry,
    repo: &str,
    tag: &str,
    format: ImageFormat,
) -> PushedImage {
    let pushed = push_to(registry, repo, tag, format).await;
    let head = registry.head_manifest(repo, tag).await.unwrap();
    assert_eq!(head.status, 200, "HEAD {repo}:{tag}: {head:?}");
    assert_eq!(
        head.header("docker-content-digest"),
        Some(pushed.digest.as_str())
    );
    assert_eq!(head.header("content-type"), Some(format.media_type()));
    assert!(
        registry
            .log()
            .contains(&format!("\"HEAD /v2/{repo}/manifests/{tag} HTTP/1.1\" 200")),
        "registry access log lacks the HEAD:\n{}",
        registry.log()
    );
    pushed
}

#[tokio::test]
async fn open_registry_accepts_every_format() {
    let registry = Registry::start(RegistryOptions::default()).await.unwrap();
    assert!(registry.host().starts_with("127.0.0.1:"));
    assert_eq!(registry.url(), format!("http://{}", registry.host()));
    let mut digests = Vec::new();
    for (i, format) in ImageFormat::ALL.into_iter().enumerate() {
        let repo = format!("team/app{i}");
        let pushed = push_served(&registry, &repo, "v1", format).await;
        assert_eq!(pushed.reference, format!("{}/{repo}:v1", registry.host()));
        assert!(pushed.digest.starts_with("sha256:") && pushed.digest.len() == 71);

        // The body the registry serves hashes to the digest.
        let get = registry.get_manifest(&repo, "v1").await.unwrap();
        assert_eq!(get.status, 200);
        assert_eq!(sha256_digest(&get.body), pushed.digest);
        let manifest: serde_json::Value = serde_json::from_slice(&get.body).unwrap();
        assert_eq!(manifest["mediaType"], format.media_type());

        if format.is_list() {
            let arches: Vec<&str> = pushed
                .platforms
                .iter()
                .map(|p| p.architecture.as_str())
                .collect();
            assert_eq!(arches, ["amd64", "arm64"]);
            for p in &pushed.platforms {
                let child = registry.head_manifest(&repo, &p.digest).await.unwrap();
                assert_eq!(child.status, 200, "{p:?}");
                assert_eq!(
                    child.header("docker-content-digest"),
                    Some(p.digest.as_str())
                );
            }
        } else {
            assert!(pushed.platforms.is_empty());
        }
        digests.push(pushed.digest);
    }
    digests.sort();
    digests.dedup();
    assert_eq!(digests.len(), 4, "every image differs");

    // An unknown tag is a 404 with MANIFEST_UNKNOWN.
    let missing = registry.get_manifest("team/app0", "nope").await.unwrap();
    assert_eq!(missing.status, 404);
    assert!(
        missing.text().contains("MANIFEST_UNKNOWN"),
        "{}",
        missing.text()
    );
}

/// distribution 2.8 negotiates on `Accept`: the product must list every type it handles.
#[tokio::test]
async fn registry_negotiates_on_accept() {
    let registry = Registry::start(RegistryOptions::default()).await.unwrap();
    let oci = push_to(&registry, "neg/oci", "v1", ImageFormat::Oci).await;
    let docker = push_to(&registry, "neg/docker", "v1", ImageFormat::DockerV2S2).await;
    let list = push_to(&registry, "neg/list", "v1", ImageFormat::DockerManifestList).await;
    let head = |repo: &'static str, accept: &'static str| {
        let registry = &registry;
        async move {
            let headers: Vec<(&str, &str)> = if accept.is_empty() {
                Vec::new()
            } else {
                vec![("accept", accept)]
            };
            registry
                .request(
                    http::Method::HEAD,
                    &format!("/v2/{repo}/manifests/v1"),
                    &headers,
                    Vec::new(),
                )
                .await
                .unwrap()
        }
    };
    // OCI content is hidden (404) from clients that do not accept OCI.
    assert_eq!(head("neg/oci", "").await.status, 404);
    let r = head("neg/oci", ImageFormat::Oci.media_type()).await;
    assert_eq!(r.header("docker-content-digest"), Some(oci.digest.as_str()));
    // Docker schema 2 is rewritten to schema 1 (another digest) without Accept.
    let r = head("neg/docker", "").await;
    assert_eq!(r.status, 200);
    assert_ne!(
        r.header("docker-content-digest"),
        Some(docker.digest.as_str())
    );
    // A manifest list is replaced by its linux/amd64 manifest for schema-2-only clients.
    let r = head("neg/list", ImageFormat::DockerV2S2.media_type()).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("docker-content-digest"),
        Some(list.platforms[0].digest.as_str())
    );
}

#[tokio::test]
async fn htpasswd_registry_requires_credentials() {
    let registry = Registry::start(RegistryOptions::htpasswd("alice", "s3cret"))
        .await
        .unwrap();
    let anon = registry
        .request_unauthenticated(http::Method::GET, "/v2/", &[])
        .await
        .unwrap();
    assert_eq!(anon.status, 401);
    let challenge = anon.header("www-authenticate").unwrap_or_default();
    assert!(challenge.starts_with("Basic realm="), "{challenge}");

    let authed = registry
        .request(http::Method::GET, "/v2/", &[], Vec::new())
        .await
        .unwrap();
    assert_eq!(authed.status, 200);

    push_served(&registry, "private/app", "1.0", ImageFormat::Oci).await;
    let anon_head = registry
        .request_unauthenticated(
            http::Method::HEAD,
            "/v2/private/app/manifests/1.0",
            &[("accept", MANIFEST_ACCEPT)],
        )
        .await
        .unwrap();
    assert_eq!(anon_head.status, 401);
}

#[tokio::test]
async fn tls_registry_is_reachable_with_the_ca() {
    let ca = TestCa::new().unwrap();
    let registry = Registry::start(RegistryOptions::tls(&ca)).await.unwrap();
    assert!(registry.url().starts_with("https://127.0.0.1:"));

    // rustls with only the test CA as root.
    let resp = registry
        .request(http::Method::GET, "/v2/", &[], Vec::new())
        .await
        .unwrap();
    assert_eq!(resp.status, 200);

    // curl agrees: with the CA it works, without it verification fails (exit 60).
    let with_ca = std::process::Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "10",
        ])
        .arg("--cacert")
        .arg(ca.ca_cert_path())
        .arg(format!("{}/v2/", registry.url()))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&with_ca.stdout),
        "200",
        "{with_ca:?}"
    );
    let without_ca = std::process::Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "--max-time", "10"])
        .arg(format!("{}/v2/", registry.url()))
        .output()
        .unwrap();
    assert_eq!(without_ca.status.code(), Some(60), "{without_ca:?}");

    // A client trusting another CA is rejected.
    let other = TestCa::new().unwrap();
    let config = pullwatch_testbench::tls_client_config(&other.ca_pem()).unwrap();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(registry.addr())
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::from(registry.addr().ip());
    assert!(connector.connect(name, tcp).await.is_err());

    // Pushing through skopeo with the CA works too.
    push_served(&registry, "secure/app", "v2", ImageFormat::DockerV2S2).await;
}

#[tokio::test]
async fn stop_refuses_and_start_again_keeps_storage() {
    let mut registry = Registry::start(RegistryOptions::default()).await.unwrap();
    let pushed = push_to(&registry, "durable", "v1", ImageFormat::Oci).await;
    let addr = registry.addr();
    assert!(registry.is_running());
    registry.stop();
    assert!(!registry.is_running());
    let err = tokio::net::TcpStream::connect(addr).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);

    registry.start_again().await.unwrap();
    assert_eq!(registry.addr(), addr);
    let head = registry.head_manifest("durable", "v1").await.unwrap();
    assert_eq!(head.status, 200);
    assert_eq!(
        head.header("docker-content-digest"),
        Some(pushed.digest.as_str())
    );
}

#[tokio::test]
async fn delete_manifest_loses_the_image() {
    let registry = Registry::start(RegistryOptions::default()).await.unwrap();
    let keep = push_to(&registry, "lost/app", "keep", ImageFormat::DockerV2S2).await;
    let gone = push_to(&registry, "lost/app", "gone", ImageFormat::OciIndex).await;
    registry
        .delete_manifest("lost/app", &gone.digest)
        .await
        .unwrap();
    let head_status = async |reference: &str| {
        let head = registry.head_manifest("lost/app", reference).await;
        head.unwrap().status
    };
    assert_eq!(head_status("gone").await, 404);
    assert_eq!(head_status(&gone.digest).await, 404);
    assert_eq!(head_status("keep").await, 200);
    assert!(registry.log().contains(&format!(
        "\"DELETE /v2/lost/app/manifests/{} HTTP/1.1\" 202",
        gone.digest
    )));
    // Deleting twice is an error.
    assert!(
        registry
            .delete_manifest("lost/app", &gone.digest)
            .await
            .is_err()
    );
    let _ = keep;
}

#[tokio::test]
async fn push_tags_points_many_tags_at_one_manifest() {
    let registry = Registry::start(RegistryOptions::htpasswd("bob", "pw"))
        .await
        .unwrap();
    let tags: Vec<String> = (0..50).map(|i| format!("t{i:03}")).collect();
    let digest = push_tags(&registry, "many", &tags).await.unwrap();
    for tag in &tags {
        let head = registry.head_manifest("many", tag).await.unwrap();
        assert_eq!(head.status, 200, "{tag}");
        assert_eq!(head.header("docker-content-digest"), Some(digest.as_str()));
    }
    let list = registry
        .request(http::Method::GET, "/v2/many/tags/list", &[], Vec::new())
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&list.body).unwrap();
    assert_eq!(v["tags"].as_array().unwrap().len(), 50);
    assert!(push_tags(&registry, "many", &[]).await.is_err());
}

#[tokio::test]
async fn ipv6_registry_gets_images_over_the_api() {
    let registry = Registry::start(RegistryOptions {
        ipv6: true,
        ..Default::default()
    })
    .await
    .unwrap();
    assert!(registry.host().starts_with("[::1]:"), "{}", registry.host());
    assert!(registry.addr().is_ipv6());
    for format in [ImageFormat::Oci, ImageFormat::DockerManifestList] {
        let pushed = push_served(&registry, "v6/app", "latest", format).await;
        assert!(pushed.reference.starts_with("[::1]:"));
    }

    // TLS and htpasswd on [::1] too (the certificate carries IP:::1).
    let secure = Registry::start(RegistryOptions {
        ipv6: true,
        tls: Some(TestCa::new().unwrap()),
        htpasswd: Some(("carol".into(), "pw6".into())),
        ..RegistryOptions::default()
    })
    .await
    .unwrap();
    assert!(secure.url().starts_with("https://[::1]:"));
    push_served(&secure, "v6/secure", "v1", ImageFormat::DockerV2S2).await;
    assert_eq!(
        secure
            .request_unauthenticated(http::Method::GET, "/v2/", &[])
            .await
            .unwrap()
            .status,
        401
    );
}

#[test]
fn promtool_accepts_valid_and_rejects_broken_expositions() {
    let valid = "# HELP pullwatch_checks_total Checks performed.\n\
                 # TYPE pullwatch_checks_total counter\n\
                 pullwatch_checks_total{result=\"ok\"} 3\n\
                 # HELP pullwatch_up Whether the agent is up.\n\
                 # TYPE pullwatch_up gauge\n\
                 pullwatch_up 1\n";
    promtool_check_metrics(valid).unwrap();

    let broken = "# TYPE pullwatch_up gauge\npullwatch_up{oops 1\n";
    let err = promtool_check_metrics(broken).unwrap_err().to_string();
    assert!(err.contains("promtool check metrics failed"), "{err}");

    // Lint problems count as failures too, and the message carries promtool's words.
    let lint = "# TYPE pullwatch_checks counter\npullwatch_checks 1\n";
    let err = promtool_check_metrics(lint).unwrap_err().to_string();
    assert!(err.contains("pullwatch_checks"), "{err}");
}

#[tokio::test]
async fn stub_server_answers_what_the_handler_says() {
    let stub = StubServer::start(|method, path| match (method.as_str(), path) {
        (_, "/v2/") => StubResponse::new(200),
        (_, "/v2/limited/manifests/v1") => StubResponse::new(429)
            .with_header("Retry-After", "7")
            .with_body("{\"errors\":[{\"code\":\"TOOMANYREQUESTS\"}]}"),
        (_, "/v2/forbidden/manifests/v1") => StubResponse::new(403),
        (_, "/v2/broken/manifests/v1") => StubResponse::new(503),
        ("HEAD", "/v2/nohead/manifests/v1") => StubResponse::new(405),
        ("GET", "/v2/nohead/manifests/v1") => StubResponse::new(200)
            .with_header("Docker-Content-Digest", "sha256:abc")
            .with_body("{}"),
        _ => StubResponse::new(404),
    })
    .await
    .unwrap();
    assert!(stub.host().starts_with("127.0.0.1:"));
    let call = |method: http::Method, path: &'static str| {
        let addr = stub.addr();
        async move {
            http_request(addr, method, path, &[], Vec::new())
                .await
                .unwrap()
        }
    };
    let r = call(http::Method::GET, "/v2/limited/manifests/v1").await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), Some("7"));
    assert!(r.text().contains("TOOMANYREQUESTS"));
    assert_eq!(
        call(http::Method::GET, "/v2/forbidden/manifests/v1")
            .await
            .status,
        403
    );
    assert_eq!(
        call(http::Method::HEAD, "/v2/broken/manifests/v1")
            .await
            .status,
        503
    );
    assert_eq!(
        call(http::Method::HEAD, "/v2/nohead/manifests/v1")
            .await
            .status,
        405
    );
    let get = call(http::Method::GET, "/v2/nohead/manifests/v1").await;
    assert_eq!(get.status, 200);
    assert_eq!(get.header("docker-content-digest"), Some("sha256:abc"));
    assert_eq!(get.text(), "{}");
    assert_eq!(call(http::Method::GET, "/other?x=1").await.status, 404);

    assert_eq!(
        stub.requests(),
        [
            ("GET", "/v2/limited/manifests/v1"),
            ("GET", "/v2/forbidden/manifests/v1"),
            ("HEAD", "/v2/broken/manifests/v1"),
            ("HEAD", "/v2/nohead/manifests/v1"),
            ("GET", "/v2/nohead/manifests/v1"),
            ("GET", "/other?x=1"),
        ]
        .map(|(m, p)| (m.to_owned(), p.to_owned()))
    );
    assert_eq!(
        stub.recorded()[0].header("user-agent"),
        Some("pullwatch-testbench")
    );

    // Dropping the stub closes the port.
    let addr = stub.addr();
    drop(stub);
    let mut refused = false;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(refused, "stub still accepting after drop");
}
