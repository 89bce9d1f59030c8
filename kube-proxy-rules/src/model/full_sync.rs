//! When a sync must be full, in both proxy modes (kube-proxy's
//! `needFullSync` and `FullSyncPeriod`).

use std::time::{Duration, Instant};

/// kube-proxy's `proxyutil.FullSyncPeriod`: however well partial syncs go,
/// a full one is forced at least this often (in both modes), so that
/// anything partial syncs cannot see is repaired.
pub const FULL_SYNC_PERIOD: Duration = Duration::from_secs(3600);

/// When a sync must be full, the same in both proxy modes: the first sync, a
/// sync after a failed one, whatever [`FullSyncs::force`] names (canary gone,
/// node addresses changed), and once the last full sync is
/// [`FullSyncs::period`] old.
#[derive(Debug)]
pub struct FullSyncs {
    need: Option<String>,
    /// A full sync is forced when the last one is this old ([`FULL_SYNC_PERIOD`]).
    pub period: Duration,
    last: Option<Instant>,
}

impl Default for FullSyncs {
    fn default() -> Self {
        FullSyncs { need: Some("first sync".into()), period: FULL_SYNC_PERIOD, last: None }
    }
}

impl FullSyncs {
    /// Make the next sync a full one (the first reason given is kept).
    pub fn force(&mut self, reason: &str) {
        self.need.get_or_insert_with(|| reason.to_string());
    }

    /// The reason a full sync was asked for, if one was.
    pub fn pending(&self) -> Option<&str> {
        self.need.as_deref()
    }

    /// Why the next sync must be full, if it must: a reason asked for, else
    /// the period.
    pub fn due(&self) -> Option<String> {
        self.need.clone().or_else(|| {
            self.last
                .is_some_and(|t| t.elapsed() >= self.period)
                .then(|| format!("last full sync more than {:?} ago", self.period))
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
        self.need = Some(format!("previous sync failed: {e}"));
    }
}
