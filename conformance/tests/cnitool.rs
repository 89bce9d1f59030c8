//! cnitool end to end, the way the manual recipes use it: a config dir, a
//! netns, `cnitool add|check|del|status|gc <net> <netns>`, run inside a node
//! netns, against Debian's ptp + host-local and against our calico.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::{json, Value};
use sha2::{Digest, Sha512};
use testbed::Netns;

struct Tool {
    node: Netns,
    dir: tempfile::TempDir,
    cni_path: String,
}

impl Tool {
    fn new(cni_path: &str) -> Tool {
        Tool { node: Netns::new("ctn"), dir: tempfile::tempdir().unwrap(), cni_path: cni_path.into() }
    }

    fn conf(&self, file: &str, v: &Value) {
        std::fs::create_dir_all(self.dir.path().join("net.d")).unwrap();
        std::fs::write(self.dir.path().join("net.d").join(file), v.to_string()).unwrap();
    }

    fn run(&self, args: &[&str], extra_env: &[(&str, &str)]) -> Output {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.node.path().display()))
            .arg("--")
            .arg(testbed::target_bin("cnitool"))
            .args(args)
            .env("NETCONFPATH", self.dir.path().join("net.d"))
            .env("CNI_PATH", &self.cni_path)
            .env("CNITOOL_CACHE_DIR", self.dir.path().join("cache"))
            .env_remove("CNI_IFNAME")
            .env_remove("CNI_ARGS")
            .env_remove("CAP_ARGS");
        c.envs(extra_env.iter().copied());
        c.output().unwrap()
    }

    fn ok(&self, args: &[&str], env: &[(&str, &str)]) -> String {
        let o = self.run(args, env);
        assert!(o.status.success(), "cnitool {args:?}: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
}

fn upstream_id(netns: &Path) -> String {
    let d = Sha512::digest(netns.as_os_str().as_encoded_bytes());
    format!("cnitool-{}", data_encoding::HEXLOWER.encode(&d[..10]))
}

#[test]
fn cnitool_drives_ptp_host_local() {
    let t = Tool::new("/usr/lib/cni");
    let pod = Netns::new("ctp");
    let ipam_dir = t.dir.path().join("ipam");
    t.conf(
        "10-ptp.conflist",
        &json!({"cniVersion": "1.0.0", "name": "tnet", "plugins": [{"type": "ptp", "ipMasq": false,
            "ipam": {"type": "host-local", "subnet": "10.76.0.0/24", "dataDir": ipam_dir}}]}),
    );
    // A decoy earlier in sort order with another name, and a legacy .conf.
    t.conf(
        "05-other.conflist",
        &json!({"cniVersion": "1.0.0", "name": "other", "plugins": [{"type": "nope"}]}),
    );
    let netns = pod.path();
    let ns = netns.to_str().unwrap();
    let out = t.ok(&["add", "tnet", ns], &[("CNI_ARGS", "IgnoreUnknown=1;IP=10.76.0.9")]);
    let res: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(res["ips"][0]["address"], "10.76.0.9/24");
    let id = upstream_id(&netns);
    // host-local recorded the upstream-derived container ID; the cache is named after it.
    let owner = std::fs::read_to_string(ipam_dir.join("tnet/10.76.0.9")).unwrap();
    assert!(owner.starts_with(&id), "{owner} vs {id}");
    assert!(t.dir.path().join(format!("cache/results/tnet-{id}-eth0")).exists());
    t.ok(&["check", "tnet", ns], &[]);
    t.ok(&["status", "tnet", ns], &[]);
    t.ok(&["del", "tnet", ns], &[]);
    t.ok(&["del", "tnet", ns], &[]);
    assert!(!ipam_dir.join("tnet/10.76.0.9").exists());
    // CNI_IFNAME is honoured.
    let out = t.ok(&["add", "tnet", ns], &[("CNI_IFNAME", "net1")]);
    assert!(out.contains("\"net1\""), "{out}");
    // Each variable is also a flag, which wins: DEL of net1 with CNI_IFNAME
    // naming another interface releases net1's address.
    let res: Value = serde_json::from_str(&out).unwrap();
    let net1_ip = res["ips"][0]["address"].as_str().unwrap().split('/').next().unwrap().to_string();
    assert!(ipam_dir.join("tnet").join(&net1_ip).exists());
    t.ok(&["del", "--ifname", "net1", "tnet", ns], &[("CNI_IFNAME", "net9")]);
    assert!(!ipam_dir.join("tnet").join(&net1_ip).exists(), "--ifname net1 was not used");
    t.ok(&["--ifname=net1", "add", "tnet", ns], &[]);
    t.ok(&["gc", "tnet", ns], &[]);
    assert!(
        std::fs::read_dir(ipam_dir.join("tnet")).unwrap().all(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .parse::<std::net::IpAddr>()
            .is_err()),
        "gc without a valid list collects everything"
    );
    // Errors: unknown network, bad CNI_ARGS, usage.
    let o = t.run(&["add", "nosuch", ns], &[]);
    assert!(
        !o.status.success() && String::from_utf8_lossy(&o.stderr).contains("no net configuration with name")
    );
    // A runtime failure: one line `cnitool: error: …`, exit 1.
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).starts_with("cnitool: error: "));
    let o = t.run(&["add", "tnet", ns], &[("CNI_ARGS", "broken")]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("invalid CNI_ARGS"));
    assert!(!t.run(&["frob", "tnet", ns], &[]).status.success());
    // Usage errors are clap's: exit 2.
    assert_eq!(t.run(&["frob", "tnet", ns], &[]).status.code(), Some(2));
    assert_eq!(t.run(&["add", "tnet"], &[]).status.code(), Some(2));
}

#[test]
fn cnitool_drives_our_calico() {
    let bin = testbed::target_bin("calico");
    let bin_dir = bin.parent().unwrap().to_str().unwrap().to_string();
    let t = Tool::new(&bin_dir);
    let pod = Netns::new("ctc");
    t.conf(
        "10-calico.conflist",
        &json!({"cniVersion": "1.1.0", "name": "k8s-pod-network", "plugins": [{"type": "calico",
            "nodename": t.node.name(), "nodename_file_optional": true, "datastore_type": "file",
            "datastore_path": t.dir.path().join("store"), "log_file_path": t.dir.path().join("cni.log"),
            "ipam": {"type": "calico-ipam", "ipv4_pools": ["10.75.0.0/16"]}}]}),
    );
    let ns = pod.path().to_str().unwrap().to_string();
    let args = [("CNI_ARGS", "K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-1")];
    let res: Value = serde_json::from_str(&t.ok(&["add", "k8s-pod-network", &ns], &args)).unwrap();
    let addr = res["ips"][0]["address"].as_str().unwrap();
    assert!(addr.starts_with("10.75.") && addr.ends_with("/32"), "{res}");
    t.ok(&["check", "k8s-pod-network", &ns], &args);
    t.ok(&["status", "k8s-pod-network", &ns], &[]);
    t.ok(&["del", "k8s-pod-network", &ns], &args);
    assert!(!t.node.exec(&["ip", "-br", "link"]).contains("cali"));
}
