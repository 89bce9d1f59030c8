//! The CNI environment: CNI_COMMAND, CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME,
//! CNI_ARGS, CNI_PATH, parsed and validated per the spec's table.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::path::PathBuf;

use crate::error::CniError;

/// The operation the runtime asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    Add,
    Del,
    Check,
    Status,
    Gc,
    Version,
}

impl Command {
    pub fn parse(s: &str) -> Option<Command> {
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

    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Status => "STATUS",
            Command::Gc => "GC",
            Command::Version => "VERSION",
        }
    }

    /// The variables this command requires, in the order they are reported.
    /// Spec table: CNI_NETNS is optional for DEL; CNI_PATH is required only for GC.
    fn required(self) -> &'static [&'static str] {
        match self {
            Command::Add | Command::Check => &["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"],
            Command::Del => &["CNI_CONTAINERID", "CNI_IFNAME"],
            Command::Gc => &["CNI_PATH"],
            Command::Status | Command::Version => &[],
        }
    }

    /// Whether the command is about one attachment (container + interface).
    pub fn has_attachment(self) -> bool {
        matches!(self, Command::Add | Command::Del | Command::Check)
    }
}

impl std::fmt::Display for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`: container IDs and network names.
fn is_valid_id(s: &str) -> bool {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphanumeric() => {}
        _ => return false,
    }
    chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// A validated CNI_CONTAINERID.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContainerId(String);

impl ContainerId {
    /// Code 4 when empty or not matching `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`.
    pub fn parse(s: &str) -> Result<ContainerId, CniError> {
        if s.is_empty() {
            return Err(CniError::invalid_env("missing containerID", ""));
        }
        if !is_valid_id(s) {
            return Err(CniError::invalid_env("invalid characters in containerID", s));
        }
        Ok(ContainerId(s.to_string()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for ContainerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A validated interface name (CNI_IFNAME): 1–15 bytes, not `.`/`..`, no `/`,
/// `:` or whitespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IfName(String);

/// Linux IFNAMSIZ - 1.
pub const MAX_IFNAME_LEN: usize = 15;

impl IfName {
    /// Code 4 when the name breaks a kernel rule.
    pub fn parse(s: &str) -> Result<IfName, CniError> {
        if s.is_empty() {
            return Err(CniError::invalid_env("interface name is empty", ""));
        }
        if s.len() > MAX_IFNAME_LEN {
            return Err(CniError::invalid_env(
                "interface name is too long",
                format!("interface name should be less than {} characters", MAX_IFNAME_LEN + 1),
            ));
        }
        if s == "." || s == ".." {
            return Err(CniError::invalid_env("interface name is . or ..", ""));
        }
        if s.chars().any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control()) {
            return Err(CniError::invalid_env("interface name contains / or : or whitespace characters", s));
        }
        Ok(IfName(s.to_string()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for IfName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Validate a network `name` (code 7 when missing or not matching the container ID pattern).
pub fn validate_network_name(name: &str) -> Result<(), CniError> {
    if name.is_empty() {
        return Err(CniError::invalid_config("missing network name", ""));
    }
    if !is_valid_id(name) {
        return Err(CniError::invalid_config("invalid characters found in network name", name));
    }
    Ok(())
}

/// CNI_ARGS: `K=V;K=V`, in order. Values may contain `=` (split at the first).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniArgs {
    pairs: Vec<(String, String)>,
}

impl CniArgs {
    /// Parse `K=V;K=V`; empty segments are skipped; a segment without `=` or
    /// with an empty key is code 4.
    pub fn parse(s: &str) -> Result<CniArgs, CniError> {
        let mut pairs = Vec::new();
        for seg in s.split(';') {
            if seg.is_empty() {
                continue;
            }
            match seg.split_once('=') {
                Some((k, v)) if !k.is_empty() => pairs.push((k.to_string(), v.to_string())),
                _ => return Err(CniError::invalid_env("CNI_ARGS: invalid pair (want K=V)", seg)),
            }
        }
        Ok(CniArgs { pairs })
    }

    /// The last value given for `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    pub fn pairs(&self) -> &[(String, String)] {
        &self.pairs
    }

    /// `IgnoreUnknown=1|true` (case-insensitive), as types.LoadArgs reads it.
    pub fn ignore_unknown(&self) -> bool {
        self.get("IgnoreUnknown").is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
    }

    /// Reject keys outside `known` unless `IgnoreUnknown` is set (code 2, naming the key).
    pub fn check_known(&self, known: &[&str]) -> Result<(), CniError> {
        if self.ignore_unknown() {
            return Ok(());
        }
        match self.pairs.iter().find(|(k, _)| k != "IgnoreUnknown" && !known.contains(&k.as_str())) {
            Some((k, v)) => Err(CniError::new(
                crate::error::codes::UNSUPPORTED_FIELD,
                format!("CNI_ARGS: unknown args {k:?}"),
                format!("{k}={v}"),
            )),
            None => Ok(()),
        }
    }

    /// Render back to `K=V;K=V`.
    pub fn render(&self) -> String {
        self.pairs.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(";")
    }
}

/// The parsed CNI environment of one invocation, plus every variable as it
/// was received (delegates get exactly the same environment).
#[derive(Debug, Clone)]
pub struct CniEnv {
    pub command: Command,
    /// Present (and valid) for ADD/DEL/CHECK.
    pub container_id: Option<ContainerId>,
    /// CNI_NETNS; `None` when absent or empty (allowed for DEL).
    pub netns: Option<PathBuf>,
    /// Present (and valid) for ADD/DEL/CHECK.
    pub ifname: Option<IfName>,
    pub args: CniArgs,
    /// CNI_PATH split on `:` (empty entries dropped).
    pub cni_path: Vec<PathBuf>,
    /// The full environment, passed unchanged to delegates.
    pub raw: BTreeMap<OsString, OsString>,
}

fn get_str<'a>(raw: &'a BTreeMap<OsString, OsString>, key: &str) -> Result<Option<&'a str>, CniError> {
    match raw.get(OsStr::new(key)) {
        None => Ok(None),
        Some(v) => match v.to_str() {
            Some("") => Ok(None),
            Some(s) => Ok(Some(s)),
            None => Err(CniError::invalid_env(format!("{key} is not valid UTF-8"), v.to_string_lossy())),
        },
    }
}

impl CniEnv {
    /// Only CNI_COMMAND: missing → code 4 naming it; unknown → code 4.
    pub fn command(raw: &BTreeMap<OsString, OsString>) -> Result<Command, CniError> {
        let cmd = get_str(raw, "CNI_COMMAND")?.ok_or_else(|| CniError::missing_env(&["CNI_COMMAND"]))?;
        Command::parse(cmd).ok_or_else(|| CniError::invalid_env(format!("unknown CNI_COMMAND: {cmd}"), ""))
    }

    /// Parse and validate the whole environment for the command it names.
    /// Order: CNI_COMMAND, then every missing required variable at once, then
    /// container ID, interface name and CNI_ARGS syntax (all code 4).
    pub fn parse(raw: BTreeMap<OsString, OsString>) -> Result<CniEnv, CniError> {
        let command = Self::command(&raw)?;
        let mut missing = Vec::new();
        for var in command.required() {
            if get_str(&raw, var)?.is_none() {
                missing.push(*var);
            }
        }
        if !missing.is_empty() {
            return Err(CniError::missing_env(&missing));
        }
        let (container_id, ifname) = if command.has_attachment() {
            let cid = get_str(&raw, "CNI_CONTAINERID")?.map(ContainerId::parse).transpose()?;
            let ifn = get_str(&raw, "CNI_IFNAME")?.map(IfName::parse).transpose()?;
            (cid, ifn)
        } else {
            (None, None)
        };
        let netns = get_str(&raw, "CNI_NETNS")?.map(PathBuf::from);
        // CNI_ARGS belongs to ADD/DEL/CHECK (spec table); STATUS and GC ignore it.
        let args = match get_str(&raw, "CNI_ARGS")? {
            Some(a) if command.has_attachment() => CniArgs::parse(a)?,
            _ => CniArgs::default(),
        };
        let cni_path = get_str(&raw, "CNI_PATH")?
            .map(|p| p.split(':').filter(|s| !s.is_empty()).map(PathBuf::from).collect())
            .unwrap_or_default();
        Ok(CniEnv { command, container_id, netns, ifname, args, cni_path, raw })
    }

    /// The process environment.
    pub fn from_process() -> BTreeMap<OsString, OsString> {
        std::env::vars_os().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<OsString, OsString> {
        pairs.iter().map(|(k, v)| (OsString::from(k), OsString::from(v))).collect()
    }

    #[test]
    fn container_id_pattern() {
        for ok in ["a", "0", "abc123", "a.b-c_d", "Z-"] {
            assert!(ContainerId::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", ".a", "_a", "a/b", "a b", "a:b", "ä", "a\n", "a$"] {
            assert_eq!(ContainerId::parse(bad).unwrap_err().code, 4, "{bad:?}");
        }
    }

    #[test]
    fn ifname_rules() {
        for ok in ["eth0", "a", "123456789012345", "net1.100", "a-b_c"] {
            assert!(IfName::parse(ok).is_ok(), "{ok}");
        }
        let cases = [
            ("", "interface name is empty"),
            ("1234567890123456", "interface name is too long"),
            (".", "interface name is . or .."),
            ("..", "interface name is . or .."),
            ("a/b", "interface name contains / or : or whitespace characters"),
            ("a:b", "interface name contains / or : or whitespace characters"),
            ("a b", "interface name contains / or : or whitespace characters"),
            ("a\tb", "interface name contains / or : or whitespace characters"),
        ];
        for (bad, msg) in cases {
            let e = IfName::parse(bad).unwrap_err();
            assert_eq!((e.code, e.msg.as_str()), (4, msg), "{bad:?}");
        }
    }

    #[test]
    fn network_name_rules() {
        assert!(validate_network_name("k8s-pod-network").is_ok());
        assert!(validate_network_name("net.1_x").is_ok());
        assert_eq!(validate_network_name("").unwrap_err().code, 7);
        assert_eq!(validate_network_name("-net").unwrap_err().code, 7);
        assert_eq!(validate_network_name("my net").unwrap_err().code, 7);
        assert_eq!(validate_network_name("a/b").unwrap_err().code, 7);
    }

    #[test]
    fn cni_args_parse() {
        let a = CniArgs::parse("IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p;X=a=b;;").unwrap();
        assert_eq!(a.get("K8S_POD_NAMESPACE"), Some("ns"));
        assert_eq!(a.get("X"), Some("a=b"));
        assert_eq!(a.get("nope"), None);
        assert!(a.ignore_unknown());
        assert!(a.check_known(&[]).is_ok());
        assert_eq!(a.render(), "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p;X=a=b");
        assert_eq!(CniArgs::parse("novalue").unwrap_err().code, 4);
        assert_eq!(CniArgs::parse("=v").unwrap_err().code, 4);
        assert_eq!(CniArgs::parse("").unwrap(), CniArgs::default());
        let strict = CniArgs::parse("IP=10.0.0.1;FOO=bar").unwrap();
        assert!(!strict.ignore_unknown());
        let e = strict.check_known(&["IP"]).unwrap_err();
        assert_eq!(e.code, 2);
        assert!(e.msg.contains("FOO"));
        assert!(strict.check_known(&["IP", "FOO"]).is_ok());
        assert!(CniArgs::parse("IgnoreUnknown=true;X=1").unwrap().ignore_unknown());
        assert!(!CniArgs::parse("IgnoreUnknown=0;X=1").unwrap().ignore_unknown());
    }

    #[test]
    fn missing_vars_are_reported_together() {
        let e = CniEnv::parse(env(&[("CNI_COMMAND", "ADD")])).unwrap_err();
        assert_eq!(e.code, 4);
        assert_eq!(e.msg, "required env variables [CNI_CONTAINERID,CNI_NETNS,CNI_IFNAME] missing");
        let e = CniEnv::parse(env(&[])).unwrap_err();
        assert_eq!(e.msg, "required env variables [CNI_COMMAND] missing");
        let e = CniEnv::parse(env(&[("CNI_COMMAND", "FROB")])).unwrap_err();
        assert_eq!((e.code, e.msg.as_str()), (4, "unknown CNI_COMMAND: FROB"));
        // Empty counts as missing.
        let e = CniEnv::parse(env(&[("CNI_COMMAND", "CHECK"), ("CNI_CONTAINERID", "c"), ("CNI_NETNS", "")]))
            .unwrap_err();
        assert_eq!(e.msg, "required env variables [CNI_NETNS,CNI_IFNAME] missing");
        let e = CniEnv::parse(env(&[("CNI_COMMAND", "GC")])).unwrap_err();
        assert_eq!(e.msg, "required env variables [CNI_PATH] missing");
    }

    #[test]
    fn del_netns_optional_and_status_needs_nothing() {
        let e =
            CniEnv::parse(env(&[("CNI_COMMAND", "DEL"), ("CNI_CONTAINERID", "c1"), ("CNI_IFNAME", "eth0")]))
                .unwrap();
        assert_eq!(e.command, Command::Del);
        assert_eq!(e.netns, None);
        assert_eq!(e.container_id.as_ref().map(ContainerId::as_str), Some("c1"));
        assert!(e.cni_path.is_empty());
        let s = CniEnv::parse(env(&[("CNI_COMMAND", "STATUS")])).unwrap();
        assert_eq!((s.command, s.container_id, s.ifname), (Command::Status, None, None));
        let v = CniEnv::parse(env(&[("CNI_COMMAND", "VERSION")])).unwrap();
        assert_eq!(v.command, Command::Version);
        let g =
            CniEnv::parse(env(&[("CNI_COMMAND", "GC"), ("CNI_PATH", "/p"), ("CNI_ARGS", "junk")])).unwrap();
        assert_eq!(g.args, CniArgs::default(), "GC ignores CNI_ARGS");
    }

    #[test]
    fn full_add_env() {
        let e = CniEnv::parse(env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_NETNS", "/run/netns/x"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", "K8S_POD_NAME=p"),
            ("CNI_PATH", "/opt/cni/bin::/usr/lib/cni"),
            ("OTHER", "kept"),
        ]))
        .unwrap();
        assert_eq!(e.netns, Some(PathBuf::from("/run/netns/x")));
        assert_eq!(e.ifname.as_ref().map(IfName::as_str), Some("eth0"));
        assert_eq!(e.args.get("K8S_POD_NAME"), Some("p"));
        assert_eq!(e.cni_path, vec![PathBuf::from("/opt/cni/bin"), PathBuf::from("/usr/lib/cni")]);
        assert_eq!(e.raw.get(OsStr::new("OTHER")).map(|v| v.to_str()), Some(Some("kept")));
    }

    #[test]
    fn invalid_values_are_code_4() {
        let base = [("CNI_COMMAND", "ADD"), ("CNI_NETNS", "/n")];
        let mut e1 = env(&base);
        e1.insert("CNI_CONTAINERID".into(), "-bad".into());
        e1.insert("CNI_IFNAME".into(), "eth0".into());
        assert_eq!(CniEnv::parse(e1).unwrap_err().msg, "invalid characters in containerID");
        let mut e2 = env(&base);
        e2.insert("CNI_CONTAINERID".into(), "ok".into());
        e2.insert("CNI_IFNAME".into(), "waytoolonginterface".into());
        assert_eq!(CniEnv::parse(e2).unwrap_err().code, 4);
        let mut e3 = env(&base);
        e3.insert("CNI_CONTAINERID".into(), "ok".into());
        e3.insert("CNI_IFNAME".into(), "eth0".into());
        e3.insert("CNI_ARGS".into(), "garbage".into());
        assert_eq!(CniEnv::parse(e3).unwrap_err().code, 4);
    }

    #[cfg(unix)]
    #[test]
    fn non_utf8_is_code_4_not_a_panic() {
        use std::os::unix::ffi::OsStringExt;
        let mut e = env(&[("CNI_COMMAND", "ADD"), ("CNI_NETNS", "/n"), ("CNI_IFNAME", "eth0")]);
        e.insert("CNI_CONTAINERID".into(), OsString::from_vec(vec![0xff, 0xfe]));
        assert_eq!(CniEnv::parse(e).unwrap_err().code, 4);
    }
}
