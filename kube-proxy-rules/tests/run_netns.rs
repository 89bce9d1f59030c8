//! `kube-proxy-rules run` and `sync --dry-run` inside a namespace the test
//! creates: the first sync is full, later ones are partial and follow input
//! file changes and pod-record changes (the datastore revision), a vanished
//! canary forces a full resync that restores the jump rules, and the dry run
//! shows which chains a sync would rewrite, create or delete.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use calico_store::model::{self, ObjectMeta, WorkloadEndpoint, WorkloadEndpointSpec};
use calico_store::Datastore;
use testbed::Netns;

const BIN: &str = env!("CARGO_BIN_EXE_kube-proxy-rules");

fn record(pod: &str, ip: &str) -> (String, Vec<u8>) {
    let name = model::workload_endpoint_name("node1", "k8s", pod, "eth0");
    let wep = WorkloadEndpoint::new(
        "WorkloadEndpoint",
        ObjectMeta { name: name.clone(), namespace: Some("default".into()), ..Default::default() },
        WorkloadEndpointSpec {
            orchestrator: "k8s".into(),
            workload: String::new(),
            node: "node1".into(),
            container_id: format!("cid-{pod}"),
            pod: pod.into(),
            endpoint: "eth0".into(),
            interface_name: "cali0".into(),
            mac: String::new(),
            ip_networks: vec![format!("{ip}/32").parse().unwrap()],
            profiles: vec![],
            ports: vec![],
        },
    );
    (model::workload_endpoint_key("default", &name), model::encode(&wep))
}

const WEB: &str = "\
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec: {template: {metadata: {labels: {app: web}}, spec: {containers: [{name: c}]}}}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec: {clusterIP: 10.96.0.10, selector: {app: web}, ports: [{port: 80, targetPort: 8080}]}
";

const API: &str = "\
apiVersion: v1
kind: Service
metadata: {name: api}
spec: {clusterIP: 10.96.0.11, ports: [{port: 443}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: api-1, labels: {kubernetes.io/service-name: api}}
addressType: IPv4
endpoints: [{addresses: [10.244.0.99]}]
ports: [{port: 6443}]
";

struct Runner {
    child: Child,
    log: std::path::PathBuf,
}

impl Runner {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
    /// Wait until the log has `n` occurrences of `needle`.
    fn wait_for(&self, needle: &str, n: usize) -> String {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let log = self.log();
            if log.matches(needle).count() >= n {
                return log;
            }
            assert!(Instant::now() < deadline, "no {n}x {needle:?} in the run log:\n{log}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn args(store: &Path, manifests: &Path) -> Vec<String> {
    ["--hostname-override", "node1", "--cluster-cidr", "10.244.0.0/16", "--datastore-type", "file"]
        .iter()
        .map(|s| s.to_string())
        .chain(["--datastore-path".to_string(), store.display().to_string(), manifests.display().to_string()])
        .collect()
}

#[test]
fn run_follows_files_and_pod_records_with_partial_syncs() {
    let ns = Netns::new("kpr");
    let tmp = tempfile::tempdir().unwrap();
    let (store_dir, manifests) = (tmp.path().join("store"), tmp.path().join("m"));
    std::fs::create_dir(&manifests).unwrap();
    std::fs::write(manifests.join("web.yaml"), WEB).unwrap();
    let store = calico_store::file::FileStore::open(store_dir.clone()).unwrap();
    let (k, v) = record("web-abc-11111", "10.244.0.11");
    store.create(&k, &v).unwrap();

    let log = tmp.path().join("run.log");
    let child = Command::new("ip")
        .args(["netns", "exec", ns.name(), BIN, "run", "--sync-period", "1s", "--min-sync-period", "100ms"])
        .args(args(&store_dir, &manifests))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let run = Runner { child, log };

    run.wait_for("synced (full: first sync)", 1);
    let nat = ns.exec(&["iptables-save", "-t", "nat"]);
    assert!(nat.contains("default/web -> 10.244.0.11:8080"), "{nat}");

    // A new manifest file: a partial sync of that one service.
    std::fs::write(manifests.join("api.yaml"), API).unwrap();
    let log = run.wait_for("synced (partial): 1 services changed", 1);
    assert!(!log.contains("error"), "{log}");
    assert!(ns.exec(&["iptables-save", "-t", "nat"]).contains("default/api -> 10.244.0.99:6443"));

    // A new pod record (the CNI adding a pod): the store revision moves, web gets a second endpoint.
    let (k, v) = record("web-abc-22222", "10.244.0.12");
    store.create(&k, &v).unwrap();
    run.wait_for("synced (partial): 1 services changed", 2);
    let svc = ns.exec(&["iptables-save", "-t", "nat"]);
    assert!(svc.contains("default/web -> 10.244.0.12:8080"), "{svc}");
    assert!(svc.contains("--probability 0.50000000000"), "{svc}");

    // A bad object in a new file is reported; the others stay.
    std::fs::write(manifests.join("bad.yaml"), "apiVersion: v1\nkind: Service\nmetadata: {name: bad}\nspec: {clusterIP: 10.96.0.12, ports: [{port: 99999}]}\n").unwrap();
    run.wait_for("skipped Service default/bad", 1);

    // Periodic syncs with nothing changed are partial and write no service chain.
    run.wait_for("synced (partial): 0 services changed, 0 chains written", 1);

    // Someone flushes the firewall: the canary is gone, the next sync is full
    // and puts the jump rules back.
    for table in ["filter", "nat", "mangle"] {
        ns.exec(&["iptables", "-t", table, "-F"]);
        ns.exec(&["iptables", "-t", table, "-X"]);
    }
    run.wait_for("synced (full: canary chain KUBE-PROXY-CANARY is gone)", 1);
    let nat = ns.exec(&["iptables-save", "-t", "nat"]);
    assert!(
        nat.contains("-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES"),
        "{nat}"
    );
    assert!(nat.contains("default/web -> 10.244.0.12:8080"), "{nat}");
}

#[test]
fn dry_run_shows_chains_to_rewrite_create_and_delete() {
    let ns = Netns::new("kpr");
    let tmp = tempfile::tempdir().unwrap();
    let (store_dir, manifests) = (tmp.path().join("store"), tmp.path().join("m"));
    std::fs::create_dir(&manifests).unwrap();
    std::fs::write(manifests.join("api.yaml"), API).unwrap();
    let sync = |extra: &[&str]| {
        let out = Command::new("ip")
            .args(["netns", "exec", ns.name(), BIN, "sync"])
            .args(extra)
            .args(args(&store_dir, &manifests))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // Nothing applied yet: every chain would be created.
    let view = sync(&["--dry-run"]);
    assert!(!ns.exec(&["iptables-save", "-t", "nat"]).contains("KUBE-SERVICES"), "dry run applied rules");
    assert!(view.starts_with("# full sync"), "{view}");
    assert!(view.contains("+ nat KUBE-SVC-"), "{view}");
    assert!(view.contains("+ filter KUBE-FORWARD (3 rules)"), "{view}");

    sync(&[]);
    // Now api is replaced by web: api's chains are stale, web's are new.
    std::fs::remove_file(manifests.join("api.yaml")).unwrap();
    std::fs::write(manifests.join("web.yaml"), WEB.replace("selector: {app: web}, ", "")).unwrap();
    std::fs::write(
        manifests.join("web-slice.yaml"),
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: web-1, labels: {kubernetes.io/service-name: web}}\naddressType: IPv4\nendpoints: [{addresses: [10.244.0.5]}]\nports: [{port: 8080}]\n",
    )
    .unwrap();
    let view = sync(&["--dry-run"]);
    let api_svc = kube_proxy_rules::names::ServiceChains::new("default/api", "tcp").svc;
    let web_svc = kube_proxy_rules::names::ServiceChains::new("default/web", "tcp").svc;
    assert!(view.contains(&format!("- nat {api_svc} (stale)")), "{view}");
    assert!(view.contains(&format!("+ nat {web_svc} (2 rules)")), "{view}");
    assert!(view.contains("~ nat KUBE-SERVICES (2 rules)"), "{view}");
    assert!(ns.exec(&["iptables-save", "-t", "nat"]).contains(&api_svc), "dry run deleted a chain");
}

/// `run --proxy-mode nftables`: a full sync first, incremental ones after a
/// file or pod-record change (one service each), and a deleted table (the
/// nftables canary) brings a full resync.
#[test]
fn run_in_nftables_mode_follows_changes_and_recreates_a_deleted_table() {
    let ns = Netns::new("kpr");
    let tmp = tempfile::tempdir().unwrap();
    let (store_dir, manifests) = (tmp.path().join("store"), tmp.path().join("m"));
    std::fs::create_dir(&manifests).unwrap();
    std::fs::write(manifests.join("web.yaml"), WEB).unwrap();
    let store = calico_store::file::FileStore::open(store_dir.clone()).unwrap();
    let (k, v) = record("web-abc-11111", "10.244.0.11");
    store.create(&k, &v).unwrap();

    let log = tmp.path().join("run.log");
    let child = Command::new("ip")
        .args(["netns", "exec", ns.name(), BIN, "run", "--proxy-mode", "nftables"])
        .args(["--sync-period", "1s", "--min-sync-period", "100ms"])
        .args(args(&store_dir, &manifests))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let run = Runner { child, log };
    let table = || ns.exec(&["nft", "list", "table", "ip", "kube-proxy"]);

    run.wait_for("synced (full: first sync)", 1);
    assert!(table().contains("dnat to 10.244.0.11:8080"), "{}", table());

    // A new manifest file: an incremental sync of that one service.
    std::fs::write(manifests.join("api.yaml"), API).unwrap();
    let log = run.wait_for("synced (incremental): 1 services changed", 1);
    assert!(!log.contains("error"), "{log}");
    assert!(table().contains("dnat to 10.244.0.99:6443"));

    // A new pod record: web gets a second endpoint.
    let (k, v) = record("web-abc-22222", "10.244.0.12");
    store.create(&k, &v).unwrap();
    run.wait_for("synced (incremental): 1 services changed", 2);
    let t = table();
    assert!(t.contains("dnat to 10.244.0.12:8080") && t.contains("numgen random mod 2"), "{t}");

    // Periodic syncs with nothing changed write nothing.
    run.wait_for("synced (incremental): 0 services changed, 0 chains written, 0 stale chains flushed", 1);

    // Someone deletes the table: the next check forces a full resync.
    ns.exec(&["nft", "delete", "table", "ip", "kube-proxy"]);
    run.wait_for("synced (full: table ip kube-proxy is gone or flushed)", 1);
    let t = table();
    assert!(t.contains("dnat to 10.244.0.12:8080") && t.contains("dnat to 10.244.0.99:6443"), "{t}");
    // The iptables side of this namespace was never touched.
    assert!(!ns.exec(&["iptables-save"]).contains("KUBE-"));
}

#[test]
fn dry_run_in_nftables_mode_shows_the_transaction_without_applying_it() {
    let ns = Netns::new("kpr");
    let tmp = tempfile::tempdir().unwrap();
    let (store_dir, manifests) = (tmp.path().join("store"), tmp.path().join("m"));
    std::fs::create_dir(&manifests).unwrap();
    std::fs::write(manifests.join("api.yaml"), API).unwrap();
    let sync = |extra: &[&str]| {
        let out = Command::new("ip")
            .args(["netns", "exec", ns.name(), BIN, "sync", "--proxy-mode", "nftables"])
            .args(extra)
            .args(args(&store_dir, &manifests))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let api = kube_proxy_rules::names::nft_service_base("default/api", "tcp");
    let view = sync(&["--dry-run"]);
    assert!(ns.try_exec(&["nft", "list", "table", "ip", "kube-proxy"]).is_err(), "dry run created the table");
    assert!(view.starts_with("# full sync (first sync)"), "{view}");
    assert!(view.contains(&format!("+ chain service-{api} (2 rules)")), "{view}");
    assert!(view.contains("= service-ips: flushed, 1 element(s) added"), "{view}");

    sync(&[]);
    // Now api's endpoint changes: its old endpoint chain goes stale.
    std::fs::write(manifests.join("api.yaml"), API.replace("10.244.0.99", "10.244.0.98")).unwrap();
    let view = sync(&["--dry-run"]);
    // A new process starts with a full sync, which finds the existing chains.
    assert!(view.contains(&format!("~ chain service-{api} (2 rules)")), "{view}");
    assert!(view.contains("+ chain endpoint-") && view.contains("__10.244.0.98/6443"), "{view}");
    assert!(view.contains("- chain endpoint-") && view.contains("__10.244.0.99/6443 (stale"), "{view}");
    assert!(ns.exec(&["nft", "list", "table", "ip", "kube-proxy"]).contains("10.244.0.99:6443"));
    // A one-shot sync flushes the stale chain, waits, and deletes it.
    sync(&[]);
    let t = ns.exec(&["nft", "list", "table", "ip", "kube-proxy"]);
    assert!(!t.contains("10.244.0.99") && t.contains("dnat to 10.244.0.98:6443"), "{t}");
}
