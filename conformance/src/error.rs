//! Runtime-side errors: what went wrong while loading a config or running a plugin.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The error object a plugin prints (on stdout) when it fails, as a runtime
/// decodes it. Kept lenient on purpose: a runtime must be able to report
/// whatever a broken plugin printed, so a non-JSON diagnostic becomes `msg`
/// with code 0 (libcni does the same).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct PluginError {
    #[serde(rename = "cniVersion", default, skip_serializing_if = "String::is_empty")]
    pub cni_version: String,
    #[serde(default)]
    pub code: u32,
    #[serde(default)]
    pub msg: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl std::fmt::Display for PluginError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.details.is_empty() {
            write!(f, "{} (code {})", self.msg, self.code)
        } else {
            write!(f, "{}; {} (code {})", self.msg, self.details, self.code)
        }
    }
}

impl PluginError {
    /// Decode a failed plugin's output the way libcni does: the JSON error on
    /// stdout; if stdout is empty, stderr's text; if both are empty, the exit status.
    pub fn from_output(stdout: &[u8], stderr: &[u8], status: &str) -> PluginError {
        let trimmed = String::from_utf8_lossy(stdout);
        if trimmed.trim().is_empty() {
            let err = String::from_utf8_lossy(stderr);
            let msg = if err.trim().is_empty() {
                format!("netplugin failed with no error message: {status}")
            } else {
                format!("netplugin failed: {:?}", err.trim())
            };
            return PluginError { msg, ..Default::default() };
        }
        match serde_json::from_slice::<PluginError>(stdout) {
            Ok(e) => e,
            Err(e) => PluginError {
                msg: format!("netplugin failed but error parsing its diagnostic message {trimmed:?}: {e}"),
                ..Default::default()
            },
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no net configuration with name {name:?} in {}", dir.display())]
    NotFound { dir: PathBuf, name: String },
    #[error("no net configurations found in {}", dir.display())]
    NoConfigs { dir: PathBuf },
    #[error("network configuration {}: {reason}", path.display())]
    Conf { path: PathBuf, reason: String },
    #[error("invalid network configuration: {0}")]
    InvalidConf(String),
    #[error("invalid runtime arguments: {0}")]
    InvalidArgs(String),
    #[error("failed to find plugin {plugin:?} in path {paths:?}")]
    PluginNotFound { plugin: String, paths: Vec<PathBuf> },
    #[error("plugin {plugin} failed ({command}): {error}")]
    Plugin { plugin: String, command: String, error: Box<PluginError> },
    #[error("cannot execute plugin {}: {reason}", path.display())]
    Exec { path: PathBuf, reason: String },
    #[error("plugin {} ({command}) timed out after {after:?} and was killed", path.display())]
    Timeout { path: PathBuf, command: String, after: Duration },
    #[error("plugin {plugin} ({command}) printed an unusable result: {reason}")]
    BadResult { plugin: String, command: String, reason: String },
    #[error("result cache {}: {reason}", path.display())]
    Cache { path: PathBuf, reason: String },
    #[error("configuration version {0:?} does not support the CHECK command")]
    CheckNotSupported(String),
    #[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    Many(Vec<Error>),
}

impl Error {
    /// The plugin's CNI error code when this error came from a plugin.
    pub fn code(&self) -> Option<u32> {
        match self {
            Error::Plugin { error, .. } => Some(error.code),
            _ => None,
        }
    }

    /// The plugin's error object when this error came from a plugin.
    pub fn plugin_error(&self) -> Option<&PluginError> {
        match self {
            Error::Plugin { error, .. } => Some(error),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_like_libcni() {
        let e = PluginError::from_output(br#"{"code":7,"msg":"bad","details":"x"}"#, b"", "exit 1");
        assert_eq!((e.code, e.msg.as_str(), e.details.as_str()), (7, "bad", "x"));
        let e = PluginError::from_output(b"", b"oops\n", "exit 1");
        assert_eq!(e.code, 0);
        assert!(e.msg.contains("oops"), "{e}");
        let e = PluginError::from_output(b"", b"", "exit status 3");
        assert!(e.msg.contains("exit status 3"), "{e}");
        let e = PluginError::from_output(b"not json", b"", "exit 1");
        assert!(e.msg.contains("error parsing its diagnostic"), "{e}");
    }
}
