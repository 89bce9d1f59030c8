//! Topology-aware routing, as kube-proxy's `CategorizeEndpoints` applies it
//! to the cluster endpoints of a service port: EndpointSlice hints
//! (`hints.forZones`, `hints.forNodes`) keep traffic in the node's zone (or
//! on the node) when every ready endpoint has a hint and at least one is
//! hinted for this zone (node); otherwise every endpoint is used.
//!
//! The hints are the EndpointSlice controller's. An endpoint read without
//! any (a slice written by hand, or an endpoint from Calico's pod records,
//! where no controller ran) gets the ones the controller would have written
//! for its Service's `trafficDistribution` (`PreferClose`/`PreferSameZone`:
//! its own zone; `PreferSameNode`: its node, and its zone): that is
//! [`effective`]. kube-proxy itself never reads `trafficDistribution`. An
//! endpoint's own zone is its slice endpoint's `zone`, else its Node
//! manifest's zone label ([`crate::model::endpoints::fill_zones`]).
//!
//! The node's zone is the `topology.kubernetes.io/zone` label of its Node
//! (kube-proxy's `topologyLabels`); without an API server, `--node-zone`
//! ([`crate::config::NodeConfig::zone`]). A node without a zone uses no
//! zone hints, as kube-proxy does.

use super::endpoints::EndpointInfo;

/// The Node label kube-proxy takes the node's zone from.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// `spec.trafficDistribution` of a Service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TrafficDistribution {
    /// `PreferClose` (its older name) or `PreferSameZone`.
    PreferSameZone,
    PreferSameNode,
}

impl TrafficDistribution {
    /// The API server's values; anything else is invalid.
    pub fn parse(v: &str) -> Result<Self, String> {
        match v {
            "PreferClose" | "PreferSameZone" => Ok(TrafficDistribution::PreferSameZone),
            "PreferSameNode" => Ok(TrafficDistribution::PreferSameNode),
            other => Err(format!(
                "invalid spec.trafficDistribution {other:?} (expected PreferClose, PreferSameZone or PreferSameNode)"
            )),
        }
    }
}

/// What a slice says of an endpoint's place (boxed in [`EndpointInfo`]:
/// most endpoints have none).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct EndpointTopology {
    /// `zone` of the slice endpoint.
    pub zone: Option<String>,
    /// `hints` of the slice endpoint, as the controller wrote them (None:
    /// no `hints` field at all).
    pub hints: Option<Hints>,
}

/// `hints.forZones` and `hints.forNodes` (names).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Hints {
    pub for_zones: Vec<String>,
    pub for_nodes: Vec<String>,
}

/// Where this proxier runs: its node name and zone.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Locality<'a> {
    pub node: &'a str,
    /// The node's zone; None (or empty) when its Node has no zone label.
    pub zone: Option<&'a str>,
}

impl<'a> From<&'a str> for Locality<'a> {
    /// A node without a zone.
    fn from(node: &'a str) -> Self {
        Locality { node, zone: None }
    }
}

/// kube-proxy's topology modes (`topologyModeFromHints`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// No topology: every endpoint.
    All,
    PreferSameZone,
    PreferSameNode,
}

/// Zone or node names of one endpoint's hints, without copying them.
#[derive(Debug, Clone, Copy)]
pub enum Names<'a> {
    None,
    /// A hint the controller would have written (the endpoint's own zone or node).
    One(&'a str),
    /// The slice's `forZones`/`forNodes`.
    Listed(&'a [String]),
}

impl Names<'_> {
    pub fn is_empty(&self) -> bool {
        match self {
            Names::None => true,
            Names::One(_) => false,
            Names::Listed(l) => l.is_empty(),
        }
    }
    pub fn contains(&self, name: &str) -> bool {
        match self {
            Names::None => false,
            Names::One(n) => *n == name,
            Names::Listed(l) => l.iter().any(|n| n == name),
        }
    }
}

/// The hints an endpoint is routed by, (zones, nodes): the slice's, else
/// those the controller would write for `td`.
pub fn effective(ep: &EndpointInfo, td: Option<TrafficDistribution>) -> (Names<'_>, Names<'_>) {
    let node = || ep.node_name.as_deref().filter(|n| !n.is_empty()).map_or(Names::None, Names::One);
    let Some(topo) = ep.topology.as_deref() else {
        // No zone known: only PreferSameNode can hint (the endpoint's node).
        return match td {
            Some(TrafficDistribution::PreferSameNode) => (Names::None, node()),
            _ => (Names::None, Names::None),
        };
    };
    if let Some(h) = &topo.hints {
        return (Names::Listed(&h.for_zones), Names::Listed(&h.for_nodes));
    }
    let zone = topo.zone.as_deref().filter(|z| !z.is_empty()).map_or(Names::None, Names::One);
    match td {
        None => (Names::None, Names::None),
        Some(TrafficDistribution::PreferSameZone) => (zone, Names::None),
        Some(TrafficDistribution::PreferSameNode) => (zone, node()),
    }
}

/// `topologyModeFromHints`: same-node when every ready endpoint has a node
/// hint and one is for this node; else same-zone when every ready endpoint
/// has a zone hint and one is for this zone; else none. No ready endpoint:
/// none (the terminating fallback ignores topology).
pub fn mode(eps: &[EndpointInfo], td: Option<TrafficDistribution>, here: Locality<'_>) -> Mode {
    if td.is_none() && eps.iter().all(|e| e.topology.is_none()) {
        return Mode::All; // the common case: nothing to look at
    }
    let zone = here.zone.unwrap_or("");
    let (mut ready, mut all_node, mut for_node, mut all_zone, mut for_zone) =
        (false, true, false, true, false);
    for ep in eps.iter().filter(|e| e.ready) {
        ready = true;
        let (zones, nodes) = effective(ep, td);
        if nodes.is_empty() {
            all_node = false;
        } else if nodes.contains(here.node) {
            for_node = true;
        }
        if zones.is_empty() {
            all_zone = false;
        } else if zones.contains(zone) {
            for_zone = true;
        }
    }
    if !ready {
        Mode::All
    } else if all_node && for_node {
        Mode::PreferSameNode
    } else if all_zone && for_zone {
        Mode::PreferSameZone
    } else {
        Mode::All
    }
}

/// `availableForTopology`: whether `ep` is used on this node in `mode` (no
/// fallback here: it is in choosing the mode).
pub fn available(ep: &EndpointInfo, mode: Mode, td: Option<TrafficDistribution>, here: Locality<'_>) -> bool {
    match mode {
        Mode::All => true,
        Mode::PreferSameNode => effective(ep, td).1.contains(here.node),
        Mode::PreferSameZone => effective(ep, td).0.contains(here.zone.unwrap_or("")),
    }
}
