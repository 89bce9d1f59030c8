//! The Kubernetes API as a source, as kube-proxy's informers: Services and
//! EndpointSlices of every namespace (without the ones another proxy owns,
//! `service.kubernetes.io/service-proxy-name`, or headless ones,
//! `service.kubernetes.io/headless`, kube-proxy's label selector) and this
//! node's Node object, each followed by `kube`'s watcher: a (paged) list,
//! then a watch from the list's resourceVersion with bookmarks on, so a
//! dropped watch resumes where it was; an expired version (`410 Gone`) is a
//! relist; errors back off exponentially (kube's default backoff).
//!
//! The objects are kept as [`crate::k8s`]'s types (the API's JSON has the
//! manifests' shape, so watched objects go through the same conversion and
//! checks as files), in an [`ApiCache`] shared with `run`'s loop, which
//! builds the state from it. A relist replaces a kind's objects at once
//! (objects deleted while the watch was down disappear) and is one event.
//! Nothing is reported before every kind has been listed once
//! ([`ApiCache::synced`]): `run` writes no rules before that.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Node, Service as ApiService};
use k8s_openapi::api::discovery::v1::EndpointSlice as ApiSlice;
use kube::runtime::watcher::{self, Event as WatchEvent};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, Config};

use super::{Event, Sender};
use crate::k8s::{self, ObjectError};
use crate::model::endpoints::{self, SliceEndpoints};
use crate::model::topology::ZONE_LABEL;

/// kube-proxy's label selector for Services and EndpointSlices: not the
/// ones another service proxy owns, not headless services' slices.
pub const PROXY_LABEL_SELECTOR: &str =
    "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless";
/// The EndpointSlice annotation the endpoint controller sets to when the
/// change that produced it happened (network programming latency).
pub const TRIGGER_TIME_ANNOTATION: &str = "endpoints.kubernetes.io/last-change-trigger-time";
/// The taint the cluster autoscaler puts on a node it is about to delete
/// (kube-proxy then reports the node not eligible: /healthz 503).
pub const TO_BE_DELETED_TAINT: &str = "ToBeDeletedByClusterAutoscaler";

/// How to reach the API server: kube-proxy's `--kubeconfig` and `--master`
/// (which overrides the kubeconfig's server), else the in-cluster service
/// account.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApiSettings {
    pub kubeconfig: Option<PathBuf>,
    pub master: Option<String>,
}

impl ApiSettings {
    /// The client configuration, resolved as kube-proxy resolves it.
    pub async fn client_config(&self) -> Result<Config, String> {
        let mut cfg = match (&self.kubeconfig, &self.master) {
            (Some(path), _) => {
                let kc = kube::config::Kubeconfig::read_from(path)
                    .map_err(|e| format!("reading kubeconfig {}: {e}", path.display()))?;
                Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                    .await
                    .map_err(|e| format!("kubeconfig {}: {e}", path.display()))?
            }
            (None, Some(master)) => Config::new(parse_master(master)?),
            (None, None) => Config::incluster()
                .map_err(|e| format!("no --kubeconfig or --master, and not in a cluster: {e}"))?,
        };
        if let Some(master) = &self.master {
            cfg.cluster_url = parse_master(master)?;
        }
        Ok(cfg)
    }
}

fn parse_master(master: &str) -> Result<http::Uri, String> {
    master.parse::<http::Uri>().map_err(|e| format!("--master {master:?}: {e}"))
}

/// This node as its Node object has it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeInfo {
    /// InternalIP addresses first, then ExternalIP (as kube-proxy picks the node IPs).
    pub addresses: Vec<IpAddr>,
    pub labels: BTreeMap<String, String>,
    /// Not being deleted and not tainted ToBeDeletedByClusterAutoscaler.
    pub eligible: bool,
}

impl NodeInfo {
    fn from_api(node: &Node) -> NodeInfo {
        let mut internal = Vec::new();
        let mut external = Vec::new();
        for a in node.status.as_ref().and_then(|s| s.addresses.as_ref()).into_iter().flatten() {
            let Ok(ip) = a.address.parse::<IpAddr>() else { continue };
            match a.type_.as_str() {
                "InternalIP" => internal.push(ip),
                "ExternalIP" => external.push(ip),
                _ => {}
            }
        }
        internal.extend(external);
        let tainted = node
            .spec
            .as_ref()
            .and_then(|s| s.taints.as_ref())
            .is_some_and(|t| t.iter().any(|t| t.key == TO_BE_DELETED_TAINT));
        NodeInfo {
            addresses: internal,
            labels: node.metadata.labels.clone().unwrap_or_default(),
            eligible: node.metadata.deletion_timestamp.is_none() && !tainted,
        }
    }

    /// The node IPs kube-proxy takes from the Node object: the first
    /// address of each family, InternalIP before ExternalIP.
    pub fn node_ips(&self) -> Vec<IpAddr> {
        let v4 = self.addresses.iter().find(|a| a.is_ipv4());
        let v6 = self.addresses.iter().find(|a| a.is_ipv6());
        v4.into_iter().chain(v6).copied().collect()
    }

    /// `topology.kubernetes.io/zone`, for topology-aware endpoint filtering.
    pub fn zone(&self) -> Option<&str> {
        self.labels.get(ZONE_LABEL).map(String::as_str)
    }
}

/// The three kinds followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Service,
    EndpointSlice,
    Node,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Service => "Services",
            Kind::EndpointSlice => "EndpointSlices",
            Kind::Node => "the Node",
        })
    }
}

/// What changed in the cache: sent to `run`'s loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiChange {
    pub kind: Kind,
    /// Objects added, changed or deleted (a relist counts the objects listed).
    pub objects: usize,
    /// A relist replaced the kind's objects.
    pub relist: bool,
    /// The EndpointSlices' last-change-trigger-time annotations, if any.
    pub trigger_times: Vec<SystemTime>,
}

/// Namespace/name.
pub type ObjectKey = (String, String);

/// The objects the watchers keep, as [`crate::k8s`]'s types.
#[derive(Debug, Default)]
pub struct ApiCache {
    pub services: BTreeMap<ObjectKey, Arc<k8s::Service>>,
    /// Slices are kept converted ([`SliceEndpoints`]), not as objects.
    pub slices: BTreeMap<ObjectKey, Arc<SliceEndpoints>>,
    /// This node's Node object (None: not there, or not listed yet).
    pub node: Option<NodeInfo>,
    listed: Vec<Kind>,
}

impl ApiCache {
    /// Every kind has been listed once.
    pub fn synced(&self) -> bool {
        [Kind::Service, Kind::EndpointSlice, Kind::Node].iter().all(|k| self.listed.contains(k))
    }

    /// The cached Services and EndpointSlices, shared (not copied): `run`
    /// builds its state from them without holding the lock the watchers
    /// update the cache under.
    pub fn snapshot(&self) -> (Vec<Arc<k8s::Service>>, Vec<Arc<SliceEndpoints>>) {
        (self.services.values().cloned().collect(), self.slices.values().cloned().collect())
    }
}

/// The cache shared by the watchers and `run`'s loop.
#[derive(Clone, Default)]
pub struct SharedCache(Arc<Mutex<ApiCache>>);

impl SharedCache {
    pub fn lock(&self) -> MutexGuard<'_, ApiCache> {
        // A poisoned lock means a watcher task panicked mid-update of maps
        // that stay consistent per insert/remove: go on with them.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One object of a kind, converted.
enum Converted {
    Service(ObjectKey, Box<k8s::Service>),
    Slice(ObjectKey, SliceEndpoints, Option<SystemTime>),
    Node(NodeInfo),
}

fn key_of(meta: &k8s::ObjectMeta) -> ObjectKey {
    (meta.ns().to_string(), meta.name().to_string())
}

fn convert_service(o: &ApiService) -> Result<Converted, ObjectError> {
    let v = serde_json::to_value(o).map_err(|e| api_error("Service", &o.metadata, e.to_string()))?;
    let mut svc = k8s::Service::from_api(v).map_err(|reason| api_error("Service", &o.metadata, reason))?;
    // Nothing reads a cached Service's labels (the proxy-name selector is
    // the server's): not kept (a BTreeMap of them is a 500-byte node per
    // object).
    svc.metadata.labels.clear();
    Ok(Converted::Service(key_of(&svc.metadata), Box::new(svc)))
}

fn convert_slice(o: &ApiSlice) -> Result<Converted, ObjectError> {
    let v = serde_json::to_value(o).map_err(|e| api_error("EndpointSlice", &o.metadata, e.to_string()))?;
    let slice =
        k8s::EndpointSlice::from_api(v).map_err(|reason| api_error("EndpointSlice", &o.metadata, reason))?;
    let trigger = o
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(TRIGGER_TIME_ANNOTATION))
        .and_then(|t| parse_rfc3339(t));
    Ok(Converted::Slice(key_of(&slice.metadata), endpoints::convert_slice(&slice), trigger))
}

fn api_error(
    kind: &str,
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    reason: String,
) -> ObjectError {
    ObjectError {
        object: k8s::ObjectRef {
            kind: kind.into(),
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone().unwrap_or_default(),
        },
        source_file: "API".into(),
        reason,
    }
}

/// `2006-01-02T15:04:05Z` (with an optional fraction), as the API writes
/// timestamps; None for anything else.
pub fn parse_rfc3339(t: &str) -> Option<SystemTime> {
    let t = t.strip_suffix('Z')?;
    let (date, time) = t.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, mo, da) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut h = hms.splitn(3, ':').map(|p| p.parse::<u64>().ok());
    let (hh, mm, ss) = (h.next()??, h.next()??, h.next()??);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&da) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    // Days since the epoch (civil calendar, Howard Hinnant's algorithm).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + da - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = u64::try_from(days).ok()? * 86_400 + hh * 3600 + mm * 60 + ss;
    let nanos = if frac.is_empty() {
        0
    } else {
        let digits: String = frac.chars().take(9).collect();
        digits.parse::<u32>().ok()? * 10u32.pow(9 - digits.len() as u32)
    };
    Some(SystemTime::UNIX_EPOCH + std::time::Duration::new(secs, nanos))
}

impl SharedCache {
    fn apply(&self, c: Converted) -> Option<SystemTime> {
        let mut cache = self.lock();
        match c {
            Converted::Service(k, s) => {
                cache.services.insert(k, Arc::new(*s));
                None
            }
            Converted::Slice(k, s, t) => {
                cache.slices.insert(k, Arc::new(s));
                t
            }
            Converted::Node(n) => {
                cache.node = Some(n);
                None
            }
        }
    }

    fn remove(&self, kind: Kind, key: &ObjectKey) {
        let mut cache = self.lock();
        match kind {
            Kind::Service => {
                cache.services.remove(key);
            }
            Kind::EndpointSlice => {
                cache.slices.remove(key);
            }
            Kind::Node => cache.node = None,
        }
    }

    /// A (re)list's result replaces the kind's objects.
    fn replace(&self, kind: Kind, listed: Vec<Converted>) {
        let mut cache = self.lock();
        match kind {
            Kind::Service => cache.services.clear(),
            Kind::EndpointSlice => cache.slices.clear(),
            Kind::Node => cache.node = None,
        }
        for c in listed {
            match c {
                Converted::Service(k, s) => {
                    cache.services.insert(k, Arc::new(*s));
                }
                Converted::Slice(k, s, _) => {
                    cache.slices.insert(k, Arc::new(s));
                }
                Converted::Node(n) => cache.node = Some(n),
            }
        }
        if !cache.listed.contains(&kind) {
            cache.listed.push(kind);
        }
    }
}

/// The running watchers (tasks on the runtime they were started on).
pub struct ApiSource {
    pub cache: SharedCache,
}

impl ApiSource {
    /// Connect (the client configuration is resolved here: a bad kubeconfig
    /// is an error now, not a retry loop) and start the three watchers on
    /// `rt`; each change is an [`Event::Api`] on `tx`.
    pub fn start(
        rt: &tokio::runtime::Runtime,
        settings: &ApiSettings,
        node_name: &str,
        tx: Sender,
    ) -> Result<ApiSource, String> {
        let cfg = rt.block_on(settings.client_config())?;
        log::info!("following the API server at {}", cfg.cluster_url);
        let client = {
            let _guard = rt.enter();
            Client::try_from(cfg).map_err(|e| format!("Kubernetes API client: {e}"))?
        };
        let cache = SharedCache::default();
        let proxied = watcher::Config::default().labels(PROXY_LABEL_SELECTOR);
        rt.spawn(follow(
            Api::<ApiService>::all(client.clone()),
            proxied.clone(),
            Kind::Service,
            cache.clone(),
            tx.clone(),
            convert_service,
        ));
        rt.spawn(follow(
            Api::<ApiSlice>::all(client.clone()),
            proxied,
            Kind::EndpointSlice,
            cache.clone(),
            tx.clone(),
            convert_slice,
        ));
        let this_node = watcher::Config::default().fields(&format!("metadata.name={node_name}"));
        rt.spawn(follow(Api::<Node>::all(client), this_node, Kind::Node, cache.clone(), tx, |n: &Node| {
            Ok(Converted::Node(NodeInfo::from_api(n)))
        }));
        Ok(ApiSource { cache })
    }
}

/// Follow one kind until the receiver is gone.
async fn follow<K>(
    api: Api<K>,
    cfg: watcher::Config,
    kind: Kind,
    cache: SharedCache,
    tx: Sender,
    convert: fn(&K) -> Result<Converted, ObjectError>,
) where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + fmt::Debug + Send + 'static,
{
    let mut stream = watcher::watcher(api, cfg).default_backoff().boxed();
    let mut relist: Option<Vec<Converted>> = None;
    let mut ever_synced = false;
    let convert_logged = |o: &K| match convert(o) {
        Ok(c) => Some(c),
        Err(e) => {
            log::warn!("skipped {e}");
            None
        }
    };
    while let Some(event) = stream.next().await {
        let change = match event {
            Err(e) => {
                // The stream backs off and retries (a 410 is a relist).
                log::warn!("watching {kind}: {e}");
                continue;
            }
            Ok(WatchEvent::Init) => {
                relist = Some(Vec::new());
                continue;
            }
            Ok(WatchEvent::InitApply(o)) => {
                if let (Some(buf), Some(c)) = (relist.as_mut(), convert_logged(&o)) {
                    buf.push(c);
                }
                continue;
            }
            Ok(WatchEvent::InitDone) => {
                let listed = relist.take().unwrap_or_default();
                let trigger_times = listed
                    .iter()
                    .filter_map(|c| if let Converted::Slice(_, _, t) = c { *t } else { None })
                    .collect();
                let objects = listed.len();
                cache.replace(kind, listed);
                log::info!("{} {kind}: {objects} object(s)", if ever_synced { "relisted" } else { "listed" });
                ever_synced = true;
                ApiChange { kind, objects, relist: true, trigger_times }
            }
            Ok(WatchEvent::Apply(o)) => {
                let Some(c) = convert_logged(&o) else {
                    // Now invalid: whatever was cached for it goes, and the
                    // rules follow (a change like a deletion).
                    cache.remove(kind, &meta_key(o.meta()));
                    let change = ApiChange { kind, objects: 1, relist: false, trigger_times: Vec::new() };
                    if tx.send(Event::Api(change)).is_err() {
                        return;
                    }
                    continue;
                };
                let t = cache.apply(c);
                ApiChange { kind, objects: 1, relist: false, trigger_times: t.into_iter().collect() }
            }
            Ok(WatchEvent::Delete(o)) => {
                cache.remove(kind, &meta_key(o.meta()));
                ApiChange { kind, objects: 1, relist: false, trigger_times: Vec::new() }
            }
        };
        if tx.send(Event::Api(change)).is_err() {
            return; // `run` is gone
        }
    }
}

/// The cache key of an object: its namespace (an empty or absent one is
/// `default`, as the API server defaults it) and name.
fn meta_key(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> ObjectKey {
    (
        meta.namespace.clone().filter(|n| !n.is_empty()).unwrap_or_else(|| "default".into()),
        meta.name.clone().unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_as_the_api_writes_it() {
        let t = parse_rfc3339("2024-02-29T12:34:56Z").unwrap();
        assert_eq!(t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs(), 1_709_210_096);
        let t = parse_rfc3339("1970-01-01T00:00:01.5Z").unwrap();
        assert_eq!(t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_millis(), 1500);
        for bad in ["", "2024-02-29", "2024-13-01T00:00:00Z", "2024-02-29T12:34:56+01:00", "x-y-zTa:b:cZ"] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn node_ips_internal_before_external_one_per_family() {
        let node: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n1", "labels": {"topology.kubernetes.io/zone": "z1"}},
            "spec": {"taints": [{"key": "other", "effect": "NoSchedule"}]},
            "status": {"addresses": [
                {"type": "Hostname", "address": "n1"},
                {"type": "ExternalIP", "address": "203.0.113.1"},
                {"type": "InternalIP", "address": "10.0.0.1"},
                {"type": "InternalIP", "address": "10.0.0.2"},
                {"type": "InternalIP", "address": "fd00::1"}]}
        }))
        .unwrap();
        let info = NodeInfo::from_api(&node);
        assert_eq!(info.node_ips(), ["10.0.0.1".parse::<IpAddr>().unwrap(), "fd00::1".parse().unwrap()]);
        assert_eq!(info.zone(), Some("z1"));
        assert!(info.eligible);
        let mut tainted = node.clone();
        tainted.spec.as_mut().unwrap().taints.as_mut().unwrap()[0].key = TO_BE_DELETED_TAINT.into();
        assert!(!NodeInfo::from_api(&tainted).eligible);
    }
}
