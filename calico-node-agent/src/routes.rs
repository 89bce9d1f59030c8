//! One blackhole route per block affine to this node, IPv4 and IPv6 alike.
//!
//! Why a blackhole: the node owns the whole /26 towards the network (BGP
//! announces the aggregate), but only some addresses have pods. Packets for
//! an unused address must die here rather than follow the default route back
//! to the ToR (a routing loop until the TTL runs out). Pods' own
//! `/32 dev cali…` routes win by longest prefix.
//!
//! The routes carry their own protocol number (80 by default, as Felix), so
//! the agent recognises its routes on restart and BIRD's `learn` does not
//! mistake them for its own.

use std::collections::BTreeSet;

use netlink_util::{IpFamily, Netlink, Protocol, Route, RouteKind, MAIN_TABLE};

use crate::state::OwnBlock;

/// What a reconcile changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RouteChanges {
    pub added: Vec<OwnBlock>,
    pub removed: Vec<OwnBlock>,
}

impl RouteChanges {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty()
    }
}

/// The blackhole routes of the netns the agent runs in.
pub struct BlackholeRoutes {
    nl: Netlink,
    protocol: Protocol,
}

impl BlackholeRoutes {
    /// Open a netlink socket in the calling thread's network namespace.
    pub fn new(protocol: u8) -> Result<BlackholeRoutes, netlink_util::Error> {
        Ok(BlackholeRoutes { nl: Netlink::new()?, protocol: Protocol::from(protocol) })
    }

    fn route(&self, b: &OwnBlock) -> Route {
        Route::new(b.0).blackhole().protocol(self.protocol)
    }

    /// The blackholes with our protocol now in the main tables of both families.
    pub fn current(&mut self) -> Result<BTreeSet<OwnBlock>, netlink_util::Error> {
        let mut have = BTreeSet::new();
        for family in [IpFamily::V4, IpFamily::V6] {
            have.extend(
                self.nl
                    .routes(family, MAIN_TABLE)?
                    .into_iter()
                    .filter(|r| r.kind == RouteKind::Blackhole && r.protocol == Some(self.protocol))
                    .map(|r| OwnBlock(r.dst)),
            );
        }
        Ok(have)
    }

    /// Make the kernel's set equal `want`: add the missing, remove the stale.
    /// Continues past a failing route and returns the first error after
    /// trying all, so one bad entry does not freeze the rest.
    pub fn reconcile(&mut self, want: &BTreeSet<OwnBlock>) -> Result<RouteChanges, netlink_util::Error> {
        let have = self.current()?;
        let mut changes = RouteChanges::default();
        let mut first_err = None;
        for b in have.difference(want) {
            match self.nl.del_route(&self.route(b)) {
                Ok(()) => changes.removed.push(*b),
                Err(e) if e.is_not_found() => {}
                Err(e) => {
                    log::error!("removing blackhole {}: {e}", b.0);
                    first_err.get_or_insert(e);
                }
            }
        }
        for b in want.difference(&have) {
            // replace: an identical route from a previous run is not an error.
            match self.nl.replace_route(&self.route(b)) {
                Ok(()) => changes.added.push(*b),
                Err(e) => {
                    log::error!("adding blackhole {}: {e}", b.0);
                    first_err.get_or_insert(e);
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(changes),
        }
    }
}
