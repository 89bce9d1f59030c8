//! The agent's command line (clap): `run [--once]` and `render-bird`, each
//! with the agent's flags ([`AgentArgs`]), plus the tools' shared
//! `-v`/`--log-level` (else `CALICO_LOG_LEVEL`, as calico/node: [`log_args`])
//! and datastore flags. [`crate::config::AgentConfig::from_cli`] lays the flags
//! over the `--config` file.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use ipnetwork::{Ipv4Network, Ipv6Network};
use tool_cli::{DatastoreArgs, LogArgs};

use crate::config::PeerConfig;
use crate::nat_outgoing::NatMode;

/// Keep this node's blackhole routes and BIRD in line with the datastore.
///
/// BGP: --as, --peer and --mesh are fallbacks; BGPConfiguration "default",
/// BGPPeer and the Node's spec.bgp.asNumber in the datastore override or
/// extend them.
#[derive(Debug, Parser)]
#[command(name = "calico-node-agent", version, args_override_self = true)]
#[command(mut_arg("log_level", |a| a.help(LOG_LEVEL_HELP)))]
pub struct Cli {
    #[command(flatten)]
    pub log: LogArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Register the Node, then reconcile routes and BIRD on every datastore change (watched, not polled)
    Run {
        /// One pass (register, reconcile), then exit
        #[arg(long)]
        once: bool,
        #[command(flatten)]
        a: AgentArgs,
    },
    /// Print the BIRD config for the current datastore (changes nothing)
    RenderBird {
        #[command(flatten)]
        a: AgentArgs,
    },
}

impl Command {
    /// The agent flags of either subcommand.
    pub fn agent_args(&self) -> &AgentArgs {
        match self {
            Command::Run { a, .. } | Command::RenderBird { a } => a,
        }
    }
}

/// `--log-level`'s help, naming the variable [`log_args`] reads.
pub const LOG_LEVEL_HELP: &str =
    "Diagnostics at LEVEL and above on stderr: off, error, warn, info, debug, trace [env: CALICO_LOG_LEVEL]";

/// The level flags with calico/node's `CALICO_LOG_LEVEL` (`calico_log_level`,
/// the variable's value) as `--log-level` when neither `-v` nor
/// `--log-level` is given. Not clap's `env =`: clap counts a variable as
/// given, so `-v` would conflict with a level set in the environment.
pub fn log_args(log: &LogArgs, calico_log_level: Option<&str>) -> Result<LogArgs, String> {
    let var = calico_log_level.filter(|v| !v.trim().is_empty());
    match var {
        Some(v) if !log.explicit() => {
            let level = tool_cli::logging::parse_level(v).map_err(|e| format!("CALICO_LOG_LEVEL: {e}"))?;
            Ok(LogArgs { verbose: 0, log_level: Some(level) })
        }
        _ => Ok(log.clone()),
    }
}

/// The agent's settings as flags; each overrides the same key of the
/// `--config` file (the last of a repeated single-valued flag wins).
#[derive(Debug, Clone, Default, Args)]
pub struct AgentArgs {
    /// The agent's JSON config file, read first (the flags override it)
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// This node's name (its Node resource and datastore keys)
    #[arg(long, value_name = "NAME")]
    pub node_name: Option<String>,
    /// This node's address with its prefix length, e.g. 192.168.10.2/24
    #[arg(long, value_name = "A.B.C.D/LEN")]
    pub node_ip: Option<Ipv4Network>,
    /// This node's IPv6 address with its prefix length (Node ipv6Address):
    /// IPv6 BGP sessions, the IPv6 mesh. Without it the node speaks IPv4 BGP only
    #[arg(long, value_name = "IPV6/LEN")]
    pub node_ipv6: Option<Ipv6Network>,
    /// Fallback AS number of this node (default 64512)
    #[arg(long = "as", value_name = "ASN")]
    pub as_number: Option<u32>,
    /// A fallback BGP peer, repeatable: IP:AS, e.g. 192.168.10.1:65000 or fd00:10::1:65000
    #[arg(long = "peer", value_name = "IP:AS")]
    pub peers: Vec<PeerConfig>,
    /// BGPPeer password secrets (etcd mode has no Kubernetes Secrets): a JSON
    /// file mapping each SECRET to an object of KEY: PASSWORD, or a directory
    /// of SECRET/KEY files
    #[arg(long, value_name = "PATH")]
    pub bgp_secrets: Option<PathBuf>,
    /// A label for this node's Node resource, repeatable
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Node-to-node mesh on (fallback when no BGPConfiguration exists)
    #[arg(long, overrides_with = "no_mesh")]
    pub mesh: bool,
    /// Node-to-node mesh off (the default)
    #[arg(long, overrides_with = "mesh")]
    pub no_mesh: bool,
    /// Where BIRD's config is written (default /etc/bird/bird.conf)
    #[arg(long, value_name = "PATH")]
    pub bird_config: Option<PathBuf>,
    /// BIRD's control socket (default /run/bird/bird.ctl)
    #[arg(long, value_name = "PATH")]
    pub bird_socket: Option<PathBuf>,
    /// Kernel protocol of the blackhole routes (default 80)
    #[arg(long, value_name = "0-255")]
    pub route_protocol: Option<u8>,
    /// Retry period after a datastore or kernel failure, in milliseconds (default 1000, at least 50); changes are watched, not polled
    #[arg(long, value_name = "MS")]
    pub poll_interval_ms: Option<u64>,
    /// Where the IP pools' natOutgoing rules go: iptables (default) or nftables
    #[arg(long, value_name = "MODE", value_parser = NatMode::parse)]
    pub nat_outgoing_mode: Option<NatMode>,
    /// Append the log to this file too
    #[arg(long, value_name = "PATH")]
    pub log_file: Option<PathBuf>,
    #[command(flatten)]
    pub ds: DatastoreArgs,
}

impl AgentArgs {
    /// `--mesh`/`--no-mesh`, the last given; neither: the file's setting.
    pub fn mesh(&self) -> Option<bool> {
        match (self.mesh, self.no_mesh) {
            (true, _) => Some(true),
            (_, true) => Some(false),
            _ => None,
        }
    }
}

/// `KEY=VALUE` (the key's and value's syntax is checked with the file's
/// labels, [`crate::config`]).
fn parse_label(v: &str) -> Result<(String, String), String> {
    let (k, val) = v.split_once('=').ok_or_else(|| format!("label {v:?}: expected KEY=VALUE"))?;
    Ok((k.to_string(), val.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use log::LevelFilter;

    fn parse(argv: &[&str]) -> Result<Cli, clap::Error> {
        tool_cli::try_parse_without_env(std::iter::once("calico-node-agent").chain(argv.iter().copied()))
    }

    fn run_args(argv: &[&str]) -> (bool, AgentArgs) {
        match parse(argv).unwrap().command {
            Command::Run { once, a } => (once, a),
            other => panic!("not run: {other:?}"),
        }
    }

    #[test]
    fn every_spelling_of_the_flags() {
        let (once, a) = run_args(&[
            "run",
            "--once",
            "--node-name=n1",
            "--node-ip",
            "10.0.0.1/24",
            "--as=64601",
            "--peer",
            "10.0.0.254:65000",
            "--peer=10.0.0.253:65001",
            "--label",
            "rack=r1",
            "--label=zone=z",
            "--bird-config=/run/b.conf",
            "--bird-socket",
            "/run/b.ctl",
            "--route-protocol=81",
            "--poll-interval-ms",
            "200",
            "--log-file=/var/log/a.log",
            "--config",
            "/etc/a.json",
            "--datastore-path=/var/lib/s",
            "--etcd-endpoints",
            "http://127.0.0.1:2379",
        ]);
        assert!(once);
        assert_eq!(a.node_name.as_deref(), Some("n1"));
        assert_eq!(a.node_ip, Some("10.0.0.1/24".parse().unwrap()));
        assert_eq!(a.as_number, Some(64601));
        assert_eq!(
            a.peers.iter().map(|p| (p.ip.to_string(), p.as_number.0)).collect::<Vec<_>>(),
            [("10.0.0.254".to_string(), 65000), ("10.0.0.253".to_string(), 65001)]
        );
        assert_eq!(a.labels, [("rack".into(), "r1".into()), ("zone".into(), "z".into())]);
        assert_eq!(a.bird_config, Some(PathBuf::from("/run/b.conf")));
        assert_eq!(a.bird_socket, Some(PathBuf::from("/run/b.ctl")));
        assert_eq!(a.route_protocol, Some(81));
        assert_eq!(a.poll_interval_ms, Some(200));
        assert_eq!(a.log_file, Some(PathBuf::from("/var/log/a.log")));
        assert_eq!(a.config, Some(PathBuf::from("/etc/a.json")));
        assert_eq!(a.ds.datastore_path, Some(PathBuf::from("/var/lib/s")));
        assert_eq!(a.ds.etcd_endpoints.as_deref(), Some("http://127.0.0.1:2379"));
        let (once, a) = run_args(&["run"]);
        assert!(!once && a.mesh().is_none() && a.peers.is_empty());
        // The last of a repeated single-valued flag, and of --mesh/--no-mesh, wins.
        let (_, a) = run_args(&["run", "--mesh", "--no-mesh", "--node-name", "a", "--node-name=b"]);
        assert_eq!((a.mesh(), a.node_name.as_deref()), (Some(false), Some("b")));
        let (_, a) = run_args(&["run", "--no-mesh", "--mesh"]);
        assert_eq!(a.mesh(), Some(true));
    }

    #[test]
    fn subcommands_and_bad_usage() {
        match parse(&["render-bird", "--node-name", "x", "-v"]).unwrap() {
            Cli { command: Command::RenderBird { a }, log } => {
                assert_eq!(a.node_name.as_deref(), Some("x"));
                assert_eq!(log.level(LevelFilter::Info), LevelFilter::Debug, "-v after the subcommand");
            }
            other => panic!("{other:?}"),
        }
        use clap::error::ErrorKind;
        assert_eq!(parse(&[]).unwrap_err().kind(), ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand);
        assert_eq!(parse(&["walk"]).unwrap_err().kind(), ErrorKind::InvalidSubcommand);
        assert_eq!(parse(&["run", "--bogus"]).unwrap_err().kind(), ErrorKind::UnknownArgument);
        assert_eq!(parse(&["render-bird", "--once"]).unwrap_err().kind(), ErrorKind::UnknownArgument);
        assert_eq!(parse(&["run", "--node-name"]).unwrap_err().kind(), ErrorKind::InvalidValue);
        for bad in [
            &["run", "--node-ip", "10.0.0.1/33"][..],
            &["run", "--as", "x"],
            &["run", "--route-protocol=256"],
        ] {
            assert_eq!(parse(bad).unwrap_err().kind(), ErrorKind::ValueValidation, "{bad:?}");
        }
        let e = parse(&["run", "--label", "rack"]).unwrap_err().to_string();
        assert!(e.contains("KEY=VALUE"), "{e}");
    }

    #[test]
    fn calico_log_level_unless_a_level_flag_is_given() {
        let cli = |argv: &[&str]| parse(argv).unwrap().log;
        let at = |l: Result<LogArgs, String>| l.unwrap().level(LevelFilter::Info);
        assert_eq!(at(log_args(&cli(&["run"]), None)), LevelFilter::Info);
        assert_eq!(at(log_args(&cli(&["run"]), Some("warning"))), LevelFilter::Warn);
        assert_eq!(at(log_args(&cli(&["run"]), Some(""))), LevelFilter::Info, "empty is unset");
        assert_eq!(at(log_args(&cli(&["run", "-v"]), Some("warning"))), LevelFilter::Debug, "-v wins");
        assert_eq!(at(log_args(&cli(&["run", "--log-level=error"]), Some("debug"))), LevelFilter::Error);
        let e = log_args(&cli(&["run"]), Some("loud")).unwrap_err();
        assert!(e.contains("CALICO_LOG_LEVEL") && e.contains("loud"), "{e}");
    }

    /// The only test here that reads the environment (the others parse
    /// without it): the variable it sets is read by no other test.
    #[test]
    fn the_datastore_variables() {
        std::env::set_var("DATASTORE_PATH", "/from/env");
        let env = Cli::try_parse_from(["calico-node-agent", "run"]);
        let flag = Cli::try_parse_from(["calico-node-agent", "run", "--datastore-path=/f"]);
        std::env::remove_var("DATASTORE_PATH");
        assert_eq!(env.unwrap().command.agent_args().ds.datastore_path, Some(PathBuf::from("/from/env")));
        assert_eq!(
            flag.unwrap().command.agent_args().ds.datastore_path,
            Some(PathBuf::from("/f")),
            "the flag wins"
        );
    }
}
