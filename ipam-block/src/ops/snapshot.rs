//! A consistent-enough read of everything IPAM-related: what `show`,
//! `check` and `gc` look at.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use calico_store::model::{
    self, AllocationBlock, IpFamily, IpPool, IpamConfig, IpamHandle, WorkloadEndpoint,
};
use calico_store::{Datastore, KeyValue, Revision, StoreError};
use ipnetwork::IpNetwork;

use super::OpsError;
use crate::block::{self, Allocation};

/// One decoded document with the revision it was read at.
#[derive(Debug, Clone)]
pub struct Doc<T> {
    pub key: String,
    pub revision: Revision,
    pub value: T,
}

/// Everything `show`, `check` and `gc` look at. Undecodable documents are
/// collected in `corrupt` (key, reason) instead of failing the whole read.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub pools: Vec<Doc<IpPool>>,
    pub blocks: Vec<Doc<AllocationBlock>>,
    pub handles: BTreeMap<String, Doc<IpamHandle>>,
    /// (node, block) of every affinity document.
    pub affinities: Vec<(String, IpNetwork)>,
    pub endpoints: Vec<Doc<WorkloadEndpoint>>,
    pub nodes: BTreeSet<String>,
    pub config: IpamConfig,
    pub corrupt: Vec<(String, String)>,
}

fn decode_all<T: serde::de::DeserializeOwned>(
    kvs: Vec<KeyValue>,
    corrupt: &mut Vec<(String, String)>,
    decode: impl Fn(&KeyValue) -> Result<T, StoreError>,
) -> Vec<Doc<T>> {
    let mut out = Vec::new();
    for kv in kvs {
        match decode(&kv) {
            Ok(value) => out.push(Doc { key: kv.key, revision: kv.revision, value }),
            Err(StoreError::Corrupt { key, reason }) => corrupt.push((key, reason)),
            Err(e) => corrupt.push((kv.key, e.to_string())),
        }
    }
    out
}

impl Snapshot {
    pub fn load(store: &dyn Datastore) -> Result<Snapshot, OpsError> {
        let mut s = Snapshot::default();
        let c = &mut s.corrupt;
        s.pools = decode_all(store.list(&model::pools_prefix())?, c, model::decode);
        for fam in [IpFamily::V4, IpFamily::V6] {
            s.blocks.extend(decode_all(store.list(&model::blocks_prefix(fam))?, c, block::decode_block));
        }
        for h in decode_all(store.list(&model::handles_prefix())?, c, model::decode::<IpamHandle>) {
            let id = h.key.strip_prefix(&model::handles_prefix()).unwrap_or(&h.key).to_string();
            s.handles.insert(id, h);
        }
        for kv in store.list(&model::all_affinities_prefix())? {
            match model::parse_affinity_key(&kv.key) {
                Some(a) => s.affinities.push(a),
                None => c.push((kv.key, "not an affinity key".into())),
            }
        }
        s.endpoints = decode_all(store.list(&model::workload_endpoints_prefix())?, c, model::decode);
        for kv in store.list(&model::nodes_prefix())? {
            if let Some(name) = kv.key.strip_prefix(&model::nodes_prefix()) {
                s.nodes.insert(name.to_string());
            }
        }
        if let Some(kv) = store.get(model::IPAM_CONFIG_KEY)? {
            match model::decode::<IpamConfig>(&kv) {
                Ok(cfg) => s.config = cfg,
                Err(e) => c.push((kv.key, e.to_string())),
            }
        }
        Ok(s)
    }

    /// Every allocation of every block.
    pub fn allocations(&self) -> Vec<Allocation> {
        self.blocks.iter().flat_map(|b| block::allocations(&b.value)).collect()
    }

    /// Addresses some pod record (WorkloadEndpoint) holds.
    pub fn pod_ips(&self) -> BTreeSet<IpAddr> {
        self.endpoints.iter().flat_map(|e| e.value.spec.ip_networks.iter().map(|n| n.ip())).collect()
    }

    /// Nodes known to exist: a Node resource, or a pod record on it.
    pub fn known_nodes(&self) -> BTreeSet<String> {
        let mut n = self.nodes.clone();
        n.extend(self.endpoints.iter().map(|e| e.value.spec.node.clone()));
        n
    }

    pub(crate) fn pool_of(&self, ip: IpAddr) -> Option<&Doc<IpPool>> {
        self.pools.iter().find(|p| p.value.spec.cidr.contains(ip))
    }

    pub(crate) fn block_of(&self, ip: IpAddr) -> Option<&Doc<AllocationBlock>> {
        self.blocks.iter().find(|b| b.value.cidr.contains(ip))
    }
}
