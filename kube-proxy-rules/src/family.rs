//! IP families. kube-proxy runs one proxier per family (its `MetaProxier`):
//! the same rule builders, fed the Services, endpoints and node settings of
//! one family, written to `iptables-restore` or `ip6tables-restore`, or to
//! table `ip kube-proxy` or `ip6 kube-proxy`. [`IpFamily`] carries the few
//! words in which the two families' rules differ.

use std::net::IpAddr;

use ipnetwork::IpNetwork;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum IpFamily {
    #[default]
    V4,
    V6,
}

impl IpFamily {
    /// Both families, IPv4 first (kube-proxy's primary family order).
    pub const ALL: [IpFamily; 2] = [IpFamily::V4, IpFamily::V6];

    /// The family of `ip` as parsed (inputs are [`unmap`]ped when parsed,
    /// so an IPv4-mapped address has reached here as IPv4).
    pub fn of(ip: IpAddr) -> IpFamily {
        if ip.is_ipv4() {
            IpFamily::V4
        } else {
            IpFamily::V6
        }
    }
    pub fn of_net(net: &IpNetwork) -> IpFamily {
        IpFamily::of(net.ip())
    }
    pub fn has(self, ip: IpAddr) -> bool {
        IpFamily::of(ip) == self
    }
    /// `IPv4` / `IPv6` (the Service's `ipFamilies` values).
    pub fn name(self) -> &'static str {
        match self {
            IpFamily::V4 => "IPv4",
            IpFamily::V6 => "IPv6",
        }
    }
    /// The nftables address family and match keyword: `ip` / `ip6`.
    pub fn nft(self) -> &'static str {
        match self {
            IpFamily::V4 => "ip",
            IpFamily::V6 => "ip6",
        }
    }
    /// The kube-proxy table: `ip kube-proxy` / `ip6 kube-proxy`.
    pub fn nft_table(self) -> &'static str {
        match self {
            IpFamily::V4 => "ip kube-proxy",
            IpFamily::V6 => "ip6 kube-proxy",
        }
    }
    /// The nftables set element type: `ipv4_addr` / `ipv6_addr`.
    pub fn nft_addr_type(self) -> &'static str {
        match self {
            IpFamily::V4 => "ipv4_addr",
            IpFamily::V6 => "ipv6_addr",
        }
    }
    /// `iptables` / `ip6tables` (and `-restore`, `-save` after it).
    pub fn iptables(self) -> &'static str {
        match self {
            IpFamily::V4 => "iptables",
            IpFamily::V6 => "ip6tables",
        }
    }
    pub fn iptables_restore(self) -> &'static str {
        match self {
            IpFamily::V4 => "iptables-restore",
            IpFamily::V6 => "ip6tables-restore",
        }
    }
    pub fn iptables_save(self) -> &'static str {
        match self {
            IpFamily::V4 => "iptables-save",
            IpFamily::V6 => "ip6tables-save",
        }
    }
    /// The loopback range as the iptables rules write it.
    pub fn loopback_cidr(self) -> &'static str {
        match self {
            IpFamily::V4 => "127.0.0.0/8",
            IpFamily::V6 => "::1/128",
        }
    }
}

/// An IPv4-mapped IPv6 address (`::ffff:192.0.2.7`) as the IPv4 address it
/// maps (`192.0.2.7`); any other address unchanged. Go's `net.IP` keeps IPv4
/// addresses in this 16-byte form and prints them as IPv4, so kube-proxy
/// treats `::ffff:192.0.2.7` in a Service or EndpointSlice as the IPv4 address
/// (`-d 192.0.2.7` in the IPv4 proxier); an ip6tables rule for it would never
/// match (IPv4 packets do not reach ip6tables).
pub fn unmap(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

/// A network whose (masked) address is IPv4-mapped and whose prefix covers
/// the `::ffff:0:0/96` part, as the IPv4 network (`::ffff:10.0.0.0/104` →
/// `10.0.0.0/8`), as Go's `ParseCIDR` + `IPNet.String` do; any other network
/// unchanged. The network must already be masked.
pub fn unmap_net(net: IpNetwork) -> IpNetwork {
    match net {
        IpNetwork::V6(n) if n.prefix() >= 96 => match n.network().to_ipv4_mapped() {
            Some(v4) => ipnetwork::Ipv4Network::new(v4, n.prefix() - 96).map_or(net, IpNetwork::V4),
            None => net,
        },
        _ => net,
    }
}

impl std::fmt::Display for IpFamily {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_mapped_addresses_are_ipv4() {
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(unmap(mapped), "192.0.2.7".parse::<IpAddr>().unwrap());
        // IPv4-compatible (deprecated `::a.b.c.d`) is not mapped, as in Go.
        let compat: IpAddr = "::192.0.2.7".parse().unwrap();
        assert_eq!(unmap(compat), compat);
        let net: IpNetwork = "::ffff:10.0.0.0/104".parse().unwrap();
        assert_eq!(unmap_net(net), "10.0.0.0/8".parse::<IpNetwork>().unwrap());
        let wide: IpNetwork = "::/80".parse().unwrap();
        assert_eq!(unmap_net(wide), wide);
    }
}
