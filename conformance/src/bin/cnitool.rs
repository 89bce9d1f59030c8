//! cnitool: run a network's plugin chain against an existing netns, the same
//! CLI and environment as upstream's cnitool, so the usual recipes work:
//!
//! ```text
//! ip netns add test
//! CNI_PATH=/usr/lib/cni NETCONFPATH=/etc/cni/net.d cnitool add mynet /run/netns/test
//! ```
//!
//! `cnitool add|check|del|gc|status <net> <netns>`. Environment (each also a
//! flag, which wins): `NETCONFPATH` (default /etc/cni/net.d), `CNI_PATH`,
//! `CNI_ARGS` (`K=V;K=V`), `CAP_ARGS` (JSON object of capability args),
//! `CNI_IFNAME` (default eth0). Extensions: `CNITOOL_CACHE_DIR` (default
//! /var/lib/cni), `CNITOOL_TIMEOUT` (per plugin call: seconds, or `30s`,
//! `2m`; default 60), `CNITOOL_VALID_ATTACHMENTS` (JSON list of
//! `{"containerID","ifname"}` for `gc`; without it, like upstream, no list is
//! sent and everything is collected). The container ID is `cnitool-` + the
//! first 10 bytes (20 hex digits) of sha512(absolute netns path), as upstream
//! derives it.
//!
//! Owns its command line and exit codes (0 done; 1 a failure, printed as
//! `cnitool: error: …`; 2 bad usage or a malformed variable, clap's). May
//! call: the `conformance` runtime (config loading, the plugins, the cache
//! directory). Never writes anything to stdout but `add`'s result.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use conformance::{load_conf_list, Attachment, Runtime, RuntimeConf};
use serde_json::{Map, Value};
use sha2::{Digest, Sha512};
use tool_cli::values::parse_duration;
use tool_cli::LogArgs;

const TOOL: &str = "cnitool";

#[derive(Debug, Parser)]
#[command(
    name = "cnitool",
    version,
    about = "Add, check, remove, gc or status network interfaces from a network namespace",
    subcommand_required = true,
    arg_required_else_help = true,
    args_override_self = true
)]
struct Cli {
    #[command(flatten)]
    log: LogArgs,
    #[command(flatten)]
    env: CniEnv,
    #[command(subcommand)]
    verb: Verb,
}

/// upstream's verbs, each on `<net> <netns>`.
#[derive(Debug, Subcommand)]
enum Verb {
    /// Add the network's interface to the namespace; print the result
    Add(Target),
    /// Check the interface against the cached result
    Check(Target),
    /// Remove the interface
    Del(Target),
    /// Garbage-collect the network's attachments not in the valid list
    Gc {
        #[command(flatten)]
        target: Target,
        /// Attachments to keep: JSON list of {"containerID","ifname"} (default: send no list,
        /// everything is collected)
        #[arg(long, env = "CNITOOL_VALID_ATTACHMENTS", value_name = "JSON", value_parser = attachments)]
        valid_attachments: Option<ValidAttachments>,
    },
    /// Ask the plugins whether the network is ready
    Status(Target),
}

#[derive(Debug, Args)]
struct Target {
    /// The network's name (`name` of a config in NETCONFPATH)
    net: String,
    /// The network namespace's path (e.g. /run/netns/test)
    netns: String,
}

/// upstream cnitool's environment, each variable also a flag.
#[derive(Debug, Args)]
#[command(next_help_heading = "Environment (upstream cnitool's variables)")]
struct CniEnv {
    /// Directory of the network configs [default: /etc/cni/net.d]
    #[arg(long, env = "NETCONFPATH", value_name = "DIR", global = true)]
    netconfpath: Option<PathBuf>,
    /// Directories of the plugin binaries (colon-separated)
    #[arg(long, env = "CNI_PATH", value_name = "DIRS", global = true)]
    cni_path: Option<String>,
    /// Arguments for the plugins: K=V;K=V
    #[arg(long, env = "CNI_ARGS", value_name = "K=V;...", value_parser = cni_args, global = true)]
    cni_args: Option<CniArgs>,
    /// Capability arguments: a JSON object
    #[arg(long, env = "CAP_ARGS", value_name = "JSON", value_parser = cap_args, global = true)]
    cap_args: Option<Map<String, Value>>,
    /// The interface name in the namespace
    #[arg(long, env = "CNI_IFNAME", value_name = "NAME", default_value = "eth0", global = true)]
    ifname: String,
    /// The result cache [default: /var/lib/cni]
    #[arg(long, env = "CNITOOL_CACHE_DIR", value_name = "DIR", global = true)]
    cache_dir: Option<PathBuf>,
    /// Timeout of each plugin call: seconds, or 30s, 2m [default: 60]
    #[arg(long, env = "CNITOOL_TIMEOUT", value_name = "DUR", value_parser = parse_duration, global = true)]
    timeout: Option<Duration>,
}

/// `CNI_ARGS` pairs (empty: none).
#[derive(Debug, Clone, PartialEq, Eq)]
struct CniArgs(Vec<(String, String)>);

fn cni_args(s: &str) -> Result<CniArgs, String> {
    if s.is_empty() {
        return Ok(CniArgs(Vec::new()));
    }
    parse_cni_args(s).map(CniArgs)
}

/// `CAP_ARGS` (empty: none).
fn cap_args(s: &str) -> Result<Map<String, Value>, String> {
    if s.is_empty() {
        return Ok(Map::new());
    }
    serde_json::from_str(s).map_err(|e| format!("CAP_ARGS: {e}"))
}

/// `CNITOOL_VALID_ATTACHMENTS` (one value: the whole JSON list).
#[derive(Debug, Clone, PartialEq, Eq)]
struct ValidAttachments(Vec<Attachment>);

fn attachments(s: &str) -> Result<ValidAttachments, String> {
    serde_json::from_str(s).map(ValidAttachments).map_err(|e| format!("CNITOOL_VALID_ATTACHMENTS: {e}"))
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

fn run(env: CniEnv, verb: &Verb) -> Result<(), String> {
    let (Verb::Add(target)
    | Verb::Check(target)
    | Verb::Del(target)
    | Verb::Status(target)
    | Verb::Gc { target, .. }) = verb;
    // An empty variable is unset, as upstream's os.Getenv checks.
    let dir = env.netconfpath.filter(|p| !p.as_os_str().is_empty()).unwrap_or("/etc/cni/net.d".into());
    let list = load_conf_list(&dir, &target.net).map_err(|e| e.to_string())?;
    let netns = absolute(&target.netns)?;
    let rt = RuntimeConf {
        container_id: container_id(&netns),
        netns: netns.display().to_string(),
        ifname: env.ifname,
        args: env.cni_args.map(|a| a.0).unwrap_or_default(),
        capability_args: env.cap_args.unwrap_or_default(),
    };
    log::debug!("{} {} in {} (container ID {})", target.net, rt.ifname, rt.netns, rt.container_id);

    let paths = env.cni_path.unwrap_or_default();
    let mut runtime =
        Runtime::new(std::env::split_paths(&paths).filter(|p| !p.as_os_str().is_empty()).collect());
    if let Some(d) = env.cache_dir.filter(|p| !p.as_os_str().is_empty()) {
        runtime = runtime.with_cache_dir(d);
    }
    if let Some(t) = env.timeout {
        runtime = runtime.with_timeout(t);
    }
    runtime.exec.forward_stderr = true;

    match verb {
        Verb::Add(_) => {
            let res = runtime.add_network_list(&list, &rt).map_err(|e| e.to_string())?;
            println!("{}", serde_json::to_string_pretty(&res).map_err(|e| e.to_string())?);
            Ok(())
        }
        Verb::Check(_) => runtime.check_network_list(&list, &rt).map_err(|e| e.to_string()),
        Verb::Del(_) => runtime.del_network_list(&list, &rt).map_err(|e| e.to_string()),
        Verb::Gc { valid_attachments, .. } => runtime
            .gc_network_list(&list, valid_attachments.as_ref().map(|v| v.0.as_slice()))
            .map_err(|e| e.to_string()),
        Verb::Status(_) => runtime.status_network_list(&list).map_err(|e| e.to_string()),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = tool_cli::Logging::new(TOOL).init(&cli.log) {
        return tool_cli::finish::<ExitCode, _>(TOOL, Err(e));
    }
    tool_cli::finish(TOOL, run(cli.env, &cli.verb).map(|()| ExitCode::SUCCESS))
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

    fn parse(argv: &[&str]) -> Result<Cli, clap::Error> {
        tool_cli::try_parse_without_env(std::iter::once("cnitool").chain(argv.iter().copied()))
    }

    #[test]
    fn upstream_verbs_and_positionals() {
        for verb in ["add", "check", "del", "gc", "status"] {
            let c = parse(&[verb, "mynet", "/run/netns/test"]).unwrap();
            let (Verb::Add(t) | Verb::Check(t) | Verb::Del(t) | Verb::Status(t) | Verb::Gc { target: t, .. }) =
                &c.verb;
            assert_eq!((t.net.as_str(), t.netns.as_str()), ("mynet", "/run/netns/test"), "{verb}");
            assert_eq!(c.env.ifname, "eth0");
        }
        use clap::error::ErrorKind;
        assert_eq!(parse(&["frob", "n", "ns"]).unwrap_err().kind(), ErrorKind::InvalidSubcommand);
        assert_eq!(parse(&["add", "n"]).unwrap_err().kind(), ErrorKind::MissingRequiredArgument);
        assert_eq!(parse(&["add", "n", "ns", "extra"]).unwrap_err().kind(), ErrorKind::UnknownArgument);
        assert_eq!(parse(&[]).unwrap_err().kind(), ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand);
        for verb in ["add", "check", "del", "gc", "status"] {
            assert_eq!(parse(&[verb, "--help"]).unwrap_err().kind(), ErrorKind::DisplayHelp, "{verb}");
        }
    }

    #[test]
    fn every_variable_is_also_a_flag() {
        use clap::CommandFactory;
        let mut cmd = Cli::command();
        cmd.build();
        let gc = cmd.find_subcommand("gc").unwrap();
        let env = |id: &str| gc.get_arguments().find(|a| a.get_id() == id).and_then(|a| a.get_env());
        for (id, var) in [
            ("netconfpath", "NETCONFPATH"),
            ("cni_path", "CNI_PATH"),
            ("cni_args", "CNI_ARGS"),
            ("cap_args", "CAP_ARGS"),
            ("ifname", "CNI_IFNAME"),
            ("cache_dir", "CNITOOL_CACHE_DIR"),
            ("timeout", "CNITOOL_TIMEOUT"),
            ("valid_attachments", "CNITOOL_VALID_ATTACHMENTS"),
        ] {
            assert_eq!(env(id), Some(std::ffi::OsStr::new(var)), "{id}");
        }
        // --flag=value and --flag value, before or after the verb.
        let c = parse(&[
            "--netconfpath=/etc/x",
            "add",
            "--ifname",
            "net1",
            "--cni-args=A=1;B=2",
            "--cap-args",
            r#"{"ips":["10.0.0.9/24"]}"#,
            "--timeout=2m",
            "--cni-path",
            "/a:/b",
            "n",
            "ns",
        ])
        .unwrap();
        assert_eq!(c.env.netconfpath, Some(PathBuf::from("/etc/x")));
        assert_eq!(c.env.ifname, "net1");
        assert_eq!(c.env.cni_args, Some(CniArgs(vec![("A".into(), "1".into()), ("B".into(), "2".into())])));
        assert_eq!(c.env.cap_args.unwrap()["ips"][0], "10.0.0.9/24");
        assert_eq!(c.env.timeout, Some(Duration::from_secs(120)));
        assert_eq!(c.env.cni_path.as_deref(), Some("/a:/b"));
        // Plain seconds, as CNITOOL_TIMEOUT always took them.
        assert_eq!(
            parse(&["--timeout", "1.5", "del", "n", "ns"]).unwrap().env.timeout,
            Some(Duration::from_millis(1500))
        );
        // Empty (an empty variable): none, not an error.
        let c = parse(&["--cni-args=", "--cap-args=", "check", "n", "ns"]).unwrap();
        assert_eq!((c.env.cni_args, c.env.cap_args), (Some(CniArgs(vec![])), Some(Map::new())));
        let c = parse(&["gc", "--valid-attachments", r#"[{"containerID":"c1","ifname":"eth0"}]"#, "n", "ns"])
            .unwrap();
        let Verb::Gc { valid_attachments: Some(v), .. } = c.verb else { panic!("no list") };
        assert_eq!(v.0.len(), 1);
        // Malformed values are usage errors naming the variable.
        for bad in [&["--cni-args", "broken"][..], &["--cap-args", "[1]"], &["--timeout", "soon"]] {
            let e = parse(&[bad, &["add", "n", "ns"]].concat()).unwrap_err();
            assert_eq!(e.kind(), clap::error::ErrorKind::ValueValidation, "{bad:?}");
        }
        let e = parse(&["--cni-args", "broken", "add", "n", "ns"]).unwrap_err().to_string();
        assert!(e.contains("invalid CNI_ARGS pair"), "{e}");
        assert!(parse(&["gc", "--valid-attachments=nope", "n", "ns"]).is_err());
        assert!(parse(&["add", "--valid-attachments=[]", "n", "ns"]).is_err(), "gc's only");
    }
}
