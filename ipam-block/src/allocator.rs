//! The allocator: assign addresses to a handle from the node's blocks,
//! claiming or borrowing blocks when needed, and release them again.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::net::IpAddr;
use std::path::PathBuf;

use calico_store::model::{
    self, AffinityState, AllocationAttribute, AllocationBlock, BlockAffinity, IpFamily, IpamConfig,
    IpamHandle,
};
use calico_store::{Datastore, Op, Revision, StoreError};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use crate::block::{self, ATTR_NAMESPACE, ATTR_NODE, ATTR_POD, ATTR_TIMESTAMP};
use crate::hint::{Hint, HintDir};
use crate::pool::{self, Pool};
use crate::release::{self, ReleaseCommit};
use crate::retry::{Cas, Retry};
use crate::types::{Affinity, BlockCidr, Handle, PoolName, PoolRef};
use crate::IpamError;

/// What to allocate in one address family.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FamilyRequest {
    /// `ipam.ipv4_pools` / `ipv6_pools`: empty = every enabled pool selecting the node.
    pub pools: Vec<PoolRef>,
    /// One specific address (`CNI_ARGS` `IP=`) instead of the next free one.
    pub ip: Option<IpAddr>,
}

/// One allocation request: a handle, its attributes and the families wanted.
/// Both families are committed together: either every requested address is
/// assigned or none is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssignRequest {
    pub handle: Handle,
    /// `K8S_POD_NAMESPACE` / `K8S_POD_NAME`, stored as secondary attributes.
    pub namespace: Option<String>,
    pub pod: Option<String>,
    pub ipv4: Option<FamilyRequest>,
    pub ipv6: Option<FamilyRequest>,
}

/// One assigned address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssignedIp {
    pub ip: IpAddr,
    pub block: BlockCidr,
    pub pool: PoolName,
}

/// The IPAM client of one node over any [`Datastore`].
pub struct Ipam<'a> {
    store: &'a dyn Datastore,
    node: String,
    affinity: Affinity,
    hints: Option<HintDir>,
    lock_path: Option<PathBuf>,
}

/// Name of the node-wide lock file in the state directory.
pub const HOST_LOCK_FILE: &str = "ipam.lock";

impl<'a> Ipam<'a> {
    /// An IPAM client for `node` without local state: every allocation takes
    /// the full path (pools, affinities, blocks) and concurrency is handled by
    /// CAS retries alone.
    pub fn new(store: &'a dyn Datastore, node: &str) -> Ipam<'a> {
        Ipam { store, node: node.to_string(), affinity: Affinity::host(node), hints: None, lock_path: None }
    }

    /// Keep node-local state in `dir` (created on demand): the allocation
    /// hint (see [`crate::hint`]) and `ipam.lock`, a `flock` held around each
    /// assign/release so that this node's plugin processes queue instead of
    /// racing on the same block (like calico-ipam's host-wide lock), until
    /// the commit is visible (not until it is durable: see
    /// [`calico_store::Datastore::commit_then`]). The datastore's CAS still
    /// protects against other nodes.
    pub fn with_state_dir(mut self, dir: impl Into<PathBuf>) -> Ipam<'a> {
        let dir = dir.into();
        self.hints = Some(HintDir::new(&dir, &self.node));
        self.lock_path = Some(dir.join(HOST_LOCK_FILE));
        self
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn store(&self) -> &dyn Datastore {
        self.store
    }

    fn host_lock(&self) -> Result<Option<Flock<File>>, IpamError> {
        let Some(path) = &self.lock_path else { return Ok(None) };
        let open = || std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(path);
        let mut file = match open() {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent)
                        .map_err(|e| StoreError::io(parent.display().to_string(), e))?;
                }
                open().map_err(|e| StoreError::io(path.display().to_string(), e))?
            }
            Err(e) => return Err(StoreError::io(path.display().to_string(), e).into()),
        };
        loop {
            match Flock::lock(file, FlockArg::LockExclusive) {
                Ok(g) => return Ok(Some(g)),
                Err((f, Errno::EINTR)) => file = f,
                Err((_, errno)) => {
                    let e = std::io::Error::from_raw_os_error(errno as i32);
                    return Err(StoreError::io(path.display().to_string(), e).into());
                }
            }
        }
    }

    /// Assign the requested addresses to `req.handle` (Calico's AutoAssign /
    /// AssignIP). Either all requested families succeed or nothing changes.
    ///
    /// Steady state (a free address in the node's hinted block): one get of
    /// the block's pool and one commit of block + handle.
    pub fn assign(&self, req: &AssignRequest) -> Result<Vec<AssignedIp>, IpamError> {
        self.assign_with(req, |_| Ok(Vec::new()))
    }

    /// [`Ipam::assign`] plus the caller's own writes in the same atomic
    /// commit: `extra` gets the addresses about to be assigned and returns
    /// ops (e.g. the workload endpoint record of an in-process plugin), so
    /// the record and the allocation exist together or not at all. `extra`
    /// may run once per attempt. A conflict on one of its keys is returned
    /// as `Store(Conflict)` (not retried: only the caller knows how).
    pub fn assign_with<F>(&self, req: &AssignRequest, extra: F) -> Result<Vec<AssignedIp>, IpamError>
    where
        F: Fn(&[AssignedIp]) -> Result<Vec<Op>, IpamError>,
    {
        if req.ipv4.is_none() && req.ipv6.is_none() {
            return Err(IpamError::InvalidConfig("no address family requested".to_string()));
        }
        // Held until the commit is visible, not until it is durable: the
        // next allocation on this node reads the new block at once, and its
        // commit can share this one's flush (see `Datastore::commit_then`).
        let mut lock = self.host_lock()?;
        let attr = self.attribute(req);
        let mut s = Session::new(self);
        let families: Vec<(IpFamily, &FamilyRequest)> =
            [(IpFamily::V4, &req.ipv4), (IpFamily::V6, &req.ipv6)]
                .into_iter()
                .filter_map(|(f, r)| r.as_ref().map(|r| (f, r)))
                .collect();
        for (f, r) in &families {
            if let Some(ip) = r.ip {
                if IpFamily::of_addr(&ip) != *f {
                    return Err(IpamError::InvalidConfig(format!(
                        "requested address {ip} is not {}",
                        f.key_segment()
                    )));
                }
            }
        }
        let hkey = req.handle.key();
        crate::retry::cas(format_args!("assign {}", req.handle), |_| {
            let mut picks = Vec::new();
            for (family, freq) in &families {
                let pick = match freq.ip {
                    Some(ip) => s.pick_ip(ip, &attr)?,
                    None => s.pick_auto(*family, freq, &attr)?,
                };
                picks.push(pick);
            }
            let (mut hdoc, hrev) = s.handle(&req.handle)?;
            for p in &picks {
                *hdoc.block.entry(p.cidr.handle_segment()).or_insert(0) += 1;
            }
            let mut ops: Vec<Op> = picks
                .iter()
                .map(|p| Op::Update { key: p.cidr.key(), value: model::encode(&p.doc), revision: p.rev })
                .collect();
            ops.push(match hrev {
                None => Op::Create { key: hkey.clone(), value: model::encode(&hdoc) },
                Some(revision) => Op::Update { key: hkey.clone(), value: model::encode(&hdoc), revision },
            });
            let assigned: Vec<AssignedIp> =
                picks.iter().map(|p| AssignedIp { ip: p.ip, block: p.cidr, pool: p.pool.clone() }).collect();
            let extra_ops = extra(&assigned)?;
            let extra_keys: HashSet<String> = extra_ops.iter().map(|o| o.key().to_string()).collect();
            ops.extend(extra_ops);
            let mut remember = |rev: Revision| {
                self.remember_picks(&picks, rev);
                drop(lock.take());
            };
            match self.store.commit_then(&ops, &mut remember) {
                Ok(_) => Ok(Cas::Done(assigned)),
                Err(StoreError::Conflict { key }) if extra_keys.contains(&key) => {
                    Err(StoreError::Conflict { key }.into())
                }
                Err(StoreError::Conflict { key }) => {
                    if key == hkey {
                        s.handle = HandleState::NeedsRead;
                    } else if let Some(p) = picks.iter().find(|p| p.cidr.key() == key) {
                        s.blocks.remove(&p.cidr);
                    }
                    Ok(Cas::Conflict { key })
                }
                Err(e) => Err(e.into()),
            }
        })
    }

    /// After a commit of `picks` at `rev`: remember the node's block in the
    /// hint (under the host lock, which the caller still holds).
    fn remember_picks(&self, picks: &[Pick], rev: Revision) {
        for p in picks {
            match (&self.hints, &p.hint_request) {
                (Some(h), Some(request)) => {
                    let hint = Hint {
                        request: request.clone(),
                        pool: p.pool.as_str().to_string(),
                        block: p.doc.clone(),
                        revision: rev,
                    };
                    h.write(p.cidr.family(), &hint);
                }
                // An `IP=` address: not a hint of its own, but
                // if it is in the hinted block, that copy changed.
                _ => self.refresh_hint(p.doc.clone(), rev),
            }
        }
    }

    fn attribute(&self, req: &AssignRequest) -> AllocationAttribute {
        let mut sec = BTreeMap::new();
        sec.insert(ATTR_NODE.to_string(), self.node.clone());
        if let Some(ns) = &req.namespace {
            sec.insert(ATTR_NAMESPACE.to_string(), ns.clone());
        }
        if let Some(pod) = &req.pod {
            sec.insert(ATTR_POD.to_string(), pod.clone());
        }
        sec.insert(ATTR_TIMESTAMP.to_string(), crate::timestamp::go_utc_now());
        AllocationAttribute { handle_id: Some(req.handle.as_str().to_string()), secondary: Some(sec) }
    }

    /// Release every address of `handle` (CNI DEL). Idempotent: a handle that
    /// does not exist releases nothing and succeeds. Returns the freed addresses.
    pub fn release_handle(&self, handle: &Handle) -> Result<Vec<IpAddr>, IpamError> {
        self.release_handle_with(handle, &[])
    }

    /// [`Ipam::release_handle`] plus the caller's own writes in the same
    /// atomic commit (committed alone when the handle does not exist). A
    /// conflict on one of their keys is returned, not retried.
    pub fn release_handle_with(&self, handle: &Handle, extra: &[Op]) -> Result<Vec<IpAddr>, IpamError> {
        // Held until the commit is visible, not until it is durable (as in
        // `assign_with`); the hint is refreshed under it.
        let mut lock = self.host_lock()?;
        let mut visible = |rev: Revision, updated: &[AllocationBlock]| {
            for doc in updated {
                self.refresh_hint(doc.clone(), rev);
            }
            drop(lock.take());
        };
        let released = release::release::<IpamError>(
            self.store,
            handle,
            extra,
            |attempt| {
                let Some(hkv) = self.store.get(&handle.key())? else { return Ok(None) };
                let hdoc: IpamHandle = model::decode(&hkv)?;
                let mut commit = ReleaseCommit::new();
                for (seg, &count) in &hdoc.block {
                    let cidr: BlockCidr = seg.parse().map_err(|_| StoreError::Corrupt {
                        key: hkv.key.clone(),
                        reason: format!("block {seg:?} is not a CIDR"),
                    })?;
                    // First attempt: take this node's hinted block from the hint
                    // instead of reading it (the commit's CAS catches a stale
                    // copy); after a conflict, read. A hinted copy is only
                    // trusted if it holds what the handle says it holds there: a
                    // copy that misses the allocation would release nothing,
                    // write no block (so no CAS catches it) and delete the
                    // handle, leaking the address.
                    let hinted = if attempt == 0 { self.hinted_block(&cidr) } else { None }
                        .filter(|(doc, _)| block::ips_of_handle(doc, handle).len() == count as usize);
                    let (doc, revision) = match hinted {
                        Some(v) => v,
                        None => {
                            let Some(bkv) = self.store.get(&cidr.key())? else { continue };
                            (block::decode_block(&bkv)?, bkv.revision)
                        }
                    };
                    commit.free_handle(cidr.key(), doc, revision, handle);
                }
                commit.delete_handle(hkv.key, hkv.revision);
                Ok(Some(commit))
            },
            &mut visible,
        )?;
        Ok(released.ips())
    }

    /// This node's hinted copy of `cidr`, if the hint is about that block.
    fn hinted_block(&self, cidr: &BlockCidr) -> Option<(AllocationBlock, Revision)> {
        let h = self.hints.as_ref()?.read(cidr.family())?;
        (h.block.cidr == cidr.net()).then_some((h.block, h.revision))
    }

    /// Keep the hint current when this node changes its hinted block.
    fn refresh_hint(&self, doc: AllocationBlock, rev: Revision) {
        let Some(hints) = &self.hints else { return };
        if block::affinity_of(&doc).as_ref() != Some(&self.affinity) {
            return;
        }
        let family = IpFamily::of(&doc.cidr);
        if let Some(mut h) = hints.read(family) {
            if h.block.cidr == doc.cidr {
                h.block = doc;
                h.revision = rev;
                hints.write(family, &h);
            }
        }
    }

    /// Whether every address `handle` holds was assigned by this node (and
    /// it holds at least one). Blocks that vanished or do not decode count
    /// as not ours: GC only releases what it can prove is this node's.
    fn handle_is_only_ours(&self, handle: &Handle) -> Result<bool, IpamError> {
        let Some(hkv) = self.store.get(&handle.key())? else { return Ok(false) };
        let hdoc: IpamHandle = model::decode(&hkv)?;
        let mut any = false;
        for seg in hdoc.block.keys() {
            let Ok(cidr) = seg.parse::<BlockCidr>() else { return Ok(false) };
            let Some(bkv) = self.store.get(&cidr.key())? else { continue };
            let Ok(doc) = block::decode_block(&bkv) else { return Ok(false) };
            for node in block::nodes_of_handle(&doc, handle) {
                if node != Some(self.node.as_str()) {
                    return Ok(false);
                }
                any = true;
            }
        }
        Ok(any)
    }

    /// The addresses `handle` holds (CNI CHECK).
    pub fn ips_of_handle(&self, handle: &Handle) -> Result<Vec<IpAddr>, IpamError> {
        let Some(hkv) = self.store.get(&handle.key())? else { return Ok(Vec::new()) };
        let hdoc: IpamHandle = model::decode(&hkv)?;
        let mut out = Vec::new();
        for seg in hdoc.block.keys() {
            let Ok(cidr) = seg.parse::<BlockCidr>() else { continue };
            if let Some(bkv) = self.store.get(&cidr.key())? {
                out.extend(block::ips_of_handle(&block::decode_block(&bkv)?, handle));
            }
        }
        Ok(out)
    }

    /// CNI GC: release every handle of `network` (`<network>.<containerID>`)
    /// whose container ID is not in `keep`. Continues past single failures
    /// (the spec asks GC to carry on) and reports them in the outcome.
    ///
    /// Limitation (inherited from Calico's handle format): network names and
    /// container IDs may both contain `.`, so a handle of a network named
    /// `<network>.x` looks like one of `<network>` with container `x.…`; GC of
    /// `<network>` on a store shared with such a network would release it.
    pub fn gc_network(&self, network: &str, keep: &HashSet<String>) -> Result<GcOutcome, IpamError> {
        let prefix = model::handle_key(&format!("{network}."));
        let mut out = GcOutcome::default();
        for kv in self.store.list(&prefix)? {
            let Some(id) = kv.key.strip_prefix(&model::handles_prefix()) else { continue };
            let Ok(handle) = Handle::new(id) else { continue };
            let Some(cid) = handle.container_id_in(network) else { continue };
            if keep.contains(cid) {
                continue;
            }
            // The runtime's valid attachments are this node's only: a handle
            // whose addresses were assigned on another node (one etcd, many
            // nodes) is that node's business.
            if !self.handle_is_only_ours(&handle)? {
                log::debug!("GC: {handle} is not only this node's: kept");
                continue;
            }
            match self.release_handle(&handle) {
                Ok(_) => out.released.push(handle),
                Err(e) => out.failed.push((handle, e)),
            }
        }
        Ok(out)
    }
}

/// What [`Ipam::gc_network`] did.
#[derive(Debug, Default)]
pub struct GcOutcome {
    pub released: Vec<Handle>,
    pub failed: Vec<(Handle, IpamError)>,
}

/// One family's chosen address, before the commit.
struct Pick {
    cidr: BlockCidr,
    /// The block document with the allocation applied.
    doc: AllocationBlock,
    /// The revision the block was read at (the CAS condition).
    rev: Revision,
    ip: IpAddr,
    pool: PoolName,
    /// `Some(request key)` when the block is this node's own and the address
    /// came from the automatic path: worth remembering as the hint.
    hint_request: Option<String>,
}

/// Everything one `assign` call has read, so retries re-read only what a
/// conflict made stale.
struct Session<'s, 'a> {
    ipam: &'s Ipam<'a>,
    /// Known block versions (`None` = known not to exist).
    blocks: HashMap<BlockCidr, Option<(AllocationBlock, Revision)>>,
    pools_by_name: HashMap<String, Option<Pool>>,
    all_pools: Option<Vec<Pool>>,
    chosen: HashMap<IpFamily, Vec<Pool>>,
    labels: Option<BTreeMap<String, String>>,
    config: Option<IpamConfig>,
    hints_used: HashSet<IpFamily>,
    handle: HandleState,
}

enum HandleState {
    /// Not read: assume it does not exist (first attempt).
    AssumeNew,
    /// A commit conflicted on the handle: read it before the next attempt.
    NeedsRead,
    Read(Option<(IpamHandle, Revision)>),
}

fn request_key(req: &FamilyRequest) -> String {
    req.pools.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
}

impl<'s, 'a> Session<'s, 'a> {
    fn new(ipam: &'s Ipam<'a>) -> Self {
        Session {
            ipam,
            blocks: HashMap::new(),
            pools_by_name: HashMap::new(),
            all_pools: None,
            chosen: HashMap::new(),
            labels: None,
            config: None,
            hints_used: HashSet::new(),
            handle: HandleState::AssumeNew,
        }
    }

    fn store(&self) -> &'a dyn Datastore {
        self.ipam.store
    }

    /// The handle document to extend and its revision (`None` = create it).
    /// The first attempt assumes a new handle (no read: a fresh ADD's handle
    /// never exists); a conflict on the handle makes the next attempt read it.
    fn handle(&mut self, handle: &Handle) -> Result<(IpamHandle, Option<Revision>), IpamError> {
        if let HandleState::NeedsRead = self.handle {
            self.handle = HandleState::Read(match self.store().get(&handle.key())? {
                Some(kv) => Some((model::decode(&kv)?, kv.revision)),
                None => None,
            });
        }
        match &self.handle {
            HandleState::Read(Some((doc, rev))) => Ok((doc.clone(), Some(*rev))),
            _ => Ok((IpamHandle::default(), None)),
        }
    }

    fn block(&mut self, cidr: BlockCidr) -> Result<Option<(AllocationBlock, Revision)>, IpamError> {
        if let Some(known) = self.blocks.get(&cidr) {
            return Ok(known.clone());
        }
        let v = match self.store().get(&cidr.key())? {
            Some(kv) => Some((block::decode_block(&kv)?, kv.revision)),
            None => None,
        };
        self.blocks.insert(cidr, v.clone());
        Ok(v)
    }

    fn config(&mut self) -> Result<IpamConfig, IpamError> {
        if let Some(c) = &self.config {
            return Ok(c.clone());
        }
        let c = crate::query::ipam_config(self.store())?.0;
        self.config = Some(c.clone());
        Ok(c)
    }

    fn labels(&mut self) -> Result<BTreeMap<String, String>, IpamError> {
        if let Some(l) = &self.labels {
            return Ok(l.clone());
        }
        let l = pool::node_labels(self.store(), &self.ipam.node)?;
        self.labels = Some(l.clone());
        Ok(l)
    }

    fn pool_by_name(&mut self, name: &str) -> Result<Option<Pool>, IpamError> {
        if let Some(p) = self.pools_by_name.get(name) {
            return Ok(p.clone());
        }
        let p = pool::get_pool(self.store(), &PoolName::new(name)?)?;
        self.pools_by_name.insert(name.to_string(), p.clone());
        Ok(p)
    }

    fn all_pools(&mut self) -> Result<Vec<Pool>, IpamError> {
        if let Some(p) = &self.all_pools {
            return Ok(p.clone());
        }
        let p = pool::list_pools(self.store())?;
        self.all_pools = Some(p.clone());
        Ok(p)
    }

    fn chosen_pools(&mut self, family: IpFamily, req: &FamilyRequest) -> Result<Vec<Pool>, IpamError> {
        if let Some(p) = self.chosen.get(&family) {
            return Ok(p.clone());
        }
        let store = self.store();
        let node = self.ipam.node.clone();
        let mut labels = || self.labels();
        let p = pool::choose_pools(store, family, &req.pools, &node, &mut labels)?;
        self.chosen.insert(family, p.clone());
        Ok(p)
    }

    /// Is the hinted pool still one this request may allocate from?
    fn hinted_pool_usable(
        &mut self,
        name: &str,
        cidr: &BlockCidr,
        req: &FamilyRequest,
    ) -> Result<bool, IpamError> {
        let Some(p) = self.pool_by_name(name)? else { return Ok(false) };
        if !p.enabled() || !p.contains_block(cidr) {
            return Ok(false);
        }
        if !req.pools.is_empty() {
            // Requested pools bypass the node selector, but must be the ones asked for.
            return Ok(req.pools.iter().any(|r| match r {
                PoolRef::Name(n) => n == &p.name,
                PoolRef::Cidr(c) => c == &p.spec.cidr,
            }));
        }
        Ok(p.selector.is_all() || p.selector.matches(&self.labels()?))
    }

    /// Allocate the next free address of our own block `cidr`, if it has one.
    fn next_in_own_block(
        &mut self,
        cidr: BlockCidr,
        attr: &AllocationAttribute,
    ) -> Result<Option<(AllocationBlock, Revision, IpAddr)>, IpamError> {
        let Some((doc, rev)) = self.block(cidr)? else { return Ok(None) };
        if block::affinity_of(&doc).as_ref() != Some(&self.ipam.affinity) {
            return Ok(None);
        }
        let mut doc = doc;
        Ok(block::allocate_next(&mut doc, attr).map(|ip| (doc, rev, ip)))
    }

    fn pick_auto(
        &mut self,
        family: IpFamily,
        req: &FamilyRequest,
        attr: &AllocationAttribute,
    ) -> Result<Pick, IpamError> {
        let rkey = request_key(req);
        // Fast path: the hinted block.
        if let Some(pick) = self.pick_hinted(family, req, attr, &rkey)? {
            return Ok(pick);
        }
        let pools = self.chosen_pools(family, req)?;
        // 1. Blocks affine to this node, in key order.
        let affs = self.store().list(&model::host_affinities_prefix(&self.ipam.node, family))?;
        if let Some(pick) = self.pick_affine(&pools, &affs, attr, &rkey)? {
            return Ok(pick);
        }
        // 2. A new block, claimed for this node.
        let config = self.config()?;
        let existing: BTreeMap<BlockCidr, calico_store::KeyValue> = self
            .store()
            .list(&model::blocks_prefix(family))?
            .into_iter()
            .filter_map(|kv| {
                let seg = kv.key.rsplit('/').next()?;
                Some((BlockCidr::from_net(model::parse_cidr_key_segment(seg)?), kv))
            })
            .collect();
        if config.auto_allocate_blocks {
            let limit = if config.max_blocks_per_host == 0 {
                model::DEFAULT_MAX_BLOCKS_PER_HOST
            } else {
                config.max_blocks_per_host
            };
            if affs.len() >= limit as usize {
                return Err(IpamError::BlockLimit { limit });
            }
            for p in &pools {
                if let Some(cidr) = self.claim_in_pool(p, &existing, &config)? {
                    if let Some((doc, rev, ip)) = self.next_in_own_block(cidr, attr)? {
                        let pool = p.name.clone();
                        return Ok(Pick { cidr, doc, rev, ip, pool, hint_request: Some(rkey) });
                    }
                }
            }
        }
        // 3. Borrow a free address from any block of the pools.
        if !config.strict_affinity {
            if let Some(pick) = self.pick_borrowed(&pools, &existing, attr)? {
                return Ok(pick);
            }
        }
        let names: Vec<String> = pools.iter().map(|p| p.name.to_string()).collect();
        Err(IpamError::Exhausted { pools: names.join(", ") })
    }

    /// The next free address of the hinted block, if the hint is about this
    /// request and its pool may still be used.
    fn pick_hinted(
        &mut self,
        family: IpFamily,
        req: &FamilyRequest,
        attr: &AllocationAttribute,
        rkey: &str,
    ) -> Result<Option<Pick>, IpamError> {
        let hint = self.ipam.hints.as_ref().and_then(|h| h.read(family)).filter(|h| h.request == rkey);
        let Some(hint) = hint else { return Ok(None) };
        let cidr = BlockCidr::from_net(hint.block.cidr);
        if self.hints_used.insert(family) {
            self.blocks.entry(cidr).or_insert(Some((hint.block, hint.revision)));
        }
        if !self.hinted_pool_usable(&hint.pool, &cidr, req)? {
            return Ok(None);
        }
        let Some((doc, rev, ip)) = self.next_in_own_block(cidr, attr)? else { return Ok(None) };
        let pool = PoolName::new(hint.pool)?;
        Ok(Some(Pick { cidr, doc, rev, ip, pool, hint_request: Some(rkey.to_string()) }))
    }

    /// The next free address of a block affine to this node (`affs`: its
    /// affinity documents), in key order, within `pools`.
    fn pick_affine(
        &mut self,
        pools: &[Pool],
        affs: &[calico_store::KeyValue],
        attr: &AllocationAttribute,
        rkey: &str,
    ) -> Result<Option<Pick>, IpamError> {
        for kv in affs {
            let Some((_, net)) = model::parse_affinity_key(&kv.key) else { continue };
            let cidr = BlockCidr::from_net(net);
            let Some(pool) = pools.iter().find(|p| p.contains_block(&cidr)).map(|p| p.name.clone()) else {
                continue;
            };
            let Some((doc, _)) = self.block(cidr)? else { continue };
            if block::affinity_of(&doc).as_ref() != Some(&self.ipam.affinity) {
                continue;
            }
            // The block document is authoritative and says the block is
            // ours; the affinity only matters to finish a claim. One that
            // does not decode must not stop the node from allocating (it is
            // left for `calicoctl ipam check` to report, never rewritten).
            match model::decode::<BlockAffinity>(kv) {
                Ok(aff) if aff.state == AffinityState::Pending => {
                    // A claim whose confirmation was lost: the block is ours.
                    let confirmed = BlockAffinity { state: AffinityState::Confirmed, deleted: false };
                    if let Err(e) = self.store().update(&kv.key, &model::encode(&confirmed), kv.revision) {
                        log::debug!("confirming affinity {}: {e}", kv.key);
                    }
                }
                Ok(_) => {}
                Err(e) => log::warn!("block {cidr} is ours by its document, its affinity is unreadable: {e}"),
            }
            if let Some((doc, rev, ip)) = self.next_in_own_block(cidr, attr)? {
                return Ok(Some(Pick { cidr, doc, rev, ip, pool, hint_request: Some(rkey.to_string()) }));
            }
        }
        Ok(None)
    }

    /// A free address of any `existing` block of `pools` (another node's:
    /// borrowing), each pool's blocks tried from the node's seeded start.
    fn pick_borrowed(
        &mut self,
        pools: &[Pool],
        existing: &BTreeMap<BlockCidr, calico_store::KeyValue>,
        attr: &AllocationAttribute,
    ) -> Result<Option<Pick>, IpamError> {
        for p in pools {
            let start = host_seed(&self.ipam.node, p.block_count());
            // Distance from the node's seeded start, wrapping. Block
            // counts are powers of two, so wrapping u128 arithmetic
            // reduced modulo the count is exact.
            let mut candidates: Vec<(u128, BlockCidr, &calico_store::KeyValue)> = existing
                .iter()
                .filter_map(|(c, kv)| {
                    p.index_of(c).map(|i| (i.wrapping_sub(start) % p.block_count().max(1), *c, kv))
                })
                .collect();
            candidates.sort_by_key(|(d, c, _)| (*d, *c));
            for (_, cidr, kv) in candidates {
                let known = match self.blocks.get(&cidr) {
                    Some(k) => k.clone(),
                    None => {
                        let v = Some((block::decode_block(kv)?, kv.revision));
                        self.blocks.insert(cidr, v.clone());
                        v
                    }
                };
                let Some((mut doc, rev)) = known else { continue };
                if let Some(ip) = block::allocate_next(&mut doc, attr) {
                    log::info!("borrowing {ip} from block {cidr} ({:?})", doc.affinity);
                    return Ok(Some(Pick { cidr, doc, rev, ip, pool: p.name.clone(), hint_request: None }));
                }
            }
        }
        Ok(None)
    }

    /// Walk the pool's blocks from a start seeded by the node name and claim
    /// the first one that does not exist yet. Returns the claimed block.
    fn claim_in_pool(
        &mut self,
        pool: &Pool,
        existing: &BTreeMap<BlockCidr, calico_store::KeyValue>,
        config: &IpamConfig,
    ) -> Result<Option<BlockCidr>, IpamError> {
        let n = pool.block_count();
        let start = host_seed(&self.ipam.node, n);
        // Blocks that exist are skipped; each claim lost to another node is
        // a conflict like any other and costs one attempt of the budget.
        let bound = n.min(existing.len() as u128 + Retry::CAS.attempts() as u128);
        let mut i = 0u128;
        while i < bound {
            let idx = start.wrapping_add(i) % n;
            i += 1;
            let Some(cidr) = pool.block_at(idx) else { continue };
            if existing.contains_key(&cidr) {
                continue;
            }
            if self.claim(cidr, config)? {
                return Ok(Some(cidr));
            }
        }
        Ok(None)
    }

    /// Calico's two-phase claim: affinity `pending` → block created with our
    /// affinity → affinity `confirmed`. The block create is the arbiter: if
    /// another host created the block first we lose and drop our pending
    /// affinity. Returns whether the block is now ours.
    fn claim(&mut self, cidr: BlockCidr, config: &IpamConfig) -> Result<bool, IpamError> {
        let store = self.store();
        let aff_key = self.ipam.affinity.key(&cidr);
        let pending = BlockAffinity { state: AffinityState::Pending, deleted: false };
        let aff_rev = match store.create(&aff_key, &model::encode(&pending)) {
            Ok(r) => r,
            // Our own earlier claim (maybe crashed); the block walk decides.
            Err(StoreError::Conflict { .. }) => return Ok(false),
            Err(e) => return Err(e.into()),
        };
        let mut guard = PendingAffinity { store, key: aff_key.clone(), revision: aff_rev, armed: true };
        let doc = block::new_block(cidr, Some(&self.ipam.affinity), config.strict_affinity);
        let rev = match store.create(&cidr.key(), &model::encode(&doc)) {
            Ok(r) => r,
            Err(StoreError::Conflict { .. }) => {
                self.blocks.remove(&cidr);
                return Ok(false);
            }
            Err(e) => return Err(e.into()),
        };
        guard.armed = false;
        self.blocks.insert(cidr, Some((doc, rev)));
        let confirmed = BlockAffinity { state: AffinityState::Confirmed, deleted: false };
        if let Err(e) = store.update(&aff_key, &model::encode(&confirmed), aff_rev) {
            // The block is ours either way; the affine walk confirms it later.
            log::warn!("claimed block {cidr} but could not confirm affinity {aff_key}: {e}");
        }
        log::info!("claimed block {cidr} for {}", self.ipam.affinity);
        Ok(true)
    }

    /// `IP=`: one specific address, in whichever enabled pool contains it
    /// (requested pools and node selectors do not apply, as in Calico's
    /// AssignIP). A block that does not exist yet is claimed for this node
    /// (not counted against `maxBlocksPerHost`).
    fn pick_ip(&mut self, ip: IpAddr, attr: &AllocationAttribute) -> Result<Pick, IpamError> {
        let pools = self.all_pools()?;
        let pool = pool::enabled_pool_containing(&pools, ip).ok_or(IpamError::NotInPool(ip))?.clone();
        let cidr = BlockCidr::containing(ip, pool.block_prefix())?;
        crate::retry::cas(format_args!("assign {ip}"), |_| {
            let (mut doc, rev) = match self.block(cidr)? {
                Some(v) => v,
                None => {
                    let config = self.config()?;
                    self.claim(cidr, &config)?;
                    // Won or lost, the block exists now: read it again.
                    self.blocks.remove(&cidr);
                    return Ok(Cas::Conflict { key: cidr.key() });
                }
            };
            block::allocate_ip(&mut doc, ip, attr)?;
            Ok(Cas::Done(Pick { cidr, doc, rev, ip, pool: pool.name.clone(), hint_request: None }))
        })
    }
}

/// Deletes a pending affinity unless the claim went through.
struct PendingAffinity<'a> {
    store: &'a dyn Datastore,
    key: String,
    revision: Revision,
    armed: bool,
}

impl Drop for PendingAffinity<'_> {
    fn drop(&mut self) {
        if self.armed {
            if let Err(e) = self.store.delete(&self.key, self.revision) {
                log::warn!("could not remove pending affinity {}: {e}", self.key);
            }
        }
    }
}

/// FNV-1a (32 bit) of the node name, reduced to a start index in `0..n`:
/// every node starts its block search somewhere else, so nodes rarely race
/// for the same block.
pub fn host_seed(node: &str, n: u128) -> u128 {
    let mut h: u32 = 0x811c_9dc5;
    for b in node.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    if n == 0 {
        0
    } else {
        u128::from(h) % n
    }
}
