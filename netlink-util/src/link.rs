//! Links: veth pairs (peer created directly in the target netns), lookup,
//! up/down, MTU, delete, and a rollback guard.

use std::os::fd::AsRawFd;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkExtentMask, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::RouteNetlinkMessage;

use crate::error::{Error, Result};
use crate::netlink::{Netlink, Op};
use crate::netns::Netns;
use crate::types::{check_ifname, MacAddr};

/// The kind of a link (`IFLA_INFO_KIND`). Physical devices and `lo` have none.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkKind {
    Veth,
    Dummy,
    Bridge,
    Vxlan,
    IpIp,
    Wireguard,
    Other(String),
}

impl From<&InfoKind> for LinkKind {
    fn from(k: &InfoKind) -> LinkKind {
        match k {
            InfoKind::Veth => LinkKind::Veth,
            InfoKind::Dummy => LinkKind::Dummy,
            InfoKind::Bridge => LinkKind::Bridge,
            InfoKind::Vxlan => LinkKind::Vxlan,
            InfoKind::IpIp => LinkKind::IpIp,
            InfoKind::Wireguard => LinkKind::Wireguard,
            InfoKind::Other(s) => LinkKind::Other(s.clone()),
            other => LinkKind::Other(format!("{other:?}").to_lowercase()),
        }
    }
}

/// A link as the kernel reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: Option<MacAddr>,
    pub mtu: u32,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    /// Carrier present (`IFF_LOWER_UP`); a veth has it once both ends are up.
    pub lower_up: bool,
    pub kind: Option<LinkKind>,
    /// `IFLA_LINK`: for a veth, the peer's index (in the peer's namespace).
    pub peer_index: Option<u32>,
    /// `IFLA_LINK_NETNSID`: set when the peer lives in another namespace.
    pub peer_netnsid: Option<i32>,
}

impl Link {
    fn from_message(msg: &LinkMessage) -> Link {
        let mut link = Link {
            index: msg.header.index,
            name: String::new(),
            mac: None,
            mtu: 0,
            up: msg.header.flags.contains(LinkFlags::Up),
            lower_up: msg.header.flags.contains(LinkFlags::LowerUp),
            kind: None,
            peer_index: None,
            peer_netnsid: None,
        };
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(n) => link.name = n.clone(),
                LinkAttribute::Address(a) => link.mac = MacAddr::from_slice(a),
                LinkAttribute::Mtu(m) => link.mtu = *m,
                LinkAttribute::Link(i) => link.peer_index = Some(*i),
                LinkAttribute::LinkNetNsId(i) => link.peer_netnsid = Some(*i),
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        if let LinkInfo::Kind(k) = info {
                            link.kind = Some(LinkKind::from(k));
                        }
                    }
                }
                _ => {}
            }
        }
        link
    }
}

/// A veth pair to create: this end in the socket's namespace, the peer
/// created directly in `peer_netns` (or beside this end when `None`).
///
/// Creating the peer in place (IFLA_NET_NS_FD inside the peer's info) costs one
/// netlink request, where "create, then move" costs a second one plus the
/// kernel's unregister/re-register of the device and its sysctl tree.
#[derive(Clone, Debug)]
pub struct VethConfig<'a> {
    pub name: String,
    pub mac: Option<MacAddr>,
    pub mtu: Option<u32>,
    pub peer_name: String,
    pub peer_mac: Option<MacAddr>,
    pub peer_mtu: Option<u32>,
    pub peer_netns: Option<&'a Netns>,
    /// Number of TX and RX queues for both ends (Calico's `num_queues`).
    pub queues: Option<u32>,
}

impl<'a> VethConfig<'a> {
    pub fn new(name: impl Into<String>, peer_name: impl Into<String>) -> VethConfig<'a> {
        VethConfig {
            name: name.into(),
            mac: None,
            mtu: None,
            peer_name: peer_name.into(),
            peer_mac: None,
            peer_mtu: None,
            peer_netns: None,
            queues: None,
        }
    }
    pub fn mac(mut self, mac: MacAddr) -> Self {
        self.mac = Some(mac);
        self
    }
    /// MTU of both ends (override the peer's with [`VethConfig::peer_mtu`]).
    pub fn mtu(mut self, mtu: u32) -> Self {
        self.mtu = Some(mtu);
        if self.peer_mtu.is_none() {
            self.peer_mtu = Some(mtu);
        }
        self
    }
    pub fn peer_mac(mut self, mac: MacAddr) -> Self {
        self.peer_mac = Some(mac);
        self
    }
    pub fn peer_mtu(mut self, mtu: u32) -> Self {
        self.peer_mtu = Some(mtu);
        self
    }
    pub fn peer_netns(mut self, ns: &'a Netns) -> Self {
        self.peer_netns = Some(ns);
        self
    }
    pub fn queues(mut self, n: u32) -> Self {
        self.queues = Some(n);
        self
    }

    fn describe(&self) -> String {
        match self.peer_netns {
            Some(ns) => format!("veth {} (peer {} in {})", self.name, self.peer_name, ns.path().display()),
            None => format!("veth {} (peer {})", self.name, self.peer_name),
        }
    }

    fn message(&self) -> LinkMessage {
        let mut peer = LinkMessage::default();
        peer.attributes.push(LinkAttribute::IfName(self.peer_name.clone()));
        if let Some(m) = self.peer_mtu {
            peer.attributes.push(LinkAttribute::Mtu(m));
        }
        if let Some(mac) = self.peer_mac {
            peer.attributes.push(LinkAttribute::Address(mac.0.to_vec()));
        }
        if let Some(q) = self.queues {
            peer.attributes.push(LinkAttribute::NumTxQueues(q));
            peer.attributes.push(LinkAttribute::NumRxQueues(q));
        }
        if let Some(ns) = self.peer_netns {
            // The fd only has to stay open until the kernel has read the
            // request, which `create_veth` guarantees by borrowing `ns`.
            peer.attributes.push(LinkAttribute::NetNsFd(ns.as_raw_fd()));
        }
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(self.name.clone()));
        if let Some(m) = self.mtu {
            msg.attributes.push(LinkAttribute::Mtu(m));
        }
        if let Some(mac) = self.mac {
            msg.attributes.push(LinkAttribute::Address(mac.0.to_vec()));
        }
        if let Some(q) = self.queues {
            msg.attributes.push(LinkAttribute::NumTxQueues(q));
            msg.attributes.push(LinkAttribute::NumRxQueues(q));
        }
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
        ]));
        msg
    }
}

impl Netlink {
    /// Create a veth pair and return this (the socket's namespace) end.
    /// `Error::Exists` when either name is taken in its namespace.
    pub fn create_veth(&mut self, cfg: &VethConfig<'_>) -> Result<Link> {
        check_ifname(&cfg.name)?;
        check_ifname(&cfg.peer_name)?;
        let what = || cfg.describe();
        let op = Op { op: "create", what: &what };
        self.request(RouteNetlinkMessage::NewLink(cfg.message()), NLM_F_CREATE | NLM_F_EXCL, &op)?;
        // The pair exists now, but the caller only gets a guard for it from
        // the returned Link: if reading it back fails, delete it here (which
        // takes the peer too) so that the error leaves nothing behind.
        let found = self.link_by_name(&cfg.name);
        if found.is_err() {
            if let Err(e) = self.del_link_by_name(&cfg.name) {
                log::warn!("rollback: cannot delete new veth {}: {e}", cfg.name);
            }
        }
        found
    }

    /// Look a link up by name. `Error::NotFound` when there is none.
    pub fn link_by_name(&mut self, name: &str) -> Result<Link> {
        check_ifname(name)?;
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        msg.attributes.push(LinkAttribute::ExtMask(vec![LinkExtentMask::SkipStats]));
        let what = || format!("link {name}");
        self.get_link(msg, &Op { op: "get", what: &what })
    }

    /// Look a link up by index. `Error::NotFound` when there is none.
    pub fn link_by_index(&mut self, index: u32) -> Result<Link> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes.push(LinkAttribute::ExtMask(vec![LinkExtentMask::SkipStats]));
        let what = || format!("link index {index}");
        self.get_link(msg, &Op { op: "get", what: &what })
    }

    fn get_link(&mut self, msg: LinkMessage, op: &Op<'_>) -> Result<Link> {
        let replies = self.request(RouteNetlinkMessage::GetLink(msg), 0, op)?;
        replies
            .iter()
            .find_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(Link::from_message(l)),
                _ => None,
            })
            .ok_or_else(|| Error::NotFound { op: op.op, what: (op.what)() })
    }

    /// Every link in the socket's namespace.
    pub fn links(&mut self) -> Result<Vec<Link>> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::ExtMask(vec![LinkExtentMask::SkipStats]));
        let what = || "links".to_string();
        let replies = self.dump(RouteNetlinkMessage::GetLink(msg), &Op { op: "list", what: &what })?;
        Ok(replies
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(Link::from_message(l)),
                _ => None,
            })
            .collect())
    }

    /// Set a link administratively up.
    pub fn set_link_up(&mut self, index: u32) -> Result<()> {
        self.set_flags(index, true)
    }

    /// Set a link administratively down.
    pub fn set_link_down(&mut self, index: u32) -> Result<()> {
        self.set_flags(index, false)
    }

    fn set_flags(&mut self, index: u32, up: bool) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.header.change_mask = LinkFlags::Up;
        if up {
            msg.header.flags = LinkFlags::Up;
        }
        let what = || format!("link index {index}");
        let op = Op { op: if up { "set up" } else { "set down" }, what: &what };
        self.request(RouteNetlinkMessage::SetLink(msg), 0, &op).map(drop)
    }

    /// Change a link's MTU.
    pub fn set_link_mtu(&mut self, index: u32, mtu: u32) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes.push(LinkAttribute::Mtu(mtu));
        let what = || format!("link index {index} to {mtu}");
        self.request(RouteNetlinkMessage::SetLink(msg), 0, &Op { op: "set mtu of", what: &what }).map(drop)
    }

    /// Move a link into another namespace (it keeps its name unless that is
    /// taken there: `Error::Exists`). Prefer creating links in place
    /// ([`VethConfig::peer_netns`]): a move unregisters and re-registers the
    /// device, which costs more than the creation itself.
    pub fn move_link(&mut self, index: u32, netns: &Netns) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes.push(LinkAttribute::NetNsFd(netns.as_raw_fd()));
        let what = || format!("link index {index} to netns {}", netns.path().display());
        self.request(RouteNetlinkMessage::SetLink(msg), 0, &Op { op: "move", what: &what }).map(drop)
    }

    /// Delete a link by name (a veth takes its peer with it).
    /// `Error::NotFound` when there is no such link.
    pub fn del_link_by_name(&mut self, name: &str) -> Result<()> {
        check_ifname(name)?;
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        let what = || format!("link {name}");
        self.request(RouteNetlinkMessage::DelLink(msg), 0, &Op { op: "delete", what: &what }).map(drop)
    }

    /// Delete a link by index. `Error::NotFound` when there is no such link.
    pub fn del_link(&mut self, index: u32) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        let what = || format!("link index {index}");
        self.request(RouteNetlinkMessage::DelLink(msg), 0, &Op { op: "delete", what: &what }).map(drop)
    }
}

/// Deletes a link on drop unless [`LinkGuard::commit`] was called: the
/// rollback for a half-done CNI ADD. It remembers the namespace the link was
/// created in, so it is correct whichever thread drops it.
#[must_use = "dropping the guard deletes the link"]
#[derive(Debug)]
pub struct LinkGuard {
    netns: Netns,
    index: u32,
    name: String,
    armed: bool,
}

impl LinkGuard {
    /// Guard a link in the calling thread's current namespace.
    pub fn new(link: &Link) -> Result<LinkGuard> {
        Ok(LinkGuard::in_netns(Netns::current()?, link))
    }

    /// Guard a link that lives in `netns`.
    pub fn in_netns(netns: Netns, link: &Link) -> LinkGuard {
        LinkGuard { netns, index: link.index, name: link.name.clone(), armed: true }
    }

    /// Keep the link: the work it belonged to succeeded.
    pub fn commit(mut self) {
        self.armed = false;
    }

    /// Delete the link now, reporting errors (a missing link is fine).
    pub fn rollback(mut self) -> Result<()> {
        self.armed = false;
        self.delete()
    }

    fn delete(&self) -> Result<()> {
        let del = |nl: &mut Netlink| -> Result<()> {
            // Index first (exact), but only if it still carries our name: the
            // index could have been reused if someone else deleted the link.
            match nl.link_by_index(self.index) {
                Ok(l) if l.name == self.name => nl.del_link(self.index),
                Ok(_) => Ok(()),
                Err(e) => Err(e),
            }
        };
        let res = if self.netns.is_current()? {
            let mut nl = Netlink::new()?;
            del(&mut nl)
        } else {
            self.netns.run(del)
        };
        match res {
            Err(e) if e.is_not_found() => Ok(()),
            other => other,
        }
    }
}

impl Drop for LinkGuard {
    fn drop(&mut self) {
        if self.armed {
            if let Err(e) = self.delete() {
                log::warn!("rollback: cannot delete link {} (index {}): {e}", self.name, self.index);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn veth_message_creates_the_peer_in_the_target_netns() {
        let ns = Netns::current().unwrap();
        let cfg = VethConfig::new("cali1", "eth0").mac(MacAddr::CALICO_HOST).mtu(1410).peer_netns(&ns);
        let msg = cfg.message();
        assert!(msg.attributes.contains(&LinkAttribute::IfName("cali1".into())));
        assert!(msg.attributes.contains(&LinkAttribute::Address(vec![0xee; 6])));
        assert!(!msg.attributes.iter().any(|a| matches!(a, LinkAttribute::NetNsFd(_))));
        let peer = msg
            .attributes
            .iter()
            .find_map(|a| match a {
                LinkAttribute::LinkInfo(i) => i.iter().find_map(|i| match i {
                    LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(p))) => Some(p.clone()),
                    _ => None,
                }),
                _ => None,
            })
            .unwrap();
        assert!(peer.attributes.contains(&LinkAttribute::IfName("eth0".into())));
        assert!(peer.attributes.contains(&LinkAttribute::Mtu(1410)));
        assert!(peer.attributes.contains(&LinkAttribute::NetNsFd(ns.as_raw_fd())));
    }

    #[test]
    fn bad_names_are_refused_before_the_kernel_sees_them() {
        let tb = testbed::Netns::new("nlu");
        let ns = Netns::open(tb.path()).unwrap();
        ns.run(|nl| {
            let e = nl.create_veth(&VethConfig::new("a-name-that-is-too-long", "eth0")).unwrap_err();
            assert!(matches!(e, Error::Invalid { .. }), "{e}");
            let e = nl.link_by_name("../x").unwrap_err();
            assert!(matches!(e, Error::Invalid { .. }), "{e}");
            Ok(())
        })
        .unwrap();
    }
}
