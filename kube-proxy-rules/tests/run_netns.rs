//! `kube-proxy-rules run` and `sync --dry-run` inside a namespace the test
//! creates: the first sync is full, later ones are partial and follow input
//! file changes and pod-record changes (the datastore revision), a vanished
//! canary forces a full resync that restores the jump rules, and the dry run
//! shows which chains a sync would rewrite, create or delete.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use calico_store::model::{self, ObjectMeta, WorkloadEndpoint, WorkloadEndpointSpec};
use calico_store::Datastore;
use testbed::Netns;

#[path = "support/run_process.rs"]
mod run_process;
use run_process::{RunProcess, BIN};

/// Whether an nftables listing DNATs to `ip:port`, in either layout: an
/// endpoint chain's `dnat to ip:port` (kube-proxy's) or an `endpoint-dnat`
/// map element `… : ip . port` (endpoint-maps, the default).
fn dnats_to(table: &str, ip: &str, port: u16) -> bool {
    let chain =
        if ip.contains(':') { format!("dnat to [{ip}]:{port}") } else { format!("dnat to {ip}:{port}") };
    table.contains(&chain) || table.contains(&format!(": {ip} . {port}"))
}

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

/// `run --proxy-mode <mode>` in `ns`, syncing every second at most every
/// 100 ms, with `flags`.
fn start_run(ns: &str, mode: &str, flags: &[String], log: std::path::PathBuf) -> RunProcess {
    let mut args: Vec<String> = ["--proxy-mode", mode, "--sync-period", "1s", "--min-sync-period", "100ms"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend_from_slice(flags);
    RunProcess::spawn(ns, &args, log)
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
    let run = start_run(ns.name(), "iptables", &args(&store_dir, &manifests), log);

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
    let run = start_run(ns.name(), "nftables", &args(&store_dir, &manifests), log);
    let table = || ns.exec(&["nft", "list", "table", "ip", "kube-proxy"]);

    run.wait_for("synced (full: first sync)", 1);
    assert!(dnats_to(&table(), "10.244.0.11", 8080), "{}", table());

    // A new manifest file: an incremental sync of that one service.
    std::fs::write(manifests.join("api.yaml"), API).unwrap();
    let log = run.wait_for("synced (incremental): 1 services changed", 1);
    assert!(!log.contains("error"), "{log}");
    assert!(dnats_to(&table(), "10.244.0.99", 6443), "{}", table());

    // A new pod record: web gets a second endpoint.
    let (k, v) = record("web-abc-22222", "10.244.0.12");
    store.create(&k, &v).unwrap();
    run.wait_for("synced (incremental): 1 services changed", 2);
    let t = table();
    assert!(dnats_to(&t, "10.244.0.12", 8080) && t.contains("numgen random mod 2"), "{t}");

    // Periodic syncs with nothing changed write nothing.
    run.wait_for("synced (incremental): 0 services changed, 0 chains written, 0 stale chains flushed", 1);

    // Someone deletes the table: the next check forces a full resync.
    ns.exec(&["nft", "delete", "table", "ip", "kube-proxy"]);
    run.wait_for("synced (full: table ip kube-proxy is gone or flushed)", 1);
    let t = table();
    assert!(dnats_to(&t, "10.244.0.12", 8080) && dnats_to(&t, "10.244.0.99", 6443), "{t}");
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
            // kube-proxy's layout: the dry run's endpoint chains are what is checked.
            .args(["netns", "exec", ns.name(), BIN, "sync", "--proxy-mode", "nftables"])
            .args(["--nftables-layout", "kube-proxy"])
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

/// Connect from `netns` to `addr` and read the answer (on a thread that
/// entered the namespace: setns affects one thread only).
fn fetch_from(netns: &str, addr: &str) -> Result<String, String> {
    let (path, addr) = (format!("/run/netns/{netns}"), addr.parse::<std::net::SocketAddr>().unwrap());
    std::thread::spawn(move || {
        use std::io::Read;
        let fd = std::fs::File::open(&path).unwrap();
        nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))
            .map_err(|e| format!("connect {addr}: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(2))).map_err(|e| e.to_string())?;
        let mut out = String::new();
        s.read_to_string(&mut out).map_err(|e| format!("read from {addr}: {e}"))?;
        Ok(out.trim().to_string())
    })
    .join()
    .unwrap()
}

/// A TCP server in `netns` answering "ok" until dropped.
struct OkServer(std::sync::Arc<std::sync::atomic::AtomicBool>, Option<std::thread::JoinHandle<()>>);

impl OkServer {
    fn start(netns: &str, port: u16) -> OkServer {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let (path, stop2) = (format!("/run/netns/{netns}"), stop.clone());
        let h = std::thread::spawn(move || {
            use std::io::Write;
            let fd = std::fs::File::open(&path).unwrap();
            nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let l = std::net::TcpListener::bind(("0.0.0.0", port)).unwrap();
            l.set_nonblocking(true).unwrap();
            tx.send(()).unwrap();
            while !stop2.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((mut s, _)) => {
                        let _ = s.set_nonblocking(false);
                        let _ = writeln!(s, "ok");
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(5)).unwrap();
        OkServer(stop, Some(h))
    }
}

impl Drop for OkServer {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(h) = self.1.take() {
            let _ = h.join();
        }
    }
}

/// `run` with `--nodeport-addresses`: an address in that range added to the
/// node while `run` is running makes the next sync a full one and the
/// NodePort answers on it (kube-proxy re-reads the node IPs on every sync).
fn nodeport_follows_a_new_node_address(mode: &str) {
    let (node, client) = (Netns::new("kna"), Netns::new("knb"));
    let (veth, peer) = (testbed::unique("kv"), testbed::unique("kc"));
    node.exec(&["ip", "link", "add", &veth, "type", "veth", "peer", "name", &peer, "netns", client.name()]);
    node.exec(&["ip", "addr", "add", "192.168.78.1/24", "dev", &veth]);
    node.exec(&["ip", "link", "set", &veth, "up"]);
    client.exec(&["ip", "addr", "add", "192.168.78.2/24", "dev", &peer]);
    client.exec(&["ip", "link", "set", &peer, "up"]);
    client.exec(&["ip", "route", "add", "10.77.0.0/16", "via", "192.168.78.1"]);
    // The endpoint is an address of the node itself: DNAT to it is delivered
    // locally, to the server below.
    node.exec(&["ip", "addr", "add", "10.244.9.9/32", "dev", "lo"]);
    let _server = OkServer::start(node.name(), 8080);

    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("np.yaml"),
        "apiVersion: v1\nkind: Service\nmetadata: {name: np}\n\
         spec: {type: NodePort, clusterIP: 10.96.0.20, ports: [{port: 80, targetPort: 8080, nodePort: 30080}]}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {name: np-1, labels: {kubernetes.io/service-name: np}}\naddressType: IPv4\n\
         endpoints: [{addresses: [10.244.9.9]}]\nports: [{port: 8080}]\n",
    )
    .unwrap();
    let log = tmp.path().join("run.log");
    let flags = ["--hostname-override", "node1", "--nodeport-addresses", "10.77.0.0/16"].map(String::from);
    let flags = [&flags[..], &[tmp.path().join("np.yaml").display().to_string()]].concat();
    let run = start_run(node.name(), mode, &flags, log);
    run.wait_for("synced (full: first sync)", 1);
    // The NodePort is not served on the node's other addresses.
    assert!(fetch_from(client.name(), "192.168.78.1:30080").is_err());

    node.exec(&["ip", "addr", "add", "10.77.0.5/32", "dev", &veth]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match fetch_from(client.name(), "10.77.0.5:30080") {
            Ok(answer) => {
                assert_eq!(answer, "ok");
                break;
            }
            Err(e) => assert!(Instant::now() < deadline, "the NodePort never answered: {e}\n{}", run.log()),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = run.wait_for("node addresses changed", 1);
    assert!(!log.contains("error"), "{log}");
}

#[test]
fn run_in_nftables_mode_serves_nodeports_on_a_new_node_address() {
    nodeport_follows_a_new_node_address("nftables");
}

#[test]
fn run_in_iptables_mode_serves_nodeports_on_a_new_node_address() {
    nodeport_follows_a_new_node_address("iptables");
}

const API6: &str = "\
apiVersion: v1
kind: Service
metadata: {name: api6}
spec: {clusterIP: 'fd00:96::11', ports: [{port: 443}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: api6-1, labels: {kubernetes.io/service-name: api6}}
addressType: IPv6
endpoints: [{addresses: ['fd00:244::99']}]
ports: [{port: 6443}]
";

/// `run` on an IPv4-only node never touches IPv6; when an IPv6 service
/// appears the IPv6 proxier starts (ip6tables / table ip6 kube-proxy) and
/// follows it, and when it goes its rules go (the IPv6 proxier keeps running).
fn run_starts_the_ipv6_proxier_when_ipv6_services_appear(mode: &str) {
    let ns = Netns::new("kp6");
    let tmp = tempfile::tempdir().unwrap();
    let (store_dir, manifests) = (tmp.path().join("store"), tmp.path().join("m"));
    std::fs::create_dir(&manifests).unwrap();
    std::fs::write(manifests.join("web.yaml"), WEB).unwrap();
    let log = tmp.path().join("run.log");
    let run = start_run(ns.name(), mode, &args(&store_dir, &manifests), log);
    let rules6 = || match mode {
        "nftables" => ns.try_exec(&["nft", "list", "table", "ip6", "kube-proxy"]).unwrap_or_default(),
        _ => ns.exec(&["ip6tables-save", "-t", "nat"]),
    };
    let has_endpoint6 = |rules: &str| match mode {
        "nftables" => dnats_to(rules, "fd00:244::99", 6443),
        _ => rules.contains("[fd00:244::99]:6443"),
    };

    run.wait_for("synced (full: first sync)", 1);
    std::thread::sleep(Duration::from_millis(300));
    assert!(!rules6().contains("KUBE-") && !rules6().contains("kube-proxy"), "{}", rules6());
    assert!(!run.log().contains("IPv6"), "{}", run.log());

    std::fs::write(manifests.join("api6.yaml"), API6).unwrap();
    let log = run.wait_for("IPv6: synced (full: first sync)", 1);
    assert!(!log.contains("error"), "{log}");
    assert!(has_endpoint6(&rules6()), "{}", rules6());
    // The IPv4 proxier goes on, with no IPv6 address in its rules.
    run.wait_for("IPv4: synced", 1);

    std::fs::remove_file(manifests.join("api6.yaml")).unwrap();
    // The removed service's chains go (iptables: deleted in the same partial
    // sync; nftables: flushed, deleted once safe).
    let changed = if mode == "nftables" {
        "IPv6: synced (incremental): 1 services changed"
    } else {
        "IPv6: synced (partial): 0 services changed, 0 chains written, 2 stale chains deleted"
    };
    run.wait_for(changed, 1);
    assert!(!has_endpoint6(&rules6()), "{}", rules6());
}

#[test]
fn run_starts_the_ipv6_proxier_when_ipv6_services_appear_iptables() {
    run_starts_the_ipv6_proxier_when_ipv6_services_appear("iptables");
}

#[test]
fn run_starts_the_ipv6_proxier_when_ipv6_services_appear_nftables() {
    run_starts_the_ipv6_proxier_when_ipv6_services_appear("nftables");
}

/// `run` on a node whose IPv6 is disabled (`disable_ipv6=1` in the test's
/// own namespace): an IPv6 service that appears is warned about once, not
/// synced and not retried every sync; IPv4 goes on.
fn run_skips_ipv6_on_an_ipv6_disabled_node(mode: &str) {
    let ns = Netns::new("kp6");
    ns.exec(&["sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1"]);
    let tmp = tempfile::tempdir().unwrap();
    let (store_dir, manifests) = (tmp.path().join("store"), tmp.path().join("m"));
    std::fs::create_dir(&manifests).unwrap();
    std::fs::write(manifests.join("web.yaml"), WEB).unwrap();
    let log = tmp.path().join("run.log");
    let run = start_run(ns.name(), mode, &args(&store_dir, &manifests), log);
    run.wait_for("synced (full: first sync)", 1);
    std::fs::write(manifests.join("api6.yaml"), API6).unwrap();
    let warning = "IPv6 services present but IPv6 is unavailable on this node: running single-stack";
    run.wait_for(warning, 1);
    // Three more periodic syncs: still one warning, never an IPv6 sync.
    let synced = run.log().matches("synced (").count();
    let log = run.wait_for("synced (", synced + 3);
    assert_eq!(log.matches(warning).count(), 1, "{log}");
    assert!(!log.contains("IPv6: synced") && !log.contains("error"), "{log}");
    let rules6 = match mode {
        "nftables" => ns.try_exec(&["nft", "list", "table", "ip6", "kube-proxy"]).unwrap_or_default(),
        _ => ns.exec(&["ip6tables-save", "-t", "nat"]),
    };
    assert!(!rules6.contains("KUBE-") && !rules6.contains("fd00"), "{rules6}");
}

#[test]
fn run_skips_ipv6_on_an_ipv6_disabled_node_iptables() {
    run_skips_ipv6_on_an_ipv6_disabled_node("iptables");
}

#[test]
fn run_skips_ipv6_on_an_ipv6_disabled_node_nftables() {
    run_skips_ipv6_on_an_ipv6_disabled_node("nftables");
}

/// Inputs are followed through inotify, not by the periodic sync (an hour
/// here): a file input replaced by a rename over it (as editors and
/// config-management tools write files), a new file in a new subdirectory
/// of a directory input, and a pod record, each bring a partial sync.
#[test]
fn run_follows_inputs_through_inotify_not_the_sync_period() {
    let ns = Netns::new("kpr");
    let tmp = tempfile::tempdir().unwrap();
    let (store_dir, dir) = (tmp.path().join("store"), tmp.path().join("m"));
    std::fs::create_dir(&dir).unwrap();
    let file = tmp.path().join("web.yaml");
    std::fs::write(&file, WEB).unwrap();
    let store = calico_store::file::FileStore::open(store_dir.clone()).unwrap();
    let (k, v) = record("web-abc-11111", "10.244.0.11");
    store.create(&k, &v).unwrap();
    let log = tmp.path().join("run.log");
    let flags: Vec<String> = ["--hostname-override", "node1", "--datastore-type", "file", "--datastore-path"]
        .iter()
        .map(|s| s.to_string())
        .chain([store_dir.display().to_string(), file.display().to_string(), dir.display().to_string()])
        .chain(["--sync-period=1h".to_string()])
        .collect();
    let run = start_run(ns.name(), "iptables", &flags, log);
    run.wait_for("synced (full: first sync)", 1);
    let nat = || ns.exec(&["iptables-save", "-t", "nat"]);

    // The file replaced by a rename: web's port changes.
    let staged = tmp.path().join(".web.yaml.tmp");
    std::fs::write(&staged, WEB.replace("targetPort: 8080", "targetPort: 8081")).unwrap();
    std::fs::rename(&staged, &file).unwrap();
    run.wait_for("synced (partial): 1 services changed", 1);
    assert!(nat().contains("default/web -> 10.244.0.11:8081"), "{}", nat());

    // A new subdirectory of the directory input, then a manifest in it.
    std::fs::create_dir(dir.join("sub")).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    std::fs::write(dir.join("sub").join("api.yaml"), API).unwrap();
    run.wait_for("synced (partial): 1 services changed", 2);
    assert!(nat().contains("default/api -> 10.244.0.99:6443"), "{}", nat());

    // A pod record: the datastore's change notification.
    let (k, v) = record("web-abc-22222", "10.244.0.12");
    store.create(&k, &v).unwrap();
    run.wait_for("synced (partial): 1 services changed", 3);
    assert!(nat().contains("default/web -> 10.244.0.12:8081"), "{}", nat());
    // An unrelated file next to the file input brings no sync.
    let syncs = run.log().matches("synced (").count();
    std::fs::write(tmp.path().join("unrelated.yaml"), API).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(run.log().matches("synced (").count(), syncs, "{}", run.log());
}
