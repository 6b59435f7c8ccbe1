//! Registry behaviours that both checkers (the aggregator's central checks and the
//! agent's resolve mode) must classify alike: the same status for the same registry
//! behaviour. Each test crate runs its binary against these and expects `expected`.

use std::any::Any;

use anyhow::Result;

use crate::bearer::BearerRegistry;
use crate::ca::TestCa;
use crate::push::{ImageFormat, push_image};
use crate::registry::{Registry, RegistryOptions};
use crate::serve::{LoopbackListener, LoopbackServer};
use crate::stub::{StubResponse, StubServer};

/// The pull secret's username for every behaviour.
pub const BEHAVIOUR_USER: &str = "robot";
/// The pull secret's password: never to appear in any output.
pub const BEHAVIOUR_PASSWORD: &str = "s3cr3t-pull-value";

/// One registry behaviour and the status it must produce.
pub struct Behaviour {
    /// A short name, usable as a Kubernetes object name.
    pub name: &'static str,
    /// The image to check.
    pub image: String,
    /// The registry's `host:port`.
    pub host: String,
    /// The operator configured HTTPS for the registry (aggregator: no
    /// `--allow-plain-http`; agent: a hosts.toml `server = "https://..."`). Otherwise
    /// plain HTTP is allowed (aggregator: `--allow-plain-http`; agent: containerd's
    /// default for a loopback registry).
    pub https: bool,
    /// The expected status.
    pub expected: &'static str,
    /// Texts the reason must contain.
    pub reason_has: Vec<&'static str>,
    _servers: Vec<Box<dyn Any + Send>>,
}

impl std::fmt::Debug for Behaviour {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Behaviour")
            .field("name", &self.name)
            .field("image", &self.image)
            .field("expected", &self.expected)
            .finish()
    }
}

async fn token_behaviour(
    name: &'static str,
    answer: StubResponse,
    expected: &'static str,
    reason_has: Vec<&'static str>,
) -> Result<Behaviour> {
    let bearer = BearerRegistry::start(answer).await?;
    let host = bearer.host();
    Ok(Behaviour {
        name,
        image: format!("{host}/team/app:v1"),
        host,
        https: false,
        expected,
        reason_has,
        _servers: vec![Box::new(bearer)],
    })
}

/// A TCP server that accepts connections and never says a word. Stops on drop.
pub struct SilentServer {
    server: LoopbackServer,
}

impl SilentServer {
    /// Binds a free loopback port. Must be called inside a tokio runtime.
    pub async fn start() -> Result<SilentServer> {
        let listener = LoopbackListener::bind("the silent server").await?;
        // Each connection is held open, unanswered, until the server drops.
        let server = listener.serve(|stream, _peer| async move {
            let _held = stream;
            std::future::pending::<()>().await
        });
        Ok(SilentServer { server })
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        self.server.addr().to_string()
    }
}

/// Starts every behaviour (stub servers and a TLS registry) on loopback.
pub async fn registry_behaviours() -> Result<Vec<Behaviour>> {
    let mut all = vec![
        token_behaviour(
            "token-401",
            StubResponse::new(401)
                .with_body(&format!("invalid password {BEHAVIOUR_PASSWORD} for robot")),
            "authentication_failure",
            vec!["token endpoint", "401"],
        )
        .await?,
        token_behaviour(
            "token-403",
            StubResponse::new(403),
            "authorization_failure",
            vec!["token endpoint", "403"],
        )
        .await?,
        token_behaviour(
            "token-429",
            StubResponse::new(429).with_header("Retry-After", "60"),
            "rate_limited",
            vec!["token endpoint", "429", "Retry-After"],
        )
        .await?,
        token_behaviour(
            "token-503",
            StubResponse::new(503).with_body(&format!("auth backend down {}", "x".repeat(20_000))),
            "registry_unavailable",
            vec!["token endpoint", "503", "auth backend down"],
        )
        .await?,
        token_behaviour(
            "token-ok",
            BearerRegistry::token_ok(300),
            "available",
            vec![],
        )
        .await?,
    ];

    // A token endpoint that accepts the connection and never answers: the check's one
    // deadline ends it (run the binaries with a short registry timeout).
    let silent = SilentServer::start().await?;
    let realm = format!("http://{}/token", silent.host());
    let registry = StubServer::start(move |_, _| {
        StubResponse::new(401).with_header(
            "WWW-Authenticate",
            &format!(r#"Bearer realm="{realm}",service="stub-registry""#),
        )
    })
    .await?;
    let host = registry.host();
    all.push(Behaviour {
        name: "token-silent",
        image: format!("{host}/team/app:v1"),
        host,
        https: false,
        expected: "registry_unavailable",
        reason_has: vec!["token endpoint", "timed out"],
        _servers: vec![Box::new(registry), Box::new(silent)],
    });

    // A port that speaks plain HTTP where HTTPS is configured: no downgrade.
    let plain = StubServer::start(|_, _| StubResponse::new(200)).await?;
    let host = plain.host();
    all.push(Behaviour {
        name: "plain-port",
        image: format!("{host}/team/app:v1"),
        host,
        https: true,
        expected: "registry_unavailable",
        reason_has: vec!["does not speak TLS"],
        _servers: vec![Box::new(plain)],
    });

    // A registry whose certificate no configured CA signed.
    let ca = TestCa::new()?;
    let tls = Registry::start(RegistryOptions::tls(&ca)).await?;
    let pushed = push_image(&tls, "secure/app", "v1", ImageFormat::Oci).await?;
    let host = tls.host();
    all.push(Behaviour {
        name: "bad-certificate",
        image: pushed.reference.clone(),
        host,
        https: true,
        expected: "registry_unavailable",
        reason_has: vec!["TLS failed", "certificate"],
        _servers: vec![Box::new(tls), Box::new(ca)],
    });
    Ok(all)
}
