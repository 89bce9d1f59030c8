//! The built `calico` plugin (Calico IPAM in its process; the built
//! `calico-ipam` where a test execs it under another name)
//! driven the way a runtime drives it, inside namespaces these tests create.
//! Build first: `cargo build -p cni-calico-rs -p ipam-block --bins`.

mod support;

use serde_json::{json, Value};
use support::*;
use testbed::Netns;

fn add_call<'a>(cid: &'a str, pod: &'a Netns, args: &'a str) -> Call<'a> {
    Call { cmd: "ADD", cid, netns: Some(pod.path()), ifname: "eth0", args }
}

fn with_cmd<'a>(c: &Call<'a>, cmd: &'a str) -> Call<'a> {
    Call { cmd, ..c.clone() }
}

/// `conf` with `prevResult` set, as a runtime sends it on CHECK and DEL.
fn with_prev(conf: &Value, prev: &Value) -> Value {
    let mut c = conf.clone();
    c["prevResult"] = prev.clone();
    c
}

#[test]
fn add_wires_the_pod_records_it_and_del_undoes_everything() {
    let node = Node::new();
    let pod = Netns::new("cpo");
    let conf = node.conf("1.0.0", "10.61.0.0/24");
    let add = add_call("c1", &pod, K8S_ARGS);
    let out = node.run(&add, &conf);
    let res = out.ok().json();
    let veth = expected_veth("ns1", "web-0");
    assert_eq!(veth.len(), 15);

    // Result: host veth, then the pod interface (with sandbox), IPs pointing at it.
    assert_eq!(res["cniVersion"], "1.0.0");
    assert_eq!(res["interfaces"][0], json!({"name": veth, "mac": "ee:ee:ee:ee:ee:ee"}));
    assert_eq!(res["interfaces"][1]["name"], "eth0");
    assert_eq!(res["interfaces"][1]["sandbox"], pod.path().to_str().unwrap());
    let pod_mac = res["interfaces"][1]["mac"].as_str().unwrap().to_string();
    assert_eq!(pod_mac.len(), 17);
    assert_eq!(res["ips"].as_array().unwrap().len(), 1);
    let address = res["ips"][0]["address"].as_str().unwrap().to_string();
    assert!(address.starts_with("10.61.0.") && address.ends_with("/32"), "{address}");
    assert_eq!(res["ips"][0]["interface"], 1);
    assert!(res["ips"][0].get("gateway").is_none());
    assert!(res["ips"][0].get("version").is_none(), "1.0.0 has no ips[].version");
    assert_eq!(res["routes"], json!([{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}]));
    let ip = address.trim_end_matches("/32").to_string();

    // Node side: the veth, its MAC and MTU, the /32 route, the sysctls.
    let host = link(&node.ns, &veth);
    assert_eq!(host["address"], "ee:ee:ee:ee:ee:ee");
    assert_eq!(host["mtu"], 1450);
    assert!(host["flags"].as_array().unwrap().contains(&json!("UP")), "{host}");
    assert!(
        routes(&node.ns, false).contains(&format!("{ip} dev {veth} scope link")),
        "{:?}",
        routes(&node.ns, false)
    );
    assert_eq!(node.sysctl(&format!("net/ipv4/conf/{veth}/proxy_arp")), "1");
    assert_eq!(node.sysctl(&format!("net/ipv4/neigh/{veth}/proxy_delay")), "0");
    assert_eq!(node.sysctl(&format!("net/ipv4/conf/{veth}/forwarding")), "1");
    assert_eq!(node.sysctl(&format!("net/ipv4/conf/{veth}/route_localnet")), "1");

    // Pod side: eth0 with the /32, MTU, the link-scope gateway and the default route.
    assert_eq!(addrs(&pod, "eth0"), vec![address.clone()]);
    let eth0 = link(&pod, "eth0");
    assert_eq!(eth0["mtu"], 1450);
    assert_eq!(eth0["address"], pod_mac.as_str());
    let pod_routes = routes(&pod, false);
    assert!(pod_routes.contains(&"169.254.1.1 dev eth0 scope link".to_string()), "{pod_routes:?}");
    assert!(pod_routes.contains(&"default via 169.254.1.1 dev eth0".to_string()), "{pod_routes:?}");
    assert_eq!(pod.exec(&["cat", "/proc/sys/net/ipv4/ip_forward"]).trim(), "0");

    // Datastore: the pod record and the IPAM handle.
    let wep_key = format!(
        "/calico/resources/v3/projectcalico.org/workloadendpoints/ns1/{}-k8s-web--0-eth0",
        node.name.replace('-', "--")
    );
    let wep = node.doc(&wep_key).unwrap_or_else(|| panic!("no WEP at {wep_key}: {:?}", node.keys("/")));
    assert_eq!(wep["spec"]["containerID"], "c1");
    assert_eq!(wep["spec"]["interfaceName"], veth.as_str());
    assert_eq!(wep["spec"]["endpoint"], "eth0");
    assert_eq!(wep["spec"]["mac"], pod_mac.as_str());
    assert_eq!(wep["spec"]["node"], node.name.as_str());
    assert_eq!(wep["spec"]["pod"], "web-0");
    assert_eq!(wep["spec"]["orchestrator"], "k8s");
    assert_eq!(wep["spec"]["ipNetworks"], json!([address]));
    assert_eq!(node.handle("c1").unwrap()["block"].as_object().unwrap().len(), 1);
    // Logs went to the file, never to stdout (stdout parsed as one JSON above).
    assert!(std::fs::read_to_string(node.log_path()).unwrap().contains("c1"));

    // CHECK against the ADD result: silent success.
    let conf_prev = with_prev(&conf, &res);
    node.run(&with_cmd(&add, "CHECK"), &conf_prev).silent_ok();

    // DEL: everything goes.
    node.run(&with_cmd(&add, "DEL"), &conf_prev).silent_ok();
    assert!(!node.links().contains(&veth), "{:?}", node.links());
    assert!(!routes(&node.ns, false).iter().any(|r| r.starts_with(&ip)));
    assert!(!links(&pod).contains(&"eth0".to_string()));
    assert!(node.doc(&wep_key).is_none());
    assert!(node.handle("c1").is_none());
    assert_eq!(node.allocated(), 0);

    // DEL again, and DEL of a container never added: success, silent.
    node.run(&with_cmd(&add, "DEL"), &conf_prev).silent_ok();
    node.run(&with_cmd(&add_call("never-added", &pod, K8S_ARGS), "DEL"), &conf).silent_ok();
}

#[test]
fn pods_on_one_node_reach_each_other_and_the_node() {
    let node = Node::new();
    let (pa, pb) = (Netns::new("cpa"), Netns::new("cpb"));
    let conf = node.conf("1.0.0", "10.62.0.0/24");
    let ra = node.run(&add_call("ca", &pa, "K8S_POD_NAMESPACE=ns;K8S_POD_NAME=a"), &conf).ok().json();
    let rb = node.run(&add_call("cb", &pb, "K8S_POD_NAMESPACE=ns;K8S_POD_NAME=b"), &conf).ok().json();
    let ip = |r: &Value| r["ips"][0]["address"].as_str().unwrap().trim_end_matches("/32").to_string();
    let (ipa, ipb) = (ip(&ra), ip(&rb));
    assert_ne!(ipa, ipb);
    pa.exec(&["ping", "-c", "2", "-W", "2", "-i", "0.2", &ipb]);
    pb.exec(&["ping", "-c", "2", "-W", "2", "-i", "0.2", &ipa]);
    node.ns.exec(&["ping", "-c", "1", "-W", "2", &ipa]);
    // The pod's gateway is answered by proxy ARP with the host veth's MAC.
    let neigh = pa.exec(&["ip", "neigh", "show", "169.254.1.1"]);
    assert!(neigh.contains("ee:ee:ee:ee:ee:ee"), "{neigh}");
    for (cid, ns, pod) in [("ca", &pa, "a"), ("cb", &pb, "b")] {
        let args = format!("K8S_POD_NAMESPACE=ns;K8S_POD_NAME={pod}");
        node.run(&with_cmd(&add_call(cid, ns, &args), "DEL"), &conf).silent_ok();
    }
    assert_eq!(node.links().iter().filter(|l| l.starts_with("cali")).count(), 0);
    assert_eq!(node.allocated(), 0);
}

#[test]
fn result_follows_the_config_version() {
    let node = Node::new();
    for (i, version) in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"].iter().enumerate() {
        let pod = Netns::new("cpv");
        let conf = node.conf(version, "10.63.0.0/24");
        let cid = format!("v{i}");
        let call = add_call(&cid, &pod, "");
        let res = node.run(&call, &conf).ok().json();
        assert_eq!(res["cniVersion"], *version);
        let has_version = res["ips"][0].get("version").is_some();
        assert_eq!(has_version, version.starts_with("0."), "{version}: {res}");
        assert_eq!(res["interfaces"][1].get("mtu").is_some(), *version == "1.1.0", "{version}: {res}");
        // cni orchestrator: cali + the container ID.
        assert_eq!(res["interfaces"][0]["name"], format!("cali{cid}"));
        let check = node.run(&with_cmd(&call, "CHECK"), &with_prev(&conf, &res));
        if version.starts_with("0.3") {
            assert_eq!(check.err_code(), 1, "CHECK needs 0.4.0");
        } else {
            check.silent_ok();
        }
        node.run(&with_cmd(&call, "DEL"), &with_prev(&conf, &res)).silent_ok();
    }
    assert_eq!(node.allocated(), 0);
}

#[test]
fn add_onto_an_existing_interface_fails_and_allocates_nothing() {
    let node = Node::new();
    let pod = Netns::new("cpe");
    pod.exec(&["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "other"]);
    let conf = node.conf("1.0.0", "10.64.0.0/24");
    let out = node.run(&add_call("c1", &pod, K8S_ARGS), &conf);
    assert_eq!(out.err_code(), 100, "{out:?}");
    assert!(out.json()["msg"].as_str().unwrap().contains("eth0 already exists"), "{out:?}");
    assert!(node.handle("c1").is_none());
    assert_eq!(node.allocated(), 0);
    assert!(!node.links().iter().any(|l| l.starts_with("cali")));
    assert!(node.keys("/calico/resources/v3/projectcalico.org/workloadendpoints/").is_empty());
    assert!(links(&pod).contains(&"other".to_string()), "the existing interface is untouched");
}

#[test]
fn data_plane_failure_after_ipam_rolls_everything_back() {
    let node = Node::new();
    let pod = Netns::new("cpf");
    // The pod already has a default route: adding ours fails after IPAM
    // assigned an address and the veth exists.
    pod.exec(&["ip", "link", "add", "x0", "type", "veth", "peer", "name", "x1"]);
    pod.exec(&["ip", "link", "set", "x0", "up"]);
    pod.exec(&["ip", "route", "add", "default", "dev", "x0"]);
    let conf = node.conf("1.0.0", "10.65.0.0/24");
    let out = node.run(&add_call("c1", &pod, K8S_ARGS), &conf);
    assert_eq!(out.err_code(), 100, "{out:?}");
    assert!(out.stderr.contains("rolling back"), "{out:?}");
    assert!(node.handle("c1").is_none(), "IPAM DEL ran");
    assert_eq!(node.allocated(), 0);
    assert!(!node.links().iter().any(|l| l.starts_with("cali")), "{:?}", node.links());
    assert!(!links(&pod).contains(&"eth0".to_string()));
    assert!(node.keys("/calico/resources/v3/projectcalico.org/workloadendpoints/").is_empty());
    // Fix the pod and retry: works, and gets an address.
    pod.exec(&["ip", "route", "del", "default"]);
    node.run(&add_call("c1", &pod, K8S_ARGS), &conf).ok();
    assert_eq!(node.allocated(), 1);
}

/// IPAM runs while the veth is being created: when IPAM fails, the veth
/// that was built meanwhile is removed again, and nothing is recorded.
#[test]
fn ipam_failure_removes_the_veth_built_meanwhile() {
    let node = Node::new();
    let pod = Netns::new("cpi");
    let conf = node.conf("1.0.0", "10.68.0.0/24");
    // An address outside every pool: calico-ipam refuses it.
    let args = format!("{K8S_ARGS};IP=192.0.2.7");
    let out = node.run(&add_call("c1", &pod, &args), &conf);
    assert!(out.err_code() != 0, "{out:?}");
    assert!(out.json()["msg"].as_str().unwrap().contains("IPAM"), "{out:?}");
    assert!(node.handle("c1").is_none());
    assert_eq!(node.allocated(), 0);
    assert!(!node.links().iter().any(|l| l.starts_with("cali")), "{:?}", node.links());
    assert!(!links(&pod).contains(&"eth0".to_string()), "{:?}", links(&pod));
    assert!(node.keys("/calico/resources/v3/projectcalico.org/workloadendpoints/").is_empty());
    // The pod can be added afterwards.
    node.run(&add_call("c1", &pod, K8S_ARGS), &conf).ok();
    assert_eq!(node.allocated(), 1);
}

/// The pod record is written while the addresses and host routes go in: a
/// failure there (here: the pod's /32 is already routed through another
/// interface, two pods claiming one IP) deletes the record again.
#[test]
fn late_data_plane_failure_deletes_the_record_written_meanwhile() {
    let node = Node::new();
    let pod = Netns::new("cpj");
    let conf = node.conf("1.0.0", "10.69.0.0/24");
    // A first pod makes calico-ipam create the pool from the config.
    let first = Netns::new("cpk");
    node.run(&add_call("c0", &first, "K8S_POD_NAMESPACE=ns1;K8S_POD_NAME=web-9"), &conf).ok();
    node.ns.exec(&["ip", "route", "add", "10.69.0.9/32", "dev", "up0"]);
    let args = format!("{K8S_ARGS};IP=10.69.0.9");
    let out = node.run(&add_call("c1", &pod, &args), &conf);
    assert_eq!(out.err_code(), 100, "{out:?}");
    assert!(
        out.json()["msg"].as_str().unwrap().contains("already exists for an interface other than"),
        "{out:?}"
    );
    assert!(out.stderr.contains("deleting pod record"), "{out:?}");
    assert_eq!(node.keys("/calico/resources/v3/projectcalico.org/workloadendpoints/").len(), 1);
    assert!(node.handle("c1").is_none());
    assert_eq!(node.allocated(), 1, "only the first pod's address");
    assert!(!node.links().contains(&expected_veth("ns1", "web-0")), "{:?}", node.links());
    assert!(!links(&pod).contains(&"eth0".to_string()), "{:?}", links(&pod));
}

#[test]
fn del_succeeds_without_the_netns_and_releases_everything() {
    let node = Node::new();
    let conf = node.conf("1.0.0", "10.66.0.0/24");
    let veth = expected_veth("ns1", "web-0");
    let path;
    {
        let pod = Netns::new("cpg");
        path = pod.path();
        node.run(&add_call("c1", &pod, K8S_ARGS), &conf).ok();
        assert!(node.links().contains(&veth));
    } // the pod's netns is deleted here
    let call = Call { cmd: "DEL", cid: "c1", netns: Some(path.clone()), ifname: "eth0", args: K8S_ARGS };
    node.run(&call, &conf).silent_ok();
    assert!(node.handle("c1").is_none());
    assert_eq!(node.allocated(), 0);
    assert!(!node.links().contains(&veth), "{:?}", node.links());
    assert!(node.keys("/calico/resources/v3/projectcalico.org/workloadendpoints/").is_empty());
    // And with CNI_NETNS absent altogether.
    let no_ns = Call { netns: None, ..call };
    node.run(&no_ns, &conf).silent_ok();
}

#[test]
fn del_with_an_empty_netns_releases_ipam_and_removes_the_veth() {
    let node = Node::new();
    let pod = Netns::new("cph");
    let conf = node.conf("1.0.0", "10.67.0.0/24");
    node.run(&add_call("c1", &pod, K8S_ARGS), &conf).ok();
    let veth = expected_veth("ns1", "web-0");
    let call = Call { cmd: "DEL", cid: "c1", netns: None, ifname: "eth0", args: K8S_ARGS };
    node.run(&call, &conf).silent_ok();
    assert!(node.handle("c1").is_none());
    // The pod record named the host veth: it is removed even without the netns.
    assert!(!node.links().contains(&veth), "{:?}", node.links());
    assert!(!links(&pod).contains(&"eth0".to_string()), "the peer went with it");
}

#[test]
fn readd_with_a_new_sandbox_replaces_the_stale_veth_and_keeps_the_record() {
    let node = Node::new();
    let (old, new) = (Netns::new("cpo"), Netns::new("cpn"));
    let conf = node.conf("1.0.0", "10.68.0.0/24");
    let r1 = node.run(&add_call("c1", &old, K8S_ARGS), &conf).ok().json();
    let r2 = node.run(&add_call("c2", &new, K8S_ARGS), &conf).ok().json();
    assert_ne!(r1["ips"][0]["address"], r2["ips"][0]["address"], "new sandbox, new address");
    assert!(!links(&old).contains(&"eth0".to_string()), "stale veth deleted with its host end");
    let veth = expected_veth("ns1", "web-0");
    assert_eq!(node.links().iter().filter(|l| **l == veth).count(), 1);
    let wep_prefix = "/calico/resources/v3/projectcalico.org/workloadendpoints/ns1/";
    let key = node.keys(wep_prefix).pop().unwrap();
    assert_eq!(node.doc(&key).unwrap()["spec"]["containerID"], "c2");
    // The old sandbox's DEL releases its own address only.
    let del_old = Call { cmd: "DEL", cid: "c1", netns: Some(old.path()), ifname: "eth0", args: K8S_ARGS };
    node.run(&del_old, &conf).silent_ok();
    assert!(node.handle("c1").is_none());
    assert!(node.handle("c2").is_some());
    assert_eq!(node.doc(&key).unwrap()["spec"]["containerID"], "c2", "record kept");
    assert!(node.links().contains(&veth), "the new sandbox's veth is kept");
    let add_new = add_call("c2", &new, K8S_ARGS);
    node.run(&with_cmd(&add_new, "CHECK"), &with_prev(&conf, &r2)).silent_ok();
    node.run(&with_cmd(&add_new, "DEL"), &with_prev(&conf, &r2)).silent_ok();
    assert!(node.keys(wep_prefix).is_empty());
    assert!(!node.links().contains(&veth));
    assert_eq!(node.allocated(), 0);
}

#[test]
fn check_reports_a_missing_interface_or_route() {
    let node = Node::new();
    let pod = Netns::new("cpc");
    let conf = node.conf("1.0.0", "10.69.0.0/24");
    let add = add_call("c1", &pod, K8S_ARGS);
    let res = node.run(&add, &conf).ok().json();
    let prev = with_prev(&conf, &res);
    node.run(&with_cmd(&add, "CHECK"), &prev).silent_ok();
    // Without prevResult: a config error.
    assert_eq!(node.run(&with_cmd(&add, "CHECK"), &conf).err_code(), 7);
    // The default route removed inside the pod.
    pod.exec(&["ip", "route", "del", "default"]);
    let out = node.run(&with_cmd(&add, "CHECK"), &prev);
    assert_eq!(out.err_code(), 100);
    assert!(out.json()["msg"].as_str().unwrap().contains("default route"), "{out:?}");
    // The interface removed.
    pod.exec(&["ip", "link", "del", "eth0"]);
    let out = node.run(&with_cmd(&add, "CHECK"), &prev);
    assert_ne!(out.code, 0, "{out:?}");
    node.run(&with_cmd(&add, "DEL"), &prev).silent_ok();
}

#[test]
fn ip_forwarding_follows_container_settings() {
    let node = Node::new();
    let pod = Netns::new("cpi");
    let mut conf = node.conf("1.0.0", "10.70.0.0/24");
    conf["container_settings"]["allow_ip_forwarding"] = json!(true);
    node.run(&add_call("c1", &pod, ""), &conf).ok();
    assert_eq!(pod.exec(&["cat", "/proc/sys/net/ipv4/ip_forward"]).trim(), "1");
}

#[test]
fn dual_stack_pods_get_a_128_and_reach_each_other_over_ipv6() {
    let node = Node::new();
    let (pa, pb) = (Netns::new("cp6"), Netns::new("cp6"));
    let mut conf = node.conf("1.0.0", "10.71.0.0/24");
    conf["ipam"]["assign_ipv6"] = json!("true");
    conf["ipam"]["ipv6_pools"] = json!(["fd00:71::/120"]);
    let ra = node.run(&add_call("c6a", &pa, "K8S_POD_NAMESPACE=ns;K8S_POD_NAME=a"), &conf).ok().json();
    let rb = node.run(&add_call("c6b", &pb, "K8S_POD_NAMESPACE=ns;K8S_POD_NAME=b"), &conf).ok().json();
    let v6 = |r: &Value| {
        r["ips"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["address"].as_str().unwrap().to_string())
            .find(|a| a.contains(':'))
    };
    let a6 = v6(&ra).unwrap_or_else(|| panic!("no IPv6 in {ra}"));
    let b6 = v6(&rb).unwrap();
    assert!(a6.ends_with("/128"), "{a6}");
    assert!(addrs(&pa, "eth0").contains(&a6), "{:?}", addrs(&pa, "eth0"));
    let veth = ra["interfaces"][0]["name"].as_str().unwrap().to_string();
    // The pod's IPv6 default route goes via the host veth's link-local address.
    let ll = ip_json(&node.ns, &["-6", "addr", "show", "dev", &veth, "scope", "link"])[0]["addr_info"][0]
        ["local"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(routes(&pa, true).contains(&format!("default via {ll} dev eth0")), "{:?}", routes(&pa, true));
    assert!(ra["routes"].as_array().unwrap().contains(&json!({"dst": "::/0", "gw": ll})), "{ra}");
    let a6ip = a6.trim_end_matches("/128");
    assert!(
        routes(&node.ns, true).contains(&format!("{a6ip} dev {veth} scope link"))
            || routes(&node.ns, true).contains(&format!("{a6ip} dev {veth}")),
        "{:?}",
        routes(&node.ns, true)
    );
    assert_eq!(node.sysctl(&format!("net/ipv6/conf/{veth}/proxy_ndp")), "1");
    assert_eq!(node.sysctl(&format!("net/ipv6/conf/{veth}/forwarding")), "1");
    assert_eq!(node.sysctl(&format!("net/ipv6/conf/{veth}/accept_ra")), "0");
    assert_eq!(node.sysctl(&format!("net/ipv6/conf/{veth}/accept_dad")), "0");
    assert_eq!(pa.exec(&["cat", "/proc/sys/net/ipv6/conf/eth0/accept_dad"]).trim(), "0");
    pa.exec(&["ping", "-6", "-c", "2", "-W", "2", "-i", "0.2", b6.trim_end_matches("/128")]);
    node.run(
        &with_cmd(&add_call("c6a", &pa, "K8S_POD_NAMESPACE=ns;K8S_POD_NAME=a"), "CHECK"),
        &with_prev(&conf, &ra),
    )
    .silent_ok();
}

#[test]
fn bad_inputs_fail_cleanly_and_change_nothing() {
    let node = Node::new();
    let pod = Netns::new("cpb");
    let good = node.conf("1.0.0", "10.72.0.0/24");
    let add = add_call("c1", &pod, K8S_ARGS);
    let mut cases: Vec<(&str, Vec<u8>, Call<'_>, u64)> = vec![
        ("bad JSON", b"{not json".to_vec(), add.clone(), 6),
        ("empty stdin", Vec::new(), add.clone(), 6),
        (
            "missing name",
            json!({"cniVersion": "1.0.0", "type": "calico"}).to_string().into_bytes(),
            add.clone(),
            7,
        ),
        ("version", node.conf("0.2.0", "10.72.0.0/24").to_string().into_bytes(), add.clone(), 1),
        (
            "no version",
            {
                let mut c = good.clone();
                c.as_object_mut().unwrap().remove("cniVersion");
                c.to_string().into_bytes()
            },
            add.clone(),
            1,
        ),
        ("bad ifname", good.to_string().into_bytes(), Call { ifname: "eth0:1", ..add.clone() }, 4),
        (
            "long ifname",
            good.to_string().into_bytes(),
            Call { ifname: "a-very-long-ifname", ..add.clone() },
            4,
        ),
        ("bad container id", good.to_string().into_bytes(), Call { cid: "../x", ..add.clone() }, 4),
        ("bad CNI_ARGS", good.to_string().into_bytes(), Call { args: "garbage", ..add.clone() }, 4),
        (
            "bad pod name",
            good.to_string().into_bytes(),
            Call { args: "K8S_POD_NAMESPACE=a/b;K8S_POD_NAME=p", ..add.clone() },
            4,
        ),
        (
            "bad mtu",
            {
                let mut c = good.clone();
                c["mtu"] = json!(70000);
                c.to_string().into_bytes()
            },
            add.clone(),
            7,
        ),
        (
            "bad flag",
            {
                let mut c = good.clone();
                c["ipam"]["assign_ipv6"] = json!("yes");
                c.to_string().into_bytes()
            },
            add.clone(),
            7,
        ),
        (
            "no ipam",
            {
                let mut c = good.clone();
                c.as_object_mut().unwrap().remove("ipam");
                c.to_string().into_bytes()
            },
            add.clone(),
            7,
        ),
        (
            "bad datastore",
            {
                let mut c = good.clone();
                c["datastore_type"] = json!("kubernetes");
                c.to_string().into_bytes()
            },
            add.clone(),
            7,
        ),
        (
            "ipam not found",
            {
                let mut c = good.clone();
                c["ipam"]["type"] = json!("no-such-ipam");
                c.to_string().into_bytes()
            },
            add.clone(),
            999,
        ),
        (
            "nodename",
            {
                let mut c = good.clone();
                c["nodename"] = json!("a/b");
                c.to_string().into_bytes()
            },
            add.clone(),
            7,
        ),
    ];
    cases.push((
        "netns missing",
        good.to_string().into_bytes(),
        Call { netns: Some(std::path::PathBuf::from("/run/netns/h1-none")), ..add.clone() },
        8,
    ));
    for (what, stdin, call, code) in &cases {
        let out = node.run_raw(call, stdin, &[]);
        assert_eq!(out.err_code(), *code, "{what}: {out:?}");
        assert!(!out.json()["msg"].as_str().unwrap().is_empty(), "{what}");
    }
    // Missing variables are named.
    let mut c = node.ns.nsenter(plugin_bin().to_str().unwrap());
    c.env_clear().env("CNI_COMMAND", "ADD").env("CNI_NETNS", pod.path());
    let out = c.output().unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["code"], 4);
    assert_eq!(v["msg"], "required env variables [CNI_CONTAINERID,CNI_IFNAME] missing");
    // Nothing changed anywhere.
    assert_eq!(node.allocated(), 0);
    assert!(node.keys("/calico/resources/").is_empty());
    assert_eq!(node.links().len(), 3, "lo and the uplink only: {:?}", node.links());
    assert_eq!(links(&pod), vec!["lo".to_string()]);
}

#[test]
fn version_and_status() {
    let node = Node::new();
    let v = node.run_raw(&Call { cmd: "VERSION", cid: "", netns: None, ifname: "", args: "" }, b"", &[]);
    assert_eq!(
        v.ok().json(),
        json!({"cniVersion": "1.1.0", "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]})
    );
    let status = Call { cmd: "STATUS", cid: "", netns: None, ifname: "", args: "" };
    node.run(&status, &node.conf("1.1.0", "10.73.0.0/24")).silent_ok();
    assert_eq!(node.run(&status, &node.conf("1.0.0", "10.73.0.0/24")).err_code(), 1, "STATUS needs 1.1.0");
    // An etcd nobody listens on: unavailable (50).
    let mut down = node.conf("1.1.0", "10.73.0.0/24");
    down["datastore_type"] = json!("etcdv3");
    down["etcd_endpoints"] = json!(format!("http://127.0.0.1:{}", testbed::free_port()));
    down["datastore_timeout_seconds"] = json!(1);
    let out = node.run(&status, &down);
    assert_eq!(out.err_code(), 50, "{out:?}");
    // ADD against it fails cleanly before anything is created.
    let pod = Netns::new("cps");
    let out = node.run(&add_call("c1", &pod, ""), &down);
    assert_eq!(out.err_code(), 11, "{out:?}");
    assert!(!node.links().iter().any(|l| l.starts_with("cali")));
    assert_eq!(links(&pod), vec!["lo".to_string()]);
}

#[test]
fn gc_keeps_exactly_the_valid_attachments() {
    let node = Node::new();
    let (pa, pb) = (Netns::new("cpk"), Netns::new("cpk"));
    let conf = node.conf("1.1.0", "10.74.0.0/24");
    node.run(&add_call("keep", &pa, "K8S_POD_NAMESPACE=ns;K8S_POD_NAME=a"), &conf).ok();
    node.run(&add_call("gone", &pb, "K8S_POD_NAMESPACE=ns;K8S_POD_NAME=b"), &conf).ok();
    let veth_b = expected_veth("ns", "b");
    assert!(node.links().contains(&veth_b));
    let mut gc_conf = conf.clone();
    gc_conf["cni.dev/valid-attachments"] = json!([{"containerID": "keep", "ifname": "eth0"}]);
    let gc = Call { cmd: "GC", cid: "", netns: None, ifname: "", args: "" };
    node.run(&gc, &gc_conf).silent_ok();
    assert!(node.handle("keep").is_some());
    assert!(node.handle("gone").is_none());
    assert_eq!(node.allocated(), 1);
    let weps = node.keys("/calico/resources/v3/projectcalico.org/workloadendpoints/");
    assert_eq!(weps.len(), 1, "{weps:?}");
    assert_eq!(node.doc(&weps[0]).unwrap()["spec"]["containerID"], "keep");
    assert!(!node.links().contains(&veth_b), "stale host veth removed");
    assert!(node.links().contains(&expected_veth("ns", "a")));
    // Without the list GC refuses instead of treating everything as stale.
    assert_eq!(node.run(&gc, &conf).err_code(), 7);
    assert!(node.handle("keep").is_some());
    // GC needs 1.1.0.
    let mut old = gc_conf.clone();
    old["cniVersion"] = json!("1.0.0");
    assert_eq!(node.run(&gc, &old).err_code(), 1);
}

#[test]
fn works_with_a_reference_ipam_plugin_too() {
    // host-local from /usr/lib/cni as the delegate: the plugin only relies
    // on the CNI contract of its IPAM (and narrows the /24 to a /32).
    let node = Node::new();
    let pod = Netns::new("cpl");
    let mut conf = node.conf("1.0.0", "unused");
    conf["ipam"] = json!({"type": "host-local", "dataDir": node.dir.path().join("hl"),
                          "ranges": [[{"subnet": "10.75.0.0/24"}]]});
    let add = add_call("c1", &pod, "");
    let res = node.run(&add, &conf).ok().json();
    assert_eq!(res["ips"][0]["address"], "10.75.0.2/32");
    assert_eq!(addrs(&pod, "eth0"), vec!["10.75.0.2/32".to_string()]);
    assert!(node.dir.path().join("hl").join(NETWORK).join("10.75.0.2").exists());
    node.run(&with_cmd(&add, "DEL"), &with_prev(&conf, &res)).silent_ok();
    assert!(!node.dir.path().join("hl").join(NETWORK).join("10.75.0.2").exists());
}

#[test]
fn parallel_adds_and_dels_on_one_node() {
    // kubelet runs sandboxes in parallel: the veths, routes, pod records and
    // IPAM must not step on each other.
    let node = Node::new();
    let conf = node.conf("1.0.0", "10.77.0.0/24");
    let pods: Vec<Netns> = (0..8).map(|_| Netns::new("cpp")).collect();
    let results: Vec<Value> = std::thread::scope(|s| {
        let handles: Vec<_> = pods
            .iter()
            .enumerate()
            .map(|(i, ns)| {
                let (node, conf) = (&node, &conf);
                s.spawn(move || {
                    let (cid, args) = (format!("p{i}"), format!("K8S_POD_NAMESPACE=ns;K8S_POD_NAME=pod-{i}"));
                    node.run(&add_call(&cid, ns, &args), conf).ok().json()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut ips: Vec<&str> = results.iter().map(|r| r["ips"][0]["address"].as_str().unwrap()).collect();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), 8, "unique addresses: {ips:?}");
    assert_eq!(node.keys("/calico/resources/v3/projectcalico.org/workloadendpoints/").len(), 8);
    assert_eq!(node.links().iter().filter(|l| l.starts_with("cali")).count(), 8);
    // Every pod reaches the first one.
    let first = results[0]["ips"][0]["address"].as_str().unwrap().trim_end_matches("/32").to_string();
    for ns in &pods[1..] {
        ns.exec(&["ping", "-c", "1", "-W", "2", &first]);
    }
    std::thread::scope(|s| {
        for (i, ns) in pods.iter().enumerate() {
            let (node, conf) = (&node, &conf);
            s.spawn(move || {
                let (cid, args) = (format!("p{i}"), format!("K8S_POD_NAMESPACE=ns;K8S_POD_NAME=pod-{i}"));
                node.run(&with_cmd(&add_call(&cid, ns, &args), "DEL"), conf).silent_ok();
            });
        }
    });
    assert_eq!(node.allocated(), 0);
    assert!(node.keys("/calico/resources/v3/projectcalico.org/workloadendpoints/").is_empty());
    assert_eq!(node.links().iter().filter(|l| l.starts_with("cali")).count(), 0);
}

#[test]
fn a_requested_ip_in_cni_args_reaches_calico_ipam() {
    let node = Node::new();
    let pod = Netns::new("cpr");
    let conf = node.conf("1.0.0", "10.78.0.0/24");
    // calico-ipam creates a configured pool on its first automatic assignment.
    let first = Netns::new("cpr");
    node.run(&add_call("c0", &first, ""), &conf).ok();
    let res = node.run(&add_call("c1", &pod, "IgnoreUnknown=1;IP=10.78.0.9"), &conf).ok().json();
    assert_eq!(res["ips"][0]["address"], "10.78.0.9/32");
    assert_eq!(addrs(&pod, "eth0"), vec!["10.78.0.9/32".to_string()]);
    // Taken: a second pod asking for it fails, and leaves nothing behind.
    let other = Netns::new("cpr");
    let out = node.run(&add_call("c2", &other, "IgnoreUnknown=1;IP=10.78.0.9"), &conf);
    assert_ne!(out.code, 0, "{out:?}");
    assert!(out.json()["msg"].as_str().unwrap().starts_with("IPAM plugin calico-ipam: "), "{out:?}");
    assert!(node.handle("c2").is_none());
    assert_eq!(links(&other), vec!["lo".to_string()]);
    assert!(!node.links().contains(&"calic2".to_string()));
}

#[test]
fn a_second_calico_interface_in_one_pod_is_refused_before_ipam() {
    let node = Node::new();
    let pod = Netns::new("cpm");
    let conf = node.conf("1.0.0", "10.79.0.0/24");
    let eth0 = add_call("c1", &pod, K8S_ARGS);
    let r0 = node.run(&eth0, &conf).ok().json();
    let net1 = Call { ifname: "net1", ..eth0.clone() };
    let out = node.run(&net1, &conf);
    assert_eq!(out.err_code(), 100);
    assert!(out.json()["msg"].as_str().unwrap().contains("one Calico interface per pod"), "{out:?}");
    // eth0 and its address are untouched (the IPAM handle is per network and container).
    assert_eq!(node.handle("c1").unwrap()["block"].as_object().unwrap().values().next(), Some(&json!(1)));
    assert_eq!(node.allocated(), 1);
    node.run(&with_cmd(&eth0, "CHECK"), &with_prev(&conf, &r0)).silent_ok();
}

#[test]
fn etcd_datastore_add_del_and_outage() {
    let node = Node::new();
    let mut etcd = NsEtcd::start(&node.ns);
    let mut conf = node.conf("1.1.0", "10.80.0.0/24");
    let obj = conf.as_object_mut().unwrap();
    obj.insert("datastore_type".into(), json!("etcdv3"));
    obj.insert("etcd_endpoints".into(), json!(NsEtcd::ENDPOINT));
    obj.insert("datastore_timeout_seconds".into(), json!(2));
    // calico-ipam keeps node-local state (hint, lock) in datastore_path.
    obj.insert("datastore_path".into(), json!(node.dir.path().join("local")));
    let weps = |e: &NsEtcd<'_>| {
        e.with_store(|s| s.list("/calico/resources/v3/projectcalico.org/workloadendpoints/").unwrap())
    };
    let handle = |e: &NsEtcd<'_>, cid: &str| {
        let key = format!("/calico/ipam/v2/handle/{NETWORK}.{cid}");
        e.with_store(move |s| s.get(&key).unwrap().is_some())
    };

    let pod = Netns::new("cpd");
    let add = add_call("c1", &pod, K8S_ARGS);
    let res = node.run(&add, &conf).ok().json();
    let w = weps(&etcd);
    assert_eq!(w.len(), 1);
    let doc: Value = serde_json::from_slice(&w[0].value).unwrap();
    assert_eq!(doc["spec"]["containerID"], "c1");
    assert!(handle(&etcd, "c1"));
    let status = Call { cmd: "STATUS", cid: "", netns: None, ifname: "", args: "" };
    node.run(&status, &conf).silent_ok();
    node.run(&with_cmd(&add, "DEL"), &with_prev(&conf, &res)).silent_ok();
    assert!(weps(&etcd).is_empty());
    assert!(!handle(&etcd, "c1"));

    // Outage: STATUS says unavailable, ADD fails cleanly without leftovers.
    etcd.stop();
    assert_eq!(node.run(&status, &conf).err_code(), 50);
    let pod2 = Netns::new("cpd");
    let add2 = add_call("c2", &pod2, K8S_ARGS);
    let out = node.run(&add2, &conf);
    assert_eq!(out.err_code(), 11, "{out:?}");
    assert!(!node.links().iter().any(|l| l.starts_with("cali")));
    assert_eq!(links(&pod2), vec!["lo".to_string()]);
    // DEL during the outage fails (the runtime retries it) ...
    assert_ne!(node.run(&with_cmd(&add2, "DEL"), &conf).code, 0);
    // ... and everything works again once etcd is back.
    etcd.restart();
    node.run(&status, &conf).silent_ok();
    node.run(&add2, &conf).ok();
    assert!(handle(&etcd, "c2"));
    node.run(&with_cmd(&add2, "DEL"), &conf).silent_ok();
    assert!(weps(&etcd).is_empty());
    assert!(!handle(&etcd, "c2"));
}

#[test]
fn ipv6_only_pods_get_no_ipv4_routes() {
    let node = Node::new();
    let pod = Netns::new("cp6");
    let mut conf = node.conf("1.0.0", "10.81.0.0/24");
    conf["ipam"]["assign_ipv4"] = json!("false");
    conf["ipam"]["assign_ipv6"] = json!("true");
    conf["ipam"]["ipv6_pools"] = json!(["fd00:81::/120"]);
    let add = add_call("c1", &pod, K8S_ARGS);
    let res = node.run(&add, &conf).ok().json();
    let ips = res["ips"].as_array().unwrap();
    assert_eq!(ips.len(), 1, "{res}");
    let a6 = ips[0]["address"].as_str().unwrap();
    assert!(a6.starts_with("fd00:81::") && a6.ends_with("/128"), "{a6}");
    assert_eq!(res["routes"].as_array().unwrap().len(), 1, "only ::/0: {res}");
    assert_eq!(res["routes"][0]["dst"], "::/0");
    assert!(routes(&pod, false).is_empty(), "{:?}", routes(&pod, false));
    assert_eq!(addrs(&pod, "eth0"), vec![a6.to_string()]);
    node.ns.exec(&["ping", "-6", "-c", "1", "-W", "2", a6.trim_end_matches("/128")]);
    node.run(&with_cmd(&add, "CHECK"), &with_prev(&conf, &res)).silent_ok();
    node.run(&with_cmd(&add, "DEL"), &with_prev(&conf, &res)).silent_ok();
    assert_eq!(node.allocated(), 0);
}

#[test]
fn cni_container_ids_sharing_a_veth_name_do_not_break_each_other() {
    let node = Node::new();
    let (pa, pb) = (Netns::new("cpq"), Netns::new("cpq"));
    let conf = node.conf("1.0.0", "10.82.0.0/24");
    let first = add_call("samepref-0001", &pa, "");
    let r1 = node.run(&first, &conf).ok().json();
    assert_eq!(r1["interfaces"][0]["name"], "calisamepref-00");
    let out = node.run(&add_call("samepref-0002", &pb, ""), &conf);
    assert_eq!(out.err_code(), 100);
    assert!(out.json()["msg"].as_str().unwrap().contains("calisamepref-00 already exists"), "{out:?}");
    assert!(node.handle("samepref-0002").is_none());
    assert_eq!(links(&pb), vec!["lo".to_string()]);
    node.run(&with_cmd(&first, "CHECK"), &with_prev(&conf, &r1)).silent_ok();
}

/// With `ipam.type: calico-ipam` the plugin runs Calico IPAM in its own
/// process: it needs no `calico-ipam` in CNI_PATH, and it answers exactly
/// what it answers when it execs the `calico-ipam` binary (installed here
/// under another name, which is how a user keeps exec). Both nodes have the
/// same node name, so IPAM picks the same block and address on each.
#[test]
fn in_process_calico_ipam_answers_like_the_exec_d_binary() {
    let (ours, theirs) = (Node::new(), Node::new());
    let bins = ours.dir.path().join("bin");
    std::fs::create_dir(&bins).unwrap();
    std::os::unix::fs::symlink(testbed::target_bin("calico-ipam"), bins.join("calico-ipam-exec")).unwrap();
    let empty = ours.dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    for (i, version) in ["0.3.1", "0.4.0", "1.0.0", "1.1.0"].into_iter().enumerate() {
        let pool = format!("10.81.{i}.0/24");
        let mut in_process = ours.conf(version, &pool);
        in_process["nodename"] = json!("same-node");
        let mut exec_d = theirs.conf(version, &pool);
        exec_d["nodename"] = json!("same-node");
        exec_d["ipam"]["type"] = json!("calico-ipam-exec");
        let cid = format!("c{i}");
        let (pod_a, pod_b) = (Netns::new("cpx"), Netns::new("cpy"));
        let a = ours.run_raw(
            &add_call(&cid, &pod_a, K8S_ARGS),
            in_process.to_string().as_bytes(),
            &[("CNI_PATH", empty.to_str().unwrap())],
        );
        let b = theirs.run_raw(
            &add_call(&cid, &pod_b, K8S_ARGS),
            exec_d.to_string().as_bytes(),
            &[("CNI_PATH", bins.to_str().unwrap())],
        );
        let (mut a, mut b) = (a.ok().json(), b.ok().json());
        for r in [&mut a, &mut b] {
            // The pod's MAC is random; the sandboxes are two namespaces.
            r["interfaces"][1]["mac"] = Value::Null;
            r["interfaces"][1]["sandbox"] = Value::Null;
        }
        assert_eq!(a, b, "{version}");
        assert!(a["ips"][0]["address"].as_str().unwrap().starts_with(&format!("10.81.{i}.")), "{a}");
        assert_eq!(ours.handle(&cid), theirs.handle(&cid), "{version}");
        // DEL without calico-ipam in CNI_PATH releases in process too.
        ours.run_raw(
            &with_cmd(&add_call(&cid, &pod_a, K8S_ARGS), "DEL"),
            in_process.to_string().as_bytes(),
            &[("CNI_PATH", empty.to_str().unwrap())],
        )
        .silent_ok();
        assert!(ours.handle(&cid).is_none());
    }
    assert_eq!(ours.allocated(), 0);
    assert_eq!(theirs.allocated(), 4);
}
