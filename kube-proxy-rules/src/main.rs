//! `kube-proxy-rules`: kube-proxy's iptables rules from manifests and Calico
//! pod records. See `kube-proxy-rules --help`.

use kube_proxy_rules::{cli::Args, commands};

fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let args = match Args::parse(&argv) {
        Ok(a) => a,
        Err(msg) => {
            eprintln!("{msg}");
            std::process::exit(2);
        }
    };
    match commands::run(&args) {
        Ok(code) => std::process::exit(code),
        Err(msg) => {
            eprintln!("kube-proxy-rules: {msg}");
            std::process::exit(1);
        }
    }
}
