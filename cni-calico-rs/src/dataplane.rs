//! The pod's wiring: a veth whose host end (`cali…`, MAC ee:ee:ee:ee:ee:ee)
//! stays in the node's namespace and whose peer is created directly in the
//! pod's namespace, /32 (/128) addresses, the 169.254.1.1 gateway trick,
//! host routes and sysctls. Every step undoes itself on failure.
//!
//! Why 169.254.1.1: the pod has a /32, so it has no subnet and no neighbour.
//! It is told that 169.254.1.1 (an address nobody owns) is on its link and
//! is the default gateway; the host veth has `proxy_arp=1`, so it answers
//! the ARP for it with its own MAC, and every packet from the pod lands on
//! the host, which routes it with the `<pod-ip>/32 dev caliX` routes. The
//! host needs no address on the veth, and every host veth has the same MAC,
//! so the pod sees the same gateway wherever it runs.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::time::Duration;

use cni_proto::CniError;
use ipnetwork::IpNetwork;
use netlink_util::{
    AddrOptions, IpFamily, Link, LinkGuard, LinkKind, MacAddr, Netlink, Netns, Route, Scope, Sysctl,
    VethConfig, MAIN_TABLE,
};

use crate::errors::{dataplane_error, ERR_DATAPLANE};

/// The pod's gateway: a link-local address nobody owns (proxy-ARP answers it).
pub const GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// How long to wait for the host veth's IPv6 link-local address (the pod's v6 gateway).
const LINK_LOCAL_WAIT: Duration = Duration::from_secs(3);

/// Address families of a pod interface.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Families {
    pub v4: bool,
    pub v6: bool,
}

impl Families {
    /// The families present in `ips`.
    pub fn of(ips: &[IpNetwork]) -> Families {
        Families { v4: ips.iter().any(IpNetwork::is_ipv4), v6: ips.iter().any(IpNetwork::is_ipv6) }
    }

    /// The families in `self` that `done` does not cover.
    fn without(self, done: Families) -> Families {
        Families { v4: self.v4 && !done.v4, v6: self.v6 && !done.v6 }
    }

    fn any(self) -> bool {
        self.v4 || self.v6
    }
}

/// What to build for one pod interface.
#[derive(Debug)]
pub struct VethPlan<'a> {
    pub host_name: &'a str,
    pub ifname: &'a str,
    pub netns: &'a Netns,
    pub mtu: u32,
    pub num_queues: Option<u32>,
    /// The families IPAM is known to assign (calico-ipam's `assign_ipv4` /
    /// `assign_ipv6`), so that their sysctls, link-up and gateway routes are
    /// done while IPAM runs. `None` when another IPAM plugin decides: then
    /// everything waits for its answer.
    pub expected: Option<Families>,
    /// The pod's `ip_forward` / IPv6 `forwarding` (container_settings).
    pub allow_ip_forwarding: bool,
    /// The pod end's MAC; `None`: the kernel picks one.
    pub pod_mac: Option<MacAddr>,
}

/// A random locally administered unicast MAC, as the kernel picks for a
/// veth end (`eth_random_addr`), for the pod's end: the plugin chooses it so
/// that the pod record can be written before the veth exists.
pub fn random_pod_mac() -> MacAddr {
    use std::hash::{BuildHasher, Hasher};
    // RandomState's keys come from the OS's random source (once per
    // thread, then stepped per instance); the time makes two processes that
    // happen to share keys differ as well.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    h.write_u128(now.as_nanos());
    h.write_u32(std::process::id());
    let b = h.finish().to_le_bytes();
    MacAddr([(b[0] & 0xfe) | 0x02, b[1], b[2], b[3], b[4], b[5]])
}

/// ADD's first half, built while IPAM allocates: the veth exists (its peer
/// in the pod's namespace), and for the expected families its sysctls are
/// set, both ends are up and the pod has its 169.254.1.1 routes. Dropping it
/// without [`Veth::finish`] deletes the veth.
///
/// Why split: IPAM is a separate process that takes most of ADD's time;
/// nothing here needs the pod's addresses, so doing it meanwhile takes it off
/// the critical path. Only the addresses and the host routes wait.
pub struct Veth<'a> {
    plan: &'a VethPlan<'a>,
    host: Link,
    pod: Link,
    /// Node-namespace socket, kept for the host routes.
    host_nl: Netlink,
    /// Opened inside the pod's namespace: a netlink socket stays in the
    /// namespace it was opened in, so the pod's addresses need no second
    /// namespace entry.
    pod_nl: Netlink,
    /// Families whose sysctls and routes are in place, links up.
    prepared: Families,
    up: bool,
    guard: LinkGuard,
}

/// A wired pod interface. Dropping it without [`Wired::commit`] deletes the
/// veth (both ends; the host routes go with it).
#[derive(Debug)]
pub struct Wired {
    pub host: Link,
    pub pod: Link,
    /// The host veth's IPv6 link-local address (the pod's v6 gateway).
    pub host_link_local: Option<Ipv6Addr>,
    guard: LinkGuard,
}

impl Wired {
    pub fn commit(self) {
        self.guard.commit();
    }
}

/// The single-address network of `ip` (`/32` or `/128`).
pub fn host_prefix(ip: IpAddr) -> IpNetwork {
    let len = if ip.is_ipv4() { 32 } else { 128 };
    // A full-length prefix is always valid.
    IpNetwork::new(ip, len).unwrap_or_else(|_| IpNetwork::from(ip))
}

fn nl(what: &str) -> impl Fn(netlink_util::Error) -> CniError + '_ {
    move |e| dataplane_error(what, e)
}

/// Open the pod's namespace (code 8 when it is not usable).
pub fn open_netns(path: &Path) -> Result<Netns, CniError> {
    Netns::open(path)
        .map_err(|e| CniError::invalid_netns(format!("cannot open netns {}", path.display()), e.to_string()))
}

/// Why the pod's namespace cannot take our interface, found before anything
/// is allocated: `ifname` exists already (the spec makes that an error), or
/// another Calico interface owns the 169.254.1.1 gateway route (a second one
/// could not get its routes, and its IPAM rollback would release the first
/// interface's handle, which is per network and container).
pub fn pod_precheck(netns: &Netns, ifname: &str) -> Result<(), CniError> {
    let gw = host_prefix(IpAddr::V4(GATEWAY_V4));
    let (exists, gw_routes) = netns
        .run(|nl| {
            let exists = match nl.link_by_name(ifname) {
                Ok(_) => true,
                Err(e) if e.is_not_found() => false,
                Err(e) => return Err(e),
            };
            Ok((exists, nl.routes_to(gw, MAIN_TABLE)?))
        })
        .map_err(nl(&format!("inspect {}", netns.path().display())))?;
    let path = netns.path().display();
    if exists {
        return Err(CniError::plugin(
            ERR_DATAPLANE,
            format!("interface {ifname} already exists in netns {path}"),
            "",
        ));
    }
    if let Some(r) = gw_routes.first() {
        return Err(CniError::plugin(
            ERR_DATAPLANE,
            format!("netns {path} already has a Calico interface (route {r}): one Calico interface per pod"),
            "",
        ));
    }
    Ok(())
}

/// Whether a link named `name` exists in the node's namespace.
pub fn host_link_exists(name: &str) -> Result<bool, CniError> {
    let mut host = Netlink::new().map_err(nl("open netlink in the node namespace"))?;
    match host.link_by_name(name) {
        Ok(_) => Ok(true),
        Err(e) if e.is_not_found() => Ok(false),
        Err(e) => Err(dataplane_error(&format!("look up {name}"), e)),
    }
}

/// Whether `ifname` exists in the pod's namespace.
pub fn pod_link_exists(netns: &Netns, ifname: &str) -> Result<bool, CniError> {
    netns
        .run(|nl| match nl.link_by_name(ifname) {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        })
        .map_err(nl(&format!("look up {ifname} in {}", netns.path().display())))
}

/// Build the veth and everything around it in one go (see the module doc).
pub fn wire(plan: &VethPlan<'_>, ips: &[IpNetwork]) -> Result<Wired, CniError> {
    create(plan)?.finish(ips)
}

/// ADD's first half (see [`Veth`]).
pub fn create<'a>(plan: &'a VethPlan<'a>) -> Result<Veth<'a>, CniError> {
    let mut host = Netlink::new().map_err(nl("open netlink in the node namespace"))?;
    // A link with our name is a leftover of an earlier sandbox of the same
    // pod (the name is derived from namespace/pod): Calico deletes it, which
    // also removes its peer in the old sandbox.
    match host.del_link_by_name(plan.host_name) {
        Ok(()) => log::info!("deleted stale host veth {}", plan.host_name),
        Err(e) if e.is_not_found() => {}
        Err(e) => return Err(dataplane_error(&format!("delete stale host veth {}", plan.host_name), e)),
    }
    let mut cfg = VethConfig::new(plan.host_name, plan.ifname)
        .mac(MacAddr::CALICO_HOST)
        .mtu(plan.mtu)
        .peer_netns(plan.netns);
    if let Some(mac) = plan.pod_mac {
        cfg = cfg.peer_mac(mac);
    }
    if let Some(q) = plan.num_queues {
        cfg = cfg.queues(q);
    }
    // The guard's namespace handle is opened before the veth exists: opening
    // it afterwards could fail (e.g. EMFILE) and return with the veth left behind.
    let node_ns = Netns::current().map_err(nl("open the node namespace"))?;
    let host_link = host.create_veth(&cfg).map_err(nl("create the veth"))?;
    let guard = LinkGuard::in_netns(node_ns, &host_link);

    let prepared = plan.expected.unwrap_or_default();
    let up = plan.expected.is_some();
    // Sysctls before link-up: with IPv6, accept_dad=0 must precede it.
    host_sysctls(&host_link.name, prepared)?;
    if up {
        host.set_link_up(host_link.index).map_err(nl(&format!("set {} up", host_link.name)))?;
    }
    let (pod, pod_nl) = plan
        .netns
        .run_thread(|| {
            let mut pod_nl = Netlink::new()?;
            let pod = pod_prepare(&mut pod_nl, plan, prepared, up)?;
            Ok((pod, pod_nl))
        })
        .map_err(nl(&format!("configure {} in {}", plan.ifname, plan.netns.path().display())))?;
    Ok(Veth { plan, host: host_link, pod, host_nl: host, pod_nl, prepared, up, guard })
}

impl std::fmt::Debug for Veth<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Veth")
            .field("host", &self.host.name)
            .field("pod", &self.pod.name)
            .field("prepared", &self.prepared)
            .field("up", &self.up)
            .finish_non_exhaustive()
    }
}

impl Veth<'_> {
    /// The pod end's MAC (the plan's, or kernel-chosen).
    pub fn pod_mac(&self) -> Option<MacAddr> {
        self.pod.mac
    }

    /// ADD's second half, once IPAM answered: whatever the expected families
    /// did not cover, the pod's addresses, the host routes and, with IPv6,
    /// the pod's default route via the host veth's link-local address.
    pub fn finish(mut self, ips: &[IpNetwork]) -> Result<Wired, CniError> {
        let plan = self.plan;
        let want = Families::of(ips);
        let missing = want.without(self.prepared);
        let ctx = || format!("configure {} in {}", plan.ifname, plan.netns.path().display());
        host_sysctls(&self.host.name, missing)?;
        if missing.any() {
            plan.netns.run_thread(|| pod_sysctls(plan, missing)).map_err(nl(&ctx()))?;
        }
        if self.prepared.v4 && !want.v4 {
            // Prepared for IPv4 that IPAM did not assign: no gateway routes
            // for a pod without an IPv4 address.
            for r in pod_v4_routes(self.pod.index) {
                self.pod_nl.del_route(&r).map_err(nl(&ctx()))?;
            }
        }
        for ip in ips {
            let opts = if ip.is_ipv6() { AddrOptions::default().nodad() } else { AddrOptions::default() };
            self.pod_nl.add_address(self.pod.index, *ip, &opts).map_err(nl(&ctx()))?;
        }
        if !self.up {
            self.host_nl.set_link_up(self.host.index).map_err(nl(&format!("set {} up", self.host.name)))?;
            self.pod_nl.set_link_up(self.pod.index).map_err(nl(&ctx()))?;
        }
        if missing.v4 {
            for r in pod_v4_routes(self.pod.index) {
                self.pod_nl.add_route(&r).map_err(nl(&ctx()))?;
            }
        }
        for ip in ips {
            add_host_route(&mut self.host_nl, *ip, &self.host)?;
        }
        let mut host_link_local = None;
        if want.v6 {
            // The kernel gives the host veth its fe80:: address once both ends
            // are up; the pod routes IPv6 through it (no proxy-NDP gateway trick
            // is needed: link-local addresses are on-link by definition).
            let ll = self
                .host_nl
                .wait_link_local_v6(self.host.index, LINK_LOCAL_WAIT)
                .map_err(nl(&format!("IPv6 link-local address of {}", self.host.name)))?;
            let route = Route::default_v6().via(IpAddr::V6(ll)).dev(self.pod.index);
            self.pod_nl
                .add_route(&route)
                .map_err(nl(&format!("add the IPv6 default route in {}", plan.netns.path().display())))?;
            host_link_local = Some(ll);
        }
        // Re-read: the pod link's flags as they are now.
        let pod = self.pod_nl.link_by_index(self.pod.index).map_err(nl(&ctx()))?;
        Ok(Wired { host: self.host, pod, host_link_local, guard: self.guard })
    }
}

/// Sysctls of the host veth (node namespace). `proxy_delay` and `accept_ra`
/// only warn, as in Calico: some kernels lack them in odd setups.
fn host_sysctls(ifname: &str, fam: Families) -> Result<(), CniError> {
    let set = |s: netlink_util::Result<Sysctl>, value: &str| -> Result<(), CniError> {
        let s = s.map_err(nl("sysctl name"))?;
        s.write(value).map_err(nl(&format!("set {s}={value}")))
    };
    let warn = |s: netlink_util::Result<Sysctl>, value: &str| {
        if let Err(e) = s.and_then(|s| s.write(value)) {
            log::warn!("{e} (continuing)");
        }
    };
    if fam.v4 {
        set(Sysctl::route_localnet(ifname), "1")?;
        warn(Sysctl::proxy_delay(ifname), "0");
        set(Sysctl::proxy_arp(ifname), "1")?;
        set(Sysctl::ipv4_forwarding(ifname), "1")?;
    }
    if fam.v6 {
        set(Sysctl::ipv6_disable(ifname), "0")?;
        // Before link-up: no DAD, so the link-local address is usable at once.
        set(Sysctl::ipv6_accept_dad(ifname), "0")?;
        set(Sysctl::ipv6_proxy_ndp(ifname), "1")?;
        set(Sysctl::ipv6_forwarding(ifname), "1")?;
        warn(Sysctl::ipv6_accept_ra(ifname), "0");
    }
    Ok(())
}

/// Sysctls inside the pod's namespace (the calling thread must be in it).
fn pod_sysctls(plan: &VethPlan<'_>, fam: Families) -> netlink_util::Result<()> {
    let forward = if plan.allow_ip_forwarding { "1" } else { "0" };
    if fam.v4 {
        Sysctl::ip_forward().ensure(forward)?;
    }
    if fam.v6 {
        for dev in ["all", "default", "lo", plan.ifname] {
            Sysctl::ipv6_disable(dev)?.ensure("0")?;
        }
        Sysctl::ipv6_accept_dad(plan.ifname)?.write("0")?;
        Sysctl::ipv6_forwarding("all")?.ensure(forward)?;
    }
    Ok(())
}

/// The pod's IPv4 routes: 169.254.1.1 is on the link (scope link, so no
/// address is needed to reach it), and it is the default gateway.
fn pod_v4_routes(index: u32) -> [Route; 2] {
    let gw = host_prefix(IpAddr::V4(GATEWAY_V4));
    [Route::new(gw).dev(index).scope(Scope::Link), Route::default_v4().via(IpAddr::V4(GATEWAY_V4)).dev(index)]
}

/// Inside the pod's namespace, before IPAM answered: the sysctls of the
/// `prepared` families, and if `up`, the link up and the IPv4 gateway routes
/// (a route via 169.254.1.1 needs no address on the link).
fn pod_prepare(
    nl: &mut Netlink,
    plan: &VethPlan<'_>,
    prepared: Families,
    up: bool,
) -> netlink_util::Result<Link> {
    let link = nl.link_by_name(plan.ifname)?;
    pod_sysctls(plan, prepared)?;
    if up {
        nl.set_link_up(link.index)?;
        if prepared.v4 {
            for r in pod_v4_routes(link.index) {
                nl.add_route(&r)?;
            }
        }
    }
    Ok(link)
}

/// `<ip>/32 dev caliX scope link`. An identical route is fine; one through
/// another interface is an error (Calico's "route … already exists for an
/// interface other than …": two pods claiming one IP).
fn add_host_route(host: &mut Netlink, ip: IpNetwork, link: &Link) -> Result<(), CniError> {
    let dst = host_prefix(ip.ip());
    let route = Route::new(dst).dev(link.index).scope(Scope::Link);
    match host.add_route(&route) {
        Ok(()) => Ok(()),
        Err(e) if e.is_exists() => {
            let existing = host.routes_to(dst, MAIN_TABLE).map_err(nl(&format!("list routes to {dst}")))?;
            if existing.iter().any(|r| r.oif == Some(link.index)) {
                Ok(())
            } else {
                Err(CniError::plugin(
                    ERR_DATAPLANE,
                    format!("route {dst} already exists for an interface other than {}", link.name),
                    format!("{existing:?}"),
                ))
            }
        }
        Err(e) => Err(dataplane_error(&format!("add host route {dst} dev {}", link.name), e)),
    }
}

/// DEL, pod side: delete `ifname` in the pod's namespace (its host peer and
/// the host routes through it go with it). A missing netns, a netns path
/// that is no longer a namespace, or a missing link are all success.
/// Returns whether something was deleted.
pub fn unwire(netns: Option<&Path>, ifname: &str) -> Result<bool, CniError> {
    std::thread::scope(|s| unwire_start(s, netns, ifname).wait())
}

/// [`unwire`], started: the deletion runs on a thread of `scope` while the
/// caller goes on, and [`Unwiring::wait`] gives its outcome. Deleting a veth
/// spends most of its time in the kernel waiting for RCU grace periods
/// (~15 ms), so a DEL starts it before anything else and does the rest
/// meanwhile.
///
/// The caller gets the CPU back only once the deletion has had
/// [`DELETION_HEAD_START`] to get its request into the kernel (or has
/// finished). Without it the request could wait behind the caller: the
/// scheduler of the 2-vCPU test VM queues a new thread on its parent's CPU
/// and lets the parent run out its time slice (~1.5 ms), so a DEL that went
/// straight on to its datastore work sent the deletion only when that work
/// blocked in `fdatasync` (traced in `cni-bench`: 1.2-1.8 ms from exec to the
/// request, ~0.8 ms with the head start). The wait costs the DEL nothing:
/// its other work still ends long before the deletion does.
pub fn unwire_start<'scope>(
    scope: &'scope std::thread::Scope<'scope, '_>,
    netns: Option<&Path>,
    ifname: &'scope str,
) -> Unwiring<'scope> {
    let Some(path) = netns else { return Unwiring::Done(Ok(false)) };
    let ns = match Netns::open(path) {
        Ok(ns) => ns,
        Err(e @ (netlink_util::Error::NotFound { .. } | netlink_util::Error::Invalid { .. })) => {
            log::info!("netns {} is gone ({e}): nothing to clean up inside it", path.display());
            return Unwiring::Done(Ok(false));
        }
        Err(e) => return Unwiring::Done(Err(dataplane_error(&format!("open netns {}", path.display()), e))),
    };
    let what = format!("delete {ifname} in {}", path.display());
    let (done_tx, done_rx) = std::sync::mpsc::sync_channel::<()>(1);
    // By name: one request, no lookup first (the pod's namespace holds
    // nothing else of ours that could carry the name).
    let deleting = ns.spawn_run(scope, move |nl| {
        let deleted = match nl.del_link_by_name(ifname) {
            Ok(()) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        };
        // The caller may have stopped waiting; nothing to report then.
        let _ = done_tx.try_send(());
        deleted
    });
    match deleting {
        Ok(handle) => {
            // Finished, timed out or the thread is gone: the caller goes on
            // in every case, and `wait` reports the outcome.
            let _ = done_rx.recv_timeout(DELETION_HEAD_START);
            Unwiring::Running { handle, what }
        }
        Err(e) => Unwiring::Done(Err(dataplane_error(&what, e))),
    }
}

/// How long [`unwire_start`] leaves the CPU to the deletion before the
/// caller goes on: long enough for its request and the two expedited grace
/// periods the kernel runs before it queues its RCU callbacks (~0.5 ms
/// here), short against the deletion itself (~15 ms), so the caller's work
/// still ends inside it.
pub const DELETION_HEAD_START: std::time::Duration = std::time::Duration::from_millis(1);

/// A pod-side deletion in progress ([`unwire_start`]).
#[must_use = "the deletion's outcome comes from Unwiring::wait"]
pub enum Unwiring<'scope> {
    /// Decided without a deletion (no netns, or it could not be opened).
    Done(Result<bool, CniError>),
    /// The deletion's thread.
    Running { handle: std::thread::ScopedJoinHandle<'scope, netlink_util::Result<bool>>, what: String },
}

impl Unwiring<'_> {
    /// Whether something was deleted, once the deletion has returned.
    pub fn wait(self) -> Result<bool, CniError> {
        match self {
            Unwiring::Done(r) => r,
            Unwiring::Running { handle, what } => match handle.join() {
                Ok(r) => r.map_err(|e| dataplane_error(&what, e)),
                Err(_) => Err(CniError::internal(format!("{what}: the thread panicked"))),
            },
        }
    }
}

/// Delete a host veth by name (node namespace) if it exists and is a veth.
pub fn delete_host_veth(name: &str) -> Result<bool, CniError> {
    let mut host = Netlink::new().map_err(nl("open netlink in the node namespace"))?;
    match host.link_by_name(name) {
        Ok(l) if l.kind == Some(LinkKind::Veth) => match host.del_link(l.index) {
            Ok(()) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(dataplane_error(&format!("delete host veth {name}"), e)),
        },
        Ok(_) => {
            log::warn!("{name} is not a veth: left alone");
            Ok(false)
        }
        Err(e) if e.is_not_found() => Ok(false),
        Err(e) => Err(dataplane_error(&format!("look up host veth {name}"), e)),
    }
}

/// What CHECK compares the kernel against (from prevResult).
#[derive(Debug)]
pub struct Expected<'a> {
    pub host_name: &'a str,
    pub ifname: &'a str,
    pub netns: &'a Netns,
    pub pod_mac: Option<&'a str>,
    pub ips: &'a [IpNetwork],
}

fn check_failed(msg: String) -> CniError {
    CniError::plugin(ERR_DATAPLANE, msg, "")
}

/// CHECK: the veth pair, its MACs, the pod addresses and routes, the host routes.
pub fn check(exp: &Expected<'_>) -> Result<(), CniError> {
    let mut host = Netlink::new().map_err(nl("open netlink in the node namespace"))?;
    let host_link = host.link_by_name(exp.host_name).map_err(nl(&format!("host veth {}", exp.host_name)))?;
    if host_link.kind != Some(LinkKind::Veth) {
        return Err(check_failed(format!("{} is not a veth", exp.host_name)));
    }
    if host_link.mac != Some(MacAddr::CALICO_HOST) {
        return Err(check_failed(format!(
            "{} has MAC {:?}, expected ee:ee:ee:ee:ee:ee",
            exp.host_name, host_link.mac
        )));
    }
    if !host_link.up {
        return Err(check_failed(format!("{} is down", exp.host_name)));
    }
    for ip in exp.ips {
        let dst = host_prefix(ip.ip());
        let routes = host.routes_to(dst, MAIN_TABLE).map_err(nl(&format!("list routes to {dst}")))?;
        if !routes.iter().any(|r| r.oif == Some(host_link.index)) {
            return Err(check_failed(format!("no host route {dst} dev {}", exp.host_name)));
        }
    }
    let ll = if exp.ips.iter().any(IpNetwork::is_ipv6) {
        Some(
            host.link_local_v6(host_link.index)
                .map_err(nl("host link-local address"))?
                .ok_or_else(|| check_failed(format!("{} has no IPv6 link-local address", exp.host_name)))?,
        )
    } else {
        None
    };
    let failure = exp
        .netns
        .run(|nl| Ok(check_pod(nl, exp, &host_link, ll)))
        .map_err(nl(&format!("enter {}", exp.netns.path().display())))?;
    match failure {
        None => Ok(()),
        Some(msg) => Err(check_failed(format!("{} in {}: {msg}", exp.ifname, exp.netns.path().display()))),
    }
}

/// The pod-side checks; `Some(reason)` on the first mismatch.
fn check_pod(nl: &mut Netlink, exp: &Expected<'_>, host: &Link, ll: Option<Ipv6Addr>) -> Option<String> {
    let link = match nl.link_by_name(exp.ifname) {
        Ok(l) => l,
        Err(e) => return Some(e.to_string()),
    };
    if link.kind != Some(LinkKind::Veth) {
        return Some("not a veth".into());
    }
    if link.peer_index != Some(host.index) || host.peer_index != Some(link.index) {
        return Some(format!("not paired with host veth {}", host.name));
    }
    if !link.up {
        return Some("link is down".into());
    }
    if let Some(mac) = exp.pod_mac {
        let actual = link.mac.map(|m| m.to_string()).unwrap_or_default();
        if !actual.eq_ignore_ascii_case(mac) {
            return Some(format!("MAC is {actual}, prevResult says {mac}"));
        }
    }
    let addrs = match nl.addresses(None, Some(link.index)) {
        Ok(a) => a,
        Err(e) => return Some(e.to_string()),
    };
    for ip in exp.ips {
        let want = host_prefix(ip.ip());
        if !addrs.iter().any(|a| a.net == want) {
            return Some(format!("address {want} missing"));
        }
    }
    if exp.ips.iter().any(IpNetwork::is_ipv4) {
        let routes = match nl.routes(IpFamily::V4, MAIN_TABLE) {
            Ok(r) => r,
            Err(e) => return Some(e.to_string()),
        };
        let gw_net = host_prefix(IpAddr::V4(GATEWAY_V4));
        if !routes.iter().any(|r| r.dst == gw_net && r.oif == Some(link.index) && r.gateway.is_none()) {
            return Some(format!("route {gw_net} dev {} scope link missing", exp.ifname));
        }
        if !routes.iter().any(|r| {
            r.dst.prefix() == 0 && r.gateway == Some(IpAddr::V4(GATEWAY_V4)) && r.oif == Some(link.index)
        }) {
            return Some(format!("default route via {GATEWAY_V4} dev {} missing", exp.ifname));
        }
    }
    if let Some(ll) = ll {
        let routes = match nl.routes(IpFamily::V6, MAIN_TABLE) {
            Ok(r) => r,
            Err(e) => return Some(e.to_string()),
        };
        if !routes
            .iter()
            .any(|r| r.dst.prefix() == 0 && r.gateway == Some(IpAddr::V6(ll)) && r.oif == Some(link.index))
        {
            return Some(format!("IPv6 default route via {ll} dev {} missing", exp.ifname));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A plan for `eth0` in `pod` with the test defaults.
    fn plan<'a>(host_name: &'a str, pod: &'a Netns, mtu: u32, expected: Option<Families>) -> VethPlan<'a> {
        VethPlan {
            host_name,
            ifname: "eth0",
            netns: pod,
            mtu,
            num_queues: None,
            expected,
            allow_ip_forwarding: false,
            pod_mac: None,
        }
    }

    #[test]
    fn random_pod_macs_are_local_unicast_and_differ() {
        let (a, b) = (random_pod_mac(), random_pod_mac());
        assert_ne!(a, b);
        for m in [a, b] {
            assert_eq!(m.0[0] & 0x03, 0x02, "locally administered unicast: {m}");
        }
    }

    #[test]
    fn host_prefixes() {
        assert_eq!(host_prefix("10.0.0.5".parse().unwrap()).to_string(), "10.0.0.5/32");
        assert_eq!(host_prefix("fd00::5".parse().unwrap()).to_string(), "fd00::5/128");
    }

    /// The real thing, in namespaces this test owns: the plugin's "node" is
    /// this test thread's namespace only inside `node.run_thread`.
    #[test]
    fn wire_check_unwire_in_namespaces() {
        let node_tb = testbed::Netns::new("dpn");
        let pod_tb = testbed::Netns::new("dpp");
        let node = Netns::open(node_tb.path()).unwrap();
        let pod = Netns::open(pod_tb.path()).unwrap();
        let host_name = testbed::unique("cali");
        let ips: Vec<IpNetwork> = vec!["10.77.0.5/32".parse().unwrap(), "fd77::5/128".parse().unwrap()];
        node.run_thread(|| {
            let plan = plan(&host_name, &pod, 1400, Some(Families { v4: true, v6: true }));
            assert!(!pod_link_exists(&pod, "eth0").unwrap());
            pod_precheck(&pod, "eth0").unwrap();
            let wired = wire(&plan, &ips).unwrap();
            assert_eq!(wired.host.mac, Some(MacAddr::CALICO_HOST));
            assert_eq!(wired.host.mtu, 1400);
            assert_eq!(wired.pod.mtu, 1400);
            assert!(wired.host_link_local.is_some());
            let mac = wired.pod.mac.unwrap().to_string();
            wired.commit();
            assert!(pod_link_exists(&pod, "eth0").unwrap());
            assert!(pod_precheck(&pod, "eth0").unwrap_err().msg.contains("already exists"));
            assert!(pod_precheck(&pod, "eth1").unwrap_err().msg.contains("one Calico interface per pod"));
            let exp = Expected {
                host_name: &host_name,
                ifname: "eth0",
                netns: &pod,
                pod_mac: Some(&mac),
                ips: &ips,
            };
            check(&exp).unwrap();
            let wrong = Expected { pod_mac: Some("02:00:00:00:00:01"), ..exp };
            assert!(check(&wrong).unwrap_err().msg.contains("MAC"));
            assert_eq!(Sysctl::proxy_arp(&host_name).unwrap().read().unwrap(), "1");
            // A second wire for the same pod name replaces the stale veth.
            let plan2 = VethPlan { ifname: "eth1", expected: None, ..plan };
            let w2 = wire(&plan2, &ips[..1]).unwrap();
            w2.commit();
            assert!(!pod_link_exists(&pod, "eth0").unwrap(), "the stale veth's peer went with it");
            assert!(unwire(Some(pod.path()), "eth1").unwrap());
            assert!(!unwire(Some(pod.path()), "eth1").unwrap(), "second DEL finds nothing");
            assert!(!delete_host_veth(&host_name).unwrap());
            Ok(())
        })
        .unwrap();
        assert!(!unwire(None, "eth0").unwrap());
        assert!(!unwire(Some(Path::new("/run/netns/never-existed-h1")), "eth0").unwrap());
    }

    /// Either half can fail after the veth exists: the first (expected
    /// families prepared while IPAM runs) or the second (everything after
    /// IPAM, when the families were not known). Both remove the veth.
    #[test]
    fn failure_rolls_the_veth_back() {
        for expected in [None, Some(Families { v4: true, v6: false })] {
            let node_tb = testbed::Netns::new("dpn");
            let pod_tb = testbed::Netns::new("dpp");
            // The pod already has a default route: adding ours fails after the veth exists.
            pod_tb.exec(&["ip", "link", "add", "other0", "type", "veth", "peer", "name", "other1"]);
            pod_tb.exec(&["ip", "link", "set", "other0", "up"]);
            pod_tb.exec(&["ip", "route", "add", "default", "dev", "other0"]);
            let node = Netns::open(node_tb.path()).unwrap();
            let pod = Netns::open(pod_tb.path()).unwrap();
            let host_name = testbed::unique("cali");
            let ips: Vec<IpNetwork> = vec!["10.77.0.6/32".parse().unwrap()];
            node.run_thread(|| {
                let plan = plan(&host_name, &pod, 1500, expected);
                let e = wire(&plan, &ips).unwrap_err();
                assert_eq!(e.code, ERR_DATAPLANE);
                assert!(e.msg.contains("eth0"), "{e}");
                Ok(())
            })
            .unwrap();
            assert!(node_tb.try_exec(&["ip", "link", "show", &host_name]).is_err(), "host veth rolled back");
            assert!(pod_tb.try_exec(&["ip", "link", "show", "eth0"]).is_err(), "pod veth rolled back");
        }
    }

    /// Prepared for IPv4 and IPv6, IPAM gave IPv6 only: the IPv4 gateway
    /// routes prepared meanwhile are removed again.
    #[test]
    fn prepared_family_that_ipam_did_not_assign_is_undone() {
        let node_tb = testbed::Netns::new("dpn");
        let pod_tb = testbed::Netns::new("dpp");
        let node = Netns::open(node_tb.path()).unwrap();
        let pod = Netns::open(pod_tb.path()).unwrap();
        let host_name = testbed::unique("cali");
        let ips: Vec<IpNetwork> = vec!["fd77::7/128".parse().unwrap()];
        node.run_thread(|| {
            let plan = plan(&host_name, &pod, 1500, Some(Families { v4: true, v6: true }));
            let veth = create(&plan).unwrap();
            assert!(pod_tb.exec(&["ip", "-4", "route"]).contains("169.254.1.1"));
            let wired = veth.finish(&ips).unwrap();
            assert!(wired.host_link_local.is_some());
            wired.commit();
            Ok(())
        })
        .unwrap();
        assert_eq!(pod_tb.exec(&["ip", "-4", "route"]).trim(), "", "no IPv4 routes left");
        assert!(pod_tb.exec(&["ip", "-6", "route"]).contains("default via fe80::"));
    }
}
