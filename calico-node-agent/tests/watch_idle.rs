//! The agent watches the datastore instead of polling it: idle, it makes no
//! datastore requests (counted by a counting `Datastore` around the file
//! store, by the opens of the store's files, and for etcd by etcd's own
//! `/metrics`), and a block claimed while it idles is routed at once.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use calico_node_agent::agent::Agent;
use calico_node_agent::config::AgentConfig;
use calico_store::file::FileStore;
use calico_store::model::{self, AffinityState, AllocationBlock, BlockAffinity};
use calico_store::{Datastore, KeyValue, Op, Revision, StoreError};
use ipnetwork::IpNetwork;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use testbed::{wait_for, Daemon, Netns};

/// Forwards to a store and counts every request (get, list, commit,
/// revision). `wait_for_change` is forwarded uncounted: it is the watch, and
/// what it costs the backend is counted by the backend's own measure.
struct Counting {
    inner: Arc<dyn Datastore>,
    calls: AtomicU64,
}

impl Counting {
    fn count(&self) {
        self.calls.fetch_add(1, Ordering::Relaxed);
    }
}

impl Datastore for Counting {
    fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        self.count();
        self.inner.get(key)
    }
    fn list(&self, prefix: &str) -> Result<Vec<KeyValue>, StoreError> {
        self.count();
        self.inner.list(prefix)
    }
    fn commit(&self, ops: &[Op]) -> Result<Revision, StoreError> {
        self.count();
        self.inner.commit(ops)
    }
    fn revision(&self) -> Result<Revision, StoreError> {
        self.count();
        self.inner.revision()
    }
    fn wait_for_change(&self, after: Revision, timeout: Duration) -> Result<Option<Revision>, StoreError> {
        self.inner.wait_for_change(after, timeout)
    }
}

fn claim(store: &dyn Datastore, node: &str, cidr: &str) {
    let net: IpNetwork = cidr.parse().unwrap();
    let block = AllocationBlock {
        cidr: net,
        affinity: Some(format!("host:{node}")),
        strict_affinity: false,
        allocations: vec![None; 64],
        unallocated: (0..64).collect(),
        attributes: vec![],
        deleted: false,
    };
    let aff = BlockAffinity { state: AffinityState::Confirmed, deleted: false };
    store
        .commit(&[
            Op::Create { key: model::block_key(&net), value: model::encode(&block) },
            Op::Create { key: model::affinity_key(node, &net), value: model::encode(&aff) },
        ])
        .unwrap();
}

fn blackholes(ns: &Netns) -> String {
    ns.exec(&["ip", "-4", "route", "show", "type", "blackhole", "proto", "80"])
}

fn agent_config(dir: &Path, node: &str, datastore: serde_json::Value) -> AgentConfig {
    let path = dir.join("agent.json");
    let doc = serde_json::json!({
        "node_name": node,
        "node_ip": "192.168.78.2/24",
        "peers": [{"ip": "192.168.78.1", "as_number": 65000}],
        "datastore": datastore,
        "bird_config": dir.join("bird.conf"),
        "bird_socket": dir.join("bird.ctl"),
        "poll_interval_ms": 200,
    });
    std::fs::write(&path, serde_json::to_vec(&doc).unwrap()).unwrap();
    AgentConfig::from_file(&path).unwrap()
}

/// How many times files in `dir` were opened since the last call.
struct Opens(Inotify);

impl Opens {
    fn watch(dir: &Path) -> Opens {
        let i = Inotify::init(InitFlags::IN_NONBLOCK).unwrap();
        i.add_watch(dir, AddWatchFlags::IN_OPEN).unwrap();
        Opens(i)
    }
    fn take(&self) -> usize {
        self.0.read_events().map(|e| e.len()).unwrap_or(0)
    }
}

#[test]
fn an_idle_agent_on_the_file_store_reads_nothing_and_a_claim_is_routed_at_once() {
    let ns = Netns::new("nwf");
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let node = testbed::unique("n");
    let file = Arc::new(FileStore::open(&store_dir).unwrap());
    claim(file.as_ref(), &node, "10.252.0.0/26");
    let counting = Arc::new(Counting { inner: file.clone(), calls: AtomicU64::new(0) });
    let cfg = agent_config(
        dir.path(),
        &node,
        serde_json::json!({"datastore_type": "file", "datastore_path": store_dir}),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let netns = netlink_util::Netns::open(ns.path()).unwrap();
    let agent = {
        let (stop, store) = (stop.clone(), counting.clone() as Arc<dyn Datastore>);
        std::thread::spawn(move || {
            netns
                .run_thread(|| {
                    let mut a = Agent::with_store(cfg, store).unwrap();
                    a.run(&stop);
                    Ok(())
                })
                .unwrap()
        })
    };
    wait_for("the first blackhole", Duration::from_secs(10), || blackholes(&ns).contains("10.252.0.0/26"));
    // Registration's own write wakes the agent once more; let that settle.
    std::thread::sleep(Duration::from_secs(1));

    let opens = Opens::watch(&store_dir);
    let before = counting.calls.load(Ordering::Relaxed);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(counting.calls.load(Ordering::Relaxed), before, "datastore requests while idle");
    assert_eq!(opens.take(), 0, "store files opened while idle");

    // A claim while it idles: routed without a poll interval to wait out.
    claim(file.as_ref(), &node, "10.252.0.64/26");
    wait_for("the claimed block's blackhole", Duration::from_secs(10), || {
        blackholes(&ns).contains("10.252.0.64/26")
    });
    assert!(counting.calls.load(Ordering::Relaxed) > before, "the claim was read");

    // Stop is seen between two waits.
    stop.store(true, Ordering::Relaxed);
    agent.join().unwrap();
}

/// gRPC calls etcd has started (its `/metrics`), summed over methods.
fn etcd_grpc_started(ns: &Netns) -> u64 {
    let url = format!("http://127.0.0.1:{}/metrics", testbed::Etcd::NETNS_CLIENT_PORT);
    let text = ns.exec(&["curl", "-sf", "-m", "5", &url]);
    text.lines()
        .filter(|l| l.starts_with("grpc_server_started_total{"))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .map(|v| v as u64)
        .sum()
}

#[test]
fn an_idle_agent_on_etcd_sends_etcd_nothing_and_a_claim_is_routed_at_once() {
    let ns = Netns::new("nwe");
    let mut etcd = testbed::Etcd::start_in(&ns);
    let dir = tempfile::tempdir().unwrap();
    let node = testbed::unique("n");
    let cfg = agent_config(
        dir.path(),
        &node,
        serde_json::json!({"datastore_type": "etcdv3", "etcd_endpoints": etcd.endpoint()}),
    );
    let store_cfg = cfg.datastore.clone();
    let netns = netlink_util::Netns::open(ns.path()).unwrap();
    // The test's own client, inside the namespace where etcd listens.
    let with_store = |f: &(dyn Fn(&dyn Datastore) + Sync)| {
        netns
            .run_thread(|| {
                let s = calico_store::open(&store_cfg).unwrap();
                f(s.as_ref());
                Ok(())
            })
            .unwrap()
    };
    with_store(&|s| claim(s, &node, "10.253.0.0/26"));

    let mut cmd = ns.nsenter(testbed::target_bin("calico-node-agent"));
    cmd.arg("run").arg("--config").arg(dir.path().join("agent.json"));
    let _agent = Daemon::spawn("agent", cmd, &dir.path().join("agent.out")).unwrap();
    wait_for("the first blackhole", Duration::from_secs(10), || blackholes(&ns).contains("10.253.0.0/26"));
    std::thread::sleep(Duration::from_secs(1));

    let before = etcd_grpc_started(&ns);
    std::thread::sleep(Duration::from_secs(3));
    let idle = etcd_grpc_started(&ns) - before;
    assert_eq!(idle, 0, "etcd started {idle} gRPC call(s) for an idle agent");

    with_store(&|s| claim(s, &node, "10.253.0.64/26"));
    wait_for("the claimed block's blackhole", Duration::from_secs(10), || {
        blackholes(&ns).contains("10.253.0.64/26")
    });

    // etcd goes away and comes back: the agent's watch reconnects (with
    // backoff) and a claim made afterwards is routed.
    etcd.stop();
    std::thread::sleep(Duration::from_secs(1));
    etcd.restart();
    with_store(&|s| claim(s, &node, "10.253.0.128/26"));
    wait_for("a claim after etcd restarted", Duration::from_secs(20), || {
        blackholes(&ns).contains("10.253.0.128/26")
    });
    assert!(blackholes(&ns).contains("10.253.0.0/26"), "routes kept through the outage");
}
