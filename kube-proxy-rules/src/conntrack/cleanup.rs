//! What kube-proxy does to the conntrack table after each successful sync
//! (its proxiers' `deleteUDPEndpointConnections` and newly-active-service
//! cleanup, `pkg/proxy/conntrack`), for UDP and SCTP service ports only:
//!
//! * an endpoint that stopped serving a service port (removed, or no longer
//!   serving): the entries sent to the port's ClusterIP, external IPs,
//!   load-balancer IPs (with the service port) or NodePort and DNATed to
//!   that endpoint are deleted, so the client's next packet is balanced
//!   again instead of black-holed until the entry times out;
//! * a service port that had no serving endpoint and has one now: the
//!   entries sent to its addresses and NodePort are deleted (made while
//!   there was nowhere to send them, they were never DNATed);
//! * nothing else: TCP entries and flows to other addresses are never touched.
//!
//! Both are differences between the last cleaned state ([`Snapshot`]) and
//! the synced one. Unlike kube-proxy, the snapshot is persisted (a small
//! JSON file per family under `--state-dir`), so a restarted proxy cleans
//! only what changed while it was down, not every UDP entry
//! (kubernetes/kubernetes#122740). Without a snapshot (first start, file
//! unreadable), it reconciles instead, as kube-proxy ≥1.31 does on every
//! sync: entries sent to a service port and not DNATed to one of its
//! serving endpoints are deleted; service ports without endpoints are left
//! alone. A cleanup that fails keeps the old snapshot: the next sync retries it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::flows::{ip_proto, needs_cleanup, Flow, FlowFilter};
use super::netlink::{ConntrackError, ConntrackSocket};
use crate::family::IpFamily;
use crate::model::ProxyState;

/// What the cleanup remembers of one UDP/SCTP service port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServicePortFlows {
    /// IP protocol number (17 UDP, 132 SCTP).
    pub proto: u8,
    /// ClusterIP, external IPs and load-balancer IPs, each served on `port`.
    pub ips: Vec<IpAddr>,
    pub port: u16,
    /// 0: none.
    pub node_port: u16,
    /// The serving endpoints (ready or not: kube-proxy ignores traffic
    /// policies, topology and terminating state here, so that a UDP flow
    /// lives as long as a TCP one would).
    pub endpoints: BTreeSet<SocketAddr>,
}

/// The UDP/SCTP service ports of one family's synced state, by
/// `ns/name:port/proto`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub services: BTreeMap<String, ServicePortFlows>,
}

impl Snapshot {
    pub fn of(state: &ProxyState) -> Snapshot {
        let mut services = BTreeMap::new();
        for sp in state.services.iter().filter(|sp| needs_cleanup(sp.protocol)) {
            let mut ips = vec![sp.cluster_ip];
            ips.extend(sp.external_ips.iter().chain(&sp.load_balancer_vips).copied());
            ips.sort();
            ips.dedup();
            let endpoints = state
                .endpoints_of(sp)
                .iter()
                .filter(|e| e.serving && sp.family().has(e.ip))
                .map(|e| SocketAddr::new(e.ip, e.port))
                .collect();
            services.insert(
                format!("{}/{}", sp.name_string, sp.protocol.as_str()),
                ServicePortFlows {
                    proto: ip_proto(sp.protocol),
                    ips,
                    port: sp.port,
                    node_port: sp.node_port,
                    endpoints,
                },
            );
        }
        Snapshot { services }
    }

    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }
}

/// The filters of the entries that became stale from `before` to `now`
/// (see the module docs); `before` None: reconcile against `now`.
pub fn stale_filters(before: Option<&Snapshot>, now: &Snapshot) -> Vec<FlowFilter> {
    let mut out = BTreeSet::new();
    let Some(before) = before else {
        for s in now.services.values().filter(|s| !s.endpoints.is_empty()) {
            for ip in &s.ips {
                out.insert(FlowFilter::ServiceNotToEndpoints {
                    proto: s.proto,
                    service: SocketAddr::new(*ip, s.port),
                    endpoints: s.endpoints.clone(),
                });
            }
            if s.node_port != 0 {
                out.insert(FlowFilter::NodePortNotToEndpoints {
                    proto: s.proto,
                    node_port: s.node_port,
                    endpoints: s.endpoints.clone(),
                });
            }
        }
        return out.into_iter().collect();
    };
    let empty = BTreeSet::new();
    for (key, old) in &before.services {
        let still = now.services.get(key).map(|s| &s.endpoints).unwrap_or(&empty);
        for ep in old.endpoints.difference(still) {
            for ip in &old.ips {
                out.insert(FlowFilter::ServiceToEndpoint {
                    proto: old.proto,
                    service: SocketAddr::new(*ip, old.port),
                    endpoint: *ep,
                });
            }
            if old.node_port != 0 {
                out.insert(FlowFilter::NodePortToEndpoint {
                    proto: old.proto,
                    node_port: old.node_port,
                    endpoint: *ep,
                });
            }
        }
    }
    for (key, s) in &now.services {
        let had = before.services.get(key).is_some_and(|b| !b.endpoints.is_empty());
        if had || s.endpoints.is_empty() {
            continue;
        }
        for ip in &s.ips {
            out.insert(FlowFilter::ToService { proto: s.proto, service: SocketAddr::new(*ip, s.port) });
        }
        if s.node_port != 0 {
            out.insert(FlowFilter::ToNodePort { proto: s.proto, node_port: s.node_port });
        }
    }
    out.into_iter().collect()
}

/// The filters indexed by what a flow is looked up with: its original
/// destination, or its destination port (NodePorts).
struct Index<'a> {
    by_service: HashMap<(u8, SocketAddr), Vec<&'a FlowFilter>>,
    by_node_port: HashMap<(u8, u16), Vec<&'a FlowFilter>>,
}

impl<'a> Index<'a> {
    fn new(filters: &'a [FlowFilter]) -> Self {
        let mut ix = Index { by_service: HashMap::new(), by_node_port: HashMap::new() };
        for f in filters {
            match f {
                FlowFilter::ServiceToEndpoint { proto, service, .. }
                | FlowFilter::ToService { proto, service }
                | FlowFilter::ServiceNotToEndpoints { proto, service, .. } => {
                    ix.by_service.entry((*proto, *service)).or_default().push(f)
                }
                FlowFilter::NodePortToEndpoint { proto, node_port, .. }
                | FlowFilter::ToNodePort { proto, node_port }
                | FlowFilter::NodePortNotToEndpoints { proto, node_port, .. } => {
                    ix.by_node_port.entry((*proto, *node_port)).or_default().push(f)
                }
            }
        }
        ix
    }

    fn stale(&self, flow: &Flow) -> bool {
        let svc = (flow.proto, SocketAddr::new(flow.orig.dst, flow.orig.dport));
        let np = (flow.proto, flow.orig.dport);
        let hit = |fs: Option<&Vec<&FlowFilter>>| fs.is_some_and(|fs| fs.iter().any(|f| f.matches(flow)));
        hit(self.by_service.get(&svc)) || hit(self.by_node_port.get(&np))
    }
}

/// The entries of `flows` that `filters` call stale.
pub fn stale_flows<'a>(flows: &'a [Flow], filters: &[FlowFilter]) -> Vec<&'a Flow> {
    let ix = Index::new(filters);
    flows.iter().filter(|f| ix.stale(f)).collect()
}

/// The kernel's conntrack table, as the cleanup uses it (a trait so the
/// sync loop's tests can record what it would delete).
pub trait FlowTable {
    /// The entries of `family`, of one IP protocol when `proto` is given.
    fn dump(&mut self, family: IpFamily, proto: Option<u8>) -> Result<Vec<Flow>, ConntrackError>;
    /// Ok(false): the entry was already gone.
    fn delete(&mut self, family: IpFamily, flow: &Flow) -> Result<bool, ConntrackError>;
}

impl FlowTable for ConntrackSocket {
    fn dump(&mut self, family: IpFamily, proto: Option<u8>) -> Result<Vec<Flow>, ConntrackError> {
        ConntrackSocket::dump_proto(self, family, proto)
    }
    fn delete(&mut self, family: IpFamily, flow: &Flow) -> Result<bool, ConntrackError> {
        ConntrackSocket::delete(self, family, flow)
    }
}

/// A cleanup that did not finish.
#[derive(Debug, thiserror::Error)]
pub enum CleanupError {
    #[error("cleaning stale conntrack entries: {0}")]
    Conntrack(#[from] ConntrackError),
}

/// What one cleanup did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CleanupReport {
    /// Filters of stale entries (0: the table was not even read).
    pub filters: usize,
    /// Entries deleted.
    pub deleted: usize,
    /// Stale entries that were gone before they could be deleted.
    pub vanished: usize,
    /// This cleanup reconciled (no remembered state).
    pub reconciled: bool,
}

/// The stale-flow cleanup of one family's proxier: the table, the last
/// cleaned state and where it is persisted.
pub struct ConntrackCleanup {
    family: IpFamily,
    /// The namespace the socket is opened in (None: this process's).
    netns: Option<String>,
    /// Opened on first need: a sync that changed no UDP service never
    /// opens a socket. Dropped after an error (the next cleanup reopens it).
    table: Option<Box<dyn FlowTable + Send>>,
    /// The table is a socket this cleanup opens (not one it was given).
    opens_socket: bool,
    /// The state last cleaned for; None: unknown (reconcile).
    baseline: Option<Snapshot>,
    /// Where the baseline is persisted (None: nowhere), and whether the
    /// file holds it.
    state_file: Option<PathBuf>,
    file_current: bool,
    /// The file exists (read at start, or written since).
    file_exists: bool,
    /// The last persisting failure, if the last attempt failed.
    persist_failing: Option<std::io::ErrorKind>,
}

/// `<dir>/conntrack-ipv4.json` or `-ipv6.json`.
pub fn state_file(dir: &Path, family: IpFamily) -> PathBuf {
    dir.join(format!("conntrack-{}.json", family.name().to_ascii_lowercase()))
}

impl ConntrackCleanup {
    /// The cleanup of `family` in the named network namespace (None: this
    /// process's), remembering its state under `state_dir` (None: in memory
    /// only). A persisted state that cannot be read is reported and
    /// replaced by a reconcile.
    pub fn new(family: IpFamily, netns: Option<String>, state_dir: Option<&Path>) -> Self {
        Self::with(family, netns, None, state_dir.map(|d| state_file(d, family)))
    }

    /// The cleanup over a given table (tests).
    pub fn with_table(
        family: IpFamily,
        table: Box<dyn FlowTable + Send>,
        state_file: Option<PathBuf>,
    ) -> Self {
        Self::with(family, None, Some(table), state_file)
    }

    fn with(
        family: IpFamily,
        netns: Option<String>,
        table: Option<Box<dyn FlowTable + Send>>,
        state_file: Option<PathBuf>,
    ) -> Self {
        let (mut baseline, mut file_exists) = (None, false);
        if let Some(path) = &state_file {
            match std::fs::read(path) {
                Ok(bytes) => {
                    // Replaced (or removed) by the first cleanup, even when unreadable.
                    file_exists = true;
                    match serde_json::from_slice::<Snapshot>(&bytes) {
                        Ok(s) => baseline = Some(s),
                        Err(e) => log::warn!(
                            "{}: not a conntrack state ({e}): reconciling the conntrack table instead",
                            path.display()
                        ),
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => log::warn!("{}: {e}: reconciling the conntrack table instead", path.display()),
            }
        }
        let file_current = baseline.is_some();
        let opens_socket = table.is_none();
        ConntrackCleanup {
            family,
            netns,
            table,
            opens_socket,
            baseline,
            state_file,
            file_current,
            file_exists,
            persist_failing: None,
        }
    }

    /// The state the next cleanup compares with (None: it reconciles).
    pub fn baseline(&self) -> Option<&Snapshot> {
        self.baseline.as_ref()
    }

    /// Delete the entries `filters` call stale; (deleted, vanished).
    fn delete_stale(&mut self, filters: &[FlowFilter]) -> Result<(usize, usize), ConntrackError> {
        let family = self.family;
        let table = match &mut self.table {
            Some(t) => t,
            slot @ None => slot.insert(Box::new(ConntrackSocket::open_in(self.netns.as_deref())?)),
        };
        // One protocol among the filters (the usual case: UDP only): the
        // kernel lists only its entries.
        let protos: BTreeSet<u8> = filters.iter().map(FlowFilter::proto).collect();
        let proto = protos.first().copied().filter(|_| protos.len() == 1);
        let result = (|| {
            let flows = table.dump(family, proto)?;
            let (mut deleted, mut vanished) = (0, 0);
            for flow in stale_flows(&flows, filters) {
                if table.delete(family, flow)? {
                    deleted += 1;
                } else {
                    vanished += 1;
                }
            }
            Ok((deleted, vanished))
        })();
        if result.is_err() && self.opens_socket {
            self.table = None; // our socket: reopened next time, with nothing left unread
        }
        result
    }

    /// After a successful sync of `state`: delete what became stale, then
    /// remember `state` (in memory, and in the state file when it changed).
    pub fn after_sync(&mut self, state: &ProxyState) -> Result<CleanupReport, CleanupError> {
        let now = Snapshot::of(state);
        let mut report = CleanupReport { reconciled: self.baseline.is_none(), ..Default::default() };
        if self.baseline.as_ref() != Some(&now) {
            let filters = stale_filters(self.baseline.as_ref(), &now);
            report.filters = filters.len();
            if !filters.is_empty() {
                (report.deleted, report.vanished) = self.delete_stale(&filters)?;
            }
            self.file_current = false;
            self.baseline = Some(now);
        }
        self.persist();
        Ok(report)
    }

    /// Write the baseline when the file does not hold it (atomically: a
    /// temporary file renamed over it). An empty state removes the file (a
    /// later start reconciles, which cleans nothing without UDP services).
    /// Failures are logged: the cleanup still works from memory.
    fn persist(&mut self) {
        let (Some(path), Some(baseline)) = (&self.state_file, &self.baseline) else { return };
        if self.file_current {
            return;
        }
        // No UDP service and no file of ours: nothing to write, nothing to
        // remove (a node without UDP services never touches --state-dir).
        if baseline.is_empty() && !self.file_exists {
            self.file_current = true;
            return;
        }
        let result = if baseline.is_empty() {
            match std::fs::remove_file(path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            }
        } else {
            write_atomically(path, baseline)
        };
        match result {
            Ok(()) => {
                self.file_current = true;
                self.file_exists = !baseline.is_empty();
                self.persist_failing = None;
            }
            // Logged once per kind of failure, not on every sync.
            Err(e) if self.persist_failing == Some(e.kind()) => {}
            Err(e) => {
                log::error!(
                    "remembering the conntrack state in {}: {e} (a restart will clean from an older state)",
                    path.display()
                );
                self.persist_failing = Some(e.kind());
            }
        }
    }
}

fn write_atomically(path: &Path, snapshot: &Snapshot) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("json.tmp");
    let bytes = serde_json::to_vec_pretty(snapshot).map_err(std::io::Error::other)?;
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conntrack::flows::{Tuple, IPPROTO_TCP, IPPROTO_UDP};
    use crate::k8s::Objects;
    use std::sync::{Arc, Mutex};

    /// A table in memory: what it holds, what was deleted, how often it was read.
    #[derive(Default)]
    struct Held {
        flows: Vec<Flow>,
        deleted: Vec<Flow>,
        dumps: usize,
    }

    #[derive(Clone, Default)]
    struct Fake(Arc<Mutex<Held>>);

    impl FlowTable for Fake {
        fn dump(&mut self, _: IpFamily, proto: Option<u8>) -> Result<Vec<Flow>, ConntrackError> {
            let mut g = self.0.lock().unwrap();
            g.dumps += 1;
            Ok(g.flows.iter().filter(|f| proto.is_none_or(|p| f.proto == p)).copied().collect())
        }
        fn delete(&mut self, _: IpFamily, flow: &Flow) -> Result<bool, ConntrackError> {
            let mut g = self.0.lock().unwrap();
            let before = g.flows.len();
            g.flows.retain(|f| f != flow);
            let gone = g.flows.len() < before;
            if gone {
                g.deleted.push(*flow);
            }
            Ok(gone)
        }
    }

    impl Fake {
        fn add(&self, proto: u8, client: &str, orig_dst: &str, reply_src: &str) {
            let (c, d, r): (SocketAddr, SocketAddr, SocketAddr) =
                (client.parse().unwrap(), orig_dst.parse().unwrap(), reply_src.parse().unwrap());
            self.0.lock().unwrap().flows.push(Flow {
                proto,
                orig: Tuple { src: c.ip(), dst: d.ip(), sport: c.port(), dport: d.port() },
                reply: Tuple { src: r.ip(), dst: c.ip(), sport: r.port(), dport: c.port() },
                zone: 0,
            });
        }
        /// (orig dst, reply src) of the deleted entries, taken.
        fn deleted(&self) -> Vec<(String, String)> {
            let mut g = self.0.lock().unwrap();
            let d = std::mem::take(&mut g.deleted);
            d.iter()
                .map(|f| {
                    (
                        SocketAddr::new(f.orig.dst, f.orig.dport).to_string(),
                        SocketAddr::new(f.reply.src, f.reply.sport).to_string(),
                    )
                })
                .collect()
        }
        fn dumps(&self) -> usize {
            self.0.lock().unwrap().dumps
        }
    }

    /// A UDP NodePort service with an externalIP (`dns`), a TCP one on the
    /// same addresses (`web`), and the endpoints given (`ip` list).
    fn state(dns_eps: &[&str], web_eps: &[&str]) -> ProxyState {
        let eps =
            |v: &[&str]| v.iter().map(|ip| format!("{{addresses: [{ip}]}}")).collect::<Vec<_>>().join(", ");
        let yaml = format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: dns, namespace: ns}}\n\
             spec: {{type: NodePort, clusterIP: 10.96.0.10, externalIPs: [192.0.2.10], ports: [{{port: 53, protocol: UDP, nodePort: 30053}}]}}\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: dns-1, namespace: ns, labels: {{kubernetes.io/service-name: dns}}}}\n\
             addressType: IPv4\nports: [{{port: 5353, protocol: UDP}}]\nendpoints: [{}]\n---\n\
             apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: ns}}\n\
             spec: {{clusterIP: 10.96.0.20, ports: [{{port: 53, protocol: TCP}}]}}\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: web-1, namespace: ns, labels: {{kubernetes.io/service-name: web}}}}\n\
             addressType: IPv4\nports: [{{port: 5353, protocol: TCP}}]\nendpoints: [{}]\n",
            eps(dns_eps),
            eps(web_eps)
        );
        let mut objs = Objects::default();
        let mut errors = Vec::new();
        objs.add_text(&yaml, "t.yaml", &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        let loaded = crate::inputs::build_state(&objs, &[], &["10.96.0.0/12".parse().unwrap()]);
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        loaded.state
    }

    #[test]
    fn a_removed_endpoint_loses_its_flows_on_every_service_address_and_nothing_else_does() {
        let t = Fake::default();
        let mut c = ConntrackCleanup::with_table(IpFamily::V4, Box::new(t.clone()), None);
        c.after_sync(&state(&["10.244.0.11", "10.244.0.12"], &["10.244.0.11"])).unwrap();
        t.deleted(); // the first cleanup reconciles (nothing here is stale)
        t.add(IPPROTO_UDP, "10.0.0.5:40000", "10.96.0.10:53", "10.244.0.11:5353"); // ClusterIP
        t.add(IPPROTO_UDP, "10.0.0.5:40001", "192.0.2.10:53", "10.244.0.11:5353"); // externalIP
        t.add(IPPROTO_UDP, "198.51.100.7:40002", "192.168.77.1:30053", "10.244.0.11:5353"); // NodePort
        t.add(IPPROTO_UDP, "10.0.0.5:40003", "10.96.0.10:53", "10.244.0.12:5353"); // the other endpoint
        t.add(IPPROTO_TCP, "10.0.0.5:40004", "10.96.0.20:53", "10.244.0.11:5353"); // TCP to the same pod
        t.add(IPPROTO_UDP, "10.0.0.5:40005", "10.1.1.1:53", "10.1.1.1:53"); // unrelated UDP
        let r = c.after_sync(&state(&["10.244.0.12"], &[])).unwrap();
        let mut d = t.deleted();
        d.sort();
        assert_eq!(
            d,
            [
                ("10.96.0.10:53".to_string(), "10.244.0.11:5353".to_string()),
                ("192.0.2.10:53".into(), "10.244.0.11:5353".into()),
                ("192.168.77.1:30053".into(), "10.244.0.11:5353".into()),
            ]
        );
        assert_eq!((r.deleted, r.reconciled), (3, false));
        // Nothing changed for UDP: the table is not even read.
        let dumps = t.dumps();
        let r = c.after_sync(&state(&["10.244.0.12"], &["10.244.0.13"])).unwrap();
        assert_eq!((r.filters, t.dumps()), (0, dumps));
    }

    #[test]
    fn a_first_endpoint_clears_what_was_sent_while_there_was_none() {
        let t = Fake::default();
        let mut c = ConntrackCleanup::with_table(IpFamily::V4, Box::new(t.clone()), None);
        c.after_sync(&state(&[], &[])).unwrap();
        // Sent while the service had no endpoint: not DNATed.
        t.add(IPPROTO_UDP, "10.0.0.5:40000", "10.96.0.10:53", "10.96.0.10:53");
        t.add(IPPROTO_UDP, "198.51.100.7:40002", "192.168.77.1:30053", "192.168.77.1:30053");
        t.add(IPPROTO_TCP, "10.0.0.5:40004", "10.96.0.10:53", "10.96.0.10:53");
        t.add(IPPROTO_UDP, "10.0.0.5:40005", "10.96.0.10:54", "10.96.0.10:54"); // another port
        let r = c.after_sync(&state(&["10.244.0.11"], &[])).unwrap();
        let mut d = t.deleted();
        d.sort();
        assert_eq!(
            d,
            [
                ("10.96.0.10:53".to_string(), "10.96.0.10:53".to_string()),
                ("192.168.77.1:30053".into(), "192.168.77.1:30053".into())
            ]
        );
        assert_eq!(r.deleted, 2);
        // A second endpoint: the first one's flows are fine.
        t.add(IPPROTO_UDP, "10.0.0.5:40000", "10.96.0.10:53", "10.244.0.11:5353");
        c.after_sync(&state(&["10.244.0.11", "10.244.0.12"], &[])).unwrap();
        assert!(t.deleted().is_empty());
    }

    #[test]
    fn without_a_remembered_state_it_reconciles_and_with_one_it_cleans_only_what_changed() {
        let dir = tempfile::tempdir().unwrap();
        let t = Fake::default();
        // A first start: nothing remembered. Entries to the service not via a
        // serving endpoint go; the serving endpoint's and TCP stay.
        t.add(IPPROTO_UDP, "10.0.0.5:40000", "10.96.0.10:53", "10.244.0.99:5353");
        t.add(IPPROTO_UDP, "10.0.0.5:40001", "10.96.0.10:53", "10.244.0.11:5353");
        t.add(IPPROTO_TCP, "10.0.0.5:40002", "10.96.0.20:53", "10.244.0.99:5353");
        let path = state_file(dir.path(), IpFamily::V4);
        let mut c = ConntrackCleanup::with_table(IpFamily::V4, Box::new(t.clone()), Some(path.clone()));
        assert!(c.baseline().is_none());
        let r = c.after_sync(&state(&["10.244.0.11", "10.244.0.12"], &["10.244.0.99"])).unwrap();
        assert!(r.reconciled);
        assert_eq!(t.deleted(), [("10.96.0.10:53".to_string(), "10.244.0.99:5353".to_string())]);
        assert!(path.exists());
        drop(c);

        // A restart: the state is read back; what changed while it was down
        // (10.244.0.12 removed) is cleaned, the rest is not touched, though
        // a reconcile would have deleted the entry via 10.244.0.98.
        t.add(IPPROTO_UDP, "10.0.0.5:40003", "10.96.0.10:53", "10.244.0.12:5353");
        t.add(IPPROTO_UDP, "10.0.0.5:40004", "10.96.0.10:53", "10.244.0.98:5353");
        let mut c = ConntrackCleanup::with_table(IpFamily::V4, Box::new(t.clone()), Some(path.clone()));
        assert!(c.baseline().is_some());
        let r = c.after_sync(&state(&["10.244.0.11"], &["10.244.0.99"])).unwrap();
        assert!(!r.reconciled);
        assert_eq!(t.deleted(), [("10.96.0.10:53".to_string(), "10.244.0.12:5353".to_string())]);

        // No UDP service left: the file goes (a later start has nothing to clean).
        c.after_sync(&state(&[], &[])).unwrap();
        let mut c2 = ConntrackCleanup::with_table(IpFamily::V4, Box::new(t.clone()), Some(path.clone()));
        assert!(c2.baseline().is_some(), "the service with no endpoint is still remembered");
        c2.after_sync(&ProxyState::default()).unwrap();
        assert!(!path.exists());

        // A corrupt file: reconcile, and the file is replaced (here: removed,
        // there is no UDP service).
        std::fs::write(&path, b"{not json").unwrap();
        let mut c3 = ConntrackCleanup::with_table(IpFamily::V4, Box::new(t.clone()), Some(path.clone()));
        assert!(c3.baseline().is_none());
        c3.after_sync(&ProxyState::default()).unwrap();
        assert!(!path.exists());
    }

    #[test]
    fn a_node_without_udp_services_never_touches_the_state_dir() {
        let dir = tempfile::tempdir().unwrap();
        let state_dir = dir.path().join("state");
        let mut c = ConntrackCleanup::with_table(
            IpFamily::V4,
            Box::new(Fake::default()),
            Some(state_file(&state_dir, IpFamily::V4)),
        );
        c.after_sync(&ProxyState::default()).unwrap();
        c.after_sync(&ProxyState::default()).unwrap();
        assert!(!state_dir.exists());
        // A state dir that cannot be written: the cleanup still works from memory.
        std::fs::write(&state_dir, b"a file, not a directory").unwrap();
        let t = Fake::default();
        let mut c = ConntrackCleanup::with_table(
            IpFamily::V4,
            Box::new(t.clone()),
            Some(state_file(&state_dir, IpFamily::V4)),
        );
        c.after_sync(&state(&["10.244.0.11"], &[])).unwrap();
        t.add(IPPROTO_UDP, "10.0.0.5:40000", "10.96.0.10:53", "10.244.0.11:5353");
        assert_eq!(c.after_sync(&state(&["10.244.0.12"], &[])).unwrap().deleted, 1);
    }

    #[test]
    fn a_failed_cleanup_is_retried_by_the_next_sync() {
        /// A table whose dumps fail while `broken` is set.
        struct Flaky(Fake, Arc<Mutex<bool>>);
        impl FlowTable for Flaky {
            fn dump(&mut self, f: IpFamily, proto: Option<u8>) -> Result<Vec<Flow>, ConntrackError> {
                if *self.1.lock().unwrap() {
                    return Err(ConntrackError::Kernel {
                        op: "listing conntrack entries",
                        errno: libc::EPERM,
                    });
                }
                self.0.dump(f, proto)
            }
            fn delete(&mut self, f: IpFamily, flow: &Flow) -> Result<bool, ConntrackError> {
                self.0.delete(f, flow)
            }
        }
        let (t, broken) = (Fake::default(), Arc::new(Mutex::new(false)));
        let mut c =
            ConntrackCleanup::with_table(IpFamily::V4, Box::new(Flaky(t.clone(), broken.clone())), None);
        c.after_sync(&state(&["10.244.0.11"], &[])).unwrap();
        t.add(IPPROTO_UDP, "10.0.0.5:40000", "10.96.0.10:53", "10.244.0.11:5353");
        *broken.lock().unwrap() = true;
        let e = c.after_sync(&state(&["10.244.0.12"], &[])).unwrap_err();
        assert!(e.to_string().contains("listing conntrack entries"), "{e}");
        *broken.lock().unwrap() = false;
        let r = c.after_sync(&state(&["10.244.0.12"], &[])).unwrap();
        assert_eq!(r.deleted, 1, "the stale entry is cleaned by the next sync");
    }
}
