//! Fixtures of the `ops` tests: a file store seeded with a pool, a block,
//! allocations, handle documents and pod records.

use std::collections::BTreeMap;

use calico_store::file::FileStore;
use calico_store::model::{
    self, AllocationAttribute, IpamHandle, ObjectMeta, WorkloadEndpoint, WorkloadEndpointSpec,
};
use calico_store::Datastore;

use super::{pool_add, NewPool};
use crate::block::{self, new_block, ATTR_NODE, ATTR_TIMESTAMP};
use crate::types::{Affinity, BlockCidr, Handle};

pub(super) fn store() -> (tempfile::TempDir, FileStore) {
    let d = tempfile::tempdir().unwrap();
    let s = FileStore::open(d.path()).unwrap();
    (d, s)
}

pub(super) fn attr(handle: &str, node: &str, ts: &str) -> AllocationAttribute {
    let mut sec = BTreeMap::new();
    sec.insert(ATTR_NODE.to_string(), node.to_string());
    sec.insert(ATTR_TIMESTAMP.to_string(), ts.to_string());
    AllocationAttribute { handle_id: Some(handle.into()), secondary: Some(sec) }
}

/// Seed a pool, one block on `node` with `allocs` (handle, count), and handle docs.
pub(super) fn seed(s: &dyn Datastore, node: &str, allocs: &[(&str, usize, &str)]) -> BlockCidr {
    pool_add(
        s,
        &NewPool {
            name: "p1".into(),
            cidr: "10.1.0.0/16".parse().unwrap(),
            block_size: None,
            disabled: false,
            node_selector: None,
            nat_outgoing: false,
        },
    )
    .unwrap();
    let cidr: BlockCidr = "10.1.0.0/26".parse().unwrap();
    let mut b = new_block(cidr, Some(&Affinity::host(node)), false);
    for (h, n, ts) in allocs {
        for _ in 0..*n {
            block::allocate_next(&mut b, &attr(h, node, ts)).unwrap();
        }
        let mut doc = IpamHandle::default();
        doc.block.insert(cidr.to_string(), *n as u32);
        s.create(&Handle::new(*h).unwrap().key(), &model::encode(&doc)).unwrap();
    }
    s.create(&cidr.key(), &model::encode(&b)).unwrap();
    s.create(&model::affinity_key(node, &cidr.net()), br#"{"state":"confirmed"}"#).unwrap();
    cidr
}

pub(super) fn wep(s: &dyn Datastore, node: &str, name: &str, ip: &str) {
    let spec = WorkloadEndpointSpec {
        orchestrator: "cni".into(),
        workload: name.into(),
        node: node.into(),
        container_id: name.into(),
        pod: name.into(),
        endpoint: "eth0".into(),
        interface_name: "cali0".into(),
        mac: String::new(),
        ip_networks: vec![format!("{ip}/32").parse().unwrap()],
        profiles: vec![],
        ports: vec![],
    };
    let meta = ObjectMeta { name: name.into(), namespace: Some("default".into()), ..Default::default() };
    let w = WorkloadEndpoint::new("WorkloadEndpoint", meta, spec);
    s.create(&model::workload_endpoint_key("default", name), &model::encode(&w)).unwrap();
}

pub(super) const OLD: &str = "2020-01-01T00:00:00Z";
