//! The datastore flags of the tools that open one, with the environment
//! variables Calico's tools read for them (feature `datastore`).

use std::path::PathBuf;

use calico_store::DatastoreConfig;
use clap::Args;

/// `--datastore-type`, `--datastore-path`, `--etcd-endpoints` and the etcd
/// TLS files, each also from its Calico environment variable (the flag
/// wins; an empty variable counts as unset). Global, so a tool with
/// subcommands takes them before or after the subcommand.
///
/// A tool overlays them on its base settings (a config file's keys, or
/// none) with [`DatastoreArgs::overlay`]: flag > environment > base.
#[derive(Debug, Clone, Default, PartialEq, Eq, Args)]
pub struct DatastoreArgs {
    /// file or etcdv3 (default: etcdv3 when etcd endpoints are given, else file)
    #[arg(long, env = "DATASTORE_TYPE", value_name = "TYPE", global = true, help_heading = "Datastore")]
    pub datastore_type: Option<String>,
    /// The file store's directory
    #[arg(long, env = "DATASTORE_PATH", value_name = "DIR", global = true, help_heading = "Datastore")]
    pub datastore_path: Option<PathBuf>,
    /// etcd URLs, comma-separated (https:// with the TLS files below)
    #[arg(long, env = "ETCD_ENDPOINTS", value_name = "URL[,URL]", global = true, help_heading = "Datastore")]
    pub etcd_endpoints: Option<String>,
    /// Client key for etcd TLS (PEM)
    #[arg(long, env = "ETCD_KEY_FILE", value_name = "FILE", global = true, help_heading = "Datastore")]
    pub etcd_key_file: Option<PathBuf>,
    /// Client certificate for etcd TLS (PEM)
    #[arg(long, env = "ETCD_CERT_FILE", value_name = "FILE", global = true, help_heading = "Datastore")]
    pub etcd_cert_file: Option<PathBuf>,
    /// CA certificate that signed etcd's server certificate (PEM)
    #[arg(long, env = "ETCD_CA_CERT_FILE", value_name = "FILE", global = true, help_heading = "Datastore")]
    pub etcd_ca_cert_file: Option<PathBuf>,
}

fn text(v: &Option<String>) -> Option<String> {
    v.as_ref().filter(|s| !s.trim().is_empty()).cloned()
}

fn path(v: &Option<PathBuf>) -> Option<PathBuf> {
    v.as_ref().filter(|p| !p.as_os_str().is_empty()).cloned()
}

impl DatastoreArgs {
    /// Whether any of the flags (or their variables) is set.
    pub fn given(&self) -> bool {
        text(&self.datastore_type).is_some()
            || path(&self.datastore_path).is_some()
            || text(&self.etcd_endpoints).is_some()
            || path(&self.etcd_key_file).is_some()
            || path(&self.etcd_cert_file).is_some()
            || path(&self.etcd_ca_cert_file).is_some()
    }

    /// `base` with every setting given here replacing its own. Not
    /// validated: the caller does ([`DatastoreConfig::validate`]).
    pub fn overlay(&self, mut base: DatastoreConfig) -> DatastoreConfig {
        if let Some(v) = text(&self.datastore_type) {
            base.datastore_type = Some(v);
        }
        if let Some(v) = path(&self.datastore_path) {
            base.datastore_path = Some(v);
        }
        if let Some(v) = text(&self.etcd_endpoints) {
            base.etcd_endpoints = Some(v);
        }
        if let Some(v) = path(&self.etcd_key_file) {
            base.etcd_key_file = Some(v);
        }
        if let Some(v) = path(&self.etcd_cert_file) {
            base.etcd_cert_file = Some(v);
        }
        if let Some(v) = path(&self.etcd_ca_cert_file) {
            base.etcd_ca_cert_file = Some(v);
        }
        base
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(clap::Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        ds: DatastoreArgs,
    }

    // No environment here: what `env =` adds is tested by the tools (their
    // tests serialise on the variables they set).
    #[test]
    fn flags_overlay_the_base() {
        let c: Cli = crate::try_parse_without_env([
            "t",
            "--etcd-endpoints=https://127.0.0.1:2379",
            "--etcd-ca-cert-file",
            "/pki/ca.pem",
            "--etcd-cert-file=/pki/c.pem",
            "--etcd-key-file",
            "/pki/k.pem",
        ])
        .unwrap();
        assert!(c.ds.given());
        let base = DatastoreConfig { datastore_path: Some("/base".into()), ..Default::default() };
        let cfg = c.ds.overlay(base);
        assert_eq!(cfg.etcd_endpoints.as_deref(), Some("https://127.0.0.1:2379"));
        assert_eq!(cfg.etcd_ca_cert_file, Some(PathBuf::from("/pki/ca.pem")));
        assert_eq!(cfg.etcd_cert_file, Some(PathBuf::from("/pki/c.pem")));
        assert_eq!(cfg.etcd_key_file, Some(PathBuf::from("/pki/k.pem")));
        assert_eq!(cfg.datastore_path, Some(PathBuf::from("/base")), "not given: the base's");
        assert!(cfg.validate().is_ok());
        let empty = DatastoreArgs { datastore_type: Some(" ".into()), ..Default::default() };
        assert!(!empty.given(), "an empty value (variable) is unset");
    }
}
