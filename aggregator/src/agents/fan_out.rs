//! Checks through agents (the agents stage's entry): one distinct check fanned out to
//! one node per node group, and the kubelet's view made of the answers
//! ([`kubelet_view`]).
//!
//! Placement prefers nodes that run the workload, then nodes that hold the image, then
//! idle ones ([`AgentHub::plan`]). The workload's pull secrets go only to a node that
//! runs a pod of its namespace using its image, and only over TLS; any other node
//! checks with its own keyring alone, as its kubelet would for a pod it does not run.
//!
//! Across nodes the image is `available` only when every node that answered can pull
//! it; otherwise the status of the failing nodes, the most informative one when they
//! differ ([`CheckStatus::informativeness`]). Answers from a node whose runtime failed
//! say nothing about the image and are left out. So is a failure from a node that
//! checked without the workload's credentials although the workload has some: its
//! kubelet would have tried them first, so its failure is not the kubelet's view (its
//! success is: the kubelet tries credentials until one works). When no node gave a
//! conclusive answer the aggregator checks centrally, with the credentials.

use std::collections::BTreeMap;

use futures::future::join_all;
use pullwatch::locks::lock;
use pullwatch::proto::{CheckTask, PullCredential, RegistryQuota};
use pullwatch::{CheckOutcome, CheckStatus};
use tracing::{debug, warn};

use super::{AgentHub, DispatchOptions};
use crate::answers::NodeOutcome;
use crate::index::AgentTarget;

/// What the agents said about one check.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AgentCheck {
    /// Node name -> its answer.
    pub(crate) nodes: BTreeMap<String, NodeOutcome>,
    /// Nodes that were sent the workload's credentials.
    pub(crate) credentials_sent_to: Vec<String>,
}

impl AgentCheck {
    /// The canonical outcome, or None when no node answered.
    pub fn outcome(&self) -> Option<CheckOutcome> {
        kubelet_view(&self.nodes)
    }
}

/// Over the conclusive answers: `available` when every node can pull; else the
/// failing nodes' most informative status, with each failing node's reason. None
/// without a conclusive answer.
pub(crate) fn kubelet_view(nodes: &BTreeMap<String, NodeOutcome>) -> Option<CheckOutcome> {
    let conclusive: Vec<(&String, &NodeOutcome)> =
        nodes.iter().filter(|(_, n)| n.is_conclusive()).collect();
    if conclusive.is_empty() {
        return None;
    }
    let failing: Vec<(&String, &NodeOutcome)> = conclusive
        .iter()
        .copied()
        .filter(|(_, n)| n.status != CheckStatus::Available)
        .collect();
    let Some(status) = failing
        .iter()
        .map(|(_, n)| n.status)
        .max_by_key(|s| s.informativeness())
    else {
        // The digest the nodes agree the reference resolves to now (mirrors could
        // disagree: then none is claimed).
        let mut digests = conclusive.iter().filter_map(|(_, n)| n.digest.as_deref());
        let first = digests.next().map(str::to_string);
        let agreed = first.filter(|d| digests.all(|other| other == d));
        return Some(CheckOutcome::available_at(agreed, None));
    };
    let details: Vec<String> = failing
        .iter()
        .map(|(node, n)| format!("node {node}: {}: {}", n.status, n.reason))
        .collect();
    Some(CheckOutcome::new(
        status,
        format!(
            "{} of {} nodes cannot pull: {}",
            failing.len(),
            conclusive.len(),
            details.join("; ")
        ),
    ))
}

fn non_empty(value: String) -> Option<String> {
    (!value.is_empty()).then_some(value)
}

impl AgentHub {
    /// Records the quotas `node` reported, if it is still connected: under the hub's
    /// lock, so a node that left meanwhile (its series gone) gets none back.
    fn record_quotas(&self, node: &str, quotas: &[RegistryQuota]) {
        if quotas.is_empty() {
            return;
        }
        let state = lock(&self.inner.state);
        if state.agents.contains_key(node) {
            self.inner.metrics.quotas.record(node, quotas);
        }
    }

    /// Checks `target` from one node per node group and collects the answers. Empty
    /// when no agent is connected or none answered: the caller checks centrally then.
    pub async fn check_target(&self, target: &AgentTarget) -> AgentCheck {
        let image = target.image.to_string();
        let plan = self.plan(&image, &target.workload_nodes);
        let credential_nodes: Vec<String> = target
            .workload_nodes
            .iter()
            .map(|n| n.to_string())
            .collect();
        let may_send = self.config().tls && !target.credentials.is_empty();
        let mut check = AgentCheck::default();
        let dispatches = plan.into_iter().map(|(group, node)| {
            let with_credentials = may_send && target.workload_nodes.contains(node.as_str());
            let needs_credentials = !target.credentials.is_empty();
            if with_credentials {
                check.credentials_sent_to.push(node.clone());
            }
            let task = CheckTask {
                image: image.clone(),
                credentials: if with_credentials {
                    target
                        .credentials
                        .iter()
                        .map(PullCredential::from)
                        .collect()
                } else {
                    Vec::new()
                },
                ..Default::default()
            };
            let options = DispatchOptions {
                credential_nodes: credential_nodes.clone(),
                move_without_credentials: true,
            };
            async move {
                let answer = self.dispatch_with(&node, task, options).await;
                let without = needs_credentials
                    && (!with_credentials || answer.as_ref().is_ok_and(|d| d.credentials_dropped));
                (group, node, answer, without)
            }
        });
        for (group, node, answer, without_workload_credentials) in join_all(dispatches).await {
            match answer {
                Ok(done) => {
                    // What the node's route announced, whatever the answer says.
                    self.record_quotas(&done.node, &done.result.quotas);
                    if done.result.runtime_failure {
                        debug!(node = %done.node, %image, reason = %done.result.reason, "the node's runtime failed; its answer says nothing about the image");
                        continue;
                    }
                    let Ok(status) = CheckStatus::try_from(done.result.status) else {
                        warn!(node = %done.node, %image, "an agent answered without a status");
                        continue;
                    };
                    check.nodes.insert(
                        done.node,
                        NodeOutcome {
                            status,
                            reason: done.result.reason,
                            credential_source: done.result.credential_source,
                            image_present: done.result.image_present,
                            digest: non_empty(done.result.digest),
                            held_digest: non_empty(done.result.held_digest),
                            tag_moved: done.result.tag_moved,
                            without_workload_credentials,
                        },
                    );
                }
                Err(error) => {
                    warn!(%node, %group, %image, %error, "no answer from the node group");
                }
            }
        }
        check
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(status: CheckStatus, reason: &str) -> NodeOutcome {
        NodeOutcome {
            status,
            reason: reason.into(),
            credential_source: "runtime".into(),
            image_present: false,
            digest: None,
            held_digest: None,
            tag_moved: None,
            without_workload_credentials: false,
        }
    }

    #[test]
    fn available_carries_the_digest_the_nodes_agree_on() {
        let mut nodes = BTreeMap::new();
        let mut a = node(CheckStatus::Available, "");
        a.digest = Some("sha256:1".into());
        nodes.insert("a".to_string(), a.clone());
        nodes.insert("b".to_string(), a.clone());
        assert_eq!(
            kubelet_view(&nodes).unwrap().digest.as_deref(),
            Some("sha256:1")
        );
        a.digest = Some("sha256:2".into());
        nodes.insert("c".to_string(), a);
        assert_eq!(kubelet_view(&nodes).unwrap().digest, None, "nodes disagree");
    }

    #[test]
    fn available_only_when_every_node_can_pull() {
        assert_eq!(kubelet_view(&BTreeMap::new()), None);
        let mut nodes = BTreeMap::new();
        nodes.insert("a".to_string(), node(CheckStatus::Available, ""));
        assert_eq!(kubelet_view(&nodes), Some(CheckOutcome::available()));
        nodes.insert(
            "b".to_string(),
            node(CheckStatus::RegistryUnavailable, "connection refused"),
        );
        nodes.insert(
            "c".to_string(),
            node(CheckStatus::AuthenticationFailure, "401"),
        );
        let outcome = kubelet_view(&nodes).unwrap();
        // Of the failing nodes, the one that got furthest speaks.
        assert_eq!(outcome.status, CheckStatus::AuthenticationFailure);
        assert_eq!(
            outcome.reason,
            "2 of 3 nodes cannot pull: node b: registry_unavailable: connection refused; node c: authentication_failure: 401"
        );

        // A node that checked without the workload's credentials: its success counts,
        // its failure does not (its kubelet would have tried them).
        let mut partial = BTreeMap::new();
        let mut without = node(CheckStatus::AuthenticationFailure, "401");
        without.without_workload_credentials = true;
        partial.insert("x".to_string(), without.clone());
        assert_eq!(kubelet_view(&partial), None, "the caller checks centrally");
        partial.insert("y".to_string(), node(CheckStatus::Available, ""));
        assert_eq!(kubelet_view(&partial), Some(CheckOutcome::available()));
        without.status = CheckStatus::Available;
        assert!(without.is_conclusive());
    }
}
