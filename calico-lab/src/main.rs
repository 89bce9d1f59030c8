//! `calico-lab`: the multi-host lab in network namespaces (`lab.json` beside
//! this crate's Cargo.toml; the crate docs say what it owns and may call).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use calico_lab::{Bins, Lab, LabConfig, LabError};
use calico_node_agent::logging;

const USAGE: &str = "usage:
  calico-lab up     [--config lab.json] [--scenario]   build the lab (and deploy the demo's
                                                      scenario), leave it running, print its id
  calico-lab status ID                                BGP sessions and routes on the tor
  calico-lab down   ID|--all                          stop and remove a lab (or every lab)
  calico-lab list                                     running labs
  calico-lab demo   [--config lab.json]               up + scenario + checks + narrated request
                                                      + teardown, timed
binaries (calico-node-agent, calico, calico-ipam, kube-proxy-rules) are taken from the
directory of calico-lab itself (or --bins DIR).";

fn default_config() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("lab.json")
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Err(e) = logging::init(None) {
        eprintln!("calico-lab: {e}");
    }
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("calico-lab: {e}");
            ExitCode::from(1)
        }
    }
}

fn flag(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

fn load(args: &[String]) -> Result<(LabConfig, Bins), LabError> {
    let cfg = LabConfig::load(&flag(args, "--config").map(PathBuf::from).unwrap_or_else(default_config))?;
    let bins = match flag(args, "--bins") {
        Some(d) => Bins::new(d),
        None => Bins::beside_current_exe()?,
    };
    Ok((cfg, bins))
}

fn run(args: &[String]) -> Result<(), LabError> {
    let usage = || LabError::Check(USAGE.to_string());
    match args.first().map(String::as_str) {
        Some("up") => {
            let (cfg, bins) = load(args)?;
            let mut lab = Lab::up(&cfg, &bins)?;
            if args.iter().any(|a| a == "--scenario") {
                lab.deploy_scenario()?;
            }
            println!("{}", lab.tor_routes()?.trim());
            let state = lab.detach()?;
            println!("lab {} is up; run dir {}", state.id, state.run_dir.display());
            println!("namespaces: {}", state.namespaces.join(" "));
            println!("tear down with: calico-lab down {}", state.id);
            Ok(())
        }
        Some("status") => {
            let id = args.get(1).ok_or_else(usage)?;
            let st = Lab::find_state(id)?;
            let sock = st.run_dir.join("tor/bird.ctl");
            println!("lab {} ({})", st.id, st.run_dir.display());
            println!("{}", calico_lab::birdc(&sock, &["show", "protocols"])?.trim());
            println!("{}", calico_lab::birdc(&sock, &["show", "route"])?.trim());
            Ok(())
        }
        Some("down") => {
            let which = args.get(1).ok_or_else(usage)?;
            // --all: detached labs and orphans of dead processes, never a lab
            // a running test or demo still owns.
            let states = if which == "--all" {
                Lab::list_states().into_iter().filter(|s| s.is_orphan_or_detached()).collect()
            } else {
                vec![Lab::find_state(which)?]
            };
            for st in &states {
                Lab::down(st);
                println!("lab {} down", st.id);
            }
            Ok(())
        }
        Some("list") => {
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
        Some("demo") => {
            let (cfg, bins) = load(args)?;
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
                println!("\n{}", lab.narrate()?);
                lab
            };
            drop(lab);
            println!("[{:5.1}s] torn down (demo done)", t0.elapsed().as_secs_f64());
            Ok(())
        }
        _ => Err(usage()),
    }
}
