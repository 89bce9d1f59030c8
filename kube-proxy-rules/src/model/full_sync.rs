//! When a sync must be full, in both proxy modes (kube-proxy's
//! `needFullSync` and `FullSyncPeriod`), and why: every decision about it is
//! made on a [`FullSyncReason`], never on its text.

use std::time::{Duration, Instant};

/// kube-proxy's `proxyutil.FullSyncPeriod`: however well partial syncs go,
/// a full one is forced at least this often (in both modes), so that
/// anything partial syncs cannot see is repaired.
pub const FULL_SYNC_PERIOD: Duration = Duration::from_secs(3600);

/// Why a sync is a full one. The text (`Display`) is what the logs say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FullSyncReason {
    /// Nothing is known yet about what the kernel holds.
    FirstSync,
    /// The previous sync failed (its error's text): the kernel may differ
    /// from what was remembered.
    SyncFailed(String),
    /// What the backend watches to notice that someone flushed its rules is
    /// gone (iptables: a KUBE-PROXY-CANARY chain; nftables: the table, or
    /// its dispatch rule). The text is the backend's description of it.
    CanaryGone(&'static str),
    /// The node's addresses changed: NodePorts are served on them.
    NodeAddressesChanged,
    /// The node's zone changed: topology hints pick other endpoints.
    NodeZoneChanged,
    /// iptables large-cluster mode flipped: every endpoint rule changes text.
    LargeClusterModeChanged,
    /// Deleting stale chains failed (nftables): a full sync lists what the
    /// table really has.
    StaleChainsNotDeleted { chains: usize, error: String },
    /// The last full sync is older than this period ([`FullSyncs::period`]).
    PeriodElapsed(Duration),
}

impl std::fmt::Display for FullSyncReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FullSyncReason::FirstSync => f.write_str("first sync"),
            FullSyncReason::SyncFailed(e) => write!(f, "previous sync failed: {e}"),
            FullSyncReason::CanaryGone(what) => f.write_str(what),
            FullSyncReason::NodeAddressesChanged => f.write_str("node addresses changed"),
            FullSyncReason::NodeZoneChanged => f.write_str("node zone changed"),
            FullSyncReason::LargeClusterModeChanged => {
                f.write_str("large-cluster mode changed (every endpoint rule changes text)")
            }
            FullSyncReason::StaleChainsNotDeleted { chains, error } => {
                write!(f, "deleting {chains} stale chain(s): {error}")
            }
            FullSyncReason::PeriodElapsed(period) => write!(f, "last full sync more than {period:?} ago"),
        }
    }
}

/// When a sync must be full, the same in both proxy modes: the first sync, a
/// sync after a failed one, whatever [`FullSyncs::force`] names (canary gone,
/// node addresses changed), and once the last full sync is
/// [`FullSyncs::period`] old.
#[derive(Debug)]
pub struct FullSyncs {
    need: Option<FullSyncReason>,
    /// A full sync is forced when the last one is this old ([`FULL_SYNC_PERIOD`]).
    pub period: Duration,
    last: Option<Instant>,
}

impl Default for FullSyncs {
    fn default() -> Self {
        FullSyncs { need: Some(FullSyncReason::FirstSync), period: FULL_SYNC_PERIOD, last: None }
    }
}

impl FullSyncs {
    /// Make the next sync a full one (the first reason given is kept).
    pub fn force(&mut self, reason: FullSyncReason) {
        self.need.get_or_insert(reason);
    }

    /// The reason a full sync was asked for, if one was.
    pub fn pending(&self) -> Option<&FullSyncReason> {
        self.need.as_ref()
    }

    /// Why the next sync must be full, if it must: a reason asked for, else
    /// the period.
    pub fn due(&self) -> Option<FullSyncReason> {
        self.need.clone().or_else(|| {
            self.last
                .is_some_and(|t| t.elapsed() >= self.period)
                .then_some(FullSyncReason::PeriodElapsed(self.period))
        })
    }

    /// A sync (full or not) succeeded, or its state was taken as applied.
    pub fn synced(&mut self, full: bool) {
        self.need = None;
        if full {
            self.last = Some(Instant::now());
        }
    }

    /// A sync failed: the kernel may differ from what was remembered, so
    /// only a full sync is safe next.
    pub fn failed(&mut self, e: &dyn std::fmt::Display) {
        self.need = Some(FullSyncReason::SyncFailed(e.to_string()));
    }
}
