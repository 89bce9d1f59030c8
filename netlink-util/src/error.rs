//! The crate's error type. Every variant names the object that failed (a link
//! name, a route destination, a sysctl path) so that a CNI error message is
//! useful on its own.

use std::io;

/// What went wrong, typed so that callers can tolerate the expected cases
/// (`NotFound` on DEL, `Exists` on a re-ADD) without matching on strings.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The object does not exist (ENODEV, ESRCH, ENOENT, or EADDRNOTAVAIL on an
    /// address delete).
    #[error("{op} {what}: not found")]
    NotFound { op: &'static str, what: String },
    /// The object already exists (EEXIST).
    #[error("{op} {what}: already exists")]
    Exists { op: &'static str, what: String },
    /// Any other kernel refusal, with its errno and the kernel's extended ack
    /// message when it sent one.
    #[error("{op} {what}: {} (errno {errno}){}", nix::errno::Errno::from_raw(*errno).desc(), ext_msg(.message))]
    Kernel { op: &'static str, what: String, errno: i32, message: Option<String> },
    /// A system call or file operation outside netlink failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    /// The kernel sent something this crate cannot decode.
    #[error("decoding the netlink reply to {op} {what}: {message}")]
    Decode { op: &'static str, what: String, message: String },
    /// A bounded wait gave up.
    #[error("timed out after {waited_ms} ms waiting for {what}")]
    Timeout { what: String, waited_ms: u64 },
    /// The caller passed something unusable (bad interface name, MAC, ...).
    #[error("invalid {what}: {reason}")]
    Invalid { what: String, reason: String },
}

fn ext_msg(m: &Option<String>) -> String {
    match m {
        Some(m) if !m.is_empty() => format!(": {m}"),
        _ => String::new(),
    }
}

/// Shorthand used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Map a negative or positive errno from a netlink ack to the right variant.
    pub(crate) fn from_errno(errno: i32, op: &'static str, what: String, message: Option<String>) -> Error {
        match errno.abs() {
            libc::EEXIST => Error::Exists { op, what },
            libc::ENODEV | libc::ESRCH | libc::ENOENT => Error::NotFound { op, what },
            e => Error::Kernel { op, what, errno: e, message },
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Error {
        Error::Io { context: context.into(), source }
    }

    pub(crate) fn invalid(what: impl Into<String>, reason: impl Into<String>) -> Error {
        Error::Invalid { what: what.into(), reason: reason.into() }
    }

    /// True for [`Error::NotFound`].
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFound { .. })
    }

    /// True for [`Error::Exists`].
    pub fn is_exists(&self) -> bool {
        matches!(self, Error::Exists { .. })
    }

    /// The errno behind this error, when there is one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::NotFound { .. } => None,
            Error::Exists { .. } => Some(libc::EEXIST),
            Error::Kernel { errno, .. } => Some(*errno),
            Error::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_maps_to_typed_variants_and_names_the_object() {
        let e = Error::from_errno(-libc::EEXIST, "add route", "10.0.0.1/32".into(), None);
        assert!(e.is_exists());
        assert_eq!(e.to_string(), "add route 10.0.0.1/32: already exists");
        let e = Error::from_errno(-libc::ENODEV, "get link", "cali123".into(), None);
        assert!(e.is_not_found());
        assert!(e.to_string().contains("cali123"));
        let e = Error::from_errno(
            -libc::ENETUNREACH,
            "add route",
            "0.0.0.0/0".into(),
            Some("Nexthop has invalid gateway".into()),
        );
        assert_eq!(e.errno(), Some(libc::ENETUNREACH));
        let s = e.to_string();
        assert!(
            s.contains("0.0.0.0/0") && s.contains("Nexthop has invalid gateway") && s.contains("errno"),
            "{s}"
        );
    }
}
