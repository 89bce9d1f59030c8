//! The allocator on the real file store: Calico's allocation rules, the
//! documents it writes, concurrency and the round-trip budget.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use calico_store::file::FileStore;
use calico_store::model::{self, IpPoolSpec, IpamConfig, ObjectMeta};
use calico_store::{Datastore, StoreError};
use ipam_block::pool::{self, DEFAULT_IPV4_POOL_NAME, DEFAULT_IPV6_POOL_NAME};
use ipam_block::{
    query, AssignRequest, BlockCidr, CountingStore, FamilyRequest, Handle, Ipam, IpamError, PoolName, PoolRef,
};
use serde_json::{json, Value};

struct Env {
    dir: tempfile::TempDir,
    store: Arc<dyn Datastore>,
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Datastore> = Arc::new(FileStore::open(dir.path().join("store")).unwrap());
        Env { dir, store }
    }

    fn state(&self, node: &str) -> std::path::PathBuf {
        self.dir.path().join(format!("state-{node}"))
    }

    /// An IPAM client for `node` with its own state dir (hint + host lock).
    fn ipam(&self, node: &str) -> Ipam<'_> {
        Ipam::new(self.store.as_ref(), node).with_state_dir(self.state(node))
    }

    fn pool(&self, name: &str, cidr: &str, block: Option<u8>, disabled: bool, selector: Option<&str>) {
        let spec = IpPoolSpec {
            cidr: cidr.parse().unwrap(),
            block_size: block,
            node_selector: selector.map(str::to_string),
            disabled,
            nat_outgoing: false,
        };
        pool::create_pool(self.store.as_ref(), &PoolName::new(name).unwrap(), spec).unwrap();
    }

    fn config(&self, cfg: IpamConfig) {
        let (_, rev) = query::ipam_config(self.store.as_ref()).unwrap();
        query::set_ipam_config(self.store.as_ref(), &cfg, rev).unwrap();
    }

    fn raw(&self, key: &str) -> Value {
        serde_json::from_slice(&self.store.get(key).unwrap().unwrap().value).unwrap()
    }
}

fn v4(pools: &[&str]) -> Option<FamilyRequest> {
    Some(FamilyRequest { pools: pools.iter().map(|p| PoolRef::parse(p).unwrap()).collect(), ip: None })
}

fn req(cid: &str, ipv4: Option<FamilyRequest>, ipv6: Option<FamilyRequest>) -> AssignRequest {
    AssignRequest {
        handle: Handle::for_container("net", cid).unwrap(),
        namespace: Some("default".into()),
        pod: Some(format!("pod-{cid}")),
        ipv4,
        ipv6,
    }
}

fn one(ipam: &Ipam, cid: &str, pools: &[&str]) -> IpAddr {
    let got = ipam.assign(&req(cid, v4(pools), None)).unwrap();
    assert_eq!(got.len(), 1);
    got[0].ip
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn a_26_is_filled_before_a_second_block_is_claimed() {
    let env = Env::new();
    let ipam = env.ipam("node1");
    let ips: Vec<IpAddr> = (0..65).map(|i| one(&ipam, &format!("c{i}"), &["10.20.0.0/16"])).collect();
    let first = BlockCidr::containing(ips[0], 26).unwrap();
    assert!(ips[..64].iter().all(|i| first.contains(*i)), "first 64 from {first}");
    assert_eq!(ips.iter().collect::<HashSet<_>>().len(), 65);
    let second = BlockCidr::containing(ips[64], 26).unwrap();
    assert_ne!(first, second);
    // Ordinals are handed out in order from the head of the FIFO.
    for (i, a) in ips[..64].iter().enumerate() {
        assert_eq!(first.ordinal_of(*a), Some(i));
    }
    // Both blocks are affine to node1, with confirmed affinities.
    for b in [first, second] {
        assert_eq!(env.raw(&b.key())["affinity"], "host:node1");
        assert_eq!(
            env.raw(&model::affinity_key("node1", &b.net())),
            json!({"state":"confirmed","deleted":false})
        );
    }
    // The CIDR pool was created on first use.
    let p =
        pool::get_pool(env.store.as_ref(), &PoolName::new("pool-10-20-0-0-16").unwrap()).unwrap().unwrap();
    assert!(p.enabled());
    assert_eq!(p.block_prefix(), 26);
}

#[test]
fn released_addresses_go_to_the_tail_of_the_fifo() {
    let env = Env::new();
    let ipam = env.ipam("node1");
    let a = one(&ipam, "a", &["10.1.0.0/26"]);
    let b = one(&ipam, "b", &["10.1.0.0/26"]);
    assert_eq!(ipam.release_handle(&Handle::for_container("net", "a").unwrap()).unwrap(), vec![a]);
    let c = one(&ipam, "c", &["10.1.0.0/26"]);
    assert_ne!(c, a, "a just-released address must not be reused next");
    assert_eq!((b, c), (ip("10.1.0.1"), ip("10.1.0.2")));
    let block = env.raw(&BlockCidr::containing(a, 26).unwrap().key());
    let unalloc: Vec<u64> = serde_json::from_value(block["unallocated"].clone()).unwrap();
    assert_eq!(unalloc.first(), Some(&3));
    assert_eq!(unalloc.last(), Some(&0), "released ordinal 0 is at the tail");
    // Once the rest of the block is used, the released address comes back last.
    let rest: Vec<IpAddr> = (0..62).map(|i| one(&ipam, &format!("r{i}"), &["10.1.0.0/26"])).collect();
    assert_eq!(rest.last(), Some(&a));
}

#[test]
fn documents_match_calicos_json() {
    let env = Env::new();
    let ipam = env.ipam("node1");
    let got = ipam.assign(&req("cid1", v4(&["10.3.0.0/24"]), None)).unwrap();
    assert_eq!(got[0].ip, ip("10.3.0.0"));
    let handle = env.raw("/calico/ipam/v2/handle/net.cid1");
    assert_eq!(handle, json!({"block":{"10.3.0.0/26":1},"deleted":false}));
    let block = env.raw("/calico/ipam/v2/assignment/ipv4/block/10.3.0.0-26");
    assert_eq!(block["cidr"], "10.3.0.0/26");
    assert_eq!(block["affinity"], "host:node1");
    assert_eq!(block["allocations"][0], 0);
    assert_eq!(block["allocations"][1], Value::Null);
    assert_eq!(block["deleted"], false);
    let attr = &block["attributes"][0];
    assert_eq!(attr["handle_id"], "net.cid1");
    let sec = attr["secondary"].as_object().unwrap();
    assert_eq!(sec.keys().collect::<Vec<_>>(), ["namespace", "node", "pod", "timestamp"]);
    assert_eq!(
        (sec["node"].as_str(), sec["namespace"].as_str(), sec["pod"].as_str()),
        (Some("node1"), Some("default"), Some("pod-cid1"))
    );
    assert!(sec["timestamp"].as_str().unwrap().ends_with(" +0000 UTC"));
    let pool = env.raw("/calico/resources/v3/projectcalico.org/ippools/pool-10-3-0-0-24");
    assert_eq!(pool["kind"], "IPPool");
    assert_eq!(pool["apiVersion"], "projectcalico.org/v3");
    assert_eq!(pool["spec"]["cidr"], "10.3.0.0/24");
}

#[test]
fn default_pools_are_created_when_none_exist() {
    let env = Env::new();
    let ipam = env.ipam("node1");
    let got = ipam.assign(&req("c", v4(&[]), Some(FamilyRequest::default()))).unwrap();
    assert!(
        ip("192.168.0.0").is_ipv4()
            && "192.168.0.0/16".parse::<ipnetwork::IpNetwork>().unwrap().contains(got[0].ip)
    );
    assert!("fdca:11c0::/48".parse::<ipnetwork::IpNetwork>().unwrap().contains(got[1].ip));
    assert_eq!(BlockCidr::containing(got[1].ip, 122).unwrap(), got[1].block);
    for name in [DEFAULT_IPV4_POOL_NAME, DEFAULT_IPV6_POOL_NAME] {
        assert!(pool::get_pool(env.store.as_ref(), &PoolName::new(name).unwrap()).unwrap().is_some());
    }
    // Both families in one handle document.
    let h = env.raw("/calico/ipam/v2/handle/net.c");
    assert_eq!(h["block"].as_object().unwrap().len(), 2);
}

#[test]
fn specific_ip_is_assigned_or_refused() {
    let env = Env::new();
    env.pool("p1", "10.5.0.0/24", None, false, None);
    env.pool("off", "10.6.0.0/24", None, true, None);
    let ipam = env.ipam("node1");
    let want = ip("10.5.0.77");
    let r = |cid: &str, a: IpAddr| req(cid, Some(FamilyRequest { pools: vec![], ip: Some(a) }), None);
    assert_eq!(ipam.assign(&r("x", want)).unwrap()[0].ip, want);
    // The block holding it was claimed for this node.
    assert_eq!(env.raw(&BlockCidr::containing(want, 26).unwrap().key())["affinity"], "host:node1");
    let err = ipam.assign(&r("y", want)).unwrap_err();
    assert!(matches!(err, IpamError::AlreadyAssigned { .. }), "{err}");
    assert!(err.to_string().contains("Address already assigned in block"), "{err}");
    for outside in ["10.6.0.1", "172.16.0.1"] {
        let err = ipam.assign(&r("z", ip(outside))).unwrap_err();
        assert!(matches!(err, IpamError::NotInPool(_)), "{outside}: {err}");
    }
    // Nothing was left behind by the failures.
    assert!(env.store.get("/calico/ipam/v2/handle/net.y").unwrap().is_none());
    assert_eq!(query::list_allocations(env.store.as_ref()).unwrap().len(), 1);
}

#[test]
fn borrowing_unless_strict_affinity() {
    let env = Env::new();
    // A pool of exactly one block: node2 can only borrow from node1's.
    env.pool("tiny", "10.7.0.0/26", None, false, None);
    let n1 = env.ipam("node1");
    let n2 = env.ipam("node2");
    one(&n1, "a", &["tiny"]);
    let borrowed = one(&n2, "b", &["tiny"]);
    let block = BlockCidr::containing(borrowed, 26).unwrap();
    assert_eq!(env.raw(&block.key())["affinity"], "host:node1");
    let attrs = &env.raw(&block.key())["attributes"];
    assert_eq!(attrs[1]["secondary"]["node"], "node2");
    // node2 holds no affinity for the borrowed block.
    assert!(query::list_affinities(env.store.as_ref()).unwrap().iter().all(|a| a.node == "node1"));
    // Releasing the borrowed address keeps the (affine) block.
    n2.release_handle(&Handle::for_container("net", "b").unwrap()).unwrap();
    assert!(env.store.get(&block.key()).unwrap().is_some());

    env.config(IpamConfig { strict_affinity: true, ..Default::default() });
    let err = n2.assign(&req("c", v4(&["tiny"]), None)).unwrap_err();
    assert!(matches!(err, IpamError::Exhausted { .. }), "{err}");
}

#[test]
fn last_release_in_an_unaffine_block_deletes_it_affine_block_stays() {
    let env = Env::new();
    env.pool("p", "10.8.0.0/26", None, false, None);
    let n1 = env.ipam("node1");
    let a = one(&n1, "a", &["p"]);
    let block = BlockCidr::containing(a, 26).unwrap();
    // An affine block that empties stays.
    n1.release_handle(&Handle::for_container("net", "a").unwrap()).unwrap();
    assert!(env.store.get(&block.key()).unwrap().is_some());
    // Orphan the block (as when its node is removed), then borrow from it.
    let kv = env.store.get(&block.key()).unwrap().unwrap();
    let mut doc: Value = serde_json::from_slice(&kv.value).unwrap();
    doc["affinity"] = Value::Null;
    env.store.update(&block.key(), &serde_json::to_vec(&doc).unwrap(), kv.revision).unwrap();
    let aff = env.store.get(&model::affinity_key("node1", &block.net())).unwrap().unwrap();
    env.store.delete(&aff.key, aff.revision).unwrap();
    let n2 = env.ipam("node2");
    let b = one(&n2, "b", &["p"]);
    assert!(block.contains(b));
    n2.release_handle(&Handle::for_container("net", "b").unwrap()).unwrap();
    assert!(env.store.get(&block.key()).unwrap().is_none(), "empty unaffine block is deleted");
}

#[test]
fn per_host_block_limit() {
    let env = Env::new();
    env.config(IpamConfig { strict_affinity: true, auto_allocate_blocks: true, max_blocks_per_host: 1 });
    let ipam = env.ipam("node1");
    for i in 0..64 {
        one(&ipam, &format!("c{i}"), &["10.9.0.0/16"]);
    }
    let err = ipam.assign(&req("over", v4(&["10.9.0.0/16"]), None)).unwrap_err();
    assert!(err.to_string().contains("cannot allocate new block due to per host block limit"), "{err}");
}

#[test]
fn default_block_limit_is_twenty() {
    let env = Env::new();
    // /30 blocks: 4 addresses each, so 20 blocks fill after 80 addresses.
    env.pool("small", "10.10.0.0/24", Some(30), false, None);
    env.config(IpamConfig { strict_affinity: true, ..Default::default() });
    let ipam = env.ipam("node1");
    for i in 0..80 {
        one(&ipam, &format!("c{i}"), &["small"]);
    }
    let err = ipam.assign(&req("over", v4(&["small"]), None)).unwrap_err();
    assert!(matches!(err, IpamError::BlockLimit { limit: 20 }), "{err}");
}

#[test]
fn disabled_pools_are_never_used() {
    let env = Env::new();
    env.pool("a", "10.11.0.0/24", None, false, None);
    env.pool("b", "10.12.0.0/24", None, true, None);
    let ipam = env.ipam("node1");
    // Named disabled or missing pools are refused with Calico's message.
    for name in ["b", "missing"] {
        let err = ipam.assign(&req("x", v4(&[name]), None)).unwrap_err();
        assert_eq!(err.to_string(), format!("the given pool ({name}) does not exist, or is not enabled"));
    }
    // A CIDR naming a disabled pool is refused too (not re-created).
    assert!(matches!(ipam.assign(&req("x", v4(&["10.12.0.0/24"]), None)), Err(IpamError::PoolNotUsable(_))));
    // Automatic selection skips the disabled pool.
    let first = one(&ipam, "c1", &[]);
    assert!(first.to_string().starts_with("10.11.0."), "{first}");
    // Disabling the pool of the node's current (hinted) block takes effect at once.
    pool::set_pool_disabled(env.store.as_ref(), &PoolName::new("a").unwrap(), true).unwrap();
    pool::set_pool_disabled(env.store.as_ref(), &PoolName::new("b").unwrap(), false).unwrap();
    let next = one(&ipam, "c2", &[]);
    assert!(next.to_string().starts_with("10.12.0."), "{next}");
    // All pools disabled: no pool for this node.
    pool::set_pool_disabled(env.store.as_ref(), &PoolName::new("b").unwrap(), true).unwrap();
    assert!(matches!(ipam.assign(&req("c3", v4(&[]), None)), Err(IpamError::NoPools { .. })));
}

#[test]
fn node_selector_uses_node_labels() {
    let env = Env::new();
    env.pool("zone-a", "10.13.0.0/24", None, false, Some("zone == 'a'"));
    let ipam = env.ipam("node1");
    assert!(matches!(ipam.assign(&req("x", v4(&[]), None)), Err(IpamError::NoPools { .. })));
    // A requested pool bypasses the selector.
    one(&ipam, "y", &["zone-a"]);
    let node = model::Node::new(
        "Node",
        ObjectMeta {
            name: "node1".into(),
            labels: BTreeMap::from([("zone".to_string(), "a".to_string())]),
            ..Default::default()
        },
        Default::default(),
    );
    env.store.create(&model::node_key("node1"), &model::encode(&node)).unwrap();
    assert!(one(&ipam, "z", &[]).to_string().starts_with("10.13.0."));
}

#[test]
fn dual_stack_is_all_or_nothing() {
    let env = Env::new();
    env.pool("v6", "fd10::/120", None, false, None);
    let ipam = env.ipam("node1");
    let v6 = Some(FamilyRequest { pools: vec![PoolRef::parse("v6").unwrap()], ip: None });
    let got = ipam.assign(&req("ok", v4(&["10.14.0.0/24"]), v6)).unwrap();
    assert_eq!(got.iter().map(|a| a.ip.to_string()).collect::<Vec<_>>(), ["10.14.0.0", "fd10::"]);
    assert_eq!(got[1].block.to_string(), "fd10::/122");
    let h = env.raw("/calico/ipam/v2/handle/net.ok");
    assert_eq!(h["block"], json!({"10.14.0.0/26": 1, "fd10::/122": 1}));
    // The IPv6 side fails: the IPv4 address must not stay allocated.
    let bad6 = Some(FamilyRequest { pools: vec![PoolRef::parse("nope").unwrap()], ip: None });
    assert!(ipam.assign(&req("bad", v4(&["10.14.0.0/24"]), bad6)).is_err());
    assert!(env.store.get("/calico/ipam/v2/handle/net.bad").unwrap().is_none());
    assert_eq!(query::list_allocations(env.store.as_ref()).unwrap().len(), 2);
    // Release frees both families.
    let freed = ipam.release_handle(&Handle::for_container("net", "ok").unwrap()).unwrap();
    assert_eq!(freed.len(), 2);
    assert!(query::list_allocations(env.store.as_ref()).unwrap().is_empty());
}

#[test]
fn release_is_idempotent() {
    let env = Env::new();
    let ipam = env.ipam("node1");
    let h = Handle::for_container("net", "gone").unwrap();
    assert!(ipam.release_handle(&h).unwrap().is_empty());
    let a = one(&ipam, "gone", &["10.15.0.0/24"]);
    assert_eq!(ipam.ips_of_handle(&h).unwrap(), vec![a]);
    assert_eq!(ipam.release_handle(&h).unwrap(), vec![a]);
    assert!(ipam.release_handle(&h).unwrap().is_empty());
    assert!(env.store.get(&h.key()).unwrap().is_none());
    assert!(ipam.ips_of_handle(&h).unwrap().is_empty());
}

/// An `IP=` address inside the node's hinted block, then released: the
/// release must free it even though the IP= path does not take the
/// automatic path's hint (a stale hinted copy without the allocation once
/// made the release delete the handle and leak the address).
#[test]
fn a_requested_ip_in_the_hinted_block_is_released() {
    let env = Env::new();
    let ipam = env.ipam("node1");
    let first = one(&ipam, "auto", &["10.23.0.0/24"]);
    let block = BlockCidr::containing(first, 26).unwrap();
    let wanted = block.net().iter().nth(9).unwrap();
    let r = req("fixed", Some(FamilyRequest { pools: vec![], ip: Some(wanted) }), None);
    assert_eq!(ipam.assign(&r).unwrap()[0].ip, wanted);
    let freed = ipam.release_handle(&Handle::for_container("net", "fixed").unwrap()).unwrap();
    assert_eq!(freed, [wanted]);
    // The same when another process (no hint of its own to refresh) made
    // the allocation behind this one's hint.
    let other = Ipam::new(env.store.as_ref(), "node1");
    let wanted2 = block.net().iter().nth(10).unwrap();
    let r2 = req("fixed2", Some(FamilyRequest { pools: vec![], ip: Some(wanted2) }), None);
    assert_eq!(other.assign(&r2).unwrap()[0].ip, wanted2);
    let freed = ipam.release_handle(&Handle::for_container("net", "fixed2").unwrap()).unwrap();
    assert_eq!(freed, [wanted2]);
    let doc = env.raw(&block.key());
    let used = doc["allocations"].as_array().unwrap().iter().filter(|a| !a.is_null()).count();
    assert_eq!(used, 1, "only the automatic address is left: {doc}");
}

/// The runtime's GC on one node names only that node's attachments: the
/// same network's pods on other nodes (one shared etcd) must be left alone.
#[test]
fn gc_releases_only_this_nodes_handles() {
    let env = Env::new();
    let (a, b) = (env.ipam("node-a"), env.ipam("node-b"));
    one(&a, "a-keep", &["10.17.0.0/24"]);
    one(&a, "a-stale", &["10.17.0.0/24"]);
    one(&b, "b-pod", &["10.17.0.0/24"]);
    let keep = HashSet::from(["a-keep".to_string()]);
    let outcome = a.gc_network("net", &keep).unwrap();
    assert!(outcome.failed.is_empty());
    let names: Vec<_> = outcome.released.iter().map(|h| h.to_string()).collect();
    assert_eq!(names, ["net.a-stale"]);
    let b_handle = Handle::for_container("net", "b-pod").unwrap();
    assert_eq!(b.ips_of_handle(&b_handle).unwrap().len(), 1, "node-b's pod kept its address");
}

#[test]
fn gc_releases_handles_of_the_network_not_kept() {
    let env = Env::new();
    let ipam = env.ipam("node1");
    for cid in ["keep", "drop1", "drop2"] {
        one(&ipam, cid, &["10.16.0.0/24"]);
    }
    let other =
        AssignRequest { handle: Handle::for_container("other", "drop3").unwrap(), ..req("x", v4(&[]), None) };
    ipam.assign(&other).unwrap();
    let keep = HashSet::from(["keep".to_string()]);
    let outcome = ipam.gc_network("net", &keep).unwrap();
    assert!(outcome.failed.is_empty());
    let mut names: Vec<_> = outcome.released.iter().map(|h| h.to_string()).collect();
    names.sort();
    assert_eq!(names, ["net.drop1", "net.drop2"]);
    let left: Vec<_> =
        query::list_handles(env.store.as_ref()).unwrap().into_iter().map(|h| h.handle.to_string()).collect();
    assert_eq!(left, ["net.keep", "other.drop3"]);
}

#[test]
fn operator_views_and_single_ip_release() {
    let env = Env::new();
    let ipam = env.ipam("node1");
    let a = one(&ipam, "a", &["10.17.0.0/24"]);
    let b = one(&ipam, "b", &["10.17.0.0/24"]);
    let blocks = query::list_blocks(env.store.as_ref()).unwrap();
    assert_eq!(blocks.len(), 1);
    assert_eq!((blocks[0].allocated, blocks[0].free), (2, 62));
    assert_eq!(blocks[0].affinity.as_ref().map(|a| a.node().to_string()), Some("node1".into()));
    let allocs = query::list_allocations(env.store.as_ref()).unwrap();
    assert_eq!(
        allocs.iter().map(|x| (x.ip, x.handle.clone().unwrap())).collect::<Vec<_>>(),
        [(a, "net.a".to_string()), (b, "net.b".to_string())]
    );
    assert_eq!(allocs[0].attributes["pod"], "pod-a");
    assert_eq!(query::release_ip(env.store.as_ref(), a).unwrap(), Some("net.a".into()));
    assert_eq!(query::release_ip(env.store.as_ref(), a).unwrap(), None);
    assert!(env.store.get("/calico/ipam/v2/handle/net.a").unwrap().is_none());
    assert_eq!(query::list_handles(env.store.as_ref()).unwrap().len(), 1);
    let affs = query::list_affinities(env.store.as_ref()).unwrap();
    assert_eq!(affs.len(), 1);
}

#[test]
fn nodes_start_their_search_at_different_blocks() {
    let env = Env::new();
    let blocks: HashSet<BlockCidr> = (0..4)
        .map(|i| {
            let ipam = env.ipam(&format!("node-{i}"));
            BlockCidr::containing(one(&ipam, &format!("c{i}"), &["10.18.0.0/16"]), 26).unwrap()
        })
        .collect();
    assert_eq!(blocks.len(), 4);
    // The first block of a node is the host-seeded one.
    let p =
        pool::get_pool(env.store.as_ref(), &PoolName::new("pool-10-18-0-0-16").unwrap()).unwrap().unwrap();
    let expect = p.block_at(ipam_block::allocator::host_seed("node-0", p.block_count())).unwrap();
    assert!(blocks.contains(&expect));
}

#[test]
fn corrupt_block_is_reported_not_overwritten() {
    let env = Env::new();
    let ipam = env.ipam("node1");
    let a = one(&ipam, "a", &["10.19.0.0/24"]);
    let key = BlockCidr::containing(a, 26).unwrap().key();
    let kv = env.store.get(&key).unwrap().unwrap();
    env.store.update(&key, b"{\"cidr\":", kv.revision).unwrap();
    // Without the hint (fresh state dir) and with it.
    for ipam in [Ipam::new(env.store.as_ref(), "node1"), env.ipam("node1")] {
        let err = ipam.assign(&req("b", v4(&["10.19.0.0/24"]), None)).unwrap_err();
        assert!(matches!(&err, IpamError::Store(StoreError::Corrupt { key: k, .. }) if *k == key), "{err}");
    }
    assert_eq!(env.store.get(&key).unwrap().unwrap().value, b"{\"cidr\":");
}

/// The block document says which node owns it; an affinity document that
/// does not decode (hand-edited, half-written by another tool) must not stop
/// the node from allocating from its block, and is left as it is.
#[test]
fn corrupt_affinity_does_not_block_the_node() {
    let env = Env::new();
    let ipam = env.ipam("node1");
    let a = one(&ipam, "a", &["10.20.0.0/24"]);
    let cidr = BlockCidr::containing(a, 26).unwrap();
    let aff_key = ipam_block::Affinity::host("node1").key(&cidr);
    let kv = env.store.get(&aff_key).unwrap().unwrap();
    env.store.update(&aff_key, b"{\"state\":", kv.revision).unwrap();
    // Without the hint (fresh state dir: the affinity list is read) and with it.
    for (i, ipam) in [Ipam::new(env.store.as_ref(), "node1"), env.ipam("node1")].into_iter().enumerate() {
        let b = one(&ipam, &format!("b{i}"), &["10.20.0.0/24"]);
        assert!(cidr.contains(b), "{b} not from the node's block {cidr}");
    }
    assert_eq!(env.store.get(&aff_key).unwrap().unwrap().value, b"{\"state\":");
}

/// Round trips of steady-state operations, counted at the datastore.
#[test]
fn steady_state_allocation_takes_two_round_trips() {
    let env = Env::new();
    let counting = CountingStore::new(Arc::clone(&env.store));
    let ipam = Ipam::new(&counting, "node1").with_state_dir(env.state("node1"));
    let pools = ["10.21.0.0/24"];
    one(&ipam, "warm", &pools);
    for i in 0..10 {
        counting.reset();
        one(&ipam, &format!("c{i}"), &pools);
        let c = counting.counts();
        assert!(c.total() <= 2, "ADD {i}: {c:?}");
        assert_eq!(c.commits, 1);
        counting.reset();
        ipam.release_handle(&Handle::for_container("net", &format!("c{i}")).unwrap()).unwrap();
        let c = counting.counts();
        assert!(c.total() <= 2, "DEL {i}: {c:?}");
    }
    // Another process changed the block behind the hint's back: one extra get.
    let second = Ipam::new(env.store.as_ref(), "node1");
    second.assign(&req("side", v4(&pools), None)).unwrap();
    counting.reset();
    one(&ipam, "after", &pools);
    assert_eq!(counting.counts().total(), 4, "{:?}", counting.counts());
    counting.reset();
    one(&ipam, "again", &pools);
    assert!(counting.counts().total() <= 2);
}

#[test]
fn threads_never_get_the_same_address() {
    let env = Env::new();
    // Half the threads share a state dir (host lock + hint), half use pure CAS.
    let ips = std::thread::scope(|s| {
        let handles: Vec<_> = (0..6)
            .map(|t| {
                let env = &env;
                s.spawn(move || {
                    let ipam = if t % 2 == 0 {
                        env.ipam("node1")
                    } else {
                        Ipam::new(env.store.as_ref(), if t == 1 { "node1" } else { "node2" })
                    };
                    (0..25).map(|i| one(&ipam, &format!("t{t}-{i}"), &["10.22.0.0/16"])).collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect::<Vec<_>>()
    });
    assert_eq!(ips.iter().collect::<HashSet<_>>().len(), 150, "duplicate address handed out");
    assert_consistent(env.store.as_ref(), 150);
}

/// Blocks, handles and allocations agree: every allocation's handle counts it.
fn assert_consistent(store: &dyn Datastore, n: usize) {
    let allocs = query::list_allocations(store).unwrap();
    assert_eq!(allocs.len(), n);
    let handles = query::list_handles(store).unwrap();
    assert_eq!(handles.len(), n);
    for h in handles {
        let total: u32 = h.blocks.values().sum();
        let held = allocs.iter().filter(|a| a.handle.as_deref() == Some(h.handle.as_str())).count();
        assert_eq!(total as usize, held, "{}", h.handle);
    }
    let unique: HashSet<_> = allocs.iter().map(|a| a.ip).collect();
    assert_eq!(unique.len(), n);
    // Never two owners: every affinity names the block's owner, one per block.
    let blocks: BTreeMap<BlockCidr, Option<String>> = query::list_blocks(store)
        .unwrap()
        .into_iter()
        .map(|b| (b.cidr, b.affinity.map(|a| a.node().to_string())))
        .collect();
    let mut owned = HashSet::new();
    for a in query::list_affinities(store).unwrap() {
        assert_eq!(blocks.get(&a.block), Some(&Some(a.node.clone())), "affinity {a:?}");
        assert!(owned.insert(a.block), "two affinities for {}", a.block);
    }
}

/// Child body for the multi-process test (inert unless started by it).
#[test]
fn process_child() {
    let (Ok(dir), Ok(node)) = (std::env::var("IPAM_CHILD_DIR"), std::env::var("IPAM_CHILD_NODE")) else {
        return;
    };
    let store = FileStore::open(Path::new(&dir).join("store")).unwrap();
    let ipam = Ipam::new(&store, &node).with_state_dir(Path::new(&dir).join(format!("state-{node}")));
    for i in 0..20 {
        one(&ipam, &format!("{node}-{}-{i}", std::process::id()), &["10.23.0.0/16"]);
    }
}

#[test]
fn processes_never_get_the_same_address() {
    let env = Env::new();
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..6)
        .map(|i| {
            std::process::Command::new(&exe)
                .args(["--exact", "process_child", "--test-threads=1"])
                .env("IPAM_CHILD_DIR", env.dir.path())
                // Four processes on node-a (host lock), two on node-b (CAS only between nodes).
                .env("IPAM_CHILD_NODE", if i < 4 { "node-a" } else { "node-b" })
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    assert_consistent(env.store.as_ref(), 120);
}

/// A store that lets another node create a block just before our claim's
/// block create reaches the backend: the claim must lose cleanly.
struct RacingStore {
    inner: Arc<dyn Datastore>,
    raced: std::sync::Mutex<Option<String>>,
}

impl Datastore for RacingStore {
    fn get(&self, key: &str) -> Result<Option<calico_store::KeyValue>, StoreError> {
        self.inner.get(key)
    }
    fn list(&self, prefix: &str) -> Result<Vec<calico_store::KeyValue>, StoreError> {
        self.inner.list(prefix)
    }
    fn commit(&self, ops: &[calico_store::Op]) -> Result<calico_store::Revision, StoreError> {
        if let [calico_store::Op::Create { key, value }] = ops {
            let mut raced = self.raced.lock().unwrap();
            if key.contains("/assignment/") && raced.is_none() {
                let mut doc: Value = serde_json::from_slice(value).unwrap();
                doc["affinity"] = json!("host:intruder");
                self.inner.create(key, &serde_json::to_vec(&doc).unwrap()).unwrap();
                *raced = Some(key.clone());
            }
        }
        self.inner.commit(ops)
    }
    fn revision(&self) -> Result<calico_store::Revision, StoreError> {
        self.inner.revision()
    }
}

#[test]
fn a_lost_block_claim_drops_its_pending_affinity_and_moves_on() {
    let env = Env::new();
    let racing = RacingStore { inner: Arc::clone(&env.store), raced: Default::default() };
    let ipam = Ipam::new(&racing, "node1");
    let got = ipam.assign(&req("c", v4(&["10.24.0.0/24"]), None)).unwrap();
    let lost = racing.raced.lock().unwrap().clone().expect("the race was staged");
    let lost_cidr = model::parse_cidr_key_segment(lost.rsplit('/').next().unwrap()).unwrap();
    // The intruder keeps the block it created; our address is in another block we own.
    assert_eq!(env.raw(&lost)["affinity"], "host:intruder");
    assert!(!lost_cidr.contains(got[0].ip));
    assert_eq!(env.raw(&got[0].block.key())["affinity"], "host:node1");
    // Our pending affinity for the lost block was removed; exactly one affinity remains.
    assert!(env.store.get(&model::affinity_key("node1", &lost_cidr)).unwrap().is_none());
    let affs = query::list_affinities(env.store.as_ref()).unwrap();
    assert_eq!(affs.len(), 1);
    assert_eq!(affs[0].block, got[0].block);
}

#[test]
fn an_unconfirmed_claim_of_ours_is_confirmed_and_used() {
    let env = Env::new();
    env.pool("p", "10.25.0.0/26", None, false, None);
    // A claim that crashed after creating the block, before confirming.
    let cidr: BlockCidr = "10.25.0.0/26".parse().unwrap();
    let aff_key = model::affinity_key("node1", &cidr.net());
    env.store.create(&aff_key, br#"{"state":"pending","deleted":false}"#).unwrap();
    let block = ipam_block::block::new_block(cidr, Some(&ipam_block::Affinity::host("node1")), false);
    env.store.create(&cidr.key(), &model::encode(&block)).unwrap();
    let ipam = env.ipam("node1");
    assert_eq!(one(&ipam, "c", &["p"]), ip("10.25.0.0"));
    assert_eq!(env.raw(&aff_key)["state"], "confirmed");
}

#[test]
fn callers_writes_share_the_allocation_commit() {
    let env = Env::new();
    let counting = CountingStore::new(Arc::clone(&env.store));
    let ipam = Ipam::new(&counting, "node1").with_state_dir(env.state("node1"));
    one(&ipam, "warm", &["10.26.0.0/24"]);
    let record = |ips: &[ipam_block::AssignedIp]| {
        Ok(vec![calico_store::Op::Create {
            key: "/test/wep/c1".into(),
            value: ips[0].ip.to_string().into_bytes(),
        }])
    };
    counting.reset();
    let got = ipam.assign_with(&req("c1", v4(&["10.26.0.0/24"]), None), record).unwrap();
    assert_eq!(counting.counts().commits, 1, "allocation and record in one commit");
    assert_eq!(env.store.get("/test/wep/c1").unwrap().unwrap().value, got[0].ip.to_string().into_bytes());
    // The record's condition fails: nothing is allocated, the conflict is returned.
    let err = ipam.assign_with(&req("c2", v4(&["10.26.0.0/24"]), None), record).unwrap_err();
    assert!(matches!(&err, IpamError::Store(StoreError::Conflict { key }) if key == "/test/wep/c1"), "{err}");
    assert!(env.store.get("/calico/ipam/v2/handle/net.c2").unwrap().is_none());
    assert_eq!(query::list_allocations(env.store.as_ref()).unwrap().len(), 2);
    // Release with the record's deletion, then again (handle gone, record gone: a conflict).
    let rev = env.store.get("/test/wep/c1").unwrap().unwrap().revision;
    let del = [calico_store::Op::Delete { key: "/test/wep/c1".into(), revision: rev }];
    let h = Handle::for_container("net", "c1").unwrap();
    assert_eq!(ipam.release_handle_with(&h, &del).unwrap(), got.iter().map(|a| a.ip).collect::<Vec<_>>());
    assert!(env.store.get("/test/wep/c1").unwrap().is_none());
    assert!(matches!(ipam.release_handle_with(&h, &del), Err(IpamError::Store(StoreError::Conflict { .. }))));
}
