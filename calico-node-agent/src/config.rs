//! Agent configuration: a JSON file and/or command-line flags (flags win).
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
//!   "as_number": 64512,
//!   "peers": [{"ip": "192.168.10.1", "as_number": 65000}],
//!   "node_to_node_mesh": false,
//!   "labels": {"rack": "rack1"},
//!   "datastore": {"datastore_type": "etcdv3", "etcd_endpoints": "http://192.168.30.2:2379"},
//!   "bird_config": "/run/calico/bird.cfg",
//!   "bird_socket": "/run/calico/bird.ctl",
//!   "route_protocol": 80,
//!   "poll_interval_ms": 1000,
//!   "log_file": "/var/log/calico/agent.log"
//! }
//! ```

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use calico_store::DatastoreConfig;
use ipnetwork::Ipv4Network;
use serde::Deserialize;

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
    pub ip: Ipv4Addr,
    pub as_number: AsNumber,
}

impl std::str::FromStr for PeerConfig {
    type Err = ConfigError;
    /// `IP:AS`, e.g. `192.168.10.1:65000`.
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        let bad = || ConfigError::Invalid(format!("peer {s:?}: expected IP:AS, e.g. 192.168.10.1:65000"));
        let (ip, asn) = s.rsplit_once(':').ok_or_else(bad)?;
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
    as_number: Option<AsNumber>,
    #[serde(default)]
    peers: Vec<PeerConfig>,
    node_to_node_mesh: Option<bool>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    datastore: Option<DatastoreConfig>,
    bird_config: Option<PathBuf>,
    bird_socket: Option<PathBuf>,
    route_protocol: Option<u8>,
    poll_interval_ms: Option<u64>,
    log_file: Option<PathBuf>,
}

/// The validated agent configuration.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub node_name: String,
    /// The node's address with its prefix length (Node `ipv4Address`); its
    /// address is the BIRD router id and the BGP source address.
    pub node_ip: Ipv4Network,
    /// The fallback AS of this node: used when neither its Node resource
    /// nor the BGPConfiguration sets one, and written into its Node resource
    /// at registration when the Node has none (see [`crate::peering`]).
    pub as_number: Option<AsNumber>,
    pub peers: Vec<PeerConfig>,
    pub node_to_node_mesh: bool,
    /// Labels this agent puts on its Node resource (merged over labels
    /// someone else set there).
    pub labels: BTreeMap<String, String>,
    pub datastore: DatastoreConfig,
    pub bird_config: PathBuf,
    pub bird_socket: PathBuf,
    pub route_protocol: u8,
    pub poll_interval: Duration,
    pub log_file: Option<PathBuf>,
}

impl AgentConfig {
    /// The AS from this config alone (the default when it names none). The
    /// AS the node runs with also depends on the datastore:
    /// [`crate::peering::settings`].
    pub fn local_as(&self) -> AsNumber {
        self.as_number.unwrap_or(AsNumber(DEFAULT_AS_NUMBER))
    }

    /// Parse flags (after the subcommand); `--config FILE` is read first and
    /// the other flags override it. Returns the config and the leftover
    /// boolean flags the caller handles (`--once`).
    pub fn from_args(args: &[String]) -> Result<(AgentConfig, Vec<String>), ConfigError> {
        let mut file = FileConfig::default();
        if let Some(i) = args.iter().position(|a| a == "--config") {
            let path = args.get(i + 1).ok_or_else(|| ConfigError::Invalid("--config needs a file".into()))?;
            file = read_file(Path::new(path))?;
        }
        let mut ds = file.datastore.take().unwrap_or_default();
        let mut rest = Vec::new();
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let mut value =
                || it.next().cloned().ok_or_else(|| ConfigError::Invalid(format!("{flag} needs a value")));
            match flag.as_str() {
                "--config" => {
                    value()?;
                }
                "--node-name" => file.node_name = Some(value()?),
                "--node-ip" => {
                    let v = value()?;
                    file.node_ip =
                        Some(v.parse().map_err(|e| ConfigError::Invalid(format!("--node-ip {v:?}: {e}")))?);
                }
                "--as" => {
                    let v = value()?;
                    file.as_number = Some(AsNumber(
                        v.parse().map_err(|_| ConfigError::Invalid(format!("--as {v:?}: not a number")))?,
                    ));
                }
                "--peer" => file.peers.push(value()?.parse()?),
                "--label" => {
                    let v = value()?;
                    let (k, val) = v
                        .split_once('=')
                        .ok_or_else(|| ConfigError::Invalid(format!("--label {v:?}: expected KEY=VALUE")))?;
                    file.labels.insert(k.to_string(), val.to_string());
                }
                "--mesh" => file.node_to_node_mesh = Some(true),
                "--no-mesh" => file.node_to_node_mesh = Some(false),
                "--datastore-type" => ds.datastore_type = Some(value()?),
                "--datastore-path" => ds.datastore_path = Some(value()?.into()),
                "--etcd-endpoints" => ds.etcd_endpoints = Some(value()?),
                "--bird-config" => file.bird_config = Some(value()?.into()),
                "--bird-socket" => file.bird_socket = Some(value()?.into()),
                "--route-protocol" => {
                    let v = value()?;
                    file.route_protocol =
                        Some(v.parse().map_err(|_| {
                            ConfigError::Invalid(format!("--route-protocol {v:?}: not 0-255"))
                        })?);
                }
                "--poll-interval-ms" => {
                    let v = value()?;
                    file.poll_interval_ms = Some(
                        v.parse().map_err(|_| ConfigError::Invalid(format!("--poll-interval-ms {v:?}")))?,
                    );
                }
                "--log-file" => file.log_file = Some(value()?.into()),
                other if other.starts_with("--") && !other.contains('=') => rest.push(other.to_string()),
                other => return Err(ConfigError::Invalid(format!("unexpected argument {other:?}"))),
            }
        }
        file.datastore = Some(ds);
        Ok((Self::validate(file)?, rest))
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
        Ok(AgentConfig {
            node_name,
            node_ip,
            as_number: f.as_number,
            peers: f.peers,
            node_to_node_mesh: f.node_to_node_mesh.unwrap_or(false),
            labels: f.labels,
            datastore,
            bird_config: f.bird_config.unwrap_or_else(|| PathBuf::from("/etc/bird/bird.conf")),
            bird_socket: f.bird_socket.unwrap_or_else(|| PathBuf::from("/run/bird/bird.ctl")),
            route_protocol,
            poll_interval: Duration::from_millis(f.poll_interval_ms.unwrap_or(1000).max(50)),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn flags_build_a_config() {
        let (c, rest) = AgentConfig::from_args(&args(
            "--node-name n1 --node-ip 10.0.0.1/24 --peer 10.0.0.254:65000 --datastore-path /tmp/x --once",
        ))
        .unwrap();
        assert_eq!(c.node_name, "n1");
        assert_eq!(c.local_as(), AsNumber(64512));
        assert_eq!(
            c.peers,
            vec![PeerConfig { ip: "10.0.0.254".parse().unwrap(), as_number: AsNumber(65000) }]
        );
        assert_eq!(rest, vec!["--once".to_string()]);
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
        let (c, _) =
            AgentConfig::from_args(&args(&format!("--config {} --node-name b --mesh", p.display()))).unwrap();
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
        let (c, _) = AgentConfig::from_args(&args(&format!(
            "--config {} --label rack=r2 --label topology.kubernetes.io/region=eu-1",
            p.display()
        )))
        .unwrap();
        let want: BTreeMap<String, String> =
            [("rack", "r2"), ("zone", "z"), ("topology.kubernetes.io/region", "eu-1")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        assert_eq!(c.labels, want);
        for bad in ["--label rack", "--label =x", "--label a=b'c", "--label /a=b"] {
            let e = AgentConfig::from_args(&args(&format!("--node-name a --node-ip 10.0.0.1/24 {bad}")))
                .unwrap_err();
            assert!(e.to_string().contains("label"), "{bad}: {e}");
        }
    }

    #[test]
    fn bad_input_is_rejected_with_a_reason() {
        let e = AgentConfig::from_args(&args("--node-ip 10.0.0.1/24")).unwrap_err();
        assert!(e.to_string().contains("node_name"), "{e}");
        let e =
            AgentConfig::from_args(&args("--node-name a --node-ip 10.0.0.1/24 --peer 1.2.3.4")).unwrap_err();
        assert!(e.to_string().contains("IP:AS"), "{e}");
        let e = AgentConfig::from_args(&args("--node-name a/b --node-ip 10.0.0.1/24")).unwrap_err();
        assert!(e.to_string().contains("node_name"), "{e}");
        let e = AgentConfig::from_args(&args("--node-name a --node-ip 10.0.0.1/24 --route-protocol 12"))
            .unwrap_err();
        assert!(e.to_string().contains("reserved"), "{e}");
        // AS 0 would render a config BIRD refuses.
        for bad in ["--as 0", "--peer 10.0.0.254:0"] {
            let e = AgentConfig::from_args(&args(&format!("--node-name a --node-ip 10.0.0.1/24 {bad}")))
                .unwrap_err();
            assert!(e.to_string().contains("as_number 0"), "{bad}: {e}");
        }
    }
}
