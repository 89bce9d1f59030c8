//! Calico's etcd v3 key layout and JSON documents.
//!
//! Keys and field names follow libcalico-go so that a `calicoctl`-era operator
//! recognises them (`etcdctl get --prefix /calico/ipam/v2/`). Documents keep
//! unknown fields out of our types; decoding errors become
//! [`StoreError::Corrupt`] naming the key, never a panic.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::{KeyValue, StoreError};

/// Root of all IPAM state.
pub const IPAM_PREFIX: &str = "/calico/ipam/v2/";
/// `/calico/ipam/v2/config`: the global IPAM configuration.
pub const IPAM_CONFIG_KEY: &str = "/calico/ipam/v2/config";
/// Root of v3 resources (pools, workload endpoints, nodes).
pub const RESOURCES_PREFIX: &str = "/calico/resources/v3/projectcalico.org/";

/// IP family of a block, pool or affinity, as it appears in keys (`ipv4`/`ipv6`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum IpFamily {
    V4,
    V6,
}

impl IpFamily {
    pub fn of(net: &IpNetwork) -> Self {
        if net.is_ipv4() {
            IpFamily::V4
        } else {
            IpFamily::V6
        }
    }
    pub fn of_addr(ip: &IpAddr) -> Self {
        if ip.is_ipv4() {
            IpFamily::V4
        } else {
            IpFamily::V6
        }
    }
    /// The key segment: `ipv4` or `ipv6`.
    pub fn key_segment(self) -> &'static str {
        match self {
            IpFamily::V4 => "ipv4",
            IpFamily::V6 => "ipv6",
        }
    }
}

/// A CIDR as written inside keys: `10.0.0.0/26` → `10.0.0.0-26`,
/// `fd00::/122` → `fd00::-122`.
pub fn cidr_key_segment(net: &IpNetwork) -> String {
    format!("{}-{}", net.network(), net.prefix())
}

/// Inverse of [`cidr_key_segment`].
pub fn parse_cidr_key_segment(seg: &str) -> Option<IpNetwork> {
    let (ip, len) = seg.rsplit_once('-')?;
    let ip: IpAddr = ip.parse().ok()?;
    let len: u8 = len.parse().ok()?;
    IpNetwork::new(ip, len).ok()
}

/// `/calico/ipam/v2/assignment/ipv4/block/` (list prefix of all blocks of a family).
pub fn blocks_prefix(family: IpFamily) -> String {
    format!("{IPAM_PREFIX}assignment/{}/block/", family.key_segment())
}

/// `/calico/ipam/v2/assignment/ipv4/block/10.0.0.0-26`.
pub fn block_key(cidr: &IpNetwork) -> String {
    format!("{}{}", blocks_prefix(IpFamily::of(cidr)), cidr_key_segment(cidr))
}

/// `/calico/ipam/v2/host/` (list prefix of every host's affinities).
pub fn all_affinities_prefix() -> String {
    format!("{IPAM_PREFIX}host/")
}

/// `/calico/ipam/v2/host/<node>/ipv4/block/` (one host's affinities of a family).
pub fn host_affinities_prefix(node: &str, family: IpFamily) -> String {
    format!("{IPAM_PREFIX}host/{node}/{}/block/", family.key_segment())
}

/// `/calico/ipam/v2/host/<node>/ipv4/block/10.0.0.0-26`.
pub fn affinity_key(node: &str, cidr: &IpNetwork) -> String {
    format!("{}{}", host_affinities_prefix(node, IpFamily::of(cidr)), cidr_key_segment(cidr))
}

/// Parse an affinity key back into (node, block CIDR).
pub fn parse_affinity_key(key: &str) -> Option<(String, IpNetwork)> {
    let rest = key.strip_prefix(IPAM_PREFIX)?.strip_prefix("host/")?;
    let mut parts = rest.split('/');
    let node = parts.next()?;
    let _family = parts.next()?;
    if parts.next()? != "block" {
        return None;
    }
    let cidr = parse_cidr_key_segment(parts.next()?)?;
    if parts.next().is_some() {
        return None;
    }
    Some((node.to_string(), cidr))
}

/// `/calico/ipam/v2/handle/` (list prefix of all handles).
pub fn handles_prefix() -> String {
    format!("{IPAM_PREFIX}handle/")
}

/// `/calico/ipam/v2/handle/<handle>`.
pub fn handle_key(handle: &str) -> String {
    format!("{}{handle}", handles_prefix())
}

/// `/calico/resources/v3/projectcalico.org/ippools/`.
pub fn pools_prefix() -> String {
    format!("{RESOURCES_PREFIX}ippools/")
}

/// `/calico/resources/v3/projectcalico.org/ippools/<name>`.
pub fn pool_key(name: &str) -> String {
    format!("{}{name}", pools_prefix())
}

/// `/calico/resources/v3/projectcalico.org/workloadendpoints/`.
pub fn workload_endpoints_prefix() -> String {
    format!("{RESOURCES_PREFIX}workloadendpoints/")
}

/// `/calico/resources/v3/projectcalico.org/workloadendpoints/<ns>/<name>`.
pub fn workload_endpoint_key(namespace: &str, name: &str) -> String {
    format!("{}{namespace}/{name}", workload_endpoints_prefix())
}

/// `/calico/resources/v3/projectcalico.org/nodes/`.
pub fn nodes_prefix() -> String {
    format!("{RESOURCES_PREFIX}nodes/")
}

/// `/calico/resources/v3/projectcalico.org/nodes/<name>`.
pub fn node_key(name: &str) -> String {
    format!("{}{name}", nodes_prefix())
}

/// Decode a stored JSON document; a bad document is `Corrupt` naming its key.
pub fn decode<T: DeserializeOwned>(kv: &KeyValue) -> Result<T, StoreError> {
    serde_json::from_slice(&kv.value)
        .map_err(|e| StoreError::Corrupt { key: kv.key.clone(), reason: e.to_string() })
}

/// Encode a document for storage.
pub fn encode<T: Serialize>(doc: &T) -> Vec<u8> {
    // Serializing plain data structs with string keys cannot fail.
    serde_json::to_vec(doc).unwrap_or_default()
}

/// `/calico/ipam/v2/assignment/.../block/<cidr>`: one allocation block.
///
/// `allocations[ordinal]` is the index into `attributes` of the allocation at
/// that ordinal (`None` = free); `unallocated` is the FIFO of free ordinals
/// (allocate from the head, release to the tail).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocationBlock {
    pub cidr: IpNetwork,
    /// `host:<node>` for an affine block, `None` for an orphan one.
    #[serde(default)]
    pub affinity: Option<String>,
    #[serde(rename = "strictAffinity", default)]
    pub strict_affinity: bool,
    pub allocations: Vec<Option<usize>>,
    pub unallocated: Vec<usize>,
    #[serde(default)]
    pub attributes: Vec<AllocationAttribute>,
    #[serde(default)]
    pub deleted: bool,
}

/// What an allocation belongs to: its handle and secondary attributes
/// (`node`, `namespace`, `pod`, `timestamp`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocationAttribute {
    #[serde(rename = "handle_id", default)]
    pub handle_id: Option<String>,
    #[serde(default)]
    pub secondary: Option<BTreeMap<String, String>>,
}

/// The state of a host's claim on a block (two-phase claim).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum AffinityState {
    Pending,
    Confirmed,
    PendingDeletion,
}

/// `/calico/ipam/v2/host/<node>/ipv4/block/<cidr>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockAffinity {
    pub state: AffinityState,
    #[serde(default)]
    pub deleted: bool,
}

/// `/calico/ipam/v2/handle/<handle>`: how many addresses the handle holds in
/// each block (keys are block CIDRs).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct IpamHandle {
    #[serde(default)]
    pub block: BTreeMap<String, u32>,
    #[serde(default)]
    pub deleted: bool,
}

/// `/calico/ipam/v2/config`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpamConfig {
    #[serde(default)]
    pub strict_affinity: bool,
    #[serde(default = "default_true")]
    pub auto_allocate_blocks: bool,
    #[serde(rename = "maxBlocksPerHost", default)]
    pub max_blocks_per_host: u32,
}

/// Calico's default block cap when the config leaves `maxBlocksPerHost` at 0.
pub const DEFAULT_MAX_BLOCKS_PER_HOST: u32 = 20;

impl Default for IpamConfig {
    fn default() -> Self {
        IpamConfig { strict_affinity: false, auto_allocate_blocks: true, max_blocks_per_host: 0 }
    }
}

fn default_true() -> bool {
    true
}

/// Object metadata of a v3 resource (the subset we use).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ObjectMeta {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(rename = "creationTimestamp", default, skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
}

/// A v3 resource envelope: `{kind, apiVersion, metadata, spec}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resource<S> {
    pub kind: String,
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    pub metadata: ObjectMeta,
    pub spec: S,
}

pub const API_VERSION: &str = "projectcalico.org/v3";

impl<S> Resource<S> {
    pub fn new(kind: &str, metadata: ObjectMeta, spec: S) -> Self {
        Resource { kind: kind.to_string(), api_version: API_VERSION.to_string(), metadata, spec }
    }
}

/// IPPool spec (`/calico/resources/v3/projectcalico.org/ippools/<name>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpPoolSpec {
    pub cidr: IpNetwork,
    /// Prefix length of the pool's blocks: 26 (IPv4) / 122 (IPv6) by default.
    #[serde(rename = "blockSize", default, skip_serializing_if = "Option::is_none")]
    pub block_size: Option<u8>,
    /// Calico selector over node labels; `all()` (or absent) selects every node.
    #[serde(rename = "nodeSelector", default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<String>,
    #[serde(default)]
    pub disabled: bool,
    #[serde(rename = "natOutgoing", default)]
    pub nat_outgoing: bool,
}

impl IpPoolSpec {
    pub fn block_prefix(&self) -> u8 {
        self.block_size.unwrap_or(if self.cidr.is_ipv4() { 26 } else { 122 })
    }

    /// Calico's IPPool validation: [`validate_pool_cidr`], then the block
    /// size (20–32 for IPv4, 116–128 for IPv6, and no larger than the pool).
    /// Calico checks the last only for enabled pools; we check it always,
    /// since a block larger than its pool has no index in it.
    pub fn validate(&self) -> Result<(), PoolRule> {
        validate_pool_cidr(&self.cidr)?;
        let bs = self.block_prefix();
        let (min, max) = if self.cidr.is_ipv4() { (20, 32) } else { (116, 128) };
        if !(min..=max).contains(&bs) {
            return Err(PoolRule::BlockSizeRange { block_size: bs, min, max });
        }
        if bs < self.cidr.prefix() {
            return Err(PoolRule::SmallerThanBlock { pool_prefix: self.cidr.prefix(), block_size: bs });
        }
        Ok(())
    }
}

/// A rule of Calico's IPPool validation that a pool breaks. Every pool, stored,
/// created by `calicoctl`, created on first use or named by CIDR in a CNI
/// config, is checked by the same function.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolRule {
    #[error("IP pool CIDR {cidr} is not strictly masked (did you mean {network}/{prefix}?)")]
    NotMasked { cidr: IpNetwork, network: IpAddr, prefix: u8 },
    #[error("IP pool range {cidr} overlaps with the {range} range {reserved}")]
    Reserved { cidr: IpNetwork, range: &'static str, reserved: IpNetwork },
    #[error("IP pool block size /{block_size} must be between /{min} and /{max}")]
    BlockSizeRange { block_size: u8, min: u8, max: u8 },
    #[error("IP pool size /{pool_prefix} is too small for use with Calico IPAM: it must be at least its block size /{block_size}")]
    SmallerThanBlock { pool_prefix: u8, block_size: u8 },
}

/// Ranges no pod address may come from: Calico refuses link-local pools
/// (169.254.0.0/16 holds the pods' gateway 169.254.1.1; fe80::/10 the
/// interfaces' own addresses); loopback, multicast, the unspecified and
/// "this network" addresses, broadcast and IPv4-mapped IPv6 can never be a
/// pod's source address either. A pool overlapping one of them (so also
/// 0.0.0.0/0 and ::/0) is refused.
const RESERVED_RANGES: &[(&str, &str)] = &[
    ("IPv4 \"this network\"", "0.0.0.0/8"),
    ("IPv4 loopback", "127.0.0.0/8"),
    ("IPv4 link-local", "169.254.0.0/16"),
    ("IPv4 multicast", "224.0.0.0/4"),
    ("IPv4 broadcast", "255.255.255.255/32"),
    ("IPv6 unspecified", "::/128"),
    ("IPv6 loopback", "::1/128"),
    ("IPv4-mapped IPv6", "::ffff:0:0/96"),
    ("IPv6 link-local", "fe80::/10"),
    ("IPv6 multicast", "ff00::/8"),
];

/// A list of pools named by CIDR (a CNI config's `ipv4_pools` or
/// `ipv6_pools`) that cannot be used as a whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolListRule {
    #[error("pool {cidr} is not an {} pool", family.key_segment())]
    WrongFamily { cidr: IpNetwork, family: IpFamily },
    #[error("pool {a} overlaps pool {b} in the same list")]
    Overlap { a: IpNetwork, b: IpNetwork },
    #[error(transparent)]
    Pool(#[from] PoolRule),
}

/// Check a whole list before any pool of it is created on first use: each
/// CIDR is a valid pool of `family`, and no two different CIDRs overlap
/// (the same CIDR twice is one pool). A list that fails leaves the store as
/// it was.
pub fn validate_pool_list(family: IpFamily, cidrs: &[IpNetwork]) -> Result<(), PoolListRule> {
    for (i, c) in cidrs.iter().enumerate() {
        if IpFamily::of(c) != family {
            return Err(PoolListRule::WrongFamily { cidr: *c, family });
        }
        validate_pool_cidr(c)?;
        if let Some(o) =
            cidrs[..i].iter().find(|o| *o != c && (o.contains(c.network()) || c.contains(o.network())))
        {
            return Err(PoolListRule::Overlap { a: *o, b: *c });
        }
    }
    Ok(())
}

/// The CIDR half of [`IpPoolSpec::validate`]: strictly masked, and clear of
/// every reserved range.
pub fn validate_pool_cidr(cidr: &IpNetwork) -> Result<(), PoolRule> {
    if cidr.network() != cidr.ip() {
        return Err(PoolRule::NotMasked { cidr: *cidr, network: cidr.network(), prefix: cidr.prefix() });
    }
    for (range, text) in RESERVED_RANGES {
        let Ok(reserved) = text.parse::<IpNetwork>() else { continue };
        let overlap = reserved.is_ipv4() == cidr.is_ipv4()
            && (reserved.contains(cidr.network()) || cidr.contains(reserved.network()));
        if overlap {
            return Err(PoolRule::Reserved { cidr: *cidr, range, reserved });
        }
    }
    Ok(())
}

pub type IpPool = Resource<IpPoolSpec>;

/// A container port of a workload endpoint (for named `targetPort`s).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointPort {
    pub name: String,
    pub protocol: String,
    pub port: u16,
}

/// WorkloadEndpoint spec: the pod record the CNI writes on ADD and removes on
/// DEL, and the service-rule generator reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadEndpointSpec {
    /// `k8s` when CNI_ARGS named the pod, else `cni`.
    pub orchestrator: String,
    #[serde(default)]
    pub workload: String,
    pub node: String,
    #[serde(rename = "containerID")]
    pub container_id: String,
    #[serde(default)]
    pub pod: String,
    /// The pod-side interface name (CNI_IFNAME).
    pub endpoint: String,
    /// The host-side veth name (`cali…`).
    #[serde(rename = "interfaceName")]
    pub interface_name: String,
    /// The pod-side MAC address.
    #[serde(default)]
    pub mac: String,
    /// `ip/32` and `ip/128` entries.
    #[serde(rename = "ipNetworks", default)]
    pub ip_networks: Vec<IpNetwork>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub profiles: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<EndpointPort>,
}

pub type WorkloadEndpoint = Resource<WorkloadEndpointSpec>;

/// Calico's workload endpoint name: segments joined by `-`, with every `-`
/// inside a segment doubled: `node1-k8s-mypod--1-eth0`.
pub fn workload_endpoint_name(node: &str, orchestrator: &str, workload: &str, ifname: &str) -> String {
    [node, orchestrator, workload, ifname].iter().map(|s| s.replace('-', "--")).collect::<Vec<_>>().join("-")
}

/// Node spec (`/calico/resources/v3/projectcalico.org/nodes/<name>`), written by
/// the node agent; IPAM checks use it to find blocks claimed by unknown nodes.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct NodeSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bgp: Option<NodeBgpSpec>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct NodeBgpSpec {
    /// `a.b.c.d/len` of the node's address used for peering.
    #[serde(rename = "ipv4Address", default, skip_serializing_if = "Option::is_none")]
    pub ipv4_address: Option<String>,
    #[serde(rename = "asNumber", default, skip_serializing_if = "Option::is_none", with = "as_number")]
    pub as_number: Option<u32>,
    /// `a:b::c/len` of the node's IPv6 address used for peering (IPv6
    /// sessions and the IPv6 mesh).
    #[serde(rename = "ipv6Address", default, skip_serializing_if = "Option::is_none")]
    pub ipv6_address: Option<String>,
    /// Set (an IPv4-formatted cluster ID, e.g. `244.0.0.1`) on a node that
    /// is a BGP route reflector for the nodes it peers with.
    #[serde(rename = "routeReflectorClusterID", default, skip_serializing_if = "Option::is_none")]
    pub route_reflector_cluster_id: Option<String>,
}

pub type Node = Resource<NodeSpec>;

/// `/calico/resources/v3/projectcalico.org/bgpconfigurations/`.
pub fn bgp_configurations_prefix() -> String {
    format!("{RESOURCES_PREFIX}bgpconfigurations/")
}

/// `/calico/resources/v3/projectcalico.org/bgpconfigurations/<name>`.
pub fn bgp_configuration_key(name: &str) -> String {
    format!("{}{name}", bgp_configurations_prefix())
}

/// The cluster-wide BGPConfiguration is the one named `default`; a node's
/// own is [`node_bgp_configuration`].
pub const DEFAULT_BGP_CONFIGURATION: &str = "default";

/// The name of node `node`'s own BGPConfiguration (`node.<name>`), whose
/// per-node fields override the `default` one's for that node.
pub fn node_bgp_configuration(node: &str) -> String {
    format!("node.{node}")
}

/// `/calico/resources/v3/projectcalico.org/bgppeers/`.
pub fn bgp_peers_prefix() -> String {
    format!("{RESOURCES_PREFIX}bgppeers/")
}

/// `/calico/resources/v3/projectcalico.org/bgppeers/<name>`.
pub fn bgp_peer_key(name: &str) -> String {
    format!("{}{name}", bgp_peers_prefix())
}

/// One `- cidr:` entry of `serviceClusterIPs` / `serviceExternalIPs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceIpBlock {
    pub cidr: IpNetwork,
}

/// BGPConfiguration spec: cluster-wide BGP settings. Every field is optional;
/// an absent one leaves the reader's default in place.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct BgpConfigurationSpec {
    /// `Debug`, `Info` (Calico's default), `Warning`, `Error`, `Fatal`, `None`.
    #[serde(rename = "logSeverityScreen", default, skip_serializing_if = "Option::is_none")]
    pub log_severity_screen: Option<String>,
    #[serde(rename = "nodeToNodeMeshEnabled", default, skip_serializing_if = "Option::is_none")]
    pub node_to_node_mesh_enabled: Option<bool>,
    /// The default AS of every node without its own `spec.bgp.asNumber`.
    #[serde(rename = "asNumber", default, skip_serializing_if = "Option::is_none", with = "as_number")]
    pub as_number: Option<u32>,
    #[serde(rename = "serviceClusterIPs", default, skip_serializing_if = "Vec::is_empty")]
    pub service_cluster_ips: Vec<ServiceIpBlock>,
    #[serde(rename = "serviceExternalIPs", default, skip_serializing_if = "Vec::is_empty")]
    pub service_external_ips: Vec<ServiceIpBlock>,
    /// The TCP-MD5 password of every node-to-node mesh session, as a
    /// reference to a secret.
    #[serde(rename = "nodeMeshPassword", default, skip_serializing_if = "Option::is_none")]
    pub node_mesh_password: Option<BgpPassword>,
    /// The port BGP listens on (179 when unset); per node in `node.<name>`.
    #[serde(rename = "listenPort", default, skip_serializing_if = "Option::is_none")]
    pub listen_port: Option<u16>,
}

pub type BgpConfiguration = Resource<BgpConfigurationSpec>;

/// Decode a BGPConfiguration field by field: a field that does not parse is
/// left unset, a bad entry of `serviceClusterIPs`/`serviceExternalIPs` is
/// dropped, and each is reported (`field: why`) instead of discarding the
/// whole cluster-wide document. Only a document that is not a v3 resource
/// with an object `spec` is `Corrupt`.
pub fn decode_bgp_configuration(kv: &KeyValue) -> Result<(BgpConfiguration, Vec<String>), StoreError> {
    let raw: Resource<serde_json::Map<String, serde_json::Value>> = decode(kv)?;
    let mut bad = Vec::new();
    let mut spec = BgpConfigurationSpec::default();
    for (field, value) in &raw.spec {
        let one = |v: &serde_json::Value| {
            let mut m = serde_json::Map::new();
            m.insert(field.clone(), v.clone());
            serde_json::from_value::<BgpConfigurationSpec>(serde_json::Value::Object(m))
        };
        match field.as_str() {
            "serviceClusterIPs" | "serviceExternalIPs" => {
                let Some(entries) = value.as_array() else {
                    bad.push(format!("{field}: expected a list, found {value}"));
                    continue;
                };
                for (i, entry) in entries.iter().enumerate() {
                    match serde_json::from_value::<ServiceIpBlock>(entry.clone()) {
                        Ok(b) if field == "serviceClusterIPs" => spec.service_cluster_ips.push(b),
                        Ok(b) => spec.service_external_ips.push(b),
                        Err(e) => bad.push(format!("{field}[{i}] {entry}: {e}")),
                    }
                }
            }
            _ => match one(value) {
                Ok(s) => {
                    spec.log_severity_screen = spec.log_severity_screen.or(s.log_severity_screen);
                    spec.node_to_node_mesh_enabled =
                        spec.node_to_node_mesh_enabled.or(s.node_to_node_mesh_enabled);
                    spec.as_number = spec.as_number.or(s.as_number);
                    spec.node_mesh_password = spec.node_mesh_password.take().or(s.node_mesh_password);
                    spec.listen_port = spec.listen_port.or(s.listen_port);
                }
                Err(e) => bad.push(format!("{field} {value}: {e}")),
            },
        }
    }
    Ok((Resource { kind: raw.kind, api_version: raw.api_version, metadata: raw.metadata, spec }, bad))
}

/// BGPPeer spec: a BGP peering and the nodes it applies to.
///
/// Scope: `node` (that node only) or `nodeSelector` (the nodes whose labels
/// match), at most one of them; neither makes a global peer of every node.
/// Target: `peerIP` + `asNumber` (an external router), or `peerSelector`
/// (the Calico nodes whose labels match, each with its own address and AS).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct BgpPeerSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(rename = "nodeSelector", default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<String>,
    /// `a.b.c.d`, `a.b.c.d:port`, `v6` or `[v6]:port` (see [`parse_peer_ip`]).
    #[serde(rename = "peerIP", default, skip_serializing_if = "Option::is_none")]
    pub peer_ip: Option<String>,
    #[serde(rename = "asNumber", default, skip_serializing_if = "Option::is_none", with = "as_number")]
    pub as_number: Option<u32>,
    #[serde(rename = "peerSelector", default, skip_serializing_if = "Option::is_none")]
    pub peer_selector: Option<String>,
    /// The TCP-MD5 password of the session, as a reference to a secret (never
    /// the password itself: the document is readable by every node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<BgpPassword>,
    /// Pass routes on to this (eBGP) peer with the next hop they came with,
    /// instead of this node's address.
    #[serde(rename = "keepOriginalNextHop", default, skip_serializing_if = "Option::is_none")]
    pub keep_original_next_hop: Option<bool>,
    /// Every other field (`sourceAddress`, `filters`, `ttlSecurity`, ...),
    /// kept as written so a reader can say what it ignores and a rewrite
    /// does not lose it.
    #[serde(flatten, default, skip_serializing_if = "BTreeMap::is_empty")]
    pub other: BTreeMap<String, serde_json::Value>,
}

pub type BgpPeer = Resource<BgpPeerSpec>;

/// BGPPeer `password`: where the session's password is kept.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct BgpPassword {
    #[serde(rename = "secretKeyRef", default, skip_serializing_if = "Option::is_none")]
    pub secret_key_ref: Option<SecretKeyRef>,
}

/// One key of one secret (Kubernetes' `SecretKeySelector`: `name`, `key`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SecretKeyRef {
    pub name: String,
    pub key: String,
}

/// A BGPPeer's `peerIP`: an address and an optional port. IPv6 with a port
/// is bracketed, as in a URL.
pub fn parse_peer_ip(s: &str) -> Option<(IpAddr, Option<u16>)> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some((ip, None));
    }
    let sa: std::net::SocketAddr = s.parse().ok()?;
    Some((sa.ip(), Some(sa.port())))
}

/// Calico's `numorstring.ASNumber`: a JSON number, or a string holding a
/// plain number (`"64512"`) or the dotted form (`"1.10"` = 1·65536 + 10).
/// Written back as a number.
mod as_number {
    use serde::{Deserialize, Deserializer, Serializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Num(u32),
        Str(String),
    }

    pub fn parse(s: &str) -> Option<u32> {
        match s.split_once('.') {
            None => s.parse().ok(),
            Some((hi, lo)) => {
                let (hi, lo): (u16, u16) = (hi.parse().ok()?, lo.parse().ok()?);
                Some((u32::from(hi) << 16) | u32::from(lo))
            }
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
        match Option::<Raw>::deserialize(d)? {
            None => Ok(None),
            Some(Raw::Num(n)) => Ok(Some(n)),
            Some(Raw::Str(s)) => parse(s.trim())
                .map(Some)
                .ok_or_else(|| serde::de::Error::custom(format!("invalid AS number {s:?}"))),
        }
    }

    pub fn serialize<S: Serializer>(v: &Option<u32>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(n) => s.serialize_u32(*n),
            None => s.serialize_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(cidr: &str, block_size: Option<u8>) -> IpPoolSpec {
        IpPoolSpec {
            cidr: cidr.parse().unwrap(),
            block_size,
            node_selector: None,
            disabled: false,
            nat_outgoing: false,
        }
    }

    /// Found by fuzzing: `0.0.0.0/0` gave a pod a public address, and the
    /// gateway's own 169.254.0.0/16 and `::/0` were accepted as pools.
    #[test]
    fn pools_calico_would_reject_are_refused_naming_the_rule() {
        for (cidr, rule) in [
            ("0.0.0.0/0", "this network"),
            ("169.254.0.0/16", "IPv4 link-local"),
            ("169.254.1.0/24", "IPv4 link-local"),
            ("168.0.0.0/6", "IPv4 link-local"),
            ("127.0.0.0/16", "IPv4 loopback"),
            ("224.0.0.0/8", "IPv4 multicast"),
            ("255.255.255.192/26", "IPv4 broadcast"),
            ("::/0", "IPv6 unspecified"),
            ("fe80::/64", "IPv6 link-local"),
            ("ff02::/120", "IPv6 multicast"),
            ("::ffff:10.0.0.0/120", "IPv4-mapped"),
        ] {
            let e = spec(cidr, None).validate().unwrap_err();
            assert!(matches!(e, PoolRule::Reserved { .. }), "{cidr}: {e}");
            assert!(e.to_string().contains(rule), "{cidr}: {e}");
        }
        let e = spec("10.0.0.1/24", None).validate().unwrap_err();
        assert!(e.to_string().contains("not strictly masked (did you mean 10.0.0.0/24?)"), "{e}");
        assert!(matches!(spec("10.0.0.0/16", Some(19)).validate(), Err(PoolRule::BlockSizeRange { .. })));
        assert!(matches!(spec("10.0.0.0/16", Some(33)).validate(), Err(PoolRule::BlockSizeRange { .. })));
        assert!(matches!(spec("fd00::/48", Some(64)).validate(), Err(PoolRule::BlockSizeRange { .. })));
        assert!(matches!(spec("10.0.0.0/28", None).validate(), Err(PoolRule::SmallerThanBlock { .. })));
        for ok in [
            "192.168.0.0/16",
            "10.0.0.0/8",
            "172.16.0.0/26",
            "fdca:11c0::/48",
            "2001:db8::/64",
            "240.0.0.0/8",
        ] {
            spec(ok, None).validate().unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        spec("10.0.0.0/28", Some(28)).validate().unwrap();
    }

    #[test]
    fn keys_follow_calico_layout() {
        let b: IpNetwork = "10.0.0.0/26".parse().unwrap();
        assert_eq!(block_key(&b), "/calico/ipam/v2/assignment/ipv4/block/10.0.0.0-26");
        assert_eq!(affinity_key("node1", &b), "/calico/ipam/v2/host/node1/ipv4/block/10.0.0.0-26");
        assert_eq!(parse_affinity_key(&affinity_key("node1", &b)), Some(("node1".into(), b)));
        let v6: IpNetwork = "fd00::/122".parse().unwrap();
        assert_eq!(block_key(&v6), "/calico/ipam/v2/assignment/ipv6/block/fd00::-122");
        assert_eq!(parse_cidr_key_segment("fd00::-122"), Some(v6));
        assert_eq!(handle_key("k8s-pod-network.abc"), "/calico/ipam/v2/handle/k8s-pod-network.abc");
    }

    #[test]
    fn wep_name_doubles_dashes() {
        assert_eq!(workload_endpoint_name("node1", "k8s", "mypod-1", "eth0"), "node1-k8s-mypod--1-eth0");
    }

    #[test]
    fn block_document_round_trips_calico_json() {
        let json = r#"{"cidr":"10.0.0.0/26","affinity":"host:n1","strictAffinity":false,
            "allocations":[0,null],"unallocated":[1],
            "attributes":[{"handle_id":"net.c1","secondary":{"node":"n1"}}],"deleted":false}"#;
        let kv = KeyValue { key: "k".into(), value: json.as_bytes().to_vec(), revision: 1 };
        let b: AllocationBlock = decode(&kv).unwrap();
        assert_eq!(b.allocations, vec![Some(0), None]);
        assert_eq!(b.attributes[0].handle_id.as_deref(), Some("net.c1"));
        let bad = KeyValue { key: "/x".into(), value: b"{".to_vec(), revision: 1 };
        assert!(
            matches!(decode::<AllocationBlock>(&bad), Err(StoreError::Corrupt { key, .. }) if key == "/x")
        );
    }

    fn kv(key: &str, json: &str) -> KeyValue {
        KeyValue { key: key.into(), value: json.as_bytes().to_vec(), revision: 1 }
    }

    #[test]
    fn bgp_keys_follow_calico_layout() {
        assert_eq!(
            bgp_configuration_key(DEFAULT_BGP_CONFIGURATION),
            "/calico/resources/v3/projectcalico.org/bgpconfigurations/default"
        );
        assert_eq!(bgp_peer_key("tor-a"), "/calico/resources/v3/projectcalico.org/bgppeers/tor-a");
        assert!(bgp_peer_key("x").starts_with(&bgp_peers_prefix()));
    }

    #[test]
    fn bgp_configuration_reads_calico_json() {
        let json = r#"{"kind":"BGPConfiguration","apiVersion":"projectcalico.org/v3",
            "metadata":{"name":"default"},
            "spec":{"logSeverityScreen":"Info","nodeToNodeMeshEnabled":false,"asNumber":63400,
                    "serviceClusterIPs":[{"cidr":"10.96.0.0/12"}],"listenPort":178}}"#;
        let c: BgpConfiguration = decode(&kv("k", json)).unwrap();
        assert_eq!(c.metadata.name, "default");
        assert_eq!(c.spec.node_to_node_mesh_enabled, Some(false));
        assert_eq!(c.spec.as_number, Some(63400));
        assert_eq!(c.spec.log_severity_screen.as_deref(), Some("Info"));
        assert_eq!(c.spec.listen_port, Some(178));
        assert_eq!(
            c.spec.service_cluster_ips,
            vec![ServiceIpBlock { cidr: "10.96.0.0/12".parse().unwrap() }]
        );
        // Absent fields stay absent (the reader's defaults apply) and are not written.
        let empty: BgpConfiguration =
            decode(&kv("k", r#"{"kind":"BGPConfiguration","apiVersion":"projectcalico.org/v3","metadata":{"name":"default"},"spec":{}}"#)).unwrap();
        assert_eq!(empty.spec, BgpConfigurationSpec::default());
        let out = String::from_utf8(encode(&c)).unwrap();
        assert!(
            out.contains(r#""asNumber":63400"#) && out.contains(r#""nodeToNodeMeshEnabled":false"#),
            "{out}"
        );
        assert!(!String::from_utf8(encode(&empty)).unwrap().contains("asNumber"));
    }

    #[test]
    fn bgp_configuration_bad_fields_are_dropped_one_by_one() {
        let json = r#"{"kind":"BGPConfiguration","apiVersion":"projectcalico.org/v3",
            "metadata":{"name":"default"},
            "spec":{"logSeverityScreen":7,"nodeToNodeMeshEnabled":"yes","asNumber":"sixty",
                    "serviceClusterIPs":[{"cidr":"10.96.0.0/12"},{"cidr":"nonsense"},{"cidr":"10.97.0.1/16"}],
                    "serviceExternalIPs":{"cidr":"1.2.3.0/24"},"listenPort":70000}}"#;
        // The strict decode loses the whole document over one field.
        assert!(decode::<BgpConfiguration>(&kv("k", json)).is_err());
        let (c, bad) = decode_bgp_configuration(&kv("k", json)).unwrap();
        assert_eq!(c.metadata.name, "default");
        assert_eq!(c.spec.log_severity_screen, None);
        assert_eq!(c.spec.node_to_node_mesh_enabled, None);
        assert_eq!(c.spec.as_number, None);
        let cidrs: Vec<String> = c.spec.service_cluster_ips.iter().map(|b| b.cidr.to_string()).collect();
        assert_eq!(cidrs, ["10.96.0.0/12", "10.97.0.1/16"], "host bits are the reader's business");
        assert!(c.spec.service_external_ips.is_empty());
        assert_eq!(c.spec.listen_port, None);
        assert_eq!(bad.len(), 6, "{bad:?}");
        for field in
            ["logSeverityScreen", "nodeToNodeMeshEnabled", "asNumber", "serviceClusterIPs[1]", "listenPort"]
        {
            assert!(bad.iter().any(|b| b.starts_with(field)), "{field}: {bad:?}");
        }
        // Good fields next to bad ones are kept.
        let json = r#"{"kind":"BGPConfiguration","apiVersion":"projectcalico.org/v3","metadata":{"name":"default"},
            "spec":{"asNumber":"1.10","nodeToNodeMeshEnabled":false,"logSeverityScreen":"Verbose",
                    "nodeMeshPassword":{"secretKeyRef":{"name":"bgp","key":"mesh"}}}}"#;
        let (c, bad) = decode_bgp_configuration(&kv("k", json)).unwrap();
        assert_eq!((c.spec.as_number, c.spec.node_to_node_mesh_enabled), (Some(65546), Some(false)));
        assert_eq!(
            c.spec.node_mesh_password.and_then(|p| p.secret_key_ref),
            Some(SecretKeyRef { name: "bgp".into(), key: "mesh".into() })
        );
        assert_eq!(
            c.spec.log_severity_screen.as_deref(),
            Some("Verbose"),
            "values are the reader's to judge"
        );
        assert!(bad.is_empty());
        // Not a resource at all: corrupt.
        assert!(decode_bgp_configuration(&kv("k", r#"{"spec":[]}"#)).is_err());
    }

    #[test]
    fn bgp_peer_keeps_fields_it_does_not_model() {
        let json = r#"{"kind":"BGPPeer","apiVersion":"projectcalico.org/v3","metadata":{"name":"p"},
            "spec":{"peerIP":"192.168.10.1","asNumber":65000,"password":{"secretKeyRef":{"name":"s","key":"k"}},
                    "keepOriginalNextHop":true,"sourceAddress":"None"}}"#;
        let p: BgpPeer = decode(&kv("k", json)).unwrap();
        assert_eq!(p.spec.as_number, Some(65000));
        assert_eq!(p.spec.keep_original_next_hop, Some(true));
        assert_eq!(p.spec.other.keys().collect::<Vec<_>>(), ["sourceAddress"]);
        assert_eq!(
            p.spec.password.clone().and_then(|p| p.secret_key_ref),
            Some(SecretKeyRef { name: "s".into(), key: "k".into() })
        );
        let out = String::from_utf8(encode(&p)).unwrap();
        assert!(
            out.contains("secretKeyRef")
                && out.contains(r#""keepOriginalNextHop":true"#)
                && out.contains("sourceAddress"),
            "{out}"
        );
    }

    #[test]
    fn bgp_peer_reads_calico_json_and_as_number_forms() {
        let json = r#"{"kind":"BGPPeer","apiVersion":"projectcalico.org/v3","metadata":{"name":"rack1-tor"},
            "spec":{"nodeSelector":"rack == 'rack1'","peerIP":"192.168.10.1","asNumber":"65000",
                    "keepOriginalNextHop":true}}"#;
        let p: BgpPeer = decode(&kv("k", json)).unwrap();
        assert_eq!(p.spec.node_selector.as_deref(), Some("rack == 'rack1'"));
        assert_eq!(p.spec.peer_ip.as_deref(), Some("192.168.10.1"));
        assert_eq!(p.spec.as_number, Some(65000), "numorstring: a quoted number");
        assert_eq!(p.spec.node, None);
        let dotted: BgpPeer =
            decode(&kv("k", r#"{"kind":"BGPPeer","apiVersion":"projectcalico.org/v3","metadata":{"name":"x"},"spec":{"asNumber":"1.10"}}"#)).unwrap();
        assert_eq!(dotted.spec.as_number, Some(65546));
        let bad = kv(
            "/p",
            r#"{"kind":"BGPPeer","apiVersion":"projectcalico.org/v3","metadata":{"name":"x"},"spec":{"asNumber":"sixty"}}"#,
        );
        assert!(
            matches!(decode::<BgpPeer>(&bad), Err(StoreError::Corrupt { key, reason }) if key == "/p" && reason.contains("sixty"))
        );
        let round = BgpPeer::new(
            "BGPPeer",
            ObjectMeta { name: "g".into(), ..Default::default() },
            BgpPeerSpec { peer_ip: Some("10.0.0.1".into()), as_number: Some(65001), ..Default::default() },
        );
        let out = String::from_utf8(encode(&round)).unwrap();
        assert!(out.contains(r#""spec":{"peerIP":"10.0.0.1","asNumber":65001}"#), "{out}");
    }

    #[test]
    fn peer_ip_with_and_without_port() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(parse_peer_ip("192.168.10.1"), Some((ip("192.168.10.1"), None)));
        assert_eq!(parse_peer_ip("192.168.10.1:1790"), Some((ip("192.168.10.1"), Some(1790))));
        assert_eq!(parse_peer_ip("fd00::1"), Some((ip("fd00::1"), None)));
        assert_eq!(parse_peer_ip("[fd00::1]:179"), Some((ip("fd00::1"), Some(179))));
        assert_eq!(parse_peer_ip("tor.example"), None);
        assert_eq!(parse_peer_ip("1.2.3.4:99999"), None);
    }

    #[test]
    fn node_as_number_accepts_calico_string_form() {
        let n: Node = decode(&kv("k", r#"{"kind":"Node","apiVersion":"projectcalico.org/v3","metadata":{"name":"n","labels":{"rack":"r1"}},"spec":{"bgp":{"ipv4Address":"10.0.0.1/24","asNumber":"64600"}}}"#)).unwrap();
        assert_eq!(n.spec.bgp.unwrap().as_number, Some(64600));
        assert_eq!(n.metadata.labels.get("rack").map(String::as_str), Some("r1"));
    }
}
