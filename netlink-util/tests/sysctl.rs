//! Sysctls written from a setns'd thread land in that thread's netns (not the
//! root's, not the process's main thread's). Cross-checked by a `sysctl`
//! process started inside the namespace.

mod common;

use common::{name, TestNs};
use netlink_util::{Sysctl, VethConfig};

#[test]
fn global_key_written_inside_a_netns_changes_only_that_netns() {
    let a = TestNs::new();
    let b = TestNs::new();
    let key = Sysctl::ip_forward();
    // This (test) thread is in the root netns; only read here.
    let root_before = key.read().unwrap();
    let want = if root_before == "1" { "0" } else { "1" };

    a.ns.run_thread(|| key.write(want)).unwrap();
    assert_eq!(a.ns.run_thread(|| key.read()).unwrap(), want);
    assert_eq!(a.sysctl("net/ipv4/ip_forward"), want);
    // Another fresh netns and the root keep their own values.
    assert_eq!(b.ns.run_thread(|| key.read()).unwrap(), "0");
    assert_eq!(b.sysctl("net/ipv4/ip_forward"), "0");
    assert_eq!(key.read().unwrap(), root_before);
}

#[test]
fn interface_keys_exist_only_in_the_links_netns() {
    let t = TestNs::new();
    let (a, b) = (name("sa"), name("sb"));
    t.ns.run(|nl| nl.create_veth(&VethConfig::new(&a, &b)).map(drop)).unwrap();
    let proxy_arp = Sysctl::proxy_arp(&a).unwrap();
    // Not visible from the root netns ...
    assert!(proxy_arp.read().unwrap_err().is_not_found());
    // ... but from a thread inside it.
    let v =
        t.ns.run_thread(|| {
            assert_eq!(proxy_arp.read()?, "0");
            proxy_arp.write("1")?;
            proxy_arp.read()
        })
        .unwrap();
    assert_eq!(v, "1");
    assert_eq!(t.sysctl(&format!("net/ipv4/conf/{a}/proxy_arp")), "1");
}

#[test]
fn concurrent_threads_in_different_netns_see_their_own_values() {
    let nss: Vec<TestNs> = (0..4).map(|_| TestNs::new()).collect();
    std::thread::scope(|s| {
        for (i, t) in nss.iter().enumerate() {
            s.spawn(move || {
                let v = (i % 2).to_string();
                for _ in 0..20 {
                    t.ns.run_thread(|| Sysctl::ip_forward().write(&v)).unwrap();
                    assert_eq!(t.ns.run_thread(|| Sysctl::ip_forward().read()).unwrap(), v);
                }
            });
        }
    });
    for (i, t) in nss.iter().enumerate() {
        assert_eq!(t.sysctl("net/ipv4/ip_forward"), (i % 2).to_string());
    }
}

#[test]
fn calico_host_and_pod_sysctl_set_in_a_netns() {
    let t = TestNs::new();
    let (cali, peer) = (name("cali"), name("pe"));
    t.ns.run(|nl| {
        nl.create_veth(&VethConfig::new(&cali, &peer))?;
        // Host side, as the Calico plugin sets it.
        Sysctl::route_localnet(&cali)?.write("1")?;
        Sysctl::proxy_delay(&cali)?.write("0")?;
        Sysctl::proxy_arp(&cali)?.write("1")?;
        Sysctl::ipv4_forwarding(&cali)?.write("1")?;
        Sysctl::ipv6_disable(&cali)?.write("0")?;
        Sysctl::ipv6_proxy_ndp(&cali)?.write("1")?;
        Sysctl::ipv6_forwarding(&cali)?.write("1")?;
        Sysctl::ipv6_accept_ra(&cali)?.write("0")?;
        // Pod side.
        Sysctl::ipv6_accept_dad(&peer)?.write("0")?;
        for ifname in ["all", "default", "lo"] {
            Sysctl::ipv6_disable(ifname)?.ensure("0")?;
        }
        Sysctl::ip_forward().ensure("0")?;
        Ok(())
    })
    .unwrap();
    let checks = [
        (format!("net/ipv4/conf/{cali}/route_localnet"), "1"),
        (format!("net/ipv4/neigh/{cali}/proxy_delay"), "0"),
        (format!("net/ipv4/conf/{cali}/proxy_arp"), "1"),
        (format!("net/ipv4/conf/{cali}/forwarding"), "1"),
        (format!("net/ipv6/conf/{cali}/disable_ipv6"), "0"),
        (format!("net/ipv6/conf/{cali}/proxy_ndp"), "1"),
        (format!("net/ipv6/conf/{cali}/forwarding"), "1"),
        (format!("net/ipv6/conf/{cali}/accept_ra"), "0"),
        (format!("net/ipv6/conf/{peer}/accept_dad"), "0"),
    ];
    for (key, want) in checks {
        assert_eq!(t.sysctl(&key), want, "{key}");
    }
}

#[test]
fn writing_a_bad_value_is_an_error_naming_the_key() {
    let t = TestNs::new();
    let e = t.ns.run_thread(|| Sysctl::ip_forward().write("banana")).unwrap_err();
    assert!(e.to_string().contains("net/ipv4/ip_forward"), "{e}");
}
