//! Loading network configurations the way libcni does.
//!
//! A network is found by name in a directory: first the `*.conflist` files
//! (sorted by file name), then the legacy single-plugin `*.conf` / `*.json`
//! files, which are up-converted into a one-plugin list. Plugin objects are
//! kept as raw JSON maps so unknown keys reach the plugin unchanged.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::error::Error;
use cni_proto::version::{self, Version};

/// One plugin object of a list (`{"type": ..., ...}`), verbatim.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginConf {
    raw: Map<String, Value>,
}

impl PluginConf {
    /// Wrap a plugin object; it must have a non-empty string `type`.
    pub fn from_value(v: Value) -> Result<PluginConf, String> {
        let Value::Object(raw) = v else {
            return Err("plugin configuration is not a JSON object".into());
        };
        match raw.get("type") {
            Some(Value::String(t)) if !t.is_empty() => Ok(PluginConf { raw }),
            _ => Err("error parsing configuration: missing 'type'".into()),
        }
    }

    /// The plugin binary name (`type`).
    pub fn plugin_type(&self) -> &str {
        self.raw.get("type").and_then(Value::as_str).unwrap_or_default()
    }

    /// The capabilities this plugin declares as enabled (`capabilities: {x: true}`).
    pub fn capabilities(&self) -> Vec<String> {
        match self.raw.get("capabilities") {
            Some(Value::Object(m)) => {
                m.iter().filter(|(_, v)| v.as_bool() == Some(true)).map(|(k, _)| k.clone()).collect()
            }
            _ => Vec::new(),
        }
    }

    pub fn raw(&self) -> &Map<String, Value> {
        &self.raw
    }

    pub fn raw_mut(&mut self) -> &mut Map<String, Value> {
        &mut self.raw
    }
}

/// A network configuration list (`.conflist`), or a single `.conf` up-converted.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkConfigList {
    pub name: String,
    /// The version used for every plugin call: `cniVersion`, or the highest
    /// entry of `cniVersions` this runtime supports.
    pub cni_version: String,
    pub disable_check: bool,
    pub disable_gc: bool,
    pub load_only_inlined_plugins: bool,
    pub plugins: Vec<PluginConf>,
    /// The file's bytes (what the result cache stores as `config`).
    pub bytes: Vec<u8>,
}

impl NetworkConfigList {
    /// Parse a conflist document (inlined plugins only).
    pub fn from_bytes(bytes: &[u8]) -> Result<NetworkConfigList, String> {
        let raw: Map<String, Value> =
            serde_json::from_slice(bytes).map_err(|e| format!("error parsing configuration list: {e}"))?;
        let name = match raw.get("name") {
            Some(Value::String(s)) => s.clone(),
            Some(other) => return Err(format!("error parsing configuration list: invalid name {other}")),
            None => return Err("error parsing configuration list: no name".into()),
        };
        let mut cni_version = match raw.get("cniVersion") {
            Some(Value::String(s)) => s.clone(),
            Some(other) => {
                return Err(format!("error parsing configuration list: invalid cniVersion {other}"))
            }
            None => String::new(),
        };
        if let Some(versions) = raw.get("cniVersions") {
            cni_version = pick_version(versions, &cni_version)?;
        }
        let read_bool = |key: &str| -> Result<bool, String> {
            match raw.get(key) {
                None => Ok(false),
                Some(Value::Bool(b)) => Ok(*b),
                Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => Ok(true),
                Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => Ok(false),
                Some(other) => {
                    Err(format!("error parsing configuration list: invalid value {other} for {key}"))
                }
            }
        };
        let mut list = NetworkConfigList {
            name,
            cni_version,
            disable_check: read_bool("disableCheck")?,
            disable_gc: read_bool("disableGC")?,
            load_only_inlined_plugins: read_bool("loadOnlyInlinedPlugins")?,
            plugins: Vec::new(),
            bytes: bytes.to_vec(),
        };
        match raw.get("plugins") {
            None if list.load_only_inlined_plugins => Err(
                "error parsing configuration list: `loadOnlyInlinedPlugins` is true, and no 'plugins' key"
                    .into(),
            ),
            None => Ok(list),
            Some(Value::Array(plugins)) => {
                if plugins.is_empty() {
                    return Err("error parsing configuration list: no plugins in list".into());
                }
                for (i, p) in plugins.iter().enumerate() {
                    let p = PluginConf::from_value(p.clone())
                        .map_err(|e| format!("failed to parse plugin config {i}: {e}"))?;
                    list.plugins.push(p);
                }
                Ok(list)
            }
            Some(other) => Err(format!("error parsing configuration list: invalid 'plugins' {other}")),
        }
    }

    /// Parse a conflist value (convenience for tests and tools).
    pub fn from_value(v: &Value) -> Result<NetworkConfigList, String> {
        let bytes = serde_json::to_vec(v).map_err(|e| e.to_string())?;
        Self::from_bytes(&bytes)
    }

    /// Load a conflist file, appending `<dir>/<name>/*.conf` plugin files unless
    /// `loadOnlyInlinedPlugins` is set.
    pub fn from_file(path: &Path) -> Result<NetworkConfigList, Error> {
        let conf_err = |reason: String| Error::Conf { path: path.to_path_buf(), reason };
        let bytes = std::fs::read(path).map_err(|e| conf_err(format!("error reading: {e}")))?;
        let mut list = Self::from_bytes(&bytes).map_err(conf_err)?;
        if !list.load_only_inlined_plugins {
            let dir = path.parent().unwrap_or(Path::new(".")).join(&list.name);
            for f in conf_files(&dir, &["conf"])? {
                let b = std::fs::read(&f)
                    .map_err(|e| Error::Conf { path: f.clone(), reason: format!("error reading: {e}") })?;
                let v: Value = serde_json::from_slice(&b)
                    .map_err(|e| Error::Conf { path: f.clone(), reason: format!("error parsing: {e}") })?;
                let p =
                    PluginConf::from_value(v).map_err(|reason| Error::Conf { path: f.clone(), reason })?;
                list.plugins.push(p);
            }
        }
        if list.plugins.is_empty() {
            return Err(conf_err("no plugin configs found".into()));
        }
        Ok(list)
    }

    /// Up-convert a single-plugin `.conf` document into a one-plugin list.
    pub fn from_single_conf(bytes: &[u8]) -> Result<NetworkConfigList, String> {
        let v: Value =
            serde_json::from_slice(bytes).map_err(|e| format!("error parsing configuration: {e}"))?;
        let p = PluginConf::from_value(v)?;
        let name = p.raw().get("name").and_then(Value::as_str).unwrap_or_default().to_string();
        let version = p.raw().get("cniVersion").and_then(Value::as_str).unwrap_or_default().to_string();
        let list =
            serde_json::json!({"name": name, "cniVersion": version, "plugins": [Value::Object(p.raw)]});
        Self::from_value(&list)
    }
}

/// `cniVersions`: the highest listed version (together with `cniVersion`) that
/// this runtime implements.
fn pick_version(versions: &Value, cni_version: &str) -> Result<String, String> {
    let Value::Array(items) = versions else {
        return Err(format!("error parsing configuration list: invalid type for cniVersions: {versions}"));
    };
    let current = Version::parse(version::CURRENT).unwrap_or(Version::V1_1_0);
    let mut best: Option<(Version, String)> = None;
    let mut consider = |s: &str| -> Result<(), String> {
        let v = Version::parse(s)
            .ok_or_else(|| format!("error parsing configuration list: invalid cniVersions entry {s:?}"))?;
        if v <= current && best.as_ref().is_none_or(|(b, _)| v > *b) {
            best = Some((v, s.to_string()));
        }
        Ok(())
    };
    for (i, item) in items.iter().enumerate() {
        let s = item.as_str().ok_or_else(|| {
            format!("error parsing configuration list: invalid type for cniVersions index {i}: {item}")
        })?;
        consider(s)?;
    }
    if !cni_version.is_empty() {
        consider(cni_version)?;
    }
    Ok(best.map(|(_, s)| s).unwrap_or_else(|| cni_version.to_string()))
}

/// Regular files in `dir` whose extension is one of `exts` (without the dot),
/// sorted by name. A missing directory has no files.
pub fn conf_files(dir: &Path, exts: &[&str]) -> Result<Vec<PathBuf>, Error> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::Conf { path: dir.to_path_buf(), reason: format!("cannot read: {e}") }),
    };
    let mut files = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            continue;
        }
        if path.extension().and_then(|e| e.to_str()).is_some_and(|e| exts.contains(&e)) {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Find the network `name` in `dir`: conflists first, then single confs.
pub fn load_conf_list(dir: &Path, name: &str) -> Result<NetworkConfigList, Error> {
    let lists = conf_files(dir, &["conflist"])?;
    for f in &lists {
        let list = NetworkConfigList::from_file(f)?;
        if list.name == name {
            return Ok(list);
        }
    }
    let singles = conf_files(dir, &["conf", "json"])?;
    if singles.is_empty() {
        if lists.is_empty() {
            return Err(Error::NoConfigs { dir: dir.to_path_buf() });
        }
        return Err(Error::NotFound { dir: dir.to_path_buf(), name: name.to_string() });
    }
    for f in &singles {
        let bytes = std::fs::read(f)
            .map_err(|e| Error::Conf { path: f.clone(), reason: format!("error reading: {e}") })?;
        let v: Value = serde_json::from_slice(&bytes)
            .map_err(|e| Error::Conf { path: f.clone(), reason: format!("error parsing: {e}") })?;
        if v.get("name").and_then(Value::as_str) == Some(name) {
            return NetworkConfigList::from_single_conf(&bytes)
                .map_err(|reason| Error::Conf { path: f.clone(), reason });
        }
    }
    Err(Error::NotFound { dir: dir.to_path_buf(), name: name.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn cni_versions_picks_highest_supported() {
        let l = NetworkConfigList::from_value(&json!({
            "name": "n", "cniVersion": "0.4.0", "cniVersions": ["1.0.0", "9.0.0", "0.3.1"],
            "plugins": [{"type": "x"}]
        }))
        .unwrap();
        assert_eq!(l.cni_version, "1.0.0");
    }

    #[test]
    fn rejects_plugin_without_type_and_empty_lists() {
        assert!(NetworkConfigList::from_value(&json!({"name": "n", "plugins": [{}]})).is_err());
        assert!(NetworkConfigList::from_value(&json!({"name": "n", "plugins": []})).is_err());
        assert!(NetworkConfigList::from_value(&json!({"plugins": [{"type": "x"}]})).is_err());
    }

    #[test]
    fn loads_by_name_sorted_conflists_before_confs() {
        let d = tempfile::tempdir().unwrap();
        let w = |f: &str, v: Value| std::fs::write(d.path().join(f), v.to_string()).unwrap();
        w("20-b.conflist", json!({"name": "net", "cniVersion": "1.0.0", "plugins": [{"type": "second"}]}));
        w("10-a.conflist", json!({"name": "net", "cniVersion": "1.0.0", "plugins": [{"type": "first"}]}));
        w("05-single.conf", json!({"name": "single", "cniVersion": "0.4.0", "type": "ptp", "extra": 1}));
        w("ignored.txt", json!({"name": "net"}));
        let l = load_conf_list(d.path(), "net").unwrap();
        assert_eq!(l.plugins[0].plugin_type(), "first");
        let s = load_conf_list(d.path(), "single").unwrap();
        assert_eq!((s.cni_version.as_str(), s.plugins.len()), ("0.4.0", 1));
        assert_eq!(s.plugins[0].raw()["extra"], json!(1));
        assert!(matches!(load_conf_list(d.path(), "none"), Err(Error::NotFound { .. })));
        let empty = tempfile::tempdir().unwrap();
        assert!(matches!(load_conf_list(empty.path(), "net"), Err(Error::NoConfigs { .. })));
    }

    #[test]
    fn plugin_dir_is_appended_unless_inlined_only() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("a.conflist"),
            json!({"name": "net", "plugins": [{"type": "one"}]}).to_string(),
        )
        .unwrap();
        std::fs::create_dir(d.path().join("net")).unwrap();
        std::fs::write(d.path().join("net/1.conf"), json!({"type": "two"}).to_string()).unwrap();
        let l = load_conf_list(d.path(), "net").unwrap();
        assert_eq!(l.plugins.iter().map(|p| p.plugin_type()).collect::<Vec<_>>(), ["one", "two"]);
    }
}
