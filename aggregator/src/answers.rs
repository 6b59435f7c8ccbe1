//! What checks answered, shared by the places checks are made (the central checker or
//! the node agents, chosen in [`crate::pipeline`]), the scheduler that receives the
//! answers and the store that keeps them: the canonical outcome of one distinct check
//! ([`KeyCheck`]), each node's answer it was made of ([`NodeOutcome`]), and what the
//! nodes say about one image across its checks ([`ImageNodes`], worked out by the
//! scheduler). A module of its own so that no stage imports a later one for them.

use std::collections::BTreeMap;

use pullwatch::{CheckOutcome, CheckStatus};

/// The outcome of one distinct check, and the node answers it was made of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct KeyCheck {
    pub(crate) outcome: CheckOutcome,
    /// Node name -> its answer; empty when the aggregator checked centrally.
    pub(crate) nodes: BTreeMap<String, NodeOutcome>,
}

/// One node's answer for one check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct NodeOutcome {
    pub(crate) status: CheckStatus,
    pub(crate) reason: String,
    /// Where the deciding credential came from on the node (`secret/<ns>/<name>`,
    /// `config.json:<path>`, `plugin:<name>`, `runtime`).
    pub(crate) credential_source: String,
    /// Whether the node holds the image after the check.
    pub(crate) image_present: bool,
    /// What the reference resolves to now along the node's route, when known.
    pub(crate) digest: Option<String>,
    /// What the node holds under the tag, when it holds it.
    pub(crate) held_digest: Option<String>,
    /// The node holds the tag at another digest than the registry now answers.
    pub(crate) tag_moved: Option<bool>,
    /// The node checked without the workload's credentials (it does not run the
    /// workload): a failure then is not what its kubelet would see.
    pub(crate) without_workload_credentials: bool,
}

impl NodeOutcome {
    /// Whether this answer is the kubelet's view on that node.
    pub(crate) fn is_conclusive(&self) -> bool {
        self.status == CheckStatus::Available || !self.without_workload_credentials
    }
}

/// What the nodes say about one image (as written in the spec), with agents.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ImageNodes {
    /// Nodes per status, from the latest node checks of the image (empty: no node
    /// has checked it).
    pub(crate) statuses: BTreeMap<CheckStatus, usize>,
    /// Nodes holding the image.
    pub(crate) cached: usize,
    /// Node -> its latest conclusive answer (the least available across the image's
    /// checks) and the reason it gave.
    pub(crate) answers: BTreeMap<String, (CheckStatus, String)>,
}
