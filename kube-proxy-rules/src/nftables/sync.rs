//! Full and incremental syncs of table `ip kube-proxy`, one `nft -f`
//! transaction each (kube-proxy's nftables `syncProxyRules`).
//!
//! * A full sync (the first one, after a failed transaction, or when the
//!   table was deleted or flushed behind our back) sets the table up, flushes
//!   every set and map and rewrites every chain; chains and affinity sets an
//!   earlier run left behind are found with `nft list` and cleaned up.
//! * A full sync is also forced when the node's addresses changed
//!   ([`NftSyncer::set_local_addresses`]: `nodeport-ips` is written by full
//!   syncs) and once the last one is [`crate::model::FULL_SYNC_PERIOD`] old, as kube-proxy
//!   does.
//! * An incremental sync rewrites the chains of the services whose Service or
//!   endpoints changed (found by fingerprint, as in iptables mode) and adds or
//!   deletes only the map elements that differ from the applied ones.
//! * Stale chains are flushed in the transaction that drops their last map
//!   element and deleted by a later sync once [`NftSyncer::stale_chain_delay`]
//!   (1 s, as kube-proxy) has passed, in a transaction of their own before the
//!   sync's: kernels before 6.2 notice a chain is unreferenced only a moment
//!   after the element pointing at it is gone, and deleting it in the same
//!   transaction fails there.
//!
//! Unlike kube-proxy, an incremental sync does not list the table's chains
//! (`nft list chains` costs seconds at 100,000 chains): the syncer remembers
//! the chains and sets of every service it wrote, which is exact as long as
//! nobody else edits the table (kube-proxy's documented contract); the table
//! check ([`NftSyncer::check_table`]) and any failed transaction fall back to
//! a full sync, which does list the table.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::{Duration, Instant};

use crate::family::IpFamily;
use crate::model::{fingerprints, ChangeTracker, FullSyncReason, FullSyncs, ProxyState, ServiceKey};
use crate::nftables::nft::{Nft, NftError};
use crate::nftables::render::NftablesConfig;
use crate::nftables::render::{render, Applied, NftPlan, NftRendered};
use crate::validate::UnsafeText;

/// kube-proxy waits this long before deleting a flushed stale chain.
pub const STALE_CHAIN_DELAY: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum NftSyncError {
    #[error("{what}: {source}")]
    Nft { what: String, source: Box<NftError> },
    /// The transaction builder refused a name or comment (see [`crate::validate`]).
    #[error("{0}")]
    Refused(#[from] UnsafeText),
}

fn nft_err(what: &str) -> impl FnOnce(NftError) -> NftSyncError + '_ {
    move |source| NftSyncError::Nft { what: what.to_string(), source: Box::new(source) }
}

/// What [`FullSyncReason::CanaryGone`] says in nftables mode: the table
/// is kube-proxy's canary there.
pub fn table_gone(family: IpFamily) -> &'static str {
    match family {
        IpFamily::V4 => "table ip kube-proxy is gone or flushed",
        IpFamily::V6 => "table ip6 kube-proxy is gone or flushed",
    }
}

/// What a sync did.
#[derive(Debug)]
pub struct NftSyncReport {
    /// Why it was full; None for an incremental sync.
    pub full: Option<FullSyncReason>,
    pub changed_services: usize,
    pub rendered: NftRendered,
    /// Stale chains deleted (in their own transaction) before the sync.
    pub deleted_stale_chains: Vec<String>,
    /// Deleting them failed (they stay; the next sync is a full one).
    pub stale_delete_error: Option<String>,
}

impl NftSyncReport {
    pub fn is_full(&self) -> bool {
        self.full.is_some()
    }
    /// Why it was full, as the log says it (empty for a sync that was not).
    pub fn reason(&self) -> String {
        self.full.as_ref().map(ToString::to_string).unwrap_or_default()
    }
}

/// What `--dry-run` shows.
#[derive(Debug)]
pub struct NftPreview {
    pub full: Option<FullSyncReason>,
    pub changed_services: usize,
    /// The chains the table has now.
    pub existing_chains: BTreeSet<String>,
    /// Stale chains old enough to be deleted before the sync.
    pub stale_to_delete: Vec<String>,
}

/// The sync loop's memory between syncs.
pub struct NftSyncer {
    pub nft: Nft,
    pub cfg: NftablesConfig,
    /// How long a flushed stale chain waits before it is deleted.
    pub stale_chain_delay: Duration,
    /// When the next sync must be full.
    pub full_syncs: FullSyncs,
    changes: ChangeTracker,
    applied: Applied,
    stale_chains: BTreeMap<String, Instant>,
    base_chains_recreated: bool,
}

impl NftSyncer {
    pub fn new(nft: Nft, cfg: NftablesConfig) -> Self {
        NftSyncer {
            nft,
            cfg,
            stale_chain_delay: STALE_CHAIN_DELAY,
            full_syncs: FullSyncs::default(),
            changes: ChangeTracker::default(),
            applied: Applied::default(),
            stale_chains: BTreeMap::new(),
            base_chains_recreated: false,
        }
    }

    /// Take the node's current addresses (`run` re-reads them before every
    /// sync). If they changed, the next sync is a full one: `nodeport-ips`
    /// is written by full syncs. Returns true if they changed.
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

    /// kube-proxy's canary in nftables mode: the table itself. If it is gone
    /// or its dispatch rule was flushed, the next sync is full.
    /// Returns the reason it forced, if it did.
    pub fn check_table(&mut self) -> Result<Option<FullSyncReason>, NftSyncError> {
        let table = self.cfg.node.family.nft_table();
        let intact = self.nft.table_intact().map_err(nft_err(&format!("checking table {table}")))?;
        let gone = (!intact).then(|| FullSyncReason::CanaryGone(table_gone(self.cfg.node.family)));
        if let Some(reason) = &gone {
            self.force_full_sync(reason.clone());
        }
        Ok(gone)
    }

    fn plan(&self, state: &ProxyState) -> (Option<FullSyncReason>, HashSet<ServiceKey>) {
        let changes = self.changes.changes(state);
        let mut changed = changes.updated;
        // Deleted services count as changed (their objects go).
        changed.extend(changes.removed);
        (self.full_syncs.due(), changed)
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

    /// Render what the next sync would write, without applying anything.
    pub fn preview(&self, state: &ProxyState) -> Result<(NftPreview, NftRendered), NftSyncError> {
        let (full, changed) = self.plan(state);
        let (chains, sets) = self.listing()?;
        let rendered = render(
            state,
            &self.cfg,
            &NftPlan {
                full: full.is_some(),
                recreate_base_chains: full.is_some() && !self.base_chains_recreated,
                changed: Some(&changed),
                applied: Some(&self.applied),
                existing_chains: Some(&chains),
                existing_sets: Some(&sets),
            },
        )?;
        let preview = NftPreview {
            full,
            changed_services: changed.len(),
            existing_chains: chains,
            stale_to_delete: self.aged_stale_chains(),
        };
        Ok((preview, rendered))
    }

    /// Record `state` as applied without applying it (`run --dry-run`).
    pub fn mark_applied(&mut self, state: &ProxyState, rendered: &NftRendered) {
        let (full, _) = self.plan(state);
        let full = full.is_some();
        self.commit(state, rendered, full);
    }

    fn commit(&mut self, state: &ProxyState, rendered: &NftRendered, full: bool) {
        let now = Instant::now();
        self.full_syncs.synced(full);
        self.changes.applied(fingerprints(state));
        self.applied.elements = rendered.elements.clone();
        if full {
            self.applied.objects = rendered.objects.clone();
            self.base_chains_recreated = true;
            // The listing found every stale chain: keep the age of known ones.
            let old = std::mem::take(&mut self.stale_chains);
            for c in &rendered.stale_chains {
                self.stale_chains.insert(c.clone(), old.get(c).copied().unwrap_or(now));
            }
        } else {
            for (k, o) in &rendered.objects {
                self.applied.objects.insert(k.clone(), o.clone());
            }
            for k in &rendered.removed_services {
                self.applied.objects.remove(k);
            }
            for c in &rendered.stale_chains {
                self.stale_chains.entry(c.clone()).or_insert(now);
            }
        }
        for c in &rendered.written_chains {
            self.stale_chains.remove(c);
        }
    }

    /// Delete the stale chains that waited long enough, in a transaction of
    /// their own: the chains deleted, or why it failed. On failure they stay,
    /// and the next sync is a full one (which lists what the table really has).
    /// [`NftSyncer::sync`] does this first; a one-shot `sync` calls it again
    /// after waiting [`NftSyncer::stale_chain_delay`].
    pub fn delete_stale_chains(&mut self) -> (Vec<String>, Option<String>) {
        let aged = self.aged_stale_chains();
        if aged.is_empty() {
            return (aged, None);
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
                (aged, None)
            }
            Err(e) => {
                let reason =
                    FullSyncReason::StaleChainsNotDeleted { chains: aged.len(), error: e.to_string() };
                let msg = reason.to_string();
                self.force_full_sync(reason);
                (Vec::new(), Some(msg))
            }
        }
    }

    /// One sync: full or incremental, applied in one `nft -f` transaction.
    pub fn sync(&mut self, state: &ProxyState) -> Result<NftSyncReport, NftSyncError> {
        let (deleted_stale_chains, stale_delete_error) = self.delete_stale_chains();
        let (full, changed) = self.plan(state);
        let result = (|| {
            let listing = if full.is_some() { Some(self.listing()?) } else { None };
            let rendered = render(
                state,
                &self.cfg,
                &NftPlan {
                    full: full.is_some(),
                    recreate_base_chains: full.is_some() && !self.base_chains_recreated,
                    changed: Some(&changed),
                    applied: Some(&self.applied),
                    existing_chains: listing.as_ref().map(|l| &l.0),
                    existing_sets: listing.as_ref().map(|l| &l.1),
                },
            )?;
            let what = if full.is_some() { "full nft transaction" } else { "incremental nft transaction" };
            // Nothing changed: no transaction at all (nft would accept an
            // empty one, but there is no reason to run it).
            if rendered.operations > 0 {
                self.nft.apply(&rendered.transaction).map_err(nft_err(what))?;
            }
            Ok(rendered)
        })();
        match result {
            Ok(rendered) => {
                self.commit(state, &rendered, full.is_some());
                Ok(NftSyncReport {
                    full,
                    changed_services: changed.len(),
                    rendered,
                    deleted_stale_chains,
                    stale_delete_error,
                })
            }
            Err(e) => {
                // The changes are folded into the fingerprints already and the
                // table may differ from our memory: only a full sync is safe.
                self.full_syncs.failed(&e);
                Err(e)
            }
        }
    }
}

/// A diff view of a transaction: which chains it creates (`+`), rewrites
/// (`~`) or flushes as stale (`-`), which affinity sets it deletes, and the
/// element changes of each map.
pub fn diff_view(preview: &NftPreview, rendered: &NftRendered, family: IpFamily) -> String {
    let table = family.nft_table();
    let mut out = String::new();
    match &preview.full {
        Some(why) => out.push_str(&format!("# full sync ({why})\n")),
        None => {
            out.push_str(&format!("# incremental sync: {} service(s) changed\n", preview.changed_services))
        }
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
    if preview.full.is_some() {
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
