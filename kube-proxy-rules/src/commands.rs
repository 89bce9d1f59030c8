//! The subcommands: `render`, `sync`, `run` (and `bench`, in [`crate::bench`]),
//! in either proxy mode.

use std::io::Write;
use std::time::{Duration, Instant};

use crate::canonical;
use crate::cli::{input_stamp, Args, Command, PodRecords, ProxyMode};
use crate::inputs::Loaded;
use crate::iptables::Iptables;
use crate::nftables::{self, Nft, NftSyncer};
use crate::proxier::{render, ProxyState, RenderPlan, Rendered};
use crate::syncer::{diff_view, Syncer};

/// Report bad objects and notes on stderr (stdout is the payload).
fn report(loaded: &Loaded) {
    for n in &loaded.notes {
        eprintln!("note: {n}");
    }
    for e in &loaded.errors {
        eprintln!("skipped {e}");
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
        Command::Bench => crate::bench::run(args),
    }
}

fn cmd_render(args: &Args) -> Result<i32, String> {
    if args.proxy_mode == ProxyMode::Nftables {
        let cfg = args.nft_config(false)?;
        let loaded = PodRecords::open(args.datastore.as_ref())?.load(args)?;
        report(&loaded);
        let rendered =
            nftables::render(&loaded.state, &cfg, &nftables::NftPlan::full()).map_err(|e| e.to_string())?;
        let text = if args.canonical {
            nftables::dump::simulate(&[&rendered.transaction])?
        } else {
            rendered.transaction
        };
        write_stdout(&text)?;
        return Ok(0);
    }
    let ipt = Iptables::current();
    let cfg = args.proxier_config(&ipt)?;
    let records = PodRecords::open(args.datastore.as_ref())?;
    let loaded = records.load(args)?;
    report(&loaded);
    let rendered = render(&loaded.state, &cfg, &RenderPlan { full: true, ..Default::default() })
        .map_err(|e| e.to_string())?;
    let text = if args.canonical { canonical::sort_payload(&rendered.payload)? } else { rendered.payload };
    write_stdout(&text)?;
    Ok(0)
}

fn dry_run(syncer: &mut Syncer, state: &ProxyState) -> Result<Rendered, String> {
    let (preview, rendered) = syncer.preview(state).map_err(|e| e.to_string())?;
    let filter = syncer.ipt.chains("filter").map_err(|e| e.to_string())?;
    write_stdout(&diff_view(&preview, &rendered, &filter))?;
    Ok(rendered)
}

fn new_syncer(args: &Args, ipt: Iptables, cfg: crate::proxier::ProxierConfig) -> Syncer {
    let mut s = Syncer::new(ipt, cfg, args.sync_period);
    s.minimize_top_level = !args.rewrite_top_level;
    s
}

fn cmd_sync(args: &Args) -> Result<i32, String> {
    if args.proxy_mode == ProxyMode::Nftables {
        let loaded = PodRecords::open(args.datastore.as_ref())?.load(args)?;
        report(&loaded);
        let mut syncer = NftSyncer::new(Nft::current(), args.nft_config(false)?);
        if args.dry_run {
            syncer.dry_run(&loaded.state)?;
            return Ok(0);
        }
        let line = syncer.sync_once(&loaded.state)?;
        eprintln!("{line}");
        // No later sync will delete the chains this one flushed: wait until
        // it is safe (see nftables::sync) and delete them now.
        if syncer.stale_chains().next().is_some() {
            std::thread::sleep(syncer.stale_chain_delay);
            let (deleted, error) = syncer.delete_stale_chains();
            match error {
                Some(e) => eprintln!("error: {e}"),
                None => eprintln!("deleted {} stale chain(s)", deleted.len()),
            }
        }
        return Ok(0);
    }
    let ipt = Iptables::current();
    let cfg = args.proxier_config(&ipt)?;
    let records = PodRecords::open(args.datastore.as_ref())?;
    let loaded = records.load(args)?;
    report(&loaded);
    let mut syncer = new_syncer(args, ipt, cfg);
    if args.dry_run {
        dry_run(&mut syncer, &loaded.state)?;
        return Ok(0);
    }
    let r = syncer.sync(&loaded.state).map_err(|e| e.to_string())?;
    eprintln!(
        "synced ({}): {} filter rules, {} nat rules, {} stale chains deleted, {} jump rules added",
        if r.full { "full" } else { "partial" },
        r.rendered.filter_rules,
        r.rendered.nat_rules,
        r.rendered.deleted_chains.len(),
        r.jump_rules_added
    );
    Ok(0)
}

/// One proxy mode's syncer, as `run` drives it.
trait ModeSyncer {
    /// Sync once; the line to log.
    fn sync_once(&mut self, state: &ProxyState) -> Result<String, String>;
    /// Print what a sync would do and remember it as applied (`--dry-run`).
    fn dry_run(&mut self, state: &ProxyState) -> Result<(), String>;
    /// Check the canary (iptables: the KUBE-PROXY-CANARY chains; nftables:
    /// the table). Some(message) when it is gone and the next sync is full.
    fn check_canary(&mut self) -> Result<Option<String>, String>;
    /// A vanished canary forced the next sync to be full.
    fn canary_forced(&self) -> bool;
    /// Take the node's current addresses; true if they changed (the next
    /// sync is then a full one: NodePorts are served on them).
    fn set_local_addresses(&mut self, addresses: Vec<std::net::Ipv4Addr>) -> bool;
}

impl ModeSyncer for Syncer {
    fn sync_once(&mut self, state: &ProxyState) -> Result<String, String> {
        let r = self.sync(state).map_err(|e| e.to_string())?;
        Ok(format!(
            "synced ({}{}): {} services changed, {} chains written, {} stale chains deleted",
            if r.full { "full" } else { "partial" },
            if r.full { format!(": {}", r.reason) } else { String::new() },
            r.changed_services,
            r.rendered.written_service_chains.len(),
            r.rendered.deleted_chains.len(),
        ))
    }
    fn dry_run(&mut self, state: &ProxyState) -> Result<(), String> {
        let rendered = dry_run(self, state)?;
        // Pretend it was applied so the next preview is relative to it.
        self.mark_applied(state, &rendered);
        Ok(())
    }
    fn check_canary(&mut self) -> Result<Option<String>, String> {
        match self.check_canary() {
            Ok(true) => Ok(Some("canary chain KUBE-PROXY-CANARY is gone: forcing a full sync".into())),
            Ok(false) => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }
    fn canary_forced(&self) -> bool {
        self.needs_full_sync().is_some_and(|r| r.contains("canary"))
    }
    fn set_local_addresses(&mut self, addresses: Vec<std::net::Ipv4Addr>) -> bool {
        Syncer::set_local_addresses(self, addresses)
    }
}

impl ModeSyncer for NftSyncer {
    fn sync_once(&mut self, state: &ProxyState) -> Result<String, String> {
        let r = self.sync(state).map_err(|e| e.to_string())?;
        if let Some(e) = &r.stale_delete_error {
            eprintln!("error: {e}");
        }
        Ok(format!(
            "synced ({}{}): {} services changed, {} chains written, {} stale chains flushed, {} deleted, \
             {} elements added, {} deleted, {} operations",
            if r.full { "full" } else { "incremental" },
            if r.full { format!(": {}", r.reason) } else { String::new() },
            r.changed_services,
            r.rendered.written_chains.len(),
            r.rendered.stale_chains.len(),
            r.deleted_stale_chains.len(),
            r.rendered.elements_added,
            r.rendered.elements_deleted,
            r.rendered.operations
        ))
    }
    fn dry_run(&mut self, state: &ProxyState) -> Result<(), String> {
        let (preview, rendered) = self.preview(state).map_err(|e| e.to_string())?;
        write_stdout(&nftables::sync::diff_view(&preview, &rendered))?;
        self.mark_applied(state, &rendered);
        Ok(())
    }
    fn check_canary(&mut self) -> Result<Option<String>, String> {
        match self.check_table() {
            Ok(true) => Ok(Some("table ip kube-proxy is gone or flushed: forcing a full sync".into())),
            Ok(false) => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }
    fn canary_forced(&self) -> bool {
        self.needs_full_sync().is_some_and(|r| r.contains("gone or flushed"))
    }
    fn set_local_addresses(&mut self, addresses: Vec<std::net::Ipv4Addr>) -> bool {
        NftSyncer::set_local_addresses(self, addresses)
    }
}

fn cmd_run(args: &Args) -> Result<i32, String> {
    let records = PodRecords::open(args.datastore.as_ref())?;
    match args.proxy_mode {
        ProxyMode::Iptables => {
            let ipt = Iptables::current();
            let cfg = args.proxier_config(&ipt)?;
            run_loop(args, &records, &mut new_syncer(args, ipt, cfg))
        }
        ProxyMode::Nftables => {
            let mut syncer = NftSyncer::new(Nft::current(), args.nft_config(false)?);
            run_loop(args, &records, &mut syncer)
        }
    }
}

/// Keep the rules in sync: resync when an input file or the pod records
/// change (polled), at least every sync period, never more often than the
/// min sync period; check the canary every sync period; retry failures.
/// The node's addresses are re-read on every poll (kube-proxy re-reads the
/// node IPs on every sync): a change forces a full sync, so NodePorts follow
/// an address added or removed while `run` runs. The syncers also force a
/// full sync once the last one is [`crate::syncer::FULL_SYNC_PERIOD`] old.
fn run_loop(args: &Args, records: &PodRecords, syncer: &mut dyn ModeSyncer) -> Result<i32, String> {
    let poll = args.min_sync_period.clamp(Duration::from_millis(50), Duration::from_millis(500));
    let mut last_stamp = None;
    let mut last_rev = None;
    let mut last_sync: Option<Instant> = None;
    let mut last_canary = Instant::now();
    let mut retry_at: Option<Instant> = None;
    let mut addresses_changed = false;
    loop {
        if syncer.set_local_addresses(args.local_addresses(false)) {
            eprintln!("node addresses changed: the next sync is a full one");
            addresses_changed = true;
        }
        let stamp = input_stamp(&args.inputs);
        let rev = match records.revision() {
            Ok(r) => Some(r),
            Err(e) => {
                eprintln!("error: {e}");
                last_rev // keep going with what we had
            }
        };
        let changed = last_stamp.as_ref() != Some(&stamp) || rev != last_rev;
        let periodic = last_sync.is_none_or(|t| t.elapsed() >= args.sync_period);
        if !args.dry_run && last_sync.is_some() && last_canary.elapsed() >= args.sync_period {
            last_canary = Instant::now();
            match syncer.check_canary() {
                Ok(Some(msg)) => eprintln!("{msg}"),
                Ok(None) => {}
                Err(e) => eprintln!("error: {e}"),
            }
        }
        let retry_due = retry_at.is_some_and(|t| Instant::now() >= t);
        let rate_ok = last_sync.is_none_or(|t| t.elapsed() >= args.min_sync_period);
        let canary_forced = syncer.canary_forced();
        if (changed || periodic || retry_due || canary_forced || addresses_changed) && rate_ok {
            addresses_changed = false;
            last_stamp = Some(stamp);
            last_rev = rev;
            match records.load(args) {
                Ok(loaded) => {
                    if changed {
                        report(&loaded);
                    }
                    if args.dry_run {
                        if changed || periodic {
                            if let Err(e) = syncer.dry_run(&loaded.state) {
                                eprintln!("error: {e}");
                            }
                        }
                    } else {
                        let started = Instant::now();
                        match syncer.sync_once(&loaded.state) {
                            Ok(line) => {
                                eprintln!("{line}, {:?}", started.elapsed());
                                retry_at = None;
                            }
                            Err(e) => {
                                eprintln!(
                                    "error: sync failed, retrying with a full sync in {:?}: {e}",
                                    args.sync_period
                                );
                                retry_at = Some(Instant::now() + args.sync_period);
                            }
                        }
                    }
                    last_sync = Some(Instant::now());
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    retry_at = Some(Instant::now() + args.sync_period);
                    last_sync = Some(Instant::now());
                }
            }
        }
        std::thread::sleep(poll);
    }
}
