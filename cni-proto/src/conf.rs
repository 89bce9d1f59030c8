//! The network configuration on stdin: typed well-known keys plus the raw
//! JSON, so plugin-specific and unknown keys pass through untouched.

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

use crate::env::validate_network_name;
use crate::error::CniError;
use crate::result::{CniResult, Dns};
use crate::strict;
use crate::version::IMPLICIT;

/// The `ipam` object: its `type` (the delegate binary) and everything else raw.
#[derive(Debug, Clone, PartialEq)]
pub struct IpamConf {
    /// `ipam.type` ("" when absent; the plugin decides whether that is an error).
    pub ipam_type: String,
    /// The whole `ipam` object.
    pub raw: Value,
}

/// One entry of GC's `cni.dev/valid-attachments`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
pub struct ValidAttachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// The config a plugin receives on stdin (one plugin object of a conflist,
/// with `cniVersion`, `name`, `runtimeConfig` and `prevResult` injected).
#[derive(Debug, Clone, PartialEq)]
pub struct NetConf {
    /// `cniVersion`; `"0.1.0"` when absent (spec).
    pub cni_version: String,
    pub name: String,
    /// `type` ("" when absent).
    pub plugin_type: String,
    pub ipam: Option<IpamConf>,
    pub dns: Option<Dns>,
    /// The previous plugin's result (chaining; DEL/CHECK replay the ADD result).
    pub prev_result: Option<CniResult>,
    pub runtime_config: Option<Value>,
    pub args: Option<Value>,
    /// The whole object as received.
    pub raw: Value,
}

fn opt_string(obj: &serde_json::Map<String, Value>, key: &str) -> Result<Option<String>, CniError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(CniError::decoding(
            format!("error decoding network config: {key:?} must be a string"),
            other.to_string(),
        )),
    }
}

impl NetConf {
    /// Decode stdin: not JSON / not an object / mistyped well-known key → code 6;
    /// missing or invalid `name` → code 7.
    pub fn parse(stdin: &[u8]) -> Result<NetConf, CniError> {
        let raw: Value = serde_json::from_slice(stdin)
            .map_err(|e| CniError::decoding("error unmarshalling network config", e.to_string()))?;
        let obj = raw
            .as_object()
            .ok_or_else(|| CniError::decoding("error unmarshalling network config", "not a JSON object"))?;
        let cni_version = opt_string(obj, "cniVersion")?.unwrap_or_else(|| IMPLICIT.to_string());
        let name = opt_string(obj, "name")?.unwrap_or_default();
        validate_network_name(&name)?;
        let plugin_type = opt_string(obj, "type")?.unwrap_or_default();
        let ipam = match obj.get("ipam") {
            None | Some(Value::Null) => None,
            Some(v @ Value::Object(m)) => {
                let ipam_type = match m.get("type") {
                    None | Some(Value::Null) => String::new(),
                    Some(Value::String(s)) => s.clone(),
                    Some(o) => return Err(CniError::decoding("ipam.type must be a string", o.to_string())),
                };
                Some(IpamConf { ipam_type, raw: v.clone() })
            }
            Some(o) => return Err(CniError::decoding("ipam must be an object", o.to_string())),
        };
        let dns = match obj.get("dns") {
            None | Some(Value::Null) => None,
            Some(v) => Some(
                strict::from_value::<Dns>(v)
                    .map_err(|e| CniError::decoding("cannot decode dns", e.to_string()))?,
            ),
        };
        let prev_result = match obj.get("prevResult") {
            None | Some(Value::Null) => None,
            Some(v) => Some(CniResult::from_value(v).map_err(|e| e.context("prevResult"))?),
        };
        let runtime_config = obj.get("runtimeConfig").filter(|v| !v.is_null()).cloned();
        let args = obj.get("args").filter(|v| !v.is_null()).cloned();
        Ok(NetConf { cni_version, name, plugin_type, ipam, dns, prev_result, runtime_config, args, raw })
    }

    /// Deserialize plugin-specific keys from the raw object (unknown keys are
    /// ignored by serde unless `T` denies them). Code 7 naming the problem.
    /// No section is ever read from an array ([`crate::strict`]).
    pub fn extra<T: DeserializeOwned>(&self) -> Result<T, CniError> {
        strict::from_value(&self.raw)
            .map_err(|e| CniError::invalid_config("invalid network config", e.to_string()))
    }

    /// Deserialize plugin-specific keys of the `ipam` object (code 7), as
    /// strictly as [`NetConf::extra`].
    pub fn ipam_extra<T: DeserializeOwned>(&self) -> Result<T, CniError> {
        let ipam = self.ipam.as_ref().map(|i| &i.raw).unwrap_or(&Value::Null);
        strict::from_value(ipam).map_err(|e| CniError::invalid_config("invalid ipam config", e.to_string()))
    }

    /// A top-level string key (e.g. `log_level`), `None` if absent or not a string.
    pub fn str_key(&self, key: &str) -> Option<&str> {
        self.raw.get(key).and_then(Value::as_str)
    }

    /// GC's attachments to keep: the union of `cni.dev/valid-attachments` and
    /// the legacy `cni.dev/attachments`. `None` when neither key is present.
    pub fn valid_attachments(&self) -> Result<Option<Vec<ValidAttachment>>, CniError> {
        let mut out: Option<Vec<ValidAttachment>> = None;
        for key in ["cni.dev/valid-attachments", "cni.dev/attachments"] {
            if let Some(v) = self.raw.get(key).filter(|v| !v.is_null()) {
                let list = strict::from_value::<Vec<ValidAttachment>>(v)
                    .map_err(|e| CniError::decoding(format!("cannot decode {key}"), e.to_string()))?;
                out.get_or_insert_with(Vec::new).extend(list);
            }
        }
        if let Some(list) = out.as_mut() {
            list.sort();
            list.dedup();
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<NetConf, CniError> {
        NetConf::parse(v.to_string().as_bytes())
    }

    #[test]
    fn calico_conflist_plugin_object() {
        let c = parse(json!({
            "cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "calico",
            "log_level": "debug", "datastore_type": "etcdv3", "etcd_endpoints": "http://127.0.0.1:2379",
            "mtu": 1440, "ipam": {"type": "calico-ipam", "assign_ipv6": "true"},
            "container_settings": {"allow_ip_forwarding": true},
            "runtimeConfig": {"portMappings": []}, "args": {"cni": {"ips": ["10.0.0.1"]}},
            "dns": {"nameservers": ["10.96.0.10"]}, "some_future_key": [1, 2]
        }))
        .unwrap();
        assert_eq!(c.cni_version, "1.0.0");
        assert_eq!(c.name, "k8s-pod-network");
        assert_eq!(c.plugin_type, "calico");
        assert_eq!(c.ipam.as_ref().unwrap().ipam_type, "calico-ipam");
        assert_eq!(c.dns.as_ref().unwrap().nameservers, vec!["10.96.0.10"]);
        assert!(c.runtime_config.is_some() && c.args.is_some() && c.prev_result.is_none());
        assert_eq!(c.raw["some_future_key"], json!([1, 2]), "unknown keys kept");
        assert_eq!(c.str_key("log_level"), Some("debug"));

        #[derive(Deserialize)]
        struct Extra {
            mtu: u32,
            datastore_type: String,
        }
        let e: Extra = c.extra().unwrap();
        assert_eq!((e.mtu, e.datastore_type.as_str()), (1440, "etcdv3"));
        #[derive(Deserialize, Debug)]
        struct Ipam {
            assign_ipv6: String,
        }
        assert_eq!(c.ipam_extra::<Ipam>().unwrap().assign_ipv6, "true");
        #[derive(Deserialize, Debug)]
        struct Wrong {
            #[allow(dead_code)]
            mtu: String,
        }
        assert_eq!(c.extra::<Wrong>().unwrap_err().code, 7);
    }

    #[test]
    fn missing_version_is_0_1_0() {
        let c = parse(json!({"name": "n", "type": "x"})).unwrap();
        assert_eq!(c.cni_version, "0.1.0");
    }

    #[test]
    fn decode_and_name_errors() {
        assert_eq!(NetConf::parse(b"{").unwrap_err().code, 6);
        assert_eq!(NetConf::parse(b"").unwrap_err().code, 6);
        assert_eq!(NetConf::parse(b"[]").unwrap_err().code, 6);
        assert_eq!(NetConf::parse(b"null").unwrap_err().code, 6);
        assert_eq!(parse(json!({"cniVersion": 1, "name": "n"})).unwrap_err().code, 6);
        assert_eq!(parse(json!({"name": "n", "ipam": "x"})).unwrap_err().code, 6);
        assert_eq!(parse(json!({"name": "n", "ipam": {"type": 3}})).unwrap_err().code, 6);
        assert_eq!(parse(json!({"name": "n", "dns": {"nameservers": "x"}})).unwrap_err().code, 6);
        assert_eq!(parse(json!({"name": "n", "prevResult": {"ips": 1}})).unwrap_err().code, 6);
        assert_eq!(parse(json!({"cniVersion": "1.0.0"})).unwrap_err().code, 7);
        assert_eq!(parse(json!({"name": ""})).unwrap_err().code, 7);
        assert_eq!(parse(json!({"name": "bad name"})).unwrap_err().code, 7);
    }

    #[test]
    fn prev_result_any_version() {
        let c = parse(json!({"cniVersion":"0.4.0","name":"n","prevResult":{"cniVersion":"0.4.0",
            "ips":[{"version":"4","address":"10.0.0.2/32"}]}}))
        .unwrap();
        assert_eq!(c.prev_result.unwrap().ips[0].address.to_string(), "10.0.0.2/32");
    }

    #[test]
    fn gc_attachments() {
        let c = parse(json!({"cniVersion":"1.1.0","name":"n",
            "cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"}],
            "cni.dev/attachments":[{"containerID":"a","ifname":"eth0"},{"containerID":"b","ifname":"eth1"}]}))
        .unwrap();
        let v = c.valid_attachments().unwrap().unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(v[1], ValidAttachment { container_id: "b".into(), ifname: "eth1".into() });
        assert_eq!(parse(json!({"name":"n"})).unwrap().valid_attachments().unwrap(), None);
        let empty = parse(json!({"name":"n","cni.dev/valid-attachments":[]})).unwrap();
        assert_eq!(empty.valid_attachments().unwrap(), Some(vec![]));
        let bad = parse(json!({"name":"n","cni.dev/valid-attachments":[{"x":1}]})).unwrap();
        assert_eq!(bad.valid_attachments().unwrap_err().code, 6);
    }
}
