//! Syncs against real iptables in a namespace the test creates (never the
//! root namespace): kube-proxy's TestSyncProxyRulesRepeated step by step
//! (full sync, partial syncs of changed services, stale-chain deletion found
//! with iptables-save, a failed partial restore followed by a full one), the
//! jump rules from the built-in chains, and the canary.

use std::collections::BTreeSet;
use std::time::Duration;

use kube_proxy_rules::config::NodeConfig;
use kube_proxy_rules::inputs::build_state;
use kube_proxy_rules::iptables::canonical::sort_payload;
use kube_proxy_rules::iptables::Iptables;
use kube_proxy_rules::iptables::IptablesBackend;
use kube_proxy_rules::iptables::IptablesConfig;
use kube_proxy_rules::k8s::Objects;
use kube_proxy_rules::model::{FullSyncReason, ProxyState};
use kube_proxy_rules::syncer::Syncer;
use testbed::Netns;

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

fn upstream_steps() -> Vec<(String, String)> {
    let text = include_str!("upstream/sync_repeated.txt");
    let mut steps = Vec::new();
    for part in text.split("\n=== ").skip(1) {
        let (name, body) = part.split_once('\n').unwrap();
        steps.push((name.trim().to_string(), body.to_string()));
    }
    steps
}

fn config() -> IptablesConfig {
    // NewFakeProxier: no --random-fully, mark 0x4000, pod CIDR 10.0.0.0/8.
    IptablesConfig {
        node: NodeConfig {
            hostname: "test-node".into(),
            cluster_cidr: Some("10.0.0.0/8".parse().unwrap()),
            masquerade_mark: "0x4000".into(),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn service_chains(ipt: &Iptables) -> BTreeSet<String> {
    ipt.chains("nat").unwrap().into_iter().filter(|c| kube_proxy_rules::names::is_service_chain(c)).collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

#[test]
fn repeated_syncs_match_kube_proxy_and_the_kernel() {
    let ns = Netns::new("kpr");
    let ipt = Iptables::in_netns(ns.name());
    let mut syncer = Syncer::new(IptablesBackend::new(ipt.clone(), config(), Duration::from_secs(30)));
    // kube-proxy's exact partial payloads (every top-level chain rewritten).
    syncer.backend.minimize_top_level = false;
    let steps = upstream_steps();
    let mut step = steps.iter();
    let mut check = |rendered: &str, full: bool, want_full: bool| {
        let (name, want) = step.next().unwrap();
        assert_eq!(full, want_full, "step {name:?}: full sync");
        assert_eq!(sort_payload(rendered).unwrap(), sort_payload(want).unwrap(), "step {name:?}");
    };

    let svc1 =
        service("ns1", "svc1", "172.30.0.41", "p80", 80) + &slice("ns1", "svc1", &["10.0.1.1"], "p80", 80);
    let svc2 = service("ns2", "svc2", "172.30.0.42", "p8080", 8080)
        + &slice("ns2", "svc2", &["10.0.2.1"], "p8080", 8080);
    let svc3 = service("ns3", "svc3", "172.30.0.43", "p80", 80);
    let svc4 = service("ns4", "svc4", "172.30.0.44", "p80", 80);

    let r = syncer.sync(&state(&(svc1.clone() + &svc2))).unwrap();
    assert!(r.outcome.jump_rules_added > 0);
    check(&r.outcome.rendered.payload, r.is_full(), true);

    let s3 = slice("ns3", "svc3", &["10.0.3.1"], "p80", 80);
    let r = syncer.sync(&state(&(svc1.clone() + &svc2 + &svc3 + &s3))).unwrap();
    check(&r.outcome.rendered.payload, r.is_full(), false);
    assert_eq!(r.changed_services, 1);

    let r = syncer.sync(&state(&(svc1.clone() + &svc3 + &s3))).unwrap();
    check(&r.outcome.rendered.payload, r.is_full(), false);
    assert!(
        !service_chains(&ipt).contains("KUBE-SVC-2VJB64SDSIJUP5T6"),
        "svc2's chains deleted in the kernel"
    );

    let r = syncer.sync(&state(&(svc1.clone() + &svc3 + &s3 + &svc4))).unwrap();
    check(&r.outcome.rendered.payload, r.is_full(), false);

    let s4 = slice("ns4", "svc4", &["10.0.4.1"], "p80", 80);
    let r = syncer.sync(&state(&(svc1.clone() + &svc3 + &s3 + &svc4 + &s4))).unwrap();
    check(&r.outcome.rendered.payload, r.is_full(), false);

    let s3 = slice("ns3", "svc3", &["10.0.3.2"], "p80", 80);
    let r = syncer.sync(&state(&(svc1.clone() + &svc3 + &s3 + &svc4 + &s4))).unwrap();
    check(&r.outcome.rendered.payload, r.is_full(), false);

    let s3 = slice("ns3", "svc3", &["10.0.3.2", "10.0.3.3"], "p80", 80);
    let all = svc1.clone() + &svc3 + &s3 + &svc4 + &s4;
    let r = syncer.sync(&state(&all)).unwrap();
    check(&r.outcome.rendered.payload, r.is_full(), false);

    let r = syncer.sync(&state(&all)).unwrap();
    check(&r.outcome.rendered.payload, r.is_full(), false);
    assert_eq!(r.changed_services, 0);
    assert_eq!(
        service_chains(&ipt),
        set(&[
            "KUBE-SEP-AYCN5HPXMIRJNJXU",
            "KUBE-SEP-DKCFIS26GWF2WLWC",
            "KUBE-SEP-JVVZVJ7BSEPPRNBS",
            "KUBE-SEP-SNQ3ZNILQDEJNDQO",
            "KUBE-SVC-4SW47YFZTEDKD3PK",
            "KUBE-SVC-X27LE4BHSL4DOUIK",
            "KUBE-SVC-XPGD46QRK7WJZT7O",
        ])
    );
    // The kernel holds what the payloads said: svc3 balances over two endpoints.
    let svc3_rules = ns.exec(&["iptables", "-t", "nat", "-S", "KUBE-SVC-X27LE4BHSL4DOUIK"]);
    assert!(svc3_rules.contains("--probability 0.50000000000 -j KUBE-SEP-DKCFIS26GWF2WLWC"), "{svc3_rules}");
    assert!(svc3_rules.contains("-j KUBE-SEP-JVVZVJ7BSEPPRNBS"), "{svc3_rules}");

    // A dangling reference from svc3 (not rewritten by a partial sync) makes
    // deleting svc4's endpoint chain fail: the partial restore fails as a whole...
    ns.exec(&["iptables", "-t", "nat", "-A", "KUBE-SVC-X27LE4BHSL4DOUIK", "-j", "KUBE-SEP-AYCN5HPXMIRJNJXU"]);
    let without4 = svc1.clone() + &svc3 + &s3;
    let err = syncer.sync(&state(&without4)).unwrap_err();
    assert!(err.to_string().contains("partial iptables-restore"), "{err}");
    assert!(matches!(syncer.needs_full_sync(), Some(FullSyncReason::SyncFailed(_))));
    assert!(service_chains(&ipt).contains("KUBE-SEP-AYCN5HPXMIRJNJXU"));
    // ...and the retry is a full sync that rewrites svc3 too, so it succeeds.
    let r = syncer.sync(&state(&without4)).unwrap();
    assert_eq!(r.outcome.jump_rules_added, 0, "jump rules are only added once");
    check(&r.outcome.rendered.payload, r.is_full(), true);
    assert!(!service_chains(&ipt).contains("KUBE-SEP-AYCN5HPXMIRJNJXU"));
}

#[test]
fn jump_rules_and_canary() {
    let ns = Netns::new("kpr");
    let ipt = Iptables::in_netns(ns.name());
    let mut syncer = Syncer::new(IptablesBackend::new(ipt.clone(), config(), Duration::from_secs(30)));
    let st = state(
        &(service("ns1", "svc1", "172.30.0.41", "p80", 80) + &slice("ns1", "svc1", &["10.0.1.1"], "p80", 80)),
    );
    let r = syncer.sync(&st).unwrap();
    assert_eq!(r.outcome.jump_rules_added, 14);
    let nat = ns.exec(&["iptables-save", "-t", "nat"]);
    for want in [
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
        "-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
        "-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING",
        ":KUBE-PROXY-CANARY - [0:0]",
    ] {
        assert!(nat.contains(want), "missing {want:?} in\n{nat}");
    }
    // Prepended in order, so FORWARD starts with the last one added.
    let forward = ns.exec(&["iptables", "-S", "FORWARD"]);
    let order: Vec<&str> = forward.lines().filter_map(|l| l.rsplit("-j ").next()).skip(1).collect();
    assert_eq!(order, ["KUBE-PROXY-FIREWALL", "KUBE-FORWARD", "KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES"]);
    assert_eq!(ns.exec(&["cat", "/proc/sys/net/ipv4/conf/all/route_localnet"]).trim(), "1");

    // A partial sync leaves the built-in chains alone.
    let r = syncer.sync(&st).unwrap();
    assert!(!r.is_full());
    assert!(syncer.check_canary().unwrap().is_none());

    // Someone flushes and deletes everything (firewalld-style): the canary is
    // gone, the next sync is full and puts the jump rules back.
    for table in ["filter", "nat", "mangle"] {
        ns.exec(&["iptables", "-t", table, "-F"]);
        ns.exec(&["iptables", "-t", table, "-X"]);
    }
    assert!(syncer.check_canary().unwrap().is_some());
    let r = syncer.sync(&st).unwrap();
    assert!(r.is_full() && r.reason().contains("canary"), "{}", r.reason());
    assert!(matches!(r.full, Some(FullSyncReason::CanaryGone(_))), "{:?}", r.full);
    assert_eq!(r.outcome.jump_rules_added, 14);
    let nat = ns.exec(&["iptables-save", "-t", "nat"]);
    assert!(nat.contains("-j KUBE-SEP-SNQ3ZNILQDEJNDQO"), "{nat}");
    assert!(syncer.check_canary().unwrap().is_none());
}

/// Every chain and rule of the filter and nat tables, as iptables-save shows them.
fn kernel_rules(ns: &Netns) -> std::collections::BTreeMap<(String, String), Vec<String>> {
    let mut out = std::collections::BTreeMap::new();
    for table in ["filter", "nat"] {
        for line in ns.exec(&["iptables-save", "-t", table]).lines() {
            if let Some(decl) = line.strip_prefix(':') {
                let chain = decl.split(' ').next().unwrap().to_string();
                out.entry((table.to_string(), chain)).or_insert_with(Vec::new);
            } else if let Some(rule) = line.strip_prefix("-A ") {
                let chain = rule.split(' ').next().unwrap().to_string();
                out.entry((table.to_string(), chain)).or_insert_with(Vec::new).push(line.to_string());
            }
        }
    }
    out
}

#[test]
fn minimized_partial_syncs_leave_the_same_rules_as_a_full_sync() {
    let ns = Netns::new("kpr");
    let mut syncer =
        Syncer::new(IptablesBackend::new(Iptables::in_netns(ns.name()), config(), Duration::from_secs(30)));
    assert!(syncer.backend.minimize_top_level, "the default");
    let np = |ns_: &str, name: &str, ip: &str, port: u16| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns_}}}\n\
             spec: {{type: NodePort, clusterIP: {ip}, externalIPs: [192.168.99.1], sessionAffinity: ClientIP,\n\
             ports: [{{name: p, port: 80, protocol: TCP, nodePort: {port}}}]}}\n---\n"
        )
    };
    let svc1 = service("ns1", "svc1", "172.30.0.41", "p80", 80);
    let steps: Vec<(String, Option<&str>)> = vec![
        (svc1.clone() + &slice("ns1", "svc1", &["10.0.1.1"], "p80", 80), None),
        // Endpoints change only: KUBE-SERVICES and friends stay as they are.
        (
            svc1.clone() + &slice("ns1", "svc1", &["10.0.1.1", "10.0.1.2"], "p80", 80),
            Some("nat/KUBE-SERVICES"),
        ),
        (
            svc1.clone()
                + &slice("ns1", "svc1", &["10.0.1.2"], "p80", 80)
                + &np("ns2", "svc2", "172.30.0.42", 30080)
                + &slice("ns2", "svc2", &["10.0.2.1", "10.0.2.2", "10.0.2.3"], "p", 80),
            None,
        ),
        (
            svc1.clone()
                + &slice("ns1", "svc1", &["10.0.1.2"], "p80", 80)
                + &np("ns2", "svc2", "172.30.0.42", 30080)
                + &slice("ns2", "svc2", &["10.0.2.3"], "p", 80),
            Some("nat/KUBE-NODEPORTS"),
        ),
        // svc2 loses all endpoints: REJECT rules appear in filter, its nat chains go.
        (
            svc1.clone()
                + &slice("ns1", "svc1", &["10.0.1.2"], "p80", 80)
                + &np("ns2", "svc2", "172.30.0.42", 30080),
            None,
        ),
        (svc1.clone() + &slice("ns1", "svc1", &["10.0.1.2"], "p80", 80), Some("nat/KUBE-MARK-MASQ")),
    ];
    for (i, (yaml, must_skip)) in steps.iter().enumerate() {
        let st = state(yaml);
        let r = syncer.sync(&st).unwrap();
        assert_eq!(r.is_full(), i == 0, "step {i}");
        if let Some(chain) = must_skip {
            assert!(
                r.outcome.rendered.skipped_top_level.iter().any(|c| c == chain),
                "step {i}: {:?}",
                r.outcome.rendered.skipped_top_level
            );
            assert!(
                !r.outcome.rendered.payload.contains(&format!(":{} ", chain.split('/').nth(1).unwrap()))
                    || chain.starts_with("filter")
            );
        }
        // A fresh node given the same state by one full sync ends up identical.
        let fresh = Netns::new("kpf");
        Syncer::new(IptablesBackend::new(
            Iptables::in_netns(fresh.name()),
            config(),
            Duration::from_secs(30),
        ))
        .sync(&st)
        .unwrap();
        assert_eq!(
            kernel_rules(&ns),
            kernel_rules(&fresh),
            "step {i}: partial-synced node differs from a full sync"
        );
    }
}

/// kube-proxy's FullSyncPeriod: once the last full sync is older than the
/// period, the next sync is full even though nothing changed; a changed set
/// of node addresses makes the next sync full too.
#[test]
fn a_full_sync_is_forced_after_the_full_sync_period_and_on_new_addresses() {
    let ns = Netns::new("kfp");
    let mut syncer =
        Syncer::new(IptablesBackend::new(Iptables::in_netns(ns.name()), config(), Duration::from_secs(30)));
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
    syncer.full_syncs.period = Duration::from_secs(3600);
    assert!(!syncer.sync(&st).unwrap().is_full());
    let addrs = syncer.backend.cfg.node.local_addresses.clone();
    assert!(!syncer.set_local_addresses(addrs.clone()));
    assert!(syncer.set_local_addresses([addrs, vec!["10.77.0.5".parse().unwrap()]].concat()));
    let r = syncer.sync(&st).unwrap();
    assert!(r.is_full() && r.reason() == "node addresses changed", "{}", r.reason());
    assert_eq!(r.full, Some(FullSyncReason::NodeAddressesChanged));
}
