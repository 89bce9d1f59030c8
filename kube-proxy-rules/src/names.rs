//! Chain names: kube-proxy's `portProtoHash` (sha256, base32, 16 characters)
//! behind the KUBE-SVC-/SVL-/EXT-/FW-/SEP- prefixes, and the fixed chains.
//!
//! The hash input is the service port name (`ns/name:port`, or `ns/name` when
//! the port is unnamed) followed directly by the lower-case protocol, and for
//! endpoint chains also by the `ip:port` endpoint string, so that every chain
//! name stays within iptables' 28-character limit.

use data_encoding::BASE32;
use sha2::{Digest, Sha256};

pub const KUBE_SERVICES: &str = "KUBE-SERVICES";
pub const KUBE_EXTERNAL_SERVICES: &str = "KUBE-EXTERNAL-SERVICES";
pub const KUBE_NODEPORTS: &str = "KUBE-NODEPORTS";
pub const KUBE_FORWARD: &str = "KUBE-FORWARD";
pub const KUBE_PROXY_FIREWALL: &str = "KUBE-PROXY-FIREWALL";
pub const KUBE_FIREWALL: &str = "KUBE-FIREWALL";
pub const KUBE_POSTROUTING: &str = "KUBE-POSTROUTING";
pub const KUBE_MARK_MASQ: &str = "KUBE-MARK-MASQ";
pub const KUBE_PROXY_CANARY: &str = "KUBE-PROXY-CANARY";

pub const SVC_PREFIX: &str = "KUBE-SVC-";
pub const SVL_PREFIX: &str = "KUBE-SVL-";
pub const EXT_PREFIX: &str = "KUBE-EXT-";
pub const FW_PREFIX: &str = "KUBE-FW-";
pub const SEP_PREFIX: &str = "KUBE-SEP-";

/// First 16 base32 characters of sha256(`input`).
fn hash16(input: &str) -> String {
    let digest = Sha256::digest(input.as_bytes());
    let mut encoded = BASE32.encode(&digest);
    encoded.truncate(16);
    encoded
}

/// `portProtoHash(svcPortName, protocol)`.
pub fn port_proto_hash(svc_port_name: &str, protocol: &str) -> String {
    let mut s = String::with_capacity(svc_port_name.len() + protocol.len());
    s.push_str(svc_port_name);
    s.push_str(protocol);
    hash16(&s)
}

/// The four per-service-port chains, which share one hash.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServiceChains {
    pub svc: String,
    pub svl: String,
    pub ext: String,
    pub fw: String,
}

impl ServiceChains {
    pub fn new(svc_port_name: &str, protocol: &str) -> Self {
        let h = port_proto_hash(svc_port_name, protocol);
        ServiceChains {
            svc: format!("{SVC_PREFIX}{h}"),
            svl: format!("{SVL_PREFIX}{h}"),
            ext: format!("{EXT_PREFIX}{h}"),
            fw: format!("{FW_PREFIX}{h}"),
        }
    }
}

/// `KUBE-SEP-<hash(svcPortName + protocol + "ip:port")>`.
pub fn endpoint_chain(svc_port_name: &str, protocol: &str, endpoint: &str) -> String {
    let mut s = String::with_capacity(svc_port_name.len() + protocol.len() + endpoint.len());
    s.push_str(svc_port_name);
    s.push_str(protocol);
    s.push_str(endpoint);
    format!("{SEP_PREFIX}{}", hash16(&s))
}

/// Chains that belong to one service (garbage-collected when stale).
pub fn is_service_chain(name: &str) -> bool {
    [SVC_PREFIX, SVL_PREFIX, SEP_PREFIX, FW_PREFIX, EXT_PREFIX].iter().any(|p| name.starts_with(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test vectors of the reference notes (checked against kube-proxy's own tests).
    #[test]
    fn hash_test_vectors() {
        assert_eq!(port_proto_hash("ns1/svc1:p80", "tcp"), "XPGD46QRK7WJZT7O");
        assert_eq!(endpoint_chain("ns1/svc1:p80", "tcp", "10.180.0.1:80"), "KUBE-SEP-SXIVWICOYRO3J4NJ");
        assert_eq!(ServiceChains::new("default/kubernetes:https", "tcp").svc, "KUBE-SVC-NPX46M4PTMTKRN6Y");
        // From kube-proxy's TestOverallIPTablesRules.
        assert_eq!(ServiceChains::new("ns2/svc2:p80", "tcp").ext, "KUBE-EXT-GNZBNJ2PO5MGZ6GT");
        assert_eq!(ServiceChains::new("ns5/svc5:p80", "tcp").fw, "KUBE-FW-NUKIZ6OKUXPJNT4C");
    }

    #[test]
    fn chain_names_fit_iptables_limit() {
        let c = ServiceChains::new("a-very-long-namespace/a-very-long-service-name:https", "sctp");
        for n in [&c.svc, &c.svl, &c.ext, &c.fw] {
            assert!(n.len() <= 28, "{n}");
        }
        assert!(endpoint_chain("x/y", "udp", "[fd00::1]:53").len() <= 28);
        assert!(is_service_chain("KUBE-SEP-AAAA") && !is_service_chain("KUBE-SERVICES"));
    }
}
