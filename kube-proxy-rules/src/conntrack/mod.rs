//! Stale UDP/SCTP flows after endpoints move: the conntrack cleanup
//! kube-proxy runs after each successful sync, in either proxy mode (the
//! entries are the kernel's, not a backend's), driven by the sync loop
//! ([`crate::syncer::Syncer::conntrack`]).
//!
//! * [`flows`]: conntrack entries ([`flows::Flow`]) and the typed filters
//!   that call them stale ([`flows::FlowFilter`]).
//! * [`netlink`]: the table through ctnetlink (dump, delete by tuple), in
//!   a given network namespace; typed errors, no `conntrack` binary.
//! * [`cleanup`]: which filters a change of the synced state calls for,
//!   the remembered (persisted) state, and the cleanup itself
//!   ([`cleanup::ConntrackCleanup`]).

pub mod cleanup;
pub mod flows;
pub mod netlink;

pub use cleanup::{CleanupError, CleanupReport, ConntrackCleanup, FlowTable, Snapshot};
pub use flows::{Flow, FlowFilter};
pub use netlink::{ConntrackError, ConntrackSocket};
