//! kube-proxy's view of a Service: one [`ServicePortInfo`] per port (its
//! `servicePortInfo`), validated, plus the apiserver defaults a manifest as a
//! user wrote it lacks (a ClusterIP and NodePorts are normally allocated by the
//! apiserver; here they are allocated deterministically and reported).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use sha2::{Digest, Sha256};

use crate::k8s::{IntOrString, ObjectError, ObjectRef, Service};
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
    pub cluster_ip: Ipv4Addr,
    pub port: u16,
    /// For endpoints derived from pod records (absent = `port`).
    pub target_port: IntOrString,
    pub node_port: u16,
    pub external_ips: Vec<Ipv4Addr>,
    pub load_balancer_vips: Vec<Ipv4Addr>,
    pub load_balancer_source_ranges: Vec<Ipv4Network>,
    /// `Some(timeout)` with ClientIP session affinity.
    pub affinity_timeout: Option<u32>,
    pub health_check_node_port: u16,
    pub internal_policy_local: bool,
    pub external_policy_local: bool,
    pub chains: ServiceChains,
}

impl ServicePortInfo {
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

fn is_ipv6_literal(s: &str) -> bool {
    s.parse::<std::net::Ipv6Addr>().is_ok()
}

/// What became of one Service.
pub enum Converted {
    Ports(Vec<ServicePortInfo>),
    /// Not proxied (headless, ExternalName, IPv6): the reason, for a note.
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
    let cluster_ip = match spec.cluster_ip.as_deref() {
        None | Some("") => return Err(err("spec.clusterIP is missing".into())),
        Some("None") => return Ok(Converted::Skipped("headless (clusterIP None)".into())),
        Some(ip) if is_ipv6_literal(ip) => {
            return Ok(Converted::Skipped(format!("IPv6 clusterIP {ip}: only IPv4 rules are generated")))
        }
        Some(ip) => parse_ipv4_sloppy(ip).ok_or_else(|| err(format!("invalid spec.clusterIP {ip:?}")))?,
    };
    let mut external_ips = Vec::new();
    for ip in &spec.external_ips {
        if is_ipv6_literal(ip) {
            continue; // the other family's proxier would handle it
        }
        external_ips.push(parse_ipv4_sloppy(ip).ok_or_else(|| err(format!("invalid externalIP {ip:?}")))?);
    }
    let mut lb_vips = Vec::new();
    for ing in &svc.status.load_balancer.ingress {
        let Some(ip) = ing.ip.as_deref().filter(|ip| !ip.is_empty()) else { continue };
        if is_ipv6_literal(ip) {
            continue;
        }
        let parsed = parse_ipv4_sloppy(ip)
            .ok_or_else(|| err(format!("invalid status.loadBalancer.ingress IP {ip:?}")))?;
        // ipMode Proxy: the load balancer proxies itself, the IP is not captured on nodes.
        if ing.ip_mode.as_deref() != Some("Proxy") {
            lb_vips.push(parsed);
        }
    }
    let mut source_ranges = Vec::new();
    for r in &spec.load_balancer_source_ranges {
        let r = r.trim();
        if r.contains(':') && r.parse::<ipnetwork::Ipv6Network>().is_ok() {
            continue;
        }
        let net = parse_cidr_sloppy(r)
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
        out.push(ServicePortInfo {
            namespace: ns.to_string(),
            name: name.to_string(),
            port_name,
            name_string,
            protocol,
            cluster_ip,
            port,
            target_port,
            node_port: if svc_type == "ClusterIP" { 0 } else { node_port },
            external_ips: external_ips.clone(),
            load_balancer_vips: lb_vips.clone(),
            load_balancer_source_ranges: source_ranges.clone(),
            affinity_timeout,
            health_check_node_port,
            internal_policy_local,
            external_policy_local,
            chains,
        });
    }
    Ok(Converted::Ports(out))
}

/// The apiserver's service IP range default (`--service-cluster-ip-range`).
pub const DEFAULT_SERVICE_CIDR: &str = "10.96.0.0/12";
/// The apiserver's default `--service-node-port-range`.
pub const NODE_PORT_RANGE: (u16, u16) = (30000, 32767);

fn hash_u64(s: &str) -> u64 {
    let d = Sha256::digest(s.as_bytes());
    u64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
}

/// Fill in what the apiserver would have allocated: a ClusterIP for services
/// without one (not for headless or ExternalName), and NodePorts for NodePort
/// and LoadBalancer ports without one. Deterministic: the same inputs always
/// get the same values (a hash of the name, probing past taken values), so
/// repeated runs and partial syncs agree. Returns one note per allocation.
pub fn allocate(services: &mut [Service], service_cidr: Ipv4Network) -> Vec<String> {
    let mut notes = Vec::new();
    let mut used_ips: BTreeSet<Ipv4Addr> =
        services.iter().filter_map(|s| s.spec.cluster_ip.as_deref().and_then(parse_ipv4_sloppy)).collect();
    let mut used_ports: BTreeSet<i64> =
        services.iter().flat_map(|s| s.spec.ports.iter().filter_map(|p| p.node_port)).collect();
    // Allocate in name order so that input order does not matter.
    let mut order: BTreeMap<(String, String), usize> = BTreeMap::new();
    for (i, s) in services.iter().enumerate() {
        order.insert((s.metadata.ns().to_string(), s.metadata.name().to_string()), i);
    }
    let size = service_cidr.size() as u64;
    for ((ns, name), i) in order {
        let svc = &mut services[i];
        let svc_type = svc.spec.type_.clone().unwrap_or_else(|| "ClusterIP".into());
        if svc_type == "ExternalName" {
            continue;
        }
        if svc.spec.cluster_ip.as_deref().unwrap_or("").is_empty() {
            // `clusterIPs` alone (dual-stack manifests): its first entry is the clusterIP.
            if let Some(first) = svc.spec.cluster_ips.first() {
                svc.spec.cluster_ip = Some(first.clone());
            }
        }
        if svc.spec.cluster_ip.as_deref().unwrap_or("").is_empty() && size > 2 {
            let base = u32::from(service_cidr.network());
            let mut off = 1 + hash_u64(&format!("{ns}/{name}")) % (size - 2);
            for _ in 0..size {
                let ip = Ipv4Addr::from(base + off as u32);
                if used_ips.insert(ip) {
                    notes.push(format!("Service {ns}/{name}: no clusterIP in the manifest, allocated {ip}"));
                    svc.spec.cluster_ip = Some(ip.to_string());
                    break;
                }
                off = 1 + off % (size - 2);
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
        let notes = allocate(&mut s1, cidr);
        assert_eq!(notes.len(), 2, "{notes:?}");
        let mut s2 = services(yaml);
        allocate(&mut s2, cidr);
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
