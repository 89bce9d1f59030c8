//! Property tests of the protocol layer, the part every plugin shares: the
//! runner (`run_with`) over generated environments and generated (mostly
//! broken) network configs, CNI_ARGS, `NetConf::parse` on arbitrary bytes,
//! and `strict::from_value` against serde_json.
//!
//! The expected outcome of every generated case is computed by an oracle in
//! this file, written from the spec's rules and the crate's documented order
//! (lib.rs), not by calling the crate. Case counts are bounded per property;
//! `PROPTEST_CASES` raises (or lowers) all of them. No failure files are
//! written: proptest prints the minimal failing input instead.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;

use cni_proto::{run_with, strict, CniArgs, CniError, CniResult, Command, NetConf, Plugin, Request};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::TestCaseError;
use serde::Deserialize;
use serde_json::{json, Value};

mod prop_support;
use prop_support::*;

// ---------------------------------------------------------------------------
// A plugin that records its calls

#[derive(Debug, Clone, PartialEq)]
struct Seen {
    command: Command,
    container_id: Option<String>,
    ifname: Option<String>,
    args: Vec<(String, String)>,
}

#[derive(Default)]
struct Recorder {
    calls: RefCell<Vec<Seen>>,
}

impl Recorder {
    fn record(&self, req: &Request) {
        self.calls.borrow_mut().push(Seen {
            command: req.command(),
            container_id: req.env.container_id.as_ref().map(|c| c.as_str().to_string()),
            ifname: req.env.ifname.as_ref().map(|i| i.as_str().to_string()),
            args: req.args().pairs().to_vec(),
        });
    }
}

impl Plugin for Recorder {
    fn add(&self, req: &Request) -> Result<CniResult, CniError> {
        self.record(req);
        let result = json!({"ips": [{"address": "10.1.2.3/32"}]});
        CniResult::from_value(&result)
    }
    fn del(&self, req: &Request) -> Result<(), CniError> {
        self.record(req);
        Ok(())
    }
    fn check(&self, req: &Request) -> Result<(), CniError> {
        self.record(req);
        Ok(())
    }
    fn status(&self, req: &Request) -> Result<(), CniError> {
        self.record(req);
        Ok(())
    }
    fn gc(&self, req: &Request) -> Result<(), CniError> {
        self.record(req);
        Ok(())
    }
}

struct Ran {
    code: i32,
    stdout: Vec<u8>,
    calls: Vec<Seen>,
}

fn run(env: BTreeMap<OsString, OsString>, stdin: &[u8]) -> Ran {
    let plugin = Recorder::default();
    let mut out = Vec::new();
    let code = run_with(&plugin, env, &mut &stdin[..], &mut out);
    Ran { code, stdout: out, calls: plugin.calls.into_inner() }
}

// ---------------------------------------------------------------------------
// The oracle's rules, from the spec

const COMMANDS: [&str; 6] = ["ADD", "DEL", "CHECK", "STATUS", "GC", "VERSION"];
const SUPPORTED: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$` (container IDs and network names).
fn valid_id(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// Linux interface names: 1–15 bytes, not `.`/`..`, no `/`, `:`,
/// whitespace or control characters.
fn valid_ifname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s != "."
        && s != ".."
        && !s.chars().any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
}

/// `major.minor.patch` with missing parts 0, for the command floors.
fn version_at_least(v: &str, floor: (u32, u32, u32)) -> bool {
    let mut parts = v.split('.');
    let mut next = |required: bool| match parts.next() {
        Some(p) => p.parse::<u32>().ok(),
        None if required => None,
        None => Some(0),
    };
    let (Some(a), Some(b), Some(c)) = (next(true), next(false), next(false)) else { return false };
    parts.next().is_none() && (a, b, c) >= floor
}

// ---------------------------------------------------------------------------
// Generated environments

/// One environment variable as the runtime may set it.
#[derive(Debug, Clone)]
enum Var {
    Absent,
    Text(String),
    /// Not UTF-8 (ends in 0xff, which UTF-8 never contains).
    Bytes(Vec<u8>),
}

impl Var {
    fn os(&self) -> Option<OsString> {
        match self {
            Var::Absent => None,
            Var::Text(s) => Some(OsString::from(s)),
            Var::Bytes(b) => Some(OsString::from_vec(b.clone())),
        }
    }
    /// Present and non-empty (empty counts as missing), as text or bytes.
    fn given(&self) -> bool {
        match self {
            Var::Absent => false,
            Var::Text(s) => !s.is_empty(),
            Var::Bytes(_) => true,
        }
    }
    fn text(&self) -> Option<&str> {
        match self {
            Var::Text(s) if !s.is_empty() => Some(s),
            _ => None,
        }
    }
}

fn var(text: impl Strategy<Value = String> + 'static) -> BoxedStrategy<Var> {
    let bytes = (prop::collection::vec(any::<u8>(), 0..6)).prop_map(|mut b| {
        b.push(0xff);
        Var::Bytes(b)
    });
    prop_oneof![1 => Just(Var::Absent), 12 => text.prop_map(Var::Text), 1 => bytes].boxed()
}

fn command_text() -> BoxedStrategy<String> {
    prop_oneof![
        8 => prop::sample::select(&COMMANDS[..]).prop_map(str::to_string),
        2 => prop::sample::select(&["add", "Add", "ADD ", " DEL", "", "VERSION\0", "DELETE", "GC\n", "STATU"][..])
            .prop_map(str::to_string),
        1 => "\\PC{0,8}",
    ]
    .boxed()
}

fn container_id_text() -> BoxedStrategy<String> {
    prop_oneof![
        6 => "[a-zA-Z0-9][a-zA-Z0-9_.-]{0,70}",
        2 => "[a-zA-Z0-9_./: \\-äé€\\n\\t$]{0,12}",
        1 => Just(String::new()),
    ]
    .boxed()
}

fn ifname_text() -> BoxedStrategy<String> {
    prop_oneof![
        6 => "[a-zA-Z0-9][a-zA-Z0-9_.-]{0,14}",
        1 => "[a-z0-9]{16,40}",
        1 => "[a-z]{0,5}[/: \\t\\n\\x0b\\x00][a-z]{0,5}",
        1 => "[äé€ßü]{1,8}",
        1 => prop::sample::select(&[".", "..", "", "eth0", "a.b", "123456789012345", "1234567890123456"][..])
            .prop_map(str::to_string),
    ]
    .boxed()
}

/// A CNI_ARGS segment.
#[derive(Debug, Clone)]
enum Seg {
    Pair(String, String),
    Empty,
    /// No `=`: invalid.
    NoEq(String),
    /// `=value`: an empty key, invalid.
    EmptyKey(String),
}

fn segment() -> BoxedStrategy<Seg> {
    prop_oneof![
        8 => ("[^;=]{1,8}", "[^;]{0,10}").prop_map(|(k, v)| Seg::Pair(k, v)),
        2 => Just(Seg::Empty),
        1 => "[^;=]{1,8}".prop_map(Seg::NoEq),
        1 => "[^;]{0,6}".prop_map(Seg::EmptyKey),
    ]
    .boxed()
}

fn render(segs: &[Seg]) -> String {
    let parts: Vec<String> = segs
        .iter()
        .map(|s| match s {
            Seg::Pair(k, v) => format!("{k}={v}"),
            Seg::Empty => String::new(),
            Seg::NoEq(k) => k.clone(),
            Seg::EmptyKey(v) => format!("={v}"),
        })
        .collect();
    parts.join(";")
}

/// The pairs CNI_ARGS carries, `None` when a segment is invalid.
fn args_oracle(segs: &[Seg]) -> Option<Vec<(String, String)>> {
    let mut pairs = Vec::new();
    for s in segs {
        match s {
            Seg::Pair(k, v) => pairs.push((k.clone(), v.clone())),
            Seg::Empty => {}
            Seg::NoEq(_) | Seg::EmptyKey(_) => return None,
        }
    }
    Some(pairs)
}

/// What CNI_NETNS points at; resolved against the test's temporary files.
#[derive(Debug, Clone)]
enum NetnsChoice {
    Absent,
    Empty,
    /// A regular file (stands for a pod's bind-mounted namespace).
    File,
    /// A directory: it exists, so it is "another namespace" to the runner.
    Dir,
    /// A path to the test process's own network namespace.
    Own(OwnPath),
    /// A path under a directory that does not exist.
    Missing(String),
    NotUtf8,
}

#[derive(Debug, Clone, Copy)]
enum OwnPath {
    ProcSelf,
    ThreadSelf,
    Pid,
}

fn netns_choice() -> BoxedStrategy<NetnsChoice> {
    prop_oneof![
        1 => Just(NetnsChoice::Absent),
        1 => Just(NetnsChoice::Empty),
        8 => Just(NetnsChoice::File),
        1 => Just(NetnsChoice::Dir),
        1 => Just(NetnsChoice::Own(OwnPath::ProcSelf)),
        1 => Just(NetnsChoice::Own(OwnPath::ThreadSelf)),
        1 => Just(NetnsChoice::Own(OwnPath::Pid)),
        1 => "[a-z0-9/._-]{0,12}".prop_map(NetnsChoice::Missing),
        1 => Just(NetnsChoice::NotUtf8),
    ]
    .boxed()
}

#[derive(Debug, Clone)]
struct EnvCase {
    command: Var,
    container_id: Var,
    ifname: Var,
    netns: NetnsChoice,
    args: Option<Vec<Seg>>,
    /// CNI_ARGS as raw bytes that are not UTF-8 (when `args` is None).
    args_not_utf8: bool,
    cni_path: Var,
    netns_override: Option<&'static str>,
    /// `cniVersion` of the config on stdin (`None`: key absent).
    version: Option<String>,
}

fn env_case() -> impl Strategy<Value = EnvCase> {
    let version = prop_oneof![
        8 => prop::sample::select(&SUPPORTED[..]).prop_map(|v| Some(v.to_string())),
        2 => prop::sample::select(&["0.2.0", "0.1.0", "2.0.0", "1.0", "01.0.0", "", "1.1.0 ", "1.1.0.0"][..])
            .prop_map(|v| Some(v.to_string())),
        1 => Just(None),
    ];
    let args = prop_oneof![
        8 => prop::collection::vec(segment(), 0..6).prop_map(Some),
        1 => Just(None),
    ];
    (
        var(command_text()),
        var(container_id_text()),
        var(ifname_text()),
        netns_choice(),
        (args, any::<bool>()),
        var(prop::sample::select(&["/opt/cni/bin", "/a:/b", ":", "/x"][..]).prop_map(str::to_string)),
        prop::option::weighted(0.1, prop::sample::select(&["1", "true", "TRUE", "0", "yes", ""][..])),
        version,
    )
        .prop_map(
            |(command, container_id, ifname, netns, (args, not_utf8), cni_path, netns_override, version)| {
                let args_not_utf8 = args.is_none() && not_utf8;
                EnvCase {
                    command,
                    container_id,
                    ifname,
                    netns,
                    args,
                    args_not_utf8,
                    cni_path,
                    netns_override,
                    version,
                }
            },
        )
}

/// Temporary files CNI_NETNS may point at.
struct Paths {
    dir: tempfile::TempDir,
}

impl Paths {
    fn new() -> Paths {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ns"), b"").unwrap();
        Paths { dir }
    }

    /// The CNI_NETNS value, and whether it names an existing path, and
    /// whether that is the test process's own network namespace.
    fn resolve(&self, c: &NetnsChoice) -> (Option<OsString>, bool, bool) {
        match c {
            NetnsChoice::Absent => (None, false, false),
            NetnsChoice::Empty => (Some(OsString::new()), false, false),
            NetnsChoice::File => (Some(self.dir.path().join("ns").into_os_string()), true, false),
            NetnsChoice::Dir => (Some(self.dir.path().as_os_str().to_owned()), true, false),
            NetnsChoice::Own(p) => {
                let path = match p {
                    OwnPath::ProcSelf => "/proc/self/ns/net".to_string(),
                    OwnPath::ThreadSelf => "/proc/thread-self/ns/net".to_string(),
                    OwnPath::Pid => format!("/proc/{}/ns/net", std::process::id()),
                };
                (Some(OsString::from(path)), true, true)
            }
            NetnsChoice::Missing(tail) => {
                let p = self.dir.path().join("absent-dir").join(tail);
                (Some(p.into_os_string()), false, false)
            }
            NetnsChoice::NotUtf8 => {
                let mut b = self.dir.path().join("ns").into_os_string().into_vec();
                b.push(0xff);
                (Some(OsString::from_vec(b)), false, false)
            }
        }
    }
}

#[derive(Debug, PartialEq)]
enum Expect {
    /// VERSION's answer.
    Version,
    /// The plugin is called once, with these values.
    Called {
        command: Command,
        container_id: Option<String>,
        ifname: Option<String>,
        args: Vec<(String, String)>,
    },
    Error(u32),
}

fn command_of(s: &str) -> Option<Command> {
    Some(match s {
        "ADD" => Command::Add,
        "DEL" => Command::Del,
        "CHECK" => Command::Check,
        "STATUS" => Command::Status,
        "GC" => Command::Gc,
        "VERSION" => Command::Version,
        _ => return None,
    })
}

/// The spec's table and the runner's documented order (lib.rs): command,
/// required variables and their syntax (4), config version and floors (1),
/// then ADD/DEL's namespace check (8).
fn env_oracle(c: &EnvCase, netns_exists: bool, netns_own: bool) -> Expect {
    let Some(command) = c.command.text().and_then(command_of) else { return Expect::Error(4) };
    if command == Command::Version {
        return Expect::Version;
    }
    let attachment = matches!(command, Command::Add | Command::Del | Command::Check);
    let netns_given = !matches!(c.netns, NetnsChoice::Absent | NetnsChoice::Empty);
    let netns_not_utf8 = matches!(c.netns, NetnsChoice::NotUtf8);
    let required_ok = match command {
        Command::Add | Command::Check => c.container_id.given() && netns_given && c.ifname.given(),
        Command::Del => c.container_id.given() && c.ifname.given(),
        Command::Gc => c.cni_path.given(),
        _ => true,
    };
    if !required_ok {
        return Expect::Error(4);
    }
    let text_ok = |v: &Var| !matches!(v, Var::Bytes(_));
    if attachment {
        if !text_ok(&c.container_id) || !text_ok(&c.ifname) {
            return Expect::Error(4);
        }
        if !valid_id(c.container_id.text().unwrap_or_default())
            || !valid_ifname(c.ifname.text().unwrap_or_default())
        {
            return Expect::Error(4);
        }
    }
    // CNI_NETNS, CNI_ARGS and CNI_PATH are read (as text) for every command.
    if netns_not_utf8 || c.args_not_utf8 || !text_ok(&c.cni_path) {
        return Expect::Error(4);
    }
    let args = match (&c.args, attachment) {
        (Some(segs), true) => match args_oracle(segs) {
            Some(pairs) => pairs,
            None => return Expect::Error(4),
        },
        _ => Vec::new(),
    };
    let version = c.version.clone().unwrap_or_else(|| "0.1.0".to_string());
    let floor = match command {
        Command::Check => Some((0, 4, 0)),
        Command::Status | Command::Gc => Some((1, 1, 0)),
        _ => None,
    };
    if floor.is_some_and(|f| !version_at_least(&version, f)) || !SUPPORTED.contains(&version.as_str()) {
        return Expect::Error(1);
    }
    let overridden = c.netns_override.is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if !overridden {
        match command {
            Command::Add if !netns_exists || netns_own => return Expect::Error(8),
            Command::Del if netns_given && netns_exists && netns_own => return Expect::Error(8),
            _ => {}
        }
    }
    let (container_id, ifname) = if attachment {
        (c.container_id.text().map(str::to_string), c.ifname.text().map(str::to_string))
    } else {
        (None, None)
    };
    Expect::Called { command, container_id, ifname, args }
}

fn build_env(c: &EnvCase, netns: Option<OsString>) -> BTreeMap<OsString, OsString> {
    let mut env = BTreeMap::new();
    let mut put = |k: &str, v: Option<OsString>| {
        if let Some(v) = v {
            env.insert(OsString::from(k), v);
        }
    };
    put("CNI_COMMAND", c.command.os());
    put("CNI_CONTAINERID", c.container_id.os());
    put("CNI_IFNAME", c.ifname.os());
    put("CNI_NETNS", netns);
    put("CNI_PATH", c.cni_path.os());
    put("CNI_NETNS_OVERRIDE", c.netns_override.map(OsString::from));
    match &c.args {
        Some(segs) => put("CNI_ARGS", Some(OsString::from(render(segs)))),
        None if c.args_not_utf8 => put("CNI_ARGS", Some(OsString::from_vec(b"K=\xff".to_vec()))),
        None => {}
    }
    env
}

fn plain_conf(version: &Option<String>) -> Vec<u8> {
    let mut v = json!({"name": "net1", "type": "recorder"});
    if let Some(ver) = version {
        v["cniVersion"] = json!(ver);
    }
    v.to_string().into_bytes()
}

/// Assert what a run did against what the oracle expects.
fn assert_outcome(ran: &Ran, expect: &Expect, ctx: &dyn std::fmt::Debug) -> Result<(), TestCaseError> {
    match expect {
        Expect::Version => {
            prop_assert_eq!(ran.code, 0, "{:?}", ctx);
            let docs = documents(&ran.stdout).map_err(TestCaseError::fail)?;
            prop_assert_eq!(docs, vec![json!({"cniVersion": "1.1.0", "supportedVersions": SUPPORTED})]);
            prop_assert!(ran.calls.is_empty());
        }
        Expect::Error(code) => {
            prop_assert_eq!(ran.code, 1, "{:?}: {}", ctx, String::from_utf8_lossy(&ran.stdout));
            let doc = one_error(&ran.stdout)?;
            prop_assert_eq!(doc["code"].as_u64(), Some(u64::from(*code)), "{:?}: {}", ctx, doc);
            prop_assert!(ran.calls.is_empty(), "the plugin was called for invalid input: {:?}", ctx);
        }
        Expect::Called { command, container_id, ifname, args } => {
            prop_assert_eq!(ran.code, 0, "{:?}: {}", ctx, String::from_utf8_lossy(&ran.stdout));
            let want = Seen {
                command: *command,
                container_id: container_id.clone(),
                ifname: ifname.clone(),
                args: args.clone(),
            };
            prop_assert_eq!(&ran.calls, &vec![want], "{:?}", ctx);
            let docs = documents(&ran.stdout).map_err(TestCaseError::fail)?;
            if *command == Command::Add {
                prop_assert_eq!(docs.len(), 1);
                prop_assert_eq!(&docs[0]["ips"][0]["address"], &json!("10.1.2.3/32"));
            } else {
                prop_assert!(docs.is_empty(), "{:?} printed {:?}", command, docs);
            }
        }
    }
    Ok(())
}

/// The runner over generated environments (with a well-formed config of a
/// generated version): every invalid one ends in one error document with
/// the spec's code and never reaches the plugin; every valid one reaches it
/// exactly once with what the environment said.
#[test]
fn runner_follows_the_spec_table_for_any_environment() {
    let paths = Paths::new();
    check(1000, env_case(), |c| {
        let (netns, exists, own) = paths.resolve(&c.netns);
        let expect = env_oracle(&c, exists, own);
        let ran = run(build_env(&c, netns), &plain_conf(&c.version));
        assert_outcome(&ran, &expect, &c)
    });
}

// ---------------------------------------------------------------------------
// Generated configs: a Calico conflist plugin object, mutated

/// A Calico conflist plugin object as a runtime hands it to `calico`.
fn calico_object(version: &str) -> Value {
    json!({
        "cniVersion": version,
        "name": "k8s-pod-network",
        "type": "calico",
        "log_level": "info",
        "datastore_type": "file",
        "datastore_path": "/nonexistent/store",
        "nodename": "node-1",
        "mtu": 1450,
        "policy": {"type": "k8s"},
        "kubernetes": {"kubeconfig": "/nonexistent/kubeconfig"},
        "ipam": {"type": "calico-ipam", "assign_ipv4": "true", "ipv4_pools": ["10.0.0.0/24"]},
        "container_settings": {"allow_ip_forwarding": false},
        "dns": {"nameservers": ["10.96.0.10"], "domain": "cluster.local", "search": ["svc.cluster.local"]},
        "runtimeConfig": {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]},
        "args": {"cni": {"ips": ["10.0.0.5"]}}
    })
}

#[derive(Debug, Clone)]
struct ConfCase {
    version: &'static str,
    mutations: Vec<(Index, Mutation)>,
}

impl ConfCase {
    fn document(&self) -> (Value, Vec<(Vec<Step>, Mutation)>) {
        let mut doc = calico_object(self.version);
        let mut applied = Vec::new();
        for (at, m) in &self.mutations {
            if let Some(path) = apply(&mut doc, at, m) {
                applied.push((path, m.clone()));
            }
        }
        (doc, applied)
    }
}

fn conf_case() -> impl Strategy<Value = ConfCase> {
    (prop::sample::select(&SUPPORTED[..]), prop::collection::vec((any::<Index>(), mutation()), 1..=3))
        .prop_map(|(version, mutations)| ConfCase { version, mutations })
}

/// The config rules the runner applies before any plugin code (lib.rs
/// step 3): JSON object, well-known keys of the right type (6), a valid
/// `name` (7). `Ok(version)` when the config decodes.
fn netconf_oracle(v: &Value) -> Result<String, u32> {
    // serde_json refuses a 128th level of nesting (its recursion limit).
    if depth(v) >= 128 {
        return Err(6);
    }
    let Some(o) = v.as_object() else { return Err(6) };
    let string = |k: &str| match o.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(6u32),
    };
    let version = string("cniVersion")?.unwrap_or_else(|| "0.1.0".to_string());
    if !valid_id(&string("name")?.unwrap_or_default()) {
        return Err(7);
    }
    string("type")?;
    match o.get("ipam") {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) => {
            if !matches!(m.get("type"), None | Some(Value::Null) | Some(Value::String(_))) {
                return Err(6);
            }
        }
        Some(_) => return Err(6),
    }
    match o.get("dns") {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) => {
            let strings = |k: &str| match m.get(k) {
                None => true,
                Some(Value::Array(a)) => a.iter().all(Value::is_string),
                Some(_) => false,
            };
            let domain_ok = matches!(m.get("domain"), None | Some(Value::Null) | Some(Value::String(_)));
            if !(strings("nameservers") && strings("search") && strings("options") && domain_ok) {
                return Err(6);
            }
        }
        Some(_) => return Err(6),
    }
    assert!(o.get("prevResult").is_none(), "generator invariant: no prevResult");
    Ok(version)
}

/// The runner over mutated Calico plugin objects, one to three mutations
/// each, for every command: the oracle decides from the resulting document
/// alone whether the plugin is reached (exactly once) or which code the
/// single error document carries. An object the runner reads (the config
/// itself, `ipam`, `dns`) given as an array never reaches the plugin.
#[test]
fn runner_refuses_every_broken_config_before_the_plugin() {
    let paths = Paths::new();
    let ns = paths.dir.path().join("ns");
    let cmd = prop::sample::select(&["ADD", "DEL", "CHECK", "STATUS", "GC"][..]);
    check(1000, (cmd, conf_case()), |(cmd, case)| {
        let (doc, applied) = case.document();
        let stdin = doc.to_string().into_bytes();
        let env: BTreeMap<OsString, OsString> = [
            ("CNI_COMMAND", cmd),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", ns.to_str().unwrap_or_default()),
            ("CNI_PATH", "/nonexistent"),
        ]
        .iter()
        .map(|(k, v)| (OsString::from(k), OsString::from(v)))
        .collect();
        let expect = match netconf_oracle(&doc) {
            Err(code) => Expect::Error(code),
            Ok(version) => {
                let command = command_of(cmd).unwrap_or(Command::Version);
                let floor = match command {
                    Command::Check => Some((0, 4, 0)),
                    Command::Status | Command::Gc => Some((1, 1, 0)),
                    _ => None,
                };
                if floor.is_some_and(|f| !version_at_least(&version, f))
                    || !SUPPORTED.contains(&version.as_str())
                {
                    Expect::Error(1)
                } else {
                    let attachment = matches!(command, Command::Add | Command::Del | Command::Check);
                    Expect::Called {
                        command,
                        container_id: attachment.then(|| "c1".to_string()),
                        ifname: attachment.then(|| "eth0".to_string()),
                        args: Vec::new(),
                    }
                }
            }
        };
        let read_by_runner = |p: &[Step]| match p {
            [] => true,
            [Step::Key(k)] => k == "ipam" || k == "dns",
            _ => false,
        };
        // Stated for single mutations: a later one may undo an earlier one.
        let positional = applied.len() == 1
            && applied.iter().any(|(p, m)| matches!(m, Mutation::Positional) && read_by_runner(p));
        if positional {
            prop_assert!(matches!(expect, Expect::Error(_)), "oracle accepts a positional section: {}", doc);
        }
        let ran = run(env, &stdin);
        assert_outcome(&ran, &expect, &(cmd, &applied, &doc))
    });
}

/// `NetConf::parse` on arbitrary bytes and on near-JSON: never a panic,
/// errors only with the codes the parser may give (1, 6, 7), and acceptance
/// exactly when the oracle accepts the decoded document.
#[test]
fn netconf_parse_never_panics_on_arbitrary_bytes() {
    let json_ish = prop::collection::vec(
        prop::sample::select(&b"{}[]\":,0123456789.eE+-truefalsn \\\x00\xff\xc3"[..]),
        0..200,
    );
    let bytes = prop_oneof![prop::collection::vec(any::<u8>(), 0..300), json_ish];
    check(1000, bytes, |b| {
        match NetConf::parse(&b) {
            Ok(_) => {
                let v: Value = serde_json::from_slice(&b).map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert!(netconf_oracle(&v).is_ok(), "accepted {:?}", String::from_utf8_lossy(&b));
            }
            Err(e) => prop_assert!([1, 6, 7].contains(&e.code), "{e}"),
        }
        Ok(())
    });
    // And on the mutated configs' text: the parser and the oracle agree.
    check(1000, conf_case(), |case| {
        let (doc, _) = case.document();
        let got = NetConf::parse(doc.to_string().as_bytes()).map(|c| c.cni_version).map_err(|e| e.code);
        prop_assert_eq!(got, netconf_oracle(&doc), "{}", doc);
        Ok(())
    });
}

// ---------------------------------------------------------------------------
// CNI_ARGS

/// Valid pairs survive render → parse → render unchanged, empty segments
/// are skipped, `get` answers the last value of a key; any invalid segment
/// anywhere is code 4.
#[test]
fn cni_args_round_trip_and_refuse_bad_segments() {
    let pairs = prop::collection::vec(("[^;=]{1,8}", "[^;]{0,10}"), 0..8);
    check(1000, (pairs, prop::collection::vec(any::<Index>(), 0..3)), |(pairs, empties)| {
        let text = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(";");
        let parsed = CniArgs::parse(&text).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(parsed.pairs(), &pairs[..]);
        prop_assert_eq!(parsed.render(), text.clone());
        for (k, _) in &pairs {
            let last = pairs.iter().rev().find(|(k2, _)| k2 == k).map(|(_, v)| v.as_str());
            prop_assert_eq!(parsed.get(k), last);
        }
        // Empty segments anywhere change nothing.
        let mut segs: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
        for at in &empties {
            let i = at.index(segs.len() + 1);
            segs.insert(i, String::new());
        }
        let padded = CniArgs::parse(&segs.join(";")).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(padded, parsed);
        Ok(())
    });
    check(1000, prop::collection::vec(segment(), 0..8), |segs| {
        let text = render(&segs);
        match (CniArgs::parse(&text), args_oracle(&segs)) {
            (Ok(a), Some(pairs)) => prop_assert_eq!(a.pairs(), &pairs[..], "{:?}", text),
            (Err(e), None) => prop_assert_eq!(e.code, 4, "{:?}", text),
            (got, want) => prop_assert!(false, "{:?}: parsed {:?}, oracle {:?}", text, got, want),
        }
        Ok(())
    });
}

// ---------------------------------------------------------------------------
// strict::from_value

#[derive(Debug, Default, PartialEq, Deserialize)]
struct Section {
    #[serde(default)]
    on: bool,
    #[serde(default)]
    n: Option<u32>,
    #[serde(default)]
    tag: Option<String>,
}

#[derive(Debug, PartialEq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Mode {
    Full,
    Data,
    None,
}

#[derive(Debug, PartialEq, Deserialize)]
struct Conf {
    #[serde(default)]
    section: Section,
    #[serde(default)]
    list: Vec<Section>,
    #[serde(default)]
    opt: Option<Section>,
    #[serde(default)]
    map: BTreeMap<String, u8>,
    #[serde(default)]
    names: Vec<String>,
    #[serde(default)]
    mtu: Option<u32>,
    #[serde(default)]
    mode: Option<Mode>,
    #[serde(default)]
    path: Option<PathBuf>,
}

fn conf_value() -> Value {
    json!({
        "section": {"on": true, "n": 7, "tag": "x"},
        "list": [{"on": true}, {"n": 3, "tag": "y"}],
        "opt": {"on": false, "n": 1},
        "map": {"a": 1, "b": 200},
        "names": ["a", "b"],
        "mtu": 1450,
        "mode": "data",
        "path": "/x",
        "unknown": {"kept": [1, {"deep": []}]}
    })
}

/// Whether `v`, decoded as [`Conf`], has an array where a struct or map is
/// expected (including the top level).
fn positional_conf(v: &Value) -> bool {
    let section = |s: &Value| s.is_array();
    match v {
        Value::Array(_) => true,
        Value::Object(o) => {
            o.get("section").is_some_and(section)
                || o.get("opt").is_some_and(section)
                || o.get("map").is_some_and(Value::is_array)
                || matches!(o.get("list"), Some(Value::Array(items)) if items.iter().any(section))
        }
        _ => false,
    }
}

/// Where no array stands for a struct, `strict::from_value` decodes exactly
/// what serde_json decodes (or fails where it fails); where one does, it
/// refuses, whatever serde_json would have made of it.
#[test]
fn strict_agrees_with_serde_json_except_for_positional_structs() {
    let case = prop::collection::vec((any::<Index>(), mutation()), 0..=3);
    check(1000, case, |mutations| {
        let mut doc = conf_value();
        for (at, m) in &mutations {
            if let Mutation::Nest { depth, .. } = m {
                // Values are built in memory here: no parser limit applies,
                // and deep ones only slow the case down.
                if *depth > 40 {
                    continue;
                }
            }
            apply(&mut doc, at, m);
        }
        let strict: Result<Conf, _> = strict::from_value(&doc);
        if positional_conf(&doc) {
            prop_assert!(strict.is_err(), "strict read a struct from an array: {} → {:?}", doc, strict);
        } else {
            let plain: Result<Conf, _> = serde_json::from_value(doc.clone());
            prop_assert_eq!(strict.ok(), plain.ok(), "{}", doc);
        }
        Ok(())
    });
}

#[derive(Debug, Default, PartialEq, Deserialize)]
struct Flattened {
    #[serde(default)]
    inner: Section,
}

#[derive(Debug, PartialEq, Deserialize)]
struct WithFlatten {
    #[serde(default)]
    own: Section,
    #[serde(flatten)]
    rest: Flattened,
}

#[derive(Debug, PartialEq, Deserialize)]
#[serde(untagged)]
enum SectionOrFlag {
    Section(Section),
    Flag(bool),
}

/// The positional form of a generated [`Section`]: its values in field order.
fn section_positional() -> impl Strategy<Value = Value> {
    (any::<bool>(), prop::option::of(any::<u32>()), prop::option::of("[a-z]{0,4}"), 1usize..=3)
        .prop_map(|(on, n, tag, len)| Value::Array(vec![json!(on), json!(n), json!(tag)][..len].to_vec()))
}

/// strict.rs promises that no struct is read from an array "whatever `T`
/// is and however deep the section sits". serde buffers the fields of a
/// `#[serde(flatten)]` struct, and the value of an `#[serde(untagged)]`
/// enum, in its own `Content` type and decodes them from there, where an
/// array still fills a struct by position. No config type of the workspace
/// has a struct under a flattened struct or in an untagged enum today
/// (CalicoConf flattens DatastoreConfig, whose fields are all scalars), so
/// no plugin is affected yet; the next such type would be.
#[test]
#[ignore = "known limit (cni-proto/src/strict.rs doc): serde decodes flatten and untagged content outside the strict deserializer; no config type uses them around a struct"]
fn strict_refuses_positional_structs_behind_flatten_and_untagged() {
    check(200, section_positional(), |arr| {
        let flattened = strict::from_value::<WithFlatten>(&json!({ "inner": arr }));
        prop_assert!(flattened.is_err(), "flatten: {} read as {:?}", arr, flattened);
        let untagged = strict::from_value::<SectionOrFlag>(&arr);
        prop_assert!(untagged.is_err(), "untagged: {} read as {:?}", arr, untagged);
        // The same form one level up is refused, as documented.
        let own = strict::from_value::<WithFlatten>(&json!({ "own": arr }));
        prop_assert!(own.is_err(), "own: {:?}", own);
        Ok(())
    });
}
