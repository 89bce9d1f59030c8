//! The Calico pod wiring, end to end, proven with ping: a "node" netns and a
//! "pod" netns joined by a veth created from the node with its peer created
//! directly in the pod. Pod: a /32 (and /128), `169.254.1.1/32 dev eth0 scope
//! link`, default via 169.254.1.1 (v6: via the host veth's link-local). Node:
//! proxy_arp (+ forwarding) on the host veth and a `/32 dev caliX scope link`.

mod common;

use std::net::IpAddr;
use std::time::Duration;

use common::{name, TestNs};
use netlink_util::{AddrOptions, MacAddr, Netlink, Result, Route, Scope, Sysctl, VethConfig};

fn net(s: &str) -> ipnetwork::IpNetwork {
    s.parse().unwrap()
}

/// Give the node netns an "uplink" with the node's addresses and default
/// routes, so that 169.254.1.1 routes out of a device other than the host
/// veth (proxy ARP only answers for destinations routed elsewhere).
fn node_uplink(nl: &mut Netlink, up: &str) -> Result<()> {
    let l = nl.create_veth(&VethConfig::new(up, format!("{up}p")))?;
    let p = nl.link_by_name(&format!("{up}p"))?;
    Sysctl::ipv6_accept_dad(up)?.write("0")?;
    nl.set_link_up(l.index)?;
    nl.set_link_up(p.index)?;
    nl.add_address(l.index, net("10.64.0.1/24"), &AddrOptions::default())?;
    nl.add_address(l.index, net("fd00:64::1/64"), &AddrOptions::default().nodad())?;
    nl.add_route(&Route::default_v4().via("10.64.0.254".parse().unwrap()).dev(l.index).onlink())?;
    nl.add_route(&Route::default_v6().via("fd00:64::fe".parse().unwrap()).dev(l.index).onlink())?;
    Ok(())
}

#[test]
fn pod_and_node_ping_each_other_over_v4_and_v6() {
    let node = TestNs::new();
    let pod = TestNs::new();
    let cali = name("cali");
    let up = name("up");

    // Node side, part 1: uplink, then the veth with its peer born in the pod.
    let cali_index = node
        .ns
        .run(|nl| {
            node_uplink(nl, &up)?;
            let cfg = VethConfig::new(&cali, "eth0").mac(MacAddr::CALICO_HOST).mtu(1440).peer_netns(&pod.ns);
            let l = nl.create_veth(&cfg)?;
            // v6 DAD off before link-up so the link-local is usable at once.
            Sysctl::ipv6_accept_dad(&cali)?.write("0")?;
            Ok(l.index)
        })
        .unwrap();

    // Pod side: one thread, one socket.
    let eth0 = pod
        .ns
        .run(|nl| {
            let eth0 = nl.link_by_name("eth0")?;
            Sysctl::ipv6_accept_dad("eth0")?.write("0")?;
            for ifname in ["all", "default", "lo"] {
                Sysctl::ipv6_disable(ifname)?.ensure("0")?;
            }
            nl.add_address(eth0.index, net("10.65.0.5/32"), &AddrOptions::default())?;
            nl.add_address(eth0.index, net("fd00:65::5/128"), &AddrOptions::default().nodad())?;
            nl.set_link_up(eth0.index)?;
            let gw: IpAddr = "169.254.1.1".parse().unwrap();
            nl.add_route(&Route::new(net("169.254.1.1/32")).dev(eth0.index).scope(Scope::Link))?;
            nl.add_route(&Route::default_v4().via(gw).dev(eth0.index))?;
            Ok(eth0.index)
        })
        .unwrap();

    // Node side, part 2: sysctls, link up, host routes; get the link-local.
    let ll = node
        .ns
        .run(|nl| {
            Sysctl::route_localnet(&cali)?.write("1")?;
            Sysctl::proxy_delay(&cali)?.write("0")?;
            Sysctl::proxy_arp(&cali)?.write("1")?;
            Sysctl::ipv4_forwarding(&cali)?.write("1")?;
            Sysctl::ipv6_proxy_ndp(&cali)?.write("1")?;
            Sysctl::ipv6_forwarding(&cali)?.write("1")?;
            nl.set_link_up(cali_index)?;
            nl.add_route(&Route::new(net("10.65.0.5/32")).dev(cali_index).scope(Scope::Link))?;
            nl.add_route(&Route::new(net("fd00:65::5/128")).dev(cali_index))?;
            nl.wait_link_local_v6(cali_index, Duration::from_millis(500))
        })
        .unwrap();
    pod.ns.run(|nl| nl.add_route(&Route::default_v6().via(IpAddr::V6(ll)).dev(eth0))).unwrap();

    for (ns, dst) in [(&pod, "10.64.0.1"), (&node, "10.65.0.5"), (&pod, "fd00:64::1"), (&node, "fd00:65::5")]
    {
        let out = ns.tb.try_exec(&["ping", "-c", "1", "-W", "3", dst]);
        assert!(out.is_ok(), "ping {dst} from {}: {out:?}", ns.tb.name());
    }
    // The pod learnt 169.254.1.1 as the host veth's MAC, through proxy ARP.
    let neigh = pod.ip("neigh show 169.254.1.1");
    assert!(neigh.contains("lladdr ee:ee:ee:ee:ee:ee"), "{neigh}");
}

#[test]
fn without_proxy_arp_the_pod_cannot_reach_its_gateway() {
    // The same wiring minus proxy_arp: proves the test above depends on it
    // (i.e. that the recipe, not some accident, makes the ping work).
    let node = TestNs::new();
    let pod = TestNs::new();
    let cali = name("cali");
    let up = name("up");
    node.ns
        .run(|nl| {
            node_uplink(nl, &up)?;
            let l = nl
                .create_veth(&VethConfig::new(&cali, "eth0").mac(MacAddr::CALICO_HOST).peer_netns(&pod.ns))?;
            Sysctl::ipv4_forwarding(&cali)?.write("1")?;
            Sysctl::proxy_delay(&cali)?.write("0")?;
            nl.set_link_up(l.index)?;
            nl.add_route(&Route::new(net("10.65.0.6/32")).dev(l.index).scope(Scope::Link))
        })
        .unwrap();
    pod.ns
        .run(|nl| {
            let eth0 = nl.link_by_name("eth0")?;
            nl.add_address(eth0.index, net("10.65.0.6/32"), &AddrOptions::default())?;
            nl.set_link_up(eth0.index)?;
            nl.add_route(&Route::new(net("169.254.1.1/32")).dev(eth0.index).scope(Scope::Link))?;
            nl.add_route(&Route::default_v4().via("169.254.1.1".parse().unwrap()).dev(eth0.index))
        })
        .unwrap();
    assert!(pod.tb.try_exec(&["ping", "-c", "1", "-W", "1", "10.64.0.1"]).is_err());
    // Turning proxy_arp on fixes it.
    node.ns.run_thread(|| Sysctl::proxy_arp(&cali)?.write("1")).unwrap();
    let out = pod.tb.try_exec(&["ping", "-c", "1", "-W", "3", "10.64.0.1"]);
    assert!(out.is_ok(), "{out:?}");
}
