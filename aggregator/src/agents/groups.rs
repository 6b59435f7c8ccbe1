//! Node groups from the cluster: with `--node-group-label` in cluster mode, the label's
//! value on each Node object, as the inventory's one watch of Nodes keeps it
//! ([`crate::inventory::nodes`]). Agents cannot read their own Node's labels, so this
//! is how nodes are grouped in a cluster; where RBAC forbids reading Nodes, the labels
//! agents send (`--node-labels`) are used instead.

use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::AgentHub;
use crate::inventory::SharedInventory;
use crate::inventory::cluster::NODES;
use pullwatch::locks::lock;

/// Keeps `hub`'s node groups those of the inventory's Nodes until aborted.
pub(crate) fn follow_node_groups(inventory: SharedInventory, hub: AgentHub) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut changes = inventory.subscribe_nodes();
        let mut warned = false;
        loop {
            let groups = lock(&inventory.inventory).nodes.groups();
            let state = inventory.state(NODES);
            if state.forbidden && !warned {
                warn!(
                    error = state.last_error.as_deref().unwrap_or_default(),
                    "cannot read Nodes for --node-group-label (RBAC: get/list/watch nodes); grouping by the labels agents send (--node-labels)"
                );
                warned = true;
            } else if warned && !state.forbidden {
                info!("reading Nodes works again: grouping nodes by their labels");
                warned = false;
            }
            debug!(nodes = groups.len(), "node groups updated");
            hub.set_node_groups(groups);
            if changes.changed().await.is_err() {
                return;
            }
        }
    })
}
