//! Effective BGP settings of this node: the agent's config (fallbacks) merged
//! with the datastore's BGP resources, as calico/node's confd does it.
//!
//! * **AS**: this node's Node `spec.bgp.asNumber`, else BGPConfiguration
//!   `asNumber`, else the config's `as_number`, else 64512 (Calico: Node >
//!   BGPConfiguration > 64512; the config's AS is also what the agent writes
//!   into a Node that has none, like calico/node's `AS` variable). Other
//!   nodes (mesh, `peerSelector`) use their own Node AS or the cluster
//!   default (BGPConfiguration `asNumber`, else 64512).
//! * **Mesh**: BGPConfiguration `nodeToNodeMeshEnabled` when set; on when the
//!   BGPConfiguration exists without it (Calico's default); the config's
//!   `node_to_node_mesh` (default off) when there is no BGPConfiguration.
//! * **Peers**: the BGPPeers that apply to this node (no scope = every node;
//!   `node` = this node; `nodeSelector` matching this node's labels), then the
//!   reverse peerings (a node named as the target of a BGPPeer peers back
//!   with the nodes it applies to, as calico/node completes them), then the
//!   config's `peers`. One session per peer address: the first wins (so a
//!   BGPPeer overrides a config peer of the same address), and a peer whose
//!   address is this node's own is skipped. A peer's password is read from `bgp_secrets` ([`crate::secrets`]).
//! * **Route reflection**: a node with a `routeReflectorClusterID` marks a
//!   peer `rr client` when the peer is in its AS and not in its cluster
//!   (calico/node's rule); the rendering leaves it out of the mesh.
//! * **Families**: IPv6 peers need this node's `node_ipv6` (the session's
//!   source address); node peers are peered on both of their addresses.
//!
//! Documents are validated when read so that none can make BIRD refuse the
//! rendered configuration (which would freeze every later routing change on
//! the node): a BGPPeer that cannot be rendered (AS 0, port 0, ...) is
//! skipped ([`PeerRule::from_resource`]); a bad BGPConfiguration field is
//! dropped on its own ([`BgpDefaults::from_spec`]); a Node AS of 0 is unset.
//! What was skipped is reported, not fatal.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use calico_store::model::{self, BgpConfigurationSpec, BgpPeer, SecretKeyRef};
use calico_store::selector::Selector;
use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};

use crate::config::{AgentConfig, AsNumber, DEFAULT_AS_NUMBER};
use crate::secrets::{Password, Secrets};
use crate::state::{self, MeshNode, RoutingState};

/// BIRD's protocol debug level, from BGPConfiguration `logSeverityScreen`
/// (as Calico maps it: `Debug` → everything, `None` → nothing, any other
/// severity → session state changes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BirdDebug {
    All,
    States,
    Off,
}

impl BirdDebug {
    fn from_severity(s: &str) -> Result<BirdDebug, String> {
        match s.to_ascii_lowercase().as_str() {
            "debug" => Ok(BirdDebug::All),
            "none" => Ok(BirdDebug::Off),
            "info" | "warning" | "error" | "fatal" => Ok(BirdDebug::States),
            _ => Err(format!("logSeverityScreen {s:?}: expected Debug, Info, Warning, Error, Fatal or None")),
        }
    }

    /// The BIRD statement.
    pub fn statement(self) -> &'static str {
        match self {
            BirdDebug::All => "debug all;",
            BirdDebug::States => "debug { states };",
            BirdDebug::Off => "debug off;",
        }
    }
}

/// BGP's port, where a node listens unless a `listenPort` says otherwise.
pub const BGP_PORT: u16 = 179;

/// Where a node's BGP listens, from its own `listenPort` (`node.<name>`)
/// and the cluster's (`default`): the first set one, `None` for BGP's own
/// 179 (written without a port).
pub fn bgp_port(own: Option<u16>, cluster: Option<u16>) -> Option<u16> {
    own.or(cluster).filter(|&p| p != BGP_PORT)
}

/// The cluster-wide settings of BGPConfiguration `default`, validated.
/// `None` fields leave the agent's config in charge.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BgpDefaults {
    /// A BGPConfiguration `default` exists (it turns the mesh default on).
    pub present: bool,
    pub as_number: Option<AsNumber>,
    pub mesh: Option<bool>,
    pub debug: Option<BirdDebug>,
    /// `serviceClusterIPs` and `serviceExternalIPs`: announced by every node
    /// so the fabric routes service addresses to the cluster (IPv6 ones only
    /// by nodes with an IPv6 address).
    pub service_cidrs: Vec<IpNetwork>,
    /// `nodeMeshPassword.secretKeyRef`: the password of every mesh session.
    pub mesh_password: Option<SecretKeyRef>,
    /// `listenPort`: the port every node's BGP listens on (179 when unset),
    /// unless its own BGPConfiguration says otherwise.
    pub listen_port: Option<u16>,
}

/// A `listenPort` BIRD can use: 0 is no port.
fn valid_port(port: Option<u16>, problems: &mut Vec<String>) -> Option<u16> {
    let p = port?;
    if p == 0 {
        problems.push("listenPort 0 is not a port; ignored".into());
        return None;
    }
    Some(p)
}

fn valid_debug(severity: Option<&str>, problems: &mut Vec<String>) -> Option<BirdDebug> {
    match BirdDebug::from_severity(severity?) {
        Ok(d) => Some(d),
        Err(e) => {
            problems.push(format!("{e}; ignored"));
            None
        }
    }
}

/// What a node's own BGPConfiguration (`node.<name>`) sets for it, validated:
/// the fields Calico takes per node that the agent implements. Cluster-wide
/// fields there are reported and ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeBgpConfig {
    pub listen_port: Option<u16>,
    pub debug: Option<BirdDebug>,
}

impl NodeBgpConfig {
    pub fn from_spec(spec: &BgpConfigurationSpec) -> (NodeBgpConfig, Vec<String>) {
        let mut problems = Vec::new();
        let cluster_wide = [
            ("asNumber", spec.as_number.is_some()),
            ("nodeToNodeMeshEnabled", spec.node_to_node_mesh_enabled.is_some()),
            ("serviceClusterIPs", !spec.service_cluster_ips.is_empty()),
            ("serviceExternalIPs", !spec.service_external_ips.is_empty()),
            ("nodeMeshPassword", spec.node_mesh_password.is_some()),
        ];
        for (field, set) in cluster_wide {
            if set {
                problems.push(format!("{field} is cluster-wide (BGPConfiguration default); ignored here"));
            }
        }
        let c = NodeBgpConfig {
            listen_port: valid_port(spec.listen_port, &mut problems),
            debug: valid_debug(spec.log_severity_screen.as_deref(), &mut problems),
        };
        (c, problems)
    }
}

impl BgpDefaults {
    /// Validate field by field: a bad field is dropped (as if unset) and
    /// reported in the returned list, the others still apply. CIDRs with
    /// host bits are masked, as Calico does (`10.96.0.1/12` → `10.96.0.0/12`).
    pub fn from_spec(spec: &BgpConfigurationSpec) -> (BgpDefaults, Vec<String>) {
        let mut problems = Vec::new();
        let mut service_cidrs = Vec::new();
        let cidrs = spec
            .service_cluster_ips
            .iter()
            .map(|b| ("serviceClusterIPs", b))
            .chain(spec.service_external_ips.iter().map(|b| ("serviceExternalIPs", b)));
        for (field, b) in cidrs {
            // Cannot fail: the prefix length comes from a valid network.
            let masked = match b.cidr {
                IpNetwork::V4(n) => Ipv4Network::new(n.network(), n.prefix()).map(IpNetwork::V4),
                IpNetwork::V6(n) => Ipv6Network::new(n.network(), n.prefix()).map(IpNetwork::V6),
            };
            let Ok(masked) = masked else { continue };
            if masked != b.cidr {
                problems.push(format!("{field} {} has host bits set; using {masked}", b.cidr));
            }
            service_cidrs.push(masked);
        }
        service_cidrs.sort();
        service_cidrs.dedup();
        let as_number = spec.as_number.and_then(|n| {
            let a = AsNumber::valid(n);
            if a.is_none() {
                problems.push("asNumber 0 is not an AS number; ignored".into());
            }
            a
        });
        let debug = valid_debug(spec.log_severity_screen.as_deref(), &mut problems);
        let listen_port = valid_port(spec.listen_port, &mut problems);
        let mesh_password = spec.node_mesh_password.as_ref().and_then(|p| {
            if p.secret_key_ref.is_none() {
                problems.push("nodeMeshPassword: only secretKeyRef {name, key} is supported; ignored".into());
            }
            p.secret_key_ref.clone()
        });
        let d = BgpDefaults {
            present: true,
            as_number,
            mesh: spec.node_to_node_mesh_enabled,
            debug,
            service_cidrs,
            mesh_password,
            listen_port,
        };
        (d, problems)
    }
}

/// Which nodes a BGPPeer is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerScope {
    /// Neither `node` nor `nodeSelector`: every node.
    Global,
    /// `node`: one node by name.
    Node(String),
    /// `nodeSelector` over Node labels.
    Selected(Selector),
}

/// Whom a BGPPeer peers with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerTarget {
    /// `peerIP` (+ port) and `asNumber`: an external router (or a Calico
    /// node with that address, which then peers back: see [`settings`]).
    Addr { ip: IpAddr, port: Option<u16>, as_number: AsNumber },
    /// `peerSelector`: the other Calico nodes whose labels match.
    Nodes(Selector),
}

/// A route reflector's cluster ID (Node `routeReflectorClusterID`): an
/// IPv4-formatted 32-bit number, as Calico validates it and BIRD's
/// `rr cluster id` takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClusterId(pub Ipv4Addr);

impl ClusterId {
    /// An empty (or blank) field is unset; anything but a dotted quad is an
    /// error (it would make `bird -p` refuse the configuration).
    pub fn parse(s: &str) -> Result<Option<ClusterId>, String> {
        let t = s.trim();
        if t.is_empty() {
            return Ok(None);
        }
        t.parse::<Ipv4Addr>().map(|ip| Some(ClusterId(ip))).map_err(|_| {
            format!("routeReflectorClusterID {s:?} is not an IPv4-formatted cluster ID (e.g. 244.0.0.1)")
        })
    }
}

impl std::fmt::Display for ClusterId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// A validated BGPPeer resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerRule {
    pub name: String,
    pub scope: PeerScope,
    pub target: PeerTarget,
    /// `password.secretKeyRef`: the session's TCP-MD5 password, looked up in
    /// the agent's `bgp_secrets` ([`crate::secrets`]).
    pub password: Option<SecretKeyRef>,
    /// `keepOriginalNextHop`: routes go to an eBGP peer with their own next
    /// hop, not this node's address.
    pub keep_original_next_hop: bool,
    /// Fields set on the resource that the agent does not implement
    /// (`sourceAddress`, `filters`, `ttlSecurity`, ...): the peering is made
    /// without them.
    pub ignored_fields: Vec<String>,
}

/// An empty string is an unset field (Go's `omitempty`).
fn set(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

/// Can BIRD open a session to `ip` without naming an interface? An IPv4-mapped
/// IPv6 address is taken as the IPv4 address, as Calico's parser does.
pub(crate) fn peer_address(ip: IpAddr) -> Result<IpAddr, String> {
    match ip.to_canonical() {
        IpAddr::V4(v4)
            if v4.is_unspecified() || v4.is_multicast() || v4.is_broadcast() || v4.is_loopback() =>
        {
            Err("not a unicast address of another host".into())
        }
        IpAddr::V6(v6) if !state::usable_v6(v6) => {
            Err("not a unicast address of another host (link-local needs an interface)".into())
        }
        ip => Ok(ip),
    }
}

impl PeerRule {
    /// Validate a BGPPeer as Calico does (exclusive fields, parseable
    /// selectors and address); the error says what is wrong with it.
    pub fn from_resource(p: &BgpPeer) -> Result<PeerRule, String> {
        let s = &p.spec;
        let parse = |field: &str, v: &str| Selector::parse(v).map_err(|e| format!("{field}: {e}"));
        let scope = match (set(&s.node), set(&s.node_selector)) {
            (Some(_), Some(_)) => return Err("node and nodeSelector cannot both be set".into()),
            (Some(n), None) => PeerScope::Node(n.to_string()),
            (None, Some(sel)) => PeerScope::Selected(parse("nodeSelector", sel)?),
            (None, None) => PeerScope::Global,
        };
        let target = match (set(&s.peer_ip), set(&s.peer_selector)) {
            (Some(_), Some(_)) => return Err("peerIP and peerSelector cannot both be set".into()),
            (None, None) => return Err("one of peerIP or peerSelector is required".into()),
            (None, Some(sel)) => {
                if s.as_number.is_some() {
                    return Err("asNumber must be empty with peerSelector (the nodes' own AS is used)".into());
                }
                PeerTarget::Nodes(parse("peerSelector", sel)?)
            }
            (Some(addr), None) => {
                let (ip, port) = model::parse_peer_ip(addr)
                    .ok_or_else(|| format!("peerIP {addr:?} is not IP, IP:port or [IPv6]:port"))?;
                let ip = peer_address(ip).map_err(|e| format!("peerIP {addr}: {e}"))?;
                if port == Some(0) {
                    return Err(format!("peerIP {addr}: port 0 is not a port"));
                }
                let as_number = s.as_number.ok_or_else(|| format!("peerIP {addr}: asNumber is required"))?;
                let as_number = AsNumber::valid(as_number)
                    .ok_or_else(|| format!("peerIP {addr}: asNumber 0 is not an AS number"))?;
                PeerTarget::Addr { ip, port, as_number }
            }
        };
        let password = match &s.password {
            None => None,
            Some(pw) => Some(
                pw.secret_key_ref.clone().ok_or("password: only secretKeyRef {name, key} is supported")?,
            ),
        };
        // `null` is how some clients write an unset field.
        let ignored_fields = s.other.iter().filter(|(_, v)| !v.is_null()).map(|(k, _)| k.clone()).collect();
        Ok(PeerRule {
            name: p.metadata.name.clone(),
            scope,
            target,
            password,
            keep_original_next_hop: s.keep_original_next_hop.unwrap_or(false),
            ignored_fields,
        })
    }

    /// Does this BGPPeer apply to node `node` with `labels`?
    pub fn applies_to(&self, node: &str, labels: &BTreeMap<String, String>) -> bool {
        match &self.scope {
            PeerScope::Global => true,
            PeerScope::Node(n) => n == node,
            PeerScope::Selected(sel) => sel.matches(labels),
        }
    }
}

/// How a peer appears in BIRD: Calico's protocol name prefixes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerKind {
    /// `Global_`: a peer of every node (config peers, unscoped BGPPeers).
    Global,
    /// `Node_`: a peer of some nodes (`node`, `nodeSelector`, `peerSelector`).
    Node,
}

/// One BGP session this node opens besides the mesh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// IPv4 or IPv6: the session's family is the family of the routes it
    /// carries (the node's IPv6 blocks go over IPv6 sessions).
    pub ip: IpAddr,
    pub port: Option<u16>,
    pub as_number: AsNumber,
    pub kind: PeerKind,
    /// Where it comes from: `config` or `BGPPeer <name>` (+ node for selectors).
    pub source: String,
    /// TCP-MD5 password (BIRD `password`).
    pub password: Option<Password>,
    /// This node reflects routes to this peer (BIRD `rr client`): this node
    /// has a cluster ID, the peer is in its AS and not in its cluster.
    pub rr_client: bool,
    /// Routes go to this peer with the next hop they came with (BIRD `next
    /// hop keep`): its BGPPeer has `keepOriginalNextHop` and the peer is in
    /// another AS (as calico/node; BIRD keeps iBGP next hops anyway).
    pub keep_next_hop: bool,
}

/// Everything BGP the BIRD configuration needs, merged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BgpSettings {
    /// This node's AS.
    pub local_as: AsNumber,
    /// The AS of nodes without their own (mesh and `peerSelector` peers).
    pub default_as: AsNumber,
    pub mesh: bool,
    pub peers: Vec<Peer>,
    pub debug: Option<BirdDebug>,
    /// The port this node's BGP listens on, when not 179 (its own
    /// BGPConfiguration's `listenPort`, else the default one's).
    pub listen_port: Option<u16>,
    /// The `listenPort` of the nodes without their own (BGPConfiguration
    /// default's): where the mesh reaches them.
    pub cluster_listen_port: Option<u16>,
    pub service_cidrs: Vec<IpNetwork>,
    /// BGPConfiguration `nodeMeshPassword`, read from `bgp_secrets`.
    pub mesh_password: Option<Password>,
    /// This node's `routeReflectorClusterID`: it is a route reflector, and
    /// out of the full mesh (as calico/node's template).
    pub rr_cluster_id: Option<ClusterId>,
    /// Peers skipped while merging (a password that cannot be read, an IPv6
    /// peer of a node without an IPv6 address), each naming its document.
    pub problems: BTreeSet<String>,
}

impl BgpSettings {
    /// Settings from the agent's config alone (no datastore resources).
    pub fn from_config(cfg: &AgentConfig) -> BgpSettings {
        settings(cfg, &RoutingState::default())
    }
}

/// A node's addresses as peers: IPv4, and IPv6 when `v6` and it has one.
fn node_addrs(n: &MeshNode, v4: bool, v6: bool) -> Vec<IpAddr> {
    let mut v = Vec::new();
    if v4 {
        v.push(IpAddr::V4(n.ip));
    }
    if let (true, Some(ip6)) = (v6, n.ipv6) {
        v.push(IpAddr::V6(ip6));
    }
    v
}

/// Merge the agent's config with the datastore view (see the module doc).
/// Reads the `bgp_secrets` source for the peers that have a password.
pub fn settings(cfg: &AgentConfig, st: &RoutingState) -> BgpSettings {
    let d = &st.bgp_defaults;
    let default_as = d.as_number.unwrap_or(AsNumber(DEFAULT_AS_NUMBER));
    let node_as = st.this_node.as_ref().and_then(|n| n.as_number);
    let local_as = node_as.or(d.as_number).or(cfg.as_number).unwrap_or(AsNumber(DEFAULT_AS_NUMBER));
    let rr_cluster_id = st.this_node.as_ref().and_then(|n| n.rr_cluster_id);
    let listen_port = bgp_port(st.node_bgp.listen_port, d.listen_port);
    let cluster_listen_port = bgp_port(None, d.listen_port);
    // Where another Calico node's BGP listens.
    let port_of = |n: &MeshNode| bgp_port(n.listen_port, d.listen_port);
    // Before this node's Node resource exists, its labels are the ones it is
    // about to write.
    let labels = st.this_node.as_ref().map_or(&cfg.labels, |n| &n.labels);
    let me4 = IpAddr::V4(cfg.node_ip.ip());
    let me6 = cfg.node_ipv6.map(|n| IpAddr::V6(n.ip()));
    let has_rule_password = st.bgp_peers.iter().any(|r| r.password.is_some()) || d.mesh_password.is_some();
    let secrets = if has_rule_password { Secrets::open(cfg.bgp_secrets.as_deref()) } else { Secrets::None };
    let mut problems = BTreeSet::new();

    let mut peers: Vec<Peer> = Vec::new();
    // A peer candidate: the address, its AS, its cluster ID if it is a
    // Calico node, and the rule it comes from (for the password).
    let mut add =
        |p: Peer, cluster: Option<ClusterId>, rule: Option<&PeerRule>, problems: &mut BTreeSet<String>| {
            if p.ip == me4 || Some(p.ip) == me6 {
                log::debug!("{}: skipping peer {}, this node's own address", p.source, p.ip);
                return;
            }
            if p.ip.is_ipv6() && me6.is_none() {
                problems.insert(format!(
                    "{}: peer {} is IPv6 and this node has no IPv6 address (node_ipv6); skipped",
                    p.source, p.ip
                ));
                return;
            }
            if let Some(first) = peers.iter().find(|q| q.ip == p.ip) {
                if first.as_number != p.as_number || first.port != p.port {
                    log::warn!("{}: peer {} already configured by {}; ignored", p.source, p.ip, first.source);
                }
                return;
            }
            let mut p = p;
            if let Some(r) = rule.and_then(|r| r.password.as_ref()) {
                match secrets.password(r) {
                    Ok(pw) => p.password = Some(pw),
                    // Never a session without the password it was given: against
                    // a peer that requires it, it could not come up anyway, and
                    // against one that does not, it would silently drop the MD5
                    // protection (calico/node peers without it; we do not).
                    Err(e) => {
                        problems.insert(format!(
                            "{}: peer {}: password: {e}; session not configured",
                            p.source, p.ip
                        ));
                        return;
                    }
                }
            }
            p.rr_client = rr_cluster_id.is_some() && p.as_number == local_as && cluster != rr_cluster_id;
            p.keep_next_hop = rule.is_some_and(|r| r.keep_original_next_hop) && p.as_number != local_as;
            peers.push(p);
        };
    let peer = |ip: IpAddr, port, as_number, kind, source: String| Peer {
        ip,
        port,
        as_number,
        kind,
        source,
        password: None,
        rr_client: false,
        keep_next_hop: false,
    };
    let node_as_of = |n: &MeshNode| n.as_number.unwrap_or(default_as);
    // A Calico node a BGPPeer makes this node peer with (either way round).
    let node_peer = |rule: &PeerRule, n: &MeshNode, ip: IpAddr| {
        peer(ip, port_of(n), node_as_of(n), PeerKind::Node, format!("BGPPeer {} node {}", rule.name, n.name))
    };
    for rule in st.bgp_peers.iter().filter(|r| r.applies_to(&cfg.node_name, labels)) {
        let kind = if rule.scope == PeerScope::Global { PeerKind::Global } else { PeerKind::Node };
        match &rule.target {
            PeerTarget::Addr { ip, port, as_number } => {
                // A Calico node's address: its cluster ID decides `rr client`,
                // and without a port of its own the session goes to the
                // node's listenPort (Calico's rule).
                let node = st
                    .other_nodes
                    .iter()
                    .find(|n| IpAddr::V4(n.ip) == *ip || n.ipv6.map(IpAddr::V6) == Some(*ip));
                let port = port.or_else(|| node.and_then(port_of));
                add(
                    peer(*ip, port, *as_number, kind, format!("BGPPeer {}", rule.name)),
                    node.and_then(|n| n.rr_cluster_id),
                    Some(rule),
                    &mut problems,
                )
            }
            PeerTarget::Nodes(sel) => {
                for n in st.other_nodes.iter().filter(|n| sel.matches(&n.labels)) {
                    for ip in node_addrs(n, true, true) {
                        add(node_peer(rule, n, ip), n.rr_cluster_id, Some(rule), &mut problems);
                    }
                }
            }
        }
    }
    // The reverse of BGPPeers that make other nodes peer with this one, as
    // calico/node completes them: a session needs both ends, and the
    // BGPPeer names this node only as the target (`peerSelector` matching
    // its labels, or `peerIP` equal to its address with its AS). This node
    // then peers with the nodes the BGPPeer applies to. That is how a route
    // reflector gets its clients: `nodeSelector: all()` + `peerSelector:
    // route-reflector == 'true'`.
    for rule in &st.bgp_peers {
        let (v4, v6) = match &rule.target {
            PeerTarget::Nodes(sel) if sel.matches(labels) => (true, true),
            PeerTarget::Addr { ip, port, as_number }
                if (*ip == me4 || Some(*ip) == me6)
                    && *as_number == local_as
                    // No port: whichever this node listens on.
                    && (port.is_none() || bgp_port(*port, None) == listen_port) =>
            {
                (ip.is_ipv4(), ip.is_ipv6())
            }
            _ => continue,
        };
        for n in st.other_nodes.iter().filter(|n| rule.applies_to(&n.name, &n.labels)) {
            for ip in node_addrs(n, v4, v6) {
                add(node_peer(rule, n, ip), n.rr_cluster_id, Some(rule), &mut problems);
            }
        }
    }
    for p in &cfg.peers {
        add(peer(p.ip, None, p.as_number, PeerKind::Global, "config".into()), None, None, &mut problems);
    }
    if me6.is_none() && st.own_blocks.iter().any(|b| b.0.is_ipv6()) {
        problems.insert(
            "this node has IPv6 blocks but no IPv6 address (node_ipv6): they are blackholed, not announced"
                .into(),
        );
    }

    // Calico turns the mesh on unless BGPConfiguration says otherwise;
    // without one, the config decides (off by default, as before).
    let mut mesh = d.mesh.unwrap_or(d.present || cfg.node_to_node_mesh);
    let mut mesh_password = None;
    if let (true, Some(r)) = (mesh, &d.mesh_password) {
        match secrets.password(r) {
            Ok(pw) => mesh_password = Some(pw),
            // As for a BGPPeer: no mesh session without its password.
            Err(e) => {
                problems
                    .insert(format!("BGPConfiguration default: nodeMeshPassword: {e}; no node-to-node mesh"));
                mesh = false;
            }
        }
    }
    BgpSettings {
        local_as,
        default_as,
        mesh,
        peers,
        debug: st.node_bgp.debug.or(d.debug),
        listen_port,
        cluster_listen_port,
        service_cidrs: d.service_cidrs.clone(),
        mesh_password,
        rr_cluster_id,
        problems,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{MeshNode, ThisNode};
    use calico_store::model::{BgpPeerSpec, ObjectMeta, ServiceIpBlock};

    fn cfg(extra: &str) -> AgentConfig {
        crate::config::test_flags(&format!(
            "--node-name me --node-ip 10.0.0.1/24 --datastore-path /nonexistent {extra}"
        ))
        .unwrap()
        .0
    }

    fn peer(name: &str, spec: BgpPeerSpec) -> Result<PeerRule, String> {
        PeerRule::from_resource(&BgpPeer::new(
            "BGPPeer",
            ObjectMeta { name: name.into(), ..Default::default() },
            spec,
        ))
    }

    fn s(v: &str) -> Option<String> {
        Some(v.to_string())
    }

    fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn ips(b: &BgpSettings) -> Vec<String> {
        b.peers.iter().map(|p| format!("{}/{}/{:?}", p.ip, p.as_number, p.kind)).collect()
    }

    #[test]
    fn invalid_bgp_peers_say_why() {
        let cases = [
            (
                BgpPeerSpec {
                    node: s("a"),
                    node_selector: s("all()"),
                    peer_ip: s("1.1.1.1"),
                    as_number: Some(1),
                    ..Default::default()
                },
                "both be set",
            ),
            (
                BgpPeerSpec { peer_ip: s("1.1.1.1"), peer_selector: s("all()"), ..Default::default() },
                "peerSelector cannot",
            ),
            (BgpPeerSpec { node: s("a"), ..Default::default() }, "required"),
            (BgpPeerSpec { peer_ip: s("1.1.1.1"), ..Default::default() }, "asNumber is required"),
            (BgpPeerSpec { peer_ip: s("tor"), as_number: Some(1), ..Default::default() }, "not IP"),
            (BgpPeerSpec { peer_ip: s("fe80::1"), as_number: Some(1), ..Default::default() }, "link-local"),
            (BgpPeerSpec { peer_ip: s("ff02::2"), as_number: Some(1), ..Default::default() }, "unicast"),
            (BgpPeerSpec { peer_ip: s("0.0.0.0"), as_number: Some(1), ..Default::default() }, "unicast"),
            (
                BgpPeerSpec { peer_ip: s("224.0.0.5:179"), as_number: Some(1), ..Default::default() },
                "unicast",
            ),
            (
                BgpPeerSpec {
                    peer_ip: s("1.1.1.1"),
                    as_number: Some(1),
                    password: Some(model::BgpPassword { secret_key_ref: None }),
                    ..Default::default()
                },
                "only secretKeyRef",
            ),
            (
                BgpPeerSpec {
                    peer_ip: s("1.1.1.1"),
                    as_number: Some(1),
                    node_selector: s("rack =="),
                    ..Default::default()
                },
                "nodeSelector: invalid selector",
            ),
            (
                BgpPeerSpec { peer_selector: s("has(x)"), as_number: Some(1), ..Default::default() },
                "asNumber must be empty",
            ),
            // BIRD refuses both ("Remote AS number must be set", "Invalid port number").
            (BgpPeerSpec { peer_ip: s("1.1.1.1"), as_number: Some(0), ..Default::default() }, "asNumber 0"),
            (BgpPeerSpec { peer_ip: s("1.1.1.1:0"), as_number: Some(1), ..Default::default() }, "port 0"),
        ];
        for (spec, want) in cases {
            let e = peer("p", spec.clone()).unwrap_err();
            assert!(e.contains(want), "{spec:?}: {e}");
        }
        // Empty strings are unset fields.
        let r = peer(
            "p",
            BgpPeerSpec {
                node: s(""),
                node_selector: s(""),
                peer_ip: s("1.1.1.1:1790"),
                as_number: Some(65000),
                peer_selector: s(""),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(r.scope, PeerScope::Global);
        assert_eq!(
            r.target,
            PeerTarget::Addr { ip: "1.1.1.1".parse().unwrap(), port: Some(1790), as_number: AsNumber(65000) }
        );
    }

    #[test]
    fn scopes_select_the_nodes_they_name() {
        let g =
            peer("g", BgpPeerSpec { peer_ip: s("10.0.0.254"), as_number: Some(65000), ..Default::default() })
                .unwrap();
        let n = peer(
            "n",
            BgpPeerSpec {
                node: s("me"),
                peer_ip: s("10.0.0.253"),
                as_number: Some(65000),
                ..Default::default()
            },
        )
        .unwrap();
        let sel = peer(
            "s",
            BgpPeerSpec {
                node_selector: s("rack == 'r1'"),
                peer_ip: s("10.0.0.252"),
                as_number: Some(65000),
                ..Default::default()
            },
        )
        .unwrap();
        let r1 = labels(&[("rack", "r1")]);
        let r2 = labels(&[("rack", "r2")]);
        assert!(g.applies_to("me", &r1) && g.applies_to("other", &BTreeMap::new()));
        assert!(n.applies_to("me", &r2) && !n.applies_to("other", &r1));
        assert!(
            sel.applies_to("x", &r1) && !sel.applies_to("me", &r2) && !sel.applies_to("me", &BTreeMap::new())
        );
    }

    #[test]
    fn the_original_next_hop_is_kept_for_ebgp_peers_only() {
        let keep = |name: &str, ip: &str, asn: u32| {
            peer(
                name,
                BgpPeerSpec {
                    peer_ip: s(ip),
                    as_number: Some(asn),
                    keep_original_next_hop: Some(true),
                    ..Default::default()
                },
            )
            .unwrap()
        };
        let plain = peer(
            "plain",
            BgpPeerSpec { peer_ip: s("10.0.0.3"), as_number: Some(65000), ..Default::default() },
        )
        .unwrap();
        let st = RoutingState {
            bgp_peers: vec![keep("ebgp", "10.0.0.11", 65000), keep("ibgp", "10.0.0.2", 64600), plain],
            ..Default::default()
        };
        let b = settings(&cfg("--as 64600"), &st);
        let kept: Vec<(String, bool)> = b.peers.iter().map(|p| (p.ip.to_string(), p.keep_next_hop)).collect();
        assert_eq!(
            kept,
            [("10.0.0.11".into(), true), ("10.0.0.2".into(), false), ("10.0.0.3".into(), false)],
            "iBGP keeps next hops anyway, and only a BGPPeer that asks gets it"
        );
    }

    #[test]
    fn a_peer_ip_of_a_calico_node_goes_to_its_listen_port() {
        let node = |name: &str, ip: &str, port: Option<u16>| MeshNode {
            name: name.into(),
            ip: ip.parse().unwrap(),
            as_number: None,
            labels: BTreeMap::new(),
            ipv6: None,
            rr_cluster_id: None,
            listen_port: port,
        };
        let by_ip = |name: &str, ip: &str, scope: Option<&str>| {
            peer(
                name,
                BgpPeerSpec {
                    peer_ip: s(ip),
                    as_number: Some(64512),
                    node_selector: scope.and_then(s),
                    ..Default::default()
                },
            )
            .unwrap()
        };
        let (mut defaults, _) = BgpDefaults::from_spec(&BgpConfigurationSpec::default());
        defaults.listen_port = Some(1790);
        let st = RoutingState {
            other_nodes: vec![node("d", "10.0.0.4", Some(1794)), node("e", "10.0.0.5", None)],
            bgp_defaults: defaults,
            bgp_peers: vec![
                by_ip("to-d", "10.0.0.4", None),
                by_ip("to-e-explicit", "10.0.0.5:1800", None),
                // Names this node (10.0.0.1) without a port, for the nodes
                // labelled x: this node peers back with them.
                by_ip("to-me", "10.0.0.1", Some("has(x)")),
            ],
            ..Default::default()
        };
        let mut st = st;
        st.other_nodes[1].labels.insert("x".into(), String::new());
        let b = settings(&cfg(""), &st);
        let got: Vec<(String, Option<u16>)> = b.peers.iter().map(|p| (p.ip.to_string(), p.port)).collect();
        assert_eq!(
            got,
            [("10.0.0.4".into(), Some(1794)), ("10.0.0.5".into(), Some(1800))],
            "d's own port; e's explicit one; and the reverse of to-me is e, already a peer"
        );
        assert_eq!(b.listen_port, Some(1790));
        // Without the explicit peer, the reverse of to-me is what peers with e.
        st.bgp_peers.retain(|r| r.name != "to-e-explicit");
        let b = settings(&cfg(""), &st);
        assert!(
            b.peers.iter().any(|p| p.ip.to_string() == "10.0.0.5" && p.source.contains("to-me")),
            "{:?}",
            b.peers
        );
    }

    #[test]
    fn config_alone_is_the_fallback() {
        let b = BgpSettings::from_config(&cfg("--as 64600 --peer 10.0.0.254:65000 --mesh"));
        assert_eq!(b.local_as, AsNumber(64600));
        assert_eq!(b.default_as, AsNumber(64512));
        assert!(b.mesh);
        assert_eq!(ips(&b), ["10.0.0.254/65000/Global"]);
        assert_eq!(b.debug, None);
    }

    #[test]
    fn datastore_overrides_and_extends_the_config() {
        let c = cfg("--peer 10.0.0.254:65000 --peer 10.0.0.9:65009 --peer 10.0.0.1:1 --mesh --label rack=r1");
        let rules = vec![
            // Same address as a config peer, other AS: the BGPPeer wins.
            peer(
                "a-tor",
                BgpPeerSpec {
                    node_selector: s("rack == 'r1'"),
                    peer_ip: s("10.0.0.254"),
                    as_number: Some(65100),
                    ..Default::default()
                },
            )
            .unwrap(),
            peer(
                "b-other-rack",
                BgpPeerSpec {
                    node_selector: s("rack == 'r2'"),
                    peer_ip: s("10.0.1.254"),
                    as_number: Some(65200),
                    ..Default::default()
                },
            )
            .unwrap(),
            peer(
                "c-other-node",
                BgpPeerSpec {
                    node: s("other"),
                    peer_ip: s("10.0.0.250"),
                    as_number: Some(65000),
                    ..Default::default()
                },
            )
            .unwrap(),
            peer(
                "d-mine",
                BgpPeerSpec {
                    node: s("me"),
                    peer_ip: s("10.0.0.251"),
                    as_number: Some(65000),
                    ..Default::default()
                },
            )
            .unwrap(),
            peer(
                "e-global",
                BgpPeerSpec { peer_ip: s("192.0.2.1"), as_number: Some(65300), ..Default::default() },
            )
            .unwrap(),
            // Our own address: skipped.
            peer(
                "f-self",
                BgpPeerSpec { peer_ip: s("10.0.0.1"), as_number: Some(64512), ..Default::default() },
            )
            .unwrap(),
            peer("g-rr", BgpPeerSpec { peer_selector: s("has(rr)"), ..Default::default() }).unwrap(),
        ];
        let node = |name: &str, ip: &str, asn: Option<u32>, l: &[(&str, &str)]| MeshNode {
            name: name.into(),
            ip: ip.parse().unwrap(),
            as_number: asn.map(AsNumber),
            labels: labels(l),
            ipv6: None,
            rr_cluster_id: None,
            listen_port: None,
        };
        let st = RoutingState {
            this_node: Some(ThisNode {
                labels: labels(&[("rack", "r1")]),
                as_number: Some(AsNumber(64700)),
                rr_cluster_id: None,
            }),
            other_nodes: vec![
                node("rr1", "10.0.5.1", None, &[("rr", "")]),
                node("w", "10.0.5.2", Some(64999), &[]),
            ],
            bgp_defaults: BgpDefaults::from_spec(&BgpConfigurationSpec {
                as_number: Some(63400),
                node_to_node_mesh_enabled: Some(false),
                log_severity_screen: s("Debug"),
                service_cluster_ips: vec![ServiceIpBlock { cidr: "10.96.0.0/12".parse().unwrap() }],
                ..Default::default()
            })
            .0,
            bgp_peers: rules,
            ..Default::default()
        };
        let b = settings(&c, &st);
        assert_eq!(b.local_as, AsNumber(64700), "the Node's own AS first");
        assert_eq!(b.default_as, AsNumber(63400));
        assert!(!b.mesh, "BGPConfiguration turns the mesh off over --mesh");
        assert_eq!(b.debug, Some(BirdDebug::All));
        assert_eq!(b.service_cidrs, vec!["10.96.0.0/12".parse::<IpNetwork>().unwrap()]);
        assert_eq!(
            ips(&b),
            [
                "10.0.0.254/65100/Node",
                "10.0.0.251/65000/Node",
                "192.0.2.1/65300/Global",
                "10.0.5.1/63400/Node",
                "10.0.0.9/65009/Global"
            ]
        );

        // No Node resource yet: the config's labels select; the BGPConfiguration's
        // AS beats the config's (Calico: Node > BGPConfiguration > 64512).
        let st2 = RoutingState { this_node: None, ..st.clone() };
        let b2 = settings(&cfg("--as 64601 --label rack=r2"), &st2);
        assert_eq!(b2.local_as, AsNumber(63400));
        assert!(ips(&b2).contains(&"10.0.1.254/65200/Node".to_string()), "{:?}", ips(&b2));
        assert!(!ips(&b2).iter().any(|p| p.starts_with("10.0.0.254")));
        // No AS in the BGPConfiguration: the config's AS is the fallback, then 64512.
        let mut st3 = st2.clone();
        st3.bgp_defaults.as_number = None;
        assert_eq!(settings(&cfg("--as 64601"), &st3).local_as, AsNumber(64601));
        assert_eq!(settings(&cfg(""), &st3).local_as, AsNumber(64512));
        // The Node's own AS beats both.
        let st4 = RoutingState {
            this_node: Some(ThisNode {
                labels: BTreeMap::new(),
                as_number: Some(AsNumber(64800)),
                rr_cluster_id: None,
            }),
            ..st2.clone()
        };
        assert_eq!(settings(&cfg("--as 64601"), &st4).local_as, AsNumber(64800));
    }

    #[test]
    fn mesh_defaults_follow_calico_when_a_bgp_configuration_exists() {
        let no_doc = RoutingState::default();
        assert!(!settings(&cfg(""), &no_doc).mesh, "no BGPConfiguration: the config (off)");
        assert!(settings(&cfg("--mesh"), &no_doc).mesh);
        let unset = RoutingState {
            bgp_defaults: BgpDefaults::from_spec(&BgpConfigurationSpec {
                as_number: Some(63400),
                ..Default::default()
            })
            .0,
            ..Default::default()
        };
        assert!(settings(&cfg(""), &unset).mesh, "BGPConfiguration without the field: on, as in Calico");
        let mut off = unset.clone();
        off.bgp_defaults.mesh = Some(false);
        assert!(!settings(&cfg("--mesh"), &off).mesh, "the field wins over the config");
    }

    #[test]
    fn bgp_configuration_validation_drops_only_the_bad_field() {
        let (d, problems) = BgpDefaults::from_spec(&BgpConfigurationSpec {
            log_severity_screen: s("Verbose"),
            as_number: Some(63400),
            node_to_node_mesh_enabled: Some(false),
            service_cluster_ips: vec![ServiceIpBlock { cidr: "10.96.0.1/12".parse().unwrap() }],
            service_external_ips: vec![ServiceIpBlock { cidr: "192.0.2.0/24".parse().unwrap() }],
            ..Default::default()
        });
        // The bad severity goes; AS, mesh and the (masked) CIDRs stay.
        assert_eq!(d.debug, None);
        assert_eq!(d.as_number, Some(AsNumber(63400)));
        assert_eq!(d.mesh, Some(false));
        let cidrs: Vec<String> = d.service_cidrs.iter().map(|c| c.to_string()).collect();
        assert_eq!(cidrs, ["10.96.0.0/12", "192.0.2.0/24"]);
        assert!(d.present);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems.iter().any(|p| p.contains("logSeverityScreen")), "{problems:?}");
        assert!(
            problems.iter().any(|p| p.contains("host bits") && p.contains("10.96.0.0/12")),
            "{problems:?}"
        );

        // AS 0 is dropped (BIRD: "Local AS number must be set").
        let (d, problems) =
            BgpDefaults::from_spec(&BgpConfigurationSpec { as_number: Some(0), ..Default::default() });
        assert_eq!(d.as_number, None);
        assert!(problems[0].contains("asNumber 0"), "{problems:?}");

        let (none, problems) = BgpDefaults::from_spec(&BgpConfigurationSpec {
            log_severity_screen: s("none"),
            ..Default::default()
        });
        assert!(problems.is_empty());
        assert_eq!(none.debug, Some(BirdDebug::Off));
        assert_eq!(none.mesh, None);
    }

    #[test]
    fn unimplemented_peer_fields_are_listed_and_the_password_is_a_reference() {
        let mut spec = BgpPeerSpec {
            peer_ip: s("[fd00::1]:1790"),
            as_number: Some(65000),
            password: Some(model::BgpPassword {
                secret_key_ref: Some(SecretKeyRef { name: "x".into(), key: "y".into() }),
            }),
            ..Default::default()
        };
        spec.other.insert("sourceAddress".into(), serde_json::json!("None"));
        spec.other.insert("ttlSecurity".into(), serde_json::Value::Null);
        let r = peer("p", spec).unwrap();
        assert_eq!(r.ignored_fields, ["sourceAddress"]);
        assert_eq!(r.password, Some(SecretKeyRef { name: "x".into(), key: "y".into() }));
        assert_eq!(
            r.target,
            PeerTarget::Addr { ip: "fd00::1".parse().unwrap(), port: Some(1790), as_number: AsNumber(65000) }
        );
        // An IPv4-mapped address is the IPv4 peer.
        let m = peer(
            "m",
            BgpPeerSpec { peer_ip: s("::ffff:10.0.0.9"), as_number: Some(1), ..Default::default() },
        )
        .unwrap();
        assert!(matches!(m.target, PeerTarget::Addr { ip: IpAddr::V4(_), .. }), "{m:?}");
    }
}
