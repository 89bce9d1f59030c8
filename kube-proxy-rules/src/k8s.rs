//! The Kubernetes objects a user has (Service, EndpointSlice, Pod, Deployment,
//! Node), read from YAML (multi-document) or JSON files, single objects or
//! `v1 List`s.
//!
//! Only the fields kube-proxy (and the endpoint controller for selector-based
//! services) reads are typed. A document that is not one of the five kinds, or
//! that does not decode, becomes an [`ObjectError`] naming its kind, namespace
//! and name; the caller reports it and goes on with the rest.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::validate::{display_name, dns1123_label, dns1123_subdomain};

/// `kind namespace/name` of an object, for messages.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObjectRef {
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Names come from the inputs as they are: a bad one is shown quoted
        // and escaped, so that it cannot add lines to the log.
        let kind = if self.kind.is_empty() { "<no kind>".into() } else { display_name(&self.kind) };
        let name = if self.name.is_empty() { "<no name>".into() } else { display_name(&self.name) };
        write!(f, "{kind} {}/{name}", display_name(&self.namespace))
    }
}

/// A bad object: reported on stderr and skipped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{object} ({source_file}): {reason}")]
pub struct ObjectError {
    pub object: ObjectRef,
    pub source_file: String,
    pub reason: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct ObjectMeta {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

impl ObjectMeta {
    pub fn ns(&self) -> &str {
        match self.namespace.as_deref() {
            Some(ns) if !ns.is_empty() => ns,
            _ => "default",
        }
    }
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or("")
    }
}

/// `intstr.IntOrString` (a `targetPort`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(untagged)]
pub enum IntOrString {
    Int(i64),
    Str(String),
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePortSpec {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub protocol: Option<String>,
    pub port: i64,
    #[serde(default)]
    pub target_port: Option<IntOrString>,
    #[serde(default)]
    pub node_port: Option<i64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientIpConfig {
    #[serde(default)]
    pub timeout_seconds: Option<i64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct SessionAffinityConfig {
    #[serde(default, rename = "clientIP")]
    pub client_ip: Option<ClientIpConfig>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    #[serde(default, rename = "type")]
    pub type_: Option<String>,
    #[serde(default, rename = "clusterIP")]
    pub cluster_ip: Option<String>,
    #[serde(default, rename = "clusterIPs")]
    pub cluster_ips: Vec<String>,
    /// `IPv4`/`IPv6`, primary first (absent in a user's manifest: see [`crate::model::service::allocate`]).
    #[serde(default)]
    pub ip_families: Vec<String>,
    /// `SingleStack` (default), `PreferDualStack`, `RequireDualStack`.
    #[serde(default)]
    pub ip_family_policy: Option<String>,
    #[serde(default)]
    pub selector: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub ports: Vec<ServicePortSpec>,
    #[serde(default, rename = "externalIPs")]
    pub external_ips: Vec<String>,
    #[serde(default)]
    pub session_affinity: Option<String>,
    #[serde(default)]
    pub session_affinity_config: Option<SessionAffinityConfig>,
    #[serde(default)]
    pub external_traffic_policy: Option<String>,
    #[serde(default)]
    pub internal_traffic_policy: Option<String>,
    #[serde(default)]
    pub health_check_node_port: Option<i64>,
    #[serde(default)]
    pub load_balancer_source_ranges: Vec<String>,
    #[serde(default, rename = "loadBalancerIP")]
    pub load_balancer_ip: Option<String>,
    #[serde(default)]
    pub allocate_load_balancer_node_ports: Option<bool>,
    /// `PreferClose` (= `PreferSameZone`) or `PreferSameNode`: what the
    /// EndpointSlice controller turns into hints (see
    /// [`crate::model::topology`]).
    #[serde(default)]
    pub traffic_distribution: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancerIngress {
    #[serde(default)]
    pub ip: Option<String>,
    #[serde(default)]
    pub hostname: Option<String>,
    #[serde(default)]
    pub ip_mode: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct LoadBalancerStatus {
    #[serde(default)]
    pub ingress: Vec<LoadBalancerIngress>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceStatus {
    #[serde(default)]
    pub load_balancer: LoadBalancerStatus,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Service {
    /// The file it came from (for messages).
    #[serde(skip)]
    pub source: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: ServiceSpec,
    #[serde(default)]
    pub status: ServiceStatus,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct EndpointConditions {
    #[serde(default)]
    pub ready: Option<bool>,
    #[serde(default)]
    pub serving: Option<bool>,
    #[serde(default)]
    pub terminating: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SliceEndpoint {
    #[serde(default)]
    pub addresses: Vec<String>,
    #[serde(default)]
    pub conditions: EndpointConditions,
    #[serde(default)]
    pub node_name: Option<String>,
    /// The zone of the endpoint's node (`topology.kubernetes.io/zone`).
    #[serde(default)]
    pub zone: Option<String>,
    /// Boxed: most endpoints have none (40 bytes less per endpoint).
    #[serde(default)]
    pub hints: Option<Box<EndpointHints>>,
}

/// Where an endpoint should be consumed (set by the EndpointSlice controller).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointHints {
    #[serde(default)]
    pub for_zones: Vec<HintName>,
    #[serde(default)]
    pub for_nodes: Vec<HintName>,
}

/// `{name: …}` of a `forZones`/`forNodes` entry.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct HintName {
    #[serde(default)]
    pub name: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct SlicePort {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub port: Option<i64>,
    #[serde(default)]
    pub protocol: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointSlice {
    #[serde(skip)]
    pub source: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub address_type: String,
    #[serde(default)]
    pub endpoints: Vec<SliceEndpoint>,
    #[serde(default)]
    pub ports: Vec<SlicePort>,
}

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

impl EndpointSlice {
    pub fn service_name(&self) -> Option<&str> {
        self.metadata.labels.get(SERVICE_NAME_LABEL).map(String::as_str)
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerPort {
    #[serde(default)]
    pub name: Option<String>,
    pub container_port: i64,
    #[serde(default)]
    pub protocol: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Container {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub ports: Vec<ContainerPort>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct PodSpec {
    #[serde(default)]
    pub containers: Vec<Container>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Pod {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: PodSpec,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct PodTemplate {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: PodSpec,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct DeploymentSpec {
    pub template: PodTemplate,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Deployment {
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: DeploymentSpec,
}

/// A Node: only its labels are read (its zone, `topology.kubernetes.io/zone`).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Node {
    #[serde(default)]
    pub metadata: ObjectMeta,
}

/// Everything read from the inputs, in input order.
#[derive(Debug, Clone, Default)]
pub struct Objects {
    pub services: Vec<Service>,
    pub slices: Vec<EndpointSlice>,
    pub pods: Vec<Pod>,
    pub deployments: Vec<Deployment>,
    pub nodes: Vec<Node>,
}

fn object_ref(v: &serde_yaml::Value) -> ObjectRef {
    let s = |v: Option<&serde_yaml::Value>| v.and_then(|v| v.as_str()).unwrap_or("").to_string();
    let meta = v.get("metadata");
    let mut namespace = s(meta.and_then(|m| m.get("namespace")));
    if namespace.is_empty() {
        namespace = "default".into();
    }
    ObjectRef { kind: s(v.get("kind")), namespace, name: s(meta.and_then(|m| m.get("name"))) }
}

impl Objects {
    /// Add one decoded document (an object or a `*List`), collecting errors.
    pub fn add_value(&mut self, v: serde_yaml::Value, source: &str, errors: &mut Vec<ObjectError>) {
        if v.is_null() {
            return; // an empty YAML document (`---` at the end)
        }
        let oref = object_ref(&v);
        let err =
            |reason: String| ObjectError { object: oref.clone(), source_file: source.to_string(), reason };
        if oref.kind.ends_with("List") {
            match v.get("items").and_then(|i| i.as_sequence()) {
                Some(items) => {
                    for item in items.clone() {
                        self.add_value(item, source, errors);
                    }
                }
                None => errors.push(err("a List without items".into())),
            }
            return;
        }
        let api_version = v.get("apiVersion").and_then(|a| a.as_str()).unwrap_or("").to_string();
        let result: Result<(), String> = match (oref.kind.as_str(), api_version.as_str()) {
            ("Service", "v1") => {
                serde_yaml::from_value::<Service>(v).map_err(|e| e.to_string()).and_then(|mut o| {
                    o.source = source.to_string();
                    check_meta(&o.metadata, dns1123_label).map(|_| self.services.push(o))
                })
            }
            ("EndpointSlice", "discovery.k8s.io/v1") => {
                serde_yaml::from_value::<EndpointSlice>(v).map_err(|e| e.to_string()).and_then(|mut o| {
                    o.source = source.to_string();
                    check_meta(&o.metadata, dns1123_subdomain)
                        .and_then(|_| check_slice(&o))
                        .map(|_| self.slices.push(o))
                })
            }
            ("Pod", "v1") => serde_yaml::from_value::<Pod>(v)
                .map_err(|e| e.to_string())
                .and_then(|o| check_meta(&o.metadata, dns1123_subdomain).map(|_| self.pods.push(o))),
            ("Deployment", "apps/v1") => serde_yaml::from_value::<Deployment>(v)
                .map_err(|e| e.to_string())
                .and_then(|o| check_meta(&o.metadata, dns1123_subdomain).map(|_| self.deployments.push(o))),
            ("Node", "v1") => serde_yaml::from_value::<Node>(v)
                .map_err(|e| e.to_string())
                .and_then(|o| check_meta(&o.metadata, dns1123_subdomain).map(|_| self.nodes.push(o))),
            ("Service" | "EndpointSlice" | "Pod" | "Deployment" | "Node", other) => {
                Err(format!("unsupported apiVersion {other:?} for {}", oref.kind))
            }
            ("", _) => Err("kind is missing".into()),
            (other, _) => Err(format!(
                "unknown kind {other:?} (expected Service, EndpointSlice, Pod, Deployment or Node)"
            )),
        };
        if let Err(reason) = result {
            errors.push(err(reason));
        }
    }

    /// Parse one file's text: JSON when it starts with `{`/`[`, else YAML documents.
    pub fn add_text(&mut self, text: &str, source: &str, errors: &mut Vec<ObjectError>) {
        let trimmed = text.trim_start();
        if trimmed.starts_with('{') || trimmed.starts_with('[') {
            match serde_json::from_str::<serde_yaml::Value>(text) {
                Ok(serde_yaml::Value::Sequence(items)) => {
                    for item in items {
                        self.add_value(item, source, errors);
                    }
                }
                Ok(v) => self.add_value(v, source, errors),
                Err(e) => errors.push(file_error(source, format!("invalid JSON: {e}"))),
            }
            return;
        }
        for doc in serde_yaml::Deserializer::from_str(text) {
            match serde_yaml::Value::deserialize(doc) {
                Ok(v) => self.add_value(v, source, errors),
                Err(e) => {
                    // A syntax error ends the stream: nothing after it can be trusted.
                    errors.push(file_error(source, format!("invalid YAML: {e}")));
                    break;
                }
            }
        }
    }
}

/// The API server's checks of an object's name (`name_rule`: a DNS-1123
/// label for Services, a subdomain for the others) and namespace (a label):
/// both reach chain names and comments.
fn check_meta(meta: &ObjectMeta, name_rule: fn(&str) -> Result<(), String>) -> Result<(), String> {
    match meta.name.as_deref() {
        None | Some("") => return Err("metadata.name is missing".into()),
        Some(n) => name_rule(n).map_err(|e| format!("invalid metadata.name: {e}"))?,
    }
    dns1123_label(meta.ns()).map_err(|e| format!("invalid metadata.namespace: {e}"))
}

/// An EndpointSlice's label that names its Service and its port names are
/// part of the service port name its endpoints are filed under, as the
/// API server validates them: DNS-1123 labels, port names unique.
fn check_slice(slice: &EndpointSlice) -> Result<(), String> {
    if let Some(svc) = slice.service_name() {
        dns1123_label(svc).map_err(|e| format!("invalid {SERVICE_NAME_LABEL} label {svc:?}: {e}"))?;
    }
    let mut seen = std::collections::BTreeSet::new();
    for (i, p) in slice.ports.iter().enumerate() {
        let name = p.name.as_deref().unwrap_or("");
        if !name.is_empty() {
            dns1123_label(name).map_err(|e| format!("invalid ports[{i}].name {name:?}: {e}"))?;
        }
        if !seen.insert(name) {
            return Err(format!("ports[{i}].name: duplicate {name:?}"));
        }
    }
    Ok(())
}

impl Service {
    /// A Service as the API server serves it (JSON), through the same
    /// decoding and checks as a manifest's.
    pub fn from_api(v: serde_json::Value) -> Result<Service, String> {
        let mut o: Service = serde_json::from_value(v).map_err(|e| e.to_string())?;
        o.source = "API".into();
        check_meta(&o.metadata, dns1123_label)?;
        Ok(o)
    }
}

impl EndpointSlice {
    /// An EndpointSlice as the API server serves it (JSON), through the
    /// same decoding and checks as a manifest's.
    pub fn from_api(v: serde_json::Value) -> Result<EndpointSlice, String> {
        let mut o: EndpointSlice = serde_json::from_value(v).map_err(|e| e.to_string())?;
        o.source = "API".into();
        check_meta(&o.metadata, dns1123_subdomain)?;
        check_slice(&o)?;
        Ok(o)
    }
}

fn file_error(source: &str, reason: String) -> ObjectError {
    ObjectError { object: ObjectRef::default(), source_file: source.to_string(), reason }
}

/// The files an input argument stands for: itself, or the `*.yaml|*.yml|*.json`
/// files of a directory (recursively, sorted).
pub fn input_files(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    let meta = std::fs::metadata(path)?;
    if !meta.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut out = Vec::new();
    let mut entries: Vec<PathBuf> =
        std::fs::read_dir(path)?.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            out.extend(input_files(&p)?);
        } else if matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json")) {
            out.push(p);
        }
    }
    Ok(out)
}

/// Read every input (files or directories). Unreadable files are errors too.
pub fn load(paths: &[PathBuf]) -> (Objects, Vec<ObjectError>) {
    let mut objs = Objects::default();
    let mut errors = Vec::new();
    for p in paths {
        let files = match input_files(p) {
            Ok(f) => f,
            Err(e) => {
                errors.push(file_error(&p.display().to_string(), format!("cannot read: {e}")));
                continue;
            }
        };
        for f in files {
            let source = f.display().to_string();
            match std::fs::read_to_string(&f) {
                Ok(text) => objs.add_text(&text, &source, &mut errors),
                Err(e) => errors.push(file_error(&source, format!("cannot read: {e}"))),
            }
        }
    }
    (objs, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_multi_document_yaml_lists_and_json() {
        let mut o = Objects::default();
        let mut errs = Vec::new();
        o.add_text(
            "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 80}]}\n---\n\
             apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Pod\n  metadata: {name: p, namespace: x}\n---\n",
            "f.yaml",
            &mut errs,
        );
        o.add_text(
            r#"{"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSlice","metadata":{"name":"s",
               "labels":{"kubernetes.io/service-name":"a"}},"addressType":"IPv4","endpoints":[]}"#,
            "f.json",
            &mut errs,
        );
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(o.services.len(), 1);
        assert_eq!(o.pods[0].metadata.ns(), "x");
        assert_eq!(o.slices[0].service_name(), Some("a"));
    }

    #[test]
    fn bad_objects_name_kind_namespace_and_name() {
        let mut o = Objects::default();
        let mut errs = Vec::new();
        o.add_text(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cm, namespace: n1}\n---\n\
             apiVersion: v1\nkind: Service\nmetadata: {name: broken, namespace: n2}\nspec: {ports: [{name: x}]}\n---\n\
             apiVersion: v1\nkind: Service\nmetadata: {name: good}\nspec: {ports: [{port: 80}]}\n",
            "in.yaml",
            &mut errs,
        );
        assert_eq!(o.services.len(), 1);
        assert_eq!(errs.len(), 2);
        assert_eq!(errs[0].object.to_string(), "ConfigMap n1/cm");
        assert!(errs[0].reason.contains("unknown kind"));
        assert_eq!(errs[1].object.to_string(), "Service n2/broken");
        assert!(errs[1].reason.contains("port"), "{}", errs[1].reason);
    }
}
