//! Golden tests of the rendered BIRD configuration. Each case is compared
//! byte for byte with `tests/golden/<case>.conf` (regenerate with
//! `UPDATE_GOLDEN=1 cargo test -p calico-node-agent --test bird_golden` and
//! review the diff) and parsed by the real BIRD 2 (`bird -p`).

use std::path::PathBuf;
use std::process::Command;

use calico_node_agent::bird::{render, BirdInputs};
use calico_node_agent::config::{AsNumber, PeerConfig};
use calico_node_agent::state::{BorrowedAddr, MeshNode, OwnBlock, RoutingState};

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
            })
            .collect(),
    }
}

#[test]
fn tor_peer_with_two_blocks() {
    let st = state(&["10.244.0.0/26", "10.244.0.64/26"], &[], &[("node-b", "192.168.20.2", None)]);
    let peers = [PeerConfig { ip: "192.168.10.1".parse().unwrap(), as_number: AsNumber(65000) }];
    let text = render(&BirdInputs {
        node_name: "node-a",
        node_ip: "192.168.10.2".parse().unwrap(),
        local_as: AsNumber(64512),
        peers: &peers,
        mesh: false,
        state: &st,
    });
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
    let text = render(&BirdInputs {
        node_name: "n9",
        node_ip: "10.0.0.9".parse().unwrap(),
        local_as: AsNumber(64512),
        peers: &[],
        mesh: true,
        state: &st,
    });
    assert!(!text.contains("Mesh_10_0_0_9"), "never peers with itself");
    golden("mesh", &text);
}

#[test]
fn borrowed_addresses_are_announced_as_host_routes() {
    let st = state(&["10.244.0.0/26"], &["10.244.0.70", "10.244.3.1"], &[]);
    let peers = [PeerConfig { ip: "192.168.10.1".parse().unwrap(), as_number: AsNumber(65000) }];
    let text = render(&BirdInputs {
        node_name: "node-a",
        node_ip: "192.168.10.2".parse().unwrap(),
        local_as: AsNumber(64512),
        peers: &peers,
        mesh: false,
        state: &st,
    });
    assert!(text.contains("if net = 10.244.0.70/32 then accept;"));
    golden("borrowed", &text);
}

#[test]
fn no_blocks_announces_nothing() {
    let st = RoutingState::default();
    let text = render(&BirdInputs {
        node_name: "fresh",
        node_ip: "192.168.10.2".parse().unwrap(),
        local_as: AsNumber(64512),
        peers: &[],
        mesh: true,
        state: &st,
    });
    golden("empty", &text);
}
