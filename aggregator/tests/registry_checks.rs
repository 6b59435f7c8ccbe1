//! The central checker against real registries (Debian's docker-registry: open,
//! htpasswd, TLS, IPv6) and, for answers no real registry gives here (403, 429, 5xx,
//! a HEAD refusal, a token service), a stub HTTP server. Loopback only.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pullwatch::{CheckStatus, ImageReference, RegistryCredential, SourcedCredential};
use pullwatch_aggregator::checker::{Checker, CheckerConfig};
use pullwatch_aggregator::index::CheckKey;
use pullwatch_aggregator::metrics::Metrics;
use pullwatch_aggregator::store::ResultStore;
use pullwatch_testbench::{
    CANARY_PASSWORD, ImageFormat, Registry, RegistryOptions, StubResponse, StubServer, TestCa,
    assert_no_canary, assert_no_canary_in_process_logs, capture_process_logs, push_image,
};

fn plain_config() -> CheckerConfig {
    CheckerConfig {
        allow_plain_http: true,
        request_timeout: Duration::from_secs(5),
        ..CheckerConfig::default()
    }
}

fn checker(config: &CheckerConfig) -> (Checker, Metrics) {
    let metrics = Metrics::new(false).unwrap();
    let checker = Checker::new(config, metrics.checker.clone()).unwrap();
    (checker, metrics)
}

fn key(image: &str, credentials: &[(&str, &str, &str)]) -> CheckKey {
    CheckKey {
        reference: ImageReference::parse(image).unwrap(),
        credentials: credentials
            .iter()
            .map(|(source, user, password)| SourcedCredential {
                source: Arc::from(*source),
                credential: RegistryCredential {
                    username: user.to_string(),
                    password: password.to_string(),
                    ..Default::default()
                },
            })
            .collect::<Vec<_>>()
            .into(),
    }
}

fn metric_value(metrics: &Metrics, line_prefix: &str) -> Option<f64> {
    // The checker's own series do not depend on the store.
    metrics
        .render(&ResultStore::default())
        .unwrap()
        .lines()
        .find(|l| l.starts_with(line_prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn open_registry_every_manifest_format_and_absent_references() {
    let registry = Registry::start(RegistryOptions::default()).await.unwrap();
    let host = registry.host();
    let mut pushed = Vec::new();
    for (i, format) in [
        ImageFormat::Oci,
        ImageFormat::DockerV2S2,
        ImageFormat::OciIndex,
        ImageFormat::DockerManifestList,
    ]
    .into_iter()
    .enumerate()
    {
        pushed.push(
            push_image(&registry, &format!("team/app{i}"), "v1", format)
                .await
                .unwrap(),
        );
    }
    let (checker, _metrics) = checker(&plain_config());

    for image in &pushed {
        let outcome = checker.check(&key(&image.reference, &[])).await;
        assert_eq!(
            outcome.status,
            CheckStatus::Available,
            "{}: {}",
            image.reference,
            outcome.reason
        );
        let by_digest = format!("{host}/team/app0@{}", pushed[0].digest);
        let outcome = checker.check(&key(&by_digest, &[])).await;
        assert_eq!(
            outcome.status,
            CheckStatus::Available,
            "{by_digest}: {}",
            outcome.reason
        );
    }

    for missing in [
        format!("{host}/team/app0:no-such-tag"),
        format!("{host}/no/such/repo:v1"),
        format!("{host}/team/app0@sha256:{}", "0".repeat(64)),
    ] {
        let outcome = checker.check(&key(&missing, &[])).await;
        assert_eq!(
            outcome.status,
            CheckStatus::Absent,
            "{missing}: {}",
            outcome.reason
        );
        assert!(outcome.reason.contains("404"), "{}", outcome.reason);
    }
    // The checker asked with HEAD, not GET: a check downloads no manifest body.
    let log = registry.log();
    assert!(
        log.contains("\"HEAD /v2/team/app0/manifests/v1 HTTP/1.1\" 200"),
        "{log}"
    );
    assert!(!log.contains("\"GET /v2/team/app0/manifests/v1"), "{log}");
}

#[tokio::test]
async fn htpasswd_registry_credentials_in_kubelet_order() {
    capture_process_logs();
    let registry = Registry::start(RegistryOptions {
        htpasswd: Some(("alice".into(), CANARY_PASSWORD.into())),
        ..Default::default()
    })
    .await
    .unwrap();
    let image = push_image(&registry, "private/app", "v1", ImageFormat::Oci)
        .await
        .unwrap();
    let (checker, metrics) = checker(&plain_config());

    let anonymous = checker.check(&key(&image.reference, &[])).await;
    assert_eq!(
        anonymous.status,
        CheckStatus::AuthenticationFailure,
        "{}",
        anonymous.reason
    );
    assert!(
        anonymous.reason.contains("no pull secret matches"),
        "{}",
        anonymous.reason
    );

    let wrong = checker
        .check(&key(
            &image.reference,
            &[("secret/ns/old", "alice", "expired")],
        ))
        .await;
    assert_eq!(
        wrong.status,
        CheckStatus::AuthenticationFailure,
        "{}",
        wrong.reason
    );
    assert!(wrong.reason.contains("secret/ns/old"), "{}", wrong.reason);
    assert!(
        !wrong.reason.contains("expired"),
        "reasons never carry secrets: {}",
        wrong.reason
    );

    // The first credential fails, the second works: available, as the kubelet would pull.
    let tried = checker
        .check(&key(
            &image.reference,
            &[
                ("secret/ns/old", "alice", "expired"),
                ("secret/ns/new", "alice", CANARY_PASSWORD),
            ],
        ))
        .await;
    assert_eq!(tried.status, CheckStatus::Available, "{}", tried.reason);

    // Authenticated, and the tag is missing: the more informative status wins.
    let absent = checker
        .check(&key(
            &format!("{}/private/app:gone", registry.host()),
            &[("a", "alice", "bad"), ("b", "alice", CANARY_PASSWORD)],
        ))
        .await;
    assert_eq!(absent.status, CheckStatus::Absent, "{}", absent.reason);
    assert!(
        absent.reason.contains("a: ") && absent.reason.contains("b: "),
        "{}",
        absent.reason
    );
    // The canary password: in no reason, no log line, no metric.
    for outcome in [&anonymous, &wrong, &tried, &absent] {
        assert_no_canary("a check's reason", &outcome.reason);
    }
    assert_no_canary(
        "/metrics",
        &metrics.render(&ResultStore::default()).unwrap(),
    );
    assert_no_canary_in_process_logs();
}

#[tokio::test]
async fn tls_registry_needs_its_ca_or_skip_verification() {
    let ca = TestCa::new().unwrap();
    let registry = Registry::start(RegistryOptions {
        tls: Some(ca.clone()),
        ..Default::default()
    })
    .await
    .unwrap();
    let image = push_image(&registry, "secure/app", "v1", ImageFormat::DockerV2S2)
        .await
        .unwrap();

    let strict = CheckerConfig {
        request_timeout: Duration::from_secs(5),
        ..CheckerConfig::default()
    };
    let (without_ca, _m) = checker(&strict);
    let outcome = without_ca.check(&key(&image.reference, &[])).await;
    assert_eq!(
        outcome.status,
        CheckStatus::RegistryUnavailable,
        "{}",
        outcome.reason
    );
    assert!(
        outcome.reason.to_lowercase().contains("certificate"),
        "{}",
        outcome.reason
    );

    let (with_ca, _m) = checker(&CheckerConfig {
        ca_paths: vec![ca.ca_cert_path().to_path_buf()],
        ..strict.clone()
    });
    let outcome = with_ca.check(&key(&image.reference, &[])).await;
    assert_eq!(outcome.status, CheckStatus::Available, "{}", outcome.reason);

    let (skipping, _m) = checker(&CheckerConfig {
        skip_tls_verify: true,
        ..strict.clone()
    });
    let outcome = skipping.check(&key(&image.reference, &[])).await;
    assert_eq!(outcome.status, CheckStatus::Available, "{}", outcome.reason);

    let bad_ca = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(bad_ca.path(), "not a certificate").unwrap();
    let config = CheckerConfig {
        ca_paths: vec![bad_ca.path().to_path_buf()],
        ..strict
    };
    let error = Checker::new(&config, Metrics::new(false).unwrap().checker.clone())
        .err()
        .unwrap();
    assert!(error.to_string().contains("no PEM certificates"), "{error}");
}

#[tokio::test]
async fn plain_http_only_when_allowed_and_ipv6_literals() {
    let registry = Registry::start(RegistryOptions {
        ipv6: true,
        ..Default::default()
    })
    .await
    .unwrap();
    let image = push_image(&registry, "v6/app", "v1", ImageFormat::Oci)
        .await
        .unwrap();
    assert!(image.reference.starts_with("[::1]:"), "{}", image.reference);

    let (https_only, _m) = checker(&CheckerConfig {
        request_timeout: Duration::from_secs(5),
        ..CheckerConfig::default()
    });
    let outcome = https_only.check(&key(&image.reference, &[])).await;
    assert_eq!(
        outcome.status,
        CheckStatus::RegistryUnavailable,
        "{}",
        outcome.reason
    );

    let (plain, _m) = checker(&plain_config());
    let outcome = plain.check(&key(&image.reference, &[])).await;
    assert_eq!(outcome.status, CheckStatus::Available, "{}", outcome.reason);
}

#[tokio::test]
async fn registry_down_is_unavailable() {
    let mut registry = Registry::start(RegistryOptions::default()).await.unwrap();
    let image = push_image(&registry, "app", "v1", ImageFormat::Oci)
        .await
        .unwrap();
    registry.stop();
    let (checker, metrics) = checker(&plain_config());
    let outcome = checker.check(&key(&image.reference, &[])).await;
    assert_eq!(
        outcome.status,
        CheckStatus::RegistryUnavailable,
        "{}",
        outcome.reason
    );
    assert!(outcome.reason.contains("refused"), "{}", outcome.reason);
    let errors = metric_value(
        &metrics,
        &format!(
            "pullwatch_registry_requests_total{{code=\"error\",registry=\"{}\"}}",
            registry.host()
        ),
    );
    assert!(errors.unwrap_or(0.0) >= 1.0);

    registry.start_again().await.unwrap();
    let outcome = checker.check(&key(&image.reference, &[])).await;
    assert_eq!(outcome.status, CheckStatus::Available, "{}", outcome.reason);
}

#[tokio::test]
async fn statuses_only_a_stub_can_produce() {
    let stub = StubServer::start(|method, path| match path {
        p if p.contains("/forbidden/") => StubResponse::new(403),
        p if p.contains("/broken/") => StubResponse::new(503).with_body("upstream unavailable"),
        p if p.contains("/teapot/") => StubResponse::new(418),
        p if p.contains("/head-refused/") && method == http::Method::HEAD => StubResponse::new(405),
        p if p.contains("/head-refused/") => StubResponse::new(200).with_body("{}"),
        p if p.contains("/unknown-on-get/") && method == http::Method::HEAD => {
            StubResponse::new(405)
        }
        p if p.contains("/unknown-on-get/") => StubResponse::new(404)
            .with_body(r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#),
        _ => StubResponse::new(404),
    })
    .await
    .unwrap();
    let host = stub.host();
    let (checker, _metrics) = checker(&plain_config());
    for (repo, expected) in [
        ("forbidden", CheckStatus::AuthorizationFailure),
        ("broken", CheckStatus::RegistryUnavailable),
        ("teapot", CheckStatus::UnknownError),
        ("head-refused", CheckStatus::Available),
        ("unknown-on-get", CheckStatus::Absent),
    ] {
        let outcome = checker
            .check(&key(&format!("{host}/{repo}/app:v1"), &[]))
            .await;
        assert_eq!(outcome.status, expected, "{repo}: {}", outcome.reason);
    }
    let get_fallback: Vec<_> = stub
        .requests()
        .into_iter()
        .filter(|(_, path)| path.contains("/unknown-on-get/"))
        .map(|(method, _)| method)
        .collect();
    assert_eq!(get_fallback, ["HEAD", "GET"]);
    let outcome = checker
        .check(&key(&format!("{host}/unknown-on-get/app:v1"), &[]))
        .await;
    assert!(
        outcome
            .reason
            .contains("MANIFEST_UNKNOWN: manifest unknown"),
        "{}",
        outcome.reason
    );
}

#[tokio::test]
async fn rate_limited_registry_is_paused_for_retry_after() {
    let stub = StubServer::start(|_, _| StubResponse::new(429).with_header("Retry-After", "120"))
        .await
        .unwrap();
    let (checker, metrics) = checker(&plain_config());
    let outcome = checker
        .check(&key(&format!("{}/busy/app:v1", stub.host()), &[]))
        .await;
    assert_eq!(
        outcome.status,
        CheckStatus::RateLimited,
        "{}",
        outcome.reason
    );
    assert!(
        outcome.reason.contains("paused for 120s (Retry-After)"),
        "{}",
        outcome.reason
    );
    let seen = stub.requests().len();

    // While paused, no request reaches the registry and the status stays rate_limited.
    let again = checker
        .check(&key(&format!("{}/busy/other:v2", stub.host()), &[]))
        .await;
    assert_eq!(again.status, CheckStatus::RateLimited, "{}", again.reason);
    assert!(
        again.reason.contains("paused for another"),
        "{}",
        again.reason
    );
    assert_eq!(stub.requests().len(), seen);

    let until = metric_value(
        &metrics,
        &format!(
            "pullwatch_registry_paused_until_timestamp_seconds{{registry=\"{}\"}}",
            stub.host()
        ),
    )
    .unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        until > now + 100.0 && until <= now + 121.0,
        "until={until} now={now}"
    );
}

#[tokio::test]
async fn bearer_token_flow_through_oci_client() {
    // A registry whose manifests need a bearer token from a separate token service.
    let token_service = StubServer::start(|_, path| {
        if path.starts_with("/token") && path.contains("scope=repository%3Ateam%2Fapp%3Apull") {
            StubResponse::new(200).with_body(r#"{"token":"good-token","expires_in":300}"#)
        } else {
            StubResponse::new(401).with_body("bad scope")
        }
    })
    .await
    .unwrap();
    let realm = format!("http://{}/token", token_service.host());
    let registry = StubServer::start(move |_, path| {
        // The stub does not see headers in its handler; authorization is checked below.
        let _ = path;
        StubResponse::new(401).with_header(
            "WWW-Authenticate",
            &format!(r#"Bearer realm="{realm}",service="stub""#),
        )
    })
    .await
    .unwrap();
    let (checker, _m) = checker(&plain_config());
    let outcome = checker
        .check(&key(
            &format!("{}/team/app:v1", registry.host()),
            &[("secret/ns/s", "u", "p")],
        ))
        .await;
    // The stub registry refuses even with a token: the retry must carry it.
    assert_eq!(
        outcome.status,
        CheckStatus::AuthenticationFailure,
        "{}",
        outcome.reason
    );
    let recorded = registry.recorded();
    let manifest_requests: Vec<_> = recorded
        .iter()
        .filter(|r| r.path.contains("/manifests/"))
        .collect();
    assert_eq!(
        manifest_requests.len(),
        2,
        "one challenge, one retry with the token"
    );
    assert_eq!(
        manifest_requests[1].header("authorization"),
        Some("Bearer good-token")
    );
    // oci-client sent the credential to the token service with basic auth.
    let token_requests = token_service.recorded();
    assert!(token_requests.iter().any(|r| {
        r.header("authorization")
            .is_some_and(|h| h.starts_with("Basic "))
    }));
}

#[tokio::test]
async fn identical_concurrent_checks_are_made_once() {
    let registry = Registry::start(RegistryOptions::default()).await.unwrap();
    let image = push_image(&registry, "shared/app", "v1", ImageFormat::Oci)
        .await
        .unwrap();
    let (checker, metrics) = checker(&plain_config());
    let k = key(&image.reference, &[]);
    let (a, b, c) = tokio::join!(checker.check(&k), checker.check(&k), checker.check(&k));
    for outcome in [a, b, c] {
        assert_eq!(outcome.status, CheckStatus::Available, "{}", outcome.reason);
    }
    assert_eq!(
        metric_value(&metrics, "pullwatch_coalesced_checks_total"),
        Some(2.0)
    );
    let heads = registry
        .log()
        .matches("\"HEAD /v2/shared/app/manifests/v1 HTTP/1.1\"")
        .count();
    assert_eq!(heads, 1, "{}", registry.log());
}

/// A registry stand-in that answers 200 to every manifest HEAD after `delay`, and
/// records how many requests it held at once: the one thing no real registry reports.
async fn slow_counting_server(
    delay: Duration,
) -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let current = Arc::new(AtomicUsize::new(0));
    let max = Arc::new(AtomicUsize::new(0));
    let max_out = max.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (current, max) = (current.clone(), max.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_request| {
                    let (current, max) = (current.clone(), max.clone());
                    async move {
                        let now = current.fetch_add(1, Ordering::SeqCst) + 1;
                        max.fetch_max(now, Ordering::SeqCst);
                        tokio::time::sleep(delay).await;
                        current.fetch_sub(1, Ordering::SeqCst);
                        Ok::<_, std::convert::Infallible>(http::Response::new(
                            http_body_util::Empty::<bytes::Bytes>::new(),
                        ))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, max_out)
}

#[tokio::test]
async fn per_registry_concurrency_and_rate_are_bounded() {
    use pullwatch_aggregator::checker::limits::RegistryLimits;
    use std::num::NonZeroU32;
    use std::sync::atomic::Ordering;

    let (addr, max_seen) = slow_counting_server(Duration::from_millis(200)).await;
    let config = CheckerConfig {
        max_concurrent_checks: 16,
        registry_limits: RegistryLimits {
            max_concurrency: 3,
            requests_per_second: NonZeroU32::new(1000).unwrap(),
        },
        ..plain_config()
    };
    let (bounded, _m) = checker(&config);
    let keys: Vec<CheckKey> = (0..12)
        .map(|i| key(&format!("{addr}/app:v{i}"), &[]))
        .collect();
    let outcomes = futures::future::join_all(keys.iter().map(|k| bounded.check(k))).await;
    assert!(outcomes.iter().all(|o| o.is_available()), "{outcomes:?}");
    let max = max_seen.load(Ordering::SeqCst);
    assert!(max <= 3, "per-registry concurrency exceeded: {max}");
    assert!(
        max >= 2,
        "checks should run concurrently up to the bound: {max}"
    );

    // The request rate: 4 per second (a burst of 4, then one every 250 ms) makes 12
    // checks take at least 2 s, whatever the concurrency allows.
    let (addr, _) = slow_counting_server(Duration::ZERO).await;
    let config = CheckerConfig {
        registry_limits: RegistryLimits {
            max_concurrency: 12,
            requests_per_second: NonZeroU32::new(4).unwrap(),
        },
        ..plain_config()
    };
    let (rated, _m) = checker(&config);
    let keys: Vec<CheckKey> = (0..12)
        .map(|i| key(&format!("{addr}/app:v{i}"), &[]))
        .collect();
    let started = std::time::Instant::now();
    let outcomes = futures::future::join_all(keys.iter().map(|k| rated.check(k))).await;
    assert!(outcomes.iter().all(|o| o.is_available()), "{outcomes:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(1900),
        "rate limit not applied: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_registry_that_never_answers_times_out_as_unavailable() {
    // Accepts connections and never says a word: only the per-request timeout ends it.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let held = Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = held.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            keep.lock().unwrap().push(stream);
        }
    });
    let config = CheckerConfig {
        request_timeout: Duration::from_millis(500),
        ..plain_config()
    };
    let (checker, _m) = checker(&config);
    let started = std::time::Instant::now();
    let outcome = checker
        .check(&key(&format!("{addr}/silent/app:v1"), &[]))
        .await;
    assert_eq!(
        outcome.status,
        CheckStatus::RegistryUnavailable,
        "{}",
        outcome.reason
    );
    assert!(outcome.reason.contains("timed out"), "{}", outcome.reason);
    // HTTPS then the plain-HTTP fallback, each bounded by the timeout.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(
        !held.lock().unwrap().is_empty(),
        "the check reached the silent server"
    );
}
