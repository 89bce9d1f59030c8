//! The nftables transaction builder on synthetic clusters (the bench's
//! generator): the injection backstop and element comments.

mod support;

use std::collections::{BTreeSet, HashSet};

use kube_proxy_rules::config::NodeConfig;
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
