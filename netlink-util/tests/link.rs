//! Links: veth pairs whose peer is created directly in another netns, lookup,
//! up/down, MTU, delete, NotFound / Exists, the rollback guard.

mod common;

use common::{name, TestNs};
use netlink_util::{Error, LinkGuard, LinkKind, MacAddr, Netlink, VethConfig};

#[test]
fn veth_peer_is_created_in_the_target_netns_with_names_mac_and_mtu() {
    let host = TestNs::new();
    let pod = TestNs::new();
    let hname = name("cali");
    let peer_mac: MacAddr = "02:00:00:aa:bb:cc".parse().unwrap();

    let link = host
        .ns
        .run(|nl| {
            let cfg = VethConfig::new(&hname, "eth0")
                .mac(MacAddr::CALICO_HOST)
                .mtu(1410)
                .peer_mac(peer_mac)
                .peer_netns(&pod.ns);
            nl.create_veth(&cfg)
        })
        .unwrap();
    assert_eq!(link.name, hname);
    assert_eq!(link.mac, Some(MacAddr::CALICO_HOST));
    assert_eq!(link.mtu, 1410);
    assert_eq!(link.kind, Some(LinkKind::Veth));
    assert!(!link.up);
    assert!(link.peer_netnsid.is_some(), "peer should be in another netns: {link:?}");

    // The peer is in the pod netns, never in the host one.
    let peer = pod.ns.run(|nl| nl.link_by_name("eth0")).unwrap();
    assert_eq!(peer.mtu, 1410);
    assert_eq!(peer.mac, Some(peer_mac));
    assert_eq!(peer.kind, Some(LinkKind::Veth));
    assert_eq!(peer.peer_index, Some(link.index));
    assert_eq!(link.peer_index, Some(peer.index));
    let e = host.ns.run(|nl| nl.link_by_name("eth0")).unwrap_err();
    assert!(e.is_not_found(), "{e}");

    // Cross-check with iproute2.
    let out = host.ip(&format!("-d link show {hname}"));
    assert!(out.contains("mtu 1410"), "{out}");
    assert!(out.contains("link/ether ee:ee:ee:ee:ee:ee"), "{out}");
    assert!(out.contains("veth"), "{out}");
    let out = pod.ip("-d link show eth0");
    assert!(out.contains("mtu 1410"), "{out}");
    assert!(out.contains("link/ether 02:00:00:aa:bb:cc"), "{out}");
    assert!(out.contains(&format!("eth0@if{}", link.index)), "{out}");
}

#[test]
fn veth_without_peer_netns_stays_beside_this_end_and_queues_apply() {
    let t = TestNs::new();
    let (a, b) = (name("va"), name("vb"));
    let (la, lb) =
        t.ns.run(|nl| {
            let la = nl.create_veth(&VethConfig::new(&a, &b).queues(2))?;
            Ok((la, nl.link_by_name(&b)?))
        })
        .unwrap();
    assert_eq!(la.peer_index, Some(lb.index));
    assert_eq!(la.peer_netnsid, None);
    let out = t.ip(&format!("-d link show {a}"));
    assert!(out.contains("numtxqueues 2 numrxqueues 2"), "{out}");
}

#[test]
fn creating_an_existing_name_is_exists_and_names_the_link() {
    let t = TestNs::new();
    let (a, b, c) = (name("va"), name("vb"), name("vc"));
    let e =
        t.ns.run(|nl| {
            nl.create_veth(&VethConfig::new(&a, &b))?;
            nl.create_veth(&VethConfig::new(&a, &c))
        })
        .unwrap_err();
    assert!(e.is_exists(), "{e}");
    assert!(e.to_string().contains(&a), "{e}");
    // The failed request left nothing behind.
    assert!(!t.ip("link show").contains(&c));
}

#[test]
fn up_down_mtu_list_and_delete() {
    let t = TestNs::new();
    let (a, b) = (name("va"), name("vb"));
    t.ns.run(|nl| {
        let la = nl.create_veth(&VethConfig::new(&a, &b))?;
        let lb = nl.link_by_name(&b)?;
        nl.set_link_up(la.index)?;
        nl.set_link_up(lb.index)?;
        let la2 = nl.link_by_index(la.index)?;
        assert!(la2.up);
        assert_eq!(la2.name, a);
        nl.set_link_mtu(la.index, 1300)?;
        assert_eq!(nl.link_by_index(la.index)?.mtu, 1300);

        let names: Vec<String> = nl.links()?.into_iter().map(|l| l.name).collect();
        assert!(names.contains(&"lo".to_string()) && names.contains(&a) && names.contains(&b), "{names:?}");

        nl.set_link_down(la.index)?;
        assert!(!nl.link_by_index(la.index)?.up);
        Ok(())
    })
    .unwrap();
    let out = t.ip(&format!("link show {a}"));
    assert!(out.contains("mtu 1300") && out.contains("state DOWN"), "{out}");

    t.ns.run(|nl| {
        nl.del_link_by_name(&a)?;
        // A veth takes its peer with it.
        assert!(nl.link_by_name(&b).unwrap_err().is_not_found());
        let e = nl.del_link_by_name(&a).unwrap_err();
        assert!(matches!(e, Error::NotFound { .. }), "{e}");
        assert!(e.to_string().contains(&a), "{e}");
        assert!(nl.del_link(999_999).unwrap_err().is_not_found());
        assert!(nl.link_by_index(999_999).unwrap_err().is_not_found());
        Ok(())
    })
    .unwrap();
    assert!(!t.ip("link show").contains(&a));
}

#[test]
fn link_guard_deletes_unless_committed_from_any_thread() {
    let host = TestNs::new();
    let pod = TestNs::new();
    let (a, b) = (name("ga"), name("gb"));

    // Created and guarded inside the host netns, dropped on this (other) thread.
    let guard = host
        .ns
        .run(|nl| {
            let l = nl.create_veth(&VethConfig::new(&a, "eth0").peer_netns(&pod.ns))?;
            LinkGuard::new(&l)
        })
        .unwrap();
    assert!(host.ip("link show").contains(&a));
    drop(guard);
    assert!(!host.ip("link show").contains(&a));
    // The peer went with it.
    assert!(!pod.ip("link show").contains("eth0"));

    // Committed: stays.
    host.ns
        .run(|nl| {
            let l = nl.create_veth(&VethConfig::new(&b, "eth0").peer_netns(&pod.ns))?;
            LinkGuard::new(&l)?.commit();
            Ok(())
        })
        .unwrap();
    assert!(host.ip("link show").contains(&b));

    // Explicit rollback of a link someone already deleted is fine.
    let guard = host
        .ns
        .run(|nl| {
            let l = nl.link_by_name(&b)?;
            let g = LinkGuard::new(&l)?;
            nl.del_link(l.index)?;
            Ok(g)
        })
        .unwrap();
    guard.rollback().unwrap();
}

#[test]
fn a_socket_sees_only_its_own_namespace() {
    let a = TestNs::new();
    let b = TestNs::new();
    let (x, y) = (name("sa"), name("sb"));
    a.ns.run(|nl| nl.create_veth(&VethConfig::new(&x, &y)).map(drop)).unwrap();
    let in_b = b.ns.run(|nl| nl.links()).unwrap();
    assert_eq!(in_b.iter().map(|l| l.name.as_str()).collect::<Vec<_>>(), ["lo"]);
    // A socket opened by the closure itself is in the namespace too.
    let in_a = a.ns.run_thread(|| Netlink::new()?.links()).unwrap();
    assert!(in_a.iter().any(|l| l.name == x));
}

#[test]
fn move_link_puts_it_in_the_other_netns() {
    let a = TestNs::new();
    let b = TestNs::new();
    let (x, y) = (name("ma"), name("mb"));
    a.ns.run(|nl| {
        nl.create_veth(&VethConfig::new(&x, &y))?;
        let ly = nl.link_by_name(&y)?;
        nl.move_link(ly.index, &b.ns)?;
        assert!(nl.link_by_name(&y).unwrap_err().is_not_found());
        Ok(())
    })
    .unwrap();
    let moved = b.ns.run(|nl| nl.link_by_name(&y)).unwrap();
    assert_eq!(moved.kind, Some(LinkKind::Veth));
    assert!(b.ip("link show").contains(&y));
}

#[test]
fn peer_name_taken_in_the_target_netns_is_exists_and_leaves_nothing() {
    let host = TestNs::new();
    let pod = TestNs::new();
    let (a, b) = (name("pa"), name("pb"));
    // A stale eth0 already in the pod (e.g. a half-cleaned earlier ADD).
    pod.ns.run(|nl| nl.create_veth(&VethConfig::new("eth0", &b)).map(drop)).unwrap();
    let e = host.ns.run(|nl| nl.create_veth(&VethConfig::new(&a, "eth0").peer_netns(&pod.ns))).unwrap_err();
    assert!(e.is_exists(), "{e}");
    let msg = e.to_string();
    assert!(msg.contains(&a) && msg.contains("eth0") && msg.contains(pod.tb.name()), "{msg}");
    assert!(!host.ip("link show").contains(&a));
}

#[test]
fn link_guard_rolls_back_when_the_closure_panics() {
    let host = TestNs::new();
    let pod = TestNs::new();
    let a = name("pg");
    let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        host.ns.run(|nl| -> netlink_util::Result<()> {
            let l = nl.create_veth(&VethConfig::new(&a, "eth0").peer_netns(&pod.ns))?;
            let _guard = LinkGuard::new(&l)?;
            panic!("simulated failure after creating {}", l.name);
        })
    }));
    assert!(res.is_err(), "the panic propagates to the caller");
    assert!(!host.ip("link show").contains(&a));
    assert!(!pod.ip("link show").contains("eth0"));
}
