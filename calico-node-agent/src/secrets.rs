//! BGP session passwords: a BGPPeer's `password.secretKeyRef {name, key}`
//! looked up in the agent's `bgp_secrets` source.
//!
//! calico/node reads the Kubernetes Secret `name` (in its own namespace) and
//! takes its `key`. In etcd mode there is no Secret to read, so the agent's
//! config names where the secrets are (`bgp_secrets`, `--bgp-secrets`):
//! * a **JSON file** `{"<name>": {"<key>": "<password>", ...}, ...}` (a
//!   Secret's `stringData`, one object per secret), or
//! * a **directory** holding `<name>/<key>` files (a Secret mounted as a
//!   volume: one directory per secret, one file per key); one trailing
//!   newline of the file is not part of the password (`echo pw > file`).
//!
//! The source is read on every reconcile, so a rotated password is picked
//! up without a restart. A password is checked before it reaches BIRD
//! ([`Password::new`]): BIRD's strings have no escapes (a `"` would end the
//! string and make `bird -p` refuse the whole configuration) and the kernel
//! takes at most 80 bytes of TCP-MD5 key. The password itself is never
//! logged, never in an error and never in `Debug` output: only the secret's
//! name and key are.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use calico_store::model::SecretKeyRef;

/// The kernel's limit on a TCP-MD5 key (`TCP_MD5SIG_MAXKEYLEN`).
pub const MAX_PASSWORD_LEN: usize = 80;

/// A validated BGP session password. `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

impl Password {
    /// 1 to 80 printable ASCII characters, without `"` and `\` (BIRD's
    /// strings cannot escape them). The error says what is wrong, never the
    /// password.
    pub fn new(s: &str) -> Result<Password, String> {
        if s.is_empty() {
            return Err("the password is empty".into());
        }
        if s.len() > MAX_PASSWORD_LEN {
            return Err(format!(
                "the password is {} bytes; TCP-MD5 keys are at most {MAX_PASSWORD_LEN}",
                s.len()
            ));
        }
        if let Some(c) = s.chars().find(|c| matches!(c, '"' | '\\') || !(' '..='~').contains(c)) {
            let what = match c {
                '"' => "a double quote".to_string(),
                '\\' => "a backslash".to_string(),
                c => format!("the non-printable or non-ASCII character U+{:04X}", u32::from(c)),
            };
            return Err(format!("the password contains {what} (printable ASCII without \" and \\ only)"));
        }
        Ok(Password(s.to_string()))
    }

    /// The password, for the BIRD configuration only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// Why a secret could not be turned into a password. Never holds the password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("no bgp_secrets source is configured (agent config `bgp_secrets`, --bgp-secrets)")]
    NoSource,
    #[error("cannot read BGP secrets {path}: {reason}")]
    Unreadable { path: PathBuf, reason: String },
    #[error("secret {name:?} key {key:?} is not in {path}")]
    Missing { path: PathBuf, name: String, key: String },
    #[error("secret {name:?} key {key:?}: {reason}")]
    Invalid { name: String, key: String, reason: String },
}

/// One reconcile's view of the `bgp_secrets` source.
#[derive(Debug)]
pub enum Secrets {
    None,
    /// A JSON file, read once per reconcile (or why it could not be).
    File {
        path: PathBuf,
        map: Result<BTreeMap<String, BTreeMap<String, String>>, String>,
    },
    /// A directory of `<name>/<key>` files, read per lookup.
    Dir(PathBuf),
}

/// A secret name or key as a path segment: no separators, no `.`/`..`, so a
/// BGPPeer cannot read files outside the secrets directory.
fn safe_segment(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl Secrets {
    /// Open the source named by the agent config (`None`: no source).
    pub fn open(source: Option<&Path>) -> Secrets {
        let Some(path) = source else { return Secrets::None };
        if path.is_dir() {
            return Secrets::Dir(path.to_path_buf());
        }
        let map = std::fs::read(path).map_err(|e| e.to_string()).and_then(|bytes| {
            // Only where: serde_json's message quotes the value it found
            // (`invalid type: string "…"`), which may be a password.
            serde_json::from_slice(&bytes).map_err(|e| {
                format!("not a JSON object of objects of strings (line {}, column {})", e.line(), e.column())
            })
        });
        Secrets::File { path: path.to_path_buf(), map }
    }

    /// The password `r` points at.
    pub fn password(&self, r: &SecretKeyRef) -> Result<Password, SecretError> {
        let invalid =
            |reason: String| SecretError::Invalid { name: r.name.clone(), key: r.key.clone(), reason };
        let raw =
            match self {
                Secrets::None => return Err(SecretError::NoSource),
                Secrets::File { path, map } => {
                    let map = map.as_ref().map_err(|reason| SecretError::Unreadable {
                        path: path.clone(),
                        reason: reason.clone(),
                    })?;
                    map.get(&r.name).and_then(|s| s.get(&r.key)).cloned().ok_or_else(|| {
                        SecretError::Missing { path: path.clone(), name: r.name.clone(), key: r.key.clone() }
                    })?
                }
                Secrets::Dir(dir) => {
                    if !safe_segment(&r.name) || !safe_segment(&r.key) {
                        return Err(invalid("name and key must be [A-Za-z0-9._-]+ (not . or ..)".into()));
                    }
                    let file = dir.join(&r.name).join(&r.key);
                    match std::fs::read(&file) {
                        Ok(bytes) => {
                            let mut s = String::from_utf8(bytes).map_err(|_| invalid("not UTF-8".into()))?;
                            if s.ends_with('\n') {
                                s.pop();
                                if s.ends_with('\r') {
                                    s.pop();
                                }
                            }
                            s
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                            return Err(SecretError::Missing {
                                path: dir.clone(),
                                name: r.name.clone(),
                                key: r.key.clone(),
                            })
                        }
                        Err(e) => return Err(SecretError::Unreadable { path: file, reason: e.to_string() }),
                    }
                }
            };
        Password::new(&raw).map_err(invalid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(name: &str, key: &str) -> SecretKeyRef {
        SecretKeyRef { name: name.into(), key: key.into() }
    }

    /// serde_json's own message quotes the value it did not expect: a
    /// password written one level too high must not reach the error (the
    /// agent logs it as a problem).
    #[test]
    fn a_malformed_secrets_file_is_reported_without_its_values() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets.json");
        for text in [r#"{"tor": "t0rpass-secret"}"#, r#"{"tor": {"password": 4242424242}}"#] {
            std::fs::write(&path, text).unwrap();
            let e = Secrets::open(Some(&path)).password(&r("tor", "password")).unwrap_err().to_string();
            assert!(e.contains("line 1"), "{e}");
            assert!(!e.contains("t0rpass") && !e.contains("4242424242"), "{e}");
        }
    }

    #[test]
    fn passwords_bird_cannot_take_are_refused_without_showing_them() {
        for (bad, why) in [
            ("", "empty"),
            ("pa\"ss", "double quote"),
            ("pa\\ss", "backslash"),
            ("pa\nss", "U+000A"),
            ("pässword", "U+00E4"),
        ] {
            let e = Password::new(bad).unwrap_err();
            assert!(e.contains(why), "{bad:?}: {e}");
            assert!(bad.is_empty() || !e.contains(bad), "{e}");
        }
        let long = "x".repeat(81);
        assert!(Password::new(&long).unwrap_err().contains("at most 80"));
        let p = Password::new(&"y".repeat(80)).unwrap();
        assert_eq!(p.expose().len(), 80);
        assert_eq!(format!("{p:?}"), "Password(<redacted>)");
        assert_eq!(Password::new("s3cret pass!").unwrap().expose(), "s3cret pass!");
    }

    #[test]
    fn json_file_and_directory_sources() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secrets.json");
        std::fs::write(&file, r#"{"tor": {"password": "t0rpass", "bad": "a\"b"}}"#).unwrap();
        let s = Secrets::open(Some(&file));
        assert_eq!(s.password(&r("tor", "password")).unwrap().expose(), "t0rpass");
        assert!(matches!(s.password(&r("tor", "other")), Err(SecretError::Missing { .. })));
        assert!(matches!(s.password(&r("nope", "password")), Err(SecretError::Missing { .. })));
        let e = s.password(&r("tor", "bad")).unwrap_err().to_string();
        assert!(e.contains("double quote") && !e.contains("a\"b"), "{e}");

        std::fs::write(&file, "{\"tor\": [\"t0rpass\"]}").unwrap();
        let e = Secrets::open(Some(&file)).password(&r("tor", "password")).unwrap_err().to_string();
        assert!(e.contains("not a JSON object") && !e.contains("t0rpass"), "{e}");
        let e = Secrets::open(Some(&dir.path().join("absent.json"))).password(&r("a", "b")).unwrap_err();
        assert!(matches!(e, SecretError::Unreadable { .. }), "{e}");
        assert_eq!(Secrets::open(None).password(&r("a", "b")).unwrap_err(), SecretError::NoSource);

        let d = dir.path().join("secrets.d");
        std::fs::create_dir_all(d.join("tor")).unwrap();
        std::fs::write(d.join("tor/password"), "dirpass\n").unwrap();
        std::fs::write(dir.path().join("outside"), "leak").unwrap();
        let s = Secrets::open(Some(&d));
        assert_eq!(s.password(&r("tor", "password")).unwrap().expose(), "dirpass");
        assert!(matches!(s.password(&r("tor", "x")), Err(SecretError::Missing { .. })));
        for (n, k) in [("..", "outside"), ("tor", "../../outside"), ("tor/..", "x")] {
            assert!(matches!(s.password(&r(n, k)), Err(SecretError::Invalid { .. })), "{n}/{k}");
        }
    }
}
