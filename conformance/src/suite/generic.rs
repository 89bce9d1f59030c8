//! Generic cases: spec MUSTs a runtime can observe, for any plugin + IPAM.

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde_json::{json, Value};

use super::{na, pass, Case, CaseResult, ConfOpts, Env, Group, Outcome};
use crate::ensure;
use crate::exec::Output;
use crate::result;
use crate::runtime::{at_least, Attachment, Runtime, RuntimeConf};
use cni_proto::version::Version;

pub fn cases() -> Vec<Case> {
    let g = |id, title, run| Case { id, title, group: Group::Generic, run };
    vec![
        g("version", "VERSION: exit 0, supportedVersions ⊇ 0.3.1/0.4.0/1.0.0", version),
        g("version-mismatch", "unsupported config version → code 1", version_mismatch),
        g("check-floor", "CHECK with a 0.3.1 config → code 1", check_floor),
        g("env-missing", "ADD without CONTAINERID / IFNAME → code 4 naming it", env_missing),
        g("bad-json", "undecodable stdin → code 6", bad_json),
        g("bad-name", "missing / invalid network name → code 7", bad_name),
        g("add-result", "ADD result in the requested version (0.3.1…1.1.0)", add_result),
        g("add-iface", "ADD: CNI_IFNAME up in the pod with the result's IPs", add_iface),
        g("add-dual-stack", "ADD v4+v6: one address of each family", add_dual_stack),
        g("add-existing-ifname", "ADD onto an existing ifname → error, no orphan IP", add_existing_ifname),
        g("check", "CHECK after ADD: exit 0, empty stdout", check_ok),
        g("check-missing-iface", "CHECK after the interface is removed → error", check_missing_iface),
        g("check-ipam", "CHECK reaches the IPAM (record removed → error)", check_ipam),
        g("del", "DEL: interface gone, IP released, cache entry removed", del),
        g("del-twice", "DEL repeated → exit 0", del_twice),
        g("del-no-netns", "DEL with CNI_NETNS empty → exit 0, IP released", del_no_netns),
        g("del-netns-gone", "DEL after the netns is deleted → exit 0, IP released", del_netns_gone),
        g("del-unknown", "DEL of a never-added container → exit 0", del_unknown),
        g(
            "chain-prevresult",
            "chained plugin gets the result as prevResult (ADD/CHECK/DEL)",
            chain_prevresult,
        ),
        g("chain-tuning", "chained with Debian's tuning: result kept, sysctl applied", chain_tuning),
        g("prevresult-tolerated", "plugin after another one tolerates a prevResult", prevresult_tolerated),
        g("unknown-keys", "unknown keys, args, runtimeConfig tolerated", unknown_keys),
        g("ipam-direct", "IPAM result: ips, no interfaces; DEL releases", ipam_direct),
        g("gc-runtime", "runtime GC: stale cached attachment DELeted, valid kept", gc_runtime),
        g("gc", "plugin GC keeps exactly cni.dev/valid-attachments", gc_plugin),
        g("status", "STATUS → exit 0 when ready", status),
        g("parallel-add", "6 parallel ADDs: distinct IPs; parallel DELs release all", parallel_add),
    ]
}

/// The error code of a failed call's stdout, if it printed a CNI error.
pub fn err_code(out: &Output) -> Option<u64> {
    serde_json::from_slice::<Value>(&out.stdout).ok()?.get("code")?.as_u64()
}

fn describe(out: &Output) -> String {
    format!("{}: stdout {:?} stderr {:?}", out.status_text(), out.stdout_str(), out.stderr_str())
}

fn expect_code(out: &Output, code: u64, mention: &[&str]) -> Result<(), String> {
    ensure!(!out.success(), "expected failure with code {code}, got success ({})", describe(out));
    ensure!(err_code(out) == Some(code), "expected code {code}, got {}", describe(out));
    let text = out.stdout_str();
    for m in mention {
        ensure!(text.contains(m), "error does not mention {m:?}: {text}");
    }
    Ok(())
}

/// The full CNI environment of `command`, as `(&str, &str)` pairs minus `skip`.
fn vars_without(env: &Env, command: &str, rt: &RuntimeConf, skip: &[&str]) -> Vec<(String, String)> {
    env.vars(command, rt).into_iter().filter(|(k, _)| !skip.contains(&k.as_str())).collect()
}

fn raw_vars(env: &Env, plugin: &str, stdin: &[u8], vars: &[(String, String)]) -> Result<Output, String> {
    let v: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    env.raw(plugin, stdin, &v)
}

/// The one-plugin config the runtime would send for ADD.
fn stdin_of(env: &Env, version: &str, prev: Option<&Value>, rt: &RuntimeConf) -> Value {
    let list = env.list_of(version, vec![env.plugin(&ConfOpts::v4())]);
    Runtime::plugin_config(&list.name, version, &list.plugins[0], prev, Some(rt))
}

fn add(env: &Env, pod: &str, cid: &str) -> Result<Value, String> {
    env.runtime.add_network_list(&env.list(), &env.rt(pod, cid)).map_err(|e| format!("ADD {cid}: {e}"))
}

fn del(env: &Env) -> CaseResult {
    let pod = env.pod();
    add(env, &pod, "c-del")?;
    let list = env.list();
    let rt = env.rt(&pod, "c-del");
    ensure!(
        env.runtime.cache.read(&list.name, "c-del", "eth0").map_err(|e| e.to_string())?.is_some(),
        "no cache entry after ADD"
    );
    env.runtime.del_network_list(&list, &rt).map_err(|e| format!("DEL: {e}"))?;
    ensure!(!env.pod_links(&pod)?.contains(&"eth0".to_string()), "eth0 still in the pod after DEL");
    let left = env.ips_of("c-del")?;
    ensure!(left.is_empty(), "IPs still allocated after DEL: {left:?}");
    ensure!(
        env.runtime.cache.read(&list.name, "c-del", "eth0").map_err(|e| e.to_string())?.is_none(),
        "cache entry left after DEL"
    );
    pass()
}

fn version(env: &Env) -> CaseResult {
    let mut notes = Vec::new();
    for plugin in [env.imp.main_plugin(), env.imp.ipam_plugin()] {
        let out = env.raw(plugin, br#"{"cniVersion":"1.0.0"}"#, &[("CNI_COMMAND", "VERSION")])?;
        ensure!(out.success(), "{plugin} VERSION: {}", describe(&out));
        let vi = crate::runtime::parse_version_info(&out.stdout).map_err(|e| format!("{plugin}: {e}"))?;
        for v in ["0.3.1", "0.4.0", "1.0.0"] {
            ensure!(vi.supports(v), "{plugin} does not list {v}: {:?}", vi.supported_versions);
        }
        notes.push(format!("{plugin}: {}", vi.supported_versions.join(",")));
    }
    Ok(Outcome::Pass(notes.join("; ")))
}

fn version_mismatch(env: &Env) -> CaseResult {
    let pod = env.pod();
    let rt = env.rt(&pod, "c-vm");
    let mut conf = stdin_of(env, &env.version, None, &rt);
    conf["cniVersion"] = json!("99.0.0");
    for plugin in [env.imp.main_plugin(), env.imp.ipam_plugin()] {
        let out = env.raw_call(plugin, "ADD", &conf, &rt)?;
        expect_code(&out, 1, &["incompatible CNI versions"]).map_err(|e| format!("{plugin}: {e}"))?;
    }
    ensure!(env.ips_of("c-vm")?.is_empty(), "an IP was allocated by a rejected ADD");
    pass()
}

fn check_floor(env: &Env) -> CaseResult {
    if !env.main_versions.supports("0.3.1") {
        return na("plugin does not support 0.3.1");
    }
    let pod = env.pod();
    let rt = env.rt(&pod, "c-cf");
    let conf = stdin_of(env, "0.3.1", None, &rt);
    let out = env.raw_call(env.imp.main_plugin(), "CHECK", &conf, &rt)?;
    expect_code(&out, 1, &[])?;
    pass()
}

fn env_missing(env: &Env) -> CaseResult {
    let pod = env.pod();
    let rt = env.rt(&pod, "c-env");
    let conf = serde_json::to_vec(&stdin_of(env, &env.version, None, &rt)).map_err(|e| e.to_string())?;
    for var in ["CNI_CONTAINERID", "CNI_IFNAME"] {
        let vars = vars_without(env, "ADD", &rt, &[var]);
        let out = raw_vars(env, env.imp.main_plugin(), &conf, &vars)?;
        expect_code(&out, 4, &[var]).map_err(|e| format!("without {var}: {e}"))?;
    }
    ensure!(env.ips_of("c-env")?.is_empty(), "an IP was allocated by a rejected ADD");
    ensure!(!env.pod_links(&pod)?.contains(&"eth0".to_string()), "eth0 created by a rejected ADD");
    pass()
}

fn bad_json(env: &Env) -> CaseResult {
    let pod = env.pod();
    let rt = env.rt(&pod, "c-json");
    let vars = env.vars("ADD", &rt);
    for plugin in [env.imp.main_plugin(), env.imp.ipam_plugin()] {
        let out = raw_vars(env, plugin, b"{\"cniVersion\": \"1.0.0\", \"name\": ", &vars)?;
        expect_code(&out, 6, &[]).map_err(|e| format!("{plugin}: {e}"))?;
    }
    pass()
}

fn bad_name(env: &Env) -> CaseResult {
    let pod = env.pod();
    let rt = env.rt(&pod, "c-name");
    let good = stdin_of(env, &env.version, None, &rt);
    let mut missing = good.clone();
    if let Some(m) = missing.as_object_mut() {
        m.remove("name");
    }
    let mut invalid = good.clone();
    invalid["name"] = json!("bad name!");
    for (what, conf) in [("missing name", &missing), ("invalid name", &invalid)] {
        let out = env.raw_call(env.imp.main_plugin(), "ADD", conf, &rt)?;
        expect_code(&out, 7, &[]).map_err(|e| format!("{what}: {e}"))?;
    }
    ensure!(env.ips_of("c-name")?.is_empty(), "an IP was allocated by a rejected ADD");
    pass()
}

/// Result shape per version; returns the result's IPs.
pub fn check_result_shape(res: &Value, version: &str, netns: &str) -> Result<Vec<IpAddr>, String> {
    ensure!(
        res["cniVersion"] == json!(version),
        "result cniVersion {} != requested {version}",
        res["cniVersion"]
    );
    let ips = res["ips"].as_array().ok_or_else(|| format!("result without ips: {res}"))?;
    ensure!(!ips.is_empty(), "result has no ips: {res}");
    let ifaces = res.get("interfaces").and_then(Value::as_array).cloned().unwrap_or_default();
    for iface in &ifaces {
        ensure!(
            iface.get("name").and_then(Value::as_str).is_some_and(|n| !n.is_empty()),
            "interface without name: {iface}"
        );
    }
    let modern = at_least(version, Version::V1_0_0);
    let mut out = Vec::new();
    for ip in ips {
        let addr = ip["address"].as_str().ok_or_else(|| format!("ips[] without address: {ip}"))?;
        let net: IpNetwork = addr.parse().map_err(|e| format!("address {addr:?} is not a CIDR: {e}"))?;
        let fam = if net.is_ipv4() { "4" } else { "6" };
        if modern {
            ensure!(ip.get("version").is_none(), "{version} result has ips[].version: {ip}");
        } else {
            ensure!(ip["version"] == json!(fam), "{version} result needs ips[].version {fam:?}: {ip}");
        }
        if let Some(idx) = ip.get("interface") {
            let i = idx.as_u64().ok_or_else(|| format!("interface index not a number: {ip}"))? as usize;
            ensure!(i < ifaces.len(), "interface index {i} out of range ({} interfaces)", ifaces.len());
            ensure!(
                ifaces[i]["sandbox"] == json!(netns),
                "ips[].interface points to a non-sandbox interface: {}",
                ifaces[i]
            );
        }
        out.push(net.ip());
    }
    out.sort();
    Ok(out)
}

fn add_result(env: &Env) -> CaseResult {
    let mut tried = Vec::new();
    let mut skipped = Vec::new();
    for (i, v) in ["0.3.1", "0.4.0", "1.0.0", "1.1.0"].iter().enumerate() {
        if !env.supports(v) {
            skipped.push(*v);
            continue;
        }
        let pod = env.pod();
        let cid = format!("c-res{i}");
        let list = env.list_of(v, vec![env.plugin(&ConfOpts::v4())]);
        let rt = env.rt(&pod, &cid);
        let res = env.runtime.add_network_list(&list, &rt).map_err(|e| format!("ADD at {v}: {e}"))?;
        let ips = check_result_shape(&res, v, &pod).map_err(|e| format!("at {v}: {e}"))?;
        let held = env.ips_of(&cid)?;
        ensure!(held == ips, "at {v}: result IPs {ips:?} != IPAM allocations {held:?}");
        env.runtime.del_network_list(&list, &rt).map_err(|e| format!("DEL at {v}: {e}"))?;
        ensure!(env.ips_of(&cid)?.is_empty(), "at {v}: IPs left after DEL");
        tried.push(*v);
    }
    let mut note = format!("versions {}", tried.join(","));
    if !skipped.is_empty() {
        note.push_str(&format!("; not supported: {}", skipped.join(",")));
    }
    Ok(Outcome::Pass(note))
}

/// `ip -j addr show dev <if>` in a pod: (is up, addresses).
pub fn pod_iface(env: &Env, pod: &str, ifname: &str) -> Result<(bool, Vec<IpNetwork>), String> {
    let out = env.in_pod(pod, &["ip", "-j", "addr", "show", "dev", ifname])?;
    let v: Value = serde_json::from_str(&out).map_err(|e| format!("ip -j addr: {e}"))?;
    let link = v.get(0).ok_or_else(|| format!("{ifname} not found in {pod}"))?;
    let up = link["flags"].as_array().is_some_and(|f| f.iter().any(|x| x == "UP"));
    let addrs = link["addr_info"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["scope"] != json!("link"))
        .filter_map(|a| format!("{}/{}", a["local"].as_str()?, a["prefixlen"].as_u64()?).parse().ok())
        .collect();
    Ok((up, addrs))
}

fn add_iface(env: &Env) -> CaseResult {
    let pod = env.pod();
    let res = add(env, &pod, "c-if")?;
    let (up, addrs) = pod_iface(env, &pod, "eth0")?;
    ensure!(up, "eth0 is not up");
    let want: BTreeSet<IpAddr> = result::ips(&res).into_iter().collect();
    let have: BTreeSet<IpAddr> = addrs.iter().map(IpNetwork::ip).collect();
    ensure!(want == have, "eth0 addresses {have:?} != result {want:?}");
    pass()
}

fn add_dual_stack(env: &Env) -> CaseResult {
    let pod = env.pod();
    let list = env.list_of(&env.version, vec![env.plugin(&ConfOpts { ipv4: true, ipv6: true })]);
    let rt = env.rt(&pod, "c-ds");
    let res = env.runtime.add_network_list(&list, &rt).map_err(|e| format!("ADD: {e}"))?;
    let ips = result::ips(&res);
    ensure!(ips.iter().filter(|i| i.is_ipv4()).count() == 1, "expected one IPv4 in {ips:?}");
    ensure!(ips.iter().filter(|i| i.is_ipv6()).count() == 1, "expected one IPv6 in {ips:?}");
    let (_, addrs) = pod_iface(env, &pod, "eth0")?;
    for ip in &ips {
        ensure!(addrs.iter().any(|a| a.ip() == *ip), "{ip} not on eth0 ({addrs:?})");
    }
    env.runtime.del_network_list(&list, &rt).map_err(|e| format!("DEL: {e}"))?;
    ensure!(env.ips_of("c-ds")?.is_empty(), "IPs left after DEL");
    pass()
}

fn add_existing_ifname(env: &Env) -> CaseResult {
    let pod = env.pod();
    // A veth pair stands in for "an interface already there" (no dummy module needed).
    env.in_pod(&pod, &["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0peer"])?;
    let r = add(env, &pod, "c-exist");
    ensure!(r.is_err(), "ADD onto an existing eth0 succeeded: {:?}", r.ok());
    // Before any DEL: the failed ADD must have rolled its allocation back.
    let left = env.ips_of("c-exist")?;
    ensure!(left.is_empty(), "failed ADD left IPs allocated: {left:?}");
    let links = env.pod_links(&pod)?;
    ensure!(
        links.contains(&"eth0".to_string()) && links.contains(&"eth0peer".to_string()),
        "the pre-existing eth0 was replaced or removed: {links:?}"
    );
    env.runtime
        .del_network_list(&env.list(), &env.rt(&pod, "c-exist"))
        .map_err(|e| format!("DEL after failed ADD: {e}"))?;
    Ok(Outcome::Pass(format!("error: {}", r.err().unwrap_or_default())))
}

fn needs_check(env: &Env) -> Option<CaseResult> {
    (!at_least(&env.version, Version::V0_4_0)).then(|| na("no config version ≥ 0.4.0"))
}

fn check_ok(env: &Env) -> CaseResult {
    if let Some(r) = needs_check(env) {
        return r;
    }
    let pod = env.pod();
    add(env, &pod, "c-chk")?;
    let list = env.list();
    let rt = env.rt(&pod, "c-chk");
    let cached = env.runtime.cached_result(&list, &rt).map_err(|e| e.to_string())?;
    ensure!(cached.is_some(), "no cached result");
    let conf =
        Runtime::plugin_config(&list.name, &list.cni_version, &list.plugins[0], cached.as_ref(), Some(&rt));
    let out = env.raw_call(env.imp.main_plugin(), "CHECK", &conf, &rt)?;
    ensure!(out.success(), "CHECK failed: {}", describe(&out));
    ensure!(
        out.stdout.iter().all(u8::is_ascii_whitespace),
        "CHECK printed on stdout: {:?}",
        out.stdout_str()
    );
    env.runtime.check_network_list(&list, &rt).map_err(|e| format!("runtime CHECK: {e}"))?;
    pass()
}

fn check_missing_iface(env: &Env) -> CaseResult {
    if let Some(r) = needs_check(env) {
        return r;
    }
    let pod = env.pod();
    add(env, &pod, "c-chk2")?;
    env.in_pod(&pod, &["ip", "link", "del", "eth0"])?;
    let r = env.runtime.check_network_list(&env.list(), &env.rt(&pod, "c-chk2"));
    ensure!(r.is_err(), "CHECK succeeded although eth0 is gone");
    Ok(Outcome::Pass(format!("error: {}", r.err().map(|e| e.to_string()).unwrap_or_default())))
}

fn check_ipam(env: &Env) -> CaseResult {
    if let Some(r) = needs_check(env) {
        return r;
    }
    let pod = env.pod();
    add(env, &pod, "c-chk3")?;
    let list = env.list();
    let rt = env.rt(&pod, "c-chk3");
    env.runtime.check_network_list(&list, &rt).map_err(|e| format!("CHECK before: {e}"))?;
    if !env.imp.forget_allocation(&env.ctx(), &env.network, "c-chk3")? {
        return na("no hook to remove an IPAM record");
    }
    let r = env.runtime.check_network_list(&list, &rt);
    ensure!(r.is_err(), "CHECK succeeded although the IPAM record is gone (IPAM CHECK not delegated?)");
    Ok(Outcome::Pass(format!("error: {}", r.err().map(|e| e.to_string()).unwrap_or_default())))
}

fn del_twice(env: &Env) -> CaseResult {
    let pod = env.pod();
    add(env, &pod, "c-dd")?;
    let list = env.list();
    let rt = env.rt(&pod, "c-dd");
    let cached = env.runtime.cached_result(&list, &rt).map_err(|e| e.to_string())?;
    env.runtime.del_network_list(&list, &rt).map_err(|e| format!("first DEL: {e}"))?;
    // A runtime that lost track may replay the DEL with the old prevResult...
    let conf =
        Runtime::plugin_config(&list.name, &list.cni_version, &list.plugins[0], cached.as_ref(), Some(&rt));
    let out = env.raw_call(env.imp.main_plugin(), "DEL", &conf, &rt)?;
    ensure!(out.success(), "second DEL (with prevResult) failed: {}", describe(&out));
    // ...or without one.
    env.runtime.del_network_list(&list, &rt).map_err(|e| format!("third DEL: {e}"))?;
    ensure!(env.ips_of("c-dd")?.is_empty(), "IPs left");
    pass()
}

fn del_no_netns(env: &Env) -> CaseResult {
    let pod = env.pod();
    add(env, &pod, "c-dnn")?;
    let mut rt = env.rt(&pod, "c-dnn");
    rt.netns = String::new();
    env.runtime.del_network_list(&env.list(), &rt).map_err(|e| format!("DEL without netns: {e}"))?;
    let left = env.ips_of("c-dnn")?;
    ensure!(left.is_empty(), "IPs left after DEL without netns: {left:?}");
    pass()
}

fn del_netns_gone(env: &Env) -> CaseResult {
    let pod = env.pod();
    add(env, &pod, "c-dng")?;
    env.remove_pod(&pod);
    ensure!(!std::path::Path::new(&pod).exists(), "netns {pod} still exists");
    env.runtime
        .del_network_list(&env.list(), &env.rt(&pod, "c-dng"))
        .map_err(|e| format!("DEL after netns removal: {e}"))?;
    let left = env.ips_of("c-dng")?;
    ensure!(left.is_empty(), "IPs left: {left:?}");
    pass()
}

fn del_unknown(env: &Env) -> CaseResult {
    let pod = env.pod();
    env.runtime
        .del_network_list(&env.list(), &env.rt(&pod, "c-never"))
        .map_err(|e| format!("DEL (netns): {e}"))?;
    let mut rt = env.rt("", "c-never2");
    rt.netns = String::new();
    env.runtime.del_network_list(&env.list(), &rt).map_err(|e| format!("DEL (no netns): {e}"))?;
    pass()
}

fn chain_prevresult(env: &Env) -> CaseResult {
    let pod = env.pod();
    let list = env.list_of(&env.version, vec![env.plugin(&ConfOpts::v4()), env.probe("p")]);
    let rt = env.rt(&pod, "c-chain");
    let res = env.runtime.add_network_list(&list, &rt).map_err(|e| format!("ADD: {e}"))?;
    ensure!(!result::ips(&res).is_empty(), "chain result lost the IPs: {res}");
    let calls = env.probe_calls("p");
    ensure!(calls.len() == 1 && calls[0]["command"] == "ADD", "probe calls after ADD: {calls:?}");
    let sent = &calls[0]["stdin"];
    ensure!(sent["prevResult"] == res, "probe's prevResult {} != plugin result {res}", sent["prevResult"]);
    ensure!(
        sent["name"] == json!(env.network) && sent["cniVersion"] == json!(env.version),
        "name/version not injected: {sent}"
    );
    ensure!(calls[0]["env"]["CNI_CONTAINERID"] == "c-chain", "probe env: {}", calls[0]["env"]);
    if at_least(&env.version, Version::V0_4_0) {
        env.runtime.check_network_list(&list, &rt).map_err(|e| format!("CHECK: {e}"))?;
    }
    env.runtime.del_network_list(&list, &rt).map_err(|e| format!("DEL: {e}"))?;
    let calls = env.probe_calls("p");
    let cmds: Vec<&str> = calls.iter().filter_map(|c| c["command"].as_str()).collect();
    let want: &[&str] =
        if at_least(&env.version, Version::V0_4_0) { &["ADD", "CHECK", "DEL"] } else { &["ADD", "DEL"] };
    ensure!(cmds == want, "probe saw {cmds:?}, want {want:?}");
    for c in &calls[1..] {
        ensure!(
            c["stdin"]["prevResult"] == res,
            "{} prevResult {} != cached result",
            c["command"],
            c["stdin"]["prevResult"]
        );
    }
    ensure!(env.ips_of("c-chain")?.is_empty(), "IPs left after chained DEL");
    pass()
}

fn chain_tuning(env: &Env) -> CaseResult {
    // tuning (a reference meta plugin, ≤ 1.0.0) needs the interface plugin's
    // result as prevResult and must hand it on unchanged.
    let Ok(tuning_path) = crate::exec::find_in_path("tuning", &[std::path::PathBuf::from("/usr/lib/cni")])
    else {
        return na("no /usr/lib/cni/tuning");
    };
    let version = "1.0.0";
    if !env.supports(version) {
        return na("plugin does not support 1.0.0 (tuning's highest)");
    }
    let tuning_dir = tuning_path.parent().map(|p| p.to_path_buf()).unwrap_or_default();
    let mut rt_env = env.runtime.clone();
    if !rt_env.paths.contains(&tuning_dir) {
        rt_env.paths.push(tuning_dir);
    }
    let pod = env.pod();
    let tuning = json!({"type": "tuning", "sysctl": {"net.core.somaxconn": "500"},
        "dataDir": env.state.path().join("tuning")});
    let list = env.list_of(version, vec![env.plugin(&ConfOpts::v4()), tuning]);
    let rt = env.rt(&pod, "c-tun");
    let res = rt_env.add_network_list(&list, &rt).map_err(|e| format!("ADD: {e}"))?;
    ensure!(!result::ips(&res).is_empty(), "chain result lost the IPs: {res}");
    ensure!(env.ips_of("c-tun")? == result::ips(&res), "IPAM state differs from the chain result");
    let v = env.in_pod(&pod, &["cat", "/proc/sys/net/core/somaxconn"])?;
    ensure!(v.trim() == "500", "tuning did not run: somaxconn {v}");
    rt_env.check_network_list(&list, &rt).map_err(|e| format!("CHECK: {e}"))?;
    rt_env.del_network_list(&list, &rt).map_err(|e| format!("DEL: {e}"))?;
    ensure!(env.ips_of("c-tun")?.is_empty(), "IPs left after chained DEL");
    pass()
}

fn prevresult_tolerated(env: &Env) -> CaseResult {
    let pod = env.pod();
    let list = env.list_of(&env.version, vec![env.probe("a"), env.plugin(&ConfOpts::v4()), env.probe("b")]);
    let rt = env.rt(&pod, "c-prev");
    let res = env.runtime.add_network_list(&list, &rt).map_err(|e| format!("ADD after a probe: {e}"))?;
    ensure!(!result::ips(&res).is_empty(), "result has no IPs: {res}");
    env.runtime.del_network_list(&list, &rt).map_err(|e| format!("DEL: {e}"))?;
    // DEL runs in reverse order: b before a.
    let (a, b) = (env.probe_calls("a"), env.probe_calls("b"));
    ensure!(a.len() == 2 && b.len() == 2, "probe calls a={} b={}", a.len(), b.len());
    ensure!(env.ips_of("c-prev")?.is_empty(), "IPs left after DEL");
    pass()
}

fn unknown_keys(env: &Env) -> CaseResult {
    let pod = env.pod();
    let mut plugin = env.plugin(&ConfOpts::v4());
    plugin["x-conformance-unknown"] = json!({"nested": [1, {"deep": true}]});
    plugin["args"] = json!({"cni": {"labels": [{"key": "app", "value": "x"}]}});
    plugin["capabilities"] = json!({"portMappings": true, "io.kubernetes.cri.pod-annotations": true});
    let list = env.list_of(&env.version, vec![plugin]);
    let mut rt = env.rt(&pod, "c-unk");
    rt.capability_args
        .insert("portMappings".into(), json!([{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]));
    rt.capability_args.insert("io.kubernetes.cri.pod-annotations".into(), json!({"a": "b"}));
    env.runtime.add_network_list(&list, &rt).map_err(|e| format!("ADD: {e}"))?;
    env.runtime.del_network_list(&list, &rt).map_err(|e| format!("DEL: {e}"))?;
    ensure!(env.ips_of("c-unk")?.is_empty(), "IPs left after DEL");
    pass()
}

fn ipam_direct(env: &Env) -> CaseResult {
    let pod = env.pod();
    let rt = env.rt(&pod, "c-ipam");
    // Delegation sends the full plugin config, not just the ipam object.
    let conf = stdin_of(env, &env.version, None, &rt);
    let out = env.raw_call(env.imp.ipam_plugin(), "ADD", &conf, &rt)?;
    ensure!(out.success(), "IPAM ADD: {}", describe(&out));
    let res: Value = serde_json::from_slice(&out.stdout).map_err(|e| format!("IPAM result: {e}"))?;
    ensure!(
        res.get("interfaces").and_then(Value::as_array).is_none_or(Vec::is_empty),
        "IPAM result lists interfaces: {res}"
    );
    let ips = res["ips"].as_array().cloned().unwrap_or_default();
    ensure!(!ips.is_empty(), "IPAM result has no ips: {res}");
    ensure!(ips.iter().all(|i| i.get("interface").is_none()), "IPAM result has ips[].interface: {res}");
    let held = env.ips_of("c-ipam")?;
    ensure!(held == result::ips(&res), "IPAM state {held:?} != result {res}");
    let out = env.raw_call(env.imp.ipam_plugin(), "DEL", &conf, &rt)?;
    ensure!(out.success(), "IPAM DEL: {}", describe(&out));
    ensure!(env.ips_of("c-ipam")?.is_empty(), "IPAM DEL left IPs");
    pass()
}

fn gc_runtime(env: &Env) -> CaseResult {
    let (p1, p2) = (env.pod(), env.pod());
    add(env, &p1, "c-keep")?;
    add(env, &p2, "c-stale")?;
    let valid = [Attachment { container_id: "c-keep".into(), ifname: "eth0".into() }];
    env.runtime.gc_network_list(&env.list(), Some(&valid)).map_err(|e| format!("GC: {e}"))?;
    ensure!(!env.ips_of("c-keep")?.is_empty(), "GC released a valid attachment");
    ensure!(env.ips_of("c-stale")?.is_empty(), "GC kept a stale attachment's IPs");
    let left: Vec<String> =
        env.runtime.cache.attachments(None).into_iter().map(|a| a.info.container_id).collect();
    ensure!(left == ["c-keep"], "cache after GC: {left:?}");
    pass()
}

fn gc_plugin(env: &Env) -> CaseResult {
    if !env.supports("1.1.0") {
        return na(format!(
            "GC needs 1.1.0; supported: {} / {}",
            env.main_versions.supported_versions.join(","),
            env.ipam_versions.supported_versions.join(",")
        ));
    }
    let list = env.list_of("1.1.0", vec![env.plugin(&ConfOpts::v4())]);
    let (p1, p2) = (env.pod(), env.pod());
    for (p, c) in [(&p1, "c-gck"), (&p2, "c-gcs")] {
        env.runtime.add_network_list(&list, &env.rt(p, c)).map_err(|e| format!("ADD {c}: {e}"))?;
    }
    // The plugin's own GC (not the runtime's DEL of cached entries).
    let valid = json!([{"containerID": "c-gck", "ifname": "eth0"}]);
    let mut conf = Runtime::plugin_config(&list.name, "1.1.0", &list.plugins[0], None, None);
    conf["cni.dev/valid-attachments"] = valid.clone();
    conf["cni.dev/attachments"] = valid;
    let path = env.runtime.cni_path();
    let bytes = serde_json::to_vec(&conf).map_err(|e| e.to_string())?;
    let out = env.raw(env.imp.main_plugin(), &bytes, &[("CNI_COMMAND", "GC"), ("CNI_PATH", &path)])?;
    ensure!(out.success(), "GC: {}", describe(&out));
    ensure!(out.stdout.iter().all(u8::is_ascii_whitespace), "GC printed on stdout: {:?}", out.stdout_str());
    ensure!(!env.ips_of("c-gck")?.is_empty(), "GC released the valid attachment's IPs");
    let stale = env.ips_of("c-gcs")?;
    ensure!(stale.is_empty(), "GC kept IPs of an attachment not in the valid list: {stale:?}");
    pass()
}

fn status(env: &Env) -> CaseResult {
    if !env.supports("1.1.0") {
        return na(format!(
            "STATUS needs 1.1.0; supported: {}",
            env.main_versions.supported_versions.join(",")
        ));
    }
    let list = env.list_of("1.1.0", vec![env.plugin(&ConfOpts::v4())]);
    let conf = Runtime::plugin_config(&list.name, "1.1.0", &list.plugins[0], None, None);
    let bytes = serde_json::to_vec(&conf).map_err(|e| e.to_string())?;
    let path = env.runtime.cni_path();
    let out = env.raw(env.imp.main_plugin(), &bytes, &[("CNI_COMMAND", "STATUS"), ("CNI_PATH", &path)])?;
    ensure!(out.success(), "STATUS: {}", describe(&out));
    ensure!(
        out.stdout.iter().all(u8::is_ascii_whitespace),
        "STATUS printed on stdout: {:?}",
        out.stdout_str()
    );
    env.runtime.status_network_list(&list).map_err(|e| format!("runtime STATUS: {e}"))?;
    pass()
}

fn parallel_add(env: &Env) -> CaseResult {
    const N: usize = 6;
    let pods: Vec<String> = (0..N).map(|_| env.pod()).collect();
    let list = env.list();
    let results: Vec<Result<Value, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = pods
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let (list, rt) = (&list, env.rt(p, &format!("c-par{i}")));
                s.spawn(move || env.runtime.add_network_list(list, &rt).map_err(|e| e.to_string()))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err("thread panicked".into()))).collect()
    });
    let mut seen = BTreeSet::new();
    for (i, r) in results.iter().enumerate() {
        let res = r.as_ref().map_err(|e| format!("ADD {i}: {e}"))?;
        for ip in result::ips(res) {
            ensure!(seen.insert(ip), "IP {ip} handed out twice");
        }
    }
    ensure!(
        env.allocations()?.len() == seen.len(),
        "IPAM holds {} IPs, results {}",
        env.allocations()?.len(),
        seen.len()
    );
    let errs: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = pods
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let (list, rt) = (&list, env.rt(p, &format!("c-par{i}")));
                s.spawn(move || env.runtime.del_network_list(list, &rt).map_err(|e| e.to_string()))
            })
            .collect();
        handles
            .into_iter()
            .filter_map(|h| h.join().unwrap_or_else(|_| Err("thread panicked".into())).err())
            .collect()
    });
    ensure!(errs.is_empty(), "parallel DELs failed: {errs:?}");
    let left = env.allocations()?;
    ensure!(left.is_empty(), "IPs left after DELs: {left:?}");
    pass()
}
