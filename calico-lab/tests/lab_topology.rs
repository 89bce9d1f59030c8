//! Topology-aware routing on the namespace lab: node-a is in zone-a, node-b
//! in zone-b, two pods on each (added through our `calico` plugin, routed by
//! BGP through the tor). A Service with `trafficDistribution: PreferClose`
//! and an EndpointSlice naming each endpoint's zone (what the EndpointSlice
//! controller publishes) is synced by `kube-proxy-rules sync` on each node
//! with `--node-zone`: requests from node-a stay in zone-a, from node-b in
//! zone-b, both pods of the zone answering. Without `--node-zone` (the same
//! manifests) the requests of each node reach both zones: the test can fail.
//! Needs root and the workspace binaries (`cargo build --workspace --bins`).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use calico_lab::{Bins, InNetns, Lab, LabConfig};

const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 40);
const PORT: u16 = 8090;

fn zone_of(node: &str) -> &'static str {
    if node == "node-a" {
        "zone-a"
    } else {
        "zone-b"
    }
}

/// The Service and its slice, one endpoint per pod with its node's zone.
fn manifest(lab: &Lab) -> String {
    let endpoints: String = lab
        .pods()
        .iter()
        .map(|p| format!("- {{addresses: [{}], nodeName: {}, zone: {}}}\n", p.ip, p.node, zone_of(&p.node)))
        .collect();
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: zonal}}\n\
         spec: {{clusterIP: {CLUSTER_IP}, trafficDistribution: PreferClose, ports: [{{port: {PORT}, targetPort: 80}}]}}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: zonal-1, labels: {{kubernetes.io/service-name: zonal}}}}\n\
         addressType: IPv4\nports: [{{port: 80}}]\nendpoints:\n{endpoints}"
    )
}

/// `kube-proxy-rules sync` in every node's netns (its own state dir), with
/// the node's zone or without.
fn sync(lab: &Lab, manifest: &Path, state: &Path, zones: bool) {
    let krules = lab.bins.path("kube-proxy-rules").unwrap();
    for node in ["node-a", "node-b"] {
        let ip = lab.cfg.node(node).unwrap().ip.ip().to_string();
        let mut cmd = lab.ns(node).unwrap().nsenter(&krules);
        cmd.arg("sync")
            .args(["--hostname-override", node, "--node-ip", &ip])
            .args(["--cluster-cidr", &lab.cfg.pool.to_string()])
            .args(["--datastore-type", "etcdv3", "--etcd-endpoints", &lab.cfg.etcd_endpoint()])
            .arg("--state-dir")
            .arg(state.join(node));
        if zones {
            cmd.args(["--node-zone", zone_of(node)]);
        }
        let out = cmd.arg(manifest).output().unwrap();
        assert!(out.status.success(), "sync on {node}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

/// The pods that answered `n` requests from `node` to the ClusterIP.
fn answered(lab: &Lab, node: &str, n: usize) -> BTreeSet<String> {
    let ns = lab.ns(node).unwrap();
    (0..n)
        .map(|_| {
            let page = lab.get_from(ns, CLUSTER_IP, PORT).unwrap();
            page.split_whitespace().next().unwrap_or_default().to_string()
        })
        .collect()
}

fn pods_in(lab: &Lab, zone: &str) -> BTreeSet<String> {
    lab.pods().iter().filter(|p| zone_of(&p.node) == zone).map(|p| p.name.clone()).collect()
}

#[test]
fn requests_stay_in_the_nodes_zone() {
    let cfg = LabConfig::load(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("lab.json")).unwrap();
    let bins = testbed::target_bin("calico-node-agent").parent().unwrap().to_path_buf();
    let mut lab = Lab::up(&cfg, &Bins::new(bins)).unwrap();
    // The demo's two pods (one per node, their blocks announced and routed),
    // then one more on each node, from the same blocks.
    lab.deploy_scenario().unwrap();
    lab.add_pod("default", "zonal-a2", "node-a").unwrap();
    lab.add_pod("default", "zonal-b2", "node-b").unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("zonal.yaml");
    std::fs::write(&file, manifest(&lab)).unwrap();
    let (zone_a, zone_b) = (pods_in(&lab, "zone-a"), pods_in(&lab, "zone-b"));
    assert_eq!(
        (zone_a.len(), zone_b.len()),
        (2, 2),
        "{:?}",
        lab.pods().iter().map(|p| &p.name).collect::<Vec<_>>()
    );

    // Without the node's zone: every endpoint, both zones (40 requests each).
    sync(&lab, &file, tmp.path(), false);
    let all: BTreeSet<String> = zone_a.union(&zone_b).cloned().collect();
    for node in ["node-a", "node-b"] {
        assert_eq!(answered(&lab, node, 40), all, "{node} without a zone");
    }

    // With it: each node's requests stay in its zone, spread over its pods.
    sync(&lab, &file, tmp.path(), true);
    assert_eq!(answered(&lab, "node-a", 40), zone_a, "node-a must stay in zone-a");
    assert_eq!(answered(&lab, "node-b", 40), zone_b, "node-b must stay in zone-b");
    let rules = lab.ns("node-a").unwrap().output(&["iptables-save", "-t", "nat"]).unwrap();
    let zonal: Vec<&str> = rules.lines().filter(|l| l.contains("default/zonal -> ")).collect();
    assert_eq!(zonal.len(), 2, "node-a's service chain has its zone's two endpoints:\n{}", zonal.join("\n"));
}
