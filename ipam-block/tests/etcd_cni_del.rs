//! The CNI-level outage case: the `calico` plugin (with `calico-ipam` as its
//! delegate) on a node whose etcd goes away. DEL must fail (the runtime will
//! retry) but still remove the pod's veth; once etcd is back, DEL completes
//! and nothing is left in IPAM.
//!
//! Everything runs inside namespaces this test creates: the node netns holds
//! etcd (on its own loopback), the plugin and the host veth; the pod netns
//! holds eth0. Needs the workspace binaries: `cargo build --workspace --bins`.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use testbed::Netns;

/// etcd runs inside the node netns ([`testbed::Etcd::start_in`]), on the
/// namespace's own loopback.
const ENDPOINT: &str = "http://127.0.0.1:2379";

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

fn calico(node: &Netns, cmd: &str, conf: &str, pod: &Netns) -> Out {
    let calico = testbed::target_bin("calico");
    let ipam_dir = PathBuf::from(env!("CARGO_BIN_EXE_calico-ipam"));
    let cni_path = format!("{}:/usr/lib/cni", ipam_dir.parent().unwrap().display());
    let mut c = node.nsenter(calico.to_str().unwrap());
    c.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_COMMAND", cmd)
        .env("CNI_CONTAINERID", "outage1")
        .env("CNI_NETNS", pod.path())
        .env("CNI_IFNAME", "eth0")
        .env("CNI_ARGS", "K8S_POD_NAMESPACE=ns1;K8S_POD_NAME=web-0")
        .env("CNI_PATH", cni_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(conf.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn calicoctl(node: &Netns, args: &[&str]) -> (i32, String) {
    let out = node
        .nsenter(env!("CARGO_BIN_EXE_calicoctl"))
        .env_remove("DATASTORE_TYPE")
        .args(["--etcd-endpoints", ENDPOINT])
        .args(args)
        .output()
        .unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned())
}

fn links(ns: &Netns) -> String {
    ns.exec(&["ip", "-o", "link", "show"])
}

#[test]
fn del_with_etcd_down_fails_but_removes_the_veth() {
    let node = Netns::new("cdn");
    let pod = Netns::new("cdp");
    let dir = tempfile::tempdir().unwrap();
    let mut etcd = testbed::Etcd::start_in(&node);
    assert_eq!(etcd.endpoint(), ENDPOINT);
    let conf = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "k8s-pod-network",
        "type": "calico",
        "log_file_path": dir.path().join("cni.log"),
        "datastore_type": "etcdv3",
        "etcd_endpoints": ENDPOINT,
        "datastore_path": dir.path().join("state"),
        "datastore_timeout_seconds": 1,
        "nodename": "outage-node",
        "mtu": 1450,
        "ipam": {"type": "calico-ipam", "ipv4_pools": ["10.66.0.0/24"]},
    })
    .to_string();

    // The node agent registers the node (so `ipam check` knows it).
    let node_doc =
        r#"{"kind":"Node","apiVersion":"projectcalico.org/v3","metadata":{"name":"outage-node"},"spec":{}}"#;
    node.exec(&[
        "etcdctl",
        "--endpoints",
        ENDPOINT,
        "put",
        "/calico/resources/v3/projectcalico.org/nodes/outage-node",
        node_doc,
    ]);

    let add = calico(&node, "ADD", &conf, &pod);
    assert_eq!(add.code, 0, "ADD: {} {}", add.stdout, add.stderr);
    let res: serde_json::Value = serde_json::from_str(&add.stdout).unwrap();
    let veth = res["interfaces"][0]["name"].as_str().unwrap().to_string();
    assert!(veth.starts_with("cali"), "{res}");
    assert!(links(&node).contains(&veth));
    assert!(links(&pod).contains("eth0"));
    let (code, out) = calicoctl(&node, &["ipam", "check"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("Checked 1 allocations"), "{out}");

    etcd.stop();
    let t = Instant::now();
    let del = calico(&node, "DEL", &conf, &pod);
    let took = t.elapsed();
    assert_ne!(del.code, 0, "DEL with etcd down cannot have released the address: {}", del.stdout);
    let err: serde_json::Value = serde_json::from_str(&del.stdout).unwrap();
    assert_eq!(err["code"], 11, "{err}");
    assert!(
        err["msg"].as_str().unwrap().contains("127.0.0.1:2379") || del.stdout.contains("127.0.0.1:2379"),
        "{err}"
    );
    // Bounded: the datastore calls each give up after ~1 s.
    assert!(took < Duration::from_secs(10), "DEL took {took:?}");
    // The data plane is gone anyway: no veth on the node, no eth0 in the pod.
    assert!(!links(&node).contains(&veth), "{}", links(&node));
    assert!(!links(&pod).contains("eth0"), "{}", links(&pod));

    // etcd back: the runtime's retried DEL finishes the job.
    etcd.restart();
    let del = calico(&node, "DEL", &conf, &pod);
    assert_eq!((del.code, del.stdout.as_str()), (0, ""), "{}", del.stderr);
    let (code, out) = calicoctl(&node, &["ipam", "check"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("Checked 0 allocations in 1 blocks, 0 handles, 0 workload endpoints"), "{out}");
}
