//! How the plugin's failures map onto CNI error codes.

use calico_store::StoreError;
use cni_proto::CniError;

/// Calico's own error code (`calico` uses 100 for everything it reports).
pub const ERR_CALICO: u32 = 100;
/// A kernel (netlink, sysctl) operation failed or a CHECK found a mismatch.
pub const ERR_DATAPLANE: u32 = 100;

/// A netlink/sysctl failure while doing `what`.
pub fn dataplane_error(what: &str, e: netlink_util::Error) -> CniError {
    CniError::plugin(ERR_DATAPLANE, format!("{what}: {e}"), "")
}

/// A datastore failure while doing `what`: unreachable or contended → 11
/// (try again later), bad configuration → 7, local I/O → 5, anything else 100.
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
    fn store_codes() {
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
