//! The CNI result: kept in the 1.1 shape internally, printed in the shape of
//! the config's version, parsed from any supported version (prevResult, an
//! IPAM delegate's output).

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::CniError;
use crate::version::Version;

/// `interfaces[]`: `sandbox` is the netns path for container interfaces and
/// absent for host ones.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// 1.1.0 only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    /// 1.1.0 only.
    #[serde(rename = "socketPath", default, skip_serializing_if = "Option::is_none")]
    pub socket_path: Option<String>,
    /// 1.1.0 only.
    #[serde(rename = "pciID", default, skip_serializing_if = "Option::is_none")]
    pub pci_id: Option<String>,
}

/// `ips[]`: the address in CIDR form; `interface` indexes `interfaces`
/// (IPAM plugins leave it out).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    pub address: IpNetwork,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

impl IpConfig {
    pub fn is_ipv4(&self) -> bool {
        self.address.is_ipv4()
    }
}

/// `routes[]`. `mtu`, `advmss`, `priority`, `table`, `scope` are 1.1.0 only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub dst: IpNetwork,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advmss: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<u8>,
}

impl Route {
    /// A plain route `dst [via gw]`.
    pub fn new(dst: IpNetwork, gw: Option<IpAddr>) -> Route {
        Route { dst, gw, mtu: None, advmss: None, priority: None, table: None, scope: None }
    }
}

/// `dns` (also the config's `dns` key).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty()
            && self.domain.is_none()
            && self.search.is_empty()
            && self.options.is_empty()
    }
}

/// A CNI result (ADD output, prevResult, IPAM delegate output).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniResult {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    #[serde(default, skip_serializing_if = "Dns::is_empty")]
    pub dns: Dns,
}

const V1_1_ROUTE_KEYS: &[&str] = &["mtu", "advmss", "priority", "table", "scope"];
const V1_1_IFACE_KEYS: &[&str] = &["mtu", "socketPath", "pciID"];

impl CniResult {
    /// Parse a result printed in any supported version (0.3.x/0.4.0 carry
    /// `ips[].version`, which is implied by the address and ignored). Code 6
    /// when it does not decode.
    pub fn from_value(v: &Value) -> Result<CniResult, CniError> {
        if !v.is_object() {
            return Err(CniError::decoding("result is not a JSON object", v.to_string()));
        }
        if v.get("ip4").is_some() || v.get("ip6").is_some() {
            return Err(CniError::incompatible_version(
                "result in the 0.1/0.2 format (ip4/ip6) is not supported",
                "",
            ));
        }
        crate::strict::from_value::<CniResult>(v)
            .map_err(|e| CniError::decoding("cannot decode CNI result", e.to_string()))
    }

    /// Parse raw bytes (a delegate's stdout).
    pub fn from_slice(b: &[u8]) -> Result<CniResult, CniError> {
        let v: Value = serde_json::from_slice(b)
            .map_err(|e| CniError::decoding("cannot decode CNI result JSON", e.to_string()))?;
        Self::from_value(&v)
    }

    /// The result in the shape of `version` with `cniVersion` set to it:
    /// 0.3.x/0.4.0 get `ips[].version` ("4"/"6"); fields new in 1.1.0 are
    /// dropped for older versions.
    pub fn to_json(&self, version: &str) -> Value {
        let parsed = Version::parse(version).unwrap_or(Version::V1_1_0);
        let mut v = serde_json::to_value(self).unwrap_or_else(|_| Value::Object(Default::default()));
        if let Some(obj) = v.as_object_mut() {
            if parsed < Version::V1_1_0 {
                strip_keys(obj.get_mut("routes"), V1_1_ROUTE_KEYS);
                strip_keys(obj.get_mut("interfaces"), V1_1_IFACE_KEYS);
            }
            if parsed.has_ip_version_field() {
                if let Some(Value::Array(ips)) = obj.get_mut("ips") {
                    for (ip, cfg) in ips.iter_mut().zip(&self.ips) {
                        if let Some(o) = ip.as_object_mut() {
                            o.insert("version".into(), Value::from(if cfg.is_ipv4() { "4" } else { "6" }));
                        }
                    }
                }
            }
            obj.insert("cniVersion".into(), Value::from(version));
        }
        v
    }
}

fn strip_keys(list: Option<&mut Value>, keys: &[&str]) {
    if let Some(Value::Array(items)) = list {
        for item in items {
            if let Some(o) = item.as_object_mut() {
                for k in keys {
                    o.remove(*k);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![
                Interface {
                    name: "cali123".into(),
                    mac: Some("ee:ee:ee:ee:ee:ee".into()),
                    ..Default::default()
                },
                Interface {
                    name: "eth0".into(),
                    mac: Some("02:00:00:00:00:01".into()),
                    mtu: Some(1450),
                    sandbox: Some("/run/netns/p".into()),
                    ..Default::default()
                },
            ],
            ips: vec![
                IpConfig { address: "10.0.0.5/32".parse().unwrap(), gateway: None, interface: Some(1) },
                IpConfig { address: "fd00::5/128".parse().unwrap(), gateway: None, interface: Some(1) },
            ],
            routes: vec![Route { scope: Some(253), ..Route::new("0.0.0.0/0".parse().unwrap(), None) }],
            dns: Dns::default(),
        }
    }

    #[test]
    fn prints_1_1_shape() {
        let v = sample().to_json("1.1.0");
        assert_eq!(v["cniVersion"], "1.1.0");
        assert_eq!(v["ips"][0], json!({"address":"10.0.0.5/32","interface":1}));
        assert_eq!(v["interfaces"][1]["mtu"], 1450);
        assert_eq!(v["routes"][0], json!({"dst":"0.0.0.0/0","scope":253}));
        assert!(v.get("dns").is_none());
    }

    #[test]
    fn prints_1_0_shape_without_1_1_fields() {
        let v = sample().to_json("1.0.0");
        assert_eq!(v["cniVersion"], "1.0.0");
        assert!(v["ips"][0].get("version").is_none());
        assert!(v["interfaces"][1].get("mtu").is_none());
        assert_eq!(v["interfaces"][1]["sandbox"], "/run/netns/p");
        assert_eq!(v["routes"][0], json!({"dst":"0.0.0.0/0"}));
    }

    #[test]
    fn prints_0_x_shape_with_ip_version() {
        for ver in ["0.3.0", "0.3.1", "0.4.0"] {
            let v = sample().to_json(ver);
            assert_eq!(v["cniVersion"], ver);
            assert_eq!(v["ips"][0]["version"], "4");
            assert_eq!(v["ips"][1]["version"], "6");
            assert_eq!(v["ips"][1]["address"], "fd00::5/128");
        }
    }

    #[test]
    fn parses_every_version_it_prints() {
        let r = sample();
        for ver in ["0.3.0", "0.3.1", "0.4.0", "1.0.0"] {
            let back = CniResult::from_value(&r.to_json(ver)).unwrap();
            let mut expect = r.clone();
            expect.interfaces[1].mtu = None;
            expect.routes[0].scope = None;
            assert_eq!(back, expect, "{ver}");
        }
        assert_eq!(CniResult::from_value(&r.to_json("1.1.0")).unwrap(), r);
    }

    #[test]
    fn parses_ipam_output_and_dns() {
        let v = json!({"cniVersion":"0.3.1","ips":[{"version":"4","address":"10.1.2.3/24","gateway":"10.1.2.1"}],
                       "routes":[{"dst":"0.0.0.0/0","gw":"10.1.2.1"}],"dns":{"nameservers":["8.8.8.8"]},
                       "unknown":true});
        let r = CniResult::from_value(&v).unwrap();
        assert!(r.interfaces.is_empty());
        assert_eq!(r.ips[0].gateway, Some("10.1.2.1".parse().unwrap()));
        assert_eq!(r.ips[0].address.prefix(), 24);
        assert_eq!(r.ips[0].address.ip().to_string(), "10.1.2.3", "host bits kept");
        assert_eq!(r.dns.nameservers, vec!["8.8.8.8"]);
        assert_eq!(r.to_json("1.0.0")["dns"]["nameservers"][0], "8.8.8.8");
    }

    #[test]
    fn bad_results_are_decode_errors() {
        for bad in [
            json!([]),
            json!("x"),
            json!({"ips":[{"address":"not-an-ip"}]}),
            json!({"ips":[{"address":"10.0.0.1/33"}]}),
            json!({"ips":[{"address":"10.0.0.1/32","interface":-1}]}),
            json!({"interfaces":[{"mac":"x"}]}),
            json!({"routes":"x"}),
        ] {
            assert_eq!(CniResult::from_value(&bad).unwrap_err().code, 6, "{bad}");
        }
        assert_eq!(CniResult::from_value(&json!({"ip4":{}})).unwrap_err().code, 1);
        assert_eq!(CniResult::from_slice(b"{").unwrap_err().code, 6);
        assert_eq!(CniResult::from_slice(b"{}").unwrap(), CniResult::default());
    }
}
