//! The `calico` plugin's keys of the network config (Calico's conflist
//! format, unknown keys tolerated), with the defaults Calico applies.

use std::path::{Path, PathBuf};

use calico_store::model::IpFamily;
use calico_store::DatastoreConfig;
use cni_proto::{CniError, NetConf};
use ipnetwork::IpNetwork;
use serde::Deserialize;

use crate::errors::store_error;

/// The plugin's own `type`.
pub const PLUGIN_TYPE: &str = "calico";
/// Where Calico's node agent records the detected MTU.
pub const DEFAULT_MTU_FILE: &str = "/var/lib/calico/mtu";
/// MTU when neither the config nor the MTU file give one.
pub const DEFAULT_MTU: u32 = 1500;
/// The smallest MTU a veth accepts for IPv4 (IPv6 needs 1280).
const MIN_MTU: u32 = 68;
const MIN_MTU_V6: u32 = 1280;
/// ETH_MAX_MTU: the largest MTU a veth accepts.
const MAX_MTU: u32 = 65535;
/// The kernel's limit on a veth's TX/RX queues.
const MAX_QUEUES: u32 = 4096;

/// `ipam` keys the plugin itself needs (the rest is calico-ipam's business).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct IpamKeys {
    #[serde(rename = "type", default)]
    pub ipam_type: String,
    #[serde(default, deserialize_with = "calico_store::config::flag")]
    pub assign_ipv4: Option<bool>,
    #[serde(default, deserialize_with = "calico_store::config::flag")]
    pub assign_ipv6: Option<bool>,
    /// calico-ipam's pools; those named by CIDR are checked here too, so a
    /// pool Calico would refuse fails before any veth is built.
    #[serde(default)]
    pub ipv4_pools: Vec<String>,
    #[serde(default)]
    pub ipv6_pools: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct ContainerSettings {
    #[serde(default)]
    pub allow_ip_forwarding: bool,
}

/// The plugin object of a Calico conflist, as far as `calico` reads it.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct CalicoConf {
    #[serde(default)]
    pub nodename: Option<String>,
    #[serde(default)]
    pub nodename_file: Option<PathBuf>,
    #[serde(default)]
    pub mtu: Option<u32>,
    #[serde(default)]
    pub num_queues: Option<u32>,
    #[serde(default)]
    pub ipam: IpamKeys,
    #[serde(default)]
    pub container_settings: ContainerSettings,
    /// The datastore keys of the same object, decoded on their own rather
    /// than `flatten`ed: serde buffers a flattened struct's input and decodes
    /// it outside [`cni_proto::strict`], where arrays could stand for structs.
    #[serde(skip)]
    pub datastore: DatastoreConfig,
}

impl CalicoConf {
    /// Decode and validate (code 7 naming the key).
    pub fn from_netconf(conf: &NetConf) -> Result<CalicoConf, CniError> {
        let mut c: CalicoConf = conf.extra()?;
        c.datastore = conf.extra()?;
        if c.ipam.ipam_type.is_empty() {
            return Err(CniError::invalid_config("ipam.type is missing", "calico needs an IPAM plugin"));
        }
        // The IPAM delegate runs with our stdin: naming ourselves would make
        // every command start us again, without end (cni-proto also refuses a
        // delegate that is this executable, and bounds any chain's depth).
        if c.ipam.ipam_type == PLUGIN_TYPE || c.ipam.ipam_type == conf.plugin_type {
            return Err(CniError::invalid_config(
                format!("ipam.type {:?} is this plugin itself", c.ipam.ipam_type),
                "name an IPAM plugin, e.g. calico-ipam or host-local",
            ));
        }
        if let Some(m) = c.mtu.filter(|m| *m != 0) {
            let min = if c.assign_ipv6() { MIN_MTU_V6 } else { MIN_MTU };
            if !(min..=MAX_MTU).contains(&m) {
                return Err(CniError::invalid_config(
                    format!("mtu {m} is out of range"),
                    format!("a veth MTU must be between {min} and {MAX_MTU}"),
                ));
            }
        }
        if let Some(q) = c.num_queues {
            if q == 0 || q > MAX_QUEUES {
                return Err(CniError::invalid_config(
                    format!("num_queues {q} is out of range"),
                    format!("must be between 1 and {MAX_QUEUES}"),
                ));
            }
        }
        let lists = [
            ("ipv4_pools", &c.ipam.ipv4_pools, IpFamily::V4),
            ("ipv6_pools", &c.ipam.ipv6_pools, IpFamily::V6),
        ];
        for (key, list, family) in lists {
            let mut cidrs = Vec::new();
            for cidr in list.iter().filter(|p| p.contains('/')) {
                let net: IpNetwork = cidr.trim().parse().map_err(|e| {
                    CniError::invalid_config(
                        format!("ipam.{key}: invalid pool CIDR {cidr:?}"),
                        format!("{e}"),
                    )
                })?;
                cidrs.push(net);
            }
            // The whole list is checked before calico-ipam creates any of it.
            calico_store::model::validate_pool_list(family, &cidrs)
                .map_err(|rule| CniError::invalid_config(format!("ipam.{key}: {rule}"), ""))?;
        }
        c.datastore
            .validate()
            .map_err(|e| CniError::invalid_config("invalid datastore configuration", e.to_string()))?;
        Ok(c)
    }

    /// IPv4 is on unless `ipam.assign_ipv4` is "false".
    pub fn assign_ipv4(&self) -> bool {
        self.ipam.assign_ipv4.unwrap_or(true)
    }

    /// IPv6 is off unless `ipam.assign_ipv6` is "true".
    pub fn assign_ipv6(&self) -> bool {
        self.ipam.assign_ipv6.unwrap_or(false)
    }

    /// The veth MTU: `mtu` if non-zero, else the MTU file, else 1500.
    pub fn mtu(&self) -> u32 {
        self.mtu_with_file(Path::new(DEFAULT_MTU_FILE))
    }

    fn mtu_with_file(&self, file: &Path) -> u32 {
        match self.mtu {
            Some(m) if m != 0 => m,
            _ => std::fs::read_to_string(file)
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok())
                .filter(|m| (MIN_MTU..=MAX_MTU).contains(m))
                .unwrap_or(DEFAULT_MTU),
        }
    }

    /// The node name: `nodename`, else the nodename file (only if present),
    /// else the OS hostname (calico-store's rules, shared with calico-ipam):
    /// an invalid name is code 7, an unreadable file code 5.
    pub fn nodename(&self) -> Result<String, CniError> {
        self.nodename_with_hostname(Path::new(calico_store::config::HOSTNAME_FILE))
    }

    fn nodename_with_hostname(&self, hostname_file: &Path) -> Result<String, CniError> {
        calico_store::config::resolve_nodename_from(
            self.nodename.as_deref(),
            self.nodename_file.as_deref(),
            hostname_file,
        )
        .map_err(|e| store_error("cannot determine the node name", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn conf(v: serde_json::Value) -> Result<CalicoConf, CniError> {
        let nc = NetConf::parse(v.to_string().as_bytes()).unwrap();
        CalicoConf::from_netconf(&nc)
    }

    fn base() -> serde_json::Value {
        json!({"cniVersion":"1.0.0","name":"k8s-pod-network","type":"calico","ipam":{"type":"calico-ipam"}})
    }

    #[test]
    fn calico_conflist_as_is() {
        let c = conf(json!({
            "cniVersion":"1.0.0","name":"k8s-pod-network","type":"calico","log_level":"info",
            "datastore_type":"etcdv3","etcd_endpoints":"http://127.0.0.1:2379","nodename":"node1","mtu":1440,
            "policy":{"type":"k8s"},"kubernetes":{"kubeconfig":"/x"},"unknown":{"a":[1]},
            "ipam":{"type":"calico-ipam","assign_ipv4":"true","assign_ipv6":"true","ipv4_pools":["10.0.0.0/16"]},
            "container_settings":{"allow_ip_forwarding":true}
        }))
        .unwrap();
        assert_eq!(c.ipam.ipam_type, "calico-ipam");
        assert!(c.assign_ipv4() && c.assign_ipv6());
        assert!(c.container_settings.allow_ip_forwarding);
        assert_eq!(c.mtu(), 1440);
        assert_eq!(c.nodename().unwrap(), "node1");
        assert_eq!(c.datastore.endpoints(), vec!["http://127.0.0.1:2379"]);
    }

    #[test]
    fn defaults() {
        let c = conf(base()).unwrap();
        assert!(c.assign_ipv4());
        assert!(!c.assign_ipv6());
        assert!(!c.container_settings.allow_ip_forwarding);
        let d = tempfile::tempdir().unwrap();
        assert_eq!(c.mtu_with_file(&d.path().join("absent")), 1500);
        std::fs::write(d.path().join("mtu"), "1410\n").unwrap();
        assert_eq!(c.mtu_with_file(&d.path().join("mtu")), 1410);
        let mut zero = base();
        zero["mtu"] = json!(0);
        assert_eq!(conf(zero).unwrap().mtu_with_file(&d.path().join("absent")), 1500);
        let mut v4off = base();
        v4off["ipam"]["assign_ipv4"] = json!("false");
        v4off["ipam"]["assign_ipv6"] = json!(true);
        let c = conf(v4off).unwrap();
        assert!(!c.assign_ipv4() && c.assign_ipv6());
    }

    #[test]
    fn bad_values_are_code_7() {
        let cases = [
            json!({"ipam":{}}),
            json!({"ipam":{"type":"calico-ipam","assign_ipv6":"yes"}}),
            json!({"mtu":"big"}),
            json!({"mtu":-1}),
            json!({"mtu":70000}),
            json!({"mtu":60}),
            json!({"num_queues":0}),
            json!({"nodename":7}),
            json!({"datastore_type":"kubernetes"}),
            json!({"datastore_type":"etcdv3"}),
            json!({"container_settings":{"allow_ip_forwarding":"maybe"}}),
            // Found by fuzzing: an IPAM delegate that is the plugin itself.
            json!({"ipam":{"type":"calico"}}),
            // Found by fuzzing: serde reads a struct from an array by position,
            // which turned `[true]` into allow_ip_forwarding = true.
            json!({"container_settings":[true]}),
            json!({"ipam":{"type":"calico-ipam","ipv4_pools":[["10.0.0.0/16"]]},"container_settings":[]}),
            // Found by fuzzing: pools Calico's validation refuses.
            json!({"ipam":{"type":"calico-ipam","ipv4_pools":["0.0.0.0/0"]}}),
            json!({"ipam":{"type":"calico-ipam","ipv4_pools":["10.0.0.0/16", "169.254.0.0/16"]}}),
            json!({"ipam":{"type":"calico-ipam","assign_ipv6":"true","ipv6_pools":["::/0"]}}),
            json!({"ipam":{"type":"calico-ipam","ipv4_pools":["10.0.0.0/33"]}}),
        ];
        for patch in cases {
            let mut v = base();
            for (k, val) in patch.as_object().unwrap() {
                v[k] = val.clone();
            }
            let e = conf(v.clone()).unwrap_err();
            assert_eq!(e.code, 7, "{v}: {e}");
        }
        let mut arr = base();
        arr["ipam"] = json!(["calico-ipam"]);
        assert_eq!(NetConf::parse(arr.to_string().as_bytes()).unwrap_err().code, 6);
        let mut v6 = base();
        v6["ipam"]["assign_ipv6"] = json!("true");
        v6["mtu"] = json!(1000);
        assert_eq!(conf(v6).unwrap_err().code, 7, "IPv6 needs an MTU of 1280 or more");
    }

    #[test]
    fn nodename_order() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("nodename");
        let host = d.path().join("hostname");
        std::fs::write(&host, "myhost\n").unwrap();
        let resolve = |conf: Option<&str>, file: &Path, host: &Path| {
            let c = CalicoConf {
                nodename: conf.map(str::to_string),
                nodename_file: Some(file.to_path_buf()),
                ..Default::default()
            };
            c.nodename_with_hostname(host)
        };
        assert_eq!(resolve(None, &file, &host).unwrap(), "myhost");
        std::fs::write(&file, "node-from-file\n").unwrap();
        assert_eq!(resolve(None, &file, &host).unwrap(), "node-from-file");
        assert_eq!(resolve(Some("conf-node"), &file, &host).unwrap(), "conf-node");
        assert_eq!(resolve(Some(""), &file, &host).unwrap(), "node-from-file");
        assert_eq!(resolve(Some("a/b"), &file, &host).unwrap_err().code, 7);
        std::fs::write(&file, "bad name").unwrap();
        assert_eq!(resolve(None, &file, &host).unwrap_err().code, 7);
        assert_eq!(resolve(None, &d.path().join("x"), &d.path().join("y")).unwrap_err().code, 5);
    }
}
