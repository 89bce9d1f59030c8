//! Topology-aware routing (EndpointSlice hints, `trafficDistribution`): the
//! upstream `TestCategorizeEndpoints` cases, transcribed as data
//! (tests/upstream/topology_categorize.yaml) and run through the model's one
//! `categorize`, plus our own cases for what kube-proxy's test does not
//! cover here: node hints, the hints the EndpointSlice controller would write
//! for `trafficDistribution`, and hints read from slice manifests. The rule
//! text is covered by the `topology-zone-hints` golden cases of both modes.

use std::collections::BTreeSet;
use std::path::Path;

use calico_store::model::{self, ObjectMeta, WorkloadEndpoint, WorkloadEndpointSpec};
use kube_proxy_rules::k8s::{IntOrString, Objects};
use kube_proxy_rules::model::endpoints::{categorize, EndpointInfo};
use kube_proxy_rules::model::topology::{EndpointTopology, Hints};
use kube_proxy_rules::model::{Locality, Protocol, ServicePortInfo, TrafficDistribution};
use kube_proxy_rules::names::ServiceChains;
use serde::Deserialize;

const NODE: &str = "test-node";

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Svc {
    #[serde(default)]
    itp_local: bool,
    #[serde(default)]
    etp_local: bool,
    #[serde(default)]
    node_port: u16,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Ep {
    ep: String,
    #[serde(default)]
    zones: Option<Vec<String>>,
    #[serde(default)]
    ready: bool,
    #[serde(default)]
    serving: bool,
    #[serde(default)]
    terminating: bool,
    #[serde(default)]
    local: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    #[serde(default)]
    zone: Option<String>,
    service: Svc,
    endpoints: Vec<Ep>,
    cluster: Option<Vec<String>>,
    local: Option<Vec<String>>,
    #[serde(default)]
    all: Option<Vec<String>>,
    #[serde(default)]
    only_remote: bool,
}

fn service_port(s: &Svc, td: Option<TrafficDistribution>) -> ServicePortInfo {
    ServicePortInfo {
        namespace: "ns".into(),
        name: "svc".into(),
        port_name: String::new(),
        name_string: "ns/svc".into(),
        protocol: Protocol::Tcp,
        cluster_ip: "172.30.0.1".parse().unwrap(),
        port: 80,
        target_port: IntOrString::Int(80),
        node_port: s.node_port,
        external_ips: Vec::new(),
        load_balancer_vips: Vec::new(),
        load_balancer_source_ranges: Vec::new(),
        affinity_timeout: None,
        health_check_node_port: 0,
        internal_policy_local: s.itp_local,
        external_policy_local: s.etp_local,
        traffic_distribution: td,
        chains: ServiceChains::new("ns/svc", "tcp"),
    }
}

fn endpoint(e: &Ep) -> EndpointInfo {
    let addr: std::net::SocketAddr = e.ep.parse().unwrap();
    let node = if e.local { NODE } else { "other-node" };
    let mut info = EndpointInfo::new(addr.ip(), addr.port(), Some(node));
    info.ready = e.ready;
    info.serving = e.serving;
    info.terminating = e.terminating;
    info.topology = e.zones.as_ref().map(|z| {
        Box::new(EndpointTopology {
            zone: None,
            hints: Some(Hints { for_zones: z.clone(), for_nodes: Vec::new() }),
        })
    });
    info
}

fn set(eps: &[&EndpointInfo]) -> BTreeSet<String> {
    eps.iter().map(|e| e.endpoint()).collect()
}

fn run(c: &Case) -> Result<(), String> {
    let sp = service_port(&c.service, None);
    let eps: Vec<EndpointInfo> = c.endpoints.iter().map(endpoint).collect();
    let here = Locality { node: NODE, zone: c.zone.as_deref() };
    let got = categorize(&eps, &sp, here);
    let want = |v: &Option<Vec<String>>| v.as_ref().map(|v| v.iter().cloned().collect::<BTreeSet<_>>());
    let mut errs = Vec::new();
    // `null`: the service does not use that kind of endpoints (none given).
    match want(&c.cluster) {
        None if sp.uses_cluster_endpoints() || !got.cluster.is_empty() => {
            errs.push(format!("expected no cluster endpoints, got {:?}", set(&got.cluster)))
        }
        Some(w) if w != set(&got.cluster) => {
            errs.push(format!("cluster: want {w:?}, got {:?}", set(&got.cluster)))
        }
        _ => {}
    }
    match want(&c.local) {
        None if sp.uses_local_endpoints() || !got.local.is_empty() => {
            errs.push(format!("expected no local endpoints, got {:?}", set(&got.local)))
        }
        Some(w) if w != set(&got.local) => errs.push(format!("local: want {w:?}, got {:?}", set(&got.local))),
        _ => {}
    }
    let all = match (&c.cluster, &c.local) {
        (Some(cl), None) => cl.iter().cloned().collect(),
        (None, Some(l)) => l.iter().cloned().collect(),
        _ => want(&c.all).unwrap_or_default(),
    };
    if all != set(&got.all_reachable) {
        errs.push(format!("all: want {all:?}, got {:?}", set(&got.all_reachable)));
    }
    let has_any = !all.is_empty() || c.only_remote;
    if has_any != got.has_any {
        errs.push(format!("hasAnyEndpoints: want {has_any}, got {}", got.has_any));
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(format!("{}: {}", c.name, errs.join("; ")))
    }
}

#[test]
fn upstream_categorize_endpoints_cases() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/upstream/topology_categorize.yaml");
    let cases: Vec<Case> = serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert!(cases.len() >= 25, "{}", cases.len());
    let failures: Vec<String> = cases.iter().filter_map(|c| run(c).err()).collect();
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// Endpoints read from a slice manifest, as the proxier sees them.
fn from_yaml(yaml: &str) -> (ServicePortInfo, Vec<EndpointInfo>) {
    let mut objs = Objects::default();
    let mut errors = Vec::new();
    objs.add_text(yaml, "t.yaml", &mut errors);
    let loaded = kube_proxy_rules::inputs::build_state(&objs, &[], &["10.96.0.0/12".parse().unwrap()]);
    assert!(errors.is_empty() && loaded.errors.is_empty(), "{errors:?} {:?}", loaded.errors);
    let sp = loaded.state.services[0].clone();
    let eps = loaded.state.endpoints_of(&sp).to_vec();
    (sp, eps)
}

fn slice_yaml(td: &str, endpoints: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: ns}}\n\
         spec: {{clusterIP: 10.96.0.10, {td} ports: [{{port: 80}}]}}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: web-1, namespace: ns, labels: {{kubernetes.io/service-name: web}}}}\n\
         addressType: IPv4\nports: [{{port: 8080}}]\nendpoints:\n{endpoints}"
    )
}

fn cluster(sp: &ServicePortInfo, eps: &[EndpointInfo], node: &str, zone: Option<&str>) -> Vec<String> {
    let c = categorize(eps, sp, Locality { node, zone });
    c.cluster.iter().map(|e| e.endpoint()).collect()
}

#[test]
fn slice_hints_for_zones_and_nodes_are_read_from_manifests() {
    let (sp, eps) = from_yaml(&slice_yaml(
        "",
        "- {addresses: [10.0.1.1], nodeName: n1, zone: a, hints: {forZones: [{name: a}], forNodes: [{name: n1}]}}\n\
         - {addresses: [10.0.1.2], nodeName: n2, zone: a, hints: {forZones: [{name: a}], forNodes: [{name: n2}]}}\n\
         - {addresses: [10.0.2.1], nodeName: n3, zone: b, hints: {forZones: [{name: b}], forNodes: [{name: n3}]}}\n",
    ));
    // Node hints for this node win over zone hints (PreferSameNode).
    assert_eq!(cluster(&sp, &eps, "n1", Some("a")), ["10.0.1.1:8080"]);
    // No endpoint hinted for this node: the zone's.
    assert_eq!(cluster(&sp, &eps, "n9", Some("a")), ["10.0.1.1:8080", "10.0.1.2:8080"]);
    assert_eq!(cluster(&sp, &eps, "n9", Some("b")), ["10.0.2.1:8080"]);
    // A zone nothing is hinted for, or a node without a zone: all.
    assert_eq!(cluster(&sp, &eps, "n9", Some("c")).len(), 3);
    assert_eq!(cluster(&sp, &eps, "n9", None).len(), 3);
}

#[test]
fn traffic_distribution_hints_what_the_controller_would() {
    let eps_yaml = "- {addresses: [10.0.1.1], nodeName: n1, zone: a}\n\
                    - {addresses: [10.0.1.2], nodeName: n2, zone: a}\n\
                    - {addresses: [10.0.2.1], nodeName: n3, zone: b}\n";
    // No trafficDistribution, no hints: zones are not a reason to filter.
    let (sp, eps) = from_yaml(&slice_yaml("", eps_yaml));
    assert_eq!(cluster(&sp, &eps, "n1", Some("a")).len(), 3);
    for td in ["PreferClose", "PreferSameZone"] {
        let (sp, eps) = from_yaml(&slice_yaml(&format!("trafficDistribution: {td},"), eps_yaml));
        assert_eq!(sp.traffic_distribution, Some(TrafficDistribution::PreferSameZone));
        assert_eq!(cluster(&sp, &eps, "n1", Some("a")), ["10.0.1.1:8080", "10.0.1.2:8080"], "{td}");
        assert_eq!(cluster(&sp, &eps, "n3", Some("b")), ["10.0.2.1:8080"], "{td}");
    }
    let (sp, eps) = from_yaml(&slice_yaml("trafficDistribution: PreferSameNode,", eps_yaml));
    assert_eq!(cluster(&sp, &eps, "n2", Some("a")), ["10.0.1.2:8080"]);
    // A node with no endpoint of its own: its zone's.
    assert_eq!(cluster(&sp, &eps, "n4", Some("b")), ["10.0.2.1:8080"]);
    // An endpoint without a zone leaves the service unfiltered by zone (the
    // controller writes no hint for it).
    let (sp, eps) = from_yaml(&slice_yaml(
        "trafficDistribution: PreferClose,",
        "- {addresses: [10.0.1.1], zone: a}\n- {addresses: [10.0.2.1]}\n",
    ));
    assert_eq!(cluster(&sp, &eps, "n1", Some("a")).len(), 2);
    // Hints the controller wrote are used as they are.
    let (sp, eps) = from_yaml(&slice_yaml(
        "trafficDistribution: PreferClose,",
        "- {addresses: [10.0.1.1], zone: a, hints: {forZones: [{name: b}]}}\n\
         - {addresses: [10.0.2.1], zone: b, hints: {forZones: [{name: b}]}}\n",
    ));
    assert_eq!(cluster(&sp, &eps, "n1", Some("b")).len(), 2);
    assert_eq!(cluster(&sp, &eps, "n1", Some("a")).len(), 2, "no endpoint for zone a: all");
}

/// Endpoints from Calico's pod records carry their node, no zone: with
/// `PreferSameNode` the node's own endpoints are used (no zone hint).
#[test]
fn pod_record_endpoints_prefer_their_node_with_prefer_same_node() {
    let eps: Vec<EndpointInfo> = [("10.0.1.1", "n1"), ("10.0.1.2", "n1"), ("10.0.2.1", "n2")]
        .iter()
        .map(|(ip, node)| EndpointInfo::new(ip.parse().unwrap(), 80, Some(node)))
        .collect();
    let same_node = service_port(&Svc::default(), Some(TrafficDistribution::PreferSameNode));
    assert_eq!(cluster(&same_node, &eps, "n1", Some("a")), ["10.0.1.1:80", "10.0.1.2:80"]);
    assert_eq!(cluster(&same_node, &eps, "n3", Some("a")).len(), 3, "no endpoint on n3: all");
    let same_zone = service_port(&Svc::default(), Some(TrafficDistribution::PreferSameZone));
    assert_eq!(cluster(&same_zone, &eps, "n1", Some("a")).len(), 3, "no zones known: all");
}

/// A pod record as Calico's CNI writes it: pod `name` on `node`, app=web.
fn pod_record(name: &str, node: &str, ip: &str) -> WorkloadEndpoint {
    WorkloadEndpoint::new(
        "WorkloadEndpoint",
        ObjectMeta {
            name: model::workload_endpoint_name(node, "k8s", name, "eth0"),
            namespace: Some("ns".into()),
            labels: [("app".to_string(), "web".to_string())].into(),
            ..Default::default()
        },
        WorkloadEndpointSpec {
            orchestrator: "k8s".into(),
            workload: String::new(),
            node: node.into(),
            container_id: format!("cid-{name}"),
            pod: name.into(),
            endpoint: "eth0".into(),
            interface_name: format!("cali-{name}"),
            mac: String::new(),
            ip_networks: vec![format!("{ip}/32").parse().unwrap()],
            profiles: vec!["kns.ns".into()],
            ports: Vec::new(),
        },
    )
}

/// Selector services take their endpoints from pod records, where no
/// controller wrote a zone: the Node manifests' zone labels give it, so
/// `PreferClose` works for them too.
#[test]
fn node_manifests_give_pod_record_endpoints_their_zone() {
    let yaml = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: ns}\n\
                spec: {clusterIP: 10.96.0.10, selector: {app: web}, trafficDistribution: PreferClose, ports: [{port: 80}]}\n---\n\
                apiVersion: v1\nkind: Node\nmetadata: {name: n1, labels: {topology.kubernetes.io/zone: a}}\n---\n\
                apiVersion: v1\nkind: Node\nmetadata: {name: n2, labels: {topology.kubernetes.io/zone: a}}\n---\n\
                apiVersion: v1\nkind: Node\nmetadata: {name: n3, labels: {topology.kubernetes.io/zone: b}}\n";
    let weps = [
        pod_record("web-1", "n1", "10.0.1.1"),
        pod_record("web-2", "n2", "10.0.1.2"),
        pod_record("web-3", "n3", "10.0.2.1"),
    ];
    let mut objs = Objects::default();
    let mut errors = Vec::new();
    objs.add_text(yaml, "t.yaml", &mut errors);
    assert!(errors.is_empty(), "{errors:?}");
    let loaded = kube_proxy_rules::inputs::build_state(&objs, &weps, &["10.96.0.0/12".parse().unwrap()]);
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    let sp = loaded.state.services[0].clone();
    let eps = loaded.state.endpoints_of(&sp).to_vec();
    assert_eq!(cluster(&sp, &eps, "n1", Some("a")), ["10.0.1.1:80", "10.0.1.2:80"]);
    assert_eq!(cluster(&sp, &eps, "n3", Some("b")), ["10.0.2.1:80"]);
    // Without the Node manifests: no zones, all endpoints.
    objs.nodes.clear();
    let loaded = kube_proxy_rules::inputs::build_state(&objs, &weps, &["10.96.0.0/12".parse().unwrap()]);
    let eps = loaded.state.endpoints_of(&sp).to_vec();
    assert_eq!(cluster(&sp, &eps, "n1", Some("a")).len(), 3);
}

#[test]
fn an_invalid_traffic_distribution_is_an_error_naming_the_service() {
    let mut objs = Objects::default();
    let mut errors = Vec::new();
    objs.add_text(&slice_yaml("trafficDistribution: Nearby,", ""), "t.yaml", &mut errors);
    let loaded = kube_proxy_rules::inputs::build_state(&objs, &[], &["10.96.0.0/12".parse().unwrap()]);
    assert!(loaded.state.services.is_empty());
    assert_eq!(loaded.errors.len(), 1, "{:?}", loaded.errors);
    assert!(loaded.errors[0].reason.contains("trafficDistribution"), "{}", loaded.errors[0].reason);
    assert_eq!(loaded.errors[0].object.to_string(), "Service ns/web");
}
