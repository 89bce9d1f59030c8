//! The agent, running inside its own netns against a temporary file store,
//! follows block claims and releases: blackhole routes (proto 80) and the BIRD
//! configuration of a real BIRD running in the same netns.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use calico_store::file::FileStore;
use calico_store::model::{self, AffinityState, AllocationAttribute, AllocationBlock, BlockAffinity, Node};
use calico_store::Datastore;
use ipnetwork::IpNetwork;
use testbed::{wait_for, Daemon, Netns};

mod support;

fn claim(store: &FileStore, node: &str, cidr: &str, borrowed_by: Option<(&str, u32)>) {
    let net: IpNetwork = cidr.parse().unwrap();
    let mut block = AllocationBlock {
        cidr: net,
        affinity: Some(format!("host:{node}")),
        strict_affinity: false,
        allocations: vec![None; 64],
        unallocated: (0..64).collect(),
        attributes: vec![],
        deleted: false,
    };
    if let Some((other, ord)) = borrowed_by {
        block.allocations[ord as usize] = Some(0);
        block.unallocated.retain(|o| *o != ord as usize);
        block.attributes.push(AllocationAttribute {
            handle_id: Some("net.borrower".into()),
            secondary: Some([("node".to_string(), other.to_string())].into()),
        });
    }
    let aff = BlockAffinity { state: AffinityState::Confirmed, deleted: false };
    store
        .commit(&[
            calico_store::Op::Create { key: model::block_key(&net), value: model::encode(&block) },
            calico_store::Op::Create { key: model::affinity_key(node, &net), value: model::encode(&aff) },
        ])
        .unwrap();
}

fn release(store: &FileStore, node: &str, cidr: &str) {
    let net: IpNetwork = cidr.parse().unwrap();
    let a = store.get(&model::affinity_key(node, &net)).unwrap().unwrap();
    let b = store.get(&model::block_key(&net)).unwrap().unwrap();
    store
        .commit(&[
            calico_store::Op::Delete { key: a.key, revision: a.revision },
            calico_store::Op::Delete { key: b.key, revision: b.revision },
        ])
        .unwrap();
}

fn blackholes(ns: &Netns) -> String {
    ns.exec(&["ip", "-4", "route", "show", "type", "blackhole", "proto", "80"])
}

fn start_agent(ns: &Netns, store_dir: &Path, run: &Path, node: &str) -> Daemon {
    let mut cmd = ns.nsenter(testbed::target_bin("calico-node-agent"));
    let flags = ["run", "--node-name", node, "--node-ip", "192.168.77.2/24", "--peer", "192.168.77.1:65000"];
    support::agent_args(&mut cmd, &flags, store_dir, run);
    Daemon::spawn("agent", cmd, &run.join("agent.out")).unwrap()
}

#[test]
fn blackholes_and_bird_follow_claims_and_releases() {
    let ns = Netns::new("nab");
    ns.exec(&["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth1"]);
    ns.exec(&["ip", "link", "set", "eth1", "up"]);
    ns.exec(&["ip", "addr", "add", "192.168.77.2/24", "dev", "eth0"]);
    ns.exec(&["ip", "link", "set", "eth0", "up"]);
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let run = dir.path().join("run");
    std::fs::create_dir_all(&run).unwrap();
    let store = FileStore::open(&store_dir).unwrap();
    let node = testbed::unique("n");

    // A block we already own before the agent starts, and one of another node
    // in which we hold ordinal 5 (borrowed).
    claim(&store, &node, "10.250.0.0/26", None);
    claim(&store, "other", "10.250.9.0/26", Some((&node, 5)));

    // BIRD first reads an initial config (as the lab does: `run --once`).
    let once = ns
        .nsenter(testbed::target_bin("calico-node-agent").to_str().unwrap())
        .args(["run", "--once", "--node-name", &node, "--node-ip", "192.168.77.2/24"])
        .args(["--peer", "192.168.77.1:65000", "--datastore-path"])
        .arg(&store_dir)
        .arg("--bird-config")
        .arg(run.join("bird.conf"))
        .arg("--bird-socket")
        .arg(run.join("bird.ctl"))
        .output()
        .unwrap();
    assert!(once.status.success(), "run --once: {}", String::from_utf8_lossy(&once.stderr));
    assert!(blackholes(&ns).contains("blackhole 10.250.0.0/26"), "{}", blackholes(&ns));
    let node_doc: Node = model::decode(&store.get(&model::node_key(&node)).unwrap().unwrap()).unwrap();
    assert_eq!(node_doc.spec.bgp.unwrap().ipv4_address.as_deref(), Some("192.168.77.2/24"));

    let mut bird = ns.nsenter("bird");
    bird.arg("-f")
        .arg("-c")
        .arg(run.join("bird.conf"))
        .arg("-s")
        .arg(run.join("bird.ctl"))
        .arg("-P")
        .arg(run.join("bird.pid"));
    let _bird = Daemon::spawn("bird", bird, &run.join("bird.out")).unwrap();
    let birdc = |args: &[&str]| {
        let out = Command::new("birdc").arg("-s").arg(run.join("bird.ctl")).args(args).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    wait_for("BIRD socket", Duration::from_secs(10), || birdc(&["show", "status"]).contains("Daemon is up"));
    assert!(birdc(&["show", "route", "protocol", "calico_aggr"]).contains("10.250.9.5/32"));

    let _agent = start_agent(&ns, &store_dir, &run, &node);

    // Claim → blackhole + BIRD static route within seconds.
    claim(&store, &node, "10.250.0.64/26", None);
    wait_for("blackhole for the new block", Duration::from_secs(5), || {
        blackholes(&ns).contains("blackhole 10.250.0.64/26")
    });
    wait_for("BIRD to announce the new block", Duration::from_secs(5), || {
        birdc(&["show", "route", "protocol", "calico_aggr"]).contains("10.250.0.64/26")
    });
    // A pod /32 of our own block is never announced (only the aggregate).
    let conf = std::fs::read_to_string(run.join("bird.conf")).unwrap();
    assert!(conf.contains("if net = 10.250.0.64/26 then accept;"));
    assert!(!conf.contains("10.250.0.65/32"));

    // Release → both go; the other block stays.
    release(&store, &node, "10.250.0.0/26");
    wait_for("blackhole removal", Duration::from_secs(5), || !blackholes(&ns).contains("10.250.0.0/26"));
    wait_for("BIRD to withdraw the released block", Duration::from_secs(5), || {
        !birdc(&["show", "route", "protocol", "calico_aggr"]).contains("10.250.0.0/26")
    });
    assert!(blackholes(&ns).contains("blackhole 10.250.0.64/26"));

    // An IPv6 block: blackholed and released the same way. This node has no
    // IPv6 address, so BIRD's config does not change (the agent says why).
    let bh6 = || ns.exec(&["ip", "-6", "route", "show", "type", "blackhole", "proto", "80"]);
    claim(&store, &node, "fd00:250::/122", None);
    wait_for("IPv6 blackhole", Duration::from_secs(5), || bh6().contains("fd00:250::/122"));
    release(&store, &node, "fd00:250::/122");
    wait_for("IPv6 blackhole removal", Duration::from_secs(5), || !bh6().contains("fd00:250::/122"));

    // Kernel drift: a blackhole deleted by hand comes back on the next resync.
    ns.exec(&["ip", "route", "del", "blackhole", "10.250.0.64/26", "proto", "80"]);
    wait_for("blackhole restored", Duration::from_secs(15), || {
        blackholes(&ns).contains("blackhole 10.250.0.64/26")
    });

    // The agent reconfigured BIRD only on changes: two changes, two reloads.
    let log = std::fs::read_to_string(run.join("agent.log")).unwrap();
    assert_eq!(log.matches("BIRD reconfigured").count(), 2, "{log}");
    assert!(log.contains("IPv6 blocks but no IPv6 address"), "{log}");
}

#[test]
fn a_datastore_outage_keeps_the_routes_and_the_agent_recovers() {
    let ns = Netns::new("nao");
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let run = dir.path().join("run");
    std::fs::create_dir_all(&run).unwrap();
    let store = FileStore::open(&store_dir).unwrap();
    let node = testbed::unique("n");
    claim(&store, &node, "10.251.0.0/26", None);
    let mut agent = start_agent(&ns, &store_dir, &run, &node);
    wait_for("first blackhole", Duration::from_secs(5), || blackholes(&ns).contains("10.251.0.0/26"));

    // The store becomes unreadable: the agent keeps running and keeps routes.
    let data = store_dir.join("store.log");
    let good = std::fs::read(&data).unwrap();
    std::fs::write(&data, b"{ truncated").unwrap();
    std::thread::sleep(Duration::from_secs(2));
    assert!(agent.try_wait().unwrap().is_none(), "agent exited on a datastore error");
    assert!(blackholes(&ns).contains("10.251.0.0/26"), "routes dropped during the outage");

    // Back: new claims are picked up again.
    std::fs::write(&data, good).unwrap();
    claim(&store, &node, "10.251.0.64/26", None);
    wait_for("blackhole after recovery", Duration::from_secs(5), || {
        blackholes(&ns).contains("10.251.0.64/26")
    });
    let log = std::fs::read_to_string(run.join("agent.log")).unwrap();
    assert!(log.contains("datastore"), "the outage is logged: {log}");
}

#[test]
fn render_bird_prints_the_config_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let store = FileStore::open(&store_dir).unwrap();
    claim(&store, "rb", "10.252.0.0/26", None);
    let before = store.revision().unwrap();
    let out = Command::new(testbed::target_bin("calico-node-agent"))
        .args(["render-bird", "--node-name", "rb", "--node-ip", "192.168.5.2/24", "--as", "64600"])
        .args(["--peer", "192.168.5.1:65000", "--datastore-path"])
        .arg(&store_dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("# Generated by calico-node-agent for node rb."), "{text}");
    assert!(text.contains("route 10.252.0.0/26 blackhole;"));
    assert!(text.contains("local as 64600;"));
    assert!(text.contains("neighbor 192.168.5.1 as 65000;"));
    // Read-only: no Node registered, nothing written.
    assert_eq!(store.revision().unwrap(), before);

    // Bad flags: a clear message and exit code 2, nothing on stdout.
    let out = Command::new(testbed::target_bin("calico-node-agent"))
        .args(["render-bird", "--node-name", "rb", "--node-ip", "not-an-ip"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--node-ip"));
}
