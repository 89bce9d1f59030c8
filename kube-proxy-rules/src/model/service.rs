//! kube-proxy's view of a Service: one [`ServicePortInfo`] per port (its
//! `servicePortInfo`), validated, plus the apiserver defaults a manifest as a
//! user wrote it lacks (a ClusterIP and NodePorts are normally allocated by the
//! apiserver; here they are allocated deterministically and reported).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use sha2::{Digest, Sha256};

use crate::family::{unmap, unmap_net, IpFamily};
use crate::k8s::{IntOrString, ObjectError, ObjectRef, Service};
use crate::model::topology::TrafficDistribution;
use crate::names::ServiceChains;
use crate::validate::{dns1123_label, iana_svc_name};

/// Default `sessionAffinityConfig.clientIP.timeoutSeconds`.
pub const DEFAULT_AFFINITY_TIMEOUT: u32 = 10800;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// `TCP`/`UDP`/`SCTP` (absent = TCP, as the apiserver defaults it).
    pub fn parse(s: Option<&str>) -> Result<Protocol, String> {
        match s.unwrap_or("TCP") {
            "TCP" => Ok(Protocol::Tcp),
            "UDP" => Ok(Protocol::Udp),
            "SCTP" => Ok(Protocol::Sctp),
            other => Err(format!("invalid protocol {other:?} (expected TCP, UDP or SCTP)")),
        }
    }
    /// The lower-case form used in rules and hashes.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

/// One port of one Service, as the proxier sees it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServicePortInfo {
    pub namespace: String,
    pub name: String,
    pub port_name: String,
    /// `ns/name:port` (or `ns/name` for an unnamed port).
    pub name_string: String,
    pub protocol: Protocol,
    /// The ClusterIP of this port's family (a dual-stack Service has one
    /// [`ServicePortInfo`] per family, as each family's proxier sees it).
    pub cluster_ip: IpAddr,
    pub port: u16,
    /// For endpoints derived from pod records (absent = `port`).
    pub target_port: IntOrString,
    pub node_port: u16,
    /// externalIPs, LB ingress IPs and source ranges of this port's family.
    pub external_ips: Vec<IpAddr>,
    pub load_balancer_vips: Vec<IpAddr>,
    pub load_balancer_source_ranges: Vec<IpNetwork>,
    /// `Some(timeout)` with ClientIP session affinity.
    pub affinity_timeout: Option<u32>,
    pub health_check_node_port: u16,
    pub internal_policy_local: bool,
    pub external_policy_local: bool,
    /// `spec.trafficDistribution` (see [`crate::model::topology`]).
    pub traffic_distribution: Option<TrafficDistribution>,
    pub chains: ServiceChains,
}

impl ServicePortInfo {
    /// The family of the proxier that handles this port.
    pub fn family(&self) -> IpFamily {
        IpFamily::of(self.cluster_ip)
    }
    /// NodePort, LB VIPs or externalIPs (`ExternallyAccessible`).
    pub fn externally_accessible(&self) -> bool {
        self.node_port != 0 || !self.load_balancer_vips.is_empty() || !self.external_ips.is_empty()
    }
    /// Cluster endpoints are needed for iTP Cluster, and for any external
    /// traffic (eTP Local still short-circuits local traffic to the cluster chain).
    pub fn uses_cluster_endpoints(&self) -> bool {
        !self.internal_policy_local || self.externally_accessible()
    }
    pub fn uses_local_endpoints(&self) -> bool {
        self.internal_policy_local || (self.external_policy_local && self.externally_accessible())
    }
}

/// Parse an IPv4 address the way Go's `ParseIPSloppy` does (leading zeros allowed).
pub fn parse_ipv4_sloppy(s: &str) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut parts = s.split('.');
    for o in octets.iter_mut() {
        let p = parts.next()?;
        if p.is_empty() || p.len() > 3 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        *o = p.parse().ok()?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(Ipv4Addr::from(octets))
}

/// Parse an IPv4 CIDR the way Go's `ParseCIDRSloppy` does (leading zeros
/// allowed, `203.0.113.000/025`), masked like Go's `ParseCIDR`:
/// 203.0.113.5/25 → 203.0.113.0/25.
pub fn parse_cidr_sloppy(s: &str) -> Option<Ipv4Network> {
    let (ip, prefix) = s.split_once('/')?;
    let ip = parse_ipv4_sloppy(ip)?;
    if prefix.is_empty() || prefix.len() > 3 || !prefix.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let prefix: u8 = prefix.parse().ok()?;
    let net = Ipv4Network::new(ip, prefix).ok()?;
    Ipv4Network::new(net.network(), prefix).ok()
}

/// Parse an IP of either family as Go's `ParseIPSloppy` does (IPv4 with
/// leading zeros allowed; IPv6 as written), an IPv4-mapped IPv6 address
/// (`::ffff:a.b.c.d`) giving the IPv4 address (see [`crate::family::unmap`]).
pub fn parse_ip_sloppy(s: &str) -> Option<IpAddr> {
    if s.contains(':') {
        s.parse::<Ipv6Addr>().ok().map(|ip| unmap(IpAddr::V6(ip)))
    } else {
        parse_ipv4_sloppy(s).map(IpAddr::V4)
    }
}

/// Parse a CIDR of either family, masked (see [`parse_cidr_sloppy`]). The
/// prefix is required in both families, as Go's `ParseCIDR` requires it
/// (`2001:db8::5` is not `2001:db8::5/128`). An IPv4-mapped IPv6 network is
/// the IPv4 network (see [`crate::family::unmap_net`]).
pub fn parse_ip_cidr_sloppy(s: &str) -> Option<IpNetwork> {
    if !s.contains(':') {
        return parse_cidr_sloppy(s).map(IpNetwork::V4);
    }
    let (ip, prefix) = s.split_once('/')?;
    if prefix.is_empty() || prefix.len() > 3 || !prefix.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let net = Ipv6Network::new(ip.parse().ok()?, prefix.parse().ok()?).ok()?;
    Ipv6Network::new(net.network(), net.prefix()).ok().map(|n| unmap_net(IpNetwork::V6(n)))
}

/// What became of one Service.
pub enum Converted {
    Ports(Vec<ServicePortInfo>),
    /// Not proxied (headless, ExternalName): the reason, for a note.
    Skipped(String),
}

/// Validate a Service and turn it into its ports. The ClusterIP and NodePorts
/// must already be allocated (see [`allocate`]).
pub fn convert(svc: &Service, source: &str) -> Result<Converted, ObjectError> {
    let oref = ObjectRef {
        kind: "Service".into(),
        namespace: svc.metadata.ns().to_string(),
        name: svc.metadata.name().to_string(),
    };
    let err = |reason: String| ObjectError { object: oref.clone(), source_file: source.to_string(), reason };
    let spec = &svc.spec;
    let svc_type = spec.type_.as_deref().unwrap_or("ClusterIP");
    if !matches!(svc_type, "ClusterIP" | "NodePort" | "LoadBalancer" | "ExternalName") {
        return Err(err(format!("invalid spec.type {svc_type:?}")));
    }
    if svc_type == "ExternalName" {
        return Ok(Converted::Skipped("type ExternalName is not proxied".into()));
    }
    // The ClusterIPs, primary first: `clusterIPs` when set (clusterIP is its
    // first entry), else `clusterIP`. At most one per family.
    let cluster_ips_text: Vec<&str> = if spec.cluster_ips.is_empty() {
        spec.cluster_ip.as_deref().into_iter().collect()
    } else {
        spec.cluster_ips.iter().map(String::as_str).collect()
    };
    let mut cluster_ips: Vec<IpAddr> = Vec::new();
    for ip in cluster_ips_text {
        match ip {
            "" => return Err(err("spec.clusterIP is missing".into())),
            "None" => return Ok(Converted::Skipped("headless (clusterIP None)".into())),
            ip => {
                let parsed =
                    parse_ip_sloppy(ip).ok_or_else(|| err(format!("invalid spec.clusterIP {ip:?}")))?;
                if cluster_ips.iter().any(|c| IpFamily::of(*c) == IpFamily::of(parsed)) {
                    return Err(err(format!("spec.clusterIPs: two {} addresses", IpFamily::of(parsed))));
                }
                cluster_ips.push(parsed);
            }
        }
    }
    if cluster_ips.is_empty() {
        return Err(err("spec.clusterIP is missing".into()));
    }
    let mut external_ips = Vec::new();
    for ip in &spec.external_ips {
        external_ips.push(parse_ip_sloppy(ip).ok_or_else(|| err(format!("invalid externalIP {ip:?}")))?);
    }
    let mut lb_vips = Vec::new();
    for ing in &svc.status.load_balancer.ingress {
        let Some(ip) = ing.ip.as_deref().filter(|ip| !ip.is_empty()) else { continue };
        let parsed = parse_ip_sloppy(ip)
            .ok_or_else(|| err(format!("invalid status.loadBalancer.ingress IP {ip:?}")))?;
        // ipMode Proxy: the load balancer proxies itself, the IP is not captured on nodes.
        if ing.ip_mode.as_deref() != Some("Proxy") {
            lb_vips.push(parsed);
        }
    }
    let mut source_ranges = Vec::new();
    for r in &spec.load_balancer_source_ranges {
        let r = r.trim();
        let net = parse_ip_cidr_sloppy(r)
            .ok_or_else(|| err(format!("invalid loadBalancerSourceRanges entry {r:?}")))?;
        source_ranges.push(net);
    }
    let affinity_timeout = match spec.session_affinity.as_deref().unwrap_or("None") {
        "None" => None,
        "ClientIP" => {
            let t = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .unwrap_or(DEFAULT_AFFINITY_TIMEOUT as i64);
            if !(1..=86400).contains(&t) {
                return Err(err(format!("invalid sessionAffinityConfig.clientIP.timeoutSeconds {t}")));
            }
            Some(t as u32)
        }
        other => return Err(err(format!("invalid spec.sessionAffinity {other:?}"))),
    };
    let policy = |v: Option<&str>, field: &str| -> Result<bool, ObjectError> {
        match v.unwrap_or("Cluster") {
            "Cluster" => Ok(false),
            "Local" => Ok(true),
            other => Err(err(format!("invalid spec.{field} {other:?}"))),
        }
    };
    let externally_accessible = svc_type == "LoadBalancer"
        || svc_type == "NodePort"
        || (svc_type == "ClusterIP" && !spec.external_ips.is_empty());
    let etp_local = policy(spec.external_traffic_policy.as_deref(), "externalTrafficPolicy")?;
    let external_policy_local = externally_accessible && etp_local;
    let internal_policy_local = policy(spec.internal_traffic_policy.as_deref(), "internalTrafficPolicy")?;
    let traffic_distribution = match spec.traffic_distribution.as_deref() {
        None | Some("") => None,
        Some(td) => Some(TrafficDistribution::parse(td).map_err(err)?),
    };
    let health_check_node_port = if svc_type == "LoadBalancer" && etp_local {
        let hc = spec.health_check_node_port.unwrap_or(0);
        u16::try_from(hc).map_err(|_| err(format!("invalid spec.healthCheckNodePort {hc}")))?
    } else {
        0
    };

    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for (i, p) in spec.ports.iter().enumerate() {
        let port_name = p.name.clone().unwrap_or_default();
        // The port name is part of chain names and comments: the API
        // server's rules (a DNS-1123 label, required and unique when the
        // service has more than one port).
        if port_name.is_empty() {
            if spec.ports.len() > 1 {
                return Err(err(format!(
                    "spec.ports[{i}].name is required when a service has more than one port"
                )));
            }
        } else {
            dns1123_label(&port_name)
                .map_err(|e| err(format!("invalid spec.ports[{i}].name {port_name:?}: {e}")))?;
        }
        if !seen.insert(port_name.clone()) {
            return Err(err(format!("spec.ports[{i}].name: duplicate {port_name:?}")));
        }
        let protocol = Protocol::parse(p.protocol.as_deref()).map_err(|e| err(format!("ports[{i}]: {e}")))?;
        let port = u16::try_from(p.port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| err(format!("ports[{i}]: invalid port {}", p.port)))?;
        let node_port = p.node_port.unwrap_or(0);
        let node_port =
            u16::try_from(node_port).map_err(|_| err(format!("ports[{i}]: invalid nodePort {node_port}")))?;
        let target_port = match &p.target_port {
            None => IntOrString::Int(port as i64),
            Some(IntOrString::Int(t)) if !(1..=65535).contains(t) => {
                return Err(err(format!("ports[{i}]: invalid targetPort {t}")))
            }
            Some(IntOrString::Str(s)) if s.is_empty() => {
                return Err(err(format!("ports[{i}]: empty targetPort name")))
            }
            Some(IntOrString::Str(s)) => {
                iana_svc_name(s)
                    .map_err(|e| err(format!("invalid spec.ports[{i}].targetPort {s:?}: {e}")))?;
                IntOrString::Str(s.clone())
            }
            Some(t) => t.clone(),
        };
        let ns = svc.metadata.ns();
        let name = svc.metadata.name();
        let name_string =
            if port_name.is_empty() { format!("{ns}/{name}") } else { format!("{ns}/{name}:{port_name}") };
        let chains = ServiceChains::new(&name_string, protocol.as_str());
        // One port per family: each family's proxier sees its ClusterIP and
        // the externalIPs, LB IPs and source ranges of its family only
        // (`MapIPsByIPFamily`, `MapCIDRsByIPFamily`).
        for &cluster_ip in &cluster_ips {
            let family = IpFamily::of(cluster_ip);
            let of_family = |ips: &[IpAddr]| ips.iter().copied().filter(|ip| family.has(*ip)).collect();
            out.push(ServicePortInfo {
                namespace: ns.to_string(),
                name: name.to_string(),
                port_name: port_name.clone(),
                name_string: name_string.clone(),
                protocol,
                cluster_ip,
                port,
                target_port: target_port.clone(),
                node_port: if svc_type == "ClusterIP" { 0 } else { node_port },
                external_ips: of_family(&external_ips),
                load_balancer_vips: of_family(&lb_vips),
                load_balancer_source_ranges: source_ranges
                    .iter()
                    .copied()
                    .filter(|n| IpFamily::of_net(n) == family)
                    .collect(),
                affinity_timeout,
                health_check_node_port,
                internal_policy_local,
                external_policy_local,
                traffic_distribution,
                chains: chains.clone(),
            });
        }
    }
    Ok(Converted::Ports(out))
}

/// The apiserver's service IP range default (`--service-cluster-ip-range`).
pub const DEFAULT_SERVICE_CIDR: &str = "10.96.0.0/12";
/// The apiserver's default `--service-node-port-range`.
pub const NODE_PORT_RANGE: (u16, u16) = (30000, 32767);

/// The families a Service gets ClusterIPs of (the apiserver's defaulting).
fn wanted_families(
    spec: &crate::k8s::ServiceSpec,
    given: &[IpAddr],
    service_cidrs: &[IpNetwork],
) -> Vec<IpFamily> {
    let configured: Vec<IpFamily> = service_cidrs.iter().map(IpFamily::of_net).collect();
    let listed: Vec<IpFamily> = spec
        .ip_families
        .iter()
        .filter_map(|f| match f.as_str() {
            "IPv4" => Some(IpFamily::V4),
            "IPv6" => Some(IpFamily::V6),
            _ => None,
        })
        .collect();
    let primary = given
        .first()
        .map(|ip| IpFamily::of(*ip))
        .or_else(|| listed.first().copied())
        .or_else(|| configured.first().copied())
        .unwrap_or_default();
    let mut out = vec![primary];
    match spec.ip_family_policy.as_deref() {
        Some("PreferDualStack" | "RequireDualStack") => {
            out.extend(listed.iter().chain(configured.iter()).copied().filter(|f| *f != primary).take(1))
        }
        // SingleStack is one family, whatever `ipFamilies` lists (the
        // apiserver rejects a second entry; [`allocate`] notes it).
        Some("SingleStack") => {}
        // No policy: the apiserver defaults two `ipFamilies` to RequireDualStack.
        _ => out.extend(listed.iter().copied().filter(|f| *f != primary).take(1)),
    }
    out
}

/// A free address of `cidr`, at a hash of `key`, probing on past taken ones.
fn allocate_ip(cidr: &IpNetwork, key: &str, used: &mut BTreeSet<IpAddr>) -> Option<IpAddr> {
    let (base, host_bits) = match cidr {
        IpNetwork::V4(n) => (u32::from(n.network()) as u128, 32 - n.prefix() as u32),
        IpNetwork::V6(n) => (u128::from(n.network()), 128 - n.prefix() as u32),
    };
    // Big IPv6 ranges: a 2^62 window of them is plenty.
    let size: u64 = if host_bits >= 63 { 1 << 62 } else { 1u64 << host_bits };
    if size <= 2 {
        return None;
    }
    let mut off = 1 + hash_u64(key) % (size - 2);
    for _ in 0..size.min(1 << 24) {
        let raw = base + off as u128;
        let ip = match cidr {
            IpNetwork::V4(_) => IpAddr::V4(Ipv4Addr::from(raw as u32)),
            IpNetwork::V6(_) => IpAddr::V6(Ipv6Addr::from(raw)),
        };
        if used.insert(ip) {
            return Some(ip);
        }
        off = 1 + off % (size - 2);
    }
    None
}

fn hash_u64(s: &str) -> u64 {
    let d = Sha256::digest(s.as_bytes());
    u64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
}

/// Fill in what the apiserver would have allocated: a ClusterIP for services
/// without one (not for headless or ExternalName), and NodePorts for NodePort
/// and LoadBalancer ports without one. Deterministic: the same inputs always
/// get the same values (a hash of the name, probing past taken values), so
/// repeated runs and partial syncs agree. Returns one note per allocation.
///
/// ClusterIPs follow the apiserver's dual-stack rules against the configured
/// ranges (`service_cidrs`, one per family, primary first): `ipFamilies` when
/// given, else `SingleStack` (the default) takes the family of the clusterIP
/// in the manifest or the primary range, `PreferDualStack` and
/// `RequireDualStack` every configured family. A family without a range gets
/// no address (noted).
pub fn allocate(services: &mut [Service], service_cidrs: &[IpNetwork]) -> Vec<String> {
    let mut notes = Vec::new();
    let mut used_ips: BTreeSet<IpAddr> = services
        .iter()
        .flat_map(|s| s.spec.cluster_ip.iter().chain(s.spec.cluster_ips.iter()))
        .filter_map(|ip| parse_ip_sloppy(ip))
        .collect();
    let mut used_ports: BTreeSet<i64> =
        services.iter().flat_map(|s| s.spec.ports.iter().filter_map(|p| p.node_port)).collect();
    let mut order: BTreeMap<(String, String), usize> = BTreeMap::new();
    for (i, s) in services.iter().enumerate() {
        order.insert((s.metadata.ns().to_string(), s.metadata.name().to_string()), i);
    }
    for ((ns, name), i) in order {
        let svc = &mut services[i];
        let svc_type = svc.spec.type_.clone().unwrap_or_else(|| "ClusterIP".into());
        if svc_type == "ExternalName" {
            continue;
        }
        if svc.spec.cluster_ip.as_deref().unwrap_or("").is_empty() {
            if let Some(first) = svc.spec.cluster_ips.first() {
                svc.spec.cluster_ip = Some(first.clone());
            }
        }
        if svc.spec.cluster_ip.as_deref() == Some("None") {
            continue;
        }
        let given_text: Vec<&String> = if svc.spec.cluster_ips.is_empty() {
            svc.spec.cluster_ip.iter().filter(|ip| !ip.is_empty()).collect()
        } else {
            svc.spec.cluster_ips.iter().collect()
        };
        let given: Vec<IpAddr> = given_text.iter().filter_map(|ip| parse_ip_sloppy(ip)).collect();
        if given.len() != given_text.len() {
            continue; // an invalid clusterIP: reported by convert, nothing allocated
        }
        if svc.spec.ip_family_policy.as_deref() == Some("SingleStack") && svc.spec.ip_families.len() > 1 {
            notes.push(format!(
                "Service {ns}/{name}: ipFamilyPolicy SingleStack with {} ipFamilies (the apiserver rejects \
                 this): only the first family is proxied",
                svc.spec.ip_families.len()
            ));
        }
        let wanted = wanted_families(&svc.spec, &given, service_cidrs);
        let mut ips = given.clone();
        for family in wanted {
            if ips.iter().any(|ip| family.has(*ip)) {
                continue;
            }
            let Some(cidr) = service_cidrs.iter().find(|c| IpFamily::of_net(c) == family) else {
                notes.push(format!(
                    "Service {ns}/{name}: no {family} --service-cluster-ip-range, no {family} clusterIP"
                ));
                continue;
            };
            if let Some(ip) = allocate_ip(cidr, &format!("{ns}/{name}"), &mut used_ips) {
                notes.push(format!("Service {ns}/{name}: no clusterIP in the manifest, allocated {ip}"));
                ips.push(ip);
            }
        }
        if ips.len() > given.len() {
            svc.spec.cluster_ip = ips.first().map(|ip| ip.to_string());
            if !svc.spec.cluster_ips.is_empty() || ips.len() > 1 {
                svc.spec.cluster_ips = ips.iter().map(|ip| ip.to_string()).collect();
            }
        }
        let wants_node_ports = svc_type == "NodePort"
            || (svc_type == "LoadBalancer" && svc.spec.allocate_load_balancer_node_ports != Some(false));
        if !wants_node_ports {
            continue;
        }
        let span = (NODE_PORT_RANGE.1 - NODE_PORT_RANGE.0 + 1) as u64;
        for p in svc.spec.ports.iter_mut().filter(|p| p.node_port.unwrap_or(0) == 0) {
            let key = format!("{ns}/{name}:{}/{}", p.name.as_deref().unwrap_or(""), p.port);
            let mut off = hash_u64(&key) % span;
            for _ in 0..span {
                let candidate = NODE_PORT_RANGE.0 as i64 + off as i64;
                if used_ports.insert(candidate) {
                    notes.push(format!(
                        "Service {ns}/{name}: port {} has no nodePort in the manifest, allocated {candidate}",
                        p.port
                    ));
                    p.node_port = Some(candidate);
                    break;
                }
                off = (off + 1) % span;
            }
        }
    }
    notes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s::Objects;

    fn services(yaml: &str) -> Vec<Service> {
        let mut o = Objects::default();
        let mut e = Vec::new();
        o.add_text(yaml, "t", &mut e);
        assert!(e.is_empty(), "{e:?}");
        o.services
    }

    #[test]
    fn sloppy_ipv4_accepts_leading_zeros_only() {
        assert_eq!(parse_ipv4_sloppy("10.180.00.001"), Some(Ipv4Addr::new(10, 180, 0, 1)));
        assert_eq!(parse_ipv4_sloppy("10.180.0.256"), None);
        assert_eq!(parse_ipv4_sloppy("10.180.0"), None);
    }

    #[test]
    fn sloppy_cidrs_are_masked() {
        assert_eq!(parse_cidr_sloppy("203.0.113.000/025"), Some("203.0.113.0/25".parse().unwrap()));
        assert_eq!(parse_cidr_sloppy("203.0.113.5/25"), Some("203.0.113.0/25".parse().unwrap()));
        assert_eq!(parse_cidr_sloppy("10.0.0.0/33"), None);
        assert_eq!(parse_cidr_sloppy("10.0.0.0"), None);
        assert_eq!(parse_cidr_sloppy("10.0.0.0/"), None);
    }

    #[test]
    fn allocation_is_deterministic_and_avoids_taken_values() {
        let yaml = "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {type: NodePort, ports: [{port: 80}]}\n---\n\
                    apiVersion: v1\nkind: Service\nmetadata: {name: b}\nspec: {clusterIP: 10.96.0.10, ports: [{port: 80, nodePort: 30080}]}\n";
        let cidr: Ipv4Network = DEFAULT_SERVICE_CIDR.parse().unwrap();
        let mut s1 = services(yaml);
        let notes = allocate(&mut s1, &[cidr.into()]);
        assert_eq!(notes.len(), 2, "{notes:?}");
        let mut s2 = services(yaml);
        allocate(&mut s2, &[cidr.into()]);
        assert_eq!(s1[0].spec.cluster_ip, s2[0].spec.cluster_ip);
        assert_eq!(s1[0].spec.ports[0].node_port, s2[0].spec.ports[0].node_port);
        let ip: Ipv4Addr = s1[0].spec.cluster_ip.as_deref().unwrap().parse().unwrap();
        assert!(cidr.contains(ip) && ip != Ipv4Addr::new(10, 96, 0, 10));
        let np = s1[0].spec.ports[0].node_port.unwrap();
        assert!((30000..=32767).contains(&np));
        // b is ClusterIP: it keeps its values and gets no node port rule.
        assert_eq!(s1[1].spec.cluster_ip.as_deref(), Some("10.96.0.10"));
    }

    #[test]
    fn dual_stack_allocation_follows_the_ip_family_policy() {
        let yaml = "apiVersion: v1\nkind: Service\nmetadata: {name: single}\nspec: {ports: [{port: 80}]}\n---\n\
                    apiVersion: v1\nkind: Service\nmetadata: {name: prefer}\nspec: {ipFamilyPolicy: PreferDualStack, ports: [{port: 80}]}\n---\n\
                    apiVersion: v1\nkind: Service\nmetadata: {name: v6}\nspec: {ipFamilies: [IPv6], ports: [{port: 80}]}\n---\n\
                    apiVersion: v1\nkind: Service\nmetadata: {name: given}\nspec: {clusterIP: 10.96.0.9, ipFamilyPolicy: RequireDualStack, ports: [{port: 80}]}\n";
        let ranges: Vec<IpNetwork> = vec!["10.96.0.0/12".parse().unwrap(), "fd00:96::/108".parse().unwrap()];
        let mut s = services(yaml);
        allocate(&mut s, &ranges);
        let fams = |svc: &Service| -> Vec<IpFamily> {
            match convert(svc, "t") {
                Ok(Converted::Ports(p)) => p.iter().map(|p| p.family()).collect(),
                _ => panic!("not converted"),
            }
        };
        assert_eq!(fams(&s[0]), [IpFamily::V4]);
        assert_eq!(fams(&s[1]), [IpFamily::V4, IpFamily::V6]);
        assert_eq!(fams(&s[2]), [IpFamily::V6]);
        assert_eq!(fams(&s[3]), [IpFamily::V4, IpFamily::V6]);
        assert_eq!(s[3].spec.cluster_ips[0], "10.96.0.9");
        let v6: IpAddr = s[2].spec.cluster_ip.as_deref().unwrap().parse().unwrap();
        assert!(ranges[1].contains(v6));
        // Only an IPv4 range: PreferDualStack stays single-stack; an IPv6-only
        // service gets no address (noted; convert then reports it).
        let mut s = services(yaml);
        let notes = allocate(&mut s, &ranges[..1]);
        assert_eq!(fams(&s[1]), [IpFamily::V4]);
        assert!(notes.iter().any(|n| n.contains("default/v6") && n.contains("no IPv6")), "{notes:?}");
        assert!(!notes.iter().any(|n| n.contains("prefer") && n.contains("IPv6")), "{notes:?}");
        assert!(convert(&s[2], "t").is_err());
    }

    #[test]
    fn single_stack_takes_only_the_first_listed_family() {
        let yaml = "apiVersion: v1\nkind: Service\nmetadata: {name: s6}\nspec: {ipFamilyPolicy: SingleStack, ipFamilies: [IPv6, IPv4], ports: [{port: 80}]}\n---\n\
                    apiVersion: v1\nkind: Service\nmetadata: {name: none}\nspec: {ipFamilies: [IPv6, IPv4], ports: [{port: 80}]}\n";
        let ranges: Vec<IpNetwork> = vec!["10.96.0.0/12".parse().unwrap(), "fd00:96::/108".parse().unwrap()];
        let mut s = services(yaml);
        let notes = allocate(&mut s, &ranges);
        let fams = |svc: &Service| -> Vec<IpFamily> {
            match convert(svc, "t") {
                Ok(Converted::Ports(p)) => p.iter().map(|p| p.family()).collect(),
                _ => panic!("not converted"),
            }
        };
        // `none` is sorted first (allocation order is by name).
        let single = s.iter().find(|s| s.metadata.name() == "s6").unwrap();
        let none = s.iter().find(|s| s.metadata.name() == "none").unwrap();
        assert_eq!(fams(single), [IpFamily::V6]);
        assert!(notes.iter().any(|n| n.contains("default/s6") && n.contains("SingleStack")), "{notes:?}");
        // No policy with two families: the apiserver's default is RequireDualStack.
        assert_eq!(fams(none), [IpFamily::V6, IpFamily::V4]);
    }

    #[test]
    fn a_dual_stack_service_has_one_port_per_family_with_its_family_addresses() {
        let s = services(
            "apiVersion: v1\nkind: Service\nmetadata: {name: d}\nspec: {type: LoadBalancer, clusterIPs: [fd00::10, 10.0.0.10], \
             externalIPs: [192.0.2.1, '2001:db8::1'], loadBalancerSourceRanges: [203.0.113.0/24, '2001:db8:1::/48'], ports: [{port: 80, nodePort: 30080}]}\n\
             status: {loadBalancer: {ingress: [{ip: 198.51.100.1}, {ip: '2001:db8::9'}]}}\n",
        );
        let Ok(Converted::Ports(p)) = convert(&s[0], "t") else { panic!() };
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].cluster_ip, "fd00::10".parse::<IpAddr>().unwrap());
        assert_eq!(p[0].external_ips, ["2001:db8::1".parse::<IpAddr>().unwrap()]);
        assert_eq!(p[0].load_balancer_vips, ["2001:db8::9".parse::<IpAddr>().unwrap()]);
        assert_eq!(p[0].load_balancer_source_ranges, ["2001:db8:1::/48".parse::<IpNetwork>().unwrap()]);
        assert_eq!(p[1].external_ips, ["192.0.2.1".parse::<IpAddr>().unwrap()]);
        assert_eq!(p[0].chains, p[1].chains);
        let bad = services("apiVersion: v1\nkind: Service\nmetadata: {name: b}\nspec: {clusterIPs: [fd00::1, 'fd00::2'], ports: [{port: 80}]}\n");
        assert!(convert(&bad[0], "t").err().unwrap().reason.contains("two IPv6"));
        let bad = services("apiVersion: v1\nkind: Service\nmetadata: {name: b}\nspec: {clusterIP: 'fd00::zz', ports: [{port: 80}]}\n");
        assert!(convert(&bad[0], "t").err().unwrap().reason.contains("invalid spec.clusterIP"));
    }

    #[test]
    fn ipv4_mapped_addresses_belong_to_the_ipv4_proxier() {
        // Go's ParseIPSloppy + GetIPFamilyFromIP: `::ffff:a.b.c.d` is IPv4.
        let s = services(
            "apiVersion: v1\nkind: Service\nmetadata: {name: m}\nspec: {type: LoadBalancer, clusterIPs: ['fd00::10', '::ffff:10.0.0.10'], \
             externalIPs: ['::ffff:192.0.2.7', '2001:db8::1'], loadBalancerSourceRanges: ['::ffff:203.0.113.0/120'], ports: [{port: 80, nodePort: 30080}]}\n\
             status: {loadBalancer: {ingress: [{ip: '::ffff:198.51.100.1'}]}}\n",
        );
        let Ok(Converted::Ports(p)) = convert(&s[0], "t") else { panic!() };
        assert_eq!(p.len(), 2);
        let v4 = p.iter().find(|p| p.family() == IpFamily::V4).unwrap();
        let v6 = p.iter().find(|p| p.family() == IpFamily::V6).unwrap();
        assert_eq!(v4.cluster_ip, "10.0.0.10".parse::<IpAddr>().unwrap());
        assert_eq!(v4.external_ips, ["192.0.2.7".parse::<IpAddr>().unwrap()]);
        assert_eq!(v4.load_balancer_vips, ["198.51.100.1".parse::<IpAddr>().unwrap()]);
        assert_eq!(v4.load_balancer_source_ranges, ["203.0.113.0/24".parse::<IpNetwork>().unwrap()]);
        assert_eq!(v6.external_ips, ["2001:db8::1".parse::<IpAddr>().unwrap()]);
        assert!(v6.load_balancer_vips.is_empty() && v6.load_balancer_source_ranges.is_empty());
        // A mapped address is a second IPv4 clusterIP, as the apiserver sees it.
        let bad = services("apiVersion: v1\nkind: Service\nmetadata: {name: b}\nspec: {clusterIPs: [10.0.0.1, '::ffff:10.0.0.2'], ports: [{port: 80}]}\n");
        assert!(convert(&bad[0], "t").err().unwrap().reason.contains("two IPv4"));
    }

    #[test]
    fn ipv6_source_ranges_need_a_prefix() {
        // Go's ParseCIDR (and our IPv4 path) reject a bare address.
        assert_eq!(parse_ip_cidr_sloppy("2001:db8:1::5"), None);
        assert_eq!(parse_ip_cidr_sloppy("2001:db8:1::5/"), None);
        assert_eq!(parse_ip_cidr_sloppy("2001:db8:1::5/129"), None);
        assert_eq!(parse_ip_cidr_sloppy("2001:db8:1::5/64"), Some("2001:db8:1::/64".parse().unwrap()));
        let bad = services(
            "apiVersion: v1\nkind: Service\nmetadata: {name: r}\nspec: {type: LoadBalancer, clusterIPs: ['fd00::10'], \
             loadBalancerSourceRanges: ['2001:db8:1::5'], ports: [{port: 80, nodePort: 30080}]}\n",
        );
        let e = convert(&bad[0], "t").err().unwrap();
        assert!(
            e.reason.contains("invalid loadBalancerSourceRanges entry \"2001:db8:1::5\""),
            "{}",
            e.reason
        );
    }

    #[test]
    fn invalid_fields_are_errors_naming_the_service() {
        let bad = services(
            "apiVersion: v1\nkind: Service\nmetadata: {name: x, namespace: n}\n\
             spec: {clusterIP: 10.0.0.1, externalIPs: [1.2.3], ports: [{port: 80}]}\n",
        );
        let e = convert(&bad[0], "f").err().unwrap();
        assert_eq!(e.object.to_string(), "Service n/x");
        assert!(e.reason.contains("externalIP"));
        let bad = services("apiVersion: v1\nkind: Service\nmetadata: {name: y}\nspec: {clusterIP: 10.0.0.1, ports: [{port: 70000}]}\n");
        assert!(convert(&bad[0], "f").err().unwrap().reason.contains("invalid port"));
    }
}
