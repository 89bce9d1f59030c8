//! libcni's on-disk result cache (`<dir>/results/<net>-<containerID>-<ifname>`,
//! kind `cniCacheV1`), byte-compatible so that a runtime using libcni and this
//! driver can read each other's entries.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::Error;

pub const CACHE_KIND_V1: &str = "cniCacheV1";
/// libcni's default cache directory.
pub const DEFAULT_CACHE_DIR: &str = "/var/lib/cni";

/// Go encodes `[]byte` as standard padded base64.
mod base64_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&data_encoding::BASE64.encode(b))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = Option::<String>::deserialize(d)?.unwrap_or_default();
        data_encoding::BASE64.decode(s.as_bytes()).map_err(serde::de::Error::custom)
    }
}

/// One cache file (libcni's `cachedInfo`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CachedInfo {
    pub kind: String,
    #[serde(rename = "containerId")]
    pub container_id: String,
    #[serde(with = "base64_bytes", default)]
    pub config: Vec<u8>,
    #[serde(rename = "ifName")]
    pub ifname: String,
    #[serde(rename = "networkName")]
    pub network_name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub netns: String,
    #[serde(rename = "cniArgs", default, skip_serializing_if = "Option::is_none")]
    pub cni_args: Option<Vec<[String; 2]>>,
    #[serde(rename = "capabilityArgs", default, skip_serializing_if = "Option::is_none")]
    pub capability_args: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
}

/// An attachment found in the cache (what GC compares against the valid list).
#[derive(Debug, Clone, PartialEq)]
pub struct CachedAttachment {
    pub info: CachedInfo,
    pub path: PathBuf,
}

/// The cache rooted at a directory (`/var/lib/cni` by default).
#[derive(Debug, Clone)]
pub struct ResultCache {
    dir: PathBuf,
}

impl Default for ResultCache {
    fn default() -> Self {
        ResultCache::new(DEFAULT_CACHE_DIR)
    }
}

impl ResultCache {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        ResultCache { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `<dir>/results/<net>-<containerID>-<ifname>`.
    pub fn path(&self, net: &str, container_id: &str, ifname: &str) -> Result<PathBuf, Error> {
        if net.is_empty() || container_id.is_empty() || ifname.is_empty() {
            return Err(Error::InvalidArgs(format!(
                "cache file path requires network name ({net:?}), container ID ({container_id:?}), \
                 and interface name ({ifname:?})"
            )));
        }
        Ok(self.dir.join("results").join(format!("{net}-{container_id}-{ifname}")))
    }

    /// Store an entry (0600 file in a 0700 directory), replacing any old one
    /// atomically (write to a temp file, then rename).
    pub fn write(&self, info: &CachedInfo) -> Result<PathBuf, Error> {
        let path = self.path(&info.network_name, &info.container_id, &info.ifname)?;
        let cache_err = |reason: String| Error::Cache { path: path.clone(), reason };
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| cache_err(format!("mkdir: {e}")))?;
        let bytes = serde_json::to_vec(info).map_err(|e| cache_err(e.to_string()))?;
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| cache_err(format!("create: {e}")))?;
        if let Err(e) = f.write_all(&bytes).and_then(|_| f.sync_all()) {
            let _ = std::fs::remove_file(&tmp);
            return Err(cache_err(format!("write: {e}")));
        }
        std::fs::rename(&tmp, &path).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            cache_err(format!("rename: {e}"))
        })?;
        Ok(path)
    }

    /// Read an entry; `Ok(None)` when there is none (a missing cache is normal).
    pub fn read(&self, net: &str, container_id: &str, ifname: &str) -> Result<Option<CachedInfo>, Error> {
        let path = self.path(net, container_id, ifname)?;
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(_) => return Ok(None),
        };
        let info: CachedInfo = serde_json::from_slice(&bytes)
            .map_err(|e| Error::Cache { path: path.clone(), reason: format!("undecodable: {e}") })?;
        if info.kind != CACHE_KIND_V1 {
            return Err(Error::Cache { path, reason: format!("wrong kind {:?}", info.kind) });
        }
        Ok(Some(info))
    }

    /// Remove an entry (missing is fine).
    pub fn remove(&self, net: &str, container_id: &str, ifname: &str) -> Result<(), Error> {
        let path = self.path(net, container_id, ifname)?;
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(Error::Cache { path, reason: format!("remove: {e}") })
            }
            _ => Ok(()),
        }
    }

    /// Every readable `cniCacheV1` entry, sorted by file name, optionally only
    /// those of one container (libcni's `GetCachedAttachments`).
    pub fn attachments(&self, container_id: Option<&str>) -> Vec<CachedAttachment> {
        let dir = self.dir.join("results");
        let Ok(entries) = std::fs::read_dir(&dir) else { return Vec::new() };
        let mut names: Vec<String> =
            entries.flatten().filter_map(|e| e.file_name().into_string().ok()).collect();
        names.sort();
        let mut out = Vec::new();
        for name in names {
            let path = dir.join(&name);
            let Ok(bytes) = std::fs::read(&path) else { continue };
            let Ok(info) = serde_json::from_slice::<CachedInfo>(&bytes) else { continue };
            if info.kind != CACHE_KIND_V1 || info.ifname.is_empty() || info.network_name.is_empty() {
                continue;
            }
            if container_id.is_some_and(|c| c != info.container_id) {
                continue;
            }
            out.push(CachedAttachment { info, path });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn info(cid: &str) -> CachedInfo {
        CachedInfo {
            kind: CACHE_KIND_V1.into(),
            container_id: cid.into(),
            config: br#"{"name":"net"}"#.to_vec(),
            ifname: "eth0".into(),
            network_name: "net".into(),
            netns: "/run/netns/x".into(),
            cni_args: Some(vec![["K".into(), "V".into()]]),
            capability_args: None,
            result: Some(json!({"cniVersion": "1.0.0", "ips": []})),
        }
    }

    #[test]
    fn write_read_remove_list() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let c = ResultCache::new(d.path());
        let p = c.write(&info("c1")).unwrap();
        c.write(&info("c2")).unwrap();
        assert_eq!(p, d.path().join("results/net-c1-eth0"));
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        let raw: Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        // Same field names and base64 config as libcni's cachedInfo.
        assert_eq!(raw["kind"], "cniCacheV1");
        assert_eq!(raw["containerId"], "c1");
        assert_eq!(raw["config"], "eyJuYW1lIjoibmV0In0=");
        assert_eq!(raw["cniArgs"], json!([["K", "V"]]));
        assert_eq!(c.read("net", "c1", "eth0").unwrap(), Some(info("c1")));
        assert_eq!(c.attachments(None).len(), 2);
        assert_eq!(c.attachments(Some("c2")).len(), 1);
        c.remove("net", "c1", "eth0").unwrap();
        c.remove("net", "c1", "eth0").unwrap();
        assert_eq!(c.read("net", "c1", "eth0").unwrap(), None);
        assert!(c.path("", "c", "eth0").is_err());
    }
}
