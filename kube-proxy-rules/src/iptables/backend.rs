//! Full and partial syncs (KEP-3453, kube-proxy's MinimizeIPTablesRestore).
//!
//! A full sync (at start, after a failed restore, when the canary chain is
//! gone, or when large-cluster mode flips and every SEP rule changes text)
//! ensures the jump rules and canary chains and rewrites every chain. Later
//! syncs rewrite the top-level chains plus the chains of the services whose
//! Service or endpoints changed since the last successful sync, found by
//! comparing a fingerprint of each service's ports and endpoints.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use crate::iptables::ipt::{Iptables, IptablesError};
use crate::iptables::{render, IptablesConfig, RenderPlan, Rendered};
use crate::model::{ChangeTracker, Changes, FullSyncReason, FullSyncs, ProxyState};
use crate::names;
use crate::validate::UnsafeText;

/// What [`FullSyncReason::CanaryGone`] says in iptables mode.
pub const CANARY_GONE: &str = "canary chain KUBE-PROXY-CANARY is gone";

/// What a sync did.
#[derive(Debug)]
pub struct SyncReport {
    /// Why it was full; None for a partial sync.
    pub full: Option<FullSyncReason>,
    pub changed_services: usize,
    pub rendered: Rendered,
    pub jump_rules_added: usize,
}

impl SyncReport {
    pub fn is_full(&self) -> bool {
        self.full.is_some()
    }
    /// Why it was full, as the log says it (empty for a sync that was not).
    pub fn reason(&self) -> String {
        self.full.as_ref().map(ToString::to_string).unwrap_or_default()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("{what}: {source}")]
    Iptables { what: String, source: IptablesError },
    /// The payload writer refused a name or comment (see [`crate::validate`]).
    #[error("{0}")]
    Refused(#[from] UnsafeText),
}

fn ipt_err(what: &str) -> impl FnOnce(IptablesError) -> SyncError + '_ {
    move |source| SyncError::Iptables { what: what.to_string(), source }
}

/// The sync loop's memory between syncs.
pub struct Syncer {
    pub ipt: Iptables,
    pub cfg: IptablesConfig,
    pub sync_period: Duration,
    /// Leave unchanged top-level chains out of partial payloads (on by
    /// default). Off = kube-proxy's partial payloads byte for byte.
    pub minimize_top_level: bool,
    applied_top_level: HashMap<String, u64>,
    /// When the next sync must be full.
    pub full_syncs: FullSyncs,
    changes: ChangeTracker,
    last_large_cluster: Option<bool>,
    last_cleanup: Option<Instant>,
}

impl Syncer {
    pub fn new(ipt: Iptables, cfg: IptablesConfig, sync_period: Duration) -> Self {
        Syncer {
            ipt,
            cfg,
            sync_period,
            minimize_top_level: true,
            applied_top_level: HashMap::new(),
            full_syncs: FullSyncs::default(),
            changes: ChangeTracker::default(),
            last_large_cluster: None,
            last_cleanup: None,
        }
    }

    /// Take the node's current addresses (`run` re-reads them before every
    /// sync). If they changed, the next sync is a full one: the NodePort
    /// rules depend on them. Returns true if they changed.
    pub fn set_local_addresses(&mut self, addresses: Vec<std::net::IpAddr>) -> bool {
        if self.cfg.node.local_addresses == addresses {
            return false;
        }
        self.cfg.node.local_addresses = addresses;
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

    /// Record `state` as applied without applying it (`run --dry-run`).
    pub fn mark_applied(&mut self, state: &ProxyState, rendered: &Rendered) {
        self.changes.applied(crate::model::fingerprints(state));
        self.applied_top_level = rendered.top_level_hashes.clone();
        self.full_syncs.synced(false);
        self.last_large_cluster =
            Some(state.total_endpoints() > crate::iptables::LARGE_CLUSTER_ENDPOINTS_THRESHOLD);
    }

    /// Check the canary chains; if one is gone, the next sync is full
    /// (the reason, which is returned).
    pub fn check_canary(&mut self) -> Result<Option<FullSyncReason>, SyncError> {
        let missing = self.ipt.canary_missing().map_err(ipt_err("checking the canary chains"))?;
        let gone = missing.then_some(FullSyncReason::CanaryGone(CANARY_GONE));
        if let Some(reason) = &gone {
            self.force_full_sync(reason.clone());
        }
        Ok(gone)
    }

    /// Decide full/partial and the changed services, without side effects.
    fn plan(&self, state: &ProxyState) -> (Option<FullSyncReason>, Changes) {
        let large = state.total_endpoints() > crate::iptables::LARGE_CLUSTER_ENDPOINTS_THRESHOLD;
        let mut full = self.full_syncs.pending().cloned();
        if full.is_none() && self.last_large_cluster.is_some_and(|l| l != large) {
            full = Some(FullSyncReason::LargeClusterModeChanged);
        }
        if full.is_none() {
            full = self.full_syncs.due();
        }
        (full, self.changes.changes(state))
    }

    fn existing_chains(&mut self, large: bool) -> Result<Option<BTreeSet<String>>, SyncError> {
        // iptables-save is slow on big rule sets: in large clusters clean up
        // stale chains at most once per sync period (they are unreferenced).
        if large && self.last_cleanup.is_some_and(|t| t.elapsed() < self.sync_period) {
            return Ok(None);
        }
        let chains = self.ipt.chains("nat").map_err(ipt_err("listing nat chains (iptables-save -t nat)"))?;
        Ok(Some(chains))
    }

    /// Render what the next sync would write, without applying it.
    pub fn preview(&mut self, state: &ProxyState) -> Result<(SyncPreview, Rendered), SyncError> {
        let (full, changes) = self.plan(state);
        let changed = &changes.updated;
        let existing =
            self.ipt.chains("nat").map_err(ipt_err("listing nat chains (iptables-save -t nat)"))?;
        let rendered = render(
            state,
            &self.cfg,
            &RenderPlan {
                full: full.is_some(),
                changed: Some(changed),
                existing_nat_chains: Some(&existing),
                applied_top_level: self.minimize_top_level.then_some(&self.applied_top_level),
            },
        )?;
        Ok((SyncPreview { full, changed_services: changed.len(), existing }, rendered))
    }

    /// One sync: full or partial, applied in one iptables-restore transaction.
    pub fn sync(&mut self, state: &ProxyState) -> Result<SyncReport, SyncError> {
        let (full, changes) = self.plan(state);
        let changed = &changes.updated;
        let large = state.total_endpoints() > crate::iptables::LARGE_CLUSTER_ENDPOINTS_THRESHOLD;
        let mut jump_rules_added = 0;
        let result = (|| {
            if full.is_some() {
                // Outside the restore: we must not own the built-in chains.
                jump_rules_added = self.ipt.ensure_jump_rules().map_err(ipt_err("ensuring jump rules"))?;
                self.ipt.ensure_canary().map_err(ipt_err("creating the canary chains"))?;
                if self.cfg.localhost_nodeports() {
                    self.ipt.enable_route_localnet().map_err(ipt_err("setting route_localnet"))?;
                }
            }
            let existing = self.existing_chains(large)?;
            let rendered = render(
                state,
                &self.cfg,
                &RenderPlan {
                    full: full.is_some(),
                    changed: Some(changed),
                    existing_nat_chains: existing.as_ref(),
                    applied_top_level: self.minimize_top_level.then_some(&self.applied_top_level),
                },
            )?;
            self.ipt.restore(&rendered.payload).map_err(ipt_err(if full.is_some() {
                "full iptables-restore"
            } else {
                "partial iptables-restore"
            }))?;
            if existing.is_some() {
                self.last_cleanup = Some(Instant::now());
            }
            Ok(rendered)
        })();
        match result {
            Ok(rendered) => {
                self.full_syncs.synced(full.is_some());
                let changed_services = changed.len();
                self.changes.applied(changes.now);
                self.applied_top_level = rendered.top_level_hashes.clone();
                self.last_large_cluster = Some(large);
                Ok(SyncReport { full, changed_services, rendered, jump_rules_added })
            }
            Err(e) => {
                // The changes are folded into `now` already: only a full sync is safe.
                self.full_syncs.failed(&e);
                Err(e)
            }
        }
    }
}

/// What `--dry-run` shows.
#[derive(Debug)]
pub struct SyncPreview {
    pub full: Option<FullSyncReason>,
    pub changed_services: usize,
    pub existing: BTreeSet<String>,
}

/// A diff view of a payload: per table, which chains it rewrites (`~`),
/// creates (`+`) or deletes (`-`), and how many rules each gets.
pub fn diff_view(preview: &SyncPreview, rendered: &Rendered, existing_filter: &BTreeSet<String>) -> String {
    let mut out = String::new();
    match &preview.full {
        Some(why) => out.push_str(&format!("# full sync ({why})\n")),
        None => out.push_str(&format!("# partial sync: {} service(s) changed\n", preview.changed_services)),
    }
    let mut table = "";
    let mut counts: Vec<(String, String, usize)> = Vec::new();
    let deleted: BTreeSet<&str> = rendered.deleted_chains.iter().map(String::as_str).collect();
    for line in rendered.payload.lines() {
        if let Some(t) = line.strip_prefix('*') {
            table = if t == "filter" { "filter" } else { "nat" };
        } else if let Some(c) = line.strip_prefix(':') {
            let name = c.split(' ').next().unwrap_or("").to_string();
            if !deleted.contains(name.as_str()) {
                counts.push((table.to_string(), name, 0));
            }
        } else if let Some(r) = line.strip_prefix("-A ") {
            let chain = r.split(' ').next().unwrap_or("");
            if let Some(e) = counts.iter_mut().rev().find(|(t, n, _)| t == table && n == chain) {
                e.2 += 1;
            }
        }
    }
    for (t, name, rules) in &counts {
        let exists =
            if t == "filter" { existing_filter.contains(name) } else { preview.existing.contains(name) };
        let mark = if exists { '~' } else { '+' };
        out.push_str(&format!("{mark} {t} {name} ({rules} rules)\n"));
    }
    for c in &rendered.deleted_chains {
        out.push_str(&format!("- nat {c} (stale)\n"));
    }
    let kept = preview
        .existing
        .iter()
        .filter(|c| names::is_service_chain(c))
        .filter(|c| !counts.iter().any(|(t, n, _)| t == "nat" && n == *c) && !deleted.contains(c.as_str()))
        .count();
    out.push_str(&format!("# {kept} service chain(s) left as they are\n"));
    out
}
