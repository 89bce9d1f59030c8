//! Names that would inject text into a payload, against the real kernel, in
//! namespaces the tests create. Kubernetes names reach nft chain names,
//! element comments and iptables comments; the API server normally
//! guarantees they are DNS labels, but files and a datastore are not
//! validated by anyone else. A Service whose name closes the quoted comment
//! and starts a new line must be reported and skipped, and the valid
//! services of the same input must still be synced.

use std::process::{Command, Output};

use testbed::Netns;

const BIN: &str = env!("CARGO_BIN_EXE_kube-proxy-rules");

const GOOD: &str = "\
apiVersion: v1
kind: Service
metadata: {name: good, namespace: ns1}
spec: {clusterIP: 172.30.0.10, ports: [{port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: good-1, namespace: ns1, labels: {kubernetes.io/service-name: good}}
addressType: IPv4
endpoints: [{addresses: [10.180.0.1]}]
ports: [{port: 80}]
";

/// A Service without endpoints: its name ends up in the element comment of
/// `no-endpoint-services` (nftables) and in the comment of a REJECT rule in
/// filter `KUBE-SERVICES` (iptables).
fn injecting_service(name: &str, cluster_ip: &str) -> String {
    let quoted = serde_json::to_string(name).unwrap();
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {quoted}, namespace: ns1}}\n\
         spec: {{clusterIP: {cluster_ip}, ports: [{{name: p80, port: 80}}]}}\n---\n"
    )
}

fn sync(ns: &Netns, mode: &str, input: &std::path::Path) -> Output {
    Command::new("ip")
        .args(["netns", "exec", ns.name(), BIN, "sync", "--proxy-mode", mode])
        .args(["--hostname-override", "node1", "--cluster-cidr", "10.0.0.0/8"])
        .arg(input)
        .output()
        .unwrap()
}

#[test]
fn an_injecting_service_name_is_skipped_and_the_valid_service_syncs_in_nftables_mode() {
    let ns = Netns::new("kbn");
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.yaml");
    // Closes the element comment, ends the element with a verdict, then adds
    // a table of its own (and keeps the rest of the line parseable).
    let name = "x\" : drop }\nadd table ip pwned\nadd chain ip pwned c\n\
                add element ip kube-proxy no-endpoint-services { 1.2.3.4 . tcp . 1 comment \"y";
    std::fs::write(&input, injecting_service(name, "172.30.0.20") + GOOD).unwrap();
    let out = sync(&ns, "nftables", &input);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("skipped Service ns1/\"x\\\" : drop }\\nadd table ip pwned")
            && stderr.contains("invalid metadata.name"),
        "{stderr}"
    );
    // Every line of stderr is one message: the name's newlines are escaped.
    assert!(!stderr.lines().any(|l| l.starts_with("add table")), "{stderr}");
    let tables = ns.exec(&["nft", "list", "tables"]);
    assert!(!tables.contains("pwned"), "the injected table exists:\n{tables}");
    let table = ns.exec(&["nft", "list", "table", "ip", "kube-proxy"]);
    // The valid service's endpoint, as an endpoint-dnat element (the default layout).
    assert!(table.contains(": 10.180.0.1 . 80"), "{table}");
    assert!(!table.contains("172.30.0.20") && !table.contains("1.2.3.4"), "{table}");
}

#[test]
fn an_injecting_service_name_is_skipped_and_the_valid_service_syncs_in_iptables_mode() {
    let ns = Netns::new("kbi");
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.yaml");
    // Closes the quoted comment of the REJECT rule, ends that rule, adds an
    // ACCEPT-everything rule, and turns the rest of the line into a comment.
    let name = "ipt\" -j ACCEPT\n-A KUBE-SERVICES -j ACCEPT\n#";
    std::fs::write(&input, injecting_service(name, "172.30.0.21") + GOOD).unwrap();
    let out = sync(&ns, "iptables", &input);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("skipped Service ns1/\"ipt\\\" -j ACCEPT\\n-A KUBE-SERVICES -j ACCEPT\\n#\"")
            && stderr.contains("invalid metadata.name"),
        "{stderr}"
    );
    let filter = ns.exec(&["iptables-save", "-t", "filter"]);
    assert!(!filter.contains("-A KUBE-SERVICES -j ACCEPT"), "the injected rule exists:\n{filter}");
    assert!(!filter.contains("ns1/ipt"), "{filter}");
    let nat = ns.exec(&["iptables-save", "-t", "nat"]);
    assert!(nat.contains("ns1/good -> 10.180.0.1:80"), "{nat}");
}
