//! Stale UDP flows, with real packets in namespaces this test creates: a
//! node netns (the rules applied by the binary run inside it), two pods
//! wired the Calico way and an external client. A UDP client sends to a
//! ClusterIP, another to a NodePort, every 100 ms, from one source port
//! each (one conntrack entry each, kept alive by the traffic); the
//! endpoint moves from pod A to pod B.
//!
//! * `--conntrack-cleanup=false`: the clients keep reaching pod A, the
//!   endpoint that is gone (the bug, and proof the test can fail);
//! * with the cleanup and no remembered state (a first start): reconciled,
//!   they reach pod B right after the sync;
//! * with the state remembered by the previous `sync` process (a restart):
//!   the move back to pod A is cleaned by the diff, within one sync;
//! * a service that had no endpoint gets its first one: the entry its client
//!   made before the proxy knew the service (never DNATed) is deleted, the
//!   client reaches it;
//! * a TCP connection to the same service and pod, and a UDP flow straight to
//!   pod A, keep their conntrack entries (same ids) throughout.
//!
//! Also the ctnetlink socket itself: dump and delete in its own namespace.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kube_proxy_rules::conntrack::{ConntrackError, ConntrackSocket};
use kube_proxy_rules::family::IpFamily;
use testbed::{sh, Netns};

const NODE: &str = "node1";
const NODE_IP: &str = "192.168.77.1";
const POD_A: &str = "10.244.0.11";
const POD_B: &str = "10.244.0.12";
/// `late`'s externalIP. Not a ClusterIP: nftables mode drops traffic to
/// unallocated ClusterIPs, so no entry could be made for one before the
/// service exists; an external IP is routed like any address until then.
const LATE_IP: &str = "192.0.2.54";

/// Enter `netns` on the calling thread (a thread of the test's own).
fn enter(netns: &str) {
    let fd = std::fs::File::open(format!("/run/netns/{netns}")).unwrap();
    nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
}

/// A pod netns wired to the node the Calico way (as tests/packets.rs: a
/// /32 on eth0, 169.254.1.1 answered by proxy ARP on the host's veth).
fn calico_pod(node: &Netns, prefix: &str, ip: &str) -> Netns {
    let pod = Netns::new(prefix);
    let (n, p, host_if) = (node.name(), pod.name(), testbed::unique("cali"));
    sh(&format!(
        "ip -n {n} link add {host_if} type veth peer name eth0 netns {p} && \
         ip -n {p} addr add {ip}/32 dev eth0 && ip -n {p} link set eth0 up && \
         ip -n {p} route add 169.254.1.1 dev eth0 scope link && \
         ip -n {p} route add default via 169.254.1.1 dev eth0 && \
         ip -n {n} link set {host_if} up && \
         ip netns exec {n} sh -c 'echo 1 > /proc/sys/net/ipv4/conf/{host_if}/proxy_arp; \
           echo 0 > /proc/sys/net/ipv4/neigh/{host_if}/proxy_delay' && \
         ip -n {n} route add {ip}/32 dev {host_if} scope link"
    ));
    pod
}

/// Threads that stop and are joined on drop.
struct Task {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Task {
    fn spawn(netns: &str, f: impl FnOnce(Arc<AtomicBool>) + Send + 'static) -> Task {
        let stop = Arc::new(AtomicBool::new(false));
        let (netns, stop2) = (netns.to_string(), stop.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        let handle = std::thread::spawn(move || {
            enter(&netns);
            tx.send(()).unwrap();
            f(stop2)
        });
        rx.recv_timeout(Duration::from_secs(5)).unwrap();
        Task { stop, handle: Some(handle) }
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// A pod's UDP and TCP servers on `port`: each answers with the pod's name.
fn servers(pod: &Netns, name: &'static str, port: u16) -> Task {
    let (tx, rx) = std::sync::mpsc::channel();
    let task = Task::spawn(pod.name(), move |stop| {
        // `::` takes both families (bindv6only=0: IPv4 peers as ::ffff:a.b.c.d).
        let udp = UdpSocket::bind(("::", port)).unwrap();
        udp.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        let tcp = TcpListener::bind(("::", port)).unwrap();
        tcp.set_nonblocking(true).unwrap();
        tx.send(()).unwrap();
        let mut conns = Vec::new();
        let mut buf = [0u8; 512];
        while !stop.load(Ordering::Relaxed) {
            if let Ok((_, peer)) = udp.recv_from(&mut buf) {
                let _ = udp.send_to(name.as_bytes(), peer);
            }
            if let Ok((s, _)) = tcp.accept() {
                let _ = s.set_nonblocking(false);
                // One line in, the name out, for as long as the connection lives.
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut w = s;
                conns.push(std::thread::spawn(move || {
                    let mut line = String::new();
                    while r.read_line(&mut line).is_ok_and(|n| n > 0) {
                        let _ = writeln!(w, "{name}");
                        line.clear();
                    }
                }));
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(5)).unwrap();
    task
}

/// A UDP client sending to `target` every 100 ms from one source port,
/// recording who answered and when.
struct UdpClient {
    answers: Arc<Mutex<Vec<(Instant, String)>>>,
    port: Arc<Mutex<u16>>,
    _task: Task,
}

impl UdpClient {
    fn start(netns: &str, target: &str) -> UdpClient {
        let target: SocketAddr = target.parse().unwrap();
        let answers = Arc::new(Mutex::new(Vec::new()));
        let port = Arc::new(Mutex::new(0));
        let (a, p) = (answers.clone(), port.clone());
        let task = Task::spawn(netns, move |stop| {
            let s = UdpSocket::bind(if target.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" }).unwrap();
            *p.lock().unwrap() = s.local_addr().unwrap().port();
            s.set_read_timeout(Some(Duration::from_millis(10))).unwrap();
            let mut buf = [0u8; 512];
            let mut next = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                if Instant::now() >= next {
                    let _ = s.send_to(b"ping", target);
                    next += Duration::from_millis(100);
                }
                if let Ok((n, _)) = s.recv_from(&mut buf) {
                    a.lock().unwrap().push((Instant::now(), String::from_utf8_lossy(&buf[..n]).into_owned()));
                }
            }
        });
        UdpClient { answers, port, _task: task }
    }

    fn source_port(&self) -> u16 {
        *self.port.lock().unwrap()
    }

    /// Who answered after `since`.
    fn since(&self, since: Instant) -> Vec<String> {
        self.answers.lock().unwrap().iter().filter(|(t, _)| *t > since).map(|(_, s)| s.clone()).collect()
    }

    /// Wait up to `limit` for an answer from `pod` after `since`; how long it took.
    fn wait_for(&self, pod: &str, since: Instant, limit: Duration) -> Option<Duration> {
        while since.elapsed() < limit {
            let first =
                self.answers.lock().unwrap().iter().find(|(t, s)| *t > since && s == pod).map(|(t, _)| *t);
            if let Some(t) = first {
                return Some(t - since);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

/// The conntrack entries of the node as `conntrack -L` lists them, with ids.
fn entries(node: &Netns) -> Vec<String> {
    node.exec(&["conntrack", "-L", "-o", "id"]).lines().map(String::from).collect()
}

/// The id of the one entry whose line has every one of `parts`.
fn entry_id(node: &Netns, parts: &[&str]) -> Option<String> {
    let lines = entries(node);
    let hits: Vec<&String> = lines.iter().filter(|l| parts.iter().all(|p| l.contains(p))).collect();
    match hits.as_slice() {
        [one] => one.split_whitespace().find_map(|w| w.strip_prefix("id=")).map(String::from),
        _ => None,
    }
}

/// `dns` (UDP and TCP ports, ClusterIP and NodePort) with one endpoint;
/// `late` only when it has one.
fn manifests(dns_endpoint: &str, late_endpoint: Option<&str>) -> String {
    let mut m = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: dns}}\n\
         spec: {{type: NodePort, clusterIP: 10.96.0.53, ports: [\
           {{name: dns, port: 53, protocol: UDP, targetPort: 5353, nodePort: 30053}}, \
           {{name: dns-tcp, port: 53, protocol: TCP, targetPort: 5353, nodePort: 30054}}]}}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: dns-1, labels: {{kubernetes.io/service-name: dns}}}}\n\
         addressType: IPv4\n\
         ports: [{{name: dns, port: 5353, protocol: UDP}}, {{name: dns-tcp, port: 5353, protocol: TCP}}]\n\
         endpoints: [{{addresses: [{dns_endpoint}], nodeName: {NODE}}}]\n"
    );
    if let Some(ip) = late_endpoint {
        m.push_str(&format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: late}}\n\
             spec: {{clusterIP: 10.96.0.54, externalIPs: [{LATE_IP}], ports: [{{port: 53, protocol: UDP, targetPort: 5353}}]}}\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: late-1, labels: {{kubernetes.io/service-name: late}}}}\n\
             addressType: IPv4\nports: [{{port: 5353, protocol: UDP}}]\n\
             endpoints: [{{addresses: [{ip}], nodeName: {NODE}}}]\n"
        ));
    }
    m
}

/// One `sync` in the node namespace; its stderr.
fn sync(mode: &str, node: &Netns, manifests: &Path, state_dir: &Path, cleanup: bool) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", node.name(), env!("CARGO_BIN_EXE_kube-proxy-rules"), "-v", "sync"])
        .args(["--proxy-mode", mode, "--hostname-override", NODE, "--node-ip", NODE_IP])
        .args(["--cluster-cidr", "10.244.0.0/16"])
        .arg(format!("--conntrack-cleanup={cleanup}"))
        .arg("--state-dir")
        .arg(state_dir)
        .arg(manifests)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "sync failed: {stderr}");
    stderr
}

#[test]
fn stale_udp_flows_follow_the_endpoint_iptables() {
    stale_udp_flows_follow_the_endpoint("iptables");
}

#[test]
fn stale_udp_flows_follow_the_endpoint_nftables() {
    stale_udp_flows_follow_the_endpoint("nftables");
}

/// The node, its two pods (UDP and TCP servers on 5353 answering "pod-a"
/// and "pod-b") and an external client.
struct Setup {
    node: Netns,
    client: Netns,
    _pods: [Netns; 2],
    _servers: [Task; 2],
}

fn setup() -> Setup {
    let node = Netns::new("ctn");
    let n = node.name().to_string();
    let pod_a = calico_pod(&node, "cta", POD_A);
    let pod_b = calico_pod(&node, "ctb", POD_B);
    let client = Netns::new("ctc");
    let c = client.name().to_string();
    // The client's only route is the node; the node's default route is the
    // client (what is not DNATed goes back there and is dropped: a black hole).
    sh(&format!(
        "ip netns exec {n} sh -c 'echo 1 > /proc/sys/net/ipv4/ip_forward' && \
         ip -n {n} link add ext0 type veth peer name eth0 netns {c} && \
         ip -n {n} addr add {NODE_IP}/24 dev ext0 && ip -n {n} link set ext0 up && \
         ip -n {c} addr add 192.168.77.2/24 dev eth0 && ip -n {c} link set eth0 up && \
         ip -n {c} route add default via {NODE_IP} && ip -n {n} route add default via 192.168.77.2"
    ));
    let servers = [servers(&pod_a, "pod-a", 5353), servers(&pod_b, "pod-b", 5353)];
    Setup { node, client, _pods: [pod_a, pod_b], _servers: servers }
}

fn stale_udp_flows_follow_the_endpoint(mode: &str) {
    let setup = setup();
    let (node, c) = (&setup.node, setup.client.name().to_string());
    let tmp = tempfile::tempdir().unwrap();
    let state_dir = tmp.path().join("state");
    let file = tmp.path().join("manifests.yaml");

    std::fs::write(&file, manifests(POD_A, None)).unwrap();
    sync(mode, node, &file, &state_dir, false);
    // A client of `late`'s external IP before the proxy knows that service:
    // its entry is made now, with no DNAT (the NAT hooks are there: `dns`
    // has rules), and its packets go nowhere.
    let late = UdpClient::start(&c, &format!("{LATE_IP}:53"));
    let cluster_ip = UdpClient::start(&c, "10.96.0.53:53");
    let node_port = UdpClient::start(&c, &format!("{NODE_IP}:30053"));
    // Unrelated UDP, straight to pod A's server (not through the service).
    let direct = UdpClient::start(&c, &format!("{POD_A}:5353"));
    // TCP to the same service and pod, one long-lived connection.
    let tcp = client_tcp(&c, "10.96.0.53:53");
    let t0 = Instant::now();
    for (what, cl) in [("ClusterIP", &cluster_ip), ("NodePort", &node_port), ("direct", &direct)] {
        assert!(
            cl.wait_for("pod-a", t0, Duration::from_secs(5)).is_some(),
            "{mode}: {what} never reached pod A"
        );
    }
    assert!(late.since(t0).is_empty(), "{mode}: `late` is no service yet");
    let tcp_id = entry_id(node, &["tcp", "dst=10.96.0.53", "dport=53", &format!("src={POD_A}")])
        .unwrap_or_else(|| panic!("{mode}: no TCP entry:\n{}", entries(node).join("\n")));
    let sport = direct.source_port().to_string();
    let direct_id = entry_id(node, &["udp", &format!("dst={POD_A}"), &format!("sport={sport}")]).unwrap();

    // The endpoint moves to pod B; no cleanup: the clients keep reaching
    // pod A, which is no endpoint any more (until their entries time out).
    std::fs::write(&file, manifests(POD_B, None)).unwrap();
    sync(mode, node, &file, &state_dir, false);
    let t1 = Instant::now();
    std::thread::sleep(Duration::from_millis(1500));
    for (what, cl) in [("ClusterIP", &cluster_ip), ("NodePort", &node_port)] {
        let got = cl.since(t1);
        assert!(
            got.len() >= 10 && got.iter().all(|s| s == "pod-a"),
            "{mode}: {what} without cleanup: {got:?}"
        );
    }
    assert!(!state_dir.exists(), "no cleanup, no state");

    // With the cleanup and nothing remembered (a first start): reconciled.
    let log = sync(mode, node, &file, &state_dir, true);
    let t2 = Instant::now();
    for (what, cl) in [("ClusterIP", &cluster_ip), ("NodePort", &node_port)] {
        let took = cl.wait_for("pod-b", t2, Duration::from_secs(2));
        assert!(
            took.is_some(),
            "{mode}: {what} still stale after a reconciling sync: {:?}\n{log}",
            cl.since(t2)
        );
        eprintln!("{mode}: {what} reached pod B {:?} after the reconciling sync", took.unwrap_or_default());
    }
    assert!(state_dir.join("conntrack-ipv4.json").exists(), "{log}");

    // Back to pod A, by a new `sync` process: the remembered state says
    // what changed, and only that is cleaned.
    std::fs::write(&file, manifests(POD_A, None)).unwrap();
    let log = sync(mode, node, &file, &state_dir, true);
    let t3 = Instant::now();
    for (what, cl) in [("ClusterIP", &cluster_ip), ("NodePort", &node_port)] {
        let took = cl.wait_for("pod-a", t3, Duration::from_secs(1));
        assert!(took.is_some(), "{mode}: {what} still stale after one sync: {:?}\n{log}", cl.since(t3));
        // Within one sync: at most one packet in flight (100 ms apart) before the first answer from A.
        let after: Vec<String> = cl.since(t3 + Duration::from_millis(250));
        assert!(after.iter().all(|s| s == "pod-a"), "{mode}: {what}: {after:?}");
    }

    // `late` comes, with its first endpoint: the entry made before it, never
    // DNATed, goes (without the cleanup it would stay until the client stops).
    std::fs::write(&file, manifests(POD_A, Some(POD_B))).unwrap();
    let log = sync(mode, node, &file, &state_dir, true);
    let t4 = Instant::now();
    assert!(
        late.wait_for("pod-b", t4, Duration::from_secs(1)).is_some(),
        "{mode}: the first endpoint of `late` is not reached: {:?}\n{log}\n{}",
        late.since(t0),
        entries(node).join("\n")
    );

    // TCP and the unrelated UDP flow: the very same entries, and TCP still talks.
    assert_eq!(
        entry_id(node, &["tcp", "dst=10.96.0.53", "dport=53", &format!("src={POD_A}")]).as_deref(),
        Some(tcp_id.as_str()),
        "{mode}: the TCP entry was touched"
    );
    assert_eq!(
        entry_id(node, &["udp", &format!("dst={POD_A}"), &format!("sport={sport}")]).as_deref(),
        Some(direct_id.as_str()),
        "{mode}: the unrelated UDP entry was touched"
    );
    assert_eq!(tcp.ask(), "pod-a");
}

/// A TCP connection from a netns: one line out, the server's line back.
struct TcpClient {
    stream: TcpStream,
}

impl TcpClient {
    fn ask(&self) -> String {
        (&self.stream).write_all(b"hello\n").unwrap();
        let mut line = String::new();
        // The server writes one line per line it reads: nothing is buffered past it.
        BufReader::new(&self.stream).read_line(&mut line).unwrap();
        line.trim().to_string()
    }
}

fn client_tcp(netns: &str, addr: &str) -> TcpClient {
    let addr: SocketAddr = addr.parse().unwrap();
    let netns = netns.to_string();
    let stream = std::thread::spawn(move || {
        enter(&netns);
        TcpStream::connect_timeout(&addr, Duration::from_secs(3)).unwrap()
    })
    .join()
    .unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let c = TcpClient { stream };
    assert_eq!(c.ask(), "pod-a");
    c
}

/// IPv6: the IPv6 proxier's own cleanup (its own dump, its own state file),
/// a ClusterIP and a NodePort flow, one `sync` process per step. The pods
/// are plain routed /64s here (the IPv6 wiring is not what is tested).
#[test]
fn ipv6_stale_flows_follow_the_endpoint_iptables() {
    ipv6_stale_flows_follow_the_endpoint("iptables");
}

#[test]
fn ipv6_stale_flows_follow_the_endpoint_nftables() {
    ipv6_stale_flows_follow_the_endpoint("nftables");
}

fn ipv6_manifests(endpoint: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: dns6}}\n\
         spec: {{type: NodePort, clusterIP: 'fd00:96::53', ipFamilies: [IPv6], \
           ports: [{{port: 53, protocol: UDP, targetPort: 5353, nodePort: 30063}}]}}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: dns6-1, labels: {{kubernetes.io/service-name: dns6}}}}\n\
         addressType: IPv6\nports: [{{port: 5353, protocol: UDP}}]\n\
         endpoints: [{{addresses: ['{endpoint}'], nodeName: {NODE}}}]\n"
    )
}

fn ipv6_stale_flows_follow_the_endpoint(mode: &str) {
    let node = Netns::new("ct6n");
    let client = Netns::new("ct6c");
    let pods = [Netns::new("ct6a"), Netns::new("ct6b")];
    let (n, c) = (node.name(), client.name());
    let mut script = format!(
        "ip netns exec {n} sh -c 'echo 1 > /proc/sys/net/ipv6/conf/all/forwarding' && \
         ip -n {n} link add ext0 type veth peer name eth0 netns {c} && \
         ip -n {n} addr add fd00:77::1/64 dev ext0 nodad && ip -n {n} link set ext0 up && \
         ip -n {c} addr add fd00:77::2/64 dev eth0 nodad && ip -n {c} link set eth0 up && \
         ip -n {c} route add default via fd00:77::1 && ip -n {n} route add default via fd00:77::2"
    );
    for (i, p) in pods.iter().enumerate() {
        let (p, host_if) = (p.name(), testbed::unique("veth"));
        script.push_str(&format!(
            " && ip -n {n} link add {host_if} type veth peer name eth0 netns {p} && \
             ip -n {n} addr add fd00:{i}::1/64 dev {host_if} nodad && ip -n {n} link set {host_if} up && \
             ip -n {p} addr add fd00:{i}::2/64 dev eth0 nodad && ip -n {p} link set eth0 up && \
             ip -n {p} route add default via fd00:{i}::1"
        ));
    }
    sh(&script);
    let _servers = [servers(&pods[0], "pod-a", 5353), servers(&pods[1], "pod-b", 5353)];
    let tmp = tempfile::tempdir().unwrap();
    let (state_dir, file) = (tmp.path().join("state"), tmp.path().join("manifests.yaml"));
    let sync6 = |endpoint: &str| {
        std::fs::write(&file, ipv6_manifests(endpoint)).unwrap();
        let out = Command::new("ip")
            .args(["netns", "exec", n, env!("CARGO_BIN_EXE_kube-proxy-rules"), "sync", "--proxy-mode", mode])
            .args(["--hostname-override", NODE, "--node-ip", "fd00:77::1", "--cluster-cidr", "fd00::/56"])
            .args(["--service-cluster-ip-range", "10.96.0.0/12,fd00:96::/108"])
            .arg("--state-dir")
            .arg(&state_dir)
            .arg(&file)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{mode}: sync failed: {stderr}");
        stderr
    };
    sync6("fd00:0::2");
    let cluster_ip = UdpClient::start(c, "[fd00:96::53]:53");
    let node_port = UdpClient::start(c, "[fd00:77::1]:30063");
    let t0 = Instant::now();
    for (what, cl) in [("ClusterIP", &cluster_ip), ("NodePort", &node_port)] {
        assert!(
            cl.wait_for("pod-a", t0, Duration::from_secs(5)).is_some(),
            "{mode}: IPv6 {what} never reached pod A"
        );
    }
    // A first cleanup (reconcile) has run: the IPv6 state is remembered, apart.
    assert!(state_dir.join("conntrack-ipv6.json").exists());
    assert!(!state_dir.join("conntrack-ipv4.json").exists());
    let log = sync6("fd00:1::2");
    let t1 = Instant::now();
    for (what, cl) in [("ClusterIP", &cluster_ip), ("NodePort", &node_port)] {
        let took = cl.wait_for("pod-b", t1, Duration::from_secs(1));
        assert!(took.is_some(), "{mode}: IPv6 {what} still stale after one sync: {:?}\n{log}", cl.since(t1));
    }
}

/// `run`, the long-lived proxy: the move of the endpoint is cleaned by the
/// sync that follows the change of the input (the state in memory).
#[test]
fn run_cleans_stale_flows_after_the_sync_that_moves_the_endpoint_iptables() {
    run_cleans_stale_flows("iptables");
}

#[test]
fn run_cleans_stale_flows_after_the_sync_that_moves_the_endpoint_nftables() {
    run_cleans_stale_flows("nftables");
}

fn run_cleans_stale_flows(mode: &str) {
    let setup = setup();
    let c = setup.client.name().to_string();
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("manifests.yaml");
    std::fs::write(&file, manifests(POD_A, None)).unwrap();
    let mut cmd = setup.node.cmd(env!("CARGO_BIN_EXE_kube-proxy-rules"));
    cmd.args(["run", "--proxy-mode", mode, "--hostname-override", NODE, "--node-ip", NODE_IP])
        .args(["--cluster-cidr", "10.244.0.0/16", "--min-sync-period", "100ms"])
        .arg("--state-dir")
        .arg(tmp.path().join("state"))
        .arg(&file);
    let mut run = testbed::Daemon::spawn("kube-proxy-rules", cmd, &tmp.path().join("run.log")).unwrap();
    let cluster_ip = UdpClient::start(&c, "10.96.0.53:53");
    let node_port = UdpClient::start(&c, &format!("{NODE_IP}:30053"));
    let t0 = Instant::now();
    for (what, cl) in [("ClusterIP", &cluster_ip), ("NodePort", &node_port)] {
        let reached = cl.wait_for("pod-a", t0, Duration::from_secs(10));
        assert!(reached.is_some(), "{mode}: {what} never reached pod A:\n{}", run.log_tail(30));
    }
    std::fs::write(&file, manifests(POD_B, None)).unwrap();
    let t1 = Instant::now();
    for (what, cl) in [("ClusterIP", &cluster_ip), ("NodePort", &node_port)] {
        let took = cl.wait_for("pod-b", t1, Duration::from_secs(3));
        assert!(took.is_some(), "{mode}: {what} still stale: {:?}\n{}", cl.since(t1), run.log_tail(30));
        eprintln!("{mode}: {what} reached pod B {:?} after the input changed", took.unwrap_or_default());
    }
    // From then on, only pod B (the poll, the sync and one packet in flight before).
    std::thread::sleep(Duration::from_millis(500));
    let last = Instant::now() - Duration::from_millis(300);
    for cl in [&cluster_ip, &node_port] {
        let got = cl.since(last);
        assert!(!got.is_empty() && got.iter().all(|s| s == "pod-b"), "{mode}: {got:?}");
    }
    let log = std::fs::read_to_string(run.log()).unwrap();
    assert!(log.contains("deleted 2 stale conntrack entries"), "{log}");
    assert!(run.alive(), "{log}");
    run.stop();
}

/// The socket alone: it lists the entries of its own namespace (and no
/// other's), and deletes one by its tuple.
#[test]
fn the_ctnetlink_socket_dumps_and_deletes_in_its_namespace() {
    let ns = Netns::new("ctk");
    let other = Netns::new("ctk");
    for (ns, sport) in [(&ns, "40001"), (&ns, "40002"), (&other, "40003")] {
        ns.exec(&[
            "conntrack",
            "-I",
            "-p",
            "udp",
            "-s",
            "10.0.0.5",
            "-d",
            "10.96.0.10",
            "--sport",
            sport,
            "--dport",
            "53",
            "-r",
            "10.244.0.11",
            "-q",
            "10.0.0.5",
            "--reply-port-src",
            "5353",
            "--reply-port-dst",
            sport,
            "--timeout",
            "120",
        ]);
    }
    ns.exec(&[
        "conntrack",
        "-I",
        "-p",
        "tcp",
        "-s",
        "10.0.0.5",
        "-d",
        "10.96.0.10",
        "--sport",
        "40004",
        "--dport",
        "53",
        "-r",
        "10.244.0.11",
        "-q",
        "10.0.0.5",
        "--reply-port-src",
        "5353",
        "--reply-port-dst",
        "40004",
        "--state",
        "ESTABLISHED",
        "--timeout",
        "120",
    ]);
    let mut sock = ConntrackSocket::open_in(Some(ns.name())).unwrap();
    assert_eq!(sock.dump(IpFamily::V4).unwrap().len(), 3);
    // The kernel-filtered dump of one protocol.
    let flows = sock.dump_proto(IpFamily::V4, Some(17)).unwrap();
    assert_eq!(sock.dump_proto(IpFamily::V4, Some(6)).unwrap().len(), 1);
    let ports: BTreeMap<u16, _> = flows.iter().map(|f| (f.orig.sport, *f)).collect();
    assert_eq!(ports.keys().copied().collect::<Vec<_>>(), [40001, 40002], "{flows:?}");
    let f = ports[&40001];
    assert_eq!((f.orig.dst.to_string(), f.orig.dport), ("10.96.0.10".to_string(), 53));
    assert_eq!((f.reply.src.to_string(), f.reply.sport), ("10.244.0.11".to_string(), 5353));
    assert!(sock.delete(IpFamily::V4, &f).unwrap());
    assert!(!sock.delete(IpFamily::V4, &f).unwrap(), "already gone");
    let left = ns.exec(&["conntrack", "-L", "-p", "udp"]);
    assert!(!left.contains("sport=40001") && left.contains("sport=40002"), "{left}");
    assert!(other.exec(&["conntrack", "-L", "-p", "udp"]).contains("sport=40003"));
    // IPv6 is its own dump; an IPv6 entry is deleted the same way.
    assert!(sock.dump(IpFamily::V6).unwrap().is_empty());
    ns.exec(&[
        "conntrack",
        "-I",
        "-p",
        "udp",
        "-s",
        "fd00::5",
        "-d",
        "fd00:96::10",
        "--sport",
        "40005",
        "--dport",
        "53",
        "-r",
        "fd00:244::11",
        "-q",
        "fd00::5",
        "--reply-port-src",
        "5353",
        "--reply-port-dst",
        "40005",
        "--timeout",
        "120",
    ]);
    let v6 = sock.dump(IpFamily::V6).unwrap();
    assert_eq!(v6.len(), 1, "{v6:?}");
    assert_eq!((v6[0].reply.src.to_string(), v6[0].reply.sport), ("fd00:244::11".to_string(), 5353));
    assert!(sock.dump(IpFamily::V4).unwrap().iter().all(|f| f.orig.src.is_ipv4()));
    assert!(sock.delete(IpFamily::V6, &v6[0]).unwrap());
    assert!(sock.dump(IpFamily::V6).unwrap().is_empty());
    // Creating (the bench fills its scratch table so): there, once.
    let mut made = f;
    (made.orig.sport, made.reply.dport) = (40009, 40009);
    sock.create(IpFamily::V4, &made, 60).unwrap();
    assert!(ns.exec(&["conntrack", "-L", "-p", "udp"]).contains("sport=40009"));
    let again = sock.create(IpFamily::V4, &made, 60).unwrap_err();
    assert!(matches!(again, ConntrackError::Kernel { errno: libc::EEXIST, .. }), "{again}");
}
