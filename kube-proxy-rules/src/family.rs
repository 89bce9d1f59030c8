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

impl std::fmt::Display for IpFamily {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
