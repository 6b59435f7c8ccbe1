//! The parts a test starts most, each in one call that panics with its context, as a
//! test step does, and assertions on check outcomes: so the first lines of a test say
//! which registry and which node it runs against, not how they are started.
//!
//! ```ignore
//! let registry = started::private_registry(USER, PASSWORD).await;
//! let image = push_to(&registry, "private/app", "v1", ImageFormat::Oci).await;
//! let node = started::node_with_credentials(&registry, USER, PASSWORD).await;
//! assert_status!(checker.check(&image.reference, CheckMode::Pull, &[]).await, CheckStatus::Available);
//! ```

use crate::{Containerd, ContainerdOptions, Registry, RegistryOptions, TestCa};

/// A registry started with `options`.
pub async fn registry(options: RegistryOptions) -> Registry {
    Registry::start(options)
        .await
        .unwrap_or_else(|e| panic!("starting the registry: {e:#}"))
}

/// An anonymous registry on `127.0.0.1`.
pub async fn open_registry() -> Registry {
    registry(RegistryOptions::default()).await
}

/// A registry only `user` with `password` may use (htpasswd).
pub async fn private_registry(user: &str, password: &str) -> Registry {
    registry(RegistryOptions::htpasswd(user, password)).await
}

/// A registry serving HTTPS with a certificate `ca` issued.
pub async fn tls_registry(ca: &TestCa) -> Registry {
    registry(RegistryOptions::tls(ca)).await
}

/// An anonymous registry on `[::1]`.
pub async fn ipv6_registry() -> Registry {
    registry(RegistryOptions {
        ipv6: true,
        ..Default::default()
    })
    .await
}

/// A node's containerd with no credentials of its own.
pub async fn bare_node() -> Containerd {
    Containerd::start(ContainerdOptions::default())
        .await
        .unwrap_or_else(|e| panic!("starting containerd: {e:#}"))
}

/// A node's containerd holding `user:password` for `registry` in its own config
/// (`registry.configs` auth: node credentials).
pub async fn node_with_credentials(registry: &Registry, user: &str, password: &str) -> Containerd {
    Containerd::start(ContainerdOptions::with_credentials(
        &registry.host(),
        user,
        password,
    ))
    .await
    .unwrap_or_else(|e| panic!("starting containerd with credentials: {e:#}"))
}

/// Asserts a check's `status` (of any outcome or report with `status` and `reason`
/// fields), printing its reason, after the optional context, when it differs.
#[macro_export]
macro_rules! assert_status {
    ($outcome:expr, $expected:expr $(,)?) => {{
        let outcome = &$outcome;
        assert_eq!(outcome.status, $expected, "{}", outcome.reason);
    }};
    ($outcome:expr, $expected:expr, $($context:tt)+) => {{
        let outcome = &$outcome;
        assert_eq!(
            outcome.status,
            $expected,
            "{}: {}",
            format_args!($($context)+),
            outcome.reason
        );
    }};
}

/// Asserts a check's `reason` contains each of the strings, printing it when not.
#[macro_export]
macro_rules! assert_reason_contains {
    ($outcome:expr, $($needle:expr),+ $(,)?) => {{
        let outcome = &$outcome;
        $(
            assert!(
                outcome.reason.contains(&*$needle),
                "the reason lacks {:?}: {}",
                $needle,
                outcome.reason
            );
        )+
    }};
}
