//! `kube-proxy-rules bench --conntrack-entries N`: the stale-flow cleanup
//! against the way kube-proxy did it before 1.28 (one `conntrack -D`
//! process per filter), on the same table.
//!
//! A scratch namespace gets N UDP entries to 100 services × 10 endpoints and
//! as many TCP entries to the same addresses (a node's table is mostly TCP),
//! created through ctnetlink as `conntrack -I` would; one endpoint of each
//! of 10 services is removed. Ours: the filters of that change, one dump of
//! the UDP entries (the kernel filters by protocol), the matching entries
//! deleted by tuple. Reference: the same table
//! refilled, then `conntrack -D -p udp --orig-dst SVC --orig-port-dst 53
//! --reply-src EP --reply-port-src 5353` once per filter (each run lists
//! the whole table in the kernel and deletes what matches). Both must
//! delete the same entries.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::{Duration, Instant};

use kube_proxy_rules::conntrack::cleanup::{stale_filters, stale_flows, ServicePortFlows, Snapshot};
use kube_proxy_rules::conntrack::flows::{Tuple, IPPROTO_TCP, IPPROTO_UDP};
use kube_proxy_rules::conntrack::{ConntrackSocket, Flow, FlowFilter};
use kube_proxy_rules::family::IpFamily;

use super::{ms, ScratchNetns};

const SERVICES: usize = 100;
const ENDPOINTS: usize = 10;
/// Services that lose an endpoint.
const CHANGED: usize = 10;

fn service_ip(s: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 96, (s / 250) as u8, (s % 250 + 1) as u8))
}

fn endpoint(s: usize, e: usize) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 128, s as u8, e as u8 + 1)), 5353)
}

/// Entry `i` (TCP from `n` on): client 10.(1 + i / 65536).x.y:40000 to
/// service i % 100, DNATed to endpoint (i / 100) % 10.
fn flow(i: usize, n: usize) -> Flow {
    let mut f = udp_flow(i % n);
    if i >= n {
        f.proto = IPPROTO_TCP;
    }
    f
}

fn udp_flow(i: usize) -> Flow {
    let (s, e) = (i % SERVICES, (i / SERVICES) % ENDPOINTS);
    let client = IpAddr::V4(Ipv4Addr::new(10, 1 + (i >> 16) as u8, (i >> 8) as u8, i as u8));
    let ep = endpoint(s, e);
    Flow {
        proto: IPPROTO_UDP,
        orig: Tuple { src: client, dst: service_ip(s), sport: 40000, dport: 53 },
        reply: Tuple { src: ep.ip(), dst: client, sport: ep.port(), dport: 40000 },
        zone: 0,
    }
}

fn snapshot(removed: bool) -> Snapshot {
    let services = (0..SERVICES)
        .map(|s| {
            let gone = removed && s < CHANGED;
            let endpoints: BTreeSet<SocketAddr> =
                (0..ENDPOINTS).filter(|e| !(gone && *e == 0)).map(|e| endpoint(s, e)).collect();
            let flows = ServicePortFlows {
                proto: IPPROTO_UDP,
                ips: vec![service_ip(s)],
                port: 53,
                node_port: 0,
                endpoints,
            };
            (format!("bench/svc-{s}:dns/udp"), flows)
        })
        .collect::<BTreeMap<_, _>>();
    Snapshot { services }
}

/// `n` UDP and `n` TCP entries.
fn fill(sock: &mut ConntrackSocket, n: usize) -> Result<Duration, String> {
    let t = Instant::now();
    for i in 0..2 * n {
        sock.create(IpFamily::V4, &flow(i, n), 600).map_err(|e| format!("entry {i}: {e}"))?;
    }
    Ok(t.elapsed())
}

fn count(sock: &mut ConntrackSocket) -> Result<usize, String> {
    Ok(sock.dump(IpFamily::V4).map_err(|e| e.to_string())?.len())
}

pub fn run(n: usize) -> Result<i32, String> {
    let ns = ScratchNetns::new()?;
    let mut sock = ConntrackSocket::open_in(Some(&ns.0)).map_err(|e| e.to_string())?;
    let filled = fill(&mut sock, n)?;
    println!(
        "conntrack cleanup: {n} UDP (and {n} TCP) entries to {SERVICES} services x {ENDPOINTS} endpoints, \
         one endpoint of {CHANGED} services removed"
    );
    println!("  filling the scratch table through ctnetlink: {:.0} ms", ms(filled));

    // Ours: what one sync's cleanup does.
    let t = Instant::now();
    let filters = stale_filters(Some(&snapshot(false)), &snapshot(true));
    let flows = sock.dump_proto(IpFamily::V4, Some(IPPROTO_UDP)).map_err(|e| e.to_string())?;
    let dumped = t.elapsed();
    let stale: Vec<Flow> = stale_flows(&flows, &filters).into_iter().copied().collect();
    let matched = t.elapsed();
    let mut deleted = 0;
    for f in &stale {
        deleted += usize::from(sock.delete(IpFamily::V4, f).map_err(|e| e.to_string())?);
    }
    let ours = t.elapsed();
    let t = Instant::now();
    let left = count(&mut sock)?;
    let unfiltered = t.elapsed();
    println!(
        "  ours: {} filters, dump {:.1} ms, match {:.1} ms, {deleted} deleted, total {:.1} ms ({left} entries left)",
        filters.len(),
        ms(dumped),
        ms(matched - dumped),
        ms(ours)
    );
    println!("  (a dump of every entry, TCP too, as without the kernel's filter: {:.1} ms)", ms(unfiltered));

    // Reference: the same table, one `conntrack -D` per filter.
    for f in &stale {
        let _ = sock.create(IpFamily::V4, f, 600);
    }
    if count(&mut sock)? != 2 * n {
        return Err("the scratch table was not refilled".into());
    }
    let t = Instant::now();
    for f in &filters {
        let FlowFilter::ServiceToEndpoint { service, endpoint, .. } = f else {
            return Err(format!("unexpected filter {f}"));
        };
        let out = Command::new("ip")
            .args(["netns", "exec", &ns.0, "conntrack", "-D", "-p", "udp"])
            .args(["--orig-dst", &service.ip().to_string(), "--orig-port-dst", &service.port().to_string()])
            .args([
                "--reply-src",
                &endpoint.ip().to_string(),
                "--reply-port-src",
                &endpoint.port().to_string(),
            ])
            .output()
            .map_err(|e| format!("conntrack -D: {e}"))?;
        // conntrack -D exits 1 when nothing matched; that is no failure here.
        if !out.status.success() && out.status.code() != Some(1) {
            return Err(format!("conntrack -D: {}", String::from_utf8_lossy(&out.stderr)));
        }
    }
    let reference = t.elapsed();
    let ref_left = count(&mut sock)?;
    println!("  reference (conntrack -D per filter): {:.1} ms ({ref_left} entries left)", ms(reference));
    if ref_left != left {
        return Err(format!("ours left {left} entries, the reference {ref_left}"));
    }
    println!("  ratio reference/ours: {:.1}x", reference.as_secs_f64() / ours.as_secs_f64().max(1e-9));
    Ok(0)
}
