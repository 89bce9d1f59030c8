//! Datastore selection from a CNI network config (Calico's keys).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::{Datastore, StoreError};

/// Where the embedded store lives when `datastore_path` is not given.
pub const DEFAULT_DATASTORE_PATH: &str = "/var/lib/calico-rs";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatastoreType {
    /// The embedded file store (single node).
    File,
    /// etcd v3 (`etcdv3`).
    Etcd,
}

/// The datastore keys of a Calico network config. Deserialize it from the
/// plugin object (unknown keys are ignored), then [`DatastoreConfig::validate`].
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
    /// File store durability per commit: `full` (default: fsync the data
    /// file and its directory), `data` (fsync the data file only: a power
    /// loss may lose the last commits, never tear the file) or `none` (page
    /// cache only: commits stay atomic for crashing processes, a power loss
    /// may lose recent commits). See [`crate::file::Durability`].
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
        Duration::from_secs_f64(secs)
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
