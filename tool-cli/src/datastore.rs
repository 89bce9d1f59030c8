//! The datastore flags of the tools that open one, with the environment
//! variables Calico's tools read for them (feature `datastore`).

use std::path::PathBuf;

use calico_store::resolve::{self, Base, DatastoreFlags, ResolveError};
use calico_store::DatastoreConfig;
use clap::Args;

/// `--datastore-type`, `--datastore-path`, `--etcd-endpoints` and the etcd
/// TLS files, each also from its Calico environment variable (the flag
/// wins; an empty variable counts as unset). Global, so a tool with
/// subcommands takes them before or after the subcommand.
///
/// A tool lays them over its base settings (a config file's keys, or none)
/// with [`DatastoreArgs::resolve`]: flag > environment > base.
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
    /// The values given (flag or variable; blank ones are unset), as the
    /// top layer of calico-store's resolver.
    pub fn flags(&self) -> DatastoreFlags {
        DatastoreFlags {
            datastore_type: text(&self.datastore_type),
            datastore_path: path(&self.datastore_path),
            etcd_endpoints: text(&self.etcd_endpoints),
            etcd_key_file: path(&self.etcd_key_file),
            etcd_cert_file: path(&self.etcd_cert_file),
            etcd_ca_cert_file: path(&self.etcd_ca_cert_file),
        }
    }

    /// Whether these pick a datastore (type, path or endpoints; TLS files
    /// alone say how to reach an etcd, not which store to use).
    pub fn given(&self) -> bool {
        self.flags().selects_datastore()
    }

    /// The datastore configuration: `base` (a CNI config file's `calico`
    /// keys, a tool's own config section, or nothing) with these laid over
    /// it, validated, by calico-store's one resolver. The environment is
    /// already in these values (clap's `env =`), so the resolver reads none.
    pub fn resolve(&self, base: Base<'_>) -> Result<DatastoreConfig, ResolveError> {
        resolve::resolve(base, &resolve::no_env, &self.flags())
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
        let cfg = c.ds.resolve(Base::Config(base)).unwrap();
        assert_eq!(cfg.etcd_endpoints.as_deref(), Some("https://127.0.0.1:2379"));
        assert_eq!(cfg.etcd_ca_cert_file, Some(PathBuf::from("/pki/ca.pem")));
        assert_eq!(cfg.etcd_cert_file, Some(PathBuf::from("/pki/c.pem")));
        assert_eq!(cfg.etcd_key_file, Some(PathBuf::from("/pki/k.pem")));
        assert_eq!(cfg.datastore_path, Some(PathBuf::from("/base")), "not given: the base's");
        let empty = DatastoreArgs { datastore_type: Some(" ".into()), ..Default::default() };
        assert!(!empty.given(), "an empty value (variable) is unset");
        let tls_only = DatastoreArgs { etcd_ca_cert_file: Some("/pki/ca.pem".into()), ..Default::default() };
        assert!(!tls_only.given(), "TLS files alone pick no datastore");
        let bad = DatastoreArgs { datastore_type: Some("etcdv3".into()), ..Default::default() };
        assert!(bad.resolve(Base::Defaults).is_err(), "etcdv3 without endpoints");
    }
}
