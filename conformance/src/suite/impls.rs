//! The two implementations the suite knows: Debian's ptp + host-local (the
//! reference that proves the suite right) and our calico + calico-ipam.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use calico_store::model::{self, AllocationBlock, IpFamily};
use calico_store::DatastoreConfig;
use ipnetwork::IpNetwork;
use serde_json::{json, Value};

use super::{Allocation, CaseCtx, ConfOpts, Implementation};

/// Debian's containernetworking-plugins: `ptp` delegating to `host-local`.
pub struct PtpHostLocal {
    /// Where `ptp` and `host-local` are (`/usr/lib/cni`).
    pub plugin_dir: PathBuf,
    /// Where `cni-probe` is (our target dir).
    pub probe_dir: PathBuf,
}

pub const PTP_V4_SUBNET: &str = "10.77.0.0/24";
pub const PTP_V6_SUBNET: &str = "fd77::/64";

impl Implementation for PtpHostLocal {
    fn name(&self) -> &str {
        "ptp+host-local"
    }
    fn cni_path(&self) -> Vec<PathBuf> {
        vec![self.plugin_dir.clone(), self.probe_dir.clone()]
    }
    fn main_plugin(&self) -> &str {
        "ptp"
    }
    fn ipam_plugin(&self) -> &str {
        "host-local"
    }
    fn plugin_conf(&self, ctx: &CaseCtx, opts: &ConfOpts) -> Value {
        let state = ctx.state;
        let mut ranges = Vec::new();
        if opts.ipv4 {
            ranges.push(json!([{"subnet": PTP_V4_SUBNET}]));
        }
        if opts.ipv6 {
            ranges.push(json!([{"subnet": PTP_V6_SUBNET}]));
        }
        json!({
            "type": "ptp",
            "ipMasq": false,
            "mtu": 1500,
            "ipam": {
                "type": "host-local",
                "ranges": ranges,
                "routes": [{"dst": "0.0.0.0/0"}],
                "dataDir": state.join("ipam"),
            }
        })
    }
    fn allocations(&self, ctx: &CaseCtx, network: &str) -> Result<Vec<Allocation>, String> {
        let dir = ctx.state.join("ipam").join(network);
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(format!("{}: {e}", dir.display())),
        };
        let mut out = Vec::new();
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            // host-local names files after the IP (`:` kept for v6).
            let Ok(ip) = name.parse::<IpAddr>() else { continue };
            let content = std::fs::read_to_string(e.path()).map_err(|err| format!("{name}: {err}"))?;
            let mut lines = content.lines().map(str::trim);
            let container_id = lines.next().unwrap_or_default().to_string();
            let ifname = lines.next().map(str::to_string);
            out.push(Allocation { ip, container_id, ifname });
        }
        out.sort_by_key(|a| a.ip);
        Ok(out)
    }
    fn forget_allocation(&self, ctx: &CaseCtx, network: &str, container_id: &str) -> Result<bool, String> {
        for a in self.allocations(ctx, network)? {
            if a.container_id == container_id {
                let p = ctx.state.join("ipam").join(network).join(a.ip.to_string());
                std::fs::remove_file(&p).map_err(|e| format!("{}: {e}", p.display()))?;
            }
        }
        Ok(true)
    }
    fn is_calico(&self) -> bool {
        false
    }
}

/// Which datastore our plugins are configured with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Datastore {
    /// The embedded file store in the case's directory.
    File,
    /// A private etcd per case (`testbed::Etcd`).
    Etcd,
}

/// Our `calico` with `ipam.type: calico-ipam` (run in `calico`'s process).
pub struct CalicoImpl {
    /// Where `calico`, `calico-ipam` and `cni-probe` are (the target dir).
    pub bin_dir: PathBuf,
    pub datastore: Datastore,
}

pub const CALICO_V4_POOL: &str = "10.78.0.0/16";
pub const CALICO_V6_POOL: &str = "fd78::/112";

impl CalicoImpl {
    /// The datastore config the plugin object names, as the suite (not the
    /// plugin) reaches it.
    pub fn datastore_config(ctx: &CaseCtx) -> DatastoreConfig {
        match ctx.etcd_local {
            Some(ep) => DatastoreConfig {
                datastore_type: Some("etcdv3".into()),
                etcd_endpoints: Some(ep.to_string()),
                ..Default::default()
            },
            None => DatastoreConfig {
                datastore_type: Some("file".into()),
                datastore_path: Some(ctx.state.join("store")),
                ..Default::default()
            },
        }
    }

    pub fn open_store(ctx: &CaseCtx) -> Result<std::sync::Arc<dyn calico_store::Datastore>, String> {
        calico_store::open(&Self::datastore_config(ctx)).map_err(|e| format!("open datastore: {e}"))
    }

    /// The file store kept in `<state>/store` (podman test, tools).
    pub fn open_file_store(state: &Path) -> Result<std::sync::Arc<dyn calico_store::Datastore>, String> {
        Self::open_store(&CaseCtx { state, node: "", etcd: None, etcd_local: None })
    }

    /// Every allocated IP of every block, with its handle.
    pub fn block_allocations(
        store: &dyn calico_store::Datastore,
    ) -> Result<Vec<(IpAddr, Option<String>, IpNetwork)>, String> {
        let mut out = Vec::new();
        for fam in [IpFamily::V4, IpFamily::V6] {
            for kv in store.list(&model::blocks_prefix(fam)).map_err(|e| e.to_string())? {
                let b: AllocationBlock = model::decode(&kv).map_err(|e| e.to_string())?;
                for (ord, attr) in b.allocations.iter().enumerate() {
                    let Some(idx) = attr else { continue };
                    let handle = b.attributes.get(*idx).and_then(|a| a.handle_id.clone());
                    out.push((nth_ip(&b.cidr, ord as u128)?, handle, b.cidr));
                }
            }
        }
        Ok(out)
    }
}

/// The `n`-th address of a network.
pub fn nth_ip(net: &IpNetwork, n: u128) -> Result<IpAddr, String> {
    match net {
        IpNetwork::V4(v4) => {
            let base = u32::from(v4.network()) as u128;
            u32::try_from(base + n)
                .map(|x| IpAddr::V4(x.into()))
                .map_err(|_| format!("ordinal {n} outside {net}"))
        }
        IpNetwork::V6(v6) => {
            let base = u128::from(v6.network());
            base.checked_add(n)
                .map(|x| IpAddr::V6(x.into()))
                .ok_or_else(|| format!("ordinal {n} outside {net}"))
        }
    }
}

impl Implementation for CalicoImpl {
    fn name(&self) -> &str {
        match self.datastore {
            Datastore::File => "ours (file store)",
            Datastore::Etcd => "ours (etcd)",
        }
    }
    fn cni_path(&self) -> Vec<PathBuf> {
        vec![self.bin_dir.clone()]
    }
    fn main_plugin(&self) -> &str {
        "calico"
    }
    fn ipam_plugin(&self) -> &str {
        "calico-ipam"
    }
    fn plugin_conf(&self, ctx: &CaseCtx, opts: &ConfOpts) -> Value {
        let state = ctx.state;
        let mut v = json!({
            "type": "calico",
            "nodename": ctx.node,
            "nodename_file_optional": true,
            "mtu": 1500,
            "log_level": "debug",
            "log_file_path": state.join("calico.log"),
            "ipam": {
                "type": "calico-ipam",
                "assign_ipv4": if opts.ipv4 { "true" } else { "false" },
                "assign_ipv6": if opts.ipv6 { "true" } else { "false" },
                "ipv4_pools": [CALICO_V4_POOL],
                "ipv6_pools": [CALICO_V6_POOL],
            }
        });
        match ctx.etcd {
            Some(ep) => {
                v["datastore_type"] = json!("etcdv3");
                v["etcd_endpoints"] = json!(ep);
                // The node's IPAM hint and lock stay in the case's state
                // directory (the default is /var/lib/calico-rs).
                v["ipam_state_dir"] = json!(state);
            }
            None => {
                v["datastore_type"] = json!("file");
                v["datastore_path"] = json!(state.join("store"));
            }
        }
        v
    }
    fn allocations(&self, ctx: &CaseCtx, network: &str) -> Result<Vec<Allocation>, String> {
        if ctx.etcd.is_none() && !ctx.state.join("store").exists() {
            return Ok(Vec::new());
        }
        let store = Self::open_store(ctx)?;
        let prefix = format!("{network}.");
        let mut out: Vec<Allocation> = Self::block_allocations(store.as_ref())?
            .into_iter()
            .map(|(ip, handle, _)| Allocation {
                ip,
                container_id: handle
                    .as_deref()
                    .map(|h| h.strip_prefix(&prefix).unwrap_or(h).to_string())
                    .unwrap_or_default(),
                ifname: None,
            })
            .collect();
        out.sort_by_key(|a| a.ip);
        Ok(out)
    }
    fn forget_allocation(&self, ctx: &CaseCtx, network: &str, container_id: &str) -> Result<bool, String> {
        let store = Self::open_store(ctx)?;
        let key = model::handle_key(&format!("{network}.{container_id}"));
        if let Some(kv) = store.get(&key).map_err(|e| e.to_string())? {
            store.delete(&key, kv.revision).map_err(|e| e.to_string())?;
        }
        Ok(true)
    }
    fn is_calico(&self) -> bool {
        true
    }
    fn needs_etcd(&self) -> bool {
        self.datastore == Datastore::Etcd
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nth_ip_of_blocks() {
        let b: IpNetwork = "10.0.0.64/26".parse().unwrap();
        assert_eq!(nth_ip(&b, 3).unwrap(), "10.0.0.67".parse::<IpAddr>().unwrap());
        let b6: IpNetwork = "fd00::40/122".parse().unwrap();
        assert_eq!(nth_ip(&b6, 1).unwrap(), "fd00::41".parse::<IpAddr>().unwrap());
    }
}
