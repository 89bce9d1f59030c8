//! `calico-ipam` processes SIGKILLed at random points of a burst of ADDs and
//! DELs on the file store: every acknowledged ADD keeps its address, no
//! address is handed out twice, `calicoctl ipam check` finds every
//! allocation with its handle and every handle with its allocations, and GC
//! brings what the killed ADDs left to zero.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::net::IpAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime};

use calico_store::file::FileStore;
use calico_store::model::{self, ObjectMeta, WorkloadEndpoint, WorkloadEndpointSpec};
use calico_store::Datastore;
use ipam_block::ops::{self, Snapshot};
use ipam_block::{Handle, Ipam};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::json;
use testbed::{finish, Rng};

const IPAM: &str = env!("CARGO_BIN_EXE_calico-ipam");
const CALICOCTL: &str = env!("CARGO_BIN_EXE_calicoctl");
const NETWORK: &str = "crash-net";
const NODE: &str = "node-a";

fn spawn(command: &str, cid: &str, conf: &[u8], netns: &std::path::Path) -> Child {
    let mut c = Command::new(IPAM)
        .env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", cid)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_NETNS", netns)
        .env("CNI_PATH", "/usr/lib/cni")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // A child killed before it reads its config makes this write fail: fine.
    let _ = c.stdin.take().unwrap().write_all(conf);
    c
}

fn wep(store: &dyn Datastore, cid: &str, ip: IpAddr) {
    let spec = WorkloadEndpointSpec {
        orchestrator: "cni".into(),
        workload: cid.into(),
        node: NODE.into(),
        container_id: cid.into(),
        pod: cid.into(),
        endpoint: "eth0".into(),
        interface_name: "cali0".into(),
        mac: String::new(),
        ip_networks: vec![format!("{ip}/32").parse().unwrap()],
        profiles: vec![NETWORK.into()],
        ports: vec![],
    };
    let meta = ObjectMeta { name: cid.into(), namespace: Some("default".into()), ..Default::default() };
    let w = WorkloadEndpoint::new("WorkloadEndpoint", meta, spec);
    store.create(&model::workload_endpoint_key("default", cid), &model::encode(&w)).unwrap();
}

#[test]
fn killed_ipam_processes_lose_no_acknowledged_add_and_gc_clears_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let netns = testbed::Netns::new("ick");
    let conf = serde_json::to_vec(&json!({
        "cniVersion": "1.0.0", "name": NETWORK, "type": "calico", "nodename": NODE,
        "datastore_type": "file", "datastore_path": store_dir,
        "log_file_path": dir.path().join("cni.log"),
        "ipam": {"type": "calico-ipam", "ipv4_pools": ["10.44.0.0/20"]}
    }))
    .unwrap();
    let mut rng = Rng::from_clock();
    // container → address, for every ADD that returned success and was not deleted.
    let mut live: BTreeMap<String, IpAddr> = BTreeMap::new();
    let mut deleted: Vec<String> = Vec::new();
    let mut every_ack: Vec<IpAddr> = Vec::new();
    let (mut kills, mut next) = (0, 0);
    while kills < 240 {
        // Eight ADDs and up to two DELs of live containers in flight at once.
        let mut batch: Vec<(String, &str, Child)> = Vec::new();
        for _ in 0..8 {
            next += 1;
            let cid = format!("c{next:05}");
            batch.push((cid.clone(), "ADD", spawn("ADD", &cid, &conf, &netns.path())));
        }
        for _ in 0..2 {
            if live.is_empty() {
                break;
            }
            let i = rng.below(live.len() as u64) as usize;
            let cid = live.keys().nth(i).cloned().unwrap();
            live.remove(&cid);
            batch.push((cid.clone(), "DEL", spawn("DEL", &cid, &conf, &netns.path())));
        }
        for (_, _, c) in &batch {
            if rng.below(2) == 0 {
                std::thread::sleep(Duration::from_micros(rng.below(12_000)));
                let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGKILL);
            }
        }
        for (cid, command, c) in batch {
            let (code, out) = finish(c);
            match (command, code) {
                ("ADD", Some(0)) => {
                    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
                    let addr = v["ips"][0]["address"].as_str().unwrap();
                    let ip: IpAddr = addr.split('/').next().unwrap().parse().unwrap();
                    every_ack.push(ip);
                    live.insert(cid, ip);
                }
                ("ADD", None) => kills += 1,
                ("DEL", code) => {
                    if code.is_none() {
                        kills += 1;
                        // The runtime retries a DEL that did not answer.
                        let (again, out) = finish(spawn("DEL", &cid, &conf, &netns.path()));
                        assert_eq!(again, Some(0), "DEL retry of {cid}: {out}");
                    } else {
                        assert_eq!(code, Some(0), "DEL of {cid}: {out}");
                    }
                    deleted.push(cid);
                }
                (_, code) => panic!("{command} {cid} failed with {code:?}: {out}"),
            }
        }
    }
    let store = FileStore::open(&store_dir).unwrap();
    let ipam = Ipam::new(&store, NODE);
    let live_ips: HashSet<IpAddr> = live.values().copied().collect();
    assert_eq!(live_ips.len(), live.len(), "an address was handed to two live containers");
    for (cid, ip) in &live {
        let h = Handle::for_container(NETWORK, cid).unwrap();
        assert_eq!(ipam.ips_of_handle(&h).unwrap(), vec![*ip], "acknowledged ADD of {cid} lost");
    }
    for cid in &deleted {
        let h = Handle::for_container(NETWORK, cid).unwrap();
        assert!(ipam.ips_of_handle(&h).unwrap().is_empty(), "DEL of {cid} left its address");
    }
    let report = ops::check(&Snapshot::load(&store).unwrap(), SystemTime::now());
    assert!(report.corrupt_documents.is_empty(), "{report}");
    assert!(report.allocations_without_handle.is_empty(), "{report}");
    assert!(report.handles_without_allocations.is_empty(), "{report}");
    assert!(report.handle_count_mismatches.is_empty(), "{report}");
    eprintln!(
        "{kills} kills, {} ADDs acknowledged, {} live, {} deleted, {} allocations left by killed ADDs",
        every_ack.len(),
        live.len(),
        deleted.len(),
        report.allocations - live.len()
    );
    assert!(every_ack.len() > 100, "too few ADDs got through to mean anything");

    // What killed ADDs left has no pod record: GC releases exactly that.
    for (cid, ip) in &live {
        wep(&store, cid, *ip);
    }
    ops::gc(&store, Duration::ZERO, SystemTime::now()).unwrap();
    let after = ops::check(&Snapshot::load(&store).unwrap(), SystemTime::now());
    assert!(after.allocations_without_pod.is_empty(), "{after}");
    assert_eq!(after.allocations, live.len(), "{after}");
    let out = Command::new(CALICOCTL)
        .args(["ipam", "check", "--datastore-type", "file", "--datastore-path"])
        .arg(&store_dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "calicoctl ipam check: {}", String::from_utf8_lossy(&out.stdout));
}
