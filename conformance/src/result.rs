//! Result documents as a runtime handles them: kept as JSON (unknown keys
//! survive), converted between spec versions the way libcni's `GetAsVersion`
//! does before a cached result is replayed as `prevResult`.
//!
//! Shapes: 0.1.0/0.2.0 have `ip4`/`ip6` objects (`ip`, `gateway`, `routes`);
//! 0.3.x/0.4.0 have `interfaces`, `ips[]` with `version` ("4"/"6"), `routes`;
//! 1.x drop `ips[].version`.

use std::net::IpAddr;

use cni_proto::version;
use ipnetwork::IpNetwork;
use serde_json::{json, Map, Value};

use cni_proto::version::Version;

fn is_legacy(v: Version) -> bool {
    v < Version { major: 0, minor: 3, patch: 0 }
}

/// Convert `result` to spec version `to`. The input version is the result's
/// own `cniVersion` (or `fallback` when it has none, as libcni does).
pub fn convert(result: &Value, to: &str, fallback: &str) -> Result<Value, String> {
    let Value::Object(obj) = result else {
        return Err("result is not a JSON object".into());
    };
    let from_s = obj.get("cniVersion").and_then(Value::as_str).filter(|s| !s.is_empty()).unwrap_or(fallback);
    let from = Version::parse(if from_s.is_empty() { version::IMPLICIT } else { from_s })
        .ok_or_else(|| format!("result has invalid cniVersion {from_s:?}"))?;
    let target = Version::parse(to).ok_or_else(|| format!("invalid target version {to:?}"))?;
    let mut modern = if is_legacy(from) { legacy_to_modern(obj)? } else { obj.clone() };
    if is_legacy(target) {
        let mut out = modern_to_legacy(&modern)?;
        out.insert("cniVersion".into(), json!(to));
        return Ok(Value::Object(out));
    }
    let with_version = target < Version::V1_0_0;
    if let Some(Value::Array(ips)) = modern.get_mut("ips") {
        for ip in ips.iter_mut().filter_map(Value::as_object_mut) {
            if with_version {
                let fam = ip_family(ip.get("address"))?;
                ip.insert("version".into(), json!(fam));
            } else {
                ip.remove("version");
            }
        }
    }
    modern.insert("cniVersion".into(), json!(to));
    Ok(Value::Object(modern))
}

fn ip_family(address: Option<&Value>) -> Result<&'static str, String> {
    let s = address.and_then(Value::as_str).ok_or("ips[] entry without address")?;
    let net: IpNetwork = s.parse().map_err(|e| format!("ips[] address {s:?}: {e}"))?;
    Ok(if net.is_ipv4() { "4" } else { "6" })
}

fn legacy_to_modern(obj: &Map<String, Value>) -> Result<Map<String, Value>, String> {
    let mut ips = Vec::new();
    let mut routes = Vec::new();
    for key in ["ip4", "ip6"] {
        let Some(Value::Object(ipc)) = obj.get(key) else { continue };
        let mut ip = Map::new();
        if let Some(a) = ipc.get("ip") {
            ip.insert("address".into(), a.clone());
        }
        if let Some(g) = ipc.get("gateway") {
            ip.insert("gateway".into(), g.clone());
        }
        ips.push(Value::Object(ip));
        if let Some(Value::Array(r)) = ipc.get("routes") {
            routes.extend(r.iter().cloned());
        }
    }
    let mut out = Map::new();
    out.insert("ips".into(), Value::Array(ips));
    if !routes.is_empty() {
        out.insert("routes".into(), Value::Array(routes));
    }
    if let Some(d) = obj.get("dns") {
        out.insert("dns".into(), d.clone());
    }
    Ok(out)
}

fn modern_to_legacy(obj: &Map<String, Value>) -> Result<Map<String, Value>, String> {
    let mut out = Map::new();
    let ips = obj.get("ips").and_then(Value::as_array).cloned().unwrap_or_default();
    let routes = obj.get("routes").and_then(Value::as_array).cloned().unwrap_or_default();
    for (key, fam) in [("ip4", "4"), ("ip6", "6")] {
        let Some(ip) = ips.iter().find(|ip| ip_family(ip.get("address")).ok() == Some(fam)) else { continue };
        let mut ipc = Map::new();
        ipc.insert("ip".into(), ip.get("address").cloned().unwrap_or(Value::Null));
        if let Some(g) = ip.get("gateway") {
            ipc.insert("gateway".into(), g.clone());
        }
        let fam_routes: Vec<Value> = routes
            .iter()
            .filter(|r| {
                r.get("dst")
                    .and_then(Value::as_str)
                    .and_then(|d| d.parse::<IpNetwork>().ok())
                    .is_some_and(|n| (fam == "4") == n.is_ipv4())
            })
            .cloned()
            .collect();
        if !fam_routes.is_empty() {
            ipc.insert("routes".into(), Value::Array(fam_routes));
        }
        out.insert(key.into(), Value::Object(ipc));
    }
    if let Some(d) = obj.get("dns") {
        out.insert("dns".into(), d.clone());
    }
    Ok(out)
}

/// The addresses (`ips[].address`, or legacy `ip4.ip`/`ip6.ip`) of a result.
pub fn addresses(result: &Value) -> Vec<IpNetwork> {
    let mut out: Vec<IpNetwork> = result
        .get("ips")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|ip| ip.get("address")?.as_str()?.parse().ok())
        .collect();
    for key in ["ip4", "ip6"] {
        if let Some(a) = result.get(key).and_then(|v| v.get("ip")).and_then(Value::as_str) {
            if let Ok(n) = a.parse() {
                out.push(n);
            }
        }
    }
    out
}

/// Just the IPs of [`addresses`].
pub fn ips(result: &Value) -> Vec<IpAddr> {
    addresses(result).iter().map(IpNetwork::ip).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modern_versions_toggle_ip_version_field() {
        let r = json!({"cniVersion": "1.0.0", "interfaces": [{"name": "eth0"}],
            "ips": [{"address": "10.0.0.2/24", "interface": 0}, {"address": "fd00::2/64"}], "x": 1});
        let old = convert(&r, "0.4.0", "").unwrap();
        assert_eq!(old["ips"][0]["version"], "4");
        assert_eq!(old["ips"][1]["version"], "6");
        assert_eq!(old["x"], 1, "unknown keys survive");
        let back = convert(&old, "1.1.0", "").unwrap();
        assert!(back["ips"][0].get("version").is_none());
        assert_eq!(back["cniVersion"], "1.1.0");
    }

    #[test]
    fn legacy_round_trip() {
        let r = json!({"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.2/24", "gateway": "10.0.0.1"}],
            "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}], "dns": {"nameservers": ["1.1.1.1"]}});
        let l = convert(&r, "0.2.0", "").unwrap();
        assert_eq!(l["ip4"]["ip"], "10.0.0.2/24");
        assert_eq!(l["ip4"]["routes"], json!([{"dst": "0.0.0.0/0"}]));
        let m = convert(&l, "0.3.1", "").unwrap();
        assert_eq!(m["ips"][0], json!({"address": "10.0.0.2/24", "gateway": "10.0.0.1", "version": "4"}));
        assert_eq!(ips(&m), vec!["10.0.0.2".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn missing_version_uses_fallback() {
        let r = json!({"ips": [{"address": "10.0.0.2/24", "version": "4"}]});
        assert_eq!(convert(&r, "1.0.0", "0.4.0").unwrap()["ips"][0].get("version"), None);
        assert!(convert(&json!([]), "1.0.0", "").is_err());
    }
}
