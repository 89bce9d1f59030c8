//! IPAM for the plugin: Calico IPAM in this process when `ipam.type` is
//! `calico-ipam`, any other IPAM plugin exec'd as a delegate (with our
//! environment and full stdin); either way released again if the ADD fails
//! after it.
//!
//! **Departure from Calico.** Calico's `calico` plugin execs `calico-ipam`
//! from `CNI_PATH`. We run the same code (`ipam_block::cni::CalicoIpam`,
//! what the `calico-ipam` binary's `main` calls) in this process, on the
//! plugin's own datastore handle. Why: measured on 2 cores with the file
//! store, the second process cost ~1 ms of CPU to start, and it read the
//! whole store log again (another ~1 ms at 300 pods, more at 900): a third
//! of an ADD's CPU, which is what bounds pods/s under a burst. The result is
//! what the delegate would have printed (the same code, and the result goes
//! through the same JSON in the config's version), errors carry the same
//! codes and the same `IPAM plugin calico-ipam: ` prefix. The `calico-ipam`
//! binary is unchanged and still works on its own for other runtimes and
//! plugins. A replacement `calico-ipam` in `CNI_PATH` is therefore not run
//! by `calico`: install it under another name and set `ipam.type` to it
//! (every other type is exec'd).
//!
//! In process, the ADD also writes the pod record in IPAM's own commit
//! ([`PodRecord`], `Ipam::assign_with`): the allocation and the record exist
//! together or not at all, and the ADD waits for one datastore commit (one
//! `fdatasync` on the file store) instead of two in a row. Rollback releases
//! the handle and deletes the record if it is still this container's. DEL
//! does the same in reverse: one commit releases the handle and deletes the
//! record ([`Delegate::del_with_record`]).

use std::sync::Arc;

use calico_store::cni::store_error;
use calico_store::model::{self, WorkloadEndpoint};
use calico_store::retry::{Cas, Retry};
use calico_store::{Datastore, DatastoreType, Op, StoreError};
use cni_proto::{CniError, CniResult, Command, Plugin, Request};
use ipam_block::cni::{ipam_error, CalicoIpam, IpamCniConf};
use ipam_block::{AssignedIp, Handle, IpamError};
use ipnetwork::IpNetwork;

use crate::dataplane::host_prefix;
use crate::endpoint;
use crate::errors::ERR_CALICO;

/// The pod record an in-process ADD writes in its allocation's commit, so
/// that both exist together or not at all, with one commit (and one
/// `fdatasync` on the file store) instead of two one after the other.
pub struct PodRecord<'a> {
    pub key: &'a str,
    pub container_id: &'a str,
    /// The record for the pod's addresses (/32, /128).
    pub build: &'a (dyn Fn(&[IpNetwork]) -> WorkloadEndpoint + Sync),
}

impl PodRecord<'_> {
    /// The write of the record for `assigned`: a create, or with
    /// `replace`, a replacement of whatever record is there now.
    fn op(&self, store: &dyn Datastore, assigned: &[AssignedIp], replace: bool) -> Result<Op, IpamError> {
        let ips: Vec<IpNetwork> = assigned.iter().map(|a| host_prefix(a.ip)).collect();
        let value = model::encode(&(self.build)(&ips));
        let key = self.key.to_string();
        let existing = if replace { store.get(self.key)?.map(|kv| kv.revision) } else { None };
        Ok(match existing {
            Some(revision) => Op::Update { key, value, revision },
            None => Op::Create { key, value },
        })
    }
}

/// The plugin's datastore handle, opened on first use and shared by the
/// threads of one command.
pub type SharedStore<'a> = dyn Fn() -> Result<Arc<dyn Datastore>, CniError> + Sync + 'a;

/// The file store reads its whole log on a handle's first use (1.2 MB at
/// 900 pods): done before IPAM takes the node's lock (`ipam.lock`), so that
/// the other ADDs and DELs of the node do not wait for it behind that lock.
/// etcd reads nothing up front (it would cost a request).
fn read_before_locking(conf: &IpamCniConf, store: &dyn Datastore) -> Result<(), CniError> {
    if matches!(conf.datastore.kind(), Ok(DatastoreType::File)) {
        store.ready().map_err(|e| store_error("datastore not ready", e))?;
    }
    Ok(())
}

/// The `ipam.type` run in this process.
pub const CALICO_IPAM: &str = "calico-ipam";

/// Where IPAM runs for one request.
pub enum Delegate<'a> {
    /// `ipam.type` is `calico-ipam`: Calico IPAM in this process, with its
    /// config as calico-ipam reads it.
    InProcess(Box<IpamCniConf>),
    /// Any other `ipam.type`: exec'd from `CNI_PATH`.
    Exec(&'a str),
}

impl<'a> Delegate<'a> {
    /// How `ipam_type` runs; for `calico-ipam` its config is read now (code
    /// 7 on bad values, prefixed like a delegate's error).
    pub fn new(req: &Request, ipam_type: &'a str) -> Result<Delegate<'a>, CniError> {
        if ipam_type != CALICO_IPAM {
            return Ok(Delegate::Exec(ipam_type));
        }
        IpamCniConf::from_netconf(&req.conf)
            .map(|c| Delegate::InProcess(Box::new(c)))
            .map_err(|e| e.context(&format!("IPAM plugin {ipam_type}")))
    }

    /// The `ipam.type`.
    pub fn name(&self) -> &str {
        match self {
            Delegate::InProcess(_) => CALICO_IPAM,
            Delegate::Exec(t) => t,
        }
    }

    fn context(&self, e: CniError) -> CniError {
        e.context(&format!("IPAM plugin {}", self.name()))
    }

    /// IPAM ADD. In process it commits through `store` (the plugin's own
    /// handle: one open and one read of the datastore per ADD), with
    /// `record` in the same commit. On success the allocation (and the
    /// record) is armed for rollback. A delegate writes no record: the
    /// caller does, after it.
    pub fn add(
        &'a self,
        req: &'a Request,
        store: &'a dyn Datastore,
        record: Option<&'a PodRecord<'a>>,
    ) -> Result<Allocation<'a>, CniError> {
        let (result, release) = match self {
            Delegate::Exec(t) => {
                let result = req.delegate(t, Command::Add).map_err(|e| self.context(e))?;
                (result.unwrap_or_default(), Release::Exec(t))
            }
            Delegate::InProcess(conf) => {
                let request = CalicoIpam::assign_request(req, conf).map_err(|e| self.context(e))?;
                read_before_locking(conf, store).map_err(|e| self.context(e))?;
                let assigned = match record {
                    None => CalicoIpam::assign_on_with(store, conf, &request, |_| Ok(Vec::new())),
                    Some(rec) => {
                        // A new pod's record is created without a read; a
                        // record of an earlier sandbox of the same pod makes
                        // the commit conflict, and it is replaced (Calico),
                        // reading it first.
                        let create = |a: &[AssignedIp]| Ok(vec![rec.op(store, a, false)?]);
                        match CalicoIpam::assign_on_with(store, conf, &request, create) {
                            Err(IpamError::Store(StoreError::Conflict { key })) if key == rec.key => {
                                log::info!("replacing the pod record {key} of an earlier sandbox");
                                let replace = |a: &[AssignedIp]| Ok(vec![rec.op(store, a, true)?]);
                                CalicoIpam::assign_on_with(store, conf, &request, replace)
                            }
                            other => other,
                        }
                    }
                }
                .map_err(|e| self.context(ipam_error(e).context("IPAM ADD")))?;
                let result = CalicoIpam::result_of(&request, assigned).map_err(|e| self.context(e));
                // What the delegate would have printed, read back as from its
                // stdout: the result in the config's version.
                let result = result.and_then(|r| {
                    CniResult::from_value(&r.to_json(req.version()))
                        .map_err(|e| self.context(e.context(&format!("result of {CALICO_IPAM}"))))
                });
                let release = Release::InProcess { conf, store, handle: request.handle, record };
                match result {
                    Ok(r) => (r, release),
                    Err(e) => {
                        // Assigned but unusable: give it back now.
                        release.run();
                        return Err(e);
                    }
                }
            }
        };
        log::info!(
            "IPAM {} assigned {:?}",
            self.name(),
            result.ips.iter().map(|i| i.address.to_string()).collect::<Vec<_>>()
        );
        Ok(Allocation { req, name: self.name(), release, result, armed: true })
    }

    /// IPAM DEL / CHECK / STATUS / GC. In process, DEL releases through the
    /// store `store` returns (the plugin's shared handle, opened on first
    /// use); the others are calico-ipam's commands run here.
    pub fn forward(&self, req: &Request, command: Command, store: &SharedStore) -> Result<(), CniError> {
        let outcome = match self {
            Delegate::Exec(t) => req.delegate(t, command).map(drop),
            Delegate::InProcess(conf) => match command {
                Command::Del => CalicoIpam::handle(req, conf).and_then(|h| {
                    let s = store()?;
                    read_before_locking(conf, s.as_ref())?;
                    CalicoIpam::release_on(s.as_ref(), conf, &h)
                }),
                Command::Check => CalicoIpam.check(req),
                Command::Status => CalicoIpam.status(req),
                Command::Gc => CalicoIpam.gc(req),
                Command::Add | Command::Version => {
                    Err(CniError::internal(format!("IPAM {command} is not forwarded")))
                }
            },
        };
        outcome.map_err(|e| e.context(&format!("IPAM plugin {} ({command})", self.name())))
    }
}

/// Why a joint DEL commit (IPAM release and pod record) was not made.
enum Joint {
    /// The record could not be read: IPAM releases alone.
    Record(CniError),
    /// IPAM failed: the record is deleted alone.
    Ipam(IpamError),
    /// The record kept changing: both alone.
    Exhausted,
}

impl From<calico_store::retry::Exhausted> for Joint {
    fn from(_: calico_store::retry::Exhausted) -> Joint {
        Joint::Exhausted
    }
}

impl Delegate<'_> {
    /// DEL of IPAM and of the pod record at `key` (if `container_id` owns
    /// it; the deleted record is returned, for the host veth it names).
    /// Best effort: both are attempted whatever the other does.
    ///
    /// In process, one commit releases the handle and deletes the record,
    /// as ADD writes both in one: a DEL waits for one datastore flush
    /// instead of two, on this thread instead of two. If that commit cannot
    /// be made (the record does not read, IPAM fails, the record keeps
    /// changing), each is done on its own. A delegate is exec'd on its own
    /// thread beside the record's deletion.
    pub fn del_with_record(
        &self,
        req: &Request,
        store: &SharedStore,
        key: &str,
        container_id: &str,
    ) -> (Result<(), CniError>, Result<Option<WorkloadEndpoint>, CniError>) {
        let record_alone = || store().and_then(|s| endpoint::delete_if_owned(&*s, key, container_id));
        let Delegate::InProcess(conf) = self else {
            return std::thread::scope(|s| {
                let ipam = s.spawn(|| self.forward(req, Command::Del, store));
                let record = record_alone();
                let ipam =
                    ipam.join().unwrap_or_else(|_| Err(CniError::internal("the IPAM DEL thread panicked")));
                (ipam, record)
            });
        };
        let ipam_alone = || self.forward(req, Command::Del, store);
        let Ok(handle) = CalicoIpam::handle(req, conf) else { return (ipam_alone(), record_alone()) };
        let opened = store().and_then(|s| read_before_locking(conf, s.as_ref()).map(|()| s));
        let Ok(s) = opened else { return (ipam_alone(), record_alone()) };
        let what = format!("release {handle} with pod record {key}");
        let joint = Retry::CAS.run(&what, |_| {
            let owned = endpoint::read_owned(s.as_ref(), key, container_id).map_err(Joint::Record)?;
            let extra: Vec<Op> = owned
                .iter()
                .map(|(_, revision)| Op::Delete { key: key.to_string(), revision: *revision })
                .collect();
            match CalicoIpam::release_on_with(s.as_ref(), conf, &handle, &extra) {
                Ok(()) => Ok(Cas::Done(owned.map(|(wep, _)| wep))),
                Err(IpamError::Store(StoreError::Conflict { key: k })) if k == key => {
                    Ok(Cas::Conflict { key: k })
                }
                Err(e) => Err(Joint::Ipam(e)),
            }
        });
        match joint {
            Ok(deleted) => (Ok(()), Ok(deleted)),
            Err(Joint::Record(e)) => (ipam_alone(), Err(e)),
            Err(Joint::Ipam(e)) => {
                let e =
                    ipam_error(e).context("IPAM DEL").context(&format!("IPAM plugin {CALICO_IPAM} (DEL)"));
                (Err(e), record_alone())
            }
            Err(Joint::Exhausted) => (ipam_alone(), record_alone()),
        }
    }
}

/// How an allocation is given back.
enum Release<'a> {
    /// IPAM DEL through the delegate.
    Exec(&'a str),
    /// The handle released in this process, through the ADD's store, and
    /// the pod record written with it deleted (if still this container's).
    InProcess {
        conf: &'a IpamCniConf,
        store: &'a dyn Datastore,
        handle: Handle,
        record: Option<&'a PodRecord<'a>>,
    },
}

impl Release<'_> {
    /// In process only (a delegate is released through its request).
    fn run(&self) {
        let Release::InProcess { conf, store, handle, record } = self else { return };
        if let Err(e) = CalicoIpam::release_on(*store, conf, handle) {
            log::error!("rollback IPAM DEL of {handle} failed: {e}");
        }
        if let Some(rec) = record {
            log::info!("rolling back: deleting pod record {}", rec.key);
            if let Err(e) = endpoint::delete_if_owned(*store, rec.key, rec.container_id) {
                log::error!("rollback of pod record {} failed: {e}", rec.key);
            }
        }
    }
}

/// An IPAM allocation that is released (IPAM DEL) on drop unless committed.
#[must_use = "dropping the allocation releases it"]
pub struct Allocation<'a> {
    req: &'a Request,
    /// The `ipam.type`.
    name: &'a str,
    release: Release<'a>,
    pub result: CniResult,
    armed: bool,
}

impl Allocation<'_> {
    /// The pod's addresses narrowed to /32 and /128 (Calico routes each pod
    /// address individually; the pool's prefix means nothing to the pod).
    pub fn pod_ips(&self) -> Result<Vec<IpNetwork>, CniError> {
        let ips: Vec<IpNetwork> = self.result.ips.iter().map(|c| host_prefix(c.address.ip())).collect();
        if ips.is_empty() {
            return Err(CniError::plugin(
                ERR_CALICO,
                format!("IPAM plugin {} returned no IP addresses", self.name),
                "",
            ));
        }
        Ok(ips)
    }

    /// Keep the allocation: the ADD succeeded.
    pub fn commit(mut self) -> CniResult {
        self.armed = false;
        std::mem::take(&mut self.result)
    }
}

impl Drop for Allocation<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let name = self.name;
        log::info!("rolling back: IPAM DEL through {name}");
        if let Release::Exec(t) = &self.release {
            if let Err(e) = self.req.delegate(t, Command::Del) {
                log::error!("rollback IPAM DEL through {name} failed: {e}");
            }
        }
        self.release.run();
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::ffi::OsString;
    use std::path::Path;

    use calico_store::file::FileStore;
    use cni_proto::{CniEnv, NetConf};
    use serde_json::json;

    use super::*;

    const NET: &str = "net1";

    /// A request as the runtime sends it to `calico`; CNI_PATH holds no
    /// plugin at all, so anything that execs calico-ipam fails.
    fn request(dir: &Path, cid: &str, args: &str, version: &str) -> Request {
        let conf = json!({
            "cniVersion": version, "name": NET, "type": "calico",
            "datastore_type": "file", "datastore_path": dir, "nodename": "node-1",
            "ipam": {"type": "calico-ipam", "ipv4_pools": ["10.9.0.0/24"]}
        });
        let stdin = conf.to_string().into_bytes();
        let env: BTreeMap<OsString, OsString> = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", cid),
            ("CNI_NETNS", dir.join("netns").to_str().unwrap()),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", args),
            ("CNI_PATH", dir.join("no-plugins-here").to_str().unwrap()),
        ]
        .into_iter()
        .map(|(k, v)| (k.into(), v.into()))
        .collect();
        Request { env: CniEnv::parse(env).unwrap(), conf: NetConf::parse(&stdin).unwrap(), stdin }
    }

    fn held(store: &dyn Datastore, cid: &str) -> Vec<std::net::IpAddr> {
        let handle = Handle::for_container(NET, cid).unwrap();
        ipam_block::Ipam::new(store, "node-1").ips_of_handle(&handle).unwrap()
    }

    fn shared(store: &Arc<dyn Datastore>) -> impl Fn() -> Result<Arc<dyn Datastore>, CniError> + Sync + '_ {
        || Ok(store.clone())
    }

    #[test]
    fn calico_ipam_runs_in_process_and_other_types_are_exec_d() {
        let dir = tempfile::tempdir().unwrap();
        let req = request(dir.path(), "c1", "", "1.0.0");
        assert!(matches!(Delegate::new(&req, "calico-ipam").unwrap(), Delegate::InProcess(_)));
        assert!(matches!(Delegate::new(&req, "host-local").unwrap(), Delegate::Exec("host-local")));
        // A replacement calico-ipam installed under another name is exec'd.
        assert!(matches!(Delegate::new(&req, "my-calico-ipam").unwrap(), Delegate::Exec(_)));
    }

    /// The in-process ADD answers what the calico-ipam plugin answers for the
    /// same request on an equal store (its `Plugin::add`, what the binary
    /// runs), in every result version.
    #[test]
    fn in_process_add_result_equals_calico_ipam_s() {
        for version in ["0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
            let (ours, theirs) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
            let store: Arc<dyn Datastore> = Arc::new(FileStore::open(ours.path()).unwrap());
            for (cid, args) in [("c1", ""), ("c2", "IgnoreUnknown=1;IP=10.9.0.77")] {
                let req = request(ours.path(), cid, args, version);
                let d = Delegate::new(&req, CALICO_IPAM).unwrap();
                let got = d.add(&req, store.as_ref(), None).unwrap().commit();
                let want = CalicoIpam.add(&request(theirs.path(), cid, args, version)).unwrap();
                let want = CniResult::from_value(&want.to_json(version)).unwrap();
                assert_eq!(got, want, "{version} {cid}");
                assert_eq!(got.ips.len(), 1);
                assert_eq!(held(store.as_ref(), cid), vec![got.ips[0].address.ip()]);
            }
        }
    }

    #[test]
    fn a_dropped_allocation_is_released_and_a_committed_one_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Datastore> = Arc::new(FileStore::open(dir.path()).unwrap());
        let req = request(dir.path(), "c1", "", "1.0.0");
        let d = Delegate::new(&req, CALICO_IPAM).unwrap();
        let alloc = d.add(&req, store.as_ref(), None).unwrap();
        let ip = alloc.pod_ips().unwrap()[0].ip();
        assert_eq!(held(store.as_ref(), "c1"), vec![ip]);
        drop(alloc);
        assert!(held(store.as_ref(), "c1").is_empty(), "rolled back");
        // A fresh handle on the store sees the rollback too (it was committed).
        let reopened = FileStore::open(dir.path()).unwrap();
        assert!(held(&reopened, "c1").is_empty());

        let kept = d.add(&req, store.as_ref(), None).unwrap().commit();
        assert_eq!(held(store.as_ref(), "c1"), vec![kept.ips[0].address.ip()]);
        // DEL releases, and again is no error.
        d.forward(&req, Command::Del, &shared(&store)).unwrap();
        assert!(held(store.as_ref(), "c1").is_empty());
        d.forward(&req, Command::Del, &shared(&store)).unwrap();
    }

    fn wep(cid: &str, ips: &[IpNetwork]) -> WorkloadEndpoint {
        let args = cni_proto::CniArgs::parse("K8S_POD_NAMESPACE=ns;K8S_POD_NAME=web-0").unwrap();
        let cid = cni_proto::ContainerId::parse(cid).unwrap();
        let ifname = cni_proto::IfName::parse("eth0").unwrap();
        let w = crate::identity::Workload::new(&args, &cid, &ifname, "node-1").unwrap();
        endpoint::build(&w, "cali0", "02:00:00:00:00:01", ips, NET)
    }

    fn record_of(store: &dyn Datastore, key: &str) -> Option<(WorkloadEndpoint, i64)> {
        store.get(key).unwrap().map(|kv| (model::decode(&kv).unwrap(), kv.revision))
    }

    /// In process, the pod record is written in the allocation's commit (one
    /// revision for both), replaces a record of an earlier sandbox of the
    /// pod, and is deleted with the allocation on rollback.
    #[test]
    fn the_pod_record_goes_with_the_allocation() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Datastore> = Arc::new(FileStore::open(dir.path()).unwrap());
        let key = "/calico/resources/v3/projectcalico.org/workloadendpoints/ns/node--1-k8s-web--0-eth0";
        for cid in ["c1", "c2"] {
            let build = |ips: &[IpNetwork]| wep(cid, ips);
            let rec = PodRecord { key, container_id: cid, build: &build };
            let req = request(dir.path(), cid, "", "1.0.0");
            let d = Delegate::new(&req, CALICO_IPAM).unwrap();
            let before = store.revision().unwrap();
            let result = d.add(&req, store.as_ref(), Some(&rec)).unwrap().commit();
            if cid == "c2" {
                // c1 created the pool and claimed the block first.
                assert_eq!(store.revision().unwrap(), before + 1, "one commit for c2");
            }
            let (doc, rev) = record_of(store.as_ref(), key).expect("record written");
            assert_eq!(doc.spec.container_id, cid, "c2 replaced c1's record");
            assert_eq!(doc.spec.ip_networks, vec![host_prefix(result.ips[0].address.ip())]);
            let handle = Handle::for_container(NET, cid).unwrap();
            assert_eq!(store.get(&handle.key()).unwrap().unwrap().revision, rev);
        }
        // c3's ADD fails later: its allocation and record go, c2's record
        // (replaced by c3's) is not restored, as before (Calico's replace).
        let build = |ips: &[IpNetwork]| wep("c3", ips);
        let rec = PodRecord { key, container_id: "c3", build: &build };
        let req = request(dir.path(), "c3", "", "1.0.0");
        let d = Delegate::new(&req, CALICO_IPAM).unwrap();
        let alloc = d.add(&req, store.as_ref(), Some(&rec)).unwrap();
        assert_eq!(record_of(store.as_ref(), key).unwrap().0.spec.container_id, "c3");
        drop(alloc);
        assert!(held(store.as_ref(), "c3").is_empty());
        assert!(record_of(store.as_ref(), key).is_none());
        assert_eq!(held(store.as_ref(), "c2").len(), 1, "c2's address is not touched");
    }

    /// In process, DEL releases the address and deletes the pod record in
    /// one commit; another container's record is kept; a second DEL finds
    /// nothing; a record that does not decode still lets IPAM release.
    #[test]
    fn del_releases_and_deletes_the_record_in_one_commit() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Datastore> = Arc::new(FileStore::open(dir.path()).unwrap());
        let key = "/calico/resources/v3/projectcalico.org/workloadendpoints/ns/node--1-k8s-web--0-eth0";
        let build = |ips: &[IpNetwork]| wep("c1", ips);
        let rec = PodRecord { key, container_id: "c1", build: &build };
        let req = request(dir.path(), "c1", "", "1.0.0");
        let d = Delegate::new(&req, CALICO_IPAM).unwrap();
        d.add(&req, store.as_ref(), Some(&rec)).unwrap().commit();
        // An older sandbox's DEL (another container) keeps the record.
        let old = request(dir.path(), "c0", "", "1.0.0");
        let (ipam, owned) =
            Delegate::new(&old, CALICO_IPAM).unwrap().del_with_record(&old, &shared(&store), key, "c0");
        ipam.unwrap();
        assert!(owned.unwrap().is_none());
        assert!(record_of(store.as_ref(), key).is_some());

        let before = store.revision().unwrap();
        let (ipam, owned) = d.del_with_record(&req, &shared(&store), key, "c1");
        ipam.unwrap();
        assert_eq!(owned.unwrap().unwrap().spec.container_id, "c1");
        assert_eq!(store.revision().unwrap(), before + 1, "one commit for both");
        assert!(held(store.as_ref(), "c1").is_empty());
        assert!(record_of(store.as_ref(), key).is_none());
        let (ipam, owned) = d.del_with_record(&req, &shared(&store), key, "c1");
        ipam.unwrap();
        assert!(owned.unwrap().is_none(), "idempotent");

        let req2 = request(dir.path(), "c2", "", "1.0.0");
        let d2 = Delegate::new(&req2, CALICO_IPAM).unwrap();
        d2.add(&req2, store.as_ref(), None).unwrap().commit();
        store.create(key, b"{").unwrap();
        let (ipam, owned) = d2.del_with_record(&req2, &shared(&store), key, "c2");
        ipam.unwrap();
        assert_eq!(owned.unwrap_err().code, 100);
        assert!(held(store.as_ref(), "c2").is_empty(), "released although the record did not read");
    }

    #[test]
    fn a_failed_in_process_add_leaks_nothing_and_says_who_failed() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Datastore> = Arc::new(FileStore::open(dir.path()).unwrap());
        // Outside every pool.
        let req = request(dir.path(), "c1", "IgnoreUnknown=1;IP=192.0.2.7", "1.0.0");
        let d = Delegate::new(&req, CALICO_IPAM).unwrap();
        let e = d.add(&req, store.as_ref(), None).err().unwrap();
        assert!(e.msg.starts_with("IPAM plugin calico-ipam: IPAM ADD"), "{e}");
        assert!(held(store.as_ref(), "c1").is_empty());
        assert!(store.list("/calico/ipam/v2/handle/").unwrap().is_empty());
        // A bad IP= fails before the store is touched, with the delegate's code.
        let req = request(dir.path(), "c2", "IgnoreUnknown=1;IP=bogus", "1.0.0");
        let d = Delegate::new(&req, CALICO_IPAM).unwrap();
        let e = d.add(&req, store.as_ref(), None).err().unwrap();
        assert_eq!(e.code, CalicoIpam.add(&req).err().unwrap().code);
        // A failed store on DEL is the delegate-prefixed error, not a panic.
        let failing = || Err(CniError::try_again_later("store down", ""));
        let e = d.forward(&req, Command::Del, &failing).err().unwrap();
        assert_eq!(e.code, 11);
        assert!(e.msg.starts_with("IPAM plugin calico-ipam (DEL): "), "{e}");
    }
}
