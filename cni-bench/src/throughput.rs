//! `--throughput`: many full-pod ADDs at once, then DEL of every pod.
//!
//! Three logical nodes (three `nodename`s), one netns per pod (created up
//! front and reused by every implementation: DEL leaves them empty; only the
//! plugin calls are timed). A pool of worker threads runs the jobs; a worker
//! enters the job's node netns (`setns`, per thread) before it spawns the
//! plugin, so host-side veths, routes and sysctls land in that node.
//!
//! Two layouts, named in the output:
//! * default: one node netns shared by the three logical nodes (host veth
//!   names are unique per pod anyway), with etcd on its loopback
//!   (`testbed::Etcd::start_in`): plugins talk to etcd directly;
//! * `--etcd-relay`: one netns per node; etcd on this program's loopback,
//!   reached from each node at `127.0.0.1:2379` through a
//!   `testbed::NetnsForward` (a userspace TCP relay: an extra hop per
//!   connection, which today costs far more than etcd itself).
//!
//! The bench reads the stores (pool creation, leak check) from a thread inside
//! the first node netns, where `127.0.0.1:2379` is etcd in both layouts.

use std::collections::HashSet;
use std::fs::File;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant};

use calico_store::DatastoreConfig;
use ipam_block::ops::{NewPool, Snapshot};
use nix::sched::{setns, CloneFlags};

use crate::plugin::{self, ms, percentile};

const NODES: usize = 3;
const NETWORK: &str = "bench-net";
/// Our pool (each of our stores has its own copy).
const POOL: &str = "10.77.0.0/16";
/// Target for ours on etcd (README, "Benchmarks").
const TARGET_PODS_PER_SEC: f64 = 100.0;
/// Targets for ours on the file store against the reference, same run
/// (README, "Benchmarks"): ADD pods/s ratio and ADD p99 ratio.
const TARGET_FILE_RATE: f64 = 2.0;
const TARGET_FILE_P99: f64 = 0.5;

pub struct ThroughputArgs {
    pub per_node: usize,
    pub concurrency: usize,
    pub ours: PathBuf,
    pub reference: PathBuf,
    /// One netns per node, etcd through `testbed::NetnsForward`.
    pub relay: bool,
}

/// Which implementation a run measures.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    CalicoEtcd,
    CalicoFile,
    PtpHostLocal,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::CalicoEtcd => "calico+calico-ipam (etcd)",
            Kind::CalicoFile => "calico+calico-ipam (file)",
            Kind::PtpHostLocal => "ptp+host-local",
        }
    }
}

/// One pod to set up: its logical node, the netns that node runs in (index
/// into the node namespaces) and its global index.
#[derive(Clone, Copy)]
struct Job {
    node: usize,
    netns: usize,
    pod: usize,
}

/// One implementation, configured for the three nodes.
struct Setup {
    kind: Kind,
    plugin: PathBuf,
    cni_path: PathBuf,
    /// Network configuration per node (stdin of every call on that node).
    confs: Vec<Vec<u8>>,
    /// Where the bench reads our datastore for the leak check.
    store: Option<DatastoreConfig>,
    /// host-local data dirs (one per node), for the leak check.
    host_local_dirs: Vec<PathBuf>,
}

/// What one implementation's run measured.
struct Row {
    label: &'static str,
    pods: usize,
    add_wall: Duration,
    add_p50: Duration,
    add_p99: Duration,
    del_wall: Duration,
    duplicates: usize,
    /// (what, how many) left after DEL of every pod.
    leaks: Vec<(&'static str, usize)>,
}

impl Row {
    fn leaked(&self) -> usize {
        self.leaks.iter().map(|(_, n)| n).sum()
    }
    fn add_rate(&self) -> f64 {
        self.pods as f64 / self.add_wall.as_secs_f64().max(f64::MIN_POSITIVE)
    }
}

fn tempdir() -> Result<tempfile::TempDir, String> {
    tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))
}

pub fn run(args: &ThroughputArgs) -> Result<bool, String> {
    let pods = NODES * args.per_node;
    let node_netns = if args.relay { NODES } else { 1 };
    log::info!("creating {node_netns} node and {pods} pod namespaces, starting etcd ...");
    // Declared before etcd and the forwards: they are dropped (stopped) first.
    let nodes: Vec<testbed::Netns> = (0..node_netns).map(|_| testbed::Netns::new("tnd")).collect();
    let etcd = if args.relay { testbed::Etcd::start() } else { testbed::Etcd::start_in(&nodes[0]) };
    let mut forwards = Vec::new();
    if args.relay {
        let etcd_addr: SocketAddr = etcd
            .endpoint()
            .trim_start_matches("http://")
            .parse()
            .map_err(|e| format!("etcd endpoint {}: {e}", etcd.endpoint()))?;
        for n in &nodes {
            forwards.push(
                testbed::NetnsForward::start(&n.path(), testbed::Etcd::NETNS_CLIENT_PORT, etcd_addr)
                    .map_err(|e| format!("etcd forward into {}: {e}", n.name()))?,
            );
        }
    }
    let pod_ns = create_pod_namespaces(pods);
    let node_files = nodes
        .iter()
        .map(|n| File::open(n.path()).map_err(|e| format!("open {}: {e}", n.path().display())))
        .collect::<Result<Vec<_>, _>>()?;

    let file_store = tempdir()?;
    let etcd_state: Vec<tempfile::TempDir> = (0..NODES).map(|_| tempdir()).collect::<Result<_, _>>()?;
    let hl_dirs: Vec<tempfile::TempDir> = (0..NODES).map(|_| tempdir()).collect::<Result<_, _>>()?;
    let in_node_endpoint = format!("http://127.0.0.1:{}", testbed::Etcd::NETNS_CLIENT_PORT);
    let setups = [
        calico_setup(
            Kind::CalicoEtcd,
            args,
            |n| {
                serde_json::json!({"datastore_type": "etcdv3", "etcd_endpoints": in_node_endpoint,
                                   "datastore_path": etcd_state[n].path()})
            },
            DatastoreConfig {
                datastore_type: Some("etcdv3".into()),
                etcd_endpoints: Some(in_node_endpoint.clone()),
                ..Default::default()
            },
            &node_files[0],
        )?,
        calico_setup(
            Kind::CalicoFile,
            args,
            |_| serde_json::json!({"datastore_type": "file", "datastore_path": file_store.path()}),
            DatastoreConfig {
                datastore_type: Some("file".into()),
                datastore_path: Some(file_store.path().to_path_buf()),
                ..Default::default()
            },
            &node_files[0],
        )?,
        reference_setup(args, &hl_dirs)?,
    ];

    // Interleave the nodes so all three are busy at once.
    let jobs: Vec<Job> = (0..args.per_node)
        .flat_map(|i| {
            (0..NODES).map(move |node| Job { node, netns: node % node_netns, pod: i * NODES + node })
        })
        .collect();
    let pod_paths: Vec<PathBuf> = pod_ns.iter().map(|n| n.path()).collect();
    let mut rows = Vec::new();
    for (k, setup) in setups.iter().enumerate() {
        log::info!("running {} ...", setup.kind.label());
        rows.push(measure(k, setup, &jobs, &pod_paths, &node_files, &nodes, args.concurrency)?);
    }
    report(&rows, args);
    Ok(rows.iter().all(|r| r.duplicates == 0 && r.leaked() == 0))
}

/// `count` pod namespaces, created by a few threads (each is two `ip` runs).
fn create_pod_namespaces(count: usize) -> Vec<testbed::Netns> {
    let threads = 4;
    let per = count.div_ceil(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let n = per.min(count.saturating_sub(t * per));
                s.spawn(move || (0..n).map(|_| testbed::Netns::new("tpd")).collect::<Vec<_>>())
            })
            .collect();
        // A creation failure panics in testbed (with the `ip` error); the
        // namespaces made so far are dropped, hence deleted, while unwinding.
        handles.into_iter().flat_map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))).collect()
    })
}

/// Ours on one datastore: `datastore(node)` gives the node's datastore keys.
/// The pool is created up front (as an operator would), so the timed ADDs
/// measure allocation and block claims, not first-use pool creation.
fn calico_setup(
    kind: Kind,
    args: &ThroughputArgs,
    datastore: impl Fn(usize) -> serde_json::Value,
    store: DatastoreConfig,
    node_ns: &File,
) -> Result<Setup, String> {
    let pool = NewPool {
        name: "bench-pool".into(),
        cidr: POOL.parse().map_err(|e| format!("{POOL}: {e}"))?,
        block_size: None,
        disabled: false,
        node_selector: None,
        nat_outgoing: false,
    };
    in_netns(node_ns, || {
        let opened = calico_store::open(&store).map_err(|e| format!("opening the datastore: {e}"))?;
        ipam_block::ops::pool_add(opened.as_ref(), &pool).map_err(|e| format!("creating the bench pool: {e}"))
    })
    .map_err(|e| format!("{}: {e}", kind.label()))?;
    let confs = (0..NODES)
        .map(|n| {
            let mut conf = serde_json::json!({
                "cniVersion": "1.0.0", "name": NETWORK, "type": "calico",
                "nodename": format!("bench-node-{n}"), "mtu": 1500, "log_level": "warning",
                "ipam": {"type": "calico-ipam", "ipv4_pools": [POOL]}
            });
            if let (Some(o), serde_json::Value::Object(extra)) = (conf.as_object_mut(), datastore(n)) {
                o.extend(extra);
            }
            serde_json::to_vec(&conf).map_err(|e| e.to_string())
        })
        .collect::<Result<_, _>>()?;
    Ok(Setup {
        kind,
        plugin: args.ours.join("calico"),
        cni_path: args.ours.clone(),
        confs,
        store: Some(store),
        host_local_dirs: Vec::new(),
    })
}

/// The reference: host-local is per node, so each node gets its own range
/// (like a podCIDR) and data dir.
fn reference_setup(args: &ThroughputArgs, dirs: &[tempfile::TempDir]) -> Result<Setup, String> {
    let confs = (0..NODES)
        .map(|n| {
            serde_json::to_vec(&serde_json::json!({
                "cniVersion": "1.0.0", "name": NETWORK, "type": "ptp", "mtu": 1500,
                "ipam": {"type": "host-local", "ranges": [[{"subnet": format!("10.{}.0.0/16", 100 + n)}]],
                         "dataDir": dirs[n].path()}
            }))
            .map_err(|e| e.to_string())
        })
        .collect::<Result<_, _>>()?;
    Ok(Setup {
        kind: Kind::PtpHostLocal,
        plugin: args.reference.join("ptp"),
        cni_path: args.reference.clone(),
        confs,
        store: None,
        host_local_dirs: dirs.iter().map(|d| d.path().to_path_buf()).collect(),
    })
}

/// ADD every pod, then DEL every pod, `workers` calls in flight; then look
/// for duplicates and leftovers.
fn measure(
    k: usize,
    setup: &Setup,
    jobs: &[Job],
    pod_paths: &[PathBuf],
    node_files: &[File],
    nodes: &[testbed::Netns],
    workers: usize,
) -> Result<Row, String> {
    let call = |job: &Job, command: &str| -> Result<plugin::Outcome, String> {
        let pod_name = format!("pod-{}", job.pod);
        plugin::exec(
            &plugin::Call {
                plugin: &setup.plugin,
                cni_path: &setup.cni_path,
                command,
                container_id: &format!("tput{k}x{:05}", job.pod),
                netns: &pod_paths[job.pod],
                pod_name: &pod_name,
            },
            &setup.confs[job.node],
        )
        .map_err(|e| format!("{}: {e}", setup.kind.label()))
    };
    // Links an earlier implementation left are its leak, not this one's.
    let links_before = node_links(nodes)?;
    let (adds, add_wall) = run_pool(jobs, workers, node_files, |job| {
        let out = call(job, "ADD")?;
        Ok((out.elapsed, plugin::first_ip(&out.stdout)?))
    })?;
    let duplicates = duplicates(adds.iter().map(|(_, ip)| *ip));
    let mut lat: Vec<Duration> = adds.iter().map(|(d, _)| *d).collect();
    lat.sort();
    let (_, del_wall) = run_pool(jobs, workers, node_files, |job| call(job, "DEL").map(|_| ()))?;
    Ok(Row {
        label: setup.kind.label(),
        pods: jobs.len(),
        add_wall,
        add_p50: percentile(&lat, 0.50),
        add_p99: percentile(&lat, 0.99),
        del_wall,
        duplicates,
        leaks: leftovers(setup, nodes, &node_files[0], links_before)?,
    })
}

/// Run `f` over `jobs` on `workers` threads, each entering the job's node
/// netns before calling `f`. Returns results in job order and the wall time
/// from the moment every worker is ready; stops at the first error.
fn run_pool<T: Send>(
    jobs: &[Job],
    workers: usize,
    node_files: &[File],
    f: impl Fn(&Job) -> Result<T, String> + Sync,
) -> Result<(Vec<T>, Duration), String> {
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let first_error: Mutex<Option<String>> = Mutex::new(None);
    let results: Mutex<Vec<Option<T>>> = Mutex::new((0..jobs.len()).map(|_| None).collect());
    let ready = Barrier::new(workers + 1);
    let fail = |e: String| {
        failed.store(true, Ordering::SeqCst);
        if let Ok(mut slot) = first_error.lock() {
            slot.get_or_insert(e);
        }
    };
    let wall = std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                ready.wait();
                let mut current: Option<usize> = None;
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= jobs.len() || failed.load(Ordering::SeqCst) {
                        return;
                    }
                    let job = &jobs[i];
                    if current != Some(job.netns) {
                        // setns moves only this thread; the plugin it spawns inherits it.
                        if let Err(e) = setns(&node_files[job.netns], CloneFlags::CLONE_NEWNET) {
                            return fail(format!("setns into node netns {}: {e}", job.netns));
                        }
                        current = Some(job.netns);
                    }
                    match f(job) {
                        Ok(v) => {
                            if let Ok(mut r) = results.lock() {
                                r[i] = Some(v);
                            }
                        }
                        Err(e) => return fail(e),
                    }
                }
            });
        }
        ready.wait();
        let start = Instant::now();
        // Leaving the scope joins every worker.
        start
    });
    let wall = wall.elapsed();
    if let Some(e) = first_error.lock().map_err(|_| "a worker panicked".to_string())?.take() {
        return Err(e);
    }
    let results = results.into_inner().map_err(|_| "a worker panicked".to_string())?;
    let results = results.into_iter().collect::<Option<Vec<T>>>().ok_or("a job was not run")?;
    Ok((results, wall))
}

/// What DEL of every pod left behind: our datastore records, host-local's
/// address files, and links other than `lo` in the node namespaces.
fn leftovers(
    setup: &Setup,
    nodes: &[testbed::Netns],
    node_ns: &File,
    links_before: usize,
) -> Result<Vec<(&'static str, usize)>, String> {
    let mut out = Vec::new();
    if let Some(cfg) = &setup.store {
        let snap = in_netns(node_ns, || {
            let store = calico_store::open(cfg).map_err(|e| format!("opening the datastore: {e}"))?;
            Snapshot::load(store.as_ref()).map_err(|e| format!("reading the datastore: {e}"))
        })
        .map_err(|e| format!("{} leak check: {e}", setup.kind.label()))?;
        out.push(("allocs", snap.allocations().len()));
        out.push(("handles", snap.handles.len()));
        out.push(("pod records", snap.endpoints.len()));
    }
    if !setup.host_local_dirs.is_empty() {
        // host-local keeps one file per allocated address in <dataDir>/<network>/.
        let files = setup
            .host_local_dirs
            .iter()
            .filter_map(|d| std::fs::read_dir(d.join(NETWORK)).ok())
            .flat_map(|rd| rd.flatten())
            .filter(|e| e.file_name().to_string_lossy().parse::<IpAddr>().is_ok())
            .count();
        out.push(("address files", files));
    }
    out.push(("links", node_links(nodes)?.saturating_sub(links_before)));
    Ok(out)
}

/// Links other than `lo` in the node namespaces (host-side veths).
fn node_links(nodes: &[testbed::Netns]) -> Result<usize, String> {
    let mut links = 0;
    for n in nodes {
        links += count_links(&n.try_exec(&["ip", "-o", "link", "show"])?);
    }
    Ok(links)
}

/// Links other than `lo` in `ip -o link show` output (`<index>: <name>[@peer]: ...`).
fn count_links(ip_o_link: &str) -> usize {
    ip_o_link.lines().filter(|l| l.split(':').nth(1).is_some_and(|name| name.trim() != "lo")).count()
}

/// How many ADD results repeat an address an earlier one got.
fn duplicates(ips: impl IntoIterator<Item = IpAddr>) -> usize {
    let mut seen = HashSet::new();
    ips.into_iter().filter(|ip| !seen.insert(*ip)).count()
}

/// Run `f` on a thread inside the netns `ns` (the etcd client's sockets are
/// made on the calling thread: its runtime is current-thread).
fn in_netns<T: Send>(ns: &File, f: impl FnOnce() -> Result<T, String> + Send) -> Result<T, String> {
    std::thread::scope(|s| {
        s.spawn(|| {
            setns(ns, CloneFlags::CLONE_NEWNET).map_err(|e| format!("setns into the node netns: {e}"))?;
            f()
        })
        .join()
        .map_err(|_| "datastore thread panicked".to_string())?
    })
}

fn report(rows: &[Row], args: &ThroughputArgs) {
    println!(
        "CNI full-pod throughput: {NODES} nodes x {} pods, {} ADDs in flight, then DEL of every pod",
        args.per_node, args.concurrency
    );
    if args.relay {
        println!(
            "layout: one netns per node ({NODES}), one per pod (created before timing); etcd on the bench's \
             loopback, reached from each node netns through a testbed::NetnsForward relay"
        );
    } else {
        println!(
            "layout: one node netns shared by the {NODES} logical nodes (distinct nodenames), one netns per \
             pod (created before timing); etcd inside the node netns (testbed::Etcd::start_in)"
        );
    }
    let header = [
        "implementation",
        "pods",
        "ADD pods/s",
        "ADD p50",
        "ADD p99",
        "DEL pods/s",
        "duplicates",
        "left after DEL",
    ];
    let mut table = vec![header.iter().map(|s| s.to_string()).collect::<Vec<_>>()];
    for r in rows {
        table.push(vec![
            r.label.to_string(),
            r.pods.to_string(),
            format!("{:.1}", r.add_rate()),
            format!("{:.1} ms", ms(r.add_p50)),
            format!("{:.1} ms", ms(r.add_p99)),
            format!("{:.1}", r.pods as f64 / r.del_wall.as_secs_f64().max(f64::MIN_POSITIVE)),
            r.duplicates.to_string(),
            r.leaks.iter().map(|(what, n)| format!("{n} {what}")).collect::<Vec<_>>().join(", "),
        ]);
    }
    print!("{}", ipam_block::ops::table(&table));
    if let Some(etcd) = rows.iter().find(|r| r.label == Kind::CalicoEtcd.label()) {
        let rate = etcd.add_rate();
        println!(
            "target >= {TARGET_PODS_PER_SEC:.0} pods/s for ours on etcd: {rate:.1} ({})",
            if rate >= TARGET_PODS_PER_SEC { "met" } else { "NOT met" }
        );
    }
    let file = rows.iter().find(|r| r.label == Kind::CalicoFile.label());
    let reference = rows.iter().find(|r| r.label == Kind::PtpHostLocal.label());
    if let (Some(file), Some(reference)) = (file, reference) {
        let rate = file.add_rate() / reference.add_rate().max(f64::MIN_POSITIVE);
        let p99 = file.add_p99.as_secs_f64() / reference.add_p99.as_secs_f64().max(f64::MIN_POSITIVE);
        println!(
            "ours on the file store / ptp+host-local: ADD pods/s {rate:.2}x (target >= {TARGET_FILE_RATE:.1}x: \
             {}), ADD p99 {p99:.2}x (target <= {TARGET_FILE_P99:.1}x: {})",
            if rate >= TARGET_FILE_RATE { "met" } else { "NOT met" },
            if p99 <= TARGET_FILE_P99 { "met" } else { "NOT met" }
        );
    }
    let clean = rows.iter().all(|r| r.duplicates == 0 && r.leaked() == 0);
    println!(
        "{}",
        if clean { "OK: zero duplicates, zero leaks" } else { "FAILED: duplicates or leaks (see table)" }
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_counts_repeats_only() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(duplicates([ip("10.0.0.1"), ip("10.0.0.2")]), 0);
        assert_eq!(duplicates([ip("10.0.0.1"), ip("10.0.0.2"), ip("10.0.0.1"), ip("10.0.0.1")]), 2);
    }

    #[test]
    fn count_links_skips_loopback() {
        let out = "1: lo: <LOOPBACK,UP,LOWER_UP> mtu 65536 qdisc noqueue\n\
                   7: cali1234567890a@if2: <BROADCAST,MULTICAST,UP> mtu 1500\n\
                   8: veth9f1e2d3c@if2: <BROADCAST,MULTICAST,UP> mtu 1500\n";
        assert_eq!(count_links(out), 2);
        assert_eq!(count_links("1: lo: <LOOPBACK> mtu 65536\n"), 0);
    }

    fn own_netns() -> Vec<File> {
        vec![File::open("/proc/self/ns/net").unwrap()]
    }

    #[test]
    fn run_pool_returns_every_result_in_job_order() {
        let jobs: Vec<Job> = (0..50).map(|pod| Job { node: pod % NODES, netns: 0, pod }).collect();
        let (out, _) = run_pool(&jobs, 7, &own_netns(), |j| Ok(j.pod * 2)).unwrap();
        assert_eq!(out, (0..50).map(|p| p * 2).collect::<Vec<_>>());
    }

    #[test]
    fn run_pool_stops_at_the_first_error() {
        let jobs: Vec<Job> = (0..200).map(|pod| Job { node: 0, netns: 0, pod }).collect();
        let ran = AtomicUsize::new(0);
        let err = run_pool(&jobs, 4, &own_netns(), |j| {
            ran.fetch_add(1, Ordering::SeqCst);
            if j.pod == 3 {
                Err("pod 3 failed".to_string())
            } else {
                std::thread::sleep(Duration::from_millis(2));
                Ok(())
            }
        })
        .unwrap_err();
        assert_eq!(err, "pod 3 failed");
        assert!(ran.load(Ordering::SeqCst) < 200, "kept going after the error");
    }
}
