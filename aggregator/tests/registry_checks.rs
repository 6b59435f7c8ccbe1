//! The central checker against real registries (Debian's docker-registry: open,
//! htpasswd, TLS, IPv6) and, for answers no real registry gives here (403, 429, 5xx,
//! a HEAD refusal, a token service), a stub HTTP server. Loopback only.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pullwatch::registry::pull_path::{CheckDepth, WalkSettings};
use pullwatch::{CheckStatus, ImageReference, RegistryCredential, SourcedCredential};
use pullwatch_aggregator::checker::{CentralChecker, CheckerConfig};
use pullwatch_aggregator::index::CheckKey;
use pullwatch_aggregator::metrics::Metrics;
use pullwatch_aggregator::store::ResultStore;
use pullwatch_testbench::{
    BearerRegistry, CANARY_PASSWORD, ImageFormat, Registry, STUB_DIGEST, StubResponse, StubServer,
    TestCa, assert_no_canary, assert_no_canary_in_process_logs, capture_process_logs,
};
use pullwatch_testbench::{assert_reason_contains, assert_status, push_to, started};

fn plain_config() -> CheckerConfig {
    CheckerConfig {
        allow_plain_http: true,
        request_timeout: Duration::from_secs(5),
        ..CheckerConfig::default()
    }
}

/// For stubs: they answer manifest requests with made-up digests and serve no image
/// behind them, so only the manifest request (what these tests are about) is made.
fn stub_config() -> CheckerConfig {
    CheckerConfig {
        walk: WalkSettings {
            depth: CheckDepth::Manifest,
            ..WalkSettings::default()
        },
        ..plain_config()
    }
}

fn checker(config: &CheckerConfig) -> (CentralChecker, Metrics) {
    let metrics = Metrics::new(false).unwrap();
    let checker = CentralChecker::new(config, metrics.checker.clone()).unwrap();
    (checker, metrics)
}

fn key(image: &str, credentials: &[(&str, &str, &str)]) -> CheckKey {
    CheckKey::new(
        ImageReference::parse(image).unwrap(),
        credentials
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
    )
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
    let registry = started::open_registry().await;
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
        pushed.push(push_to(&registry, &format!("team/app{i}"), "v1", format).await);
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
        assert_status!(outcome, CheckStatus::Available, "{by_digest}");
    }

    for missing in [
        format!("{host}/team/app0:no-such-tag"),
        format!("{host}/no/such/repo:v1"),
        format!("{host}/team/app0@sha256:{}", "0".repeat(64)),
    ] {
        let outcome = checker.check(&key(&missing, &[])).await;
        assert_status!(outcome, CheckStatus::Absent, "{missing}");
        assert_reason_contains!(outcome, "404");
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
    let registry = started::private_registry("alice", CANARY_PASSWORD).await;
    let image = push_to(&registry, "private/app", "v1", ImageFormat::Oci).await;
    let (checker, metrics) = checker(&plain_config());

    let anonymous = checker.check(&key(&image.reference, &[])).await;
    assert_status!(anonymous, CheckStatus::AuthenticationFailure);
    assert_reason_contains!(anonymous, "no pull secret matches");

    let wrong = checker
        .check(&key(
            &image.reference,
            &[("secret/ns/old", "alice", "expired")],
        ))
        .await;
    assert_status!(wrong, CheckStatus::AuthenticationFailure);
    assert_reason_contains!(wrong, "secret/ns/old");
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
    assert_status!(tried, CheckStatus::Available);

    // Authenticated, and the tag is missing: the more informative status wins.
    let absent = checker
        .check(&key(
            &format!("{}/private/app:gone", registry.host()),
            &[("a", "alice", "bad"), ("b", "alice", CANARY_PASSWORD)],
        ))
        .await;
    assert_status!(absent, CheckStatus::Absent);
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
    let registry = started::tls_registry(&ca).await;
    let image = push_to(&registry, "secure/app", "v1", ImageFormat::DockerV2S2).await;

    let strict = CheckerConfig {
        request_timeout: Duration::from_secs(5),
        ..CheckerConfig::default()
    };
    let (without_ca, _m) = checker(&strict);
    let outcome = without_ca.check(&key(&image.reference, &[])).await;
    assert_status!(outcome, CheckStatus::RegistryUnavailable);
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
    assert_status!(outcome, CheckStatus::Available);

    let (skipping, _m) = checker(&CheckerConfig {
        skip_tls_verify: true,
        ..strict.clone()
    });
    let outcome = skipping.check(&key(&image.reference, &[])).await;
    assert_status!(outcome, CheckStatus::Available);

    let bad_ca = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(bad_ca.path(), "not a certificate").unwrap();
    let config = CheckerConfig {
        ca_paths: vec![bad_ca.path().to_path_buf()],
        ..strict
    };
    let error = CentralChecker::new(&config, Metrics::new(false).unwrap().checker.clone())
        .err()
        .unwrap();
    assert!(error.to_string().contains("no PEM certificates"), "{error}");
}

#[tokio::test]
async fn plain_http_only_when_allowed_and_ipv6_literals() {
    let registry = started::ipv6_registry().await;
    let image = push_to(&registry, "v6/app", "v1", ImageFormat::Oci).await;
    assert!(image.reference.starts_with("[::1]:"), "{}", image.reference);

    let (https_only, _m) = checker(&CheckerConfig {
        request_timeout: Duration::from_secs(5),
        ..CheckerConfig::default()
    });
    let outcome = https_only.check(&key(&image.reference, &[])).await;
    assert_status!(outcome, CheckStatus::RegistryUnavailable);

    let (plain, _m) = checker(&plain_config());
    let outcome = plain.check(&key(&image.reference, &[])).await;
    assert_status!(outcome, CheckStatus::Available);
}

#[tokio::test]
async fn registry_down_is_unavailable() {
    let mut registry = started::open_registry().await;
    let image = push_to(&registry, "app", "v1", ImageFormat::Oci).await;
    registry.stop();
    let (checker, metrics) = checker(&plain_config());
    let outcome = checker.check(&key(&image.reference, &[])).await;
    assert_status!(outcome, CheckStatus::RegistryUnavailable);
    assert_reason_contains!(outcome, "refused");
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
    assert_status!(outcome, CheckStatus::Available);
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
    let (checker, _metrics) = checker(&stub_config());
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
        assert_status!(outcome, expected, "{repo}");
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
    assert_reason_contains!(outcome, "MANIFEST_UNKNOWN: manifest unknown");
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
    assert_status!(outcome, CheckStatus::RateLimited);
    assert_reason_contains!(outcome, "paused for 120s (Retry-After)");
    let seen = stub.requests().len();

    // While paused, no request reaches the registry and the status stays rate_limited.
    let again = checker
        .check(&key(&format!("{}/busy/other:v2", stub.host()), &[]))
        .await;
    assert_status!(again, CheckStatus::RateLimited);
    assert_reason_contains!(again, "paused for another");
    assert_eq!(stub.requests().len(), seen);

    let until = paused_until(&metrics, &stub.host());
    let now = now_unix();
    assert!(
        until > now + 100.0 && until <= now + 121.0,
        "until={until} now={now}"
    );
}

#[tokio::test]
async fn bearer_token_flow_with_a_separate_token_service() {
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
    assert_status!(outcome, CheckStatus::AuthenticationFailure);
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
    // The credential went to the token service with basic auth.
    let token_requests = token_service.recorded();
    assert!(token_requests.iter().any(|r| {
        r.header("authorization")
            .is_some_and(|h| h.starts_with("Basic "))
    }));
}

#[tokio::test]
async fn identical_concurrent_checks_are_made_once() {
    let registry = started::open_registry().await;
    let image = push_to(&registry, "shared/app", "v1", ImageFormat::Oci).await;
    let (checker, metrics) = checker(&plain_config());
    let k = key(&image.reference, &[]);
    let (a, b, c) = tokio::join!(checker.check(&k), checker.check(&k), checker.check(&k));
    for outcome in [a, b, c] {
        assert_status!(outcome, CheckStatus::Available);
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
        ..stub_config()
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
        ..stub_config()
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
    assert_status!(outcome, CheckStatus::RegistryUnavailable);
    assert_reason_contains!(outcome, "timed out");
    // A timeout is no reason to try plain HTTP: one deadline, one attempt.
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

/// The series of the time until which checks of registry `host` are paused.
fn paused_until_series(host: &str) -> String {
    format!("pullwatch_registry_paused_until_timestamp_seconds{{registry=\"{host}\"}}")
}

/// The time until which checks of registry `host` are paused, as exported.
fn paused_until(metrics: &Metrics, host: &str) -> f64 {
    metric_value(metrics, &paused_until_series(host)).unwrap()
}

fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[tokio::test]
async fn token_endpoint_answers_are_classified_like_manifest_answers() {
    const SECRET: &str = "p4ssw0rd-value";
    let long_body = format!("upstream auth outage {}", "x".repeat(10_000));
    let cases = [
        (
            StubResponse::new(401).with_body(&format!("bad password {SECRET}")),
            CheckStatus::AuthenticationFailure,
        ),
        (StubResponse::new(403), CheckStatus::AuthorizationFailure),
        (
            StubResponse::new(429).with_header("Retry-After", "60"),
            CheckStatus::RateLimited,
        ),
        (
            StubResponse::new(503).with_body(&long_body),
            CheckStatus::RegistryUnavailable,
        ),
        (StubResponse::new(502), CheckStatus::RegistryUnavailable),
        (BearerRegistry::token_ok(300), CheckStatus::Available),
    ];
    for (answer, expected) in cases {
        let code = answer.status;
        let bearer = BearerRegistry::start(answer).await.unwrap();
        let (checker, metrics) = checker(&stub_config());
        let image = format!("{}/team/app:v1", bearer.host());
        let outcome = checker
            .check(&key(&image, &[("secret/ns/pull", "robot", SECRET)]))
            .await;
        assert_status!(outcome, expected, "token {code}");
        assert!(!outcome.reason.contains(SECRET), "{}", outcome.reason);
        assert!(outcome.reason.len() < 800, "{}", outcome.reason);
        if expected == CheckStatus::Available {
            assert_eq!(outcome.digest.as_deref(), Some(STUB_DIGEST));
            assert_eq!(
                outcome.media_type.as_deref(),
                Some("application/vnd.oci.image.manifest.v1+json")
            );
            continue;
        }
        assert!(
            outcome.reason.contains("token endpoint")
                && outcome.reason.contains(&code.to_string())
                && outcome.reason.contains("secret/ns/pull"),
            "{}",
            outcome.reason
        );
        if expected == CheckStatus::RateLimited {
            // The token endpoint's Retry-After pauses the registry: the next check sends
            // nothing, to the registry or to its token endpoint.
            assert_reason_contains!(outcome, "paused for 60s (Retry-After)");
            let sent = (bearer.manifest_requests(), bearer.token_requests());
            let again = checker
                .check(&key(&format!("{}/team/other:v1", bearer.host()), &[]))
                .await;
            assert_status!(again, CheckStatus::RateLimited);
            assert_eq!((bearer.manifest_requests(), bearer.token_requests()), sent);
            let until = paused_until(&metrics, &bearer.host());
            assert!(until > now_unix() + 50.0, "until={until}");
        }
    }
}

#[tokio::test]
async fn a_burst_of_429s_is_one_pause_and_queued_checks_never_reach_the_registry() {
    use pullwatch_aggregator::checker::limits::RegistryLimits;
    use std::num::NonZeroU32;

    let stub = StubServer::start(|_, _| StubResponse::new(429))
        .await
        .unwrap();
    let config = CheckerConfig {
        max_concurrent_checks: 32,
        registry_limits: RegistryLimits {
            max_concurrency: 8,
            requests_per_second: NonZeroU32::new(1000).unwrap(),
        },
        ..plain_config()
    };
    let (checker, metrics) = checker(&config);
    let keys: Vec<CheckKey> = (0..40)
        .map(|i| key(&format!("{}/burst/app:v{i}", stub.host()), &[]))
        .collect();
    let outcomes = futures::future::join_all(keys.iter().map(|k| checker.check(k))).await;
    for outcome in &outcomes {
        assert_status!(outcome, CheckStatus::RateLimited);
    }
    let sent = stub.requests().len();
    assert!(
        (1..=8).contains(&sent),
        "at most the 8 checks in flight reach a registry that said 429, got {sent}"
    );
    // One pause of 30 s for the whole burst, not 30 s doubled per answer.
    let until = paused_until(&metrics, &stub.host());
    let now = now_unix();
    assert!(
        until > now + 25.0 && until <= now + 31.0,
        "until={until} now={now}"
    );
    assert_eq!(
        metric_value(
            &metrics,
            &format!(
                "pullwatch_registry_rate_limited_total{{registry=\"{}\"}}",
                stub.host()
            ),
        ),
        Some(sent as f64)
    );
}

#[tokio::test]
async fn the_pause_ends_and_its_metric_returns_to_zero() {
    let stub = StubServer::start(|_, _| StubResponse::new(429).with_header("Retry-After", "1"))
        .await
        .unwrap();
    let (checker, metrics) = checker(&plain_config());
    let series = paused_until_series(&stub.host());
    let outcome = checker
        .check(&key(&format!("{}/app:v1", stub.host()), &[]))
        .await;
    assert_status!(outcome, CheckStatus::RateLimited);
    assert!(metric_value(&metrics, &series).unwrap() > now_unix());
    let sent = stub.requests().len();
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert_eq!(metric_value(&metrics, &series), Some(0.0));
    // After the pause the registry is asked again.
    let outcome = checker
        .check(&key(&format!("{}/app:v2", stub.host()), &[]))
        .await;
    assert_status!(outcome, CheckStatus::RateLimited);
    assert!(stub.requests().len() > sent);
}

#[tokio::test]
async fn a_bearer_registry_costs_one_token_per_repository_and_one_head_per_check() {
    let bearer = BearerRegistry::start(BearerRegistry::token_ok(300))
        .await
        .unwrap();
    let (checker, _m) = checker(&stub_config());
    let host = bearer.host();
    let check = |image: String| {
        let k = key(&image, &[("secret/ns/s", "u", "p")]);
        let checker = &checker;
        async move { checker.check(&k).await }
    };
    // Each check, and what the registry and its token service have seen after it, in
    // (manifest requests, token requests).
    for (image, expected, requests) in [
        // First contact: the challenge is learned (one 401), one token, one HEAD.
        ("team/a:v1", CheckStatus::Available, (2, 1)),
        // Same repository: the cached token, one HEAD.
        ("team/a:v2", CheckStatus::Available, (3, 1)),
        // Another repository: its token straight away (the challenge is known), one HEAD.
        ("team/b:v1", CheckStatus::Available, (4, 2)),
        ("team/b:missing", CheckStatus::Absent, (5, 2)),
    ] {
        assert_status!(check(format!("{host}/{image}")).await, expected, "{image}");
        let sent = (bearer.manifest_requests(), bearer.token_requests());
        assert_eq!(sent, requests, "{image}");
    }
    // Every request went over plain HTTP with the credential only to the token service.
    for request in bearer.registry.recorded() {
        assert!(
            !request
                .header("authorization")
                .is_some_and(|a| a.starts_with("Basic ")),
            "the registry asked for a token, not for the password"
        );
    }
    assert!(bearer.tokens.recorded().iter().all(|r| {
        r.path.contains("scope=repository%3Ateam%2F") && r.path.contains("service=stub-registry")
    }));
}

#[tokio::test]
async fn one_deadline_covers_the_token_request() {
    // A token endpoint that accepts and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent = listener.local_addr().unwrap();
    let held = Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = held.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            keep.lock().unwrap().push(stream);
        }
    });
    let realm = format!("http://{silent}/token");
    let registry = StubServer::start(move |_, _| {
        StubResponse::new(401)
            .with_header("WWW-Authenticate", &format!(r#"Bearer realm="{realm}""#))
    })
    .await
    .unwrap();
    let config = CheckerConfig {
        request_timeout: Duration::from_secs(1),
        ..plain_config()
    };
    let (checker, _m) = checker(&config);
    let started = std::time::Instant::now();
    let outcome = checker
        .check(&key(
            &format!("{}/team/app:v1", registry.host()),
            &[("a", "u", "p"), ("b", "u", "q")],
        ))
        .await;
    assert_status!(outcome, CheckStatus::RegistryUnavailable);
    assert!(
        outcome.reason.contains("token endpoint") && outcome.reason.contains("timed out"),
        "{}",
        outcome.reason
    );
    // Both credentials together stay within the one deadline.
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn plain_http_only_after_a_refusal_or_a_plain_http_answer() {
    let plain = StubServer::start(|_, path| {
        if path.contains("/manifests/") {
            StubResponse::new(200).with_header("Docker-Content-Digest", STUB_DIGEST)
        } else {
            StubResponse::new(404)
        }
    })
    .await
    .unwrap();
    let image = format!("{}/team/app:v1", plain.host());
    let (allowed, _m) = checker(&stub_config());
    let outcome = allowed.check(&key(&image, &[])).await;
    assert_status!(outcome, CheckStatus::Available);
    assert_eq!(outcome.digest.as_deref(), Some(STUB_DIGEST));

    let (https_only, _m) = checker(&CheckerConfig {
        request_timeout: Duration::from_secs(5),
        ..CheckerConfig::default()
    });
    let outcome = https_only.check(&key(&image, &[])).await;
    assert_status!(outcome, CheckStatus::RegistryUnavailable);
    assert_reason_contains!(outcome, "does not speak TLS");

    // A certificate error is never a reason to go plain, even when allowed.
    let ca = TestCa::new().unwrap();
    let tls = started::tls_registry(&ca).await;
    let pushed = push_to(&tls, "secure/app", "v1", ImageFormat::Oci).await;
    let outcome = allowed.check(&key(&pushed.reference, &[])).await;
    assert_status!(outcome, CheckStatus::RegistryUnavailable);
    assert!(
        outcome.reason.contains("TLS failed") && outcome.reason.contains("--capath"),
        "{}",
        outcome.reason
    );
    assert!(
        !tls.log().contains("HTTP request to an HTTPS server"),
        "no plain-HTTP request after a certificate error: {}",
        tls.log()
    );
}

#[tokio::test]
async fn manifests_by_digest_are_fetched_verified_and_capped() {
    use pullwatch::registry::{
        ClientConfig, Deadline, Endpoint, NoObserver, RegistryClient, Scheme,
    };

    let registry = started::open_registry().await;
    let index = push_to(&registry, "multi/app", "v1", ImageFormat::OciIndex).await;
    let (checker, _m) = checker(&plain_config());
    let outcome = checker.check(&key(&index.reference, &[])).await;
    assert_status!(outcome, CheckStatus::Available);
    assert_eq!(outcome.digest.as_deref(), Some(index.digest.as_str()));
    assert_eq!(
        outcome.media_type.as_deref(),
        Some("application/vnd.oci.image.index.v1+json")
    );

    let client = RegistryClient::new(ClientConfig::default(), Arc::new(NoObserver));
    let http = reqwest::Client::new();
    let host = registry.host();
    let endpoint = Endpoint::new(&http, Scheme::Http, &host);
    let deadline = Deadline::after(Duration::from_secs(5));
    let manifest = client
        .fetch_manifest(&endpoint, "multi/app", &index.digest, None, &deadline)
        .await
        .unwrap();
    assert_eq!(manifest.digest, index.digest);
    let parsed: serde_json::Value = serde_json::from_slice(&manifest.body).unwrap();
    assert!(parsed["manifests"].is_array(), "{parsed}");
    let missing = client
        .fetch_manifest(
            &endpoint,
            "multi/app",
            &format!("sha256:{}", "0".repeat(64)),
            None,
            &deadline,
        )
        .await
        .unwrap_err();
    assert_eq!(missing.outcome.status, CheckStatus::Absent);

    // A manifest answered without Docker-Content-Digest is hashed; beyond 4 MiB it is
    // refused, as containerd refuses it.
    let big = "x".repeat(5 << 20);
    let stub = StubServer::start(move |method, path| match path {
        p if p.contains("/small/") => StubResponse::new(200).with_body("{}"),
        _ if method == http::Method::HEAD => StubResponse::new(200),
        _ => StubResponse::new(200).with_body(&big),
    })
    .await
    .unwrap();
    let (stubbed, _m) = self::checker(&stub_config());
    let small = stubbed
        .check(&key(&format!("{}/small/app:v1", stub.host()), &[]))
        .await;
    assert_status!(small, CheckStatus::Available);
    assert_eq!(
        small.digest.as_deref(),
        Some("sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a")
    );
    let huge = stubbed
        .check(&key(&format!("{}/huge/app:v1", stub.host()), &[]))
        .await;
    assert_status!(huge, CheckStatus::UnknownError);
    assert_reason_contains!(huge, "4 MiB");
}

#[tokio::test]
async fn bearer_tokens_are_evicted_when_they_expire() {
    use pullwatch::registry::{
        ClientConfig, Deadline, Endpoint, NoObserver, RegistryClient, Scheme,
    };

    // expires_in 11: usable for 1 s (10 s are kept as a margin).
    let bearer = BearerRegistry::start(BearerRegistry::token_ok(11))
        .await
        .unwrap();
    let client = RegistryClient::new(ClientConfig::default(), Arc::new(NoObserver));
    let http = reqwest::Client::new();
    let host = bearer.host();
    let endpoint = Endpoint::new(&http, Scheme::Http, &host);
    let check = |repository: &'static str| {
        let (client, endpoint) = (&client, &endpoint);
        async move {
            let deadline = Deadline::after(Duration::from_secs(5));
            client
                .check_manifest(endpoint, repository, "v1", None, &deadline)
                .await
        }
    };
    assert!(check("team/a").await.outcome.is_available());
    assert_eq!(client.cached_tokens(), 1);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(check("team/b").await.outcome.is_available());
    assert_eq!(
        client.cached_tokens(),
        1,
        "the expired token of team/a is gone"
    );
    assert!(check("team/a").await.outcome.is_available());
    assert_eq!(
        bearer.token_requests(),
        3,
        "an expired token is never reused"
    );
}

/// The requests of the registry's access log since `start`, as `METHOD path status`.
fn access_log(registry: &Registry, start: usize) -> Vec<String> {
    registry.log()[start..]
        .lines()
        .filter_map(|line| {
            let (_, rest) = line.split_once("\"")?;
            let (request, rest) = rest.split_once("\" ")?;
            let status = rest.split_whitespace().next()?;
            let mut parts = request.split_whitespace();
            let (method, path) = (parts.next()?, parts.next()?);
            path.starts_with("/v2/")
                .then(|| format!("{method} {path} {status}"))
        })
        .collect()
}

/// The walk's cost, counted in the registry's own access log: a first check reads the
/// index, the child, the config and the first byte of each layer; a second one within
/// `--blob-check-interval` is one `HEAD`, and never `GET`s a manifest again; once the
/// interval passed, the blobs are verified again (and a deleted layer is seen), while
/// the manifests and config stay read.
#[tokio::test]
async fn the_walk_costs_one_head_per_check_in_steady_state() {
    let registry = started::open_registry().await;
    let index = push_to(&registry, "walk/app", "v1", ImageFormat::OciIndex).await;
    let amd64 = &index.platforms[0];
    assert_eq!(amd64.architecture, "amd64");
    let interval = Duration::from_secs(2);
    let (checker, _m) = checker(&CheckerConfig {
        walk: WalkSettings {
            blob_check_interval: interval,
            ..WalkSettings::default()
        },
        platforms: vec!["linux/amd64".parse().unwrap()],
        ..plain_config()
    });
    let key = key(&index.reference, &[]);

    let start = registry.log().len();
    let first = checker.check(&key).await;
    assert_status!(first, CheckStatus::Available);
    let requests = access_log(&registry, start);
    let kinds: Vec<String> = requests
        .iter()
        .map(|r| {
            let mut p = r.split_whitespace();
            let (method, path, status) = (p.next().unwrap(), p.next().unwrap(), p.next().unwrap());
            let kind = if path.contains("/manifests/") {
                "manifests"
            } else {
                "blobs"
            };
            format!("{method} {kind} {status}")
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "HEAD manifests 200",
            "GET manifests 200",
            "GET manifests 200",
            "GET blobs 200",
            "GET blobs 206"
        ],
        "{requests:#?}"
    );
    assert!(
        requests
            .iter()
            .any(|r| r.starts_with(&format!("GET /v2/walk/app/manifests/{}", amd64.digest))),
        "the amd64 child is read: {requests:#?}"
    );

    let start = registry.log().len();
    for _ in 0..3 {
        let again = checker.check(&key).await;
        assert_status!(again, CheckStatus::Available);
    }
    assert_eq!(
        access_log(&registry, start),
        [
            "HEAD /v2/walk/app/manifests/v1 200",
            "HEAD /v2/walk/app/manifests/v1 200",
            "HEAD /v2/walk/app/manifests/v1 200"
        ],
        "steady state: one HEAD per check"
    );

    // A layer of the amd64 child goes; within the interval that is not seen (the
    // documented cost trade-off), after it, it is.
    let child = registry
        .get_manifest("walk/app", &amd64.digest)
        .await
        .unwrap();
    let child: serde_json::Value = serde_json::from_slice(&child.body).unwrap();
    let layer = child["layers"][0]["digest"].as_str().unwrap().to_string();
    let deleted = registry
        .request(
            http::Method::DELETE,
            &format!("/v2/walk/app/blobs/{layer}"),
            &[],
            Vec::new(),
        )
        .await
        .unwrap();
    assert_eq!(deleted.status, 202, "{}", deleted.text());
    tokio::time::sleep(interval + Duration::from_millis(200)).await;
    let start = registry.log().len();
    let after = checker.check(&key).await;
    assert_status!(after, CheckStatus::Absent);
    assert!(
        after
            .reason
            .contains(&format!("layer 1 of 1 ({layer}) not found for linux/amd64")),
        "{}",
        after.reason
    );
    let requests = access_log(&registry, start);
    assert!(
        requests
            .iter()
            .all(|r| !r.starts_with("GET /v2/walk/app/manifests/")),
        "kept manifests are not fetched again: {requests:#?}"
    );
    assert!(
        requests
            .iter()
            .any(|r| r.starts_with(&format!("HEAD /v2/walk/app/manifests/{}", amd64.digest))),
        "the child's existence is verified: {requests:#?}"
    );
}

/// Two tags of one index checked at once (two checks, not joined): the index and its
/// child are each read once, the second check waiting for the first's read.
#[tokio::test]
async fn concurrent_checks_read_each_document_once() {
    let registry = started::open_registry().await;
    let index = push_to(&registry, "twice/app", "v1", ImageFormat::OciIndex).await;
    registry.move_tag("twice/app", "v1", "v2").await.unwrap();
    let (checker, _m) = checker(&CheckerConfig {
        platforms: vec!["linux/amd64".parse().unwrap()],
        ..plain_config()
    });
    let start = registry.log().len();
    let v2 = index.reference.replace(":v1", ":v2");
    let (first, second) = (key(&index.reference, &[]), key(&v2, &[]));
    let (a, b) = tokio::join!(checker.check(&first), checker.check(&second));
    assert!(a.is_available() && b.is_available(), "{a:?} {b:?}");
    let requests = access_log(&registry, start);
    for digest in [&index.digest, &index.platforms[0].digest] {
        let gets = requests
            .iter()
            .filter(|r| r.starts_with(&format!("GET /v2/twice/app/manifests/{digest}")))
            .count();
        assert_eq!(gets, 1, "{digest}: {requests:#?}");
    }
}
