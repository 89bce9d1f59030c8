//! Routes: every kind the Calico plugin and node agent need, EEXIST, replace,
//! delete, NotFound, other tables, listing.

mod common;

use std::net::IpAddr;
use std::time::Duration;

use common::{name, TestNs};
use netlink_util::{
    AddrOptions, Error, IpFamily, Protocol, Route, RouteKind, Scope, Sysctl, VethConfig, MAIN_TABLE,
};

fn net(s: &str) -> ipnetwork::IpNetwork {
    s.parse().unwrap()
}

/// A pod-like netns with `eth0` (up, 10.65.0.5/32) whose peer `cali` is up in
/// the host-like netns. Returns (host, pod, host veth name, eth0 index, cali index).
fn pair() -> (TestNs, TestNs, String, u32, u32) {
    let host = TestNs::new();
    let pod = TestNs::new();
    let cali = name("cali");
    let cali_index = host
        .ns
        .run(|nl| {
            let l = nl.create_veth(&VethConfig::new(&cali, "eth0").peer_netns(&pod.ns))?;
            Sysctl::ipv6_accept_dad(&cali)?.write("0")?;
            nl.set_link_up(l.index)?;
            Ok(l.index)
        })
        .unwrap();
    let eth0 = pod
        .ns
        .run(|nl| {
            let l = nl.link_by_name("eth0")?;
            Sysctl::ipv6_accept_dad("eth0")?.write("0")?;
            nl.add_address(l.index, net("10.65.0.5/32"), &AddrOptions::default())?;
            nl.set_link_up(l.index)?;
            Ok(l.index)
        })
        .unwrap();
    (host, pod, cali, eth0, cali_index)
}

#[test]
fn pod_side_routes_v4_link_scope_gateway_and_default() {
    let (_host, pod, _cali, eth0, _) = pair();
    let gw: IpAddr = "169.254.1.1".parse().unwrap();
    pod.ns
        .run(|nl| {
            // Without the link-scope route the gateway is unreachable from a /32.
            let e = nl.add_route(&Route::default_v4().via(gw).dev(eth0)).unwrap_err();
            assert!(matches!(e, Error::Kernel { errno: libc::ENETUNREACH, .. }), "{e}");
            assert!(e.to_string().contains("default via 169.254.1.1"), "{e}");

            nl.add_route(&Route::new(net("169.254.1.1/32")).dev(eth0).scope(Scope::Link))?;
            nl.add_route(&Route::default_v4().via(gw).dev(eth0))?;

            let routes = nl.routes(IpFamily::V4, MAIN_TABLE)?;
            let def = routes.iter().find(|r| r.dst.prefix() == 0).unwrap();
            assert_eq!((def.gateway, def.oif, def.scope), (Some(gw), Some(eth0), Some(Scope::Universe)));
            assert_eq!(def.protocol, Some(Protocol::Boot));
            let host = routes.iter().find(|r| r.dst == net("169.254.1.1/32")).unwrap();
            assert_eq!((host.gateway, host.oif, host.scope), (None, Some(eth0), Some(Scope::Link)));
            Ok(())
        })
        .unwrap();
    let out = pod.ip("-4 route show");
    assert!(out.contains("default via 169.254.1.1 dev eth0"), "{out}");
    assert!(out.contains("169.254.1.1 dev eth0 scope link"), "{out}");
}

#[test]
fn pod_side_v6_default_via_the_host_link_local() {
    let (host, pod, _cali, eth0, cali_index) = pair();
    let ll = host.ns.run(|nl| nl.wait_link_local_v6(cali_index, Duration::from_secs(2))).unwrap();
    pod.ns
        .run(|nl| {
            nl.add_address(eth0, net("fd00:65::5/128"), &AddrOptions::default().nodad())?;
            nl.add_route(&Route::default_v6().via(IpAddr::V6(ll)).dev(eth0))?;
            let e = nl.add_route(&Route::default_v6().via(IpAddr::V6(ll)).dev(eth0)).unwrap_err();
            assert!(e.is_exists(), "{e}");
            let defs = nl.routes_to(net("::/0"), MAIN_TABLE)?;
            assert_eq!(defs.len(), 1, "{defs:?}");
            assert_eq!((defs[0].gateway, defs[0].oif), (Some(IpAddr::V6(ll)), Some(eth0)));
            Ok(())
        })
        .unwrap();
    let out = pod.ip("-6 route show");
    assert!(out.contains(&format!("default via {ll} dev eth0")), "{out}");
}

#[test]
fn host_side_pod_route_exists_is_distinguishable_and_shows_the_interface() {
    let (host, _pod, cali, _eth0, cali_index) = pair();
    let other = name("oth");
    host.ns
        .run(|nl| {
            let r = Route::new(net("10.65.0.5/32")).dev(cali_index).scope(Scope::Link);
            nl.add_route(&r)?;
            let e = nl.add_route(&r).unwrap_err();
            assert!(e.is_exists(), "{e}");
            assert!(e.to_string().contains("10.65.0.5/32"), "{e}");
            // The plugin's rule: EEXIST is fine when the route is on our interface.
            let existing = nl.routes_to(net("10.65.0.5/32"), MAIN_TABLE)?;
            assert_eq!(existing.len(), 1);
            assert_eq!(existing[0].oif, Some(cali_index));

            // Same destination on another interface: still EEXIST, and
            // routes_to tells the caller it is not ours.
            let o = nl.create_veth(&VethConfig::new(&other, format!("{other}p")))?;
            nl.set_link_up(o.index)?;
            let e = nl.add_route(&Route::new(net("10.65.0.5/32")).dev(o.index)).unwrap_err();
            assert!(e.is_exists(), "{e}");
            assert_ne!(nl.routes_to(net("10.65.0.5/32"), MAIN_TABLE)?[0].oif, Some(o.index));

            // Replace moves it.
            nl.replace_route(&Route::new(net("10.65.0.5/32")).dev(o.index))?;
            let now = nl.routes_to(net("10.65.0.5/32"), MAIN_TABLE)?;
            assert_eq!(now.len(), 1);
            assert_eq!(now[0].oif, Some(o.index));
            nl.replace_route(&r)?;
            Ok(())
        })
        .unwrap();
    let out = host.ip("route show 10.65.0.5/32");
    assert_eq!(out.trim(), format!("10.65.0.5 dev {cali} scope link"));
}

#[test]
fn blackhole_with_numeric_protocol_add_list_delete() {
    let t = TestNs::new();
    t.ns.run(|nl| {
        let bh = Route::new(net("10.65.7.0/26")).blackhole().protocol(Protocol::Other(80));
        nl.add_route(&bh)?;
        let e = nl.add_route(&bh).unwrap_err();
        assert!(e.is_exists(), "{e}");
        assert!(e.to_string().contains("blackhole 10.65.7.0/26"), "{e}");
        let got = nl.routes_to(net("10.65.7.0/26"), MAIN_TABLE)?;
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].kind, RouteKind::Blackhole);
        assert_eq!(got[0].protocol, Some(Protocol::Other(80)));
        assert_eq!(got[0].oif, None);
        Ok(())
    })
    .unwrap();
    let out = t.ip("route show");
    assert!(out.contains("blackhole 10.65.7.0/26 proto 80"), "{out}");

    // Delete with a wildcard protocol (None), then NotFound.
    t.ns.run(|nl| {
        nl.del_route(&Route::new(net("10.65.7.0/26")).blackhole())?;
        let e = nl.del_route(&Route::new(net("10.65.7.0/26")).blackhole()).unwrap_err();
        assert!(e.is_not_found(), "{e}");
        assert!(e.to_string().contains("10.65.7.0/26"), "{e}");
        Ok(())
    })
    .unwrap();
    assert!(!t.ip("route show").contains("10.65.7.0/26"));

    // A v6 blackhole too.
    t.ns.run(|nl| nl.add_route(&Route::new(net("fd00:65:7::/122")).blackhole().protocol(Protocol::Bird)))
        .unwrap();
    let out = t.ip("-6 route show");
    assert!(out.contains("blackhole fd00:65:7::/122 dev lo proto bird"), "{out}");
}

#[test]
fn delete_matches_protocol_and_type_when_given() {
    let t = TestNs::new();
    t.ns.run(|nl| {
        nl.add_route(&Route::new(net("10.65.8.0/26")).blackhole().protocol(Protocol::Other(80)))?;
        // Wrong protocol: nothing matches.
        let e = nl
            .del_route(&Route::new(net("10.65.8.0/26")).blackhole().protocol(Protocol::Static))
            .unwrap_err();
        assert!(e.is_not_found(), "{e}");
        // Wrong type: nothing matches either.
        assert!(nl.del_route(&Route::new(net("10.65.8.0/26"))).unwrap_err().is_not_found());
        nl.del_route(&Route::new(net("10.65.8.0/26")).blackhole().protocol(Protocol::Other(80)))
    })
    .unwrap();
}

#[test]
fn onlink_gateway_other_table_metric_and_host_scope() {
    let (_host, pod, _cali, eth0, _) = pair();
    pod.ns
        .run(|nl| {
            // onlink: no route to 10.0.0.1 is needed.
            nl.add_route(
                &Route::new(net("192.168.50.0/24")).via("10.0.0.1".parse().unwrap()).dev(eth0).onlink(),
            )?;
            nl.add_route(
                &Route::new(net("192.168.60.0/24")).dev(eth0).table(100).protocol(Protocol::Bird).metric(42),
            )?;
            nl.add_route(
                &Route::new(net("192.168.70.0/24")).dev(eth0).table(1000).protocol(Protocol::Static),
            )?;
            nl.add_route(&Route::new(net("10.99.0.1/32")).dev(eth0).scope(Scope::Host))?;

            let main = nl.routes(IpFamily::V4, MAIN_TABLE)?;
            let r = main.iter().find(|r| r.dst == net("192.168.50.0/24")).unwrap();
            assert!(r.onlink);
            assert!(!main.iter().any(|r| r.dst == net("192.168.60.0/24")), "table 100 route in main");
            let t100 = nl.routes(IpFamily::V4, 100)?;
            assert_eq!(t100.len(), 1);
            assert_eq!(
                (t100[0].protocol, t100[0].metric, t100[0].table),
                (Some(Protocol::Bird), Some(42), 100)
            );
            let t1000 = nl.routes(IpFamily::V4, 1000)?;
            assert_eq!(t1000.len(), 1);
            assert_eq!(t1000[0].table, 1000);
            nl.del_route(&Route::new(net("192.168.70.0/24")).table(1000))?;
            assert!(nl.routes(IpFamily::V4, 1000)?.is_empty());
            Ok(())
        })
        .unwrap();
    let out = pod.ip("route show");
    assert!(out.contains("192.168.50.0/24 via 10.0.0.1 dev eth0 onlink"), "{out}");
    assert!(out.contains("10.99.0.1 dev eth0 scope host"), "{out}");
    let out = pod.ip("route show table 100");
    assert!(out.contains("192.168.60.0/24 dev eth0 proto bird scope link metric 42"), "{out}");
}

#[test]
fn kernel_refusals_carry_errno_and_extended_ack_text() {
    let t = TestNs::new();
    let e =
        t.ns.run(|nl| nl.add_route(&Route::default_v4().via("10.1.1.1".parse().unwrap()).dev(1)))
            .unwrap_err();
    match &e {
        Error::Kernel { errno, message, .. } => {
            assert_eq!(*errno, libc::ENETUNREACH);
            assert!(message.as_deref().is_some_and(|m| !m.is_empty()), "no ext ack text: {e}");
        }
        other => panic!("unexpected {other:?}"),
    }
    let e = t.ns.run(|nl| nl.add_route(&Route::default_v4().via("fe80::1".parse().unwrap()))).unwrap_err();
    assert!(matches!(e, Error::Invalid { .. }), "{e}");
}
