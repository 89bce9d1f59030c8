//! What the datastore says this node should route: the blocks affine to it,
//! the addresses it borrowed from other nodes' blocks, and the other nodes
//! (for the full mesh). Read with a few prefix lists; no kernel access here.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};

use calico_store::model::{self, AffinityState, AllocationBlock, BlockAffinity, IpFamily, Node};
use calico_store::{Datastore, StoreError};
use ipnetwork::{IpNetwork, Ipv4Network};

use crate::config::AsNumber;

/// An IPAM block confirmed affine to this node: pinned locally by a blackhole
/// route and announced as one aggregate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OwnBlock(pub Ipv4Network);

/// An address this node holds inside a block affine to another node
/// (strictAffinity=false borrowing). The aggregate points at the other node,
/// so this node announces the /32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BorrowedAddr(pub Ipv4Addr);

/// Another node as the mesh sees it (from its Node resource).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct MeshNode {
    pub name: String,
    pub ip: Ipv4Addr,
    /// `None`: the node uses the global default AS.
    pub as_number: Option<AsNumber>,
}

/// The datastore's view for one node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoutingState {
    pub own_blocks: BTreeSet<OwnBlock>,
    pub borrowed: BTreeSet<BorrowedAddr>,
    /// Every other node with a BGP address, sorted by name.
    pub other_nodes: Vec<MeshNode>,
}

/// Read the routing state of `node` from the store.
pub fn read(store: &dyn Datastore, node: &str) -> Result<RoutingState, StoreError> {
    let mut state = RoutingState::default();

    for kv in store.list(&model::host_affinities_prefix(node, IpFamily::V4))? {
        let aff: BlockAffinity = model::decode(&kv)?;
        // Only a confirmed claim routes: a pending one may still lose the
        // race for the block, a pendingDeletion one is being released.
        if aff.state != AffinityState::Confirmed || aff.deleted {
            continue;
        }
        match model::parse_affinity_key(&kv.key) {
            Some((_, IpNetwork::V4(net))) => {
                state.own_blocks.insert(OwnBlock(net));
            }
            _ => log::warn!("ignoring unparsable affinity key {}", kv.key),
        }
    }

    let my_affinity = format!("host:{node}");
    for kv in store.list(&model::blocks_prefix(IpFamily::V4))? {
        let block: AllocationBlock = model::decode(&kv)?;
        if block.deleted || block.affinity.as_deref() == Some(my_affinity.as_str()) {
            continue;
        }
        let IpNetwork::V4(net) = block.cidr else { continue };
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
            match u32::try_from(ordinal).ok().and_then(|o| net.nth(o)) {
                Some(ip) => {
                    state.borrowed.insert(BorrowedAddr(ip));
                }
                None => log::warn!("block {} has ordinal {ordinal} outside its range", kv.key),
            }
        }
    }

    for kv in store.list(&model::nodes_prefix())? {
        let n: Node = model::decode(&kv)?;
        if n.metadata.name == node {
            continue;
        }
        let Some(bgp) = n.spec.bgp else { continue };
        let Some(addr) = bgp.ipv4_address.as_deref() else { continue };
        // `ipv4Address` is `a.b.c.d/len`; tolerate a bare address.
        let ip = addr.split('/').next().and_then(|a| a.parse::<IpAddr>().ok());
        match ip {
            Some(IpAddr::V4(ip)) => state.other_nodes.push(MeshNode {
                name: n.metadata.name.clone(),
                ip,
                as_number: bgp.as_number.map(AsNumber),
            }),
            _ => log::warn!("node {} has an unusable ipv4Address {addr:?}", n.metadata.name),
        }
    }
    state.other_nodes.sort();
    Ok(state)
}
