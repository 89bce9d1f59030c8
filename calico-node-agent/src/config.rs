//! Agent configuration: a JSON file and/or command-line flags (flags win;
//! the flags are [`crate::cli::AgentArgs`]).
//!
//! The BGP settings here (`as_number`, `peers`, `node_to_node_mesh`) are
//! fallbacks: the datastore's BGPConfiguration `default`, BGPPeer resources
//! and this node's Node resource override or extend them (see [`crate::peering`]).
//! `labels` are written into the Node resource's `metadata.labels`, where
//! BGPPeer and IPPool `nodeSelector`s look for them.
//!
//! ```json
//! {
//!   "node_name": "node-a",
//!   "node_ip": "192.168.10.2/24",
//!   "node_ipv6": "fd00:10::2/64",
//!   "as_number": 64512,
//!   "peers": [{"ip": "192.168.10.1", "as_number": 65000}, {"ip": "fd00:10::1", "as_number": 65000}],
//!   "bgp_secrets": "/etc/calico/bgp-secrets.json",
//!   "node_to_node_mesh": false,
//!   "labels": {"rack": "rack1"},
//!   "datastore": {"datastore_type": "etcdv3", "etcd_endpoints": "http://192.168.30.2:2379"},
//!   "bird_config": "/run/calico/bird.cfg",
//!   "bird_socket": "/run/calico/bird.ctl",
//!   "route_protocol": 80,
//!   "poll_interval_ms": 1000,
//!   "nat_outgoing_mode": "iptables",
//!   "log_file": "/var/log/calico/agent.log"
//! }
//! ```
//!
//! `node_ipv6` (optional) is the node's IPv6 address (Node `ipv6Address`):
//! with it the node opens IPv6 sessions (IPv6 peers, the IPv6 mesh) that
//! carry its IPv6 blocks. `bgp_secrets` (optional) is where BGPPeer
//! `password.secretKeyRef`s are looked up ([`crate::secrets`]).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use calico_store::resolve::Base;
use calico_store::DatastoreConfig;
use ipnetwork::{Ipv4Network, Ipv6Network};
use serde::Deserialize;

use crate::cli::AgentArgs;
use crate::nat_outgoing::NatMode;

/// Calico's default AS number (BGPConfiguration `asNumber`).
pub const DEFAULT_AS_NUMBER: u32 = 64512;
/// The kernel route protocol of the agent's blackhole routes. Felix uses 80
/// too; it must differ from BIRD's own (`bird`, 12), or BIRD's kernel protocol
/// would treat our blackholes as its leftovers and delete them.
pub const DEFAULT_ROUTE_PROTOCOL: u8 = 80;
const RTPROT_BIRD: u8 = 12;

/// An autonomous system number (`local as`, `neighbor … as`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(transparent)]
pub struct AsNumber(pub u32);

impl AsNumber {
    /// An AS read from a document: 0 is "not set" to BIRD (`Local/Remote AS
    /// number must be set`), so it is not an AS at all.
    pub fn valid(n: u32) -> Option<AsNumber> {
        (n != 0).then_some(AsNumber(n))
    }
}

impl std::fmt::Display for AsNumber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A configured BGP peer (a top-of-rack router or a global peer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct PeerConfig {
    pub ip: IpAddr,
    pub as_number: AsNumber,
}

impl std::str::FromStr for PeerConfig {
    type Err = ConfigError;
    /// `IP:AS`, e.g. `192.168.10.1:65000`, `[fd00::1]:65000` or `fd00::1:65000`.
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        let bad = || {
            ConfigError::Invalid(format!(
                "peer {s:?}: expected IP:AS, e.g. 192.168.10.1:65000 or [fd00::1]:65000"
            ))
        };
        let (ip, asn) = s.rsplit_once(':').ok_or_else(bad)?;
        let ip = ip.strip_prefix('[').and_then(|i| i.strip_suffix(']')).unwrap_or(ip);
        Ok(PeerConfig {
            ip: ip.parse().map_err(|_| bad())?,
            as_number: AsNumber(asn.parse().map_err(|_| bad())?),
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read agent config {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("agent config {path} is not valid JSON: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("invalid agent configuration: {0}")]
    Invalid(String),
}

/// The file form: everything optional so flags can fill the gaps.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    node_name: Option<String>,
    node_ip: Option<Ipv4Network>,
    node_ipv6: Option<Ipv6Network>,
    as_number: Option<AsNumber>,
    #[serde(default)]
    peers: Vec<PeerConfig>,
    bgp_secrets: Option<PathBuf>,
    node_to_node_mesh: Option<bool>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    /// A JSON object only (calico-store's rule for config sections: an
    /// array is refused, not read as a list of keys).
    #[serde(default, deserialize_with = "calico_store::resolve::datastore_section")]
    datastore: Option<DatastoreConfig>,
    bird_config: Option<PathBuf>,
    bird_socket: Option<PathBuf>,
    route_protocol: Option<u8>,
    poll_interval_ms: Option<u64>,
    nat_outgoing_mode: Option<NatMode>,
    log_file: Option<PathBuf>,
}

/// The validated agent configuration.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub node_name: String,
    /// The node's address with its prefix length (Node `ipv4Address`); its
    /// address is the BIRD router id and the BGP source address.
    pub node_ip: Ipv4Network,
    /// The node's IPv6 address (Node `ipv6Address`): the source of its IPv6
    /// sessions. `None`: IPv4 BGP only (IPv6 blocks are still blackholed).
    pub node_ipv6: Option<Ipv6Network>,
    /// The fallback AS of this node: used when neither its Node resource
    /// nor the BGPConfiguration sets one, and written into its Node resource
    /// at registration when the Node has none (see [`crate::peering`]).
    pub as_number: Option<AsNumber>,
    pub peers: Vec<PeerConfig>,
    /// Where BGPPeer password secrets are read ([`crate::secrets`]).
    pub bgp_secrets: Option<PathBuf>,
    pub node_to_node_mesh: bool,
    /// Labels this agent puts on its Node resource (merged over labels
    /// someone else set there).
    pub labels: BTreeMap<String, String>,
    pub datastore: DatastoreConfig,
    pub bird_config: PathBuf,
    pub bird_socket: PathBuf,
    pub route_protocol: u8,
    /// `poll_interval_ms`: how soon a failed reconcile or a lost datastore
    /// watch is retried. Changes themselves are watched
    /// ([`calico_store::Datastore::wait_for_change`]), never polled.
    pub poll_interval: Duration,
    /// `nat_outgoing_mode`: where the natOutgoing rules of the IP pools are
    /// written, `iptables` (default) or `nftables` ([`crate::nat_outgoing`]).
    pub nat_outgoing_mode: NatMode,
    pub log_file: Option<PathBuf>,
}

impl AgentConfig {
    /// The AS from this config alone (the default when it names none). The
    /// AS the node runs with also depends on the datastore:
    /// [`crate::peering::settings`].
    pub fn local_as(&self) -> AsNumber {
        self.as_number.unwrap_or(AsNumber(DEFAULT_AS_NUMBER))
    }

    /// The configuration of the command line: the `--config` file (if any)
    /// read first, then the flags laid over it; the datastore through
    /// calico-store's one resolver (flag > environment > the file's
    /// `datastore` section > defaults).
    pub fn from_cli(a: &AgentArgs) -> Result<AgentConfig, ConfigError> {
        let mut file = match &a.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let ds =
            a.ds.resolve(Base::Config(file.datastore.take().unwrap_or_default()))
                .map_err(|e| ConfigError::Invalid(format!("datastore: {e}")))?;
        file.datastore = Some(ds);
        if let Some(n) = &a.node_name {
            file.node_name = Some(n.clone());
        }
        if let Some(ip) = a.node_ip {
            file.node_ip = Some(ip);
        }
        if let Some(ip) = a.node_ipv6 {
            file.node_ipv6 = Some(ip);
        }
        if let Some(p) = &a.bgp_secrets {
            file.bgp_secrets = Some(p.clone());
        }
        if let Some(asn) = a.as_number {
            file.as_number = Some(AsNumber(asn));
        }
        file.peers.extend(a.peers.iter().copied());
        for (k, v) in &a.labels {
            file.labels.insert(k.clone(), v.clone());
        }
        if let Some(mesh) = a.mesh() {
            file.node_to_node_mesh = Some(mesh);
        }
        if let Some(p) = &a.bird_config {
            file.bird_config = Some(p.clone());
        }
        if let Some(p) = &a.bird_socket {
            file.bird_socket = Some(p.clone());
        }
        if let Some(p) = a.route_protocol {
            file.route_protocol = Some(p);
        }
        if let Some(ms) = a.poll_interval_ms {
            file.poll_interval_ms = Some(ms);
        }
        if let Some(m) = a.nat_outgoing_mode {
            file.nat_outgoing_mode = Some(m);
        }
        if let Some(p) = &a.log_file {
            file.log_file = Some(p.clone());
        }
        Self::validate(file)
    }

    /// Read a config from a JSON file only.
    pub fn from_file(path: &Path) -> Result<AgentConfig, ConfigError> {
        Self::validate(read_file(path)?)
    }

    fn validate(f: FileConfig) -> Result<AgentConfig, ConfigError> {
        let node_name = f.node_name.ok_or_else(|| ConfigError::Invalid("node_name is required".into()))?;
        // The name is a datastore key segment: keep it to a DNS-label-ish set.
        if node_name.is_empty()
            || !node_name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_')
        {
            return Err(ConfigError::Invalid(format!("node_name {node_name:?} must be [A-Za-z0-9._-]+")));
        }
        let node_ip = f.node_ip.ok_or_else(|| ConfigError::Invalid("node_ip is required".into()))?;
        if let Some(v6) = f.node_ipv6 {
            let ip = v6.ip();
            // BIRD refuses a link-local source address without an interface,
            // and neither the unspecified nor a multicast address can be one.
            if !crate::state::usable_v6(ip) {
                return Err(ConfigError::Invalid(format!(
                    "node_ipv6 {v6}: a global or unique-local unicast address is required"
                )));
            }
        }
        for (k, v) in &f.labels {
            validate_label(k, v)?;
        }
        let datastore = f.datastore.unwrap_or_default();
        datastore.validate().map_err(|e| ConfigError::Invalid(e.to_string()))?;
        let route_protocol = f.route_protocol.unwrap_or(DEFAULT_ROUTE_PROTOCOL);
        if route_protocol == RTPROT_BIRD || route_protocol <= 4 {
            return Err(ConfigError::Invalid(format!(
                "route_protocol {route_protocol} is reserved (kernel/boot/static/bird); use e.g. 80"
            )));
        }
        if f.as_number == Some(AsNumber(0)) {
            return Err(ConfigError::Invalid("as_number 0 is not an AS number".into()));
        }
        if let Some(p) = f.peers.iter().find(|p| p.as_number.0 == 0) {
            return Err(ConfigError::Invalid(format!("peer {}: as_number 0 is not an AS number", p.ip)));
        }
        let mut peers = f.peers;
        for p in &mut peers {
            // The BGPPeer rule: a unicast address of another host, an
            // IPv4-mapped IPv6 address is the IPv4 one.
            p.ip = crate::peering::peer_address(p.ip)
                .map_err(|e| ConfigError::Invalid(format!("peer {}: {e}", p.ip)))?;
        }
        Ok(AgentConfig {
            node_name,
            node_ip,
            node_ipv6: f.node_ipv6,
            as_number: f.as_number,
            peers,
            bgp_secrets: f.bgp_secrets,
            node_to_node_mesh: f.node_to_node_mesh.unwrap_or(false),
            labels: f.labels,
            datastore,
            bird_config: f.bird_config.unwrap_or_else(|| PathBuf::from("/etc/bird/bird.conf")),
            bird_socket: f.bird_socket.unwrap_or_else(|| PathBuf::from("/run/bird/bird.ctl")),
            route_protocol,
            poll_interval: Duration::from_millis(f.poll_interval_ms.unwrap_or(1000).max(50)),
            nat_outgoing_mode: f.nat_outgoing_mode.unwrap_or_default(),
            log_file: f.log_file,
        })
    }
}

/// Kubernetes' label syntax, loosely: a key of `[prefix/]name` and a value of
/// at most 63 characters, both of `[A-Za-z0-9._-]` (the selector tokenizer's
/// set, so every label can be selected).
fn validate_label(k: &str, v: &str) -> Result<(), ConfigError> {
    let ok = |s: &str| s.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    let name = k.rsplit_once('/').map_or(k, |(_, n)| n);
    let prefix_ok = k.rsplit_once('/').is_none_or(|(p, _)| !p.is_empty() && ok(p));
    if name.is_empty() || name.len() > 63 || !ok(name) || !prefix_ok || v.len() > 63 || !ok(v) {
        return Err(ConfigError::Invalid(format!(
            "label {k:?}={v:?}: keys are [prefix/]name, names and values at most 63 of [A-Za-z0-9._-]"
        )));
    }
    Ok(())
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text =
        std::fs::read(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
    serde_json::from_slice(&text).map_err(|source| ConfigError::Parse { path: path.to_path_buf(), source })
}

/// `calico-node-agent run FLAGS` parsed (without the environment) and
/// resolved, for the crate's unit tests; the error text of either step.
#[cfg(test)]
pub(crate) fn test_flags(flags: &str) -> Result<(AgentConfig, crate::cli::Command), String> {
    let argv = ["calico-node-agent", "run"].into_iter().chain(flags.split_whitespace());
    let cli: crate::cli::Cli = tool_cli::try_parse_without_env(argv).map_err(|e| e.to_string())?;
    let cfg = AgentConfig::from_cli(cli.command.agent_args()).map_err(|e| e.to_string())?;
    Ok((cfg, cli.command))
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::cli::Command;

    fn parse(flags: &str) -> Result<(AgentConfig, Command), String> {
        test_flags(flags)
    }

    fn from_args(flags: &str) -> Result<AgentConfig, String> {
        parse(flags).map(|(c, _)| c)
    }

    #[test]
    fn flags_build_a_config() {
        let (c, cmd) = parse(
            "--node-name n1 --node-ip 10.0.0.1/24 --peer 10.0.0.254:65000 --datastore-path /tmp/x --once",
        )
        .unwrap();
        assert_eq!(c.node_name, "n1");
        assert_eq!(c.local_as(), AsNumber(64512));
        assert_eq!(
            c.peers,
            vec![PeerConfig { ip: "10.0.0.254".parse().unwrap(), as_number: AsNumber(65000) }]
        );
        assert!(matches!(cmd, Command::Run { once: true, .. }), "{cmd:?}");
        assert_eq!(c.route_protocol, 80);
    }

    #[test]
    fn file_then_flags_override() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.json");
        std::fs::write(
            &p,
            r#"{"node_name":"a","node_ip":"192.168.1.2/24","as_number":64600,
                "peers":[{"ip":"192.168.1.1","as_number":65000}],
                "datastore":{"datastore_type":"file","datastore_path":"/tmp/s"}}"#,
        )
        .unwrap();
        let c = from_args(&format!("--config {} --node-name b --mesh", p.display())).unwrap();
        assert_eq!(c.node_name, "b");
        assert_eq!(c.local_as(), AsNumber(64600));
        assert!(c.node_to_node_mesh);
        assert_eq!(c.peers.len(), 1);
    }

    #[test]
    fn labels_from_file_and_flags() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.json");
        std::fs::write(
            &p,
            r#"{"node_name":"a","node_ip":"192.168.1.2/24","labels":{"rack":"r1","zone":"z"},
                "datastore":{"datastore_type":"file","datastore_path":"/tmp/s"}}"#,
        )
        .unwrap();
        let c = from_args(&format!(
            "--config {} --label rack=r2 --label topology.kubernetes.io/region=eu-1",
            p.display()
        ))
        .unwrap();
        let want: BTreeMap<String, String> =
            [("rack", "r2"), ("zone", "z"), ("topology.kubernetes.io/region", "eu-1")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        assert_eq!(c.labels, want);
        for bad in ["--label rack", "--label =x", "--label a=b'c", "--label /a=b"] {
            let e = from_args(&format!("--node-name a --node-ip 10.0.0.1/24 {bad}")).unwrap_err();
            assert!(e.to_string().contains("label"), "{bad}: {e}");
        }
    }

    #[test]
    fn bad_input_is_rejected_with_a_reason() {
        let e = from_args("--node-ip 10.0.0.1/24").unwrap_err();
        assert!(e.to_string().contains("node_name"), "{e}");
        let e = from_args("--node-name a --node-ip 10.0.0.1/24 --peer 1.2.3.4").unwrap_err();
        assert!(e.to_string().contains("IP:AS"), "{e}");
        let e = from_args("--node-name a/b --node-ip 10.0.0.1/24").unwrap_err();
        assert!(e.to_string().contains("node_name"), "{e}");
        let e = from_args("--node-name a --node-ip 10.0.0.1/24 --route-protocol 12").unwrap_err();
        assert!(e.to_string().contains("reserved"), "{e}");
        for bad in ["fe80::1:65000", "[ff02::2]:65000", "0.0.0.0:65000"] {
            let e = from_args(&format!("--node-name a --node-ip 10.0.0.1/24 --peer {bad}")).unwrap_err();
            assert!(e.contains("not a unicast address"), "{bad}: {e}");
        }
        for bad in ["fe80::2/64", "::/0", "ff02::1/128", "::1/128"] {
            let e = from_args(&format!("--node-name a --node-ip 10.0.0.1/24 --node-ipv6 {bad}")).unwrap_err();
            assert!(e.contains("node_ipv6"), "{bad}: {e}");
        }
        let c = from_args("--node-name a --node-ip 10.0.0.1/24 --node-ipv6 fd00:10::2/64 --peer [fd00:10::1]:65000 --peer fd00:10::9:65001 --peer [::ffff:10.0.0.254]:65002")
            .unwrap();
        let peers: Vec<String> = c.peers.iter().map(|p| format!("{}/{}", p.ip, p.as_number)).collect();
        assert_eq!(peers, ["fd00:10::1/65000", "fd00:10::9/65001", "10.0.0.254/65002"]);
        assert_eq!(c.node_ipv6.map(|n| n.to_string()).as_deref(), Some("fd00:10::2/64"));
        // AS 0 would render a config BIRD refuses.
        for bad in ["--as 0", "--peer 10.0.0.254:0"] {
            let e = from_args(&format!("--node-name a --node-ip 10.0.0.1/24 {bad}")).unwrap_err();
            assert!(e.to_string().contains("as_number 0"), "{bad}: {e}");
        }
    }

    #[test]
    fn the_datastore_section_is_an_object_and_flags_override_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.json");
        std::fs::write(
            &p,
            r#"{"node_name":"a","node_ip":"192.168.1.2/24","datastore":[["datastore_type","file"]]}"#,
        )
        .unwrap();
        let e = from_args(&format!("--config {}", p.display())).unwrap_err();
        assert!(e.contains("datastore"), "{e}");
        std::fs::write(
            &p,
            r#"{"node_name":"a","node_ip":"192.168.1.2/24",
                "datastore":{"datastore_type":"etcdv3","etcd_endpoints":"http://10.0.0.9:2379"}}"#,
        )
        .unwrap();
        let c =
            from_args(&format!("--config {} --etcd-endpoints http://10.0.0.8:2379", p.display())).unwrap();
        assert_eq!(c.datastore.etcd_endpoints.as_deref(), Some("http://10.0.0.8:2379"));
        let e = from_args(&format!("--config {} --datastore-type bogus", p.display())).unwrap_err();
        assert!(e.contains("datastore"), "{e}");
    }
}
