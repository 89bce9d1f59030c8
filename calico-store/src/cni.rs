//! Store failures as CNI errors (feature `cni`): the one mapping both plugins
//! (`calico`, `calico-ipam`) use, so the same failure carries the same code
//! whichever of them reports it.
//!
//! * unreachable or hung store, compare-and-swap contention → 11 (try again
//!   later: the condition is transient, the runtime retries);
//! * bad datastore configuration → 7 (invalid config);
//! * a local file the store cannot read or write → 5 (I/O failure);
//! * a document that does not decode → 100 (Calico's own code: needs an
//!   operator, retrying does not help).

use cni_proto::CniError;

use crate::StoreError;

/// Calico's code for its own failures.
pub const ERR_CALICO: u32 = 100;

/// A compare-and-swap loop that kept conflicting: transient, code 11.
impl From<crate::retry::Exhausted> for CniError {
    fn from(e: crate::retry::Exhausted) -> CniError {
        CniError::try_again_later(e.to_string(), "")
    }
}

/// `e`, met while doing `what`, as a CNI error.
pub fn store_error(what: &str, e: StoreError) -> CniError {
    let msg = format!("{what}: {e}");
    match e {
        StoreError::Unavailable(_) | StoreError::Conflict { .. } => CniError::try_again_later(msg, ""),
        StoreError::Config(_) => CniError::invalid_config(msg, ""),
        StoreError::Io { .. } => CniError::io(msg, ""),
        StoreError::Corrupt { .. } => CniError::plugin(ERR_CALICO, msg, ""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes() {
        assert_eq!(store_error("x", StoreError::Unavailable("down".into())).code, 11);
        assert_eq!(store_error("x", StoreError::Conflict { key: "k".into() }).code, 11);
        assert_eq!(store_error("x", StoreError::Config("bad".into())).code, 7);
        let io = StoreError::io("/p", std::io::Error::other("disk"));
        assert_eq!(store_error("x", io).code, 5);
        let e = store_error("write pod record", StoreError::Corrupt { key: "/k".into(), reason: "r".into() });
        assert_eq!(e.code, 100);
        assert!(e.msg.starts_with("write pod record: ") && e.msg.contains("/k"));
    }
}
