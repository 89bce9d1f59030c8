//! The nftables backend: full and incremental syncs of table `ip
//! kube-proxy`, one `nft -f` transaction each (kube-proxy's nftables
//! `syncProxyRules`).
//!
//! * A full sync (the first one, after a failed transaction, or when the
//!   table was deleted or flushed behind our back) sets the table up, flushes
//!   every set and map and rewrites every chain; chains and affinity sets an
//!   earlier run left behind are found with `nft list` and cleaned up.
//! * A full sync is also forced when the node's addresses changed
//!   ([`crate::syncer::Syncer::set_local_addresses`]: `nodeport-ips` is
//!   written by full syncs) and once the last one is
//!   [`crate::model::FULL_SYNC_PERIOD`] old, as kube-proxy does.
//! * An incremental sync rewrites the chains of the services whose Service or
//!   endpoints changed (found by fingerprint, as in iptables mode) and adds or
//!   deletes only the map elements that differ from the applied ones.
//! * Stale chains are flushed in the transaction that drops their last map
//!   element and deleted by a later sync once
//!   [`NftablesBackend::stale_chain_delay`] (1 s, as kube-proxy) has passed, in a transaction of their own before the
//!   sync's: kernels before 6.2 notice a chain is unreferenced only a moment
//!   after the element pointing at it is gone, and deleting it in the same
//!   transaction fails there.
//!
//! Unlike kube-proxy, an incremental sync does not list the table's chains
//! (`nft list chains` costs seconds at 100,000 chains): the backend remembers
//! the chains and sets of every service it wrote, which is exact as long as
//! nobody else edits the table (kube-proxy's documented contract); the table
//! check ([`Backend::check_canary`]) and any failed transaction fall back to
//! a full sync, which does list the table.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::{Duration, Instant};

use crate::backend::{Backend, SyncError, SyncPlan};
use crate::config::NodeConfig;
use crate::family::IpFamily;
use crate::model::{FullSyncReason, ProxyState};
use crate::nftables::nft::{Nft, NftError};
use crate::nftables::render::{render, Applied, NftPlan, NftRendered, NftablesConfig};
use crate::syncer::SyncReport;

/// kube-proxy waits this long before deleting a flushed stale chain.
pub const STALE_CHAIN_DELAY: Duration = Duration::from_secs(1);

/// A failed nftables sync (nft's errors are boxed: they carry the blamed line).
pub type NftSyncError = SyncError<Box<NftError>>;

fn nft_err(what: &str) -> impl FnOnce(NftError) -> NftSyncError + '_ {
    move |source| SyncError::Tool { what: what.to_string(), source: Box::new(source) }
}

/// What [`FullSyncReason::CanaryGone`] says in nftables mode: the table
/// is kube-proxy's canary there.
pub fn table_gone(family: IpFamily) -> &'static str {
    match family {
        IpFamily::V4 => "table ip kube-proxy is gone or flushed",
        IpFamily::V6 => "table ip6 kube-proxy is gone or flushed",
    }
}

/// The stale chains deleted before a sync ([`NftablesBackend::delete_stale_chains`]).
#[derive(Debug, Default)]
pub struct StaleDeletion {
    pub deleted: Vec<String>,
    /// Deleting them failed: they stay, and the next sync must be full.
    pub failed: Option<FullSyncReason>,
}

/// What an applied nftables sync did.
#[derive(Debug)]
pub struct NftOutcome {
    pub rendered: NftRendered,
    /// How long the render took (the rest of the sync is applying it).
    pub render_time: std::time::Duration,
    /// Stale chains deleted (in their own transaction) before the sync.
    pub deleted_stale_chains: Vec<String>,
    /// Deleting them failed (they stay; the next sync is a full one).
    pub stale_delete_error: Option<String>,
}

/// What an nftables sync reports.
pub type NftSyncReport = SyncReport<NftOutcome>;

/// What `--dry-run` shows.
#[derive(Debug)]
pub struct NftPreview {
    pub rendered: NftRendered,
    /// The chains the table has now.
    pub existing_chains: BTreeSet<String>,
    /// Stale chains old enough to be deleted before the sync.
    pub stale_to_delete: Vec<String>,
}

/// The nftables proxier of one family: its table, settings, and what it
/// remembers of the transactions it applied.
pub struct NftablesBackend {
    pub nft: Nft,
    pub cfg: NftablesConfig,
    /// How long a flushed stale chain waits before it is deleted.
    pub stale_chain_delay: Duration,
    applied: Applied,
    stale_chains: BTreeMap<String, Instant>,
    base_chains_recreated: bool,
}

impl NftablesBackend {
    pub fn new(nft: Nft, cfg: NftablesConfig) -> Self {
        NftablesBackend {
            nft,
            cfg,
            stale_chain_delay: STALE_CHAIN_DELAY,
            applied: Applied::default(),
            stale_chains: BTreeMap::new(),
            base_chains_recreated: false,
        }
    }

    /// The stale chains waiting to be deleted.
    pub fn stale_chains(&self) -> impl Iterator<Item = &str> {
        self.stale_chains.keys().map(String::as_str)
    }

    /// Pretend the stale chains went stale `by` earlier (tests).
    pub fn age_stale_chains(&mut self, by: Duration) {
        for t in self.stale_chains.values_mut() {
            if let Some(earlier) = t.checked_sub(by) {
                *t = earlier;
            }
        }
    }

    fn aged_stale_chains(&self) -> Vec<String> {
        let now = Instant::now();
        self.stale_chains
            .iter()
            .filter(|(_, t)| now.duration_since(**t) >= self.stale_chain_delay)
            .map(|(c, _)| c.clone())
            .collect()
    }

    fn listing(&self) -> Result<(BTreeSet<String>, BTreeSet<String>), NftSyncError> {
        let table = self.cfg.node.family.nft_table();
        let chains = self.nft.chains().map_err(nft_err(&format!("listing the chains of table {table}")))?;
        let sets = self.nft.sets().map_err(nft_err(&format!("listing the sets of table {table}")))?;
        Ok((chains, sets))
    }

    /// What one sync renders from `plan`.
    fn nft_plan<'a>(
        &'a self,
        plan: &'a SyncPlan<'_>,
        listing: Option<&'a (BTreeSet<String>, BTreeSet<String>)>,
    ) -> NftPlan<'a> {
        NftPlan {
            full: plan.is_full(),
            recreate_base_chains: plan.is_full() && !self.base_chains_recreated,
            changed: Some(&plan.changes.updated),
            removed: Some(&plan.changes.removed),
            applied: Some(&self.applied),
            existing_chains: listing.map(|l| &l.0),
            existing_sets: listing.map(|l| &l.1),
        }
    }

    /// Remember what a transaction (applied, or taken as applied) leaves.
    fn commit(&mut self, rendered: &mut NftRendered, full: bool) {
        let now = Instant::now();
        self.applied.commit(rendered, full);
        if full {
            self.base_chains_recreated = true;
            // The listing found every stale chain: keep the age of known ones.
            let old = std::mem::take(&mut self.stale_chains);
            for c in &rendered.stale_chains {
                self.stale_chains.insert(c.clone(), old.get(c).copied().unwrap_or(now));
            }
        } else {
            for c in &rendered.stale_chains {
                self.stale_chains.entry(c.clone()).or_insert(now);
            }
        }
        for c in &rendered.written_chains {
            self.stale_chains.remove(c);
        }
    }

    /// Delete the stale chains that waited long enough, in a transaction of
    /// their own. On failure they stay, and the next sync must be a full one
    /// (which lists what the table really has). Done before every sync
    /// ([`Backend::before_sync`]); a one-shot `sync` does it again after
    /// waiting [`NftablesBackend::stale_chain_delay`].
    pub fn delete_stale_chains(&mut self) -> StaleDeletion {
        let aged = self.aged_stale_chains();
        if aged.is_empty() {
            return StaleDeletion::default();
        }
        let mut tx = String::with_capacity(aged.len() * 80);
        for c in &aged {
            tx.push_str(&format!("delete chain {} {c}\n", self.cfg.node.family.nft_table()));
        }
        match self.nft.apply(&tx) {
            Ok(()) => {
                for c in &aged {
                    self.stale_chains.remove(c);
                }
                StaleDeletion { deleted: aged, failed: None }
            }
            Err(e) => {
                let reason =
                    FullSyncReason::StaleChainsNotDeleted { chains: aged.len(), error: e.to_string() };
                StaleDeletion { deleted: Vec::new(), failed: Some(reason) }
            }
        }
    }
}

impl Backend for NftablesBackend {
    type ToolError = Box<NftError>;
    type Prelude = StaleDeletion;
    type Outcome = NftOutcome;
    type Preview = NftPreview;

    fn node(&self) -> &NodeConfig {
        &self.cfg.node
    }
    fn node_mut(&mut self) -> &mut NodeConfig {
        &mut self.cfg.node
    }

    /// The stale chains that waited long enough go first, in a transaction
    /// of their own.
    fn before_sync(&mut self) -> (StaleDeletion, Option<FullSyncReason>) {
        let deletion = self.delete_stale_chains();
        let forced = deletion.failed.clone();
        (deletion, forced)
    }

    fn sync(
        &mut self,
        state: &ProxyState,
        plan: &SyncPlan<'_>,
        prelude: StaleDeletion,
    ) -> Result<NftOutcome, NftSyncError> {
        let listing = if plan.is_full() { Some(self.listing()?) } else { None };
        let render_started = std::time::Instant::now();
        let mut rendered = render(state, &self.cfg, &self.nft_plan(plan, listing.as_ref()))?;
        let render_time = render_started.elapsed();
        let what = if plan.is_full() { "full nft transaction" } else { "incremental nft transaction" };
        // Nothing changed: no transaction at all (nft would accept an
        // empty one, but there is no reason to run it).
        if rendered.operations > 0 {
            self.nft.apply_fast(&rendered.transaction).map_err(nft_err(what))?;
        }
        self.commit(&mut rendered, plan.is_full());
        Ok(NftOutcome {
            rendered,
            render_time,
            deleted_stale_chains: prelude.deleted,
            stale_delete_error: prelude.failed.map(|r| r.to_string()),
        })
    }

    fn preview(&mut self, state: &ProxyState, plan: &SyncPlan<'_>) -> Result<NftPreview, NftSyncError> {
        let listing = self.listing()?;
        let rendered = render(state, &self.cfg, &self.nft_plan(plan, Some(&listing)))?;
        Ok(NftPreview { rendered, existing_chains: listing.0, stale_to_delete: self.aged_stale_chains() })
    }

    fn diff_view(&self, plan: &SyncPlan<'_>, preview: &NftPreview) -> String {
        diff_view(plan.full, Self::changed_services(plan.changes), preview, self.cfg.node.family)
    }

    fn mark_applied(&mut self, _state: &ProxyState, preview: &NftPreview, full: bool) {
        self.commit(&mut preview.rendered.clone(), full);
    }

    /// kube-proxy's canary in nftables mode: the table itself. Gone when it
    /// was deleted or its dispatch rule flushed.
    fn check_canary(&mut self) -> Result<Option<FullSyncReason>, NftSyncError> {
        let family = self.cfg.node.family;
        let check = format!("checking table {}", family.nft_table());
        let intact = self.nft.table_intact().map_err(nft_err(&check))?;
        Ok((!intact).then(|| FullSyncReason::CanaryGone(table_gone(family))))
    }

    fn render_time(o: &NftOutcome) -> Option<std::time::Duration> {
        Some(o.render_time)
    }

    fn summary(r: &NftSyncReport) -> String {
        let kind = match &r.full {
            Some(why) => format!("full: {why}"),
            None => "incremental".to_string(),
        };
        let rendered = &r.outcome.rendered;
        format!(
            "synced ({kind}): {} services changed, {} chains written, {} stale chains flushed, {} deleted, \
             {} elements added, {} deleted, {} operations",
            r.changed_services,
            rendered.written_chains.len(),
            rendered.stale_chains.len(),
            r.outcome.deleted_stale_chains.len(),
            rendered.elements_added,
            rendered.elements_deleted,
            rendered.operations
        )
    }

    fn problem(outcome: &NftOutcome) -> Option<String> {
        outcome.stale_delete_error.clone()
    }

    /// No later sync will delete the chains this one flushed: wait until it
    /// is safe (see above) and delete them now.
    fn finish_one_shot(&mut self) -> Option<String> {
        self.stale_chains().next()?;
        std::thread::sleep(self.stale_chain_delay);
        let deletion = self.delete_stale_chains();
        Some(match deletion.failed {
            Some(e) => format!("error: {e}"),
            None => format!("deleted {} stale chain(s)", deletion.deleted.len()),
        })
    }
}

/// A diff view of a transaction: which chains it creates (`+`), rewrites
/// (`~`) or flushes as stale (`-`), which affinity sets it deletes, and the
/// element changes of each map.
pub fn diff_view(
    full: Option<&FullSyncReason>,
    changed_services: usize,
    preview: &NftPreview,
    family: IpFamily,
) -> String {
    let rendered = &preview.rendered;
    let table = family.nft_table();
    let mut out = String::new();
    match full {
        Some(why) => out.push_str(&format!("# full sync ({why})\n")),
        None => out.push_str(&format!("# incremental sync: {changed_services} service(s) changed\n")),
    }
    out.push_str(&format!(
        "# one nft transaction: {} operations, {} bytes\n",
        rendered.operations,
        rendered.transaction.len()
    ));
    for c in &preview.stale_to_delete {
        out.push_str(&format!("- chain {c} (stale, deleted before the sync)\n"));
    }
    let prefix = format!("add rule {table} ");
    let mut rules: BTreeMap<&str, usize> = BTreeMap::new();
    let mut order: Vec<&str> = Vec::new();
    let stale: HashSet<&str> = rendered.stale_chains.iter().map(String::as_str).collect();
    let chain_prefix = format!("add chain {table} ");
    let mut elements: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    let (add_el, del_el) = (format!("add element {table} "), format!("delete element {table} "));
    let mut element_lines: Vec<&str> = Vec::new();
    for line in rendered.transaction.lines() {
        if let Some(rest) = line.strip_prefix(&chain_prefix) {
            let name = rest.split(' ').next().unwrap_or("");
            if !rules.contains_key(name) {
                rules.insert(name, 0);
                order.push(name);
            }
        } else if let Some(rest) = line.strip_prefix(&prefix) {
            let name = rest.split(' ').next().unwrap_or("");
            *rules.entry(name).or_insert(0) += 1;
        } else if let Some(rest) = line.strip_prefix(&add_el) {
            elements.entry(rest.split(' ').next().unwrap_or("")).or_default().0 += 1;
            element_lines.push(line);
        } else if let Some(rest) = line.strip_prefix(&del_el) {
            elements.entry(rest.split(' ').next().unwrap_or("")).or_default().1 += 1;
            element_lines.push(line);
        }
    }
    for name in order {
        let mark = if preview.existing_chains.contains(name) { '~' } else { '+' };
        out.push_str(&format!("{mark} chain {name} ({} rules)\n", rules.get(name).copied().unwrap_or(0)));
    }
    for c in &rendered.stale_chains {
        if stale.contains(c.as_str()) {
            out.push_str(&format!("- chain {c} (stale: flushed now, deleted by a later sync)\n"));
        }
    }
    for s in &rendered.deleted_sets {
        out.push_str(&format!("- set {s} (affinity set no longer used)\n"));
    }
    if full.is_some() {
        for (map, (added, _)) in &elements {
            out.push_str(&format!("= {map}: flushed, {added} element(s) added\n"));
        }
    } else {
        for l in element_lines {
            let (sign, rest) = match l.strip_prefix(&add_el) {
                Some(r) => ('+', r),
                None => ('-', l.strip_prefix(&del_el).unwrap_or(l)),
            };
            out.push_str(&format!("{sign} element {rest}\n"));
        }
    }
    let kept = preview
        .existing_chains
        .iter()
        .filter(|c| crate::names::is_nft_service_chain(c))
        .filter(|c| !rules.contains_key(c.as_str()) && !stale.contains(c.as_str()))
        .count();
    out.push_str(&format!("# {kept} service chain(s) left as they are\n"));
    out
}
