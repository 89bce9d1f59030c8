//! Addresses (v4/v6, scope, nodad) and the IPv6 link-local wait.

mod common;

use std::time::{Duration, Instant};

use common::{name, TestNs};
use netlink_util::{AddrOptions, Error, IpFamily, Scope, Sysctl, VethConfig};

#[test]
fn v4_and_v6_addresses_add_list_delete() {
    let t = TestNs::new();
    let (a, b) = (name("aa"), name("ab"));
    let index =
        t.ns.run(|nl| {
            let l = nl.create_veth(&VethConfig::new(&a, &b))?;
            nl.add_address(l.index, "10.65.0.5/32".parse().unwrap(), &AddrOptions::default())?;
            nl.add_address(
                l.index,
                "10.66.1.7/24".parse().unwrap(),
                &AddrOptions::default().scope(Scope::Link),
            )?;
            nl.add_address(l.index, "fd00:65::5/128".parse().unwrap(), &AddrOptions::default().nodad())?;
            Ok(l.index)
        })
        .unwrap();

    let out = t.ip(&format!("-4 addr show dev {a}"));
    assert!(out.contains("inet 10.65.0.5/32 scope global"), "{out}");
    assert!(out.contains("inet 10.66.1.7/24 scope link"), "{out}");
    let out = t.ip(&format!("-6 addr show dev {a}"));
    assert!(out.contains("inet6 fd00:65::5/128 scope global nodad"), "{out}");

    t.ns.run(|nl| {
        let v4 = nl.addresses(Some(IpFamily::V4), Some(index))?;
        let mut nets: Vec<String> = v4.iter().map(|a| a.net.to_string()).collect();
        nets.sort();
        assert_eq!(nets, ["10.65.0.5/32", "10.66.1.7/24"]);
        let link_scoped = v4.iter().find(|a| a.net.to_string() == "10.66.1.7/24").unwrap();
        assert_eq!(link_scoped.scope, Scope::Link);
        assert_eq!(link_scoped.index, index);
        let v6 = nl.addresses(Some(IpFamily::V6), Some(index))?;
        let g = v6.iter().find(|a| a.net.to_string() == "fd00:65::5/128").unwrap();
        assert!(g.nodad && !g.tentative && g.scope == Scope::Universe, "{g:?}");
        // Every family, every link: lo's 127.0.0.1 is there too.
        let all = nl.addresses(None, None)?;
        assert!(all.iter().any(|a| a.net.to_string() == "127.0.0.1/8"));

        let e = nl.add_address(index, "10.65.0.5/32".parse().unwrap(), &AddrOptions::default()).unwrap_err();
        assert!(e.is_exists(), "{e}");
        assert!(e.to_string().contains("10.65.0.5/32"), "{e}");

        nl.del_address(index, "10.65.0.5/32".parse().unwrap())?;
        nl.del_address(index, "fd00:65::5/128".parse().unwrap())?;
        let e = nl.del_address(index, "10.65.0.5/32".parse().unwrap()).unwrap_err();
        assert!(e.is_not_found(), "{e}");
        let e = nl.del_address(index, "fd00:65::5/128".parse().unwrap()).unwrap_err();
        assert!(e.is_not_found(), "{e}");
        Ok(())
    })
    .unwrap();
    let out = t.ip(&format!("addr show dev {a}"));
    assert!(!out.contains("10.65.0.5") && !out.contains("fd00:65::5") && out.contains("10.66.1.7"), "{out}");
}

#[test]
fn adding_to_a_missing_link_is_an_error_naming_the_address() {
    let t = TestNs::new();
    let e =
        t.ns.run(|nl| nl.add_address(999_999, "10.0.0.1/32".parse().unwrap(), &AddrOptions::default()))
            .unwrap_err();
    assert!(e.is_not_found(), "{e}");
    assert!(e.to_string().contains("10.0.0.1/32") && e.to_string().contains("999999"), "{e}");
}

#[test]
fn link_local_appears_after_link_up_and_polling_finds_it() {
    let host = TestNs::new();
    let pod = TestNs::new();
    let hname = name("ll");
    let index = host
        .ns
        .run(|nl| {
            let l = nl.create_veth(&VethConfig::new(&hname, "eth0").peer_netns(&pod.ns))?;
            // As Calico does: no DAD, so the address is usable at once.
            Sysctl::ipv6_accept_dad(&hname)?.write("0")?;
            Sysctl::ipv6_disable(&hname)?.write("0")?;
            assert_eq!(nl.link_local_v6(l.index)?, None, "down link has no link-local");
            nl.set_link_up(l.index)?;
            Ok(l.index)
        })
        .unwrap();
    // addrconf waits for carrier, which a veth has once both ends are up.
    pod.ns
        .run(|nl| {
            let eth0 = nl.link_by_name("eth0")?;
            nl.set_link_up(eth0.index)
        })
        .unwrap();
    let (ll, index) =
        host.ns.run(|nl| Ok((nl.wait_link_local_v6(index, Duration::from_secs(2))?, index))).unwrap();
    assert_eq!(ll.segments()[0], 0xfe80, "{ll}");
    let out = host.ip(&format!("-6 addr show dev {hname} scope link"));
    assert!(out.contains(&format!("inet6 {ll}/64 scope link")), "{out}");
    assert!(!out.contains("tentative"), "{out}");
    let again = host.ns.run(|nl| nl.link_local_v6(index)).unwrap();
    assert_eq!(again, Some(ll));
}

#[test]
fn link_local_wait_is_bounded() {
    let t = TestNs::new();
    let (a, b) = (name("la"), name("lb"));
    let start = Instant::now();
    let e =
        t.ns.run(|nl| {
            let l = nl.create_veth(&VethConfig::new(&a, &b))?;
            // Left down: no link-local address will ever appear.
            nl.wait_link_local_v6(l.index, Duration::from_millis(200))
        })
        .unwrap_err();
    assert!(matches!(e, Error::Timeout { .. }), "{e}");
    assert!(e.to_string().contains("link-local"), "{e}");
    assert!(start.elapsed() < Duration::from_secs(2));
}
