//! `calico` processes (Calico IPAM in process, the pod record in IPAM's
//! commit) SIGKILLed at random points of a burst of ADDs on the file store:
//! every acknowledged ADD keeps its address and its record, no address is
//! handed out twice, every allocation has its handle and its pod record
//! (they are one commit), and DEL of every container, killed or not, leaves
//! nothing: no allocation, handle, record or host veth.

mod support;

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::net::IpAddr;
use std::process::{Child, Stdio};
use std::time::{Duration, SystemTime};

use calico_store::model::{self, WorkloadEndpoint};
use calico_store::Datastore;
use ipam_block::ops::{self, Snapshot};
use ipam_block::{Handle, Ipam};
use support::*;
use testbed::{finish, Netns, Rng};

fn spawn(node: &Node, cmd: &str, cid: &str, pod: &Netns, conf: &[u8]) -> Child {
    let args = format!("K8S_POD_NAMESPACE=crash;K8S_POD_NAME={cid}");
    let mut c = node
        .ns
        .nsenter(plugin_bin())
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_COMMAND", cmd)
        .env("CNI_CONTAINERID", cid)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_NETNS", pod.path())
        .env("CNI_ARGS", args)
        .env("CNI_PATH", cni_path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // A child killed before it reads its config makes this write fail: fine.
    let _ = c.stdin.take().unwrap().write_all(conf);
    c
}

#[test]
fn killed_adds_lose_no_acknowledged_pod_and_leave_allocation_and_record_together() {
    let node = Node::new();
    let mut conf = node.conf("1.0.0", "10.83.0.0/22");
    conf["log_level"] = serde_json::json!("info");
    let conf = conf.to_string().into_bytes();
    let mut rng = Rng::from_clock();
    let mut pods: BTreeMap<String, Netns> = BTreeMap::new();
    let mut acked: BTreeMap<String, IpAddr> = BTreeMap::new();
    let (mut kills, mut next) = (0, 0);
    while kills < 30 {
        // Six ADDs in flight; each is killed after a random delay or not at all.
        let mut batch: Vec<(String, Child)> = Vec::new();
        for _ in 0..6 {
            next += 1;
            let cid = format!("k{next:04}");
            let pod = Netns::new("ckb");
            batch.push((cid.clone(), spawn(&node, "ADD", &cid, &pod, &conf)));
            pods.insert(cid, pod);
        }
        for (_, c) in &mut batch {
            if rng.below(2) == 0 {
                std::thread::sleep(Duration::from_micros(rng.below(5_000)));
                let _ = c.kill();
            }
        }
        for (cid, c) in batch {
            match finish(c) {
                (Some(0), out) => {
                    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
                    let addr = v["ips"][0]["address"].as_str().unwrap();
                    acked.insert(cid, addr.split('/').next().unwrap().parse().unwrap());
                }
                (None, _) => kills += 1,
                (code, out) => panic!("ADD {cid} failed with {code:?}: {out}"),
            }
        }
    }
    let store = node.store();
    let ipam = Ipam::new(&store, &node.name);
    let unique: HashSet<IpAddr> = acked.values().copied().collect();
    assert_eq!(unique.len(), acked.len(), "an address was handed to two pods");
    let records: BTreeMap<String, WorkloadEndpoint> = store
        .list(&model::workload_endpoints_prefix())
        .unwrap()
        .iter()
        .map(|kv| {
            let w: WorkloadEndpoint = model::decode(kv).unwrap();
            (w.spec.container_id.clone(), w)
        })
        .collect();
    for (cid, ip) in &acked {
        let h = Handle::for_container(NETWORK, cid).unwrap();
        assert_eq!(ipam.ips_of_handle(&h).unwrap(), vec![*ip], "acknowledged ADD of {cid} lost");
        let rec = records.get(cid).unwrap_or_else(|| panic!("acknowledged ADD of {cid} has no record"));
        assert_eq!(rec.spec.ip_networks.iter().map(|n| n.ip()).collect::<Vec<_>>(), vec![*ip]);
    }
    // Killed ADDs left an allocation with its record, or neither.
    for (cid, rec) in &records {
        let h = Handle::for_container(NETWORK, cid).unwrap();
        let held = ipam.ips_of_handle(&h).unwrap();
        assert_eq!(rec.spec.ip_networks.iter().map(|n| n.ip()).collect::<Vec<_>>(), held, "{cid}");
    }
    let report = ops::check(&Snapshot::load(&store).unwrap(), SystemTime::now());
    assert!(report.allocations_without_pod.is_empty(), "{report}");
    assert!(report.allocations_without_handle.is_empty(), "{report}");
    assert!(report.handles_without_allocations.is_empty(), "{report}");
    assert!(report.handle_count_mismatches.is_empty(), "{report}");
    assert!(report.ips_in_several_pods.is_empty(), "{report}");
    eprintln!("{kills} kills, {} ADDs acknowledged, {} records", acked.len(), records.len());

    // The runtime DELs every container whose ADD did not answer, and later
    // every other: nothing is left.
    for (cid, pod) in &pods {
        let (code, out) = finish(spawn(&node, "DEL", cid, pod, &conf));
        assert_eq!(code, Some(0), "DEL of {cid}: {out}");
    }
    assert_eq!(node.allocated(), 0);
    assert!(node.keys("/calico/ipam/v2/handle/").is_empty());
    assert!(node.keys("/calico/resources/v3/projectcalico.org/workloadendpoints/").is_empty());
    assert!(!node.links().iter().any(|l| l.starts_with("cali")), "{:?}", node.links());
}
