//! Several nodes' `calico-ipam` processes against one real etcd: concurrent
//! allocation, etcd outages, plugins killed mid-ADD, bad data.

mod etcd_support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use calico_store::model;
use calico_store::Datastore;
use etcd_support::*;
use ipam_block::ops::{self, Snapshot};

#[test]
fn three_nodes_allocate_concurrently_without_duplicates_or_leaks() {
    let c = Arc::new(Cluster::new(&["node-a", "node-b", "node-c"]));
    let pool = "10.77.0.0/16";
    // The pool exists up front (see first_use_of_a_pool_cidr_is_race_free for
    // the create-on-first-use path).
    let (code, out, err) = calicoctl(&c.etcd, &["ipam", "pool", "add", "--name", "p77", "--cidr", pool]);
    assert_eq!(code, 0, "{out}{err}");
    let jobs: Vec<(usize, String)> =
        (0..3).flat_map(|n| (0..50).map(move |i| (n, format!("c{n}x{i:03}")))).collect();
    let cc = c.clone();
    let ips =
        parallel(jobs.clone(), 16, move |(n, cid)| add(&cc.conf(n, &[pool], 10.0), &cid, &cc.netns.path()));

    // Never a duplicate address, and every address in the pool.
    let unique: BTreeSet<IpAddr> = ips.iter().copied().collect();
    assert_eq!(unique.len(), 150, "duplicate addresses handed out");
    let net: ipnetwork::IpNetwork = pool.parse().unwrap();
    assert!(ips.iter().all(|ip| net.contains(*ip)));

    // The datastore agrees: each handle holds exactly the address its ADD returned.
    let s = store(&c.etcd);
    let by_handle = allocations_by_handle(&s);
    assert_eq!(by_handle.len(), 150);
    for ((_, cid), ip) in jobs.iter().zip(&ips) {
        assert_eq!(by_handle[&handle_of(cid)], vec![*ip], "{cid}");
    }
    let snap = Snapshot::load(&s).unwrap();
    let report = ops::check(&snap, std::time::SystemTime::now());
    assert_eq!(report.allocations, 150);
    assert!(report.allocations_without_handle.is_empty(), "{report}");
    assert!(report.handles_without_allocations.is_empty(), "{report}");
    assert!(report.handle_count_mismatches.is_empty(), "{report}");
    // Blocks: every block is affine to one of the three nodes, and each
    // node's addresses come from its own blocks (a /16 has room for all).
    let owner: BTreeMap<ipnetwork::IpNetwork, String> =
        snap.blocks.iter().map(|b| (b.value.cidr, b.value.affinity.clone().unwrap_or_default())).collect();
    for ((n, cid), ip) in jobs.iter().zip(&ips) {
        let (blk, aff) = owner.iter().find(|(b, _)| b.contains(*ip)).unwrap();
        assert_eq!(aff, &format!("host:{}", c.nodes[*n].name), "{cid} got {ip} from {blk}");
    }
    // Every block has a confirmed affinity document of its owner.
    for b in &snap.blocks {
        let node = b.value.affinity.as_deref().unwrap().strip_prefix("host:").unwrap();
        assert!(snap.affinities.contains(&(node.to_string(), b.value.cidr)), "{:?}", b.value.cidr);
    }

    // DEL everything, concurrently: nothing is left.
    let cc = c.clone();
    parallel(jobs, 16, move |(n, cid)| del(&cc.conf(n, &[pool], 10.0), &cid, &cc.netns.path()));
    let snap = Snapshot::load(&s).unwrap();
    assert_eq!(snap.allocations().len(), 0);
    assert!(snap.handles.is_empty(), "{:?}", snap.handles.keys());
    // DEL again is idempotent.
    del(&c.conf(0, &[pool], 10.0), "c0x000", &c.netns.path());
}

#[test]
fn first_use_of_a_pool_cidr_is_race_free() {
    // No pool stored yet: the first ADDs naming the CIDR create it. Eight
    // nodes doing that at once must all succeed with distinct addresses.
    let names: Vec<String> = (0..8).map(|i| format!("node-{i}")).collect();
    let c = Arc::new(Cluster::new(&names.iter().map(String::as_str).collect::<Vec<_>>()));
    let cc = c.clone();
    let results = parallel((0..8).collect(), 8, move |n: usize| {
        run_ipam("ADD", &cc.conf(n, &["10.81.0.0/16"], 10.0), &format!("first{n}"), &cc.netns.path())
    });
    let mut ips = BTreeSet::new();
    for r in results {
        match r {
            Outcome::Added(ip) => assert!(ips.insert(ip), "duplicate {ip}"),
            other => panic!("concurrent first use of the pool CIDR failed: {other:?}"),
        }
    }
    assert_eq!(ips.len(), 8);
    assert_eq!(ops::pool_list(&store(&c.etcd)).unwrap().len(), 1);
}

#[test]
fn etcd_down_fails_add_fast_with_code_11_and_recovers() {
    let mut c = Cluster::new(&["node-a"]);
    let pool = "10.78.0.0/16";
    let conf = c.conf(0, &[pool], 1.0);
    let first = add(&conf, "before", &c.netns.path());

    c.etcd.stop();
    let t = Instant::now();
    let res = run_ipam("ADD", &conf, "during", &c.netns.path());
    let took = t.elapsed();
    match &res {
        Outcome::Failed { code: 11, msg, .. } => {
            assert!(msg.contains(&c.etcd.endpoint()), "message must name the endpoint: {msg}");
        }
        other => panic!("expected CNI code 11, got {other:?}"),
    }
    // datastore_timeout_seconds = 1: the ADD gives up well within a few bounds
    // (it fails at its first datastore call), not after a long hang.
    assert!(took < Duration::from_secs(4), "ADD with etcd down took {took:?}");
    // DEL cannot release either: also a retryable failure.
    assert!(matches!(run_ipam("DEL", &conf, "before", &c.netns.path()), Outcome::Failed { code: 11, .. }));

    c.etcd.restart();
    let s = store(&c.etcd);
    // The failed ADD left nothing behind.
    let by_handle = allocations_by_handle(&s);
    assert!(!by_handle.contains_key(&handle_of("during")));
    assert!(s.get(&model::handle_key(&handle_of("during"))).unwrap().is_none());
    assert_eq!(by_handle[&handle_of("before")], vec![first]);
    // And the next ADD works and gets another address.
    let next = add(&conf, "after", &c.netns.path());
    assert_ne!(next, first);
    del(&conf, "before", &c.netns.path());
    del(&conf, "after", &c.netns.path());
    assert!(allocations_by_handle(&s).is_empty());
}

#[test]
fn unresponsive_etcd_fails_add_within_the_configured_timeout() {
    // An endpoint that accepts connections and never answers (a hung member):
    // the ADD waits for datastore_timeout_seconds, no longer, then says 11.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", silent.local_addr().unwrap());
    let netns = testbed::Netns::new("ipm");
    let node = Node::new("node-h");
    for timeout in [1.0, 2.5] {
        let conf = net_conf(&endpoint, &node, &["10.82.0.0/16"], timeout);
        let t = Instant::now();
        let res = run_ipam("ADD", &conf, "hung", &netns.path());
        let took = t.elapsed().as_secs_f64();
        match &res {
            Outcome::Failed { code: 11, msg, .. } => assert!(msg.contains(&endpoint), "{msg}"),
            other => panic!("expected code 11, got {other:?}"),
        }
        assert!(took >= timeout * 0.9 && took < timeout + 2.0, "timeout {timeout}s: ADD took {took:.2}s");
    }
}

#[test]
fn plugins_killed_mid_add_leave_only_what_check_reports_and_gc_releases() {
    let c = Cluster::new(&["node-a", "node-b"]);
    let s = store(&c.etcd);
    for n in &c.nodes {
        write_node(&s, &n.name);
    }
    let pool = "10.79.0.0/16";
    let (code, out, err) = calicoctl(&c.etcd, &["ipam", "pool", "add", "--name", "p79", "--cidr", pool]);
    assert_eq!(code, 0, "{out}{err}");
    // Deterministic "random" kill points spread over the ADD's life.
    let mut seed: u64 = 0x9e3779b97f4a7c15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut completed: Vec<(String, String, IpAddr)> = Vec::new();
    let mut killed = Vec::new();
    // Rounds of 8 concurrent ADDs; most get SIGKILLed at a random point.
    for round in 0..6 {
        let mut children = Vec::new();
        for i in 0..8 {
            let n = (round + i) % 2;
            let cid = format!("k{round}x{i}");
            let conf = c.conf(n, &[pool], 10.0);
            children.push((
                n,
                cid.clone(),
                spawn(ipam_cmd("ADD", &conf, &cid, &c.netns.path())),
                next() % 40,
            ));
        }
        let start = Instant::now();
        for (n, cid, mut child, kill_ms) in children {
            let wait = Duration::from_millis(kill_ms).saturating_sub(start.elapsed());
            std::thread::sleep(wait);
            let _ = child.kill(); // SIGKILL; a process that already exited is unaffected
            match outcome(child.wait_with_output().unwrap()) {
                Outcome::Added(ip) => completed.push((c.nodes[n].name.clone(), cid, ip)),
                Outcome::Died(_) => killed.push(cid),
                other => panic!("{cid}: {other:?}"),
            }
        }
    }
    assert!(!killed.is_empty(), "no ADD was killed mid-way: the test did not test anything");
    // The runtime records the pods whose ADD succeeded (the calico plugin's WEP).
    for (node, cid, ip) in &completed {
        write_wep(&s, node, cid, *ip);
    }

    // check: the only problems are allocations of killed ADDs without a pod.
    let (code, out, err) = calicoctl(&c.etcd, &["ipam", "check", "-o", "/dev/null"]);
    let report = ops::check(&Snapshot::load(&s).unwrap(), std::time::SystemTime::now());
    let leaked_handles: BTreeSet<String> =
        report.allocations_without_pod.iter().map(|l| l.handle.clone().unwrap()).collect();
    let killed_handles: BTreeSet<String> = killed.iter().map(|c| handle_of(c)).collect();
    assert!(leaked_handles.is_subset(&killed_handles), "{leaked_handles:?} vs killed {killed_handles:?}");
    assert!(report.allocations_without_handle.is_empty(), "{report}");
    assert!(report.handle_count_mismatches.is_empty(), "{report}");
    assert!(report.blocks_of_unknown_nodes.is_empty(), "{report}");
    assert!(report.corrupt_documents.is_empty(), "{report}");
    assert_eq!(code, if report.problems() == 0 { 0 } else { 1 }, "{out}{err}");
    eprintln!(
        "{} completed, {} killed, {} leaked allocation(s), {} stray handle(s)",
        completed.len(),
        killed.len(),
        report.allocations_without_pod.len(),
        report.handles_without_allocations.len()
    );

    // gc with no grace releases exactly those; afterwards check is clean.
    let (code, out, err) = calicoctl(&c.etcd, &["ipam", "gc", "--grace-period", "0s"]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = calicoctl(&c.etcd, &["ipam", "check"]);
    assert_eq!(code, 0, "check after gc still finds problems:\n{out}{err}");
    let by_handle = allocations_by_handle(&s);
    assert_eq!(by_handle.len(), completed.len());
    for (_, cid, ip) in &completed {
        assert_eq!(by_handle[&handle_of(cid)], vec![*ip]);
    }
    // Both nodes still allocate fine afterwards (no stuck pending claim).
    for n in 0..2 {
        let ip = add(&c.conf(n, &[pool], 10.0), &format!("after{n}"), &c.netns.path());
        assert!(!completed.iter().any(|(_, _, x)| *x == ip));
    }
}

#[test]
fn corrupt_block_is_reported_by_key_and_never_overwritten() {
    let c = Cluster::new(&["node-a"]);
    let s = store(&c.etcd);
    // A pool that is exactly one block, so the node must use that block.
    let (code, out, err) =
        calicoctl(&c.etcd, &["ipam", "pool", "add", "--name", "tiny", "--cidr", "10.80.0.0/26"]);
    assert_eq!(code, 0, "{out}{err}");
    let block_key = model::block_key(&"10.80.0.0/26".parse().unwrap());
    let garbage = br#"{"cidr":"10.80.0.0/26","allocations":[0,"#;
    s.create(&block_key, garbage).unwrap();
    let before = s.get(&block_key).unwrap().unwrap();

    let conf = c.conf(0, &["tiny"], 5.0);
    match run_ipam("ADD", &conf, "victim", &c.netns.path()) {
        Outcome::Failed { code, msg, raw } => {
            assert!(
                msg.contains(&block_key) || raw.contains(&block_key),
                "error must name {block_key}: {raw}"
            );
            assert_ne!(code, 11, "corrupt data is not 'try again later'");
        }
        other => panic!("expected a CNI error, got {other:?}"),
    }
    let after = s.get(&block_key).unwrap().unwrap();
    assert_eq!(
        (after.value, after.revision),
        (before.value, before.revision),
        "the corrupt block was rewritten"
    );
    assert!(s.get(&model::handle_key(&handle_of("victim"))).unwrap().is_none());

    // The operator tools name it too; gc refuses to act around it.
    let (code, out, _) = calicoctl(&c.etcd, &["ipam", "check"]);
    assert_eq!(code, 1);
    assert!(out.contains(&block_key), "{out}");
    let (code, _, err) = calicoctl(&c.etcd, &["ipam", "gc", "--grace-period", "0s"]);
    assert_eq!(code, 3);
    assert!(err.contains(&block_key), "{err}");
    assert_eq!(s.get(&block_key).unwrap().unwrap().revision, before.revision);
}
