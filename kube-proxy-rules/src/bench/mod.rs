//! `kube-proxy-rules bench`: N services × M endpoints, synthetic
//! ([`synthetic`]). Part of the binary, not of the library (nothing else runs
//! a benchmark); it uses the library as any other caller would. Measures
//! full render time and peak memory, the partial-sync payload for one changed
//! service against the full one, and how long `iptables-restore` takes for
//! both in a scratch network namespace the bench creates and deletes. With
//! `--proxy-mode nftables` the same for the `nft -f` transactions (full and
//! one-service incremental), with the iptables renders of the same state
//! alongside.
//!
//! Measured on this machine (iptables 1.8.9): `iptables-restore` (nf_tables)
//! grows super-linearly with the number of chains (×10 endpoints: 250 services
//! 0.8 s, 500 3.6 s, 1000 21 s, 2000 231 s; 10,000 had not finished after 65
//! min), `iptables-legacy-restore` takes ~30 s at 10,000 (`--restore-command`).
//!
//! nftables mode, 10,000 × 10, release build, this 2-core VM (kernel 6.18, nft
//! 1.0.6), kube-proxy's layout: a 56 MB / 460,071-operation transaction that
//! `nft -f` loads in 49–158 s; the one-service incremental transaction is
//! 5.5 kB / 45 operations and takes 0.64–1.0 s against the 110,000-chain table.
//! `--nftables-layout endpoint-maps`: 11.4 MB / 40,088 operations, 16.7–17.0 s;
//! the one-service change is four map elements, sent as a netlink batch in
//! 4.2–8.2 ms (0.03–0.048% of the full apply). README.md keeps the numbers of
//! the last run.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::process::Command;
use std::time::{Duration, Instant};

use kube_proxy_rules::cli::{Args, ProxyMode};
use kube_proxy_rules::config::NodeConfig;
use kube_proxy_rules::iptables::Iptables;
use kube_proxy_rules::iptables::{render, IptablesConfig, RenderPlan, TopLevelCache};
use kube_proxy_rules::model::endpoints::{key_of, EndpointInfo};
use kube_proxy_rules::model::{ProxyState, ServiceKey};
use kube_proxy_rules::nftables::{self, Nft};

pub mod conntrack;
pub mod synthetic;
use synthetic::synthetic_state;

fn status_kb(field: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Reset the peak-RSS counter (VmHWM) so the next reading covers what follows.
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// A scratch namespace for the restore timing, deleted on drop.
struct ScratchNetns(String);

impl ScratchNetns {
    fn new() -> Result<Self, String> {
        let name = format!("kprbench{}", std::process::id());
        let st = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .map_err(|e| format!("ip netns add: {e}"))?;
        if !st.success() {
            return Err(format!("ip netns add {name} failed"));
        }
        Ok(ScratchNetns(name))
    }
}

impl Drop for ScratchNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The state with one endpoint of the middle service replaced, and that service.
fn one_service_changed(state: &ProxyState) -> (ProxyState, HashSet<ServiceKey>) {
    let mut changed_state = state.clone();
    let victim = changed_state.services[state.services.len() / 2].clone();
    if let Some(eps) = changed_state.endpoints.get_mut(&key_of(&victim)) {
        if let Some(e) = eps.first_mut() {
            let ip = Ipv4Addr::new(10, 127, 255, 1);
            *e = EndpointInfo::new(ip.into(), 8080, e.node_name.as_deref());
        }
        eps.sort_by_cached_key(EndpointInfo::endpoint);
    }
    let changed: HashSet<_> = [(victim.namespace.clone(), victim.name.clone())].into_iter().collect();
    (changed_state, changed)
}

pub fn run(args: &Args) -> Result<i32, String> {
    if args.bench_conntrack_entries > 0 {
        return conntrack::run(args.bench_conntrack_entries);
    }
    let (n, m) = (args.bench_services, args.bench_endpoints);
    if n == 0 || m == 0 {
        return Err("--services and --endpoints must be > 0".into());
    }
    if args.proxy_mode == ProxyMode::Nftables {
        return run_nftables(args);
    }
    let cfg = IptablesConfig {
        node: NodeConfig {
            hostname: "bench-node".into(),
            cluster_cidr: "10.128.0.0/9".parse().ok(),
            ..Default::default()
        },
        random_fully: true,
        ..Default::default()
    };
    let t = Instant::now();
    let state = synthetic_state(n, m);
    let build = t.elapsed();
    let rss_state_kb = status_kb("VmRSS:").unwrap_or(0);

    // Peak memory of one full render: reset the high-water mark first.
    reset_peak();
    let base_kb = status_kb("VmRSS:").unwrap_or(0);
    let t = Instant::now();
    let full =
        render(&state, &cfg, &RenderPlan { full: true, ..Default::default() }).map_err(|e| e.to_string())?;
    let mut best = t.elapsed();
    let hwm_kb = status_kb("VmHWM:").unwrap_or(0);
    for _ in 0..2 {
        let t = Instant::now();
        let again = render(&state, &cfg, &RenderPlan { full: true, ..Default::default() })
            .map_err(|e| e.to_string())?;
        best = best.min(t.elapsed());
        drop(again);
    }

    // One service's endpoints change: only its chains are written.
    let (changed_state, changed) = one_service_changed(&state);
    // As the backend does it: the top-level chains as last applied (the full render).
    let mut top_cache = TopLevelCache::default();
    top_cache.commit(full.top_cache.clone());
    let removed = HashSet::new();
    let plan = RenderPlan {
        full: false,
        changed: Some(&changed),
        existing_nat_chains: None,
        applied_top_level: Some(&full.top_level_hashes),
        removed: Some(&removed),
        top_cache: Some(&top_cache),
    };
    let t = Instant::now();
    let partial = render(&changed_state, &cfg, &plan).map_err(|e| e.to_string())?;
    let mut partial_time = t.elapsed();
    for _ in 0..2 {
        let t = Instant::now();
        drop(render(&changed_state, &cfg, &plan).map_err(|e| e.to_string())?);
        partial_time = partial_time.min(t.elapsed());
    }
    // kube-proxy's own partial payload rewrites every top-level chain.
    let partial_kp = render(
        &changed_state,
        &cfg,
        &RenderPlan { applied_top_level: None, top_cache: None, ..plan.clone() },
    )
    .map_err(|e| e.to_string())?;

    let pct = |a: usize| 100.0 * a as f64 / full.payload.len() as f64;
    println!(
        "kube-proxy-rules bench: {n} services x {m} endpoints (large-cluster mode: {})",
        full.large_cluster_mode
    );
    println!(
        "  synthetic state build            {:>10.1} ms   RSS after build {:.1} MiB",
        ms(build),
        mib(rss_state_kb)
    );
    println!(
        "  full render (best of 3)          {:>10.1} ms   peak RSS {:.1} MiB (+{:.1} MiB for the render)",
        ms(best),
        mib(hwm_kb),
        mib(hwm_kb.saturating_sub(base_kb))
    );
    println!(
        "  full payload                     {:>10} bytes {:>8} lines ({} filter + {} nat rules)",
        full.payload.len(),
        full.payload.lines().count(),
        full.filter_rules,
        full.nat_rules
    );
    println!(
        "  partial render (1 service, best of 3) {:>5.2} ms   = {:.3}% of the full render (target <= 1%)",
        ms(partial_time),
        100.0 * partial_time.as_secs_f64() / best.as_secs_f64()
    );
    println!(
        "  partial payload (1 service)      {:>10} bytes {:>8} lines = {:.4}% of full (target <= 1%)",
        partial.payload.len(),
        partial.payload.lines().count(),
        pct(partial.payload.len())
    );
    println!(
        "  ... kube-proxy's partial payload {:>10} bytes {:>8} lines = {:.3}% of full (top-level chains rewritten)",
        partial_kp.payload.len(),
        partial_kp.payload.lines().count(),
        pct(partial_kp.payload.len())
    );

    if !args.bench_restore {
        return Ok(0);
    }
    let ns = ScratchNetns::new()?;
    let ipt = Iptables::in_netns(&ns.0);
    let t = Instant::now();
    let prog = args.bench_restore_command.as_str();
    ipt.restore_with(prog, &full.payload).map_err(|e| format!("full restore: {e}"))?;
    let restore_full = t.elapsed();
    let t = Instant::now();
    ipt.restore_with(prog, &partial.payload).map_err(|e| format!("partial restore: {e}"))?;
    let restore_partial = t.elapsed();
    drop(ns);
    println!("  {:<32} {:>10.1} ms", format!("{prog} full"), ms(restore_full));
    println!(
        "  {:<32} {:>10.1} ms   = {:.2}% of full",
        format!("{prog} partial"),
        ms(restore_partial),
        100.0 * restore_partial.as_secs_f64() / restore_full.as_secs_f64()
    );
    println!(
        "  full render / full restore       {:>10.3}%  (target <= 10%)",
        100.0 * best.as_secs_f64() / restore_full.as_secs_f64()
    );
    Ok(0)
}

/// `bench --proxy-mode nftables`.
fn run_nftables(args: &Args) -> Result<i32, String> {
    let (n, m) = (args.bench_services, args.bench_endpoints);
    let node = NodeConfig {
        hostname: "bench-node".into(),
        node_ips: vec![Ipv4Addr::new(192, 168, 0, 2).into()],
        cluster_cidr: "10.128.0.0/9".parse().ok(),
        nodeport_addresses: "192.168.0.2/32".parse().into_iter().collect(),
        local_addresses: vec![Ipv4Addr::new(192, 168, 0, 2).into()],
        ..Default::default()
    };
    let cfg = nftables::NftablesConfig {
        node: node.clone(),
        service_cidrs: "10.96.0.0/12".parse().into_iter().collect(),
        layout: args.nft_layout,
    };
    // The iptables renders of the same state: the same node, the nftables
    // mode's choices (no localhost NodePorts, fully-random masquerading).
    let ipt_cfg =
        IptablesConfig { node, localhost_nodeports: false, random_fully: true, ..Default::default() };
    let t = Instant::now();
    let state = synthetic_state(n, m);
    let build = t.elapsed();

    reset_peak();
    let base_kb = status_kb("VmRSS:").unwrap_or(0);
    let t = Instant::now();
    let full = nftables::render(&state, &cfg, &nftables::NftPlan::full()).map_err(|e| e.to_string())?;
    let mut best = t.elapsed();
    let hwm_kb = status_kb("VmHWM:").unwrap_or(0);
    for _ in 0..2 {
        let t = Instant::now();
        let again = nftables::render(&state, &cfg, &nftables::NftPlan::full()).map_err(|e| e.to_string())?;
        best = best.min(t.elapsed());
        drop(again);
    }

    // One service's endpoint changes; the rest is as the full sync left it.
    let (changed_state, changed) = one_service_changed(&state);
    let fingerprints = fingerprint_time(&changed_state);
    let applied = nftables::Applied::after_full(&full);
    let removed = HashSet::new();
    let plan = nftables::NftPlan {
        full: false,
        recreate_base_chains: false,
        changed: Some(&changed),
        removed: Some(&removed),
        applied: Some(&applied),
        existing_chains: None,
        existing_sets: None,
    };
    let t = Instant::now();
    let inc = nftables::render(&changed_state, &cfg, &plan).map_err(|e| e.to_string())?;
    let mut inc_time = t.elapsed();
    for _ in 0..2 {
        let t = Instant::now();
        drop(nftables::render(&changed_state, &cfg, &plan).map_err(|e| e.to_string())?);
        inc_time = inc_time.min(t.elapsed());
    }

    // The iptables proxier on the same state (renders only).
    let t = Instant::now();
    let ipt_full = render(&state, &ipt_cfg, &RenderPlan { full: true, ..Default::default() })
        .map_err(|e| e.to_string())?;
    let ipt_time = t.elapsed();
    let mut ipt_cache = TopLevelCache::default();
    ipt_cache.commit(ipt_full.top_cache.clone());
    let t = Instant::now();
    let ipt_partial = render(
        &changed_state,
        &ipt_cfg,
        &RenderPlan {
            full: false,
            changed: Some(&changed),
            existing_nat_chains: None,
            applied_top_level: Some(&ipt_full.top_level_hashes),
            removed: Some(&removed),
            top_cache: Some(&ipt_cache),
        },
    )
    .map_err(|e| e.to_string())?;
    let ipt_partial_time = t.elapsed();

    let pct = |a: usize, b: usize| 100.0 * a as f64 / b as f64;
    let total = full.transaction.len();
    println!(
        "kube-proxy-rules bench --proxy-mode nftables --nftables-layout {}: {n} services x {m} endpoints",
        cfg.layout.name()
    );
    println!("  synthetic state build              {:>10.1} ms", ms(build));
    println!(
        "  full render (best of 3)            {:>10.1} ms   peak RSS {:.1} MiB (+{:.1} MiB for the render)",
        ms(best),
        mib(hwm_kb),
        mib(hwm_kb.saturating_sub(base_kb))
    );
    println!(
        "  full transaction                   {:>10} bytes {:>8} operations ({} rules)",
        total, full.operations, full.rules
    );
    println!(
        "  incremental render (1 service)     {:>10.2} ms   = {:.3}% of the full render (target <= 1%)",
        ms(inc_time),
        100.0 * inc_time.as_secs_f64() / best.as_secs_f64()
    );
    println!(
        "  change detection (every service)   {:>10.1} ms   (the sync loop's fingerprints: O(services))",
        ms(fingerprints)
    );
    println!(
        "  incremental transaction (1 svc)    {:>10} bytes {:>8} operations = {:.4}% of full (target <= 1%)",
        inc.transaction.len(),
        inc.operations,
        pct(inc.transaction.len(), total)
    );
    println!(
        "  iptables mode, same state: full render {:.1} ms, payload {} bytes; partial render {:.2} ms, payload {} bytes = {:.4}%",
        ms(ipt_time),
        ipt_full.payload.len(),
        ms(ipt_partial_time),
        ipt_partial.payload.len(),
        pct(ipt_partial.payload.len(), ipt_full.payload.len())
    );
    if !args.bench_restore {
        return Ok(0);
    }
    let ns = ScratchNetns::new()?;
    let nft = Nft::in_netns(&ns.0);
    let t = Instant::now();
    nft.apply(&full.transaction).map_err(|e| format!("full nft -f: {e}"))?;
    let apply_full = t.elapsed();
    // As the backend applies it: element-only transactions over nfnetlink.
    let via = if nftables::netlink::ElementBatch::parse(&inc.transaction, cfg.node.family).is_some() {
        "netlink batch"
    } else {
        "nft -f"
    };
    let t = Instant::now();
    nft.apply_fast(&inc.transaction).map_err(|e| format!("incremental apply: {e}"))?;
    let apply_inc = t.elapsed();
    drop(ns);
    println!("  nft -f full (scratch netns)        {:>10.1} ms", ms(apply_full));
    println!(
        "  incremental apply (1 service)      {:>10.1} ms   = {:.3}% of full ({via})",
        ms(apply_inc),
        100.0 * apply_inc.as_secs_f64() / apply_full.as_secs_f64()
    );
    println!(
        "  full render / full nft -f          {:>10.3}%  (target <= 10%)",
        100.0 * best.as_secs_f64() / apply_full.as_secs_f64()
    );
    Ok(0)
}

fn mib(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

/// How long the sync loop's change detection takes on `state`: a
/// fingerprint of every service (inputs are re-read whole, so every
/// service is hashed each sync; best of 3).
fn fingerprint_time(state: &ProxyState) -> Duration {
    (0..3)
        .map(|_| {
            let t = Instant::now();
            drop(kube_proxy_rules::model::fingerprints(state));
            t.elapsed()
        })
        .min()
        .unwrap_or_default()
}
