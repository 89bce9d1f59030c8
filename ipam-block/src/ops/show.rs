//! `ipam show`: utilization per pool and block, one address, and addresses
//! borrowed from other nodes' blocks.

use std::collections::BTreeMap;
use std::net::IpAddr;

use calico_store::model::{self, AllocationBlock, IpPool};
use ipnetwork::IpNetwork;
use serde::Serialize;

use super::{Doc, Snapshot};
use crate::block;

/// Utilization of one pool or block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Usage {
    /// `IP Pool` or `Block`.
    pub grouping: &'static str,
    pub cidr: IpNetwork,
    /// Pool name, or the block's affinity (`host:<node>`, empty when none).
    pub owner: String,
    pub total: u128,
    pub in_use: u128,
}

impl Usage {
    pub fn free(&self) -> u128 {
        self.total - self.in_use.min(self.total)
    }
}

fn net_size(net: &IpNetwork) -> u128 {
    let bits = if net.is_ipv4() { 32 } else { 128 };
    1u128.checked_shl(bits - u32::from(net.prefix())).unwrap_or(u128::MAX)
}

/// Per-pool utilization, followed (with `blocks`) by each block under its pool.
pub fn show(snap: &Snapshot, blocks: bool) -> Vec<Usage> {
    let mut out = Vec::new();
    let mut pools: Vec<&Doc<IpPool>> = snap.pools.iter().collect();
    pools.sort_by_key(|p| p.value.spec.cidr);
    for p in pools {
        let cidr = p.value.spec.cidr;
        let inside: Vec<&Doc<AllocationBlock>> =
            snap.blocks.iter().filter(|b| cidr.contains(b.value.cidr.network())).collect();
        let in_use = inside.iter().map(|b| block::allocated_count(&b.value) as u128).sum();
        let mut name = p.value.metadata.name.clone();
        if p.value.spec.disabled {
            name.push_str(" (disabled)");
        }
        out.push(Usage { grouping: "IP Pool", cidr, owner: name, total: net_size(&cidr), in_use });
        if blocks {
            for b in inside {
                out.push(Usage {
                    grouping: "Block",
                    cidr: b.value.cidr,
                    owner: b.value.affinity.clone().unwrap_or_default(),
                    total: b.value.allocations.len() as u128,
                    in_use: block::allocated_count(&b.value) as u128,
                });
            }
        }
    }
    // Blocks outside every pool (a pool was deleted under them) still count.
    if blocks {
        for b in &snap.blocks {
            if !snap.pools.iter().any(|p| p.value.spec.cidr.contains(b.value.cidr.network())) {
                out.push(Usage {
                    grouping: "Block (no pool)",
                    cidr: b.value.cidr,
                    owner: b.value.affinity.clone().unwrap_or_default(),
                    total: b.value.allocations.len() as u128,
                    in_use: block::allocated_count(&b.value) as u128,
                });
            }
        }
    }
    out
}

/// What `ipam show --ip X` tells about one address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IpInfo {
    pub ip: IpAddr,
    pub pool: Option<String>,
    pub block: Option<IpNetwork>,
    pub block_affinity: Option<String>,
    pub allocated: bool,
    pub handle: Option<String>,
    pub attributes: BTreeMap<String, String>,
    /// `<namespace>/<name>` of the pod records holding the address.
    pub endpoints: Vec<String>,
}

/// An address allocated by a node from a block affine to another node
/// (`ipam show --show-borrowed`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Borrowed {
    pub ip: IpAddr,
    pub block: IpNetwork,
    /// The block's owner (`host:<node>`, empty when none).
    pub block_owner: String,
    /// The node the allocation was made for (`node` attribute).
    pub node: String,
    pub handle: Option<String>,
}

pub fn borrowed(snap: &Snapshot) -> Vec<Borrowed> {
    let mut out = Vec::new();
    for b in &snap.blocks {
        let owner = block::affinity_of(&b.value);
        for a in block::allocations(&b.value) {
            let Some(node) = a.attributes.get(block::ATTR_NODE) else { continue };
            if owner.as_ref().map(|o| o.node()) != Some(node.as_str()) {
                out.push(Borrowed {
                    ip: a.ip,
                    block: b.value.cidr,
                    block_owner: b.value.affinity.clone().unwrap_or_default(),
                    node: node.clone(),
                    handle: a.handle.clone(),
                });
            }
        }
    }
    out
}

pub fn show_ip(snap: &Snapshot, ip: IpAddr) -> IpInfo {
    let blk = snap.block_of(ip);
    let alloc = blk.and_then(|b| block::allocations(&b.value).into_iter().find(|a| a.ip == ip));
    IpInfo {
        ip,
        pool: snap.pool_of(ip).map(|p| p.value.metadata.name.clone()),
        block: blk.map(|b| b.value.cidr),
        block_affinity: blk.and_then(|b| b.value.affinity.clone()),
        allocated: alloc.is_some(),
        handle: alloc.as_ref().and_then(|a| a.handle.clone()),
        attributes: alloc.map(|a| a.attributes).unwrap_or_default(),
        endpoints: snap
            .endpoints
            .iter()
            .filter(|e| e.value.spec.ip_networks.iter().any(|n| n.ip() == ip))
            .map(|e| e.key.strip_prefix(&model::workload_endpoints_prefix()).unwrap_or(&e.key).to_string())
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::test_support::*;
    use calico_store::Datastore;

    #[test]
    fn show_counts_pools_and_blocks() {
        let (_d, s) = store();
        seed(&s, "n1", &[("net.a", 3, OLD)]);
        let rows = show(&Snapshot::load(&s).unwrap(), true);
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[0].total, rows[0].in_use, rows[0].free()), (65536, 3, 65533));
        assert_eq!((rows[1].grouping, rows[1].total, rows[1].in_use), ("Block", 64, 3));
        assert_eq!(rows[1].owner, "host:n1");
        assert_eq!(show(&Snapshot::load(&s).unwrap(), false).len(), 1);
        assert!(borrowed(&Snapshot::load(&s).unwrap()).is_empty());
        // An allocation for n2 in n1's block is borrowed.
        let kv = s.get(&model::block_key(&"10.1.0.0/26".parse().unwrap())).unwrap().unwrap();
        let mut b: AllocationBlock = model::decode(&kv).unwrap();
        block::allocate_next(&mut b, &attr("net.n2", "n2", OLD)).unwrap();
        s.update(&kv.key, &model::encode(&b), kv.revision).unwrap();
        let got = borrowed(&Snapshot::load(&s).unwrap());
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].node.as_str(), got[0].block_owner.as_str()), ("n2", "host:n1"));
    }
}
