//! Operator commands behind `calicoctl ipam …` and `calicoctl ipam pool …`:
//! show, check, release, configure, gc, and IP pool management.
//!
//! Everything here works on a [`calico_store::Datastore`] (file store or etcd alike) and
//! returns plain data; the `calicoctl` binary only parses arguments and
//! prints. Writes are compare-and-swap commits, re-read and retried on
//! conflict, so operators can run these against a live cluster.
//!
//! * [`snapshot`]: one read of everything IPAM-related ([`Snapshot`]);
//! * [`show`](mod@show): utilization, one address, borrowed addresses;
//! * [`check`](mod@check): the consistency report ([`CheckReport`]);
//! * [`gc`](mod@gc): releasing one address by hand and leaks by proof;
//! * [`pools`]: IP pools and the global IPAM config;
//! * [`format`](mod@format): text tables shared with the binaries.
//!
//! Every item is re-exported here: callers use `ops::check`, `ops::Snapshot`.

pub mod check;
pub mod format;
pub mod gc;
pub mod pools;
pub mod show;
pub mod snapshot;
#[cfg(test)]
mod test_support;

use calico_store::resolve::ResolveError;
use calico_store::StoreError;
use thiserror::Error;

use crate::IpamError;

pub use check::{check, CheckReport, HandleMismatch, LeakedIp, UnknownNodeClaim};
pub use format::{table, with_percent};
pub use gc::{gc, release_ip, GcReport};
pub use pools::{configure, pool_add, pool_list, pool_set_disabled, NewPool};
pub use show::{borrowed, show, show_ip, Borrowed, IpInfo, Usage};
pub use snapshot::{Doc, Snapshot};

/// Why an operator command failed.
#[derive(Debug, Error)]
pub enum OpsError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Ipam(#[from] IpamError),
    /// No datastore configuration could be built from `--config`, the
    /// environment and the flags.
    #[error(transparent)]
    Datastore(#[from] ResolveError),
    /// The command line or environment is wrong.
    #[error("{0}")]
    Usage(String),
    /// The request cannot be done in the current state (message says why).
    #[error("{0}")]
    Refused(String),
}
