//! The node settings both backends write rules from (kube-proxy's flags,
//! for one IP family). What only one backend uses is in that backend's own
//! config: [`crate::iptables::IptablesConfig`] (localhost NodePorts,
//! `--random-fully`, conntrack liberal mode, nfacct) and
//! [`crate::nftables::NftablesConfig`] (the service IP ranges).

use std::net::IpAddr;

use ipnetwork::IpNetwork;

use crate::family::IpFamily;
use crate::model::Locality;

/// The node settings a payload depends on, in either mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    /// The family this proxier writes rules for (one proxier per family, as
    /// kube-proxy's MetaProxier); every address below is of this family.
    pub family: IpFamily,
    /// `--hostname-override`: endpoints with this nodeName are local.
    pub hostname: String,
    /// `--node-ip`: the first one of the family is "the" node IP (LB source ranges).
    pub node_ips: Vec<IpAddr>,
    /// `--cluster-cidr`: the local-traffic detector (`! -s` / `-s`); None = no detector.
    pub cluster_cidr: Option<IpNetwork>,
    /// The masquerade mark, e.g. `0x00004000` (see [`masquerade_mark`]).
    pub masquerade_mark: String,
    pub masquerade_all: bool,
    /// `--nodeport-addresses` (CIDRs of the family); empty = every local address.
    pub nodeport_addresses: Vec<IpNetwork>,
    /// This node's interface addresses, matched against `nodeport_addresses`.
    pub local_addresses: Vec<IpAddr>,
    /// The node's zone (its Node's `topology.kubernetes.io/zone` label, or
    /// `--node-zone`): topology hints for it keep traffic in it
    /// ([`crate::model::topology`]). None: zone hints are not used.
    pub zone: Option<String>,
}

/// kube-proxy's mark: `fmt.Sprintf("%#08x", 1<<bit)` pads the digits to 8: `0x00004000`.
pub fn masquerade_mark(bit: u32) -> String {
    format!("0x{:08x}", 1u64 << bit)
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            family: IpFamily::V4,
            hostname: String::new(),
            node_ips: Vec::new(),
            cluster_cidr: None,
            masquerade_mark: masquerade_mark(14),
            masquerade_all: false,
            nodeport_addresses: Vec::new(),
            local_addresses: Vec::new(),
            zone: None,
        }
    }
}

impl NodeConfig {
    /// The first `--node-ip` of the family: "the" node IP (LB source ranges).
    pub fn node_ip(&self) -> Option<IpAddr> {
        self.node_ips.iter().copied().find(|ip| self.family.has(*ip))
    }

    /// The node name and zone endpoints are categorized for.
    pub fn locality(&self) -> Locality<'_> {
        Locality { node: &self.hostname, zone: self.zone.as_deref() }
    }

    /// `nodePortAddresses.MatchAll()`: no `--nodeport-addresses`, or a /0.
    pub fn nodeports_match_all(&self) -> bool {
        self.nodeport_addresses.is_empty() || self.nodeport_addresses.iter().any(|c| c.prefix() == 0)
    }
}
