//! The nftables transaction builder on synthetic clusters (the bench's
//! generator): the injection backstop, element comments, and what an
//! endpoint change writes in each layout.

mod support;

use std::collections::{BTreeSet, HashSet};

use kube_proxy_rules::config::NodeConfig;
use kube_proxy_rules::model::endpoints::{key_of, EndpointInfo};
use kube_proxy_rules::nftables::render::NftLayout;
use kube_proxy_rules::nftables::{render, Applied, NftPlan, NftablesConfig};
use support::synthetic_state;

fn cfg() -> NftablesConfig {
    NftablesConfig { node: NodeConfig { hostname: "n".into(), ..Default::default() }, ..Default::default() }
}

/// The backstop: names that got past input validation (here: put into
/// the state directly) are refused, not written.
#[test]
fn the_transaction_builder_refuses_names_that_could_inject() {
    // An element comment (a service without endpoints).
    let mut st = synthetic_state(1, 1);
    st.endpoints.clear();
    st.services[0].name_string = "bench/x\" : drop }\nadd table ip pwned".into();
    let e = render(&st, &cfg(), &NftPlan::full()).unwrap_err();
    assert_eq!((e.what, e.bad), ("nft element comment", '"'));
    // A chain name.
    let mut st = synthetic_state(1, 1);
    st.services[0].chains.nft_base = "x ; add table ip pwned".into();
    let e = render(&st, &cfg(), &NftPlan::full()).unwrap_err();
    assert_eq!((e.what, e.bad), ("nft chain name", ' '));
    // A leftover chain with an unsafe name is left alone, not refused.
    let st = synthetic_state(1, 1);
    let existing: BTreeSet<String> = ["service-X-a/b c".to_string()].into();
    let plan = NftPlan { existing_chains: Some(&existing), ..NftPlan::full() };
    assert!(render(&st, &cfg(), &plan).unwrap().stale_chains.is_empty());
}

/// A changed comment alone re-creates the element; an unchanged one
/// writes nothing.
#[test]
fn elements_are_compared_with_their_comments() {
    let mut st = synthetic_state(1, 1);
    st.endpoints.clear();
    let full = render(&st, &cfg(), &NftPlan::full()).unwrap();
    let applied = Applied::after_full(&full);
    let unchanged = HashSet::new();
    let plan = NftPlan { full: false, changed: Some(&unchanged), applied: Some(&applied), ..NftPlan::full() };
    assert_eq!(render(&st, &cfg(), &plan).unwrap().operations, 0);
    // A renamed port changes the service's fingerprint: it is rewritten.
    st.services[0].name_string.push_str("-renamed");
    let changed: HashSet<_> = [(st.services[0].namespace.clone(), st.services[0].name.clone())].into();
    let plan = NftPlan { changed: Some(&changed), ..plan };
    let r = render(&st, &cfg(), &plan).unwrap();
    assert_eq!((r.elements_deleted, r.elements_added), (1, 1), "{}", r.transaction);
    assert!(r.transaction.contains("-renamed\" : goto reject-chain }"), "{}", r.transaction);
}

/// One endpoint of one service replaced (the bench's change), in each layout.
fn one_endpoint_replaced(layout: NftLayout) -> (kube_proxy_rules::nftables::NftRendered, usize) {
    let cfg = NftablesConfig { layout, ..cfg() };
    let st = synthetic_state(50, 3);
    let full = render(&st, &cfg, &NftPlan::full()).unwrap();
    let applied = Applied::after_full(&full);
    let mut next = st.clone();
    let sp = next.services[7].clone();
    let eps = next.endpoints.get_mut(&key_of(&sp)).unwrap();
    eps[0] = EndpointInfo::new("10.127.0.1".parse().unwrap(), 8080, None);
    let changed: HashSet<_> = [(sp.namespace.clone(), sp.name.clone())].into();
    let removed = HashSet::new();
    let plan = NftPlan {
        full: false,
        changed: Some(&changed),
        removed: Some(&removed),
        applied: Some(&applied),
        ..NftPlan::full()
    };
    (render(&next, &cfg, &plan).unwrap(), full.transaction.len())
}

/// kube-proxy's layout rewrites the service's chains (a new endpoint chain,
/// the policy chain); the endpoint-maps layout changes two map elements and
/// two hairpin elements, nothing else: no chain, no rule.
#[test]
fn an_endpoint_change_is_map_elements_alone_in_the_endpoint_maps_layout() {
    let (kp, _) = one_endpoint_replaced(NftLayout::KubeProxy);
    assert!(
        kp.transaction.contains("add rule ") && kp.transaction.contains("add chain "),
        "{}",
        kp.transaction
    );
    let (maps, full_bytes) = one_endpoint_replaced(NftLayout::EndpointMaps);
    let mut ops: Vec<&str> =
        maps.transaction.lines().map(|l| l.split(" ip kube-proxy ").next().unwrap()).collect();
    ops.sort();
    assert_eq!(
        ops,
        ["add element", "add element", "delete element", "delete element"],
        "{}",
        maps.transaction
    );
    assert!(maps.transaction.contains("endpoint-dnat { ") && maps.transaction.contains("10.127.0.1 . 8080"));
    assert!(
        maps.transaction.contains("endpoint-hairpin { 10.127.0.1 . 10.127.0.1 }"),
        "{}",
        maps.transaction
    );
    assert!(maps.written_chains.is_empty() && maps.stale_chains.is_empty());
    assert!(full_bytes > 100 * maps.transaction.len());
}
