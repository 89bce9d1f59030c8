//! Property test of the rule that no single datastore document can make
//! `bird -p` refuse the rendered configuration, over the fields this
//! agent's IPv6, password and route-reflector support reads: a BGPPeer's
//! `peerIP` (anything address-like or not), `asNumber` and password (any
//! printable text, quotes, backslashes, over-long), a Node's
//! `routeReflectorClusterID` and `ipv6Address` (this node's and another's).
//! Each case renders with the real agent code and parses with the real
//! BIRD; the password never shows up in a reported problem.

use std::process::Command;

use calico_node_agent::bird::{render, BirdInputs};
use calico_node_agent::cli::Cli;
use calico_node_agent::config::AgentConfig;
use calico_node_agent::state;
use calico_store::file::FileStore;
use calico_store::model::{self, AffinityState, BlockAffinity};
use calico_store::Datastore;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

/// `cases` unless PROPTEST_CASES says otherwise.
fn config(cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.trim().parse().ok()).unwrap_or(cases);
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

fn peer_ip() -> BoxedStrategy<String> {
    prop_oneof![
        any::<std::net::Ipv4Addr>().prop_map(|a| a.to_string()),
        any::<std::net::Ipv6Addr>().prop_map(|a| a.to_string()),
        (any::<std::net::Ipv6Addr>(), any::<u16>()).prop_map(|(a, p)| format!("[{a}]:{p}")),
        (any::<std::net::Ipv4Addr>(), any::<u16>()).prop_map(|(a, p)| format!("{a}:{p}")),
        Just("fe80::1".to_string()),
        Just("fd00:10::1".to_string()),
        "\\PC{0,24}",
    ]
    .boxed()
}

fn password() -> BoxedStrategy<String> {
    prop_oneof!["[ -~]{0,90}", "[a-z\"\\\\ };{]{1,12}", "\\PC{0,20}", Just("Sw0rdfish-pass".to_string()),]
        .boxed()
}

fn cluster_id() -> BoxedStrategy<Option<String>> {
    prop_oneof![
        Just(None),
        any::<std::net::Ipv4Addr>().prop_map(|a| Some(a.to_string())),
        "\\PC{0,16}".prop_map(Some),
    ]
    .boxed()
}

fn ipv6_address() -> BoxedStrategy<Option<String>> {
    prop_oneof![
        Just(None),
        (any::<std::net::Ipv6Addr>(), 0u8..=128).prop_map(|(a, l)| Some(format!("{a}/{l}"))),
        "\\PC{0,24}".prop_map(Some),
    ]
    .boxed()
}

fn cfg(flags: &str) -> AgentConfig {
    let line = format!("calico-node-agent run {flags} --datastore-path /nonexistent");
    let cli: Cli = tool_cli::try_parse_without_env(line.split_whitespace()).unwrap();
    AgentConfig::from_cli(cli.command.agent_args()).unwrap()
}

#[allow(clippy::too_many_arguments)]
fn case(
    ip: &str,
    asn: u32,
    pw: &str,
    selector_peer: bool,
    my_cluster: Option<String>,
    other_cluster: Option<String>,
    other_v6: Option<String>,
) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let s = FileStore::open(dir.path().join("store")).unwrap();
    let secrets = dir.path().join("secrets.json");
    std::fs::write(&secrets, serde_json::to_vec(&serde_json::json!({"s": {"k": pw}})).unwrap()).unwrap();
    let node = |name: &str, v4: &str, v6: Option<String>, cluster: Option<String>| {
        let doc = serde_json::json!({
            "kind": "Node", "apiVersion": "projectcalico.org/v3",
            "metadata": {"name": name, "labels": {"rr": "yes"}},
            "spec": {"bgp": {"ipv4Address": v4, "ipv6Address": v6, "routeReflectorClusterID": cluster}},
        });
        s.create(&model::node_key(name), &serde_json::to_vec(&doc).unwrap()).unwrap();
    };
    node("me", "192.168.10.2/24", Some("fd00:10::2/64".into()), my_cluster.clone());
    node("other", "192.168.20.2/24", other_v6.clone(), other_cluster.clone());
    let aff = BlockAffinity { state: AffinityState::Confirmed, deleted: false };
    for b in ["10.244.0.0/26", "fd00:244::/122"] {
        s.create(&model::affinity_key("me", &b.parse().unwrap()), &model::encode(&aff)).unwrap();
    }
    let target = if selector_peer {
        serde_json::json!({"peerSelector": "has(rr)"})
    } else {
        serde_json::json!({"peerIP": ip, "asNumber": asn})
    };
    let mut spec = target;
    spec["password"] = serde_json::json!({"secretKeyRef": {"name": "s", "key": "k"}});
    let doc = serde_json::json!({
        "kind": "BGPPeer", "apiVersion": "projectcalico.org/v3", "metadata": {"name": "p"}, "spec": spec,
    });
    s.create(&model::bgp_peer_key("p"), &serde_json::to_vec(&doc).unwrap()).unwrap();
    s.create(
        &model::bgp_configuration_key("default"),
        br#"{"kind":"BGPConfiguration","apiVersion":"projectcalico.org/v3","metadata":{"name":"default"},"spec":{}}"#,
    )
    .unwrap();

    let st = state::read(&s, "me").unwrap();
    let c = cfg(&format!(
        "--node-name me --node-ip 192.168.10.2/24 --node-ipv6 fd00:10::2/64 --bgp-secrets {}",
        secrets.display()
    ));
    let inputs = BirdInputs::new(&c, &st);
    // (Unless the other documents hold the same text: then it is theirs.)
    let elsewhere = [Some(ip), my_cluster.as_deref(), other_cluster.as_deref(), other_v6.as_deref()]
        .iter()
        .flatten()
        .any(|t| t.contains(pw));
    if pw.len() >= 4 && !elsewhere {
        for p in st.problems.iter().chain(&inputs.bgp.problems) {
            prop_assert!(!p.contains(pw), "the password in a problem: {p}");
        }
    }
    let text = render(&inputs);
    let f = dir.path().join("bird.conf");
    std::fs::write(&f, &text).unwrap();
    let out = Command::new("bird").arg("-p").arg("-c").arg(&f).output().unwrap();
    prop_assert!(out.status.success(), "bird -p refuses: {}\n{text}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

proptest! {
    #![proptest_config(config(64))]
    #[test]
    fn no_single_document_makes_bird_refuse_the_config(
        ip in peer_ip(),
        asn in prop_oneof![Just(0u32), Just(64512u32), any::<u32>()],
        pw in password(),
        selector_peer in any::<bool>(),
        my_cluster in cluster_id(),
        other_cluster in cluster_id(),
        other_v6 in ipv6_address(),
    ) {
        case(&ip, asn, &pw, selector_peer, my_cluster, other_cluster, other_v6)?;
    }
}
