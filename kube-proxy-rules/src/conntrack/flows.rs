//! Conntrack entries as the cleanup sees them ([`Flow`]: the original and
//! reply tuples of one entry) and the typed filters that pick the stale ones
//! ([`FlowFilter`], kube-proxy's `conntrackFilter`s).

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use crate::model::Protocol;

/// IP protocol numbers of the L4 protocols services use.
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_SCTP: u8 = 132;

/// The IP protocol number of a service protocol.
pub fn ip_proto(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => IPPROTO_TCP,
        Protocol::Udp => IPPROTO_UDP,
        Protocol::Sctp => IPPROTO_SCTP,
    }
}

/// Whether a protocol's conntrack entries outlive a gone endpoint and must
/// be cleaned (kube-proxy's `IsClearConntrackNeeded`): UDP and SCTP. A TCP
/// connection to a gone endpoint is reset or times out on its own, and its
/// entries are never touched.
pub fn needs_cleanup(p: Protocol) -> bool {
    matches!(p, Protocol::Udp | Protocol::Sctp)
}

/// One direction of a conntrack entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tuple {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
}

/// One conntrack entry: a DNATed service flow has `orig.dst` = the service
/// address and `reply.src` = the endpoint it was sent to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Flow {
    /// IP protocol number.
    pub proto: u8,
    pub orig: Tuple,
    pub reply: Tuple,
    /// The conntrack zone (0 almost always); part of the entry's identity.
    pub zone: u16,
}

/// What makes an entry stale: kube-proxy's cleanup filters, each for one
/// protocol. Endpoints are matched with their port: an entry DNATed to
/// `ip:port` has that reply source (an endpoint whose port changed is a
/// different endpoint).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FlowFilter {
    /// Sent to `service` (ClusterIP, external or load-balancer IP, and the
    /// service port) and DNATed to the removed `endpoint`.
    ServiceToEndpoint { proto: u8, service: SocketAddr, endpoint: SocketAddr },
    /// Sent to the NodePort `node_port` (any node address) and DNATed to the
    /// removed `endpoint`.
    NodePortToEndpoint { proto: u8, node_port: u16, endpoint: SocketAddr },
    /// Sent to `service` while it had no endpoint (its first one just came).
    ToService { proto: u8, service: SocketAddr },
    /// Sent to the NodePort while its service had no endpoint.
    ToNodePort { proto: u8, node_port: u16 },
    /// Without a remembered state (first start): sent to `service` and not
    /// DNATed to one of its serving `endpoints` (kube-proxy's reconciler).
    ServiceNotToEndpoints { proto: u8, service: SocketAddr, endpoints: BTreeSet<SocketAddr> },
    /// The same for a NodePort.
    NodePortNotToEndpoints { proto: u8, node_port: u16, endpoints: BTreeSet<SocketAddr> },
}

fn orig_dst(f: &Flow) -> SocketAddr {
    SocketAddr::new(f.orig.dst, f.orig.dport)
}

fn reply_src(f: &Flow) -> SocketAddr {
    SocketAddr::new(f.reply.src, f.reply.sport)
}

impl FlowFilter {
    pub fn proto(&self) -> u8 {
        match self {
            FlowFilter::ServiceToEndpoint { proto, .. }
            | FlowFilter::NodePortToEndpoint { proto, .. }
            | FlowFilter::ToService { proto, .. }
            | FlowFilter::ToNodePort { proto, .. }
            | FlowFilter::ServiceNotToEndpoints { proto, .. }
            | FlowFilter::NodePortNotToEndpoints { proto, .. } => *proto,
        }
    }

    /// Whether `flow` is stale by this filter.
    pub fn matches(&self, flow: &Flow) -> bool {
        if flow.proto != self.proto() {
            return false;
        }
        match self {
            FlowFilter::ServiceToEndpoint { service, endpoint, .. } => {
                orig_dst(flow) == *service && reply_src(flow) == *endpoint
            }
            FlowFilter::NodePortToEndpoint { node_port, endpoint, .. } => {
                flow.orig.dport == *node_port && reply_src(flow) == *endpoint
            }
            FlowFilter::ToService { service, .. } => orig_dst(flow) == *service,
            FlowFilter::ToNodePort { node_port, .. } => flow.orig.dport == *node_port,
            FlowFilter::ServiceNotToEndpoints { service, endpoints, .. } => {
                orig_dst(flow) == *service && !endpoints.contains(&reply_src(flow))
            }
            FlowFilter::NodePortNotToEndpoints { node_port, endpoints, .. } => {
                flow.orig.dport == *node_port && !endpoints.contains(&reply_src(flow))
            }
        }
    }
}

impl std::fmt::Display for FlowFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let p = |n: u8| match n {
            IPPROTO_UDP => "udp".to_string(),
            IPPROTO_SCTP => "sctp".to_string(),
            IPPROTO_TCP => "tcp".to_string(),
            n => format!("proto {n}"),
        };
        match self {
            FlowFilter::ServiceToEndpoint { proto, service, endpoint } => {
                write!(f, "{} to {service} via {endpoint}", p(*proto))
            }
            FlowFilter::NodePortToEndpoint { proto, node_port, endpoint } => {
                write!(f, "{} to NodePort {node_port} via {endpoint}", p(*proto))
            }
            FlowFilter::ToService { proto, service } => write!(f, "{} to {service}", p(*proto)),
            FlowFilter::ToNodePort { proto, node_port } => write!(f, "{} to NodePort {node_port}", p(*proto)),
            FlowFilter::ServiceNotToEndpoints { proto, service, endpoints } => {
                write!(f, "{} to {service} not via its {} endpoint(s)", p(*proto), endpoints.len())
            }
            FlowFilter::NodePortNotToEndpoints { proto, node_port, endpoints } => {
                write!(f, "{} to NodePort {node_port} not via its {} endpoint(s)", p(*proto), endpoints.len())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(proto: u8, client: &str, svc: &str, ep: &str) -> Flow {
        let (c, s, e): (SocketAddr, SocketAddr, SocketAddr) =
            (client.parse().unwrap(), svc.parse().unwrap(), ep.parse().unwrap());
        Flow {
            proto,
            orig: Tuple { src: c.ip(), dst: s.ip(), sport: c.port(), dport: s.port() },
            reply: Tuple { src: e.ip(), dst: c.ip(), sport: e.port(), dport: c.port() },
            zone: 0,
        }
    }

    #[test]
    fn filters_match_only_their_protocol_service_and_endpoint() {
        let dns = flow(IPPROTO_UDP, "10.0.0.5:40000", "10.96.0.10:53", "10.244.0.11:53");
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        let f = FlowFilter::ServiceToEndpoint {
            proto: IPPROTO_UDP,
            service: a("10.96.0.10:53"),
            endpoint: a("10.244.0.11:53"),
        };
        assert!(f.matches(&dns));
        // The same addresses over TCP, another endpoint, another port of the
        // endpoint, another service port: untouched.
        assert!(!f.matches(&flow(IPPROTO_TCP, "10.0.0.5:40000", "10.96.0.10:53", "10.244.0.11:53")));
        assert!(!f.matches(&flow(IPPROTO_UDP, "10.0.0.5:40000", "10.96.0.10:53", "10.244.0.12:53")));
        assert!(!f.matches(&flow(IPPROTO_UDP, "10.0.0.5:40000", "10.96.0.10:53", "10.244.0.11:5353")));
        assert!(!f.matches(&flow(IPPROTO_UDP, "10.0.0.5:40000", "10.96.0.10:54", "10.244.0.11:53")));

        let np = flow(IPPROTO_UDP, "192.168.1.9:40000", "192.168.77.1:30053", "10.244.0.11:53");
        let f = FlowFilter::NodePortToEndpoint {
            proto: IPPROTO_UDP,
            node_port: 30053,
            endpoint: a("10.244.0.11:53"),
        };
        assert!(f.matches(&np) && !f.matches(&dns));

        // An entry made while the service had no endpoint: not DNATed.
        let undnat = flow(IPPROTO_UDP, "10.0.0.5:40000", "10.96.0.10:53", "10.96.0.10:53");
        assert!(FlowFilter::ToService { proto: IPPROTO_UDP, service: a("10.96.0.10:53") }.matches(&undnat));
        assert!(!FlowFilter::ToService { proto: IPPROTO_SCTP, service: a("10.96.0.10:53") }.matches(&undnat));
        assert!(FlowFilter::ToNodePort { proto: IPPROTO_UDP, node_port: 30053 }.matches(&np));

        let serving: BTreeSet<SocketAddr> = [a("10.244.0.12:53")].into();
        let f = FlowFilter::ServiceNotToEndpoints {
            proto: IPPROTO_UDP,
            service: a("10.96.0.10:53"),
            endpoints: serving.clone(),
        };
        assert!(f.matches(&dns) && f.matches(&undnat));
        assert!(!f.matches(&flow(IPPROTO_UDP, "10.0.0.5:40000", "10.96.0.10:53", "10.244.0.12:53")));
        let f =
            FlowFilter::NodePortNotToEndpoints { proto: IPPROTO_UDP, node_port: 30053, endpoints: serving };
        assert!(f.matches(&np) && !f.matches(&dns));
    }
}
