//! CNI spec versions, negotiation and per-command floors.

use crate::error::CniError;

/// The version this library implements (printed by VERSION).
pub const CURRENT: &str = "1.1.0";

/// Every config version a plugin built on this crate accepts (exact match, as skel does).
pub const SUPPORTED: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// What a config without `cniVersion` means (spec: decodes as 0.1.0).
pub const IMPLICIT: &str = "0.1.0";

/// A parsed `major.minor.patch` spec version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl Version {
    pub const V0_4_0: Version = Version { major: 0, minor: 4, patch: 0 };
    pub const V1_0_0: Version = Version { major: 1, minor: 0, patch: 0 };
    pub const V1_1_0: Version = Version { major: 1, minor: 1, patch: 0 };

    /// Parse `X.Y.Z` (missing components count as 0, like the Go library).
    pub fn parse(s: &str) -> Option<Version> {
        let mut it = s.split('.');
        let major = it.next()?.parse().ok()?;
        let minor = match it.next() {
            Some(m) => m.parse().ok()?,
            None => 0,
        };
        let patch = match it.next() {
            Some(p) => p.parse().ok()?,
            None => 0,
        };
        if it.next().is_some() {
            return None;
        }
        Some(Version { major, minor, patch })
    }

    /// 0.3.x and 0.4.0 results carry `ips[].version`; 1.x results do not.
    pub fn has_ip_version_field(&self) -> bool {
        *self < Version::V1_0_0
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// Accept `cfg` only if it is one of [`SUPPORTED`] (exact string, like skel's
/// reconciler); else code 1 `incompatible CNI versions`.
pub fn negotiate(cfg: &str) -> Result<Version, CniError> {
    let supported = SUPPORTED.contains(&cfg);
    match Version::parse(cfg) {
        Some(v) if supported => Ok(v),
        _ => Err(CniError::incompatible_version(
            "incompatible CNI versions",
            format!("config is {cfg:?}, plugin supports {SUPPORTED:?}"),
        )),
    }
}

/// The floor a command puts on the config version: CHECK needs 0.4.0,
/// STATUS and GC need 1.1.0 (code 1 `config version does not allow X`).
pub fn check_floor(command: &str, cfg: &str, floor: Version) -> Result<(), CniError> {
    match Version::parse(cfg) {
        Some(v) if v >= floor => Ok(()),
        _ => Err(CniError::incompatible_version(
            format!("config version does not allow {command}"),
            format!("config is {cfg:?}, {command} needs {floor} or later"),
        )),
    }
}

/// The VERSION command's output.
pub fn version_info() -> serde_json::Value {
    serde_json::json!({ "cniVersion": CURRENT, "supportedVersions": SUPPORTED })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_order() {
        assert_eq!(Version::parse("1.1.0"), Some(Version::V1_1_0));
        assert_eq!(Version::parse("0.4"), Some(Version::V0_4_0));
        assert!(Version::parse("0.3.1").unwrap() < Version::V0_4_0);
        assert!(Version::parse("1.0.0").unwrap() < Version::V1_1_0);
        for bad in ["", "a.b.c", "1.0.0.0", "1..0", "-1.0.0", " 1.0.0", "1.0.x"] {
            assert_eq!(Version::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn negotiation_is_exact_membership() {
        for v in SUPPORTED {
            assert!(negotiate(v).is_ok(), "{v}");
        }
        for v in ["0.1.0", "0.2.0", "1.2.0", "1.0", "", "junk", "2.0.0"] {
            let e = negotiate(v).unwrap_err();
            assert_eq!(e.code, 1);
            assert_eq!(e.msg, "incompatible CNI versions");
            assert!(e.details.starts_with(&format!("config is {v:?}, plugin supports [")), "{}", e.details);
        }
    }

    #[test]
    fn floors() {
        assert!(check_floor("CHECK", "0.4.0", Version::V0_4_0).is_ok());
        assert!(check_floor("CHECK", "1.0.0", Version::V0_4_0).is_ok());
        let e = check_floor("CHECK", "0.3.1", Version::V0_4_0).unwrap_err();
        assert_eq!((e.code, e.msg.as_str()), (1, "config version does not allow CHECK"));
        assert_eq!(check_floor("STATUS", "1.0.0", Version::V1_1_0).unwrap_err().code, 1);
        assert_eq!(check_floor("GC", "junk", Version::V1_1_0).unwrap_err().code, 1);
        assert!(check_floor("GC", "1.1.0", Version::V1_1_0).is_ok());
    }

    #[test]
    fn version_output() {
        let v = version_info();
        assert_eq!(v["cniVersion"], "1.1.0");
        assert_eq!(v["supportedVersions"], serde_json::json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]));
    }
}
