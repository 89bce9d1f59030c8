use thiserror::Error;

/// Why a datastore call failed. Upper layers map these onto CNI codes:
/// `Unavailable` is code 11 (try again later) for ADD/DEL and 50 for STATUS.
#[derive(Debug, Error)]
pub enum StoreError {
    /// A compare-and-swap condition failed: someone else wrote `key` first.
    #[error("conflict on key {key}: it was changed concurrently")]
    Conflict { key: String },
    /// The backend cannot be reached or did not answer in time.
    #[error("datastore unavailable: {0}")]
    Unavailable(String),
    /// A stored document could not be decoded. Never overwrite such a key.
    #[error("corrupt document at {key}: {reason}")]
    Corrupt { key: String, reason: String },
    /// Local I/O failure (file store).
    #[error("datastore I/O error at {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The datastore configuration itself is wrong (bad type, bad endpoints).
    #[error("invalid datastore configuration: {0}")]
    Config(String),
}

impl StoreError {
    pub fn io(path: impl Into<String>, source: std::io::Error) -> Self {
        StoreError::Io { path: path.into(), source }
    }

    /// True when retrying the same call later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable(_) | StoreError::Conflict { .. })
    }
}
