//! # cni-bench: ours against the reference plugins, same run
//!
//! The benchmarks' crate (never shipped). This binary owns the CNI
//! benchmarks of `make bench`; its other binaries are `ipam-bench` (IPAM
//! alone: etcd requests per allocation, and calico-ipam against host-local)
//! and `kube-proxy-api-bench` (`kube-proxy-rules run` following a test API
//! server). The CNI benchmarks both compare
//! * ours: `calico` with Calico IPAM (`calico-ipam`, which `calico` runs in
//!   its own process), and
//! * the reference: Debian's `ptp` delegating to `host-local`.
//!
//! Default mode ([`cycle`]): sequential ADD then DEL of one pod, alternating
//! the two so drift (page cache, CPU frequency, the other core's load) hits
//! both alike; medians, p90, the ratios (median ADD; the cycle beyond the
//! kernel's own veth deletion) and the peak RSS of each plugin process tree
//! (`wait4` rusage).
//!
//! `--throughput` ([`throughput`]): 3 logical nodes × N pods, C full-pod ADDs
//! in flight at once, then DEL of every pod, for ours on a real etcd, ours on
//! the file store and the reference: pods/s, p50/p99 ADD latency, the file
//! store's pods/s and p99 against the reference's, duplicate addresses and
//! what is left after DEL (both must be zero; exit code 1 otherwise).
//!
//! Everything runs inside namespaces this program creates and removes.
//! Owns its command line (clap; `cni-bench --help`) and exit codes: 0 done,
//! 1 a failure or a dirty throughput run (`cni-bench: error: …`), 2 bad
//! usage or missing plugin binaries. The tables go to stdout, progress and
//! diagnostics to stderr through `tool_cli`'s logger (`-v`, `--log-level`).
//! May call: the plugin binaries, `ip netns` and `etcd` (through `testbed`),
//! the datastore read side (`ipam-block::ops`). Touches nothing in the root
//! namespace.

mod cycle;
mod plugin;
mod throughput;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::builder::RangedU64ValueParser;
use clap::Parser;
use tool_cli::LogArgs;

const TOOL: &str = "cni-bench";

/// `cni-bench`'s command line.
#[derive(Debug, Parser)]
#[command(
    name = "cni-bench",
    version,
    about = "CNI benchmarks: ADD+DEL cycles (default) or full-pod throughput (--throughput), \
             our calico + calico-ipam against Debian's ptp + host-local",
    args_override_self = true
)]
struct Cli {
    #[command(flatten)]
    log: LogArgs,
    /// Full-pod throughput: 3 nodes x N pods, C ADDs in flight, on etcd, the file store and the
    /// reference
    #[arg(long)]
    throughput: bool,
    /// ADD+DEL cycles measured per implementation
    #[arg(short = 'n', long, value_name = "N", default_value_t = 200, conflicts_with = "throughput",
          value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    iterations: usize,
    /// Unmeasured cycles first
    #[arg(long, value_name = "N", default_value_t = 10, conflicts_with = "throughput")]
    warmup: usize,
    /// Pods per node (--throughput)
    #[arg(long, value_name = "N", default_value_t = 300, requires = "throughput",
          value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    pods_per_node: usize,
    /// ADDs in flight (--throughput)
    #[arg(long, value_name = "N", default_value_t = 32, requires = "throughput",
          value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    concurrency: usize,
    /// One netns per node, etcd reached through a relay (--throughput)
    #[arg(long, requires = "throughput")]
    etcd_relay: bool,
    /// Directory of our calico and calico-ipam [default: this program's directory]
    #[arg(long, value_name = "DIR")]
    ours: Option<PathBuf>,
    /// Directory of ptp and host-local
    #[arg(long, value_name = "DIR", default_value = "/usr/lib/cni")]
    reference: PathBuf,
}

enum Mode {
    Cycle(cycle::CycleArgs),
    Throughput(throughput::ThroughputArgs),
}

/// The benchmark `cli` asks for, its plugin binaries checked (missing ones
/// are a usage error: the directories are the user's choice).
fn mode(cli: Cli) -> Result<Mode, clap::Error> {
    let ours = match cli.ours {
        Some(d) => d,
        None => std::env::current_exe()
            .map_err(|e| tool_cli::usage_error::<Cli>(format!("current_exe: {e}")))?
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default(),
    };
    let reference = cli.reference;
    for (dir, bins) in [(&ours, ["calico", "calico-ipam"]), (&reference, ["ptp", "host-local"])] {
        for b in bins {
            if !dir.join(b).exists() {
                return Err(tool_cli::usage_error::<Cli>(format!(
                    "{} not found (make build; apt-get install containernetworking-plugins)",
                    dir.join(b).display()
                )));
            }
        }
    }
    Ok(if cli.throughput {
        Mode::Throughput(throughput::ThroughputArgs {
            per_node: cli.pods_per_node,
            concurrency: cli.concurrency,
            ours,
            reference,
            relay: cli.etcd_relay,
        })
    } else {
        Mode::Cycle(cycle::CycleArgs { iterations: cli.iterations, warmup: cli.warmup, ours, reference })
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = tool_cli::Logging::new(TOOL).init(&cli.log) {
        return tool_cli::finish::<ExitCode, _>(TOOL, Err(e));
    }
    let result = match mode(cli).unwrap_or_else(|e| e.exit()) {
        Mode::Cycle(args) => cycle::run(&args),
        Mode::Throughput(args) => throughput::run(&args).and_then(|clean| {
            if clean {
                Ok(())
            } else {
                Err("duplicate addresses or leftovers after DEL (see the table)".into())
            }
        }),
    };
    tool_cli::finish(TOOL, result.map(|()| ExitCode::SUCCESS))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::error::ErrorKind;

    fn parse(argv: &[&str]) -> Result<Cli, clap::Error> {
        tool_cli::try_parse_without_env(std::iter::once("cni-bench").chain(argv.iter().copied()))
    }

    #[test]
    fn the_makefile_invocations_and_each_spelling() {
        // make bench: `--ours DIR`, `--throughput --ours DIR`.
        let c = parse(&["--ours", "target/x/release"]).unwrap();
        assert_eq!((c.throughput, c.iterations, c.warmup), (false, 200, 10));
        assert_eq!(c.ours, Some(PathBuf::from("target/x/release")));
        let c = parse(&["--throughput", "--ours=target/x/release"]).unwrap();
        assert!(c.throughput && !c.etcd_relay);
        assert_eq!((c.pods_per_node, c.concurrency), (300, 32));
        assert_eq!(c.reference, PathBuf::from("/usr/lib/cni"));
        let c = parse(&["-n", "5", "--warmup=1", "--reference", "/opt/cni/bin"]).unwrap();
        assert_eq!((c.iterations, c.warmup), (5, 1));
        assert_eq!(c.reference, PathBuf::from("/opt/cni/bin"));
        let c = parse(&["--throughput", "--pods-per-node", "10", "--concurrency=4", "--etcd-relay"]).unwrap();
        assert_eq!((c.pods_per_node, c.concurrency, c.etcd_relay), (10, 4, true));
        // What the old parser checked by hand.
        assert_eq!(parse(&["--iterations", "0"]).unwrap_err().kind(), ErrorKind::ValueValidation);
        assert_eq!(
            parse(&["--throughput", "--concurrency", "0"]).unwrap_err().kind(),
            ErrorKind::ValueValidation
        );
        assert_eq!(parse(&["--iterations", "x"]).unwrap_err().kind(), ErrorKind::ValueValidation);
        // A flag of the other mode is a usage error, not ignored.
        assert_eq!(parse(&["--concurrency", "4"]).unwrap_err().kind(), ErrorKind::MissingRequiredArgument);
        assert_eq!(parse(&["--throughput", "-n", "4"]).unwrap_err().kind(), ErrorKind::ArgumentConflict);
        assert_eq!(parse(&["--bogus"]).unwrap_err().kind(), ErrorKind::UnknownArgument);
        assert_eq!(parse(&["--help"]).unwrap_err().kind(), ErrorKind::DisplayHelp);
        assert_eq!(parse(&["-v"]).unwrap().log.verbose, 1);
    }

    #[test]
    fn missing_plugins_are_a_usage_error() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap();
        let Err(e) = mode(parse(&["--ours", d]).unwrap()) else { panic!("no plugins, yet a mode") };
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("calico not found"), "{e}");
    }
}
