//! Which families a one-shot `sync` runs, in namespaces the tests create:
//! a node whose IPv6 is disabled (`net.ipv6.conf.all.disable_ipv6=1` in the
//! test's own namespace) syncs the IPv4 half of a dual-stack input and warns
//! once about IPv6 instead of writing ip6 rules nothing would match; a sync
//! that finds only IPv6 services still removes the IPv4 rules an earlier
//! sync left.

use std::path::Path;
use std::process::{Command, Output};

use testbed::Netns;

const BIN: &str = env!("CARGO_BIN_EXE_kube-proxy-rules");

const DUAL: &str = "\
apiVersion: v1
kind: Service
metadata: {name: dual, namespace: ns1}
spec: {clusterIPs: [172.30.0.10, 'fd00:30::10'], ipFamilyPolicy: RequireDualStack, ports: [{port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: dual-4, namespace: ns1, labels: {kubernetes.io/service-name: dual}}
addressType: IPv4
endpoints: [{addresses: [10.180.0.1]}]
ports: [{port: 80}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: dual-6, namespace: ns1, labels: {kubernetes.io/service-name: dual}}
addressType: IPv6
endpoints: [{addresses: ['fd00:180::1']}]
ports: [{port: 80}]
";

const V4: &str = "\
apiVersion: v1
kind: Service
metadata: {name: old4, namespace: ns1}
spec: {clusterIP: 172.30.0.11, ports: [{port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: old4-1, namespace: ns1, labels: {kubernetes.io/service-name: old4}}
addressType: IPv4
endpoints: [{addresses: [10.180.0.2]}]
ports: [{port: 80}]
";

const V6: &str = "\
apiVersion: v1
kind: Service
metadata: {name: new6, namespace: ns1}
spec: {clusterIP: 'fd00:30::12', ports: [{port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: new6-1, namespace: ns1, labels: {kubernetes.io/service-name: new6}}
addressType: IPv6
endpoints: [{addresses: ['fd00:180::2']}]
ports: [{port: 80}]
";

fn sync(ns: &Netns, mode: &str, input: &Path) -> Output {
    Command::new("ip")
        .args(["netns", "exec", ns.name(), BIN, "sync", "--proxy-mode", mode])
        .args(["--hostname-override", "node1", "--cluster-cidr", "10.0.0.0/8,fd00:180::/48"])
        .args(["--service-cluster-ip-range", "172.30.0.0/16,fd00:30::/108"])
        .arg(input)
        .output()
        .unwrap()
}

/// The family's kube-proxy rules as text (iptables nat, or the nft table; empty if none).
fn rules(ns: &Netns, mode: &str, v6: bool) -> String {
    match (mode, v6) {
        ("iptables", false) => ns.exec(&["iptables-save", "-t", "nat"]),
        ("iptables", true) => ns.exec(&["ip6tables-save", "-t", "nat"]),
        (_, false) => ns.try_exec(&["nft", "list", "table", "ip", "kube-proxy"]).unwrap_or_default(),
        (_, true) => ns.try_exec(&["nft", "list", "table", "ip6", "kube-proxy"]).unwrap_or_default(),
    }
}

fn ipv6_disabled_node_runs_single_stack(mode: &str) {
    let ns = Netns::new("kfp");
    ns.exec(&["sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1"]);
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.yaml");
    std::fs::write(&input, DUAL).unwrap();
    let out = sync(&ns, mode, &input);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let warning = "IPv6 services present but IPv6 is unavailable on this node: running single-stack";
    assert_eq!(stderr.matches(warning).count(), 1, "{stderr}");
    assert!(stderr.contains("disable_ipv6 is 1"), "{stderr}");
    assert!(rules(&ns, mode, false).contains("10.180.0.1"), "IPv4 not synced:\n{stderr}");
    let v6 = rules(&ns, mode, true);
    assert!(!v6.contains("KUBE-") && !v6.contains("fd00"), "IPv6 rules on an IPv6-disabled node:\n{v6}");

    // Only IPv6 services now: IPv4 is synced empty (its old rules go), IPv6 still skipped.
    std::fs::write(&input, V6).unwrap();
    let out = sync(&ns, mode, &input);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stderr.matches(warning).count(), 1, "{stderr}");
    assert!(!rules(&ns, mode, false).contains("10.180.0.1"), "stale IPv4 rules:\n{stderr}");

    // A fresh IPv6-disabled node with only IPv6 services: nothing can be synced, an error.
    let fresh = Netns::new("kfp");
    fresh.exec(&["sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1"]);
    let out = sync(&fresh, mode, &input);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("no IP family can be proxied on this node"), "{stderr}");
    assert!(!rules(&fresh, mode, true).contains("KUBE-"), "{stderr}");
}

#[test]
fn an_ipv6_disabled_node_syncs_ipv4_and_warns_for_ipv6_iptables() {
    ipv6_disabled_node_runs_single_stack("iptables");
}

#[test]
fn an_ipv6_disabled_node_syncs_ipv4_and_warns_for_ipv6_nftables() {
    ipv6_disabled_node_runs_single_stack("nftables");
}

fn ipv6_only_sync_removes_earlier_ipv4_rules(mode: &str) {
    let ns = Netns::new("kfl");
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.yaml");
    std::fs::write(&input, V4).unwrap();
    let out = sync(&ns, mode, &input);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(rules(&ns, mode, false).contains("10.180.0.2"));
    // The IPv4 service is gone, an IPv6 one came: no IPv4 service, no IPv4 node IP.
    std::fs::write(&input, V6).unwrap();
    let out = sync(&ns, mode, &input);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let v4 = rules(&ns, mode, false);
    assert!(!v4.contains("10.180.0.2") && !v4.contains("172.30.0.11"), "stale IPv4 rules:\n{v4}\n{stderr}");
    assert!(rules(&ns, mode, true).contains("fd00:180::2"), "{stderr}");
}

#[test]
fn an_ipv6_only_sync_removes_the_ipv4_rules_of_an_earlier_sync_iptables() {
    ipv6_only_sync_removes_earlier_ipv4_rules("iptables");
}

#[test]
fn an_ipv6_only_sync_removes_the_ipv4_rules_of_an_earlier_sync_nftables() {
    ipv6_only_sync_removes_earlier_ipv4_rules("nftables");
}
