//! `kube-proxy-rules run --master …` against the test API server
//! (`kube-apiserver-fixture`, written from the API conventions, sharing no
//! code with the client), with real packets through the rules in a node
//! namespace: a Service created on the server becomes reachable, an
//! EndpointSlice change moves the traffic, a dropped watch resumes from its
//! resourceVersion without a relist or a full sync, an expired one (410)
//! relists without a full sync, no rule is written before every kind was
//! listed, and the health and metrics servers answer real HTTP requests
//! (including the 503s). Both proxy modes.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kube_apiserver_fixture::{ApiServer, ENDPOINT_SLICES, NODES, SERVICES};
use serde_json::{json, Value};
use testbed::Netns;

#[path = "support/run_process.rs"]
mod run_process;
use run_process::RunProcess;

/// Run `f` on a thread that has entered `netns` (setns affects one thread only).
fn in_netns<T: Send + 'static>(netns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{netns}");
    std::thread::spawn(move || {
        let fd = File::open(&path).unwrap();
        nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        f()
    })
    .join()
    .unwrap()
}

/// A TCP server on `ip:port` in `netns` answering every connection with `name`.
struct Server(Arc<AtomicBool>, Option<JoinHandle<()>>);

impl Server {
    fn start(netns: &str, name: &str, ip: &str, port: u16) -> Server {
        let stop = Arc::new(AtomicBool::new(false));
        let addr: SocketAddr = format!("{ip}:{port}").parse().unwrap();
        let listener = in_netns(netns, move || TcpListener::bind(addr).unwrap());
        listener.set_nonblocking(true).unwrap();
        let (stop2, name) = (stop.clone(), name.to_string());
        let h = std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut s, _)) => {
                        let _ = s.set_nonblocking(false);
                        let _ = writeln!(s, "{name}");
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Server(stop, Some(h))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
        if let Some(h) = self.1.take() {
            let _ = h.join();
        }
    }
}

/// Connect from `netns` to `addr` and read the answer.
fn fetch(netns: &str, addr: &str) -> Result<String, String> {
    let addr: SocketAddr = addr.parse().unwrap();
    in_netns(netns, move || {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(2))).map_err(|e| e.to_string())?;
        let mut out = String::new();
        s.read_to_string(&mut out).map_err(|e| e.to_string())?;
        Ok(out.trim().to_string())
    })
}

/// Wait until `addr` answers `want` from `netns`.
fn wait_answer(netns: &str, addr: &str, want: &str, log: &dyn Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let got = fetch(netns, addr);
        if got.as_deref() == Ok(want) {
            return;
        }
        assert!(Instant::now() < deadline, "{addr} answered {got:?}, not {want:?}\n{}", log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// GET `path` from `addr` inside `netns`: (status, body).
fn http_get(netns: &str, addr: &str, path: &str) -> Result<(u16, String), String> {
    let (addr, path): (SocketAddr, String) = (addr.parse().unwrap(), path.to_string());
    in_netns(netns, move || {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(2))).map_err(|e| e.to_string())?;
        write!(s, "GET {path} HTTP/1.1\r\nHost: node\r\nConnection: close\r\n\r\n")
            .map_err(|e| e.to_string())?;
        let mut out = String::new();
        s.read_to_string(&mut out).map_err(|e| e.to_string())?;
        let code = out.get(9..12).and_then(|c| c.parse().ok()).ok_or(format!("no status in {out:?}"))?;
        let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
        Ok((code, body))
    })
}

fn wait_http(netns: &str, addr: &str, path: &str, code: u16, log: &dyn Fn() -> String) -> String {
    wait_http_body(netns, addr, path, code, "", log)
}

/// Wait until GET answers `code` with a body containing `needle`.
fn wait_http_body(
    netns: &str,
    addr: &str,
    path: &str,
    code: u16,
    needle: &str,
    log: &dyn Fn() -> String,
) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let got = http_get(netns, addr, path);
        if let Ok((c, body)) = &got {
            if *c == code && body.contains(needle) {
                return body.clone();
            }
        }
        assert!(Instant::now() < deadline, "GET {addr}{path}: {got:?}, not {code}\n{}", log());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `kube-proxy-rules run` in a namespace, its stderr in a file.
/// `run --proxy-mode <mode> --hostname-override node1 <flags>` in `ns`.
fn start_run(ns: &str, mode: &str, flags: &[&str], log: std::path::PathBuf) -> RunProcess {
    let mut args = vec!["--proxy-mode", mode, "--hostname-override", "node1"];
    args.extend_from_slice(flags);
    RunProcess::spawn(ns, &args, log)
}

/// The test API server, listening on the node namespace's loopback.
fn api_server_in(node: &Netns) -> ApiServer {
    let listener = in_netns(node.name(), || TcpListener::bind("127.0.0.1:0").unwrap());
    ApiServer::serve(listener)
}

fn service(name: &str, ip: &str, extra: Value) -> Value {
    let mut s = json!({
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"type": "ClusterIP", "clusterIP": ip, "clusterIPs": [ip], "ipFamilies": ["IPv4"],
                 "ports": [{"port": 80, "targetPort": 8080, "protocol": "TCP"}]}
    });
    if let (Some(spec), Some(more)) = (s["spec"].as_object_mut(), extra.as_object()) {
        for (k, v) in more {
            spec.insert(k.clone(), v.clone());
        }
    }
    s
}

fn slice(name: &str, svc: &str, eps: &[(&str, &str)]) -> Value {
    let endpoints: Vec<Value> = eps
        .iter()
        .map(|(ip, node)| json!({"addresses": [ip], "conditions": {"ready": true}, "nodeName": node}))
        .collect();
    json!({
        "metadata": {"name": name, "namespace": "default", "labels": {"kubernetes.io/service-name": svc},
                     "annotations": {"endpoints.kubernetes.io/last-change-trigger-time": "2026-01-01T00:00:00Z"}},
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"port": 8080, "protocol": "TCP", "name": ""}]
    })
}

fn node_object(taints: Value) -> Value {
    json!({
        "metadata": {"name": "node1", "labels": {"topology.kubernetes.io/zone": "zone-a"}},
        "spec": {"taints": taints},
        "status": {"addresses": [{"type": "InternalIP", "address": "192.168.79.1"}]}
    })
}

/// A node namespace (two endpoint addresses on its loopback, a server on
/// each) and a client namespace routed to it over a veth pair.
struct Topology {
    node: Netns,
    client: Netns,
    _servers: Vec<Server>,
}

fn topology() -> Topology {
    let (node, client) = (Netns::new("kapi"), Netns::new("kcli"));
    let (veth, peer) = (testbed::unique("ka"), testbed::unique("kc"));
    node.exec(&["ip", "link", "add", &veth, "type", "veth", "peer", "name", &peer, "netns", client.name()]);
    node.exec(&["ip", "addr", "add", "192.168.79.1/24", "dev", &veth]);
    node.exec(&["ip", "link", "set", &veth, "up"]);
    client.exec(&["ip", "addr", "add", "192.168.79.2/24", "dev", &peer]);
    client.exec(&["ip", "link", "set", &peer, "up"]);
    client.exec(&["ip", "route", "add", "10.96.0.0/12", "via", "192.168.79.1"]);
    node.exec(&["ip", "addr", "add", "10.244.9.9/32", "dev", "lo"]);
    node.exec(&["ip", "addr", "add", "10.244.9.10/32", "dev", "lo"]);
    let servers = vec![
        Server::start(node.name(), "a", "10.244.9.9", 8080),
        Server::start(node.name(), "b", "10.244.9.10", 8080),
    ];
    Topology { node, client, _servers: servers }
}

fn api_follows_services_slices_and_dropped_watches(mode: &str) {
    let t = topology();
    let api = api_server_in(&t.node);
    api.set_max_page(1); // every list comes in chunks (limit/continue)
    api.set_bookmark_interval(Some(Duration::from_millis(200)));
    api.create(NODES, node_object(json!([])));
    api.create(SERVICES, service("web", "10.96.0.30", json!({})));
    api.create(ENDPOINT_SLICES, slice("web-1", "web", &[("10.244.9.9", "node1")]));
    // Another proxy's service: kube-proxy's label selector leaves it out.
    let mut other = service("other", "10.96.0.31", json!({}));
    other["metadata"]["labels"] = json!({"service.kubernetes.io/service-proxy-name": "someone-else"});
    api.create(SERVICES, other);
    api.create(ENDPOINT_SLICES, slice("other-1", "other", &[("10.244.9.10", "node1")]));

    let tmp = tempfile::tempdir().unwrap();
    let url = api.url();
    let flags = ["--master", url.as_str(), "--sync-period", "30s", "--min-sync-period", "0s"];
    let run = start_run(t.node.name(), mode, &flags, tmp.path().join("run.log"));
    let log = || run.log();
    run.wait_for("synced (full: first sync)", 1);
    wait_answer(t.client.name(), "10.96.0.30:80", "a", &log);
    assert!(fetch(t.client.name(), "10.96.0.31:80").is_err(), "another proxy's service was proxied");
    let pages = api
        .requests()
        .iter()
        .filter(|r| r.is_list_of(ENDPOINT_SLICES) && r.query.contains_key("continue"))
        .count();
    assert!(pages >= 1, "the slices list came in one piece: {:?}", api.requests());

    // An EndpointSlice change moves the traffic (a partial sync).
    api.update(ENDPOINT_SLICES, slice("web-1", "web", &[("10.244.9.10", "node1")]));
    wait_answer(t.client.name(), "10.96.0.30:80", "b", &log);
    // A new Service and its slice become reachable.
    api.create(SERVICES, service("api", "10.96.0.32", json!({})));
    api.create(ENDPOINT_SLICES, slice("api-1", "api", &[("10.244.9.9", "node1")]));
    wait_answer(t.client.name(), "10.96.0.32:80", "a", &log);
    // A NodePort on the node IP the Node object gives (no --node-ip: in
    // nftables mode NodePorts are served on the primary node IPs only).
    let np = json!({"type": "NodePort",
                    "ports": [{"port": 80, "targetPort": 8080, "protocol": "TCP", "nodePort": 30200}]});
    api.create(SERVICES, service("np", "10.96.0.33", np));
    api.create(ENDPOINT_SLICES, slice("np-1", "np", &[("10.244.9.10", "node1")]));
    wait_answer(t.client.name(), "192.168.79.1:30200", "b", &log);
    assert_eq!(run.full_syncs(), 1, "{}", log());

    // A dropped watch resumes from its resourceVersion: no relist, no full sync.
    let count =
        |f: &dyn Fn(&kube_apiserver_fixture::Request) -> bool| api.requests().iter().filter(|r| f(r)).count();
    let lists_before = count(&|r| !r.is_watch());
    let lists_services_before = count(&|r| r.is_list_of(SERVICES));
    let watches_before = count(&|r| r.is_watch_of(ENDPOINT_SLICES));
    api.drop_watches();
    let deadline = Instant::now() + Duration::from_secs(10);
    while count(&|r| r.is_watch_of(ENDPOINT_SLICES)) == watches_before {
        assert!(Instant::now() < deadline, "the watch was not resumed: {:?}", api.requests());
        std::thread::sleep(Duration::from_millis(20));
    }
    let resumed = api.requests().into_iter().rfind(|r| r.is_watch_of(ENDPOINT_SLICES)).unwrap();
    assert!(resumed.query.get("resourceVersion").is_some_and(|v| v != "0" && !v.is_empty()), "{resumed:?}");
    assert_eq!(resumed.query.get("allowWatchBookmarks").map(String::as_str), Some("true"));
    api.update(ENDPOINT_SLICES, slice("web-1", "web", &[("10.244.9.9", "node1")]));
    wait_answer(t.client.name(), "10.96.0.30:80", "a", &log);
    assert_eq!(count(&|r| !r.is_watch()), lists_before, "a dropped watch made a relist");
    assert_eq!(run.full_syncs(), 1, "a dropped watch made a full sync\n{}", log());

    // An expired resourceVersion: the Services watch is down (dropped, its
    // next attempt refused with a 500, so the client backs off) while the
    // `api` Service is deleted and the history compacted. The client's
    // watch from its old version gets 410, it relists, and the Service it
    // never saw a DELETED event for is gone. Still no full sync.
    let services_watches = count(&|r| r.is_watch_of(SERVICES));
    api.fail_requests(SERVICES, 1);
    api.drop_watches();
    let deadline = Instant::now() + Duration::from_secs(10);
    while count(&|r| r.is_watch_of(SERVICES)) == services_watches {
        assert!(Instant::now() < deadline, "the watch was not retried: {:?}", api.requests());
        std::thread::sleep(Duration::from_millis(10));
    }
    api.delete(SERVICES, "default", "api");
    api.compact();
    let deadline = Instant::now() + Duration::from_secs(20);
    while count(&|r| r.is_list_of(SERVICES)) == lists_services_before {
        assert!(Instant::now() < deadline, "no relist after 410: {:?}", api.requests());
        std::thread::sleep(Duration::from_millis(50));
    }
    run.wait_for("relisted Services", 1);
    let deadline = Instant::now() + Duration::from_secs(15);
    while fetch(t.client.name(), "10.96.0.32:80").is_ok() {
        assert!(Instant::now() < deadline, "the Service deleted during the outage still answers\n{}", log());
        std::thread::sleep(Duration::from_millis(50));
    }
    wait_answer(t.client.name(), "10.96.0.30:80", "a", &log);
    assert_eq!(run.full_syncs(), 1, "{}", log());
    assert!(!log().contains("sync failed"), "{}", log());
}

#[test]
fn api_source_iptables() {
    api_follows_services_slices_and_dropped_watches("iptables");
}

#[test]
fn api_source_nftables() {
    api_follows_services_slices_and_dropped_watches("nftables");
}

/// No rule is written before every kind has been listed: the Node list
/// fails (500, the client backs off and retries) while the Services and
/// slices are there; once it succeeds the rules come. The API server is
/// named by a kubeconfig file.
#[test]
fn no_rules_before_every_kind_was_listed() {
    let t = topology();
    let api = api_server_in(&t.node);
    api.create(SERVICES, service("web", "10.96.0.30", json!({})));
    api.create(ENDPOINT_SLICES, slice("web-1", "web", &[("10.244.9.9", "node1")]));
    api.fail_requests(NODES, 4);
    let tmp = tempfile::tempdir().unwrap();
    // Through a kubeconfig this time (kube-proxy's --kubeconfig).
    let kubeconfig = tmp.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: c, cluster: {{server: \"{}\"}}}}]\n\
             users: [{{name: u, user: {{}}}}]\ncontexts: [{{name: x, context: {{cluster: c, user: u}}}}]\n\
             current-context: x\n",
            api.url()
        ),
    )
    .unwrap();
    let kubeconfig = kubeconfig.display().to_string();
    let run =
        start_run(t.node.name(), "iptables", &["--kubeconfig", &kubeconfig], tmp.path().join("run.log"));
    run.wait_for("listed EndpointSlices", 1);
    run.wait_for("watching the Node", 1);
    assert!(
        !t.node.exec(&["iptables-save", "-t", "nat"]).contains("KUBE-SERVICES"),
        "rules before the Node list"
    );
    assert!(!run.log().contains("synced"), "{}", run.log());
    run.wait_for("synced (full: first sync)", 1);
    wait_answer(t.client.name(), "10.96.0.30:80", "a", &|| run.log());
    let node_requests = api.requests().iter().filter(|r| r.path.ends_with("/nodes")).count();
    assert!(node_requests >= 4, "{:?}", api.requests());
    assert_eq!(
        api.requests().iter().find(|r| r.path.ends_with("/nodes")).unwrap().query["fieldSelector"],
        "metadata.name=node1"
    );
}

/// /healthz, /livez, /metrics and a health check node port, over HTTP in
/// the node namespace: 200s while syncs keep up, 503 while a change waits
/// longer than twice the sync period, /healthz 503 for a node about to be
/// deleted, the service's port 200 with local endpoints, 503 without,
/// closed with the service.
#[test]
fn health_and_metrics_servers() {
    let t = topology();
    let api = api_server_in(&t.node);
    api.create(NODES, node_object(json!([])));
    let lb = json!({"type": "LoadBalancer", "externalTrafficPolicy": "Local", "healthCheckNodePort": 32100,
                    "ports": [{"port": 80, "targetPort": 8080, "protocol": "TCP", "nodePort": 30100}]});
    api.create(SERVICES, service("lb", "10.96.0.40", lb));
    api.create(ENDPOINT_SLICES, slice("lb-1", "lb", &[("10.244.9.9", "node1")]));
    let tmp = tempfile::tempdir().unwrap();
    let url = api.url();
    let flags = [
        "--master",
        url.as_str(),
        "--sync-period",
        "1s",
        "--min-sync-period",
        "4s",
        "--healthz-bind-address",
        "127.0.0.1:10256",
        "--metrics-bind-address",
        "127.0.0.1:10249",
    ];
    let run = start_run(t.node.name(), "iptables", &flags, tmp.path().join("run.log"));
    let log = || run.log();
    run.wait_for("synced (full: first sync)", 1);
    let ns = t.node.name();
    let body = wait_http(ns, "127.0.0.1:10256", "/healthz", 200, &log);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["nodeEligible"], true, "{body}");
    assert!(v["lastUpdated"].as_str().unwrap().ends_with(" +0000 UTC"), "{body}");
    let body = wait_http(ns, "127.0.0.1:10256", "/livez", 200, &log);
    assert!(body.starts_with("{\"lastUpdated\": ") && !body.contains("nodeEligible"), "{body}");

    // The service's health check node port: one local ready endpoint.
    let body = wait_http(ns, "192.168.79.1:32100", "/", 200, &log);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v,
        json!({"service": {"namespace": "default", "name": "lb"}, "localEndpoints": 1, "serviceProxyHealthy": true})
    );
    // Its endpoint moves to another node: 503, no local endpoints.
    api.update(ENDPOINT_SLICES, slice("lb-1", "lb", &[("10.244.9.9", "node2")]));
    // (503 first while the change waits, then 503 for want of a local endpoint.)
    wait_http_body(ns, "192.168.79.1:32100", "/", 503, "\"localEndpoints\": 0", &log);

    // A change waits longer than twice the sync period (the min sync
    // period holds it back 4 s): /healthz and /livez 503 until it is synced.
    let synced = run.log().matches("synced (").count();
    api.update(ENDPOINT_SLICES, slice("lb-1", "lb", &[("10.244.9.9", "node1")]));
    let body = wait_http(ns, "127.0.0.1:10256", "/healthz", 503, &log);
    assert!(body.contains("\"nodeEligible\": true"), "{body}");
    wait_http(ns, "127.0.0.1:10256", "/livez", 503, &log);
    run.wait_for("synced (", synced + 1);
    wait_http(ns, "127.0.0.1:10256", "/healthz", 200, &log);
    wait_http(ns, "192.168.79.1:32100", "/", 200, &log);

    // The node is about to be deleted: /healthz 503, /livez still 200.
    api.update(
        NODES,
        node_object(json!([{"key": "ToBeDeletedByClusterAutoscaler", "effect": "NoSchedule"}])),
    );
    let body = wait_http(ns, "127.0.0.1:10256", "/healthz", 503, &log);
    assert!(body.contains("\"nodeEligible\": false"), "{body}");
    wait_http(ns, "127.0.0.1:10256", "/livez", 200, &log);

    // Metrics: kube-proxy's names, with what happened counted.
    let metrics = wait_http(ns, "127.0.0.1:10249", "/metrics", 200, &log);
    for want in [
        "# TYPE kubeproxy_sync_proxy_rules_duration_seconds histogram",
        "kubeproxy_sync_full_proxy_rules_duration_seconds_count 1",
        "# TYPE kubeproxy_network_programming_duration_seconds histogram",
        "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
        "kubeproxy_sync_proxy_rules_iptables_total{table=\"nat\"}",
        "kubeproxy_sync_proxy_rules_iptables_restore_failures_total 0",
        "kubeproxy_proxy_healthz_total{code=\"503\"}",
        "kubeproxy_proxy_livez_total{code=\"200\"}",
    ] {
        assert!(metrics.contains(want), "no {want:?} in\n{metrics}");
    }
    let value = |name: &str| -> f64 {
        metrics.lines().find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok())).unwrap_or(-1.0)
    };
    assert!(value("kubeproxy_sync_proxy_rules_endpoint_changes_total") >= 3.0, "{metrics}");
    assert!(value("kubeproxy_sync_partial_proxy_rules_duration_seconds_count") >= 2.0, "{metrics}");
    assert!(value("kubeproxy_network_programming_duration_seconds_count") >= 2.0, "{metrics}");
    assert!(http_get(ns, "127.0.0.1:10249", "/nothing").unwrap().0 == 404);

    // The service goes: its health check port closes.
    api.delete(SERVICES, "default", "lb");
    let deadline = Instant::now() + Duration::from_secs(15);
    while http_get(ns, "192.168.79.1:32100", "/").is_ok() {
        assert!(Instant::now() < deadline, "the health check node port stayed open\n{}", log());
        std::thread::sleep(Duration::from_millis(100));
    }
}
