//! The per-case environment: namespaces, state directory, runtime, helpers.

use std::net::IpAddr;
use std::sync::Mutex;

use serde_json::{json, Value};
use tempfile::TempDir;
use testbed::Netns;

use super::{Allocation, CaseCtx, ConfOpts, Implementation};
use crate::conf::NetworkConfigList;
use crate::exec::Output;
use crate::runtime::{Runtime, RuntimeConf, VersionInfo};

/// Where the plugins in the node netns reach the case's etcd.
pub const NODE_ETCD: &str = "http://127.0.0.1:2379";
const NODE_ETCD_PORT: u16 = 2379;

/// Versions the suite tries, newest first.
pub const MODERN_VERSIONS: &[&str] = &["1.1.0", "1.0.0"];

pub struct Env<'a> {
    pub imp: &'a dyn Implementation,
    /// The "node": plugins run in this namespace.
    pub node: Netns,
    pub state: TempDir,
    /// The network name (unique per case).
    pub network: String,
    pub runtime: Runtime,
    /// VERSION of the main plugin and of the IPAM plugin.
    pub main_versions: VersionInfo,
    pub ipam_versions: VersionInfo,
    /// The newest version both plugins support (what most cases use).
    pub version: String,
    /// The case's own etcd (implementations that ask for one), reachable from
    /// the node netns at [`NODE_ETCD`] through a port forward.
    pub etcd: Option<(testbed::Etcd, testbed::NetnsForward)>,
    etcd_local: Option<String>,
    pods: Mutex<Vec<Netns>>,
}

impl<'a> Env<'a> {
    pub fn new(imp: &'a dyn Implementation) -> Result<Env<'a>, String> {
        let node = Netns::new("cfn");
        let state =
            tempfile::Builder::new().prefix("cni-conf-").tempdir().map_err(|e| format!("tempdir: {e}"))?;
        let launcher =
            vec!["nsenter".to_string(), format!("--net={}", node.path().display()), "--".to_string()];
        let runtime = Runtime::new(imp.cni_path())
            .with_cache_dir(state.path().join("cache"))
            .with_timeout(std::time::Duration::from_secs(60))
            .with_launcher(launcher);
        let main_versions = runtime.version_info(imp.main_plugin()).map_err(|e| e.to_string())?;
        let ipam_versions = runtime.version_info(imp.ipam_plugin()).map_err(|e| e.to_string())?;
        let version = MODERN_VERSIONS
            .iter()
            .find(|v| main_versions.supports(v) && ipam_versions.supports(v))
            .map(|v| v.to_string())
            .ok_or_else(|| format!("{} supports neither 1.0.0 nor 1.1.0", imp.main_plugin()))?;
        let network = testbed::unique("cnet");
        let etcd = match imp.needs_etcd() {
            false => None,
            true => {
                let e = testbed::Etcd::start();
                let ep = e.endpoint();
                let target = ep
                    .trim_start_matches("http://")
                    .parse()
                    .map_err(|err| format!("etcd endpoint {ep}: {err}"))?;
                let fw = testbed::NetnsForward::start(&node.path(), NODE_ETCD_PORT, target)?;
                Some((e, fw))
            }
        };
        let etcd_local = etcd.as_ref().map(|(e, _)| e.endpoint());
        Ok(Env {
            etcd,
            etcd_local,
            imp,
            node,
            state,
            network,
            runtime,
            main_versions,
            ipam_versions,
            version,
            pods: Mutex::new(Vec::new()),
        })
    }

    /// What the implementation's hooks get.
    pub fn ctx(&self) -> CaseCtx<'_> {
        CaseCtx {
            state: self.state.path(),
            node: self.node.name(),
            etcd: self.etcd.as_ref().map(|_| NODE_ETCD),
            etcd_local: self.etcd_local.as_deref(),
        }
    }

    /// Both plugins support `v`.
    pub fn supports(&self, v: &str) -> bool {
        self.main_versions.supports(v) && self.ipam_versions.supports(v)
    }

    /// A new pod namespace, kept until the case ends; returns its path.
    pub fn pod(&self) -> String {
        let ns = Netns::new("cfp");
        let path = ns.path().display().to_string();
        if let Ok(mut p) = self.pods.lock() {
            p.push(ns);
        }
        path
    }

    /// Delete a pod namespace early (DEL after the sandbox is gone).
    pub fn remove_pod(&self, path: &str) {
        if let Ok(mut p) = self.pods.lock() {
            p.retain(|ns| ns.path().display().to_string() != path);
        }
    }

    /// Run a command inside a pod namespace (by path).
    pub fn in_pod(&self, pod: &str, argv: &[&str]) -> Result<String, String> {
        let out = std::process::Command::new("nsenter")
            .arg(format!("--net={pod}"))
            .arg("--")
            .args(argv)
            .output()
            .map_err(|e| format!("nsenter: {e}"))?;
        if !out.status.success() {
            return Err(format!("{argv:?} in {pod}: {}", String::from_utf8_lossy(&out.stderr)));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Run a command inside the node namespace.
    pub fn in_node(&self, argv: &[&str]) -> Result<String, String> {
        self.node.try_exec(argv)
    }

    /// The implementation's plugin object for this case.
    pub fn plugin(&self, opts: &ConfOpts) -> Value {
        self.imp.plugin_conf(&self.ctx(), opts)
    }

    /// A conflist of `plugins` at `version`.
    pub fn list_of(&self, version: &str, plugins: Vec<Value>) -> NetworkConfigList {
        let v = json!({"cniVersion": version, "name": self.network, "plugins": plugins});
        match NetworkConfigList::from_value(&v) {
            Ok(l) => l,
            Err(e) => panic!("suite built an invalid conflist: {e}"),
        }
    }

    /// The default one-plugin list at the case version (IPv4).
    pub fn list(&self) -> NetworkConfigList {
        self.list_of(&self.version, vec![self.plugin(&ConfOpts::v4())])
    }

    /// The probe plugin object (records into `<state>/probe-<tag>/calls.jsonl`).
    pub fn probe(&self, tag: &str) -> Value {
        let dir = self.state.path().join(format!("probe-{tag}"));
        if let Err(e) = std::fs::create_dir_all(&dir) {
            panic!("mkdir {}: {e}", dir.display());
        }
        json!({"type": "cni-probe", "probeDir": dir})
    }

    /// The calls a probe recorded.
    pub fn probe_calls(&self, tag: &str) -> Vec<Value> {
        let p = self.state.path().join(format!("probe-{tag}/calls.jsonl"));
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Runtime args of a pod: `IgnoreUnknown=1` and the Kubernetes pod identity
    /// (namespace `conformance`, pod name = container ID), as kubelet sends them.
    pub fn rt(&self, pod: &str, container_id: &str) -> RuntimeConf {
        let mut rt = RuntimeConf::new(container_id, pod, "eth0");
        rt.args = vec![
            ("IgnoreUnknown".into(), "1".into()),
            ("K8S_POD_NAMESPACE".into(), "conformance".into()),
            ("K8S_POD_NAME".into(), container_id.into()),
            ("K8S_POD_INFRA_CONTAINER_ID".into(), container_id.into()),
        ];
        rt
    }

    /// Execute a plugin in the node namespace with exactly these CNI variables.
    pub fn raw(&self, plugin_type: &str, stdin: &[u8], vars: &[(&str, &str)]) -> Result<Output, String> {
        let path = self.runtime.find_plugin(plugin_type).map_err(|e| e.to_string())?;
        let env: Vec<(String, String)> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        self.runtime.exec.run(&path, stdin, &env).map_err(|e| e.to_string())
    }

    /// The full CNI environment of `command` for `rt` (what the runtime sends).
    pub fn vars(&self, command: &str, rt: &RuntimeConf) -> Vec<(String, String)> {
        self.runtime.env(command, rt)
    }

    /// Execute a plugin with a full runtime environment and a config value.
    pub fn raw_call(
        &self,
        plugin_type: &str,
        command: &str,
        conf: &Value,
        rt: &RuntimeConf,
    ) -> Result<Output, String> {
        let bytes = serde_json::to_vec(conf).map_err(|e| e.to_string())?;
        self.runtime.invoke(plugin_type, command, &bytes, rt).map_err(|e| e.to_string())
    }

    pub fn allocations(&self) -> Result<Vec<Allocation>, String> {
        self.imp.allocations(&self.ctx(), &self.network)
    }

    /// The IPs the IPAM holds for one container.
    pub fn ips_of(&self, container_id: &str) -> Result<Vec<IpAddr>, String> {
        let mut v: Vec<IpAddr> = self
            .allocations()?
            .into_iter()
            .filter(|a| a.container_id == container_id)
            .map(|a| a.ip)
            .collect();
        v.sort();
        Ok(v)
    }

    /// Names of the links in a pod namespace.
    pub fn pod_links(&self, pod: &str) -> Result<Vec<String>, String> {
        links(&self.in_pod(pod, &["ip", "-j", "link", "show"])?)
    }

    /// Names of the links in the node namespace.
    pub fn node_links(&self) -> Result<Vec<String>, String> {
        links(&self.in_node(&["ip", "-j", "link", "show"])?)
    }
}

fn links(json_out: &str) -> Result<Vec<String>, String> {
    let v: Value = serde_json::from_str(json_out).map_err(|e| format!("ip -j link: {e}"))?;
    Ok(v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l.get("ifname").and_then(Value::as_str).map(str::to_string))
        .collect())
}
