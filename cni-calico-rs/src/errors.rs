//! How the plugin's failures map onto CNI error codes.

use cni_proto::CniError;

/// Calico's own error code (`calico` uses 100 for everything it reports).
pub use calico_store::cni::ERR_CALICO;
/// A kernel (netlink, sysctl) operation failed or a CHECK found a mismatch.
pub const ERR_DATAPLANE: u32 = 100;

/// A netlink/sysctl failure while doing `what`.
pub fn dataplane_error(what: &str, e: netlink_util::Error) -> CniError {
    CniError::plugin(ERR_DATAPLANE, format!("{what}: {e}"), "")
}

/// A datastore failure while doing `what` (the mapping calico-ipam shares).
pub use calico_store::cni::store_error;
