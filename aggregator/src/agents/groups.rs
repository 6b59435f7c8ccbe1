//! Node groups from the cluster: with `--node-group-label` in cluster mode, the label's
//! value on each Node object (metadata only; nothing else of a Node is kept). Agents
//! cannot read their own Node's labels, so this is how nodes are grouped in a
//! cluster; where RBAC forbids reading Nodes, the labels agents send
//! (`--node-labels`) are used instead.

use std::collections::HashSet;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::core::PartialObjectMeta;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::AgentHub;

/// Watches Nodes' `label` into `hub` until aborted.
pub fn spawn_node_groups(client: Client, label: String, hub: AgentHub) -> JoinHandle<()> {
    tokio::spawn(async move {
        // Metadata-only requests: labels, no Node status.
        let api: Api<PartialObjectMeta<Node>> = Api::all(client);
        let mut stream = watcher::watcher(api, watcher::Config::default())
            .default_backoff()
            .boxed();
        let mut seen: Option<HashSet<String>> = None;
        let mut warned = false;
        let group = |node: &PartialObjectMeta<Node>| {
            node.metadata
                .labels
                .as_ref()
                .and_then(|labels| labels.get(&label))
                .cloned()
                .unwrap_or_default()
        };
        while let Some(event) = stream.next().await {
            match event {
                Ok(Event::Init) => seen = Some(HashSet::new()),
                Ok(Event::InitApply(node)) | Ok(Event::Apply(node)) => {
                    let name = node.metadata.name.clone().unwrap_or_default();
                    if let Some(seen) = seen.as_mut() {
                        seen.insert(name.clone());
                    }
                    hub.set_node_group(&name, Some(group(&node)));
                }
                Ok(Event::InitDone) => {
                    if let Some(seen) = seen.take() {
                        debug!(nodes = seen.len(), "node groups listed");
                        hub.retain_node_groups(&seen);
                    }
                    if warned {
                        info!("reading Nodes works again: grouping nodes by their labels");
                        warned = false;
                    }
                }
                Ok(Event::Delete(node)) => {
                    hub.set_node_group(&node.metadata.name.clone().unwrap_or_default(), None);
                }
                Err(error) => {
                    if !warned {
                        warn!(%error, "cannot read Nodes for --node-group-label (RBAC: get/list/watch nodes); grouping by the labels agents send (--node-labels)");
                        warned = true;
                    } else {
                        debug!(%error, "node watch failed; retrying");
                    }
                }
            }
        }
    })
}
