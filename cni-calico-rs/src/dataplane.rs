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

/// What to build for one pod interface.
#[derive(Debug)]
pub struct VethPlan<'a> {
    pub host_name: &'a str,
    pub ifname: &'a str,
    pub netns: &'a Netns,
    pub mtu: u32,
    pub num_queues: Option<u32>,
    /// Pod addresses, already /32 or /128.
    pub ips: &'a [IpNetwork],
    /// The pod's `ip_forward` / IPv6 `forwarding` (container_settings).
    pub allow_ip_forwarding: bool,
}

impl VethPlan<'_> {
    fn has_v4(&self) -> bool {
        self.ips.iter().any(IpNetwork::is_ipv4)
    }
    fn has_v6(&self) -> bool {
        self.ips.iter().any(IpNetwork::is_ipv6)
    }
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

/// Build the veth and everything around it (see the module doc).
pub fn wire(plan: &VethPlan<'_>) -> Result<Wired, CniError> {
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
    if let Some(q) = plan.num_queues {
        cfg = cfg.queues(q);
    }
    // The guard's namespace handle is opened before the veth exists: opening
    // it afterwards could fail (e.g. EMFILE) and return with the veth left behind.
    let node_ns = Netns::current().map_err(nl("open the node namespace"))?;
    let host_link = host.create_veth(&cfg).map_err(nl("create the veth"))?;
    let guard = LinkGuard::in_netns(node_ns, &host_link);

    host_sysctls(&host_link.name, plan.has_v4(), plan.has_v6())?;
    host.set_link_up(host_link.index).map_err(nl(&format!("set {} up", host_link.name)))?;

    let pod = plan.netns.run(|nl| pod_side(nl, plan)).map_err(nl(&format!(
        "configure {} in {}",
        plan.ifname,
        plan.netns.path().display()
    )))?;

    for ip in plan.ips {
        add_host_route(&mut host, *ip, &host_link)?;
    }

    let mut host_link_local = None;
    if plan.has_v6() {
        // The kernel gives the host veth its fe80:: address once both ends
        // are up; the pod routes IPv6 through it (no proxy-NDP gateway trick
        // is needed: link-local addresses are on-link by definition).
        let ll = host
            .wait_link_local_v6(host_link.index, LINK_LOCAL_WAIT)
            .map_err(nl(&format!("IPv6 link-local address of {}", host_link.name)))?;
        let route = Route::default_v6().via(IpAddr::V6(ll)).dev(pod.index);
        plan.netns
            .run(|nl| nl.add_route(&route))
            .map_err(nl(&format!("add the IPv6 default route in {}", plan.netns.path().display())))?;
        host_link_local = Some(ll);
    }
    Ok(Wired { host: host_link, pod, host_link_local, guard })
}

/// Sysctls of the host veth (node namespace). `proxy_delay` and `accept_ra`
/// only warn, as in Calico: some kernels lack them in odd setups.
fn host_sysctls(ifname: &str, v4: bool, v6: bool) -> Result<(), CniError> {
    let set = |s: netlink_util::Result<Sysctl>, value: &str| -> Result<(), CniError> {
        let s = s.map_err(nl("sysctl name"))?;
        s.write(value).map_err(nl(&format!("set {s}={value}")))
    };
    let warn = |s: netlink_util::Result<Sysctl>, value: &str| {
        if let Err(e) = s.and_then(|s| s.write(value)) {
            log::warn!("{e} (continuing)");
        }
    };
    if v4 {
        set(Sysctl::route_localnet(ifname), "1")?;
        warn(Sysctl::proxy_delay(ifname), "0");
        set(Sysctl::proxy_arp(ifname), "1")?;
        set(Sysctl::ipv4_forwarding(ifname), "1")?;
    }
    if v6 {
        set(Sysctl::ipv6_disable(ifname), "0")?;
        // Before link-up: no DAD, so the link-local address is usable at once.
        set(Sysctl::ipv6_accept_dad(ifname), "0")?;
        set(Sysctl::ipv6_proxy_ndp(ifname), "1")?;
        set(Sysctl::ipv6_forwarding(ifname), "1")?;
        warn(Sysctl::ipv6_accept_ra(ifname), "0");
    }
    Ok(())
}

/// Inside the pod's namespace: sysctls, addresses, link up, IPv4 routes.
fn pod_side(nl: &mut Netlink, plan: &VethPlan<'_>) -> netlink_util::Result<Link> {
    let link = nl.link_by_name(plan.ifname)?;
    let forward = if plan.allow_ip_forwarding { "1" } else { "0" };
    if plan.has_v4() {
        Sysctl::ip_forward().ensure(forward)?;
    }
    if plan.has_v6() {
        for dev in ["all", "default", "lo", plan.ifname] {
            Sysctl::ipv6_disable(dev)?.ensure("0")?;
        }
        Sysctl::ipv6_accept_dad(plan.ifname)?.write("0")?;
        Sysctl::ipv6_forwarding("all")?.ensure(forward)?;
    }
    for ip in plan.ips {
        let opts = if ip.is_ipv6() { AddrOptions::default().nodad() } else { AddrOptions::default() };
        nl.add_address(link.index, *ip, &opts)?;
    }
    nl.set_link_up(link.index)?;
    if plan.has_v4() {
        let gw = host_prefix(IpAddr::V4(GATEWAY_V4));
        nl.add_route(&Route::new(gw).dev(link.index).scope(Scope::Link))?;
        nl.add_route(&Route::default_v4().via(IpAddr::V4(GATEWAY_V4)).dev(link.index))?;
    }
    // Re-read: the MAC and flags as they are now.
    nl.link_by_index(link.index)
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
    let Some(path) = netns else { return Ok(false) };
    let ns = match Netns::open(path) {
        Ok(ns) => ns,
        Err(e @ (netlink_util::Error::NotFound { .. } | netlink_util::Error::Invalid { .. })) => {
            log::info!("netns {} is gone ({e}): nothing to clean up inside it", path.display());
            return Ok(false);
        }
        Err(e) => return Err(dataplane_error(&format!("open netns {}", path.display()), e)),
    };
    ns.run(|nl| match nl.link_by_name(ifname) {
        Ok(l) => match nl.del_link(l.index) {
            Ok(()) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        },
        Err(e) if e.is_not_found() => Ok(false),
        Err(e) => Err(e),
    })
    .map_err(nl(&format!("delete {ifname} in {}", path.display())))
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
            let plan = VethPlan {
                host_name: &host_name,
                ifname: "eth0",
                netns: &pod,
                mtu: 1400,
                num_queues: None,
                ips: &ips,
                allow_ip_forwarding: false,
            };
            assert!(!pod_link_exists(&pod, "eth0").unwrap());
            pod_precheck(&pod, "eth0").unwrap();
            let wired = wire(&plan).unwrap();
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
            let plan2 = VethPlan { ifname: "eth1", ips: &ips[..1], ..plan };
            let w2 = wire(&plan2).unwrap();
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

    #[test]
    fn failure_rolls_the_veth_back() {
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
            let plan = VethPlan {
                host_name: &host_name,
                ifname: "eth0",
                netns: &pod,
                mtu: 1500,
                num_queues: None,
                ips: &ips,
                allow_ip_forwarding: false,
            };
            let e = wire(&plan).unwrap_err();
            assert_eq!(e.code, ERR_DATAPLANE);
            assert!(e.msg.contains("eth0"), "{e}");
            Ok(())
        })
        .unwrap();
        assert!(node_tb.try_exec(&["ip", "link", "show", &host_name]).is_err(), "host veth rolled back");
        assert!(pod_tb.try_exec(&["ip", "link", "show", "eth0"]).is_err(), "pod veth rolled back");
    }
}
