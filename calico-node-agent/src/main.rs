//! `calico-node-agent`: keep this node's blackhole routes and BIRD in line
//! with the datastore. See `calico-node-agent --help`.
//!
//! Owns the process: its command line ([`calico_node_agent::cli`], clap),
//! its logger (`tool_cli`: stderr with timestamps, and `--log-file`), the
//! signal handling of `run` and the exit codes (0 done, 1 a runtime error,
//! logged as `calico-node-agent: error: …`, 2 bad usage or configuration).
//! Only `render-bird` writes to stdout (the rendered config).

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use calico_node_agent::agent::Agent;
use calico_node_agent::bird::{render, BirdInputs};
use calico_node_agent::cli::{log_args, Cli, Command};
use calico_node_agent::config::AgentConfig;
use calico_node_agent::state;
use clap::Parser;

const TOOL: &str = "calico-node-agent";

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level_var = std::env::var("CALICO_LOG_LEVEL").ok();
    let log_args =
        log_args(&cli.log, level_var.as_deref()).unwrap_or_else(|e| tool_cli::usage_error::<Cli>(e).exit());
    // A configuration that cannot be read or does not validate is bad
    // usage (exit 2), as before the agent had a clap parser.
    let cfg = AgentConfig::from_cli(cli.command.agent_args())
        .unwrap_or_else(|e| tool_cli::usage_error::<Cli>(e).exit());
    let logging = tool_cli::Logging::new(TOOL).timestamps(true).file(cfg.log_file.as_deref());
    if let Err(e) = logging.init(&log_args) {
        return tool_cli::finish::<ExitCode, _>(TOOL, Err(e));
    }
    let result = match cli.command {
        Command::Run { once, .. } => run(cfg, once),
        Command::RenderBird { .. } => render_bird(&cfg),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Through the logger, not `tool_cli::finish`: a daemon's last
            // words belong in its log file too.
            log::error!("{e}");
            log::logger().flush();
            ExitCode::from(1)
        }
    }
}

fn run(cfg: AgentConfig, once: bool) -> Result<(), String> {
    let mut agent = Agent::new(cfg).map_err(|e| e.to_string())?;
    if once {
        agent.register().map_err(|e| e.to_string())?;
        agent.reconcile().map_err(|e| e.to_string())?;
        // One pass: a firewall failure is the pass's failure too.
        return match agent.nat_failure() {
            Some(e) => Err(e.to_string()),
            None => Ok(()),
        };
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
    let inputs = BirdInputs::new(cfg, &st);
    for p in st.problems.iter().chain(&inputs.bgp.problems) {
        log::warn!("{p}");
    }
    print!("{}", render(&inputs));
    Ok(())
}
