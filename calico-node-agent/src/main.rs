//! `calico-node-agent`: keep this node's blackhole routes and BIRD in line
//! with the datastore.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use calico_node_agent::agent::Agent;
use calico_node_agent::bird::{render, BirdInputs};
use calico_node_agent::config::AgentConfig;
use calico_node_agent::{logging, state};

const USAGE: &str = "usage:
  calico-node-agent run         [--once] FLAGS   register the Node, then reconcile routes + BIRD
                                                 (every --poll-interval-ms; --once: one pass)
  calico-node-agent render-bird FLAGS            print the BIRD config for the current datastore
BGP: --as, --peer and --mesh are fallbacks; BGPConfiguration \"default\", BGPPeer and the
     Node's spec.bgp.asNumber in the datastore override/extend them.
FLAGS: [--config agent.json] --node-name N --node-ip A.B.C.D/LEN [--as ASN]
       [--peer IP:ASN]... [--mesh|--no-mesh] [--label KEY=VALUE]... [--datastore-type file|etcdv3]
       [--datastore-path DIR] [--etcd-endpoints URLS] [--bird-config PATH]
       [--bird-socket PATH] [--route-protocol 80] [--poll-interval-ms 1000] [--log-file PATH]";

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = args.first() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let (cfg, rest) = match AgentConfig::from_args(&args[1..]) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("calico-node-agent: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = logging::init(cfg.log_file.as_deref()) {
        eprintln!("calico-node-agent: {e}");
        return ExitCode::from(1);
    }
    let once = rest.iter().any(|f| f == "--once");
    if let Some(f) = rest.iter().find(|f| *f != "--once") {
        eprintln!("calico-node-agent: unknown flag {f}\n{USAGE}");
        return ExitCode::from(2);
    }
    let result = match cmd.as_str() {
        "run" => run(cfg, once),
        "render-bird" => render_bird(&cfg),
        other => Err(format!("unknown command {other:?}\n{USAGE}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            ExitCode::from(1)
        }
    }
}

fn run(cfg: AgentConfig, once: bool) -> Result<(), String> {
    let mut agent = Agent::new(cfg).map_err(|e| e.to_string())?;
    if once {
        agent.register().map_err(|e| e.to_string())?;
        return agent.reconcile().map_err(|e| e.to_string());
    }
    // SAFETY: installing a handler that only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
    }
    agent.run(&STOP);
    Ok(())
}

fn render_bird(cfg: &AgentConfig) -> Result<(), String> {
    let store = calico_store::open(&cfg.datastore).map_err(|e| e.to_string())?;
    // Read-only: it shows what `run` would write, it changes nothing.
    let st = state::read(store.as_ref(), &cfg.node_name).map_err(|e| e.to_string())?;
    for p in &st.problems {
        log::warn!("{p}");
    }
    print!("{}", render(&BirdInputs::new(cfg, &st)));
    Ok(())
}
