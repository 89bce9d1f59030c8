//! The natOutgoing check on the deployed scenario: with the pool's
//! `natOutgoing` on, a pod's request to the client arrives from its node's
//! address; with it off, from the pod's own; pod-to-pod and
//! pod-to-Service requests keep the pod's address either way (each pod's
//! nginx answers `/peer` with the address it sees and its own). A request
//! through the Service that lands on the asking pod itself (hairpin) is
//! masqueraded by the service rules, as kube-proxy does, whatever
//! natOutgoing says: the Service check looks at answers from the other pod.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use calico_store::model::{self, IpPool};

use super::host::{http_get, InNetns};
use super::{wait_until, Lab, LabError};

/// The client's port for the peer-echo server (the client's namespace is
/// the lab's own: no other test can hold it).
const ECHO_PORT: u16 = 8099;
const HTTP_TIMEOUT: Duration = Duration::from_secs(3);

/// A minimal HTTP server in the client's namespace answering every request
/// with the address it came from. Stopped on drop.
struct PeerEcho {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PeerEcho {
    fn start(lab: &Lab, host: &str, addr: SocketAddr) -> Result<PeerEcho, LabError> {
        let netns = netlink_util::Netns::open(lab.ns(host)?.path())?;
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let _ = netns.run_thread(|| {
                let l = match TcpListener::bind(addr).and_then(|l| l.set_nonblocking(true).map(|()| l)) {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return Ok(());
                    }
                };
                let _ = ready_tx.send(Ok(()));
                while !s.load(Ordering::Relaxed) {
                    match l.accept() {
                        Ok((mut c, peer)) => {
                            let _ = c.set_nonblocking(false);
                            let _ = c.set_read_timeout(Some(HTTP_TIMEOUT));
                            let mut buf = [0u8; 1024];
                            let _ = c.read(&mut buf);
                            let _ = write!(
                                c,
                                "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n{}\n",
                                peer.ip()
                            );
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
                Ok(())
            });
        });
        match ready_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => Ok(PeerEcho { stop, thread: Some(thread) }),
            Ok(Err(e)) => Err(LabError::Check(format!("peer-echo server on {addr}: {e}"))),
            Err(_) => Err(LabError::Timeout(format!("peer-echo server on {addr}"))),
        }
    }
}

impl Drop for PeerEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Lab {
    /// Set `natOutgoing` on every pool of the lab's datastore.
    pub fn set_nat_outgoing(&self, on: bool) -> Result<(), LabError> {
        let host = self.cfg.nodes[0].name.clone();
        self.with_store(&host, move |s| {
            for kv in s.list(&model::pools_prefix())? {
                let mut pool: IpPool = model::decode(&kv)?;
                if pool.spec.nat_outgoing != on {
                    pool.spec.nat_outgoing = on;
                    s.update(&kv.key, &model::encode(&pool), kv.revision)?;
                }
            }
            Ok(())
        })
    }

    /// The address `to` sees for an HTTP GET `path` from `pod`'s namespace
    /// (and the answering server's own address, when it says).
    fn seen_by(
        &self,
        pod: &super::Pod,
        to: SocketAddr,
        path: &str,
    ) -> Result<(Ipv4Addr, Option<Ipv4Addr>), LabError> {
        let body = pod.ns().run(|| http_get(to, path, HTTP_TIMEOUT))?;
        let mut words = body.split_whitespace().map(|w| w.parse::<Ipv4Addr>());
        match (words.next(), words.next()) {
            (Some(Ok(seen)), None) => Ok((seen, None)),
            (Some(Ok(seen)), Some(Ok(server))) => Ok((seen, Some(server))),
            _ => Err(LabError::Check(format!("{to}{path} answered {body:?}, not an address"))),
        }
    }

    /// The natOutgoing check (module doc), natOutgoing on then off; needs
    /// the scenario deployed. Leaves the pools' natOutgoing off, as seeded.
    pub fn check_nat_outgoing(&self) -> Result<Vec<String>, LabError> {
        let sc = self.scenario()?;
        let cluster_ip = *sc
            .cluster_ips
            .get("nginx-demo-1")
            .ok_or_else(|| LabError::Check("no clusterIP for nginx-demo-1".into()))?;
        let client = SocketAddr::new(IpAddr::V4(self.cfg.client.ip.ip()), ECHO_PORT);
        let _echo = PeerEcho::start(self, "client", client)?;
        let mut lines = Vec::new();
        for on in [true, false] {
            self.set_nat_outgoing(on)?;
            let state = if on { "on" } else { "off" };
            for p in self.pods() {
                let node_ip = self.cfg.node(&p.node).map(|n| n.ip.ip()).unwrap_or(Ipv4Addr::UNSPECIFIED);
                let want = if on { node_ip } else { p.ip };
                // The agent applies the pool change when its watch fires.
                let mut last = None;
                wait_until(
                    &format!("{} -> client from {want} (natOutgoing {state})", p.name),
                    Duration::from_secs(15),
                    || {
                        let seen = self.seen_by(p, client, "/").ok().map(|(seen, _)| seen);
                        last = seen;
                        (seen == Some(want)).then_some(())
                    },
                )
                .map_err(|e| LabError::Check(format!("{e}; last seen {last:?}")))?;
                lines.push(format!(
                    "natOutgoing {state}: pod {} ({}) -> client {client}: from {want}",
                    p.name, p.ip
                ));
                for other in self.pods().iter().filter(|o| o.name != p.name) {
                    let (seen, _) = self.seen_by(p, SocketAddr::new(IpAddr::V4(other.ip), 80), "/peer")?;
                    if seen != p.ip {
                        return Err(LabError::Check(format!(
                            "natOutgoing {state}: pod {} -> pod {} arrived from {seen}, not {}",
                            p.name, other.name, p.ip
                        )));
                    }
                    lines.push(format!(
                        "natOutgoing {state}: pod {} -> pod {} ({}): from {seen}",
                        p.name, other.name, other.ip
                    ));
                }
                let svc = SocketAddr::new(IpAddr::V4(cluster_ip), 8088);
                // Load-balanced: ask until another pod answers (not a hairpin).
                let mut answer = None;
                for _ in 0..50 {
                    let (seen, server) = self.seen_by(p, svc, "/peer")?;
                    if server.is_some_and(|s| s != p.ip) {
                        answer = Some((seen, server));
                        break;
                    }
                }
                let Some((seen, server)) = answer else {
                    return Err(LabError::Check(format!(
                        "50 requests to Service {svc} from {} all came back to it",
                        p.name
                    )));
                };
                let server = server.unwrap_or(Ipv4Addr::UNSPECIFIED);
                if seen != p.ip {
                    return Err(LabError::Check(format!(
                        "natOutgoing {state}: pod {} -> Service {cluster_ip} arrived from {seen}, not {}",
                        p.name, p.ip
                    )));
                }
                lines.push(format!(
                    "natOutgoing {state}: pod {} -> Service {cluster_ip}:8088 (answered by {server}): from {seen}",
                    p.name
                ));
            }
        }
        Ok(lines)
    }
}
