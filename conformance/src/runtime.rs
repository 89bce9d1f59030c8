//! The libcni-like driver: run a network's plugin chain for ADD, CHECK, DEL,
//! GC and STATUS, with the per-call config a runtime derives, and the result
//! cache that feeds `prevResult` to CHECK and DEL.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::cache::{CachedInfo, ResultCache, CACHE_KIND_V1};
use crate::conf::{NetworkConfigList, PluginConf};
use crate::error::{Error, PluginError};
use crate::exec::{find_in_path, Exec, Output};
use crate::result;
use cni_proto::version::{self, Version};

/// The per-attachment arguments of one call (libcni's `RuntimeConf`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RuntimeConf {
    pub container_id: String,
    /// Path of the container's network namespace (may be empty on DEL).
    pub netns: String,
    pub ifname: String,
    /// `CNI_ARGS` pairs.
    pub args: Vec<(String, String)>,
    /// Capability arguments (`portMappings`, `ips`, ...); each plugin receives
    /// in `runtimeConfig` only those it declares in `capabilities`.
    pub capability_args: Map<String, Value>,
}

impl RuntimeConf {
    pub fn new(container_id: &str, netns: &str, ifname: &str) -> Self {
        RuntimeConf {
            container_id: container_id.into(),
            netns: netns.into(),
            ifname: ifname.into(),
            ..Default::default()
        }
    }

    /// `K=V;K=V` as in `CNI_ARGS`.
    pub fn args_string(&self) -> String {
        self.args.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(";")
    }
}

/// One entry of `cni.dev/valid-attachments`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// What a plugin answers to VERSION.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionInfo {
    pub cni_version: String,
    pub supported_versions: Vec<String>,
}

impl VersionInfo {
    pub fn supports(&self, v: &str) -> bool {
        self.supported_versions.iter().any(|s| s == v)
    }
}

/// The runtime: where plugins are (`CNI_PATH`), where results are cached,
/// and how plugins are executed.
#[derive(Debug, Clone)]
pub struct Runtime {
    pub paths: Vec<PathBuf>,
    pub cache: ResultCache,
    pub exec: Exec,
}

impl Runtime {
    pub fn new(paths: Vec<PathBuf>) -> Runtime {
        Runtime { paths, cache: ResultCache::default(), exec: Exec::default() }
    }

    pub fn with_cache_dir(mut self, dir: impl Into<PathBuf>) -> Runtime {
        self.cache = ResultCache::new(dir);
        self
    }

    pub fn with_timeout(mut self, t: Duration) -> Runtime {
        self.exec.timeout = t;
        self
    }

    /// Run every plugin through a launcher prefix (e.g. `nsenter --net=<path> --`).
    pub fn with_launcher<S: Into<std::ffi::OsString>>(
        mut self,
        argv: impl IntoIterator<Item = S>,
    ) -> Runtime {
        self.exec.launcher = argv.into_iter().map(Into::into).collect();
        self
    }

    /// `CNI_PATH` as passed to plugins.
    pub fn cni_path(&self) -> String {
        self.paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(":")
    }

    pub fn find_plugin(&self, plugin_type: &str) -> Result<PathBuf, Error> {
        find_in_path(plugin_type, &self.paths)
    }

    /// The environment of one call, like libcni's `Args.AsEnv`: every CNI
    /// variable is set, empty when not applicable.
    pub fn env(&self, command: &str, rt: &RuntimeConf) -> Vec<(String, String)> {
        vec![
            ("CNI_COMMAND".into(), command.into()),
            ("CNI_CONTAINERID".into(), rt.container_id.clone()),
            ("CNI_NETNS".into(), rt.netns.clone()),
            ("CNI_ARGS".into(), rt.args_string()),
            ("CNI_IFNAME".into(), rt.ifname.clone()),
            ("CNI_PATH".into(), self.cni_path()),
        ]
    }

    /// The stdin of one plugin call: the plugin object with `name`,
    /// `cniVersion`, `prevResult` (when there is one) and `runtimeConfig`
    /// (declared capabilities ∩ supplied capability args) injected.
    pub fn plugin_config(
        list_name: &str,
        cni_version: &str,
        plugin: &PluginConf,
        prev_result: Option<&Value>,
        rt: Option<&RuntimeConf>,
    ) -> Value {
        let mut m = plugin.raw().clone();
        m.insert("name".into(), json!(list_name));
        m.insert("cniVersion".into(), json!(cni_version));
        if let Some(p) = prev_result {
            m.insert("prevResult".into(), p.clone());
        }
        if let Some(rt) = rt {
            let rc: Map<String, Value> = plugin
                .capabilities()
                .into_iter()
                .filter_map(|c| rt.capability_args.get(&c).map(|v| (c, v.clone())))
                .collect();
            if !rc.is_empty() {
                m.insert("runtimeConfig".into(), Value::Object(rc));
            }
        }
        Value::Object(m)
    }

    /// Run one plugin binary with `stdin` and the environment of `command`.
    /// No interpretation of the output (the suite uses this for negative tests).
    pub fn invoke(
        &self,
        plugin_type: &str,
        command: &str,
        stdin: &[u8],
        rt: &RuntimeConf,
    ) -> Result<Output, Error> {
        let path = self.find_plugin(plugin_type)?;
        self.exec.run(&path, stdin, &self.env(command, rt))
    }

    fn call(
        &self,
        plugin: &PluginConf,
        command: &str,
        conf: &Value,
        rt: &RuntimeConf,
    ) -> Result<Output, Error> {
        let bytes = serde_json::to_vec(conf).map_err(|e| Error::InvalidConf(e.to_string()))?;
        let out = self.invoke(plugin.plugin_type(), command, &bytes, rt)?;
        if !out.success() {
            return Err(Error::Plugin {
                plugin: plugin.plugin_type().to_string(),
                command: command.to_string(),
                error: Box::new(PluginError::from_output(&out.stdout, &out.stderr, &out.status_text())),
            });
        }
        Ok(out)
    }

    fn validate(list: &NetworkConfigList, rt: &RuntimeConf) -> Result<(), Error> {
        validate_container_id(&rt.container_id)?;
        validate_network_name(&list.name)?;
        validate_ifname(&rt.ifname)
    }

    /// ADD: every plugin in order, each one's result the next one's
    /// `prevResult`; the final result is cached and returned.
    pub fn add_network_list(&self, list: &NetworkConfigList, rt: &RuntimeConf) -> Result<Value, Error> {
        Self::validate(list, rt)?;
        let mut prev: Option<Value> = None;
        for plugin in &list.plugins {
            let conf = Self::plugin_config(&list.name, &list.cni_version, plugin, prev.as_ref(), Some(rt));
            let out = self.call(plugin, "ADD", &conf, rt)?;
            let bad = |reason: String| Error::BadResult {
                plugin: plugin.plugin_type().to_string(),
                command: "ADD".into(),
                reason,
            };
            let mut res: Value = serde_json::from_slice(&out.stdout)
                .map_err(|e| bad(format!("not JSON ({e}): {:?}", out.stdout_str())))?;
            let Some(obj) = res.as_object_mut() else {
                return Err(bad(format!("not a JSON object: {}", out.stdout_str())));
            };
            // libcni's fixupResultVersion: a result without a version is taken
            // to be in the config's version.
            if obj.get("cniVersion").and_then(Value::as_str).is_none_or(str::is_empty) {
                obj.insert("cniVersion".into(), json!(list.cni_version));
            }
            prev = Some(res);
        }
        let Some(final_result) = prev else {
            return Err(Error::InvalidConf(format!("network {:?} has no plugins", list.name)));
        };
        self.cache.write(&CachedInfo {
            kind: CACHE_KIND_V1.into(),
            container_id: rt.container_id.clone(),
            config: list.bytes.clone(),
            ifname: rt.ifname.clone(),
            network_name: list.name.clone(),
            netns: rt.netns.clone(),
            cni_args: (!rt.args.is_empty())
                .then(|| rt.args.iter().map(|(k, v)| [k.clone(), v.clone()]).collect()),
            capability_args: (!rt.capability_args.is_empty()).then(|| rt.capability_args.clone()),
            result: Some(final_result.clone()),
        })?;
        Ok(final_result)
    }

    /// The cached ADD result of an attachment, converted to the list's version.
    pub fn cached_result(&self, list: &NetworkConfigList, rt: &RuntimeConf) -> Result<Option<Value>, Error> {
        let Some(info) = self.cache.read(&list.name, &rt.container_id, &rt.ifname)? else {
            return Ok(None);
        };
        let Some(res) = info.result else { return Ok(None) };
        let path = self.cache.path(&list.name, &rt.container_id, &rt.ifname)?;
        result::convert(&res, &list.cni_version, &list.cni_version)
            .map(Some)
            .map_err(|reason| Error::Cache { path, reason: format!("cached result: {reason}") })
    }

    /// CHECK (config ≥ 0.4.0): every plugin in order with the cached result.
    pub fn check_network_list(&self, list: &NetworkConfigList, rt: &RuntimeConf) -> Result<(), Error> {
        if !at_least(&list.cni_version, Version::V0_4_0) {
            return Err(Error::CheckNotSupported(list.cni_version.clone()));
        }
        if list.disable_check {
            return Ok(());
        }
        Self::validate(list, rt)?;
        let cached = self.cached_result(list, rt)?;
        for plugin in &list.plugins {
            let conf = Self::plugin_config(&list.name, &list.cni_version, plugin, cached.as_ref(), Some(rt));
            self.call(plugin, "CHECK", &conf, rt)?;
        }
        Ok(())
    }

    /// DEL: every plugin in reverse order, each given the cached ADD result
    /// (config ≥ 0.4.0); the cache entry is removed once all succeeded.
    ///
    /// Unlike libcni, the entry is removed for pre-0.4.0 lists too (libcni
    /// leaves those behind, and its GC then DELs them forever).
    pub fn del_network_list(&self, list: &NetworkConfigList, rt: &RuntimeConf) -> Result<(), Error> {
        Self::validate(list, rt)?;
        let mut cached = None;
        if at_least(&list.cni_version, Version::V0_4_0) {
            match self.cached_result(list, rt) {
                Ok(c) => cached = c,
                // An unreadable entry is dropped, as libcni does.
                Err(_) => self.cache.remove(&list.name, &rt.container_id, &rt.ifname)?,
            }
        }
        for plugin in list.plugins.iter().rev() {
            let conf = Self::plugin_config(&list.name, &list.cni_version, plugin, cached.as_ref(), Some(rt));
            self.call(plugin, "DEL", &conf, rt)?;
        }
        self.cache.remove(&list.name, &rt.container_id, &rt.ifname)
    }

    /// GC: DEL every cached attachment of this network that is not in `valid`,
    /// then (config ≥ 1.1.0) send GC with `cni.dev/valid-attachments` (and the
    /// legacy spelling `cni.dev/attachments`) to every plugin. `valid = None`
    /// sends no list (what upstream cnitool does). Errors are collected, the
    /// remaining work still done.
    pub fn gc_network_list(
        &self,
        list: &NetworkConfigList,
        valid: Option<&[Attachment]>,
    ) -> Result<(), Error> {
        if list.disable_gc {
            return Ok(());
        }
        let mut errs = Vec::new();
        for att in self.cache.attachments(None) {
            let info = att.info;
            if info.network_name != list.name {
                continue;
            }
            let key = Attachment { container_id: info.container_id.clone(), ifname: info.ifname.clone() };
            if valid.is_some_and(|v| v.contains(&key)) {
                continue;
            }
            let rt = RuntimeConf {
                container_id: info.container_id,
                netns: info.netns,
                ifname: info.ifname,
                args: info.cni_args.unwrap_or_default().into_iter().map(|[k, v]| (k, v)).collect(),
                capability_args: info.capability_args.unwrap_or_default(),
            };
            if let Err(e) = self.del_network_list(list, &rt) {
                errs.push(Error::InvalidArgs(format!(
                    "failed to delete stale attachment {} {}: {e}",
                    rt.container_id, rt.ifname
                )));
            }
        }
        if at_least(&list.cni_version, Version::V1_1_0) {
            let empty = RuntimeConf::default();
            for plugin in &list.plugins {
                let mut conf = Self::plugin_config(&list.name, &list.cni_version, plugin, None, None);
                if let (Some(valid), Some(m)) = (valid, conf.as_object_mut()) {
                    let v = json!(valid);
                    m.insert("cni.dev/valid-attachments".into(), v.clone());
                    m.insert("cni.dev/attachments".into(), v);
                }
                if let Err(e) = self.call(plugin, "GC", &conf, &empty) {
                    errs.push(e);
                }
            }
        }
        match errs.len() {
            0 => Ok(()),
            1 => Err(errs.remove(0)),
            _ => Err(Error::Many(errs)),
        }
    }

    /// STATUS (config ≥ 1.1.0; older lists are reported ready without a
    /// call): the first plugin that is not ready fails the network.
    pub fn status_network_list(&self, list: &NetworkConfigList) -> Result<(), Error> {
        if !at_least(&list.cni_version, Version::V1_1_0) {
            return Ok(());
        }
        let empty = RuntimeConf::default();
        for plugin in &list.plugins {
            let conf = Self::plugin_config(&list.name, &list.cni_version, plugin, None, None);
            self.call(plugin, "STATUS", &conf, &empty)?;
        }
        Ok(())
    }

    /// VERSION of one plugin (stdin `{"cniVersion": <current>}`, as libcni sends).
    pub fn version_info(&self, plugin_type: &str) -> Result<VersionInfo, Error> {
        let stdin = json!({ "cniVersion": version::CURRENT }).to_string();
        let rt = RuntimeConf::default();
        let path = self.find_plugin(plugin_type)?;
        let env =
            vec![("CNI_COMMAND".to_string(), "VERSION".to_string()), ("CNI_PATH".into(), "dummy".into())];
        let out = self.exec.run(&path, stdin.as_bytes(), &env)?;
        let _ = rt;
        if !out.success() {
            return Err(Error::Plugin {
                plugin: plugin_type.into(),
                command: "VERSION".into(),
                error: Box::new(PluginError::from_output(&out.stdout, &out.stderr, &out.status_text())),
            });
        }
        parse_version_info(&out.stdout).map_err(|reason| Error::BadResult {
            plugin: plugin_type.into(),
            command: "VERSION".into(),
            reason,
        })
    }

    /// Check that every plugin exists and supports the list's version; returns
    /// the enabled capabilities (libcni's `ValidateNetworkList`).
    pub fn validate_network_list(&self, list: &NetworkConfigList) -> Result<Vec<String>, Error> {
        let mut caps = Vec::new();
        let mut errs = Vec::new();
        let want = if list.cni_version.is_empty() { "0.1.0" } else { list.cni_version.as_str() };
        for p in &list.plugins {
            match self.version_info(p.plugin_type()) {
                Ok(vi) if vi.supports(want) => {}
                Ok(_) => errs.push(Error::InvalidConf(format!(
                    "plugin {} does not support config version {want:?}",
                    p.plugin_type()
                ))),
                Err(e) => errs.push(e),
            }
            for c in p.capabilities() {
                if !caps.contains(&c) {
                    caps.push(c);
                }
            }
        }
        match errs.len() {
            0 => Ok(caps),
            1 => Err(errs.remove(0)),
            _ => Err(Error::Many(errs)),
        }
    }
}

/// Decode a VERSION answer; a 0.1.0 plugin that prints only `cniVersion`
/// supports just that version.
pub fn parse_version_info(stdout: &[u8]) -> Result<VersionInfo, String> {
    let v: Value = serde_json::from_slice(stdout)
        .map_err(|e| format!("not JSON ({e}): {:?}", String::from_utf8_lossy(stdout)))?;
    let cni_version = v.get("cniVersion").and_then(Value::as_str).unwrap_or_default().to_string();
    let supported_versions = match v.get("supportedVersions") {
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).map(str::to_string).collect(),
        None if cni_version == "0.1.0" => vec!["0.1.0".to_string()],
        _ => return Err(format!("no supportedVersions in {v}")),
    };
    Ok(VersionInfo { cni_version, supported_versions })
}

/// `true` when `s` (empty = the implicit 0.1.0) is at least `floor`.
pub fn at_least(s: &str, floor: Version) -> bool {
    Version::parse(if s.is_empty() { version::IMPLICIT } else { s }).is_some_and(|v| v >= floor)
}

// The same rules a plugin applies (libcni validates before executing).
fn validate_container_id(id: &str) -> Result<(), Error> {
    cni_proto::env::ContainerId::parse(id).map(|_| ()).map_err(|e| Error::InvalidArgs(e.to_string()))
}

fn validate_network_name(name: &str) -> Result<(), Error> {
    cni_proto::env::validate_network_name(name).map_err(|e| Error::InvalidArgs(e.to_string()))
}

fn validate_ifname(name: &str) -> Result<(), Error> {
    cni_proto::env::IfName::parse(name).map(|_| ()).map_err(|e| Error::InvalidArgs(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_config_is_capabilities_intersection() {
        let p = PluginConf::from_value(
            json!({"type": "x", "capabilities": {"ips": true, "mac": false, "dns": true},
            "runtimeConfig": {"old": 1}, "unknown": {"k": 1}}),
        )
        .unwrap();
        let mut rt = RuntimeConf::new("c", "/n", "eth0");
        rt.capability_args.insert("ips".into(), json!(["10.0.0.5/24"]));
        rt.capability_args.insert("mac".into(), json!("aa:bb"));
        rt.capability_args.insert("portMappings".into(), json!([]));
        let c = Runtime::plugin_config("net", "1.0.0", &p, Some(&json!({"cniVersion": "1.0.0"})), Some(&rt));
        assert_eq!(c["runtimeConfig"], json!({"ips": ["10.0.0.5/24"]}));
        assert_eq!(c["name"], "net");
        assert_eq!(c["cniVersion"], "1.0.0");
        assert_eq!(c["prevResult"]["cniVersion"], "1.0.0");
        assert_eq!(c["unknown"], json!({"k": 1}), "unknown keys pass through");
        // Nothing to inject: the plugin's own runtimeConfig is left alone.
        let c = Runtime::plugin_config("net", "1.0.0", &p, None, Some(&RuntimeConf::default()));
        assert_eq!(c["runtimeConfig"], json!({"old": 1}));
        assert!(c.get("prevResult").is_none());
    }

    #[test]
    fn version_info_decoding() {
        let v =
            parse_version_info(br#"{"cniVersion":"1.0.0","supportedVersions":["0.4.0","1.0.0"]}"#).unwrap();
        assert!(v.supports("0.4.0") && !v.supports("1.1.0"));
        assert_eq!(parse_version_info(br#"{"cniVersion":"0.1.0"}"#).unwrap().supported_versions, ["0.1.0"]);
        assert!(parse_version_info(b"garbage").is_err());
    }

    #[test]
    fn validators() {
        assert!(validate_container_id("abc-1_2.3").is_ok());
        assert!(validate_container_id("-abc").is_err());
        assert!(validate_ifname("eth0").is_ok());
        assert!(validate_ifname("a/b").is_err());
        assert!(validate_ifname("0123456789abcdef").is_err());
        assert!(validate_network_name("bad name").is_err());
    }
}
