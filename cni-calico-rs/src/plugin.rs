//! The `calico` plugin: ADD, DEL, CHECK, STATUS, GC.

use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use calico_store::Datastore;
use cni_proto::{CniError, CniResult, Command, Interface, IpConfig, Plugin, Request, Route};
use ipnetwork::IpNetwork;
use netlink_util::MacAddr;

use crate::config::CalicoConf;
use crate::dataplane::{self, Expected, Families, VethPlan, GATEWAY_V4};
use crate::endpoint;
use crate::errors::{store_error, ERR_CALICO};
use crate::identity::{Orchestrator, Workload};
use crate::ipam::{Delegate, PodRecord};

/// The plugin; stateless, everything comes from the request.
pub struct Calico;

/// What every attachment command needs: config, node, identity.
struct Context {
    conf: CalicoConf,
    workload: Workload,
}

impl Context {
    fn new(req: &Request) -> Result<Context, CniError> {
        let conf = CalicoConf::from_netconf(&req.conf)?;
        let node = conf.nodename()?;
        let workload = Workload::new(req.args(), req.container_id()?, req.ifname()?, &node)?;
        Ok(Context { conf, workload })
    }
}

fn open_store(conf: &CalicoConf) -> Result<Arc<dyn Datastore>, CniError> {
    calico_store::open(&conf.datastore).map_err(|e| store_error("open the datastore", e))
}

/// The families calico-ipam will assign, known from its config keys before
/// it answers; another IPAM plugin's answer cannot be predicted.
fn expected_families(conf: &CalicoConf) -> Option<Families> {
    (conf.ipam.ipam_type == "calico-ipam")
        .then(|| Families { v4: conf.assign_ipv4(), v6: conf.assign_ipv6() })
}

fn default_v4() -> IpNetwork {
    netlink_util::Route::default_v4().dst
}

fn default_v6() -> IpNetwork {
    netlink_util::Route::default_v6().dst
}

/// The ADD result: after whatever a previous plugin reported (chaining),
/// the host veth, then the pod interface (with its sandbox), the pod's
/// addresses pointing at it, and its default routes.
fn build_result(
    req: &Request,
    wired: &dataplane::Wired,
    ips: &[IpNetwork],
    mtu: u32,
    netns: &Path,
) -> CniResult {
    let mut result = req.conf.prev_result.clone().unwrap_or_default();
    let pod_idx = result.interfaces.len() + 1;
    result.interfaces.push(Interface {
        name: wired.host.name.clone(),
        mac: Some(MacAddr::CALICO_HOST.to_string()),
        mtu: Some(mtu),
        ..Default::default()
    });
    result.interfaces.push(Interface {
        name: wired.pod.name.clone(),
        mac: wired.pod.mac.map(|m| m.to_string()),
        mtu: Some(mtu),
        sandbox: Some(netns.display().to_string()),
        ..Default::default()
    });
    for ip in ips {
        result.ips.push(IpConfig { address: *ip, gateway: None, interface: Some(pod_idx) });
    }
    if ips.iter().any(IpNetwork::is_ipv4) {
        result.routes.push(Route::new(default_v4(), Some(IpAddr::V4(GATEWAY_V4))));
    }
    if let Some(ll) = wired.host_link_local {
        result.routes.push(Route::new(default_v6(), Some(IpAddr::V6(ll))));
    }
    result
}

/// DNS from the IPAM result, else from the config's `dns`.
fn with_dns(mut result: CniResult, ipam_result: CniResult, req: &Request) -> CniResult {
    if !ipam_result.dns.is_empty() {
        result.dns = ipam_result.dns;
    } else if let Some(dns) = &req.conf.dns {
        result.dns = dns.clone();
    }
    result
}

impl Plugin for Calico {
    fn add(&self, req: &Request) -> Result<CniResult, CniError> {
        let ctx = Context::new(req)?;
        let ifname = ctx.workload.ifname.as_str();
        let netns_path = req.netns().ok_or_else(|| CniError::missing_env(&["CNI_NETNS"]))?;
        let netns = dataplane::open_netns(netns_path)?;
        // Spec: ADD onto an existing interface is an error. Checked before
        // IPAM so that nothing is allocated (or rolled back) for it.
        dataplane::pod_precheck(&netns, ifname)?;
        let host_name = ctx.workload.host_veth_name();
        // A k8s veth name is per pod, so an existing one is a stale sandbox's
        // and is replaced (Calico). A cni one is `cali` + the container ID's
        // first 11 characters: an existing one may belong to another live
        // container whose ID shares them, so it is an error, not a deletion.
        if ctx.workload.orchestrator == Orchestrator::Cni && dataplane::host_link_exists(&host_name)? {
            return Err(CniError::plugin(
                ERR_CALICO,
                format!("host interface {host_name} already exists"),
                "another container whose ID starts with the same 11 characters, or a leftover that DEL removes",
            ));
        }
        let store = open_store(&ctx.conf)?;
        let delegate = Delegate::new(req, &ctx.conf.ipam.ipam_type)?;
        let mtu = ctx.conf.mtu();
        // Chosen here rather than by the kernel, so that the pod record can
        // be written before the veth exists.
        let pod_mac = dataplane::random_pod_mac();
        let plan = VethPlan {
            host_name: &host_name,
            ifname,
            netns: &netns,
            mtu,
            num_queues: ctx.conf.num_queues,
            expected: expected_families(&ctx.conf),
            allow_ip_forwarding: ctx.conf.container_settings.allow_ip_forwarding,
            pod_mac: Some(pod_mac),
        };
        let key = ctx.workload.endpoint_key();
        let pod_mac = pod_mac.to_string();
        let build =
            |ips: &[IpNetwork]| endpoint::build(&ctx.workload, &host_name, &pod_mac, ips, &req.conf.name);
        let record = PodRecord { key: &key, container_id: ctx.workload.container_id.as_str(), build: &build };
        // In process, the pod record goes into IPAM's commit.
        let in_process = matches!(delegate, Delegate::InProcess(_));
        // IPAM (most of ADD's time: datastore reads and a commit, or a
        // delegate process) runs beside the veth creation, which needs no
        // address. Whichever fails, the other's guard undoes it when it is
        // dropped here.
        let (alloc, veth) = std::thread::scope(|s| {
            let ipam = s.spawn(|| delegate.add(req, &*store, in_process.then_some(&record)));
            let veth = store
                .ready()
                .map_err(|e| store_error("datastore not ready", e))
                .and_then(|()| dataplane::create(&plan));
            let alloc =
                ipam.join().unwrap_or_else(|_| Err(CniError::internal("the IPAM ADD thread panicked")));
            (alloc, veth)
        });
        let alloc = alloc?;
        let veth = veth?;
        let ips = alloc.pod_ips()?;
        let (wired, recorded) = if in_process {
            (veth.finish(&ips), None)
        } else {
            // After a delegate, the pod record is written while the
            // addresses and routes go in; it is deleted again if they fail.
            let wep = build(&ips);
            let (wired, record) = std::thread::scope(|s| {
                let record = s.spawn(|| endpoint::put(&*store, &key, &wep));
                let wired = veth.finish(&ips);
                let record = record
                    .join()
                    .unwrap_or_else(|_| Err(CniError::internal("the pod record thread panicked")));
                (wired, record)
            });
            (wired, Some(record?))
        };
        let wired = wired?;

        let result = build_result(req, &wired, &ips, mtu, netns_path);
        if let Some(record) = recorded {
            record.commit();
        }
        wired.commit();
        let ipam_result = alloc.commit();
        let shown: Vec<String> = ips.iter().map(ToString::to_string).collect();
        log::info!(
            "wired {ifname} ({}) to {host_name} for {}",
            shown.join(", "),
            ctx.workload.endpoint_name()
        );
        Ok(with_dns(result, ipam_result, req))
    }

    /// Best effort and idempotent: every step runs even if an earlier one
    /// failed; the first error is returned (so the runtime retries).
    ///
    /// The pod's interface is deleted first, on its own thread, and the rest
    /// runs beside it: deleting a veth spends most of its time in the kernel
    /// waiting for RCU grace periods (~15 ms), during which IPAM releases
    /// and the pod record goes: in process, in one datastore commit
    /// ([`Delegate::del_with_record`]); with a delegate, in two.
    /// Releasing the address before its veth is gone is safe: released
    /// ordinals go to the tail of the block's free list, so the address is
    /// the last one of its block to be handed out again (ptp even releases
    /// before it deletes).
    fn del(&self, req: &Request) -> Result<(), CniError> {
        let ctx = Context::new(req)?;
        let ifname = ctx.workload.ifname.as_str();
        let store = OnceLock::new();
        let store = || store.get_or_init(|| open_store(&ctx.conf)).clone();
        let (unwired, ipam_result, owned, host_gone) = std::thread::scope(|s| {
            // Before anything else: the sooner the kernel has the request,
            // the sooner its grace periods are over.
            let unwiring = dataplane::unwire_start(s, req.netns(), ifname);
            let key = ctx.workload.endpoint_key();
            let cid = ctx.workload.container_id.as_str();
            let (ipam_result, owned) = match Delegate::new(req, &ctx.conf.ipam.ipam_type) {
                Ok(d) => d.del_with_record(req, &store, &key, cid),
                Err(e) => (Err(e), store().and_then(|s| endpoint::delete_if_owned(&*s, &key, cid))),
            };
            // The host veth the record names normally goes with the pod's
            // interface, which the kernel unlists at once and then waits on
            // for milliseconds: looked up now, it is usually gone already,
            // and nothing is left for after the wait.
            let host_gone = match &owned {
                Ok(Some(wep)) => dataplane::host_link_exists(&wep.spec.interface_name).is_ok_and(|e| !e),
                _ => false,
            };
            (unwiring.wait(), ipam_result, owned, host_gone)
        });
        let mut errors = Vec::new();
        match unwired {
            Ok(true) => log::info!("deleted {ifname} in {:?}", req.netns()),
            Ok(false) => log::info!("{ifname} not found in {:?}: nothing to delete", req.netns()),
            Err(e) => errors.push(e),
        }
        match owned {
            Ok(Some(_)) if host_gone => {}
            // The record says which host veth this container had; it may
            // outlive a netns that was deleted while held open elsewhere.
            // Looked up (again) once the pod's interface is gone.
            Ok(Some(wep)) => {
                if let Err(e) = dataplane::delete_host_veth(&wep.spec.interface_name) {
                    errors.push(e);
                }
            }
            Ok(None) => {}
            Err(e) => errors.push(e),
        }
        if let Err(e) = ipam_result {
            errors.push(e);
        }
        for extra in errors.iter().skip(1) {
            log::error!("DEL also failed: {extra}");
        }
        errors.into_iter().next().map_or(Ok(()), Err)
    }

    fn check(&self, req: &Request) -> Result<(), CniError> {
        let ctx = Context::new(req)?;
        let prev = req
            .conf
            .prev_result
            .as_ref()
            .ok_or_else(|| CniError::invalid_config("CHECK needs prevResult", "prevResult is missing"))?;
        let store = || open_store(&ctx.conf);
        Delegate::new(req, &ctx.conf.ipam.ipam_type)?.forward(req, Command::Check, &store)?;
        let netns_path = req.netns().ok_or_else(|| CniError::missing_env(&["CNI_NETNS"]))?;
        let sandbox = netns_path.display().to_string();
        let ifname = ctx.workload.ifname.as_str();
        let pod_idx = prev
            .interfaces
            .iter()
            .position(|i| i.name == ifname && i.sandbox.as_deref() == Some(sandbox.as_str()))
            .ok_or_else(|| {
                CniError::plugin(ERR_CALICO, format!("prevResult has no interface {ifname} in {sandbox}"), "")
            })?;
        let host_name = ctx.workload.host_veth_name();
        if !prev.interfaces.iter().any(|i| i.name == host_name && i.sandbox.is_none()) {
            return Err(CniError::plugin(
                ERR_CALICO,
                format!("prevResult has no host interface {host_name}"),
                "",
            ));
        }
        let ips: Vec<IpNetwork> = prev
            .ips
            .iter()
            .filter(|c| c.interface == Some(pod_idx))
            .map(|c| dataplane::host_prefix(c.address.ip()))
            .collect();
        let netns = dataplane::open_netns(netns_path)?;
        dataplane::check(&Expected {
            host_name: &host_name,
            ifname,
            netns: &netns,
            pod_mac: prev.interfaces[pod_idx].mac.as_deref(),
            ips: &ips,
        })
    }

    fn status(&self, req: &Request) -> Result<(), CniError> {
        let conf = CalicoConf::from_netconf(&req.conf)?;
        let store = calico_store::open(&conf.datastore)
            .map_err(|e| CniError::unavailable("datastore cannot be opened", e.to_string()))?;
        store.ready().map_err(|e| CniError::unavailable("datastore not ready", e.to_string()))?;
        let store = || Ok(store.clone());
        Delegate::new(req, &conf.ipam.ipam_type)?.forward(req, Command::Status, &store)
    }

    /// Remove this node's pod records of this network whose attachment is
    /// not in `cni.dev/valid-attachments` (and their host veths), then let
    /// IPAM release its leftovers. Continues past errors.
    fn gc(&self, req: &Request) -> Result<(), CniError> {
        let conf = CalicoConf::from_netconf(&req.conf)?;
        let valid = req.conf.valid_attachments()?.ok_or_else(|| {
            CniError::invalid_config(
                "GC needs cni.dev/valid-attachments",
                "refusing to treat every pod as stale",
            )
        })?;
        let node = conf.nodename()?;
        let mut errors: Vec<CniError> = Vec::new();
        match open_store(&conf).and_then(|s| {
            let stale: Vec<endpoint::Stored> = endpoint::list_for(&*s, &node, &req.conf.name)?
                .into_iter()
                .filter(|st| {
                    !valid.iter().any(|v| {
                        v.container_id == st.wep.spec.container_id && v.ifname == st.wep.spec.endpoint
                    })
                })
                .collect();
            Ok((s, stale))
        }) {
            Ok((store, stale)) => {
                for st in stale {
                    log::info!("GC: pod record {} (container {}) is stale", st.key, st.wep.spec.container_id);
                    match endpoint::delete_at(&*store, &st.key, st.revision) {
                        Ok(true) => {
                            if let Err(e) = dataplane::delete_host_veth(&st.wep.spec.interface_name) {
                                errors.push(e);
                            }
                        }
                        Ok(false) => log::info!("GC: {} changed meanwhile: kept", st.key),
                        Err(e) => errors.push(e),
                    }
                }
            }
            Err(e) => errors.push(e),
        }
        let store = || open_store(&conf);
        if let Err(e) =
            Delegate::new(req, &conf.ipam.ipam_type).and_then(|d| d.forward(req, Command::Gc, &store))
        {
            errors.push(e);
        }
        for extra in errors.iter().skip(1) {
            log::error!("GC also failed: {extra}");
        }
        errors.into_iter().next().map_or(Ok(()), Err)
    }
}
