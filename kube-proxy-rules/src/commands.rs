//! The subcommands: `render`, `sync`, `run` (and `bench`, in [`crate::bench`]).

use std::io::Write;
use std::time::{Duration, Instant};

use crate::canonical;
use crate::cli::{input_stamp, Args, Command, PodRecords};
use crate::inputs::Loaded;
use crate::iptables::Iptables;
use crate::proxier::{render, RenderPlan, Rendered};
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
    let ipt = Iptables::current();
    let cfg = args.proxier_config(&ipt)?;
    let records = PodRecords::open(args.datastore.as_ref())?;
    let loaded = records.load(args)?;
    report(&loaded);
    let rendered = render(&loaded.state, &cfg, &RenderPlan { full: true, ..Default::default() });
    let text = if args.canonical { canonical::sort_payload(&rendered.payload)? } else { rendered.payload };
    write_stdout(&text)?;
    Ok(0)
}

fn dry_run(syncer: &mut Syncer, loaded: &Loaded) -> Result<Rendered, String> {
    let (preview, rendered) = syncer.preview(&loaded.state).map_err(|e| e.to_string())?;
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
    let ipt = Iptables::current();
    let cfg = args.proxier_config(&ipt)?;
    let records = PodRecords::open(args.datastore.as_ref())?;
    let loaded = records.load(args)?;
    report(&loaded);
    let mut syncer = new_syncer(args, ipt, cfg);
    if args.dry_run {
        dry_run(&mut syncer, &loaded)?;
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

/// Keep the rules in sync: resync when an input file or the pod records
/// change (polled), at least every sync period, never more often than the
/// min sync period; check the canary every sync period; retry failures.
fn cmd_run(args: &Args) -> Result<i32, String> {
    let ipt = Iptables::current();
    let cfg = args.proxier_config(&ipt)?;
    let records = PodRecords::open(args.datastore.as_ref())?;
    let mut syncer = new_syncer(args, ipt, cfg);
    let poll = args.min_sync_period.clamp(Duration::from_millis(50), Duration::from_millis(500));
    let mut last_stamp = None;
    let mut last_rev = None;
    let mut last_sync: Option<Instant> = None;
    let mut last_canary = Instant::now();
    let mut retry_at: Option<Instant> = None;
    loop {
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
                Ok(true) => eprintln!("canary chain KUBE-PROXY-CANARY is gone: forcing a full sync"),
                Ok(false) => {}
                Err(e) => eprintln!("error: {e}"),
            }
        }
        let retry_due = retry_at.is_some_and(|t| Instant::now() >= t);
        let rate_ok = last_sync.is_none_or(|t| t.elapsed() >= args.min_sync_period);
        let canary_forced = syncer_needs_full(&syncer);
        if (changed || periodic || retry_due || canary_forced) && rate_ok {
            last_stamp = Some(stamp);
            last_rev = rev;
            match records.load(args) {
                Ok(loaded) => {
                    if changed {
                        report(&loaded);
                    }
                    if args.dry_run {
                        if changed || periodic {
                            match dry_run(&mut syncer, &loaded) {
                                // Pretend it was applied so the next preview is relative to it.
                                Ok(rendered) => syncer.mark_applied(&loaded.state, &rendered),
                                Err(e) => eprintln!("error: {e}"),
                            }
                        }
                        last_sync = Some(Instant::now());
                    } else {
                        let started = Instant::now();
                        match syncer.sync(&loaded.state) {
                            Ok(r) => {
                                eprintln!(
                                    "synced ({}{}): {} services changed, {} chains written, {} stale chains deleted, {:?}",
                                    if r.full { "full" } else { "partial" },
                                    if r.full { format!(": {}", r.reason) } else { String::new() },
                                    r.changed_services,
                                    r.rendered.written_service_chains.len(),
                                    r.rendered.deleted_chains.len(),
                                    started.elapsed()
                                );
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
                        last_sync = Some(Instant::now());
                    }
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

fn syncer_needs_full(s: &Syncer) -> bool {
    s.needs_full_sync().is_some_and(|r| r.contains("canary"))
}
