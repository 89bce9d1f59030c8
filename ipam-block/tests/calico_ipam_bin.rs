//! The built `calico-ipam` binary driven like a runtime drives it: CNI env,
//! config on stdin, result or error JSON on stdout. IPAM needs no network;
//! ADD/CHECK get a real (empty) network namespace as CNI_NETNS.

use std::io::Write;
use std::process::{Command, Stdio};

use calico_store::file::FileStore;
use calico_store::Datastore;
use serde_json::{json, Value};
use testbed::Netns;

const BIN: &str = env!("CARGO_BIN_EXE_calico-ipam");

struct Node {
    dir: tempfile::TempDir,
    netns: Netns,
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Out {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("stdout not JSON ({e}): {self:?}"))
    }
}

impl std::fmt::Debug for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {} stdout {:?} stderr {:?}", self.code, self.stdout, self.stderr)
    }
}

impl Node {
    fn new() -> Node {
        Node { dir: tempfile::tempdir().unwrap(), netns: Netns::new("ipm") }
    }

    fn conf(&self, version: &str, ipam: Value) -> Value {
        let mut ipam = ipam;
        ipam["type"] = json!("calico-ipam");
        json!({
            "cniVersion": version,
            "name": "k8s-pod-network",
            "type": "calico",
            "nodename": "node-a",
            "datastore_type": "file",
            "datastore_path": self.dir.path().join("store"),
            "log_file_path": self.dir.path().join("cni.log"),
            "some_unknown_key": {"kept": true},
            "ipam": ipam,
        })
    }

    fn run(&self, cmd: &str, cid: &str, args: &str, conf: &Value) -> Out {
        let mut c = Command::new(BIN);
        c.env_clear()
            .env("CNI_COMMAND", cmd)
            .env("CNI_CONTAINERID", cid)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", "/usr/lib/cni")
            .env("CNI_ARGS", args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if cmd != "DEL" {
            c.env("CNI_NETNS", self.netns.path());
        }
        let mut child = c.spawn().unwrap();
        child.stdin.take().unwrap().write_all(conf.to_string().as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        Out {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    fn store(&self) -> FileStore {
        FileStore::open(self.dir.path().join("store")).unwrap()
    }

    fn raw(&self, key: &str) -> Option<Value> {
        self.store().get(key).unwrap().map(|kv| serde_json::from_slice(&kv.value).unwrap())
    }
}

const K8S: &str = "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns1;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=c1";

#[test]
fn add_prints_an_ipam_result_and_del_releases() {
    let n = Node::new();
    let conf = n.conf("1.0.0", json!({"ipv4_pools": ["10.30.0.0/26"]}));
    let add = n.run("ADD", "c1", K8S, &conf);
    assert_eq!(add.code, 0, "{add:?}");
    assert_eq!(add.json(), json!({"cniVersion": "1.0.0", "ips": [{"address": "10.30.0.0/32"}]}));
    let handle = n.raw("/calico/ipam/v2/handle/k8s-pod-network.c1").expect("handle written");
    assert_eq!(handle["block"], json!({"10.30.0.0/26": 1}));
    let block = n.raw("/calico/ipam/v2/assignment/ipv4/block/10.30.0.0-26").unwrap();
    assert_eq!(block["affinity"], "host:node-a");
    let sec = &block["attributes"][0]["secondary"];
    assert_eq!(
        (sec["namespace"].as_str(), sec["pod"].as_str(), sec["node"].as_str()),
        (Some("ns1"), Some("web-0"), Some("node-a"))
    );
    let del = n.run("DEL", "c1", K8S, &conf);
    assert_eq!((del.code, del.stdout.as_str()), (0, ""), "{del:?}");
    assert!(n.raw("/calico/ipam/v2/handle/k8s-pod-network.c1").is_none());
    assert_eq!(
        n.raw("/calico/ipam/v2/assignment/ipv4/block/10.30.0.0-26").unwrap()["allocations"][0],
        Value::Null
    );
    // Repeated DEL and DEL of a container never added succeed silently.
    for cid in ["c1", "never-added"] {
        let again = n.run("DEL", cid, "", &conf);
        assert_eq!((again.code, again.stdout.as_str()), (0, ""), "{again:?}");
    }
    // Logs went to the log file, never to stdout.
    assert!(std::fs::read_to_string(n.dir.path().join("cni.log"))
        .unwrap_or_default()
        .contains("k8s-pod-network.c1"));
}

#[test]
fn result_follows_the_config_version() {
    let n = Node::new();
    let conf = n.conf("0.4.0", json!({"ipv4_pools": ["10.31.0.0/26"]}));
    let add = n.run("ADD", "c1", "", &conf);
    assert_eq!(add.code, 0, "{add:?}");
    assert_eq!(
        add.json(),
        json!({"cniVersion": "0.4.0", "ips": [{"version": "4", "address": "10.31.0.0/32"}]})
    );
}

#[test]
fn families_follow_assign_flags() {
    let n = Node::new();
    let v6only =
        n.conf("1.0.0", json!({"assign_ipv4": "false", "assign_ipv6": "true", "ipv6_pools": ["fd20::/122"]}));
    let add = n.run("ADD", "c6", "", &v6only);
    assert_eq!(add.code, 0, "{add:?}");
    assert_eq!(add.json()["ips"], json!([{"address": "fd20::/128"}]));
    let dual = n.conf(
        "1.0.0",
        json!({"assign_ipv6": "true", "ipv4_pools": ["10.32.0.0/26"], "ipv6_pools": ["fd20::/122"]}),
    );
    let add = n.run("ADD", "cd", "", &dual);
    assert_eq!(add.code, 0, "{add:?}");
    assert_eq!(add.json()["ips"], json!([{"address": "10.32.0.0/32"}, {"address": "fd20::1/128"}]));
    // v6 from a pool that is not usable: ADD fails and the v4 address is not kept.
    let broken = n.conf(
        "1.0.0",
        json!({"assign_ipv6": "true", "ipv4_pools": ["10.32.0.0/26"], "ipv6_pools": ["nope"]}),
    );
    let add = n.run("ADD", "cb", "", &broken);
    assert_eq!((add.code, add.json()["code"].as_u64()), (1, Some(7)), "{add:?}");
    assert_eq!(
        add.json()["msg"].as_str().unwrap(),
        "IPAM ADD: the given pool (nope) does not exist, or is not enabled"
    );
    assert!(n.raw("/calico/ipam/v2/handle/k8s-pod-network.cb").is_none());
    let block = n.raw("/calico/ipam/v2/assignment/ipv4/block/10.32.0.0-26").unwrap();
    assert_eq!(block["unallocated"][0], 1, "10.32.0.1 is still free");
}

#[test]
fn ip_arg_requests_one_address() {
    let n = Node::new();
    let conf = n.conf("1.0.0", json!({"ipv4_pools": ["10.33.0.0/24"]}));
    // The pool must exist for IP=: the first ADD creates it.
    assert_eq!(n.run("ADD", "first", "", &conf).code, 0);
    let add = n.run("ADD", "c1", "IP=10.33.0.200", &conf);
    assert_eq!(add.code, 0, "{add:?}");
    assert_eq!(add.json()["ips"], json!([{"address": "10.33.0.200/32"}]));
    let taken = n.run("ADD", "c2", "IP=10.33.0.200", &conf);
    assert_ne!(taken.code, 0);
    assert!(taken.json()["msg"].as_str().unwrap().contains("Address already assigned in block"), "{taken:?}");
    let outside = n.run("ADD", "c3", "IP=10.99.0.1", &conf);
    assert_ne!(outside.code, 0, "{outside:?}");
    assert!(outside.json()["msg"].as_str().unwrap().contains("not in any enabled IP pool"));
}

#[test]
fn check_verifies_the_handle_holds_prev_result() {
    let n = Node::new();
    let mut conf = n.conf("1.0.0", json!({"ipv4_pools": ["10.34.0.0/24"]}));
    let add = n.run("ADD", "c1", "", &conf);
    assert_eq!(add.code, 0, "{add:?}");
    conf["prevResult"] = add.json();
    let check = n.run("CHECK", "c1", "", &conf);
    assert_eq!((check.code, check.stdout.as_str()), (0, ""), "{check:?}");
    conf["prevResult"]["ips"][0]["address"] = json!("10.34.0.9/32");
    let bad = n.run("CHECK", "c1", "", &conf);
    assert_ne!(bad.code, 0);
    assert!(bad.json()["msg"].as_str().unwrap().contains("does not hold 10.34.0.9"), "{bad:?}");
    let gone = n.run("CHECK", "other", "", &conf);
    assert_eq!(gone.json()["code"], 3, "{gone:?}");
}

#[test]
fn status_and_unavailable_datastore() {
    let n = Node::new();
    let conf = n.conf("1.1.0", json!({}));
    let ok = n.run("STATUS", "", "", &conf);
    assert_eq!((ok.code, ok.stdout.as_str()), (0, ""), "{ok:?}");
    // etcd on a port nobody listens on.
    let mut down = conf.clone();
    down["datastore_type"] = json!("etcdv3");
    down["etcd_endpoints"] = json!(format!("http://127.0.0.1:{}", testbed::free_port()));
    down["datastore_timeout_seconds"] = json!(1);
    let status = n.run("STATUS", "", "", &down);
    assert_eq!(status.json()["code"], 50, "{status:?}");
    let add = n.run("ADD", "c1", "", &down);
    assert_eq!(add.json()["code"], 11, "{add:?}");
    assert!(add.json()["msg"].as_str().unwrap().contains("datastore"), "{add:?}");
    let del = n.run("DEL", "c1", "", &down);
    assert_eq!(del.json()["code"], 11, "{del:?}");
    // A file store that cannot be created (its parent is a regular file).
    let blocker = n.dir.path().join("not-a-dir");
    std::fs::write(&blocker, b"x").unwrap();
    let mut broken = conf.clone();
    broken["datastore_path"] = json!(blocker.join("store"));
    assert_eq!(n.run("STATUS", "", "", &broken).json()["code"], 50);
    let add = n.run("ADD", "c1", "", &broken);
    // Not transient: an I/O failure (5), as `calico` reports it too.
    assert_eq!(add.json()["code"], 5, "{add:?}");
    assert!(add.json()["msg"].as_str().unwrap().contains("not-a-dir"), "{add:?}");
}

#[test]
fn gc_keeps_exactly_the_valid_attachments() {
    let n = Node::new();
    let mut conf = n.conf("1.1.0", json!({"ipv4_pools": ["10.35.0.0/24"]}));
    for cid in ["keep", "stale1", "stale2"] {
        assert_eq!(n.run("ADD", cid, "", &conf).code, 0);
    }
    // Another network's handle on the same store is not ours to collect.
    let mut other = conf.clone();
    other["name"] = json!("other-net");
    assert_eq!(n.run("ADD", "stale3", "", &other).code, 0);
    conf["cni.dev/valid-attachments"] = json!([{"containerID": "keep", "ifname": "eth0"}]);
    let gc = n.run("GC", "", "", &conf);
    assert_eq!((gc.code, gc.stdout.as_str()), (0, ""), "{gc:?}");
    let handles: Vec<String> = n
        .store()
        .list("/calico/ipam/v2/handle/")
        .unwrap()
        .into_iter()
        .map(|kv| kv.key.trim_start_matches("/calico/ipam/v2/handle/").to_string())
        .collect();
    assert_eq!(handles, ["k8s-pod-network.keep", "other-net.stale3"]);
}

#[test]
fn bad_config_values_are_code_7() {
    let n = Node::new();
    for ipam in [
        json!({"assign_ipv4": "maybe"}),
        json!({"ipv4_pools": ["10.0.0.1/16"]}),
        json!({"assign_ipv4": "false"}),
    ] {
        let out = n.run("ADD", "c1", "", &n.conf("1.0.0", ipam.clone()));
        assert_eq!(out.json()["code"], 7, "{ipam}: {out:?}");
    }
    let mut conf = n.conf("1.0.0", json!({}));
    conf["datastore_type"] = json!("kubernetes");
    assert_eq!(n.run("ADD", "c1", "", &conf).json()["code"], 7);
}

#[test]
fn parallel_adds_get_unique_addresses() {
    let n = Node::new();
    let conf = n.conf("1.0.0", json!({"ipv4_pools": ["10.36.0.0/24"]}));
    let outs: Vec<Out> = std::thread::scope(|s| {
        let threads: Vec<_> = (0..40)
            .map(|i| {
                let (n, conf) = (&n, &conf);
                s.spawn(move || n.run("ADD", &format!("p{i}"), "", conf))
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let mut ips = std::collections::HashSet::new();
    for o in &outs {
        assert_eq!(o.code, 0, "{o:?}");
        assert!(ips.insert(o.json()["ips"][0]["address"].as_str().unwrap().to_string()), "duplicate: {o:?}");
    }
    assert_eq!(n.store().list("/calico/ipam/v2/handle/").unwrap().len(), 40);
}

#[test]
fn node_name_comes_from_conf_then_file() {
    let n = Node::new();
    let mut conf = n.conf("1.0.0", json!({"ipv4_pools": ["10.37.0.0/26"]}));
    conf["nodename"] = json!("");
    let file = n.dir.path().join("nodename");
    std::fs::write(&file, "node-from-file\n").unwrap();
    conf["nodename_file"] = json!(file);
    assert_eq!(n.run("ADD", "c1", "", &conf).code, 0);
    assert_eq!(
        n.raw("/calico/ipam/v2/assignment/ipv4/block/10.37.0.0-26").unwrap()["affinity"],
        "host:node-from-file"
    );
    conf["nodename"] = json!("bad/name");
    assert_eq!(n.run("ADD", "c2", "", &conf).json()["code"], 7);
}
