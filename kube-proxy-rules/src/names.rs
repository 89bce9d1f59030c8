//! Chain names: kube-proxy's `portProtoHash` (sha256, base32, 16 characters)
//! behind the KUBE-SVC-/SVL-/EXT-/FW-/SEP- prefixes, and the fixed chains.
//!
//! The hash input is the service port name (`ns/name:port`, or `ns/name` when
//! the port is unnamed) followed directly by the lower-case protocol, and for
//! endpoint chains also by the `ip:port` endpoint string, so that every chain
//! name stays within iptables' 28-character limit.
//!
//! The nftables proxier names its chains differently (`hashAndTruncate`): the
//! readable `ns/name/proto/port` (plus `__ip/port` for an endpoint) behind an
//! 8-character hash of that same text, cut to 240 characters, behind the
//! `service-`, `local-`, `external-`, `firewall-`, `endpoint-` and
//! `affinity-` prefixes ([`nft_service_base`], [`nft_endpoint_base`]).

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

/// The four per-service-port chains, which share one hash, and the base of
/// the nftables names of the same service port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServiceChains {
    pub svc: String,
    pub svl: String,
    pub ext: String,
    pub fw: String,
    /// `<h8>-ns/name/proto/port` ([`nft_service_base`]).
    pub nft_base: String,
}

impl ServiceChains {
    /// `svc_port_name` is `ns/name:port` (or `ns/name`); the nftables base is
    /// built from the same parts.
    pub fn new(svc_port_name: &str, protocol: &str) -> Self {
        let h = port_proto_hash(svc_port_name, protocol);
        ServiceChains {
            svc: format!("{SVC_PREFIX}{h}"),
            svl: format!("{SVL_PREFIX}{h}"),
            ext: format!("{EXT_PREFIX}{h}"),
            fw: format!("{FW_PREFIX}{h}"),
            nft_base: nft_service_base(svc_port_name, protocol),
        }
    }
}

/// nftables names are at most 256 bytes; 16 are kept for the prefix.
pub const NFT_BASE_MAX: usize = 256 - 16;

/// `hashAndTruncate`: `<first 8 base32 chars of sha256(name)>-<name>`, cut to
/// [`NFT_BASE_MAX`] with a `...` suffix (the hash keeps cut names unique).
fn nft_hash_and_truncate(name: &str) -> String {
    let digest = Sha256::digest(name.as_bytes());
    let encoded = BASE32.encode(&digest);
    let mut out = String::with_capacity(9 + name.len());
    out.push_str(&encoded[..8]);
    out.push('-');
    out.push_str(name);
    if out.len() > NFT_BASE_MAX {
        // Names are ASCII (DNS labels, IPs, digits): byte truncation is safe,
        // but stay on a char boundary anyway.
        let mut cut = NFT_BASE_MAX - 3;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push_str("...");
    }
    out
}

/// Split `ns/name:port` (or `ns/name`) into its namespace/name and port name.
fn split_port_name(svc_port_name: &str) -> (&str, &str) {
    svc_port_name.split_once(':').unwrap_or((svc_port_name, ""))
}

/// `servicePortChainNameBase`: `<h8>-ns/name/proto/port`, e.g.
/// `ULMVA6XW-ns1/svc1/tcp/p80`.
pub fn nft_service_base(svc_port_name: &str, protocol: &str) -> String {
    let (ns_name, port) = split_port_name(svc_port_name);
    nft_hash_and_truncate(&format!("{ns_name}/{protocol}/{port}"))
}

/// `servicePortEndpointChainNameBase`: `<h8>-ns/name/proto/port__ip/port`
/// (an IPv6 address has its `:` replaced by `.`), e.g.
/// `5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80`.
pub fn nft_endpoint_base(svc_port_name: &str, protocol: &str, ip: &str, port: u16) -> String {
    let (ns_name, port_name) = split_port_name(svc_port_name);
    let ip = ip.trim_start_matches('[').trim_end_matches(']').replace(':', ".");
    nft_hash_and_truncate(&format!("{ns_name}/{protocol}/{port_name}__{ip}/{port}"))
}

/// Chains and sets of one service port or endpoint in the nftables table
/// (they all contain a `/`; the fixed chains never do: `isServiceChainName`).
pub fn is_nft_service_chain(name: &str) -> bool {
    name.contains('/')
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

    /// `Test_servicePortChainNameBase` / `Test_servicePortEndpointChainNameBase`
    /// (pkg/proxy/nftables/proxier_test.go) and names from TestOverallNFTablesRules.
    #[test]
    fn nft_name_test_vectors() {
        assert_eq!(nft_service_base("testing/service:http", "tcp"), "P4ZYZVCF-testing/service/tcp/http");
        assert_eq!(nft_service_base("testing/service:https", "tcp"), "LZBRENCP-testing/service/tcp/https");
        let ns = "very-long-namespace-name-abcdefghijklmnopqrstuvwxyz0123456789xx";
        let svc = "very-long-service-name-why-would-you-even-do-this-i-mean-really";
        let port = "port-443-providing-the-hypertext-transmission-protocol-with-tls";
        let long = format!("{ns}/{svc}:{port}");
        assert_eq!(nft_service_base(&long, "sctp"), format!("KR6NACJP-{ns}/{svc}/sctp/{port}"));
        assert_eq!(
            nft_endpoint_base("testing/service:http", "tcp", "10.180.0.1", 80),
            "JO2XBXZR-testing/service/tcp/http__10.180.0.1/80"
        );
        assert_eq!(
            nft_endpoint_base("testing/service:http", "tcp", "10.180.0.2", 80),
            "5S6H3H22-testing/service/tcp/http__10.180.0.2/80"
        );
        assert_eq!(
            nft_endpoint_base("testing/service:http", "tcp", "fd80:abcd:12::a1b2:c3d4:e5f6:9999", 80),
            "U7E2ET36-testing/service/tcp/http__fd80.abcd.12..a1b2.c3d4.e5f6.9999/80"
        );
        assert_eq!(
            nft_endpoint_base(&long, "sctp", "1234:5678:9abc:def0::abc:1234", 443),
            format!("5YS7AFEA-{ns}/{svc}/sctp/{port}__1234.5678.9abc.def0..abc.1234/443")
        );
        let cut = nft_endpoint_base(&long, "sctp", "1234:5678:9abc:def0::abcd:1234:5678", 443);
        assert_eq!(cut, format!("CI6C53Q3-{ns}/{svc}/sctp/{port}__1234.5678.9abc.def0..abcd.1234..."));
        assert_eq!(cut.len(), NFT_BASE_MAX);
        let cut2 = nft_endpoint_base(&long, "sctp", "1234:5678:9abc:def0::abcd:1234:8765", 443);
        assert!(cut2.starts_with("2FLXFK6X-") && cut2.ends_with("1234..."));
        assert_eq!(ServiceChains::new("ns1/svc1:p80", "tcp").nft_base, "ULMVA6XW-ns1/svc1/tcp/p80");
        assert_eq!(
            nft_endpoint_base("ns1/svc1:p80", "tcp", "10.180.0.1", 80),
            "5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80"
        );
        assert!(
            is_nft_service_chain("service-ULMVA6XW-ns1/svc1/tcp/p80") && !is_nft_service_chain("services")
        );
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
