//! Spec versions as a runtime compares them.
//!
//! TODO(h6): switch to `cni_proto::version::Version` once cni-proto exports it;
//! this is the minimal subset the runtime side needs meanwhile.

/// The highest spec version this runtime implements.
pub const CURRENT: &str = "1.1.0";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl Version {
    pub const V0_4_0: Version = Version { major: 0, minor: 4, patch: 0 };
    pub const V1_0_0: Version = Version { major: 1, minor: 0, patch: 0 };
    pub const V1_1_0: Version = Version { major: 1, minor: 1, patch: 0 };

    /// `a.b.c`; an empty string is the implicit `0.1.0`.
    pub fn parse(s: &str) -> Option<Version> {
        if s.is_empty() {
            return Some(Version { major: 0, minor: 1, patch: 0 });
        }
        let mut it = s.split('.').map(|p| p.parse::<u32>().ok());
        let v = Version { major: it.next()??, minor: it.next()??, patch: it.next()?? };
        if it.next().is_some() {
            return None;
        }
        Some(v)
    }

    /// `true` when `s` parses and is at least `floor`.
    pub fn at_least(s: &str, floor: Version) -> bool {
        Version::parse(s).is_some_and(|v| v >= floor)
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_order() {
        assert!(Version::parse("0.3.1").unwrap() < Version::parse("0.4.0").unwrap());
        assert!(Version::parse("1.1.0").unwrap() > Version::V1_0_0);
        assert_eq!(Version::parse(""), Version::parse("0.1.0"));
        assert_eq!(Version::parse("1.0"), None);
        assert_eq!(Version::parse("x.1.0"), None);
        assert!(Version::at_least("1.0.0", Version::V0_4_0));
    }
}
