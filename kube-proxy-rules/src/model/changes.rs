//! What changed since the last applied sync: kube-proxy's
//! `ServiceChangeTracker` and `EndpointsChangeTracker` fold informer events
//! into per-service changes; here the inputs are re-read whole, so a service
//! has changed when the fingerprint of its ports and endpoints differs from
//! the one last applied.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};

use super::ProxyState;

/// A service by (`namespace`, `name`).
pub type ServiceKey = (String, String);

/// Per-service fingerprints of what its rules are built from: every port of
/// the service and that port's endpoints.
pub fn fingerprints(state: &ProxyState) -> HashMap<ServiceKey, u64> {
    // Keyed by borrowed names while hashing: one copy of each key at the end,
    // not one per service port.
    let mut hashers: HashMap<(&str, &str), DefaultHasher> = HashMap::with_capacity(state.services.len());
    for sp in &state.services {
        let h = hashers.entry((sp.namespace.as_str(), sp.name.as_str())).or_default();
        sp.hash(h);
        state.endpoints_of(sp).hash(h);
    }
    hashers.into_iter().map(|((ns, name), h)| ((ns.to_string(), name.to_string()), h.finish())).collect()
}

/// The changes of one state against what was applied.
#[derive(Debug, Clone, Default)]
pub struct Changes {
    /// The state's fingerprints: what is applied once its sync succeeds.
    pub now: HashMap<ServiceKey, u64>,
    /// Services that are new or whose ports or endpoints differ.
    pub updated: HashSet<ServiceKey>,
    /// Services that were applied and are gone from the state.
    pub removed: HashSet<ServiceKey>,
}

/// The fingerprints of the last applied state (a sync that succeeded, or a
/// dry run taken as applied).
#[derive(Debug, Clone, Default)]
pub struct ChangeTracker {
    applied: HashMap<ServiceKey, u64>,
}

impl ChangeTracker {
    /// What `state` changes, without recording anything.
    pub fn changes(&self, state: &ProxyState) -> Changes {
        let now = fingerprints(state);
        let updated =
            now.iter().filter(|(k, v)| self.applied.get(*k) != Some(*v)).map(|(k, _)| k.clone()).collect();
        let removed = self.applied.keys().filter(|k| !now.contains_key(*k)).cloned().collect();
        Changes { now, updated, removed }
    }

    /// The state whose fingerprints are `now` is applied.
    pub fn applied(&mut self, now: HashMap<ServiceKey, u64>) {
        self.applied = now;
    }
}
