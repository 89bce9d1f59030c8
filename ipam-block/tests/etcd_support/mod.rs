//! Shared by the `etcd_*` tests: run the real `calico-ipam` and `calicoctl`
//! binaries as separate processes ("nodes") against a real etcd.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use calico_store::etcd::EtcdStore;
use calico_store::model::{self, ObjectMeta, WorkloadEndpoint, WorkloadEndpointSpec};
use calico_store::{Datastore, DatastoreConfig};
use testbed::{Etcd, Netns};

pub const NETWORK: &str = "k8s-pod-network";

pub fn calico_ipam() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_calico-ipam"))
}

pub fn calicoctl_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_calicoctl"))
}

/// One simulated node: its name and its node-local state directory (hint, host lock).
pub struct Node {
    pub name: String,
    pub state: tempfile::TempDir,
}

impl Node {
    pub fn new(name: &str) -> Node {
        Node { name: name.to_string(), state: tempfile::tempdir().unwrap() }
    }
}

/// The network config a node's runtime would pass to calico-ipam.
pub fn net_conf(endpoint: &str, node: &Node, pools: &[&str], timeout_s: f64) -> String {
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": NETWORK,
        "type": "calico",
        "datastore_type": "etcdv3",
        "etcd_endpoints": endpoint,
        "datastore_path": node.state.path(),
        "datastore_timeout_seconds": timeout_s,
        "nodename": node.name,
        "ipam": {"type": "calico-ipam", "ipv4_pools": pools},
    })
    .to_string()
}

/// A calico-ipam invocation, not yet started.
pub fn ipam_cmd(command: &str, conf: &str, container_id: &str, netns: &Path) -> (Command, String) {
    let mut c = Command::new(calico_ipam());
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", container_id)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/usr/lib/cni")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    (c, conf.to_string())
}

pub fn spawn(cmd: (Command, String)) -> Child {
    let (mut c, stdin) = cmd;
    let mut child = c.spawn().unwrap();
    // A child killed early may close its stdin first: ignore EPIPE.
    let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
    child
}

/// The outcome of one plugin run.
#[derive(Debug)]
pub enum Outcome {
    Added(IpAddr),
    Done,
    /// CNI error: code, msg (and the whole stdout/stderr for diagnostics).
    Failed {
        code: i64,
        msg: String,
        raw: String,
    },
    /// Killed by a signal or crashed (exit status without a CNI error).
    Died(String),
}

pub fn outcome(out: Output) -> Outcome {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let v: Option<serde_json::Value> = serde_json::from_str(&stdout).ok();
    if out.status.success() {
        let ip = v
            .as_ref()
            .and_then(|v| v["ips"][0]["address"].as_str())
            .and_then(|a| a.split('/').next())
            .and_then(|a| a.parse().ok());
        return match ip {
            Some(ip) => Outcome::Added(ip),
            None => Outcome::Done,
        };
    }
    match v.as_ref().and_then(|v| v["code"].as_i64()) {
        Some(code) => Outcome::Failed {
            code,
            msg: v.as_ref().and_then(|v| v["msg"].as_str()).unwrap_or_default().to_string(),
            raw: format!("{stdout}\n{stderr}"),
        },
        None => Outcome::Died(format!("{:?}: {stdout}\n{stderr}", out.status)),
    }
}

pub fn run_ipam(command: &str, conf: &str, container_id: &str, netns: &Path) -> Outcome {
    let child = spawn(ipam_cmd(command, conf, container_id, netns));
    outcome(child.wait_with_output().unwrap())
}

pub fn add(conf: &str, cid: &str, netns: &Path) -> IpAddr {
    match run_ipam("ADD", conf, cid, netns) {
        Outcome::Added(ip) => ip,
        other => panic!("ADD {cid} failed: {other:?}"),
    }
}

pub fn del(conf: &str, cid: &str, netns: &Path) {
    match run_ipam("DEL", conf, cid, netns) {
        Outcome::Done => {}
        other => panic!("DEL {cid} failed: {other:?}"),
    }
}

/// Run `jobs` on `parallel` worker threads; results in job order.
pub fn parallel<T: Send + 'static, R: Send + 'static>(
    jobs: Vec<T>,
    parallel: usize,
    f: impl Fn(T) -> R + Send + Sync + 'static,
) -> Vec<R> {
    let n = jobs.len();
    let queue = std::sync::Arc::new(std::sync::Mutex::new(jobs.into_iter().enumerate().collect::<Vec<_>>()));
    let results =
        std::sync::Arc::new(std::sync::Mutex::new((0..n).map(|_| None).collect::<Vec<Option<R>>>()));
    let f = std::sync::Arc::new(f);
    let workers: Vec<_> = (0..parallel)
        .map(|_| {
            let (queue, results, f) = (queue.clone(), results.clone(), f.clone());
            std::thread::spawn(move || loop {
                let job = queue.lock().unwrap().pop();
                let Some((i, job)) = job else { return };
                let r = f(job);
                results.lock().unwrap()[i] = Some(r);
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let mut results = results.lock().unwrap();
    results.iter_mut().map(|r| r.take().unwrap()).collect()
}

pub fn store(etcd: &Etcd) -> EtcdStore {
    EtcdStore::connect(&DatastoreConfig {
        datastore_type: Some("etcdv3".into()),
        etcd_endpoints: Some(etcd.endpoint()),
        ..Default::default()
    })
    .unwrap()
}

/// Write the pod record the `calico` plugin would write after a successful ADD.
pub fn write_wep(s: &dyn Datastore, node: &str, cid: &str, ip: IpAddr) {
    let spec = WorkloadEndpointSpec {
        orchestrator: "cni".into(),
        workload: cid.into(),
        node: node.into(),
        container_id: cid.into(),
        pod: cid.into(),
        endpoint: "eth0".into(),
        interface_name: format!("cali{}", &cid[..cid.len().min(11)]),
        mac: String::new(),
        ip_networks: vec![format!("{ip}/32").parse().unwrap()],
        profiles: vec![],
        ports: vec![],
    };
    let name = model::workload_endpoint_name(node, "cni", cid, "eth0");
    let meta = ObjectMeta { name: name.clone(), namespace: Some("default".into()), ..Default::default() };
    let w = WorkloadEndpoint::new("WorkloadEndpoint", meta, spec);
    s.create(&model::workload_endpoint_key("default", &name), &model::encode(&w)).unwrap();
}

/// Register a Node resource (what the node agent does at start).
pub fn write_node(s: &dyn Datastore, node: &str) {
    let n = model::Node::new(
        "Node",
        ObjectMeta { name: node.into(), ..Default::default() },
        model::NodeSpec::default(),
    );
    s.create(&model::node_key(node), &model::encode(&n)).unwrap();
}

/// `calicoctl --etcd-endpoints <ep> <args>`: (exit code, stdout, stderr).
pub fn calicoctl(etcd: &Etcd, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(calicoctl_bin())
        .env_remove("DATASTORE_TYPE")
        .env_remove("ETCD_ENDPOINTS")
        .env_remove("DATASTORE_PATH")
        .arg("--etcd-endpoints")
        .arg(etcd.endpoint())
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// handle → addresses, from the blocks.
pub fn allocations_by_handle(s: &dyn Datastore) -> BTreeMap<String, Vec<IpAddr>> {
    let snap = ipam_block::ops::Snapshot::load(s).unwrap();
    assert!(snap.corrupt.is_empty(), "{:?}", snap.corrupt);
    let mut m: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
    for a in snap.allocations() {
        m.entry(a.handle.clone().unwrap_or_default()).or_default().push(a.ip);
    }
    m
}

pub fn handle_of(cid: &str) -> String {
    format!("{NETWORK}.{cid}")
}

/// A fresh etcd, one namespace for CNI_NETNS, and `n` nodes.
pub struct Cluster {
    pub etcd: Etcd,
    pub netns: Netns,
    pub nodes: Vec<Node>,
}

impl Cluster {
    pub fn new(nodes: &[&str]) -> Cluster {
        Cluster {
            etcd: Etcd::start(),
            netns: Netns::new("ipm"),
            nodes: nodes.iter().map(|n| Node::new(n)).collect(),
        }
    }
    pub fn conf(&self, node: usize, pools: &[&str], timeout_s: f64) -> String {
        net_conf(&self.etcd.endpoint(), &self.nodes[node], pools, timeout_s)
    }
}

pub fn elapsed_since(t: Instant) -> Duration {
    t.elapsed()
}

/// `calicoctl <args>` with every datastore variable removed and `env` set:
/// (exit code, stdout, stderr).
pub fn calicoctl_with(env: &[(&str, &str)], args: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new(calicoctl_bin());
    for s in calico_store::resolve::Setting::ALL {
        cmd.env_remove(s.env());
    }
    let out = cmd.envs(env.iter().copied()).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
