//! The pod record: the WorkloadEndpoint written on ADD and removed on DEL
//! (only by the container that owns it) and by GC.

use std::collections::BTreeMap;

use calico_store::model::{self, ObjectMeta, WorkloadEndpoint, WorkloadEndpointSpec};
use calico_store::retry::{Cas, Retry};
use calico_store::{Datastore, KeyValue, Revision, StoreError};
use cni_proto::CniError;
use ipnetwork::IpNetwork;

use crate::errors::store_error;
use crate::identity::{Orchestrator, Workload};

/// The record for a wired pod. `network` becomes its profile (Calico's
/// behaviour without `policy.type: k8s`), which is also how GC finds the
/// records of one network.
pub fn build(w: &Workload, host_veth: &str, mac: &str, ips: &[IpNetwork], network: &str) -> WorkloadEndpoint {
    let mut labels = BTreeMap::new();
    labels.insert("projectcalico.org/namespace".to_string(), w.namespace.clone());
    labels.insert("projectcalico.org/orchestrator".to_string(), w.orchestrator.as_str().to_string());
    let meta = ObjectMeta {
        name: w.endpoint_name(),
        namespace: Some(w.namespace.clone()),
        labels,
        creation_timestamp: None,
        uid: None,
    };
    let spec = WorkloadEndpointSpec {
        orchestrator: w.orchestrator.as_str().to_string(),
        workload: match w.orchestrator {
            Orchestrator::K8s => String::new(),
            Orchestrator::Cni => w.container_id.to_string(),
        },
        node: w.node.clone(),
        container_id: w.container_id.to_string(),
        pod: w.pod.clone().unwrap_or_default(),
        endpoint: w.ifname.to_string(),
        interface_name: host_veth.to_string(),
        mac: mac.to_string(),
        ip_networks: ips.to_vec(),
        profiles: vec![network.to_string()],
        ports: Vec::new(),
    };
    WorkloadEndpoint::new("WorkloadEndpoint", meta, spec)
}

fn read(ds: &dyn Datastore, key: &str) -> Result<Option<(WorkloadEndpoint, Revision)>, CniError> {
    match ds.get(key).map_err(|e| store_error("read pod record", e))? {
        None => Ok(None),
        Some(kv) => {
            let wep: WorkloadEndpoint =
                model::decode(&kv).map_err(|e| store_error("decode pod record", e))?;
            Ok(Some((wep, kv.revision)))
        }
    }
}

/// A pod record this ADD wrote; deleted again on drop (if it is still
/// ours) unless [`Recorded::commit`]ted, so a failed ADD leaves no record.
#[must_use = "dropping the record deletes it"]
pub struct Recorded<'a> {
    ds: &'a dyn Datastore,
    key: &'a str,
    container_id: String,
    armed: bool,
}

impl Recorded<'_> {
    /// Keep the record: the ADD succeeded.
    pub fn commit(mut self) {
        self.armed = false;
    }
}

impl Drop for Recorded<'_> {
    fn drop(&mut self) {
        if self.armed {
            log::info!("rolling back: deleting pod record {}", self.key);
            if let Err(e) = delete_if_owned(self.ds, self.key, &self.container_id) {
                log::error!("rollback of pod record {} failed: {e}", self.key);
            }
        }
    }
}

/// Create or replace the record at `key` (a re-ADD of a pod replaces the
/// record of its previous sandbox, as Calico does). A new pod's key is
/// absent, so creating is tried first: one datastore commit, no read.
pub fn put<'a>(
    ds: &'a dyn Datastore,
    key: &'a str,
    wep: &WorkloadEndpoint,
) -> Result<Recorded<'a>, CniError> {
    let value = model::encode(wep);
    let recorded = Recorded { ds, key, container_id: wep.spec.container_id.clone(), armed: true };
    let what = format!("write pod record {key}");
    // A new pod's record is created in one commit, without a read: a
    // conflict (a record of an earlier sandbox) makes the next attempts read.
    Retry::CAS.run(&what, |n| {
        let res = if n == 0 {
            ds.create(key, &value)
        } else {
            match ds.get(key).map_err(|e| store_error("read pod record", e))? {
                None => ds.create(key, &value),
                Some(kv) => ds.update(key, &value, kv.revision),
            }
        };
        Cas::of_write(res).map_err(|e| store_error(&what, e))
    })?;
    Ok(recorded)
}

/// Delete the record at `key` if it belongs to `container_id` (or names no
/// container). A record of another container (a newer sandbox of the same
/// pod) is kept. Returns the deleted record.
pub fn delete_if_owned(
    ds: &dyn Datastore,
    key: &str,
    container_id: &str,
) -> Result<Option<WorkloadEndpoint>, CniError> {
    let what = format!("delete pod record {key}");
    Retry::CAS.run(&what, |_| {
        let Some((wep, rev)) = read_owned(ds, key, container_id)? else { return Ok(Cas::Done(None)) };
        Cas::of_write(ds.delete(key, rev).map(|_| Some(wep))).map_err(|e| store_error(&what, e))
    })
}

/// The record at `key` and its revision if it belongs to `container_id` (or
/// names no container): what [`delete_if_owned`] would delete. A record of
/// another container (a newer sandbox of the same pod) is `None`.
pub fn read_owned(
    ds: &dyn Datastore,
    key: &str,
    container_id: &str,
) -> Result<Option<(WorkloadEndpoint, Revision)>, CniError> {
    let Some((wep, rev)) = read(ds, key)? else { return Ok(None) };
    if !wep.spec.container_id.is_empty() && wep.spec.container_id != container_id {
        log::info!(
            "pod record {key} belongs to container {}, not {container_id}: kept",
            wep.spec.container_id
        );
        return Ok(None);
    }
    Ok(Some((wep, rev)))
}

/// Delete the record at `key` only if it is still at `revision` (GC).
/// `Ok(false)` if it changed or vanished meanwhile.
pub fn delete_at(ds: &dyn Datastore, key: &str, revision: Revision) -> Result<bool, CniError> {
    match ds.delete(key, revision) {
        Ok(_) => Ok(true),
        Err(StoreError::Conflict { .. }) => Ok(false),
        Err(e) => Err(store_error(&format!("delete pod record {key}"), e)),
    }
}

/// One stored record with where it lives.
#[derive(Debug, Clone)]
pub struct Stored {
    pub key: String,
    pub revision: Revision,
    pub wep: WorkloadEndpoint,
}

/// Every record of `node` whose profile is `network`. Undecodable records
/// are skipped with a warning (never deleted: they are not provably ours).
pub fn list_for(ds: &dyn Datastore, node: &str, network: &str) -> Result<Vec<Stored>, CniError> {
    let kvs = ds.list(&model::workload_endpoints_prefix()).map_err(|e| store_error("list pod records", e))?;
    Ok(kvs.iter().filter_map(|kv| decode_for(kv, node, network)).collect())
}

fn decode_for(kv: &KeyValue, node: &str, network: &str) -> Option<Stored> {
    match model::decode::<WorkloadEndpoint>(kv) {
        Ok(wep) if wep.spec.node == node && wep.spec.profiles.iter().any(|p| p == network) => {
            Some(Stored { key: kv.key.clone(), revision: kv.revision, wep })
        }
        Ok(_) => None,
        Err(e) => {
            log::warn!("skipping undecodable pod record: {e}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cni_proto::{CniArgs, ContainerId, IfName};

    fn store() -> (tempfile::TempDir, calico_store::file::FileStore) {
        let d = tempfile::tempdir().unwrap();
        let s = calico_store::file::FileStore::open(d.path().join("store")).unwrap();
        (d, s)
    }

    fn wl(args: &str, cid: &str) -> Workload {
        Workload::new(
            &CniArgs::parse(args).unwrap(),
            &ContainerId::parse(cid).unwrap(),
            &IfName::parse("eth0").unwrap(),
            "node1",
        )
        .unwrap()
    }

    #[test]
    fn record_fields() {
        let w = wl("K8S_POD_NAMESPACE=ns1;K8S_POD_NAME=web-1", "c1");
        let wep =
            build(&w, "cali123", "02:00:00:00:00:01", &["10.0.0.5/32".parse().unwrap()], "k8s-pod-network");
        let v = serde_json::to_value(&wep).unwrap();
        assert_eq!(v["kind"], "WorkloadEndpoint");
        assert_eq!(v["metadata"]["name"], "node1-k8s-web--1-eth0");
        assert_eq!(v["metadata"]["namespace"], "ns1");
        assert_eq!(v["spec"]["containerID"], "c1");
        assert_eq!(v["spec"]["interfaceName"], "cali123");
        assert_eq!(v["spec"]["endpoint"], "eth0");
        assert_eq!(v["spec"]["pod"], "web-1");
        assert_eq!(v["spec"]["orchestrator"], "k8s");
        assert_eq!(v["spec"]["ipNetworks"], serde_json::json!(["10.0.0.5/32"]));
        assert_eq!(v["spec"]["profiles"], serde_json::json!(["k8s-pod-network"]));
        let c = build(&wl("", "c2"), "calic2", "m", &[], "n");
        assert_eq!(c.spec.orchestrator, "cni");
        assert_eq!(c.spec.workload, "c2");
        assert_eq!(c.metadata.namespace.as_deref(), Some("default"));
    }

    #[test]
    fn put_replace_and_owned_delete() {
        let (_d, s) = store();
        let old = wl("K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p", "old");
        let new = wl("K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p", "new");
        let key = old.endpoint_key();
        put(&s, &key, &build(&old, "cali1", "m", &[], "net")).unwrap().commit();
        put(&s, &key, &build(&new, "cali1", "m", &[], "net")).unwrap().commit();
        // The stale sandbox's DEL keeps the newer record.
        assert!(delete_if_owned(&s, &key, "old").unwrap().is_none());
        assert!(s.get(&key).unwrap().is_some());
        assert_eq!(list_for(&s, "node1", "net").unwrap().len(), 1);
        assert!(list_for(&s, "node2", "net").unwrap().is_empty());
        assert!(list_for(&s, "node1", "other").unwrap().is_empty());
        let gone = delete_if_owned(&s, &key, "new").unwrap().unwrap();
        assert_eq!(gone.spec.container_id, "new");
        assert!(s.get(&key).unwrap().is_none());
        assert!(delete_if_owned(&s, &key, "new").unwrap().is_none(), "idempotent");
    }

    #[test]
    fn gc_delete_is_conditional_and_corrupt_records_are_skipped() {
        let (_d, s) = store();
        let w = wl("", "c9");
        let key = w.endpoint_key();
        put(&s, &key, &build(&w, "calic9", "m", &[], "net")).unwrap().commit();
        let stored = list_for(&s, "node1", "net").unwrap().pop().unwrap();
        put(&s, &key, &build(&w, "calic9", "m2", &[], "net")).unwrap().commit();
        assert!(!delete_at(&s, &key, stored.revision).unwrap(), "changed since listed");
        let fresh = list_for(&s, "node1", "net").unwrap().pop().unwrap();
        assert!(delete_at(&s, &key, fresh.revision).unwrap());
        s.create(&format!("{}default/junk", model::workload_endpoints_prefix()), b"{").unwrap();
        assert!(list_for(&s, "node1", "net").unwrap().is_empty());
        let e = read(&s, &format!("{}default/junk", model::workload_endpoints_prefix())).unwrap_err();
        assert_eq!(e.code, 100);
    }
}
