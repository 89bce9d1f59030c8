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

    // The lab is dual-stack: the mesh runs over IPv6 too (Node ipv6Address),
    // and node-b's IPv6 block arrives on it with node-b as next hop.
    let b6 = block("fd00:244::40/122", "node-b", &[]);
    lab.with_store("node-a", move |s| {
        s.commit(&claim_ops("node-b", &b6))?;
        Ok(())
    })
    .unwrap();
    wait_until("IPv6 mesh session node-a <-> node-b", Duration::from_secs(20), || {
        let p = lab.birdc("node-a", &["show", "protocols", "Mesh_fd00_20__2"]).ok()?;
        p.contains("Established").then_some(())
    })
    .unwrap();
    let r = wait_until("node-a learns node-b's IPv6 block over the mesh", Duration::from_secs(10), || {
        let r = lab.birdc("node-a", &["show", "route", "fd00:244::40/122", "all"]).ok()?;
        r.contains("Mesh_fd00_20__2").then_some(r)
    })
    .unwrap();
    assert!(r.contains("BGP.next_hop: fd00:20::2"), "{r}");
    lab.ns("node-b").unwrap().output(&["ip", "-6", "addr", "add", "fd00:244::41/128", "dev", "lo"]).unwrap();
    wait_until("IPv6 kernel route on node-a", Duration::from_secs(10), || {
        let r = lab
            .ns("node-a")
            .ok()?
            .output(&["ip", "-6", "route", "show", "fd00:244::40/122", "proto", "bird"])
            .ok()?;
        (!r.trim().is_empty()).then_some(())
    })
    .unwrap();
    lab.ns("node-a").unwrap().output(&["ping", "-6", "-c1", "-W2", "fd00:244::41"]).unwrap();
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

/// `lab-rr.json`: three nodes of one AS (64512) without the mesh; node-rr has
/// a `routeReflectorClusterID`. Every node peers with the tor (eBGP), but a
/// node drops the tor's copy of another node's block (its own AS is in the
/// path), so node-a and node-b learn each other's blocks only through the
/// reflector, once Calico's BGPPeer (`nodeSelector: all()`, `peerSelector:
/// route-reflector == 'true'`) exists. Both families are reflected.
#[test]
fn route_reflector_is_how_nodes_learn_each_others_blocks() {
    let cfg = LabConfig::load(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("lab-rr.json")).unwrap();
    let bins = testbed::target_bin("calico-node-agent").parent().unwrap().to_path_buf();
    let lab = Lab::up(&cfg, &Bins::new(bins)).unwrap();
    let (b4, b6) = (block("10.244.0.64/26", "node-b", &[]), block("fd00:244::40/122", "node-b", &[]));
    let (a4, a6) = (block("10.244.0.0/26", "node-a", &[]), block("fd00:244::/122", "node-a", &[]));
    lab.with_store("node-a", move |s| {
        for (n, b) in [("node-a", &a4), ("node-a", &a6), ("node-b", &b4), ("node-b", &b6)] {
            s.commit(&claim_ops(n, b))?;
        }
        Ok(())
    })
    .unwrap();
    let t = Duration::from_secs(15);
    lab.wait_tor_route("10.244.0.64/26", t).unwrap();
    lab.wait_tor_route("fd00:244::40/122", t).unwrap();

    // Without the BGPPeer: no mesh, and the tor's copy is an AS-path loop.
    let bird_route =
        |host: &str, prefix: &str| lab.birdc(host, &["show", "route", prefix, "all"]).unwrap_or_default();
    let rr_conf = std::fs::read_to_string(lab.run_dir.join("node-rr/bird.conf")).unwrap();
    assert!(rr_conf.contains("route reflector (cluster ID 244.0.0.1)"), "{rr_conf}");
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        !bird_route("node-a", "10.244.0.64/26").contains("BGP"),
        "{}",
        bird_route("node-a", "10.244.0.64/26")
    );
    let protocols = lab.birdc("node-a", &["show", "protocols"]).unwrap();
    assert!(!protocols.contains("Mesh_") && !protocols.contains("Node_"), "{protocols}");

    let peer = model::BgpPeer::new(
        "BGPPeer",
        model::ObjectMeta { name: "peer-with-route-reflectors".into(), ..Default::default() },
        model::BgpPeerSpec {
            node_selector: Some("all()".into()),
            peer_selector: Some("route-reflector == 'true'".into()),
            ..Default::default()
        },
    );
    lab.with_store("node-a", move |s| {
        s.create(&model::bgp_peer_key("peer-with-route-reflectors"), &model::encode(&peer))?;
        Ok(())
    })
    .unwrap();

    // node-a learns node-b's blocks from the reflector, with node-b as next hop.
    for (prefix, proto, next_hop) in [
        ("10.244.0.64/26", "Node_192_168_50_2", "192.168.20.2"),
        ("fd00:244::40/122", "Node_fd00_50__2", "fd00:20::2"),
    ] {
        let r = wait_until(
            &format!("node-a learns {prefix} through the reflector"),
            Duration::from_secs(30),
            || {
                let r = bird_route("node-a", prefix);
                r.contains(proto).then_some(r)
            },
        )
        .unwrap();
        assert!(r.contains(&format!("BGP.next_hop: {next_hop}")), "{r}");
        assert!(r.contains("BGP.cluster_list: 244.0.0.1"), "reflected: {r}");
        assert!(r.contains("BGP.originator_id: 192.168.20.2"), "{r}");
    }
    // The reflector holds its clients' sessions as `rr client`; node-a and
    // node-b never peer with each other.
    let rr_conf = std::fs::read_to_string(lab.run_dir.join("node-rr/bird.conf")).unwrap();
    let rr_client_sessions = rr_conf.matches("rr client;").count();
    assert_eq!(rr_client_sessions, 4, "node-a and node-b, IPv4 and IPv6: {rr_conf}");
    for host in ["node-a", "node-b"] {
        let p = lab.birdc(host, &["show", "protocols"]).unwrap();
        assert!(
            !p.contains("Mesh_") && !p.contains("Node_192_168_10_2") && !p.contains("Node_192_168_20_2"),
            "{p}"
        );
    }

    // The kernel routes follow, and packets go through the tor to node-b.
    for (family, prefix, gw) in
        [("-4", "10.244.0.64/26", "via 192.168.10.1"), ("-6", "fd00:244::40/122", "via ")]
    {
        wait_until(&format!("kernel route to {prefix} on node-a"), Duration::from_secs(10), || {
            let r = lab
                .ns("node-a")
                .ok()?
                .output(&["ip", family, "route", "show", prefix, "proto", "bird"])
                .ok()?;
            r.contains(gw).then_some(())
        })
        .unwrap();
    }
    lab.ns("node-b").unwrap().output(&["ip", "addr", "add", "10.244.0.65/32", "dev", "lo"]).unwrap();
    lab.ns("node-b").unwrap().output(&["ip", "-6", "addr", "add", "fd00:244::41/128", "dev", "lo"]).unwrap();
    let node_a = lab.ns("node-a").unwrap();
    node_a.output(&["ping", "-c1", "-W2", "10.244.0.65"]).unwrap();
    node_a.output(&["ping", "-6", "-c1", "-W2", "fd00:244::41"]).unwrap();

    // The reflector steps down (cluster ID removed): it joins nothing (mesh
    // off) and stops reflecting; node-a's reflected routes go.
    lab.set_route_reflector("node-rr", None).unwrap();
    wait_until("node-a forgets node-b's block", Duration::from_secs(30), || {
        (!bird_route("node-a", "10.244.0.64/26").contains("BGP")).then_some(())
    })
    .unwrap();
}

/// TCP-MD5 between a node and the tor: the tor requires a password on
/// node-a's sessions; node-a's side is a BGPPeer `password.secretKeyRef`
/// read from the lab's `bgp_secrets` file. The wrong key keeps the session
/// down, the right one brings it up, and neither password is ever logged.
#[test]
fn bgp_peer_password_from_the_secrets_file() {
    let mut cfg = LabConfig::load(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("lab.json")).unwrap();
    cfg.tor_peer_in_agent_config = false;
    cfg.nodes[0].tor_password = Some("Lab-Pass1".into());
    cfg.bgp_secrets = [(
        "tor-md5".to_string(),
        [("current".to_string(), "Lab-Pass1".to_string()), ("stale".to_string(), "Old-Pass0".to_string())]
            .into(),
    )]
    .into();
    let bins = testbed::target_bin("calico-node-agent").parent().unwrap().to_path_buf();
    let lab = Lab::up(&cfg, &Bins::new(bins)).unwrap();
    let a = block("10.244.0.0/26", "node-a", &[]);
    lab.with_store("node-a", move |s| {
        s.commit(&claim_ops("node-a", &a))?;
        Ok(())
    })
    .unwrap();
    let put_peer = |key: &'static str| {
        let peer = model::BgpPeer::new(
            "BGPPeer",
            model::ObjectMeta { name: "tor-a".into(), ..Default::default() },
            model::BgpPeerSpec {
                node: Some("node-a".into()),
                peer_ip: Some("192.168.10.1".into()),
                as_number: Some(65000),
                password: Some(model::BgpPassword {
                    secret_key_ref: Some(model::SecretKeyRef { name: "tor-md5".into(), key: key.into() }),
                }),
                ..Default::default()
            },
        );
        lab.with_store("node-a", move |s| {
            let k = model::bgp_peer_key("tor-a");
            match s.get(&k)? {
                Some(kv) => s.update(&k, &model::encode(&peer), kv.revision)?,
                None => s.create(&k, &model::encode(&peer))?,
            };
            Ok(())
        })
        .unwrap();
    };
    let established =
        || lab.birdc("tor", &["show", "protocols", "node_a"]).unwrap_or_default().contains("Established");
    let conf = || std::fs::read_to_string(lab.run_dir.join("node-a/bird.conf")).unwrap_or_default();

    // The stale password: configured, and the tor refuses every segment.
    put_peer("stale");
    wait_until("node-a's session with the stale password", Duration::from_secs(10), || {
        conf().contains("password \"Old-Pass0\";").then_some(())
    })
    .unwrap();
    for _ in 0..30 {
        assert!(!established(), "a wrong password must keep the session down");
        std::thread::sleep(Duration::from_millis(250));
    }
    // The current one: up, and the block reaches the tor.
    put_peer("current");
    wait_until("session with the right password", Duration::from_secs(30), || established().then_some(()))
        .unwrap();
    let r = lab.wait_tor_route("10.244.0.0/26", Duration::from_secs(10)).unwrap();
    assert!(r.contains("192.168.10.2"), "{r}");
    let log = std::fs::read_to_string(lab.run_dir.join("node-a/agent.log")).unwrap();
    assert!(log.contains("with password"), "{log}");
    assert!(
        !log.contains("Lab-Pass1") && !log.contains("Old-Pass0"),
        "a password in the agent's log:\n{log}"
    );
}
