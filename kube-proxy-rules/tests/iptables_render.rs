//! The iptables payload writer on synthetic clusters (the bench's
//! generator): large-cluster mode, partial renders, stale-chain deletion and
//! the injection backstop.

mod support;

use std::collections::{BTreeSet, HashSet};

use kube_proxy_rules::config::NodeConfig;
use kube_proxy_rules::iptables::{render, IptablesConfig, RenderPlan, TopLevelCache};
use kube_proxy_rules::model::endpoints::{key_of, EndpointInfo};
use support::synthetic_state;

fn cfg() -> IptablesConfig {
    let node =
        NodeConfig { hostname: "bench-node".into(), masquerade_mark: "0x4000".into(), ..Default::default() };
    IptablesConfig { node, ..Default::default() }
}

fn rules_of<'a>(payload: &'a str, chain_prefix: &str) -> Vec<&'a str> {
    payload.lines().filter(|l| l.starts_with(&format!("-A {chain_prefix}"))).collect()
}

#[test]
fn large_cluster_mode_drops_endpoint_comments_above_1000_endpoints() {
    // 100 services x 10 endpoints = 1000: not large yet.
    let at =
        render(&synthetic_state(100, 10), &cfg(), &RenderPlan { full: true, ..Default::default() }).unwrap();
    assert!(!at.large_cluster_mode);
    assert!(rules_of(&at.payload, "KUBE-SEP-").iter().all(|r| r.contains("--comment bench/svc-")));
    assert!(rules_of(&at.payload, "KUBE-SVC-").iter().all(|r| r.contains("--comment")));
    // One more endpoint: SEP rules and SVC->SEP rules lose their comments,
    // the cluster IP rules keep theirs.
    let mut st = synthetic_state(100, 10);
    let sp = st.services[0].clone();
    let ep = EndpointInfo::new("10.127.0.1".parse().unwrap(), 8080, None);
    st.endpoints.get_mut(&key_of(&sp)).unwrap().push(ep);
    let big = render(&st, &cfg(), &RenderPlan { full: true, ..Default::default() }).unwrap();
    assert!(big.large_cluster_mode);
    assert!(rules_of(&big.payload, "KUBE-SEP-").iter().all(|r| !r.contains("--comment")));
    for r in rules_of(&big.payload, "KUBE-SVC-") {
        assert_eq!(r.contains("--comment"), r.contains("KUBE-MARK-MASQ"), "{r}");
    }
    assert!(big.payload.contains("-A KUBE-SERVICES -m comment --comment \"bench/svc-0:http cluster IP\""));
    let sep = big.payload.lines().find(|l| l.contains("DNAT --to-destination 10.127.0.1:8080")).unwrap();
    assert!(
        sep.starts_with("-A KUBE-SEP-")
            && sep.ends_with("-m tcp -p tcp -j DNAT --to-destination 10.127.0.1:8080")
    );
    // 11 endpoints: probabilities 1/11 ... 1/2, formatted %0.10f.
    assert!(big.payload.contains("--probability 0.0909090909 "));
}

#[test]
fn partial_render_writes_only_changed_services_chains() {
    let st = synthetic_state(50, 3);
    let full = render(&st, &cfg(), &RenderPlan { full: true, ..Default::default() }).unwrap();
    let changed: HashSet<(String, String)> = [("bench".to_string(), "svc-7".to_string())].into();
    let part =
        render(&st, &cfg(), &RenderPlan { full: false, changed: Some(&changed), ..Default::default() })
            .unwrap();
    let sp = &st.services.iter().find(|s| s.name == "svc-7").unwrap().chains;
    // Its SVC chain and 3 SEP chains are written, nobody else's.
    assert_eq!(part.written_service_chains, 4);
    assert!(part.payload.contains(&format!("\n:{} - [0:0]\n", sp.svc)));
    assert_eq!(part.payload.lines().filter(|l| l.starts_with(":KUBE-SEP-")).count(), 3);
    // The top-level chains still list every service.
    assert_eq!(
        rules_of(&part.payload, "KUBE-SERVICES").len(),
        rules_of(&full.payload, "KUBE-SERVICES").len()
    );
    // Given the chains the table has, both find the same stale ones; the
    // skipped rules are counted.
    let mut existing: BTreeSet<String> = full
        .payload
        .lines()
        .filter_map(|l| l.strip_prefix(':')?.split(' ').next())
        .map(String::from)
        .collect();
    existing.insert("KUBE-SEP-STALE0000000000".into());
    existing.insert("KUBE-SVC-STALE0000000000".into());
    let with = |full: bool, changed: Option<&HashSet<(String, String)>>| {
        let plan = RenderPlan { full, changed, existing_nat_chains: Some(&existing), ..Default::default() };
        render(&st, &cfg(), &plan).unwrap().deleted_chains
    };
    assert_eq!(with(true, None), ["KUBE-SEP-STALE0000000000", "KUBE-SVC-STALE0000000000"]);
    assert_eq!(with(false, Some(&changed)), with(true, None));
    assert_eq!(part.nat_rules + part.skipped_nat_rules, full.nat_rules);
}

#[test]
fn stale_chains_are_flushed_then_deleted() {
    let st = synthetic_state(2, 1);
    let existing: BTreeSet<String> =
        ["KUBE-SEP-GONE", "KUBE-SVC-GONE", "KUBE-SERVICES", "CALI-FORWARD", "KUBE-PROXY-CANARY"]
            .iter()
            .map(|s| s.to_string())
            .collect();
    let r = render(
        &st,
        &cfg(),
        &RenderPlan { full: true, existing_nat_chains: Some(&existing), ..Default::default() },
    )
    .unwrap();
    assert_eq!(r.deleted_chains, ["KUBE-SEP-GONE", "KUBE-SVC-GONE"]);
    assert!(r.payload.contains(":KUBE-SEP-GONE - [0:0]\n") && r.payload.contains("\n-X KUBE-SEP-GONE\n"));
    assert!(!r.payload.contains("CALI-FORWARD") && !r.payload.contains("-X KUBE-PROXY-CANARY"));
}

/// The backstop: a name that got past input validation (here: put into
/// the state directly) is refused, not written.
#[test]
fn the_writer_refuses_a_name_that_could_inject() {
    let mut st = synthetic_state(1, 1);
    st.services[0].name_string = "bench/x\" -j ACCEPT\n-A KUBE-SERVICES -j ACCEPT\n#".into();
    let e = render(&st, &cfg(), &RenderPlan { full: true, ..Default::default() }).unwrap_err();
    assert_eq!((e.what, e.bad), ("iptables comment", '"'));
    // Any word, not only the service port name: a line end never gets through.
    let mut st = synthetic_state(1, 1);
    st.services[0].chains.svc = "KUBE-SVC-X\n-A INPUT -j ACCEPT".into();
    let e = render(&st, &cfg(), &RenderPlan { full: true, ..Default::default() }).unwrap_err();
    assert_eq!(e.bad, '\n');
}

/// With the per-service top-level cache, a partial render whose changed
/// services keep their top-level rules reads only those services, and
/// writes exactly what the render over every service writes; when a
/// change reaches the top-level chains (here: the service loses its
/// endpoints, so KUBE-SERVICES rejects it), every service is read again.
#[test]
fn a_partial_render_from_the_cache_equals_one_over_every_service() {
    let st = synthetic_state(50, 3);
    let full = render(&st, &cfg(), &RenderPlan { full: true, ..Default::default() }).unwrap();
    let mut cache = TopLevelCache::default();
    cache.commit(full.top_cache.clone());
    let (removed, changed): (HashSet<_>, HashSet<_>) =
        (HashSet::new(), [("bench".to_string(), "svc-7".to_string())].into());
    let plan = |cached| RenderPlan {
        full: false,
        changed: Some(&changed),
        applied_top_level: Some(&full.top_level_hashes),
        removed: Some(&removed),
        top_cache: cached,
        ..Default::default()
    };
    let mut next = st.clone();
    let sp = next.services.iter().find(|s| s.name == "svc-7").unwrap().clone();
    let eps = next.endpoints.get_mut(&key_of(&sp)).unwrap();
    eps[0] = EndpointInfo::new("10.127.0.1".parse().unwrap(), 8080, None);
    let fast = render(&next, &cfg(), &plan(Some(&cache))).unwrap();
    let slow = render(&next, &cfg(), &plan(None)).unwrap();
    assert!(fast.changed_only && !slow.changed_only);
    assert_eq!(fast.payload, slow.payload);
    assert!(fast.payload.contains("10.127.0.1:8080") && !fast.payload.contains("-A KUBE-SERVICES"));
    assert_eq!(
        (&fast.written_service_chains, fast.nat_rules, fast.skipped_nat_rules, &fast.top_level_hashes),
        (&slow.written_service_chains, slow.nat_rules, slow.skipped_nat_rules, &slow.top_level_hashes)
    );
    // Endpoints gone: KUBE-SERVICES changes; the render reads every service.
    next.endpoints.remove(&key_of(&sp));
    let fast = render(&next, &cfg(), &plan(Some(&cache))).unwrap();
    let slow = render(&next, &cfg(), &plan(None)).unwrap();
    assert!(!fast.changed_only);
    assert_eq!(fast.payload, slow.payload);
    assert!(fast.payload.contains("bench/svc-7:http has no endpoints"));
}

/// The fingerprints the backend filters a listing with know every
/// per-service chain a full render writes, and not a stale one: filtering
/// never hides a chain the render would delete, nor keeps a used one.
#[test]
fn used_chain_fingerprints_know_every_chain_a_full_render_writes() {
    use kube_proxy_rules::iptables::UsedChains;
    let st = synthetic_state(20, 3);
    let full = render(&st, &cfg(), &RenderPlan { full: true, ..Default::default() }).unwrap();
    let used = UsedChains::of(&st, &cfg());
    let written: Vec<&str> = full
        .payload
        .lines()
        .filter_map(|l| l.strip_prefix(':')?.split(' ').next())
        .filter(|c| kube_proxy_rules::names::is_service_chain(c))
        .collect();
    assert_eq!(written.len(), full.written_service_chains);
    assert!(written.iter().all(|c| used.contains(c)));
    assert!(!used.contains("KUBE-SEP-STALE0000000000"));
}
