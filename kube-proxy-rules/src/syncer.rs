//! The sync loop both proxy modes run, generic over their [`Backend`]:
//! decide whether a sync is full ([`FullSyncs`], then the backend's own
//! reason, then the period), find the services that changed since the last
//! applied sync ([`ChangeTracker`]), let the backend write and apply, and
//! remember the result: the new fingerprints after a success, a full sync
//! next after a failure (the changes are folded into the fingerprints that
//! were not applied, and the kernel may differ from what was remembered).

use std::net::IpAddr;

use crate::backend::{Backend, SyncError, SyncPlan};
use crate::model::{ChangeTracker, Changes, FullSyncReason, FullSyncs, ProxyState};

/// What a sync did.
#[derive(Debug)]
pub struct SyncReport<O> {
    /// Why it was full; None for a partial (iptables) or incremental
    /// (nftables) sync.
    pub full: Option<FullSyncReason>,
    /// Services counted as changed ([`Backend::changed_services`]).
    pub changed_services: usize,
    /// What the backend did.
    pub outcome: O,
}

impl<O> SyncReport<O> {
    pub fn is_full(&self) -> bool {
        self.full.is_some()
    }
    /// Why it was full, as the log says it (empty for a sync that was not).
    pub fn reason(&self) -> String {
        self.full.as_ref().map(ToString::to_string).unwrap_or_default()
    }
}

/// What a sync would do (`--dry-run`): the plan, the backend's preview and
/// its text. [`Syncer::mark_applied`] takes it as applied.
pub struct DryRun<P> {
    pub full: Option<FullSyncReason>,
    pub changes: Changes,
    pub preview: P,
    pub text: String,
}

/// The sync loop's memory between syncs, around one backend.
pub struct Syncer<B: Backend> {
    pub backend: B,
    /// When the next sync must be full.
    pub full_syncs: FullSyncs,
    changes: ChangeTracker,
}

impl<B: Backend> Syncer<B> {
    pub fn new(backend: B) -> Self {
        Syncer { backend, full_syncs: FullSyncs::default(), changes: ChangeTracker::default() }
    }

    /// Take the node's current addresses (`run` re-reads them before every
    /// sync). If they changed, the next sync is a full one: NodePorts are
    /// served on them (iptables' NodePort rules, nftables' `nodeport-ips`,
    /// are written by full syncs). Returns true if they changed.
    pub fn set_local_addresses(&mut self, addresses: Vec<IpAddr>) -> bool {
        if self.backend.node().local_addresses == addresses {
            return false;
        }
        self.backend.node_mut().local_addresses = addresses;
        self.force_full_sync(FullSyncReason::NodeAddressesChanged);
        true
    }

    /// Make the next sync a full one.
    pub fn force_full_sync(&mut self, reason: FullSyncReason) {
        self.full_syncs.force(reason);
    }

    /// Why the next sync is full, if it is.
    pub fn needs_full_sync(&self) -> Option<&FullSyncReason> {
        self.full_syncs.pending()
    }

    /// A vanished canary is what makes the next sync full (`run` then syncs
    /// without waiting for its retry delay).
    pub fn canary_forced(&self) -> bool {
        matches!(self.needs_full_sync(), Some(FullSyncReason::CanaryGone(_)))
    }

    /// Check the backend's canary; if it is gone, the next sync is full
    /// (the reason, which is returned).
    pub fn check_canary(&mut self) -> Result<Option<FullSyncReason>, SyncError<B::ToolError>> {
        let gone = self.backend.check_canary()?;
        if let Some(reason) = &gone {
            self.force_full_sync(reason.clone());
        }
        Ok(gone)
    }

    /// Decide full or not and find the changes, without side effects.
    fn plan(&self, state: &ProxyState) -> (Option<FullSyncReason>, Changes) {
        let full = self
            .full_syncs
            .pending()
            .cloned()
            .or_else(|| self.backend.full_sync_reason(state))
            .or_else(|| self.full_syncs.due());
        (full, self.changes.changes(state))
    }

    /// One sync, full or not, applied by the backend.
    pub fn sync(&mut self, state: &ProxyState) -> Result<SyncReport<B::Outcome>, SyncError<B::ToolError>> {
        let (prelude, forced) = self.backend.before_sync();
        if let Some(reason) = forced {
            self.force_full_sync(reason);
        }
        let (full, changes) = self.plan(state);
        let changed_services = B::changed_services(&changes);
        let result = self.backend.sync(state, &SyncPlan { full: full.as_ref(), changes: &changes }, prelude);
        match result {
            Ok(outcome) => {
                self.full_syncs.synced(full.is_some());
                self.changes.applied(changes.now);
                Ok(SyncReport { full, changed_services, outcome })
            }
            Err(e) => {
                // The changes are folded into fingerprints that were not
                // applied, and the kernel may differ from what the backend
                // remembers: only a full sync is safe.
                self.full_syncs.failed(&e);
                Err(e)
            }
        }
    }

    /// What the next sync would do, without applying anything.
    pub fn dry_run(&mut self, state: &ProxyState) -> Result<DryRun<B::Preview>, SyncError<B::ToolError>> {
        let (full, changes) = self.plan(state);
        let plan = SyncPlan { full: full.as_ref(), changes: &changes };
        let preview = self.backend.preview(state, &plan)?;
        let text = self.backend.diff_view(&plan, &preview);
        Ok(DryRun { full, changes, preview, text })
    }

    /// Take a dry run as applied (`run --dry-run`): the next one is relative to it.
    pub fn mark_applied(&mut self, state: &ProxyState, dry_run: DryRun<B::Preview>) {
        let full = dry_run.full.is_some();
        self.backend.mark_applied(state, &dry_run.preview, full);
        self.full_syncs.synced(full);
        self.changes.applied(dry_run.changes.now);
    }
}
