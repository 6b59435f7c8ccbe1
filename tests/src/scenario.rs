//! A cluster scenario in one call: the API target (the test API server, or the real
//! cluster `PULLWATCH_TEST_KUBECONFIG` names), a real registry, images pushed to it,
//! namespaces and objects applied. Each step panics with its context, as a test step
//! does, so a test reads as the scenario it sets up:
//!
//! ```ignore
//! let cluster = ClusterScenario::start().await;
//! let web = cluster.image("shop/web", "v1", ImageFormat::Oci).await;
//! cluster.namespace("pw-watch").await;
//! cluster.apply(&deployment("pw-watch", "web", &[&web])).await;
//! ```

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::de::DeserializeOwned;

use crate::{
    ApiTarget, ClusterObject, ImageFormat, PushedImage, Registry, RegistryOptions, push_image,
};

/// The API target and one real registry, on loopback; both stop on drop.
pub struct ClusterScenario {
    target: ApiTarget,
    registry: Registry,
}

impl ClusterScenario {
    /// The API target from the environment and an anonymous registry.
    pub async fn start() -> ClusterScenario {
        ClusterScenario::with_registry(RegistryOptions::default()).await
    }

    /// The API target from the environment and a registry started with `options`
    /// (e.g. htpasswd credentials).
    pub async fn with_registry(options: RegistryOptions) -> ClusterScenario {
        let target = ApiTarget::from_env()
            .await
            .unwrap_or_else(|e| panic!("starting the API target: {e:#}"));
        let registry = Registry::start(options)
            .await
            .unwrap_or_else(|e| panic!("starting the registry: {e:#}"));
        ClusterScenario { target, registry }
    }

    /// The API target, for its hooks (`test_server`, `forbid`, `requests`...) and for
    /// binaries under test (`kubeconfig`).
    pub fn target(&self) -> &ApiTarget {
        &self.target
    }

    /// The scenario's registry.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Pushes a generated image as `repo:tag` to the scenario's registry.
    pub async fn push(&self, repo: &str, tag: &str, format: ImageFormat) -> PushedImage {
        push_to(&self.registry, repo, tag, format).await
    }

    /// Pushes a generated image as `repo:tag`; its `host/repo:tag` reference.
    pub async fn image(&self, repo: &str, tag: &str, format: ImageFormat) -> String {
        self.push(repo, tag, format).await.reference
    }

    /// Creates each namespace unless it exists.
    pub async fn namespaces(&self, names: &[&str]) {
        for name in names {
            self.target
                .ensure_namespace(name)
                .await
                .unwrap_or_else(|e| panic!("creating namespace {name}: {e:#}"));
        }
    }

    /// Creates the namespace unless it exists.
    pub async fn namespace(&self, name: &str) {
        self.namespaces(&[name]).await;
    }

    /// Creates or replaces the object (see [`ApiTarget::apply`]); the object as stored.
    pub async fn apply<K: ClusterObject>(&self, obj: &K) -> K {
        self.target
            .apply(obj)
            .await
            .unwrap_or_else(|e| panic!("applying {} {}: {e:#}", K::KIND, describe(obj)))
    }

    /// Replaces the object's `status` (see [`ApiTarget::apply_status`]).
    pub async fn apply_status<K: ClusterObject>(&self, obj: &K) -> K {
        self.target.apply_status(obj).await.unwrap_or_else(|e| {
            panic!(
                "applying the status of {} {}: {e:#}",
                K::KIND,
                describe(obj)
            )
        })
    }

    /// Deletes the object (`namespace` empty for cluster-scoped kinds); whether it existed.
    pub async fn delete<K>(&self, namespace: &str, name: &str) -> bool
    where
        K: k8s_openapi::Resource + DeserializeOwned,
    {
        self.target
            .delete::<K>(namespace, name)
            .await
            .unwrap_or_else(|e| panic!("deleting {} {namespace}/{name}: {e:#}", K::KIND))
    }

    /// On a real cluster, deletes the test's namespace (best effort); the test API server
    /// goes with the test.
    pub async fn remove_namespace_if_real(&self, name: &str) {
        if self.target.is_real() {
            let _ = self
                .target
                .delete::<k8s_openapi::api::core::v1::Namespace>("", name)
                .await;
        }
    }
}

/// Pushes a generated image as `repo:tag` to `registry`, panicking with the context.
pub async fn push_to(
    registry: &Registry,
    repo: &str,
    tag: &str,
    format: ImageFormat,
) -> PushedImage {
    push_image(registry, repo, tag, format)
        .await
        .unwrap_or_else(|e| panic!("pushing {repo}:{tag} to {}: {e:#}", registry.host()))
}

fn describe<K: k8s_openapi::Metadata<Ty = ObjectMeta>>(obj: &K) -> String {
    let meta = obj.metadata();
    format!(
        "{}/{}",
        meta.namespace.as_deref().unwrap_or_default(),
        meta.name.as_deref().unwrap_or_default()
    )
}
