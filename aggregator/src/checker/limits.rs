//! How hard pullwatch may press on registries: a global bound on checks in flight and
//! per registry a concurrency bound (here), a request rate and the pause after 429 (in
//! the shared client, `pullwatch::registry`, which every request goes through).

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};

use pullwatch::locks::lock;
use tokio::sync::Semaphore;

/// Limits for every registry.
#[derive(Clone, Copy, Debug)]
pub struct RegistryLimits {
    pub max_concurrency: usize,
    pub requests_per_second: NonZeroU32,
}

/// The checks in flight against one registry host.
pub(crate) struct RegistryState {
    pub(crate) slots: Semaphore,
}

impl RegistryState {
    fn new(limits: RegistryLimits) -> Self {
        RegistryState {
            slots: Semaphore::new(limits.max_concurrency.max(1)),
        }
    }
}

/// Registry states by host, created on first use.
pub(crate) struct Registries {
    limits: RegistryLimits,
    states: Mutex<HashMap<String, Arc<RegistryState>>>,
}

impl Registries {
    pub(crate) fn new(limits: RegistryLimits) -> Self {
        Registries {
            limits,
            states: Mutex::new(HashMap::new()),
        }
    }

    /// Forgets the hosts not in `keep` (checks in flight keep their own handle).
    pub(crate) fn retain(&self, keep: &std::collections::BTreeSet<&str>) {
        lock(&self.states).retain(|host, _| keep.contains(host.as_str()));
    }

    pub(crate) fn get(&self, host: &str) -> Arc<RegistryState> {
        lock(&self.states)
            .entry(host.to_string())
            .or_insert_with(|| Arc::new(RegistryState::new(self.limits)))
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registries_are_shared_per_host() {
        let r = Registries::new(RegistryLimits {
            max_concurrency: 1,
            requests_per_second: NonZeroU32::new(1).unwrap(),
        });
        assert!(Arc::ptr_eq(&r.get("a"), &r.get("a")));
        assert!(!Arc::ptr_eq(&r.get("a"), &r.get("b")));
        assert_eq!(r.get("a").slots.available_permits(), 1);
    }
}
