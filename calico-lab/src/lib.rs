//! # calico-lab: the whole system on one machine, in network namespaces
//!
//! Several "hosts" on one machine, each a network namespace:
//!
//! ```text
//!                 client (192.168.40.2)
//!                    |
//!   node-a ------- tor (BIRD, AS 65000) ------- node-b
//! (agent+BIRD)       |                        (agent+BIRD)
//!                  etcd (real etcd)
//! ```
//!
//! Every host has one veth (`eth0`) to the `tor` namespace, its own /24 and a
//! default route via the tor: the tor is a routed top-of-rack, so a packet
//! from node-a to a pod on node-b goes through the tor, which knows the pod's
//! block only because node-b announced it by BGP. Nodes peer with the tor
//! (eBGP, one AS per node as in Calico's per-rack AS pattern: with a shared
//! AS, each node would reject the other's routes as an AS-path loop).
//!
//! Dual-stack when `pool6` is set (`lab.json` is): IPv6 unique-local
//! addresses on every link, IPv6 pods, IPv6 BGP sessions to the tor.
//! `lab-rr.json` is the route-reflector topology (three nodes of one AS,
//! no mesh, one reflector: [`Lab::set_route_reflector`]); `tor_password` and
//! `bgp_secrets` put TCP-MD5 on a node's tor sessions ([`Lab::write_secrets`]).
//!
//! Owns (a test and demo tool, never shipped: `publish = false`):
//! * [`Lab`]: the topology from `lab.json` ([`LabConfig`]), etcd, the tor's
//!   BIRD, each node's BIRD and `calico-node-agent`; torn down on drop, or
//!   detached and removed later (`calico-lab up` / `down`, [`LabState`]);
//! * the demo scenario (README.md, *What the demos show*): pods through
//!   `calico`, Services through `kube-proxy-rules sync`, the checks
//!   ([`ScenarioReport`]) and the narrated walk of one request;
//! * [`InNetns`]: netlink, sockets and commands inside a lab namespace;
//! * [`Lab::measure_claims`]: block claim → route at the tor, timed by
//!   kernel route events (`calico-lab bench-claims`, a `make bench` step);
//! * [`Lab::check_nat_outgoing`]: the pools' natOutgoing seen from the
//!   client (node's address when on, the pod's when off; pod-to-pod and
//!   pod-to-Service keep the pod's), each pod's nginx answering `/peer`
//!   with the address it sees.
//!
//! The namespaces are `testbed`'s [`testbed::Netns`] guards and the daemons
//! `testbed`'s [`testbed::Daemon`]s (own process group, stopped group and
//! all): the lab has no namespace or process guard, and no `unsafe`, of its
//! own.
//!
//! May call: the workspace binaries ([`Bins`]: `calico-node-agent`, `calico`
//! (which runs `calico-ipam`), `kube-proxy-rules`); `etcd`, `bird`/`birdc`,
//! `nginx`, `iptables`, `ip` (also `ip monitor`) and `nsenter` inside its namespaces;
//! `netlink-util` there; `calico-store` against its own etcd; the agent's
//! default AS number (`calico-node-agent`). The `calico-lab` binary's
//! command line and logger are `tool-cli`'s (clap, the tools' one logger).
//!
//! Never creates anything in the machine's root namespace (a veth is created
//! in its host's namespace with the peer directly in the tor's), uses only
//! private addresses, and never removes a lab it does not own: everything is
//! named `<prefix><id>-<host>` with a per-instance id under a per-instance
//! run directory, and `calico-lab down --all` spares labs whose owner is alive.

mod host;
mod latency;
mod narrate;
mod nat_check;
mod scenario;
mod tor;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use serde::{Deserialize, Serialize};

pub use host::{http_get, run_cmd, wait_until, InNetns};
pub use latency::{ClaimTiming, Percentiles};
pub use scenario::{Pod, ScenarioConfig, ScenarioReport};
pub use testbed::{Daemon, Netns};

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("lab config {path}: {reason}")]
    Config { path: PathBuf, reason: String },
    #[error("I/O on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A command or daemon that could not be started, or exited non-zero.
    #[error(transparent)]
    Exec(#[from] testbed::Error),
    #[error("netlink: {0}")]
    Netlink(#[from] netlink_util::Error),
    #[error("datastore: {0}")]
    Store(#[from] calico_store::StoreError),
    #[error("HTTP to {addr}: {reason}")]
    Http { addr: SocketAddr, reason: String },
    #[error("timed out waiting for {0}")]
    Timeout(String),
    #[error("{0}")]
    Check(String),
}

impl LabError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        LabError::Io { path: path.to_path_buf(), source }
    }
}

/// One lab host's link to the tor.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostConfig {
    #[serde(default)]
    pub name: String,
    /// The host's address on its link (`eth0`).
    pub ip: Ipv4Network,
    /// The tor's address on the same link (the host's default gateway).
    pub tor_ip: Ipv4Network,
    #[serde(default)]
    pub as_number: Option<u32>,
    /// The host's IPv6 address on its link (dual-stack labs: every node and
    /// the client), a unique-local `fd00::/8` address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip6: Option<Ipv6Network>,
    /// The tor's IPv6 address on the same link (the host's IPv6 gateway).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tor_ip6: Option<Ipv6Network>,
    /// A node's Node `spec.bgp.routeReflectorClusterID`, written by the lab
    /// once the node has registered (as `calicoctl patch node` would): the
    /// node is a BGP route reflector (`lab-rr.json`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_reflector_cluster_id: Option<String>,
    /// The TCP-MD5 password the tor requires on this node's sessions (the
    /// node's side comes from a BGPPeer `password` and `bgp_secrets`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tor_password: Option<String>,
    /// A node's labels (its agent writes them into its Node resource, where
    /// BGPPeer `nodeSelector`s match them).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TorConfig {
    pub as_number: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EtcdConfig {
    pub ip: Ipv4Network,
    pub tor_ip: Ipv4Network,
    pub client_port: u16,
    pub peer_port: u16,
}

/// A lab's description, `lab.json` (the demo and the tests use this crate's).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabConfig {
    /// Namespaces are `<name_prefix><id>-<host>`.
    pub name_prefix: String,
    pub tor: TorConfig,
    pub pool: Ipv4Network,
    #[serde(default = "default_block_size")]
    pub block_size: u8,
    /// The IPv6 pool: the lab is dual-stack (IPv6 on every link, pods with
    /// both families, IPv6 BGP sessions to the tor) when it is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool6: Option<Ipv6Network>,
    #[serde(default = "default_block_size6")]
    pub block_size6: u8,
    pub nodes: Vec<HostConfig>,
    pub etcd: EtcdConfig,
    pub client: HostConfig,
    /// Calico's node-to-node mesh between the nodes, in addition to each
    /// node's tor session (`false`: a ToR-only design, README.md *What the
    /// demos show*).
    #[serde(default)]
    pub node_to_node_mesh: bool,
    /// `true` (default): each agent's config names its tor as a peer.
    /// `false`: the agents' configs name no peer; BGPPeer resources in the
    /// datastore must (Calico's way), and until one does the tor's sessions
    /// stay down.
    #[serde(default = "default_true")]
    pub tor_peer_in_agent_config: bool,
    /// BGPPeer password secrets (`{"<secret>": {"<key>": "<password>"}}`):
    /// written to `<run dir>/bgp-secrets.json` and named in every agent's
    /// config (`bgp_secrets`), the etcd-mode stand-in for Kubernetes Secrets.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub bgp_secrets: BTreeMap<String, BTreeMap<String, String>>,
    #[serde(default)]
    pub scenario: Option<ScenarioConfig>,
    /// Where relative paths (the manifest) are resolved; the config's directory.
    #[serde(skip)]
    pub base_dir: PathBuf,
}

fn default_true() -> bool {
    true
}

fn default_block_size() -> u8 {
    26
}

fn default_block_size6() -> u8 {
    122
}

impl LabConfig {
    pub fn load(path: &Path) -> Result<LabConfig, LabError> {
        let bad = |reason: String| LabError::Config { path: path.to_path_buf(), reason };
        let text = std::fs::read(path).map_err(|e| LabError::io(path, e))?;
        let mut cfg: LabConfig = serde_json::from_slice(&text).map_err(|e| bad(e.to_string()))?;
        cfg.base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        cfg.validate().map_err(bad)?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), String> {
        if self.nodes.is_empty() {
            return Err("at least one node is needed".into());
        }
        let mut names = std::collections::BTreeSet::new();
        for h in self.hosts() {
            if h.name.is_empty()
                || h.name.len() > 12
                || !h.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            {
                return Err(format!("host name {:?}: 1-12 chars of [a-z0-9-]", h.name));
            }
            if !names.insert(h.name.clone()) {
                return Err(format!("host name {} used twice", h.name));
            }
            if h.ip.network() != h.tor_ip.network()
                || h.ip.prefix() != h.tor_ip.prefix()
                || h.ip.ip() == h.tor_ip.ip()
            {
                return Err(format!(
                    "{}: ip {} and tor_ip {} must be two addresses of one subnet",
                    h.name, h.ip, h.tor_ip
                ));
            }
            if !is_private(h.ip.ip()) {
                return Err(format!("{}: {} is not a private address", h.name, h.ip));
            }
            match (h.ip6, h.tor_ip6) {
                (None, None) => {}
                (Some(ip6), Some(tor6)) => {
                    if ip6.network() != tor6.network()
                        || ip6.prefix() != tor6.prefix()
                        || ip6.ip() == tor6.ip()
                    {
                        return Err(format!(
                            "{}: ip6 {ip6} and tor_ip6 {tor6} must be two addresses of one subnet",
                            h.name
                        ));
                    }
                    if !is_ula(ip6.ip()) {
                        return Err(format!("{}: {ip6} is not a unique-local (fd00::/8) address", h.name));
                    }
                }
                _ => return Err(format!("{}: ip6 and tor_ip6 go together", h.name)),
            }
            let is_etcd = h.name == "etcd";
            if self.pool6.is_some() && h.ip6.is_none() && !is_etcd {
                return Err(format!(
                    "{}: a dual-stack lab (pool6) needs ip6/tor_ip6 on every node and the client",
                    h.name
                ));
            }
        }
        if let Some(p6) = self.pool6 {
            if !is_ula(p6.ip()) || self.block_size6 < p6.prefix() || !(116..=128).contains(&self.block_size6)
            {
                return Err(format!(
                    "pool6 {p6} / block size {} invalid (unique-local, block within pool, /116-/128)",
                    self.block_size6
                ));
            }
        }
        if !is_private(self.pool.ip()) || self.block_size < self.pool.prefix() || self.block_size > 32 {
            return Err(format!(
                "pool {} / block size {} invalid (private, block within pool)",
                self.pool, self.block_size
            ));
        }
        Ok(())
    }

    /// Every host except the tor: nodes, etcd, client.
    pub fn hosts(&self) -> Vec<HostConfig> {
        let mut v = self.nodes.clone();
        v.push(HostConfig {
            name: "etcd".into(),
            ip: self.etcd.ip,
            tor_ip: self.etcd.tor_ip,
            as_number: None,
            ip6: None,
            tor_ip6: None,
            route_reflector_cluster_id: None,
            tor_password: None,
            labels: BTreeMap::new(),
        });
        let mut c = self.client.clone();
        if c.name.is_empty() {
            c.name = "client".into();
        }
        v.push(c);
        v
    }

    pub fn node(&self, name: &str) -> Option<&HostConfig> {
        self.nodes.iter().find(|n| n.name == name)
    }

    pub fn etcd_endpoint(&self) -> String {
        format!("http://{}:{}", self.etcd.ip.ip(), self.etcd.client_port)
    }

    pub fn node_as(&self, n: &HostConfig) -> u32 {
        n.as_number.unwrap_or(calico_node_agent::config::DEFAULT_AS_NUMBER)
    }
}

fn is_private(ip: Ipv4Addr) -> bool {
    ip.is_private()
}

/// A unique-local address of the `fd00::/8` half (locally assigned).
fn is_ula(ip: std::net::Ipv6Addr) -> bool {
    ip.octets()[0] == 0xfd
}

impl LabConfig {
    /// IPv6 on every link, pods and BGP sessions (`pool6` is set).
    pub fn dual_stack(&self) -> bool {
        self.pool6.is_some()
    }

    /// The IPv6 address of a host's link, when the lab is dual-stack.
    pub fn ip6_of(&self, h: &HostConfig) -> Option<std::net::Ipv6Addr> {
        self.pool6.and(h.ip6).map(|n| n.ip())
    }
}

/// Where the lab finds the workspace binaries (`calico-node-agent`, `calico`,
/// `calico-ipam`, `kube-proxy-rules`): one directory, e.g. `target/debug`.
#[derive(Debug, Clone)]
pub struct Bins {
    pub dir: PathBuf,
}

impl Bins {
    pub fn new(dir: impl Into<PathBuf>) -> Bins {
        Bins { dir: dir.into() }
    }
    /// The directory of the running executable (for `calico-lab`).
    pub fn beside_current_exe() -> Result<Bins, LabError> {
        let exe = std::env::current_exe().map_err(|e| LabError::io(Path::new("/proc/self/exe"), e))?;
        Ok(Bins::new(exe.parent().map(Path::to_path_buf).unwrap_or_default()))
    }
    pub fn path(&self, name: &str) -> Result<PathBuf, LabError> {
        let p = self.dir.join(name);
        if p.exists() {
            Ok(p)
        } else {
            Err(LabError::Check(format!("{} not built (cargo build --workspace --bins)", p.display())))
        }
    }
}

/// What a detached lab leaves behind for `down`/`status`.
#[derive(Debug, Serialize, Deserialize)]
pub struct LabState {
    pub id: String,
    pub run_dir: PathBuf,
    pub namespaces: Vec<String>,
    pub pids: Vec<u32>,
    pub config: LabConfig,
    /// The process that owns the lab (`None` once detached). A lab whose
    /// owner died without tearing down (SIGKILL) is an orphan `down --all` removes.
    #[serde(default)]
    pub owner: Option<u32>,
}

impl LabState {
    /// Detached, or its owner is gone: safe for `down --all`.
    pub fn is_orphan_or_detached(&self) -> bool {
        match self.owner {
            None => true,
            // Gone, or a zombie nobody reaped yet.
            Some(pid) => match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
                Err(_) => true,
                Ok(stat) => stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z')),
            },
        }
    }
}

pub const STATE_FILE: &str = "lab-state.json";

/// A running lab. Dropping it tears everything down: its pods first, through
/// CNI DEL as the kubelet would (a detached lab's pods are not DELed: `down`
/// only removes namespaces, processes and the run directory, and the lab's
/// etcd goes with them).
pub struct Lab {
    pub cfg: LabConfig,
    pub id: String,
    pub run_dir: PathBuf,
    pub bins: Bins,
    // Field order matters on drop: processes stop before their namespaces go.
    procs: Vec<Daemon>,
    pods: Vec<Pod>,
    nets: BTreeMap<String, Netns>,
    keep_run_dir: bool,
    /// Detached: the pods outlive this handle and must not be DELed.
    detached: bool,
}

/// A per-instance id: short (it becomes part of netns names), unique across
/// processes and across calls in one process.
fn instance_id() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    format!("{:x}{:x}{n:x}", std::process::id() & 0xffff, t.subsec_micros() & 0xfff)
}

impl Lab {
    /// Build the whole topology, start etcd, the tor's BIRD and on every node
    /// BIRD plus the agent, then wait until every BGP session is up (unless
    /// the peers are left to BGPPeer resources the caller has yet to write).
    /// On any error, everything created so far is torn down.
    pub fn up(cfg: &LabConfig, bins: &Bins) -> Result<Lab, LabError> {
        let id = instance_id();
        let run_dir = std::env::temp_dir().join(format!("calico-lab-{}{id}", cfg.name_prefix));
        std::fs::create_dir_all(&run_dir).map_err(|e| LabError::io(&run_dir, e))?;
        let mut lab = Lab {
            cfg: cfg.clone(),
            id,
            run_dir,
            bins: bins.clone(),
            procs: Vec::new(),
            pods: Vec::new(),
            nets: BTreeMap::new(),
            keep_run_dir: std::env::var_os("CALICO_LAB_KEEP").is_some(),
            detached: false,
        };
        lab.build_network()?;
        if !cfg.bgp_secrets.is_empty() {
            lab.write_secrets(&cfg.bgp_secrets)?;
        }
        lab.start_etcd()?;
        lab.seed_datastore()?;
        lab.start_tor()?;
        for n in cfg.nodes.clone() {
            lab.start_node(&n)?;
        }
        if cfg.tor_peer_in_agent_config {
            lab.wait_bgp_established()?;
        }
        log::info!("lab {} up ({})", lab.id, lab.run_dir.display());
        Ok(lab)
    }

    /// The namespace name of a host (`tor`, `node-a`, `etcd`, `client`, pods).
    pub fn ns_name(&self, host: &str) -> String {
        format!("{}{}-{host}", self.cfg.name_prefix, self.id)
    }

    pub fn ns(&self, host: &str) -> Result<&Netns, LabError> {
        self.nets.get(host).ok_or_else(|| LabError::Check(format!("no lab host {host}")))
    }

    fn host_dir(&self, host: &str) -> Result<PathBuf, LabError> {
        let d = self.run_dir.join(host);
        std::fs::create_dir_all(&d).map_err(|e| LabError::io(&d, e))?;
        Ok(d)
    }

    fn add_ns(&mut self, host: &str) -> Result<(), LabError> {
        let ns = Netns::create(&self.ns_name(host))?;
        self.nets.insert(host.to_string(), ns);
        // Recorded as soon as it exists, so even a lab whose process is
        // SIGKILLed can be found and removed (`calico-lab down --all`).
        self.save_state(Some(std::process::id()))?;
        Ok(())
    }

    fn save_state(&self, owner: Option<u32>) -> Result<LabState, LabError> {
        let mut namespaces: Vec<String> = self.pods.iter().map(|p| p.ns.name().to_string()).collect();
        namespaces.extend(self.nets.values().map(|n| n.name().to_string()));
        let state = LabState {
            id: self.id.clone(),
            run_dir: self.run_dir.clone(),
            namespaces,
            pids: self.procs.iter().filter_map(|p| p.pid()).collect(),
            config: self.cfg.clone(),
            owner,
        };
        let path = self.run_dir.join(STATE_FILE);
        let text = serde_json::to_vec_pretty(&state).unwrap_or_default();
        std::fs::write(&path, text).map_err(|e| LabError::io(&path, e))?;
        Ok(state)
    }

    fn build_network(&mut self) -> Result<(), LabError> {
        self.add_ns("tor")?;
        for h in self.cfg.hosts() {
            self.add_ns(&h.name)?;
        }
        let tor_path = self.ns("tor")?.path();
        self.ns("tor")?.run(|| Ok(netlink_util::Sysctl::ip_forward().write("1")?))?;
        if self.cfg.dual_stack() {
            self.ns("tor")?.run(|| Ok(netlink_util::Sysctl::ipv6_forwarding("all")?.write("1")?))?;
        }
        for h in self.cfg.hosts() {
            let peer = format!("to-{}", h.name);
            let ns = self.ns(&h.name)?;
            let tor_ns = netlink_util::Netns::open(&tor_path)?;
            let (ip, gw) = (h.ip, h.tor_ip.ip());
            // Dual-stack: the link's IPv6 pair too (no DAD: the link is
            // ours alone, and a tentative address would delay BGP).
            let v6 = if self.cfg.dual_stack() { h.ip6.zip(h.tor_ip6) } else { None };
            ns.with_netlink(|nl| {
                // The host end is created here and its peer directly in the
                // tor's namespace: nothing ever appears in the root namespace.
                let eth = nl
                    .create_veth(&netlink_util::VethConfig::new("eth0", peer.as_str()).peer_netns(&tor_ns))?;
                nl.add_address(eth.index, IpNetwork::V4(ip), &netlink_util::AddrOptions::default())?;
                if let Some((ip6, _)) = v6 {
                    nl.add_address(
                        eth.index,
                        IpNetwork::V6(ip6),
                        &netlink_util::AddrOptions::default().nodad(),
                    )?;
                }
                nl.set_link_up(eth.index)?;
                nl.add_route(&netlink_util::Route::default_v4().via(gw.into()).dev(eth.index))?;
                if let Some((_, gw6)) = v6 {
                    nl.add_route(
                        &netlink_util::Route::default_v6().via(IpAddr::V6(gw6.ip())).dev(eth.index),
                    )?;
                }
                Ok(())
            })?;
            // Nodes route pods' traffic.
            if self.cfg.node(&h.name).is_some() {
                ns.run(|| Ok(netlink_util::Sysctl::ip_forward().write("1")?))?;
                if v6.is_some() {
                    ns.run(|| Ok(netlink_util::Sysctl::ipv6_forwarding("all")?.write("1")?))?;
                }
            }
            let tor_ip = h.tor_ip;
            self.ns("tor")?.with_netlink(|nl| {
                let l = nl.link_by_name(&peer)?;
                nl.add_address(l.index, IpNetwork::V4(tor_ip), &netlink_util::AddrOptions::default())?;
                if let Some((_, tor6)) = v6 {
                    nl.add_address(
                        l.index,
                        IpNetwork::V6(tor6),
                        &netlink_util::AddrOptions::default().nodad(),
                    )?;
                }
                nl.set_link_up(l.index)
            })?;
        }
        Ok(())
    }

    fn spawn(&mut self, host: &str, name: &str, cmd: std::process::Command) -> Result<(), LabError> {
        let log = self.host_dir(host)?.join(format!("{name}.out"));
        self.procs.push(Daemon::spawn(name, cmd, &log)?);
        Ok(())
    }

    fn start_etcd(&mut self) -> Result<(), LabError> {
        let dir = self.host_dir("etcd")?;
        let ip = self.cfg.etcd.ip.ip();
        let client = self.cfg.etcd_endpoint();
        let peer = format!("http://{ip}:{}", self.cfg.etcd.peer_port);
        let mut cmd = self.ns("etcd")?.nsenter("etcd");
        cmd.arg("--name=lab")
            .arg(format!("--data-dir={}", dir.join("data").display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=lab={peer}"))
            .arg("--log-level=error");
        self.spawn("etcd", "etcd", cmd)?;
        let addr = SocketAddr::new(ip.into(), self.cfg.etcd.client_port);
        let ns = self.ns("etcd")?;
        wait_until("etcd health", Duration::from_secs(20), || {
            ns.run(|| http_get(addr, "/health", Duration::from_millis(500)))
                .ok()
                .filter(|b| b.contains("true"))
        })
        .map_err(|e| self.with_log("etcd", e))?;
        Ok(())
    }

    /// Attach a daemon's log tail to an error.
    fn with_log(&self, name: &str, e: LabError) -> LabError {
        match self.procs.iter().find(|p| p.name() == name) {
            Some(p) => LabError::Check(format!("{e}\n--- {} log ---\n{}", p.name(), p.log_tail(15))),
            None => e,
        }
    }

    /// Open the lab's etcd from a node's namespace and run `f` there (the
    /// etcd client is current-thread, so its sockets open in that netns).
    pub fn with_store<T: Send>(
        &self,
        from_host: &str,
        f: impl FnOnce(&dyn calico_store::Datastore) -> Result<T, LabError> + Send,
    ) -> Result<T, LabError> {
        let ds = self.datastore_config();
        self.ns(from_host)?.run(move || {
            let store = calico_store::open(&ds)?;
            f(store.as_ref())
        })
    }

    pub fn datastore_config(&self) -> calico_store::DatastoreConfig {
        calico_store::DatastoreConfig {
            datastore_type: Some("etcdv3".into()),
            etcd_endpoints: Some(self.cfg.etcd_endpoint()),
            ..Default::default()
        }
    }

    /// The cluster's IP pool (what `calicoctl create ippool` would write).
    fn seed_datastore(&mut self) -> Result<(), LabError> {
        use calico_store::model::{self, IpPool, IpPoolSpec, ObjectMeta};
        let pool = IpPool::new(
            "IPPool",
            ObjectMeta { name: "default-ipv4-ippool".into(), ..Default::default() },
            IpPoolSpec {
                cidr: IpNetwork::V4(self.cfg.pool),
                block_size: Some(self.cfg.block_size),
                node_selector: Some("all()".into()),
                disabled: false,
                nat_outgoing: false,
            },
        );
        let mut pools = vec![pool];
        if let Some(p6) = self.cfg.pool6 {
            pools.push(IpPool::new(
                "IPPool",
                ObjectMeta { name: "default-ipv6-ippool".into(), ..Default::default() },
                IpPoolSpec {
                    cidr: IpNetwork::V6(p6),
                    block_size: Some(self.cfg.block_size6),
                    node_selector: Some("all()".into()),
                    disabled: false,
                    nat_outgoing: false,
                },
            ));
        }
        let host = self.cfg.nodes[0].name.clone();
        self.with_store(&host, move |s| {
            for pool in &pools {
                let key = model::pool_key(&pool.metadata.name);
                if s.get(&key)?.is_none() {
                    s.create(&key, &model::encode(pool))?;
                }
            }
            Ok(())
        })
    }

    fn start_tor(&mut self) -> Result<(), LabError> {
        let dir = self.host_dir("tor")?;
        let conf = dir.join("bird.conf");
        let text = tor::render(&self.cfg);
        std::fs::write(&conf, text).map_err(|e| LabError::io(&conf, e))?;
        self.start_bird("tor")
    }

    /// Start (or restart) BIRD in `host` with `<run>/<host>/bird.conf`.
    pub fn start_bird(&mut self, host: &str) -> Result<(), LabError> {
        let dir = self.host_dir(host)?;
        let mut cmd = self.ns(host)?.nsenter("bird");
        if self.cfg.node(host).is_some() {
            // As calico/node runs it: graceful-restart recovery on start. BIRD
            // tells its peers it kept forwarding (they keep our routes until
            // our End-of-RIB) and does not prune the kernel's BGP routes
            // before its sessions have resynchronised.
            cmd.arg("-R");
        }
        cmd.arg("-f")
            .arg("-c")
            .arg(dir.join("bird.conf"))
            .arg("-s")
            .arg(dir.join("bird.ctl"))
            .arg("-P")
            .arg(dir.join("bird.pid"));
        let name = format!("bird-{host}");
        self.procs.retain(|p| p.name() != name);
        self.spawn(host, &name, cmd)?;
        let sock = dir.join("bird.ctl");
        wait_until(&format!("BIRD socket of {host}"), Duration::from_secs(10), || {
            birdc(&sock, &["show", "status"]).ok().filter(|s| s.contains("Daemon is up"))
        })
        .map_err(|e| self.with_log(&name, e))?;
        Ok(())
    }

    /// Kill a host's BIRD hard (a crash: no BGP notification is sent).
    pub fn kill_bird(&mut self, host: &str) {
        let name = format!("bird-{host}");
        if let Some(p) = self.procs.iter_mut().find(|p| p.name() == name) {
            p.kill_now();
        }
        self.procs.retain(|p| p.name() != name);
    }

    pub fn bird_socket(&self, host: &str) -> PathBuf {
        self.run_dir.join(host).join("bird.ctl")
    }

    /// `birdc -s <host's socket> <args>`.
    pub fn birdc(&self, host: &str, args: &[&str]) -> Result<String, LabError> {
        birdc(&self.bird_socket(host), args)
    }

    fn agent_config(&self, n: &HostConfig) -> Result<PathBuf, LabError> {
        let dir = self.host_dir(&n.name)?;
        let path = dir.join("agent.json");
        let mut peers = Vec::new();
        if self.cfg.tor_peer_in_agent_config {
            peers.push(
                serde_json::json!({"ip": n.tor_ip.ip().to_string(), "as_number": self.cfg.tor.as_number}),
            );
            if let Some(tor6) = n.tor_ip6.filter(|_| self.cfg.dual_stack()) {
                peers.push(
                    serde_json::json!({"ip": tor6.ip().to_string(), "as_number": self.cfg.tor.as_number}),
                );
            }
        }
        let doc = serde_json::json!({
            "node_name": n.name,
            "node_ip": n.ip.to_string(),
            "node_ipv6": n.ip6.filter(|_| self.cfg.dual_stack()).map(|a| a.to_string()),
            "as_number": self.cfg.node_as(n),
            "peers": peers,
            "labels": n.labels,
            "node_to_node_mesh": self.cfg.node_to_node_mesh,
            "datastore": {"datastore_type": "etcdv3", "etcd_endpoints": self.cfg.etcd_endpoint()},
            "bgp_secrets": (!self.cfg.bgp_secrets.is_empty()).then(|| self.secrets_file()),
            "bird_config": dir.join("bird.conf"),
            "bird_socket": dir.join("bird.ctl"),
            "poll_interval_ms": 500,
            "log_file": dir.join("agent.log"),
        });
        let text = serde_json::to_vec_pretty(&doc).unwrap_or_default();
        std::fs::write(&path, text).map_err(|e| LabError::io(&path, e))?;
        Ok(path)
    }

    /// Where the lab writes `bgp_secrets` (the agents read it on every reconcile).
    pub fn secrets_file(&self) -> PathBuf {
        self.run_dir.join("bgp-secrets.json")
    }

    /// Write the secrets every agent reads (owner-only: they are passwords).
    pub fn write_secrets(
        &self,
        secrets: &BTreeMap<String, BTreeMap<String, String>>,
    ) -> Result<(), LabError> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let path = self.secrets_file();
        let tmp = path.with_extension("tmp");
        let text = serde_json::to_vec_pretty(secrets).unwrap_or_default();
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| LabError::io(&tmp, e))?;
        f.write_all(&text).map_err(|e| LabError::io(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| LabError::io(&path, e))
    }

    fn start_node(&mut self, n: &HostConfig) -> Result<(), LabError> {
        let conf = self.agent_config(n)?;
        let agent = self.bins.path("calico-node-agent")?;
        // One pass first: registers the Node and writes bird.conf, which BIRD
        // then starts with (so the agent's first reconcile has nothing to reload).
        let mut once = self.ns(&n.name)?.nsenter(&agent);
        once.arg("run").arg("--once").arg("--config").arg(&conf);
        run_cmd(&mut once)?;
        if let Some(id) = &n.route_reflector_cluster_id {
            self.set_route_reflector(&n.name, Some(id))?;
            // Render again: the node is out of the mesh from its first BIRD start.
            let mut again = self.ns(&n.name)?.nsenter(&agent);
            again.arg("run").arg("--once").arg("--config").arg(&conf);
            run_cmd(&mut again)?;
        }
        self.start_bird(&n.name)?;
        let mut cmd = self.ns(&n.name)?.nsenter(&agent);
        cmd.arg("run").arg("--config").arg(&conf);
        self.spawn(&n.name, "agent", cmd)
    }

    /// Set (or clear) a node's `routeReflectorClusterID` in its Node
    /// resource, as `calicoctl patch node` does: the node's agent makes it a
    /// route reflector for the nodes it peers with.
    pub fn set_route_reflector(&self, node: &str, cluster_id: Option<&str>) -> Result<(), LabError> {
        use calico_store::model;
        let (node, id) = (node.to_string(), cluster_id.map(str::to_string));
        let host = self.cfg.nodes[0].name.clone();
        self.with_store(&host, move |s| {
            let key = model::node_key(&node);
            let kv =
                s.get(&key)?.ok_or_else(|| LabError::Check(format!("node {node} has not registered")))?;
            let mut doc: model::Node = model::decode(&kv)?;
            doc.spec.bgp.get_or_insert_with(Default::default).route_reflector_cluster_id = id;
            s.update(&key, &model::encode(&doc), kv.revision)?;
            Ok(())
        })
    }

    /// Wait until the tor has an established session with every node (two
    /// per node in a dual-stack lab: IPv4 and IPv6).
    pub fn wait_bgp_established(&self) -> Result<(), LabError> {
        let want =
            self.cfg.nodes.len() + self.cfg.nodes.iter().filter(|n| self.cfg.ip6_of(n).is_some()).count();
        wait_until("BGP sessions tor <-> nodes", Duration::from_secs(30), || {
            let out = self.birdc("tor", &["show", "protocols"]).ok()?;
            (out.lines().filter(|l| l.contains(" BGP ") && l.contains("Established")).count() == want)
                .then_some(())
        })
        .map_err(|e| {
            let out = self.birdc("tor", &["show", "protocols"]).unwrap_or_default();
            LabError::Check(format!("{e}\n{out}"))
        })
    }

    /// `birdc show route` on the tor: what it learnt from the nodes.
    pub fn tor_routes(&self) -> Result<String, LabError> {
        self.birdc("tor", &["show", "route"])
    }

    /// Wait until the tor routes `prefix` (e.g. a node's block) via BGP.
    pub fn wait_tor_route(&self, prefix: &str, timeout: Duration) -> Result<String, LabError> {
        wait_until(&format!("tor route to {prefix}"), timeout, || {
            let out = self.birdc("tor", &["show", "route", "for", prefix, "all"]).ok()?;
            out.contains("BGP").then_some(out)
        })
    }

    /// Keep everything running after this process exits; `calico-lab down`
    /// tears it down from the state file.
    pub fn detach(mut self) -> Result<LabState, LabError> {
        let state = self.save_state(None)?;
        for p in &mut self.procs {
            p.forget();
        }
        for p in &mut self.pods {
            p.forget();
        }
        for n in self.nets.values_mut() {
            n.forget();
        }
        self.keep_run_dir = true;
        self.detached = true;
        Ok(state)
    }

    /// Find a lab's state by its id (or its run directory).
    pub fn find_state(id: &str) -> Result<LabState, LabError> {
        let read = |p: PathBuf| -> Result<LabState, LabError> {
            let text = std::fs::read(&p).map_err(|e| LabError::io(&p, e))?;
            serde_json::from_slice(&text).map_err(|e| LabError::Config { path: p, reason: e.to_string() })
        };
        let as_dir = PathBuf::from(id).join(STATE_FILE);
        if as_dir.exists() {
            return read(as_dir);
        }
        let mut matches: Vec<LabState> = Lab::list_states().into_iter().filter(|s| s.id == id).collect();
        match matches.len() {
            1 => Ok(matches.remove(0)),
            0 => Err(LabError::Check(format!(
                "no lab {id:?} (calico-lab list shows the labs under {})",
                std::env::temp_dir().display()
            ))),
            n => Err(LabError::Check(format!("{n} labs have id {id:?}; pass the run directory instead"))),
        }
    }

    /// Every lab with a state file on this machine (detached, running, orphaned).
    pub fn list_states() -> Vec<LabState> {
        let mut v = Vec::new();
        if let Ok(rd) = std::fs::read_dir(std::env::temp_dir()) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().starts_with("calico-lab-") {
                    if let Ok(text) = std::fs::read(e.path().join(STATE_FILE)) {
                        if let Ok(s) = serde_json::from_slice(&text) {
                            v.push(s);
                        }
                    }
                }
            }
        }
        v
    }

    /// Tear down a detached lab: its processes, namespaces and run directory.
    pub fn down(state: &LabState) {
        // Every lab process runs inside one of the lab's namespaces; killing
        // what is inside them (not recorded pids, which may have been reused)
        // stops exactly the lab.
        for ns in &state.namespaces {
            Netns::destroy(ns);
        }
        let _ = std::fs::remove_dir_all(&state.run_dir);
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Pods first (nginx, CNI DEL while etcd still runs, then their
        // namespaces), then daemons, then hosts.
        if !self.detached {
            for e in self.delete_pods() {
                log::warn!("lab teardown: {e}");
            }
        }
        self.pods.clear();
        for p in self.procs.iter_mut().rev() {
            p.stop();
        }
        self.procs.clear();
        self.nets.clear();
        if !self.keep_run_dir {
            let _ = std::fs::remove_dir_all(&self.run_dir);
        }
    }
}

/// `birdc -s <socket> <args>`.
pub fn birdc(socket: &Path, args: &[&str]) -> Result<String, LabError> {
    run_cmd(std::process::Command::new("birdc").arg("-s").arg(socket).args(args))
}
