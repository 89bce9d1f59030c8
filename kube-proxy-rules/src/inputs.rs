//! From what the user has to what a sync renders: the Kubernetes objects
//! (files) and the pod records (the Calico datastore) become a [`ProxyState`].

use std::collections::BTreeMap;
use std::path::PathBuf;

use calico_store::model::{self, WorkloadEndpoint};
use calico_store::{Datastore, Revision};
use ipnetwork::IpNetwork;

use crate::k8s::{self, ObjectError, ObjectRef, Objects};
use crate::model::endpoints::{self, EndpointsMap, PodCatalog, SliceEndpoints};
use crate::model::service::{self, Converted};
use crate::model::ProxyState;
use crate::validate::{dns1123_label, dns1123_subdomain};

/// The outcome of one load: the state, the bad objects (skipped) and notes
/// (allocations, services that are not proxied).
#[derive(Debug, Default)]
pub struct Loaded {
    pub state: ProxyState,
    pub errors: Vec<ObjectError>,
    pub notes: Vec<String>,
}

/// Read the pod records (WorkloadEndpoints). A record that does not decode is
/// an error naming its key; the others are used.
pub fn load_pod_records(store: &dyn Datastore) -> Result<(Vec<WorkloadEndpoint>, Vec<ObjectError>), String> {
    let prefix = model::workload_endpoints_prefix();
    let kvs = store.list(&prefix).map_err(|e| format!("listing pod records under {prefix}: {e}"))?;
    let mut weps = Vec::with_capacity(kvs.len());
    let mut errors = Vec::new();
    for kv in &kvs {
        match model::decode::<WorkloadEndpoint>(kv) {
            Ok(w) => weps.push(w),
            Err(e) => {
                let rest = kv.key.strip_prefix(&prefix).unwrap_or(&kv.key);
                let (ns, name) = rest.split_once('/').unwrap_or(("", rest));
                errors.push(ObjectError {
                    object: ObjectRef {
                        kind: "WorkloadEndpoint".into(),
                        namespace: ns.to_string(),
                        name: name.to_string(),
                    },
                    source_file: kv.key.clone(),
                    reason: e.to_string(),
                });
            }
        }
    }
    Ok((weps, errors))
}

/// The pod records whose namespace and pod name are what the API server
/// admits (a DNS-1123 label and subdomain); the others are reported and
/// skipped. Of a record, only its namespace and pod name are matched against
/// the manifests (its IPs are parsed, its ports matched by name and used as
/// numbers); none of its text reaches a payload, but a record that names no
/// possible pod is reported rather than silently never matching.
pub fn valid_pod_records<'a>(
    weps: &'a [WorkloadEndpoint],
    errors: &mut Vec<ObjectError>,
) -> Vec<&'a WorkloadEndpoint> {
    let mut out = Vec::with_capacity(weps.len());
    for w in weps {
        let ns = w.metadata.namespace.as_deref().unwrap_or("default");
        let pod = if w.spec.pod.is_empty() { &w.spec.workload } else { &w.spec.pod };
        let problem =
            dns1123_label(ns).map_err(|e| format!("invalid metadata.namespace: {e}")).and_then(|_| match pod
                .is_empty()
            {
                true => Ok(()),
                false => dns1123_subdomain(pod).map_err(|e| format!("invalid spec.pod {pod:?}: {e}")),
            });
        match problem {
            Ok(()) => out.push(w),
            Err(reason) => errors.push(ObjectError {
                object: ObjectRef {
                    kind: "WorkloadEndpoint".into(),
                    namespace: ns.to_string(),
                    name: w.metadata.name.clone(),
                },
                source_file: "datastore".into(),
                reason,
            }),
        }
    }
    out
}

/// The store-wide revision, to notice changed pod records cheaply.
pub fn store_revision(store: &dyn Datastore) -> Result<Revision, String> {
    store.revision().map_err(|e| format!("reading the datastore revision: {e}"))
}

/// Build the state: allocate what the apiserver would, convert services,
/// take endpoints from slices, and from pod records for selector-based
/// services without a slice.
pub fn build_state(objs: &Objects, weps: &[WorkloadEndpoint], service_cidrs: &[IpNetwork]) -> Loaded {
    let mut services = objs.services.clone();
    let notes = service::allocate(&mut services, service_cidrs);
    let services: Vec<&k8s::Service> = services.iter().collect();
    let converted: Vec<SliceEndpoints> = objs.slices.iter().map(endpoints::convert_slice).collect();
    let slices: Vec<&SliceEndpoints> = converted.iter().collect();
    let mut out = build_state_from(&services, &slices, objs, weps);
    let mut all_notes = notes;
    all_notes.append(&mut out.notes);
    out.notes = all_notes;
    out
}

/// Build the state from services that already have what the apiserver
/// allocates (the API's objects, or manifests after
/// [`service::allocate`]) and converted slices, by reference (`run` builds
/// it from its caches on every sync without copying them); `catalog` gives
/// the Pods and Deployments the pod records are matched with.
pub fn build_state_from(
    services: &[&k8s::Service],
    slices: &[&SliceEndpoints],
    catalog: &Objects,
    weps: &[WorkloadEndpoint],
) -> Loaded {
    let mut out = Loaded::default();
    let mut ports = Vec::new();
    let mut selectors: Vec<BTreeMap<String, String>> = Vec::new();
    for svc in services {
        match service::convert(svc, &svc.source) {
            Ok(Converted::Ports(p)) => {
                for sp in p {
                    selectors.push(svc.spec.selector.clone().unwrap_or_default());
                    ports.push(sp);
                }
            }
            Ok(Converted::Skipped(why)) => {
                out.notes.push(format!("Service {}/{}: {why}", svc.metadata.ns(), svc.metadata.name()))
            }
            Err(e) => out.errors.push(e),
        }
    }
    // Two inputs defining the same service: the first wins, the second is reported.
    let mut seen = std::collections::HashSet::new();
    let mut keep = Vec::with_capacity(ports.len());
    for (sp, sel) in ports.into_iter().zip(selectors) {
        if seen.insert((endpoints::key_of(&sp), sp.family())) {
            keep.push((sp, sel));
        } else {
            out.errors.push(ObjectError {
                object: ObjectRef {
                    kind: "Service".into(),
                    namespace: sp.namespace.clone(),
                    name: sp.name.clone(),
                },
                source_file: String::new(),
                reason: format!("defined more than once (port {}): the later one is ignored", sp.name_string),
            });
        }
    }

    let mut eps: EndpointsMap = endpoints::merge_slices(slices.iter().copied(), &mut out.errors);
    let with_slices = endpoints::services_with_slices(slices.iter().copied());
    let selector_based: Vec<_> = keep
        .iter()
        .filter(|(sp, sel)| {
            !sel.is_empty() && !with_slices.contains(&(sp.namespace.clone(), sp.name.clone()))
        })
        .cloned()
        .collect();
    // Endpoints on a Node given as a manifest get its zone (topology hints).
    let zones: BTreeMap<String, String> = catalog
        .nodes
        .iter()
        .filter_map(|n| {
            let zone = n.metadata.labels.get(crate::model::topology::ZONE_LABEL)?;
            (!zone.is_empty()).then(|| (n.metadata.name().to_string(), zone.clone()))
        })
        .collect();
    let catalog = PodCatalog::new(catalog);
    let weps = valid_pod_records(weps, &mut out.errors);
    eps.extend(endpoints::from_pod_records(&selector_based, &weps, &catalog));
    endpoints::fill_zones(&mut eps, &zones);

    let mut services: Vec<_> = keep.into_iter().map(|(sp, _)| sp).collect();
    services.sort_by(|a, b| (&a.name_string, a.protocol).cmp(&(&b.name_string, b.protocol)));
    out.state = ProxyState { services, endpoints: eps };
    out
}

/// Load the files and build the state in one go (pod records already read).
pub fn load(paths: &[PathBuf], weps: &[WorkloadEndpoint], service_cidrs: &[IpNetwork]) -> Loaded {
    let (objs, mut errors) = k8s::load(paths);
    let mut loaded = build_state(&objs, weps, service_cidrs);
    errors.append(&mut loaded.errors);
    loaded.errors = errors;
    loaded
}
