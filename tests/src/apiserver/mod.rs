//! A test Kubernetes API server speaking the real wire protocol closely enough for an
//! unmodified `kube` client and `kube::runtime::watcher`: discovery, paginated LIST with
//! `limit`/`continue` over a consistent snapshot, `resourceVersion`/`resourceVersionMatch`,
//! label and field selectors, WATCH streams (ADDED/MODIFIED/DELETED/BOOKMARK/ERROR) from any
//! retained resourceVersion with `timeoutSeconds` and `allowWatchBookmarks`, 410 Expired after
//! a compaction, 403 for forbidden resources, create/get/replace/patch/delete with
//! 404/409 Status bodies. Plain HTTP on `127.0.0.1`.
//!
//! Deliberate differences from a real API server (none of them visible to a watcher):
//! objects are deleted at once (no graceful deletion, finalizers or garbage collection of
//! owned objects; deleting a namespace deletes its contents first, then the namespace); no
//! admission, defaulting or schema validation beyond names, kinds and namespaces; strategic
//! merge and apply patches are applied as JSON merge patches; LIST items carry `kind` and
//! `apiVersion` (a real server leaves them out of items; kube does not need them).

mod builders;
mod http;
mod resources;
mod selector;
mod store;
mod target;
mod tokenreview;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use hyper::service::service_fn;
use serde::Serialize;
use serde::de::DeserializeOwned;

pub use builders::{
    PodSpecMut, Replicated, container_name_and_image, cronjob, daemonset, deployment, job,
    namespace, node, pod, pod_spec, replicaset, running, secret_dockercfg, secret_dockerconfigjson,
    secret_opaque, service_account, statefulset, suspended, with_annotations, with_controller,
    with_init_images, with_labels, with_owner, with_pull_secrets, with_replicas,
    with_service_account,
};
pub use http::decode_query;
pub use target::{ApiTarget, ClusterObject, TEST_KUBECONFIG_ENV};

use http::Shared;
use resources::RESOURCES;

use crate::serve::{LoopbackListener, LoopbackServer, serve_http1};
use store::{State, WriteMode};

/// The test API server. Serves until dropped (or [`stop`](Self::stop)ped).
pub struct TestApiServer {
    shared: Arc<Shared>,
    /// None while [`stop`](Self::stop)ped.
    server: Mutex<Option<LoopbackServer>>,
}

impl std::fmt::Debug for TestApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestApiServer")
            .field("addr", &self.shared.addr)
            .finish()
    }
}

/// Serves the API on `listener`. Stopping the server cuts every connection, open watch
/// streams included (the serving core owns them).
fn serve(listener: LoopbackListener, shared: Arc<Shared>) -> LoopbackServer {
    listener.serve(move |stream, _peer| {
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let service = service_fn(move |req| {
            let shared = shared.clone();
            async move { Ok::<_, std::convert::Infallible>(http::handle(shared, req).await) }
        });
        serve_http1(stream, service)
    })
}

/// The served resource (index) of a k8s-openapi type.
fn resource_of<K: k8s_openapi::Resource>() -> Result<usize> {
    resources::find_by_plural(K::GROUP, K::URL_PATH_SEGMENT).ok_or_else(|| {
        anyhow!(
            "the test API server does not serve {} ({})",
            K::KIND,
            K::API_VERSION
        )
    })
}

impl TestApiServer {
    /// Binds a free port on 127.0.0.1 and starts serving. Must be called inside a tokio
    /// runtime.
    pub async fn start() -> Result<TestApiServer> {
        let listener =
            LoopbackListener::bind_reusable("127.0.0.1:0".parse().expect("valid address"))
                .context("binding the test API server")?;
        let addr = listener.addr();
        let shared = Arc::new(Shared {
            state: Mutex::new(State::new()),
            requests: Mutex::default(),
            bookmark_interval: Mutex::new(Some(Duration::from_secs(60))),
            addr,
        });
        let server = serve(listener, shared.clone());
        Ok(TestApiServer {
            shared,
            server: Mutex::new(Some(server)),
        })
    }

    /// The bound address (kept across [`stop`](Self::stop)/[`start_again`](Self::start_again)).
    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.shared.addr)
    }

    /// A `kube::Config` for this server: no authentication, default namespace `default`.
    pub fn kube_config(&self) -> kube::Config {
        kube::Config::new(self.url().parse().expect("valid URL"))
    }

    /// A `kube::Client` for this server.
    pub fn kube_client(&self) -> kube::Client {
        kube::Client::try_from(self.kube_config()).expect("a plain HTTP client builds")
    }

    /// Writes `dir/kubeconfig` pointing at this server, for binaries started with
    /// `--kubeconfig` or `KUBECONFIG`.
    pub fn kubeconfig(&self, dir: &Path) -> Result<PathBuf> {
        let path = dir.join("kubeconfig");
        // JSON is YAML: kube and kubectl read it as a kubeconfig.
        let doc = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "pullwatch-test", "cluster": {"server": self.url()}}],
            "users": [{"name": "pullwatch-test", "user": {}}],
            "contexts": [{"name": "pullwatch-test", "context": {
                "cluster": "pullwatch-test", "user": "pullwatch-test", "namespace": "default"}}],
            "current-context": "pullwatch-test",
        });
        std::fs::write(&path, serde_json::to_vec_pretty(&doc)?)
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// Creates or replaces an object, stored as given (status included, no namespace
    /// check): `uid` and `creationTimestamp` are filled in on create and kept on replace,
    /// `metadata.resourceVersion` is the next global version, `metadata.generation` follows
    /// spec changes. Watches see ADDED or MODIFIED. Returns the stored object.
    pub fn apply<K>(&self, obj: &K) -> Result<K>
    where
        K: k8s_openapi::Resource + Serialize + DeserializeOwned,
    {
        let res = resource_of::<K>()?;
        let value = serde_json::to_value(obj)?;
        let ns = value["metadata"]["namespace"].as_str().map(str::to_owned);
        if RESOURCES[res].namespaced && ns.as_deref().unwrap_or("").is_empty() {
            bail!("a {} needs metadata.namespace", K::KIND);
        }
        let stored = self
            .shared
            .state()
            .write(res, ns.as_deref(), None, value, WriteMode::Hook, "test")
            .map_err(|e| anyhow!("{} ({})", e.message, e.reason))?;
        Ok(serde_json::from_str(&stored.json)?)
    }

    /// The stored object, if any (`namespace` is ignored for cluster-scoped kinds).
    pub fn get<K>(&self, namespace: &str, name: &str) -> Option<K>
    where
        K: k8s_openapi::Resource + DeserializeOwned,
    {
        let res = resource_of::<K>().ok()?;
        let ns = if RESOURCES[res].namespaced {
            namespace
        } else {
            ""
        };
        let obj = self
            .shared
            .state()
            .get(res, &(ns.to_owned(), name.to_owned()))?;
        serde_json::from_str(&obj.json).ok()
    }

    /// Every stored object of a kind, in key order.
    pub fn list<K>(&self) -> Vec<K>
    where
        K: k8s_openapi::Resource + DeserializeOwned,
    {
        let Ok(res) = resource_of::<K>() else {
            return Vec::new();
        };
        let objs: Vec<_> = self.shared.state().objects[res].values().cloned().collect();
        objs.iter()
            .filter_map(|o| serde_json::from_str(&o.json).ok())
            .collect()
    }

    /// Deletes an object (`namespace` is ignored for cluster-scoped kinds; a namespace's
    /// contents are deleted first). Returns whether it existed.
    pub fn delete<K>(&self, namespace: &str, name: &str) -> bool
    where
        K: k8s_openapi::Resource,
    {
        let Ok(res) = resource_of::<K>() else {
            return false;
        };
        let ns = if RESOURCES[res].namespaced {
            namespace
        } else {
            ""
        };
        self.shared
            .state()
            .delete(res, &(ns.to_owned(), name.to_owned()), None, None)
            .is_ok()
    }

    /// Every request for this resource plural (`"secrets"`, `"deployments"`...) answers 403
    /// Forbidden with a Status naming it, as RBAC does. Open watches are not cut (RBAC does
    /// not cut them either); the next list or watch is refused.
    pub fn forbid(&self, resource_plural: &str) {
        self.shared
            .state()
            .forbidden
            .insert(resource_plural.to_owned());
    }

    /// Undoes [`forbid`](Self::forbid).
    pub fn allow(&self, resource_plural: &str) {
        self.shared.state().forbidden.remove(resource_plural);
    }

    /// Drops the change history, as an etcd compaction does: every resourceVersion issued so
    /// far expires. A watch from one answers an ERROR event with a 410 Expired Status; a
    /// continue token at one answers HTTP 410. Open watches go on. Lists made afterwards
    /// return a version that can be watched from.
    pub fn compact(&self) {
        self.shared.state().compact();
    }

    /// Keeps at most this many changes in the history (None: unbounded, the default); older
    /// versions expire as after [`compact`](Self::compact).
    pub fn set_history_limit(&self, limit: Option<usize>) {
        self.shared.state().history_limit = limit;
    }

    /// Sends a BOOKMARK at the current resourceVersion to every open watch that allowed
    /// bookmarks. Returns how many got one.
    pub fn send_bookmarks(&self) -> usize {
        self.shared.state().send_bookmarks()
    }

    /// How often each watch that allows bookmarks gets one without being asked (default 60 s,
    /// like the real server; None: never). Applies to watches started afterwards. A watch
    /// also gets one just before its `timeoutSeconds` ends it.
    pub fn set_bookmark_interval(&self, every: Option<Duration>) {
        *self
            .shared
            .bookmark_interval
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = every;
    }

    /// Ends every open watch stream (cleanly, as a restarting API server does). Clients
    /// re-watch from their last resourceVersion. Returns how many were open.
    pub fn drop_watches(&self) -> usize {
        let mut state = self.shared.state();
        let n = state.watches.len();
        state.watches.clear();
        n
    }

    /// Open watches of a resource plural (all resources when None).
    pub fn open_watches(&self, resource_plural: Option<&str>) -> usize {
        let state = self.shared.state();
        state
            .watches
            .iter()
            .filter(|w| {
                !w.tx.is_closed()
                    && resource_plural.is_none_or(|p| RESOURCES[w.resource].plural == p)
            })
            .count()
    }

    /// Waits until at least `n` watches of `resource_plural` are open.
    pub async fn wait_for_watches(
        &self,
        resource_plural: &str,
        n: usize,
        timeout: Duration,
    ) -> Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let open = self.open_watches(Some(resource_plural));
            if open >= n {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("{open} watches of {resource_plural} open after {timeout:?}, wanted {n}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The current (latest issued) resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.state().rv
    }

    /// Stops serving: the port refuses connections and every open connection (watch
    /// streams included) is cut. State is kept for [`start_again`](Self::start_again).
    pub async fn stop(&self) {
        let server = self.server.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(server) = server {
            server.stop().await;
        }
        self.shared.state().watches.clear();
    }

    /// Serves again on the same port after [`stop`](Self::stop), with the same state.
    pub async fn start_again(&self) -> Result<()> {
        if self.is_running() {
            return Ok(());
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match LoopbackListener::bind_reusable(self.shared.addr) {
                Ok(l) => break l,
                Err(e) if tokio::time::Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => {
                    return Err(e).with_context(|| format!("binding {} again", self.shared.addr));
                }
            }
        };
        let server = serve(listener, self.shared.clone());
        *self.server.lock().unwrap_or_else(|e| e.into_inner()) = Some(server);
        Ok(())
    }

    /// Whether the server is serving (not [`stop`](Self::stop)ped).
    pub fn is_running(&self) -> bool {
        self.server
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_some_and(LoopbackServer::is_running)
    }

    /// Every `(method, path with query)` received so far, in arrival order, as sent (the
    /// query is URL-encoded: decode it with [`decode_query`]).
    pub fn requests(&self) -> Vec<(String, String)> {
        self.shared
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Forgets the recorded requests.
    pub fn clear_requests(&self) {
        self.shared
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// The recorded requests that are LISTs (GET on a collection without `watch`) of this
    /// resource plural, with their decoded query parameters.
    pub fn list_requests(&self, resource_plural: &str) -> Vec<Vec<(String, String)>> {
        self.collection_gets(resource_plural, false)
    }

    /// The recorded requests that are WATCHes of this resource plural, with their decoded
    /// query parameters.
    pub fn watch_requests(&self, resource_plural: &str) -> Vec<Vec<(String, String)>> {
        self.collection_gets(resource_plural, true)
    }

    fn collection_gets(&self, plural: &str, watch: bool) -> Vec<Vec<(String, String)>> {
        self.requests()
            .into_iter()
            .filter(|(m, _)| m == "GET")
            .filter_map(|(_, pq)| {
                let (path, query) = pq.split_once('?').unwrap_or((pq.as_str(), ""));
                if !path.trim_end_matches('/').ends_with(&format!("/{plural}")) {
                    return None;
                }
                let q = decode_query(query);
                let is_watch = q
                    .iter()
                    .any(|(k, v)| k == "watch" && (v == "true" || v == "1"));
                (is_watch == watch).then_some(q)
            })
            .collect()
    }
}
