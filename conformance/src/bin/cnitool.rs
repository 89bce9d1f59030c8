//! cnitool: run a network's plugin chain against an existing netns, the same
//! CLI and environment as upstream's cnitool, so the usual recipes work:
//!
//! ```text
//! ip netns add test
//! CNI_PATH=/usr/lib/cni NETCONFPATH=/etc/cni/net.d cnitool add mynet /run/netns/test
//! ```
//!
//! Environment: `NETCONFPATH` (default /etc/cni/net.d), `CNI_PATH`,
//! `CNI_ARGS` (`K=V;K=V`), `CAP_ARGS` (JSON object of capability args),
//! `CNI_IFNAME` (default eth0). Extensions: `CNITOOL_CACHE_DIR` (default
//! /var/lib/cni), `CNITOOL_TIMEOUT` (seconds per plugin call, default 60),
//! `CNITOOL_VALID_ATTACHMENTS` (JSON list of `{"containerID","ifname"}` for
//! `gc`; without it, like upstream, no list is sent and everything is collected).
//! The container ID is `cnitool-` + the first 10 bytes (20 hex digits) of
//! sha512(absolute netns path), as upstream derives it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use conformance::{load_conf_list, Attachment, Runtime, RuntimeConf};
use sha2::{Digest, Sha512};

fn usage(exe: &str) -> ExitCode {
    eprintln!("{exe}: Add, check, remove, gc or status network interfaces from a network namespace");
    for c in ["add   ", "check ", "del   ", "gc    ", "status"] {
        eprintln!("  {exe} {c} <net> <netns>");
    }
    ExitCode::from(1)
}

/// The upstream derivation of the container ID from the netns path.
fn container_id(netns: &Path) -> String {
    let digest = Sha512::digest(netns.as_os_str().as_encoded_bytes());
    format!("cnitool-{}", data_encoding::HEXLOWER.encode(&digest[..10]))
}

/// `filepath.Abs`: join a relative path to the cwd and clean `.`/`..` lexically.
fn absolute(p: &str) -> Result<PathBuf, String> {
    let joined = if Path::new(p).is_absolute() {
        PathBuf::from(p)
    } else {
        std::env::current_dir().map_err(|e| format!("cwd: {e}"))?.join(p)
    };
    let mut out = PathBuf::from("/");
    for c in joined.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::Normal(s) => out.push(s),
            _ => {}
        }
    }
    Ok(out)
}

fn parse_cni_args(s: &str) -> Result<Vec<(String, String)>, String> {
    s.split(';')
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) if !k.is_empty() && !v.is_empty() && !v.contains('=') => Ok((k.into(), v.into())),
            _ => Err(format!("invalid CNI_ARGS pair {pair:?}")),
        })
        .collect()
}

fn run(cmd: &str, net: &str, netns: &str) -> Result<(), String> {
    let dir = std::env::var("NETCONFPATH").ok().filter(|s| !s.is_empty()).unwrap_or("/etc/cni/net.d".into());
    let list = load_conf_list(Path::new(&dir), net).map_err(|e| e.to_string())?;
    let mut rt = RuntimeConf::default();
    if let Ok(caps) = std::env::var("CAP_ARGS") {
        if !caps.is_empty() {
            rt.capability_args = serde_json::from_str(&caps).map_err(|e| format!("CAP_ARGS: {e}"))?;
        }
    }
    if let Ok(args) = std::env::var("CNI_ARGS") {
        if !args.is_empty() {
            rt.args = parse_cni_args(&args)?;
        }
    }
    rt.ifname = std::env::var("CNI_IFNAME").unwrap_or_else(|_| "eth0".into());
    let netns = absolute(netns)?;
    rt.container_id = container_id(&netns);
    rt.netns = netns.display().to_string();

    let paths = std::env::var("CNI_PATH").unwrap_or_default();
    let mut runtime =
        Runtime::new(std::env::split_paths(&paths).filter(|p| !p.as_os_str().is_empty()).collect());
    if let Ok(d) = std::env::var("CNITOOL_CACHE_DIR") {
        runtime = runtime.with_cache_dir(d);
    }
    if let Ok(t) = std::env::var("CNITOOL_TIMEOUT") {
        let secs: f64 = t.parse().map_err(|e| format!("CNITOOL_TIMEOUT {t:?}: {e}"))?;
        runtime = runtime.with_timeout(Duration::from_secs_f64(secs));
    }
    runtime.exec.forward_stderr = true;

    match cmd {
        "add" => {
            let res = runtime.add_network_list(&list, &rt).map_err(|e| e.to_string())?;
            println!("{}", serde_json::to_string_pretty(&res).map_err(|e| e.to_string())?);
            Ok(())
        }
        "check" => runtime.check_network_list(&list, &rt).map_err(|e| e.to_string()),
        "del" => runtime.del_network_list(&list, &rt).map_err(|e| e.to_string()),
        "gc" => {
            let valid: Option<Vec<Attachment>> = match std::env::var("CNITOOL_VALID_ATTACHMENTS") {
                Ok(s) => {
                    Some(serde_json::from_str(&s).map_err(|e| format!("CNITOOL_VALID_ATTACHMENTS: {e}"))?)
                }
                Err(_) => None,
            };
            runtime.gc_network_list(&list, valid.as_deref()).map_err(|e| e.to_string())
        }
        "status" => runtime.status_network_list(&list).map_err(|e| e.to_string()),
        other => Err(format!("unknown command {other:?}")),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let exe =
        args.first().map(|a| Path::new(a).file_name().unwrap_or_default().to_string_lossy().into_owned());
    let exe = exe.unwrap_or_else(|| "cnitool".into());
    if args.len() < 4 || !["add", "check", "del", "gc", "status"].contains(&args[1].as_str()) {
        return usage(&exe);
    }
    match run(&args[1], &args[2], &args[3]) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_id_matches_upstream_derivation() {
        // sha512("/run/netns/test")[:10], as upstream's fmt.Sprintf("cnitool-%x", s[:10]).
        let id = container_id(Path::new("/run/netns/test"));
        assert_eq!(id.len(), "cnitool-".len() + 20);
        assert!(id.starts_with("cnitool-"));
        let full = data_encoding::HEXLOWER.encode(&Sha512::digest(b"/run/netns/test"));
        assert_eq!(&id[8..], &full[..20]);
    }

    #[test]
    fn absolute_cleans_like_filepath_abs() {
        assert_eq!(absolute("/run/netns/../netns/x").unwrap(), PathBuf::from("/run/netns/x"));
        assert!(absolute("rel").unwrap().is_absolute());
    }

    #[test]
    fn cni_args_pairs() {
        assert_eq!(
            parse_cni_args("A=1;B=2").unwrap(),
            vec![("A".into(), "1".into()), ("B".into(), "2".into())]
        );
        assert!(parse_cni_args("A=").is_err());
        assert!(parse_cni_args("A").is_err());
    }
}
