//! `kube-proxy-api-bench`: network programming latency of
//! `kube-proxy-rules run` following the Kubernetes API, for `make bench`.
//!
//! In a namespace of its own: the test API server (`kube-apiserver-fixture`)
//! on the namespace's loopback holding N Services × M endpoints (one
//! EndpointSlice each), `kube-proxy-rules run --master …` (the release
//! binary next to this one) in the namespace. After the first (full) sync,
//! `--changes` times: one EndpointSlice's endpoint changes on the server
//! (the watch event goes out), and the clock runs until `run` reports the
//! sync that applied it (its log line is written once `iptables-restore` or
//! `nft -f` returned: the rules are committed in the kernel). p50 and p99 of
//! that latency, and of its parts as `run` measured them (building the
//! state, rendering, applying); then `run`'s peak RSS (VmHWM), and again
//! after a restart onto the populated table (a full sync that lists what
//! the kernel holds).
//!
//! `--legacy-iptables`: run iptables mode against the legacy iptables
//! binaries (a PATH of symlinks): the nf_tables `iptables-restore` 1.8.9
//! here does not finish 10,000 services' full restore within an hour.
//!
//! Owns its namespace (removed on exit, even on failure), its temporary
//! directory and the `run` process. Writes its table to stdout.

use std::fs::File;
use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use kube_apiserver_fixture::{ApiServer, ENDPOINT_SLICES, NODES, SERVICES};
use serde_json::{json, Value};
use testbed::{percentile, Netns};

#[derive(Debug, Parser)]
#[command(
    name = "kube-proxy-api-bench",
    about = "kube-proxy-rules run: watch event to rules committed, p50/p99"
)]
struct Cli {
    /// iptables or nftables
    #[arg(long, default_value = "iptables")]
    proxy_mode: String,
    #[arg(long, default_value_t = 1000)]
    services: usize,
    #[arg(long, default_value_t = 10)]
    endpoints: usize,
    /// EndpointSlice changes timed
    #[arg(long, default_value_t = 100)]
    changes: usize,
    /// iptables mode through iptables-legacy(-restore|-save)
    #[arg(long)]
    legacy_iptables: bool,
    /// nftables mode: kube-proxy or endpoint-maps (run's default when unset)
    #[arg(long)]
    nftables_layout: Option<String>,
    /// The kube-proxy-rules binary (default: next to this one)
    #[arg(long)]
    bin: Option<PathBuf>,
}

fn service(i: usize) -> Value {
    let ip = format!("10.{}.{}.{}", 96 + i / 65_536, (i / 256) % 256, i % 256);
    json!({
        "metadata": {"name": format!("svc-{i}"), "namespace": "bench"},
        "spec": {"type": "ClusterIP", "clusterIP": ip, "clusterIPs": [ip], "ipFamilies": ["IPv4"],
                 "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]}
    })
}

fn slice(i: usize, endpoints: usize, generation: usize) -> Value {
    let eps: Vec<Value> = (0..endpoints)
        .map(|e| {
            // Generation g moves the first endpoint: one endpoint changes per event.
            let n = i * endpoints + e + if e == 0 { generation * 7919 } else { 0 };
            let ip = format!("10.{}.{}.{}", 128 + (n / 65_536) % 64, (n / 256) % 256, n % 256);
            json!({"addresses": [ip], "conditions": {"ready": true}, "nodeName": "node1"})
        })
        .collect();
    json!({
        "metadata": {"name": format!("svc-{i}-1"), "namespace": "bench",
                     "labels": {"kubernetes.io/service-name": format!("svc-{i}")}},
        "addressType": "IPv4",
        "endpoints": eps,
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
    })
}

/// A Rust `Debug` duration (`1.5ms`, `830µs`, `2.1s`, `12ns`).
fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| c.is_alphabetic() || c == 'µ')?);
    let v: f64 = num.parse().ok()?;
    let secs = match unit {
        "s" => v,
        "ms" => v / 1e3,
        "µs" | "us" => v / 1e6,
        "ns" => v / 1e9,
        _ => return None,
    };
    Some(Duration::from_secs_f64(secs))
}

/// The parts of a sync line: (state, render, apply).
fn parts(line: &str) -> Option<(Duration, Duration, Duration)> {
    let inner = line.rsplit_once("(state ")?.1.strip_suffix(')')?;
    let mut it = inner.split(", ");
    let state = parse_duration(it.next()?)?;
    let render = parse_duration(it.next()?.strip_prefix("render ")?)?;
    let apply = parse_duration(it.next()?.strip_prefix("apply ")?)?;
    Some((state, render, apply))
}

/// Follows `run`'s log as it grows.
struct LogTail {
    file: File,
    buf: String,
}

impl LogTail {
    /// The next complete line containing `needle`, or an error at the deadline.
    fn next_line(&mut self, needle: &str, deadline: Instant, child: &mut Child) -> Result<String, String> {
        loop {
            while let Some(nl) = self.buf.find('\n') {
                let line: String = self.buf.drain(..=nl).collect();
                if line.contains(needle) {
                    return Ok(line.trim_end().to_string());
                }
                if line.contains("sync failed") || line.contains("error:") {
                    eprintln!("run: {}", line.trim_end());
                }
            }
            let mut more = String::new();
            self.file.read_to_string(&mut more).map_err(|e| e.to_string())?;
            if more.is_empty() {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(format!("run exited ({status})"));
                }
                if Instant::now() > deadline {
                    return Err(format!("no {needle:?} in time"));
                }
                std::thread::sleep(Duration::from_micros(500));
            }
            self.buf.push_str(&more);
        }
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// PATH with iptables, iptables-restore, iptables-save (and ip6 twins) as
/// the legacy binaries.
fn legacy_path(dir: &Path) -> Result<String, String> {
    for fam in ["iptables", "ip6tables"] {
        for suffix in ["", "-restore", "-save"] {
            let target = format!("/usr/sbin/{fam}-legacy{suffix}");
            std::os::unix::fs::symlink(&target, dir.join(format!("{fam}{suffix}")))
                .map_err(|e| format!("symlink {target}: {e}"))?;
        }
    }
    Ok(format!("{}:{}", dir.display(), std::env::var("PATH").unwrap_or_default()))
}

fn run(cli: &Cli) -> Result<(), String> {
    let bin = match &cli.bin {
        Some(b) => b.clone(),
        None => std::env::current_exe().map_err(|e| e.to_string())?.with_file_name("kube-proxy-rules"),
    };
    let ns = Netns::create(&testbed::unique("kpab")).map_err(|e| e.to_string())?;
    let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
    let listener = {
        let path = ns.path();
        std::thread::spawn(move || -> Result<TcpListener, String> {
            let fd = File::open(&path).map_err(|e| e.to_string())?;
            nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| e.to_string())?;
            TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())
        })
        .join()
        .map_err(|_| "binding in the namespace panicked".to_string())??
    };
    let api = ApiServer::serve(listener);
    api.create(
        NODES,
        json!({"metadata": {"name": "node1"},
        "status": {"addresses": [{"type": "InternalIP", "address": "192.0.2.1"}]}}),
    );
    for i in 0..cli.services {
        api.create(SERVICES, service(i));
        api.create(ENDPOINT_SLICES, slice(i, cli.endpoints, 0));
    }
    let log_path = tmp.path().join("run.log");
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns.name()])
        .arg(&bin)
        .args([
            "run",
            "--proxy-mode",
            &cli.proxy_mode,
            "--master",
            &api.url(),
            "--hostname-override",
            "node1",
        ])
        // No periodic sync or canary check in the way of the changes (the
        // canary check lists the table), except with the legacy binaries: a
        // sync that failed on the xtables lock another process held is
        // retried after the sync period.
        .args(["--sync-period", if cli.legacy_iptables { "10s" } else { "1h" }, "--min-sync-period", "0s"])
        .args(["--healthz-bind-address=", "--metrics-bind-address="])
        .arg("--state-dir")
        .arg(tmp.path().join("state"))
        .args(cli.nftables_layout.iter().flat_map(|l| ["--nftables-layout", l.as_str()]))
        .stdout(Stdio::null())
        .stderr(File::create(&log_path).map_err(|e| e.to_string())?);
    if cli.legacy_iptables {
        let shims = tmp.path().join("legacy");
        std::fs::create_dir(&shims).map_err(|e| e.to_string())?;
        cmd.env("PATH", legacy_path(&shims)?);
    }
    let started = Instant::now();
    let mut child = cmd.spawn().map_err(|e| format!("{}: {e}", bin.display()))?;
    let result = (|| {
        let mut tail =
            LogTail { file: File::open(&log_path).map_err(|e| e.to_string())?, buf: String::new() };
        let first = tail.next_line("synced (", Instant::now() + Duration::from_secs(3600), &mut child)?;
        let first_took = started.elapsed();
        let mut total = Vec::new();
        let mut skipped = 0;
        let (mut state, mut render, mut apply) = (Vec::new(), Vec::new(), Vec::new());
        for c in 0..cli.changes {
            let i = (c * 7919) % cli.services;
            let t0 = Instant::now();
            api.update(ENDPOINT_SLICES, slice(i, cli.endpoints, c + 1));
            // The sync that applied it (one changed service); a sync that
            // started before the event arrived may come first.
            let line = loop {
                let line =
                    tail.next_line("synced (", Instant::now() + Duration::from_secs(600), &mut child)?;
                if line.contains(" 1 services changed") {
                    break line;
                }
                skipped += 1;
            };
            total.push(t0.elapsed());
            if let Some((s, r, a)) = parts(&line) {
                state.push(s);
                render.push(r);
                apply.push(a);
            }
        }
        // The last change is in the kernel's rules.
        let last = (cli.changes.saturating_sub(1) * 7919) % cli.services;
        let want = slice(last, cli.endpoints, cli.changes)["endpoints"][0]["addresses"][0]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let rules = if cli.proxy_mode == "nftables" {
            // kube-proxy's layout names an endpoint chain after its
            // endpoint; endpoint-maps holds it in the TCP map.
            let chains = ns.try_exec(&["nft", "list", "chains", "ip"])?;
            let map =
                ns.try_exec(&["nft", "list", "map", "ip", "kube-proxy", "endpoint-dnat"]).unwrap_or_default();
            chains + &map
        } else {
            let save = if cli.legacy_iptables { "iptables-legacy-save" } else { "iptables-save" };
            ns.try_exec(&[save, "-t", "nat"])?
        };
        if cli.changes > 0 && !rules.contains(&want) {
            return Err(format!("the last change ({want}) is not in the kernel's rules"));
        }
        let hwm = peak_rss_mib(&child)?;
        for v in [&mut total, &mut state, &mut render, &mut apply] {
            v.sort();
        }
        let mode = match (&cli.nftables_layout, cli.legacy_iptables) {
            (_, true) => "iptables (legacy)".to_string(),
            (Some(layout), false) => format!("{} ({layout} layout)", cli.proxy_mode),
            (None, false) => cli.proxy_mode.clone(),
        };
        println!(
            "{mode}, {} services x {} endpoints: first full sync {:.1} s after start ({})",
            cli.services,
            cli.endpoints,
            first_took.as_secs_f64(),
            first.split(", ").next().unwrap_or("")
        );
        println!(
            "  {:<38} {:>10} {:>10}",
            format!("over {} EndpointSlice changes", total.len()),
            "p50",
            "p99"
        );
        for (what, v) in [
            ("watch event -> rules committed", &total),
            ("  state from the cache", &state),
            ("  render", &render),
            ("  apply (restore / nft -f)", &apply),
        ] {
            println!("  {what:<38} {:>10} {:>10}", ms(percentile(v, 0.5)), ms(percentile(v, 0.99)));
        }
        if skipped > 0 {
            println!("  ({skipped} sync(s) with no change in between, not counted)");
        }
        println!(
            "  run's peak RSS (VmHWM): {hwm:.1} MiB (kube-proxy nftables, 10k services: ~260 MiB reported; target <= 100 MiB)"
        );
        // A restart onto the populated table (kube-proxy's restarts and
        // upgrades): the new process's first sync is a full one that also
        // lists what the kernel holds (iptables-save -t nat, nft list), so
        // its peak is the other one to know.
        let _ = child.kill();
        let _ = child.wait();
        let restarted = Instant::now();
        child = cmd.spawn().map_err(|e| format!("{}: {e}", bin.display()))?;
        tail.next_line("synced (", Instant::now() + Duration::from_secs(3600), &mut child)?;
        let took = restarted.elapsed();
        println!(
            "  restarted onto the populated table: first full sync {:.1} s, peak RSS (VmHWM) {:.1} MiB",
            took.as_secs_f64(),
            peak_rss_mib(&child)?
        );
        Ok(())
    })();
    let _ = child.kill();
    let _ = child.wait();
    drop(api);
    drop(ns);
    if result.is_err() {
        eprintln!("run's log:\n{}", std::fs::read_to_string(&log_path).unwrap_or_default());
    }
    result
}

/// A process's peak RSS (VmHWM), in MiB.
fn peak_rss_mib(child: &Child) -> Result<f64, String> {
    let mut status = String::new();
    File::open(format!("/proc/{}/status", child.id()))
        .and_then(|mut f| f.read_to_string(&mut status))
        .map_err(|e| e.to_string())?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or("no VmHWM in /proc/<pid>/status")?;
    Ok(kib as f64 / 1024.0)
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kube-proxy-api-bench: error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_runs_sync_lines() {
        let line = "synced (partial): 1 services changed, 3 chains written, 0 stale chains deleted, 12.5ms (state 3.2ms, render 830µs, apply 11.67ms)";
        let (s, r, a) = parts(line).unwrap();
        assert_eq!(s, Duration::from_micros(3200));
        assert_eq!(r, Duration::from_micros(830));
        assert_eq!(a, Duration::from_micros(11_670));
        assert_eq!(parse_duration("2.5s"), Some(Duration::from_millis(2500)));
    }
}
