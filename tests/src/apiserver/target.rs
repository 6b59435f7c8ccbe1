//! The same tests against the test API server or a real cluster.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, PostParams};
use kube::discovery::Scope;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::TestApiServer;

/// Points tests at a real cluster: the path of a kubeconfig.
pub const TEST_KUBECONFIG_ENV: &str = "PULLWATCH_TEST_KUBECONFIG";

/// Where tests send their Kubernetes objects: the test API server, or a real cluster when
/// `PULLWATCH_TEST_KUBECONFIG` names a kubeconfig. Creates, updates and deletes go through
/// `kube::Api` in both cases; hooks only the test server has return None on a real cluster
/// (tests that need them should skip).
pub enum ApiTarget {
    /// The in-process test API server.
    Test(TestApiServer),
    /// A real cluster.
    Real(kube::Client),
}

impl std::fmt::Debug for ApiTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApiTarget::Test(s) => f.debug_tuple("Test").field(s).finish(),
            ApiTarget::Real(_) => f.write_str("Real"),
        }
    }
}

fn api_for<K: k8s_openapi::Resource>(client: kube::Client, ns: &str) -> Api<DynamicObject> {
    let ar = ApiResource {
        group: K::GROUP.to_owned(),
        version: K::VERSION.to_owned(),
        api_version: K::API_VERSION.to_owned(),
        kind: K::KIND.to_owned(),
        plural: K::URL_PATH_SEGMENT.to_owned(),
    };
    if ns.is_empty() {
        Api::dynamic(client, &ar, &Scope::Cluster)
    } else {
        Api::dynamic(client, &ar, &Scope::Namespaced).constrain(ns)
    }
}

fn to_dynamic<K: Serialize>(obj: &K) -> Result<DynamicObject> {
    Ok(serde_json::from_value(serde_json::to_value(obj)?)?)
}

fn from_dynamic<K: DeserializeOwned>(obj: DynamicObject) -> Result<K> {
    Ok(serde_json::from_value(serde_json::to_value(obj)?)?)
}

fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

/// An object the target can store: a Kubernetes resource with object metadata that
/// (de)serializes.
pub trait ClusterObject:
    k8s_openapi::Resource + k8s_openapi::Metadata<Ty = ObjectMeta> + Serialize + DeserializeOwned
{
}

impl<K> ClusterObject for K where
    K: k8s_openapi::Resource
        + k8s_openapi::Metadata<Ty = ObjectMeta>
        + Serialize
        + DeserializeOwned
{
}

impl ApiTarget {
    /// A real cluster if `PULLWATCH_TEST_KUBECONFIG` is set, else a fresh test API server.
    pub async fn from_env() -> Result<ApiTarget> {
        match std::env::var_os(TEST_KUBECONFIG_ENV) {
            Some(path) if !path.is_empty() => {
                let kc = kube::config::Kubeconfig::read_from(&path)
                    .with_context(|| format!("reading {}", Path::new(&path).display()))?;
                let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
                    .await
                    .context("loading the kubeconfig")?;
                Ok(ApiTarget::Real(kube::Client::try_from(config)?))
            }
            _ => Ok(ApiTarget::Test(TestApiServer::start().await?)),
        }
    }

    /// A client for the target.
    pub fn client(&self) -> kube::Client {
        match self {
            ApiTarget::Test(s) => s.kube_client(),
            ApiTarget::Real(c) => c.clone(),
        }
    }

    /// The test server, when that is the target.
    pub fn test_server(&self) -> Option<&TestApiServer> {
        match self {
            ApiTarget::Test(s) => Some(s),
            ApiTarget::Real(_) => None,
        }
    }

    /// Whether the target is a real cluster.
    pub fn is_real(&self) -> bool {
        matches!(self, ApiTarget::Real(_))
    }

    /// A kubeconfig for binaries under test: written into `dir` for the test server, the
    /// `PULLWATCH_TEST_KUBECONFIG` file for a real cluster.
    pub fn kubeconfig(&self, dir: &Path) -> Result<PathBuf> {
        match self {
            ApiTarget::Test(s) => s.kubeconfig(dir),
            ApiTarget::Real(_) => std::env::var_os(TEST_KUBECONFIG_ENV)
                .map(PathBuf::from)
                .context("PULLWATCH_TEST_KUBECONFIG is not set"),
        }
    }

    /// Creates the namespace if it does not exist.
    pub async fn ensure_namespace(&self, name: &str) -> Result<()> {
        let ns = super::namespace(name, &[]);
        let api = api_for::<k8s_openapi::api::core::v1::Namespace>(self.client(), "");
        match api.create(&PostParams::default(), &to_dynamic(&ns)?).await {
            Ok(_) => Ok(()),
            Err(e) if is_status(&e, 409) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("creating namespace {name}")),
        }
    }

    /// Creates the object, or replaces it (at its current resourceVersion) if it exists.
    /// Namespaced objects need their namespace to exist (see
    /// [`ensure_namespace`](Self::ensure_namespace)). As on a real server, `status` is not
    /// taken from the object: use [`apply_status`](Self::apply_status).
    pub async fn apply<K: ClusterObject>(&self, obj: &K) -> Result<K> {
        let ns = obj.metadata().namespace.clone().unwrap_or_default();
        let name = obj.metadata().name.clone().unwrap_or_default();
        let api = api_for::<K>(self.client(), &ns);
        let mut dynamic = to_dynamic(obj)?;
        dynamic.metadata.resource_version = None;
        match api.create(&PostParams::default(), &dynamic).await {
            Ok(created) => return from_dynamic(created),
            Err(e) if is_status(&e, 409) => {}
            Err(e) => return Err(e).with_context(|| format!("creating {} {ns}/{name}", K::KIND)),
        }
        for _ in 0..5 {
            let current = api
                .get(&name)
                .await
                .with_context(|| format!("getting {} {ns}/{name}", K::KIND))?;
            dynamic.metadata.resource_version = current.metadata.resource_version;
            match api.replace(&name, &PostParams::default(), &dynamic).await {
                Ok(replaced) => return from_dynamic(replaced),
                Err(e) if is_status(&e, 409) => continue,
                Err(e) => {
                    return Err(e).with_context(|| format!("replacing {} {ns}/{name}", K::KIND));
                }
            }
        }
        bail!("replacing {} {ns}/{name}: conflicts persisted", K::KIND)
    }

    /// Replaces the object's `status` (the `/status` subresource).
    pub async fn apply_status<K: ClusterObject>(&self, obj: &K) -> Result<K> {
        let ns = obj.metadata().namespace.clone().unwrap_or_default();
        let name = obj.metadata().name.clone().unwrap_or_default();
        let api = api_for::<K>(self.client(), &ns);
        let mut dynamic = to_dynamic(obj)?;
        for _ in 0..5 {
            let current = api.get(&name).await?;
            dynamic.metadata.resource_version = current.metadata.resource_version;
            match api
                .replace_status(&name, &PostParams::default(), &dynamic)
                .await
            {
                Ok(replaced) => return from_dynamic(replaced),
                Err(e) if is_status(&e, 409) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        bail!(
            "replacing the status of {} {ns}/{name}: conflicts persisted",
            K::KIND
        )
    }

    /// The object, or None if it does not exist (`namespace` empty for cluster-scoped kinds).
    pub async fn get<K>(&self, namespace: &str, name: &str) -> Result<Option<K>>
    where
        K: k8s_openapi::Resource + DeserializeOwned,
    {
        let api = api_for::<K>(self.client(), namespace);
        match api.get(name).await {
            Ok(o) => Ok(Some(from_dynamic(o)?)),
            Err(e) if is_status(&e, 404) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes the object; Ok(false) if it did not exist (`namespace` empty for
    /// cluster-scoped kinds).
    pub async fn delete<K>(&self, namespace: &str, name: &str) -> Result<bool>
    where
        K: k8s_openapi::Resource,
    {
        let api = api_for::<K>(self.client(), namespace);
        match api.delete(name, &DeleteParams::background()).await {
            Ok(_) => Ok(true),
            Err(e) if is_status(&e, 404) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Waits until the object is gone (a real cluster deletes gracefully).
    pub async fn wait_deleted<K>(
        &self,
        namespace: &str,
        name: &str,
        timeout: Duration,
    ) -> Result<()>
    where
        K: k8s_openapi::Resource + DeserializeOwned,
    {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.get::<K>(namespace, name).await?.is_some() {
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "{} {namespace}/{name} still exists after {timeout:?}",
                    K::KIND
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(())
    }

    /// [`TestApiServer::forbid`]; None on a real cluster.
    pub fn forbid(&self, resource_plural: &str) -> Option<()> {
        self.test_server().map(|s| s.forbid(resource_plural))
    }

    /// [`TestApiServer::allow`]; None on a real cluster.
    pub fn allow(&self, resource_plural: &str) -> Option<()> {
        self.test_server().map(|s| s.allow(resource_plural))
    }

    /// [`TestApiServer::compact`]; None on a real cluster.
    pub fn compact(&self) -> Option<()> {
        self.test_server().map(TestApiServer::compact)
    }

    /// [`TestApiServer::send_bookmarks`]; None on a real cluster.
    pub fn send_bookmarks(&self) -> Option<usize> {
        self.test_server().map(TestApiServer::send_bookmarks)
    }

    /// [`TestApiServer::drop_watches`]; None on a real cluster.
    pub fn drop_watches(&self) -> Option<usize> {
        self.test_server().map(TestApiServer::drop_watches)
    }

    /// [`TestApiServer::stop`]; None on a real cluster.
    pub async fn stop(&self) -> Option<()> {
        match self.test_server() {
            Some(s) => {
                s.stop().await;
                Some(())
            }
            None => None,
        }
    }

    /// [`TestApiServer::start_again`]; None on a real cluster.
    pub async fn start_again(&self) -> Option<Result<()>> {
        match self.test_server() {
            Some(s) => Some(s.start_again().await),
            None => None,
        }
    }

    /// [`TestApiServer::requests`]; None on a real cluster.
    pub fn requests(&self) -> Option<Vec<(String, String)>> {
        self.test_server().map(TestApiServer::requests)
    }
}
