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
        if kind == DatastoreType::Etcd && self.endpoints().is_empty() {
            return Err(StoreError::Config("datastore_type etcdv3 needs etcd_endpoints".into()));
        }
        Ok(kind)
    }
}

/// Open the backend a config selects.
pub fn open(cfg: &DatastoreConfig) -> Result<Arc<dyn Datastore>, StoreError> {
    match cfg.validate()? {
        DatastoreType::File => Ok(Arc::new(crate::file::FileStore::open(cfg.path())?)),
        DatastoreType::Etcd => Ok(Arc::new(crate::etcd::EtcdStore::connect(cfg)?)),
    }
}
