//! Calico cases (the Calico half of the conformance table; conformance/README.md), for our calico + calico-ipam.
//! They read the data plane with `ip -j` and the datastore through
//! `calico_store` (keys per `calico_store::model`).

use std::net::IpAddr;

use calico_store::model::{self, AffinityState, AllocationBlock, BlockAffinity, IpFamily, IpamHandle};
use calico_store::Datastore;
use ipnetwork::IpNetwork;
use serde_json::{json, Value};
use sha1::{Digest, Sha1};

use super::generic::{err_code, pod_iface};
use super::impls::{CalicoImpl, CALICO_V4_POOL, CALICO_V6_POOL};
use super::{pass, Case, CaseResult, ConfOpts, Env, Group, Outcome};
use crate::conf::NetworkConfigList;
use crate::ensure;
use crate::result;
use crate::runtime::{Runtime, RuntimeConf};

/// The pods' Kubernetes namespace (see [`Env::rt`]).
const POD_NS: &str = "conformance";

pub fn cases() -> Vec<Case> {
    let c = |id, title, run| Case { id, title, group: Group::Calico, run };
    vec![
        c("calico-ip32", "(5) v4 /32 from the pool, no gateway", ip32),
        c("calico-iface-mtu", "(6) eth0 up with the /32; conf MTU on both veth ends", iface_mtu),
        c("calico-pod-routes", "(7) 169.254.1.1 scope link + default via it", pod_routes),
        c("calico-veth", "(8) host veth cali+sha1(ns.pod)[:11], up, ee:ee:ee:ee:ee:ee", veth),
        c("calico-host-route", "(9) host route <ip>/32 dev caliX scope link", host_route),
        c("calico-sysctls", "(10) host sysctls proxy_arp/forwarding/route_localnet/proxy_delay", sysctls),
        c("calico-ip-forward", "(11) pod ip_forward 0, 1 with allow_ip_forwarding", ip_forward),
        c("calico-dual-stack", "(12) v6 /128, ::/0 via host fe80, accept_dad=0, v6-only", dual_stack),
        c("calico-handle", "(13) handle <net>.<cid> = {block:{cidr:1}}, block attribute", handle),
        c("calico-affinity", "(14) node affinity confirmed, block affinity host:<node>", affinity),
        c("calico-pools", "(18) disabled / missing pool named → error, no IP", pools),
        c("calico-ip-request", "(20) CNI_ARGS IP= → that IP; taken → error", ip_request),
        c("calico-wep", "(23) workload endpoint record", wep),
        c("calico-del-clean", "(24) DEL: veth, route, handle, WEP gone; ordinal freed", del_clean),
        c(
            "calico-unaffine-release",
            "(30) last IP of an unaffine block freed → block deleted",
            unaffine_release,
        ),
        c("calico-rollback", "(28) data-plane failure → no handle, no allocation", rollback),
        c("calico-readd", "(29) re-ADD with a stale caliX: replaced, new IP, old handle kept", readd),
        c("calico-block-fill", "(15) 64 IPs fill one /26 before a second block is claimed", block_fill),
        c("calico-fifo", "(15) released IP goes to the tail (not reused next)", fifo),
        c("calico-borrow", "(16) no free block: borrow unless strict_affinity", borrow),
        c("calico-block-cap", "(17) maxBlocksPerHost reached → per host block limit", block_cap),
        c("calico-node-selector", "(18) pool whose nodeSelector misses the node skipped", node_selector),
        c(
            "calico-parallel-nodes",
            "(22) 2 nodes × 12 parallel IPAM ADDs: unique, consistent",
            parallel_nodes,
        ),
        c("calico-datastore-down", "(32/33) datastore down: STATUS 50, ADD clean error", datastore_down),
    ]
}

/// `cali` + the first 11 hex digits of sha1("<namespace>.<pod>").
pub fn veth_name(namespace: &str, pod: &str) -> String {
    let d = Sha1::digest(format!("{namespace}.{pod}").as_bytes());
    format!("cali{}", &data_encoding::HEXLOWER.encode(&d)[..11])
}

fn list(env: &Env, opts: &ConfOpts, tweak: impl FnOnce(&mut Value)) -> NetworkConfigList {
    let mut p = env.plugin(opts);
    tweak(&mut p);
    env.list_of(&env.version, vec![p])
}

fn add_with(env: &Env, l: &NetworkConfigList, pod: &str, cid: &str) -> Result<(Value, RuntimeConf), String> {
    let rt = env.rt(pod, cid);
    let res = env.runtime.add_network_list(l, &rt).map_err(|e| format!("ADD {cid}: {e}"))?;
    Ok((res, rt))
}

fn add(env: &Env, pod: &str, cid: &str) -> Result<(Value, RuntimeConf), String> {
    add_with(env, &env.list(), pod, cid)
}

fn json_of(out: String) -> Result<Value, String> {
    serde_json::from_str(&out).map_err(|e| format!("ip -j: {e}: {out}"))
}

fn store(env: &Env) -> Result<std::sync::Arc<dyn Datastore>, String> {
    CalicoImpl::open_store(&env.ctx())
}

fn sysctl(env: &Env, pod: Option<&str>, key: &str) -> Result<String, String> {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    let out = match pod {
        Some(p) => env.in_pod(p, &["cat", &path])?,
        None => env.in_node(&["cat", &path])?,
    };
    Ok(out.trim().to_string())
}

fn ip32(env: &Env) -> CaseResult {
    let pod = env.pod();
    let (res, _) = add(env, &pod, "k-ip32")?;
    let addrs = result::addresses(&res);
    ensure!(addrs.len() == 1, "expected one address: {res}");
    let pool: IpNetwork = CALICO_V4_POOL.parse().map_err(|e| format!("{e}"))?;
    ensure!(
        addrs[0].prefix() == 32 && pool.contains(addrs[0].ip()),
        "address {} is not a /32 of {pool}",
        addrs[0]
    );
    ensure!(res["ips"][0].get("gateway").is_none(), "result has a gateway: {res}");
    Ok(Outcome::Pass(format!("{}", addrs[0])))
}

fn link_json(env: &Env, pod: Option<&str>, ifname: &str) -> Result<Value, String> {
    let argv = ["ip", "-j", "-d", "link", "show", "dev", ifname];
    let out = match pod {
        Some(p) => env.in_pod(p, &argv)?,
        None => env.in_node(&argv)?,
    };
    json_of(out)?.get(0).cloned().ok_or_else(|| format!("{ifname} not found"))
}

fn iface_mtu(env: &Env) -> CaseResult {
    let pod = env.pod();
    let l = list(env, &ConfOpts::v4(), |p| p["mtu"] = json!(1400));
    let (res, _) = add_with(env, &l, &pod, "k-mtu")?;
    let (up, addrs) = pod_iface(env, &pod, "eth0")?;
    ensure!(up, "eth0 down");
    let want = result::addresses(&res);
    ensure!(addrs == want, "eth0 has {addrs:?}, result {want:?}");
    let c = link_json(env, Some(&pod), "eth0")?;
    let h = link_json(env, None, &veth_name(POD_NS, "k-mtu"))?;
    ensure!(c["mtu"] == 1400 && h["mtu"] == 1400, "MTU pod {} host {} (want 1400)", c["mtu"], h["mtu"]);
    pass()
}

fn pod_routes(env: &Env) -> CaseResult {
    let pod = env.pod();
    add(env, &pod, "k-rt")?;
    let routes = json_of(env.in_pod(&pod, &["ip", "-j", "-4", "route", "show"])?)?;
    let rs = routes.as_array().cloned().unwrap_or_default();
    let gw = rs.iter().any(|r| r["dst"] == "169.254.1.1" && r["dev"] == "eth0" && r["scope"] == "link");
    let def = rs.iter().any(|r| r["dst"] == "default" && r["gateway"] == "169.254.1.1" && r["dev"] == "eth0");
    ensure!(gw && def, "pod routes lack 169.254.1.1 scope link / default via it: {routes}");
    pass()
}

fn veth(env: &Env) -> CaseResult {
    ensure!(veth_name("namespace", "podname") == "cali82111e10a96", "test vector (eni82111e10a96 with eni)");
    let pod = env.pod();
    add(env, &pod, "k-veth")?;
    let name = veth_name(POD_NS, "k-veth");
    let h = link_json(env, None, &name).map_err(|e| format!("host veth {name}: {e}"))?;
    ensure!(h["address"] == "ee:ee:ee:ee:ee:ee", "host veth MAC {}", h["address"]);
    ensure!(
        h["operstate"] == "UP" || h["flags"].as_array().is_some_and(|f| f.iter().any(|x| x == "UP")),
        "{name} not up: {h}"
    );
    ensure!(h["linkinfo"]["info_kind"] == "veth", "{name} is not a veth: {h}");
    Ok(Outcome::Pass(name))
}

fn host_route(env: &Env) -> CaseResult {
    let pod = env.pod();
    let (res, _) = add(env, &pod, "k-hr")?;
    let ip = result::ips(&res).first().copied().ok_or("no IP")?;
    let name = veth_name(POD_NS, "k-hr");
    let routes = json_of(env.in_node(&["ip", "-j", "-4", "route", "show", "table", "main"])?)?;
    let found = routes
        .as_array()
        .into_iter()
        .flatten()
        .any(|r| r["dst"] == json!(ip.to_string()) && r["dev"] == json!(name) && r["scope"] == "link");
    ensure!(found, "no route {ip} dev {name} scope link in: {routes}");
    pass()
}

fn sysctls(env: &Env) -> CaseResult {
    let pod = env.pod();
    add(env, &pod, "k-sys")?;
    let n = veth_name(POD_NS, "k-sys");
    for (key, want) in [
        (format!("net.ipv4.conf.{n}.proxy_arp"), "1"),
        (format!("net.ipv4.conf.{n}.forwarding"), "1"),
        (format!("net.ipv4.conf.{n}.route_localnet"), "1"),
        (format!("net.ipv4.neigh.{n}.proxy_delay"), "0"),
    ] {
        let got = sysctl(env, None, &key)?;
        ensure!(got == want, "{key} = {got}, want {want}");
    }
    pass()
}

fn ip_forward(env: &Env) -> CaseResult {
    let (p1, p2) = (env.pod(), env.pod());
    add(env, &p1, "k-fw0")?;
    ensure!(sysctl(env, Some(&p1), "net.ipv4.ip_forward")? == "0", "ip_forward not 0 by default");
    let l = list(env, &ConfOpts::v4(), |p| p["container_settings"] = json!({"allow_ip_forwarding": true}));
    add_with(env, &l, &p2, "k-fw1")?;
    ensure!(
        sysctl(env, Some(&p2), "net.ipv4.ip_forward")? == "1",
        "ip_forward not 1 with allow_ip_forwarding"
    );
    pass()
}

fn dual_stack(env: &Env) -> CaseResult {
    let pod = env.pod();
    let l = list(env, &ConfOpts { ipv4: true, ipv6: true }, |_| {});
    let (res, _) = add_with(env, &l, &pod, "k-ds")?;
    let addrs = result::addresses(&res);
    let v6 = addrs.iter().find(|a| a.is_ipv6()).ok_or_else(|| format!("no v6 in {res}"))?;
    let pool6: IpNetwork = CALICO_V6_POOL.parse().map_err(|e| format!("{e}"))?;
    ensure!(v6.prefix() == 128 && pool6.contains(v6.ip()), "v6 {v6} not a /128 of {pool6}");
    ensure!(addrs.iter().any(|a| a.is_ipv4() && a.prefix() == 32), "no v4 /32 in {res}");
    let routes = json_of(env.in_pod(&pod, &["ip", "-j", "-6", "route", "show"])?)?;
    let def = routes.as_array().into_iter().flatten().find(|r| r["dst"] == "default").cloned();
    let gw = def.as_ref().and_then(|d| d["gateway"].as_str()).unwrap_or_default().to_string();
    ensure!(gw.starts_with("fe80:"), "v6 default route not via a link-local gateway: {routes}");
    let host = veth_name(POD_NS, "k-ds");
    let host_ll = json_of(env.in_node(&["ip", "-j", "-6", "addr", "show", "dev", &host, "scope", "link"])?)?;
    let lls: Vec<String> = host_ll[0]["addr_info"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a["local"].as_str().map(str::to_string))
        .collect();
    ensure!(lls.contains(&gw), "gateway {gw} is not the host veth's link-local {lls:?}");
    ensure!(sysctl(env, Some(&pod), "net.ipv6.conf.eth0.accept_dad")? == "0", "pod eth0 accept_dad != 0");
    for (key, want) in [
        (format!("net.ipv6.conf.{host}.proxy_ndp"), "1"),
        (format!("net.ipv6.conf.{host}.forwarding"), "1"),
        (format!("net.ipv6.conf.{host}.accept_ra"), "0"),
    ] {
        let got = sysctl(env, None, &key)?;
        ensure!(got == want, "{key} = {got}, want {want}");
    }
    // v6 only.
    let p2 = env.pod();
    let l6 = list(env, &ConfOpts { ipv4: false, ipv6: true }, |_| {});
    let (res6, _) = add_with(env, &l6, &p2, "k-v6only")?;
    let a6 = result::addresses(&res6);
    ensure!(a6.len() == 1 && a6[0].is_ipv6(), "assign_ipv4=false result: {res6}");
    pass()
}

fn handle(env: &Env) -> CaseResult {
    let pod = env.pod();
    let (res, _) = add(env, &pod, "k-h")?;
    let ip = result::ips(&res).first().copied().ok_or("no IP")?;
    let s = store(env)?;
    let hkey = model::handle_key(&format!("{}.k-h", env.network));
    let kv = s.get(&hkey).map_err(|e| e.to_string())?.ok_or_else(|| format!("no handle {hkey}"))?;
    let h: IpamHandle = model::decode(&kv).map_err(|e| e.to_string())?;
    ensure!(h.block.len() == 1 && h.block.values().all(|c| *c == 1), "handle {hkey}: {:?}", h.block);
    let (cidr, _) = h.block.iter().next().ok_or("empty handle")?;
    let cidr: IpNetwork = cidr.parse().map_err(|e| format!("handle block {cidr}: {e}"))?;
    ensure!(cidr.contains(ip), "handle block {cidr} does not contain {ip}");
    let bkv = s.get(&model::block_key(&cidr)).map_err(|e| e.to_string())?.ok_or("block missing")?;
    let b: AllocationBlock = model::decode(&bkv).map_err(|e| e.to_string())?;
    let ord = ordinal(&cidr, ip)?;
    let attr = b
        .allocations
        .get(ord)
        .copied()
        .flatten()
        .and_then(|i| b.attributes.get(i))
        .ok_or("IP not allocated in block")?;
    ensure!(
        attr.handle_id.as_deref() == Some(&format!("{}.k-h", env.network)),
        "attribute handle {:?}",
        attr.handle_id
    );
    let sec = attr.secondary.clone().unwrap_or_default();
    ensure!(sec.get("node").map(String::as_str) == Some(env.node.name()), "secondary.node: {sec:?}");
    ensure!(sec.get("namespace").map(String::as_str) == Some(POD_NS), "secondary.namespace: {sec:?}");
    ensure!(sec.get("pod").map(String::as_str) == Some("k-h"), "secondary.pod: {sec:?}");
    ensure!(sec.contains_key("timestamp"), "secondary.timestamp missing: {sec:?}");
    pass()
}

fn ordinal(cidr: &IpNetwork, ip: IpAddr) -> Result<usize, String> {
    match (cidr.network(), ip) {
        (IpAddr::V4(n), IpAddr::V4(i)) => Ok((u32::from(i) - u32::from(n)) as usize),
        (IpAddr::V6(n), IpAddr::V6(i)) => Ok((u128::from(i) - u128::from(n)) as usize),
        _ => Err(format!("{ip} vs {cidr}: family mismatch")),
    }
}

fn affinity(env: &Env) -> CaseResult {
    let pod = env.pod();
    add(env, &pod, "k-aff")?;
    let s = store(env)?;
    let node = env.node.name();
    let affs = s.list(&model::host_affinities_prefix(node, IpFamily::V4)).map_err(|e| e.to_string())?;
    ensure!(affs.len() == 1, "node {node} has {} v4 affinities", affs.len());
    let a: BlockAffinity = model::decode(&affs[0]).map_err(|e| e.to_string())?;
    ensure!(a.state == AffinityState::Confirmed, "affinity state {:?}", a.state);
    let (_, cidr) = model::parse_affinity_key(&affs[0].key).ok_or("bad affinity key")?;
    ensure!(cidr.prefix() == 26, "block {cidr} is not a /26");
    let bkv = s.get(&model::block_key(&cidr)).map_err(|e| e.to_string())?.ok_or("affine block missing")?;
    let b: AllocationBlock = model::decode(&bkv).map_err(|e| e.to_string())?;
    ensure!(b.affinity.as_deref() == Some(&format!("host:{node}")), "block affinity {:?}", b.affinity);
    Ok(Outcome::Pass(affs[0].key.clone()))
}

/// Store an IP pool resource.
fn put_pool(
    s: &dyn Datastore,
    name: &str,
    cidr: &str,
    block: Option<u8>,
    selector: Option<&str>,
    disabled: bool,
) -> Result<(), String> {
    let pool = model::IpPool::new(
        "IPPool",
        model::ObjectMeta { name: name.into(), ..Default::default() },
        model::IpPoolSpec {
            cidr: cidr.parse().map_err(|e| format!("{cidr}: {e}"))?,
            block_size: block,
            node_selector: selector.map(str::to_string),
            disabled,
            nat_outgoing: false,
        },
    );
    s.create(&model::pool_key(name), &model::encode(&pool))
        .map(|_| ())
        .map_err(|e| format!("pool {name}: {e}"))
}

fn put_ipam_config(s: &dyn Datastore, cfg: &model::IpamConfig) -> Result<(), String> {
    let key = model::IPAM_CONFIG_KEY;
    let r = match s.get(key).map_err(|e| e.to_string())? {
        Some(kv) => s.update(key, &model::encode(cfg), kv.revision),
        None => s.create(key, &model::encode(cfg)),
    };
    r.map(|_| ()).map_err(|e| format!("IPAM config: {e}"))
}

/// calico-ipam ADD alone (no data plane) for `cid` as node `node`, with the
/// ipam object adjusted by `tweak`; the IPs on success.
fn ipam_add(
    env: &Env,
    pod: &str,
    node: &str,
    cid: &str,
    tweak: &dyn Fn(&mut Value),
) -> Result<Vec<IpAddr>, String> {
    let mut p = env.plugin(&ConfOpts::v4());
    p["nodename"] = json!(node);
    tweak(&mut p["ipam"]);
    let l = env.list_of(&env.version, vec![p]);
    let rt = env.rt(pod, cid);
    let conf = Runtime::plugin_config(&l.name, &l.cni_version, &l.plugins[0], None, Some(&rt));
    let out = env.raw_call("calico-ipam", "ADD", &conf, &rt)?;
    if !out.success() {
        return Err(format!("{}: {}", out.status_text(), out.stdout_str().trim()));
    }
    let v: Value = serde_json::from_slice(&out.stdout).map_err(|e| format!("IPAM result: {e}"))?;
    Ok(result::ips(&v))
}

fn in_net(ips: &[IpAddr], net: &str) -> bool {
    net.parse::<IpNetwork>().is_ok_and(|n| !ips.is_empty() && ips.iter().all(|ip| n.contains(*ip)))
}

fn borrow(env: &Env) -> CaseResult {
    let s = store(env)?;
    // One /26 block in the whole pool.
    put_pool(s.as_ref(), "tiny", "10.82.0.0/26", Some(26), None, false)?;
    let pod = env.pod();
    let use_tiny = |ipam: &mut Value| ipam["ipv4_pools"] = json!(["tiny"]);
    let a = ipam_add(env, &pod, env.node.name(), "b-a1", &use_tiny).map_err(|e| format!("node A: {e}"))?;
    let b =
        ipam_add(env, &pod, "other-node", "b-b1", &use_tiny).map_err(|e| format!("node B borrow: {e}"))?;
    ensure!(in_net(&a, "10.82.0.0/26") && in_net(&b, "10.82.0.0/26") && a != b, "A {a:?} B {b:?}");
    let affs =
        s.list(&model::host_affinities_prefix("other-node", IpFamily::V4)).map_err(|e| e.to_string())?;
    ensure!(
        affs.is_empty(),
        "borrowing node got an affinity: {:?}",
        affs.iter().map(|k| &k.key).collect::<Vec<_>>()
    );
    put_ipam_config(
        s.as_ref(),
        &model::IpamConfig { strict_affinity: true, auto_allocate_blocks: true, max_blocks_per_host: 0 },
    )?;
    let r = ipam_add(env, &pod, "other-node", "b-b2", &use_tiny);
    ensure!(r.is_err(), "strict_affinity still borrowed: {r:?}");
    Ok(Outcome::Pass(format!("strict: {}", r.err().unwrap_or_default())))
}

fn block_cap(env: &Env) -> CaseResult {
    let s = store(env)?;
    // Two blocks of 4 addresses; this node may own one.
    put_pool(s.as_ref(), "capped", "10.83.0.0/29", Some(30), None, false)?;
    put_ipam_config(
        s.as_ref(),
        &model::IpamConfig { strict_affinity: true, auto_allocate_blocks: true, max_blocks_per_host: 1 },
    )?;
    let pod = env.pod();
    let use_capped = |ipam: &mut Value| ipam["ipv4_pools"] = json!(["capped"]);
    let mut got = Vec::new();
    for i in 0..4 {
        got.extend(ipam_add(env, &pod, env.node.name(), &format!("cap{i}"), &use_capped)?);
    }
    let block = got
        .first()
        .map(|ip| IpNetwork::new(*ip, 30).map(|n| n.network()))
        .transpose()
        .map_err(|e| e.to_string())?;
    ensure!(
        got.iter().all(|ip| IpNetwork::new(*ip, 30).map(|n| Some(n.network()) == block).unwrap_or(false)),
        "4 IPs not from one block: {got:?}"
    );
    let r = ipam_add(env, &pod, env.node.name(), "cap4", &use_capped);
    let e = r.err().ok_or("5th allocation succeeded past maxBlocksPerHost=1")?;
    ensure!(e.contains("per host block limit"), "unexpected error: {e}");
    Ok(Outcome::Pass(e))
}

fn block_fill(env: &Env) -> CaseResult {
    let s = store(env)?;
    put_pool(s.as_ref(), "fill", "10.86.0.0/25", Some(26), None, false)?;
    let pod = env.pod();
    let use_fill = |ipam: &mut Value| ipam["ipv4_pools"] = json!(["fill"]);
    let mut first_block = Vec::new();
    for i in 0..64 {
        first_block.extend(ipam_add(env, &pod, env.node.name(), &format!("fill{i}"), &use_fill)?);
    }
    let nets: std::collections::BTreeSet<IpAddr> =
        first_block.iter().filter_map(|ip| IpNetwork::new(*ip, 26).ok()).map(|n| n.network()).collect();
    ensure!(first_block.len() == 64 && nets.len() == 1, "64 IPs span blocks {nets:?}");
    let affs =
        s.list(&model::host_affinities_prefix(env.node.name(), IpFamily::V4)).map_err(|e| e.to_string())?;
    ensure!(affs.len() == 1, "{} affinities after 64 IPs", affs.len());
    let next = ipam_add(env, &pod, env.node.name(), "fill64", &use_fill)?;
    let next_net = next.first().and_then(|ip| IpNetwork::new(*ip, 26).ok()).map(|n| n.network());
    ensure!(next_net.is_some_and(|n| !nets.contains(&n)), "65th IP {next:?} not from a new block");
    let affs =
        s.list(&model::host_affinities_prefix(env.node.name(), IpFamily::V4)).map_err(|e| e.to_string())?;
    ensure!(affs.len() == 2, "{} affinities after 65 IPs", affs.len());
    pass()
}

fn node_selector(env: &Env) -> CaseResult {
    let s = store(env)?;
    put_pool(s.as_ref(), "elsewhere", "10.84.0.0/24", None, Some("rack == 'r9'"), false)?;
    put_pool(s.as_ref(), "here", "10.85.0.0/24", None, Some("all()"), false)?;
    let pod = env.pod();
    let no_pools = |ipam: &mut Value| {
        if let Some(m) = ipam.as_object_mut() {
            m.remove("ipv4_pools");
        }
    };
    for i in 0..3 {
        let ips = ipam_add(env, &pod, env.node.name(), &format!("sel{i}"), &no_pools)?;
        ensure!(in_net(&ips, "10.85.0.0/24"), "got {ips:?}, expected the pool selecting this node");
    }
    pass()
}

fn parallel_nodes(env: &Env) -> CaseResult {
    const PER_NODE: usize = 12;
    let pod = env.pod();
    let nodes = [env.node.name().to_string(), "second-node".to_string()];
    let keep = |_: &mut Value| {};
    let results: Vec<(String, Result<Vec<IpAddr>, String>)> = std::thread::scope(|s| {
        let hs: Vec<_> = nodes
            .iter()
            .flat_map(|n| (0..PER_NODE).map(move |i| (n.clone(), format!("par-{n}-{i}"))))
            .map(|(n, cid)| {
                let pod = &pod;
                s.spawn(move || (cid.clone(), ipam_add(env, pod, &n, &cid, &keep)))
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap_or_else(|_| (String::new(), Err("panicked".into())))).collect()
    });
    let mut seen = std::collections::BTreeSet::new();
    for (cid, r) in &results {
        let ips = r.as_ref().map_err(|e| format!("{cid}: {e}"))?;
        for ip in ips {
            ensure!(seen.insert(*ip), "{ip} handed out twice");
        }
    }
    ensure!(seen.len() == nodes.len() * PER_NODE, "{} IPs for {} ADDs", seen.len(), nodes.len() * PER_NODE);
    let st = store(env)?;
    let allocs = CalicoImpl::block_allocations(st.as_ref())?;
    ensure!(allocs.len() == seen.len(), "blocks hold {} IPs, results {}", allocs.len(), seen.len());
    for (cid, _) in &results {
        let h = st.get(&model::handle_key(&format!("{}.{cid}", env.network))).map_err(|e| e.to_string())?;
        let h: IpamHandle = model::decode(&h.ok_or_else(|| format!("handle of {cid} missing"))?)
            .map_err(|e| e.to_string())?;
        ensure!(h.block.values().sum::<u32>() == 1, "handle {cid}: {:?}", h.block);
    }
    for n in &nodes {
        let affs = st.list(&model::host_affinities_prefix(n, IpFamily::V4)).map_err(|e| e.to_string())?;
        ensure!(!affs.is_empty(), "node {n} claimed no block");
    }
    pass()
}

fn pools(env: &Env) -> CaseResult {
    let s = store(env)?;
    put_pool(s.as_ref(), "conf-disabled", "10.79.0.0/16", None, None, true)?;
    for (what, pools) in
        [("disabled pool", json!(["conf-disabled"])), ("missing pool", json!(["no-such-pool"]))]
    {
        let pod = env.pod();
        let l = list(env, &ConfOpts::v4(), |p| p["ipam"]["ipv4_pools"] = pools.clone());
        let r = add_with(env, &l, &pod, "k-pool");
        ensure!(r.is_err(), "ADD with a {what} succeeded: {:?}", r.ok().map(|x| x.0));
        let held = env.ips_of("k-pool")?;
        ensure!(held.is_empty(), "{what}: IPs allocated {held:?}");
        let _ = env.runtime.del_network_list(&l, &env.rt(&pod, "k-pool"));
    }
    pass()
}

fn ip_request(env: &Env) -> CaseResult {
    let (p0, p1, p2) = (env.pod(), env.pod(), env.pod());
    let l = env.list();
    // Pools exist before pods in Calico; ours creates a configured pool CIDR on
    // first automatic use, so let one ordinary ADD do that first.
    add(env, &p0, "k-ipr0")?;
    let mut rt = env.rt(&p1, "k-ipr");
    rt.args.push(("IP".into(), "10.78.3.7".into()));
    let res = env.runtime.add_network_list(&l, &rt).map_err(|e| format!("ADD IP=10.78.3.7: {e}"))?;
    ensure!(result::ips(&res) == ["10.78.3.7".parse::<IpAddr>().map_err(|e| e.to_string())?], "got {res}");
    let mut rt2 = env.rt(&p2, "k-ipr2");
    rt2.args.push(("IP".into(), "10.78.3.7".into()));
    let r = env.runtime.add_network_list(&l, &rt2);
    ensure!(r.is_err(), "second ADD of a taken IP succeeded");
    ensure!(env.ips_of("k-ipr2")?.is_empty(), "failed ADD holds IPs");
    Ok(Outcome::Pass(format!("taken: {}", r.err().map(|e| e.to_string()).unwrap_or_default())))
}

fn wep_of(env: &Env, pod: &str) -> Result<Option<model::WorkloadEndpoint>, String> {
    let name = model::workload_endpoint_name(env.node.name(), "k8s", pod, "eth0");
    let s = store(env)?;
    match s.get(&model::workload_endpoint_key(POD_NS, &name)).map_err(|e| e.to_string())? {
        Some(kv) => model::decode(&kv).map(Some).map_err(|e| e.to_string()),
        None => Ok(None),
    }
}

fn wep(env: &Env) -> CaseResult {
    let pod = env.pod();
    let (res, _) = add(env, &pod, "k-wep")?;
    let w = wep_of(env, "k-wep")?.ok_or("no workload endpoint record")?;
    ensure!(w.spec.container_id == "k-wep", "containerID {}", w.spec.container_id);
    ensure!(w.spec.interface_name == veth_name(POD_NS, "k-wep"), "interfaceName {}", w.spec.interface_name);
    ensure!(w.spec.endpoint == "eth0" && w.spec.orchestrator == "k8s", "endpoint/orchestrator {:?}", w.spec);
    let mac = link_json(env, Some(&pod), "eth0")?["address"].as_str().unwrap_or_default().to_string();
    ensure!(w.spec.mac == mac, "mac {} != eth0 {mac}", w.spec.mac);
    ensure!(w.spec.ip_networks == result::addresses(&res), "ipNetworks {:?}", w.spec.ip_networks);
    pass()
}

fn del_clean(env: &Env) -> CaseResult {
    let pod = env.pod();
    let (res, rt) = add(env, &pod, "k-del")?;
    let ip = result::ips(&res).first().copied().ok_or("no IP")?;
    env.runtime.del_network_list(&env.list(), &rt).map_err(|e| format!("DEL: {e}"))?;
    let name = veth_name(POD_NS, "k-del");
    ensure!(!env.node_links()?.contains(&name), "{name} left on the node");
    let routes = env.in_node(&["ip", "route", "show"])?;
    ensure!(!routes.contains(&ip.to_string()), "host route for {ip} left: {routes}");
    let s = store(env)?;
    ensure!(
        s.get(&model::handle_key(&format!("{}.k-del", env.network))).map_err(|e| e.to_string())?.is_none(),
        "handle left"
    );
    ensure!(wep_of(env, "k-del")?.is_none(), "workload endpoint left");
    for (addr, _, cidr) in CalicoImpl::block_allocations(s.as_ref())? {
        ensure!(addr != ip, "{ip} still allocated in {cidr}");
    }
    pass()
}

fn unaffine_release(env: &Env) -> CaseResult {
    let s = store(env)?;
    let node = env.node.name();
    // An affine block emptied by DEL stays (the node keeps its claim).
    let p1 = env.pod();
    let (_, rt1) = add(env, &p1, "k-ua1")?;
    let affs = s.list(&model::host_affinities_prefix(node, IpFamily::V4)).map_err(|e| e.to_string())?;
    let (_, block) = affs.first().and_then(|kv| model::parse_affinity_key(&kv.key)).ok_or("no affinity")?;
    env.runtime.del_network_list(&env.list(), &rt1).map_err(|e| format!("DEL: {e}"))?;
    ensure!(
        s.get(&model::block_key(&block)).map_err(|e| e.to_string())?.is_some(),
        "empty affine block {block} deleted"
    );
    // Make the block unaffine (as after its node's affinity was released),
    // keeping every other field of the stored document.
    let p2 = env.pod();
    let (res, rt2) = add(env, &p2, "k-ua2")?;
    let ip = result::ips(&res).first().copied().ok_or("no IP")?;
    ensure!(block.contains(ip), "{ip} not from the node's block {block}");
    let bkey = model::block_key(&block);
    let kv = s.get(&bkey).map_err(|e| e.to_string())?.ok_or("block gone")?;
    let mut doc: Value = serde_json::from_slice(&kv.value).map_err(|e| e.to_string())?;
    doc["affinity"] = Value::Null;
    let akey = model::affinity_key(node, &block);
    let akv = s.get(&akey).map_err(|e| e.to_string())?.ok_or("affinity gone")?;
    s.commit(&[
        calico_store::Op::Update {
            key: bkey.clone(),
            value: doc.to_string().into_bytes(),
            revision: kv.revision,
        },
        calico_store::Op::Delete { key: akey, revision: akv.revision },
    ])
    .map_err(|e| format!("making {block} unaffine: {e}"))?;
    env.runtime.del_network_list(&env.list(), &rt2).map_err(|e| format!("DEL: {e}"))?;
    ensure!(
        s.get(&bkey).map_err(|e| e.to_string())?.is_none(),
        "unaffine block {block} kept after its last IP was released"
    );
    pass()
}

fn rollback(env: &Env) -> CaseResult {
    let pod = env.pod();
    env.in_pod(&pod, &["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0peer"])?;
    let r = add(env, &pod, "k-rb");
    ensure!(r.is_err(), "ADD onto an existing eth0 succeeded");
    let s = store(env)?;
    ensure!(
        s.get(&model::handle_key(&format!("{}.k-rb", env.network))).map_err(|e| e.to_string())?.is_none(),
        "orphan handle"
    );
    ensure!(CalicoImpl::block_allocations(s.as_ref())?.is_empty(), "orphan allocation");
    let name = veth_name(POD_NS, "k-rb");
    ensure!(!env.node_links()?.contains(&name), "{name} left on the node");
    ensure!(wep_of(env, "k-rb")?.is_none(), "workload endpoint left");
    pass()
}

fn readd(env: &Env) -> CaseResult {
    // Same pod (namespace/name), new sandbox: the kubelet retry after a crash.
    let (p1, p2) = (env.pod(), env.pod());
    let l = env.list();
    let mut rt1 = env.rt(&p1, "k-ra1");
    rt1.args.retain(|(k, _)| k != "K8S_POD_NAME");
    rt1.args.push(("K8S_POD_NAME".into(), "k-ra".into()));
    let mut rt2 = env.rt(&p2, "k-ra2");
    rt2.args.retain(|(k, _)| k != "K8S_POD_NAME");
    rt2.args.push(("K8S_POD_NAME".into(), "k-ra".into()));
    let r1 = env.runtime.add_network_list(&l, &rt1).map_err(|e| format!("first ADD: {e}"))?;
    let r2 = env.runtime.add_network_list(&l, &rt2).map_err(|e| format!("re-ADD with stale veth: {e}"))?;
    ensure!(result::ips(&r1) != result::ips(&r2), "re-ADD got the same IP");
    let name = veth_name(POD_NS, "k-ra");
    let h = link_json(env, None, &name)?;
    let peer_ns = env.in_pod(&p2, &["ip", "-j", "link", "show", "eth0"])?;
    ensure!(!peer_ns.is_empty(), "new pod has no eth0");
    let _ = h;
    ensure!(!env.ips_of("k-ra1")?.is_empty(), "old sandbox's handle released before its DEL");
    env.runtime.del_network_list(&l, &rt1).map_err(|e| format!("DEL old sandbox: {e}"))?;
    ensure!(env.ips_of("k-ra1")?.is_empty(), "old handle not released by its DEL");
    let w = wep_of(env, "k-ra")?.ok_or("DEL of the stale sandbox removed the live pod's record")?;
    ensure!(w.spec.container_id == "k-ra2", "WEP containerID {}", w.spec.container_id);
    ensure!(env.node_links()?.contains(&name), "DEL of the stale sandbox removed the live veth");
    pass()
}

fn fifo(env: &Env) -> CaseResult {
    // IPAM-level: allocate two, release the first, allocate again → not the released one.
    let pods: Vec<String> = (0..3).map(|_| env.pod()).collect();
    let (a, _) = add(env, &pods[0], "k-f1")?;
    let (_b, _) = add(env, &pods[1], "k-f2")?;
    let ip_a = result::ips(&a);
    env.runtime.del_network_list(&env.list(), &env.rt(&pods[0], "k-f1")).map_err(|e| format!("DEL: {e}"))?;
    let (c, _) = add(env, &pods[2], "k-f3")?;
    ensure!(result::ips(&c) != ip_a, "released IP {ip_a:?} reused immediately");
    pass()
}

fn datastore_down(env: &Env) -> CaseResult {
    // An etcd endpoint nobody listens on (a port we just had and released).
    let port = testbed::free_port();
    let tweak = |p: &mut Value| {
        if let Some(m) = p.as_object_mut() {
            if let Some(path) = m.remove("datastore_path") {
                m.insert("ipam_state_dir".into(), path);
            }
        }
        p["datastore_type"] = json!("etcdv3");
        p["etcd_endpoints"] = json!(format!("http://127.0.0.1:{port}"));
        p["datastore_timeout_seconds"] = json!(2);
    };
    let mut notes = Vec::new();
    if env.supports("1.1.0") {
        let mut p = env.plugin(&ConfOpts::v4());
        tweak(&mut p);
        let l = env.list_of("1.1.0", vec![p]);
        let conf = Runtime::plugin_config(&l.name, "1.1.0", &l.plugins[0], None, None);
        let bytes = serde_json::to_vec(&conf).map_err(|e| e.to_string())?;
        let path = env.runtime.cni_path();
        let out = env.raw("calico", &bytes, &[("CNI_COMMAND", "STATUS"), ("CNI_PATH", &path)])?;
        ensure!(
            !out.success() && err_code(&out) == Some(50),
            "STATUS with etcd down: {} {:?}",
            out.status_text(),
            out.stdout_str()
        );
        notes.push("STATUS code 50".to_string());
    } else {
        notes.push("STATUS n/a (no 1.1.0)".to_string());
    }
    let pod = env.pod();
    let l = list(env, &ConfOpts::v4(), tweak);
    let r = add_with(env, &l, &pod, "k-down");
    ensure!(r.is_err(), "ADD with the datastore down succeeded");
    ensure!(!env.pod_links(&pod)?.contains(&"eth0".to_string()), "eth0 left in the pod");
    ensure!(!env.node_links()?.contains(&veth_name(POD_NS, "k-down")), "host veth left");
    notes.push(format!("ADD: {}", r.err().unwrap_or_default()));
    Ok(Outcome::Pass(notes.join("; ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn veth_name_matches_calico_test_vector() {
        // Calico's vector: prefix eni, namespace "namespace", pod "podname" → eni82111e10a96.
        assert_eq!(&veth_name("namespace", "podname")[4..], "82111e10a96");
    }
}
