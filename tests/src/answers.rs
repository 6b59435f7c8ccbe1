//! Assertions on how a binary under test answered a registry behaviour
//! ([`crate::registry_behaviours`]): the same rules for the aggregator's rows and the
//! agent's reports, so each test states only what differs.

use std::process::Output;

use crate::{BEHAVIOUR_PASSWORD, Behaviour};

/// Asserts `answer` (a JSON row or report with `status` and `reason`) is what
/// `behaviour` expects: its status, every text its reason must have, and a reason of
/// bounded length. Returns the reason, for checks of the binary's own.
pub fn assert_behaviour_answer<'a>(
    behaviour: &Behaviour,
    answer: &'a serde_json::Value,
) -> &'a str {
    let name = behaviour.name;
    let reason = answer["reason"].as_str().unwrap_or_default();
    assert_eq!(answer["status"], behaviour.expected, "{name}: {reason}");
    for text in &behaviour.reason_has {
        assert!(reason.contains(text), "{name}: {text:?} not in {reason}");
    }
    assert!(reason.len() < 1000, "{name}: {reason}");
    reason
}

/// Asserts the behaviours' password is in neither the stdout nor the stderr of
/// `output`.
pub fn assert_output_without_behaviour_password(output: &Output) {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stdout.contains(BEHAVIOUR_PASSWORD) && !stderr.contains(BEHAVIOUR_PASSWORD),
        "a credential reached the output"
    );
}
