//! Endpoints per service port: from EndpointSlices (as kube-proxy's
//! endpointslicecache reads them), or, for selector-based services without a
//! slice, from the pod records Calico's CNI writes (WorkloadEndpoints), the
//! way the endpoint controller would have built the slice. Then
//! [`categorize`] (kube-proxy's `CategorizeEndpoints`) picks the cluster and
//! local endpoints a sync uses.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock};

use calico_store::model::WorkloadEndpoint;

use super::service::{parse_ip_sloppy, Protocol, ServicePortInfo};
use super::topology::{self, EndpointTopology, Hints, Locality};
use crate::family::IpFamily;
use crate::k8s::{Container, EndpointSlice, IntOrString, ObjectError, ObjectRef, Objects};

/// One endpoint of one service port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EndpointInfo {
    pub ip: IpAddr,
    pub port: u16,
    /// Shared by every endpoint on the node ([`node_name`]).
    pub node_name: Option<Arc<str>>,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    /// The slice's zone and hints for it (None for most endpoints: see
    /// [`super::topology`]).
    pub topology: Option<Box<EndpointTopology>>,
}

impl EndpointInfo {
    /// An endpoint at `ip:port` on `node_name`, ready and serving.
    pub fn new(ip: IpAddr, port: u16, node_name: Option<&str>) -> Self {
        let node_name = node_name.map(self::node_name);
        EndpointInfo { ip, port, node_name, ready: true, serving: true, terminating: false, topology: None }
    }
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip, self.port)
    }
    /// `ip:port` or `[ip]:port` (`net.JoinHostPort`): the DNAT target,
    /// comment and hash input. Written when a rule needs it (kept in every
    /// endpoint it was ~5.6 MiB at 10,000 services × 10 endpoints).
    pub fn endpoint(&self) -> String {
        self.addr().to_string()
    }
    /// Its `KUBE-SEP-…` chain as endpoint of `sp` (the iptables proxier's;
    /// hashed when a rule needs it, not for every endpoint read: the
    /// nftables proxier never does).
    pub fn chain(&self, sp: &ServicePortInfo) -> String {
        crate::names::endpoint_chain(&sp.name_string, sp.protocol.as_str(), &self.endpoint())
    }
    pub fn is_local(&self, node: &str) -> bool {
        self.node_name.as_deref() == Some(node)
    }
}

/// (`ns/name:port`, protocol) → endpoints sorted by their `ip:port` string.
pub type EndpointsMap = HashMap<(String, Protocol), Vec<EndpointInfo>>;

/// Node names, interned: the ~100,000 endpoints of a large cluster are on a
/// few thousand nodes, and each endpoint kept its node's name as a string of
/// its own (twice: in the API cache and in the state), ~6 MiB at 10,000
/// services × 10 endpoints. Names no endpoint holds any more are dropped
/// whenever the set has doubled since the last time (nodes come and go).
pub fn node_name(name: &str) -> Arc<str> {
    struct Names {
        set: HashSet<Arc<str>>,
        pruned_at: usize,
    }
    static NAMES: OnceLock<Mutex<Names>> = OnceLock::new();
    let names = NAMES.get_or_init(|| Mutex::new(Names { set: HashSet::new(), pruned_at: 0 }));
    // A panic elsewhere while holding the lock leaves a valid set.
    let mut n = names.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(a) = n.set.get(name) {
        return a.clone();
    }
    if n.set.len() >= 2 * n.pruned_at.max(64) {
        n.set.retain(|a| Arc::strong_count(a) > 1);
        n.pruned_at = n.set.len();
    }
    let a: Arc<str> = Arc::from(name);
    n.set.insert(a.clone());
    a
}

/// The key of one service port in an [`EndpointsMap`].
pub fn key_of(sp: &ServicePortInfo) -> (String, Protocol) {
    (sp.name_string.clone(), sp.protocol)
}

/// One EndpointSlice's endpoints, converted once: what `run`'s API cache
/// keeps of a slice (a slice's text fields, addresses as strings, cost
/// ~2 KiB per slice of 10 endpoints; this ~0.6).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SliceEndpoints {
    /// (namespace, name) of the Service it belongs to (its
    /// `kubernetes.io/service-name` label).
    pub service: Option<(String, String)>,
    /// Per service port: its endpoints, in endpoint order, each once.
    pub ports: Vec<((String, Protocol), Vec<EndpointInfo>)>,
    /// What is wrong with it (it then contributes no endpoints).
    pub errors: Vec<ObjectError>,
}

/// Convert one EndpointSlice (`addressType` IPv4 or IPv6; FQDN slices are
/// ignored, as kube-proxy does). A slice with an invalid address (or one of
/// the other family) or port is an error and contributes nothing.
pub fn convert_slice(slice: &EndpointSlice) -> SliceEndpoints {
    let mut out = SliceEndpoints {
        service: slice.service_name().map(|n| (slice.metadata.ns().to_string(), n.to_string())),
        ..Default::default()
    };
    let err = |reason: String| ObjectError {
        object: ObjectRef {
            kind: "EndpointSlice".into(),
            namespace: slice.metadata.ns().to_string(),
            name: slice.metadata.name().to_string(),
        },
        source_file: slice.source.clone(),
        reason,
    };
    let Some(svc) = slice.service_name() else {
        out.errors.push(err("no kubernetes.io/service-name label: it belongs to no Service".into()));
        return out;
    };
    let family = match slice.address_type.as_str() {
        "IPv4" => IpFamily::V4,
        "IPv6" => IpFamily::V6,
        "FQDN" => return out,
        other => {
            out.errors.push(err(format!("invalid addressType {other:?}")));
            return out;
        }
    };
    let mut ports = Vec::new();
    for p in &slice.ports {
        let proto = match Protocol::parse(p.protocol.as_deref()) {
            Ok(pr) => pr,
            Err(e) => {
                out.errors.push(err(e));
                return out;
            }
        };
        let Some(port) = p.port else { continue };
        let Some(port) = u16::try_from(port).ok().filter(|p| *p != 0) else {
            out.errors.push(err(format!("invalid port {port}")));
            return out;
        };
        ports.push((p.name.clone().unwrap_or_default(), proto, port));
    }
    let mut eps = Vec::new();
    for ep in &slice.endpoints {
        let Some(addr) = ep.addresses.first() else { continue };
        let Some(ip) = parse_ip_sloppy(addr) else {
            out.errors.push(err(format!("invalid endpoint address {addr:?}")));
            return out;
        };
        if !family.has(ip) {
            out.errors.push(err(format!("endpoint address {addr:?} is not of addressType {family}")));
            return out;
        }
        eps.push((ip, ep));
    }
    let ns = slice.metadata.ns();
    for (port_name, proto, port) in &ports {
        let name_string =
            if port_name.is_empty() { format!("{ns}/{svc}") } else { format!("{ns}/{svc}:{port_name}") };
        let mut set: BTreeMap<String, EndpointInfo> = BTreeMap::new();
        for (ip, ep) in &eps {
            let mut info = EndpointInfo::new(*ip, *port, ep.node_name.as_deref());
            info.ready = ep.conditions.ready.unwrap_or(true);
            info.serving = ep.conditions.serving.unwrap_or(true);
            info.terminating = ep.conditions.terminating.unwrap_or(false);
            info.topology = slice_topology(ep);
            set.entry(info.endpoint()).or_insert(info);
        }
        out.ports.push(((name_string, *proto), set.into_values().collect()));
    }
    out
}

/// The endpoints of converted slices, of both families (each family's
/// proxier takes the endpoints of its family:
/// [`crate::model::ProxyState::split_families`]); the slices' errors are
/// added to `errors`. An endpoint in two slices of a service port is taken
/// from the first.
pub fn merge_slices<'a>(
    slices: impl IntoIterator<Item = &'a SliceEndpoints>,
    errors: &mut Vec<ObjectError>,
) -> EndpointsMap {
    let mut out = EndpointsMap::new();
    // Service ports with endpoints in more than one slice: merged by endpoint.
    let mut several: HashMap<(String, Protocol), BTreeMap<String, EndpointInfo>> = HashMap::new();
    for slice in slices {
        errors.extend(slice.errors.iter().cloned());
        for (key, eps) in &slice.ports {
            if let Some(set) = several.get_mut(key) {
                for e in eps {
                    set.entry(e.endpoint()).or_insert_with(|| e.clone());
                }
            } else if let Some(first) = out.remove(key) {
                let mut set: BTreeMap<String, EndpointInfo> =
                    first.into_iter().map(|e| (e.endpoint(), e)).collect();
                for e in eps {
                    set.entry(e.endpoint()).or_insert_with(|| e.clone());
                }
                several.insert(key.clone(), set);
            } else {
                out.insert(key.clone(), eps.clone());
            }
        }
    }
    out.extend(several.into_iter().map(|(k, v)| (k, v.into_values().collect())));
    out
}

/// A slice endpoint's zone and hints (None when it has neither).
fn slice_topology(ep: &crate::k8s::SliceEndpoint) -> Option<Box<EndpointTopology>> {
    let zone = ep.zone.clone().filter(|z| !z.is_empty());
    let hints = ep.hints.as_ref().map(|h| Hints {
        for_zones: h.for_zones.iter().map(|z| z.name.clone()).collect(),
        for_nodes: h.for_nodes.iter().map(|n| n.name.clone()).collect(),
    });
    (zone.is_some() || hints.is_some()).then(|| Box::new(EndpointTopology { zone, hints }))
}

/// The zones of the nodes (`topology.kubernetes.io/zone` of the Node
/// manifests), given to the endpoints on those nodes that have none, as the
/// EndpointSlice controller fills an endpoint's `zone` from its Node: pod
/// records (no controller ran for them) and slices written without `zone`.
pub fn fill_zones(eps: &mut EndpointsMap, zones: &BTreeMap<String, String>) {
    if zones.is_empty() {
        return;
    }
    for e in eps.values_mut().flatten() {
        let Some(zone) = e.node_name.as_deref().and_then(|n| zones.get(n)) else { continue };
        match &mut e.topology {
            Some(t) if t.zone.is_some() => {}
            Some(t) => t.zone = Some(zone.clone()),
            None => e.topology = Some(Box::new(EndpointTopology { zone: Some(zone.clone()), hints: None })),
        }
    }
}

/// Services that have at least one EndpointSlice (`ns`, `name`).
pub fn services_with_slices<'a>(
    slices: impl IntoIterator<Item = &'a SliceEndpoints>,
) -> BTreeSet<(String, String)> {
    slices.into_iter().filter_map(|s| s.service.clone()).collect()
}

/// A pod as the selector sees it: its labels and containers.
struct PodView<'a> {
    labels: &'a BTreeMap<String, String>,
    containers: &'a [Container],
}

/// Labels and container ports of the pods behind pod records: a Pod manifest
/// by exact name, else the Deployment whose name is the longest `<name>-`
/// prefix of the pod name (its pods are `<deployment>-<hash>-<suffix>`).
pub struct PodCatalog<'a> {
    objs: &'a Objects,
}

impl<'a> PodCatalog<'a> {
    pub fn new(objs: &'a Objects) -> Self {
        PodCatalog { objs }
    }

    fn find(&self, ns: &str, pod: &str) -> Option<PodView<'a>> {
        if let Some(p) = self.objs.pods.iter().find(|p| p.metadata.ns() == ns && p.metadata.name() == pod) {
            return Some(PodView { labels: &p.metadata.labels, containers: &p.spec.containers });
        }
        self.objs
            .deployments
            .iter()
            .filter(|d| d.metadata.ns() == ns && pod.starts_with(&format!("{}-", d.metadata.name())))
            .max_by_key(|d| d.metadata.name().len())
            .map(|d| PodView {
                labels: &d.spec.template.metadata.labels,
                containers: &d.spec.template.spec.containers,
            })
    }
}

fn selector_matches(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Resolve a `targetPort` against a pod: a number as is, a name through the
/// pod's container ports (or the ports stored in its record).
fn resolve_target_port(
    target: &IntOrString,
    protocol: Protocol,
    containers: &[Container],
    wep: &WorkloadEndpoint,
) -> Option<u16> {
    match target {
        IntOrString::Int(n) => u16::try_from(*n).ok(),
        IntOrString::Str(name) => {
            let from_manifest = containers.iter().flat_map(|c| c.ports.iter()).find(|p| {
                p.name.as_deref() == Some(name.as_str())
                    && Protocol::parse(p.protocol.as_deref()).ok() == Some(protocol)
            });
            if let Some(p) = from_manifest {
                return u16::try_from(p.container_port).ok();
            }
            wep.spec
                .ports
                .iter()
                .find(|p| &p.name == name && p.protocol.eq_ignore_ascii_case(protocol.as_str()))
                .map(|p| p.port)
        }
    }
}

/// Endpoints for the selector-based services that have no EndpointSlice, from
/// the pod records: a record's pod is selected when its labels (from the Pod
/// or Deployment manifest, else the labels stored on the record) match the
/// selector. Every record is a running pod, so its endpoint is ready.
pub fn from_pod_records(
    services: &[(ServicePortInfo, BTreeMap<String, String>)],
    weps: &[&WorkloadEndpoint],
    catalog: &PodCatalog<'_>,
) -> EndpointsMap {
    let mut out: EndpointsMap = HashMap::new();
    for (sp, selector) in services {
        if selector.is_empty() {
            continue;
        }
        let mut set: BTreeMap<String, EndpointInfo> = BTreeMap::new();
        for wep in weps.iter().copied() {
            let ns = wep.metadata.namespace.as_deref().unwrap_or("default");
            if ns != sp.namespace {
                continue;
            }
            let pod = if wep.spec.pod.is_empty() { &wep.spec.workload } else { &wep.spec.pod };
            let view = catalog.find(ns, pod);
            let labels = view.as_ref().map(|v| v.labels).unwrap_or(&wep.metadata.labels);
            if !selector_matches(selector, labels) {
                continue;
            }
            let containers = view.as_ref().map(|v| v.containers).unwrap_or(&[]);
            let Some(port) = resolve_target_port(&sp.target_port, sp.protocol, containers, wep) else {
                continue; // a named port this pod does not have: no endpoint, as in Kubernetes
            };
            // The endpoint of the service port's family: a dual-stack pod
            // has one address of each (the endpoint controller's slices per family).
            let family = sp.family();
            let Some(ip) =
                wep.spec.ip_networks.iter().map(|n| crate::family::unmap(n.ip())).find(|ip| family.has(*ip))
            else {
                continue;
            };
            let info = EndpointInfo::new(ip, port, Some(&wep.spec.node));
            set.entry(info.endpoint()).or_insert(info);
        }
        // A dual-stack service's two ports share the key: one list, each family's part sorted.
        out.entry(key_of(sp)).or_default().extend(set.into_values());
    }
    out
}

/// The endpoints one sync uses for a service port.
#[derive(Debug, Default)]
pub struct Categorized<'a> {
    pub cluster: Vec<&'a EndpointInfo>,
    pub local: Vec<&'a EndpointInfo>,
    /// Cluster ∪ local: the endpoints that get a KUBE-SEP chain.
    pub all_reachable: Vec<&'a EndpointInfo>,
    pub has_any: bool,
}

/// kube-proxy's `CategorizeEndpoints`: the cluster endpoints are the ready
/// ones available for the topology mode ([`topology::mode`]: hints for this
/// node or zone, else all), else serving+terminating ones as a fallback; the
/// local endpoints (when a Local policy is in use) ignore topology: ready
/// local ones, else serving+terminating local ones.
pub fn categorize<'a>(eps: &'a [EndpointInfo], sp: &ServicePortInfo, here: Locality<'_>) -> Categorized<'a> {
    let node = here.node;
    let mut c = Categorized::default();
    if sp.uses_cluster_endpoints() {
        let td = sp.traffic_distribution;
        let mode = topology::mode(eps, td, here);
        c.cluster = eps.iter().filter(|e| e.ready && topology::available(e, mode, td, here)).collect();
        if c.cluster.is_empty() {
            c.cluster = eps.iter().filter(|e| e.serving && e.terminating).collect();
        }
        c.has_any = !c.cluster.is_empty();
    }
    if !sp.uses_local_endpoints() {
        c.all_reachable = c.cluster.clone();
        return c;
    }
    let (mut local_ready, mut local_serving_terminating) = (false, false);
    for e in eps {
        if e.ready {
            c.has_any = true;
            local_ready |= e.is_local(node);
        } else if e.serving && e.terminating {
            c.has_any = true;
            local_serving_terminating |= e.is_local(node);
        }
    }
    if local_ready {
        c.local = eps.iter().filter(|e| e.is_local(node) && e.ready).collect();
    } else if local_serving_terminating {
        c.local = eps.iter().filter(|e| e.is_local(node) && e.serving && e.terminating).collect();
    }
    if !sp.uses_cluster_endpoints() {
        c.all_reachable = c.local.clone();
        return c;
    }
    let mut seen: BTreeSet<SocketAddr> = BTreeSet::new();
    for e in c.cluster.iter().chain(c.local.iter()) {
        if seen.insert(e.addr()) {
            c.all_reachable.push(e);
        }
    }
    c
}

/// What one sync does with one service port, in either proxy mode: the
/// categorized endpoints and the decisions both proxiers derive from them
/// (the local variables at the top of kube-proxy's per-service loop).
#[derive(Debug)]
pub struct Traffic<'a> {
    pub cluster: Vec<&'a EndpointInfo>,
    pub local: Vec<&'a EndpointInfo>,
    /// Every endpoint that gets an endpoint chain (cluster ∪ local).
    pub all_reachable: Vec<&'a EndpointInfo>,
    /// Usable endpoints anywhere in the cluster.
    pub has_endpoints: bool,
    /// ClusterIP traffic has somewhere to go (with iTP Local: a local endpoint).
    pub has_internal_endpoints: bool,
    /// External traffic has somewhere to go (with eTP Local: a local endpoint).
    pub has_external_endpoints: bool,
    /// The cluster-policy chain (all usable endpoints) is written.
    pub uses_cluster_chain: bool,
    /// The local-policy chain (this node's endpoints) is written.
    pub uses_local_chain: bool,
    /// The "external destinations" chain is written: based on
    /// `has_endpoints`, not `has_external_endpoints`, because local traffic
    /// is short-circuited even when no local endpoint exists.
    pub uses_external_chain: bool,
}

impl<'a> Traffic<'a> {
    pub fn new(sp: &ServicePortInfo, eps: &'a [EndpointInfo], here: Locality<'_>) -> Self {
        let c = categorize(eps, sp, here);
        let has_endpoints = c.has_any;
        Traffic {
            uses_cluster_chain: !c.cluster.is_empty() && sp.uses_cluster_endpoints(),
            uses_local_chain: !c.local.is_empty() && sp.uses_local_endpoints(),
            has_endpoints,
            has_internal_endpoints: has_endpoints && (!sp.internal_policy_local || !c.local.is_empty()),
            has_external_endpoints: has_endpoints && (!sp.external_policy_local || !c.local.is_empty()),
            uses_external_chain: has_endpoints && sp.externally_accessible(),
            cluster: c.cluster,
            local: c.local,
            all_reachable: c.all_reachable,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_on_one_node_share_its_name() {
        let a = EndpointInfo::new("10.0.0.1".parse().unwrap(), 80, Some("interned-node-a"));
        let b = EndpointInfo::new("10.0.0.2".parse().unwrap(), 80, Some("interned-node-a"));
        let c = EndpointInfo::new("10.0.0.3".parse().unwrap(), 80, Some("interned-node-b"));
        let (Some(na), Some(nb), Some(nc)) = (&a.node_name, &b.node_name, &c.node_name) else {
            panic!("node names lost")
        };
        assert!(Arc::ptr_eq(na, nb));
        assert_eq!(&**nc, "interned-node-b");
        assert!(a.is_local("interned-node-a") && !c.is_local("interned-node-a"));
    }
}
