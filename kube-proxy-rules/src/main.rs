//! `kube-proxy-rules`: kube-proxy's service rules (iptables or nftables mode)
//! from manifests and Calico pod records. See `kube-proxy-rules --help`.
//!
//! Owns the command line's exit codes and the `bench` subcommand ([`bench`]:
//! the synthetic scale benchmark and its generator, which the integration
//! tests share through `tests/support`); every other subcommand is the
//! library's [`kube_proxy_rules::commands`]. Never writes anything but a
//! payload (or the bench's table) to stdout.

mod bench;

use kube_proxy_rules::cli::{Args, Command};
use kube_proxy_rules::commands;

fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let args = match Args::parse(&argv) {
        Ok(a) => a,
        Err(msg) => {
            eprintln!("{msg}");
            std::process::exit(2);
        }
    };
    let result = match args.command {
        Command::Bench => bench::run(&args),
        _ => commands::run(&args),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(msg) => {
            eprintln!("kube-proxy-rules: {msg}");
            std::process::exit(1);
        }
    }
}
