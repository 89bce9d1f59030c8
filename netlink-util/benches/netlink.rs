//! Microbenchmark of the choices this crate makes, in namespaces it creates:
//! * veth with the peer created directly in the pod netns vs. created beside
//!   the host end and then moved (what `ip link add ... ; ip link set netns`
//!   and many plugins do);
//! * one netlink socket per batch vs. one socket per call;
//! * `Netns::run` (thread + setns + socket) fixed cost.
//!
//! Prints the median and p90 per operation. Run as root:
//! `cargo bench -p netlink-util --bench netlink [-- <iterations>]`.

use std::time::{Duration, Instant};

use netlink_util::{Netlink, Netns, Result, VethConfig};

fn stats(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let p = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize];
    println!("{name:<48} n={:<5} median {:>8.1} us   p90 {:>8.1} us", samples.len(), us(p(0.5)), us(p(0.9)));
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn main() -> Result<()> {
    // `cargo bench` passes --bench; `cargo test --all-targets` does not: then
    // only smoke-run a few iterations, so a test run stays fast.
    let benching = std::env::args().any(|a| a == "--bench");
    let default_n = if benching { 200 } else { 3 };
    let n: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(default_n);
    let host_tb = testbed::Netns::new("nlb");
    let pod_tb = testbed::Netns::new("nlb");
    let host = Netns::open(host_tb.path())?;
    let pod = Netns::open(pod_tb.path())?;

    host.run(|nl| {
        // 1. Peer created in place: one request.
        let mut t = Vec::with_capacity(n);
        for _ in 0..n {
            let start = Instant::now();
            let l = nl.create_veth(&VethConfig::new("calibench0", "eth0").mtu(1450).peer_netns(&pod))?;
            t.push(start.elapsed());
            nl.del_link(l.index)?;
        }
        stats("veth, peer created in pod netns", t);

        // 2. Created beside the host end, then moved: two requests + a re-register.
        let mut t = Vec::with_capacity(n);
        for _ in 0..n {
            let start = Instant::now();
            let l = nl.create_veth(&VethConfig::new("calibench0", "benchpeer0").mtu(1450))?;
            let peer = nl.link_by_name("benchpeer0")?;
            nl.move_link(peer.index, &pod)?;
            t.push(start.elapsed());
            nl.del_link(l.index)?;
        }
        stats("veth, created then peer moved", t);

        // 3. Socket reuse vs. a socket per call (a link lookup each time).
        let mut t = Vec::with_capacity(n);
        for _ in 0..n {
            let start = Instant::now();
            nl.link_by_name("lo")?;
            t.push(start.elapsed());
        }
        stats("link_by_name, shared socket", t);
        let mut t = Vec::with_capacity(n);
        for _ in 0..n {
            let start = Instant::now();
            Netlink::new()?.link_by_name("lo")?;
            t.push(start.elapsed());
        }
        stats("link_by_name, new socket per call", t);
        Ok(())
    })?;

    // 4. Fixed cost of entering a netns on a dedicated thread with a socket.
    let mut t = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        pod.run(|_nl| Ok(()))?;
        t.push(start.elapsed());
    }
    stats("Netns::run (thread + setns + socket), empty", t);
    Ok(())
}
