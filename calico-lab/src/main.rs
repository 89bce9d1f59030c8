//! `calico-lab`: the multi-host lab in network namespaces (`lab.json` beside
//! this crate's Cargo.toml; the crate docs say what it owns and may call).
//! See `calico-lab --help`.
//!
//! The narration and the lab's ids, routes and states go to stdout; the
//! diagnostics (`-v`/`--log-level`, also from `CALICO_LOG_LEVEL`) go to
//! stderr through the tools' one logger; a failure is
//! `calico-lab: error: …`, exit 1; bad usage is clap's, exit 2.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use calico_lab::{Bins, Lab, LabConfig, LabError, Percentiles};
use calico_node_agent::cli;
use clap::{ArgGroup, Args, Parser, Subcommand};
use tool_cli::LogArgs;

const TOOL: &str = "calico-lab";

/// The whole system on one machine: a ToR, nodes, etcd and a client in
/// network namespaces.
///
/// The binaries (calico-node-agent, calico, calico-ipam, kube-proxy-rules)
/// are taken from the directory of calico-lab itself (or --bins DIR).
#[derive(Debug, Parser)]
#[command(name = "calico-lab", version, args_override_self = true)]
// The level variable the lab honoured before it shared the tools' logger
// (it used the agent's, which read it), read as the agent reads it.
#[command(mut_arg("log_level", |a| a.help(cli::LOG_LEVEL_HELP)))]
struct Cli {
    #[command(flatten)]
    log: LogArgs,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Build the lab (and deploy the demo's scenario), leave it running, print its id
    Up {
        /// Deploy the demo's scenario (pods, Services) too
        #[arg(long)]
        scenario: bool,
        #[command(flatten)]
        lab: LabArgs,
    },
    /// BGP sessions and routes on the tor
    Status {
        /// The lab's id (from `up` or `list`)
        id: String,
    },
    /// Stop and remove a lab (or every lab)
    #[command(group(ArgGroup::new("which").required(true).args(["id", "all"])))]
    Down {
        /// The lab's id
        id: Option<String>,
        /// Every detached lab and orphan of a dead process (never one a
        /// running test or demo still owns)
        #[arg(long)]
        all: bool,
    },
    /// Running labs
    List,
    /// Up + scenario + checks + narrated request + teardown, timed
    Demo {
        #[command(flatten)]
        lab: LabArgs,
    },
    /// Time block claims to the route at the tor (p50/p99), then tear down
    BenchClaims {
        /// How many claims (each released before the next)
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=200))]
        claims: u32,
        /// The node that claims (default: the first)
        #[arg(long, value_name = "NAME")]
        node: Option<String>,
        #[command(flatten)]
        lab: LabArgs,
    },
}

/// Which lab to build, with which binaries.
#[derive(Debug, Clone, Args)]
struct LabArgs {
    /// The lab's topology (default: lab.json beside calico-lab's Cargo.toml)
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Where the workspace binaries are (default: calico-lab's own directory)
    #[arg(long, value_name = "DIR")]
    bins: Option<PathBuf>,
}

fn default_config() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("lab.json")
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level_var = std::env::var("CALICO_LOG_LEVEL").ok();
    let log_args = cli::log_args(&cli.log, level_var.as_deref())
        .unwrap_or_else(|e| tool_cli::usage_error::<Cli>(e).exit());
    if let Err(e) = tool_cli::Logging::new(TOOL).init(&log_args) {
        return tool_cli::finish::<ExitCode, _>(TOOL, Err(e));
    }
    tool_cli::finish(TOOL, run(cli.command).map(|()| ExitCode::SUCCESS))
}

fn load(a: &LabArgs) -> Result<(LabConfig, Bins), LabError> {
    let cfg = LabConfig::load(&a.config.clone().unwrap_or_else(default_config))?;
    let bins = match &a.bins {
        Some(d) => Bins::new(d),
        None => Bins::beside_current_exe()?,
    };
    Ok((cfg, bins))
}

fn run(cmd: Cmd) -> Result<(), LabError> {
    match cmd {
        Cmd::Up { scenario, lab } => {
            let (cfg, bins) = load(&lab)?;
            let mut lab = Lab::up(&cfg, &bins)?;
            if scenario {
                lab.deploy_scenario()?;
            }
            println!("{}", lab.tor_routes()?.trim());
            let state = lab.detach()?;
            println!("lab {} is up; run dir {}", state.id, state.run_dir.display());
            println!("namespaces: {}", state.namespaces.join(" "));
            println!("tear down with: calico-lab down {}", state.id);
            Ok(())
        }
        Cmd::Status { id } => {
            let st = Lab::find_state(&id)?;
            let sock = st.run_dir.join("tor/bird.ctl");
            println!("lab {} ({})", st.id, st.run_dir.display());
            println!("{}", calico_lab::birdc(&sock, &["show", "protocols"])?.trim());
            println!("{}", calico_lab::birdc(&sock, &["show", "route"])?.trim());
            Ok(())
        }
        Cmd::Down { id, all } => {
            // --all: detached labs and orphans of dead processes, never a lab
            // a running test or demo still owns.
            // One of the two (clap's group "which").
            let states = match id {
                Some(id) => vec![Lab::find_state(&id)?],
                None => Lab::list_states().into_iter().filter(|s| all && s.is_orphan_or_detached()).collect(),
            };
            for st in &states {
                Lab::down(st);
                println!("lab {} down", st.id);
            }
            Ok(())
        }
        Cmd::List => {
            for st in Lab::list_states() {
                let owner = match st.owner {
                    None => "detached".to_string(),
                    Some(p) if st.is_orphan_or_detached() => format!("orphan (owner {p} gone)"),
                    Some(p) => format!("owned by pid {p}"),
                };
                println!("{}  {owner}  {}  {}", st.id, st.run_dir.display(), st.namespaces.join(" "));
            }
            Ok(())
        }
        Cmd::BenchClaims { claims, node, lab } => bench_claims(claims, node, &lab),
        Cmd::Demo { lab } => {
            let (cfg, bins) = load(&lab)?;
            let t0 = Instant::now();
            let lab = {
                let mut lab = Lab::up(&cfg, &bins)?;
                println!(
                    "[{:5.1}s] lab {} up: tor, {} nodes (agent + BIRD), etcd, client",
                    t0.elapsed().as_secs_f64(),
                    lab.id,
                    cfg.nodes.len()
                );
                lab.deploy_scenario()?;
                println!("[{:5.1}s] scenario deployed", t0.elapsed().as_secs_f64());
                for p in lab.pods() {
                    println!("          pod {} on {}: {} (veth {})", p.name, p.node, p.ip, p.host_veth);
                }
                println!("\n== tor: birdc show route\n{}", lab.tor_routes()?.trim());
                let report = lab.check_scenario()?;
                println!("\n== checks");
                for l in &report.lines {
                    println!("{l}");
                }
                println!("\n== natOutgoing (pool flag on, then off)");
                for l in lab.check_nat_outgoing()? {
                    println!("ok   {l}");
                }
                println!("\n{}", lab.narrate()?);
                lab
            };
            drop(lab);
            println!("[{:5.1}s] torn down (demo done)", t0.elapsed().as_secs_f64());
            Ok(())
        }
    }
}

fn bench_claims(claims: u32, node: Option<String>, args: &LabArgs) -> Result<(), LabError> {
    let (cfg, bins) = load(args)?;
    let node = node.unwrap_or_else(|| cfg.nodes[0].name.clone());
    if cfg.node(&node).is_none() {
        return Err(LabError::Check(format!("no node {node} in the lab config")));
    }
    let lab = Lab::up(&cfg, &bins)?;
    // The reference first (the agent idles), then the claims.
    let bird_alone = lab.measure_bird_alone(&node, claims)?;
    let timings = lab.measure_claims(&node, claims)?;
    let node_ms: Vec<_> = timings.iter().map(|t| t.to_node).collect();
    let tor_ms: Vec<_> = timings.iter().map(|t| t.to_tor).collect();
    let (Some(n), Some(t)) = (Percentiles::of(&node_ms), Percentiles::of(&tor_ms)) else {
        return Err(LabError::Check("no claim measured".into()));
    };
    let bird: Vec<_> = timings.iter().map(|t| t.to_tor.saturating_sub(t.to_node)).collect();
    let b = Percentiles::of(&bird).ok_or_else(|| LabError::Check("no claim measured".into()))?;
    println!("{claims} block claims on {node} (each released before the next), kernel route events:");
    println!("  claim -> blackhole on {node} (agent: watch + datastore read):   {n}");
    println!("  blackhole -> route at the tor (bird -p, configure, BGP, tor):   {b}");
    println!("  claim -> route at the tor:                                      {t}");
    let r = Percentiles::of(&bird_alone).ok_or_else(|| LabError::Check("no reference round".into()))?;
    println!("reference, same lab: BIRD alone (the agent's config for one more block written by hand,");
    println!("  birdc configure) -> route at the tor:                          {r}");
    let ratio = |a: std::time::Duration, b: std::time::Duration| a.as_secs_f64() / b.as_secs_f64().max(1e-9);
    println!(
        "ratio claim->tor / BIRD alone: p50 {:.2}, p99 {:.2} (the former 1 s poll alone added 500 ms on average)",
        ratio(t.p50, r.p50),
        ratio(t.p99, r.p99)
    );
    drop(lab);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::error::ErrorKind;
    use log::LevelFilter;

    fn parse(argv: &[&str]) -> Result<Cli, clap::Error> {
        tool_cli::try_parse_without_env(std::iter::once("calico-lab").chain(argv.iter().copied()))
    }

    fn cmd(argv: &[&str]) -> Cmd {
        parse(argv).unwrap().command
    }

    #[test]
    fn every_subcommand_and_spelling() {
        match cmd(&["up", "--config", "l.json", "--scenario", "--bins=target/debug"]) {
            Cmd::Up { scenario: true, lab } => {
                assert_eq!(lab.config, Some(PathBuf::from("l.json")));
                assert_eq!(lab.bins, Some(PathBuf::from("target/debug")));
            }
            other => panic!("{other:?}"),
        }
        match cmd(&["up"]) {
            Cmd::Up { scenario: false, lab } => assert!(lab.config.is_none() && lab.bins.is_none()),
            other => panic!("{other:?}"),
        }
        match cmd(&["demo", "--config=calico-lab/lab.json", "--bins", "d", "--bins", "e"]) {
            Cmd::Demo { lab } => {
                assert_eq!(lab.config, Some(PathBuf::from("calico-lab/lab.json")));
                assert_eq!(lab.bins, Some(PathBuf::from("e")), "the last one wins");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(cmd(&["status", "ab12"]), Cmd::Status { id } if id == "ab12"));
        assert!(matches!(cmd(&["down", "ab12"]), Cmd::Down { id: Some(id), all: false } if id == "ab12"));
        assert!(matches!(cmd(&["down", "--all"]), Cmd::Down { id: None, all: true }));
        assert!(matches!(cmd(&["list"]), Cmd::List));
        assert!(matches!(cmd(&["bench-claims"]), Cmd::BenchClaims { claims: 50, node: None, .. }));
        assert!(matches!(
            cmd(&["bench-claims", "--claims=5", "--node", "node-b"]),
            Cmd::BenchClaims { claims: 5, node: Some(n), .. } if n == "node-b"
        ));
        assert_eq!(parse(&["bench-claims", "--claims", "0"]).unwrap_err().kind(), ErrorKind::ValueValidation);
        let c = parse(&["demo", "-vv"]).unwrap();
        assert_eq!(c.log.level(LevelFilter::Info), LevelFilter::Trace);
        let c = parse(&["--log-level", "warn", "list"]).unwrap();
        assert_eq!(c.log.level(LevelFilter::Info), LevelFilter::Warn);
    }

    #[test]
    fn bad_usage_is_claps() {
        for (argv, kind) in [
            (&[][..], ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand),
            (&["status"], ErrorKind::MissingRequiredArgument),
            (&["down"], ErrorKind::MissingRequiredArgument),
            (&["down", "ab12", "--all"], ErrorKind::ArgumentConflict),
            (&["up", "--bogus"], ErrorKind::UnknownArgument),
            (&["list", "extra"], ErrorKind::UnknownArgument),
            (&["start"], ErrorKind::InvalidSubcommand),
        ] {
            assert_eq!(parse(argv).unwrap_err().kind(), kind, "{argv:?}");
        }
    }

    #[test]
    fn calico_log_level_unless_a_level_flag_is_given() {
        let log = |argv: &[&str]| cli::log_args(&parse(argv).unwrap().log, Some("debug")).unwrap();
        assert_eq!(log(&["list"]).level(LevelFilter::Info), LevelFilter::Debug);
        assert_eq!(log(&["list", "--log-level=error"]).level(LevelFilter::Info), LevelFilter::Error);
        assert_eq!(log(&["-vv", "list"]).level(LevelFilter::Info), LevelFilter::Trace);
    }
}
