//! `kube-proxy-rules`: kube-proxy's service rules (iptables or nftables mode)
//! from manifests and Calico pod records. See `kube-proxy-rules --help`.
//!
//! Owns the command line's exit codes (0 done, 1 a runtime error printed as
//! `kube-proxy-rules: error: …`, 2 bad usage, clap's), the process's logger
//! (`tool_cli`: diagnostics on stderr, `-v`/`--log-level`) and the `bench`
//! subcommand ([`bench`]: the synthetic scale benchmark and its generator,
//! which the integration tests share through `tests/support`); every other
//! subcommand is the library's [`kube_proxy_rules::commands`]. Never writes
//! anything but a payload (or the bench's table) to stdout.

mod bench;

use std::process::ExitCode;

use clap::Parser;
use kube_proxy_rules::cli::{Args, Cli, Command};
use kube_proxy_rules::commands;

const TOOL: &str = "kube-proxy-rules";

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = tool_cli::Logging::new(TOOL).init(&cli.log) {
        return tool_cli::finish::<ExitCode, _>(TOOL, Err(e));
    }
    let args = Args::from_cli(cli).unwrap_or_else(|e| e.exit());
    let result = match args.command {
        Command::Bench => bench::run(&args),
        _ => commands::run(&args),
    };
    tool_cli::finish(TOOL, result.map(|code| ExitCode::from(u8::try_from(code).unwrap_or(1))))
}
