//! The skel-like runner: environment and stdin parsing, validation, version
//! negotiation and floors, dispatch to a [`Plugin`], printing of the result
//! (in the config's version) or of the error JSON.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::conf::NetConf;
use crate::env::{CniArgs, CniEnv, Command, ContainerId, IfName};
use crate::error::CniError;
use crate::exec;
use crate::result::CniResult;
use crate::version::{self, Version};

/// One parsed invocation, handed to the plugin.
#[derive(Debug, Clone)]
pub struct Request {
    pub env: CniEnv,
    pub conf: NetConf,
    /// stdin exactly as received (delegates get it unchanged).
    pub stdin: Vec<u8>,
}

impl Request {
    pub fn command(&self) -> Command {
        self.env.command
    }

    /// CNI_CONTAINERID (always present for ADD/DEL/CHECK; code 4 otherwise).
    pub fn container_id(&self) -> Result<&ContainerId, CniError> {
        self.env.container_id.as_ref().ok_or_else(|| CniError::missing_env(&["CNI_CONTAINERID"]))
    }

    /// CNI_IFNAME (always present for ADD/DEL/CHECK; code 4 otherwise).
    pub fn ifname(&self) -> Result<&IfName, CniError> {
        self.env.ifname.as_ref().ok_or_else(|| CniError::missing_env(&["CNI_IFNAME"]))
    }

    /// CNI_NETNS (`None` is possible for DEL).
    pub fn netns(&self) -> Option<&Path> {
        self.env.netns.as_deref()
    }

    pub fn args(&self) -> &CniArgs {
        &self.env.args
    }

    /// The config's `cniVersion` (already negotiated).
    pub fn version(&self) -> &str {
        &self.conf.cni_version
    }

    /// Run `plugin_type` from CNI_PATH for `command` with our environment and
    /// our full stdin. ADD returns its parsed result; other commands `None`.
    pub fn delegate(&self, plugin_type: &str, command: Command) -> Result<Option<CniResult>, CniError> {
        self.delegate_with(plugin_type, command, &self.env.raw, &self.stdin)
    }

    /// [`Request::delegate`] with an adjusted environment or stdin (e.g. an
    /// extra CNI_ARGS key, or a rewritten `ipam` section).
    pub fn delegate_with(
        &self,
        plugin_type: &str,
        command: Command,
        env: &BTreeMap<OsString, OsString>,
        stdin: &[u8],
    ) -> Result<Option<CniResult>, CniError> {
        let path = exec::find_in_path(plugin_type, &self.env.cni_path)?;
        exec::refuse_self(&path)?;
        let out = exec::exec_plugin(&path, env, command, stdin)?;
        if command != Command::Add {
            return Ok(None);
        }
        CniResult::from_slice(&out).map(Some).map_err(|e| e.context(&format!("result of {plugin_type}")))
    }
}

/// A CNI plugin: one method per command. VERSION is answered by the runner.
/// ADD returns the result (the runner prints it in the config's version);
/// the others print nothing on success.
pub trait Plugin {
    fn add(&self, req: &Request) -> Result<CniResult, CniError>;
    fn del(&self, req: &Request) -> Result<(), CniError>;
    fn check(&self, req: &Request) -> Result<(), CniError>;
    fn status(&self, req: &Request) -> Result<(), CniError>;
    fn gc(&self, req: &Request) -> Result<(), CniError>;
}

/// Set by [`run`]'s panic hook once it has printed its error to stdout.
static PANIC_REPORTED: AtomicBool = AtomicBool::new(false);

/// Run `plugin` as a process entry point: process environment, stdin,
/// stdout; installs the logger from the config (`log_level`,
/// `log_file_path`) and a panic hook that still prints a CNI error.
/// Returns the exit code (0 ok, 1 error).
pub fn run<P: Plugin>(plugin: &P) -> i32 {
    std::panic::set_hook(Box::new(|info| {
        let e = CniError::internal(format!("internal error (panic): {info}"));
        let _ = writeln!(std::io::stderr(), "{e}");
        // Once per process: a panic on a helper thread that the plugin
        // survives (a joined worker) must not add a second document after
        // this one, nor may a later panic.
        if !PANIC_REPORTED.swap(true, Ordering::SeqCst) {
            let _ = writeln!(std::io::stdout(), "{}", e.to_json(version::CURRENT));
        }
    }));
    let env = CniEnv::from_process();
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    dispatch(plugin, env, &mut stdin.lock(), &mut stdout.lock(), true)
}

/// [`run`] then exit with its code.
pub fn main<P: Plugin>(plugin: &P) -> ! {
    let code = run(plugin);
    std::process::exit(code)
}

/// The runner with explicit environment, stdin and stdout (tests). Does not
/// touch the global logger.
pub fn run_with<P: Plugin>(
    plugin: &P,
    env: BTreeMap<OsString, OsString>,
    stdin: &mut dyn Read,
    stdout: &mut dyn Write,
) -> i32 {
    dispatch(plugin, env, stdin, stdout, false)
}

fn dispatch<P: Plugin>(
    plugin: &P,
    env: BTreeMap<OsString, OsString>,
    stdin: &mut dyn Read,
    stdout: &mut dyn Write,
    init_logging: bool,
) -> i32 {
    let mut reply_version = version::CURRENT.to_string();
    let outcome = handle(plugin, env, stdin, init_logging, &mut reply_version);
    if PANIC_REPORTED.load(Ordering::SeqCst) {
        // The panic hook already printed the error document (a helper
        // thread panicked and the plugin carried on): stdout holds one
        // document only, and the invocation failed.
        if let Err(e) = &outcome {
            log::error!("{e}");
        }
        return 1;
    }
    let (json, code) = match outcome {
        Ok(None) => return 0,
        Ok(Some(v)) => (v, 0),
        Err(e) => {
            log::error!("{e}");
            (e.to_json(&reply_version), 1)
        }
    };
    let text = serde_json::to_string(&json).unwrap_or_default();
    if let Err(e) = writeln!(stdout, "{text}").and_then(|_| stdout.flush()) {
        log::error!("cannot write to stdout: {e}");
        return 1;
    }
    code
}

/// Everything up to the output; `reply_version` is updated once the
/// config's version is known to be usable for the error JSON.
fn handle<P: Plugin>(
    plugin: &P,
    raw_env: BTreeMap<OsString, OsString>,
    stdin: &mut dyn Read,
    init_logging: bool,
    reply_version: &mut String,
) -> Result<Option<serde_json::Value>, CniError> {
    // VERSION needs nothing else and (like skel) ignores stdin.
    if CniEnv::command(&raw_env)? == Command::Version {
        return Ok(Some(version::version_info()));
    }
    let env = CniEnv::parse(raw_env)?;
    let mut data = Vec::new();
    stdin.read_to_end(&mut data).map_err(|e| CniError::io("error reading from stdin", e.to_string()))?;
    let conf = NetConf::parse(&data)?;
    if version::SUPPORTED.contains(&conf.cni_version.as_str()) {
        reply_version.clone_from(&conf.cni_version);
    }
    if init_logging {
        let context = match (&env.container_id, &env.ifname) {
            (Some(c), Some(i)) => format!("{} ContainerID={c} IfName={i}", env.command),
            _ => env.command.to_string(),
        };
        crate::logging::init(
            conf.str_key("log_level"),
            conf.str_key("log_file_path").filter(|p| !p.is_empty()).map(Path::new),
            &context,
        );
    }
    match env.command {
        Command::Check => version::check_floor("CHECK", &conf.cni_version, Version::V0_4_0)?,
        Command::Status => version::check_floor("STATUS", &conf.cni_version, Version::V1_1_0)?,
        Command::Gc => version::check_floor("GC", &conf.cni_version, Version::V1_1_0)?,
        _ => {}
    }
    version::negotiate(&conf.cni_version)?;
    match env.command {
        Command::Add => check_netns(&env, NetnsMustOpen::Yes)?,
        // DEL changes interfaces in CNI_NETNS too (it deletes the pod's): in
        // the plugin's own namespace that would be the node's uplink. A
        // CNI_NETNS that is already gone is normal for DEL, though.
        Command::Del => check_netns(&env, NetnsMustOpen::No)?,
        _ => {}
    }
    let req = Request { env, conf, stdin: data };
    log::debug!(
        "{} network {} with config {}",
        req.command(),
        req.conf.name,
        String::from_utf8_lossy(&req.stdin)
    );
    match req.command() {
        Command::Add => {
            let result = plugin.add(&req)?;
            Ok(Some(result.to_json(req.version())))
        }
        Command::Del => plugin.del(&req).map(|_| None),
        Command::Check => plugin.check(&req).map(|_| None),
        Command::Status => plugin.status(&req).map(|_| None),
        Command::Gc => plugin.gc(&req).map(|_| None),
        Command::Version => Ok(Some(version::version_info())),
    }
}

/// Whether a CNI_NETNS that cannot be opened is an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NetnsMustOpen {
    /// ADD: code 8 before anything is allocated.
    Yes,
    /// DEL: the namespace may be gone already; there is then nothing to
    /// protect.
    No,
}

/// ADD and DEL must target another namespace than the plugin's own (skel:
/// code 8; the reference skel checks ADD only, so a DEL with
/// `CNI_NETNS=/proc/self/ns/net CNI_IFNAME=eth0` deletes the node's uplink),
/// unless CNI_NETNS_OVERRIDE=1|true. The namespaces are compared by device
/// and inode, so every path to the plugin's own namespace is caught
/// (`/proc/self/ns/net`, `/proc/1/ns/net`, `/run/netns/<node>`, a bind mount).
fn check_netns(env: &CniEnv, must_open: NetnsMustOpen) -> Result<(), CniError> {
    let override_ = env
        .raw
        .get(OsStr::new("CNI_NETNS_OVERRIDE"))
        .and_then(|v| v.to_str())
        .is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if override_ {
        return Ok(());
    }
    let Some(path) = env.netns.as_ref() else { return Ok(()) };
    let target = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(_) if must_open == NetnsMustOpen::No => return Ok(()),
        Err(e) => {
            return Err(CniError::invalid_netns(
                format!("cannot open netns {}", path.display()),
                e.to_string(),
            ))
        }
    };
    let own = std::fs::metadata(PathBuf::from("/proc/self/ns/net"));
    if let Ok(own) = own {
        if own.dev() == target.dev() && own.ino() == target.ino() {
            return Err(CniError::invalid_netns(
                "plugin's netns and netns from CNI_NETNS should not be the same",
                path.display().to_string(),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::result::{Interface, IpConfig};
    use serde_json::{json, Value};
    use std::cell::RefCell;

    /// Records what it was called with; ADD returns a fixed result or an error.
    #[derive(Default)]
    struct Recorder {
        calls: RefCell<Vec<(Command, String)>>,
        fail: Option<CniError>,
    }

    impl Recorder {
        fn record(&self, req: &Request) -> Result<(), CniError> {
            self.calls.borrow_mut().push((req.command(), req.conf.name.clone()));
            match &self.fail {
                Some(e) => Err(e.clone()),
                None => Ok(()),
            }
        }
    }

    impl Plugin for Recorder {
        fn add(&self, req: &Request) -> Result<CniResult, CniError> {
            self.record(req)?;
            Ok(CniResult {
                interfaces: vec![Interface {
                    name: req.ifname()?.to_string(),
                    sandbox: req.netns().map(|p| p.display().to_string()),
                    ..Default::default()
                }],
                ips: vec![IpConfig {
                    address: "10.0.0.7/32".parse().unwrap(),
                    gateway: None,
                    interface: Some(0),
                }],
                ..Default::default()
            })
        }
        fn del(&self, req: &Request) -> Result<(), CniError> {
            self.record(req)
        }
        fn check(&self, req: &Request) -> Result<(), CniError> {
            self.record(req)
        }
        fn status(&self, req: &Request) -> Result<(), CniError> {
            self.record(req)
        }
        fn gc(&self, req: &Request) -> Result<(), CniError> {
            self.record(req)
        }
    }

    struct Run {
        code: i32,
        out: String,
    }

    impl Run {
        fn json(&self) -> Value {
            serde_json::from_str(&self.out).unwrap_or_else(|e| panic!("stdout {:?}: {e}", self.out))
        }
    }

    fn netns_file() -> tempfile::NamedTempFile {
        tempfile::NamedTempFile::new().unwrap()
    }

    fn run(p: &Recorder, env: &[(&str, &str)], stdin: &[u8]) -> Run {
        let env = env.iter().map(|(k, v)| (OsString::from(k), OsString::from(v))).collect();
        let mut out = Vec::new();
        let code = run_with(p, env, &mut &stdin[..], &mut out);
        Run { code, out: String::from_utf8(out).unwrap() }
    }

    fn add_env<'a>(cmd: &'a str, ns: &'a str) -> Vec<(&'a str, &'a str)> {
        vec![
            ("CNI_COMMAND", cmd),
            ("CNI_CONTAINERID", "ctr1"),
            ("CNI_NETNS", ns),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/nonexistent"),
        ]
    }

    fn conf(version: &str) -> Vec<u8> {
        json!({"cniVersion": version, "name": "net1", "type": "test", "extra": {"x": 1}})
            .to_string()
            .into_bytes()
    }

    #[test]
    fn version_needs_only_the_command() {
        let p = Recorder::default();
        let r = run(&p, &[("CNI_COMMAND", "VERSION")], b"garbage");
        assert_eq!(r.code, 0);
        assert_eq!(
            r.json(),
            json!({"cniVersion":"1.1.0","supportedVersions":["0.3.0","0.3.1","0.4.0","1.0.0","1.1.0"]})
        );
    }

    #[test]
    fn add_prints_result_in_config_version() {
        let ns = netns_file();
        let nsp = ns.path().to_str().unwrap();
        for v in version::SUPPORTED {
            let p = Recorder::default();
            let r = run(&p, &add_env("ADD", nsp), &conf(v));
            assert_eq!(r.code, 0, "{}", r.out);
            let j = r.json();
            assert_eq!(j["cniVersion"], *v);
            assert_eq!(j["ips"][0].get("version").is_some(), v.starts_with("0."), "{v}: {j}");
            assert_eq!(j["interfaces"][0]["sandbox"], nsp);
            assert_eq!(*p.calls.borrow(), vec![(Command::Add, "net1".to_string())]);
        }
    }

    #[test]
    fn del_check_status_gc_are_silent_on_success() {
        let ns = netns_file();
        let nsp = ns.path().to_str().unwrap();
        for cmd in ["DEL", "CHECK", "STATUS", "GC"] {
            let p = Recorder::default();
            let r = run(&p, &add_env(cmd, nsp), &conf("1.1.0"));
            assert_eq!((r.code, r.out.as_str()), (0, ""), "{cmd}");
            assert_eq!(p.calls.borrow().len(), 1);
        }
    }

    #[test]
    fn del_without_netns_is_accepted() {
        let p = Recorder::default();
        let env =
            [("CNI_COMMAND", "DEL"), ("CNI_CONTAINERID", "c"), ("CNI_IFNAME", "eth0"), ("CNI_NETNS", "")];
        let r = run(&p, &env, &conf("1.0.0"));
        assert_eq!((r.code, r.out.as_str()), (0, ""));
    }

    #[test]
    fn env_errors_are_code_4_and_plugin_not_called() {
        let p = Recorder::default();
        let r = run(&p, &[("CNI_COMMAND", "ADD"), ("CNI_NETNS", "/x")], &conf("1.0.0"));
        assert_eq!(r.code, 1);
        assert_eq!(r.json()["code"], 4);
        assert_eq!(r.json()["msg"], "required env variables [CNI_CONTAINERID,CNI_IFNAME] missing");
        let r = run(&p, &[], b"");
        assert_eq!(r.json()["msg"], "required env variables [CNI_COMMAND] missing");
        let mut env = add_env("ADD", "/x");
        env[1] = ("CNI_CONTAINERID", "/etc/passwd");
        assert_eq!(run(&p, &env, &conf("1.0.0")).json()["code"], 4);
        let mut env = add_env("ADD", "/x");
        env[3] = ("CNI_IFNAME", "..");
        assert_eq!(run(&p, &env, &conf("1.0.0")).json()["code"], 4);
        assert!(p.calls.borrow().is_empty());
    }

    #[test]
    fn config_errors() {
        let ns = netns_file();
        let nsp = ns.path().to_str().unwrap();
        let p = Recorder::default();
        let r = run(&p, &add_env("ADD", nsp), b"{not json");
        assert_eq!((r.code, r.json()["code"].clone()), (1, json!(6)));
        assert_eq!(r.json()["cniVersion"], "1.1.0");
        let r = run(&p, &add_env("ADD", nsp), br#"{"cniVersion":"1.0.0","type":"x"}"#);
        assert_eq!(r.json()["code"], 7);
        let r = run(&p, &add_env("ADD", nsp), br#"{"cniVersion":"1.0.0","name":"a b"}"#);
        assert_eq!(r.json()["code"], 7);
        assert!(p.calls.borrow().is_empty());
    }

    #[test]
    fn version_negotiation_and_floors() {
        let ns = netns_file();
        let nsp = ns.path().to_str().unwrap();
        let p = Recorder::default();
        let r = run(&p, &add_env("ADD", nsp), &conf("0.2.0"));
        let j = r.json();
        assert_eq!((j["code"].clone(), j["msg"].clone()), (json!(1), json!("incompatible CNI versions")));
        assert_eq!(
            j["details"],
            r#"config is "0.2.0", plugin supports ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]"#
        );
        // Missing cniVersion = 0.1.0 → code 1.
        let r = run(&p, &add_env("ADD", nsp), br#"{"name":"n","type":"t"}"#);
        assert_eq!(r.json()["code"], 1);
        let r = run(&p, &add_env("CHECK", nsp), &conf("0.3.1"));
        assert_eq!(r.json()["code"], 1);
        assert_eq!(r.json()["msg"], "config version does not allow CHECK");
        assert_eq!(r.json()["cniVersion"], "0.3.1");
        for cmd in ["STATUS", "GC"] {
            let r = run(&p, &add_env(cmd, nsp), &conf("1.0.0"));
            assert_eq!(r.json()["code"], 1, "{cmd}");
            assert_eq!(r.json()["msg"], format!("config version does not allow {cmd}"));
        }
        assert!(p.calls.borrow().is_empty());
        assert_eq!(run(&p, &add_env("CHECK", nsp), &conf("0.4.0")).code, 0);
    }

    #[test]
    fn plugin_errors_are_printed_with_config_version() {
        let ns = netns_file();
        let nsp = ns.path().to_str().unwrap();
        let p = Recorder { fail: Some(CniError::try_again_later("busy", "d")), ..Default::default() };
        let r = run(&p, &add_env("ADD", nsp), &conf("0.4.0"));
        assert_eq!(r.code, 1);
        assert_eq!(r.json(), json!({"cniVersion":"0.4.0","code":11,"msg":"busy","details":"d"}));
        let r = run(&p, &add_env("DEL", nsp), &conf("1.0.0"));
        assert_eq!(r.json()["code"], 11);
    }

    #[test]
    fn add_netns_checks() {
        let p = Recorder::default();
        let r = run(&p, &add_env("ADD", "/proc/self/ns/net"), &conf("1.0.0"));
        assert_eq!(r.json()["code"], 8);
        let r = run(&p, &add_env("ADD", "/nonexistent/netns"), &conf("1.0.0"));
        assert_eq!(r.json()["code"], 8);
        assert!(p.calls.borrow().is_empty());
        let mut env = add_env("ADD", "/proc/self/ns/net");
        env.push(("CNI_NETNS_OVERRIDE", "true"));
        assert_eq!(run(&p, &env, &conf("1.0.0")).code, 0);
    }

    /// Found by fuzzing: DEL in the plugin's own namespace reached the plugin,
    /// which deleted the node's `eth0`. Every path to our own namespace is
    /// refused before the plugin runs; a namespace that is gone is not.
    #[test]
    fn del_netns_checks() {
        let p = Recorder::default();
        let own = format!("/proc/{}/ns/net", std::process::id());
        for path in ["/proc/self/ns/net", "/proc/thread-self/ns/net", own.as_str()] {
            let r = run(&p, &add_env("DEL", path), &conf("1.0.0"));
            assert_eq!((r.code, r.json()["code"].clone()), (1, json!(8)), "{path}");
        }
        assert!(p.calls.borrow().is_empty());
        assert_eq!(run(&p, &add_env("DEL", "/nonexistent/netns"), &conf("1.0.0")).code, 0);
        let mut env = add_env("DEL", "/proc/self/ns/net");
        env.push(("CNI_NETNS_OVERRIDE", "1"));
        assert_eq!(run(&p, &env, &conf("1.0.0")).code, 0);
        assert_eq!(p.calls.borrow().len(), 2);
    }

    /// Garbage in, a CNI error out: never a panic, never a plugin call.
    #[test]
    fn fuzzish_garbage_never_panics() {
        let ns = netns_file();
        let nsp = ns.path().to_str().unwrap();
        let stdins: Vec<Vec<u8>> = vec![
            vec![],
            b"\0\xff\xfe".to_vec(),
            b"[[[[[[[[".to_vec(),
            b"{\"cniVersion\":null,\"name\":null}".to_vec(),
            b"{\"cniVersion\":\"1.0.0\",\"name\":\"n\",\"prevResult\":[]}".to_vec(),
            b"{\"cniVersion\":\"1.0.0\",\"name\":\"n\",\"ipam\":[]}".to_vec(),
            b"{\"cniVersion\":\"1.0.0\",\"name\":\"n\",\"dns\":7}".to_vec(),
            b"{\"cniVersion\":{\"a\":1},\"name\":\"n\"}".to_vec(),
            b"{\"cniVersion\":\"1.0.0\",\"name\":\"\xe2\x82\xac\"}".to_vec(),
            b"{\"cniVersion\":\"99999999999999999999.0.0\",\"name\":\"n\"}".to_vec(),
            "{\"a\":".repeat(200).into_bytes(),
        ];
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut random = Vec::new();
        for _ in 0..200 {
            let len = (seed % 64) as usize;
            let mut v = Vec::with_capacity(len);
            for _ in 0..len {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let alphabet = b"{}[]\":,0123aZ \\\x00\xff";
                v.push(alphabet[(seed % alphabet.len() as u64) as usize]);
            }
            random.push(v);
        }
        let cmds = ["ADD", "DEL", "CHECK", "STATUS", "GC", "add", "", "VERSION\0"];
        for stdin in stdins.iter().chain(random.iter()) {
            for cmd in cmds {
                let p = Recorder::default();
                let r = run(&p, &add_env(cmd, nsp), stdin);
                if cmd == "VERSION\0" || cmd == "add" || cmd.is_empty() {
                    assert_eq!(r.json()["code"], 4);
                    continue;
                }
                assert_eq!(r.code, 1, "{cmd} {stdin:?} → {}", r.out);
                let code = r.json()["code"].as_u64().unwrap();
                assert!([1, 6, 7].contains(&code), "{cmd} {stdin:?} → {}", r.out);
                assert!(p.calls.borrow().is_empty());
            }
        }
        let envs: &[&[(&str, &str)]] = &[
            &[
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", "c"),
                ("CNI_NETNS", nsp),
                ("CNI_IFNAME", "a\u{0}b"),
            ],
            &[
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", "c"),
                ("CNI_NETNS", nsp),
                ("CNI_IFNAME", "e"),
                ("CNI_ARGS", ";;=;"),
            ],
            &[("CNI_COMMAND", "DEL"), ("CNI_CONTAINERID", "ä"), ("CNI_IFNAME", "eth0")],
            &[
                ("CNI_COMMAND", "CHECK"),
                ("CNI_CONTAINERID", "c"),
                ("CNI_NETNS", nsp),
                ("CNI_IFNAME", "€€€€€€€€"),
            ],
        ];
        for env in envs {
            let p = Recorder::default();
            let r = run(&p, env, &conf("1.0.0"));
            assert_eq!(r.json()["code"], 4, "{env:?}");
            assert!(p.calls.borrow().is_empty());
        }
    }

    #[test]
    fn delegate_runs_ipam_from_cni_path() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let ipam = dir.path().join("fake-ipam");
        std::fs::write(
            &ipam,
            "#!/bin/sh\ncat >/dev/null\nif [ \"$CNI_COMMAND\" = ADD ]; then echo '{\"cniVersion\":\"0.3.1\",\"ips\":[{\"version\":\"4\",\"address\":\"10.9.0.1/32\"}]}'; fi\n",
        )
        .unwrap();
        std::fs::set_permissions(&ipam, std::fs::Permissions::from_mode(0o755)).unwrap();
        let raw: BTreeMap<OsString, OsString> = [
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "c"),
            ("CNI_IFNAME", "eth0"),
            ("PATH", "/usr/bin:/bin"),
            ("CNI_PATH", dir.path().to_str().unwrap()),
        ]
        .iter()
        .map(|(k, v)| (OsString::from(k), OsString::from(v)))
        .collect();
        let req = Request {
            env: CniEnv::parse(raw).unwrap(),
            conf: NetConf::parse(&conf("1.0.0")).unwrap(),
            stdin: conf("1.0.0"),
        };
        let r = req.delegate("fake-ipam", Command::Add).unwrap().unwrap();
        assert_eq!(r.ips[0].address.to_string(), "10.9.0.1/32");
        assert_eq!(req.delegate("fake-ipam", Command::Del).unwrap(), None);
        assert_eq!(req.delegate("absent", Command::Add).unwrap_err().code, 999);
    }
}
