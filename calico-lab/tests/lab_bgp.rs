//! The lab without pods: block claims written to the lab's etcd become
//! routes on the tor and on the other node within seconds, borrowed addresses
//! are announced as /32s, releases are withdrawn, and a lab leaves nothing
//! behind when dropped.

use std::path::PathBuf;
use std::time::Duration;

use calico_lab::{wait_until, Bins, InNetns, Lab, LabConfig};
use calico_store::model::{self, AffinityState, AllocationAttribute, AllocationBlock, BlockAffinity};
use calico_store::Op;
use ipnetwork::IpNetwork;

fn lab() -> Lab {
    let cfg = LabConfig::load(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("lab.json")).unwrap();
    let bins = testbed::target_bin("calico-node-agent").parent().unwrap().to_path_buf();
    Lab::up(&cfg, &Bins::new(bins)).unwrap()
}

fn block(cidr: &str, node: &str, held: &[(usize, &str)]) -> AllocationBlock {
    let mut b = AllocationBlock {
        cidr: cidr.parse().unwrap(),
        affinity: Some(format!("host:{node}")),
        strict_affinity: false,
        allocations: vec![None; 64],
        unallocated: (0..64).collect(),
        attributes: vec![],
        deleted: false,
    };
    for (ord, holder) in held {
        b.allocations[*ord] = Some(b.attributes.len());
        b.unallocated.retain(|o| o != ord);
        b.attributes.push(AllocationAttribute {
            handle_id: Some(format!("net.{holder}{ord}")),
            secondary: Some([("node".to_string(), holder.to_string())].into()),
        });
    }
    b
}

fn claim_ops(node: &str, b: &AllocationBlock) -> Vec<Op> {
    let aff = BlockAffinity { state: AffinityState::Confirmed, deleted: false };
    vec![
        Op::Create { key: model::block_key(&b.cidr), value: model::encode(b) },
        Op::Create { key: model::affinity_key(node, &b.cidr), value: model::encode(&aff) },
    ]
}

fn tor_route(lab: &Lab, prefix: &str) -> String {
    lab.birdc("tor", &["show", "route", prefix, "all"]).unwrap_or_default()
}

#[test]
fn claims_borrowing_and_releases_reach_the_tor() {
    let lab = lab();
    let a = block("10.244.0.0/26", "node-a", &[(1, "node-a")]);
    // node-a borrowed ordinal 5 (10.244.0.69) of node-b's block.
    let b = block("10.244.0.64/26", "node-b", &[(1, "node-b"), (5, "node-a")]);
    lab.with_store("node-a", move |s| {
        s.commit(&claim_ops("node-a", &a))?;
        s.commit(&claim_ops("node-b", &b))?;
        Ok(())
    })
    .unwrap();

    let t = Duration::from_secs(10);
    let ra = lab.wait_tor_route("10.244.0.0/26", t).unwrap();
    assert!(ra.contains("192.168.10.2"), "{ra}");
    let rb = lab.wait_tor_route("10.244.0.64/26", t).unwrap();
    assert!(rb.contains("192.168.20.2"), "{rb}");
    let rbor = lab.wait_tor_route("10.244.0.69/32", t).unwrap();
    assert!(rbor.contains("192.168.10.2"), "borrowed /32 must point at node-a: {rbor}");
    // Own pods' /32s are never announced.
    assert!(!tor_route(&lab, "10.244.0.1/32").contains("BGP"));
    assert!(!tor_route(&lab, "10.244.0.65/32").contains("BGP"));

    // Kernel state: node-a blackholes its block and reaches node-b's via the tor.
    let na = lab.ns("node-a").unwrap().output(&["ip", "route"]).unwrap();
    assert!(na.contains("blackhole 10.244.0.0/26 proto 80"), "{na}");
    wait_until("node-a route to node-b's block", Duration::from_secs(10), || {
        let r = lab.ns("node-a").ok()?.output(&["ip", "route", "show", "10.244.0.64/26"]).ok()?;
        r.contains("via 192.168.10.1").then_some(())
    })
    .unwrap();

    // Forwarding: "pods" on the nodes' loopbacks answer the client through the
    // tor; the borrowed address lands on node-a although its block is node-b's.
    lab.ns("node-b").unwrap().output(&["ip", "addr", "add", "10.244.0.65/32", "dev", "lo"]).unwrap();
    lab.ns("node-a").unwrap().output(&["ip", "addr", "add", "10.244.0.69/32", "dev", "lo"]).unwrap();
    let client = lab.ns("client").unwrap();
    client.output(&["ping", "-c1", "-W2", "10.244.0.65"]).unwrap();
    client.output(&["ping", "-c1", "-W2", "10.244.0.69"]).unwrap();

    // Release node-a's block: withdrawn from the tor, blackhole gone.
    lab.with_store("node-a", |s| {
        let cidr: IpNetwork = "10.244.0.0/26".parse().unwrap();
        let aff = s.get(&model::affinity_key("node-a", &cidr))?.unwrap();
        s.delete(&aff.key, aff.revision)?;
        Ok(())
    })
    .unwrap();
    wait_until("withdrawal of 10.244.0.0/26", Duration::from_secs(10), || {
        (!tor_route(&lab, "10.244.0.0/26").contains("BGP")).then_some(())
    })
    .unwrap();
    let na = lab.ns("node-a").unwrap().output(&["ip", "route"]).unwrap();
    assert!(!na.contains("blackhole 10.244.0.0/26"), "{na}");
    assert!(tor_route(&lab, "10.244.0.64/26").contains("BGP"));
}

#[test]
fn a_dropped_lab_leaves_nothing_behind() {
    let lab = lab();
    let run_dir = lab.run_dir.clone();
    let prefix = lab.ns_name("");
    let nsnames = ["tor", "node-a", "node-b", "etcd", "client"].map(|h| lab.ns_name(h));
    for n in &nsnames {
        assert!(std::path::Path::new("/run/netns").join(n).exists(), "{n}");
    }
    let pids: Vec<String> = nsnames
        .iter()
        .flat_map(|n| {
            testbed::sh(&format!("ip netns pids {n}"))
                .split_whitespace()
                .map(String::from)
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(pids.len() >= 6, "etcd + 3 BIRDs + 2 agents expected, got {pids:?}");
    drop(lab);
    for n in &nsnames {
        assert!(!std::path::Path::new("/run/netns").join(n).exists(), "{n} left behind");
    }
    assert!(!run_dir.exists(), "{} left behind", run_dir.display());
    for p in &pids {
        assert!(
            !std::path::Path::new("/proc").join(p).exists() || {
                let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
                stat.contains(") Z ")
            },
            "process {p} survived"
        );
    }
    assert!(!testbed::sh("ip netns list").contains(&prefix));
}

#[test]
fn node_to_node_mesh_peers_the_nodes_directly() {
    let mut cfg = LabConfig::load(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("lab.json")).unwrap();
    cfg.node_to_node_mesh = true;
    // One AS for the cluster (iBGP mesh); the tor's copy of a node's routes
    // then carries the cluster AS and is dropped as a loop: the mesh route wins.
    for n in &mut cfg.nodes {
        n.as_number = None;
    }
    let bins = testbed::target_bin("calico-node-agent").parent().unwrap().to_path_buf();
    let lab = Lab::up(&cfg, &Bins::new(bins)).unwrap();
    let b = block("10.244.0.64/26", "node-b", &[]);
    lab.with_store("node-a", move |s| {
        s.commit(&claim_ops("node-b", &b))?;
        Ok(())
    })
    .unwrap();

    // Calico's passive rule: "192.168.20.2" > "192.168.10.2", so node-a waits
    // for node-b to connect, and node-b actively connects.
    let conf_a = std::fs::read_to_string(lab.run_dir.join("node-a/bird.conf")).unwrap();
    let conf_b = std::fs::read_to_string(lab.run_dir.join("node-b/bird.conf")).unwrap();
    let mesh_a = &conf_a[conf_a.find("protocol bgp Mesh_192_168_20_2").expect("node-a meshes with node-b")..];
    assert!(mesh_a[..mesh_a.find('}').unwrap()].contains("passive on"), "{conf_a}");
    let mesh_b = &conf_b[conf_b.find("protocol bgp Mesh_192_168_10_2").expect("node-b meshes with node-a")..];
    assert!(!mesh_b[..mesh_b.find('}').unwrap()].contains("passive"), "{conf_b}");

    wait_until("mesh session node-a <-> node-b", Duration::from_secs(20), || {
        let p = lab.birdc("node-a", &["show", "protocols", "Mesh_192_168_20_2"]).ok()?;
        p.contains("Established").then_some(())
    })
    .unwrap();
    let r = wait_until("node-a learns node-b's block over the mesh", Duration::from_secs(10), || {
        let r = lab.birdc("node-a", &["show", "route", "10.244.0.64/26", "all"]).ok()?;
        r.contains("Mesh_192_168_20_2").then_some(r)
    })
    .unwrap();
    assert!(r.contains("BGP.next_hop: 192.168.20.2"), "iBGP keeps node-b as next hop: {r}");
    // The kernel route points at node-b's address, resolved through the tor.
    wait_until("kernel route on node-a", Duration::from_secs(10), || {
        let r = lab.ns("node-a").ok()?.output(&["ip", "route", "show", "10.244.0.64/26"]).ok()?;
        r.contains("via 192.168.10.1").then_some(())
    })
    .unwrap();
    lab.ns("node-b").unwrap().output(&["ip", "addr", "add", "10.244.0.65/32", "dev", "lo"]).unwrap();
    lab.ns("node-a").unwrap().output(&["ping", "-c1", "-W2", "10.244.0.65"]).unwrap();
}

/// Calico's way to peer with a ToR: no peers in the agents' configs, BGPPeer
/// resources in etcd written while everything runs.
#[test]
fn bgp_peer_resources_bring_tor_sessions_up_and_down() {
    let mut cfg = LabConfig::load(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("lab.json")).unwrap();
    cfg.tor_peer_in_agent_config = false;
    cfg.nodes[0].labels = [("rack".to_string(), "rack-a".to_string())].into();
    cfg.nodes[1].labels = [("rack".to_string(), "rack-b".to_string())].into();
    let bins = testbed::target_bin("calico-node-agent").parent().unwrap().to_path_buf();
    let lab = Lab::up(&cfg, &Bins::new(bins)).unwrap();
    let a = block("10.244.0.0/26", "node-a", &[]);
    lab.with_store("node-a", move |s| {
        s.commit(&claim_ops("node-a", &a))?;
        Ok(())
    })
    .unwrap();
    let conf =
        |host: &str| std::fs::read_to_string(lab.run_dir.join(host).join("bird.conf")).unwrap_or_default();
    let established = |host: &str, proto: &str| {
        lab.birdc(host, &["show", "protocols", proto]).unwrap_or_default().contains("Established")
    };

    // The agents registered their labels; node-a announces its block to nobody.
    wait_until("node-a's config has its block", Duration::from_secs(10), || {
        conf("node-a").contains("route 10.244.0.0/26 blackhole").then_some(())
    })
    .unwrap();
    let node_a: model::Node = lab
        .with_store("node-a", |s| Ok(model::decode(&s.get(&model::node_key("node-a"))?.unwrap())?))
        .unwrap();
    assert_eq!(node_a.metadata.labels.get("rack").map(String::as_str), Some("rack-a"));
    assert!(!conf("node-a").contains("protocol bgp"), "no peer yet: {}", conf("node-a"));
    assert!(!established("tor", "node_a"));

    // A BGPPeer for rack-a's tor: node-a peers, node-b (rack-b) does not.
    let peer = model::BgpPeer::new(
        "BGPPeer",
        model::ObjectMeta { name: "rack-a-tor".into(), ..Default::default() },
        model::BgpPeerSpec {
            node_selector: Some("rack == 'rack-a'".into()),
            peer_ip: Some("192.168.10.1".into()),
            as_number: Some(65000),
            ..Default::default()
        },
    );
    lab.with_store("node-a", move |s| {
        s.create(&model::bgp_peer_key("rack-a-tor"), &model::encode(&peer))?;
        Ok(())
    })
    .unwrap();
    wait_until("node-a <-> tor session from the BGPPeer", Duration::from_secs(30), || {
        established("node-a", "Node_192_168_10_1").then_some(())
    })
    .unwrap();
    let r = lab.wait_tor_route("10.244.0.0/26", Duration::from_secs(10)).unwrap();
    assert!(r.contains("192.168.10.2"), "{r}");
    assert!(!conf("node-b").contains("192.168.10.1"), "node-b is not in rack-a: {}", conf("node-b"));
    assert!(!established("tor", "node_b"));

    // Delete it: the session goes away and the tor forgets the block.
    lab.with_store("node-a", |s| {
        let kv = s.get(&model::bgp_peer_key("rack-a-tor"))?.unwrap();
        s.delete(&kv.key, kv.revision)?;
        Ok(())
    })
    .unwrap();
    wait_until("node-a's tor session removed", Duration::from_secs(15), || {
        let p = lab.birdc("node-a", &["show", "protocols"]).ok()?;
        (!p.contains("Node_192_168_10_1") && !established("tor", "node_a")).then_some(())
    })
    .unwrap();
    wait_until("withdrawal of 10.244.0.0/26 at the tor", Duration::from_secs(10), || {
        (!tor_route(&lab, "10.244.0.0/26").contains("BGP")).then_some(())
    })
    .unwrap();
}
