//! Shared fixtures of the plugin's integration tests: a "node" network
//! namespace the built `calico` binary runs in (so the host veth lands there,
//! never in the machine's namespace), pod namespaces, a temporary file
//! datastore, and helpers to read the kernel and datastore state back.

#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use calico_store::file::FileStore;
use calico_store::Datastore;
use serde_json::{json, Value};
use testbed::Netns;

pub const NETWORK: &str = "k8s-pod-network";

/// The `calico` binary of this package and the directory holding it and
/// `calico-ipam` (built by `cargo build -p cni-calico-rs -p ipam-block --bins`).
pub fn plugin_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_calico"))
}

pub fn cni_path() -> String {
    let ipam = testbed::target_bin("calico-ipam");
    let dir = ipam.parent().map(Path::to_path_buf).unwrap_or_default();
    // host-local etc. for tests that use a reference IPAM plugin.
    format!("{}:/usr/lib/cni", dir.display())
}

pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("stdout not JSON ({e}): {self:?}"))
    }
    pub fn ok(&self) -> &Self {
        assert_eq!(self.code, 0, "{self:?}");
        self
    }
    pub fn silent_ok(&self) {
        assert_eq!((self.code, self.stdout.as_str()), (0, ""), "{self:?}");
    }
    pub fn err_code(&self) -> u64 {
        assert_ne!(self.code, 0, "expected a failure: {self:?}");
        self.json()["code"].as_u64().unwrap_or_else(|| panic!("no code: {self:?}"))
    }
}

impl std::fmt::Debug for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {} stdout {:?} stderr {:?}", self.code, self.stdout, self.stderr)
    }
}

/// One CNI invocation's environment.
#[derive(Clone, Debug)]
pub struct Call<'a> {
    pub cmd: &'a str,
    pub cid: &'a str,
    pub netns: Option<PathBuf>,
    pub ifname: &'a str,
    pub args: &'a str,
}

/// A node: its namespace, a temporary datastore and log file.
pub struct Node {
    pub ns: Netns,
    pub dir: tempfile::TempDir,
    pub name: String,
}

impl Node {
    pub fn new() -> Node {
        let ns = Netns::new("cno");
        // Proxy ARP for 169.254.1.1 needs the node's default route out of another interface.
        ns.add_uplink();
        // IPv6 forwards only with the global switch on (IPv4 honours the
        // per-interface `forwarding` the plugin sets). On a Calico node Felix
        // turns it on; the plugin does not touch node-wide settings.
        ns.exec(&["sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=1"]);
        Node { ns, dir: tempfile::tempdir().unwrap(), name: testbed::unique("node-") }
    }

    pub fn store_path(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("cni.log")
    }

    /// A Calico plugin config (file datastore, calico-ipam with one pool).
    pub fn conf(&self, version: &str, pool: &str) -> Value {
        json!({
            "cniVersion": version,
            "name": NETWORK,
            "type": "calico",
            "log_level": "debug",
            "log_file_path": self.log_path(),
            "datastore_type": "file",
            "datastore_path": self.store_path(),
            "nodename": self.name,
            "mtu": 1450,
            "policy": {"type": "k8s"},
            "an_unknown_key": {"kept": [1, 2]},
            "ipam": {"type": "calico-ipam", "assign_ipv4": "true", "ipv4_pools": [pool]},
            "container_settings": {"allow_ip_forwarding": false}
        })
    }

    /// Run the built plugin inside the node's namespace.
    pub fn run(&self, call: &Call<'_>, conf: &Value) -> Out {
        self.run_raw(call, conf.to_string().as_bytes(), &[])
    }

    pub fn run_raw(&self, call: &Call<'_>, stdin: &[u8], extra_env: &[(&str, &str)]) -> Out {
        let mut c = self.ns.nsenter(plugin_bin().to_str().unwrap());
        c.env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_COMMAND", call.cmd)
            .env("CNI_CONTAINERID", call.cid)
            .env("CNI_IFNAME", call.ifname)
            .env("CNI_ARGS", call.args)
            .env("CNI_PATH", cni_path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(ns) = &call.netns {
            c.env("CNI_NETNS", ns);
        }
        for (k, v) in extra_env {
            c.env(k, v);
        }
        let mut child = c.spawn().unwrap();
        // A plugin that rejects its environment exits before reading stdin.
        let _ = child.stdin.take().unwrap().write_all(stdin);
        let out = child.wait_with_output().unwrap();
        Out {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    pub fn store(&self) -> FileStore {
        FileStore::open(self.store_path()).unwrap()
    }

    /// A datastore document, decoded.
    pub fn doc(&self, key: &str) -> Option<Value> {
        self.store().get(key).unwrap().map(|kv| serde_json::from_slice(&kv.value).unwrap())
    }

    /// Every key under a prefix.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        if !self.store_path().exists() {
            return Vec::new();
        }
        self.store().list(prefix).unwrap().into_iter().map(|kv| kv.key).collect()
    }

    pub fn handle(&self, cid: &str) -> Option<Value> {
        self.doc(&format!("/calico/ipam/v2/handle/{NETWORK}.{cid}"))
    }

    /// How many addresses are allocated in all blocks.
    pub fn allocated(&self) -> usize {
        if !self.store_path().exists() {
            return 0;
        }
        self.store()
            .list("/calico/ipam/v2/assignment/")
            .unwrap()
            .iter()
            .map(|kv| {
                let b: Value = serde_json::from_slice(&kv.value).unwrap();
                b["allocations"].as_array().unwrap().iter().filter(|a| !a.is_null()).count()
            })
            .sum()
    }

    pub fn sysctl(&self, key: &str) -> String {
        self.ns.exec(&["cat", &format!("/proc/sys/{key}")]).trim().to_string()
    }

    /// Names of the links in the node namespace.
    pub fn links(&self) -> Vec<String> {
        links(&self.ns)
    }
}

/// Names of the links in a namespace.
pub fn links(ns: &Netns) -> Vec<String> {
    ip_json(ns, &["link", "show"]).iter().map(|l| l["ifname"].as_str().unwrap().to_string()).collect()
}

/// `ip -j <args>` in a namespace.
pub fn ip_json(ns: &Netns, args: &[&str]) -> Vec<Value> {
    let mut argv = vec!["ip", "-j"];
    argv.extend_from_slice(args);
    let out = ns.exec(&argv);
    if out.trim().is_empty() {
        return Vec::new();
    }
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("ip -j {args:?}: {e}: {out}"))
}

/// `ip -j route show <args>` rendered as `dst[ via gw] dev X[ scope S]` lines.
pub fn routes(ns: &Netns, v6: bool) -> Vec<String> {
    let fam = if v6 { "-6" } else { "-4" };
    ip_json(ns, &[fam, "route", "show"])
        .iter()
        .map(|r| {
            let mut s = r["dst"].as_str().unwrap().to_string();
            if let Some(gw) = r["gateway"].as_str() {
                s += &format!(" via {gw}");
            }
            s += &format!(" dev {}", r["dev"].as_str().unwrap_or("?"));
            if let Some(scope) = r["scope"].as_str() {
                s += &format!(" scope {scope}");
            }
            s
        })
        .collect()
}

/// The global addresses (`ip/len`) of a link in a namespace (no fe80::).
pub fn addrs(ns: &Netns, dev: &str) -> Vec<String> {
    ip_json(ns, &["addr", "show", "dev", dev, "scope", "global"])
        .iter()
        .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
        .filter_map(|a| Some(format!("{}/{}", a["local"].as_str()?, a["prefixlen"])))
        .collect()
}

/// One link's `ip -j link show` object.
pub fn link(ns: &Netns, dev: &str) -> Value {
    ip_json(ns, &["link", "show", "dev", dev]).pop().unwrap_or(Value::Null)
}

pub const K8S_ARGS: &str =
    "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns1;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=c1";

/// `cali` + sha1("ns1.web-0")[:11], computed independently of the plugin.
pub fn expected_veth(namespace: &str, pod: &str) -> String {
    let out = testbed::sh(&format!("printf '%s' '{namespace}.{pod}' | sha1sum"));
    format!("cali{}", &out[..11])
}

/// A real etcd running *inside* a namespace ([`testbed::Etcd::start_in`]:
/// the plugin runs in the node's namespace, whose loopback is its own, so the
/// machine's 127.0.0.1 is out of reach), with the datastore reachable from
/// there. Stopped on drop (and by the namespace's drop).
pub struct NsEtcd<'a> {
    ns: &'a Netns,
    etcd: testbed::Etcd,
}

impl<'a> NsEtcd<'a> {
    pub const ENDPOINT: &'static str = "http://127.0.0.1:2379";

    pub fn start(ns: &'a Netns) -> NsEtcd<'a> {
        let etcd = testbed::Etcd::start_in(ns);
        assert_eq!(etcd.endpoint(), Self::ENDPOINT);
        NsEtcd { ns, etcd }
    }

    pub fn stop(&mut self) {
        self.etcd.stop();
    }

    pub fn restart(&mut self) {
        self.etcd.restart();
    }

    /// Run `f` against the datastore from a thread inside the namespace.
    pub fn with_store<T: Send>(&self, f: impl FnOnce(&dyn Datastore) -> T + Send) -> T {
        let ns = netlink_util::Netns::open(self.ns.path()).unwrap();
        ns.run_thread(|| {
            let cfg = calico_store::DatastoreConfig {
                datastore_type: Some("etcdv3".into()),
                etcd_endpoints: Some(Self::ENDPOINT.into()),
                ..Default::default()
            };
            let store = calico_store::open(&cfg).unwrap();
            Ok(f(&*store))
        })
        .unwrap()
    }
}

/// Long enough for any honest invocation on a loaded machine; a delegation
/// loop runs until killed.
pub const WATCHDOG: std::time::Duration = std::time::Duration::from_secs(30);

/// Run `program` in the node's namespace with exactly `env` (plus PATH), in
/// a process group of its own; if it is still running after [`WATCHDOG`],
/// kill the group (a delegation loop is a chain of processes, each waiting
/// for the next) and report it.
pub fn run_bounded<K: AsRef<std::ffi::OsStr>, V: AsRef<std::ffi::OsStr>>(
    node: &Node,
    program: &Path,
    env: &[(K, V)],
    stdin: &[u8],
) -> Result<Out, String> {
    use std::os::unix::process::CommandExt;
    let mut c = node.ns.nsenter(program.to_str().unwrap());
    c.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = c.spawn().map_err(|e| format!("spawn: {e}"))?;
    // A plugin that rejects its environment exits before reading stdin.
    if let Some(mut pipe) = child.stdin.take() {
        let _ = pipe.write_all(stdin);
    }
    let start = std::time::Instant::now();
    loop {
        if child.try_wait().map_err(|e| e.to_string())?.is_some() {
            break;
        }
        if start.elapsed() > WATCHDOG {
            let _ = testbed::kill_process_group(child.id(), testbed::Signal::SIGKILL);
            let _ = child.wait();
            return Err(format!(
                "{} did not finish within {WATCHDOG:?}: a delegation loop?",
                program.display()
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    Ok(Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}
