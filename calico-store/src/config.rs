//! The Calico keys of a network config shared by both binaries (`calico`
//! and `calico-ipam`): datastore selection ([`DatastoreConfig`], [`open`]),
//! the node name ([`resolve_nodename`]) and Calico's string booleans
//! ([`flag`], [`flag_value`]). Keys only one binary reads stay in that binary.
//! Which layers (a config file, the environment, flags) a binary's
//! [`DatastoreConfig`] is built from is [`crate::resolve`]'s business.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use serde_json::Value;

use crate::{Datastore, StoreError};

/// Where calico-node records the node name; read when the config has no `nodename`.
pub const DEFAULT_NODENAME_FILE: &str = "/var/lib/calico/nodename";

/// The node's name, in Calico's order: the config's `nodename`, else the
/// contents of `nodename_file` (default [`DEFAULT_NODENAME_FILE`]) when that
/// file exists, else the hostname. The name becomes part of datastore keys
/// (`/calico/ipam/v2/host/<node>/…`), so one with `/`, whitespace or control
/// characters (or longer than a DNS name) is a `Config` error.
pub fn resolve_nodename(conf: Option<&str>, nodename_file: Option<&Path>) -> Result<String, StoreError> {
    resolve_nodename_from(conf, nodename_file, Path::new(HOSTNAME_FILE))
}

/// Where the OS hostname is read from.
pub const HOSTNAME_FILE: &str = "/proc/sys/kernel/hostname";

/// [`resolve_nodename`] with the hostname read from `hostname` instead of
/// [`HOSTNAME_FILE`] (for tests of callers).
pub fn resolve_nodename_from(
    conf: Option<&str>,
    file: Option<&Path>,
    hostname: &Path,
) -> Result<String, StoreError> {
    if let Some(n) = conf.filter(|n| !n.trim().is_empty()) {
        return check_nodename(n, "nodename");
    }
    let file = file.unwrap_or(Path::new(DEFAULT_NODENAME_FILE));
    match std::fs::read_to_string(file) {
        Ok(s) if !s.trim().is_empty() => return check_nodename(&s, &file.display().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(StoreError::io(file.display().to_string(), e)),
    }
    let host =
        std::fs::read_to_string(hostname).map_err(|e| StoreError::io(hostname.display().to_string(), e))?;
    check_nodename(&host, "the hostname")
}

fn check_nodename(name: &str, source: &str) -> Result<String, StoreError> {
    let name = name.trim();
    if name.is_empty()
        || name.len() > 253
        || name.chars().any(|c| c == '/' || c.is_whitespace() || c.is_control())
    {
        return Err(StoreError::Config(format!("invalid node name {name:?} from {source}")));
    }
    Ok(name.to_string())
}

/// Calico's booleans are strings (`ipam.assign_ipv4: "true"`): `"true"` or
/// `"false"` in any case; real JSON booleans are accepted too. Absent
/// (`null`) or `""` is unset (`None`: the key's default applies). Anything
/// else is an error describing the value.
pub fn flag_value(v: &Value) -> Result<Option<bool>, String> {
    match v {
        Value::Null => Ok(None),
        Value::Bool(b) => Ok(Some(*b)),
        Value::String(s) if s.is_empty() => Ok(None),
        Value::String(s) if s.eq_ignore_ascii_case("true") => Ok(Some(true)),
        Value::String(s) if s.eq_ignore_ascii_case("false") => Ok(Some(false)),
        other => Err(format!("expected \"true\" or \"false\", got {other}")),
    }
}

/// [`flag_value`] as a serde field deserializer:
/// `#[serde(default, deserialize_with = "calico_store::config::flag")] assign_ipv4: Option<bool>`.
pub fn flag<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    flag_value(&Value::deserialize(d)?).map_err(serde::de::Error::custom)
}

/// Where the embedded store lives when `datastore_path` is not given.
pub const DEFAULT_DATASTORE_PATH: &str = "/var/lib/calico-rs";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatastoreType {
    /// The embedded file store (single node).
    File,
    /// etcd v3 (`etcdv3`).
    Etcd,
}

/// The datastore keys of a Calico network config. Decode it from the plugin
/// object with [`DatastoreConfig::from_section`] (unknown keys are ignored,
/// arrays refused) or build it with [`crate::resolve::resolve`], then
/// [`DatastoreConfig::validate`].
#[derive(Debug, Clone, Default, Deserialize)]
pub struct DatastoreConfig {
    /// `file` (default when no etcd is configured) or `etcdv3`.
    #[serde(default)]
    pub datastore_type: Option<String>,
    /// File store directory.
    #[serde(default)]
    pub datastore_path: Option<PathBuf>,
    /// Comma-separated etcd URLs, e.g. `http://127.0.0.1:2379`.
    #[serde(default)]
    pub etcd_endpoints: Option<String>,
    #[serde(default)]
    pub etcd_key_file: Option<PathBuf>,
    #[serde(default)]
    pub etcd_cert_file: Option<PathBuf>,
    #[serde(default)]
    pub etcd_ca_cert_file: Option<PathBuf>,
    /// File store durability per commit: `full` (default: `fdatasync` the
    /// log before a commit returns, shared by concurrent commits; a commit
    /// that returned survives a power loss), `data` (flush only the
    /// compaction snapshot: a power loss may lose the last commits, and
    /// what is left is a prefix of them) or `none` (page cache only: commits
    /// stay atomic for crashing processes, a power loss may lose recent
    /// commits). See [`crate::file::Durability`].
    #[serde(default)]
    pub datastore_sync: Option<String>,
    /// Bound on how long one datastore call may take before it is
    /// `Unavailable` (seconds; default 10).
    #[serde(default)]
    pub datastore_timeout_seconds: Option<f64>,
}

impl DatastoreConfig {
    /// The backend this config selects, or a clear `Config` error.
    pub fn kind(&self) -> Result<DatastoreType, StoreError> {
        match self.datastore_type.as_deref() {
            None | Some("") => {
                if self.etcd_endpoints.as_deref().is_some_and(|e| !e.trim().is_empty()) {
                    Ok(DatastoreType::Etcd)
                } else {
                    Ok(DatastoreType::File)
                }
            }
            Some("file") => Ok(DatastoreType::File),
            Some("etcdv3") => Ok(DatastoreType::Etcd),
            Some(other) => Err(StoreError::Config(format!(
                "unsupported datastore_type {other:?} (expected \"file\" or \"etcdv3\")"
            ))),
        }
    }

    pub fn path(&self) -> PathBuf {
        self.datastore_path.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_DATASTORE_PATH))
    }

    pub fn timeout(&self) -> Duration {
        let secs = self.datastore_timeout_seconds.filter(|s| s.is_finite() && *s > 0.0).unwrap_or(10.0);
        // Capped: a value too big for a Duration panicked here, and one too
        // big for a deadline (`Instant + timeout`) panicked in the etcd store.
        Duration::from_secs_f64(secs.min(f64::from(u32::MAX)))
    }

    /// The file store durability `datastore_sync` selects (code: `Config` error
    /// for an unknown value).
    pub fn durability(&self) -> Result<crate::file::Durability, StoreError> {
        crate::file::Durability::parse(self.datastore_sync.as_deref().unwrap_or(""))
    }

    /// etcd endpoints as a list (trimmed, empty entries dropped).
    pub fn endpoints(&self) -> Vec<String> {
        self.etcd_endpoints
            .as_deref()
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    }

    /// Check the combination of keys without touching the backend.
    pub fn validate(&self) -> Result<DatastoreType, StoreError> {
        let kind = self.kind()?;
        self.durability()?;
        if kind == DatastoreType::Etcd && self.endpoints().is_empty() {
            return Err(StoreError::Config("datastore_type etcdv3 needs etcd_endpoints".into()));
        }
        Ok(kind)
    }
}

/// Open the backend a config selects.
pub fn open(cfg: &DatastoreConfig) -> Result<Arc<dyn Datastore>, StoreError> {
    match cfg.validate()? {
        DatastoreType::File => {
            Ok(Arc::new(crate::file::FileStore::open_with(cfg.path(), cfg.durability()?)?))
        }
        DatastoreType::Etcd => Ok(Arc::new(crate::etcd::EtcdStore::connect(cfg)?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_timeout_is_capped_not_a_panic() {
        let c =
            |s: f64| DatastoreConfig { datastore_timeout_seconds: Some(s), ..Default::default() }.timeout();
        assert_eq!(c(2.5), Duration::from_millis(2500));
        assert_eq!(c(1e30), Duration::from_secs(u64::from(u32::MAX)));
        assert_eq!(c(f64::NAN), Duration::from_secs(10));
    }

    #[test]
    fn calico_flags() {
        use serde_json::json;
        for (v, want) in [
            (json!(null), None),
            (json!(""), None),
            (json!("true"), Some(true)),
            (json!("TRUE"), Some(true)),
            (json!("false"), Some(false)),
            (json!(true), Some(true)),
            (json!(false), Some(false)),
        ] {
            assert_eq!(flag_value(&v), Ok(want), "{v}");
        }
        for bad in [json!("yes"), json!(1), json!(["true"])] {
            assert!(flag_value(&bad).unwrap_err().contains(&bad.to_string()), "{bad}");
        }
        #[derive(Deserialize)]
        struct K {
            #[serde(default, deserialize_with = "flag")]
            f: Option<bool>,
        }
        let k = |v: Value| serde_json::from_value::<K>(v).map(|k| k.f);
        assert_eq!(k(json!({})).unwrap(), None);
        assert_eq!(k(json!({"f": "false"})).unwrap(), Some(false));
        assert!(k(json!({"f": "maybe"})).unwrap_err().to_string().contains("\"maybe\""));
    }

    #[test]
    fn nodename_order_and_validation() {
        let d = tempfile::tempdir().unwrap();
        let (file, host) = (d.path().join("nodename"), d.path().join("hostname"));
        std::fs::write(&host, "host-1\n").unwrap();
        assert_eq!(resolve_nodename_from(Some("conf"), Some(&file), &host).unwrap(), "conf");
        assert_eq!(resolve_nodename_from(None, Some(&file), &host).unwrap(), "host-1");
        std::fs::write(&file, "from-file\n").unwrap();
        assert_eq!(resolve_nodename_from(Some(" "), Some(&file), &host).unwrap(), "from-file");
        for bad in ["a/b", "a b"] {
            assert!(matches!(resolve_nodename_from(Some(bad), None, &host), Err(StoreError::Config(_))));
        }
        std::fs::write(&file, "x".repeat(300)).unwrap();
        assert!(resolve_nodename_from(None, Some(&file), &host).is_err());
        // A nodename path that is a directory is an I/O error, not a fallback.
        assert!(matches!(resolve_nodename_from(None, Some(d.path()), &host), Err(StoreError::Io { .. })));
    }
}
