//! Routes: add / replace / delete / list, in the main table or another one.
//!
//! One [`Route`] type describes both what to add and what the kernel reports.
//! `scope` and `protocol` are optional: `None` means "the usual default" when
//! adding (see [`Route::effective_scope`]; protocol `boot`, as `ip route`) and
//! "any" when deleting, so a route can be deleted by destination alone.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::error::{Error, Result};
use crate::netlink::{Netlink, Op};
use crate::types::{IpFamily, Scope};

/// `RT_TABLE_MAIN`.
pub const MAIN_TABLE: u32 = 254;

const DEFAULT_V4: Ipv4Network = match Ipv4Network::new_checked(Ipv4Addr::UNSPECIFIED, 0) {
    Some(n) => n,
    None => panic!("0.0.0.0/0 is a valid network"),
};
const DEFAULT_V6: Ipv6Network = match Ipv6Network::new_checked(Ipv6Addr::UNSPECIFIED, 0) {
    Some(n) => n,
    None => panic!("::/0 is a valid network"),
};

/// Who installed a route (`RTPROT_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    Unspec,
    Kernel,
    Boot,
    Static,
    Bird,
    /// Any other number, e.g. Calico's `proto 80` for block blackholes.
    Other(u8),
}

impl From<u8> for Protocol {
    fn from(v: u8) -> Protocol {
        match v {
            0 => Protocol::Unspec,
            2 => Protocol::Kernel,
            3 => Protocol::Boot,
            4 => Protocol::Static,
            12 => Protocol::Bird,
            n => Protocol::Other(n),
        }
    }
}

impl From<Protocol> for u8 {
    fn from(p: Protocol) -> u8 {
        match p {
            Protocol::Unspec => 0,
            Protocol::Kernel => 2,
            Protocol::Boot => 3,
            Protocol::Static => 4,
            Protocol::Bird => 12,
            Protocol::Other(n) => n,
        }
    }
}

/// `ip route` names: `boot`, `static`, `bird`, ... or the number.
impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Protocol::Unspec => f.write_str("unspec"),
            Protocol::Kernel => f.write_str("kernel"),
            Protocol::Boot => f.write_str("boot"),
            Protocol::Static => f.write_str("static"),
            Protocol::Bird => f.write_str("bird"),
            Protocol::Other(n) => write!(f, "{n}"),
        }
    }
}

/// Route type (`RTN_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RouteKind {
    Unicast,
    Blackhole,
    Unreachable,
    Prohibit,
    Local,
    Other(u8),
}

impl From<RouteKind> for RouteType {
    fn from(k: RouteKind) -> RouteType {
        match k {
            RouteKind::Unicast => RouteType::Unicast,
            RouteKind::Blackhole => RouteType::BlackHole,
            RouteKind::Unreachable => RouteType::Unreachable,
            RouteKind::Prohibit => RouteType::Prohibit,
            RouteKind::Local => RouteType::Local,
            RouteKind::Other(n) => RouteType::from(n),
        }
    }
}

impl From<RouteType> for RouteKind {
    fn from(t: RouteType) -> RouteKind {
        match t {
            RouteType::Unicast => RouteKind::Unicast,
            RouteType::BlackHole => RouteKind::Blackhole,
            RouteType::Unreachable => RouteKind::Unreachable,
            RouteType::Prohibit => RouteKind::Prohibit,
            RouteType::Local => RouteKind::Local,
            other => RouteKind::Other(u8::from(other)),
        }
    }
}

/// A route. Build one with [`Route::new`] and the chained setters:
///
/// ```
/// use netlink_util::{Route, Scope, Protocol};
/// let gw = "169.254.1.1".parse().unwrap();
/// let r = Route::new("0.0.0.0/0".parse().unwrap()).via(gw).dev(2);
/// let host = Route::new("169.254.1.1/32".parse().unwrap()).dev(2).scope(Scope::Link);
/// let block = Route::new("10.65.0.0/26".parse().unwrap()).blackhole().protocol(Protocol::Other(80));
/// assert_eq!(block.to_string(), "blackhole 10.65.0.0/26 proto 80");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// Destination; `0.0.0.0/0` / `::/0` is the default route.
    pub dst: IpNetwork,
    pub gateway: Option<IpAddr>,
    /// Output link index.
    pub oif: Option<u32>,
    pub scope: Option<Scope>,
    pub protocol: Option<Protocol>,
    pub kind: RouteKind,
    /// `RTNH_F_ONLINK`: the gateway is on the link even if no prefix says so.
    pub onlink: bool,
    pub table: u32,
    /// Metric (`RTA_PRIORITY`).
    pub metric: Option<u32>,
    /// Preferred source address (`RTA_PREFSRC`).
    pub pref_src: Option<IpAddr>,
}

impl Route {
    /// A unicast route to `dst` in the main table; add a device, gateway, ...
    pub fn new(dst: IpNetwork) -> Route {
        // Normalise to the network address: the kernel refuses host bits on
        // IPv4 ("Invalid prefix for given prefix length") and ignores them on v6.
        let dst = IpNetwork::new(dst.network(), dst.prefix()).unwrap_or(dst);
        Route {
            dst,
            gateway: None,
            oif: None,
            scope: None,
            protocol: None,
            kind: RouteKind::Unicast,
            onlink: false,
            table: MAIN_TABLE,
            metric: None,
            pref_src: None,
        }
    }
    /// The IPv4 default route (`0.0.0.0/0`).
    pub fn default_v4() -> Route {
        Route::new(IpNetwork::V4(DEFAULT_V4))
    }
    /// The IPv6 default route (`::/0`).
    pub fn default_v6() -> Route {
        Route::new(IpNetwork::V6(DEFAULT_V6))
    }
    pub fn dev(mut self, index: u32) -> Self {
        self.oif = Some(index);
        self
    }
    pub fn via(mut self, gateway: IpAddr) -> Self {
        self.gateway = Some(gateway);
        self
    }
    pub fn scope(mut self, scope: Scope) -> Self {
        self.scope = Some(scope);
        self
    }
    pub fn protocol(mut self, protocol: Protocol) -> Self {
        self.protocol = Some(protocol);
        self
    }
    pub fn onlink(mut self) -> Self {
        self.onlink = true;
        self
    }
    pub fn blackhole(mut self) -> Self {
        self.kind = RouteKind::Blackhole;
        self
    }
    pub fn kind(mut self, kind: RouteKind) -> Self {
        self.kind = kind;
        self
    }
    pub fn table(mut self, table: u32) -> Self {
        self.table = table;
        self
    }
    pub fn metric(mut self, metric: u32) -> Self {
        self.metric = Some(metric);
        self
    }
    pub fn pref_src(mut self, src: IpAddr) -> Self {
        self.pref_src = Some(src);
        self
    }

    pub fn family(&self) -> IpFamily {
        if self.dst.is_ipv4() {
            IpFamily::V4
        } else {
            IpFamily::V6
        }
    }

    /// The scope used when adding: the explicit one, else what `ip route`
    /// would pick: `link` for a unicast route with a device and no gateway
    /// (directly connected), `host` for a local route, `universe` otherwise.
    pub fn effective_scope(&self) -> Scope {
        match (self.scope, self.kind) {
            (Some(s), _) => s,
            (None, RouteKind::Local) => Scope::Host,
            (None, RouteKind::Unicast) if self.gateway.is_none() && self.oif.is_some() => Scope::Link,
            _ => Scope::Universe,
        }
    }

    fn check(&self) -> Result<()> {
        if let Some(gw) = self.gateway {
            if gw.is_ipv4() != self.dst.is_ipv4() {
                return Err(Error::invalid(
                    format!("route {self}"),
                    "gateway and destination are of different IP families",
                ));
            }
        }
        Ok(())
    }

    /// The netlink message; `adding` picks defaults vs. wildcards (module doc).
    fn message(&self, adding: bool) -> RouteMessage {
        let mut msg = RouteMessage::default();
        let h = &mut msg.header;
        h.address_family = if self.dst.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
        h.destination_prefix_length = self.dst.prefix();
        h.table = if self.table < 256 { self.table as u8 } else { RouteHeader::RT_TABLE_UNSPEC };
        h.kind = RouteType::from(self.kind);
        h.scope = if adding {
            RouteScope::from(u8::from(self.effective_scope()))
        } else {
            RouteScope::from(u8::from(self.scope.unwrap_or(Scope::Nowhere)))
        };
        h.protocol = match (self.protocol, adding) {
            (Some(p), _) => RouteProtocol::from(u8::from(p)),
            (None, true) => RouteProtocol::Boot,
            (None, false) => RouteProtocol::Unspec,
        };
        if self.onlink {
            h.flags = RouteFlags::Onlink;
        }
        if self.dst.prefix() > 0 {
            msg.attributes.push(RouteAttribute::Destination(RouteAddress::from(self.dst.ip())));
        }
        if self.table >= 256 {
            msg.attributes.push(RouteAttribute::Table(self.table));
        }
        if let Some(gw) = self.gateway {
            msg.attributes.push(RouteAttribute::Gateway(RouteAddress::from(gw)));
        }
        if let Some(oif) = self.oif {
            msg.attributes.push(RouteAttribute::Oif(oif));
        }
        if let Some(m) = self.metric {
            msg.attributes.push(RouteAttribute::Priority(m));
        }
        if let Some(src) = self.pref_src {
            msg.attributes.push(RouteAttribute::PrefSource(RouteAddress::from(src)));
        }
        msg
    }

    fn from_message(msg: &RouteMessage) -> Option<Route> {
        let h = &msg.header;
        let mut table = u32::from(h.table);
        let mut dst = None;
        let mut route = match h.address_family {
            AddressFamily::Inet => Route::default_v4(),
            AddressFamily::Inet6 => Route::default_v6(),
            _ => return None,
        };
        for attr in &msg.attributes {
            match attr {
                RouteAttribute::Destination(a) => dst = ip_of(a),
                RouteAttribute::Gateway(a) => route.gateway = ip_of(a),
                RouteAttribute::Oif(i) => route.oif = Some(*i),
                RouteAttribute::Table(t) => table = *t,
                RouteAttribute::Priority(p) => route.metric = Some(*p),
                RouteAttribute::PrefSource(a) => route.pref_src = ip_of(a),
                _ => {}
            }
        }
        if let Some(ip) = dst {
            route.dst = IpNetwork::new(ip, h.destination_prefix_length).ok()?;
        }
        route.table = table;
        route.scope = Some(Scope::from(u8::from(h.scope)));
        route.protocol = Some(Protocol::from(u8::from(h.protocol)));
        route.kind = RouteKind::from(h.kind);
        route.onlink = h.flags.contains(RouteFlags::Onlink);
        Some(route)
    }
}

fn ip_of(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(ip) => Some(IpAddr::V4(*ip)),
        RouteAddress::Inet6(ip) => Some(IpAddr::V6(*ip)),
        _ => None,
    }
}

/// `ip route`-like rendering, used in error messages.
impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            RouteKind::Unicast => {}
            RouteKind::Blackhole => write!(f, "blackhole ")?,
            RouteKind::Unreachable => write!(f, "unreachable ")?,
            RouteKind::Prohibit => write!(f, "prohibit ")?,
            RouteKind::Local => write!(f, "local ")?,
            RouteKind::Other(n) => write!(f, "type {n} ")?,
        }
        if self.dst.prefix() == 0 {
            write!(f, "default")?;
        } else {
            write!(f, "{}", self.dst)?;
        }
        if let Some(gw) = self.gateway {
            write!(f, " via {gw}")?;
        }
        if let Some(oif) = self.oif {
            write!(f, " dev index {oif}")?;
        }
        if self.table != MAIN_TABLE {
            write!(f, " table {}", self.table)?;
        }
        if let Some(p) = self.protocol {
            write!(f, " proto {p}")?;
        }
        if let Some(s) = self.scope {
            write!(f, " scope {s}")?;
        }
        if self.onlink {
            write!(f, " onlink")?;
        }
        Ok(())
    }
}

impl Netlink {
    /// Add a route. `Error::Exists` when one with the same destination (and,
    /// for IPv6, metric) is already in the table.
    pub fn add_route(&mut self, route: &Route) -> Result<()> {
        self.change_route(route, NLM_F_CREATE | NLM_F_EXCL, "add")
    }

    /// Add a route, or replace the one with the same destination.
    pub fn replace_route(&mut self, route: &Route) -> Result<()> {
        self.change_route(route, NLM_F_CREATE | NLM_F_REPLACE, "replace")
    }

    fn change_route(&mut self, route: &Route, flags: u16, op: &'static str) -> Result<()> {
        route.check()?;
        let what = || format!("route {route}");
        self.request(RouteNetlinkMessage::NewRoute(route.message(true)), flags, &Op { op, what: &what })
            .map(drop)
    }

    /// Delete a route. Fields left `None` (and no gateway / device) match
    /// any value. `Error::NotFound` when nothing matches.
    pub fn del_route(&mut self, route: &Route) -> Result<()> {
        let what = || format!("route {route}");
        self.request(
            RouteNetlinkMessage::DelRoute(route.message(false)),
            0,
            &Op { op: "delete", what: &what },
        )
        .map(drop)
    }

    /// Routes of one family in `table` (e.g. [`MAIN_TABLE`]). Cached clones
    /// (IPv6 exceptions) are left out.
    pub fn routes(&mut self, family: IpFamily, table: u32) -> Result<Vec<Route>> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = match family {
            IpFamily::V4 => AddressFamily::Inet,
            IpFamily::V6 => AddressFamily::Inet6,
        };
        let what = || format!("{family:?} routes of table {table}");
        let replies = self.dump(RouteNetlinkMessage::GetRoute(msg), &Op { op: "list", what: &what })?;
        Ok(replies
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewRoute(r) if !r.header.flags.contains(RouteFlags::Cloned) => {
                    Route::from_message(r)
                }
                _ => None,
            })
            .filter(|r| r.table == table)
            .collect())
    }

    /// Routes in `table` whose destination is exactly `dst` (any metric,
    /// device or type). This is how a caller that got `Error::Exists` finds
    /// out which interface the existing route uses.
    pub fn routes_to(&mut self, dst: IpNetwork, table: u32) -> Result<Vec<Route>> {
        let wanted = Route::new(dst).dst;
        let family = if dst.is_ipv4() { IpFamily::V4 } else { IpFamily::V6 };
        let mut routes = self.routes(family, table)?;
        routes.retain(|r| r.dst == wanted);
        Ok(routes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNetwork {
        s.parse().unwrap()
    }

    #[test]
    fn default_scope_follows_ip_route() {
        assert_eq!(Route::new(net("10.0.0.5/32")).dev(3).effective_scope(), Scope::Link);
        let gw = "169.254.1.1".parse().unwrap();
        assert_eq!(Route::default_v4().via(gw).dev(3).effective_scope(), Scope::Universe);
        assert_eq!(Route::new(net("10.0.0.0/26")).blackhole().effective_scope(), Scope::Universe);
        assert_eq!(Route::new(net("10.0.0.5/32")).dev(3).scope(Scope::Host).effective_scope(), Scope::Host);
    }

    #[test]
    fn delete_message_uses_wildcards_and_add_message_defaults() {
        let r = Route::new(net("10.0.0.0/26")).blackhole();
        let add = r.message(true);
        assert_eq!(add.header.protocol, RouteProtocol::Boot);
        assert_eq!(add.header.kind, RouteType::BlackHole);
        let del = r.message(false);
        assert_eq!(del.header.protocol, RouteProtocol::Unspec);
        assert_eq!(del.header.scope, RouteScope::NoWhere);
        assert_eq!(del.header.table, 254);
    }

    #[test]
    fn default_route_has_no_destination_attribute_and_big_tables_use_rta_table() {
        let m = Route::default_v6().table(1000).message(true);
        assert!(!m.attributes.iter().any(|a| matches!(a, RouteAttribute::Destination(_))));
        assert!(m.attributes.contains(&RouteAttribute::Table(1000)));
        assert_eq!(m.header.table, 0);
    }

    #[test]
    fn destination_host_bits_are_cleared() {
        assert_eq!(Route::new(net("10.0.0.77/26")).dst.to_string(), "10.0.0.64/26");
    }

    #[test]
    fn message_round_trips() {
        let r = Route::default_v6()
            .via("fe80::1".parse().unwrap())
            .dev(4)
            .onlink()
            .protocol(Protocol::Other(80))
            .scope(Scope::Universe)
            .metric(1024);
        let back = Route::from_message(&r.message(true)).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn mixed_family_gateway_is_refused() {
        let r = Route::default_v4().via("fe80::1".parse().unwrap());
        assert!(matches!(r.check(), Err(Error::Invalid { .. })));
    }

    #[test]
    fn display_reads_like_ip_route() {
        let r = Route::new(net("169.254.1.1/32")).dev(2).scope(Scope::Link);
        assert_eq!(r.to_string(), "169.254.1.1/32 dev index 2 scope link");
    }
}
