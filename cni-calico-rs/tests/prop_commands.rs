//! Property tests of the plugins' whole command path: the built `calico`
//! (delegating to the built `calico-ipam`) executed as a runtime executes
//! it, in a node namespace this test creates, with generated bad inputs:
//! broken configs, pools Calico refuses, an IPAM type that is the plugin
//! itself or a wrapper looping back to it, and valid configs with a bad
//! environment (the node's own namespace as CNI_NETNS, bad interface names,
//! container IDs, CNI_ARGS, delegation depth). Every one must end, within a
//! watchdog's time, in exactly one error document with a spec code, and
//! leave nothing behind: no allocation, no datastore key, no `cali*` link,
//! a pod namespace with only `lo` and forwarding off, every interface of
//! the node still there. Valid configs: ADD, DEL, DEL again leave nothing.
//!
//! One node serves many cases; it is rebuilt from scratch whenever a case
//! left something behind, so every case starts clean (also while proptest
//! shrinks a failure).

mod support;

#[path = "../../cni-proto/tests/prop_support/mod.rs"]
mod prop_support;

#[path = "../../calico-store/tests/pool_oracle/mod.rs"]
mod pool_oracle;

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::ffi::OsString;
use std::net::IpAddr;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use ipnetwork::IpNetwork;
use pool_oracle::{Cidr, Verdict};
use prop_support::{config, documents, is_spec_code, Step};
use proptest::prelude::*;
use proptest::test_runner::{TestCaseError, TestRunner};
use serde_json::{json, Value};
use support::{links, plugin_bin, run_bounded, Node, Out, K8S_ARGS, NETWORK};
use testbed::Netns;

const CONTAINER_ID: &str = "prop1";

/// A node namespace with an uplink and an `eth0` of its own (what DEL in
/// the wrong namespace would delete), a pod namespace, and a directory with
/// a wrapper IPAM plugin that runs `calico` again.
struct Fixture {
    node: Node,
    pod: Netns,
    bin: tempfile::TempDir,
    node_links: BTreeSet<String>,
}

/// `calico-ipam` under another name in the fixture's bin directory: the
/// plugin execs it (it runs `calico-ipam` itself in process).
const EXEC_IPAM: &str = "calico-ipam-exec";

impl Fixture {
    fn new() -> Fixture {
        let node = Node::new();
        node.ns.exec(&["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0peer"]);
        node.ns.exec(&["ip", "link", "set", "eth0", "up"]);
        let pod = Netns::new("cpp");
        let bin = tempfile::tempdir().unwrap();
        let wrapper = bin.path().join("loop-ipam");
        std::fs::write(&wrapper, format!("#!/bin/sh\nexec {}\n", plugin_bin().display())).unwrap();
        std::fs::set_permissions(&wrapper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        std::os::unix::fs::symlink(testbed::target_bin("calico-ipam"), bin.path().join(EXEC_IPAM)).unwrap();
        let node_links = node.links().into_iter().collect();
        Fixture { node, pod, bin, node_links }
    }

    fn cni_path(&self) -> String {
        format!("{}:{}", self.bin.path().display(), support::cni_path())
    }

    /// Everything a failed command must not have left: empty when clean.
    fn residue(&self) -> Vec<String> {
        let mut out = Vec::new();
        let allocated = self.node.allocated();
        if allocated > 0 {
            out.push(format!("{allocated} address(es) allocated"));
        }
        let keys = self.node.keys("/calico/");
        if !keys.is_empty() {
            out.push(format!("datastore keys {keys:?}"));
        }
        let now: BTreeSet<String> = self.node.links().into_iter().collect();
        let extra: Vec<&String> = now.difference(&self.node_links).collect();
        if !extra.is_empty() {
            out.push(format!("new node links {extra:?}"));
        }
        let gone: Vec<&String> = self.node_links.difference(&now).collect();
        if !gone.is_empty() {
            out.push(format!("node links deleted {gone:?}"));
        }
        let pod_links = links(&self.pod);
        if pod_links != ["lo"] {
            out.push(format!("pod links {pod_links:?}"));
        }
        let forward = self.pod.exec(&["cat", "/proc/sys/net/ipv4/ip_forward"]);
        if forward.trim() != "0" {
            out.push(format!("pod ip_forward {}", forward.trim()));
        }
        out
    }
}

/// Run one property against a fixture that every case finds clean by
/// `dirt` (what a case must not leave): a fixture a case left dirty is
/// replaced by a new one before the next case.
fn check_on_fixture<S: Strategy>(
    cases: u32,
    strategy: S,
    dirt: fn(&Fixture) -> Vec<String>,
    test: impl Fn(&Fixture, S::Value) -> Result<(), TestCaseError>,
) {
    let fixture = RefCell::new(Fixture::new());
    let mut cfg = config(cases);
    // Each shrinking step runs the plugin again: keep the search short
    // unless told otherwise.
    if std::env::var_os("PROPTEST_MAX_SHRINK_ITERS").is_none() {
        cfg.max_shrink_iters = 64;
    }
    let mut runner = TestRunner::new(cfg);
    let outcome = runner.run(&strategy, |value| {
        if !dirt(&fixture.borrow()).is_empty() {
            let fresh = Fixture::new();
            *fixture.borrow_mut() = fresh;
        }
        test(&fixture.borrow(), value)
    });
    if let Err(e) = outcome {
        panic!("{e}");
    }
}

// ---------------------------------------------------------------------------
// Bad inputs

const COMMANDS: [&str; 5] = ["ADD", "DEL", "CHECK", "STATUS", "GC"];

/// A change to a valid config that makes it invalid for every command.
#[derive(Debug, Clone)]
enum BadConf {
    /// A key (path) set to a value the plugins refuse.
    Set(&'static [&'static str], Value),
    /// A key the plugins need, removed.
    Remove(&'static [&'static str]),
    /// An object the plugins read, given as the array of its values.
    Positional(&'static [&'static str]),
    /// A section wrapped far past the JSON parser's nesting limit.
    Deep(&'static [&'static str]),
    /// stdin that is not a config at all.
    Stdin(&'static [u8]),
    /// ipam.type naming the plugin itself, a path, or the plugin's own type.
    SelfIpam(SelfIpam),
    /// ipam.type naming a wrapper that executes `calico` again.
    LoopIpam,
    /// Pool lists with at least one CIDR the pool rules refuse.
    Pools(Vec<Cidr>, Vec<Cidr>),
}

#[derive(Debug, Clone, Copy)]
enum SelfIpam {
    Calico,
    SameAsType,
    Path,
    DotDot,
}

const NOT_CONFIGS: &[&[u8]] = &[b"", b"{", b"[]", b"null", b"\xff\xfe"];

/// Broken configs: refused values, missing keys, sections as arrays, deep
/// nesting, stdin that is no config.
fn broken_conf() -> BoxedStrategy<BadConf> {
    let set: Vec<(&'static [&'static str], Value)> = vec![
        (&["cniVersion"], json!(7)),
        (&["cniVersion"], json!("0.2.0")),
        (&["cniVersion"], json!("9.9.9")),
        (&["cniVersion"], json!(null)),
        (&["name"], json!("a b")),
        (&["name"], json!("")),
        (&["name"], json!(3)),
        (&["type"], json!(5)),
        (&["ipam"], json!("calico-ipam")),
        (&["ipam", "type"], json!(7)),
        (&["ipam", "type"], json!("")),
        (&["ipam", "assign_ipv4"], json!("maybe")),
        (&["ipam", "assign_ipv4"], json!(["true"])),
        (&["ipam", "assign_ipv6"], json!(1)),
        (&["ipam", "ipv4_pools"], json!("10.70.0.0/24")),
        (&["ipam", "ipv4_pools"], json!([["10.70.0.0/24"]])),
        (&["ipam", "ipv4_pools"], json!([7])),
        (&["mtu"], json!("1450")),
        (&["mtu"], json!(-1)),
        (&["mtu"], json!(70000)),
        (&["mtu"], json!(10)),
        (&["mtu"], json!(1450.5)),
        (&["num_queues"], json!(0)),
        (&["num_queues"], json!(5000)),
        (&["nodename"], json!("a/b")),
        (&["nodename"], json!(7)),
        (&["container_settings"], json!([true])),
        (&["container_settings"], json!("yes")),
        (&["container_settings", "allow_ip_forwarding"], json!("maybe")),
        (&["container_settings", "allow_ip_forwarding"], json!([true])),
        (&["datastore_type"], json!("kubernetes")),
        (&["datastore_type"], json!("etcdv3")),
        (&["datastore_sync"], json!("sometimes")),
        (&["datastore_path"], json!(["/x"])),
        (&["dns"], json!([["10.96.0.10"]])),
        (&["dns"], json!({"nameservers": "10.96.0.10"})),
        (&["prevResult"], json!([])),
        (&["prevResult"], json!({"ips": 1})),
        (&["prevResult"], json!({"ip4": {"ip": "10.0.0.5/32"}})),
    ];
    // The sections serde would read by position weigh more: the plugin
    // object and `ipam` are refused by the runner's own parse anyway.
    let objects = prop_oneof![
        3 => Just(&["container_settings"][..]),
        3 => Just(&["dns"][..]),
        1 => Just(&["ipam"][..]),
        1 => Just(&[][..]),
    ];
    let needed: &'static [&'static [&'static str]] = &[&["name"], &["ipam"], &["ipam", "type"]];
    let deep: &'static [&'static [&'static str]] = &[&[], &["ipam"], &["container_settings"], &["dns"]];
    prop_oneof![
        6 => prop::sample::select(set).prop_map(|(k, v)| BadConf::Set(k, v)),
        1 => prop::sample::select(needed).prop_map(BadConf::Remove),
        6 => objects.prop_map(BadConf::Positional),
        1 => prop::sample::select(deep).prop_map(BadConf::Deep),
        1 => prop::sample::select(NOT_CONFIGS).prop_map(BadConf::Stdin),
    ]
    .boxed()
}

/// ipam.type naming the plugin itself (or its path, or a path at all), or
/// a wrapper that runs it again.
fn delegation_conf() -> BoxedStrategy<BadConf> {
    prop_oneof![
        2 => prop::sample::select(&[SelfIpam::Calico, SelfIpam::SameAsType, SelfIpam::Path, SelfIpam::DotDot][..])
            .prop_map(BadConf::SelfIpam),
        1 => Just(BadConf::LoopIpam),
    ]
    .boxed()
}

/// Pool lists with a CIDR the pool rules refuse, in either family's list.
fn pools_conf() -> BoxedStrategy<BadConf> {
    prop_oneof![(bad_pool_list(false), pool_list(true)), (pool_list(false), bad_pool_list(true))]
        .prop_map(|(v4, v6)| BadConf::Pools(v4, v6))
        .boxed()
}

/// Pools the oracle accepts, of one family.
fn pool_list(v6: bool) -> BoxedStrategy<Vec<Cidr>> {
    prop::collection::vec(
        pool_oracle::cidr(v6).prop_filter("a usable pool", |c| pool_oracle::verdict(c) == Verdict::Ok),
        0..=1,
    )
    .boxed()
}

/// Pool lists with at least one CIDR the oracle refuses.
fn bad_pool_list(v6: bool) -> BoxedStrategy<Vec<Cidr>> {
    (pool_list(v6), pool_oracle::cidr(v6).prop_filter("refused", |c| pool_oracle::verdict(c) != Verdict::Ok))
        .prop_map(|(mut good, bad)| {
            good.push(bad);
            good
        })
        .boxed()
}

/// A change to a valid environment that makes it invalid.
#[derive(Debug, Clone)]
enum BadEnv {
    /// CNI_NETNS naming the node's own namespace (ADD and DEL refuse it),
    /// with an ifname the node has.
    OwnNetns(OwnNetns, &'static str),
    /// CNI_NETNS that does not exist (ADD needs it).
    MissingNetns,
    Ifname(OsString),
    ContainerId(OsString),
    Args(OsString),
    Command(String),
    /// CNI_NETNS, CNI_ARGS or CNI_PATH not UTF-8 (read for every command).
    NotUtf8(&'static str),
    /// Our delegation depth variable, garbage or at the bound.
    Depth(&'static str),
    NoCniPath,
}

#[derive(Debug, Clone, Copy)]
enum OwnNetns {
    ProcSelf,
    ThreadSelf,
    /// `/run/netns/<node>`, the node namespace's own name.
    NodePath,
}

fn not_utf8(prefix: &str) -> OsString {
    let mut b = prefix.as_bytes().to_vec();
    b.push(0xff);
    OsString::from_vec(b)
}

/// Environments a valid config cannot rescue: bad interface names,
/// container IDs, CNI_ARGS, commands, non-UTF-8 values, no CNI_PATH.
fn env_syntax(cmd: &'static str) -> BoxedStrategy<BadEnv> {
    let attachment = matches!(cmd, "ADD" | "DEL" | "CHECK");
    let ifname = prop_oneof![
        Just(OsString::from("")),
        "[a-z0-9]{16,24}".prop_map(OsString::from),
        prop::sample::select(&[".", "..", "eth0:1", "a/b", "a b", "tab\tx", "€€€€€€"][..])
            .prop_map(OsString::from),
        Just(not_utf8("eth")),
    ];
    let container_id = prop_oneof![
        Just(OsString::from("")),
        prop::sample::select(&["-x", ".x", "_x", "a/b", "../x", "ä", "a b", "a:b", "a$"][..])
            .prop_map(OsString::from),
        Just(not_utf8("c")),
    ];
    let args = prop_oneof![
        prop::sample::select(&["garbage", "=v", "K8S_POD_NAME", ";;x;;"][..]).prop_map(OsString::from),
        prop::sample::select(
            &[
                "K8S_POD_NAMESPACE=a/b;K8S_POD_NAME=p",
                "K8S_POD_NAMESPACE=ns;K8S_POD_NAME=..",
                "K8S_POD_NAMESPACE=ns;K8S_POD_NAME=a b",
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=€",
            ][..]
        )
        .prop_map(OsString::from),
    ];
    let command =
        "[A-Za-z ]{0,8}".prop_filter("not a command", |s| !COMMANDS.contains(&s.as_str()) && s != "VERSION");
    let mut options: Vec<(u32, BoxedStrategy<BadEnv>)> = vec![
        (1, command.prop_map(BadEnv::Command).boxed()),
        (
            1,
            prop::sample::select(&["CNI_NETNS", "CNI_ARGS", "CNI_PATH"][..])
                .prop_map(BadEnv::NotUtf8)
                .boxed(),
        ),
        (1, Just(BadEnv::NoCniPath).boxed()),
    ];
    if attachment {
        options.push((2, ifname.prop_map(BadEnv::Ifname).boxed()));
        options.push((2, container_id.prop_map(BadEnv::ContainerId).boxed()));
        options.push((2, args.prop_map(BadEnv::Args).boxed()));
    }
    prop::strategy::Union::new_weighted(options).boxed()
}

/// CNI_NETNS naming the node's own namespace (ADD, DEL) with an interface
/// the node has, or a namespace that does not exist (ADD).
fn own_netns(cmd: &'static str) -> BoxedStrategy<BadEnv> {
    let own = prop::sample::select(&[OwnNetns::ProcSelf, OwnNetns::ThreadSelf, OwnNetns::NodePath][..]);
    let ifname = prop::sample::select(&["eth0", "up0", "eth0peer"][..]);
    let own = (own, ifname).prop_map(|(o, i)| BadEnv::OwnNetns(o, i));
    if cmd == "ADD" {
        prop_oneof![4 => own, 1 => Just(BadEnv::MissingNetns)].boxed()
    } else {
        own.boxed()
    }
}

/// CNI_DELEGATION_DEPTH that is garbage or already at the bound.
fn depth_env() -> BoxedStrategy<BadEnv> {
    prop::sample::select(&["many", "-1", "4", "99"][..]).prop_map(BadEnv::Depth).boxed()
}

#[derive(Debug, Clone)]
enum Bad {
    Conf(BadConf),
    Env(BadEnv),
}

/// A command and a bad input for it from `bad`.
fn case<F>(commands: &'static [&'static str], bad: F) -> impl Strategy<Value = (&'static str, Bad)>
where
    F: Fn(&'static str) -> BoxedStrategy<Bad>,
{
    prop::sample::select(commands).prop_flat_map(move |cmd| (Just(cmd), bad(cmd)))
}

/// A valid config for `cmd` on this node (CHECK gets the prevResult it
/// needs, GC its valid attachments).
fn valid_conf(fx: &Fixture, cmd: &str) -> Value {
    let mut conf = fx.node.conf("1.1.0", "10.70.0.0/24");
    conf["dns"] = json!({"nameservers": ["10.96.0.10"]});
    conf["cni.dev/valid-attachments"] = json!([]);
    if cmd == "CHECK" {
        conf["prevResult"] = json!({
            "cniVersion": "1.1.0",
            "interfaces": [{"name": "cali0123456789a"}, {"name": "eth0", "sandbox": fx.pod.path()}],
            "ips": [{"address": "10.70.0.5/32", "interface": 1}]
        });
    }
    conf
}

fn node_mut<'a>(v: &'a mut Value, path: &[&str]) -> &'a mut Value {
    path.iter().fold(v, |v, k| &mut v[*k])
}

fn steps(path: &[&str]) -> Vec<Step> {
    path.iter().map(|k| Step::Key(k.to_string())).collect()
}

/// The stdin of a case, and the codes it may end with.
fn stdin_for(fx: &Fixture, cmd: &str, bad: &BadConf) -> (Vec<u8>, &'static [u64]) {
    let mut conf = valid_conf(fx, cmd);
    let codes: &'static [u64] = match bad {
        BadConf::Set(path, v) => {
            *node_mut(&mut conf, path) = v.clone();
            &[1, 6, 7]
        }
        BadConf::Remove(path) => {
            let (last, parent) = path.split_last().unwrap();
            if let Some(o) = node_mut(&mut conf, parent).as_object_mut() {
                o.remove(*last);
            }
            &[7]
        }
        BadConf::Positional(path) => {
            prop_support::apply_at(&mut conf, &steps(path), &prop_support::Mutation::Positional);
            &[6, 7]
        }
        BadConf::Deep(path) => {
            let m = prop_support::Mutation::Nest { depth: 200, arrays: path.len() % 2 == 0 };
            prop_support::apply_at(&mut conf, &steps(path), &m);
            &[6]
        }
        BadConf::Stdin(bytes) => return (bytes.to_vec(), &[6]),
        BadConf::SelfIpam(kind) => {
            conf["ipam"]["type"] = match kind {
                SelfIpam::Calico => json!("calico"),
                SelfIpam::SameAsType => {
                    conf["type"] = json!("calico-prop");
                    json!("calico-prop")
                }
                SelfIpam::Path => json!(plugin_bin()),
                SelfIpam::DotDot => json!("../calico"),
            };
            &[7]
        }
        BadConf::LoopIpam => {
            conf["ipam"]["type"] = json!("loop-ipam");
            // ADD builds the pod's interface while its IPAM delegate runs,
            // so the nested `calico` usually stops at "interface already
            // exists" (100) before the depth bound (7) is reached.
            if cmd == "ADD" {
                &[7, 100]
            } else {
                &[7]
            }
        }
        BadConf::Pools(v4, v6) => {
            conf["ipam"]["assign_ipv6"] = json!("true");
            conf["ipam"]["ipv4_pools"] = json!(v4.iter().map(Cidr::text).collect::<Vec<_>>());
            conf["ipam"]["ipv6_pools"] = json!(v6.iter().map(Cidr::text).collect::<Vec<_>>());
            &[7]
        }
    };
    (conf.to_string().into_bytes(), codes)
}

/// The environment of a valid invocation of `cmd`.
fn valid_env(fx: &Fixture, cmd: &str) -> Vec<(String, OsString)> {
    let mut env = vec![
        ("CNI_COMMAND".to_string(), OsString::from(cmd)),
        ("CNI_CONTAINERID".to_string(), OsString::from(CONTAINER_ID)),
        ("CNI_IFNAME".to_string(), OsString::from("eth0")),
        ("CNI_ARGS".to_string(), OsString::from(K8S_ARGS)),
        ("CNI_PATH".to_string(), OsString::from(fx.cni_path())),
    ];
    if matches!(cmd, "ADD" | "DEL" | "CHECK") {
        env.push(("CNI_NETNS".to_string(), fx.pod.path().into_os_string()));
    }
    env
}

fn set(env: &mut Vec<(String, OsString)>, key: &str, value: Option<OsString>) {
    env.retain(|(k, _)| k != key);
    if let Some(v) = value {
        env.push((key.to_string(), v));
    }
}

/// The environment of a case, and the codes it may end with.
fn env_for(fx: &Fixture, cmd: &str, bad: &BadEnv) -> (Vec<(String, OsString)>, &'static [u64]) {
    let mut env = valid_env(fx, cmd);
    let codes: &'static [u64] = match bad {
        BadEnv::OwnNetns(own, ifname) => {
            let path = match own {
                OwnNetns::ProcSelf => PathBuf::from("/proc/self/ns/net"),
                OwnNetns::ThreadSelf => PathBuf::from("/proc/thread-self/ns/net"),
                OwnNetns::NodePath => fx.node.ns.path(),
            };
            set(&mut env, "CNI_NETNS", Some(path.into_os_string()));
            set(&mut env, "CNI_IFNAME", Some(OsString::from(ifname)));
            &[8]
        }
        BadEnv::MissingNetns => {
            let path = Path::new("/run/netns").join(testbed::unique("absent-"));
            set(&mut env, "CNI_NETNS", Some(path.into_os_string()));
            &[8]
        }
        BadEnv::Ifname(v) => {
            set(&mut env, "CNI_IFNAME", Some(v.clone()));
            &[4]
        }
        BadEnv::ContainerId(v) => {
            set(&mut env, "CNI_CONTAINERID", Some(v.clone()));
            &[4]
        }
        BadEnv::Args(v) => {
            set(&mut env, "CNI_ARGS", Some(v.clone()));
            &[4]
        }
        BadEnv::Command(c) => {
            set(&mut env, "CNI_COMMAND", Some(OsString::from(c)));
            &[4]
        }
        BadEnv::NotUtf8(key) => {
            set(&mut env, key, Some(not_utf8("/x")));
            &[4]
        }
        BadEnv::Depth(v) => {
            set(&mut env, "CNI_DELEGATION_DEPTH", Some(OsString::from(v)));
            if matches!(*v, "4" | "99") {
                &[7]
            } else {
                &[4]
            }
        }
        BadEnv::NoCniPath => {
            set(&mut env, "CNI_PATH", None);
            &[4]
        }
    };
    (env, codes)
}

/// The one error document of a failed run, with a code in `codes`.
fn assert_one_error(out: &Out, codes: &[u64]) -> Result<(), TestCaseError> {
    prop_assert_ne!(out.code, 0, "succeeded: {:?}", out);
    let docs = documents(out.stdout.as_bytes()).map_err(TestCaseError::fail)?;
    prop_assert_eq!(docs.len(), 1, "want one document: {:?}", out);
    let doc = &docs[0];
    let code = doc["code"].as_u64().unwrap_or(0);
    prop_assert!(is_spec_code(code), "not a spec code: {:?}", out);
    prop_assert!(codes.contains(&code), "code {} not in {:?}: {:?}", code, codes, out);
    prop_assert!(doc["msg"].as_str().is_some_and(|m| !m.is_empty()), "empty msg: {:?}", out);
    Ok(())
}

/// One bad input, run: one error document with a code its class calls
/// for, within the watchdog's time, and nothing changed on the node or in
/// the pod.
fn run_bad(fx: &Fixture, cmd: &str, bad: &Bad) -> Result<(), TestCaseError> {
    let (env, stdin, codes) = match bad {
        Bad::Conf(c) => {
            let (stdin, codes) = stdin_for(fx, cmd, c);
            (valid_env(fx, cmd), stdin, codes)
        }
        Bad::Env(e) => {
            let (env, codes) = env_for(fx, cmd, e);
            let mut conf = valid_conf(fx, cmd);
            // CNI_PATH and the delegation depth are the delegation's
            // environment: `calico-ipam` runs in process and reads neither,
            // so they are tried with an IPAM plugin that is exec'd.
            if matches!(e, BadEnv::Depth(_) | BadEnv::NoCniPath) {
                conf["ipam"]["type"] = json!(EXEC_IPAM);
            }
            (env, conf.to_string().into_bytes(), codes)
        }
    };
    let out = run_bounded(&fx.node, &plugin_bin(), &env, &stdin).map_err(TestCaseError::fail)?;
    assert_one_error(&out, codes)?;
    let residue = fx.residue();
    prop_assert!(residue.is_empty(), "{} left {:?}: {:?}", cmd, residue, out);
    Ok(())
}

/// Broken configs (refused values, missing keys, a section given as the
/// array of its values, nesting past the parser's limit, no config at all),
/// for every command: code 1, 6 or 7, nothing created.
#[test]
fn broken_configs_end_in_one_error_and_create_nothing() {
    let cases = case(&COMMANDS, |_| broken_conf().prop_map(Bad::Conf).boxed());
    check_on_fixture(48, cases, Fixture::residue, |fx, (cmd, bad)| run_bad(fx, cmd, &bad));
}

/// An IPAM type that is the plugin itself, its path, or a wrapper that runs
/// it again, and a delegation depth that is garbage or at the bound, for
/// every command: refused at once or stopped by the depth bound, never a
/// chain of processes running until the watchdog kills it.
#[test]
fn delegation_to_the_plugin_itself_ends_at_once() {
    let cases = case(&COMMANDS, |_| {
        prop_oneof![2 => delegation_conf().prop_map(Bad::Conf), 1 => depth_env().prop_map(Bad::Env)].boxed()
    });
    check_on_fixture(32, cases, Fixture::residue, |fx, (cmd, bad)| run_bad(fx, cmd, &bad));
}

/// ADD and DEL with CNI_NETNS naming the node's own namespace (by three
/// paths) and an interface the node has: code 8, the interface still there;
/// ADD into a namespace that does not exist: code 8.
#[test]
fn the_nodes_own_namespace_is_never_touched() {
    let cases = case(&["ADD", "DEL"], |cmd| own_netns(cmd).prop_map(Bad::Env).boxed());
    check_on_fixture(32, cases, Fixture::residue, |fx, (cmd, bad)| run_bad(fx, cmd, &bad));
}

/// Pools the pool rules refuse, among good ones, in either family's list,
/// for every command: code 7, nothing stored.
#[test]
fn pools_calico_refuses_are_code_7_and_store_nothing() {
    let cases = case(&COMMANDS, |_| pools_conf().prop_map(Bad::Conf).boxed());
    check_on_fixture(32, cases, Fixture::residue, |fx, (cmd, bad)| run_bad(fx, cmd, &bad));
}

/// Valid configs with a bad environment, for every command: code 4,
/// nothing created.
#[test]
fn bad_environments_end_in_code_4_and_create_nothing() {
    let cases = case(&COMMANDS, |cmd| env_syntax(cmd).prop_map(Bad::Env).boxed());
    check_on_fixture(48, cases, Fixture::residue, |fx, (cmd, bad)| run_bad(fx, cmd, &bad));
}

// ---------------------------------------------------------------------------
// Valid inputs

#[derive(Debug, Clone)]
struct Valid {
    version: &'static str,
    container_id: String,
    ifname: String,
    /// `K8S_POD_NAMESPACE` and `K8S_POD_NAME`, or a plain CNI container.
    k8s: Option<(String, String)>,
    forwarding: bool,
    dual_stack: bool,
    mtu: Option<u32>,
    pool: &'static str,
    /// Whether the second DEL still names the (now empty) namespace.
    second_del_with_netns: bool,
}

fn valid_case() -> impl Strategy<Value = Valid> {
    (
        prop::sample::select(&["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"][..]),
        "[a-z0-9][a-z0-9_.-]{0,30}",
        "[a-z][a-z0-9]{0,7}".prop_filter("not lo", |s| s != "lo"),
        prop::option::of(("[a-z][a-z0-9-]{0,10}", "[a-z][a-z0-9.-]{0,20}")),
        (any::<bool>(), any::<bool>()),
        prop::option::of(1280u32..=9000),
        prop::sample::select(&["10.71.0.0/24", "10.71.8.0/22", "10.72.0.0/16"][..]),
        any::<bool>(),
    )
        .prop_map(|(version, container_id, ifname, k8s, (forwarding, dual_stack), mtu, pool, second)| {
            Valid {
                version,
                container_id,
                ifname,
                k8s,
                forwarding,
                dual_stack,
                mtu,
                pool,
                second_del_with_netns: second,
            }
        })
}

/// What an attachment leaves: allocations, its pod record and handle, host
/// veths, pod interfaces. (Blocks, affinities and pools stay: they are the
/// node's, not the pod's.)
fn attachment_residue(fx: &Fixture, pod: &Netns) -> Vec<String> {
    let mut out = Vec::new();
    let allocated = fx.node.allocated();
    if allocated > 0 {
        out.push(format!("{allocated} address(es) allocated"));
    }
    for prefix in ["/calico/resources/v3/projectcalico.org/workloadendpoints/", "/calico/ipam/v2/handle/"] {
        let keys = fx.node.keys(prefix);
        if !keys.is_empty() {
            out.push(format!("keys {keys:?}"));
        }
    }
    let now: BTreeSet<String> = fx.node.links().into_iter().collect();
    if now != fx.node_links {
        out.push(format!("node links {now:?}, were {:?}", fx.node_links));
    }
    let pod_links = links(pod);
    if pod_links != ["lo"] {
        out.push(format!("pod links {pod_links:?}"));
    }
    out
}

/// ADD of a valid config succeeds with addresses from its pools and wires
/// the pod; DEL then removes everything the ADD made, and a second DEL
/// (with or without the namespace) succeeds and finds nothing to do.
#[test]
fn add_del_del_leaves_nothing() {
    check_on_fixture(
        12,
        valid_case(),
        |fx| attachment_residue(fx, &fx.pod),
        |fx, v| {
            let pod = Netns::new("cpv");
            let mut conf = fx.node.conf(v.version, v.pool);
            conf["container_settings"]["allow_ip_forwarding"] = json!(v.forwarding);
            match v.mtu {
                Some(m) => conf["mtu"] = json!(m),
                None => {
                    if let Some(o) = conf.as_object_mut() {
                        o.remove("mtu");
                    }
                }
            }
            if v.dual_stack {
                conf["ipam"]["assign_ipv6"] = json!("true");
                conf["ipam"]["ipv6_pools"] = json!(["fd00:71::/120"]);
            }
            let stdin = conf.to_string().into_bytes();
            let args = match &v.k8s {
                Some((ns, name)) => format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={ns};K8S_POD_NAME={name}"),
                None => String::new(),
            };
            let env = |cmd: &str, netns: bool| {
                let mut env = vec![
                    ("CNI_COMMAND".to_string(), OsString::from(cmd)),
                    ("CNI_CONTAINERID".to_string(), OsString::from(&v.container_id)),
                    ("CNI_IFNAME".to_string(), OsString::from(&v.ifname)),
                    ("CNI_ARGS".to_string(), OsString::from(&args)),
                    ("CNI_PATH".to_string(), OsString::from(fx.cni_path())),
                ];
                if netns {
                    env.push(("CNI_NETNS".to_string(), pod.path().into_os_string()));
                }
                env
            };
            let run = |cmd: &str, netns: bool| {
                run_bounded(&fx.node, &plugin_bin(), &env(cmd, netns), &stdin).map_err(TestCaseError::fail)
            };

            let add = run("ADD", true)?;
            prop_assert_eq!(add.code, 0, "ADD: {:?}", add);
            let docs = documents(add.stdout.as_bytes()).map_err(TestCaseError::fail)?;
            prop_assert_eq!(docs.len(), 1, "ADD: {:?}", add);
            let result = &docs[0];
            prop_assert_eq!(&result["cniVersion"], &json!(v.version));
            let pool: IpNetwork = v.pool.parse().unwrap();
            let pool6: IpNetwork = "fd00:71::/120".parse().unwrap();
            let ips: Vec<IpAddr> = result["ips"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|i| i["address"].as_str()?.parse::<IpNetwork>().ok())
                        .map(|n| n.ip())
                        .collect()
                })
                .unwrap_or_default();
            prop_assert_eq!(ips.len(), if v.dual_stack { 2 } else { 1 }, "{}", result);
            for ip in &ips {
                let from = if ip.is_ipv4() { pool } else { pool6 };
                prop_assert!(from.contains(*ip), "{} is not in {}", ip, from);
            }
            prop_assert_eq!(fx.node.allocated(), ips.len());
            let pod_links = links(&pod);
            prop_assert_eq!(pod_links, vec!["lo".to_string(), v.ifname.clone()]);
            let forward = pod.exec(&["cat", "/proc/sys/net/ipv4/ip_forward"]);
            prop_assert_eq!(forward.trim(), if v.forwarding { "1" } else { "0" });
            let veths: Vec<String> = fx.node.links().into_iter().filter(|l| l.starts_with("cali")).collect();
            prop_assert_eq!(veths.len(), 1, "{:?}", veths);
            let weps = fx.node.keys("/calico/resources/v3/projectcalico.org/workloadendpoints/");
            prop_assert_eq!(weps.len(), 1, "{:?}", weps);
            let handle = format!("/calico/ipam/v2/handle/{NETWORK}.{}", v.container_id);
            prop_assert_eq!(fx.node.keys("/calico/ipam/v2/handle/"), vec![handle]);

            let del = run("DEL", true)?;
            prop_assert_eq!((del.code, del.stdout.as_str()), (0, ""), "DEL: {:?}", del);
            let left = attachment_residue(fx, &pod);
            prop_assert!(left.is_empty(), "DEL left {:?}", left);

            let again = run("DEL", v.second_del_with_netns)?;
            prop_assert_eq!((again.code, again.stdout.as_str()), (0, ""), "second DEL: {:?}", again);
            let left = attachment_residue(fx, &pod);
            prop_assert!(left.is_empty(), "second DEL left {:?}", left);
            Ok(())
        },
    );
}

/// A pool list that every pool rule accepts entry by entry but that
/// calico-ipam refuses as a whole when it allocates: an entry of the other
/// family, or one overlapping an earlier entry. The entries before it are
/// distinct, usable pools.
#[derive(Debug, Clone)]
struct MixedPools {
    /// `ipv6_pools` (with assign_ipv6) instead of `ipv4_pools`.
    v6_list: bool,
    good: Vec<u8>,
    wrong: Wrong,
}

#[derive(Debug, Clone)]
enum Wrong {
    OtherFamily(Cidr),
    /// Half of the earlier entry with this index.
    Overlapping(prop::sample::Index),
}

fn mixed_pools() -> impl Strategy<Value = MixedPools> {
    let good = prop::collection::btree_set(0u8..16, 1..=2).prop_map(|s| s.into_iter().collect::<Vec<_>>());
    (any::<bool>(), good)
        .prop_flat_map(|(v6_list, good)| {
            let other = pool_oracle::cidr(!v6_list)
                .prop_filter("a usable pool", |c| pool_oracle::verdict(c) == Verdict::Ok)
                .prop_map(Wrong::OtherFamily);
            let wrong = prop_oneof![other, any::<prop::sample::Index>().prop_map(Wrong::Overlapping)];
            (Just(v6_list), Just(good), wrong)
        })
        .prop_map(|(v6_list, good, wrong)| MixedPools { v6_list, good, wrong })
}

impl MixedPools {
    fn entry(&self, n: u8, half: bool) -> String {
        match (self.v6_list, half) {
            (false, false) => format!("10.80.{n}.0/24"),
            (false, true) => format!("10.80.{n}.0/25"),
            (true, false) => format!("fd00:80:{n:x}::/120"),
            (true, true) => format!("fd00:80:{n:x}::/121"),
        }
    }

    fn list(&self) -> Vec<String> {
        let mut list: Vec<String> = self.good.iter().map(|n| self.entry(*n, false)).collect();
        list.push(match &self.wrong {
            Wrong::OtherFamily(c) => c.text(),
            Wrong::Overlapping(at) => self.entry(self.good[at.index(self.good.len())], true),
        });
        list
    }
}

/// Such a list is refused with code 7, like every other bad input, and like
/// every other bad input it must store nothing. It stores the pools named
/// before the wrong entry: each is created on first use as the list is
/// walked (ipam-block pool.rs `pools_for`, `ensure_pool`), before the wrong
/// entry is reached.
#[test]

fn pool_lists_refused_at_allocation_store_nothing() {
    check_on_fixture(16, mixed_pools(), Fixture::residue, |fx, m| {
        let mut conf = valid_conf(fx, "ADD");
        let key = if m.v6_list { "ipv6_pools" } else { "ipv4_pools" };
        conf["ipam"]["assign_ipv6"] = json!(if m.v6_list { "true" } else { "false" });
        conf["ipam"][key] = json!(m.list());
        if m.v6_list {
            conf["ipam"]["ipv4_pools"] = json!(["10.70.0.0/24"]);
        }
        let out = run_bounded(&fx.node, &plugin_bin(), &valid_env(fx, "ADD"), conf.to_string().as_bytes())
            .map_err(TestCaseError::fail)?;
        assert_one_error(&out, &[7])?;
        let residue = fx.residue();
        prop_assert!(residue.is_empty(), "{:?} left {:?}: {:?}", m.list(), residue, out);
        Ok(())
    });
}
