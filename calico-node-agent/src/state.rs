//! What the datastore says this node should route: the blocks affine to it,
//! the addresses it borrowed from other nodes' blocks, the other nodes (for
//! the full mesh and `peerSelector`s), this node's own Node resource (labels,
//! AS) and the BGP resources (BGPConfiguration `default`, BGPPeers). Read
//! with a few prefix lists in one pass; no kernel access here.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use calico_store::model::{self, AffinityState, AllocationBlock, BgpPeer, BlockAffinity, IpFamily, Node};
use calico_store::{Datastore, StoreError};
use ipnetwork::IpNetwork;

use crate::config::AsNumber;
use crate::peering::{BgpDefaults, ClusterId, NodeBgpConfig, PeerRule};

/// An IPAM block (IPv4 or IPv6) confirmed affine to this node: pinned
/// locally by a blackhole route and announced as one aggregate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OwnBlock(pub IpNetwork);

/// An address this node holds inside a block affine to another node
/// (strictAffinity=false borrowing). The aggregate points at the other node,
/// so this node announces the /32 (/128).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BorrowedAddr(pub IpAddr);

impl BorrowedAddr {
    /// The host route: `a.b.c.d/32` or `x::y/128`.
    pub fn host_net(&self) -> String {
        match self.0 {
            IpAddr::V4(ip) => format!("{ip}/32"),
            IpAddr::V6(ip) => format!("{ip}/128"),
        }
    }
}

/// Another node as the mesh sees it (from its Node resource).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct MeshNode {
    pub name: String,
    pub ip: Ipv4Addr,
    /// `None`: the node uses the global default AS.
    pub as_number: Option<AsNumber>,
    /// Its `metadata.labels` (what a `peerSelector` matches).
    pub labels: BTreeMap<String, String>,
    /// Its `ipv6Address` (IPv6 mesh and IPv6 peerings with it).
    pub ipv6: Option<Ipv6Addr>,
    /// Its `routeReflectorClusterID`: the mesh skips a route reflector.
    pub rr_cluster_id: Option<ClusterId>,
    /// The `listenPort` of its own BGPConfiguration (`node.<name>`), if any.
    pub listen_port: Option<u16>,
}

/// This node's own Node resource as the datastore has it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ThisNode {
    /// `metadata.labels`: what BGPPeer `nodeSelector`s match.
    pub labels: BTreeMap<String, String>,
    /// `spec.bgp.asNumber`: this node's own AS, over the cluster default.
    pub as_number: Option<AsNumber>,
    /// `spec.bgp.routeReflectorClusterID`: this node reflects for its peers.
    pub rr_cluster_id: Option<ClusterId>,
}

/// The datastore's view for one node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoutingState {
    pub own_blocks: BTreeSet<OwnBlock>,
    pub borrowed: BTreeSet<BorrowedAddr>,
    /// Every other node with a BGP address, sorted by name.
    pub other_nodes: Vec<MeshNode>,
    /// `None` until this node's Node resource exists (or when it is unreadable).
    pub this_node: Option<ThisNode>,
    /// BGPConfiguration `default`; all fields `None` when there is none.
    pub bgp_defaults: BgpDefaults,
    /// This node's own BGPConfiguration (`node.<name>`); all `None` when
    /// there is none.
    pub node_bgp: NodeBgpConfig,
    /// Every valid BGPPeer, whichever node it is for, sorted by name.
    pub bgp_peers: Vec<PeerRule>,
    /// What was skipped or partly ignored in the BGP documents, each naming
    /// its document (`<key>: <why>`). Collected rather than logged so the
    /// agent reports each once, not on every poll.
    pub problems: BTreeSet<String>,
}

/// Read the routing state of `node` from the store.
pub fn read(store: &dyn Datastore, node: &str) -> Result<RoutingState, StoreError> {
    let mut state = RoutingState::default();

    for family in [IpFamily::V4, IpFamily::V6] {
        for kv in store.list(&model::host_affinities_prefix(node, family))? {
            // Our own claims are not skipped when unreadable: dropping one would
            // withdraw a block that still has pods. The read fails, the caller
            // keeps the current routes and retries.
            let aff: BlockAffinity = model::decode(&kv)?;
            // Only a confirmed claim routes: a pending one may still lose the
            // race for the block, a pendingDeletion one is being released.
            if aff.state != AffinityState::Confirmed || aff.deleted {
                continue;
            }
            match model::parse_affinity_key(&kv.key) {
                // A block CIDR with host bits is no block IPAM makes, and BIRD
                // refuses it as a route or filter prefix.
                Some((_, net)) if net.ip() != net.network() => {
                    state.problems.insert(format!("{}: block CIDR {net} has host bits set; ignored", kv.key));
                }
                // The key's family segment must agree with the CIDR.
                Some((_, net)) if IpFamily::of(&net) == family => {
                    state.own_blocks.insert(OwnBlock(net));
                }
                _ => log::warn!("ignoring unparsable affinity key {}", kv.key),
            }
        }
    }

    let my_affinity = format!("host:{node}");
    for family in [IpFamily::V4, IpFamily::V6] {
        for kv in store.list(&model::blocks_prefix(family))? {
            // A corrupt block costs at most its borrowed addresses; failing the
            // whole read would freeze this node's routing on someone else's document.
            let block: AllocationBlock = match model::decode(&kv) {
                Ok(b) => b,
                Err(e) => {
                    log::error!("skipping block: {e}");
                    continue;
                }
            };
            if block.deleted || block.affinity.as_deref() == Some(my_affinity.as_str()) {
                continue;
            }
            for (ordinal, alloc) in block.allocations.iter().enumerate() {
                let Some(attr_idx) = alloc else { continue };
                let held_here = block
                    .attributes
                    .get(*attr_idx)
                    .and_then(|a| a.secondary.as_ref())
                    .and_then(|s| s.get("node"))
                    .is_some_and(|n| n == node);
                if !held_here {
                    continue;
                }
                match nth_address(&block.cidr, ordinal) {
                    Some(ip) => {
                        state.borrowed.insert(BorrowedAddr(ip));
                    }
                    None => log::warn!("block {} has ordinal {ordinal} outside its range", kv.key),
                }
            }
        }
    }

    for kv in store.list(&model::nodes_prefix())? {
        let n: Node = match model::decode(&kv) {
            Ok(n) => n,
            Err(e) => {
                log::error!("skipping node: {e}");
                continue;
            }
        };
        let as_number = match n.spec.bgp.as_ref().and_then(|b| b.as_number) {
            Some(0) => {
                state.problems.insert(format!("{}: spec.bgp.asNumber 0 is not an AS number; unset", kv.key));
                None
            }
            other => other.map(AsNumber),
        };
        let rr_cluster_id =
            n.spec.bgp.as_ref().and_then(|b| b.route_reflector_cluster_id.as_deref()).and_then(|c| {
                match ClusterId::parse(c) {
                    Ok(id) => id,
                    Err(e) => {
                        state.problems.insert(format!("{}: {e}; not a route reflector", kv.key));
                        None
                    }
                }
            });
        if n.metadata.name == node {
            state.this_node = Some(ThisNode { labels: n.metadata.labels.clone(), as_number, rr_cluster_id });
            continue;
        }
        let Some(bgp) = n.spec.bgp else { continue };
        let ipv6 =
            match bgp.ipv6_address.as_deref().map(|a| a.split('/').next().unwrap_or("").parse::<IpAddr>()) {
                None => None,
                Some(Ok(IpAddr::V6(ip))) if usable_v6(ip) => Some(ip),
                Some(_) => {
                    state.problems.insert(format!(
                        "{}: ipv6Address {:?} is not a usable IPv6 address; IPv4 only",
                        kv.key,
                        bgp.ipv6_address.as_deref().unwrap_or("")
                    ));
                    None
                }
            };
        let Some(addr) = bgp.ipv4_address.as_deref() else { continue };
        // `ipv4Address` is `a.b.c.d/len`; tolerate a bare address.
        let ip = addr.split('/').next().and_then(|a| a.parse::<IpAddr>().ok());
        match ip {
            Some(IpAddr::V4(ip)) => state.other_nodes.push(MeshNode {
                name: n.metadata.name.clone(),
                ip,
                as_number,
                labels: n.metadata.labels.clone(),
                ipv6,
                rr_cluster_id,
                listen_port: None,
            }),
            _ => log::warn!("node {} has an unusable ipv4Address {addr:?}", n.metadata.name),
        }
    }
    state.other_nodes.sort();

    // BGP resources: a bad document is reported and skipped, a bad field of
    // the BGPConfiguration alone is dropped (the rest still applies), and
    // an invalid BGPPeer costs only its own peerings.
    // `default` is cluster-wide; `node.<name>` holds one node's own
    // settings (this node's, and the other nodes' listen ports, where the
    // mesh reaches them).
    let mut node_ports = BTreeMap::new();
    let this_node_config = model::node_bgp_configuration(node);
    for kv in store.list(&model::bgp_configurations_prefix())? {
        let name = kv.key.strip_prefix(&model::bgp_configurations_prefix()).unwrap_or(&kv.key);
        let (c, bad_fields) = match model::decode_bgp_configuration(&kv) {
            Ok(decoded) => decoded,
            Err(e) => {
                state.problems.insert(format!("ignoring BGPConfiguration: {e}"));
                continue;
            }
        };
        let report = |state: &mut RoutingState, bad: &[String]| {
            for p in bad {
                state.problems.insert(format!("{}: {p}", kv.key));
            }
        };
        report(&mut state, &bad_fields);
        if name == model::DEFAULT_BGP_CONFIGURATION {
            let (d, bad_values) = BgpDefaults::from_spec(&c.spec);
            report(&mut state, &bad_values);
            state.bgp_defaults = d;
        } else if let Some(other) = name.strip_prefix("node.") {
            let (n, bad_values) = NodeBgpConfig::from_spec(&c.spec);
            if name == this_node_config {
                report(&mut state, &bad_values);
                state.node_bgp = n;
            } else if let Some(port) = n.listen_port {
                node_ports.insert(other.to_string(), port);
            }
        } else {
            state.problems.insert(format!(
                "{}: not a BGPConfiguration Calico reads (only default and node.<name>); ignored",
                kv.key
            ));
        }
    }
    for n in &mut state.other_nodes {
        n.listen_port = node_ports.get(&n.name).copied();
    }
    for kv in store.list(&model::bgp_peers_prefix())? {
        let rule = model::decode::<BgpPeer>(&kv)
            .map_err(|e| e.to_string())
            .and_then(|p| PeerRule::from_resource(&p).map_err(|e| format!("{}: {e}", kv.key)));
        match rule {
            Ok(r) => {
                for f in &r.ignored_fields {
                    // The value is not shown: it may be a secret.
                    state.problems.insert(format!("{}: {f} is not implemented; peering without it", kv.key));
                }
                state.bgp_peers.push(r)
            }
            Err(e) => {
                state.problems.insert(format!("ignoring BGPPeer: {e}"));
            }
        }
    }
    state.bgp_peers.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(state)
}

/// The address at `ordinal` of a block of either family.
fn nth_address(cidr: &IpNetwork, ordinal: usize) -> Option<IpAddr> {
    match cidr {
        IpNetwork::V4(n) => u32::try_from(ordinal).ok().and_then(|o| n.nth(o)).map(IpAddr::V4),
        IpNetwork::V6(n) => {
            let o = u128::try_from(ordinal).ok()?;
            let size = 1u128.checked_shl(u32::from(128 - n.prefix())).unwrap_or(0);
            // A /0 has 2^128 addresses; any ordinal fits.
            if n.prefix() != 0 && o >= size {
                return None;
            }
            Some(IpAddr::V6(Ipv6Addr::from(u128::from(n.network()).checked_add(o)?)))
        }
    }
}

/// An IPv6 address BIRD can peer with without naming an interface: not
/// link-local, multicast, loopback or unspecified.
pub fn usable_v6(ip: Ipv6Addr) -> bool {
    !(ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() || (ip.segments()[0] & 0xffc0) == 0xfe80)
}

#[cfg(test)]
mod tests {
    use super::*;
    use calico_store::file::FileStore;
    use calico_store::model::{AllocationAttribute, NodeBgpSpec, NodeSpec, ObjectMeta};

    fn aff(state: AffinityState) -> Vec<u8> {
        model::encode(&BlockAffinity { state, deleted: false })
    }

    #[test]
    fn only_confirmed_claims_route_and_borrowed_addresses_are_found() {
        let dir = tempfile::tempdir().unwrap();
        let s = FileStore::open(dir.path()).unwrap();
        let net = |c: &str| -> IpNetwork { c.parse().unwrap() };
        s.create(&model::affinity_key("me", &net("10.0.0.0/26")), &aff(AffinityState::Confirmed)).unwrap();
        s.create(&model::affinity_key("me", &net("10.0.0.64/26")), &aff(AffinityState::Pending)).unwrap();
        s.create(&model::affinity_key("me", &net("10.0.0.128/26")), &aff(AffinityState::PendingDeletion))
            .unwrap();
        s.create(&model::affinity_key("other", &net("10.0.1.0/26")), &aff(AffinityState::Confirmed)).unwrap();
        // Host bits in the key: BIRD would refuse the route; reported, not routed.
        let raw_key = format!("{}10.0.9.1-26", model::host_affinities_prefix("me", IpFamily::V4));
        s.create(&raw_key, &aff(AffinityState::Confirmed)).unwrap();
        let attr = |n: &str| AllocationAttribute {
            handle_id: Some(format!("h.{n}")),
            secondary: Some([("node".to_string(), n.to_string())].into()),
        };
        let mut allocations = vec![None; 64];
        allocations[3] = Some(0);
        allocations[7] = Some(1);
        let other_block = AllocationBlock {
            cidr: net("10.0.1.0/26"),
            affinity: Some("host:other".into()),
            strict_affinity: false,
            allocations,
            unallocated: vec![],
            attributes: vec![attr("me"), attr("other")],
            deleted: false,
        };
        s.create(&model::block_key(&net("10.0.1.0/26")), &model::encode(&other_block)).unwrap();
        // Our own block with our own allocation: not "borrowed".
        let mut own = other_block.clone();
        own.cidr = net("10.0.0.0/26");
        own.affinity = Some("host:me".into());
        own.attributes = vec![attr("me"), attr("me")];
        s.create(&model::block_key(&net("10.0.0.0/26")), &model::encode(&own)).unwrap();
        // A corrupt block of someone else is skipped, not fatal.
        s.create(&model::block_key(&net("10.0.2.0/26")), b"{not json").unwrap();
        let node = |name: &str, ip: &str, asn: Option<u32>| {
            model::encode(&Node::new(
                "Node",
                ObjectMeta { name: name.into(), ..Default::default() },
                NodeSpec {
                    bgp: Some(NodeBgpSpec {
                        ipv4_address: Some(ip.into()),
                        as_number: asn,
                        ..Default::default()
                    }),
                },
            ))
        };
        s.create(&model::node_key("me"), &node("me", "192.168.1.1/24", None)).unwrap();
        s.create(&model::node_key("other"), &node("other", "192.168.1.2/24", Some(64600))).unwrap();

        let st = read(&s, "me").unwrap();
        assert_eq!(st.own_blocks.iter().map(|b| b.0.to_string()).collect::<Vec<_>>(), ["10.0.0.0/26"]);
        assert_eq!(st.borrowed.iter().map(|a| a.0.to_string()).collect::<Vec<_>>(), ["10.0.1.3"]);
        assert_eq!(
            st.other_nodes,
            vec![MeshNode {
                name: "other".into(),
                ip: "192.168.1.2".parse().unwrap(),
                as_number: Some(AsNumber(64600)),
                labels: BTreeMap::new(),
                ipv6: None,
                rr_cluster_id: None,
                listen_port: None,
            }]
        );
        assert_eq!(st.this_node, Some(ThisNode::default()));
        assert_eq!(st.problems.len(), 1, "{:?}", st.problems);
        assert!(st.problems.iter().all(|p| p.contains("10.0.9.1/26 has host bits")), "{:?}", st.problems);

        // A corrupt affinity of our own fails the read (routes stay as they are).
        s.create(&model::affinity_key("me", &net("10.0.3.0/26")), b"garbage").unwrap();
        assert!(matches!(read(&s, "me"), Err(StoreError::Corrupt { .. })));
    }
}
