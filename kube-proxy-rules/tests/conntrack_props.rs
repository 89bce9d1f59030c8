//! Properties of the conntrack cleanup's decisions (`stale_filters` +
//! `stale_flows`), on random before/after states of up to four UDP/SCTP
//! service ports and random conntrack entries (any protocol, to service
//! frontends, NodePorts or elsewhere, DNATed to endpoints or not):
//!
//! * nothing else: an entry is only ever stale when it has the protocol of
//!   a service port and was sent to one of its frontends or its NodePort;
//! * with a remembered state, exactly kube-proxy's two cases: DNATed to an
//!   endpoint that stopped serving that port, or sent to a port that had no
//!   endpoint and has one now;
//! * without one (a first start), a reconcile: sent to a port with
//!   endpoints and not DNATed to one of them.
//!
//! Service port k owns ClusterIP 10.96.0.(k+1), maybe externalIP
//! 192.0.2.(k+1), port 53 and maybe NodePort 30053+k, in both states (its
//! endpoints and protocol are what vary), so which port an entry belongs to
//! is unambiguous.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use kube_proxy_rules::conntrack::cleanup::{stale_filters, stale_flows, ServicePortFlows, Snapshot};
use kube_proxy_rules::conntrack::flows::{Tuple, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP};
use kube_proxy_rules::conntrack::Flow;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

const NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 1);

/// The shape of port k: (has an externalIP, has a NodePort).
type Shape = (bool, bool);

fn frontends(k: usize, shape: Shape) -> (Vec<IpAddr>, u16) {
    let mut ips = vec![IpAddr::V4(Ipv4Addr::new(10, 96, 0, k as u8 + 1))];
    if shape.0 {
        ips.push(IpAddr::V4(Ipv4Addr::new(192, 0, 2, k as u8 + 1)));
    }
    (ips, if shape.1 { 30053 + k as u16 } else { 0 })
}

fn endpoint(i: u8) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 244, 0, i % 4 + 1)), 5353 + u16::from(i / 4))
}

/// One state: per port, present or not, its protocol and endpoints.
type State = Vec<Option<(bool, BTreeSet<u8>)>>;

fn snapshot(shapes: &[Shape], state: &State) -> Snapshot {
    let mut services = BTreeMap::new();
    for (k, s) in state.iter().enumerate() {
        let Some((sctp, eps)) = s else { continue };
        let (ips, node_port) = frontends(k, shapes[k]);
        services.insert(
            key(k, if *sctp { IPPROTO_SCTP } else { IPPROTO_UDP }),
            ServicePortFlows {
                proto: if *sctp { IPPROTO_SCTP } else { IPPROTO_UDP },
                ips,
                port: 53,
                node_port,
                endpoints: eps.iter().map(|i| endpoint(*i)).collect(),
            },
        );
    }
    Snapshot { services }
}

fn state_strategy() -> impl Strategy<Value = State> {
    prop::collection::vec(
        prop::option::weighted(0.8, (any::<bool>(), prop::collection::btree_set(0u8..8, 0..4))),
        4,
    )
}

/// An entry: protocol, where it was sent, and who answers (an endpoint, or
/// the destination itself when it was not DNATed).
fn flow_strategy() -> impl Strategy<Value = Flow> {
    let dst = prop_oneof![
        (0u8..4).prop_map(|k| (IpAddr::V4(Ipv4Addr::new(10, 96, 0, k + 1)), 53u16)),
        (0u8..4).prop_map(|k| (IpAddr::V4(Ipv4Addr::new(192, 0, 2, k + 1)), 53u16)),
        (0u16..4).prop_map(|k| (IpAddr::V4(NODE_IP), 30053 + k)),
        Just((IpAddr::V4(Ipv4Addr::new(10, 1, 1, 1)), 53u16)),
        (0u8..4).prop_map(|k| (IpAddr::V4(Ipv4Addr::new(10, 96, 0, k + 1)), 54u16)),
    ];
    let proto = prop_oneof![Just(IPPROTO_UDP), Just(IPPROTO_SCTP), Just(IPPROTO_TCP)];
    (proto, dst, prop::option::of(0u8..8), 1024u16..1100).prop_map(|(proto, (dip, dport), ep, sport)| {
        let client = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 5));
        let reply = ep.map(endpoint).unwrap_or(SocketAddr::new(dip, dport));
        Flow {
            proto,
            orig: Tuple { src: client, dst: dip, sport, dport },
            reply: Tuple { src: reply.ip(), dst: client, sport: reply.port(), dport: sport },
            zone: 0,
        }
    })
}

/// The port an entry was sent to (a frontend or the NodePort), if any.
fn port_of(shapes: &[Shape], f: &Flow) -> Option<usize> {
    (0..4).find(|k| {
        let (ips, np) = frontends(*k, shapes[*k]);
        (f.orig.dport == 53 && ips.contains(&f.orig.dst)) || (np != 0 && f.orig.dport == np)
    })
}

/// A service port's key, with its protocol (as the proxy's: `ns/name:port/udp`).
fn key(k: usize, proto: u8) -> String {
    format!("ns/svc{k}/{}", if proto == IPPROTO_SCTP { "sctp" } else { "udp" })
}

fn serving(s: &Snapshot, k: usize, proto: u8) -> Option<&BTreeSet<SocketAddr>> {
    s.services.get(&key(k, proto)).filter(|p| p.proto == proto).map(|p| &p.endpoints)
}

#[test]
fn the_cleanup_deletes_exactly_kube_proxys_stale_entries() {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(512);
    let mut runner = TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() });
    let strategy = (
        prop::collection::vec((any::<bool>(), any::<bool>()), 4),
        prop::option::of(state_strategy()),
        state_strategy(),
        prop::collection::vec(flow_strategy(), 0..40),
    );
    let result = runner.run(&strategy, |(shapes, before, now, flows)| {
        let before = before.map(|b| snapshot(&shapes, &b));
        let now = snapshot(&shapes, &now);
        let filters = stale_filters(before.as_ref(), &now);
        let stale: HashSet<Flow> = stale_flows(&flows, &filters).into_iter().copied().collect();
        for f in &flows {
            let reply = SocketAddr::new(f.reply.src, f.reply.sport);
            let want = match (port_of(&shapes, f), &before) {
                (None, _) => false,
                (Some(k), Some(before)) => {
                    let (old, new) = (serving(before, k, f.proto), serving(&now, k, f.proto));
                    let removed =
                        old.is_some_and(|o| o.contains(&reply) && !new.is_some_and(|n| n.contains(&reply)));
                    let first = new.is_some_and(|n| !n.is_empty()) && old.is_none_or(|o| o.is_empty());
                    removed || first
                }
                (Some(k), None) => {
                    serving(&now, k, f.proto).is_some_and(|n| !n.is_empty() && !n.contains(&reply))
                }
            };
            prop_assert_eq!(stale.contains(f), want, "{:?} with filters {:?}", f, filters);
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}
