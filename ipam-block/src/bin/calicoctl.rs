//! `calicoctl ipam …`: the operator's view of Calico IPAM (the verbs of
//! Calico's calicoctl). See `calicoctl --help` and `calicoctl ipam <command>
//! --help`.
//!
//! Owns its command line (clap derive, the tools' conventions from
//! `tool_cli`: `-v`/`--log-level`, the datastore flags and their variables,
//! `calicoctl: error: …` on failure) and the printing of results; the work
//! is in `ipam_block::ops`. The datastore is `--config`'s CNI config (the
//! keys of its calico plugin) under `DATASTORE_TYPE`/`ETCD_ENDPOINTS`/…
//! under the datastore flags, resolved by `calico_store::resolve`. Output
//! goes to stdout; errors and diagnostics (warnings by default, `-v` for
//! the library's info lines) to stderr. Never writes anything but results
//! to stdout.
//!
//! Exit status: 0 done (for `check`: no problem), 1 `check` found problems,
//! 2 bad usage or configuration (clap's usage errors too), 3 datastore or
//! state error.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use calico_store::resolve::{Base, ResolveError};
use calico_store::{Datastore, DatastoreConfig};
use clap::{ArgGroup, CommandFactory, Parser, Subcommand};
use ipam_block::ops::{self, NewPool, OpsError, Snapshot};
use ipnetwork::IpNetwork;
use log::LevelFilter;
use tool_cli::values::{parse_bool, parse_duration};
use tool_cli::{DatastoreArgs, LogArgs, Logging};

const TOOL: &str = "calicoctl";

/// `calicoctl`'s command line.
#[derive(Debug, Parser)]
#[command(
    name = "calicoctl",
    version,
    about = "Calico IPAM for operators: utilization, consistency checks, releasing leaks, IP pools",
    after_help = "Exit status: 0 done (check: no problem), 1 check found problems, \
                  2 bad usage or configuration, 3 datastore or state error.",
    args_override_self = true
)]
struct Cli {
    #[command(flatten)]
    log: LogArgs,
    #[command(flatten)]
    ds: DatastoreArgs,
    /// A CNI network config (.conf) or list (.conflist): the datastore keys of its calico
    /// plugin, under the variables and flags above
    #[arg(long, global = true, value_name = "FILE", help_heading = "Datastore")]
    config: Option<PathBuf>,
    /// Without one: this help, exit 0
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Calico IPAM: addresses, blocks, handles, the IPAM config and IP pools
    #[command(subcommand)]
    Ipam(Ipam),
}

/// `calicoctl ipam <command>`.
#[derive(Debug, Subcommand)]
enum Ipam {
    /// Utilization per pool (and per block), or one address, the borrowed addresses, the IPAM
    /// config
    #[command(args_override_self = true)]
    Show {
        /// One row per block as well
        #[arg(long)]
        show_blocks: bool,
        /// The addresses nodes use from blocks affine to another node
        #[arg(long)]
        show_borrowed: bool,
        /// The global IPAM configuration
        #[arg(long)]
        show_configuration: bool,
        /// One address: its pool, block, handle, attributes and workload endpoint
        #[arg(long, value_name = "IP")]
        ip: Option<IpAddr>,
    },
    /// Find allocations without a pod record, handles without allocations and blocks of
    /// unknown nodes (exit 1 when it finds any)
    #[command(args_override_self = true)]
    Check {
        /// Also write the report as JSON to FILE
        #[arg(short = 'o', long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Free one address (and its handle's count)
    #[command(args_override_self = true)]
    Release {
        /// The address to free
        #[arg(long, value_name = "IP")]
        ip: IpAddr,
    },
    /// Change the global IPAM configuration (at least one setting)
    #[command(args_override_self = true, group(ArgGroup::new("setting").required(true).multiple(true)))]
    Configure {
        /// Allocate only from blocks affine to the node (no borrowing); a bare flag is true
        #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true",
              value_parser = parse_bool, group = "setting")]
        strictaffinity: Option<bool>,
        /// Blocks one node may claim (0: no limit; needs strict affinity)
        #[arg(long, value_name = "N", group = "setting")]
        max_blocks_per_host: Option<u32>,
    },
    /// Release the leaks `check` proves (no pod record), older than the grace period
    #[command(args_override_self = true)]
    Gc {
        /// Keep allocations younger than this (e.g. 0s, 90s, 15m, 1h)
        #[arg(long, value_name = "DUR", default_value = "15m", value_parser = parse_duration)]
        grace_period: Duration,
    },
    /// IP pools: add, list, enable, disable
    #[command(subcommand)]
    Pool(Pool),
}

/// `calicoctl ipam pool <command>`.
#[derive(Debug, Subcommand)]
enum Pool {
    /// Create an IP pool (never replaces one; checked as Calico's IPPool validation does)
    #[command(args_override_self = true)]
    Add {
        /// The pool's name
        #[arg(long)]
        name: String,
        /// Its CIDR (no host bits)
        #[arg(long, value_name = "CIDR")]
        cidr: IpNetwork,
        /// Prefix length of its blocks [default: 26 for IPv4, 122 for IPv6]
        #[arg(long, value_name = "PREFIX")]
        block_size: Option<u8>,
        /// Create it disabled (no new allocations from it)
        #[arg(long)]
        disabled: bool,
        /// The nodes that allocate from it [default: all()]
        #[arg(long, value_name = "SELECTOR")]
        node_selector: Option<String>,
        /// Masquerade traffic from its addresses to outside the pools
        #[arg(long)]
        nat_outgoing: bool,
    },
    /// The IP pools, one per line
    List,
    /// Allow new allocations from a pool again
    Enable {
        /// The pool's name
        name: String,
    },
    /// Stop new allocations from a pool (existing ones stay)
    Disable {
        /// The pool's name
        name: String,
    },
}

/// The datastore: `--config`'s keys, under the environment, under the flags
/// (the environment is in `ds` already: clap's `env =`).
fn datastore_config(cli: &Cli) -> Result<DatastoreConfig, ResolveError> {
    cli.ds.resolve(match &cli.config {
        Some(path) => Base::CniFile(path),
        None => Base::Defaults,
    })
}

fn run(cli: Cli) -> Result<ExitCode, OpsError> {
    let Some(Command::Ipam(cmd)) = &cli.command else {
        // Bare `calicoctl`: the help on stdout, exit 0, as before clap.
        print!("{}", Cli::command().render_help());
        return Ok(ExitCode::SUCCESS);
    };
    let store = calico_store::open(&datastore_config(&cli)?)?;
    let store = store.as_ref();
    match cmd {
        Ipam::Show { show_blocks, show_borrowed, show_configuration, ip } => {
            show(store, *show_blocks, *show_borrowed, *show_configuration, *ip)
        }
        Ipam::Check { output } => check(store, output.as_ref()),
        Ipam::Release { ip } => release(store, *ip),
        Ipam::Configure { strictaffinity, max_blocks_per_host } => {
            configure(store, *strictaffinity, *max_blocks_per_host)
        }
        Ipam::Gc { grace_period } => gc(store, *grace_period),
        Ipam::Pool(Pool::Add { name, cidr, block_size, disabled, node_selector, nat_outgoing }) => {
            let p = NewPool {
                name: name.clone(),
                cidr: *cidr,
                block_size: *block_size,
                disabled: *disabled,
                node_selector: node_selector.clone(),
                nat_outgoing: *nat_outgoing,
            };
            pool_add(store, &p)
        }
        Ipam::Pool(Pool::List) => pool_list(store),
        Ipam::Pool(Pool::Enable { name }) => pool_set_disabled(store, name, false),
        Ipam::Pool(Pool::Disable { name }) => pool_set_disabled(store, name, true),
    }
}

/// `ipam show`: one address (`--ip`), else the config, else the borrowed
/// addresses, else utilization.
fn show(
    store: &dyn Datastore,
    blocks: bool,
    show_borrowed: bool,
    show_config: bool,
    ip: Option<IpAddr>,
) -> Result<ExitCode, OpsError> {
    let snap = Snapshot::load(store)?;
    match ip {
        Some(ip) => print_ip(&ops::show_ip(&snap, ip)),
        None if show_config => {
            let c = &snap.config;
            let rows = vec![
                vec!["PROPERTY".to_string(), "VALUE".to_string()],
                vec!["StrictAffinity".into(), c.strict_affinity.to_string()],
                vec!["AutoAllocateBlocks".into(), c.auto_allocate_blocks.to_string()],
                vec!["MaxBlocksPerHost".into(), c.max_blocks_per_host.to_string()],
            ];
            print!("{}", ops::table(&rows));
        }
        None if show_borrowed => {
            let mut rows =
                vec![["IP", "BORROWING-NODE", "BLOCK", "BLOCK OWNER", "HANDLE"].map(String::from).to_vec()];
            for b in ops::borrowed(&snap) {
                rows.push(vec![
                    b.ip.to_string(),
                    b.node,
                    b.block.to_string(),
                    b.block_owner,
                    b.handle.unwrap_or_default(),
                ]);
            }
            print!("{}", ops::table(&rows));
        }
        None => {
            let mut rows = vec![["GROUPING", "CIDR", "OWNER", "IPS TOTAL", "IPS IN USE", "IPS FREE"]
                .map(String::from)
                .to_vec()];
            for u in ops::show(&snap, blocks) {
                rows.push(vec![
                    u.grouping.to_string(),
                    u.cidr.to_string(),
                    u.owner.clone(),
                    u.total.to_string(),
                    ops::with_percent(u.in_use, u.total),
                    ops::with_percent(u.free(), u.total),
                ]);
            }
            print!("{}", ops::table(&rows));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `ipam check [-o <report.json>]`: exit 1 when it finds a problem.
fn check(store: &dyn Datastore, out: Option<&PathBuf>) -> Result<ExitCode, OpsError> {
    let report = ops::check(&Snapshot::load(store)?, SystemTime::now());
    print!("{report}");
    if let Some(path) = out {
        let json = serde_json::to_vec_pretty(&report).unwrap_or_default();
        std::fs::write(path, json)
            .map_err(|e| OpsError::Usage(format!("cannot write {}: {e}", path.display())))?;
        println!("Report written to {}", path.display());
    }
    Ok(if report.problems() == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// `ipam release --ip <addr>`.
fn release(store: &dyn Datastore, ip: IpAddr) -> Result<ExitCode, OpsError> {
    match ops::release_ip(store, ip)? {
        Some(handle) => println!("Released {ip} (handle {handle})"),
        None => println!("Released {ip} (it had no handle)"),
    }
    Ok(ExitCode::SUCCESS)
}

/// `ipam configure [--strictaffinity[=<bool>]] [--max-blocks-per-host <n>]`
/// (clap requires at least one).
fn configure(store: &dyn Datastore, strict: Option<bool>, max: Option<u32>) -> Result<ExitCode, OpsError> {
    let cfg = ops::configure(store, strict, max)?;
    println!(
        "IPAM config: StrictAffinity={} AutoAllocateBlocks={} MaxBlocksPerHost={}",
        cfg.strict_affinity, cfg.auto_allocate_blocks, cfg.max_blocks_per_host
    );
    Ok(ExitCode::SUCCESS)
}

/// `ipam gc [--grace-period <15m>]`.
fn gc(store: &dyn Datastore, grace: Duration) -> Result<ExitCode, OpsError> {
    let r = ops::gc(store, grace, SystemTime::now())?;
    for (id, ips) in &r.released {
        let ips: Vec<String> = ips.iter().map(ToString::to_string).collect();
        println!("Released {id}: [{}]", ips.join(", "));
    }
    for (id, why) in &r.kept {
        println!("Kept {id}: {why}");
    }
    println!("{} handle(s) released, {} kept.", r.released.len(), r.kept.len());
    Ok(ExitCode::SUCCESS)
}

/// `ipam pool add --name <n> --cidr <cidr> [...]`.
fn pool_add(store: &dyn Datastore, p: &NewPool) -> Result<ExitCode, OpsError> {
    let pool = ops::pool_add(store, p)?;
    println!("Created IP pool {} ({}, blocks /{})", pool.name, pool.spec.cidr, pool.spec.block_prefix());
    Ok(ExitCode::SUCCESS)
}

/// `ipam pool list`.
fn pool_list(store: &dyn Datastore) -> Result<ExitCode, OpsError> {
    let mut rows = vec![["NAME", "CIDR", "BLOCK SIZE", "SELECTOR", "DISABLED"].map(String::from).to_vec()];
    for p in ops::pool_list(store)? {
        rows.push(vec![
            p.name.to_string(),
            p.spec.cidr.to_string(),
            p.spec.block_prefix().to_string(),
            p.spec.node_selector.clone().unwrap_or_else(|| "all()".into()),
            p.spec.disabled.to_string(),
        ]);
    }
    print!("{}", ops::table(&rows));
    Ok(ExitCode::SUCCESS)
}

/// `ipam pool enable|disable <name>`.
fn pool_set_disabled(store: &dyn Datastore, name: &str, disabled: bool) -> Result<ExitCode, OpsError> {
    ops::pool_set_disabled(store, name, disabled)?;
    println!("IP pool {name} is now {}", if disabled { "disabled" } else { "enabled" });
    Ok(ExitCode::SUCCESS)
}

fn print_ip(info: &ops::IpInfo) {
    if !info.allocated {
        match info.pool.as_deref() {
            Some(p) => println!("IP {} is not assigned (pool {p})", info.ip),
            None => println!("IP {} is not assigned and is in no IP pool", info.ip),
        }
        return;
    }
    println!("IP {} is in use", info.ip);
    println!("  Pool:      {}", info.pool.as_deref().unwrap_or("<none>"));
    if let Some(b) = info.block {
        println!("  Block:     {b} ({})", info.block_affinity.as_deref().unwrap_or("no affinity"));
    }
    println!("  Handle:    {}", info.handle.as_deref().unwrap_or("<none>"));
    for (k, v) in &info.attributes {
        println!("  Attribute: {k}={v}");
    }
    if info.endpoints.is_empty() {
        println!("  Workload endpoint: none (no pod record holds this address)");
    }
    for e in &info.endpoints {
        println!("  Workload endpoint: {e}");
    }
}

/// The exit code of a failure: 2 bad usage or configuration, 3 the
/// datastore or the state refused (1 is `check`'s "problems found").
fn exit_code(e: &OpsError) -> u8 {
    match e {
        OpsError::Usage(_)
        | OpsError::Datastore(_)
        | OpsError::Store(calico_store::StoreError::Config(_)) => 2,
        _ => 3,
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Warnings by default: the results are on stdout, and the library's
    // info lines (`created IP pool …`) would only repeat them; -v shows them.
    if let Err(e) = Logging::new(TOOL).default_level(LevelFilter::Warn).init(&cli.log) {
        return tool_cli::finish::<ExitCode, _>(TOOL, Err(e));
    }
    tool_cli::finish_with(TOOL, run(cli), exit_code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::error::ErrorKind;

    fn parse(argv: &[&str]) -> Result<Cli, clap::Error> {
        tool_cli::try_parse_without_env(std::iter::once("calicoctl").chain(argv.iter().copied()))
    }

    fn ipam(argv: &[&str]) -> Ipam {
        match parse(argv).unwrap().command {
            Some(Command::Ipam(i)) => i,
            None => panic!("no command in {argv:?}"),
        }
    }

    fn kind(argv: &[&str]) -> ErrorKind {
        parse(argv).unwrap_err().kind()
    }

    #[test]
    fn show_and_release_spellings() {
        let Ipam::Show { show_blocks, show_borrowed, show_configuration, ip } = ipam(&["ipam", "show"])
        else {
            panic!()
        };
        assert!(!show_blocks && !show_borrowed && !show_configuration && ip.is_none());
        let Ipam::Show { show_blocks, ip, .. } = ipam(&["ipam", "show", "--show-blocks", "--ip", "10.0.0.1"])
        else {
            panic!()
        };
        assert!(show_blocks);
        assert_eq!(ip, Some("10.0.0.1".parse().unwrap()));
        let Ipam::Show { show_borrowed, show_configuration, ip, .. } =
            ipam(&["ipam", "show", "--show-borrowed", "--show-configuration", "--ip=fd00::5"])
        else {
            panic!()
        };
        assert!(show_borrowed && show_configuration);
        assert_eq!(ip, Some("fd00::5".parse().unwrap()));
        assert_eq!(kind(&["ipam", "show", "--ip", "10.0.0.300"]), ErrorKind::ValueValidation);
        assert_eq!(kind(&["ipam", "show", "--bogus"]), ErrorKind::UnknownArgument);

        let Ipam::Release { ip } = ipam(&["ipam", "release", "--ip=10.0.0.2"]) else { panic!() };
        assert_eq!(ip, "10.0.0.2".parse::<IpAddr>().unwrap());
        let Ipam::Release { ip } = ipam(&["ipam", "release", "--ip", "10.0.0.1", "--ip", "10.0.0.3"]) else {
            panic!()
        };
        assert_eq!(ip, "10.0.0.3".parse::<IpAddr>().unwrap(), "the last one wins");
        assert_eq!(kind(&["ipam", "release"]), ErrorKind::MissingRequiredArgument);
    }

    #[test]
    fn check_configure_and_gc_spellings() {
        let Ipam::Check { output } = ipam(&["ipam", "check"]) else { panic!() };
        assert_eq!(output, None);
        for argv in [["ipam", "check", "-o", "r.json"], ["ipam", "check", "--output", "r.json"]] {
            let Ipam::Check { output } = ipam(&argv) else { panic!() };
            assert_eq!(output, Some(PathBuf::from("r.json")), "{argv:?}");
        }
        let Ipam::Check { output } = ipam(&["ipam", "check", "--output=r.json"]) else { panic!() };
        assert_eq!(output, Some(PathBuf::from("r.json")));

        let conf = |argv: &[&str]| match ipam(argv) {
            Ipam::Configure { strictaffinity, max_blocks_per_host } => (strictaffinity, max_blocks_per_host),
            other => panic!("{other:?}"),
        };
        assert_eq!(conf(&["ipam", "configure", "--strictaffinity=true"]), (Some(true), None));
        assert_eq!(conf(&["ipam", "configure", "--strictaffinity=false"]), (Some(false), None));
        assert_eq!(conf(&["ipam", "configure", "--strictaffinity", "false"]), (Some(false), None));
        assert_eq!(conf(&["ipam", "configure", "--strictaffinity"]), (Some(true), None));
        assert_eq!(
            conf(&["ipam", "configure", "--strictaffinity", "--max-blocks-per-host", "3"]),
            (Some(true), Some(3))
        );
        assert_eq!(conf(&["ipam", "configure", "--max-blocks-per-host=0"]), (None, Some(0)));
        assert_eq!(kind(&["ipam", "configure", "--strictaffinity=maybe"]), ErrorKind::ValueValidation);
        assert_eq!(kind(&["ipam", "configure", "--max-blocks-per-host", "-1"]), ErrorKind::UnknownArgument);
        assert_eq!(kind(&["ipam", "configure"]), ErrorKind::MissingRequiredArgument, "nothing to change");

        let grace = |argv: &[&str]| match ipam(argv) {
            Ipam::Gc { grace_period } => grace_period,
            other => panic!("{other:?}"),
        };
        assert_eq!(grace(&["ipam", "gc"]), Duration::from_secs(15 * 60), "the default");
        assert_eq!(grace(&["ipam", "gc", "--grace-period", "0s"]), Duration::ZERO);
        assert_eq!(grace(&["ipam", "gc", "--grace-period=250ms"]), Duration::from_millis(250));
        assert_eq!(grace(&["ipam", "gc", "--grace-period", "15m"]), Duration::from_secs(900));
        // What ops::parse_duration refused before tool-cli's parser replaced it.
        for bad in ["-1s", "5x", "99999999999999999999999999h"] {
            assert_eq!(kind(&["ipam", "gc", &format!("--grace-period={bad}")]), ErrorKind::ValueValidation);
        }
    }

    #[test]
    fn pool_spellings() {
        let Ipam::Pool(Pool::Add { name, cidr, block_size, disabled, node_selector, nat_outgoing }) =
            ipam(&["ipam", "pool", "add", "--name", "blue", "--cidr", "10.60.0.0/24", "--block-size", "28"])
        else {
            panic!()
        };
        assert_eq!((name.as_str(), cidr.to_string(), block_size), ("blue", "10.60.0.0/24".into(), Some(28)));
        assert!(!disabled && !nat_outgoing && node_selector.is_none());
        let Ipam::Pool(Pool::Add { name, block_size, disabled, node_selector, nat_outgoing, .. }) = ipam(&[
            "ipam",
            "pool",
            "add",
            "--name=green",
            "--cidr=fd00:10::/64",
            "--disabled",
            "--node-selector",
            "rack == 'a'",
            "--nat-outgoing",
        ]) else {
            panic!()
        };
        assert_eq!(
            (name.as_str(), block_size, node_selector.as_deref()),
            ("green", None, Some("rack == 'a'"))
        );
        assert!(disabled && nat_outgoing);
        assert_eq!(
            kind(&["ipam", "pool", "add", "--cidr", "10.0.0.0/24"]),
            ErrorKind::MissingRequiredArgument
        );
        assert_eq!(kind(&["ipam", "pool", "add", "--name", "x"]), ErrorKind::MissingRequiredArgument);
        assert_eq!(
            kind(&["ipam", "pool", "add", "--name", "x", "--cidr", "nope"]),
            ErrorKind::ValueValidation
        );
        assert_eq!(
            kind(&["ipam", "pool", "add", "--name", "x", "--cidr", "10.0.0.0/24", "--block-size", "big"]),
            ErrorKind::ValueValidation
        );
        assert!(matches!(ipam(&["ipam", "pool", "list"]), Ipam::Pool(Pool::List)));
        let Ipam::Pool(Pool::Enable { name }) = ipam(&["ipam", "pool", "enable", "blue"]) else { panic!() };
        assert_eq!(name, "blue");
        let Ipam::Pool(Pool::Disable { name }) = ipam(&["ipam", "pool", "disable", "blue"]) else { panic!() };
        assert_eq!(name, "blue");
        assert_eq!(kind(&["ipam", "pool", "enable"]), ErrorKind::MissingRequiredArgument);
        assert_eq!(kind(&["ipam", "pool", "list", "extra"]), ErrorKind::UnknownArgument);
    }

    #[test]
    fn commands_help_and_global_flags() {
        assert!(parse(&[]).unwrap().command.is_none(), "bare calicoctl: the help, exit 0");
        assert_eq!(kind(&["frob"]), ErrorKind::InvalidSubcommand);
        assert_eq!(kind(&["ipam", "frob"]), ErrorKind::InvalidSubcommand);
        assert_eq!(kind(&["ipam"]), ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand);
        assert_eq!(kind(&["ipam", "pool"]), ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand);
        let every = [
            &[][..],
            &["ipam"],
            &["ipam", "show"],
            &["ipam", "check"],
            &["ipam", "release"],
            &["ipam", "configure"],
            &["ipam", "gc"],
            &["ipam", "pool"],
            &["ipam", "pool", "add"],
            &["ipam", "pool", "list"],
            &["ipam", "pool", "enable"],
            &["ipam", "pool", "disable"],
        ];
        for cmd in every {
            for help in ["--help", "-h"] {
                let argv: Vec<&str> = cmd.iter().copied().chain([help]).collect();
                let e = parse(&argv).unwrap_err();
                assert_eq!((e.kind(), e.exit_code()), (ErrorKind::DisplayHelp, 0), "{argv:?}");
            }
        }
        // Datastore, --config and logging flags before or after the command.
        let c = parse(&["--etcd-endpoints", "http://a:2379", "-v", "ipam", "show"]).unwrap();
        assert_eq!(c.ds.etcd_endpoints.as_deref(), Some("http://a:2379"));
        assert_eq!(c.log.verbose, 1);
        let c = parse(&[
            "ipam",
            "pool",
            "list",
            "--config=/etc/cni/net.d/10-calico.conflist",
            "--log-level",
            "debug",
        ])
        .unwrap();
        assert_eq!(c.config, Some(PathBuf::from("/etc/cni/net.d/10-calico.conflist")));
        assert_eq!(c.log.log_level, Some(LevelFilter::Debug));
        let c = parse(&[
            "--datastore-type=file",
            "ipam",
            "check",
            "--datastore-path",
            "/var/lib/calico",
            "--etcd-ca-cert-file=/pki/ca.pem",
            "--etcd-cert-file",
            "/pki/c.pem",
            "--etcd-key-file=/pki/k.pem",
        ])
        .unwrap();
        assert_eq!(c.ds.datastore_type.as_deref(), Some("file"));
        assert_eq!(c.ds.datastore_path, Some(PathBuf::from("/var/lib/calico")));
        assert_eq!(c.ds.etcd_ca_cert_file, Some(PathBuf::from("/pki/ca.pem")));
        assert_eq!(c.ds.etcd_cert_file, Some(PathBuf::from("/pki/c.pem")));
        assert_eq!(c.ds.etcd_key_file, Some(PathBuf::from("/pki/k.pem")));
        // The variables Calico's calicoctl reads, through clap (on the global
        // flags, so in every subcommand too).
        let mut cmd = Cli::command();
        cmd.build();
        let show = cmd.find_subcommand("ipam").and_then(|i| i.find_subcommand("show")).unwrap();
        for c in [&cmd, show] {
            let env = |id: &str| c.get_arguments().find(|a| a.get_id() == id).and_then(|a| a.get_env());
            for (id, var) in [
                ("datastore_type", "DATASTORE_TYPE"),
                ("datastore_path", "DATASTORE_PATH"),
                ("etcd_endpoints", "ETCD_ENDPOINTS"),
                ("etcd_key_file", "ETCD_KEY_FILE"),
                ("etcd_cert_file", "ETCD_CERT_FILE"),
                ("etcd_ca_cert_file", "ETCD_CA_CERT_FILE"),
            ] {
                assert_eq!(env(id), Some(std::ffi::OsStr::new(var)), "{id}");
            }
        }
    }

    #[test]
    fn flags_override_the_cni_config() {
        let dir = tempfile::tempdir().unwrap();
        let list = dir.path().join("10-calico.conflist");
        let conflist = serde_json::json!({"cniVersion": "1.0.0", "name": "k8s", "plugins": [
            {"type": "calico", "datastore_type": "etcdv3", "etcd_endpoints": "http://conf:2379"},
            {"type": "portmap"}]});
        std::fs::write(&list, conflist.to_string()).unwrap();
        let conf = list.to_str().unwrap();
        let cfg = datastore_config(&parse(&["--config", conf, "ipam", "show"]).unwrap()).unwrap();
        assert_eq!(cfg.etcd_endpoints.as_deref(), Some("http://conf:2379"));
        let cli = parse(&["ipam", "show", "--config", conf, "--etcd-endpoints=http://flag:2379"]).unwrap();
        let cfg = datastore_config(&cli).unwrap();
        assert_eq!(cfg.etcd_endpoints.as_deref(), Some("http://flag:2379"));
        assert_eq!(cfg.datastore_type.as_deref(), Some("etcdv3"));
        let missing = parse(&["--config", "/nonexistent/x.conflist", "ipam", "show"]).unwrap();
        let e = OpsError::from(datastore_config(&missing).unwrap_err());
        assert_eq!(exit_code(&e), 2, "{e}");
        let bad = parse(&["--datastore-type", "etcdv3", "ipam", "show"]).unwrap();
        let e = OpsError::from(datastore_config(&bad).unwrap_err());
        assert_eq!(exit_code(&e), 2, "etcdv3 without endpoints: {e}");
    }

    #[test]
    fn exit_codes() {
        assert_eq!(exit_code(&OpsError::Usage("cannot write r.json".into())), 2);
        assert_eq!(exit_code(&OpsError::Store(calico_store::StoreError::Config("x".into()))), 2);
        assert_eq!(exit_code(&OpsError::Refused("maxBlocksPerHost > 0 needs …".into())), 3);
        assert_eq!(exit_code(&OpsError::Store(calico_store::StoreError::Unavailable("etcd".into()))), 3);
    }
}
