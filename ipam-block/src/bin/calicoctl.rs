//! `calicoctl ipam …`: the operator's view of Calico IPAM (the verbs of
//! Calico's calicoctl). Argument parsing and printing only: the datastore
//! is chosen by `calico_store::resolve` (`--config`, then the environment,
//! then the datastore flags) and the work is in `ipam_block::ops`. Output
//! goes to stdout, errors to stderr.
//!
//! Exit status: 0 done (for `check`: no problem), 1 `check` found problems,
//! 2 bad usage or configuration, 3 datastore or state error.

use std::net::IpAddr;
use std::process::ExitCode;
use std::time::SystemTime;

use calico_store::resolve::{self, Base, DatastoreFlags, Setting};
use calico_store::Datastore;
use ipam_block::ops::{self, NewPool, OpsError, Snapshot};

const USAGE: &str = "\
Usage: calicoctl [datastore flags] ipam <command> [options]

Commands:
  ipam show [--show-blocks] [--ip <addr>]   utilization per pool (and block), or one address
  ipam show --show-borrowed | --show-configuration
  ipam check [-o <report.json>]             find leaked addresses and inconsistent documents
  ipam release --ip <addr>                  free one address (and its handle count)
  ipam configure --strictaffinity=<true|false> [--max-blocks-per-host <n>]
  ipam gc [--grace-period <15m>]            release leaks `check` proves (older than the grace period)
  ipam pool add --name <n> --cidr <cidr> [--block-size <b>] [--disabled] [--node-selector <s>] [--nat-outgoing]
  ipam pool list
  ipam pool enable|disable <name>

Datastore flags (override DATASTORE_TYPE, DATASTORE_PATH, ETCD_ENDPOINTS, ETCD_KEY_FILE,
ETCD_CERT_FILE, ETCD_CA_CERT_FILE, which override --config):
  --datastore-type <file|etcdv3>  --datastore-path <dir>  --etcd-endpoints <urls>
  --etcd-key-file <pem>  --etcd-cert-file <pem>  --etcd-ca-cert-file <pem>
  --config <CNI .conf/.conflist: keys of its calico plugin>
";

/// Parsed `--flag value` / `--flag=value` / bare flags and positionals.
struct Args {
    words: Vec<String>,
    flags: Vec<(String, Option<String>)>,
}

/// Flags that never take a value.
const BARE: &[&str] = &[
    "--show-blocks",
    "--show-borrowed",
    "--show-configuration",
    "--disabled",
    "--nat-outgoing",
    "--help",
    "-h",
];

impl Args {
    fn parse(argv: Vec<String>) -> Args {
        let mut a = Args { words: Vec::new(), flags: Vec::new() };
        let mut it = argv.into_iter().peekable();
        while let Some(w) = it.next() {
            if !w.starts_with('-') {
                a.words.push(w);
            } else if let Some((k, v)) = w.split_once('=') {
                a.flags.push((k.to_string(), Some(v.to_string())));
            } else if BARE.contains(&w.as_str()) {
                a.flags.push((w, None));
            } else {
                let v = it.next_if(|n| !n.starts_with("--"));
                a.flags.push((w, v));
            }
        }
        a
    }

    fn take(&mut self, name: &str) -> Result<Option<String>, OpsError> {
        match self.flags.iter().position(|(k, _)| k == name) {
            None => Ok(None),
            Some(i) => match self.flags.remove(i) {
                (_, Some(v)) => Ok(Some(v)),
                (k, None) => Err(OpsError::Usage(format!("{k} needs a value"))),
            },
        }
    }

    fn has(&mut self, name: &str) -> bool {
        match self.flags.iter().position(|(k, _)| k == name) {
            Some(i) => {
                self.flags.remove(i);
                true
            }
            None => false,
        }
    }

    fn finish(&self) -> Result<(), OpsError> {
        match self.flags.first() {
            Some((k, _)) => Err(OpsError::Usage(format!("unknown option {k}"))),
            None => Ok(()),
        }
    }
}

fn parse<T: std::str::FromStr>(what: &str, v: &str) -> Result<T, OpsError>
where
    T::Err: std::fmt::Display,
{
    v.parse().map_err(|e| OpsError::Usage(format!("invalid {what} {v:?}: {e}")))
}

fn run(argv: Vec<String>) -> Result<ExitCode, OpsError> {
    let mut a = Args::parse(argv);
    if a.has("--help") || a.has("-h") || a.words.is_empty() {
        print!("{USAGE}");
        return Ok(ExitCode::SUCCESS);
    }
    let mut flags = DatastoreFlags::default();
    for s in Setting::ALL {
        if let Some(v) = a.take(s.flag())? {
            flags.set(s, v);
        }
    }
    let config = a.take("--config")?;
    let words = std::mem::take(&mut a.words);
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    if words.first() != Some(&"ipam") {
        return Err(OpsError::Usage(format!(
            "unknown command {:?}\n\n{USAGE}",
            words.first().unwrap_or(&"")
        )));
    }
    let base = match &config {
        Some(path) => Base::CniFile(path.as_ref()),
        None => Base::Defaults,
    };
    let cfg = resolve::resolve(base, &resolve::process_env, &flags)?;
    let store = calico_store::open(&cfg)?;
    let store = store.as_ref();
    match words[1..] {
        ["show"] => show(&mut a, store),
        ["check"] => check(&mut a, store),
        ["release"] => release(&mut a, store),
        ["configure"] => configure(&mut a, store),
        ["gc"] => gc(&mut a, store),
        ["pool", "add"] => pool_add(&mut a, store),
        ["pool", "list"] => pool_list(&mut a, store),
        ["pool", verb @ ("enable" | "disable"), name] => {
            a.finish()?;
            ops::pool_set_disabled(store, name, verb == "disable")?;
            println!("IP pool {name} is now {verb}d");
            Ok(ExitCode::SUCCESS)
        }
        _ => Err(OpsError::Usage(format!("unknown command: {}\n\n{USAGE}", words.join(" ")))),
    }
}

/// `ipam show [--show-blocks] [--ip <addr>] [--show-borrowed] [--show-configuration]`.
fn show(a: &mut Args, store: &dyn Datastore) -> Result<ExitCode, OpsError> {
    let blocks = a.has("--show-blocks");
    let show_borrowed = a.has("--show-borrowed");
    let show_config = a.has("--show-configuration");
    let ip = a.take("--ip")?.map(|v| parse::<IpAddr>("--ip", &v)).transpose()?;
    a.finish()?;
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
fn check(a: &mut Args, store: &dyn Datastore) -> Result<ExitCode, OpsError> {
    let out = a.take("-o")?.or(a.take("--output")?);
    a.finish()?;
    let report = ops::check(&Snapshot::load(store)?, SystemTime::now());
    print!("{report}");
    if let Some(path) = out {
        let json = serde_json::to_vec_pretty(&report).unwrap_or_default();
        std::fs::write(&path, json).map_err(|e| OpsError::Usage(format!("cannot write {path}: {e}")))?;
        println!("Report written to {path}");
    }
    Ok(if report.problems() == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// `ipam release --ip <addr>`.
fn release(a: &mut Args, store: &dyn Datastore) -> Result<ExitCode, OpsError> {
    let ip = a.take("--ip")?.ok_or_else(|| OpsError::Usage("release needs --ip <addr>".into()))?;
    let ip: IpAddr = parse("--ip", &ip)?;
    a.finish()?;
    match ops::release_ip(store, ip)? {
        Some(handle) => println!("Released {ip} (handle {handle})"),
        None => println!("Released {ip} (it had no handle)"),
    }
    Ok(ExitCode::SUCCESS)
}

/// `ipam configure --strictaffinity=<bool> [--max-blocks-per-host <n>]`.
fn configure(a: &mut Args, store: &dyn Datastore) -> Result<ExitCode, OpsError> {
    let strict = a.take("--strictaffinity")?.map(|v| parse::<bool>("--strictaffinity", &v)).transpose()?;
    let max =
        a.take("--max-blocks-per-host")?.map(|v| parse::<u32>("--max-blocks-per-host", &v)).transpose()?;
    a.finish()?;
    if strict.is_none() && max.is_none() {
        return Err(OpsError::Usage("configure needs --strictaffinity and/or --max-blocks-per-host".into()));
    }
    let cfg = ops::configure(store, strict, max)?;
    println!(
        "IPAM config: StrictAffinity={} AutoAllocateBlocks={} MaxBlocksPerHost={}",
        cfg.strict_affinity, cfg.auto_allocate_blocks, cfg.max_blocks_per_host
    );
    Ok(ExitCode::SUCCESS)
}

/// `ipam gc [--grace-period <15m>]`.
fn gc(a: &mut Args, store: &dyn Datastore) -> Result<ExitCode, OpsError> {
    let grace = match a.take("--grace-period")? {
        Some(v) => ops::parse_duration(&v)?,
        None => std::time::Duration::from_secs(15 * 60),
    };
    a.finish()?;
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
fn pool_add(a: &mut Args, store: &dyn Datastore) -> Result<ExitCode, OpsError> {
    let need = |v: Option<String>, f: &str| v.ok_or_else(|| OpsError::Usage(format!("pool add needs {f}")));
    let name = need(a.take("--name")?, "--name")?;
    let cidr = parse("--cidr", &need(a.take("--cidr")?, "--cidr")?)?;
    let block_size = a.take("--block-size")?.map(|v| parse::<u8>("--block-size", &v)).transpose()?;
    let p = NewPool {
        name,
        cidr,
        block_size,
        disabled: a.has("--disabled"),
        node_selector: a.take("--node-selector")?,
        nat_outgoing: a.has("--nat-outgoing"),
    };
    a.finish()?;
    let pool = ops::pool_add(store, &p)?;
    println!("Created IP pool {} ({}, blocks /{})", pool.name, pool.spec.cidr, pool.spec.block_prefix());
    Ok(ExitCode::SUCCESS)
}

/// `ipam pool list`.
fn pool_list(a: &mut Args, store: &dyn Datastore) -> Result<ExitCode, OpsError> {
    a.finish()?;
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

fn main() -> ExitCode {
    match run(std::env::args().skip(1).collect()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("calicoctl: {e}");
            match e {
                OpsError::Usage(_)
                | OpsError::Datastore(_)
                | OpsError::Store(calico_store::StoreError::Config(_)) => ExitCode::from(2),
                _ => ExitCode::from(3),
            }
        }
    }
}
