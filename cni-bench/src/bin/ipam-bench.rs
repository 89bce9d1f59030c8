//! `ipam-bench`: IPAM cost on a real etcd, for `make bench`.
//!
//! (a) etcd requests per steady-state allocation: the allocator in-process on
//!     an [`EtcdStore`], counting the requests the store sends (target ≤ 2).
//! (b) throughput: 3 nodes × N pods, C concurrent `calico-ipam` ADD processes
//!     (then DELs), on etcd, on the file store and with the reference
//!     `host-local`, in the same run: pods/s, p50/p99 ADD latency, duplicates
//!     and leaks after DEL (both must be zero).
//!
//! Starts a private etcd on free loopback ports (or uses `--etcd-endpoints`)
//! and one network namespace for CNI_NETNS (the IPAM plugins never enter
//! it), and removes both at the end. Nothing touches the root namespace.
//!
//! Owns its command line (clap; `ipam-bench --help`: `--pods-per-node`,
//! `--concurrency`, `--etcd-endpoints`, `--calico-ipam`, `--host-local`, and
//! the tools' `-v`/`--log-level`) and exit codes: 0 clean, 1 duplicates or
//! leaks, 2 bad usage (clap's) or a failure (`ipam-bench: error: …`). The
//! results go to stdout; progress and diagnostics to stderr through
//! `tool_cli`'s logger.

use std::collections::BTreeSet;
use std::io::Write;
use std::net::{IpAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use calico_store::etcd::EtcdStore;
use calico_store::{Datastore, DatastoreConfig};
use clap::builder::RangedU64ValueParser;
use clap::Parser;
use ipam_block::ops::Snapshot;
use ipam_block::{AssignRequest, FamilyRequest, Handle, Ipam, PoolRef};
use testbed::percentile;
use tool_cli::{LogArgs, Logging};

const TOOL: &str = "ipam-bench";
const NODES: usize = 3;
const NETWORK: &str = "bench-net";
/// The pool of the throughput runs (the request-count run uses 10.99.0.0/16).
const BENCH_POOL: &str = "10.120.0.0/14";

/// A scratch directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Result<TempDir, String> {
        let p = std::env::temp_dir().join(format!("ipam-bench-{tag}-{}-{}", std::process::id(), nanos()));
        std::fs::create_dir_all(&p).map_err(|e| format!("create {}: {e}", p.display()))?;
        Ok(TempDir(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn nanos() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
}

/// A private etcd, killed on drop.
struct EtcdProc {
    child: Child,
    endpoint: String,
    _dir: TempDir,
}

impl Drop for EtcdProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).map_err(|e| e.to_string())
}

fn start_etcd() -> Result<EtcdProc, String> {
    let dir = TempDir::new("etcd")?;
    let (client, peer) = (free_port()?, free_port()?);
    let endpoint = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let child = Command::new("etcd")
        .arg("--name=bench")
        .arg(format!("--data-dir={}", dir.0.join("data").display()))
        .arg(format!("--listen-client-urls={endpoint}"))
        .arg(format!("--advertise-client-urls={endpoint}"))
        .arg(format!("--listen-peer-urls={peer_url}"))
        .arg(format!("--initial-advertise-peer-urls={peer_url}"))
        .arg(format!("--initial-cluster=bench={peer_url}"))
        .arg("--log-level=error")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start etcd (apt-get install etcd-server): {e}"))?;
    let etcd = EtcdProc { child, endpoint, _dir: dir };
    let store = etcd_store(&etcd.endpoint)?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while store.ready().is_err() {
        if Instant::now() > deadline {
            return Err(format!("etcd on {} did not become ready", etcd.endpoint));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(etcd)
}

fn etcd_store(endpoint: &str) -> Result<EtcdStore, String> {
    EtcdStore::connect(&DatastoreConfig {
        datastore_type: Some("etcdv3".into()),
        etcd_endpoints: Some(endpoint.into()),
        ..Default::default()
    })
    .map_err(|e| e.to_string())
}

/// A network namespace for CNI_NETNS, deleted on drop.
struct Netns(String);

impl Netns {
    fn new() -> Result<Netns, String> {
        let name = format!("ipbench{:x}", std::process::id());
        let st = Command::new("ip").args(["netns", "add", &name]).status().map_err(|e| e.to_string())?;
        if !st.success() {
            return Err(format!("ip netns add {name} failed (run as root)"));
        }
        Ok(Netns(name))
    }
    fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.0)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// (a): requests per steady-state allocation and release, in-process.
fn requests_per_allocation(endpoint: &str, samples: usize) -> Result<(f64, f64), String> {
    let store = etcd_store(endpoint)?;
    let state = TempDir::new("reqs")?;
    let ipam = Ipam::new(&store, "req-node").with_state_dir(&state.0);
    let pool = PoolRef::parse("10.99.0.0/16").map_err(|e| e.to_string())?;
    let req = |i: usize| -> Result<AssignRequest, String> {
        Ok(AssignRequest {
            handle: Handle::for_container(NETWORK, &format!("req{i}")).map_err(|e| e.to_string())?,
            namespace: None,
            pod: None,
            ipv4: Some(FamilyRequest { pools: vec![pool.clone()], ip: None }),
            ipv6: None,
        })
    };
    // Warm up: the first allocation creates the pool and claims the block.
    ipam.assign(&req(0)?).map_err(|e| format!("warm-up assign: {e}"))?;
    let before = store.requests();
    for i in 1..=samples {
        ipam.assign(&req(i)?).map_err(|e| format!("assign: {e}"))?;
    }
    let assign = (store.requests() - before) as f64 / samples as f64;
    let before = store.requests();
    for i in 1..=samples {
        let h = Handle::for_container(NETWORK, &format!("req{i}")).map_err(|e| e.to_string())?;
        ipam.release_handle(&h).map_err(|e| format!("release: {e}"))?;
    }
    let release = (store.requests() - before) as f64 / samples as f64;
    let h0 = Handle::for_container(NETWORK, "req0").map_err(|e| e.to_string())?;
    ipam.release_handle(&h0).map_err(|e| format!("release: {e}"))?;
    Ok((assign, release))
}

/// How one backend is configured for a node.
#[derive(Clone)]
enum Backend {
    Etcd { endpoint: String },
    File { dir: PathBuf },
    HostLocal,
}

impl Backend {
    fn label(&self) -> &'static str {
        match self {
            Backend::Etcd { .. } => "calico-ipam (etcd)",
            Backend::File { .. } => "calico-ipam (file)",
            Backend::HostLocal => "host-local",
        }
    }
}

/// The network config for `node` (index) of `backend`; `state` is the node's own dir.
fn net_conf(backend: &Backend, node: usize, state: &Path) -> String {
    let top = |extra: serde_json::Value| {
        let mut v = serde_json::json!({
            "cniVersion": "1.0.0", "name": NETWORK, "type": "calico",
            "nodename": format!("bench-node-{node}"),
            "ipam": {"type": "calico-ipam", "ipv4_pools": [BENCH_POOL]},
        });
        if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
            o.extend(e.clone());
        }
        v.to_string()
    };
    match backend {
        Backend::Etcd { endpoint } => top(serde_json::json!({
            "datastore_type": "etcdv3", "etcd_endpoints": endpoint, "datastore_path": state,
        })),
        Backend::File { dir } => top(serde_json::json!({"datastore_type": "file", "datastore_path": dir})),
        // host-local is per node: each node gets its own range (like a podCIDR) and data dir.
        Backend::HostLocal => serde_json::json!({
            "cniVersion": "1.0.0", "name": NETWORK, "type": "ptp",
            "ipam": {"type": "host-local", "ranges": [[{"subnet": format!("10.{}.0.0/16", 100 + node)}]],
                     "dataDir": state},
        })
        .to_string(),
    }
}

struct Plugins {
    calico_ipam: PathBuf,
    host_local: PathBuf,
}

/// One plugin execution: (wall time, assigned address for ADD).
fn exec(
    plugin: &Path,
    cmd: &str,
    conf: &str,
    cid: &str,
    netns: &Path,
) -> Result<(Duration, Option<IpAddr>), String> {
    let t = Instant::now();
    let mut child = Command::new(plugin)
        .env("CNI_COMMAND", cmd)
        .env("CNI_CONTAINERID", cid)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/usr/lib/cni")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawn {}: {e}", plugin.display()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(conf.as_bytes()).map_err(|e| format!("stdin: {e}"))?;
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    let took = t.elapsed();
    if !out.status.success() {
        return Err(format!(
            "{cmd} {cid} with {}: {}{}",
            plugin.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    if cmd != "ADD" {
        return Ok((took, None));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| format!("ADD result: {e}"))?;
    let ip = v["ips"][0]["address"]
        .as_str()
        .and_then(|a| a.split('/').next())
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| format!("ADD result without an address: {v}"))?;
    Ok((took, Some(ip)))
}

/// One job's work: (node index, container ID) → result.
type JobFn<T> = Arc<dyn Fn(usize, &str) -> Result<T, String> + Send + Sync>;
/// Per-job result slots, filled by the workers.
type Slots<T> = Arc<Mutex<Vec<Option<Result<T, String>>>>>;

/// Run `jobs` on `workers` threads; returns results in job order or the first error.
fn run_parallel<T: Send + Sync + 'static>(
    jobs: Vec<(usize, String)>,
    workers: usize,
    f: JobFn<T>,
) -> Result<Vec<T>, String> {
    let n = jobs.len();
    let queue = Arc::new(Mutex::new(jobs.into_iter().enumerate().rev().collect::<Vec<_>>()));
    let results: Slots<T> = Arc::new(Mutex::new((0..n).map(|_| None).collect()));
    let threads: Vec<_> = (0..workers)
        .map(|_| {
            let (queue, results, f) = (queue.clone(), results.clone(), f.clone());
            std::thread::spawn(move || loop {
                let job = match queue.lock() {
                    Ok(mut q) => q.pop(),
                    Err(_) => return,
                };
                let Some((i, (node, cid))) = job else { return };
                let r = f(node, &cid);
                if let Ok(mut res) = results.lock() {
                    res[i] = Some(r);
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    let mut res = results.lock().map_err(|_| "worker panicked".to_string())?;
    res.iter_mut().map(|r| r.take().unwrap_or_else(|| Err("job not run".into()))).collect()
}

struct Row {
    label: &'static str,
    pods: usize,
    add_secs: f64,
    p50: Duration,
    p99: Duration,
    del_secs: f64,
    duplicates: usize,
    leaks: String,
}

fn throughput(
    backend: &Backend,
    plugins: &Plugins,
    netns: &Path,
    per_node: usize,
    workers: usize,
) -> Result<Row, String> {
    // Create the pool up front (as an operator would), so the timed ADDs
    // measure allocation, not first-use pool creation.
    let pool = ipam_block::ops::NewPool {
        name: "bench-pool".into(),
        cidr: BENCH_POOL.parse().map_err(|e| format!("{e}"))?,
        block_size: None,
        disabled: false,
        node_selector: None,
        nat_outgoing: false,
    };
    match backend {
        Backend::Etcd { endpoint } => ipam_block::ops::pool_add(&etcd_store(endpoint)?, &pool).map(|_| ()),
        Backend::File { dir } => {
            let fs = calico_store::file::FileStore::open(dir.clone()).map_err(|e| e.to_string())?;
            ipam_block::ops::pool_add(&fs, &pool).map(|_| ())
        }
        Backend::HostLocal => Ok(()),
    }
    .map_err(|e| format!("creating the bench pool: {e}"))?;
    let states: Vec<TempDir> =
        (0..NODES).map(|n| TempDir::new(&format!("node{n}"))).collect::<Result<_, _>>()?;
    let confs: Arc<Vec<String>> = Arc::new((0..NODES).map(|n| net_conf(backend, n, &states[n].0)).collect());
    let plugin = Arc::new(match backend {
        Backend::HostLocal => plugins.host_local.clone(),
        _ => plugins.calico_ipam.clone(),
    });
    // Interleave the nodes so all three are busy at once.
    let jobs: Vec<(usize, String)> =
        (0..per_node).flat_map(|i| (0..NODES).map(move |n| (n, format!("pod{n}x{i:04}")))).collect();
    let netns = Arc::new(netns.to_path_buf());
    let (c, p, ns) = (confs.clone(), plugin.clone(), netns.clone());
    let t = Instant::now();
    let adds = run_parallel(jobs.clone(), workers, Arc::new(move |n, cid| exec(&p, "ADD", &c[n], cid, &ns)))?;
    let add_secs = t.elapsed().as_secs_f64();
    let ips: Vec<IpAddr> = adds.iter().filter_map(|(_, ip)| *ip).collect();
    let duplicates = ips.len() - ips.iter().collect::<BTreeSet<_>>().len();
    let mut lat: Vec<Duration> = adds.iter().map(|(d, _)| *d).collect();
    lat.sort();
    let (c, p, ns) = (confs.clone(), plugin.clone(), netns.clone());
    let t = Instant::now();
    run_parallel(jobs.clone(), workers, Arc::new(move |n, cid| exec(&p, "DEL", &c[n], cid, &ns)))?;
    let del_secs = t.elapsed().as_secs_f64();
    let leaks = match backend {
        Backend::Etcd { endpoint } => leaks_in(&etcd_store(endpoint)?)?,
        Backend::File { dir } => {
            leaks_in(&calico_store::file::FileStore::open(dir.clone()).map_err(|e| e.to_string())?)?
        }
        Backend::HostLocal => {
            // host-local keeps one file per allocated address in <dataDir>/<network>/.
            let mut n = 0;
            for s in &states {
                if let Ok(rd) = std::fs::read_dir(s.0.join(NETWORK)) {
                    n += rd
                        .flatten()
                        .filter(|e| e.file_name().to_string_lossy().parse::<IpAddr>().is_ok())
                        .count();
                }
            }
            format!("{n} address files")
        }
    };
    Ok(Row {
        label: backend.label(),
        pods: jobs.len(),
        add_secs,
        p50: percentile(&lat, 0.50),
        p99: percentile(&lat, 0.99),
        del_secs,
        duplicates,
        leaks,
    })
}

fn leaks_in(store: &dyn Datastore) -> Result<String, String> {
    let snap = Snapshot::load(store).map_err(|e| e.to_string())?;
    Ok(format!("{} allocs, {} handles", snap.allocations().len(), snap.handles.len()))
}

/// `ipam-bench`'s command line.
#[derive(Debug, Parser)]
#[command(
    name = "ipam-bench",
    version,
    about = "IPAM cost on a real etcd: etcd requests per steady-state allocation, and 3 nodes x N \
             calico-ipam ADDs (then DELs) on etcd, the file store and host-local",
    args_override_self = true
)]
struct Cli {
    #[command(flatten)]
    log: LogArgs,
    /// Pods per node in the throughput runs
    #[arg(long, value_name = "N", default_value_t = 300,
          value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    pods_per_node: usize,
    /// Plugin processes in flight at once
    #[arg(long, value_name = "N", default_value_t = 32,
          value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    concurrency: usize,
    /// Use this etcd instead of starting a private one (no variable: a stray ETCD_ENDPOINTS
    /// must not point the benchmark at a real cluster)
    #[arg(long, value_name = "URL")]
    etcd_endpoints: Option<String>,
    /// Our calico-ipam [default: next to this program]
    #[arg(long, value_name = "PATH")]
    calico_ipam: Option<PathBuf>,
    /// The reference host-local
    #[arg(long, value_name = "PATH", default_value = "/usr/lib/cni/host-local")]
    host_local: PathBuf,
}

fn run(cli: Cli) -> Result<bool, String> {
    let (per_node, workers) = (cli.pods_per_node, cli.concurrency);
    let calico_ipam = match cli.calico_ipam {
        Some(p) => p,
        None => std::env::current_exe().map_err(|e| e.to_string())?.with_file_name("calico-ipam"),
    };
    let plugins = Plugins { calico_ipam, host_local: cli.host_local };
    for p in [&plugins.calico_ipam, &plugins.host_local] {
        if !p.exists() {
            return Err(format!(
                "{} not found (build with `cargo build --release -p ipam-block --bins`)",
                p.display()
            ));
        }
    }
    let own_etcd = match cli.etcd_endpoints {
        Some(_) => None,
        None => {
            log::info!("starting a private etcd ...");
            Some(start_etcd()?)
        }
    };
    let endpoint =
        cli.etcd_endpoints.or_else(|| own_etcd.as_ref().map(|e| e.endpoint.clone())).unwrap_or_default();
    let netns = Netns::new()?;

    println!(
        "ipam-bench: etcd {endpoint}, {NODES} nodes x {per_node} pods, {workers} concurrent plugin processes"
    );
    let (assign_reqs, release_reqs) = requests_per_allocation(&endpoint, 50)?;
    println!();
    println!(
        "(a) etcd requests per steady-state operation (in-process allocator, EtcdStore counter, 50 samples)"
    );
    println!("    assign: {assign_reqs:.2}   (target <= 2)");
    println!("    release: {release_reqs:.2}");
    std::io::stdout().flush().map_err(|e| e.to_string())?;

    let file_dir = TempDir::new("filestore")?;
    let backends = [
        Backend::Etcd { endpoint: endpoint.clone() },
        Backend::File { dir: file_dir.0.clone() },
        Backend::HostLocal,
    ];
    let mut rows = Vec::new();
    for b in &backends {
        log::info!("running {} ...", b.label());
        rows.push(throughput(b, &plugins, &netns.path(), per_node, workers)?);
    }
    println!();
    println!(
        "(b) ADD throughput, then DEL of every pod ({NODES} nodes x {per_node} pods, {workers} at once)"
    );
    let header =
        ["backend", "pods", "ADD pods/s", "ADD p50", "ADD p99", "DEL pods/s", "duplicates", "left after DEL"];
    let mut table = vec![header.iter().map(|s| s.to_string()).collect::<Vec<_>>()];
    for r in &rows {
        table.push(vec![
            r.label.to_string(),
            r.pods.to_string(),
            format!("{:.1}", r.pods as f64 / r.add_secs),
            format!("{:.1} ms", r.p50.as_secs_f64() * 1000.0),
            format!("{:.1} ms", r.p99.as_secs_f64() * 1000.0),
            format!("{:.1}", r.pods as f64 / r.del_secs),
            r.duplicates.to_string(),
            r.leaks.clone(),
        ]);
    }
    print!("{}", ipam_block::ops::table(&table));
    let clean = rows
        .iter()
        .all(|r| r.duplicates == 0 && (r.leaks == "0 allocs, 0 handles" || r.leaks == "0 address files"));
    println!(
        "{}",
        if clean { "OK: zero duplicates, zero leaks" } else { "FAILED: duplicates or leaks (see table)" }
    );
    if assign_reqs > 2.0 {
        println!("NOTE: {assign_reqs:.2} requests per steady-state assign is above the target of 2");
    }
    Ok(clean)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = Logging::new(TOOL).init(&cli.log) {
        return tool_cli::finish::<ExitCode, _>(TOOL, Err(e));
    }
    // 1: the run finished but was dirty; 2: it could not run (as before clap).
    let result = run(cli).map(|clean| if clean { ExitCode::SUCCESS } else { ExitCode::from(1) });
    tool_cli::finish_with(TOOL, result, |_| 2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::error::ErrorKind;

    fn parse(argv: &[&str]) -> Result<Cli, clap::Error> {
        tool_cli::try_parse_without_env(std::iter::once("ipam-bench").chain(argv.iter().copied()))
    }

    #[test]
    fn defaults_and_each_spelling() {
        // make bench: no flags.
        let c = parse(&[]).unwrap();
        assert_eq!((c.pods_per_node, c.concurrency), (300, 32));
        assert_eq!((c.etcd_endpoints, c.calico_ipam), (None, None));
        assert_eq!(c.host_local, PathBuf::from("/usr/lib/cni/host-local"));
        let c = parse(&[
            "--pods-per-node",
            "10",
            "--concurrency=4",
            "--etcd-endpoints",
            "http://127.0.0.1:2379",
            "--calico-ipam=target/release/calico-ipam",
            "--host-local",
            "/opt/cni/bin/host-local",
        ])
        .unwrap();
        assert_eq!((c.pods_per_node, c.concurrency), (10, 4));
        assert_eq!(c.etcd_endpoints.as_deref(), Some("http://127.0.0.1:2379"));
        assert_eq!(c.calico_ipam, Some(PathBuf::from("target/release/calico-ipam")));
        assert_eq!(c.host_local, PathBuf::from("/opt/cni/bin/host-local"));
        assert_eq!(
            parse(&["--concurrency", "2", "--concurrency", "3"]).unwrap().concurrency,
            3,
            "the last wins"
        );
        assert_eq!(parse(&["-v"]).unwrap().log.verbose, 1);
        assert_eq!(parse(&["--log-level=warn"]).unwrap().log.log_level, Some(log::LevelFilter::Warn));
        // What the old parser took or clamped silently.
        for bad in [["--concurrency", "0"], ["--pods-per-node", "0"], ["--pods-per-node", "x"]] {
            assert_eq!(parse(&bad).unwrap_err().kind(), ErrorKind::ValueValidation, "{bad:?}");
        }
        assert_eq!(parse(&["--bogus"]).unwrap_err().kind(), ErrorKind::UnknownArgument);
        assert_eq!(parse(&["extra"]).unwrap_err().kind(), ErrorKind::UnknownArgument);
        let e = parse(&["--help"]).unwrap_err();
        assert_eq!((e.kind(), e.exit_code()), (ErrorKind::DisplayHelp, 0));
    }

    #[test]
    fn etcd_endpoints_has_no_variable() {
        use clap::CommandFactory;
        let cmd = Cli::command();
        assert!(
            cmd.get_arguments().all(|a| a.get_env().is_none()),
            "a stray variable must not pick the etcd"
        );
    }
}
