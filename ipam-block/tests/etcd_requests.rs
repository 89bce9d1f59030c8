//! Requests the allocator sends to a real etcd, counted by the store itself
//! (`EtcdStore::requests`): a steady-state allocation must stay at two round
//! trips (pool get + one block/handle commit), with no hidden retries.

use calico_store::etcd::EtcdStore;
use calico_store::DatastoreConfig;
use ipam_block::{AssignRequest, FamilyRequest, Handle, Ipam, PoolRef};
use testbed::Etcd;

fn request(i: usize) -> AssignRequest {
    AssignRequest {
        handle: Handle::for_container("net", &format!("c{i}")).unwrap(),
        namespace: Some("default".into()),
        pod: Some(format!("pod{i}")),
        ipv4: Some(FamilyRequest { pools: vec![PoolRef::parse("10.70.0.0/16").unwrap()], ip: None }),
        ipv6: None,
    }
}

#[test]
fn steady_state_allocation_costs_two_etcd_requests() {
    let etcd = Etcd::start();
    let store =
        EtcdStore::connect(&DatastoreConfig { etcd_endpoints: Some(etcd.endpoint()), ..Default::default() })
            .unwrap();
    let state = tempfile::tempdir().unwrap();
    let ipam = Ipam::new(&store, "node-r").with_state_dir(state.path());
    // The first allocation creates the pool and claims a block: more requests.
    let before = store.requests();
    ipam.assign(&request(0)).unwrap();
    let first = store.requests() - before;
    assert!(first > 2, "a block claim cannot be that cheap: {first}");
    // Then every allocation from the claimed block: exactly two.
    for i in 1..=20 {
        let before = store.requests();
        let got = ipam.assign(&request(i)).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(store.requests() - before, 2, "allocation {i}");
    }
    // A release reads the handle and its block, then commits.
    for i in 1..=20 {
        let before = store.requests();
        let freed = ipam.release_handle(&Handle::for_container("net", &format!("c{i}")).unwrap()).unwrap();
        assert_eq!(freed.len(), 1);
        assert!(store.requests() - before <= 3, "release {i}: {}", store.requests() - before);
    }
}
