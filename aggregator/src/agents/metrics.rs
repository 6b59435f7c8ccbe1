//! The agent hub's own series: sessions refused and taken over, the work placement
//! does, and the pull quotas nodes report ([`NodeQuotas`]). Created and registered by
//! the metrics stage ([`crate::metrics::Metrics::new`]) like every stage's series; kept
//! here because the hub writes them.

use prometheus::{IntCounter, IntCounterVec, Opts, Registry};

use super::quota::NodeQuotas;

/// Every series the hub writes.
#[derive(Clone)]
pub(crate) struct HubMetrics {
    pub(crate) security: AgentSecurityMetrics,
    /// Agents placement looked at (`pullwatch_agent_placement_visits_total`): bounded
    /// per placement, whatever the fleet's size.
    pub(crate) placement_visits: IntCounter,
    /// Placements made (`pullwatch_agent_placements_total`).
    pub(crate) placements: IntCounter,
    pub(crate) quotas: NodeQuotas,
}

/// Counters of agent sessions refused and taken over.
#[derive(Clone, Debug)]
pub struct AgentSecurityMetrics {
    /// `pullwatch_agent_sessions_refused_total{reason}`.
    refused: IntCounterVec,
    /// `pullwatch_agent_session_takeovers_total`.
    takeovers: IntCounter,
}

impl HubMetrics {
    /// Creates the series and registers them in `registry` (the aggregator's).
    pub(crate) fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let counter = |name: &str, help: &str| {
            let counter = IntCounter::new(name, help)?;
            registry.register(Box::new(counter.clone()))?;
            Ok::<_, prometheus::Error>(counter)
        };
        let refused = IntCounterVec::new(
            Opts::new(
                "pullwatch_agent_sessions_refused_total",
                "Agent sessions refused, by reason (wrong_service_account, wrong_node, no_pod, pod_mismatch, plaintext, takeover_refused, ...)",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(refused.clone()))?;
        let takeovers = counter(
            "pullwatch_agent_session_takeovers_total",
            "Agent sessions that replaced an open session of the same node and identity",
        )?;
        Ok(HubMetrics {
            security: AgentSecurityMetrics { refused, takeovers },
            placements: counter(
                "pullwatch_agent_placements_total",
                "Placements of a check on agents (one per node group of a check, and per re-placement)",
            )?,
            placement_visits: counter(
                "pullwatch_agent_placement_visits_total",
                "Agents placement looked at to place checks (bounded per placement, whatever the number of agents)",
            )?,
            quotas: NodeQuotas::new(registry)?,
        })
    }

    /// The series in a registry of their own, which no `/metrics` serves: for a hub
    /// outside the aggregator's binary (tests, benches).
    pub(crate) fn unserved() -> Self {
        // Provably infallible: constant, valid definitions in an empty registry.
        #[allow(clippy::expect_used)]
        HubMetrics::new(&Registry::new()).expect("constant, valid metric definitions")
    }
}

impl AgentSecurityMetrics {
    /// Counts one refused session.
    pub(crate) fn refused(&self, reason: &str) {
        self.refused.with_label_values(&[reason]).inc();
    }

    /// Sessions refused for `reason` so far.
    pub fn refused_count(&self, reason: &str) -> u64 {
        self.refused.with_label_values(&[reason]).get()
    }

    pub(crate) fn took_over(&self) {
        self.takeovers.inc();
    }

    /// Takeovers so far.
    pub fn takeovers(&self) -> u64 {
        self.takeovers.get()
    }
}
