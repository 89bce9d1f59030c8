//! Golden tests of the rendered BIRD configuration. Each case is compared
//! byte for byte with `tests/golden/<case>.conf` (regenerate with
//! `UPDATE_GOLDEN=1 cargo test -p calico-node-agent --test bird_golden` and
//! review the diff) and parsed by the real BIRD 2 (`bird -p`).
//!
//! The `bgp_*` cases go through the datastore: BGPConfiguration, BGPPeer and
//! Node documents in a file store, read by `state::read`, merged with an
//! agent config by `BirdInputs::new`, as the agent does.

use std::path::PathBuf;
use std::process::Command;

use calico_node_agent::bird::{render, BirdInputs};
use calico_node_agent::cli::Cli;
use calico_node_agent::config::{AgentConfig, AsNumber};
use calico_node_agent::state::{self, BorrowedAddr, MeshNode, OwnBlock, RoutingState};
use calico_store::file::FileStore;
use calico_store::model::{
    self, BgpConfiguration, BgpConfigurationSpec, BgpPeer, BgpPeerSpec, Node, NodeBgpSpec, NodeSpec,
    ObjectMeta, ServiceIpBlock,
};
use calico_store::Datastore;

fn golden(case: &str, text: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(format!("{case}.conf"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, text).unwrap();
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(text, want, "rendered config differs from {}", path.display());

    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("bird.conf");
    std::fs::write(&f, text).unwrap();
    let out = Command::new("bird").arg("-p").arg("-c").arg(&f).output().unwrap();
    assert!(out.status.success(), "bird -p rejects {case}: {}", String::from_utf8_lossy(&out.stderr));
}

fn state(blocks: &[&str], borrowed: &[&str], nodes: &[(&str, &str, Option<u32>)]) -> RoutingState {
    RoutingState {
        own_blocks: blocks.iter().map(|b| OwnBlock(b.parse().unwrap())).collect(),
        borrowed: borrowed.iter().map(|a| BorrowedAddr(a.parse().unwrap())).collect(),
        other_nodes: nodes
            .iter()
            .map(|(n, ip, asn)| MeshNode {
                name: n.to_string(),
                ip: ip.parse().unwrap(),
                as_number: asn.map(AsNumber),
                labels: Default::default(),
                ipv6: None,
                rr_cluster_id: None,
                listen_port: None,
            })
            .collect(),
        ..Default::default()
    }
}

/// An agent config from flags (the datastore flag is unused here).
fn cfg(flags: &str) -> AgentConfig {
    let line = format!("calico-node-agent run {flags} --datastore-path /nonexistent");
    let cli: Cli = tool_cli::try_parse_without_env(line.split_whitespace()).unwrap();
    AgentConfig::from_cli(cli.command.agent_args()).unwrap()
}

fn render_with(flags: &str, st: &RoutingState) -> String {
    let c = cfg(flags);
    render(&BirdInputs::new(&c, st))
}

#[test]
fn tor_peer_with_two_blocks() {
    let st = state(&["10.244.0.0/26", "10.244.0.64/26"], &[], &[("node-b", "192.168.20.2", None)]);
    let text = render_with("--node-name node-a --node-ip 192.168.10.2/24 --peer 192.168.10.1:65000", &st);
    // Mesh off: the other node is not a peer.
    assert!(!text.contains("Mesh_"));
    golden("tor_peer", &text);
}

#[test]
fn mesh_is_passive_towards_greater_addresses() {
    // String order, as Calico's template compares: "10.0.0.10" < "10.0.0.9".
    let st = state(
        &["10.244.1.0/26"],
        &[],
        &[("n10", "10.0.0.10", None), ("n3", "10.0.0.3", Some(64600)), ("self-dup", "10.0.0.9", None)],
    );
    let text = render_with("--node-name n9 --node-ip 10.0.0.9/24 --mesh", &st);
    assert!(!text.contains("Mesh_10_0_0_9"), "never peers with itself");
    golden("mesh", &text);
}

#[test]
fn borrowed_addresses_are_announced_as_host_routes() {
    let st = state(&["10.244.0.0/26"], &["10.244.0.70", "10.244.3.1"], &[]);
    let text = render_with("--node-name node-a --node-ip 192.168.10.2/24 --peer 192.168.10.1:65000", &st);
    assert!(text.contains("if net = 10.244.0.70/32 then accept;"));
    golden("borrowed", &text);
}

#[test]
fn no_blocks_announces_nothing() {
    let text = render_with("--node-name fresh --node-ip 192.168.10.2/24 --mesh", &RoutingState::default());
    golden("empty", &text);
}

// ---------------------------------------------------------------------------
// Datastore-driven BGP

struct Store {
    _dir: tempfile::TempDir,
    s: FileStore,
}

fn meta(name: &str) -> ObjectMeta {
    ObjectMeta { name: name.into(), ..Default::default() }
}

impl Store {
    /// node-a (192.168.10.2, rack r1) with one block; node-b (192.168.20.2, rack r2).
    fn new() -> Store {
        let dir = tempfile::tempdir().unwrap();
        let s = FileStore::open(dir.path()).unwrap();
        let st = Store { _dir: dir, s };
        st.node("node-a", "192.168.10.2/24", None, &[("rack", "r1")]);
        st.node("node-b", "192.168.20.2/24", None, &[("rack", "r2")]);
        let aff = calico_store::model::BlockAffinity {
            state: calico_store::model::AffinityState::Confirmed,
            deleted: false,
        };
        let b: ipnetwork::IpNetwork = "10.244.0.0/26".parse().unwrap();
        st.s.create(&model::affinity_key("node-a", &b), &model::encode(&aff)).unwrap();
        st
    }

    fn put(&self, key: &str, value: Vec<u8>) {
        match self.s.get(key).unwrap() {
            Some(kv) => self.s.update(key, &value, kv.revision).unwrap(),
            None => self.s.create(key, &value).unwrap(),
        };
    }

    fn node(&self, name: &str, ip: &str, asn: Option<u32>, labels: &[(&str, &str)]) {
        let mut m = meta(name);
        m.labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let spec = NodeSpec {
            bgp: Some(NodeBgpSpec { ipv4_address: Some(ip.into()), as_number: asn, ..Default::default() }),
        };
        self.put(&model::node_key(name), model::encode(&Node::new("Node", m, spec)));
    }

    fn peer(&self, name: &str, spec: BgpPeerSpec) {
        self.put(&model::bgp_peer_key(name), model::encode(&BgpPeer::new("BGPPeer", meta(name), spec)));
    }

    fn bgp_config(&self, spec: BgpConfigurationSpec) {
        let doc = BgpConfiguration::new("BGPConfiguration", meta("default"), spec);
        self.put(&model::bgp_configuration_key("default"), model::encode(&doc));
    }

    fn named_bgp_config(&self, name: &str, spec: BgpConfigurationSpec) {
        let doc = BgpConfiguration::new("BGPConfiguration", meta(name), spec);
        self.put(&model::bgp_configuration_key(name), model::encode(&doc));
    }

    /// What node-a renders, with `flags` as its agent config.
    fn render_a(&self, flags: &str) -> String {
        let st = state::read(&self.s, "node-a").unwrap();
        render_with(&format!("--node-name node-a --node-ip 192.168.10.2/24 {flags}"), &st)
    }
}

fn tor(scope: BgpPeerSpec) -> BgpPeerSpec {
    BgpPeerSpec { peer_ip: Some("192.168.10.1".into()), as_number: Some(65000), ..scope }
}

/// The `protocol bgp` block named `name`, or None.
fn protocol<'t>(text: &'t str, name: &str) -> Option<&'t str> {
    let start = text.find(&format!("protocol bgp {name} "))?;
    let len = text[start..].find("\n}").map(|e| e + 2)?;
    Some(&text[start..start + len])
}

#[test]
fn bgp_global_peer_from_the_datastore() {
    let st = Store::new();
    st.peer("tor", tor(BgpPeerSpec::default()));
    let text = st.render_a("");
    let p = protocol(&text, "Global_192_168_10_1").expect("a global BGPPeer peers every node");
    assert!(p.contains("neighbor 192.168.10.1 as 65000;") && p.contains("BGPPeer tor"), "{p}");
    golden("bgp_global_peer", &text);
}

#[test]
fn bgp_node_scoped_peer() {
    let st = Store::new();
    st.peer("tor-a", tor(BgpPeerSpec { node: Some("node-a".into()), ..Default::default() }));
    st.peer(
        "tor-b",
        BgpPeerSpec {
            node: Some("node-b".into()),
            peer_ip: Some("192.168.20.1".into()),
            as_number: Some(65000),
            ..Default::default()
        },
    );
    let text = st.render_a("");
    assert!(protocol(&text, "Node_192_168_10_1").is_some(), "{text}");
    assert!(!text.contains("192.168.20.1"), "node-b's peer is not node-a's");
    golden("bgp_node_peer", &text);
}

#[test]
fn bgp_selector_scoped_peer_matching_and_not() {
    let st = Store::new();
    st.peer(
        "rack1-tor",
        tor(BgpPeerSpec { node_selector: Some("rack == 'r1'".into()), ..Default::default() }),
    );
    let text = st.render_a("");
    assert!(protocol(&text, "Node_192_168_10_1").is_some(), "{text}");
    golden("bgp_selector_peer", &text);

    // node-a moves to rack r2: the peering goes, nothing else changes.
    st.node("node-a", "192.168.10.2/24", None, &[("rack", "r2")]);
    let moved = st.render_a("");
    assert!(!moved.contains("192.168.10.1"), "{moved}");
    golden("bgp_selector_peer_not_matching", &moved);
    // ... and the config's peer of the same address is back as a fallback.
    let fallback = st.render_a("--peer 192.168.10.1:65001");
    assert!(protocol(&fallback, "Global_192_168_10_1").unwrap().contains("as 65001;"));
}

#[test]
fn bgp_configuration_disables_the_mesh() {
    let st = Store::new();
    assert!(st.render_a("--mesh").contains("Mesh_192_168_20_2"), "mesh on from the config");
    st.bgp_config(BgpConfigurationSpec { node_to_node_mesh_enabled: Some(false), ..Default::default() });
    let text = st.render_a("--mesh --peer 192.168.10.1:65000");
    assert!(!text.contains("Mesh_"), "{text}");
    golden("bgp_mesh_disabled", &text);
}

#[test]
fn bgp_as_numbers_from_configuration_and_node() {
    let st = Store::new();
    st.bgp_config(BgpConfigurationSpec {
        as_number: Some(63400),
        node_to_node_mesh_enabled: Some(true),
        ..Default::default()
    });
    let text = st.render_a("");
    assert!(text.contains("local as 63400;"), "cluster AS for node-a");
    assert!(protocol(&text, "Mesh_192_168_20_2").unwrap().contains("as 63400;"), "and for node-b");
    golden("bgp_as_from_configuration", &text);

    // Node spec.bgp.asNumber beats the cluster AS, for this node and for peers.
    st.node("node-a", "192.168.10.2/24", Some(64701), &[("rack", "r1")]);
    st.node("node-b", "192.168.20.2/24", Some(64702), &[("rack", "r2")]);
    let text = st.render_a("");
    assert!(text.contains("local as 64701;"), "{text}");
    assert!(protocol(&text, "Mesh_192_168_20_2").unwrap().contains("as 64702;"));
    golden("bgp_as_from_node", &text);
}

#[test]
fn bgp_peer_selector_service_ips_and_logging() {
    let st = Store::new();
    st.node("rr-1", "192.168.50.2/24", None, &[("route-reflector", "true")]);
    st.peer(
        "to-rr",
        BgpPeerSpec { peer_selector: Some("has(route-reflector)".into()), ..Default::default() },
    );
    // A port, and a broken peer that must not take the others down.
    st.peer(
        "fabric",
        BgpPeerSpec {
            peer_ip: Some("192.168.10.1:1790".into()),
            as_number: Some(65000),
            ..Default::default()
        },
    );
    st.peer("broken", BgpPeerSpec { peer_ip: Some("192.168.10.9".into()), ..Default::default() });
    st.put(&model::bgp_peer_key("garbage"), b"{not json".to_vec());
    st.bgp_config(BgpConfigurationSpec {
        log_severity_screen: Some("Info".into()),
        node_to_node_mesh_enabled: Some(false),
        service_cluster_ips: vec![ServiceIpBlock { cidr: "10.96.0.0/12".parse().unwrap() }],
        ..Default::default()
    });
    let text = st.render_a("");
    let rr = protocol(&text, "Node_192_168_50_2").expect("peerSelector peers with rr-1");
    assert!(rr.contains("as 64512;"), "{rr}");
    assert!(protocol(&text, "Global_192_168_10_1")
        .unwrap()
        .contains("neighbor 192.168.10.1 port 1790 as 65000;"));
    assert!(!text.contains("192.168.10.9"));
    assert!(
        text.contains("route 10.96.0.0/12 blackhole;") && text.contains("if net = 10.96.0.0/12 then accept;")
    );
    assert!(text.contains("debug { states };"));
    golden("bgp_peer_selector_services", &text);
}

/// `listenPort` cluster-wide and per node (`node.<name>`): node-a listens
/// where its own BGPConfiguration says and reaches every other node where
/// that node listens (its own, the cluster's, or 179); a peerSelector peer is
/// a Calico node too. Cluster-wide fields in a per-node document and a
/// document Calico does not read are reported.
#[test]
fn bgp_listen_ports_cluster_wide_and_per_node() {
    let st = Store::new();
    st.node("node-c", "192.168.30.2/24", None, &[("rr", "true")]);
    st.node("node-d", "192.168.40.2/24", None, &[]);
    st.bgp_config(BgpConfigurationSpec {
        listen_port: Some(1790),
        log_severity_screen: Some("Info".into()),
        ..Default::default()
    });
    st.named_bgp_config(
        "node.node-a",
        BgpConfigurationSpec {
            listen_port: Some(1791),
            log_severity_screen: Some("Debug".into()),
            as_number: Some(65111),
            ..Default::default()
        },
    );
    st.named_bgp_config("node.node-b", BgpConfigurationSpec { listen_port: Some(179), ..Default::default() });
    st.named_bgp_config(
        "node.node-d",
        BgpConfigurationSpec { listen_port: Some(1794), ..Default::default() },
    );
    st.named_bgp_config("rack-1", BgpConfigurationSpec { listen_port: Some(1799), ..Default::default() });
    st.peer("to-rr", BgpPeerSpec { peer_selector: Some("has(rr)".into()), ..Default::default() });
    let text = st.render_a("");
    assert!(text.contains("  local port 1791 as 64512;"), "node-a's own port and the cluster AS: {text}");
    assert!(text.contains("debug all;"), "node-a's own logSeverityScreen");
    let mesh = |name: &str| protocol(&text, name).unwrap_or_else(|| panic!("{name} in {text}"));
    assert!(mesh("Mesh_192_168_20_2").contains("neighbor 192.168.20.2 as 64512;"), "node-b: 179");
    assert!(mesh("Mesh_192_168_40_2").contains("neighbor 192.168.40.2 port 1794 as 64512;"));
    assert!(mesh("Mesh_192_168_30_2").contains("neighbor 192.168.30.2 port 1790 as 64512;"));
    let s = state::read(&st.s, "node-a").unwrap();
    let problems: Vec<&String> = s.problems.iter().collect();
    assert!(problems.iter().any(|p| p.contains("node.node-a: asNumber is cluster-wide")), "{problems:?}");
    assert!(
        problems.iter().any(|p| p.contains("rack-1: not a BGPConfiguration Calico reads")),
        "{problems:?}"
    );
    golden("bgp_listen_ports", &text);
}

#[test]
fn bgp_configuration_without_mesh_field_turns_the_mesh_on() {
    let st = Store::new();
    assert!(!st.render_a("").contains("Mesh_"), "no BGPConfiguration: the config's default (off)");
    st.bgp_config(BgpConfigurationSpec { as_number: Some(63400), ..Default::default() });
    let text = st.render_a("");
    assert!(protocol(&text, "Mesh_192_168_20_2").is_some(), "Calico's default is on: {text}");
    golden("bgp_mesh_default_on", &text);
}

#[test]
fn bgp_as_precedence_node_then_configuration_then_agent_config() {
    let st = Store::new();
    // No BGPConfiguration AS: the agent's --as is the fallback.
    assert!(st.render_a("--as 64601").contains("local as 64601;"));
    // BGPConfiguration asNumber beats --as.
    st.bgp_config(BgpConfigurationSpec {
        as_number: Some(63400),
        node_to_node_mesh_enabled: Some(false),
        ..Default::default()
    });
    let text = st.render_a("--as 64601 --peer 192.168.10.1:65000");
    assert!(text.contains("local as 63400;"), "{text}");
    golden("bgp_as_configuration_over_agent_config", &text);
    // The Node's own AS beats both.
    st.node("node-a", "192.168.10.2/24", Some(64701), &[("rack", "r1")]);
    assert!(st.render_a("--as 64601").contains("local as 64701;"));
}

/// Parse `text` with the real BIRD; the error text when it refuses.
fn bird_parse(text: &str) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("bird.conf");
    std::fs::write(&f, text).unwrap();
    let out = Command::new("bird").arg("-p").arg("-c").arg(&f).output().unwrap();
    out.status.success().then_some(()).ok_or_else(|| String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn no_single_bad_document_makes_bird_refuse_the_config() {
    let st = Store::new();
    st.peer("tor", tor(BgpPeerSpec::default()));
    let raw = |kind: &str, name: &str, spec: &str| {
        format!(r#"{{"kind":"{kind}","apiVersion":"projectcalico.org/v3","metadata":{{"name":"{name}"}},"spec":{spec}}}"#)
            .into_bytes()
    };
    // Each of these alone used to produce a config `bird -p` refuses, or to
    // throw away the whole BGPConfiguration.
    st.put(
        &model::bgp_peer_key("as-zero"),
        raw("BGPPeer", "as-zero", r#"{"peerIP":"192.168.10.7","asNumber":0}"#),
    );
    st.put(
        &model::bgp_peer_key("port-zero"),
        raw("BGPPeer", "port-zero", r#"{"peerIP":"192.168.10.8:0","asNumber":65000}"#),
    );
    let deep = format!("{}has(a){}", "(".repeat(200_000), ")".repeat(200_000));
    st.peer("deep", BgpPeerSpec { peer_selector: Some(deep), ..Default::default() });
    st.peer(
        "extras",
        BgpPeerSpec {
            peer_ip: Some("192.168.10.9".into()),
            as_number: Some(65009),
            keep_original_next_hop: Some(true),
            other: [("sourceAddress".to_string(), serde_json::json!("None"))].into(),
            ..Default::default()
        },
    );
    // Passwords: one that BIRD's strings cannot hold, one whose secret is
    // missing, one that is fine; a document that is not a secretKeyRef.
    let secrets = tempfile::tempdir().unwrap();
    let secrets_file = secrets.path().join("bgp-secrets.json");
    std::fs::write(&secrets_file, r#"{"tor": {"quoted": "a\"b; } protocol x {", "good": "Sw0rdfish"}}"#)
        .unwrap();
    let with_pw = |ip: &str, key: &str| BgpPeerSpec {
        peer_ip: Some(ip.into()),
        as_number: Some(65000),
        password: Some(model::BgpPassword {
            secret_key_ref: Some(model::SecretKeyRef { name: "tor".into(), key: key.into() }),
        }),
        ..Default::default()
    };
    st.peer("pw-quoted", with_pw("192.168.10.11", "quoted"));
    st.peer("pw-missing", with_pw("192.168.10.12", "absent"));
    st.peer("pw-good", with_pw("192.168.10.13", "good"));
    st.put(
        &model::bgp_peer_key("pw-plain"),
        raw("BGPPeer", "pw-plain", r#"{"peerIP":"192.168.10.14","asNumber":65000,"password":"plaintext"}"#),
    );
    // IPv6 peers: a link-local one (BIRD needs an interface for it) and a
    // good one, which node-a (no IPv6 address here) cannot use.
    st.put(
        &model::bgp_peer_key("v6-link-local"),
        raw("BGPPeer", "v6-link-local", r#"{"peerIP":"fe80::1","asNumber":65000}"#),
    );
    st.put(
        &model::bgp_peer_key("v6-tor"),
        raw("BGPPeer", "v6-tor", r#"{"peerIP":"fd00:10::1","asNumber":65000}"#),
    );
    // A route reflector cluster ID BIRD would refuse, on this node and another.
    st.put(
        &model::node_key("node-a"),
        raw(
            "Node",
            "node-a",
            r#"{"bgp":{"ipv4Address":"192.168.10.2/24","routeReflectorClusterID":"300.0.0.1"}}"#,
        ),
    );
    st.put(
        &model::node_key("node-c"),
        raw(
            "Node",
            "node-c",
            r#"{"bgp":{"ipv4Address":"192.168.30.2/24","ipv6Address":"fe80::3/64","routeReflectorClusterID":"rr-1"}}"#,
        ),
    );
    // node-b's AS is 0: meshed with the cluster AS instead.
    st.node("node-b", "192.168.20.2/24", Some(0), &[("rack", "r2")]);
    st.put(
        &model::bgp_configuration_key("default"),
        raw(
            "BGPConfiguration",
            "default",
            r#"{"asNumber":0,"logSeverityScreen":"Verbose","nodeToNodeMeshEnabled":true,
                "serviceClusterIPs":[{"cidr":"10.96.0.1/12"},{"cidr":"bogus"}]}"#,
        ),
    );
    let s = state::read(&st.s, "node-a").unwrap();
    let problems: Vec<&String> = s.problems.iter().collect();
    for want in [
        "as-zero: peerIP 192.168.10.7: asNumber 0",
        "port-zero: peerIP 192.168.10.8:0: port 0",
        "deep: peerSelector: invalid selector",
        "extras: sourceAddress is not implemented",
        "pw-plain: ",
        "v6-link-local: peerIP fe80::1: not a unicast address of another host (link-local",
        "node-a: routeReflectorClusterID \"300.0.0.1\" is not an IPv4-formatted cluster ID",
        "node-c: routeReflectorClusterID \"rr-1\"",
        "node-c: ipv6Address \"fe80::3/64\" is not a usable IPv6 address",
        "node-b: spec.bgp.asNumber 0",
        "default: asNumber 0",
        "default: logSeverityScreen \"Verbose\"",
        "default: serviceClusterIPs 10.96.0.1/12 has host bits set; using 10.96.0.0/12",
        "default: serviceClusterIPs[1]",
    ] {
        assert!(problems.iter().any(|p| p.contains(want)), "{want}: {problems:#?}");
    }
    assert_eq!(problems.len(), 14, "{problems:#?}");
    let c = cfg(&format!(
        "--node-name node-a --node-ip 192.168.10.2/24 --as 64601 --bgp-secrets {}",
        secrets_file.display()
    ));
    let inputs = BirdInputs::new(&c, &s);
    let merged: Vec<&String> = inputs.bgp.problems.iter().collect();
    for want in [
        "BGPPeer pw-quoted: peer 192.168.10.11: password: secret \"tor\" key \"quoted\": the password contains a double quote",
        "BGPPeer pw-missing: peer 192.168.10.12: password: secret \"tor\" key \"absent\" is not in",
        "BGPPeer v6-tor: peer fd00:10::1 is IPv6 and this node has no IPv6 address",
    ] {
        assert!(merged.iter().any(|p| p.contains(want)), "{want}: {merged:#?}");
    }
    assert_eq!(merged.len(), 3, "{merged:#?}");
    for p in problems.iter().chain(&merged) {
        assert!(!p.contains("Sw0rdfish") && !p.contains("protocol x"), "a password in a message: {p}");
    }
    let text = render(&inputs);
    // The good password is written; the bad ones' sessions are not there at all.
    assert!(protocol(&text, "Global_192_168_10_13").unwrap().contains("password \"Sw0rdfish\";"), "{text}");
    for skipped in ["192.168.10.11", "192.168.10.12", "192.168.10.14", "fd00", "fe80", "rr cluster id"] {
        assert!(!text.contains(skipped), "{skipped}: {text}");
    }
    bird_parse(&text).unwrap_or_else(|e| panic!("bird -p refuses: {e}\n{text}"));
    // The good parts of every document still apply.
    assert!(protocol(&text, "Global_192_168_10_1").is_some(), "{text}");
    assert!(protocol(&text, "Global_192_168_10_9").unwrap().contains("as 65009;"));
    assert!(protocol(&text, "Mesh_192_168_20_2").unwrap().contains("as 64512;"), "{text}");
    assert!(text.contains("local as 64601;") && text.contains("route 10.96.0.0/12 blackhole;"));
    assert!(!text.contains("192.168.10.7") && !text.contains("192.168.10.8"));
    golden("bgp_bad_documents", &text);
}

// ---------------------------------------------------------------------------
// IPv6 and route reflection

impl Store {
    /// A Node document as written (JSON `spec.bgp`), labels included.
    fn raw_node(&self, name: &str, bgp: serde_json::Value, labels: &[(&str, &str)]) {
        let labels: serde_json::Map<String, serde_json::Value> =
            labels.iter().map(|(k, v)| (k.to_string(), serde_json::json!(v))).collect();
        let doc = serde_json::json!({
            "kind": "Node", "apiVersion": "projectcalico.org/v3",
            "metadata": {"name": name, "labels": labels}, "spec": {"bgp": bgp},
        });
        self.put(&model::node_key(name), serde_json::to_vec(&doc).unwrap());
    }

    fn claim(&self, node: &str, cidr: &str) {
        let aff = calico_store::model::BlockAffinity {
            state: calico_store::model::AffinityState::Confirmed,
            deleted: false,
        };
        let b: ipnetwork::IpNetwork = cidr.parse().unwrap();
        self.put(&model::affinity_key(node, &b), model::encode(&aff));
    }

    /// What `node` renders with `flags`, and the merge's problems.
    fn render_node(&self, node: &str, flags: &str) -> (String, Vec<String>) {
        let st = state::read(&self.s, node).unwrap();
        let c = cfg(&format!("--node-name {node} {flags}"));
        let inputs = BirdInputs::new(&c, &st);
        let problems = st.problems.iter().chain(&inputs.bgp.problems).cloned().collect();
        (render(&inputs), problems)
    }
}

#[test]
fn dual_stack_blocks_sessions_and_mesh() {
    let st = Store::new();
    st.raw_node(
        "node-a",
        serde_json::json!({"ipv4Address": "192.168.10.2/24", "ipv6Address": "fd00:10::2/64"}),
        &[],
    );
    st.raw_node(
        "node-b",
        serde_json::json!({"ipv4Address": "192.168.20.2/24", "ipv6Address": "fd00:20::2/64"}),
        &[],
    );
    st.claim("node-a", "fd00:244::/122");
    // node-a holds ordinal 5 of node-b's IPv6 block: announced as a /128.
    let v6b: ipnetwork::IpNetwork = "fd00:244::40/122".parse().unwrap();
    let mut allocations = vec![None; 64];
    allocations[5] = Some(0);
    let block = model::AllocationBlock {
        cidr: v6b,
        affinity: Some("host:node-b".into()),
        strict_affinity: false,
        allocations,
        unallocated: vec![],
        attributes: vec![model::AllocationAttribute {
            handle_id: Some("h".into()),
            secondary: Some([("node".to_string(), "node-a".to_string())].into()),
        }],
        deleted: false,
    };
    st.put(&model::block_key(&v6b), model::encode(&block));
    st.bgp_config(BgpConfigurationSpec {
        service_cluster_ips: vec![
            ServiceIpBlock { cidr: "10.96.0.0/12".parse().unwrap() },
            ServiceIpBlock { cidr: "fd00:96::/112".parse().unwrap() },
        ],
        ..Default::default()
    });
    let flags = "--node-ip 192.168.10.2/24 --node-ipv6 fd00:10::2/64 --peer 192.168.10.1:65000 --peer [fd00:10::1]:65000";
    let (text, problems) = st.render_node("node-a", flags);
    assert!(problems.is_empty(), "{problems:?}");
    assert!(text.contains("protocol kernel kernel6 {") && text.contains("protocol static calico_aggr6 {"));
    assert!(
        text.contains("  route fd00:244::/122 blackhole;")
            && text.contains("  route fd00:244::45/128 blackhole;")
    );
    assert!(
        text.contains("if net = fd00:244::/122 then accept;")
            && text.contains("if net = fd00:96::/112 then accept;")
    );
    let tor6 = protocol(&text, "Global_fd00_10__1").expect("IPv6 session to the tor");
    assert!(tor6.contains("from bgp_template_v6") && tor6.contains("source address fd00:10::2;"), "{tor6}");
    let tor4 = protocol(&text, "Global_192_168_10_1").unwrap();
    assert!(tor4.contains("from bgp_template {"), "{tor4}");
    // Mesh over both families; "fd00:20::2" > "fd00:10::2": node-a waits.
    let m6 = protocol(&text, "Mesh_fd00_20__2").expect("IPv6 mesh session");
    assert!(m6.contains("neighbor fd00:20::2 as 64512;") && m6.contains("passive on;"), "{m6}");
    assert!(protocol(&text, "Mesh_192_168_20_2").is_some());
    golden("dual_stack", &text);

    // The same node without an IPv6 address: IPv4 only, the IPv6 parts are
    // reported, not rendered (BIRD would have no source address for them).
    let (v4only, problems) = st.render_node(
        "node-a",
        "--node-ip 192.168.10.2/24 --peer 192.168.10.1:65000 --peer [fd00:10::1]:65000",
    );
    assert!(!v4only.contains("fd00") && !v4only.contains("kernel6"), "{v4only}");
    assert!(problems.iter().any(|p| p.contains("IPv6 blocks but no IPv6 address")), "{problems:?}");
    assert!(problems.iter().any(|p| p.contains("peer fd00:10::1 is IPv6")), "{problems:?}");
    bird_parse(&v4only).unwrap();
}

#[test]
fn route_reflector_reflects_for_its_clients_and_leaves_the_mesh() {
    let st = Store::new();
    // Calico's recipe: a cluster ID and a label on the reflector, one BGPPeer
    // from every node to the nodes with the label (reversed for the reflector).
    st.raw_node(
        "node-rr",
        serde_json::json!({"ipv4Address": "192.168.50.2/24", "ipv6Address": "fd00:50::2/64", "routeReflectorClusterID": "244.0.0.1"}),
        &[("route-reflector", "true")],
    );
    st.raw_node(
        "node-b",
        serde_json::json!({"ipv4Address": "192.168.20.2/24", "ipv6Address": "fd00:20::2/64"}),
        &[],
    );
    st.raw_node(
        "node-a",
        serde_json::json!({"ipv4Address": "192.168.10.2/24", "ipv6Address": "fd00:10::2/64"}),
        &[],
    );
    st.peer(
        "peer-with-rr",
        BgpPeerSpec {
            node_selector: Some("all()".into()),
            peer_selector: Some("route-reflector == 'true'".into()),
            ..Default::default()
        },
    );
    st.bgp_config(BgpConfigurationSpec { node_to_node_mesh_enabled: Some(true), ..Default::default() });
    st.claim("node-rr", "10.244.9.0/26");

    let (rr, problems) = st.render_node("node-rr", "--node-ip 192.168.50.2/24 --node-ipv6 fd00:50::2/64");
    assert!(problems.is_empty(), "{problems:?}");
    assert!(!rr.contains("protocol bgp Mesh_"), "a reflector is out of the mesh: {rr}");
    for (name, ip) in [
        ("Node_192_168_10_2", "192.168.10.2"),
        ("Node_fd00_10__2", "fd00:10::2"),
        ("Node_192_168_20_2", "192.168.20.2"),
    ] {
        let p = protocol(&rr, name).unwrap_or_else(|| panic!("{name}: {rr}"));
        assert!(p.contains(&format!("neighbor {ip} as 64512;")), "{p}");
        assert!(p.contains("rr client;") && p.contains("rr cluster id 244.0.0.1;"), "{p}");
        assert!(p.contains("export filter calico_export_rr;"), "{p}");
    }
    assert!(rr.contains("filter calico_export_rr {") && rr.contains("if bgp_path.len = 0 then accept;"));
    golden("rr_reflector", &rr);

    let (client, problems) = st.render_node("node-a", "--node-ip 192.168.10.2/24 --node-ipv6 fd00:10::2/64");
    assert!(problems.is_empty(), "{problems:?}");
    assert!(client.contains("# Skipping \"node-rr\" (192.168.50.2): a route reflector"), "{client}");
    assert!(!client.contains("Mesh_192_168_50_2") && !client.contains("rr client"), "{client}");
    let to_rr = protocol(&client, "Node_192_168_50_2").expect("the client peers with the reflector");
    assert!(to_rr.contains("BGPPeer peer-with-rr node node-rr"), "{to_rr}");
    assert!(protocol(&client, "Node_fd00_50__2").is_some(), "and over IPv6: {client}");
    assert!(protocol(&client, "Mesh_192_168_20_2").is_some(), "the mesh between clients stays");
    golden("rr_client", &client);

    // A second reflector of the same cluster: a peer, not a client.
    st.raw_node(
        "node-rr2",
        serde_json::json!({"ipv4Address": "192.168.60.2/24", "routeReflectorClusterID": "244.0.0.1"}),
        &[("route-reflector", "true")],
    );
    let (rr, _) = st.render_node("node-rr", "--node-ip 192.168.50.2/24 --node-ipv6 fd00:50::2/64");
    let peer_rr = protocol(&rr, "Node_192_168_60_2").expect("reflectors peer");
    assert!(!peer_rr.contains("rr client"), "{peer_rr}");
    assert!(peer_rr.contains("export filter calico_export_rr;"), "reflected routes go to it too: {peer_rr}");
    assert!(protocol(&rr, "Node_192_168_10_2").unwrap().contains("rr client;"));
    bird_parse(&rr).unwrap();
}

#[test]
fn mesh_password_from_the_bgp_configuration() {
    let st = Store::new();
    st.bgp_config(BgpConfigurationSpec {
        node_mesh_password: Some(model::BgpPassword {
            secret_key_ref: Some(model::SecretKeyRef { name: "bgp".into(), key: "mesh".into() }),
        }),
        ..Default::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("secrets.json");
    std::fs::write(&secrets, r#"{"bgp": {"mesh": "M3sh-pass"}}"#).unwrap();
    let (text, problems) =
        st.render_node("node-a", &format!("--node-ip 192.168.10.2/24 --bgp-secrets {}", secrets.display()));
    assert!(problems.is_empty(), "{problems:?}");
    let mesh = protocol(&text, "Mesh_192_168_20_2").expect("the mesh is on (a BGPConfiguration exists)");
    assert!(mesh.contains("password \"M3sh-pass\";"), "{mesh}");
    golden("bgp_mesh_password", &text);

    // The secret cannot be read: no mesh session without its password.
    let (text, problems) = st.render_node("node-a", "--node-ip 192.168.10.2/24");
    assert!(!text.contains("Mesh_"), "{text}");
    assert!(
        problems.iter().any(|p| p.contains("nodeMeshPassword") && p.contains("no node-to-node mesh")),
        "{problems:?}"
    );
    bird_parse(&text).unwrap();
}
