//! The `calico-ipam` CNI plugin: the CNI protocol (through `cni-proto`)
//! mapped onto [`Ipam`]. The binary's `main` only calls [`CalicoIpam`].
//!
//! Config keys (Calico's): top level `datastore_type`, `datastore_path`,
//! `etcd_*`, `nodename`, `nodename_file`; under `ipam`: `assign_ipv4`
//! (default `"true"`), `assign_ipv6` (default `"false"`), `ipv4_pools`,
//! `ipv6_pools`. `CNI_ARGS`: `IP=` (one address per family, comma-separated),
//! `K8S_POD_NAMESPACE`, `K8S_POD_NAME`.

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use calico_store::cni::store_error;
use calico_store::model::{self, IpFamily};
use calico_store::{Datastore, DatastoreConfig, Op, StoreError};
use cni_proto::{CniError, CniResult, IpConfig, NetConf, Plugin, Request};
use ipnetwork::IpNetwork;
use serde::Deserialize;
use serde_json::Value;

use crate::types::{Handle, PoolRef};
use crate::{AssignRequest, AssignedIp, FamilyRequest, Ipam, IpamError};

/// The plugin object keys calico-ipam reads (unknown keys are ignored).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct TopConf {
    #[serde(default)]
    pub nodename: Option<String>,
    #[serde(default)]
    pub nodename_file: Option<PathBuf>,
    /// Node-local IPAM state (the block hint and the host lock); see
    /// [`IpamCniConf::state_dir`].
    #[serde(default)]
    pub ipam_state_dir: Option<PathBuf>,
}

/// The `ipam` object keys.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct IpamSection {
    #[serde(default)]
    pub assign_ipv4: Option<Value>,
    #[serde(default)]
    pub assign_ipv6: Option<Value>,
    #[serde(default)]
    pub ipv4_pools: Vec<String>,
    #[serde(default)]
    pub ipv6_pools: Vec<String>,
}

/// Everything calico-ipam needs from one invocation's config.
#[derive(Debug, Clone)]
pub struct IpamCniConf {
    pub network: String,
    pub datastore: DatastoreConfig,
    pub nodename: String,
    pub assign_ipv4: bool,
    pub assign_ipv6: bool,
    pub ipv4_pools: Vec<PoolRef>,
    pub ipv6_pools: Vec<PoolRef>,
    /// `ipam_state_dir`, if set.
    pub ipam_state_dir: Option<PathBuf>,
}

/// An `ipam` flag (Calico's string booleans, see
/// [`calico_store::config::flag_value`]) or its default when unset.
fn flag(v: &Option<Value>, key: &str, default: bool) -> Result<bool, CniError> {
    let v = v.as_ref().unwrap_or(&Value::Null);
    calico_store::config::flag_value(v)
        .map(|f| f.unwrap_or(default))
        .map_err(|why| CniError::invalid_config(format!("ipam.{key} must be \"true\" or \"false\""), why))
}

/// The pools of one `ipam.<key>` list; the CIDRs among them are checked as a
/// whole list ([`model::validate_pool_list`]) before anything is allocated,
/// so a bad entry never leaves the pools before it created.
fn pool_refs(list: &[String], key: &str, family: IpFamily) -> Result<Vec<PoolRef>, CniError> {
    let refs = list
        .iter()
        .map(|s| {
            PoolRef::parse(s).map_err(|e| CniError::invalid_config(format!("ipam.{key}"), e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    model::validate_pool_list(family, &PoolRef::cidrs(&refs))
        .map_err(|rule| CniError::invalid_config(format!("ipam.{key}: {rule}"), ""))?;
    Ok(refs)
}

impl IpamCniConf {
    /// Read and validate the config (code 7 on bad values), resolving the node name.
    pub fn from_netconf(conf: &NetConf) -> Result<IpamCniConf, CniError> {
        let top: TopConf = conf.extra()?;
        let datastore: DatastoreConfig = conf.extra()?;
        datastore
            .validate()
            .map_err(|e| CniError::invalid_config("datastore configuration", e.to_string()))?;
        let ipam: IpamSection = conf.ipam_extra()?;
        let assign_ipv4 = flag(&ipam.assign_ipv4, "assign_ipv4", true)?;
        let assign_ipv6 = flag(&ipam.assign_ipv6, "assign_ipv6", false)?;
        if !assign_ipv4 && !assign_ipv6 {
            return Err(CniError::invalid_config(
                "ipam: assign_ipv4 and assign_ipv6 are both false: nothing to assign",
                "",
            ));
        }
        let nodename =
            calico_store::config::resolve_nodename(top.nodename.as_deref(), top.nodename_file.as_deref())
                .map_err(|e| match e {
                    StoreError::Io { path, source } => CniError::io(
                        format!("cannot determine the node name: reading {path}"),
                        source.to_string(),
                    ),
                    other => CniError::invalid_config("cannot determine the node name", other.to_string()),
                })?;
        Ok(IpamCniConf {
            network: conf.name.clone(),
            datastore,
            nodename,
            assign_ipv4,
            assign_ipv6,
            ipv4_pools: pool_refs(&ipam.ipv4_pools, "ipv4_pools", IpFamily::V4)?,
            ipv6_pools: pool_refs(&ipam.ipv6_pools, "ipv6_pools", IpFamily::V6)?,
            ipam_state_dir: top.ipam_state_dir.filter(|d| !d.as_os_str().is_empty()),
        })
    }

    /// Open the configured datastore (unreachable → code 11).
    pub fn open_store(&self) -> Result<Arc<dyn Datastore>, CniError> {
        calico_store::open(&self.datastore).map_err(|e| store_error("opening the datastore", e))
    }

    /// Where node-local IPAM state lives (the block hint, `ipam.lock`):
    /// `ipam_state_dir` when set, else the file store's directory
    /// (`datastore_path`, default `/var/lib/calico-rs`), with etcd too. It is
    /// per node, never shared: with etcd every node keeps its own.
    pub fn state_dir(&self) -> PathBuf {
        self.ipam_state_dir.clone().unwrap_or_else(|| self.datastore.path())
    }
}

/// An IPAM failure as a CNI error: transient → 11, configuration → 7,
/// allocation policy (exhausted, block limit, taken address) → 999 like
/// Calico's plain errors through skel.
pub fn ipam_error(e: IpamError) -> CniError {
    match e {
        IpamError::Store(s) => store_error("datastore", s),
        IpamError::MaxRetries => CniError::try_again_later(e.to_string(), ""),
        IpamError::InvalidConfig(_) | IpamError::PoolNotUsable(_) => {
            CniError::invalid_config(e.to_string(), "")
        }
        _ => CniError::internal(e.to_string()),
    }
}

/// `IP=` from CNI_ARGS: at most one address per family.
pub fn requested_ips(arg: Option<&str>) -> Result<(Option<IpAddr>, Option<IpAddr>), CniError> {
    let (mut v4, mut v6) = (None, None);
    let Some(arg) = arg else { return Ok((None, None)) };
    for s in arg.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let ip: IpAddr =
            s.parse().map_err(|_| CniError::invalid_env("invalid IP in CNI_ARGS", s.to_string()))?;
        let slot = if ip.is_ipv4() { &mut v4 } else { &mut v6 };
        if slot.replace(ip).is_some() {
            return Err(CniError::invalid_env(
                "CNI_ARGS IP= may hold one address per family",
                arg.to_string(),
            ));
        }
    }
    Ok((v4, v6))
}

/// The calico-ipam plugin.
pub struct CalicoIpam;

impl CalicoIpam {
    /// The IPAM handle of this request: `<network>.<CNI_CONTAINERID>`.
    pub fn handle(req: &Request, conf: &IpamCniConf) -> Result<Handle, CniError> {
        Handle::for_container(&conf.network, req.container_id()?.as_str())
            .map_err(|e| CniError::invalid_config(e.to_string(), ""))
    }

    /// What an ADD asks of [`Ipam::assign`]: the handle, `IP=` and the pod
    /// from CNI_ARGS, the families and their pools. Reads no datastore, so
    /// a bad request fails before anything is opened.
    pub fn assign_request(req: &Request, conf: &IpamCniConf) -> Result<AssignRequest, CniError> {
        let handle = Self::handle(req, conf)?;
        let (ip4, ip6) = requested_ips(req.args().get("IP"))?;
        let family = |on: bool, pools: &[PoolRef], ip: Option<IpAddr>| {
            (on || ip.is_some()).then(|| FamilyRequest { pools: pools.to_vec(), ip })
        };
        Ok(AssignRequest {
            handle,
            namespace: req.args().get("K8S_POD_NAMESPACE").map(str::to_string),
            pod: req.args().get("K8S_POD_NAME").map(str::to_string),
            // An explicit IP= of a family implies that family.
            ipv4: family(conf.assign_ipv4 && ip6.is_none() || ip4.is_some(), &conf.ipv4_pools, ip4),
            ipv6: family(conf.assign_ipv6 && ip4.is_none() || ip6.is_some(), &conf.ipv6_pools, ip6),
        })
    }

    /// IPAM ADD on an open store: the addresses of `request`, as the
    /// plugin's result (`ips` only, /32 and /128). The plugin's ADD is
    /// [`CalicoIpam::assign_request`], [`IpamCniConf::open_store`], then this;
    /// the `calico` plugin calls it in-process on its own store handle.
    pub fn assign_on(
        store: &dyn Datastore,
        conf: &IpamCniConf,
        request: &AssignRequest,
    ) -> Result<CniResult, CniError> {
        let assigned = Self::assign_on_with(store, conf, request, |_| Ok(Vec::new()))
            .map_err(|e| ipam_error(e).context("IPAM ADD"))?;
        Self::result_of(request, assigned)
    }

    /// [`CalicoIpam::assign_on`]'s allocation plus the caller's own writes
    /// in the same commit ([`Ipam::assign_with`]): the `calico` plugin's pod
    /// record. The error is IPAM's own, so that the caller can tell a
    /// conflict on one of its keys; [`ipam_error`] then maps it as
    /// [`CalicoIpam::assign_on`] does (`.context("IPAM ADD")`).
    pub fn assign_on_with<F>(
        store: &dyn Datastore,
        conf: &IpamCniConf,
        request: &AssignRequest,
        extra: F,
    ) -> Result<Vec<AssignedIp>, IpamError>
    where
        F: Fn(&[AssignedIp]) -> Result<Vec<Op>, IpamError>,
    {
        Ipam::new(store, &conf.nodename).with_state_dir(conf.state_dir()).assign_with(request, extra)
    }

    /// The plugin's result for `assigned`: `ips` only, /32 and /128.
    pub fn result_of(request: &AssignRequest, assigned: Vec<AssignedIp>) -> Result<CniResult, CniError> {
        let mut result = CniResult::default();
        for a in assigned {
            let prefix = if a.ip.is_ipv4() { 32 } else { 128 };
            let address = IpNetwork::new(a.ip, prefix).map_err(|e| CniError::internal(e.to_string()))?;
            log::info!("assigned {address} from block {} to {}", a.block, request.handle);
            result.ips.push(IpConfig { address, gateway: None, interface: None });
        }
        Ok(result)
    }

    /// IPAM DEL on an open store: release everything `handle` holds
    /// (idempotent). The plugin's DEL is [`CalicoIpam::handle`],
    /// [`IpamCniConf::open_store`], then this.
    pub fn release_on(store: &dyn Datastore, conf: &IpamCniConf, handle: &Handle) -> Result<(), CniError> {
        Self::release_on_with(store, conf, handle, &[]).map_err(|e| ipam_error(e).context("IPAM DEL"))
    }

    /// [`CalicoIpam::release_on`] with the caller's own writes in the same
    /// commit ([`Ipam::release_handle_with`]; committed alone when the
    /// handle does not exist): the `calico` plugin's DEL deletes the pod
    /// record in it. The error is IPAM's own, so that the caller can tell a
    /// conflict on one of its keys (returned, not retried) from the rest.
    pub fn release_on_with(
        store: &dyn Datastore,
        conf: &IpamCniConf,
        handle: &Handle,
        extra: &[Op],
    ) -> Result<(), IpamError> {
        let ipam = Ipam::new(store, &conf.nodename).with_state_dir(conf.state_dir());
        let freed = ipam.release_handle_with(handle, extra)?;
        log::info!("released {freed:?} of {handle}");
        Ok(())
    }
}

impl Plugin for CalicoIpam {
    fn add(&self, req: &Request) -> Result<CniResult, CniError> {
        let conf = IpamCniConf::from_netconf(&req.conf)?;
        let request = Self::assign_request(req, &conf)?;
        let store = conf.open_store()?;
        Self::assign_on(store.as_ref(), &conf, &request)
    }

    fn del(&self, req: &Request) -> Result<(), CniError> {
        let conf = IpamCniConf::from_netconf(&req.conf)?;
        let handle = Self::handle(req, &conf)?;
        let store = conf.open_store()?;
        Self::release_on(store.as_ref(), &conf, &handle)
    }

    fn check(&self, req: &Request) -> Result<(), CniError> {
        let conf = IpamCniConf::from_netconf(&req.conf)?;
        let handle = Self::handle(req, &conf)?;
        let store = conf.open_store()?;
        let ipam = Ipam::new(store.as_ref(), &conf.nodename);
        let held: HashSet<IpAddr> = ipam
            .ips_of_handle(&handle)
            .map_err(|e| ipam_error(e).context("IPAM CHECK"))?
            .into_iter()
            .collect();
        if held.is_empty() {
            return Err(CniError::unknown_container(format!("IPAM handle {handle} holds no addresses"), ""));
        }
        let prev = req.conf.prev_result.as_ref().map(|r| r.ips.as_slice()).unwrap_or(&[]);
        for ipc in prev {
            if !held.contains(&ipc.address.ip()) {
                return Err(CniError::plugin(
                    100,
                    format!("IPAM handle {handle} does not hold {}", ipc.address.ip()),
                    format!("held: {held:?}"),
                ));
            }
        }
        Ok(())
    }

    fn status(&self, req: &Request) -> Result<(), CniError> {
        let conf = IpamCniConf::from_netconf(&req.conf)?;
        let store = calico_store::open(&conf.datastore)
            .map_err(|e| CniError::unavailable(format!("datastore not ready: {e}"), ""))?;
        store.ready().map_err(|e| CniError::unavailable(format!("datastore not ready: {e}"), ""))
    }

    fn gc(&self, req: &Request) -> Result<(), CniError> {
        let conf = IpamCniConf::from_netconf(&req.conf)?;
        let Some(valid) = req.conf.valid_attachments()? else {
            log::warn!("GC without cni.dev/valid-attachments: releasing nothing");
            return Ok(());
        };
        let keep: HashSet<String> = valid.into_iter().map(|a| a.container_id).collect();
        let store = conf.open_store()?;
        let ipam = Ipam::new(store.as_ref(), &conf.nodename).with_state_dir(conf.state_dir());
        let outcome = ipam.gc_network(&conf.network, &keep).map_err(|e| ipam_error(e).context("IPAM GC"))?;
        log::info!("GC of {}: released {} handle(s)", conf.network, outcome.released.len());
        // Continue past single failures (spec), but report them.
        if let Some((h, e)) = outcome.failed.into_iter().next() {
            return Err(ipam_error(e).context(&format!("IPAM GC of {h}")));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_arg_parsing() {
        assert_eq!(requested_ips(None).unwrap(), (None, None));
        let (a, b) = requested_ips(Some("10.0.0.5,fd00::5")).unwrap();
        assert_eq!((a.unwrap().to_string(), b.unwrap().to_string()), ("10.0.0.5".into(), "fd00::5".into()));
        assert!(requested_ips(Some("10.0.0.5,10.0.0.6")).is_err());
        assert!(requested_ips(Some("bogus")).is_err());
    }
}
