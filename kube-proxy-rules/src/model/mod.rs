//! The model both backends sync from, as kube-proxy's `pkg/proxy` is the
//! model its iptables and nftables proxiers share: service ports
//! ([`service`]), their endpoints and the traffic-policy decisions
//! ([`endpoints`]), the state one sync renders ([`ProxyState`]), what changed
//! since the last applied sync ([`changes`]: per-service fingerprints, the
//! change tracker) and when a sync must be full ([`full_sync`]).
//!
//! Nothing here runs a tool or knows a backend's rule syntax; the chain
//! names a service port and an endpoint carry ([`crate::names`]) are hashed
//! once when they are read, for both backends.

pub mod changes;
pub mod endpoints;
pub mod full_sync;
pub mod service;
pub mod topology;

pub use changes::{fingerprints, ChangeTracker, Changes, ServiceKey};
pub use endpoints::{EndpointInfo, EndpointsMap, Traffic};
pub use full_sync::{FullSyncReason, FullSyncs, FULL_SYNC_PERIOD};
pub use service::{Protocol, ServicePortInfo};
pub use topology::{Locality, TrafficDistribution};

use crate::family::IpFamily;
use endpoints::key_of;

/// Everything a sync renders from: service ports sorted by name (by
/// `name_string`, then protocol, as [`crate::inputs`] sorts them: what
/// [`ProxyState::ports_of`] relies on), and endpoints.
#[derive(Debug, Clone, Default)]
pub struct ProxyState {
    pub services: Vec<ServicePortInfo>,
    pub endpoints: EndpointsMap,
}

impl ProxyState {
    pub fn endpoints_of(&self, sp: &ServicePortInfo) -> &[EndpointInfo] {
        self.endpoints.get(&key_of(sp)).map(Vec::as_slice).unwrap_or(&[])
    }
    /// The ports of one service, found by binary search in the sorted
    /// `services` (an incremental sync looks up only the services that
    /// changed). A service's ports are all named (`ns/name:port`) or it has
    /// one unnamed port (`ns/name`).
    pub fn ports_of(&self, key: &ServiceKey) -> &[ServicePortInfo] {
        let (ns, name) = key;
        let exact = format!("{ns}/{name}");
        let prefix = format!("{exact}:");
        let range = |matches: &dyn Fn(&str) -> bool, from: &str| {
            let start = self.services.partition_point(|sp| sp.name_string.as_str() < from);
            let len = self.services[start..].iter().take_while(|sp| matches(&sp.name_string)).count();
            &self.services[start..start + len]
        };
        let unnamed = range(&|n| n == exact, &exact);
        let found = if unnamed.is_empty() { range(&|n| n.starts_with(&prefix), &prefix) } else { unnamed };
        // A name with a '/' or ':' inside could match another service's prefix.
        if found.iter().all(|sp| &sp.namespace == ns && &sp.name == name) {
            found
        } else {
            &[]
        }
    }
    pub fn total_endpoints(&self) -> usize {
        self.services.iter().map(|sp| self.endpoints_of(sp).len()).sum()
    }

    /// Split into the IPv4 and the IPv6 proxier's states (the MetaProxier's
    /// split): each gets the service ports of its family and the endpoints
    /// of its family. Moves, no copies of a single-family state.
    pub fn split_families(self) -> [ProxyState; 2] {
        let has_v6 = self.services.iter().any(|sp| sp.family() == IpFamily::V6)
            || self.endpoints.values().flatten().any(|e| e.ip.is_ipv6());
        if !has_v6 {
            return [self, ProxyState::default()];
        }
        let (v4, v6): (Vec<_>, Vec<_>) =
            self.services.into_iter().partition(|sp| sp.family() == IpFamily::V4);
        let mut eps4 = EndpointsMap::new();
        let mut eps6 = EndpointsMap::new();
        for (key, eps) in self.endpoints {
            let (a, b): (Vec<_>, Vec<_>) = eps.into_iter().partition(|e| e.ip.is_ipv4());
            if !a.is_empty() {
                eps4.insert(key.clone(), a);
            }
            if !b.is_empty() {
                eps6.insert(key, b);
            }
        }
        [ProxyState { services: v4, endpoints: eps4 }, ProxyState { services: v6, endpoints: eps6 }]
    }

    /// Nothing to proxy.
    pub fn is_empty(&self) -> bool {
        self.services.is_empty() && self.endpoints.is_empty()
    }
}
