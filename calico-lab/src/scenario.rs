//! The demo scenario on the lab (README.md, *What the demos show*): two
//! nginx pods (one per node) added through our `calico` CNI plugin, the two
//! Services rendered and applied by `kube-proxy-rules sync` on each node,
//! then the checks and the narrated packet walk.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnetwork::{Ipv4Network, Ipv6Network};
use serde::{Deserialize, Serialize};

use testbed::{Daemon, Netns};

use super::host::{http_get, run_cmd, InNetns};
use super::{Lab, LabError};

/// `scenario` in lab.json.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScenarioConfig {
    /// The seed manifests (relative to lab.json), used unchanged except for
    /// the fields below, filled into a lab-local copy.
    pub manifest: PathBuf,
    #[serde(default = "default_ns")]
    pub namespace: String,
    /// The node whose IP replaces the manifests' externalIP.
    pub external_ip_node: String,
    pub service_cidr: Ipv4Network,
    /// Service name → clusterIP (the seed manifests leave it to the API server).
    pub cluster_ips: BTreeMap<String, Ipv4Addr>,
    /// Service name → nodePort (likewise).
    pub node_ports: BTreeMap<String, u16>,
    /// Dual-stack labs: the IPv6 service range ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_cidr6: Option<Ipv6Network>,
    /// ... and the Services made dual-stack (`RequireDualStack`, IPv4 then
    /// IPv6), with their IPv6 clusterIP.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub cluster_ips6: BTreeMap<String, Ipv6Addr>,
    pub pods: Vec<PodConfig>,
}

fn default_ns() -> String {
    "default".into()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PodConfig {
    pub name: String,
    pub node: String,
}

/// A pod: its netns, address, host-side veth and nginx. Dropping it stops
/// nginx and deletes the netns.
pub struct Pod {
    pub name: String,
    pub namespace: String,
    pub node: String,
    /// The CNI_CONTAINERID it was ADDed with (DEL needs the same).
    pub container_id: String,
    pub ip: Ipv4Addr,
    /// Its IPv6 address (dual-stack labs).
    pub ip6: Option<Ipv6Addr>,
    pub host_veth: String,
    // Drop order: nginx before its namespace.
    nginx: Option<Daemon>,
    pub(super) ns: Netns,
}

impl Pod {
    pub fn ns(&self) -> &Netns {
        &self.ns
    }
    pub(super) fn forget(&mut self) {
        if let Some(p) = self.nginx.as_mut() {
            p.forget();
        }
        self.ns.forget();
    }
}

/// An IPv6 route through the tor: via its global address, or via its
/// link-local one on the uplink (BIRD installs the link-local next hop a
/// directly connected eBGP peer sends along with the global one).
fn via_tor6(route: &str, tor_global: &str) -> bool {
    route.contains(&format!("via {tor_global} "))
        || (route.contains("via fe80:") && route.contains(" dev eth0 "))
}

/// What the checks measured.
#[derive(Debug, Default, Clone)]
pub struct ScenarioReport {
    pub lines: Vec<String>,
    /// Pod name → answers out of the load-balancing requests.
    pub distribution: BTreeMap<String, usize>,
}

impl ScenarioReport {
    fn ok(&mut self, s: String) {
        log::info!("check ok: {s}");
        self.lines.push(format!("ok   {s}"));
    }
}

const HTTP_TIMEOUT: Duration = Duration::from_secs(3);

impl Lab {
    pub fn scenario(&self) -> Result<&ScenarioConfig, LabError> {
        self.cfg.scenario.as_ref().ok_or_else(|| LabError::Check("lab config has no scenario".into()))
    }

    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }

    pub fn pod(&self, name: &str) -> Result<&Pod, LabError> {
        self.pods.iter().find(|p| p.name == name).ok_or_else(|| LabError::Check(format!("no pod {name}")))
    }

    fn node_ip(&self, node: &str) -> Result<Ipv4Addr, LabError> {
        self.cfg.node(node).map(|n| n.ip.ip()).ok_or_else(|| LabError::Check(format!("no node {node}")))
    }

    /// The CNI network config our `calico` plugin gets on `node`.
    fn cni_conf(&self, node: &str) -> serde_json::Value {
        let mut ipam = serde_json::json!({"type": "calico-ipam", "assign_ipv4": "true", "ipv4_pools": [self.cfg.pool.to_string()]});
        if let Some(p6) = self.cfg.pool6 {
            ipam["assign_ipv6"] = "true".into();
            ipam["ipv6_pools"] = serde_json::json!([p6.to_string()]);
        }
        serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "k8s-pod-network",
            "type": "calico",
            "nodename": node,
            "log_level": "info",
            "log_file_path": self.run_dir.join(node).join("cni.log"),
            "datastore_type": "etcdv3",
            "etcd_endpoints": self.cfg.etcd_endpoint(),
            // The node's IPAM hint and lock stay in the lab's run directory.
            "ipam_state_dir": self.run_dir.join(node),
            "mtu": 1500,
            "ipam": ipam,
        })
    }

    /// Create a pod netns and ADD it through `calico` inside `node`'s netns,
    /// then start nginx in it serving a page that names the pod.
    pub fn add_pod(&mut self, namespace: &str, name: &str, node: &str) -> Result<Ipv4Addr, LabError> {
        let host = format!("pod-{}", self.pods.len());
        let ns = Netns::create(&self.ns_name(&host))?;
        let dir = self.run_dir.join(&host);
        std::fs::create_dir_all(dir.join("www")).map_err(|e| LabError::io(&dir, e))?;
        let conf = serde_json::to_vec(&self.cni_conf(node)).unwrap_or_default();
        let container_id = format!("{}{}", self.id, host.replace('-', ""));
        let mut cmd = self.cni_command("ADD", node, &container_id, &ns, namespace, name)?;
        let out = testbed::run_stdout_with_input(&mut cmd, &conf)?;
        let result: serde_json::Value = serde_json::from_str(&out)
            .map_err(|e| LabError::Check(format!("calico ADD of {name}: bad result {out:?}: {e}")))?;
        let addrs: Vec<IpAddr> = result["ips"]
            .as_array()
            .map(|ips| {
                ips.iter()
                    .filter_map(|i| i["address"].as_str()?.split('/').next()?.parse::<IpAddr>().ok())
                    .collect()
            })
            .unwrap_or_default();
        let ip = addrs
            .iter()
            .find_map(|a| match a {
                IpAddr::V4(v4) => Some(*v4),
                IpAddr::V6(_) => None,
            })
            .ok_or_else(|| LabError::Check(format!("calico ADD of {name}: no IPv4 in {out}")))?;
        let ip6 = addrs.iter().find_map(|a| match a {
            IpAddr::V6(v6) => Some(*v6),
            IpAddr::V4(_) => None,
        });
        if self.cfg.dual_stack() && ip6.is_none() {
            return Err(LabError::Check(format!("calico ADD of {name}: no IPv6 in {out} (dual-stack lab)")));
        }
        let host_veth = result["interfaces"]
            .as_array()
            .and_then(|v| v.iter().find(|i| i.get("sandbox").is_none()))
            .and_then(|i| i["name"].as_str())
            .unwrap_or("")
            .to_string();

        // nginx: a private prefix, config, pid and logs in the pod's run dir.
        let page = match ip6 {
            Some(v6) => format!("{name} on {node} ({ip}, {v6})\n"),
            None => format!("{name} on {node} ({ip})\n"),
        };
        std::fs::write(dir.join("www/index.html"), &page).map_err(|e| LabError::io(&dir, e))?;
        let nginx_conf = dir.join("nginx.conf");
        let d = dir.display();
        let text = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
             events {{ worker_connections 128; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/tmp;\n  proxy_temp_path {d}/tmp;\n\
             \x20 fastcgi_temp_path {d}/tmp;\n  uwsgi_temp_path {d}/tmp;\n  scgi_temp_path {d}/tmp;\n\
             \x20 server {{\n    listen 80;\n{listen6}    root {d}/www;\n    location / {{ default_type text/plain; return 200 \"{page_esc}\"; }}\n\
             \x20   location = /index.html {{ }}\n\
             \x20   location = /peer {{ default_type text/plain; return 200 \"$remote_addr $server_addr\\n\"; }}\n  }}\n}}\n",
            page_esc = page.trim_end().replace('"', "'") + "\\n",
            listen6 = if ip6.is_some() { "    listen [::]:80;\n" } else { "" },
        );
        std::fs::write(&nginx_conf, text).map_err(|e| LabError::io(&nginx_conf, e))?;
        let mut cmd = ns.nsenter("nginx");
        cmd.arg("-p").arg(&dir).arg("-c").arg(&nginx_conf).arg("-e").arg(dir.join("error.log"));
        let nginx = Daemon::spawn(&format!("nginx-{name}"), cmd, &dir.join("nginx.out"))?;
        let addr = SocketAddr::new(IpAddr::V4(ip), 80);
        super::wait_until(&format!("nginx in {name}"), Duration::from_secs(10), || {
            ns.run(|| http_get(addr, "/", Duration::from_millis(500))).ok()
        })?;
        log::info!("pod {namespace}/{name} on {node}: {ip} (host veth {host_veth})");
        self.pods.push(Pod {
            name: name.into(),
            namespace: namespace.into(),
            node: node.into(),
            container_id,
            ip,
            ip6,
            host_veth,
            nginx: Some(nginx),
            ns,
        });
        self.save_state(Some(std::process::id()))?;
        Ok(ip)
    }

    /// `calico` invoked as a runtime does, from inside `node`'s namespace.
    fn cni_command(
        &self,
        command: &str,
        node: &str,
        container_id: &str,
        pod_ns: &Netns,
        namespace: &str,
        name: &str,
    ) -> Result<std::process::Command, LabError> {
        let plugin = self.bins.path("calico")?;
        let mut cmd = self.ns(node)?.nsenter(&plugin);
        cmd.env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", container_id)
            .env("CNI_NETNS", pod_ns.path())
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", &self.bins.dir)
            .env("CNI_ARGS", format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name}"));
        Ok(cmd)
    }

    /// Remove every pod the way the kubelet does: stop its workload, CNI DEL
    /// through `calico` (veth, routes, pod record, addresses released), then
    /// delete its namespace. Every pod is tried; the failures are returned.
    pub fn delete_pods(&mut self) -> Vec<LabError> {
        let mut errors = Vec::new();
        let mut pods = std::mem::take(&mut self.pods);
        for pod in pods.iter_mut().rev() {
            pod.nginx = None;
            let conf = serde_json::to_vec(&self.cni_conf(&pod.node)).unwrap_or_default();
            let del = self
                .cni_command("DEL", &pod.node, &pod.container_id, &pod.ns, &pod.namespace, &pod.name)
                .and_then(|mut cmd| Ok(testbed::run_stdout_with_input(&mut cmd, &conf)?));
            match del {
                Ok(_) => log::info!("pod {}/{} deleted through CNI", pod.namespace, pod.name),
                Err(e) => errors.push(LabError::Check(format!("CNI DEL of {}: {e}", pod.name))),
            }
        }
        drop(pods);
        errors
    }

    /// The first port of Service `name` in the seed manifests.
    fn service_port(&self, name: &str) -> Result<u16, LabError> {
        let src = self.cfg.base_dir.join(&self.scenario()?.manifest);
        let text = std::fs::read_to_string(&src).map_err(|e| LabError::io(&src, e))?;
        for de in serde_yaml::Deserializer::from_str(&text) {
            let doc = serde_yaml::Value::deserialize(de)
                .map_err(|e| LabError::Config { path: src.clone(), reason: e.to_string() })?;
            if doc["kind"].as_str() == Some("Service") && doc["metadata"]["name"].as_str() == Some(name) {
                if let Some(port) =
                    doc["spec"]["ports"][0]["port"].as_u64().and_then(|p| u16::try_from(p).ok())
                {
                    return Ok(port);
                }
            }
        }
        Err(LabError::Check(format!("no port of Service {name} in {}", src.display())))
    }

    /// The lab-local copy of the seed manifests: externalIP = the chosen
    /// node's IP, clusterIP and nodePort filled from the scenario config.
    pub fn write_manifest(&self) -> Result<PathBuf, LabError> {
        let sc = self.scenario()?;
        let src = self.cfg.base_dir.join(&sc.manifest);
        let text = std::fs::read_to_string(&src).map_err(|e| LabError::io(&src, e))?;
        let ext_ip = self.node_ip(&sc.external_ip_node)?;
        let mut docs = Vec::new();
        for de in serde_yaml::Deserializer::from_str(&text) {
            let mut doc = serde_yaml::Value::deserialize(de)
                .map_err(|e| LabError::Config { path: src.clone(), reason: e.to_string() })?;
            if doc.is_null() {
                continue;
            }
            if doc["kind"].as_str() == Some("Service") {
                let name = doc["metadata"]["name"].as_str().unwrap_or("").to_string();
                let spec = &mut doc["spec"];
                if spec.get("externalIPs").is_some() {
                    spec["externalIPs"] = serde_yaml::Value::Sequence(vec![ext_ip.to_string().into()]);
                }
                if let (Some(ip), serde_yaml::Value::Mapping(m)) = (sc.cluster_ips.get(&name), &mut *spec) {
                    m.insert("clusterIP".into(), ip.to_string().into());
                    // Dual-stack: both families, IPv4 first (the primary).
                    if let (Some(ip6), true) = (sc.cluster_ips6.get(&name), self.cfg.dual_stack()) {
                        m.insert("clusterIPs".into(), vec![ip.to_string(), ip6.to_string()].into());
                        m.insert("ipFamilies".into(), vec!["IPv4", "IPv6"].into());
                        m.insert("ipFamilyPolicy".into(), "RequireDualStack".into());
                    }
                }
                if let (Some(port), Some(serde_yaml::Value::Sequence(ports))) =
                    (sc.node_ports.get(&name), spec.get_mut("ports"))
                {
                    if let Some(serde_yaml::Value::Mapping(p)) = ports.first_mut() {
                        p.insert("nodePort".into(), u64::from(*port).into());
                    }
                }
            }
            docs.push(
                serde_yaml::to_string(&doc)
                    .map_err(|e| LabError::Check(format!("serialize manifest: {e}")))?,
            );
        }
        let out = self.run_dir.join("manifests.yaml");
        let body = docs.iter().map(|d| format!("---\n{d}")).collect::<String>();
        std::fs::write(&out, body).map_err(|e| LabError::io(&out, e))?;
        Ok(out)
    }

    /// `kube-proxy-rules sync` inside every node's netns.
    pub fn sync_services(&self, manifest: &Path) -> Result<(), LabError> {
        let sc = self.scenario()?;
        let krules = self.bins.path("kube-proxy-rules")?;
        for n in &self.cfg.nodes {
            // Dual-stack: each flag takes both families (kube-proxy's
            // comma lists), one proxier per family.
            let (mut node_ip, mut cluster_cidr, mut svc_range) =
                (n.ip.ip().to_string(), self.cfg.pool.to_string(), sc.service_cidr.to_string());
            if let (Some(ip6), Some(p6), Some(s6)) = (self.cfg.ip6_of(n), self.cfg.pool6, sc.service_cidr6) {
                node_ip = format!("{node_ip},{ip6}");
                cluster_cidr = format!("{cluster_cidr},{p6}");
                svc_range = format!("{svc_range},{s6}");
            }
            let mut cmd = self.ns(&n.name)?.nsenter(&krules);
            cmd.arg("sync")
                .args(["--hostname-override", &n.name])
                .args(["--node-ip", &node_ip])
                .args(["--cluster-cidr", &cluster_cidr])
                .args(["--service-cluster-ip-range", &svc_range])
                .args(["--datastore-type", "etcdv3", "--etcd-endpoints", &self.cfg.etcd_endpoint()])
                // The nodes share this machine: each its own conntrack state.
                .arg("--state-dir")
                .arg(self.run_dir.join(&n.name).join("kube-proxy-rules"))
                .arg(manifest);
            run_cmd(&mut cmd)?;
        }
        Ok(())
    }

    /// Pods, then services: the demo's deployment on the lab.
    pub fn deploy_scenario(&mut self) -> Result<PathBuf, LabError> {
        let sc = self.scenario()?.clone();
        for p in &sc.pods {
            self.add_pod(&sc.namespace, &p.name, &p.node)?;
        }
        // Each node announces the block its pod came from.
        for p in &self.pods {
            let block = Ipv4Network::new(p.ip, self.cfg.block_size)
                .map(|b| Ipv4Network::new(b.network(), self.cfg.block_size).unwrap_or(b))
                .map_err(|e| LabError::Check(e.to_string()))?;
            self.wait_tor_route(&block.to_string(), Duration::from_secs(15))?;
            // ... and every other node installed it (from the tor, by BGP).
            for n in self.cfg.nodes.iter().filter(|n| n.name != p.node) {
                let ns = self.ns(&n.name)?;
                let want = format!("{block} via {}", n.tor_ip.ip());
                super::wait_until(&format!("{} route to {block}", n.name), Duration::from_secs(15), || {
                    let r = ns.output(&["ip", "route", "show", &block.to_string(), "proto", "bird"]).ok()?;
                    r.contains(&want).then_some(())
                })?;
            }
            // The IPv6 block too, over the IPv6 sessions.
            let Some(ip6) = p.ip6 else { continue };
            let block6 = Ipv6Network::new(ip6, self.cfg.block_size6)
                .and_then(|b| Ipv6Network::new(b.network(), self.cfg.block_size6))
                .map_err(|e| LabError::Check(e.to_string()))?;
            self.wait_tor_route(&block6.to_string(), Duration::from_secs(15))?;
            for n in self.cfg.nodes.iter().filter(|n| n.name != p.node) {
                let ns = self.ns(&n.name)?;
                let gw6 = n.tor_ip6.map(|g| g.ip().to_string()).unwrap_or_default();
                super::wait_until(&format!("{} route to {block6}", n.name), Duration::from_secs(15), || {
                    let r = ns
                        .output(&["ip", "-6", "route", "show", &block6.to_string(), "proto", "bird"])
                        .ok()?;
                    via_tor6(&r, &gw6).then_some(())
                })
                .map_err(|e| {
                    let routes = ns.output(&["ip", "-6", "route"]).unwrap_or_default();
                    let bird = self.birdc(&n.name, &["show", "route", "all"]).unwrap_or_default();
                    LabError::Check(format!(
                        "{e}\n{} ip -6 route:\n{routes}\nbirdc show route all:\n{bird}",
                        n.name
                    ))
                })?;
            }
        }
        let manifest = self.write_manifest()?;
        self.sync_services(&manifest)?;
        Ok(manifest)
    }

    /// HTTP GET from inside a lab host or pod namespace.
    pub fn get_from(&self, ns: &Netns, ip: impl Into<IpAddr>, port: u16) -> Result<String, LabError> {
        let addr = SocketAddr::new(ip.into(), port);
        ns.run(|| http_get(addr, "/", HTTP_TIMEOUT))
    }

    /// The demo's checks (README.md, *What the demos show*). Fails on the
    /// first that does not hold.
    pub fn check_scenario(&self) -> Result<ScenarioReport, LabError> {
        let sc = self.scenario()?;
        let mut r = ScenarioReport::default();
        let client = self.ns("client")?;
        let ext = self.node_ip(&sc.external_ip_node)?;
        let svc1 = "nginx-demo-1";
        let svc2 = "nginx-demo-2";
        let port1 = 8088;
        let node_port =
            *sc.node_ports.get(svc2).ok_or_else(|| LabError::Check(format!("no nodePort for {svc2}")))?;

        let body = self.get_from(client, ext, port1)?;
        r.ok(format!("client -> {ext}:{port1} (externalIP of {svc1}): {}", body.trim()));
        for n in &self.cfg.nodes {
            let body = self.get_from(client, n.ip.ip(), node_port)?;
            r.ok(format!(
                "client -> {}:{node_port} (NodePort of {svc2} on {}): {}",
                n.ip.ip(),
                n.name,
                body.trim()
            ));
        }

        for _ in 0..100 {
            let body = self.get_from(client, ext, port1)?;
            let pod = self.pods.iter().find(|p| body.starts_with(&format!("{} ", p.name)));
            *r.distribution
                .entry(pod.map(|p| p.name.clone()).unwrap_or_else(|| body.clone()))
                .or_default() += 1;
        }
        if r.distribution.len() < self.pods.len()
            || self.pods.iter().any(|p| !r.distribution.contains_key(&p.name))
        {
            return Err(LabError::Check(format!(
                "100 requests did not reach every pod: {:?}",
                r.distribution
            )));
        }
        r.ok(format!("100 requests to {ext}:{port1}: {:?}", r.distribution));

        // A pod on another node than the external IP's is reached via the tor,
        // which learnt that node's block by BGP.
        if let Some(remote) = self.pods.iter().find(|p| p.node != sc.external_ip_node) {
            let tor = self.birdc("tor", &["show", "route", "for", &remote.ip.to_string(), "all"])?;
            let remote_ip = self.node_ip(&remote.node)?;
            if !tor.contains("BGP") || !tor.contains(&remote_ip.to_string()) {
                return Err(LabError::Check(format!(
                    "tor has no BGP route to {} via {remote_ip}:\n{tor}",
                    remote.ip
                )));
            }
            let entry = self.ns(&sc.external_ip_node)?;
            // Not just the default route: the BGP route (proto bird) to the block.
            let route =
                entry.output(&["ip", "route", "show", "match", &remote.ip.to_string(), "proto", "bird"])?;
            let gw =
                self.cfg.node(&sc.external_ip_node).map(|n| n.tor_ip.ip().to_string()).unwrap_or_default();
            if !route.contains(&format!("/{} via {gw}", self.cfg.block_size)) {
                return Err(LabError::Check(format!(
                    "{} routes {} not via the tor {gw}: {route}",
                    sc.external_ip_node, remote.ip
                )));
            }
            let body = self.get_from(entry, remote.ip, 80)?;
            r.ok(format!(
                "{} -> pod {} ({}) via tor {gw}; tor learnt it by BGP from {remote_ip}: {}",
                sc.external_ip_node,
                remote.name,
                remote.ip,
                body.trim()
            ));
        }

        let cluster_ip =
            *sc.cluster_ips.get(svc1).ok_or_else(|| LabError::Check(format!("no clusterIP for {svc1}")))?;
        for p in &self.pods {
            let body = self.get_from(&p.ns, cluster_ip, port1)?;
            r.ok(format!("pod {} -> {cluster_ip}:{port1} (clusterIP): {}", p.name, body.trim()));
        }
        if self.cfg.dual_stack() {
            self.check_ipv6(&mut r)?;
        }
        Ok(r)
    }

    /// Dual-stack checks: a pod on another node than the entry node is
    /// reached over IPv6 from that node and from the client, through the
    /// tor, which learnt the pod's IPv6 block over its IPv6 session with
    /// the pod's node; the dual-stack Service answers on both families.
    fn check_ipv6(&self, r: &mut ScenarioReport) -> Result<(), LabError> {
        let sc = self.scenario()?;
        let client = self.ns("client")?;
        let entry =
            self.cfg.node(&sc.external_ip_node).ok_or_else(|| LabError::Check("no entry node".into()))?;
        let remote = self
            .pods
            .iter()
            .find(|p| p.node != entry.name)
            .ok_or_else(|| LabError::Check("no pod on another node than the entry node".into()))?;
        let ip6 =
            remote.ip6.ok_or_else(|| LabError::Check(format!("pod {} has no IPv6 address", remote.name)))?;
        let remote_node = self.cfg.node(&remote.node).ok_or_else(|| LabError::Check("no pod node".into()))?;
        let remote_node6 = self.cfg.ip6_of(remote_node).map(|a| a.to_string()).unwrap_or_default();
        let tor = self.birdc("tor", &["show", "route", "for", &ip6.to_string(), "all"])?;
        if !tor.contains("BGP") || !tor.contains(&remote_node6) {
            return Err(LabError::Check(format!(
                "tor has no IPv6 BGP route to {ip6} via {remote_node6}:\n{tor}"
            )));
        }
        let ns = self.ns(&entry.name)?;
        let route = ns.output(&["ip", "-6", "route", "show", "match", &ip6.to_string(), "proto", "bird"])?;
        let gw6 = entry.tor_ip6.map(|g| g.ip().to_string()).unwrap_or_default();
        if !route.contains(&format!("/{} via ", self.cfg.block_size6)) || !via_tor6(&route, &gw6) {
            return Err(LabError::Check(format!(
                "{} routes {ip6} not via the tor {gw6}: {route}",
                entry.name
            )));
        }
        let body = self.get_from(ns, ip6, 80)?;
        r.ok(format!(
            "{} -> pod {} [{ip6}] over IPv6 via tor {gw6}; tor learnt it by BGP from {remote_node6}: {}",
            entry.name,
            remote.name,
            body.trim()
        ));
        let body = self.get_from(client, ip6, 80)?;
        r.ok(format!("client -> pod {} [{ip6}] over IPv6 through the tor: {}", remote.name, body.trim()));

        // The dual-stack Service (NodePort) on both families of every node.
        for (svc, cip6) in &sc.cluster_ips6 {
            let Some(node_port) = sc.node_ports.get(svc) else { continue };
            for n in &self.cfg.nodes {
                let Some(n6) = self.cfg.ip6_of(n) else { continue };
                let v4 = self.get_from(client, n.ip.ip(), *node_port)?;
                let v6 = self.get_from(client, n6, *node_port)?;
                r.ok(format!(
                    "client -> dual-stack {svc} NodePort on {}: {}:{node_port} -> {} | [{n6}]:{node_port} -> {}",
                    n.name,
                    n.ip.ip(),
                    v4.trim(),
                    v6.trim()
                ));
            }
            let port = self.service_port(svc)?;
            for p in &self.pods {
                let body = self.get_from(&p.ns, *cip6, port)?;
                r.ok(format!("pod {} -> [{cip6}]:{port} (IPv6 clusterIP of {svc}): {}", p.name, body.trim()));
            }
        }
        Ok(())
    }
}
