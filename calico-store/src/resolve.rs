//! Datastore selection for every binary: one resolver, one precedence.
//!
//! A [`DatastoreConfig`] is built in calicoctl's order, each layer
//! overriding the one before it key by key:
//!
//! 1. a [`Base`]: nothing (the defaults), the `calico` plugin object of a CNI
//!    network config file (`.conf` or `.conflist`), or a config the caller
//!    already has (the node agent's own config file's `datastore` section);
//! 2. the environment: `DATASTORE_TYPE`, `DATASTORE_PATH`, `ETCD_ENDPOINTS`,
//!    `ETCD_KEY_FILE`, `ETCD_CERT_FILE`, `ETCD_CA_CERT_FILE` (a variable
//!    that is unset, empty or blank does not count);
//! 3. the command line: `--datastore-type`, `--datastore-path`,
//!    `--etcd-endpoints`, `--etcd-key-file`, `--etcd-cert-file`,
//!    `--etcd-ca-cert-file` ([`DatastoreFlags`]).
//!
//! The TLS files are settings like the others, so every binary that takes
//! these flags can reach an etcd that only serves TLS. The result is
//! validated ([`DatastoreConfig::validate`]) before it is returned.
//!
//! Configuration sections are never read from arrays: serde's derived
//! `Deserialize` fills a struct from a sequence by position, so a plugin
//! object or `datastore` section written as a JSON array would silently
//! configure something. Every section goes through
//! [`DatastoreConfig::from_section`], which refuses anything but an object.
//!
//! # Using it from a binary
//!
//! Take the datastore flags out of the command line with
//! [`Setting::from_flag`] before the binary's own flags, then resolve. A
//! binary whose datastore is optional (kube-proxy-rules) uses one only when
//! something selects it:
//!
//! ```
//! use calico_store::resolve::{self, Base, DatastoreFlags, Setting};
//!
//! let argv = ["--proxy-mode", "nftables", "--etcd-endpoints", "https://10.0.0.1:2379",
//!             "--etcd-ca-cert-file", "/etc/calico/ca.pem"];
//! let mut flags = DatastoreFlags::default();
//! let mut it = argv.iter();
//! while let Some(arg) = it.next() {
//!     match Setting::from_flag(arg) {
//!         Some(s) => flags.set(s, *it.next().expect("a value")),
//!         None => { /* the binary's own flag */ it.next(); }
//!     }
//! }
//! let env = resolve::no_env; // resolve::process_env in a real binary
//! let selected = flags.selects_datastore() || DatastoreFlags::from_env(&env).selects_datastore();
//! let ds = if selected { Some(resolve::resolve(Base::Defaults, &env, &flags)?) } else { None };
//! let ds = ds.expect("selected by --etcd-endpoints");
//! assert_eq!(ds.endpoints(), ["https://10.0.0.1:2379"]);
//! assert_eq!(ds.etcd_ca_cert_file.as_deref(), Some(std::path::Path::new("/etc/calico/ca.pem")));
//! # Ok::<(), resolve::ResolveError>(())
//! ```
//!
//! A binary with its own config file (the node agent) makes that file's
//! section the base, read with [`datastore_section`] so it cannot be an array:
//!
//! ```
//! use calico_store::resolve::{self, Base, DatastoreFlags, Setting};
//! use calico_store::DatastoreConfig;
//!
//! #[derive(serde::Deserialize)]
//! struct AgentFile {
//!     #[serde(default, deserialize_with = "calico_store::resolve::datastore_section")]
//!     datastore: Option<DatastoreConfig>,
//! }
//! let file: AgentFile =
//!     serde_json::from_str(r#"{"datastore": {"datastore_type": "file", "datastore_path": "/var/lib/a"}}"#)?;
//! let mut flags = DatastoreFlags::default();
//! flags.set(Setting::DatastorePath, "/tmp/b"); // --datastore-path /tmp/b
//! let base = Base::Config(file.datastore.unwrap_or_default());
//! let cfg = resolve::resolve(base, &resolve::no_env, &flags)?;
//! assert_eq!(cfg.path(), std::path::Path::new("/tmp/b"));
//! assert!(serde_json::from_str::<AgentFile>(r#"{"datastore": ["etcdv3"]}"#).is_err());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer};
use serde_json::Value;
use thiserror::Error;

use crate::{DatastoreConfig, StoreError};

/// One setting the environment and the command line can override.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setting {
    DatastoreType,
    DatastorePath,
    EtcdEndpoints,
    EtcdKeyFile,
    EtcdCertFile,
    EtcdCaCertFile,
}

impl Setting {
    /// Every setting, in the order usage texts list them.
    pub const ALL: [Setting; 6] = [
        Setting::DatastoreType,
        Setting::DatastorePath,
        Setting::EtcdEndpoints,
        Setting::EtcdKeyFile,
        Setting::EtcdCertFile,
        Setting::EtcdCaCertFile,
    ];

    /// The command-line flag, e.g. `--etcd-ca-cert-file`.
    pub fn flag(self) -> &'static str {
        match self {
            Setting::DatastoreType => "--datastore-type",
            Setting::DatastorePath => "--datastore-path",
            Setting::EtcdEndpoints => "--etcd-endpoints",
            Setting::EtcdKeyFile => "--etcd-key-file",
            Setting::EtcdCertFile => "--etcd-cert-file",
            Setting::EtcdCaCertFile => "--etcd-ca-cert-file",
        }
    }

    /// The environment variable, e.g. `ETCD_CA_CERT_FILE`.
    pub fn env(self) -> &'static str {
        match self {
            Setting::DatastoreType => "DATASTORE_TYPE",
            Setting::DatastorePath => "DATASTORE_PATH",
            Setting::EtcdEndpoints => "ETCD_ENDPOINTS",
            Setting::EtcdKeyFile => "ETCD_KEY_FILE",
            Setting::EtcdCertFile => "ETCD_CERT_FILE",
            Setting::EtcdCaCertFile => "ETCD_CA_CERT_FILE",
        }
    }

    /// The setting a command-line flag names (`None`: not a datastore flag,
    /// the caller's own).
    pub fn from_flag(flag: &str) -> Option<Setting> {
        Setting::ALL.into_iter().find(|s| s.flag() == flag)
    }
}

/// Values for the [`Setting`]s: what the command line gave (or, through
/// [`DatastoreFlags::from_env`], the environment). `None` leaves the layer
/// below in place.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DatastoreFlags {
    pub datastore_type: Option<String>,
    pub datastore_path: Option<PathBuf>,
    pub etcd_endpoints: Option<String>,
    pub etcd_key_file: Option<PathBuf>,
    pub etcd_cert_file: Option<PathBuf>,
    pub etcd_ca_cert_file: Option<PathBuf>,
}

impl DatastoreFlags {
    /// Record `value` for `setting` (a later value for the same setting wins).
    pub fn set(&mut self, setting: Setting, value: impl Into<String>) {
        let v = value.into();
        match setting {
            Setting::DatastoreType => self.datastore_type = Some(v),
            Setting::DatastorePath => self.datastore_path = Some(v.into()),
            Setting::EtcdEndpoints => self.etcd_endpoints = Some(v),
            Setting::EtcdKeyFile => self.etcd_key_file = Some(v.into()),
            Setting::EtcdCertFile => self.etcd_cert_file = Some(v.into()),
            Setting::EtcdCaCertFile => self.etcd_ca_cert_file = Some(v.into()),
        }
    }

    /// The settings the environment gives through `env` (variable name →
    /// value). Unset, empty and blank variables are skipped: an exported but
    /// empty `ETCD_ENDPOINTS=` must not override the config file.
    pub fn from_env(env: &dyn Fn(&str) -> Option<String>) -> DatastoreFlags {
        let mut out = DatastoreFlags::default();
        for s in Setting::ALL {
            if let Some(v) = env(s.env()).filter(|v| !v.trim().is_empty()) {
                out.set(s, v);
            }
        }
        out
    }

    /// Whether these values pick a datastore (type, path or endpoints), as
    /// opposed to nothing or only TLS files (which say how to reach an etcd,
    /// not which store to use). For binaries whose datastore is optional.
    pub fn selects_datastore(&self) -> bool {
        self.datastore_type.is_some() || self.datastore_path.is_some() || self.etcd_endpoints.is_some()
    }

    /// Lay these values over `cfg`.
    fn apply(&self, cfg: &mut DatastoreConfig) {
        let over = |dst: &mut Option<String>, src: &Option<String>| {
            if let Some(v) = src {
                *dst = Some(v.clone());
            }
        };
        let over_path = |dst: &mut Option<PathBuf>, src: &Option<PathBuf>| {
            if let Some(v) = src {
                *dst = Some(v.clone());
            }
        };
        over(&mut cfg.datastore_type, &self.datastore_type);
        over_path(&mut cfg.datastore_path, &self.datastore_path);
        over(&mut cfg.etcd_endpoints, &self.etcd_endpoints);
        over_path(&mut cfg.etcd_key_file, &self.etcd_key_file);
        over_path(&mut cfg.etcd_cert_file, &self.etcd_cert_file);
        over_path(&mut cfg.etcd_ca_cert_file, &self.etcd_ca_cert_file);
    }
}

/// The layer the environment and the flags are laid over.
#[derive(Debug, Clone)]
pub enum Base<'a> {
    /// Nothing: [`DatastoreConfig::default`].
    Defaults,
    /// A CNI network config (`.conf`) or config list (`.conflist`): the
    /// datastore keys of its plugin of type `calico` (calicoctl's `--config`).
    CniFile(&'a Path),
    /// A config the caller has read itself, e.g. the `datastore` section of
    /// the node agent's config file.
    Config(DatastoreConfig),
}

/// Why no datastore configuration could be built.
#[derive(Debug, Error)]
pub enum ResolveError {
    /// The CNI config file given as the base cannot be read.
    #[error("cannot read --config {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The CNI config file is not JSON.
    #[error("--config {} is not JSON: {source}", path.display())]
    NotJson {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// The CNI config file has no plugin of type `calico`.
    #[error("--config {} has no plugin of type \"calico\"", path.display())]
    NoCalicoPlugin { path: PathBuf },
    /// A part of the file has the wrong JSON kind: the network config or a
    /// plugin that is not an object (sections are never read from arrays),
    /// or a `plugins` key that is not a list.
    #[error("{section} in --config {} must be {expected}, found {found}", path.display())]
    WrongShape { path: PathBuf, section: String, expected: &'static str, found: &'static str },
    /// The `calico` plugin's datastore keys have the wrong types.
    #[error("datastore keys in --config {}: {reason}", path.display())]
    Keys { path: PathBuf, reason: SectionError },
    /// The layers together make an invalid combination
    /// ([`DatastoreConfig::validate`]; always [`StoreError::Config`]).
    #[error(transparent)]
    Invalid(StoreError),
}

impl From<ResolveError> for StoreError {
    /// For callers with one error type per layer: every resolver failure is
    /// a configuration error of the datastore.
    fn from(e: ResolveError) -> StoreError {
        match e {
            ResolveError::Invalid(inner) => inner,
            other => StoreError::Config(other.to_string()),
        }
    }
}

/// Why one section did not decode as a [`DatastoreConfig`].
#[derive(Debug, Error)]
pub enum SectionError {
    /// The section is an array, string, number, ...: not an object.
    #[error("expected a JSON object, found {0}")]
    NotAnObject(&'static str),
    /// An object whose keys have the wrong types.
    #[error(transparent)]
    Keys(#[from] serde_json::Error),
}

/// The JSON kind of `v`, for messages.
fn kind(v: &Value) -> &'static str {
    match v {
        Value::Array(_) => "an array",
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Object(_) => "an object",
    }
}

impl DatastoreConfig {
    /// Decode the datastore keys of one config section (a CNI plugin object,
    /// the node agent's `datastore` object); unknown keys are ignored. Only an
    /// object is a section: an array is refused instead of being read by
    /// position. The result is not validated yet (layers may follow).
    pub fn from_section(section: &Value) -> Result<DatastoreConfig, SectionError> {
        if !section.is_object() {
            return Err(SectionError::NotAnObject(kind(section)));
        }
        // Every field is a scalar (string, path or number), so the object
        // check above is the only place a positional reading could start.
        Ok(DatastoreConfig::deserialize(section)?)
    }
}

/// [`DatastoreConfig::from_section`] as a serde field deserializer, for a
/// config file with a `datastore` section:
/// `#[serde(default, deserialize_with = "calico_store::resolve::datastore_section")]
/// datastore: Option<DatastoreConfig>`. Absent or `null` is `None`.
pub fn datastore_section<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DatastoreConfig>, D::Error> {
    match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => Ok(None),
        Some(v) => DatastoreConfig::from_section(&v)
            .map(Some)
            .map_err(|e| serde::de::Error::custom(format!("datastore: {e}"))),
    }
}

/// The datastore keys of the plugin of type `calico` in the CNI network
/// config (or config list) at `path`.
pub fn config_from_cni_file(path: &Path) -> Result<DatastoreConfig, ResolveError> {
    let p = || path.to_path_buf();
    let text = std::fs::read_to_string(path).map_err(|source| ResolveError::Read { path: p(), source })?;
    let doc: Value =
        serde_json::from_str(&text).map_err(|source| ResolveError::NotJson { path: p(), source })?;
    let wrong = |section: String, expected, v: &Value| ResolveError::WrongShape {
        path: p(),
        section,
        expected,
        found: kind(v),
    };
    const OBJECT: &str = "a JSON object";
    if !doc.is_object() {
        return Err(wrong("the network config".into(), OBJECT, &doc));
    }
    let is_calico = |v: &Value| v.get("type").and_then(Value::as_str) == Some("calico");
    let plugin = match doc.get("plugins") {
        // A list: the calico plugin among its objects. An entry that is not
        // an object is refused, not skipped: the list is malformed.
        Some(Value::Array(list)) => {
            if let Some((i, bad)) = list.iter().enumerate().find(|(_, v)| !v.is_object()) {
                return Err(wrong(format!("plugins[{i}]"), OBJECT, bad));
            }
            list.iter().find(|v| is_calico(v))
        }
        Some(other) => return Err(wrong("plugins".into(), "a list of plugin objects", other)),
        // A single network config: the document is the plugin.
        None => Some(&doc).filter(|d| is_calico(d)),
    };
    let plugin = plugin.ok_or_else(|| ResolveError::NoCalicoPlugin { path: p() })?;
    DatastoreConfig::from_section(plugin).map_err(|reason| ResolveError::Keys { path: p(), reason })
}

/// Build the datastore configuration: `base`, then the environment read
/// through `env` (variable name → value; [`process_env`] for the real one,
/// [`no_env`] to ignore it), then `flags`; validated.
pub fn resolve(
    base: Base<'_>,
    env: &dyn Fn(&str) -> Option<String>,
    flags: &DatastoreFlags,
) -> Result<DatastoreConfig, ResolveError> {
    let mut cfg = match base {
        Base::Defaults => DatastoreConfig::default(),
        Base::CniFile(path) => config_from_cni_file(path)?,
        Base::Config(cfg) => cfg,
    };
    DatastoreFlags::from_env(env).apply(&mut cfg);
    flags.apply(&mut cfg);
    // calicoctl's rule: "etcdv3" needs endpoints, and a bad type or sync mode
    // is refused here, before anything is opened.
    cfg.validate().map_err(ResolveError::Invalid)?;
    Ok(cfg)
}

/// The process environment, for [`resolve`] and [`DatastoreFlags::from_env`].
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// No environment at all (a binary whose datastore comes only from its
/// config file and flags, and tests).
pub fn no_env(_: &str) -> Option<String> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DatastoreType;

    #[test]
    fn datastore_selection_follows_calicoctl_precedence() {
        let d = tempfile::tempdir().unwrap();
        let conf = d.path().join("10-calico.conflist");
        std::fs::write(
            &conf,
            r#"{"cniVersion":"1.0.0","name":"k8s","plugins":[{"type":"calico","datastore_type":"etcdv3",
               "etcd_endpoints":"http://10.0.0.1:2379","ipam":{"type":"calico-ipam"}},{"type":"portmap"}]}"#,
        )
        .unwrap();
        let flags = DatastoreFlags::default();
        let none = |_: &str| None;
        let cfg = resolve(Base::CniFile(&conf), &none, &flags).unwrap();
        assert_eq!(cfg.endpoints(), ["http://10.0.0.1:2379"]);
        let env = |k: &str| (k == "ETCD_ENDPOINTS").then(|| "http://10.0.0.2:2379".to_string());
        assert_eq!(
            resolve(Base::CniFile(&conf), &env, &flags).unwrap().endpoints(),
            ["http://10.0.0.2:2379"]
        );
        let flags2 = DatastoreFlags { etcd_endpoints: Some("http://10.0.0.3:2379".into()), ..flags.clone() };
        assert_eq!(
            resolve(Base::CniFile(&conf), &env, &flags2).unwrap().endpoints(),
            ["http://10.0.0.3:2379"]
        );
        let file = DatastoreFlags {
            datastore_type: Some("file".into()),
            datastore_path: Some(d.path().join("db")),
            ..Default::default()
        };
        assert_eq!(resolve(Base::Defaults, &none, &file).unwrap().path(), d.path().join("db"));
        let bad = DatastoreFlags { datastore_type: Some("kubernetes".into()), ..Default::default() };
        assert!(matches!(
            resolve(Base::Defaults, &none, &bad),
            Err(ResolveError::Invalid(StoreError::Config(_)))
        ));
        std::fs::write(&conf, r#"{"name":"x","plugins":[{"type":"bridge"}]}"#).unwrap();
        assert!(matches!(
            resolve(Base::CniFile(&conf), &none, &flags),
            Err(ResolveError::NoCalicoPlugin { .. })
        ));
    }

    /// Each TLS file comes from the base, is overridden by its variable, and
    /// that by its flag; the three are independent of each other.
    #[test]
    fn tls_files_follow_the_same_precedence() {
        let base = DatastoreConfig {
            etcd_endpoints: Some("https://10.0.0.1:2379".into()),
            etcd_key_file: Some("/base/key.pem".into()),
            etcd_cert_file: Some("/base/cert.pem".into()),
            etcd_ca_cert_file: Some("/base/ca.pem".into()),
            ..Default::default()
        };
        let tls = |c: &DatastoreConfig| {
            [&c.etcd_key_file, &c.etcd_cert_file, &c.etcd_ca_cert_file]
                .map(|p| p.as_deref().and_then(Path::to_str).unwrap_or("").to_string())
        };
        let cfg = resolve(Base::Config(base.clone()), &no_env, &DatastoreFlags::default()).unwrap();
        assert_eq!(tls(&cfg), ["/base/key.pem", "/base/cert.pem", "/base/ca.pem"]);
        let env = |k: &str| match k {
            "ETCD_CERT_FILE" => Some("/env/cert.pem".to_string()),
            "ETCD_CA_CERT_FILE" => Some("/env/ca.pem".to_string()),
            "ETCD_KEY_FILE" => Some("  ".to_string()), // blank: does not count
            _ => None,
        };
        let cfg = resolve(Base::Config(base.clone()), &env, &DatastoreFlags::default()).unwrap();
        assert_eq!(tls(&cfg), ["/base/key.pem", "/env/cert.pem", "/env/ca.pem"]);
        let mut flags = DatastoreFlags::default();
        for (flag, v) in [("--etcd-ca-cert-file", "/flag/ca.pem"), ("--etcd-key-file", "/flag/key.pem")] {
            flags.set(Setting::from_flag(flag).unwrap(), v);
        }
        let cfg = resolve(Base::Config(base), &env, &flags).unwrap();
        assert_eq!(tls(&cfg), ["/flag/key.pem", "/env/cert.pem", "/flag/ca.pem"]);
        assert_eq!(cfg.endpoints(), ["https://10.0.0.1:2379"]);
        assert_eq!(cfg.kind().unwrap(), DatastoreType::Etcd);
        // TLS files alone select no datastore; any of type, path, endpoints does.
        assert!(!flags.selects_datastore());
        assert!(
            DatastoreFlags::from_env(&|k| (k == "DATASTORE_PATH").then(|| "/x".into())).selects_datastore()
        );
    }

    #[test]
    fn every_setting_has_one_flag_and_one_variable() {
        for s in Setting::ALL {
            assert_eq!(Setting::from_flag(s.flag()), Some(s));
            let mut by_flag = DatastoreFlags::default();
            by_flag.set(s, "/v");
            let by_env = DatastoreFlags::from_env(&|k| (k == s.env()).then(|| "/v".to_string()));
            assert_eq!(by_flag, by_env, "{s:?}");
            assert_ne!(by_flag, DatastoreFlags::default(), "{s:?}");
        }
        assert_eq!(Setting::from_flag("--config"), None);
    }

    /// Sections are never read from arrays (serde would fill the struct by
    /// position: `["etcdv3", null, "http://…"]` would select an etcd).
    #[test]
    fn sections_given_as_arrays_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let conf = d.path().join("c.conflist");
        let refused = |text: &str| {
            std::fs::write(&conf, text).unwrap();
            resolve(Base::CniFile(&conf), &no_env, &DatastoreFlags::default()).unwrap_err()
        };
        let positional = r#"["etcdv3", null, "http://10.0.0.1:2379"]"#;
        assert!(matches!(refused(positional), ResolveError::WrongShape { found: "an array", .. }));
        let e = refused(&format!(r#"{{"name":"k8s","plugins":[{positional},{{"type":"calico"}}]}}"#));
        assert!(matches!(&e, ResolveError::WrongShape { section, .. } if section == "plugins[0]"), "{e}");
        let e = refused(r#"{"name":"k8s","plugins":{"type":"calico","etcd_endpoints":"http://x:2379"}}"#);
        assert!(matches!(&e, ResolveError::WrongShape { found: "an object", .. }), "{e}");
        assert!(e.to_string().starts_with("plugins in --config"), "{e}");
        let e = refused(r#"{"name":"k8s","plugins":[{"type":"calico","etcd_endpoints":["http://x:2379"]}]}"#);
        assert!(matches!(e, ResolveError::Keys { reason: SectionError::Keys(_), .. }), "{e}");

        // The serde helper for a config file's `datastore` section.
        #[derive(serde::Deserialize)]
        struct File {
            #[serde(default, deserialize_with = "datastore_section")]
            datastore: Option<DatastoreConfig>,
        }
        let parse = |t: &str| serde_json::from_str::<File>(t).map(|f| f.datastore);
        assert!(parse(r#"{}"#).unwrap().is_none());
        assert!(parse(r#"{"datastore":null}"#).unwrap().is_none());
        let got = parse(r#"{"datastore":{"datastore_type":"etcdv3","etcd_endpoints":"http://x:2379"}}"#);
        assert_eq!(got.unwrap().unwrap().endpoints(), ["http://x:2379"]);
        let e = parse(&format!(r#"{{"datastore":{positional}}}"#)).map(|_| ()).unwrap_err();
        assert!(e.to_string().contains("found an array"), "{e}");
        // Plain serde would have read it by position: the reason for all this.
        let by_position: DatastoreConfig = serde_json::from_str(positional).unwrap();
        assert_eq!(by_position.datastore_type.as_deref(), Some("etcdv3"));
    }

    #[test]
    fn resolver_errors_are_configuration_errors_of_the_store() {
        let d = tempfile::tempdir().unwrap();
        let missing = d.path().join("none.conflist");
        let e = resolve(Base::CniFile(&missing), &no_env, &DatastoreFlags::default()).unwrap_err();
        assert!(matches!(e, ResolveError::Read { .. }));
        assert!(matches!(StoreError::from(e), StoreError::Config(m) if m.contains("none.conflist")));
        std::fs::write(&missing, "{not json").unwrap();
        let e = resolve(Base::CniFile(&missing), &no_env, &DatastoreFlags::default()).unwrap_err();
        assert!(matches!(e, ResolveError::NotJson { .. }), "{e}");
        let etcd_without_endpoints =
            DatastoreFlags { datastore_type: Some("etcdv3".into()), ..Default::default() };
        let e = resolve(Base::Defaults, &no_env, &etcd_without_endpoints).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid datastore configuration: datastore_type etcdv3 needs etcd_endpoints"
        );
        assert!(matches!(StoreError::from(e), StoreError::Config(_)));
    }
}
