//! # cni-bench: ours against the reference plugins, same run
//!
//! Owns the CNI benchmarks of `make bench`, both comparing
//! * ours: `calico` delegating to `calico-ipam`, and
//! * the reference: Debian's `ptp` delegating to `host-local`.
//!
//! Default mode ([`cycle`]): sequential ADD then DEL of one pod, alternating
//! the two so drift (page cache, CPU frequency, the other core's load) hits
//! both alike; medians, p90, the ratio and the peak RSS of each plugin process
//! tree (`wait4` rusage).
//!
//! `--throughput` ([`throughput`]): 3 logical nodes × N pods, C full-pod ADDs
//! in flight at once, then DEL of every pod, for ours on a real etcd, ours on
//! the file store and the reference: pods/s, p50/p99 ADD latency, duplicate
//! addresses and what is left after DEL (both must be zero; exit code 1
//! otherwise).
//!
//! Everything runs inside namespaces this program creates and removes.
//! May call: the plugin binaries, `ip netns` and `etcd` (through `testbed`),
//! the datastore read side (`ipam-block::ops`). Touches nothing in the root
//! namespace.

mod cycle;
mod plugin;
mod throughput;

use std::path::{Path, PathBuf};

enum Mode {
    Cycle(cycle::CycleArgs),
    Throughput(throughput::ThroughputArgs),
}

const USAGE: &str = "usage: cni-bench [--iterations N] [--warmup N] [--ours DIR] [--reference DIR]\n       \
cni-bench --throughput [--pods-per-node N] [--concurrency N] [--etcd-relay] [--ours DIR] [--reference DIR]";

fn parse_args() -> Result<Mode, String> {
    let exe_dir = std::env::current_exe()
        .map_err(|e| format!("current_exe: {e}"))?
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let (mut iterations, mut warmup) = (200usize, 10usize);
    let (mut per_node, mut concurrency) = (300usize, 32usize);
    let (mut throughput, mut relay) = (false, false);
    let (mut ours, mut reference) = (exe_dir, PathBuf::from("/usr/lib/cni"));
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut val = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        let num = |name: &str, v: String| v.parse::<usize>().map_err(|e| format!("{name} {v:?}: {e}"));
        match a.as_str() {
            "--iterations" | "-n" => iterations = num(&a, val(&a)?)?,
            "--warmup" => warmup = num(&a, val(&a)?)?,
            "--throughput" => throughput = true,
            "--etcd-relay" => relay = true,
            "--pods-per-node" => per_node = num(&a, val(&a)?)?,
            "--concurrency" => concurrency = num(&a, val(&a)?)?,
            "--ours" => ours = PathBuf::from(val(&a)?),
            "--reference" => reference = PathBuf::from(val(&a)?),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    for (dir, bins) in [(&ours, ["calico", "calico-ipam"]), (&reference, ["ptp", "host-local"])] {
        for b in bins {
            if !dir.join(b).exists() {
                return Err(format!(
                    "{} not found (make build; apt-get install containernetworking-plugins)",
                    dir.join(b).display()
                ));
            }
        }
    }
    if throughput {
        if per_node == 0 || concurrency == 0 {
            return Err("--pods-per-node and --concurrency must be at least 1".into());
        }
        return Ok(Mode::Throughput(throughput::ThroughputArgs {
            per_node,
            concurrency,
            ours,
            reference,
            relay,
        }));
    }
    if iterations == 0 {
        return Err("--iterations must be at least 1".into());
    }
    Ok(Mode::Cycle(cycle::CycleArgs { iterations, warmup, ours, reference }))
}

fn main() {
    let mode = match parse_args() {
        Ok(m) => m,
        Err(e) => {
            eprintln!("cni-bench: {e}");
            std::process::exit(2);
        }
    };
    let result = match mode {
        Mode::Cycle(args) => cycle::run(&args).map(|()| true),
        Mode::Throughput(args) => throughput::run(&args),
    };
    match result {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("cni-bench: {e}");
            std::process::exit(1);
        }
    }
}
