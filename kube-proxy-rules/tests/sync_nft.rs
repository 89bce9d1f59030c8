//! nftables syncs against the real kernel, in namespaces the tests create
//! (never the root namespace's ruleset).
//!
//! kube-proxy's TestSyncProxyRulesRepeated (pkg/proxy/nftables/proxier_test.go)
//! step by step: after every sync, (1) the table as the transactions left it
//! (applied to the in-memory model) equals kube-proxy's expectation, (2) the
//! transaction has as many operations as kube-proxy's, and (3) the kernel's
//! table, `nft list`ed and normalised, equals the table a fresh namespace gets
//! from one full sync of the same state (stale chains waiting for deletion
//! aside). Then: the startup case (TestSyncProxyRulesStartup's final state,
//! with leftovers of an earlier run cleaned up), and a failed incremental
//! transaction followed by a full sync.

use std::collections::BTreeSet;
use std::time::Duration;

use kube_proxy_rules::config::NodeConfig;
use kube_proxy_rules::family::IpFamily;
use kube_proxy_rules::inputs::build_state;
use kube_proxy_rules::k8s::Objects;
use kube_proxy_rules::model::{FullSyncReason, ProxyState};
use kube_proxy_rules::nftables::dump::{normalize_listing, resolve_endpoint_slots, sort_dump, Table};
use kube_proxy_rules::nftables::netlink::ElementBatch;
use kube_proxy_rules::nftables::render::NftLayout;
use kube_proxy_rules::nftables::NftablesConfig;
use kube_proxy_rules::nftables::{Nft, NftSyncReport, NftablesBackend};
use kube_proxy_rules::syncer::Syncer;
use testbed::Netns;

const BASE: &str = include_str!("golden-nft/base-rules.txt");

fn state(yaml: &str) -> ProxyState {
    let mut o = Objects::default();
    let mut errors = Vec::new();
    o.add_text(yaml, "test", &mut errors);
    assert!(errors.is_empty(), "{errors:?}");
    let loaded = build_state(&o, &[], &["10.96.0.0/12".parse().unwrap()]);
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    loaded.state
}

fn service(ns: &str, name: &str, ip: &str, port_name: &str, port: u16) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\n\
         spec: {{clusterIP: {ip}, ports: [{{name: {port_name}, port: {port}, protocol: TCP}}]}}\n---\n"
    )
}

fn slice(ns: &str, name: &str, ips: &[&str], port_name: &str, port: u16) -> String {
    let eps: Vec<String> = ips.iter().map(|ip| format!("{{addresses: [{ip}]}}")).collect();
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: {name}-1, namespace: {ns}, labels: {{kubernetes.io/service-name: {name}}}}}\n\
         addressType: IPv4\nendpoints: [{}]\nports: [{{name: {port_name}, port: {port}, protocol: TCP}}]\n---\n",
        eps.join(", ")
    )
}

/// NewFakeProxier's settings, in the endpoint-maps layout.
fn maps_config() -> NftablesConfig {
    NftablesConfig { layout: NftLayout::EndpointMaps, ..config() }
}

/// NewFakeProxier's settings.
fn config() -> NftablesConfig {
    NftablesConfig {
        node: NodeConfig {
            hostname: "test-node".into(),
            node_ips: vec!["192.168.0.2".parse().unwrap()],
            cluster_cidr: Some("10.0.0.0/8".parse().unwrap()),
            masquerade_mark: "0x4000".into(),
            nodeport_addresses: vec!["192.168.0.2/32".parse().unwrap()],
            local_addresses: vec!["192.168.0.2".parse().unwrap()],
            ..Default::default()
        },
        service_cidrs: vec!["172.30.0.0/16".parse().unwrap()],
        layout: NftLayout::KubeProxy,
    }
}

/// The kernel's table, normalised (endpoint slots resolved), without the
/// (empty) chains in `skip`.
fn kernel_table(nft: &Nft, skip: &BTreeSet<String>) -> String {
    let listing = resolve_endpoint_slots(&normalize_listing(&nft.list_table().unwrap()));
    let mut out = String::new();
    let mut skipping = false;
    for line in listing.lines() {
        if let Some(name) = line.strip_prefix("chain ") {
            skipping = skip.contains(name);
        } else if !line.starts_with("  ") {
            skipping = false;
        }
        if !skipping {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// The table a fresh namespace gets from one full sync of `st`.
fn fresh_table(st: &ProxyState, cfg: &NftablesConfig) -> String {
    let fresh = Netns::new("knf");
    let nft = Nft::in_netns(fresh.name());
    Syncer::new(NftablesBackend::new(nft.clone(), cfg.clone())).sync(st).unwrap();
    kernel_table(&nft, &BTreeSet::new())
}

/// One step of the repeated-sync test.
struct Steps {
    syncer: Syncer<NftablesBackend>,
    nft: Nft,
    model: Table,
}

impl Steps {
    /// Sync `yaml`, mirror the transactions in the model, and check the
    /// three things against upstream's `expected` and `ops`.
    fn step(&mut self, name: &str, yaml: &str, expected: &str, ops: Option<usize>) -> NftSyncReport {
        let st = state(yaml);
        let r = self.syncer.sync(&st).unwrap_or_else(|e| panic!("step {name:?}: {e}"));
        if !r.outcome.deleted_stale_chains.is_empty() {
            let tx: String = r
                .outcome
                .deleted_stale_chains
                .iter()
                .map(|c| format!("delete chain ip kube-proxy {c}\n"))
                .collect();
            self.model.apply(&tx).unwrap_or_else(|e| panic!("step {name:?}: stale deletion: {e}"));
        }
        self.model.apply(&r.outcome.rendered.transaction).unwrap_or_else(|e| panic!("step {name:?}: {e}"));
        let want = sort_dump(&format!("{BASE}\n{expected}"));
        assert_eq!(sort_dump(&self.model.dump()), want, "step {name:?}: table (model)");
        if let Some(n) = ops {
            assert_eq!(
                r.outcome.rendered.operations, n,
                "step {name:?}: operations in\n{}",
                r.outcome.rendered.transaction
            );
        }
        let stale: BTreeSet<String> = self.syncer.backend.stale_chains().map(String::from).collect();
        assert_eq!(
            kernel_table(&self.nft, &stale),
            fresh_table(&st, &config()),
            "step {name:?}: kernel vs a fresh full sync"
        );
        r
    }
}

/// Every operation of an incremental transaction is about one service.
fn touches_only(r: &NftSyncReport, name: &str, cluster_ip: &str) {
    assert!(!r.is_full());
    for line in r.outcome.rendered.transaction.lines() {
        assert!(line.contains(name) || line.contains(cluster_ip), "not about {name}: {line}");
    }
}

fn chain(name: &str, rules: &[&str]) -> String {
    let mut s = format!("add chain ip kube-proxy {name}\n");
    for r in rules {
        s.push_str(&format!("add rule ip kube-proxy {name} {r}\n"));
    }
    s
}

/// svc<n>'s service chain and one endpoint chain per (hash, ip) of upstream's expectations.
fn svc_chains(svc: &str, cip: &str, eps: &[(&str, &str)], port: u16) -> String {
    let mask = format!("ip daddr {cip} ip saddr != 10.0.0.0/8 jump mark-for-masquerade");
    let vmap: Vec<String> = eps
        .iter()
        .enumerate()
        .map(|(i, (h, ip))| {
            format!("{i} : goto endpoint-{h}-{}__{ip}/{port}", svc.split_once('-').unwrap().1)
        })
        .collect();
    let lb = format!("numgen random mod {} vmap {{ {} }}", eps.len(), vmap.join(" , "));
    let mut s = chain(&format!("service-{svc}"), &[&mask, &lb]);
    for (h, ip) in eps {
        let ep = format!("endpoint-{h}-{}__{ip}/{port}", svc.split_once('-').unwrap().1);
        s += &chain(
            &ep,
            &[
                &format!("ip saddr {ip} jump mark-for-masquerade"),
                &format!("meta l4proto tcp dnat to {ip}:{port}"),
            ],
        );
    }
    s
}

const SVC1: &str = "ULMVA6XW-ns1/svc1/tcp/p80";
const SVC2: &str = "MHHHYRWA-ns2/svc2/tcp/p8080";
const SVC3: &str = "4AT6LBPK-ns3/svc3/tcp/p80";
const SVC4: &str = "LAUZTJTB-ns4/svc4/tcp/p80";

fn elements(lines: &[&str]) -> String {
    lines.iter().map(|l| format!("add element ip kube-proxy {l}\n")).collect()
}

#[test]
fn repeated_syncs_match_kube_proxy_and_a_fresh_full_sync() {
    let ns = Netns::new("knr");
    let nft = Nft::in_netns(ns.name());
    let mut s =
        Steps { syncer: Syncer::new(NftablesBackend::new(nft.clone(), config())), nft, model: Table::new() };
    // Only the test ages stale chains (upstream's ageStaleChains).
    s.syncer.backend.stale_chain_delay = Duration::from_secs(3600);
    let age = |s: &mut Steps| s.syncer.backend.age_stale_chains(Duration::from_secs(7200));

    let svc1 =
        service("ns1", "svc1", "172.30.0.41", "p80", 80) + &slice("ns1", "svc1", &["10.0.1.1"], "p80", 80);
    let svc2 = service("ns2", "svc2", "172.30.0.42", "p8080", 8080)
        + &slice("ns2", "svc2", &["10.0.2.1"], "p8080", 8080);
    let svc3 = service("ns3", "svc3", "172.30.0.43", "p80", 80);
    let svc4 = service("ns4", "svc4", "172.30.0.44", "p80", 80);
    let c1 = svc_chains(SVC1, "172.30.0.41", &[("5TPGNJF2", "10.0.1.1")], 80);
    let c2 = svc_chains(SVC2, "172.30.0.42", &[("7RVP4LUQ", "10.0.2.1")], 8080);
    let c3 = svc_chains(SVC3, "172.30.0.43", &[("2OCDJSZQ", "10.0.3.1")], 80);
    let c4 = svc_chains(SVC4, "172.30.0.44", &[("WAHRBT2B", "10.0.4.1")], 80);
    let e1 = [
        "cluster-ips { 172.30.0.41 }",
        "service-ips { 172.30.0.41 . tcp . 80 : goto service-ULMVA6XW-ns1/svc1/tcp/p80 }",
    ];
    let e2 = [
        "cluster-ips { 172.30.0.42 }",
        "service-ips { 172.30.0.42 . tcp . 8080 : goto service-MHHHYRWA-ns2/svc2/tcp/p8080 }",
    ];
    let e3 = [
        "cluster-ips { 172.30.0.43 }",
        "service-ips { 172.30.0.43 . tcp . 80 : goto service-4AT6LBPK-ns3/svc3/tcp/p80 }",
    ];
    let e4 = [
        "cluster-ips { 172.30.0.44 }",
        "service-ips { 172.30.0.44 . tcp . 80 : goto service-LAUZTJTB-ns4/svc4/tcp/p80 }",
    ];

    let r = s.step("initial", &(svc1.clone() + &svc2), &(elements(&e1) + &elements(&e2) + &c1 + &c2), None);
    assert!(r.is_full() && r.reason() == "first sync");
    assert_eq!(r.full, Some(FullSyncReason::FirstSync));

    let s3 = slice("ns3", "svc3", &["10.0.3.1"], "p80", 80);
    let want = elements(&e1) + &elements(&e2) + &elements(&e3) + &c1 + &c2 + &c3;
    let r = s.step("add svc3", &(svc1.clone() + &svc2 + &svc3 + &s3), &want, Some(10));
    assert!(!r.is_full());
    touches_only(&r, "ns3/svc3", "172.30.0.43");

    // Delete svc2 (its slice stays): its chains are flushed, not deleted yet.
    let empty2 = chain(&format!("service-{SVC2}"), &[])
        + &chain("endpoint-7RVP4LUQ-ns2/svc2/tcp/p8080__10.0.2.1/8080", &[]);
    let base = svc1.clone() + &svc3 + &s3 + &slice("ns2", "svc2", &["10.0.2.1"], "p8080", 8080);
    let want = elements(&e1) + &elements(&e3) + &c1 + &c3 + &empty2;
    s.step("delete svc2", &base, &want, Some(4));

    // Time passes: the stale chains go, in a transaction of their own.
    age(&mut s);
    let want = elements(&e1) + &elements(&e3) + &c1 + &c3;
    let r = s.step("stale chains deleted", &base, &want, Some(0));
    assert_eq!(r.outcome.deleted_stale_chains.len(), 2);

    // Add svc4 without endpoints, then its endpoints.
    let no_ep4 =
        "no-endpoint-services { 172.30.0.44 . tcp . 80 comment \"ns4/svc4:p80\" : goto reject-chain }";
    let want = elements(&e1) + &elements(&e3) + &elements(&[e4[0], no_ep4]) + &c1 + &c3;
    s.step("add svc4", &(base.clone() + &svc4), &want, Some(2));
    let s4 = slice("ns4", "svc4", &["10.0.4.1"], "p80", 80);
    let with4 = base.clone() + &svc4 + &s4;
    let want = elements(&e1) + &elements(&e3) + &elements(&e4) + &c1 + &c3 + &c4;
    s.step("add svc4 endpoints", &with4, &want, Some(10));

    // Change svc3's endpoint: the old endpoint chain is flushed, not deleted.
    let s3b = slice("ns3", "svc3", &["10.0.3.2"], "p80", 80);
    let cur = |s3: &str| {
        svc1.clone() + &svc3 + s3 + &slice("ns2", "svc2", &["10.0.2.1"], "p8080", 8080) + &svc4 + &s4
    };
    let c3b = svc_chains(SVC3, "172.30.0.43", &[("SWWHDC7X", "10.0.3.2")], 80);
    let old31 = chain("endpoint-2OCDJSZQ-ns3/svc3/tcp/p80__10.0.3.1/80", &[]);
    let all_el = elements(&e1) + &elements(&e3) + &elements(&e4);
    s.step("change svc3 endpoint", &cur(&s3b), &(all_el.clone() + &c1 + &c3b + &old31 + &c4), Some(9));

    // (Aged.) Add an endpoint to svc3: the old chain is deleted.
    age(&mut s);
    let s3c = slice("ns3", "svc3", &["10.0.3.2", "10.0.3.3"], "p80", 80);
    let c3c = svc_chains(SVC3, "172.30.0.43", &[("SWWHDC7X", "10.0.3.2"), ("TQ2QKHCZ", "10.0.3.3")], 80);
    let with_two = all_el.clone() + &c1 + &c3c + &c4;
    let r = s.step("add svc3 endpoint", &cur(&s3c), &with_two, Some(12));
    touches_only(&r, "ns3/svc3", "172.30.0.43");

    // Empty svc3's endpoints: reject, its 3 chains flushed and stale.
    let s3e = slice("ns3", "svc3", &[], "p80", 80);
    let no_ep3 =
        "no-endpoint-services { 172.30.0.43 . tcp . 80 comment \"ns3/svc3:p80\" : goto reject-chain }";
    let empty3 = chain(&format!("service-{SVC3}"), &[])
        + &chain("endpoint-SWWHDC7X-ns3/svc3/tcp/p80__10.0.3.2/80", &[])
        + &chain("endpoint-TQ2QKHCZ-ns3/svc3/tcp/p80__10.0.3.3/80", &[]);
    let want = elements(&e1) + &elements(&[e3[0], no_ep3]) + &elements(&e4) + &c1 + &empty3 + &c4;
    s.step("empty svc3", &cur(&s3e), &want, Some(5));
    let stale: BTreeSet<&str> = s.syncer.backend.stale_chains().collect();
    assert_eq!(
        stale,
        [
            "endpoint-SWWHDC7X-ns3/svc3/tcp/p80__10.0.3.2/80",
            "endpoint-TQ2QKHCZ-ns3/svc3/tcp/p80__10.0.3.3/80",
            "service-4AT6LBPK-ns3/svc3/tcp/p80",
        ]
        .into()
    );

    // Restore at once: the chains come back and are no longer stale.
    s.step("restore svc3", &cur(&s3c), &with_two, Some(14));
    assert_eq!(s.syncer.backend.stale_chains().count(), 0);

    // Empty, let the chains age, restore: deleted first, then re-created.
    s.step("empty svc3 again", &cur(&s3e), &want, Some(5));
    age(&mut s);
    let r = s.step("restore after ageing", &cur(&s3c), &with_two, Some(14));
    assert_eq!(r.outcome.deleted_stale_chains.len(), 3);

    // Nothing changed: no operations at all.
    let r = s.step("no change", &cur(&s3c), &with_two, Some(0));
    assert_eq!(r.changed_services, 0);
}

/// TestSyncProxyRulesStartup: the table already holds part of the state (a
/// restart); the first sync is a full one and leaves exactly upstream's
/// expected table. Unlike upstream (which skips unchanged chains and elements
/// on that first sync) it rewrites everything; a chain of a service that no
/// longer exists, left by the earlier run, is found by listing the table,
/// flushed, and deleted by a later sync.
#[test]
fn startup_over_an_existing_table() {
    let ns = Netns::new("kns");
    let nft = Nft::in_netns(ns.name());
    let c1 = svc_chains(SVC1, "172.30.0.41", &[("5TPGNJF2", "10.0.1.1")], 80);
    let c2 = svc_chains(SVC2, "172.30.0.42", &[("7RVP4LUQ", "10.0.2.1")], 8080);
    let leftover = chain("service-AAAAAAAA-old/gone/tcp/p80", &["ip daddr 172.30.0.99 drop"]);
    let before = format!(
        "{BASE}\n{c1}{c2}{leftover}add element ip kube-proxy cluster-ips {{ 172.30.0.41 }}\n\
         add element ip kube-proxy cluster-ips {{ 172.30.0.42 }}\n\
         add element ip kube-proxy service-ips {{ 172.30.0.41 . tcp . 80 : goto service-{SVC1} }}\n\
         add element ip kube-proxy service-ips {{ 172.30.0.42 . tcp . 8080 : goto service-{SVC2} }}\n"
    );
    // Chains first, then what refers to them.
    let (chains, rest): (Vec<&str>, Vec<&str>) = before.lines().partition(|l| l.starts_with("add chain"));
    let mut model = Table::new();
    model.apply(BASE).unwrap();
    model.apply(&(chains.join("\n") + "\n" + &rest.join("\n"))).unwrap();
    nft.apply(&model.dump()).unwrap();

    let yaml = service("ns1", "svc1", "172.30.0.41", "p80", 80)
        + &slice("ns1", "svc1", &["10.0.1.1", "10.0.1.2"], "p80", 80)
        + &service("ns2", "svc2", "172.30.0.42", "p8080", 8080)
        + &slice("ns2", "svc2", &["10.0.2.1"], "p8080", 8080)
        + &service("ns3", "svc3", "172.30.0.43", "p80", 80);
    let st = state(&yaml);
    let mut syncer = Syncer::new(NftablesBackend::new(nft.clone(), config()));
    let r = syncer.sync(&st).unwrap();
    assert!(r.is_full());
    assert_eq!(r.outcome.rendered.stale_chains, ["service-AAAAAAAA-old/gone/tcp/p80"]);
    model.apply(&r.outcome.rendered.transaction).unwrap();
    let c1b = svc_chains(SVC1, "172.30.0.41", &[("5TPGNJF2", "10.0.1.1"), ("ZCZBVNAZ", "10.0.1.2")], 80);
    let want = format!(
        "{BASE}\n{c1b}{c2}add element ip kube-proxy cluster-ips {{ 172.30.0.41 }}\n\
         add element ip kube-proxy cluster-ips {{ 172.30.0.42 }}\nadd element ip kube-proxy cluster-ips {{ 172.30.0.43 }}\n\
         add element ip kube-proxy service-ips {{ 172.30.0.41 . tcp . 80 : goto service-{SVC1} }}\n\
         add element ip kube-proxy service-ips {{ 172.30.0.42 . tcp . 8080 : goto service-{SVC2} }}\n\
         add element ip kube-proxy no-endpoint-services {{ 172.30.0.43 . tcp . 80 comment \"ns3/svc3:p80\" : goto reject-chain }}\n\
         add chain ip kube-proxy service-AAAAAAAA-old/gone/tcp/p80\n"
    );
    assert_eq!(sort_dump(&model.dump()), sort_dump(&want));
    let stale: BTreeSet<String> = syncer.backend.stale_chains().map(String::from).collect();
    assert_eq!(kernel_table(&nft, &stale), fresh_table(&st, &config()));

    syncer.backend.age_stale_chains(Duration::from_secs(10));
    let r = syncer.sync(&st).unwrap();
    assert_eq!(r.outcome.deleted_stale_chains, ["service-AAAAAAAA-old/gone/tcp/p80"]);
    assert!(!nft.chains().unwrap().contains("service-AAAAAAAA-old/gone/tcp/p80"));
    assert_eq!(kernel_table(&nft, &BTreeSet::new()), fresh_table(&st, &config()));
}

/// A failed incremental transaction changes nothing, names the line nft
/// blamed, and the next sync is a full one that repairs the table.
#[test]
fn a_failed_incremental_transaction_falls_back_to_a_full_sync() {
    let ns = Netns::new("knx");
    let nft = Nft::in_netns(ns.name());
    let mut syncer = Syncer::new(NftablesBackend::new(nft.clone(), config()));
    let svc1 =
        service("ns1", "svc1", "172.30.0.41", "p80", 80) + &slice("ns1", "svc1", &["10.0.1.1"], "p80", 80);
    syncer.sync(&state(&svc1)).unwrap();
    // Someone removes one of our maps' users and the map (behind our back).
    ns.exec(&["nft", "flush", "chain", "ip", "kube-proxy", "services"]);
    ns.exec(&["nft", "delete", "map", "ip", "kube-proxy", "service-ips"]);
    let two = svc1.clone()
        + &service("ns2", "svc2", "172.30.0.42", "p80", 80)
        + &slice("ns2", "svc2", &["10.0.2.1"], "p80", 80);
    let err = syncer.sync(&state(&two)).unwrap_err().to_string();
    assert!(err.contains("incremental nft transaction"), "{err}");
    assert!(err.contains("at line ") && err.contains("`add element ip kube-proxy service-ips {"), "{err}");
    assert!(
        !nft.chains().unwrap().iter().any(|c| c.contains("svc2")),
        "the failed transaction left svc2 chains"
    );
    assert!(syncer.needs_full_sync().is_some_and(
        |r| matches!(r, FullSyncReason::SyncFailed(_)) && r.to_string().contains("previous sync failed")
    ));
    let r = syncer.sync(&state(&two)).unwrap();
    assert!(r.is_full(), "{}", r.reason());
    assert_eq!(kernel_table(&nft, &BTreeSet::new()), fresh_table(&state(&two), &config()));
    // The table check sees an intact table now, and a deleted one.
    assert!(syncer.check_canary().unwrap().is_none());
    ns.exec(&["nft", "delete", "table", "ip", "kube-proxy"]);
    assert!(syncer.check_canary().unwrap().is_some());
    let r = syncer.sync(&state(&two)).unwrap();
    assert!(r.is_full() && r.reason().contains("gone or flushed"), "{}", r.reason());
    assert!(matches!(r.full, Some(FullSyncReason::CanaryGone(_))), "{:?}", r.full);
    assert_eq!(kernel_table(&nft, &BTreeSet::new()), fresh_table(&state(&two), &config()));
}

/// One sequence of states synced one after the other into one namespace:
/// after each sync (incremental after the first), the kernel's table equals
/// a fresh full sync of the same state (stale chains waiting for deletion
/// aside). Stale chains are aged after every second step, so both their
/// deletion and their waiting are covered. Returns the mismatches.
fn run_sequence(cfg: &NftablesConfig, name: &str, steps: &[&str]) -> Vec<String> {
    let ns = Netns::new("kns");
    let nft = Nft::in_netns(ns.name());
    let mut syncer = Syncer::new(NftablesBackend::new(nft.clone(), cfg.clone()));
    syncer.backend.stale_chain_delay = Duration::from_secs(3600);
    let mut problems = Vec::new();
    for (i, yaml) in steps.iter().enumerate() {
        let st = state(yaml);
        match syncer.sync(&st) {
            Ok(r) if i > 0 && r.is_full() => {
                problems.push(format!("{name} step {i}: full sync: {}", r.reason()))
            }
            Ok(_) => {}
            Err(e) => {
                problems.push(format!("{name} step {i}: {e}"));
                continue;
            }
        }
        let stale: BTreeSet<String> = syncer.backend.stale_chains().map(String::from).collect();
        let (got, want) = (kernel_table(&nft, &stale), fresh_table(&st, cfg));
        if got != want {
            let (g, w): (BTreeSet<&str>, BTreeSet<&str>) = (got.lines().collect(), want.lines().collect());
            problems.push(format!(
                "{name} step {i}: kernel differs from a fresh full sync\n  only here: {:#?}\n  only fresh: {:#?}",
                g.difference(&w).collect::<Vec<_>>(),
                w.difference(&g).collect::<Vec<_>>()
            ));
        }
        if i % 2 == 1 {
            syncer.backend.age_stale_chains(Duration::from_secs(7200));
        }
    }
    problems
}

/// svc1 in ns1 with `spec`, then `rest` (its slice, other objects).
fn svc1(spec: &str, rest: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: svc1, namespace: ns1}}\nspec: {spec}\n---\n{rest}"
    )
}

fn slice1(endpoints: &str, ports: &str) -> String {
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: svc1-1, namespace: ns1, labels: {{kubernetes.io/service-name: svc1}}}}\n\
         addressType: IPv4\nendpoints: [{endpoints}]\nports: [{ports}]\n---\n"
    )
}

const LOCAL_AND_REMOTE: &str = "{addresses: [10.180.0.1]}, {addresses: [10.180.0.2], nodeName: test-node}";
const P80: &str = "{name: p80, port: 80, protocol: TCP}";

/// Renaming the port of a NodePort service without endpoints changes only
/// the comments of its `no-endpoint-*` elements (key and verdict stay): the
/// incremental sync must re-create them, as a fresh full sync writes them.
#[test]
fn a_renamed_port_rewrites_the_element_comments() {
    let ns = Netns::new("knc");
    let nft = Nft::in_netns(ns.name());
    let mut syncer = Syncer::new(NftablesBackend::new(nft.clone(), config()));
    let spec = |port: &str| {
        format!(
            "{{type: NodePort, clusterIP: 172.30.0.41, \
             ports: [{{name: {port}, port: 80, protocol: TCP, nodePort: 30001}}]}}"
        )
    };
    syncer.sync(&state(&svc1(&spec("p80"), ""))).unwrap();
    let st = state(&svc1(&spec("p81"), ""));
    let r = syncer.sync(&st).unwrap();
    assert!(!r.is_full());
    let table = nft.list_table().unwrap();
    assert!(table.contains("comment \"ns1/svc1:p81\"") && !table.contains("p80"), "{table}");
    assert_eq!(kernel_table(&nft, &BTreeSet::new()), fresh_table(&st, &config()));
    // Element count unchanged: each element deleted and added in one transaction.
    assert_eq!(r.outcome.rendered.elements_added, r.outcome.rendered.elements_deleted);
    assert_eq!(r.outcome.rendered.elements_added, 2, "{}", r.outcome.rendered.transaction);
}

/// Sequences of changes to one service (type, traffic policies, affinity,
/// port renames, firewall, endpoints on and off the node, terminating
/// endpoints, ports added and removed, externalIPs moving between services),
/// each compared with a fresh full sync after every step.
#[test]
fn incremental_sequences_match_a_fresh_full_sync() {
    incremental_sequences(&config());
}

/// The same sequences in the endpoint-maps layout, plus what is its own:
/// endpoint counts that grow and shrink (slot ranges reused, moved and
/// freed) and an endpoint shared by two services (its hairpin element stays
/// until neither wants it). The tables are compared with their slots
/// resolved to the endpoints they hold ([`resolve_endpoint_slots`]).
#[test]
fn incremental_sequences_match_a_fresh_full_sync_endpoint_maps() {
    incremental_sequences(&maps_config());
    let np_spec = "{type: NodePort, clusterIP: 172.30.0.41, ports: [{name: p80, port: 80, protocol: TCP, nodePort: 30001}]}";
    let with = |ips: &[&str]| {
        let eps: Vec<String> = ips.iter().map(|ip| format!("{{addresses: [{ip}]}}")).collect();
        svc1(np_spec, &slice1(&eps.join(", "), P80))
    };
    let (one, three, two) = (
        with(&["10.180.0.1"]),
        with(&["10.180.0.1", "10.180.0.2", "10.180.0.3"]),
        with(&["10.180.0.4", "10.180.0.2"]),
    );
    let other = |ip: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: svc2, namespace: ns2}}\n\
             spec: {{clusterIP: 172.30.0.42, ports: [{{name: p80, port: 80, protocol: TCP}}]}}\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: svc2-1, namespace: ns2, labels: {{kubernetes.io/service-name: svc2}}}}\n\
             addressType: IPv4\nendpoints: [{{addresses: [{ip}]}}]\nports: [{{name: p80, port: 80, protocol: TCP}}]\n---\n"
        )
    };
    let shared = one.clone() + &other("10.180.0.1");
    let apart = one.clone() + &other("10.180.0.9");
    let only_other = other("10.180.0.1");
    let three_apart = three.clone() + &other("10.180.0.9");
    let sequences: Vec<(&str, Vec<&str>)> = vec![
        ("scale", vec![&one, &three, &two, &one, &two, &three, &one]),
        ("shared-endpoint", vec![&shared, &apart, &shared, &only_other, &shared, &one]),
        ("scale-with-neighbour", vec![&apart, &three_apart, &apart, &only_other]),
    ];
    let cfg = maps_config();
    let problems: Vec<String> =
        sequences.iter().flat_map(|(name, steps)| run_sequence(&cfg, name, steps)).collect();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

fn incremental_sequences(cfg: &NftablesConfig) {
    let eps = slice1(LOCAL_AND_REMOTE, P80);
    let eps_remote = slice1("{addresses: [10.180.0.1]}", P80);
    let np_spec = "{type: NodePort, clusterIP: 172.30.0.41, ports: [{name: p80, port: 80, protocol: TCP, nodePort: 30001}]}";
    let np = svc1(np_spec, &eps);
    let cip = svc1(
        "{type: ClusterIP, clusterIP: 172.30.0.41, ports: [{name: p80, port: 80, protocol: TCP}]}",
        &eps,
    );
    let np_local = svc1(
        "{type: NodePort, externalTrafficPolicy: Local, clusterIP: 172.30.0.41, \
         ports: [{name: p80, port: 80, protocol: TCP, nodePort: 30001}]}",
        &eps,
    );
    let aff_spec = "{type: NodePort, sessionAffinity: ClientIP, clusterIP: 172.30.0.41, \
                    ports: [{name: p80, port: 80, protocol: TCP, nodePort: 30001}]}";
    let aff = svc1(aff_spec, &eps);
    let aff_one = svc1(aff_spec, &eps_remote);
    let aff_t = svc1(
        "{type: NodePort, sessionAffinity: ClientIP, sessionAffinityConfig: {clientIP: {timeoutSeconds: 100}}, \
         clusterIP: 172.30.0.41, ports: [{name: p80, port: 80, protocol: TCP, nodePort: 30001}]}",
        &eps,
    );
    let renamed = svc1(
        "{type: NodePort, clusterIP: 172.30.0.41, ports: [{name: p81, port: 80, protocol: TCP, nodePort: 30001}]}",
        &slice1(LOCAL_AND_REMOTE, "{name: p81, port: 80, protocol: TCP}"),
    );
    let noeps_p80 = svc1(np_spec, "");
    let noeps_p81 = svc1(&np_spec.replace("p80", "p81"), "");
    let lb_status = "\nstatus: {loadBalancer: {ingress: [{ip: 1.2.3.4}]}}";
    let lb_fw = svc1(
        &format!(
            "{{type: LoadBalancer, clusterIP: 172.30.0.41, loadBalancerSourceRanges: [203.0.113.0/25], \
             ports: [{{name: p80, port: 80, protocol: TCP, nodePort: 30001}}]}}{lb_status}"
        ),
        &eps,
    );
    let lb = svc1(
        &format!(
            "{{type: LoadBalancer, clusterIP: 172.30.0.41, \
             ports: [{{name: p80, port: 80, protocol: TCP, nodePort: 30001}}]}}{lb_status}"
        ),
        &eps,
    );
    let itp = svc1(
        "{type: NodePort, internalTrafficPolicy: Local, clusterIP: 172.30.0.41, \
         ports: [{name: p80, port: 80, protocol: TCP, nodePort: 30001}]}",
        &eps,
    );
    let lbl_spec = format!(
        "{{type: LoadBalancer, externalTrafficPolicy: Local, externalIPs: [192.168.99.22], \
         clusterIP: 172.30.0.41, ports: [{{name: p80, port: 80, protocol: TCP, nodePort: 30001}}]}}{lb_status}"
    );
    let lbl_remote = svc1(&lbl_spec, &eps_remote);
    let lbl_local = svc1(&lbl_spec, &eps);
    let two_ports = svc1(
        "{type: NodePort, clusterIP: 172.30.0.41, ports: [{name: p80, port: 80, protocol: TCP, nodePort: 30001}, \
         {name: p81, port: 81, protocol: UDP, nodePort: 30002}]}",
        &slice1("{addresses: [10.180.0.1]}", "{name: p80, port: 80, protocol: TCP}, {name: p81, port: 81, protocol: UDP}"),
    );
    let term = svc1(
        "{type: NodePort, externalTrafficPolicy: Local, clusterIP: 172.30.0.41, \
         ports: [{name: p80, port: 80, protocol: TCP, nodePort: 30001}]}",
        &slice1(
            "{addresses: [10.180.0.1]}, {addresses: [10.180.0.2], nodeName: test-node, \
             conditions: {ready: false, serving: true, terminating: true}}",
            P80,
        ),
    );
    let svc2 = |eip: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: svc2, namespace: ns2}}\n\
             spec: {{clusterIP: 172.30.0.42, externalIPs: [{eip}], ports: [{{name: p80, port: 80, protocol: TCP}}]}}\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: svc2-1, namespace: ns2, labels: {{kubernetes.io/service-name: svc2}}}}\n\
             addressType: IPv4\nendpoints: [{{addresses: [10.180.0.9]}}]\nports: [{{name: p80, port: 80, protocol: TCP}}]\n---\n"
        )
    };
    let s1x = svc1(
        "{clusterIP: 172.30.0.41, externalIPs: [192.168.99.22], ports: [{name: p80, port: 80, protocol: TCP}]}",
        &eps,
    );
    let swap_a = s1x.clone() + &svc2("192.168.99.50");
    let swap_b = cip.clone() + &svc2("192.168.99.22");
    let both = s1x.clone() + &svc2("192.168.99.22");

    let sequences: Vec<(&str, Vec<&str>)> = vec![
        ("type", vec![&np, &cip, &np, &cip]),
        ("etp", vec![&np, &np_local, &np, &np_local, &cip]),
        ("affinity", vec![&np, &aff, &np, &aff, &aff_t, &aff, &cip]),
        ("rename", vec![&np, &renamed, &np, &renamed]),
        ("rename-no-endpoints", vec![&noeps_p80, &noeps_p81, &noeps_p80]),
        ("firewall", vec![&lb_fw, &lb, &lb_fw, &np, &lb_fw, &cip]),
        ("itp", vec![&np, &itp, &np_local, &itp, &noeps_p80, &itp]),
        ("delete", vec![&np, "", &aff, "", &lb_fw]),
        ("etp-local-endpoints", vec![&lbl_remote, &lbl_local, &lbl_remote, &lbl_local, &np]),
        ("affinity-endpoints", vec![&aff, &aff_one, &aff, &aff_one, &np]),
        ("ports", vec![&two_ports, &np, &two_ports, &cip, &two_ports]),
        ("terminating", vec![&np_local, &term, &np_local, &term]),
        ("external-ip-swap", vec![&swap_a, &swap_b, &swap_a, &both, &swap_b, &both, &swap_a]),
    ];
    let problems: Vec<String> =
        sequences.iter().flat_map(|(name, steps)| run_sequence(cfg, name, steps)).collect();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// kube-proxy's FullSyncPeriod in nftables mode: once the last full sync is
/// older than the period, the next sync is full (and leaves the same table);
/// changed node addresses make the next sync full, and it writes them to
/// `nodeport-ips`.
#[test]
fn a_full_sync_is_forced_after_the_full_sync_period_and_on_new_addresses() {
    let ns = Netns::new("knp");
    let nft = Nft::in_netns(ns.name());
    let mut syncer = Syncer::new(NftablesBackend::new(nft.clone(), config()));
    assert_eq!(syncer.full_syncs.period, kube_proxy_rules::model::FULL_SYNC_PERIOD);
    let st = state(
        &(service("ns1", "svc1", "172.30.0.41", "p80", 80) + &slice("ns1", "svc1", &["10.0.1.1"], "p80", 80)),
    );
    assert!(syncer.sync(&st).unwrap().is_full());
    assert!(!syncer.sync(&st).unwrap().is_full());
    syncer.full_syncs.period = Duration::ZERO;
    let r = syncer.sync(&st).unwrap();
    assert!(r.is_full() && r.reason().starts_with("last full sync more than"), "{}", r.reason());
    assert_eq!(r.full, Some(FullSyncReason::PeriodElapsed(Duration::ZERO)));
    assert_eq!(kernel_table(&nft, &BTreeSet::new()), fresh_table(&st, &config()));
    syncer.full_syncs.period = Duration::from_secs(3600);
    assert!(!syncer.sync(&st).unwrap().is_full());
    assert!(!syncer.set_local_addresses(config().node.local_addresses));
    let more = vec!["192.168.0.2".parse().unwrap(), "192.168.0.3".parse().unwrap()];
    syncer.backend.cfg.node.nodeport_addresses = vec!["192.168.0.0/24".parse().unwrap()];
    assert!(syncer.set_local_addresses(more));
    let r = syncer.sync(&st).unwrap();
    assert!(r.is_full() && r.reason() == "node addresses changed", "{}", r.reason());
    assert_eq!(r.full, Some(FullSyncReason::NodeAddressesChanged));
    let table = nft.list_table().unwrap();
    assert!(table.contains("192.168.0.3"), "{table}");
}

/// In the endpoint-maps layout an endpoint replaced (same count) is an
/// element-only transaction, sent as one netlink batch instead of `nft -f`:
/// the kernel's table equals a fresh full sync (slots resolved), and a batch
/// the kernel refuses changes nothing.
#[test]
fn an_endpoint_change_goes_over_netlink_in_the_endpoint_maps_layout() {
    let np_spec = "{type: NodePort, clusterIP: 172.30.0.41, ports: [{name: p80, port: 80, protocol: TCP, nodePort: 30001}]}";
    let before = svc1(np_spec, &slice1("{addresses: [10.180.0.1]}, {addresses: [10.180.0.2]}", P80));
    let after = svc1(np_spec, &slice1("{addresses: [10.180.0.1]}, {addresses: [10.180.0.7]}", P80));
    let ns = Netns::new("knl");
    let nft = Nft::in_netns(ns.name());
    let mut syncer = Syncer::new(NftablesBackend::new(nft.clone(), maps_config()));
    syncer.sync(&state(&before)).unwrap();
    let r = syncer.sync(&state(&after)).unwrap();
    assert!(!r.is_full());
    let tx = &r.outcome.rendered.transaction;
    assert!(ElementBatch::parse(tx, IpFamily::V4).is_some(), "not element-only:\n{tx}");
    let st = state(&after);
    assert_eq!(kernel_table(&nft, &BTreeSet::new()), fresh_table(&st, &maps_config()));
    let listing = nft.list_table().unwrap();
    assert!(listing.contains("10.180.0.7 . 80") && !listing.contains("10.180.0.2 . 80"), "{listing}");

    // Deleting an element that is not there: refused, and the add before it
    // in the same batch is not applied either.
    let bad = "add element ip kube-proxy endpoint-hairpin { 10.9.9.9 . 10.9.9.9 }\n\
               delete element ip kube-proxy endpoint-dnat { 4000 }\n";
    let err = nft.apply_fast(bad).unwrap_err().to_string();
    assert!(err.contains("endpoint-dnat { 4000 }") && err.contains("No such file"), "{err}");
    assert!(!nft.list_table().unwrap().contains("10.9.9.9"));
}

/// The IPv6 proxier's table in the endpoint-maps layout: an endpoint
/// replaced goes over netlink too (16-byte addresses, the port padded to a
/// register), and the kernel shows what nft would have written.
#[test]
fn an_ipv6_endpoint_change_goes_over_netlink_in_the_endpoint_maps_layout() {
    let yaml = |ep: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: svc1, namespace: ns1}}\n\
             spec: {{clusterIP: fd00:30::41, ipFamilies: [IPv6], ports: [{{name: p80, port: 80, protocol: TCP}}]}}\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: svc1-1, namespace: ns1, labels: {{kubernetes.io/service-name: svc1}}}}\n\
             addressType: IPv6\nendpoints: [{{addresses: [fd00:180::1]}}, {{addresses: [{ep}]}}]\n\
             ports: [{{name: p80, port: 80, protocol: TCP}}]\n---\n"
        )
    };
    let v6 = |yaml: &str| {
        let mut o = Objects::default();
        let mut errors = Vec::new();
        o.add_text(yaml, "test", &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        let loaded = build_state(&o, &[], &["fd00:30::/108".parse().unwrap()]);
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        loaded.state.split_families()[1].clone()
    };
    let cfg = NftablesConfig {
        node: NodeConfig {
            hostname: "test-node".into(),
            family: IpFamily::V6,
            node_ips: vec!["fd00:77::1".parse().unwrap()],
            nodeport_addresses: vec!["fd00:77::1/128".parse().unwrap()],
            local_addresses: vec!["fd00:77::1".parse().unwrap()],
            ..Default::default()
        },
        service_cidrs: vec!["fd00:30::/108".parse().unwrap()],
        layout: NftLayout::EndpointMaps,
    };
    let ns = Netns::new("knl6");
    let nft = Nft::in_netns(ns.name()).with_family(IpFamily::V6);
    let mut syncer = Syncer::new(NftablesBackend::new(nft.clone(), cfg));
    syncer.sync(&v6(&yaml("fd00:180::2"))).unwrap();
    let r = syncer.sync(&v6(&yaml("fd00:180::7"))).unwrap();
    let tx = &r.outcome.rendered.transaction;
    assert!(ElementBatch::parse(tx, IpFamily::V6).is_some(), "not element-only:\n{tx}");
    let listing = nft.list_table().unwrap();
    assert!(listing.contains("fd00:180::7 . 80") && !listing.contains("fd00:180::2 . 80"), "{listing}");
    assert!(listing.contains("fd00:180::7 . fd00:180::7"), "{listing}");
}

/// A restarted proxy's first sync is full, and `nft -f` then reads the
/// table back. In the endpoint-maps layout a UDP or SCTP policy chain
/// DNATs through a map typed by its protocol's port: with one map typed
/// `tcp dport` (or `th dport`) for all, nft 1.0.6 refused to read those
/// rules back and every later full sync failed. (The incremental sequences
/// above never list the table, so they could not see it.)
#[test]
fn full_syncs_over_udp_and_sctp_services_in_the_endpoint_maps_layout() {
    let proto_svc = |name: &str, ip: &str, proto: &str, ep: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: ns1}}\n\
             spec: {{clusterIP: {ip}, ports: [{{name: p, port: 53, protocol: {proto}}}]}}\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: {name}-1, namespace: ns1, labels: {{kubernetes.io/service-name: {name}}}}}\n\
             addressType: IPv4\nendpoints: [{{addresses: [{ep}]}}]\nports: [{{name: p, port: 5353, protocol: {proto}}}]\n---\n"
        )
    };
    let yaml = proto_svc("dns-udp", "172.30.0.53", "UDP", "10.180.0.53")
        + &proto_svc("dns-tcp", "172.30.0.54", "TCP", "10.180.0.54")
        + &proto_svc("sig", "172.30.0.55", "SCTP", "10.180.0.55");
    let st = state(&yaml);
    let cfg = maps_config();
    let ns = Netns::new("knu");
    let nft = Nft::in_netns(ns.name());
    for start in 0..3 {
        // A new backend is a new process: its first sync is full.
        let mut syncer = Syncer::new(NftablesBackend::new(nft.clone(), cfg.clone()));
        let r = syncer.sync(&st).unwrap_or_else(|e| panic!("start {start}: {e}"));
        assert!(r.is_full(), "start {start}");
    }
    let table = kernel_table(&nft, &BTreeSet::new());
    assert_eq!(table, fresh_table(&st, &cfg));
    assert!(table.contains("endpoints [10.180.0.53 . 5353]"), "{table}");
    assert!(table.contains("endpoints [10.180.0.55 . 5353]"), "{table}");
}
