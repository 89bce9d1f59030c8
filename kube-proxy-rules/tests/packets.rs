//! Real packets through the rules `kube-proxy-rules sync` applies, in
//! namespaces this test creates: a node netns (the rules are applied by the
//! binary run inside it), two "pods" wired the Calico way (a /32 on eth0,
//! 169.254.1.1 as a link-scope gateway answered by proxy ARP on the host's
//! cali veth, a host /32 route to the veth) and a client netns on an external
//! link. The pods' endpoints come from Calico pod records in a file store
//! (selected through a Deployment's labels, named targetPort), one service
//! from an EndpointSlice. Every test runs in both proxy modes (iptables and
//! nftables), with the same inputs and the same expectations.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use calico_store::model::{self, EndpointPort, ObjectMeta, WorkloadEndpoint, WorkloadEndpointSpec};
use calico_store::Datastore;
use testbed::{sh, Netns};

const NODE: &str = "node1";

/// `--proxy-mode`.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Iptables,
    Nftables,
    /// nftables with `--nftables-layout endpoint-maps`.
    NftablesMaps,
}

impl Mode {
    fn flag(self) -> &'static str {
        match self {
            Mode::Iptables => "iptables",
            Mode::Nftables | Mode::NftablesMaps => "nftables",
        }
    }
    fn layout(self) -> &'static str {
        match self {
            Mode::NftablesMaps => "endpoint-maps",
            _ => "kube-proxy",
        }
    }
    /// The rules as the kernel has them.
    fn rules(self, node: &Netns) -> String {
        match self {
            Mode::Iptables => node.exec(&["iptables-save", "-t", "nat"]),
            Mode::Nftables | Mode::NftablesMaps => node.exec(&["nft", "list", "table", "ip", "kube-proxy"]),
        }
    }
    /// How the rules show that `svc` (in namespace default) has endpoint `ep`.
    fn endpoint_marker(self, svc: &str, ep: &str) -> String {
        match self {
            Mode::Iptables => format!("default/{svc} -> {ep}"),
            Mode::Nftables => format!("dnat to {ep}"),
            // An endpoint-dnat element: `slot : ip . port`.
            Mode::NftablesMaps => {
                let (ip, port) = ep.rsplit_once(':').unwrap();
                format!("{} . {port}", ip.trim_start_matches('[').trim_end_matches(']'))
            }
        }
    }
}
const NODE_IP: &str = "192.168.77.1";

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

/// A TCP server in a pod: answers every connection with "<name> <peer ip>".
struct Server {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Server {
    fn start(netns: &str, name: &str, port: u16) -> Server {
        Server::start_on(netns, name, "0.0.0.0", port)
    }

    /// Listening on `ip` (`::` takes both families: Linux's default
    /// bindv6only=0 hands IPv4 peers over as `::ffff:a.b.c.d`).
    fn start_on(netns: &str, name: &str, ip: &str, port: u16) -> Server {
        let ip: std::net::IpAddr = ip.parse().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        let path = format!("/run/netns/{netns}");
        let (name, stop2) = (name.to_string(), stop.clone());
        let handle = std::thread::spawn(move || {
            let fd = File::open(&path).unwrap();
            nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let l = TcpListener::bind((ip, port)).unwrap();
            l.set_nonblocking(true).unwrap();
            tx.send(()).unwrap();
            while !stop2.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((mut s, peer)) => {
                        let _ = s.set_nonblocking(false);
                        let _ = writeln!(s, "{name} {}", peer.ip());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(1)),
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(5)).unwrap();
        Server { stop, handle: Some(handle) }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn fetch_once(addr: SocketAddr) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out.trim().to_string())
}

/// Connect from `netns` to `addr` `n` times (new connections), collecting answers.
fn fetch(netns: &str, addr: &str, n: usize) -> Vec<std::io::Result<String>> {
    let addr: SocketAddr = addr.parse().unwrap();
    in_netns(netns, move || (0..n).map(|_| fetch_once(addr)).collect())
}

fn fetch1(netns: &str, addr: &str) -> String {
    match fetch(netns, addr, 1).pop().unwrap() {
        Ok(s) => s,
        Err(e) => panic!("connect {addr} from {netns}: {e}"),
    }
}

/// A pod netns wired to the node the Calico way.
fn calico_pod(node: &Netns, prefix: &str, ip: &str, host_if: &str) -> Netns {
    let pod = Netns::new(prefix);
    let (n, p) = (node.name(), pod.name());
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

fn pod_record(pod: &str, ip: &str, host_if: &str) -> WorkloadEndpoint {
    let name = model::workload_endpoint_name(NODE, "k8s", pod, "eth0");
    WorkloadEndpoint::new(
        "WorkloadEndpoint",
        ObjectMeta { name, namespace: Some("default".into()), ..Default::default() },
        WorkloadEndpointSpec {
            orchestrator: "k8s".into(),
            workload: String::new(),
            node: NODE.into(),
            container_id: format!("cid-{pod}"),
            pod: pod.into(),
            endpoint: "eth0".into(),
            interface_name: host_if.into(),
            mac: String::new(),
            ip_networks: vec![format!("{ip}/32").parse().unwrap()],
            profiles: vec!["kns.default".into()],
            ports: vec![EndpointPort { name: "http".into(), protocol: "TCP".into(), port: 80 }],
        },
    )
}

const MANIFESTS: &str = "\
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  template:
    metadata: {labels: {app: web}}
    spec: {containers: [{name: web, ports: [{name: http, containerPort: 80}]}]}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  type: NodePort
  clusterIP: 10.96.0.10
  selector: {app: web}
  externalIPs: [192.168.77.1]
  ports: [{port: 8080, targetPort: http, nodePort: 30080}]
---
apiVersion: v1
kind: Service
metadata: {name: empty}
spec:
  clusterIP: 10.96.0.20
  selector: {app: nothing}
  ports: [{port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: solo}
spec:
  clusterIP: 10.96.0.30
  ports: [{port: 80}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: solo-1, labels: {kubernetes.io/service-name: solo}}
addressType: IPv4
endpoints: [{addresses: [10.244.0.12], nodeName: node1}]
ports: [{port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: bad}
spec:
  clusterIP: 10.96.0.40
  externalIPs: [not-an-ip]
  ports: [{port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: sticky}
spec:
  type: NodePort
  clusterIP: 10.96.0.50
  selector: {app: web}
  sessionAffinity: ClientIP
  ports: [{port: 8081, targetPort: http, nodePort: 30081}]
";

fn sync(mode: Mode, node: &Netns, dir: &std::path::Path, store: &std::path::Path) -> String {
    sync_with(mode, node, dir, store, &["--node-ip", NODE_IP, "--cluster-cidr", "10.244.0.0/16"])
}

/// `sync` in the node namespace with the given node flags.
fn sync_with(
    mode: Mode,
    node: &Netns,
    dir: &std::path::Path,
    store: &std::path::Path,
    node_flags: &[&str],
) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", node.name(), env!("CARGO_BIN_EXE_kube-proxy-rules"), "sync"])
        .args(["--proxy-mode", mode.flag(), "--nftables-layout", mode.layout()])
        .args(["--hostname-override", NODE])
        .args(node_flags)
        .args(["--datastore-type", "file", "--datastore-path"])
        .arg(store)
        .arg(dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "sync failed: {stderr}");
    stderr
}

fn share(answers: &[std::io::Result<String>], pod: &str) -> usize {
    answers.iter().filter(|a| a.as_ref().is_ok_and(|s| s.starts_with(pod))).count()
}

#[test]
fn services_carry_real_packets() {
    carry_real_packets(Mode::Iptables);
}

#[test]
fn services_carry_real_packets_nftables() {
    carry_real_packets(Mode::Nftables);
}

#[test]
fn services_carry_real_packets_nftables_endpoint_maps() {
    carry_real_packets(Mode::NftablesMaps);
}

fn carry_real_packets(mode: Mode) {
    let node = Netns::new("kpn");
    let n = node.name().to_string();
    sh(&format!("ip netns exec {n} sh -c 'echo 1 > /proc/sys/net/ipv4/ip_forward'"));
    let p1 = calico_pod(&node, "kpa", "10.244.0.11", &testbed::unique("cali"));
    let p2 = calico_pod(&node, "kpb", "10.244.0.12", &testbed::unique("cali"));
    let client = Netns::new("kpc");
    let c = client.name().to_string();
    sh(&format!(
        "ip -n {n} link add ext0 type veth peer name eth0 netns {c} && \
         ip -n {n} addr add {NODE_IP}/24 dev ext0 && ip -n {n} link set ext0 up && \
         ip -n {c} addr add 192.168.77.2/24 dev eth0 && ip -n {c} link set eth0 up && \
         ip -n {c} route add default via {NODE_IP} && \
         ip -n {n} route add default via 192.168.77.2"
    ));
    let _s1 = Server::start(p1.name(), "web-5d9f8-aaaaa", 80);
    let _s2 = Server::start(p2.name(), "web-5d9f8-bbbbb", 80);

    // Pod records as the CNI writes them, in a file store.
    let tmp = tempfile::tempdir().unwrap();
    let store_dir = tmp.path().join("store");
    let store = calico_store::file::FileStore::open(store_dir.clone()).unwrap();
    for (pod, ip) in [("web-5d9f8-aaaaa", "10.244.0.11"), ("web-5d9f8-bbbbb", "10.244.0.12")] {
        let wep = pod_record(pod, ip, "cali");
        store
            .create(&model::workload_endpoint_key("default", &wep.metadata.name), &model::encode(&wep))
            .unwrap();
    }
    let manifests = tmp.path().join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    std::fs::write(manifests.join("app.yaml"), MANIFESTS).unwrap();

    let stderr = sync(mode, &node, &manifests, &store_dir);
    assert!(stderr.contains("skipped Service default/bad"), "{stderr}");
    // An IPv4-only node: no IPv6 proxier ran (no ip6tables chains, no ip6 table).
    assert!(!node.exec(&["ip6tables-save"]).contains("KUBE-"), "IPv6 rules on an IPv4-only node");
    assert!(!node.exec(&["nft", "list", "tables"]).contains("ip6 kube-proxy"));
    assert!(stderr.contains("externalIP"), "{stderr}");
    let rules = mode.rules(&node);
    for ep in ["10.244.0.11:80", "10.244.0.12:80"] {
        assert!(
            rules.contains(&mode.endpoint_marker("web", ep)),
            "endpoint {ep} missing:\n{stderr}\n{rules}"
        );
    }

    // ClusterIP from a pod and from the node.
    let a = fetch1(p1.name(), "10.96.0.10:8080");
    assert!(a.starts_with("web-5d9f8-"), "{a}");
    let a = fetch1(&n, "10.96.0.10:8080");
    assert!(a.starts_with("web-5d9f8-"), "{a}");

    // externalIP and NodePort from the client: reached, and masqueraded
    // (the pod sees the node's address, not the client's).
    for addr in [format!("{NODE_IP}:8080"), format!("{NODE_IP}:30080")] {
        let a = fetch1(&c, &addr);
        let (pod, peer) = a.split_once(' ').unwrap();
        assert!(pod.starts_with("web-5d9f8-"), "{a}");
        assert_eq!(peer, NODE_IP, "external traffic to {addr} must be masqueraded: {a}");
    }

    // Pod-to-service traffic keeps the pod's address.
    assert_eq!(fetch1(p1.name(), "10.96.0.30:80"), "web-5d9f8-bbbbb 10.244.0.11");
    // Hairpin: a pod reaching itself through a service is masqueraded (else
    // its reply would go straight back to itself from the wrong address).
    let a = fetch1(p2.name(), "10.96.0.30:80");
    let (pod, peer) = a.split_once(' ').unwrap();
    assert_eq!(pod, "web-5d9f8-bbbbb", "{a}");
    assert_ne!(peer, "10.244.0.12", "{mode:?}: hairpin traffic must be masqueraded: {a}");

    // Two endpoints: 1000 new connections split between 40% and 60%.
    let answers = fetch(&c, &format!("{NODE_IP}:30080"), 1000);
    let (a, b) = (share(&answers, "web-5d9f8-aaaaa"), share(&answers, "web-5d9f8-bbbbb"));
    assert_eq!(a + b, 1000, "every connection must be answered");
    assert!((400..=600).contains(&a), "split {a}/{b}");
    eprintln!("{mode:?}: 1000 connections to the NodePort: {a} / {b}");

    // ClientIP affinity: every new connection from the client goes to one pod.
    let answers = fetch(&c, &format!("{NODE_IP}:30081"), 50);
    let first = match &answers[0] {
        Ok(s) => s.split(' ').next().unwrap_or("").to_string(),
        Err(e) => panic!("{mode:?}: connect to the sticky NodePort: {e}\n{}", mode.rules(&node)),
    };
    assert!(first.starts_with("web-5d9f8-"), "{answers:?}");
    assert_eq!(share(&answers, &first), 50, "affinity must stick to {first}: {answers:?}");

    // A service without endpoints is rejected at once (REJECT, not a timeout),
    // from a pod (FORWARD) and from the node itself (OUTPUT).
    for from in [p1.name(), n.as_str()] {
        let err = fetch(from, "10.96.0.20:80", 1).pop().unwrap().unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "from {from}: {err}");
    }
}

/// Run the built `calico` CNI plugin in the node namespace (ADD/DEL one pod).
fn cni(node: &Netns, cmd: &str, cid: &str, pod: &Netns, pod_name: &str, conf: &str) -> String {
    let calico = testbed::target_bin("calico");
    let ipam_dir = testbed::target_bin("calico-ipam").parent().unwrap().display().to_string();
    let mut c = node.nsenter(calico.to_str().unwrap());
    c.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_COMMAND", cmd)
        .env("CNI_CONTAINERID", cid)
        .env("CNI_NETNS", pod.path())
        .env("CNI_IFNAME", "eth0")
        .env("CNI_ARGS", format!("K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod_name}"))
        .env("CNI_PATH", format!("{ipam_dir}:/usr/lib/cni"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    child.stdin.take().unwrap().write_all(conf.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "calico {cmd}: {} {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The same data path with pods wired by the real `calico` plugin (which also
/// writes the pod records the endpoints come from); a CNI DEL removes the pod
/// from the service at the next sync.
#[test]
fn services_reach_pods_added_by_the_calico_plugin() {
    reach_pods_added_by_the_calico_plugin(Mode::Iptables);
}

#[test]
fn services_reach_pods_added_by_the_calico_plugin_nftables() {
    reach_pods_added_by_the_calico_plugin(Mode::Nftables);
}

#[test]
fn services_reach_pods_added_by_the_calico_plugin_nftables_endpoint_maps() {
    reach_pods_added_by_the_calico_plugin(Mode::NftablesMaps);
}

fn reach_pods_added_by_the_calico_plugin(mode: Mode) {
    let node = Netns::new("kqn");
    let n = node.name().to_string();
    let client = Netns::new("kqc");
    let c = client.name().to_string();
    sh(&format!(
        "ip netns exec {n} sh -c 'echo 1 > /proc/sys/net/ipv4/ip_forward' && \
         ip -n {n} link add ext0 type veth peer name eth0 netns {c} && \
         ip -n {n} addr add {NODE_IP}/24 dev ext0 && ip -n {n} link set ext0 up && \
         ip -n {c} addr add 192.168.77.2/24 dev eth0 && ip -n {c} link set eth0 up && \
         ip -n {c} route add default via {NODE_IP} && ip -n {n} route add default via 192.168.77.2"
    ));
    let tmp = tempfile::tempdir().unwrap();
    let store_dir = tmp.path().join("store");
    let conf = serde_json::json!({
        "cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "calico",
        "datastore_type": "file", "datastore_path": store_dir, "nodename": NODE,
        "log_file_path": tmp.path().join("cni.log"), "mtu": 1450,
        "ipam": {"type": "calico-ipam", "assign_ipv4": "true", "ipv4_pools": ["10.244.0.0/24"]}
    })
    .to_string();
    let (pa, pb) = (Netns::new("kqa"), Netns::new("kqb"));
    let (na, nb) = ("web-5d9f8-aaaaa", "web-5d9f8-bbbbb");
    let mut ips = Vec::new();
    for (cid, pod, name) in [("ca", &pa, na), ("cb", &pb, nb)] {
        let res: serde_json::Value = serde_json::from_str(&cni(&node, "ADD", cid, pod, name, &conf)).unwrap();
        ips.push(res["ips"][0]["address"].as_str().unwrap().trim_end_matches("/32").to_string());
    }
    let _sa = Server::start(pa.name(), na, 80);
    let _sb = Server::start(pb.name(), nb, 80);

    let manifests = tmp.path().join("m");
    std::fs::create_dir(&manifests).unwrap();
    std::fs::write(
        manifests.join("web.yaml"),
        MANIFESTS.split("---\napiVersion: v1\nkind: Service\nmetadata: {name: empty}").next().unwrap(),
    )
    .unwrap();
    sync(mode, &node, &manifests, &store_dir);
    let rules = mode.rules(&node);
    for ip in &ips {
        assert!(rules.contains(&mode.endpoint_marker("web", &format!("{ip}:80"))), "{rules}");
    }

    let answers = fetch(&c, &format!("{NODE_IP}:30080"), 200);
    let (a, b) = (share(&answers, na), share(&answers, nb));
    assert_eq!(a + b, 200, "{answers:?}");
    assert!(a > 0 && b > 0, "both pods must serve: {a}/{b}");
    // Pod to service: when pod b answers, it sees pod a's own address.
    let from_a = fetch(pa.name(), "10.96.0.10:8080", 40);
    let seen_by_b: Vec<&str> = from_a
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .filter_map(|s| s.strip_prefix(&format!("{nb} ")))
        .collect();
    assert!(!seen_by_b.is_empty(), "{from_a:?}");
    assert!(seen_by_b.iter().all(|ip| *ip == ips[0]), "{seen_by_b:?} vs {}", ips[0]);

    // The CNI deletes pod b: its record goes, the next sync drops its endpoint.
    cni(&node, "DEL", "cb", &pb, nb, &conf);
    sync(mode, &node, &manifests, &store_dir);
    let answers = fetch(&c, &format!("{NODE_IP}:30080"), 50);
    assert_eq!(share(&answers, na), 50, "{answers:?}");
    cni(&node, "DEL", "ca", &pa, na, &conf);
}

const NODE_IP6: &str = "fd00:77::1";

const DUAL_STACK_MANIFESTS: &str = "\
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  template:
    metadata: {labels: {app: web}}
    spec: {containers: [{name: web, ports: [{name: http, containerPort: 80}]}]}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  type: NodePort
  ipFamilyPolicy: RequireDualStack
  clusterIPs: [10.96.0.10, 'fd00:96::10']
  selector: {app: web}
  ports: [{port: 8080, targetPort: http, nodePort: 30080}]
---
apiVersion: v1
kind: Service
metadata: {name: web6}
spec:
  ipFamilies: [IPv6]
  selector: {app: web}
  ports: [{port: 8081, targetPort: http}]
---
apiVersion: v1
kind: Service
metadata: {name: empty6}
spec:
  clusterIP: 'fd00:96::20'
  selector: {app: nothing}
  ports: [{port: 80}]
";

/// IPv6 and dual-stack services over real packets, pods wired by the real
/// `calico` plugin with an IPv4 and an IPv6 address each (their pod records
/// give each family's endpoint): IPv6 ClusterIP from a pod and from the
/// node, IPv6 NodePort from a client, a dual-stack service answering on
/// both families, an IPv6 service without endpoints rejected. An IPv6-only
/// service (`web6`, ClusterIP allocated from the IPv6 range) too.
#[test]
fn dual_stack_services_carry_real_packets() {
    dual_stack_packets(Mode::Iptables);
}

#[test]
fn dual_stack_services_carry_real_packets_nftables() {
    dual_stack_packets(Mode::Nftables);
}

#[test]
fn dual_stack_services_carry_real_packets_nftables_endpoint_maps() {
    dual_stack_packets(Mode::NftablesMaps);
}

fn dual_stack_packets(mode: Mode) {
    let node = Netns::new("kvn");
    let n = node.name().to_string();
    let client = Netns::new("kvc");
    let c = client.name().to_string();
    sh(&format!(
        "ip netns exec {n} sh -c 'echo 1 > /proc/sys/net/ipv4/ip_forward; \
           echo 1 > /proc/sys/net/ipv6/conf/all/forwarding' && \
         ip -n {n} link add ext0 type veth peer name eth0 netns {c} && \
         ip -n {n} addr add {NODE_IP}/24 dev ext0 && ip -n {n} addr add {NODE_IP6}/64 dev ext0 nodad && \
         ip -n {n} link set ext0 up && ip -n {n} link set lo up && \
         ip -n {c} addr add 192.168.77.2/24 dev eth0 && ip -n {c} addr add fd00:77::2/64 dev eth0 nodad && \
         ip -n {c} link set eth0 up && \
         ip -n {c} route add default via {NODE_IP} && ip -n {c} -6 route add default via {NODE_IP6} && \
         ip -n {n} route add default via 192.168.77.2 && ip -n {n} -6 route add default via fd00:77::2"
    ));
    let tmp = tempfile::tempdir().unwrap();
    let store_dir = tmp.path().join("store");
    let conf = serde_json::json!({
        "cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "calico",
        "datastore_type": "file", "datastore_path": store_dir, "nodename": NODE,
        "log_file_path": tmp.path().join("cni.log"), "mtu": 1450,
        "ipam": {"type": "calico-ipam", "assign_ipv4": "true", "ipv4_pools": ["10.244.0.0/24"],
                 "assign_ipv6": "true", "ipv6_pools": ["fd00:244::/120"]}
    })
    .to_string();
    let (pa, pb) = (Netns::new("kva"), Netns::new("kvb"));
    let (na, nb) = ("web-5d9f8-aaaaa", "web-5d9f8-bbbbb");
    let mut v6 = Vec::new();
    for (cid, pod, name) in [("va", &pa, na), ("vb", &pb, nb)] {
        let res: serde_json::Value = serde_json::from_str(&cni(&node, "ADD", cid, pod, name, &conf)).unwrap();
        let ips: Vec<String> = res["ips"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["address"].as_str().unwrap().to_string())
            .collect();
        let ip6 = ips.iter().find(|a| a.contains(':')).unwrap_or_else(|| panic!("no IPv6 address: {res}"));
        v6.push(ip6.trim_end_matches("/128").to_string());
    }
    // One listener per pod for both families.
    let _sa = Server::start_on(pa.name(), na, "::", 80);
    let _sb = Server::start_on(pb.name(), nb, "::", 80);

    let manifests = tmp.path().join("m");
    std::fs::create_dir(&manifests).unwrap();
    std::fs::write(manifests.join("web.yaml"), DUAL_STACK_MANIFESTS).unwrap();
    let flags = [
        "--node-ip",
        "192.168.77.1,fd00:77::1",
        "--cluster-cidr",
        "10.244.0.0/24,fd00:244::/120",
        "--service-cluster-ip-range",
        "10.96.0.0/12,fd00:96::/108",
    ];
    let stderr = sync_with(mode, &node, &manifests, &store_dir, &flags);
    let rules6 = match mode {
        Mode::Iptables => node.exec(&["ip6tables-save", "-t", "nat"]),
        Mode::Nftables | Mode::NftablesMaps => node.exec(&["nft", "list", "table", "ip6", "kube-proxy"]),
    };
    for ip in &v6 {
        let ep = format!("[{ip}]:80");
        assert!(rules6.contains(&mode.endpoint_marker("web", &ep)), "{ep} missing:\n{stderr}\n{rules6}");
    }
    // The IPv4 rules are there as well, without IPv6 addresses in them.
    let rules4 = mode.rules(&node);
    assert!(rules4.contains("10.96.0.10") && !rules4.contains("fd00:"), "{rules4}");
    let web6_ip = stderr
        .lines()
        .find_map(|l| l.strip_prefix("note: Service default/web6: no clusterIP in the manifest, allocated "))
        .unwrap_or_else(|| panic!("web6 got no allocated IPv6 ClusterIP: {stderr}"))
        .to_string();

    let is_web = |a: &str| a.starts_with("web-5d9f8-");
    // IPv6 ClusterIP from a pod (keeping its own address) and from the node.
    for from in [pa.name(), n.as_str()] {
        let a = fetch1(from, "[fd00:96::10]:8080");
        assert!(is_web(&a), "from {from}: {a}");
        let a = fetch1(from, &format!("[{web6_ip}]:8081"));
        assert!(is_web(&a), "from {from}: {a}");
    }
    let answers = fetch(pa.name(), "[fd00:96::10]:8080", 40);
    let seen_by_b: Vec<&str> = answers
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .filter_map(|s| s.strip_prefix(&format!("{nb} ")))
        .collect();
    assert!(!seen_by_b.is_empty(), "{answers:?}");
    assert!(seen_by_b.iter().all(|ip| *ip == v6[0]), "{seen_by_b:?} vs {}", v6[0]);

    // The dual-stack service answers on both families; the IPv6 NodePort
    // from the client reaches both pods, masqueraded to the node's address.
    let a = fetch1(pa.name(), "10.96.0.10:8080");
    assert!(is_web(&a), "{a}");
    let a = fetch1(&c, &format!("{NODE_IP}:30080"));
    assert!(is_web(&a), "{a}");
    let answers = fetch(&c, &format!("[{NODE_IP6}]:30080"), 100);
    let (a, b) = (share(&answers, na), share(&answers, nb));
    assert_eq!(a + b, 100, "{mode:?}: {answers:?}\n{rules6}");
    assert!(a > 0 && b > 0, "both pods must serve: {a}/{b}");
    for r in answers.iter().flatten() {
        assert!(r.ends_with(&format!(" {NODE_IP6}")), "external IPv6 traffic must be masqueraded: {r}");
    }

    // An IPv6 service without endpoints is rejected at once, from a pod and from the node.
    for from in [pa.name(), n.as_str()] {
        let err = fetch(from, "[fd00:96::20]:80", 1).pop().unwrap().unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "from {from}: {err}");
    }
    cni(&node, "DEL", "vb", &pb, nb, &conf);
    cni(&node, "DEL", "va", &pa, na, &conf);
}
