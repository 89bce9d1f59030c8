//! One trait for the two proxy modes, as kube-proxy's iptables and nftables
//! proxiers implement one `Provider`: a [`Backend`] renders the model's
//! state into its payload, applies it, remembers what it applied, and
//! watches its canary. Everything the two modes share (when a sync must be
//! full, which services changed, what is remembered after a failure) is the
//! one loop in [`crate::syncer::Syncer`], generic over this trait.
//!
//! Implemented by [`crate::iptables::IptablesBackend`] (iptables-restore
//! payloads, partial syncs) and [`crate::nftables::NftablesBackend`] (`nft -f`
//! transactions, incremental syncs).

use crate::config::NodeConfig;
use crate::model::{Changes, FullSyncReason, ProxyState};
use crate::syncer::SyncReport;
use crate::validate::UnsafeText;

/// What the loop decided for one sync, handed to the backend.
#[derive(Debug, Clone, Copy)]
pub struct SyncPlan<'a> {
    /// Why this sync is full; None: only what changed is written.
    pub full: Option<&'a FullSyncReason>,
    /// What changed since the last applied sync ([`Changes::updated`]: the
    /// services whose rules are rewritten when the sync is not full).
    pub changes: &'a Changes,
}

impl SyncPlan<'_> {
    pub fn is_full(&self) -> bool {
        self.full.is_some()
    }
}

/// A failed sync, in either mode: a tool failed (what the sync was doing,
/// and the tool's own error), or the payload writer refused a name.
#[derive(Debug, thiserror::Error)]
pub enum SyncError<E: std::error::Error + 'static> {
    #[error("{what}: {source}")]
    Tool { what: String, source: E },
    /// The payload writer refused a name or comment (see [`crate::validate`]).
    #[error("{0}")]
    Refused(#[from] UnsafeText),
}

impl<E: std::error::Error + 'static> SyncError<E> {
    /// `map_err(SyncError::tool("what was being done"))`.
    pub fn tool(what: impl Into<String>) -> impl FnOnce(E) -> Self {
        move |source| SyncError::Tool { what: what.into(), source }
    }
}

/// One proxy mode's rules for one IP family.
pub trait Backend {
    /// The error of the tool the backend runs (`iptables*` or `nft`).
    type ToolError: std::error::Error + 'static;
    /// What the backend does before every sync is planned, and hands to
    /// that sync (nftables: the stale chains it deleted).
    type Prelude;
    /// What an applied sync did, beyond what [`SyncReport`] says of every sync.
    type Outcome: std::fmt::Debug;
    /// What a sync would write (`--dry-run`).
    type Preview;

    /// The node settings the rules are written from.
    fn node(&self) -> &NodeConfig;
    fn node_mut(&mut self) -> &mut NodeConfig;

    /// How many services the logs count as changed. The default, every
    /// updated and every removed service, is nftables' (a removed service's
    /// objects go in the transaction); iptables counts the services whose
    /// chains it writes (a removed one's go with the stale-chain cleanup).
    fn changed_services(changes: &Changes) -> usize {
        changes.updated.len() + changes.removed.len()
    }

    /// A reason of the backend's own for this sync to be full, asked after
    /// a pending reason and before the full-sync period.
    fn full_sync_reason(&self, _state: &ProxyState) -> Option<FullSyncReason> {
        None
    }

    /// Housekeeping before the sync is planned. A reason returned makes
    /// this sync full (the housekeeping failed and only a full sync can
    /// repair what it left).
    fn before_sync(&mut self) -> (Self::Prelude, Option<FullSyncReason>);

    /// Render and apply one sync, and on success remember what was applied.
    fn sync(
        &mut self,
        state: &ProxyState,
        plan: &SyncPlan<'_>,
        prelude: Self::Prelude,
    ) -> Result<Self::Outcome, SyncError<Self::ToolError>>;

    /// Render what `plan` would write, without applying anything.
    fn preview(
        &mut self,
        state: &ProxyState,
        plan: &SyncPlan<'_>,
    ) -> Result<Self::Preview, SyncError<Self::ToolError>>;

    /// The `--dry-run` text of a preview.
    fn diff_view(&self, plan: &SyncPlan<'_>, preview: &Self::Preview) -> String;

    /// Remember a preview as if it had been applied (`run --dry-run`, so the
    /// next preview is relative to it).
    fn mark_applied(&mut self, state: &ProxyState, preview: &Self::Preview, full: bool);

    /// Check the canary: Some(reason) when it is gone (the next sync must be full).
    fn check_canary(&mut self) -> Result<Option<FullSyncReason>, SyncError<Self::ToolError>>;

    /// The log line of a sync that succeeded.
    fn summary(report: &SyncReport<Self::Outcome>) -> String;

    /// How long a sync's render took (the rest was applying it).
    fn render_time(_outcome: &Self::Outcome) -> Option<std::time::Duration> {
        None
    }

    /// The rules a sync left per table, for the metrics (kube-proxy's
    /// `sync_proxy_rules_iptables_total` and `_last`); none by default.
    fn rule_counts(_outcome: &Self::Outcome) -> RuleCounts {
        RuleCounts::default()
    }

    /// A problem a sync met without failing, logged as an error before its
    /// summary.
    fn problem(_outcome: &Self::Outcome) -> Option<String> {
        None
    }

    /// After a one-shot `sync`: what no later sync will do; the line to log,
    /// if something was done.
    fn finish_one_shot(&mut self) -> Option<String> {
        None
    }
}

/// Rule counts per table after a sync (iptables mode; kube-proxy exports
/// none for nftables).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleCounts {
    /// (table, rules the kernel has from us after the sync).
    pub total: Vec<(&'static str, usize)>,
    /// (table, rules this sync wrote).
    pub written: Vec<(&'static str, usize)>,
}

/// What `run` and `sync` take from a sync that succeeded.
#[derive(Debug, Clone)]
pub struct SyncDone {
    /// The log line.
    pub line: String,
    pub full: bool,
    pub rules: RuleCounts,
    /// The render's share of the sync (the rest is the apply).
    pub render: Option<std::time::Duration>,
}
