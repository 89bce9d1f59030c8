//! The iptables backend: full and partial syncs (KEP-3453, kube-proxy's
//! MinimizeIPTablesRestore), each one `iptables-restore --noflush`
//! transaction.
//!
//! A full sync (at start, after a failed restore, when the canary chain is
//! gone, or when large-cluster mode flips and every SEP rule changes text:
//! [`Backend::full_sync_reason`]) ensures the jump rules and canary chains
//! and rewrites every chain. Later syncs rewrite the top-level chains (only
//! those whose content changed, unless [`IptablesBackend::minimize_top_level`]
//! is off) plus the chains of the services whose Service or endpoints
//! changed since the last successful sync ([`SyncPlan::changes`]); stale
//! chains found with iptables-save are flushed and deleted.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use crate::backend::{Backend, SyncError, SyncPlan};
use crate::config::NodeConfig;
use crate::iptables::ipt::{Iptables, IptablesError};
use crate::iptables::{
    render, IptablesConfig, RenderPlan, Rendered, TopLevelCache, UsedChains,
    LARGE_CLUSTER_ENDPOINTS_THRESHOLD,
};
use crate::model::{Changes, FullSyncReason, ProxyState};
use crate::names;
use crate::syncer::SyncReport;

/// What [`FullSyncReason::CanaryGone`] says in iptables mode.
pub const CANARY_GONE: &str = "canary chain KUBE-PROXY-CANARY is gone";

/// What an applied iptables sync did.
#[derive(Debug)]
pub struct IptablesOutcome {
    pub rendered: Rendered,
    /// How long the render took (the rest of the sync is applying it).
    pub render_time: std::time::Duration,
    /// Jump rules from the built-in chains added (full syncs only).
    pub jump_rules_added: usize,
}

/// What an iptables sync reports.
pub type IptablesSyncReport = SyncReport<IptablesOutcome>;

/// A failed iptables sync.
pub type IptablesSyncError = SyncError<IptablesError>;

/// What `--dry-run` shows: the payload and the chains that exist now.
#[derive(Debug)]
pub struct IptablesPreview {
    pub rendered: Rendered,
    pub existing_nat: BTreeSet<String>,
    pub existing_filter: BTreeSet<String>,
}

fn ipt_err(what: &str) -> impl FnOnce(IptablesError) -> IptablesSyncError + '_ {
    SyncError::tool(what)
}

fn large_cluster(state: &ProxyState) -> bool {
    state.total_endpoints() > LARGE_CLUSTER_ENDPOINTS_THRESHOLD
}

/// The iptables proxier of one family: its tools, settings, and what it
/// remembers of the rules it applied.
pub struct IptablesBackend {
    pub ipt: Iptables,
    pub cfg: IptablesConfig,
    /// Stale chains are looked for at most once per this period in large
    /// clusters (and the canary checked this often by `run`).
    pub sync_period: Duration,
    /// Leave unchanged top-level chains out of partial payloads (on by
    /// default). Off = kube-proxy's partial payloads byte for byte.
    pub minimize_top_level: bool,
    applied_top_level: HashMap<String, u64>,
    /// Each service's part of the top-level chains as applied: a partial
    /// sync then renders from the changed services alone.
    top_cache: TopLevelCache,
    last_large_cluster: Option<bool>,
    last_cleanup: Option<Instant>,
}

impl IptablesBackend {
    pub fn new(ipt: Iptables, cfg: IptablesConfig, sync_period: Duration) -> Self {
        IptablesBackend {
            ipt,
            cfg,
            sync_period,
            minimize_top_level: true,
            applied_top_level: HashMap::new(),
            top_cache: TopLevelCache::default(),
            last_large_cluster: None,
            last_cleanup: None,
        }
    }

    /// The nat chains that may be stale (every existing chain but those the
    /// state is known to use, see [`UsedChains`]); None when not listed.
    fn existing_chains(
        &mut self,
        large: bool,
        state: &ProxyState,
    ) -> Result<Option<BTreeSet<String>>, IptablesSyncError> {
        // iptables-save is slow on big rule sets: in large clusters clean up
        // stale chains at most once per sync period (they are unreferenced).
        if large && self.last_cleanup.is_some_and(|t| t.elapsed() < self.sync_period) {
            return Ok(None);
        }
        let used = UsedChains::of(state, &self.cfg);
        let chains = self
            .ipt
            .chains_where("nat", |c| !used.contains(c))
            .map_err(ipt_err("listing nat chains (iptables-save -t nat)"))?;
        Ok(Some(chains))
    }

    /// What one sync renders from `plan`, with the nat chains that exist now.
    fn render_plan<'a>(
        &'a self,
        plan: &'a SyncPlan<'_>,
        existing_nat_chains: Option<&'a BTreeSet<String>>,
    ) -> RenderPlan<'a> {
        RenderPlan {
            full: plan.is_full(),
            changed: Some(&plan.changes.updated),
            existing_nat_chains,
            applied_top_level: self.minimize_top_level.then_some(&self.applied_top_level),
            removed: Some(&plan.changes.removed),
            top_cache: self.minimize_top_level.then_some(&self.top_cache),
        }
    }
}

impl Backend for IptablesBackend {
    type ToolError = IptablesError;
    type Prelude = ();
    type Outcome = IptablesOutcome;
    type Preview = IptablesPreview;

    fn node(&self) -> &NodeConfig {
        &self.cfg.node
    }
    fn node_mut(&mut self) -> &mut NodeConfig {
        &mut self.cfg.node
    }

    /// The services whose chains a partial sync writes: a removed service's
    /// chains go with the stale-chain cleanup, it is not counted.
    fn changed_services(changes: &Changes) -> usize {
        changes.updated.len()
    }

    fn full_sync_reason(&self, state: &ProxyState) -> Option<FullSyncReason> {
        let large = large_cluster(state);
        self.last_large_cluster.is_some_and(|l| l != large).then_some(FullSyncReason::LargeClusterModeChanged)
    }

    fn before_sync(&mut self) -> ((), Option<FullSyncReason>) {
        ((), None)
    }

    fn sync(
        &mut self,
        state: &ProxyState,
        plan: &SyncPlan<'_>,
        (): (),
    ) -> Result<IptablesOutcome, IptablesSyncError> {
        let large = large_cluster(state);
        let mut jump_rules_added = 0;
        if plan.is_full() {
            // Outside the restore: we must not own the built-in chains.
            jump_rules_added = self.ipt.ensure_jump_rules().map_err(ipt_err("ensuring jump rules"))?;
            self.ipt.ensure_canary().map_err(ipt_err("creating the canary chains"))?;
            if self.cfg.localhost_nodeports() {
                self.ipt.enable_route_localnet().map_err(ipt_err("setting route_localnet"))?;
            }
        }
        let existing = self.existing_chains(large, state)?;
        let render_started = Instant::now();
        let mut rendered = render(state, &self.cfg, &self.render_plan(plan, existing.as_ref()))?;
        let render_time = render_started.elapsed();
        let what = if plan.is_full() { "full iptables-restore" } else { "partial iptables-restore" };
        self.ipt.restore(&rendered.payload).map_err(ipt_err(what))?;
        if existing.is_some() {
            self.last_cleanup = Some(Instant::now());
        }
        self.applied_top_level = rendered.top_level_hashes.clone();
        self.top_cache.commit(rendered.top_cache.take());
        self.last_large_cluster = Some(large);
        Ok(IptablesOutcome { rendered, render_time, jump_rules_added })
    }

    fn preview(
        &mut self,
        state: &ProxyState,
        plan: &SyncPlan<'_>,
    ) -> Result<IptablesPreview, IptablesSyncError> {
        let existing_nat =
            self.ipt.chains("nat").map_err(ipt_err("listing nat chains (iptables-save -t nat)"))?;
        let rendered = render(state, &self.cfg, &self.render_plan(plan, Some(&existing_nat)))?;
        let existing_filter =
            self.ipt.chains("filter").map_err(ipt_err("listing filter chains (iptables-save -t filter)"))?;
        Ok(IptablesPreview { rendered, existing_nat, existing_filter })
    }

    fn diff_view(&self, plan: &SyncPlan<'_>, preview: &IptablesPreview) -> String {
        diff_view(plan.full, Self::changed_services(plan.changes), preview)
    }

    fn mark_applied(&mut self, state: &ProxyState, preview: &IptablesPreview, _full: bool) {
        self.applied_top_level = preview.rendered.top_level_hashes.clone();
        self.top_cache.commit(preview.rendered.top_cache.clone());
        self.last_large_cluster = Some(large_cluster(state));
    }

    fn check_canary(&mut self) -> Result<Option<FullSyncReason>, IptablesSyncError> {
        let missing = self.ipt.canary_missing().map_err(ipt_err("checking the canary chains"))?;
        Ok(missing.then_some(FullSyncReason::CanaryGone(CANARY_GONE)))
    }

    fn render_time(o: &IptablesOutcome) -> Option<std::time::Duration> {
        Some(o.render_time)
    }

    fn rule_counts(o: &IptablesOutcome) -> crate::backend::RuleCounts {
        let r = &o.rendered;
        crate::backend::RuleCounts {
            total: vec![("filter", r.filter_rules), ("nat", r.nat_rules + r.skipped_nat_rules)],
            written: vec![("filter", r.filter_rules), ("nat", r.nat_rules)],
        }
    }

    fn summary(r: &IptablesSyncReport) -> String {
        let kind = match &r.full {
            Some(why) => format!("full: {why}"),
            None => "partial".to_string(),
        };
        format!(
            "synced ({kind}): {} services changed, {} chains written, {} stale chains deleted",
            r.changed_services,
            r.outcome.rendered.written_service_chains,
            r.outcome.rendered.deleted_chains.len(),
        )
    }
}

/// A diff view of a payload: per table, which chains it rewrites (`~`),
/// creates (`+`) or deletes (`-`), and how many rules each gets.
pub fn diff_view(
    full: Option<&FullSyncReason>,
    changed_services: usize,
    preview: &IptablesPreview,
) -> String {
    let (rendered, existing_filter) = (&preview.rendered, &preview.existing_filter);
    let mut out = String::new();
    match full {
        Some(why) => out.push_str(&format!("# full sync ({why})\n")),
        None => out.push_str(&format!("# partial sync: {changed_services} service(s) changed\n")),
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
            if t == "filter" { existing_filter.contains(name) } else { preview.existing_nat.contains(name) };
        let mark = if exists { '~' } else { '+' };
        out.push_str(&format!("{mark} {t} {name} ({rules} rules)\n"));
    }
    for c in &rendered.deleted_chains {
        out.push_str(&format!("- nat {c} (stale)\n"));
    }
    let kept = preview
        .existing_nat
        .iter()
        .filter(|c| names::is_service_chain(c))
        .filter(|c| !counts.iter().any(|(t, n, _)| t == "nat" && n == *c) && !deleted.contains(c.as_str()))
        .count();
    out.push_str(&format!("# {kept} service chain(s) left as they are\n"));
    out
}
