//! The defect classes an outside fuzzer found, each driven through the built
//! binaries the way a runtime drives them, inside namespaces these tests
//! create. Each test fails on the code before its fix.

mod support;

use std::path::Path;

use serde_json::{json, Value};
use support::*;
use testbed::Netns;

/// [`support::run_bounded`], failing the test on a watchdog kill.
fn run_bounded(node: &Node, program: &Path, env: &[(&str, String)], stdin: &[u8]) -> Out {
    support::run_bounded(node, program, env, stdin).unwrap_or_else(|e| panic!("{e}"))
}

fn cni_env(cmd: &str, netns: Option<&Path>, ifname: &str, cni_path: &str) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("CNI_COMMAND", cmd.to_string()),
        ("CNI_CONTAINERID", "fuzz1".to_string()),
        ("CNI_IFNAME", ifname.to_string()),
        ("CNI_ARGS", K8S_ARGS.to_string()),
        ("CNI_PATH", cni_path.to_string()),
    ];
    if let Some(ns) = netns {
        env.push(("CNI_NETNS", ns.display().to_string()));
    }
    env
}

/// Nothing at all was created: no allocation, no resource, no veth.
fn assert_untouched(node: &Node, pod: &Netns, what: &str) {
    assert_eq!(node.allocated(), 0, "{what}: an address was allocated");
    assert!(node.keys("/calico/").is_empty(), "{what}: stored {:?}", node.keys("/calico/"));
    assert!(!node.links().iter().any(|l| l.starts_with("cali")), "{what}: veth left {:?}", node.links());
    assert_eq!(links(pod), vec!["lo".to_string()], "{what}");
}

/// `"ipam": {"type": "calico"}` made every delegating command start `calico`
/// again and again until something outside killed the chain.
#[test]
fn an_ipam_type_naming_the_plugin_itself_is_refused_at_once() {
    let node = Node::new();
    let pod = Netns::new("cfs");
    let mut conf = node.conf("1.1.0", "10.74.0.0/24");
    conf["ipam"]["type"] = json!("calico");
    for cmd in ["ADD", "DEL", "CHECK", "STATUS", "GC"] {
        let netns = matches!(cmd, "ADD" | "DEL" | "CHECK").then(|| pod.path());
        let env = cni_env(cmd, netns.as_deref(), "eth0", &cni_path());
        let out = run_bounded(&node, &plugin_bin(), &env, conf.to_string().as_bytes());
        assert_eq!(out.err_code(), 7, "{cmd}: {out:?}");
        assert!(out.json()["msg"].as_str().unwrap().contains("this plugin itself"), "{cmd}: {out:?}");
    }
    assert_untouched(&node, &pod, "self-delegation");
}

/// A loop through another plugin (here a script that runs `calico` again,
/// as any wrapper would) is stopped by the delegation depth bound.
#[test]
fn a_delegation_loop_through_another_plugin_is_bounded() {
    let node = Node::new();
    let pod = Netns::new("cfl");
    let bin = tempfile::tempdir().unwrap();
    let wrapper = bin.path().join("loop-ipam");
    std::fs::write(&wrapper, format!("#!/bin/sh\nexec {}\n", plugin_bin().display())).unwrap();
    std::fs::set_permissions(&wrapper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut conf = node.conf("1.1.0", "10.75.0.0/24");
    conf["ipam"]["type"] = json!("loop-ipam");
    let cni_path = format!("{}:{}", bin.path().display(), cni_path());
    for cmd in ["DEL", "STATUS"] {
        let netns = (cmd == "DEL").then(|| pod.path());
        let env = cni_env(cmd, netns.as_deref(), "eth0", &cni_path);
        let out = run_bounded(&node, &plugin_bin(), &env, conf.to_string().as_bytes());
        assert_eq!(out.err_code(), 7, "{cmd}: {out:?}");
        assert!(out.json()["msg"].as_str().unwrap().contains("chain of delegations"), "{cmd}: {out:?}");
    }
    assert_untouched(&node, &pod, "delegation loop");
}

/// DEL with CNI_NETNS naming the plugin's own namespace deleted the node's
/// `eth0`: refused (code 8) by every path to that namespace, unless the
/// runtime says CNI_NETNS_OVERRIDE.
#[test]
fn del_in_the_plugins_own_namespace_never_deletes_the_nodes_interface() {
    let node = Node::new();
    let pod = Netns::new("cfd");
    node.ns.exec(&["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0peer"]);
    node.ns.exec(&["ip", "link", "set", "eth0", "up"]);
    let conf = node.conf("1.0.0", "10.76.0.0/24");
    let own_paths = [Path::new("/proc/self/ns/net").to_path_buf(), node.ns.path()];
    for netns in &own_paths {
        let env = cni_env("DEL", Some(netns), "eth0", &cni_path());
        let out = run_bounded(&node, &plugin_bin(), &env, conf.to_string().as_bytes());
        assert_eq!(out.err_code(), 8, "{}: {out:?}", netns.display());
        assert!(node.links().contains(&"eth0".to_string()), "{}: eth0 deleted", netns.display());
    }
    // The pod's own namespace still works as ever.
    let env = cni_env("DEL", Some(&pod.path()), "eth0", &cni_path());
    run_bounded(&node, &plugin_bin(), &env, conf.to_string().as_bytes()).silent_ok();
    assert!(node.links().contains(&"eth0".to_string()));
    // The override is the runtime's explicit word: then DEL does what it is
    // told, in this test's own node namespace.
    let mut env = cni_env("DEL", Some(&own_paths[0]), "eth0", &cni_path());
    env.push(("CNI_NETNS_OVERRIDE", "1".to_string()));
    run_bounded(&node, &plugin_bin(), &env, conf.to_string().as_bytes()).silent_ok();
    assert!(!node.links().contains(&"eth0".to_string()), "the override let DEL through");
}

/// Pools Calico's IPPool validation refuses gave pods public or gateway
/// addresses. Both plugins refuse them with code 7 naming the rule, and
/// nothing is stored or built.
#[test]
fn pools_calico_would_reject_are_code_7_and_nothing_is_stored() {
    let node = Node::new();
    let pod = Netns::new("cfp");
    let cases = [
        ("ipv4_pools", "0.0.0.0/0", "this network"),
        ("ipv4_pools", "169.254.0.0/16", "link-local"),
        ("ipv4_pools", "127.0.0.0/8", "loopback"),
        ("ipv4_pools", "224.0.0.0/4", "multicast"),
        ("ipv6_pools", "::/0", "IPv6 unspecified"),
        ("ipv6_pools", "fe80::/64", "IPv6 link-local"),
    ];
    let ipam_bin = testbed::target_bin("calico-ipam");
    for (key, cidr, rule) in cases {
        let mut conf = node.conf("1.0.0", "10.77.0.0/24");
        conf["ipam"][key] = json!([cidr]);
        if key == "ipv6_pools" {
            conf["ipam"]["assign_ipv6"] = json!("true");
        }
        for program in [plugin_bin(), ipam_bin.clone()] {
            let env = cni_env("ADD", Some(&pod.path()), "eth0", &cni_path());
            let out = run_bounded(&node, &program, &env, conf.to_string().as_bytes());
            assert_eq!(out.err_code(), 7, "{} {cidr}: {out:?}", program.display());
            let v: Value = out.json();
            let text = format!("{} {}", v["msg"], v["details"]);
            assert!(text.contains(rule), "{} {cidr}: the rule is not named: {text}", program.display());
        }
        assert_untouched(&node, &pod, cidr);
    }
}

/// `container_settings: [true]` was read by position as
/// `allow_ip_forwarding: true`. No section of the config is read from an
/// array.
#[test]
fn config_sections_given_as_arrays_are_refused() {
    let node = Node::new();
    let pod = Netns::new("cfa");
    let base = node.conf("1.0.0", "10.79.0.0/24");
    let mut cases = Vec::new();
    let mut c = base.clone();
    c["container_settings"] = json!([true]);
    cases.push(c);
    let mut c = base.clone();
    c["ipam"]["ipv4_pools"] = json!([["10.79.0.0/24"]]);
    cases.push(c);
    let mut c = base.clone();
    c["dns"] = json!([["10.0.0.10"]]);
    cases.push(c);
    let mut c = base.clone();
    c["ipam"] = json!(["calico-ipam"]);
    cases.push(c);
    for conf in cases {
        let env = cni_env("ADD", Some(&pod.path()), "eth0", &cni_path());
        let out = run_bounded(&node, &plugin_bin(), &env, conf.to_string().as_bytes());
        let code = out.err_code();
        assert!(code == 6 || code == 7, "{conf}: {out:?}");
        assert_untouched(&node, &pod, &conf.to_string());
    }
    assert_eq!(pod.exec(&["cat", "/proc/sys/net/ipv4/ip_forward"]).trim(), "0");
}
