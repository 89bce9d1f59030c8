//! natOutgoing with real packets, in both modes: two pods behind a node,
//! the node's uplink to an "outside" namespace that routes the pool back to
//! the node. The address a TCP server sees is the verdict: outside, the
//! node's address with natOutgoing on and the pod's with it off; a pod, or a
//! service DNATed to a pod, always the pod's.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use calico_node_agent::nat_outgoing::{NatMode, NatOutgoing, NatPools};
use testbed::Netns;

const NODE_UPLINK: &str = "192.168.90.2";
const OUTSIDE: &str = "192.168.90.1";
const POD1: &str = "10.244.0.5";
const POD2: &str = "10.244.0.6";
const SERVICE: &str = "10.96.0.10";
const PORT: u16 = 8080;

struct Topology {
    // Drop order: pods and outside before the node.
    pod1: Netns,
    pod2: Netns,
    outside: Netns,
    node: Netns,
}

fn pod(node: &Netns, ifname: &str, ip: &str) -> Netns {
    let p = Netns::new("nnp");
    node.exec(&["ip", "link", "add", ifname, "type", "veth", "peer", "name", "eth0", "netns", p.name()]);
    node.exec(&["ip", "link", "set", ifname, "up"]);
    node.exec(&["sysctl", "-qw", &format!("net.ipv4.conf.{ifname}.proxy_arp=1")]);
    node.exec(&["ip", "route", "add", &format!("{ip}/32"), "dev", ifname]);
    p.exec(&["ip", "link", "set", "lo", "up"]);
    p.exec(&["ip", "link", "set", "eth0", "up"]);
    p.exec(&["ip", "addr", "add", &format!("{ip}/32"), "dev", "eth0"]);
    // Calico's pod routing: everything via the link-local gateway the
    // node's veth answers for by proxy ARP.
    p.exec(&["ip", "route", "add", "169.254.1.1", "dev", "eth0", "scope", "link"]);
    p.exec(&["ip", "route", "add", "default", "via", "169.254.1.1", "dev", "eth0"]);
    p
}

fn topology() -> Topology {
    let node = Netns::new("nnn");
    let outside = Netns::new("nno");
    node.exec(&["ip", "link", "set", "lo", "up"]);
    node.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    node.exec(&["ip", "link", "add", "up0", "type", "veth", "peer", "name", "ext0", "netns", outside.name()]);
    node.exec(&["ip", "addr", "add", &format!("{NODE_UPLINK}/24"), "dev", "up0"]);
    node.exec(&["ip", "link", "set", "up0", "up"]);
    node.exec(&["ip", "route", "add", "default", "via", OUTSIDE]);
    outside.exec(&["ip", "link", "set", "lo", "up"]);
    outside.exec(&["ip", "addr", "add", &format!("{OUTSIDE}/24"), "dev", "ext0"]);
    outside.exec(&["ip", "link", "set", "ext0", "up"]);
    // The outside knows the pool (as a ToR learns it by BGP), so a reply to
    // an un-masqueraded pod address finds its way back.
    outside.exec(&["ip", "route", "add", "10.244.0.0/16", "via", NODE_UPLINK]);
    let pod1 = pod(&node, "cali1", POD1);
    let pod2 = pod(&node, "cali2", POD2);
    // A "service": its cluster IP DNATed to pod2 before routing, as
    // kube-proxy's rules do.
    node.exec(&[
        "iptables",
        "-w",
        "-t",
        "nat",
        "-A",
        "PREROUTING",
        "-d",
        SERVICE,
        "-p",
        "tcp",
        "--dport",
        "80",
        "-j",
        "DNAT",
        "--to-destination",
        &format!("{POD2}:{PORT}"),
    ]);
    Topology { pod1, pod2, outside, node }
}

/// A TCP server in `ns` that answers every connection with the peer's address.
struct PeerEcho {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PeerEcho {
    fn start(ns: &Netns, ip: &str) -> PeerEcho {
        let netns = netlink_util::Netns::open(ns.path()).unwrap();
        let addr: SocketAddr = format!("{ip}:{PORT}").parse().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            netns
                .run_thread(|| {
                    let l = TcpListener::bind(addr).unwrap();
                    l.set_nonblocking(true).unwrap();
                    ready_tx.send(()).unwrap();
                    while !s.load(Ordering::Relaxed) {
                        match l.accept() {
                            Ok((mut c, peer)) => {
                                let _ = c.write_all(peer.ip().to_string().as_bytes());
                            }
                            Err(_) => std::thread::sleep(Duration::from_millis(10)),
                        }
                    }
                    Ok(())
                })
                .unwrap()
        });
        ready_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        PeerEcho { stop, thread: Some(thread) }
    }
}

impl Drop for PeerEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The source address a server at `ip:port` sees for a connection from `ns`.
fn seen_from(ns: &Netns, ip: &str, port: u16) -> String {
    let netns = netlink_util::Netns::open(ns.path()).unwrap();
    let addr: SocketAddr = format!("{ip}:{port}").parse().unwrap();
    netns
        .run_thread(|| {
            let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
                .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
            c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            let mut s = String::new();
            c.read_to_string(&mut s).unwrap();
            Ok(s)
        })
        .unwrap()
}

fn in_node<T: Send>(t: &Topology, f: impl FnOnce() -> T + Send) -> T {
    netlink_util::Netns::open(t.node.path()).unwrap().run_thread(|| Ok(f())).unwrap()
}

fn pools(nat: bool) -> NatPools {
    let mut p = NatPools::default();
    p.add("10.244.0.0/16".parse().unwrap(), nat);
    // Another pool, without natOutgoing: also "inside".
    p.add("10.245.0.0/16".parse().unwrap(), false);
    p
}

fn iptables_nat(t: &Topology) -> String {
    t.node.exec(&["iptables", "-w", "-t", "nat", "-S"])
}

fn nft_tables(t: &Topology) -> String {
    t.node.exec(&["nft", "list", "tables"])
}

fn check_mode(mode: NatMode) {
    let t = topology();
    let _outside = PeerEcho::start(&t.outside, OUTSIDE);
    let _pod2 = PeerEcho::start(&t.pod2, POD2);
    let mut nat = NatOutgoing::new(mode);

    // Off before anything is written: the pod's own address goes out.
    assert!(in_node(&t, || nat.apply(&pools(false))).unwrap());
    assert_eq!(seen_from(&t.pod1, OUTSIDE, PORT), POD1, "natOutgoing off");

    // On: the outside sees the node; pods and services still see the pod.
    assert!(in_node(&t, || nat.apply(&pools(true))).unwrap());
    assert_eq!(seen_from(&t.pod1, OUTSIDE, PORT), NODE_UPLINK, "natOutgoing on");
    assert_eq!(seen_from(&t.pod1, POD2, PORT), POD1, "pod to pod");
    assert_eq!(seen_from(&t.pod1, SERVICE, 80), POD1, "pod to service");
    match mode {
        NatMode::Iptables => {
            let rules = iptables_nat(&t);
            assert!(
                rules.contains(
                    "-A POSTROUTING -m comment --comment \"cali:nat-outgoing\" -j cali-nat-outgoing"
                ),
                "{rules}"
            );
            assert!(rules.contains("-j MASQUERADE --random-fully"), "{rules}");
        }
        NatMode::Nftables => {
            let table = t.node.exec(&["nft", "list", "table", "ip", "calico-nat-outgoing"]);
            assert!(table.contains("masquerade fully-random"), "{table}");
        }
    }
    // Unchanged pools: nothing written; a resync finds the rules as it
    // left them and writes nothing either.
    assert!(!in_node(&t, || nat.apply(&pools(true))).unwrap());
    assert!(!in_node(&t, || nat.reapply()).unwrap(), "an idle resync only reads");

    // Rules flushed behind the agent's back come back with a resync.
    match mode {
        NatMode::Iptables => drop(t.node.exec(&["iptables", "-w", "-t", "nat", "-F", "cali-nat-outgoing"])),
        NatMode::Nftables => drop(t.node.exec(&["nft", "flush", "table", "ip", "calico-nat-outgoing"])),
    }
    assert_eq!(seen_from(&t.pod1, OUTSIDE, PORT), POD1, "flushed");
    assert!(in_node(&t, || nat.reapply()).unwrap(), "flushed rules are written again");
    assert_eq!(seen_from(&t.pod1, OUTSIDE, PORT), NODE_UPLINK, "after the resync");
    assert!(!in_node(&t, || nat.reapply()).unwrap(), "and then left alone");

    // The pool turns natOutgoing off: rules removed, the pod's address again.
    assert!(in_node(&t, || nat.apply(&pools(false))).unwrap());
    assert_eq!(seen_from(&t.pod1, OUTSIDE, PORT), POD1, "natOutgoing turned off");
    assert!(!iptables_nat(&t).contains("cali-nat-outgoing"), "{}", iptables_nat(&t));
    assert!(!nft_tables(&t).contains("calico-nat-outgoing"), "{}", nft_tables(&t));

    // On again, then a restart in the other mode takes over cleanly.
    in_node(&t, || nat.apply(&pools(true))).unwrap();
    let other = match mode {
        NatMode::Iptables => NatMode::Nftables,
        NatMode::Nftables => NatMode::Iptables,
    };
    let mut next = NatOutgoing::new(other);
    in_node(&t, || next.apply(&pools(true))).unwrap();
    assert_eq!(seen_from(&t.pod1, OUTSIDE, PORT), NODE_UPLINK, "after the switch to {other:?}");
    let (ipt, nft) = (iptables_nat(&t), nft_tables(&t));
    match other {
        NatMode::Iptables => {
            assert!(ipt.contains("cali-nat-outgoing") && !nft.contains("calico-nat-outgoing"), "{ipt}\n{nft}")
        }
        NatMode::Nftables => {
            assert!(!ipt.contains("cali-nat-outgoing") && nft.contains("calico-nat-outgoing"), "{ipt}\n{nft}")
        }
    }
    // And removal leaves nothing of either.
    in_node(&t, || next.remove()).unwrap();
    assert!(!iptables_nat(&t).contains("cali-nat-outgoing"));
    assert!(!nft_tables(&t).contains("calico-nat-outgoing"));
    assert_eq!(seen_from(&t.pod1, OUTSIDE, PORT), POD1, "removed");
}

#[test]
fn iptables_mode_masquerades_only_what_leaves_the_pools() {
    check_mode(NatMode::Iptables);
}

#[test]
fn nftables_mode_masquerades_only_what_leaves_the_pools() {
    check_mode(NatMode::Nftables);
}

/// IPv6 pools get rules of their own family only (ip6tables, table ip6),
/// and a family without a natOutgoing pool gets none.
#[test]
fn ipv6_pools_get_rules_of_their_own_family_in_both_modes() {
    let ns = Netns::new("nn6");
    let netns = netlink_util::Netns::open(ns.path()).unwrap();
    let mut p = NatPools::default();
    p.add("fd00:244::/64".parse().unwrap(), true);
    p.add("fd00:245::/64".parse().unwrap(), false);
    p.add("10.244.0.0/16".parse().unwrap(), false);
    for mode in [NatMode::Iptables, NatMode::Nftables] {
        let mut nat = NatOutgoing::new(mode);
        netns.run_thread(|| Ok(nat.apply(&p))).unwrap().unwrap();
        let v4 = ns.exec(&["iptables", "-w", "-t", "nat", "-S"]);
        let v6 = ns.exec(&["ip6tables", "-w", "-t", "nat", "-S"]);
        let tables = ns.exec(&["nft", "list", "tables"]);
        assert!(!v4.contains("cali-nat-outgoing"), "{mode:?}: no IPv4 pool has natOutgoing: {v4}");
        assert!(!tables.contains("table ip calico-nat-outgoing"), "{mode:?}: {tables}");
        match mode {
            NatMode::Iptables => {
                assert!(v6.contains("-A cali-nat-outgoing -d fd00:245::/64"), "{v6}");
                assert!(v6.contains("-A cali-nat-outgoing -s fd00:244::/64"), "{v6}");
                assert!(v6.contains("-j MASQUERADE --random-fully"), "{v6}");
            }
            NatMode::Nftables => {
                let t = ns.exec(&["nft", "list", "table", "ip6", "calico-nat-outgoing"]);
                assert!(
                    t.contains("ip6 saddr @masq-ipam-pools ip6 daddr != @all-ipam-pools masquerade"),
                    "{t}"
                );
                assert!(!v6.contains("cali-nat-outgoing"), "no ip6tables rules in nftables mode: {v6}");
            }
        }
        // Removed cleanly, both families.
        netns.run_thread(|| Ok(nat.remove())).unwrap().unwrap();
        assert!(!ns.exec(&["ip6tables", "-w", "-t", "nat", "-S"]).contains("cali-nat-outgoing"));
        assert!(!ns.exec(&["nft", "list", "tables"]).contains("calico-nat-outgoing"));
    }
}
