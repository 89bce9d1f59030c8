//! IPv4/IPv6 addresses on links, and the IPv6 link-local address wait.

use std::net::{IpAddr, Ipv6Addr};
use std::time::{Duration, Instant};

use ipnetwork::IpNetwork;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage, AddressScope,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::error::{Error, Result};
use crate::netlink::{Netlink, Op};
use crate::types::{IpFamily, Scope};

/// How long between two looks at a link's addresses while waiting.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Options for [`Netlink::add_address`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AddrOptions {
    /// Default: the kernel's choice (universe for global addresses).
    pub scope: Option<Scope>,
    /// IPv6: skip duplicate address detection (`IFA_F_NODAD`), so the address
    /// is usable at once instead of after ~1 s of "tentative".
    pub nodad: bool,
}

impl AddrOptions {
    pub fn scope(mut self, scope: Scope) -> Self {
        self.scope = Some(scope);
        self
    }
    pub fn nodad(mut self) -> Self {
        self.nodad = true;
        self
    }
}

/// An address as the kernel reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Address {
    pub index: u32,
    /// The address with its prefix length (host bits kept: `10.0.0.5/24`).
    pub net: IpNetwork,
    pub scope: Scope,
    /// IPv6 DAD still running: the address cannot be used as a source yet.
    pub tentative: bool,
    pub dad_failed: bool,
    pub nodad: bool,
}

impl Address {
    fn from_message(msg: &AddressMessage) -> Option<Address> {
        let mut local = None;
        let mut address = None;
        let mut flags = AddressFlags::from_bits_retain(u32::from(msg.header.flags.bits()));
        for attr in &msg.attributes {
            match attr {
                AddressAttribute::Local(ip) => local = Some(*ip),
                AddressAttribute::Address(ip) => address = Some(*ip),
                // The 32-bit attribute supersedes the 8-bit header field.
                AddressAttribute::Flags(f) => flags = *f,
                _ => {}
            }
        }
        let ip = local.or(address)?;
        let net = IpNetwork::new(ip, msg.header.prefix_len).ok()?;
        Some(Address {
            index: msg.header.index,
            net,
            scope: Scope::from(u8::from(msg.header.scope)),
            tentative: flags.contains(AddressFlags::Tentative),
            dad_failed: flags.contains(AddressFlags::Dadfailed),
            nodad: flags.contains(AddressFlags::Nodad),
        })
    }
}

fn family_of(ip: &IpAddr) -> AddressFamily {
    match ip {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

fn message(index: u32, net: IpNetwork, opts: &AddrOptions) -> AddressMessage {
    let ip = net.ip();
    let mut msg = AddressMessage::default();
    msg.header.family = family_of(&ip);
    msg.header.prefix_len = net.prefix();
    msg.header.index = index;
    if let Some(s) = opts.scope {
        msg.header.scope = AddressScope::from(u8::from(s));
    }
    if opts.nodad && ip.is_ipv6() {
        msg.header.flags = AddressHeaderFlags::Nodad;
    }
    // As iproute2 does without a peer: IFA_LOCAL and IFA_ADDRESS are the same.
    msg.attributes.push(AddressAttribute::Local(ip));
    msg.attributes.push(AddressAttribute::Address(ip));
    msg
}

impl Netlink {
    /// Add `net` (address + prefix length) to link `index`.
    /// `Error::Exists` when the link already has it.
    pub fn add_address(&mut self, index: u32, net: IpNetwork, opts: &AddrOptions) -> Result<()> {
        let what = || format!("address {net} on link index {index}");
        let op = Op { op: "add", what: &what };
        self.request(
            RouteNetlinkMessage::NewAddress(message(index, net, opts)),
            NLM_F_CREATE | NLM_F_EXCL,
            &op,
        )
        .map(drop)
    }

    /// Remove `net` from link `index`. `Error::NotFound` when it is not there.
    pub fn del_address(&mut self, index: u32, net: IpNetwork) -> Result<()> {
        let what = || format!("address {net} on link index {index}");
        let op = Op { op: "delete", what: &what };
        match self.request(
            RouteNetlinkMessage::DelAddress(message(index, net, &AddrOptions::default())),
            0,
            &op,
        ) {
            Err(Error::Kernel { errno: libc::EADDRNOTAVAIL, .. }) => {
                Err(Error::NotFound { op: "delete", what: what() })
            }
            other => other.map(drop),
        }
    }

    /// Addresses in the socket's namespace, optionally of one family and/or link.
    pub fn addresses(&mut self, family: Option<IpFamily>, index: Option<u32>) -> Result<Vec<Address>> {
        let mut msg = AddressMessage::default();
        msg.header.family = match family {
            Some(IpFamily::V4) => AddressFamily::Inet,
            Some(IpFamily::V6) => AddressFamily::Inet6,
            None => AddressFamily::Unspec,
        };
        let what = || match index {
            Some(i) => format!("addresses of link index {i}"),
            None => "addresses".to_string(),
        };
        let replies = self.dump(RouteNetlinkMessage::GetAddress(msg), &Op { op: "list", what: &what })?;
        Ok(replies
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) => Address::from_message(a),
                _ => None,
            })
            .filter(|a| index.is_none_or(|i| a.index == i))
            .collect())
    }

    /// The IPv6 link-local (fe80::/10) address of link `index`, if it has one.
    pub fn link_local_v6(&mut self, index: u32) -> Result<Option<Ipv6Addr>> {
        let addrs = self.addresses(Some(IpFamily::V6), Some(index))?;
        Ok(addrs.iter().find_map(|a| match a.net.ip() {
            IpAddr::V6(ip) if a.scope == Scope::Link && !a.dad_failed => Some(ip),
            _ => None,
        }))
    }

    /// Wait (polling every 50 ms, at most `timeout`) for link `index` to get
    /// its IPv6 link-local address, which the kernel only assigns once the
    /// link is up and has carrier (a veth: both ends up). `Error::Timeout` when it does not appear in time. The
    /// address may still be tentative unless DAD is off on that link
    /// (`accept_dad=0`, as Calico sets before link-up).
    pub fn wait_link_local_v6(&mut self, index: u32, timeout: Duration) -> Result<Ipv6Addr> {
        let start = Instant::now();
        loop {
            if let Some(ip) = self.link_local_v6(index)? {
                return Ok(ip);
            }
            let waited = start.elapsed();
            if waited >= timeout {
                return Err(Error::Timeout {
                    what: format!("an IPv6 link-local address on link index {index}"),
                    waited_ms: waited.as_millis() as u64,
                });
            }
            std::thread::sleep(POLL_INTERVAL.min(timeout - waited));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v6_nodad_sets_the_header_flag_and_v4_ignores_it() {
        let opts = AddrOptions::default().nodad();
        let m = message(3, "fd00::5/128".parse().unwrap(), &opts);
        assert_eq!(m.header.flags, AddressHeaderFlags::Nodad);
        assert_eq!(m.header.prefix_len, 128);
        let m = message(3, "10.0.0.5/32".parse().unwrap(), &opts);
        assert_eq!(m.header.flags, AddressHeaderFlags::empty());
        assert_eq!(m.header.family, AddressFamily::Inet);
    }

    #[test]
    fn parsed_address_prefers_local_and_keeps_host_bits() {
        let mut m = message(7, "10.1.2.3/24".parse().unwrap(), &AddrOptions::default().scope(Scope::Link));
        m.attributes.push(AddressAttribute::Flags(AddressFlags::Tentative));
        let a = Address::from_message(&m).unwrap();
        assert_eq!(a.net.to_string(), "10.1.2.3/24");
        assert_eq!(a.scope, Scope::Link);
        assert!(a.tentative);
        assert_eq!(a.index, 7);
    }
}
