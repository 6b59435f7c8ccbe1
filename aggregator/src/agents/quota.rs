//! The pull quota each node's route sees, as its agent reports it with its results:
//! anonymous quotas are per egress IP, so only a node can tell what its own pulls have
//! left. `pullwatch_node_registry_ratelimit_remaining{node,registry}` and, where the
//! registry announced one, `pullwatch_node_registry_ratelimit_limit{node,registry}` (the
//! alert compares the two), bounded by the connected nodes times
//! [`MAX_REGISTRIES_PER_NODE`], dropped when a node's agent goes.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use prometheus::{GaugeVec, Opts, Registry};
use pullwatch::locks::lock;
use pullwatch::proto::RegistryQuota;
use tracing::debug;

/// Registries kept per node: a node's route asks few, and an agent must not be able to
/// grow the aggregator's series without bound.
pub(crate) const MAX_REGISTRIES_PER_NODE: usize = 32;
/// A reported registry name longer than a host name can be is not one.
const MAX_REGISTRY_LEN: usize = 260;

/// What one node last reported about one registry's quota.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeQuota {
    pub(crate) remaining: u64,
    pub(crate) limit: Option<u64>,
    pub(crate) window_seconds: Option<u64>,
    pub(crate) reported_at: SystemTime,
}

/// Node -> registry -> its latest quota, and the gauges made of it.
#[derive(Clone)]
pub struct NodeQuotas {
    latest: Arc<Mutex<BTreeMap<String, BTreeMap<String, NodeQuota>>>>,
    remaining: GaugeVec,
    limit: GaugeVec,
}

impl NodeQuotas {
    /// Creates the gauges and registers them in `registry` (part of
    /// [`super::metrics::HubMetrics`]).
    pub(crate) fn new(registry: &Registry) -> Result<NodeQuotas, prometheus::Error> {
        let gauge = |name: &str, help: &str| {
            let gauge = GaugeVec::new(Opts::new(name, help), &["node", "registry"])?;
            registry.register(Box::new(gauge.clone()))?;
            Ok::<_, prometheus::Error>(gauge)
        };
        Ok(NodeQuotas {
            latest: Arc::default(),
            remaining: gauge(
                "pullwatch_node_registry_ratelimit_remaining",
                "Pulls left in the registry's window as the node's route sees it (its egress IP's quota), from the latest quota its agent reported",
            )?,
            limit: gauge(
                "pullwatch_node_registry_ratelimit_limit",
                "Pulls per window the registry announced to the node, from the latest quota its agent reported",
            )?,
        })
    }

    /// Records what `node` reported. Names that cannot be registry hosts, and
    /// registries past the node's bound, are ignored.
    pub(crate) fn record(&self, node: &str, quotas: &[RegistryQuota]) {
        if quotas.is_empty() {
            return;
        }
        let now = SystemTime::now();
        let mut latest = lock(&self.latest);
        let known = latest.entry(node.to_string()).or_default();
        for quota in quotas {
            let registry = quota.registry.as_str();
            if registry.is_empty()
                || registry.len() > MAX_REGISTRY_LEN
                || !registry.bytes().all(|b| b.is_ascii_graphic())
            {
                debug!(
                    node,
                    "an agent reported a quota for a name that is no registry host"
                );
                continue;
            }
            if !known.contains_key(registry) && known.len() >= MAX_REGISTRIES_PER_NODE {
                debug!(
                    node,
                    registry, "quota not kept: the node reported too many registries"
                );
                continue;
            }
            known.insert(
                registry.to_string(),
                NodeQuota {
                    remaining: quota.remaining,
                    limit: quota.limit,
                    window_seconds: quota.window_seconds,
                    reported_at: now,
                },
            );
            self.remaining
                .with_label_values(&[node, registry])
                .set(quota.remaining as f64);
            match quota.limit {
                Some(limit) => self
                    .limit
                    .with_label_values(&[node, registry])
                    .set(limit as f64),
                None => {
                    let _ = self.limit.remove_label_values(&[node, registry]);
                }
            }
        }
    }

    /// `node`'s agent went away: its quotas and series go.
    pub(crate) fn forget_node(&self, node: &str) {
        let Some(registries) = lock(&self.latest).remove(node) else {
            return;
        };
        for gauge in [&self.remaining, &self.limit] {
            for registry in registries.keys() {
                let _ = gauge.remove_label_values(&[node, registry.as_str()]);
            }
        }
    }

    /// Registry -> node -> its latest quota.
    pub fn by_registry(&self) -> BTreeMap<String, BTreeMap<String, NodeQuota>> {
        let mut out: BTreeMap<String, BTreeMap<String, NodeQuota>> = BTreeMap::new();
        for (node, registries) in lock(&self.latest).iter() {
            for (registry, quota) in registries {
                out.entry(registry.clone())
                    .or_default()
                    .insert(node.clone(), quota.clone());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quota(registry: &str, remaining: u64) -> RegistryQuota {
        RegistryQuota {
            registry: registry.into(),
            remaining,
            limit: Some(100),
            window_seconds: Some(21600),
        }
    }

    fn series(registry: &Registry) -> Vec<String> {
        let mut text = String::new();
        prometheus::TextEncoder::new()
            .encode_utf8(&registry.gather(), &mut text)
            .unwrap();
        text.lines()
            .filter(|l| l.starts_with("pullwatch_node_registry_ratelimit_remaining"))
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn bounded_per_node_and_gone_with_the_node() {
        let registry = Registry::new();
        let quotas = NodeQuotas::new(&registry).unwrap();
        quotas.record("a", &[quota("docker.io", 76), quota("ghcr.io", 5)]);
        quotas.record("b", &[quota("docker.io", 40)]);
        quotas.record("a", &[quota("docker.io", 75)]);
        assert_eq!(
            series(&registry),
            [
                r#"pullwatch_node_registry_ratelimit_remaining{node="a",registry="docker.io"} 75"#,
                r#"pullwatch_node_registry_ratelimit_remaining{node="a",registry="ghcr.io"} 5"#,
                r#"pullwatch_node_registry_ratelimit_remaining{node="b",registry="docker.io"} 40"#,
            ]
        );
        let by_registry = quotas.by_registry();
        assert_eq!(by_registry["docker.io"]["b"].remaining, 40);
        assert_eq!(by_registry["docker.io"].len(), 2);

        let mut text = String::new();
        prometheus::TextEncoder::new()
            .encode_utf8(&registry.gather(), &mut text)
            .unwrap();
        assert!(text.contains(
            r#"pullwatch_node_registry_ratelimit_limit{node="a",registry="ghcr.io"} 100"#
        ));
        quotas.forget_node("a");
        let mut text = String::new();
        prometheus::TextEncoder::new()
            .encode_utf8(&registry.gather(), &mut text)
            .unwrap();
        assert!(!text.contains(r#"node="a""#), "{text}");
        assert_eq!(
            series(&registry),
            [r#"pullwatch_node_registry_ratelimit_remaining{node="b",registry="docker.io"} 40"#]
        );

        // One node cannot add registries past the bound, nor names that are no host.
        let many: Vec<RegistryQuota> = (0..100)
            .map(|i| quota(&format!("r{i}.example"), 1))
            .chain([
                quota("", 1),
                quota("bad name", 1),
                quota(&"x".repeat(300), 1),
            ])
            .collect();
        quotas.record("c", &many);
        let c = series(&registry)
            .into_iter()
            .filter(|l| l.contains(r#"node="c""#))
            .count();
        assert_eq!(c, MAX_REGISTRIES_PER_NODE);
        // Known registries still update past the bound.
        quotas.record("c", &[quota("r0.example", 0)]);
        assert!(
            series(&registry).contains(
                &r#"pullwatch_node_registry_ratelimit_remaining{node="c",registry="r0.example"} 0"#
                    .to_string()
            )
        );
    }
}
