//! `run`: keep the rules in sync, event-driven.
//!
//! The sources ([`crate::source`]: the API watchers, inotify on the input
//! files, the pod records) send events down one channel; the loop waits on
//! it and on its timers (the sync period, the canary check, a retry after a
//! failure, the min sync period that holds back a burst of changes), never
//! polls. A sync re-reads only what changed (the files after a file event,
//! the pod records after a records event; the API objects are in the
//! watchers' cache) and builds the state; the syncers' change tracking
//! finds the services that changed (partial syncs, as kube-proxy's).
//!
//! With the API source, no rules are written before every watcher has
//! listed once. The Node object gives the node IPs when `--node-ip` is not
//! set (a change rebuilds the syncers: their next sync is full) and its
//! labels (the zone, for topology-aware endpoints).
//!
//! Health ([`crate::health`]) and metrics ([`crate::metrics`]) are served
//! from the same runtime as the watchers and fed by this loop.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Instant, SystemTime};

use calico_store::model::WorkloadEndpoint;

use crate::cli::{Args, PodRecords};
use crate::commands::{family_states, report, with_ipv4_leftovers, FamilySyncers};
use crate::health::{HealthServers, ServiceHealth};
use crate::inputs::{self, Loaded};
use crate::k8s::{self, ObjectError, Objects};
use crate::metrics::Metrics;
use crate::model::endpoints::{self, SliceEndpoints};
use crate::model::{service, ProxyState};
use crate::source::api::{ApiSource, Kind, NodeInfo};
use crate::source::{self, Event};

/// What changed since the last sync.
#[derive(Debug, Default)]
struct Dirty {
    files: bool,
    records: bool,
    api: bool,
    /// The Node object changed in what the rules depend on (its IPs, its zone).
    node: bool,
    /// EndpointSlice change trigger times (network programming latency).
    trigger_times: Vec<SystemTime>,
}

impl Dirty {
    fn any(&self) -> bool {
        self.files || self.records || self.api || self.node
    }
}

/// The file inputs as last read, with what the apiserver would allocate
/// (ClusterIPs, NodePorts) filled in and the notes saying so.
struct FileInputs {
    objs: Objects,
    /// `objs.slices`, converted once per read.
    slices: Vec<SliceEndpoints>,
    errors: Vec<ObjectError>,
    notes: Vec<String>,
}

/// The inputs as last read.
struct Cached {
    files: Option<FileInputs>,
    records: Option<(Vec<WorkloadEndpoint>, Vec<ObjectError>)>,
}

/// Keep the rules in sync until the process is stopped.
pub fn run_loop(args: &Args, records: &PodRecords) -> Result<i32, String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("kube-proxy-rules-io")
        .enable_all()
        .build()
        .map_err(|e| format!("starting the I/O runtime: {e}"))?;
    let (tx, rx) = mpsc::channel();
    let node_name = args.node_name()?;
    let metrics = Metrics::new(args.proxy_mode);
    let health = HealthServers::start(&rt, args, metrics.clone())?;
    metrics.serve(&rt, args.metrics_bind_address)?;
    let api = match args.api_settings() {
        Some(settings) => Some(ApiSource::start(&rt, &settings, &node_name, tx.clone())?),
        None => None,
    };
    source::files::watch(&args.inputs, tx.clone())?;
    if let Some(store) = records.store() {
        source::records::watch(store, records.revision().unwrap_or(0), tx.clone())?;
    }

    let mut syncers = FamilySyncers::default();
    let mut cur = args.clone();
    let mut node: Option<NodeInfo> = None;
    let mut cached = Cached { files: None, records: None };
    let mut dirty = Dirty { files: true, records: true, ..Default::default() };
    let mut last_sync: Option<Instant> = None;
    let mut last_canary = Instant::now();
    let mut retry_at: Option<Instant> = None;
    let mut waiting_logged = false;
    let mut addresses_changed = false;
    loop {
        // Sleep until an event or the next timer.
        let now = Instant::now();
        let mut wake = last_sync.map_or(now, |t| t + args.sync_period);
        if last_sync.is_some() && !args.dry_run {
            wake = wake.min(last_canary + args.sync_period);
        }
        if let Some(t) = retry_at {
            wake = wake.min(t);
        }
        if dirty.any() {
            wake = wake.min(last_sync.map_or(now, |t| t + args.min_sync_period));
        }
        let first = match rx.recv_timeout(wake.saturating_duration_since(now)) {
            Ok(ev) => Some(ev),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => return Err("every change source stopped".into()),
        };
        let mut node_event = false;
        for ev in first.into_iter().chain(rx.try_iter()) {
            if matches!(&ev, Event::Api(c) if c.kind == Kind::Node) {
                // A Node update (kubelet's status heartbeats) is a change
                // for the rules only if its IPs or zone changed: seen below.
                node_event = true;
                continue;
            }
            health.queued();
            metrics.queued();
            match ev {
                Event::Files => dirty.files = true,
                Event::Records => dirty.records = true,
                Event::Api(change) => {
                    metrics.api_change(&change);
                    dirty.trigger_times.extend(change.trigger_times);
                    dirty.api = true;
                }
            }
        }

        if let Some(api) = &api {
            let cache = api.cache.lock();
            if !cache.synced() {
                if !waiting_logged {
                    log::info!("waiting for the API server's Services, EndpointSlices and Node to be listed");
                    waiting_logged = true;
                }
                continue;
            }
            if node_event || node.is_none() {
                // No Node object: eligible, as kube-proxy until a Node says otherwise.
                health.node_eligible(cache.node.as_ref().is_none_or(|n| n.eligible));
                let seen = cache.node.clone().unwrap_or_default();
                drop(cache);
                let relevant = |n: &NodeInfo| (n.node_ips(), n.zone().map(str::to_string));
                if node.as_ref().map(relevant) != Some(relevant(&seen)) {
                    dirty.node |= node.is_some();
                    apply_node(args, &mut cur, &seen, &mut syncers);
                }
                node = Some(seen);
            }
        }

        for (family, syncer) in syncers.syncers.iter_mut() {
            if syncer.set_local_addresses(cur.local_addresses(*family, false)) {
                log::info!("{family} node addresses changed: the next sync is a full one");
                addresses_changed = true;
            }
        }
        if !args.dry_run && last_sync.is_some() && last_canary.elapsed() >= args.sync_period {
            last_canary = Instant::now();
            for (_, syncer) in syncers.syncers.iter_mut() {
                match syncer.check_canary() {
                    Ok(Some(reason)) => log::info!("{reason}: forcing a full sync"),
                    Ok(None) => {}
                    Err(e) => log::error!("{e}"),
                }
            }
        }
        let changed = dirty.any();
        let periodic = last_sync.is_none_or(|t| t.elapsed() >= args.sync_period);
        let retry_due = retry_at.is_some_and(|t| Instant::now() >= t);
        let rate_ok = last_sync.is_none_or(|t| t.elapsed() >= args.min_sync_period);
        let forced = addresses_changed || syncers.syncers.iter().any(|(_, s)| s.canary_forced());
        if !((changed || periodic || retry_due || forced) && rate_ok) {
            continue;
        }
        addresses_changed = false;

        dirty.node = false;
        let load_started = Instant::now();
        let loaded = match load(&cur, records, &mut cached, &mut dirty, api.as_ref()) {
            Ok(l) => l,
            Err(e) => {
                log::error!("{e}");
                health.queued();
                retry_at = Some(Instant::now() + args.sync_period);
                last_sync = Some(Instant::now());
                continue;
            }
        };
        let state_time = load_started.elapsed();
        if changed {
            report(&loaded);
        }
        let services_health = ServiceHealth::of(&loaded.state, &node_name);
        metrics.no_local_endpoints(&loaded.state, &node_name);
        let mut families = family_states(&cur, loaded.state);
        if last_sync.is_none() {
            families = with_ipv4_leftovers(&cur, families);
        }
        families.retain(|(f, _)| syncers.usable(&cur, *f));
        // A family synced before stays: its rules follow its (now empty) state.
        for (f, _) in &syncers.syncers {
            if !families.iter().any(|(g, _)| g == f) {
                families.push((*f, ProxyState::default()));
            }
        }
        families.sort_by_key(|(f, _)| *f);
        let triggers = std::mem::take(&mut dirty.trigger_times);
        let mut failed = false;
        for (family, state) in &families {
            let syncer = match syncers.get(&cur, *family) {
                Ok(s) => s,
                Err(e) => {
                    log::error!("{family}: {e}");
                    failed = true;
                    continue;
                }
            };
            if args.dry_run {
                if changed || periodic {
                    if let Err(e) = syncer.dry_run(state) {
                        log::error!("{e}");
                    }
                }
                continue;
            }
            let started = Instant::now();
            let result = syncer.sync_once(state);
            let tag = syncers.tag(*family);
            match result {
                Ok(done) => {
                    let took = started.elapsed();
                    metrics.synced(&done, took);
                    // The sync's time, then its parts: building the state
                    // from the inputs (shared by the families), rendering,
                    // applying (`make bench`'s latency benchmark reads them).
                    let render = done.render.unwrap_or_default();
                    log::info!(
                        "{tag}{}, {took:?} (state {state_time:?}, render {render:?}, apply {:?})",
                        done.line,
                        took.saturating_sub(render)
                    );
                }
                Err(e) => {
                    metrics.sync_failed();
                    log::error!("{tag}sync failed, retrying with a full sync in {:?}: {e}", args.sync_period);
                    failed = true;
                }
            }
        }
        last_sync = Some(Instant::now());
        if failed {
            retry_at = Some(Instant::now() + args.sync_period);
            // Queued until a sync succeeds: /healthz turns 503 once that
            // takes longer than the health timeout.
            health.queued();
        } else {
            retry_at = None;
            health.updated(services_health);
            metrics.programmed(&triggers);
        }
    }
}

/// The Node object changed: take its addresses as the node IPs when
/// `--node-ip` is not set (the syncers are rebuilt: NodePorts and the
/// local-traffic rules follow the node IPs), and its
/// `topology.kubernetes.io/zone` label as the zone when `--node-zone` is not
/// set (the syncers take it: topology hints follow it). Either way the next
/// sync is full.
fn apply_node(args: &Args, cur: &mut Args, node: &NodeInfo, syncers: &mut FamilySyncers) {
    if args.zone.is_none() {
        let zone = node.zone().map(str::to_string);
        if zone != cur.zone {
            log::info!("node zone from the Node object: {zone:?}; the next sync is a full one");
            for (_, syncer) in syncers.syncers.iter_mut() {
                syncer.set_zone(zone.clone());
            }
            // Syncers made later take it from here.
            cur.zone = zone;
        }
    }
    if !args.node_ips.is_empty() {
        return;
    }
    let ips = node.node_ips();
    if ips != cur.node_ips {
        log::info!("node IPs from the Node object: {ips:?}; the next sync is a full one");
        cur.node_ips = ips;
        syncers.syncers.clear();
    }
}

/// Read what changed and build the state from the files, the API cache and
/// the pod records.
fn load(
    args: &Args,
    records: &PodRecords,
    cached: &mut Cached,
    dirty: &mut Dirty,
    api: Option<&ApiSource>,
) -> Result<Loaded, String> {
    if dirty.files || cached.files.is_none() {
        let (mut objs, errors) = k8s::load(&args.inputs);
        let notes = service::allocate(&mut objs.services, &args.service_cidrs);
        let slices = objs.slices.iter().map(endpoints::convert_slice).collect();
        cached.files = Some(FileInputs { objs, slices, errors, notes });
    }
    if dirty.records || cached.records.is_none() {
        cached.records = Some(records.read()?);
    }
    dirty.files = false;
    dirty.records = false;
    dirty.api = false;
    let (Some(files), Some((weps, record_errors))) = (&cached.files, &cached.records) else {
        return Err("inputs not read".into());
    };
    // The API's objects are shared with the cache, not copied, and the
    // watchers are not held up while the state is built.
    let (api_services, api_slices) = api.map(|a| a.cache.lock().snapshot()).unwrap_or_default();
    let mut services: Vec<&k8s::Service> = files.objs.services.iter().collect();
    let mut slices: Vec<&SliceEndpoints> = files.slices.iter().collect();
    services.extend(api_services.iter().map(|s| &**s));
    slices.extend(api_slices.iter().map(|s| &**s));
    let mut loaded = inputs::build_state_from(&services, &slices, &files.objs, weps);
    let file_objs = &files.objs;
    let mut errors = files.errors.clone();
    errors.append(&mut loaded.errors);
    errors.extend(record_errors.iter().cloned());
    loaded.errors = errors;
    let mut notes = files.notes.clone();
    notes.append(&mut loaded.notes);
    loaded.notes = notes;
    log::debug!(
        "loaded {} service ports with {} endpoints ({} objects from files, {} pod records)",
        loaded.state.services.len(),
        loaded.state.total_endpoints(),
        file_objs.services.len() + file_objs.slices.len(),
        weps.len()
    );
    Ok(loaded)
}
