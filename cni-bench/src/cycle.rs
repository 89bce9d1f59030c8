//! Default mode: sequential ADD+DEL cycles of one pod, ours and the
//! reference alternating, inside one node netns and one pod netns.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sched::{setns, CloneFlags};

use crate::plugin::{self, ms, percentile};

/// One implementation under test: how to configure it and where its binaries are.
struct Implementation {
    label: &'static str,
    cni_path: PathBuf,
    /// The plugin's network configuration (what a runtime sends on stdin).
    conf: serde_json::Value,
}

/// Per-call measurements.
#[derive(Default)]
struct Samples {
    add: Vec<Duration>,
    del: Vec<Duration>,
    cycle: Vec<Duration>,
    peak_rss_kib: i64,
}

/// The kernel's own cost of the one step every DEL must take: deleting a
/// veth pair (one RTM_DELLINK, no process started). The kernel waits for an
/// RCU grace period while unregistering the devices, so this is a floor under
/// any plugin's DEL, ours and the reference alike.
fn veth_delete_floor(nl: &mut netlink_util::Netlink, pod: &netlink_util::Netns) -> Result<Duration, String> {
    let cfg = netlink_util::VethConfig::new("bfloor0", "eth0").peer_netns(pod);
    let link = nl.create_veth(&cfg).map_err(|e| format!("floor: create veth: {e}"))?;
    let start = std::time::Instant::now();
    nl.del_link(link.index).map_err(|e| format!("floor: delete veth: {e}"))?;
    Ok(start.elapsed())
}

/// The kernel's tick (1/CONFIG_HZ): the resolution of the coarse clock,
/// which advances once per tick. RCU grace periods, and so every veth
/// deletion, complete on tick boundaries.
fn kernel_tick() -> Option<Duration> {
    let res = nix::time::clock_getres(nix::time::ClockId::CLOCK_MONOTONIC_COARSE).ok()?;
    let d = Duration::from(res);
    (!d.is_zero()).then_some(d)
}

/// `5: 41%, 6: 38%, ...`: the share of cycles that took each whole number
/// of kernel ticks (rounded), shortest first.
fn tick_histogram(cycles: &[Duration], tick: Duration) -> String {
    let mut counts = std::collections::BTreeMap::<u64, usize>::new();
    for c in cycles {
        *counts.entry((c.as_secs_f64() / tick.as_secs_f64()).round() as u64).or_default() += 1;
    }
    let n = cycles.len().max(1) as f64;
    counts.iter().map(|(t, k)| format!("{t}: {:.0}%", *k as f64 * 100.0 / n)).collect::<Vec<_>>().join(", ")
}

/// What the cycle mode needs from the command line.
pub struct CycleArgs {
    pub iterations: usize,
    pub warmup: usize,
    pub ours: PathBuf,
    pub reference: PathBuf,
}

pub fn run(args: &CycleArgs) -> Result<(), String> {
    let node = testbed::Netns::new("bnd");
    let pod = testbed::Netns::new("bpd");
    let store = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
    let hl_dir = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;

    let impls = [
        Implementation {
            label: "calico + calico-ipam",
            cni_path: args.ours.clone(),
            conf: serde_json::json!({
                "cniVersion": "1.0.0", "name": "bench-net", "type": "calico",
                "datastore_type": "file", "datastore_path": store.path(),
                "nodename": "bench-node", "mtu": 1500, "log_level": "warning",
                "ipam": {"type": "calico-ipam", "ipv4_pools": ["10.77.0.0/16"]}
            }),
        },
        Implementation {
            label: "ptp + host-local",
            cni_path: args.reference.clone(),
            conf: serde_json::json!({
                "cniVersion": "1.0.0", "name": "bench-net", "type": "ptp", "mtu": 1500,
                "ipam": {"type": "host-local", "subnet": "10.78.0.0/16", "dataDir": hl_dir.path()}
            }),
        },
    ];

    // All plugin processes are spawned from one thread that has entered the
    // node netns: a child inherits the namespaces of the thread that forks it,
    // so host-side veths land in the node, never in the root namespace.
    let node_path = node.path();
    let pod_path = pod.path();
    let iterations = args.iterations;
    let warmup = args.warmup;
    let (results, mut floor) = std::thread::scope(|s| {
        s.spawn(|| -> Result<(Vec<Samples>, Vec<Duration>), String> {
            let ns = File::open(&node_path).map_err(|e| format!("open {}: {e}", node_path.display()))?;
            setns(&ns, CloneFlags::CLONE_NEWNET).map_err(|e| format!("setns node: {e}"))?;
            let mut samples: Vec<Samples> = impls.iter().map(|_| Samples::default()).collect();
            let mut nl = netlink_util::Netlink::new().map_err(|e| format!("netlink in node netns: {e}"))?;
            let pod_ns = netlink_util::Netns::open(&pod_path).map_err(|e| format!("open pod netns: {e}"))?;
            let mut floor = Vec::new();
            for i in 0..warmup + iterations {
                for (k, imp) in impls.iter().enumerate() {
                    let id = format!("bench{k}{i:07}");
                    let (add, rss_a) = call(imp, "ADD", &id, &pod_path, i)?;
                    let (del, rss_d) = call(imp, "DEL", &id, &pod_path, i)?;
                    if i >= warmup {
                        let s = &mut samples[k];
                        s.add.push(add);
                        s.del.push(del);
                        s.cycle.push(add + del);
                        s.peak_rss_kib = s.peak_rss_kib.max(rss_a).max(rss_d);
                    }
                }
            }
            // Measured on its own afterwards: interleaved, one deletion's grace
            // period overlaps the next plugin's DEL and skews both.
            for i in 0..warmup + iterations {
                let f = veth_delete_floor(&mut nl, &pod_ns)?;
                if i >= warmup {
                    floor.push(f);
                }
            }
            Ok((samples, floor))
        })
        .join()
        .map_err(|_| "benchmark thread panicked".to_string())?
    })?;

    floor.sort();
    report(&impls, &results, iterations, percentile(&floor, 0.5));
    Ok(())
}

/// Execute one plugin command and return its wall time and the peak RSS
/// (KiB) of the process and its waited-for children (the IPAM delegate).
fn call(
    imp: &Implementation,
    command: &str,
    id: &str,
    netns: &Path,
    i: usize,
) -> Result<(Duration, i64), String> {
    let plugin = imp.cni_path.join(imp.conf["type"].as_str().unwrap_or_default());
    let stdin = serde_json::to_vec(&imp.conf).map_err(|e| e.to_string())?;
    let out = plugin::exec(
        &plugin::Call {
            plugin: &plugin,
            cni_path: &imp.cni_path,
            command,
            container_id: id,
            netns,
            pod_name: &format!("pod-{i}"),
        },
        &stdin,
    )
    .map_err(|e| format!("{}: {e}", imp.label))?;
    Ok((out.elapsed, out.peak_rss_kib))
}

fn report(impls: &[Implementation], results: &[Samples], n: usize, floor: Duration) {
    println!("CNI ADD+DEL cycle, {n} iterations each, alternating implementations (times in ms)");
    println!(
        "{:<22} {:>9} {:>9} {:>9} {:>9} {:>11} {:>11} {:>13}",
        "implementation",
        "ADD p50",
        "ADD p90",
        "DEL p50",
        "DEL p90",
        "cycle p50",
        "cycle p90",
        "peak RSS MiB"
    );
    let mut medians = Vec::new();
    let mut add_medians = Vec::new();
    for (imp, s) in impls.iter().zip(results) {
        let mut add = s.add.clone();
        let mut del = s.del.clone();
        let mut cyc = s.cycle.clone();
        add.sort();
        del.sort();
        cyc.sort();
        medians.push(percentile(&cyc, 0.5));
        add_medians.push(percentile(&add, 0.5));
        println!(
            "{:<22} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>11.2} {:>11.2} {:>13.2}",
            imp.label,
            ms(percentile(&add, 0.5)),
            ms(percentile(&add, 0.9)),
            ms(percentile(&del, 0.5)),
            ms(percentile(&del, 0.9)),
            ms(percentile(&cyc, 0.5)),
            ms(percentile(&cyc, 0.9)),
            s.peak_rss_kib as f64 / 1024.0
        );
    }
    if let (&[ours, reference], &[ours_add, reference_add]) = (&medians[..], &add_medians[..]) {
        let ratio = ours.as_secs_f64() / reference.as_secs_f64().max(f64::MIN_POSITIVE);
        println!("ratio ours/reference, median ADD+DEL: {ratio:.2}");
        let add_ratio = ours_add.as_secs_f64() / reference_add.as_secs_f64().max(f64::MIN_POSITIVE);
        println!(
            "ratio ours/reference, median ADD: {add_ratio:.2} (target <= 0.50: {})",
            if add_ratio <= 0.50 { "met" } else { "NOT met" }
        );
        // What a plugin adds to the one step no DEL can skip.
        let beyond = |d: Duration| d.as_secs_f64() - floor.as_secs_f64();
        let beyond_ratio = beyond(ours) / beyond(reference).max(f64::MIN_POSITIVE);
        println!(
            "cycle beyond the kernel's veth deletion, (ours - floor) / (reference - floor): \
             ({:.2} - {:.2}) / ({:.2} - {:.2}) = {beyond_ratio:.2} (target <= 0.40: {})",
            ms(ours),
            ms(floor),
            ms(reference),
            ms(floor),
            if beyond_ratio <= 0.40 { "met" } else { "NOT met" }
        );
        println!(
            "kernel floor: deleting one veth pair (RTM_DELLINK alone, no process) median {:.2} ms; \
             with a reference cycle of {:.2} ms, no plugin that deletes its veth before DEL returns \
             can go below a ratio of {:.2}",
            ms(floor),
            ms(reference),
            floor.as_secs_f64() / reference.as_secs_f64().max(f64::MIN_POSITIVE)
        );
        if let Some(tick) = kernel_tick() {
            let t = |d: Duration| d.as_secs_f64() / tick.as_secs_f64();
            println!(
                "kernel tick {:.2} ms: a grace period ends on a tick, so cycles come in whole ticks: \
                 ours p50 {:.2} ticks, reference {:.2}, the veth deletion alone {:.2}",
                ms(tick),
                t(ours),
                t(reference),
                t(floor)
            );
            for (imp, s) in impls.iter().zip(results) {
                println!("  {:<22} cycles by ticks: {}", imp.label, tick_histogram(&s.cycle, tick));
            }
        }
        let rss = results[0].peak_rss_kib as f64 / 1024.0;
        println!(
            "peak RSS of calico/calico-ipam: {rss:.2} MiB (target <= 10 MiB: {})",
            if rss <= 10.0 { "met" } else { "NOT met" }
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cycles_are_counted_by_whole_ticks() {
        let ms = |v: f64| Duration::from_secs_f64(v / 1000.0);
        let cycles = [ms(19.6), ms(20.4), ms(23.7), ms(24.1), ms(28.2)];
        assert_eq!(tick_histogram(&cycles, ms(4.0)), "5: 40%, 6: 40%, 7: 20%");
        assert_eq!(tick_histogram(&[], ms(4.0)), "");
    }
}
