//! # netlink-util: a small synchronous rtnetlink wrapper for the CNI data plane
//!
//! Owns: the netlink socket ([`Netlink`]), links (veth pairs whose peer is
//! created directly in the pod's netns), addresses, routes, network sysctls,
//! and entering a network namespace on a dedicated thread ([`Netns::run`]).
//! May call: the kernel (rtnetlink, `setns`, `/proc/sys/net`). Never shells out
//! to `ip`, never uses tokio. Built on `netlink-packet-route` +
//! `netlink-sys`, whose types stay out of this API (they break often).
//!
//! ## Model
//! * A [`Netlink`] socket belongs to the netns of the thread that opened it.
//!   [`Netlink::new`] works on the calling thread's namespace; [`Netns::run`]
//!   spawns a thread, `setns`es it, opens **one** socket and hands it to your
//!   closure for the whole batch of operations, then joins and returns the
//!   closure's result. The caller's thread never changes namespace.
//! * [`Sysctl`] reads/writes `/proc/sys/net/...` of the calling thread's
//!   namespace, so inside [`Netns::run`] it acts on that namespace.
//! * Errors are typed ([`Error::NotFound`], [`Error::Exists`],
//!   [`Error::Kernel`] with errno and the kernel's extended-ack text, ...) and
//!   name the object (link name, route, sysctl key).
//! * [`LinkGuard`] deletes a link on drop unless committed: the rollback of a
//!   half-done ADD.
//!
//! ## Facts the tests pin down (kernel 6.x)
//! * `/proc/sys/net` follows the netns of the *thread* that opens the file, so
//!   a `setns`'d thread needs no `/proc/<pid>` indirection
//!   (`tests/sysctl.rs`, including four namespaces written concurrently).
//! * IPv6 link-local addresses appear only once a link has carrier: for a
//!   veth, once *both* ends are up (`tests/addr.rs`).
//! * Creating the veth peer in place is one request; create-then-move costs a
//!   second request plus a device re-registration (`benches/netlink.rs`
//!   measures both; in a debug build on the dev VM: ~0.7 ms vs ~20 ms median).
//!
//! ## API at a glance
//! ```text
//! Netns::open(path) / Netns::current() / ns.run(|nl| ..) / ns.run_thread(|| ..)
//! Netlink::new()
//!   create_veth(&VethConfig) -> Link        link_by_name / link_by_index / links
//!   set_link_up / set_link_down / set_link_mtu / move_link / del_link_by_name / del_link
//!   add_address(index, net, &AddrOptions) / del_address / addresses(family, index)
//!   link_local_v6(index) / wait_link_local_v6(index, timeout)
//!   add_route / replace_route / del_route (&Route) / routes(family, table) / routes_to(dst, table)
//! Sysctl::proxy_arp(if)?.write("1") / .read() / .ensure("1") (+ the Calico set)
//! LinkGuard::new(&link)? / .commit() / .rollback()
//! ```
//!
//! ## Example: the Calico pod wiring
//! ```no_run
//! use netlink_util::*;
//!
//! fn wire(pod_netns: &str) -> Result<()> {
//!     let pod = Netns::open(pod_netns)?;
//!     let mut host = Netlink::new()?; // this thread's (the host's) netns
//!     let cfg = VethConfig::new("cali12345678901", "eth0")
//!         .mac(MacAddr::CALICO_HOST)
//!         .mtu(1450)
//!         .peer_netns(&pod); // created in the pod's netns, never moved
//!     let veth = host.create_veth(&cfg)?;
//!     let guard = LinkGuard::new(&veth)?; // deleted again if anything below fails
//!
//!     // One thread, one socket, for all the pod-side work.
//!     pod.run(|nl| {
//!         let eth0 = nl.link_by_name("eth0")?;
//!         nl.add_address(eth0.index, "10.65.0.5/32".parse().unwrap(), &AddrOptions::default())?;
//!         nl.set_link_up(eth0.index)?;
//!         let gw = "169.254.1.1".parse().unwrap();
//!         // The pod has a /32: tell it the gateway is directly on eth0 ...
//!         nl.add_route(&Route::new("169.254.1.1/32".parse().unwrap()).dev(eth0.index).scope(Scope::Link))?;
//!         // ... then route everything through it; the host answers ARP for
//!         // 169.254.1.1 with proxy_arp.
//!         nl.add_route(&Route::default_v4().via(gw).dev(eth0.index))
//!     })?;
//!
//!     Sysctl::proxy_arp(&veth.name)?.write("1")?;
//!     Sysctl::proxy_delay(&veth.name)?.write("0")?;
//!     Sysctl::ipv4_forwarding(&veth.name)?.write("1")?;
//!     host.set_link_up(veth.index)?;
//!     match host.add_route(&Route::new("10.65.0.5/32".parse().unwrap()).dev(veth.index).scope(Scope::Link)) {
//!         // EEXIST: fine if the existing route is on our veth (see routes_to).
//!         Err(e) if e.is_exists() => {
//!             let dst = "10.65.0.5/32".parse().unwrap();
//!             if !host.routes_to(dst, MAIN_TABLE)?.iter().any(|r| r.oif == Some(veth.index)) {
//!                 return Err(e);
//!             }
//!         }
//!         other => other?,
//!     }
//!     guard.commit();
//!     Ok(())
//! }
//! ```

mod addr;
mod error;
mod link;
mod netlink;
mod netns;
mod route;
mod sysctl;
mod types;

pub use addr::{AddrOptions, Address};
pub use error::{Error, Result};
pub use link::{Link, LinkGuard, LinkKind, VethConfig};
pub use netlink::Netlink;
pub use netns::Netns;
pub use route::{Protocol, Route, RouteKind, MAIN_TABLE};
pub use sysctl::Sysctl;
pub use types::{check_ifname, IpFamily, MacAddr, Scope};
