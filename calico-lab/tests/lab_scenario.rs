//! The demo scenario (README.md, *What the demos show*) on the namespace lab (tor + 2 nodes + etcd +
//! client, all in namespaces unique to this test): pods added through our
//! `calico` plugin, services through `kube-proxy-rules sync`, routes through
//! the node agent and BIRD. Needs root and the workspace binaries
//! (`cargo build --workspace --bins`).

use std::path::PathBuf;
use std::time::Duration;

use calico_lab::{Bins, InNetns, Lab, LabConfig};
use calico_store::model;

fn lab() -> Lab {
    let cfg = LabConfig::load(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("lab.json")).unwrap();
    let bins = testbed::target_bin("calico-node-agent").parent().unwrap().to_path_buf();
    Lab::up(&cfg, &Bins::new(bins)).unwrap()
}

#[test]
fn article_scenario_end_to_end() {
    let mut lab = lab();
    lab.deploy_scenario().unwrap();
    let report = lab.check_scenario().unwrap();
    for l in &report.lines {
        eprintln!("{l}");
    }
    // Both pods answered some of the 100 requests (the random split is ~50/50).
    assert_eq!(report.distribution.len(), 2, "{:?}", report.distribution);
    assert_eq!(report.distribution.values().sum::<usize>(), 100);

    // The tor learnt exactly the nodes' block aggregates, never a pod /32.
    let routes = lab.tor_routes().unwrap();
    for p in lab.pods() {
        assert!(!routes.contains(&format!("{}/32", p.ip)), "pod /32 leaked to the tor:\n{routes}");
    }
    assert_eq!(routes.matches("/26").count(), 2, "{routes}");
    // Dual-stack: the IPv6 blocks too, never a pod /128.
    assert_eq!(routes.matches("/122").count(), 2, "{routes}");
    for p in lab.pods() {
        let ip6 = p.ip6.expect("dual-stack pod");
        assert!(!routes.contains(&format!("{ip6}/128")), "pod /128 leaked to the tor:\n{routes}");
    }
    for want in [
        "over IPv6 via tor",
        "over IPv6 through the tor",
        "dual-stack nginx-demo-2 NodePort",
        "IPv6 clusterIP",
    ] {
        assert!(report.lines.iter().any(|l| l.contains(want)), "{want}: {:#?}", report.lines);
    }

    // The narrated walk finds the chains, the DNAT and the routes.
    let story = lab.narrate().unwrap();
    assert!(
        story.contains("KUBE-SERVICES") && story.contains("KUBE-SEP-") && story.contains("DNAT"),
        "{story}"
    );
    assert!(story.contains("blackhole"), "{story}");

    // Pods go away as the kubelet removes them: CNI DEL through `calico`.
    let nodes: Vec<String> = lab.pods().iter().map(|p| p.node.clone()).collect();
    let veths: Vec<String> = lab.pods().iter().map(|p| p.host_veth.clone()).collect();
    let errors = lab.delete_pods();
    assert!(errors.is_empty(), "{errors:?}");
    assert!(lab.pods().is_empty());
    for node in &nodes {
        let links = lab.ns(node).unwrap().output(&["ip", "-o", "link"]).unwrap();
        for v in &veths {
            assert!(!links.contains(&format!(" {v}@")), "{v} left on {node}:\n{links}");
        }
    }
    let (records, handles) = lab
        .with_store(&nodes[0], |s| {
            Ok((s.list(&model::workload_endpoints_prefix())?.len(), s.list(&model::handles_prefix())?.len()))
        })
        .unwrap();
    assert_eq!((records, handles), (0, 0), "pod records and IPAM handles released");
}

#[test]
fn pod_reachability_survives_a_bird_restart() {
    let mut lab = lab();
    lab.deploy_scenario().unwrap();
    let remote = lab.pods().iter().find(|p| p.node == "node-b").map(|p| (p.ip, p.name.clone())).unwrap();
    let client = lab.ns("client").unwrap();
    assert!(lab.get_from(client, remote.0, 80).unwrap().starts_with(&remote.1));

    // node-b's BIRD crashes: the tor keeps node-b's routes (graceful restart),
    // node-b's kernel keeps its routes, so traffic keeps flowing.
    lab.kill_bird("node-b");
    std::thread::sleep(Duration::from_secs(3));
    let client = lab.ns("client").unwrap();
    assert!(lab.get_from(client, remote.0, 80).unwrap().starts_with(&remote.1), "during the outage");
    let tor = lab.birdc("tor", &["show", "route", "for", &remote.0.to_string()]).unwrap();
    assert!(tor.contains("192.168.20.2"), "tor dropped node-b's block during the restart:\n{tor}");

    // BIRD comes back with the agent's config; the session re-establishes and
    // the block is announced again (fresh, not stale).
    lab.start_bird("node-b").unwrap();
    lab.wait_bgp_established().unwrap();
    let client = lab.ns("client").unwrap();
    let entry = lab.ns("node-a").unwrap();
    for _ in 0..20 {
        assert!(lab.get_from(client, remote.0, 80).unwrap().starts_with(&remote.1), "after the restart");
    }
    assert!(lab.get_from(entry, remote.0, 80).unwrap().starts_with(&remote.1));
}
