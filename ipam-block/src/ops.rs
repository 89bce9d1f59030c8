//! Operator commands behind `calicoctl ipam …` and `calicoctl ipam pool …`:
//! show, check, release, configure, gc, and IP pool management.
//!
//! Everything here works on a [`Datastore`] (file store or etcd alike) and
//! returns plain data; the `calicoctl` binary only parses arguments and
//! prints. Writes are compare-and-swap commits, re-read and retried on
//! conflict, so operators can run these against a live cluster.
//!
//! ## What `check` calls a problem
//!
//! * **Allocation without a pod record**: an allocated address that no
//!   WorkloadEndpoint's `ipNetworks` contains. Allocations with a `type`
//!   attribute (Calico's tunnel addresses) never have a pod and are skipped.
//!   Such an allocation is *normal for a few seconds* (IPAM allocates before
//!   the plugin writes the endpoint), which is why `gc` has a grace period.
//! * **Allocation without a handle document**: the allocation's `handle_id`
//!   has no `/calico/ipam/v2/handle/<id>` document (or the allocation has no
//!   handle at all).
//! * **Handle without allocations**: a handle document that no allocation
//!   refers to; **handle count mismatch**: a handle document whose per-block
//!   counts differ from the allocations actually carrying the handle.
//! * **Block claimed by an unknown node**: a block (or affinity document)
//!   affine to `host:<node>` where `<node>` has neither a Node resource
//!   ([`model::node_key`]) nor any WorkloadEndpoint whose `spec.node` is
//!   `<node>`. (A node that runs pods but never registered a Node resource is
//!   still "known": its pods prove it exists.)
//! * **Corrupt document**: any IPAM, endpoint, node or pool document that does
//!   not decode; `gc` refuses to run while there is one (it cannot prove a leak
//!   without reading every pod record).
//!
//! ## What `gc` releases
//!
//! Only *allocations without a pod record* whose `timestamp` attribute is
//! older than the grace period (an allocation without a readable timestamp
//! only when the grace period is 0). A handle is released all-or-none: every
//! address of the handle must qualify, and they are freed in one commit
//! together with the handle document. Right before that commit the endpoints
//! are re-read and the handle re-validated; the commit itself compares the
//! revisions of every block it touches.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use calico_store::model::{
    self, AllocationBlock, IpFamily, IpPool, IpPoolSpec, IpamConfig, IpamHandle, WorkloadEndpoint,
};
use calico_store::resolve::ResolveError;
use calico_store::{Datastore, KeyValue, Revision, StoreError};
use ipnetwork::IpNetwork;
use serde::Serialize;
use thiserror::Error;

use crate::block::{self, Allocation};
use crate::pool::{self, Pool};
use crate::query;
use crate::release::{self, ReleaseCommit};
use crate::retry::{Cas, Retry};
use crate::selector::Selector;
use crate::types::PoolName;
use crate::IpamError;

/// Why an operator command failed.
#[derive(Debug, Error)]
pub enum OpsError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Ipam(#[from] IpamError),
    /// No datastore configuration could be built from `--config`, the
    /// environment and the flags.
    #[error(transparent)]
    Datastore(#[from] ResolveError),
    /// The command line or environment is wrong.
    #[error("{0}")]
    Usage(String),
    /// The request cannot be done in the current state (message says why).
    #[error("{0}")]
    Refused(String),
}

// ---------------------------------------------------------------------------
// A consistent-enough read of everything IPAM-related

/// One decoded document with the revision it was read at.
#[derive(Debug, Clone)]
pub struct Doc<T> {
    pub key: String,
    pub revision: Revision,
    pub value: T,
}

/// Everything `show`, `check` and `gc` look at. Undecodable documents are
/// collected in `corrupt` (key, reason) instead of failing the whole read.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub pools: Vec<Doc<IpPool>>,
    pub blocks: Vec<Doc<AllocationBlock>>,
    pub handles: BTreeMap<String, Doc<IpamHandle>>,
    /// (node, block) of every affinity document.
    pub affinities: Vec<(String, IpNetwork)>,
    pub endpoints: Vec<Doc<WorkloadEndpoint>>,
    pub nodes: BTreeSet<String>,
    pub config: IpamConfig,
    pub corrupt: Vec<(String, String)>,
}

fn decode_all<T: serde::de::DeserializeOwned>(
    kvs: Vec<KeyValue>,
    corrupt: &mut Vec<(String, String)>,
    decode: impl Fn(&KeyValue) -> Result<T, StoreError>,
) -> Vec<Doc<T>> {
    let mut out = Vec::new();
    for kv in kvs {
        match decode(&kv) {
            Ok(value) => out.push(Doc { key: kv.key, revision: kv.revision, value }),
            Err(StoreError::Corrupt { key, reason }) => corrupt.push((key, reason)),
            Err(e) => corrupt.push((kv.key, e.to_string())),
        }
    }
    out
}

impl Snapshot {
    pub fn load(store: &dyn Datastore) -> Result<Snapshot, OpsError> {
        let mut s = Snapshot::default();
        let c = &mut s.corrupt;
        s.pools = decode_all(store.list(&model::pools_prefix())?, c, model::decode);
        for fam in [IpFamily::V4, IpFamily::V6] {
            s.blocks.extend(decode_all(store.list(&model::blocks_prefix(fam))?, c, block::decode_block));
        }
        for h in decode_all(store.list(&model::handles_prefix())?, c, model::decode::<IpamHandle>) {
            let id = h.key.strip_prefix(&model::handles_prefix()).unwrap_or(&h.key).to_string();
            s.handles.insert(id, h);
        }
        for kv in store.list(&model::all_affinities_prefix())? {
            match model::parse_affinity_key(&kv.key) {
                Some(a) => s.affinities.push(a),
                None => c.push((kv.key, "not an affinity key".into())),
            }
        }
        s.endpoints = decode_all(store.list(&model::workload_endpoints_prefix())?, c, model::decode);
        for kv in store.list(&model::nodes_prefix())? {
            if let Some(name) = kv.key.strip_prefix(&model::nodes_prefix()) {
                s.nodes.insert(name.to_string());
            }
        }
        if let Some(kv) = store.get(model::IPAM_CONFIG_KEY)? {
            match model::decode::<IpamConfig>(&kv) {
                Ok(cfg) => s.config = cfg,
                Err(e) => c.push((kv.key, e.to_string())),
            }
        }
        Ok(s)
    }

    /// Every allocation of every block.
    pub fn allocations(&self) -> Vec<Allocation> {
        self.blocks.iter().flat_map(|b| block::allocations(&b.value)).collect()
    }

    /// Addresses some pod record (WorkloadEndpoint) holds.
    pub fn pod_ips(&self) -> BTreeSet<IpAddr> {
        self.endpoints.iter().flat_map(|e| e.value.spec.ip_networks.iter().map(|n| n.ip())).collect()
    }

    /// Nodes known to exist: a Node resource, or a pod record on it.
    pub fn known_nodes(&self) -> BTreeSet<String> {
        let mut n = self.nodes.clone();
        n.extend(self.endpoints.iter().map(|e| e.value.spec.node.clone()));
        n
    }

    fn pool_of(&self, ip: IpAddr) -> Option<&Doc<IpPool>> {
        self.pools.iter().find(|p| p.value.spec.cidr.contains(ip))
    }

    fn block_of(&self, ip: IpAddr) -> Option<&Doc<AllocationBlock>> {
        self.blocks.iter().find(|b| b.value.cidr.contains(ip))
    }
}

// ---------------------------------------------------------------------------
// show

/// Utilization of one pool or block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Usage {
    /// `IP Pool` or `Block`.
    pub grouping: &'static str,
    pub cidr: IpNetwork,
    /// Pool name, or the block's affinity (`host:<node>`, empty when none).
    pub owner: String,
    pub total: u128,
    pub in_use: u128,
}

impl Usage {
    pub fn free(&self) -> u128 {
        self.total - self.in_use.min(self.total)
    }
}

fn net_size(net: &IpNetwork) -> u128 {
    let bits = if net.is_ipv4() { 32 } else { 128 };
    1u128.checked_shl(bits - u32::from(net.prefix())).unwrap_or(u128::MAX)
}

/// Per-pool utilization, followed (with `blocks`) by each block under its pool.
pub fn show(snap: &Snapshot, blocks: bool) -> Vec<Usage> {
    let mut out = Vec::new();
    let mut pools: Vec<&Doc<IpPool>> = snap.pools.iter().collect();
    pools.sort_by_key(|p| p.value.spec.cidr);
    for p in pools {
        let cidr = p.value.spec.cidr;
        let inside: Vec<&Doc<AllocationBlock>> =
            snap.blocks.iter().filter(|b| cidr.contains(b.value.cidr.network())).collect();
        let in_use = inside.iter().map(|b| block::allocated_count(&b.value) as u128).sum();
        let mut name = p.value.metadata.name.clone();
        if p.value.spec.disabled {
            name.push_str(" (disabled)");
        }
        out.push(Usage { grouping: "IP Pool", cidr, owner: name, total: net_size(&cidr), in_use });
        if blocks {
            for b in inside {
                out.push(Usage {
                    grouping: "Block",
                    cidr: b.value.cidr,
                    owner: b.value.affinity.clone().unwrap_or_default(),
                    total: b.value.allocations.len() as u128,
                    in_use: block::allocated_count(&b.value) as u128,
                });
            }
        }
    }
    // Blocks outside every pool (a pool was deleted under them) still count.
    if blocks {
        for b in &snap.blocks {
            if !snap.pools.iter().any(|p| p.value.spec.cidr.contains(b.value.cidr.network())) {
                out.push(Usage {
                    grouping: "Block (no pool)",
                    cidr: b.value.cidr,
                    owner: b.value.affinity.clone().unwrap_or_default(),
                    total: b.value.allocations.len() as u128,
                    in_use: block::allocated_count(&b.value) as u128,
                });
            }
        }
    }
    out
}

/// What `ipam show --ip X` tells about one address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IpInfo {
    pub ip: IpAddr,
    pub pool: Option<String>,
    pub block: Option<IpNetwork>,
    pub block_affinity: Option<String>,
    pub allocated: bool,
    pub handle: Option<String>,
    pub attributes: BTreeMap<String, String>,
    /// `<namespace>/<name>` of the pod records holding the address.
    pub endpoints: Vec<String>,
}

/// An address allocated by a node from a block affine to another node
/// (`ipam show --show-borrowed`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Borrowed {
    pub ip: IpAddr,
    pub block: IpNetwork,
    /// The block's owner (`host:<node>`, empty when none).
    pub block_owner: String,
    /// The node the allocation was made for (`node` attribute).
    pub node: String,
    pub handle: Option<String>,
}

pub fn borrowed(snap: &Snapshot) -> Vec<Borrowed> {
    let mut out = Vec::new();
    for b in &snap.blocks {
        let owner = block::affinity_of(&b.value);
        for a in block::allocations(&b.value) {
            let Some(node) = a.attributes.get(block::ATTR_NODE) else { continue };
            if owner.as_ref().map(|o| o.node()) != Some(node.as_str()) {
                out.push(Borrowed {
                    ip: a.ip,
                    block: b.value.cidr,
                    block_owner: b.value.affinity.clone().unwrap_or_default(),
                    node: node.clone(),
                    handle: a.handle.clone(),
                });
            }
        }
    }
    out
}

pub fn show_ip(snap: &Snapshot, ip: IpAddr) -> IpInfo {
    let blk = snap.block_of(ip);
    let alloc = blk.and_then(|b| block::allocations(&b.value).into_iter().find(|a| a.ip == ip));
    IpInfo {
        ip,
        pool: snap.pool_of(ip).map(|p| p.value.metadata.name.clone()),
        block: blk.map(|b| b.value.cidr),
        block_affinity: blk.and_then(|b| b.value.affinity.clone()),
        allocated: alloc.is_some(),
        handle: alloc.as_ref().and_then(|a| a.handle.clone()),
        attributes: alloc.map(|a| a.attributes).unwrap_or_default(),
        endpoints: snap
            .endpoints
            .iter()
            .filter(|e| e.value.spec.ip_networks.iter().any(|n| n.ip() == ip))
            .map(|e| e.key.strip_prefix(&model::workload_endpoints_prefix()).unwrap_or(&e.key).to_string())
            .collect(),
    }
}

// ---------------------------------------------------------------------------
// check

/// One leaked-looking allocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LeakedIp {
    pub ip: IpAddr,
    pub block: IpNetwork,
    pub handle: Option<String>,
    pub node: Option<String>,
    pub timestamp: Option<String>,
    /// Seconds since `timestamp`, when it parses.
    pub age_seconds: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HandleMismatch {
    pub handle: String,
    /// Per block: what the handle document says.
    pub recorded: BTreeMap<String, u32>,
    /// Per block: allocations actually carrying the handle.
    pub actual: BTreeMap<String, u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnknownNodeClaim {
    pub node: String,
    pub block: IpNetwork,
    /// `block` (the block document is affine) or `affinity` (an affinity document).
    pub via: &'static str,
}

/// The `ipam check` report (also written as JSON with `-o`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CheckReport {
    pub allocations: usize,
    pub blocks: usize,
    pub handles: usize,
    pub endpoints: usize,
    pub allocations_without_pod: Vec<LeakedIp>,
    pub allocations_without_handle: Vec<LeakedIp>,
    pub handles_without_allocations: Vec<String>,
    pub handle_count_mismatches: Vec<HandleMismatch>,
    pub blocks_of_unknown_nodes: Vec<UnknownNodeClaim>,
    /// (key, reason)
    pub corrupt_documents: Vec<(String, String)>,
    /// Addresses held by more than one pod record.
    pub ips_in_several_pods: Vec<IpAddr>,
}

impl CheckReport {
    pub fn problems(&self) -> usize {
        self.allocations_without_pod.len()
            + self.allocations_without_handle.len()
            + self.handles_without_allocations.len()
            + self.handle_count_mismatches.len()
            + self.blocks_of_unknown_nodes.len()
            + self.corrupt_documents.len()
            + self.ips_in_several_pods.len()
    }
}

/// Attribute Calico sets on tunnel addresses (which have no pod).
const ATTR_TYPE: &str = "type";

fn leaked(a: &Allocation, now: SystemTime) -> LeakedIp {
    let timestamp = a.attributes.get(block::ATTR_TIMESTAMP).cloned();
    let age_seconds = timestamp
        .as_deref()
        .and_then(crate::timestamp::parse_timestamp)
        .and_then(|t| now.duration_since(t).ok().or(Some(Duration::ZERO)))
        .map(|d| d.as_secs());
    LeakedIp {
        ip: a.ip,
        block: a.block.net(),
        handle: a.handle.clone(),
        node: a.attributes.get(block::ATTR_NODE).cloned(),
        timestamp,
        age_seconds,
    }
}

pub fn check(snap: &Snapshot, now: SystemTime) -> CheckReport {
    let allocs = snap.allocations();
    let mut pod_count: BTreeMap<IpAddr, usize> = BTreeMap::new();
    for e in &snap.endpoints {
        for n in &e.value.spec.ip_networks {
            *pod_count.entry(n.ip()).or_default() += 1;
        }
    }
    let mut r = CheckReport {
        allocations: allocs.len(),
        blocks: snap.blocks.len(),
        handles: snap.handles.len(),
        endpoints: snap.endpoints.len(),
        corrupt_documents: snap.corrupt.clone(),
        ips_in_several_pods: pod_count.iter().filter(|(_, &n)| n > 1).map(|(ip, _)| *ip).collect(),
        ..Default::default()
    };
    let mut per_handle: BTreeMap<&str, BTreeMap<String, u32>> = BTreeMap::new();
    for a in &allocs {
        if !a.attributes.contains_key(ATTR_TYPE) && !pod_count.contains_key(&a.ip) {
            r.allocations_without_pod.push(leaked(a, now));
        }
        match a.handle.as_deref() {
            Some(h) if snap.handles.contains_key(h) => {}
            _ => r.allocations_without_handle.push(leaked(a, now)),
        }
        if let Some(h) = a.handle.as_deref() {
            *per_handle.entry(h).or_default().entry(a.block.handle_segment()).or_default() += 1;
        }
    }
    for (id, doc) in &snap.handles {
        let recorded: BTreeMap<String, u32> =
            doc.value.block.iter().filter(|(_, &n)| n > 0).map(|(k, v)| (k.clone(), *v)).collect();
        match per_handle.get(id.as_str()) {
            None => r.handles_without_allocations.push(id.clone()),
            Some(actual) if *actual != recorded => r.handle_count_mismatches.push(HandleMismatch {
                handle: id.clone(),
                recorded,
                actual: actual.clone(),
            }),
            Some(_) => {}
        }
    }
    let known = snap.known_nodes();
    for b in &snap.blocks {
        if let Some(aff) = block::affinity_of(&b.value) {
            if !known.contains(aff.node()) {
                r.blocks_of_unknown_nodes.push(UnknownNodeClaim {
                    node: aff.node().to_string(),
                    block: b.value.cidr,
                    via: "block",
                });
            }
        }
    }
    for (node, cidr) in &snap.affinities {
        let already = r.blocks_of_unknown_nodes.iter().any(|c| &c.node == node && c.block == *cidr);
        if !known.contains(node) && !already {
            r.blocks_of_unknown_nodes.push(UnknownNodeClaim {
                node: node.clone(),
                block: *cidr,
                via: "affinity",
            });
        }
    }
    r
}

// ---------------------------------------------------------------------------
// release and gc

/// Free `ips` (all currently allocated, to `handle` when given) in one commit
/// through the crate's one release path ([`release::release`]): their blocks
/// updated (an emptied block with no affinity deleted, like Calico), and the
/// handle documents decremented (deleted at zero). `still_ok` re-validates
/// against a fresh snapshot before each attempt.
fn release_in_one_commit(
    store: &dyn Datastore,
    ips: &[IpAddr],
    handle: Option<&str>,
    still_ok: &dyn Fn(&Snapshot) -> Result<(), OpsError>,
) -> Result<Vec<IpAddr>, OpsError> {
    release::release(store, format_args!("{ips:?}"), &[], |_| {
        let snap = Snapshot::load(store)?;
        still_ok(&snap)?;
        let mut commit = ReleaseCommit::new();
        for &ip in ips {
            let b = snap.block_of(ip).ok_or_else(|| {
                OpsError::Refused(format!("{ip} is not allocated: no allocation block holds it"))
            })?;
            let owner = match commit.free_ip(&b.key, || (b.value.clone(), b.revision), ip) {
                Some(owner) => owner,
                None => return Err(OpsError::Refused(format!("{ip} is not allocated"))),
            };
            if handle.is_some() && owner.as_deref() != handle {
                return Err(OpsError::Refused(format!(
                    "{ip} now belongs to handle {} instead of {}",
                    owner.as_deref().unwrap_or("<none>"),
                    handle.unwrap_or_default()
                )));
            }
        }
        commit.decrement_handles(|h| {
            Ok::<_, OpsError>(snap.handles.get(h).map(|d| (d.key.clone(), d.value.clone(), d.revision)))
        })?;
        Ok(Some(commit))
    })?;
    Ok(ips.to_vec())
}

/// `calicoctl ipam release --ip X`: free one address whatever holds it
/// (the library's single-address release); returns the handle it belonged to.
pub fn release_ip(store: &dyn Datastore, ip: IpAddr) -> Result<Option<String>, OpsError> {
    // The library's answer tells "not allocated" from "allocated without a
    // handle", so the operator is told which.
    query::release_one(store, ip)?.ok_or_else(|| OpsError::Refused(format!("{ip} is not allocated")))
}

/// What one `gc` run did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct GcReport {
    /// handle (or `ip:<addr>` for an allocation without handle) → addresses released.
    pub released: BTreeMap<String, Vec<IpAddr>>,
    /// handle → why it was kept (younger than the grace period, partly in use, changed).
    pub kept: BTreeMap<String, String>,
}

/// Release what `check` proves leaked (see the module doc).
pub fn gc(store: &dyn Datastore, grace: Duration, now: SystemTime) -> Result<GcReport, OpsError> {
    let snap = Snapshot::load(store)?;
    refuse_if_corrupt(&snap)?;
    let report = check(&snap, now);
    let mut out = GcReport::default();
    // Group the candidates by handle: all-or-none per handle.
    let mut groups: BTreeMap<String, (Option<String>, Vec<IpAddr>)> = BTreeMap::new();
    for l in &report.allocations_without_pod {
        if !old_enough(l, grace) {
            let id = l.handle.clone().unwrap_or_else(|| format!("ip:{}", l.ip));
            out.kept.insert(id, "younger than the grace period".into());
            continue;
        }
        match &l.handle {
            Some(h) => groups.entry(h.clone()).or_insert_with(|| (Some(h.clone()), Vec::new())).1.push(l.ip),
            None => {
                groups.insert(format!("ip:{}", l.ip), (None, vec![l.ip]));
            }
        }
    }
    for (id, (handle, ips)) in groups {
        if out.kept.contains_key(&id) {
            continue;
        }
        let validate = |s: &Snapshot| -> Result<(), OpsError> {
            refuse_if_corrupt(s)?;
            let fresh = check(s, now);
            let leaked: Vec<&LeakedIp> = fresh
                .allocations_without_pod
                .iter()
                .filter(|l| l.handle == handle && (handle.is_some() || ips.contains(&l.ip)))
                .collect();
            // Every address of the handle must still be allocated to it, leaked and old.
            let held: BTreeSet<IpAddr> = match &handle {
                Some(h) => {
                    s.allocations().iter().filter(|a| a.handle.as_ref() == Some(h)).map(|a| a.ip).collect()
                }
                None => ips.iter().copied().collect(),
            };
            let want: BTreeSet<IpAddr> = ips.iter().copied().collect();
            if held != want {
                return Err(OpsError::Refused("its addresses changed or some are in use".into()));
            }
            if leaked.len() != want.len() || !leaked.iter().all(|l| old_enough(l, grace)) {
                return Err(OpsError::Refused("a pod record now holds one of its addresses".into()));
            }
            Ok(())
        };
        match release_in_one_commit(store, &ips, handle.as_deref(), &validate) {
            Ok(ips) => {
                log::info!("gc released {ips:?} of {id}");
                out.released.insert(id, ips);
            }
            Err(OpsError::Refused(why)) => {
                out.kept.insert(id, why);
            }
            Err(e) => return Err(e),
        }
    }
    // Handle documents no allocation refers to are leaks of their own.
    for h in &report.handles_without_allocations {
        let Some(doc) = snap.handles.get(h) else { continue };
        // CAS on the handle's revision: if an allocation was added meanwhile,
        // its writer updated the handle and this delete conflicts.
        match store.delete(&doc.key, doc.revision) {
            Ok(_) => {
                out.released.insert(h.clone(), Vec::new());
            }
            Err(StoreError::Conflict { .. }) => {
                out.kept.insert(h.clone(), "handle changed while collecting".into());
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(out)
}

fn old_enough(l: &LeakedIp, grace: Duration) -> bool {
    match l.age_seconds {
        Some(age) => Duration::from_secs(age) >= grace,
        None => grace.is_zero(),
    }
}

fn refuse_if_corrupt(snap: &Snapshot) -> Result<(), OpsError> {
    match snap.corrupt.first() {
        Some((key, reason)) => Err(OpsError::Refused(format!(
            "refusing to garbage-collect while {key} is corrupt ({reason}); fix or remove it first"
        ))),
        None => Ok(()),
    }
}

// ---------------------------------------------------------------------------
// configure

/// `calicoctl ipam configure`: change the global IPAM config (CAS, re-read
/// on conflict).
pub fn configure(
    store: &dyn Datastore,
    strict_affinity: Option<bool>,
    max_blocks_per_host: Option<u32>,
) -> Result<IpamConfig, OpsError> {
    Retry::CAS.run("configure IPAM", |_| {
        let (mut cfg, revision) = query::ipam_config(store)?;
        if let Some(s) = strict_affinity {
            cfg.strict_affinity = s;
        }
        if let Some(m) = max_blocks_per_host {
            cfg.max_blocks_per_host = m;
        }
        // Calico's rule: a per-host block cap only makes sense when hosts
        // cannot borrow around it.
        if cfg.max_blocks_per_host > 0 && !cfg.strict_affinity {
            return Err(OpsError::Refused("maxBlocksPerHost > 0 needs --strictaffinity=true".into()));
        }
        match query::set_ipam_config(store, &cfg, revision) {
            Ok(_) => Ok(Cas::Done(cfg)),
            Err(IpamError::Store(StoreError::Conflict { key })) => Ok(Cas::Conflict { key }),
            Err(e) => Err(e.into()),
        }
    })
}

// ---------------------------------------------------------------------------
// pools

/// A pool to create.
#[derive(Debug, Clone)]
pub struct NewPool {
    pub name: String,
    pub cidr: IpNetwork,
    pub block_size: Option<u8>,
    pub disabled: bool,
    pub node_selector: Option<String>,
    pub nat_outgoing: bool,
}

/// `calicoctl ipam pool add`: create (never replace) a pool; the library
/// validates it like Calico (host bits, block size range, overlap, selector).
pub fn pool_add(store: &dyn Datastore, p: &NewPool) -> Result<Pool, OpsError> {
    let name = PoolName::new(p.name.clone())?;
    if let Some(sel) = &p.node_selector {
        Selector::parse(sel)?;
    }
    let spec = IpPoolSpec {
        cidr: p.cidr,
        block_size: p.block_size,
        node_selector: p.node_selector.clone(),
        disabled: p.disabled,
        nat_outgoing: p.nat_outgoing,
    };
    match pool::create_pool(store, &name, spec) {
        Ok(pool) => Ok(pool),
        Err(IpamError::Store(StoreError::Conflict { .. })) => {
            Err(OpsError::Refused(format!("pool {name} already exists")))
        }
        Err(e) => Err(e.into()),
    }
}

pub fn pool_list(store: &dyn Datastore) -> Result<Vec<Pool>, OpsError> {
    Ok(pool::list_pools(store)?)
}

/// `pool enable` / `pool disable`.
pub fn pool_set_disabled(store: &dyn Datastore, name: &str, disabled: bool) -> Result<(), OpsError> {
    let name = PoolName::new(name)?;
    match pool::set_pool_disabled(store, &name, disabled) {
        Err(IpamError::PoolNotUsable(_)) => Err(OpsError::Refused(format!("pool {name} does not exist"))),
        other => Ok(other?),
    }
}

// ---------------------------------------------------------------------------
// small parsers shared with the binary

/// `15m`, `90s`, `1h`, `0s`, `250ms`, or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, OpsError> {
    let s = s.trim();
    let bad = || OpsError::Usage(format!("invalid duration {s:?} (examples: 0s, 90s, 15m, 1h)"));
    let split = s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| bad())?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(bad()),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(bad());
    }
    // Too big for a Duration (e.g. `1e30h`) is a usage error, not a panic.
    Duration::try_from_secs_f64(secs).map_err(|_| bad())
}

/// Render rows as an aligned text table (header first).
pub fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> =
        (0..cols).map(|c| rows.iter().filter_map(|r| r.get(c)).map(|s| s.len()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for (i, r) in rows.iter().enumerate() {
        let line: Vec<String> =
            r.iter().enumerate().map(|(c, s)| format!("{s:<w$}", w = widths[c])).collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
        if i == 0 {
            let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
            out.push_str(&rule.join("  "));
            out.push('\n');
        }
    }
    out
}

/// `5 (8%)`.
pub fn with_percent(n: u128, total: u128) -> String {
    if total == 0 {
        return n.to_string();
    }
    format!("{n} ({}%)", n * 100 / total)
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "Checked {} allocations in {} blocks, {} handles, {} workload endpoints.",
            self.allocations, self.blocks, self.handles, self.endpoints
        )?;
        let ip_line = |l: &LeakedIp| {
            format!(
                "  {} (block {}, handle {}, node {}, age {})",
                l.ip,
                l.block,
                l.handle.as_deref().unwrap_or("<none>"),
                l.node.as_deref().unwrap_or("?"),
                l.age_seconds.map(|s| format!("{s}s")).unwrap_or_else(|| "unknown".into())
            )
        };
        let sections: [(&str, Vec<String>); 7] = [
            ("allocations without a pod record", self.allocations_without_pod.iter().map(ip_line).collect()),
            (
                "allocations without a handle document",
                self.allocations_without_handle.iter().map(ip_line).collect(),
            ),
            (
                "handles without allocations",
                self.handles_without_allocations.iter().map(|h| format!("  {h}")).collect(),
            ),
            (
                "handle count mismatches",
                self.handle_count_mismatches
                    .iter()
                    .map(|m| format!("  {}: recorded {:?}, actual {:?}", m.handle, m.recorded, m.actual))
                    .collect(),
            ),
            (
                "blocks claimed by unknown nodes",
                self.blocks_of_unknown_nodes
                    .iter()
                    .map(|c| format!("  {} by {} ({})", c.block, c.node, c.via))
                    .collect(),
            ),
            (
                "corrupt documents",
                self.corrupt_documents.iter().map(|(k, r)| format!("  {k}: {r}")).collect(),
            ),
            (
                "addresses held by several pods",
                self.ips_in_several_pods.iter().map(|ip| format!("  {ip}")).collect(),
            ),
        ];
        for (title, lines) in sections {
            writeln!(f, "Found {} {title}.", lines.len())?;
            for l in lines {
                writeln!(f, "{l}")?;
            }
        }
        writeln!(f, "{} problem(s) found.", self.problems())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::{new_block, ATTR_NODE, ATTR_TIMESTAMP};
    use crate::types::{Affinity, BlockCidr, Handle};
    use calico_store::file::FileStore;
    use calico_store::model::{AllocationAttribute, ObjectMeta, WorkloadEndpointSpec};

    fn store() -> (tempfile::TempDir, FileStore) {
        let d = tempfile::tempdir().unwrap();
        let s = FileStore::open(d.path()).unwrap();
        (d, s)
    }

    fn attr(handle: &str, node: &str, ts: &str) -> AllocationAttribute {
        let mut sec = BTreeMap::new();
        sec.insert(ATTR_NODE.to_string(), node.to_string());
        sec.insert(ATTR_TIMESTAMP.to_string(), ts.to_string());
        AllocationAttribute { handle_id: Some(handle.into()), secondary: Some(sec) }
    }

    /// Seed a pool, one block on `node` with `allocs` (handle, count), and handle docs.
    fn seed(s: &dyn Datastore, node: &str, allocs: &[(&str, usize, &str)]) -> BlockCidr {
        pool_add(
            s,
            &NewPool {
                name: "p1".into(),
                cidr: "10.1.0.0/16".parse().unwrap(),
                block_size: None,
                disabled: false,
                node_selector: None,
                nat_outgoing: false,
            },
        )
        .unwrap();
        let cidr: BlockCidr = "10.1.0.0/26".parse().unwrap();
        let mut b = new_block(cidr, Some(&Affinity::host(node)), false);
        for (h, n, ts) in allocs {
            for _ in 0..*n {
                block::allocate_next(&mut b, &attr(h, node, ts)).unwrap();
            }
            let mut doc = IpamHandle::default();
            doc.block.insert(cidr.to_string(), *n as u32);
            s.create(&Handle::new(*h).unwrap().key(), &model::encode(&doc)).unwrap();
        }
        s.create(&cidr.key(), &model::encode(&b)).unwrap();
        s.create(&model::affinity_key(node, &cidr.net()), br#"{"state":"confirmed"}"#).unwrap();
        cidr
    }

    fn wep(s: &dyn Datastore, node: &str, name: &str, ip: &str) {
        let spec = WorkloadEndpointSpec {
            orchestrator: "cni".into(),
            workload: name.into(),
            node: node.into(),
            container_id: name.into(),
            pod: name.into(),
            endpoint: "eth0".into(),
            interface_name: "cali0".into(),
            mac: String::new(),
            ip_networks: vec![format!("{ip}/32").parse().unwrap()],
            profiles: vec![],
            ports: vec![],
        };
        let meta = ObjectMeta { name: name.into(), namespace: Some("default".into()), ..Default::default() };
        let w = WorkloadEndpoint::new("WorkloadEndpoint", meta, spec);
        s.create(&model::workload_endpoint_key("default", name), &model::encode(&w)).unwrap();
    }

    const OLD: &str = "2020-01-01T00:00:00Z";

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_duration("0s").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("-1s").is_err() && parse_duration("5x").is_err());
        assert!(parse_duration("99999999999999999999999999h").is_err(), "too big for a Duration");
    }

    #[test]
    fn check_finds_each_kind_of_problem() {
        let (_d, s) = store();
        let cidr = seed(&s, "n1", &[("net.a", 1, OLD), ("net.b", 2, OLD)]);
        // net.a has a pod; net.b has none (leak of 2); a stray handle doc; a
        // handle doc with a wrong count; a block of a node nobody knows.
        wep(&s, "n1", "pod-a", "10.1.0.0");
        let mut stray = IpamHandle::default();
        stray.block.insert(cidr.to_string(), 1);
        s.create(&Handle::new("net.stray").unwrap().key(), &model::encode(&stray)).unwrap();
        let kv = s.get(&Handle::new("net.b").unwrap().key()).unwrap().unwrap();
        let mut b: IpamHandle = model::decode(&kv).unwrap();
        b.block.insert(cidr.to_string(), 5);
        s.update(&kv.key, &model::encode(&b), kv.revision).unwrap();
        let ghost: BlockCidr = "10.1.0.64/26".parse().unwrap();
        s.create(&ghost.key(), &model::encode(&new_block(ghost, Some(&Affinity::host("ghost")), false)))
            .unwrap();
        s.create(&model::block_key(&"10.1.9.0/26".parse().unwrap()), b"{oops").unwrap();

        let snap = Snapshot::load(&s).unwrap();
        let r = check(&snap, SystemTime::now());
        assert_eq!(r.allocations, 3);
        let leaked: Vec<String> = r.allocations_without_pod.iter().map(|l| l.ip.to_string()).collect();
        assert_eq!(leaked, ["10.1.0.1", "10.1.0.2"]);
        assert!(r.allocations_without_pod[0].age_seconds.unwrap() > 86400);
        assert_eq!(r.handles_without_allocations, ["net.stray"]);
        assert_eq!(r.handle_count_mismatches.len(), 1);
        assert_eq!(r.handle_count_mismatches[0].handle, "net.b");
        assert_eq!(r.blocks_of_unknown_nodes.len(), 1);
        assert_eq!(r.blocks_of_unknown_nodes[0].node, "ghost");
        assert_eq!(r.corrupt_documents.len(), 1);
        assert!(r.corrupt_documents[0].0.ends_with("10.1.9.0-26"));
        assert!(r.allocations_without_handle.is_empty());
        assert_eq!(r.problems(), 2 + 1 + 1 + 1 + 1);
        let text = r.to_string();
        assert!(text.contains("Found 2 allocations without a pod record"), "{text}");
        // gc refuses while a document is corrupt.
        assert!(
            matches!(gc(&s, Duration::ZERO, SystemTime::now()), Err(OpsError::Refused(m)) if m.contains("10.1.9.0-26"))
        );
    }

    #[test]
    fn gc_releases_only_old_leaks_whole_handles_at_once() {
        let (_d, s) = store();
        let now = SystemTime::now();
        let fresh = "2999-01-01T00:00:00Z";
        seed(&s, "n1", &[("net.live", 1, OLD), ("net.leak", 2, OLD), ("net.young", 1, fresh)]);
        wep(&s, "n1", "live", "10.1.0.0");
        let r = gc(&s, Duration::from_secs(900), now).unwrap();
        assert_eq!(r.released.len(), 1, "{r:?}");
        assert_eq!(r.released["net.leak"].len(), 2);
        assert!(r.kept.contains_key("net.young"));
        let snap = Snapshot::load(&s).unwrap();
        assert!(!snap.handles.contains_key("net.leak"));
        assert!(snap.handles.contains_key("net.live") && snap.handles.contains_key("net.young"));
        let after = check(&snap, now);
        assert_eq!(after.allocations, 2);
        assert!(after.handle_count_mismatches.is_empty() && after.handles_without_allocations.is_empty());
        // Grace 0 takes the young one too; the live pod's address stays.
        let r = gc(&s, Duration::ZERO, now).unwrap();
        assert_eq!(r.released.keys().collect::<Vec<_>>(), ["net.young"]);
        let after = check(&Snapshot::load(&s).unwrap(), now);
        assert_eq!((after.allocations, after.problems()), (1, 0));
    }

    #[test]
    fn gc_keeps_a_handle_partly_in_use() {
        let (_d, s) = store();
        seed(&s, "n1", &[("net.multi", 2, OLD)]);
        wep(&s, "n1", "multi", "10.1.0.1");
        let r = gc(&s, Duration::ZERO, SystemTime::now()).unwrap();
        assert!(r.released.is_empty(), "{r:?}");
        assert_eq!(check(&Snapshot::load(&s).unwrap(), SystemTime::now()).allocations, 2);
    }

    #[test]
    fn release_ip_frees_the_address_and_its_handle() {
        let (_d, s) = store();
        seed(&s, "n1", &[("net.x", 2, OLD)]);
        release_ip(&s, "10.1.0.0".parse().unwrap()).unwrap();
        let snap = Snapshot::load(&s).unwrap();
        assert_eq!(snap.handles["net.x"].value.block["10.1.0.0/26"], 1);
        assert!(!show_ip(&snap, "10.1.0.0".parse().unwrap()).allocated);
        let info = show_ip(&snap, "10.1.0.1".parse().unwrap());
        assert_eq!(
            (info.allocated, info.handle.as_deref(), info.pool.as_deref()),
            (true, Some("net.x"), Some("p1"))
        );
        assert_eq!(info.attributes[ATTR_NODE], "n1");
        release_ip(&s, "10.1.0.1".parse().unwrap()).unwrap();
        let snap = Snapshot::load(&s).unwrap();
        assert!(snap.handles.is_empty());
        // The affine block stays (empty); releasing again is refused.
        assert_eq!(snap.blocks.len(), 1);
        assert!(matches!(release_ip(&s, "10.1.0.1".parse().unwrap()), Err(OpsError::Refused(_))));
        assert!(matches!(release_ip(&s, "10.2.0.1".parse().unwrap()), Err(OpsError::Refused(_))));
    }

    #[test]
    fn show_counts_pools_and_blocks() {
        let (_d, s) = store();
        seed(&s, "n1", &[("net.a", 3, OLD)]);
        let rows = show(&Snapshot::load(&s).unwrap(), true);
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[0].total, rows[0].in_use, rows[0].free()), (65536, 3, 65533));
        assert_eq!((rows[1].grouping, rows[1].total, rows[1].in_use), ("Block", 64, 3));
        assert_eq!(rows[1].owner, "host:n1");
        assert_eq!(show(&Snapshot::load(&s).unwrap(), false).len(), 1);
        assert!(borrowed(&Snapshot::load(&s).unwrap()).is_empty());
        // An allocation for n2 in n1's block is borrowed.
        let kv = s.get(&model::block_key(&"10.1.0.0/26".parse().unwrap())).unwrap().unwrap();
        let mut b: AllocationBlock = model::decode(&kv).unwrap();
        block::allocate_next(&mut b, &attr("net.n2", "n2", OLD)).unwrap();
        s.update(&kv.key, &model::encode(&b), kv.revision).unwrap();
        let got = borrowed(&Snapshot::load(&s).unwrap());
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].node.as_str(), got[0].block_owner.as_str()), ("n2", "host:n1"));
    }

    #[test]
    fn configure_and_pools_validate() {
        let (_d, s) = store();
        assert!(matches!(configure(&s, None, Some(4)), Err(OpsError::Refused(_))));
        let cfg = configure(&s, Some(true), Some(4)).unwrap();
        assert!(cfg.strict_affinity && cfg.max_blocks_per_host == 4);
        let stored: IpamConfig = model::decode(&s.get(model::IPAM_CONFIG_KEY).unwrap().unwrap()).unwrap();
        assert_eq!(stored, cfg);
        let cfg = configure(&s, None, Some(0)).unwrap();
        assert!(cfg.strict_affinity && cfg.max_blocks_per_host == 0);

        let mk = |name: &str, cidr: &str, bs: Option<u8>| NewPool {
            name: name.into(),
            cidr: cidr.parse().unwrap(),
            block_size: bs,
            disabled: false,
            node_selector: Some("all()".into()),
            nat_outgoing: false,
        };
        pool_add(&s, &mk("a", "10.0.0.0/16", None)).unwrap();
        assert!(matches!(pool_add(&s, &mk("a", "10.9.0.0/16", None)), Err(OpsError::Refused(_))));
        let invalid =
            |r: Result<Pool, OpsError>| matches!(r, Err(OpsError::Ipam(IpamError::InvalidConfig(_))));
        assert!(invalid(pool_add(&s, &mk("b", "10.0.128.0/17", None))), "overlap");
        assert!(invalid(pool_add(&s, &mk("c", "10.1.0.0/16", Some(8)))), "block size range");
        assert!(invalid(pool_add(&s, &mk("d", "10.2.0.0/28", Some(26)))), "block larger than pool");
        assert!(invalid(pool_add(&s, &mk("e", "10.3.0.1/16", None))), "host bits");
        // Found by fuzzing: pools Calico's IPPool validation refuses.
        for (name, cidr) in
            [("g", "0.0.0.0/0"), ("h", "169.254.0.0/16"), ("i", "::/0"), ("j", "224.0.0.0/24")]
        {
            assert!(invalid(pool_add(&s, &mk(name, cidr, None))), "{cidr}");
        }
        let bad_sel = NewPool { node_selector: Some("zone ==".into()), ..mk("f", "10.4.0.0/16", None) };
        assert!(invalid(pool_add(&s, &bad_sel)), "selector");
        pool_add(&s, &mk("v6", "fd00::/48", None)).unwrap();
        assert_eq!(pool_list(&s).unwrap().len(), 2);
        pool_set_disabled(&s, "a", true).unwrap();
        assert!(pool_list(&s).unwrap().iter().find(|p| p.name.as_str() == "a").unwrap().spec.disabled);
        pool_set_disabled(&s, "a", false).unwrap();
        assert!(!pool_list(&s).unwrap().iter().find(|p| p.name.as_str() == "a").unwrap().spec.disabled);
        assert!(matches!(pool_set_disabled(&s, "nope", true), Err(OpsError::Refused(_))));
    }
}
