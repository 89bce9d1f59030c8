//! The subcommands: `render`, `sync`, `run`, in either proxy mode (`bench`
//! is the binary's own: `src/bench`).

use std::io::Write;

use crate::backend::{Backend, SyncDone};
use crate::cli::{Args, Command, PodRecords, ProxyMode};
use crate::conntrack::ConntrackCleanup;
use crate::exec::Runner;
use crate::family::IpFamily;
use crate::inputs::Loaded;
use crate::iptables::canonical;
use crate::iptables::{render, Iptables, IptablesBackend, RenderPlan};
use crate::model::{FullSyncReason, ProxyState};
use crate::nftables::{self, Nft, NftablesBackend};
use crate::syncer::Syncer;

/// Report notes and bad objects (logged: stderr; stdout is the payload).
pub(crate) fn report(loaded: &Loaded) {
    for n in &loaded.notes {
        log::info!("note: {n}");
    }
    for e in &loaded.errors {
        log::warn!("skipped {e}");
    }
}

fn write_stdout(text: &str) -> Result<(), String> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes()).and_then(|_| out.flush()).map_err(|e| format!("writing stdout: {e}"))
}

/// Dispatch a parsed command line. Returns the process exit code.
pub fn run(args: &Args) -> Result<i32, String> {
    match args.command {
        Command::Render => cmd_render(args),
        Command::Sync => cmd_sync(args),
        Command::Run => cmd_run(args),
        // The binary runs the bench itself (it is not part of the library).
        Command::Bench => Err("bench: run by the kube-proxy-rules binary, not by the library".into()),
    }
}

/// The families to proxy and each one's state (kube-proxy's MetaProxier
/// split): IPv6 when it has services or a `--node-ip`; IPv4 unless only
/// IPv6 has anything (an IPv4-only node behaves exactly as without dual-stack
/// support and never runs ip6tables or touches table ip6 kube-proxy).
pub(crate) fn family_states(args: &Args, state: ProxyState) -> Vec<(IpFamily, ProxyState)> {
    let [v4, v6] = state.split_families();
    let has_node_ip = |f: IpFamily| args.node_ips.iter().any(|ip| f.has(*ip));
    let v6_active = !v6.is_empty() || has_node_ip(IpFamily::V6);
    let v4_active = !v6_active || !v4.is_empty() || has_node_ip(IpFamily::V4);
    let mut out = Vec::new();
    if v4_active {
        out.push((IpFamily::V4, v4));
    }
    if v6_active {
        out.push((IpFamily::V6, v6));
    }
    out
}

/// The families of `families` whose backend works here (see
/// [`crate::probe`]), each skipped one warned about. An error when every
/// family is skipped: there would be nothing left to sync.
fn usable_families(
    args: &Args,
    families: Vec<(IpFamily, ProxyState)>,
) -> Result<Vec<(IpFamily, ProxyState)>, String> {
    let mut out = Vec::new();
    let mut skipped = Vec::new();
    for (family, state) in families {
        match crate::probe::unavailable(&Runner::current(), args.proxy_mode, family) {
            None => out.push((family, state)),
            Some(reason) => {
                log::warn!("{}", crate::probe::skipped_warning(family, &reason));
                skipped.push(format!("{family}: {reason}"));
            }
        }
    }
    if out.is_empty() && !skipped.is_empty() {
        return Err(format!("no IP family can be proxied on this node: {}", skipped.join("; ")));
    }
    Ok(out)
}

/// A one-shot `sync` (or the first sync of `run`) that has nothing for
/// IPv4 still syncs IPv4 (empty) when an earlier sync left IPv4 rules: the
/// services they were for are gone, so are the rules. Reading the IPv4
/// tables is harmless on any node; IPv6 is not checked this way (an
/// IPv4-only node never runs ip6tables or reads `ip6 kube-proxy`).
pub(crate) fn with_ipv4_leftovers(
    args: &Args,
    mut families: Vec<(IpFamily, ProxyState)>,
) -> Vec<(IpFamily, ProxyState)> {
    if families.iter().any(|(f, _)| *f == IpFamily::V4) {
        return families;
    }
    let leftover = match args.proxy_mode {
        ProxyMode::Iptables => Iptables::current().chain_exists("nat", crate::names::KUBE_SERVICES),
        ProxyMode::Nftables => Ok(Nft::current().list_table().is_ok()),
    };
    match leftover {
        Ok(true) => families.insert(0, (IpFamily::V4, ProxyState::default())),
        Ok(false) => {}
        Err(e) => log::error!("looking for IPv4 rules of an earlier sync: {e}"),
    }
    families
}

/// `render` of one family: the iptables-restore payload or the nft transaction.
fn render_family(args: &Args, family: IpFamily, state: &ProxyState) -> Result<String, String> {
    if args.proxy_mode == ProxyMode::Nftables {
        let cfg = args.nft_config(family, false)?;
        let rendered =
            nftables::render(state, &cfg, &nftables::NftPlan::full()).map_err(|e| e.to_string())?;
        return if args.canonical {
            nftables::dump::simulate(&[&rendered.transaction])
        } else {
            Ok(rendered.transaction)
        };
    }
    let ipt = Iptables::current().with_family(family);
    let cfg = args.proxier_config(&ipt)?;
    let rendered =
        render(state, &cfg, &RenderPlan { full: true, ..Default::default() }).map_err(|e| e.to_string())?;
    if args.canonical {
        canonical::sort_payload(&rendered.payload)
    } else {
        Ok(rendered.payload)
    }
}

/// The header of one family's payload when `render` prints two: which tool
/// takes it (kube-proxy applies each family separately).
fn family_header(args: &Args, family: IpFamily) -> String {
    match args.proxy_mode {
        ProxyMode::Iptables => {
            format!("# {family}: input of {} --noflush --counters\n", family.iptables_restore())
        }
        ProxyMode::Nftables => {
            format!("# {family}: table {}, one nft -f transaction of its own\n", family.nft_table())
        }
    }
}

fn cmd_render(args: &Args) -> Result<i32, String> {
    let loaded = PodRecords::open(args.datastore.as_ref())?.load(args)?;
    report(&loaded);
    let families = family_states(args, loaded.state);
    let mut text = String::new();
    for (family, state) in &families {
        if families.len() > 1 {
            if !text.is_empty() {
                text.push('\n');
            }
            text.push_str(&family_header(args, *family));
        }
        text.push_str(&render_family(args, *family, state)?);
    }
    write_stdout(&text)?;
    Ok(0)
}

/// One family's syncer of the chosen mode, on this process's namespace.
fn mode_syncer(args: &Args, family: IpFamily) -> Result<Box<dyn ModeSyncer>, String> {
    Ok(match args.proxy_mode {
        ProxyMode::Iptables => {
            let ipt = Iptables::current().with_family(family);
            let cfg = args.proxier_config(&ipt)?;
            let mut backend = IptablesBackend::new(ipt, cfg, args.sync_period);
            backend.minimize_top_level = !args.rewrite_top_level;
            Box::new(with_cleanup(args, family, Syncer::new(backend)))
        }
        ProxyMode::Nftables => {
            let nft = Nft::current().with_family(family);
            Box::new(with_cleanup(
                args,
                family,
                Syncer::new(NftablesBackend::new(nft, args.nft_config(family, false)?)),
            ))
        }
    })
}

/// The stale-flow cleanup after each sync (`--conntrack-cleanup`), in this
/// process's namespace, remembering under `--state-dir`.
fn with_cleanup<B: Backend>(args: &Args, family: IpFamily, syncer: Syncer<B>) -> Syncer<B> {
    if !args.conntrack_cleanup {
        return syncer;
    }
    syncer.with_conntrack_cleanup(ConntrackCleanup::new(family, None, Some(&args.state_dir)))
}

fn cmd_sync(args: &Args) -> Result<i32, String> {
    let loaded = PodRecords::open(args.datastore.as_ref())?.load(args)?;
    report(&loaded);
    let families = usable_families(args, with_ipv4_leftovers(args, family_states(args, loaded.state)))?;
    let tag = |family: IpFamily| if families.len() > 1 { format!("{family}: ") } else { String::new() };
    for (family, state) in &families {
        let mut syncer = mode_syncer(args, *family)?;
        if args.dry_run {
            syncer.dry_run(state)?;
            continue;
        }
        let done = syncer.sync_once(state)?;
        log::info!("{}{}", tag(*family), done.line);
        syncer.finish_one_shot(&tag(*family));
    }
    Ok(0)
}

/// A syncer of either mode, as `sync` and `run` drive it (one impl for
/// both: [`Syncer`] over the mode's [`Backend`]).
pub(crate) trait ModeSyncer {
    /// Sync once: the line to log and what the metrics take.
    fn sync_once(&mut self, state: &ProxyState) -> Result<SyncDone, String>;
    /// Print what a sync would do and remember it as applied (`--dry-run`).
    fn dry_run(&mut self, state: &ProxyState) -> Result<(), String>;
    /// Check the canary (iptables: the KUBE-PROXY-CANARY chains; nftables:
    /// the table). Some(reason) when it is gone and the next sync is full.
    fn check_canary(&mut self) -> Result<Option<FullSyncReason>, String>;
    /// A vanished canary forced the next sync to be full.
    fn canary_forced(&self) -> bool;
    /// Take the node's current addresses; true if they changed (the next
    /// sync is then a full one: NodePorts are served on them).
    fn set_local_addresses(&mut self, addresses: Vec<std::net::IpAddr>) -> bool;
    /// Take the node's zone (topology hints); true if it changed (the next
    /// sync is then a full one).
    fn set_zone(&mut self, zone: Option<String>) -> bool;
    /// After a one-shot `sync`: what no later sync will do (nftables: wait
    /// until the flushed stale chains are safe to delete, and delete them).
    fn finish_one_shot(&mut self, tag: &str);
}

impl<B: Backend> ModeSyncer for Syncer<B> {
    fn sync_once(&mut self, state: &ProxyState) -> Result<SyncDone, String> {
        let r = self.sync(state).map_err(|e| e.to_string())?;
        if let Some(e) = B::problem(&r.outcome) {
            log::error!("{e}");
        }
        Ok(SyncDone {
            line: B::summary(&r),
            full: r.is_full(),
            rules: B::rule_counts(&r.outcome),
            render: B::render_time(&r.outcome),
        })
    }
    fn dry_run(&mut self, state: &ProxyState) -> Result<(), String> {
        let dry_run = Syncer::dry_run(self, state).map_err(|e| e.to_string())?;
        write_stdout(&dry_run.text)?;
        // Pretend it was applied so the next preview is relative to it.
        self.mark_applied(state, dry_run);
        Ok(())
    }
    fn check_canary(&mut self) -> Result<Option<FullSyncReason>, String> {
        Syncer::check_canary(self).map_err(|e| e.to_string())
    }
    fn canary_forced(&self) -> bool {
        Syncer::canary_forced(self)
    }
    fn set_local_addresses(&mut self, addresses: Vec<std::net::IpAddr>) -> bool {
        Syncer::set_local_addresses(self, addresses)
    }
    fn set_zone(&mut self, zone: Option<String>) -> bool {
        Syncer::set_zone(self, zone)
    }
    fn finish_one_shot(&mut self, tag: &str) {
        if let Some(line) = self.backend.finish_one_shot() {
            log::info!("{tag}{line}");
        }
    }
}

fn cmd_run(args: &Args) -> Result<i32, String> {
    let records = PodRecords::open(args.datastore.as_ref())?;
    crate::run::run_loop(args, &records)
}

/// The running syncers, one per family that had something to do (created
/// on first need, kept after: a family whose services went away is synced
/// empty, which removes its rules).
#[derive(Default)]
pub(crate) struct FamilySyncers {
    pub(crate) syncers: Vec<(IpFamily, Box<dyn ModeSyncer>)>,
    /// Families probed before their first sync, and whether they work
    /// (probed once: a family that cannot work is warned about once).
    probed: Vec<(IpFamily, bool)>,
}

impl FamilySyncers {
    /// Whether `family` can be proxied here, probed the first time it is asked.
    pub(crate) fn usable(&mut self, args: &Args, family: IpFamily) -> bool {
        if let Some((_, ok)) = self.probed.iter().find(|(f, _)| *f == family) {
            return *ok;
        }
        let reason = crate::probe::unavailable(&Runner::current(), args.proxy_mode, family);
        if let Some(reason) = &reason {
            log::warn!("{}", crate::probe::skipped_warning(family, reason));
        }
        self.probed.push((family, reason.is_none()));
        reason.is_none()
    }
    pub(crate) fn get(&mut self, args: &Args, family: IpFamily) -> Result<&mut Box<dyn ModeSyncer>, String> {
        let i = match self.syncers.iter().position(|(f, _)| *f == family) {
            Some(i) => i,
            None => {
                let mut syncer = mode_syncer(args, family)?;
                syncer.set_local_addresses(args.local_addresses(family, false));
                self.syncers.push((family, syncer));
                self.syncers.len() - 1
            }
        };
        Ok(&mut self.syncers[i].1)
    }
    pub(crate) fn tag(&self, family: IpFamily) -> String {
        if self.syncers.len() > 1 {
            format!("{family}: ")
        } else {
            String::new()
        }
    }
}
