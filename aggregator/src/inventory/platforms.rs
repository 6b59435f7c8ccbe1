//! Which platforms a workload can land on: the platforms of the cluster's nodes
//! (`status.nodeInfo.operatingSystem`/`architecture`), narrowed by the pod template's
//! `nodeSelector` and required node affinity on `kubernetes.io/os` and
//! `kubernetes.io/arch` (and their deprecated `beta.` forms). Other keys cannot be
//! judged from a platform and are taken as satisfiable.

use k8s_openapi::api::core::v1::{Node, NodeSelectorRequirement, PodSpec};
use pullwatch::Platform;

const OS_KEYS: [&str; 2] = ["kubernetes.io/os", "beta.kubernetes.io/os"];
const ARCH_KEYS: [&str; 2] = ["kubernetes.io/arch", "beta.kubernetes.io/arch"];

/// The part of a platform a node label names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Field {
    Os,
    Arch,
}

/// One requirement on the OS or architecture.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Requirement {
    In(Field, Vec<String>),
    NotIn(Field, Vec<String>),
    /// `DoesNotExist` on a label every node carries: no node.
    Never,
}

impl Requirement {
    fn holds(&self, platform: &Platform) -> bool {
        let value = |field: &Field| match field {
            Field::Os => platform.os.as_str(),
            Field::Arch => platform.architecture.as_str(),
        };
        match self {
            Requirement::In(field, values) => values.iter().any(|v| v == value(field)),
            Requirement::NotIn(field, values) => !values.iter().any(|v| v == value(field)),
            Requirement::Never => false,
        }
    }
}

/// A pod template's constraints on the node platform.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PlatformConstraints {
    /// From `nodeSelector`: all must hold.
    selector: Vec<Requirement>,
    /// From required node affinity: one term must hold entirely. None: no affinity on
    /// these keys (some term says nothing about them, so it does not narrow).
    terms: Option<Vec<Vec<Requirement>>>,
}

fn field_of(key: &str) -> Option<Field> {
    if OS_KEYS.contains(&key) {
        Some(Field::Os)
    } else if ARCH_KEYS.contains(&key) {
        Some(Field::Arch)
    } else {
        None
    }
}

/// Label values as platforms carry them (`arm64`, `amd64`...), normalized.
fn normalized(field: Field, value: &str) -> String {
    match field {
        Field::Os => Platform::new(value, "amd64", "").os,
        Field::Arch => Platform::new("linux", value, "").architecture,
    }
}

fn requirement(expression: &NodeSelectorRequirement) -> Option<Requirement> {
    let field = field_of(&expression.key)?;
    let values: Vec<String> = expression
        .values
        .iter()
        .flatten()
        .map(|v| normalized(field, v))
        .collect();
    match expression.operator.as_str() {
        "In" => Some(Requirement::In(field, values)),
        "NotIn" => Some(Requirement::NotIn(field, values)),
        "DoesNotExist" => Some(Requirement::Never),
        // Exists holds on every node; Gt/Lt do not apply to these labels.
        _ => None,
    }
}

impl PlatformConstraints {
    pub(crate) fn from_pod_spec(spec: &PodSpec) -> PlatformConstraints {
        let selector = spec
            .node_selector
            .iter()
            .flatten()
            .filter_map(|(key, value)| {
                field_of(key).map(|field| Requirement::In(field, vec![normalized(field, value)]))
            })
            .collect();
        let terms = spec
            .affinity
            .as_ref()
            .and_then(|a| a.node_affinity.as_ref())
            .and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .as_ref()
            })
            .map(|required| {
                required
                    .node_selector_terms
                    .iter()
                    .map(|term| {
                        term.match_expressions
                            .iter()
                            .flatten()
                            .filter_map(requirement)
                            .collect::<Vec<_>>()
                    })
                    .collect::<Vec<_>>()
            })
            .filter(|terms| !terms.is_empty() && terms.iter().all(|t| !t.is_empty()));
        PlatformConstraints { selector, terms }
    }

    /// Whether a node of `platform` may run the pod.
    pub(crate) fn allows(&self, platform: &Platform) -> bool {
        self.selector.iter().all(|r| r.holds(platform))
            && self
                .terms
                .as_ref()
                .is_none_or(|terms| terms.iter().any(|t| t.iter().all(|r| r.holds(platform))))
    }
}

/// A node's platform, from what its kubelet reports.
pub(crate) fn node_platform(node: &Node) -> Option<Platform> {
    let info = node.status.as_ref()?.node_info.as_ref()?;
    if info.operating_system.is_empty() || info.architecture.is_empty() {
        return None;
    }
    Some(Platform::new(
        &info.operating_system,
        &info.architecture,
        "",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Affinity, NodeAffinity, NodeSelector, NodeSelectorTerm};

    fn p(spec: &str) -> Platform {
        spec.parse().unwrap()
    }

    fn expression(key: &str, operator: &str, values: &[&str]) -> NodeSelectorRequirement {
        NodeSelectorRequirement {
            key: key.into(),
            operator: operator.into(),
            values: Some(values.iter().map(|v| v.to_string()).collect()),
        }
    }

    fn with_affinity(terms: Vec<Vec<NodeSelectorRequirement>>) -> PodSpec {
        PodSpec {
            affinity: Some(Affinity {
                node_affinity: Some(NodeAffinity {
                    required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                        node_selector_terms: terms
                            .into_iter()
                            .map(|e| NodeSelectorTerm {
                                match_expressions: Some(e),
                                ..Default::default()
                            })
                            .collect(),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn node_selector_and_required_affinity_narrow_the_platforms() {
        let amd = p("linux/amd64");
        let arm = p("linux/arm64");
        let win = p("windows/amd64");
        let none = PlatformConstraints::from_pod_spec(&PodSpec::default());
        assert!(none.allows(&amd) && none.allows(&arm) && none.allows(&win));

        let selector = PlatformConstraints::from_pod_spec(&PodSpec {
            node_selector: Some(
                [
                    ("kubernetes.io/arch".to_string(), "arm64".to_string()),
                    ("disktype".to_string(), "ssd".to_string()),
                ]
                .into(),
            ),
            ..Default::default()
        });
        assert!(selector.allows(&arm) && !selector.allows(&amd));

        let affinity = PlatformConstraints::from_pod_spec(&with_affinity(vec![
            vec![expression("kubernetes.io/os", "In", &["linux"])],
            vec![expression("kubernetes.io/arch", "NotIn", &["amd64"])],
        ]));
        assert!(affinity.allows(&amd) && affinity.allows(&arm) && !affinity.allows(&win));

        let one_term = PlatformConstraints::from_pod_spec(&with_affinity(vec![vec![
            expression("kubernetes.io/os", "In", &["linux"]),
            expression("kubernetes.io/arch", "In", &["aarch64"]),
            expression("zone", "In", &["a"]),
        ]]));
        assert!(one_term.allows(&arm) && !one_term.allows(&amd));

        // A term that says nothing about os/arch: any platform may match it.
        let open = PlatformConstraints::from_pod_spec(&with_affinity(vec![
            vec![expression("kubernetes.io/arch", "In", &["arm64"])],
            vec![expression("zone", "In", &["a"])],
        ]));
        assert!(open.allows(&amd));
    }
}
