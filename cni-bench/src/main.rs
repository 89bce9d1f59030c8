//! # cni-bench: ADD+DEL cycles, ours against the reference plugins, same run
//!
//! Owns the CNI latency/memory benchmark of `make bench`. For each iteration it
//! executes, as a runtime would, `ADD` then `DEL` of one pod for
//! * ours: `calico` delegating to `calico-ipam` (embedded file store), and
//! * the reference: Debian's `ptp` delegating to `host-local`,
//!
//! alternating the two so drift (page cache, CPU frequency, the other core's
//! load) hits both alike. Everything runs inside namespaces this program
//! creates and removes: a "node" netns that the plugins run in and a pod netns
//! reused across iterations (DEL leaves it empty). It prints medians, p90 and
//! the ratio, and the peak RSS of each plugin process tree (`wait4` rusage).
//!
//! May call: the plugin binaries, `ip netns` (through `testbed`). Touches
//! nothing in the root namespace.

use std::ffi::OsStr;
use std::fs::File;
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sched::{setns, CloneFlags};

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

struct Args {
    iterations: usize,
    warmup: usize,
    ours: PathBuf,
    reference: PathBuf,
}

fn parse_args() -> Result<Args, String> {
    let exe_dir = std::env::current_exe()
        .map_err(|e| format!("current_exe: {e}"))?
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let mut args =
        Args { iterations: 200, warmup: 10, ours: exe_dir, reference: PathBuf::from("/usr/lib/cni") };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut val = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match a.as_str() {
            "--iterations" | "-n" => {
                args.iterations = val(&a)?.parse().map_err(|e| format!("--iterations: {e}"))?
            }
            "--warmup" => args.warmup = val(&a)?.parse().map_err(|e| format!("--warmup: {e}"))?,
            "--ours" => args.ours = PathBuf::from(val(&a)?),
            "--reference" => args.reference = PathBuf::from(val(&a)?),
            "-h" | "--help" => {
                println!("usage: cni-bench [--iterations N] [--warmup N] [--ours DIR] [--reference DIR]");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if args.iterations == 0 {
        return Err("--iterations must be at least 1".into());
    }
    Ok(args)
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("cni-bench: {e}");
            std::process::exit(2);
        }
    };
    for (dir, bins) in [(&args.ours, ["calico", "calico-ipam"]), (&args.reference, ["ptp", "host-local"])] {
        for b in bins {
            if !dir.join(b).exists() {
                eprintln!(
                    "cni-bench: {} not found (make build; apt-get install containernetworking-plugins)",
                    dir.join(b).display()
                );
                std::process::exit(2);
            }
        }
    }
    if let Err(e) = run(&args) {
        eprintln!("cni-bench: {e}");
        std::process::exit(1);
    }
}

fn run(args: &Args) -> Result<(), String> {
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
    let results = std::thread::scope(|s| {
        s.spawn(|| -> Result<Vec<Samples>, String> {
            let ns = File::open(&node_path).map_err(|e| format!("open {}: {e}", node_path.display()))?;
            setns(&ns, CloneFlags::CLONE_NEWNET).map_err(|e| format!("setns node: {e}"))?;
            let mut samples: Vec<Samples> = impls.iter().map(|_| Samples::default()).collect();
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
            Ok(samples)
        })
        .join()
        .map_err(|_| "benchmark thread panicked".to_string())?
    })?;

    report(&impls, &results, iterations);
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
    let start = Instant::now();
    let mut child = Command::new(&plugin)
        .env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", &imp.cni_path)
        .env("CNI_ARGS", format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME=pod-{i}"))
        .env("PATH", std::env::var_os("PATH").unwrap_or_else(|| OsStr::new("/usr/bin:/bin").into()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawn {}: {e}", plugin.display()))?;
    if let Some(mut w) = child.stdin.take() {
        w.write_all(&stdin).map_err(|e| format!("write stdin: {e}"))?;
    }
    // Read the pipes before reaping so a chatty plugin cannot block on them.
    let mut out = Vec::new();
    let mut err = Vec::new();
    if let Some(mut o) = child.stdout.take() {
        std::io::Read::read_to_end(&mut o, &mut out).map_err(|e| format!("read stdout: {e}"))?;
    }
    if let Some(mut e) = child.stderr.take() {
        std::io::Read::read_to_end(&mut e, &mut err).map_err(|e| format!("read stderr: {e}"))?;
    }
    let mut status: libc::c_int = 0;
    // SAFETY: an all-zero rusage is a valid value to be overwritten by wait4.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waiting for our own child's pid with valid out-pointers.
    let r = unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut usage) };
    let elapsed = start.elapsed();
    if r < 0 {
        return Err(format!("wait4: {}", std::io::Error::last_os_error()));
    }
    let exit = std::process::ExitStatus::from_raw(status);
    if !exit.success() {
        return Err(format!(
            "{} {command} {id} failed ({exit}): {}{}",
            imp.label,
            String::from_utf8_lossy(&out),
            String::from_utf8_lossy(&err)
        ));
    }
    Ok((elapsed, usage.ru_maxrss))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn report(impls: &[Implementation], results: &[Samples], n: usize) {
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
    for (imp, s) in impls.iter().zip(results) {
        let mut add = s.add.clone();
        let mut del = s.del.clone();
        let mut cyc = s.cycle.clone();
        add.sort();
        del.sort();
        cyc.sort();
        medians.push(percentile(&cyc, 0.5));
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
    if let [ours, reference] = medians[..] {
        let ratio = ours.as_secs_f64() / reference.as_secs_f64().max(f64::MIN_POSITIVE);
        println!(
            "ratio ours/reference, median ADD+DEL: {ratio:.2} (target <= 0.70: {})",
            if ratio <= 0.70 { "met" } else { "NOT met" }
        );
        let rss = results[0].peak_rss_kib as f64 / 1024.0;
        println!(
            "peak RSS of calico/calico-ipam: {rss:.2} MiB (target <= 10 MiB: {})",
            if rss <= 10.0 { "met" } else { "NOT met" }
        );
    }
}
