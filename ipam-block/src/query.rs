//! Read-side views and single-address operations for operators (the
//! `calicoctl ipam` commands) and garbage collection. Everything here works
//! on any [`Datastore`] and never needs a node identity.

use std::collections::BTreeMap;
use std::net::IpAddr;

use calico_store::model::{
    self, AffinityState, AllocationBlock, BlockAffinity, IpFamily, IpamConfig, IpamHandle,
};
use calico_store::{Datastore, Revision, StoreError};

use crate::block::{self, Allocation};
use crate::release::{self, ReleaseCommit};
use crate::types::{Affinity, BlockCidr, Handle};
use crate::IpamError;

/// One block with its usage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockInfo {
    pub cidr: BlockCidr,
    /// The owning host (`None`: not host-affine).
    pub affinity: Option<Affinity>,
    pub allocated: usize,
    pub free: usize,
    pub revision: Revision,
    /// The full document (attributes, FIFO order).
    pub doc: AllocationBlock,
}

/// One host affinity (`/calico/ipam/v2/host/<node>/<family>/block/<cidr>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AffinityInfo {
    pub node: String,
    pub block: BlockCidr,
    pub state: AffinityState,
    pub revision: Revision,
}

/// One handle and how many addresses it holds per block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandleInfo {
    pub handle: Handle,
    /// Block CIDR (`10.0.0.0/26`) → count, as stored.
    pub blocks: BTreeMap<String, u32>,
    pub revision: Revision,
}

/// Every block of both families, sorted by key.
pub fn list_blocks(store: &dyn Datastore) -> Result<Vec<BlockInfo>, IpamError> {
    let mut out = Vec::new();
    for family in [IpFamily::V4, IpFamily::V6] {
        for kv in store.list(&model::blocks_prefix(family))? {
            let doc = block::decode_block(&kv)?;
            out.push(BlockInfo {
                cidr: block::cidr_of(&doc),
                affinity: block::affinity_of(&doc),
                allocated: block::allocated_count(&doc),
                free: block::free_count(&doc),
                revision: kv.revision,
                doc,
            });
        }
    }
    Ok(out)
}

/// Every host affinity of every node.
pub fn list_affinities(store: &dyn Datastore) -> Result<Vec<AffinityInfo>, IpamError> {
    let mut out = Vec::new();
    for kv in store.list(&model::all_affinities_prefix())? {
        let (node, net) = model::parse_affinity_key(&kv.key).ok_or_else(|| StoreError::Corrupt {
            key: kv.key.clone(),
            reason: "not an affinity key (/calico/ipam/v2/host/<node>/<family>/block/<cidr>)".into(),
        })?;
        let aff: BlockAffinity = model::decode(&kv)?;
        out.push(AffinityInfo {
            node,
            block: BlockCidr::from_net(net),
            state: aff.state,
            revision: kv.revision,
        });
    }
    Ok(out)
}

/// Every handle.
pub fn list_handles(store: &dyn Datastore) -> Result<Vec<HandleInfo>, IpamError> {
    let prefix = model::handles_prefix();
    let mut out = Vec::new();
    for kv in store.list(&prefix)? {
        let id = kv.key.strip_prefix(&prefix).unwrap_or(&kv.key);
        let handle = Handle::new(id)
            .map_err(|e| StoreError::Corrupt { key: kv.key.clone(), reason: e.to_string() })?;
        let doc: IpamHandle = model::decode(&kv)?;
        out.push(HandleInfo { handle, blocks: doc.block, revision: kv.revision });
    }
    Ok(out)
}

/// Every allocated address of every block with its handle and attributes
/// (`node`, `namespace`, `pod`, `timestamp`): the input of leak checks/GC.
pub fn list_allocations(store: &dyn Datastore) -> Result<Vec<Allocation>, IpamError> {
    Ok(list_blocks(store)?.iter().flat_map(|b| block::allocations(&b.doc)).collect())
}

/// The global IPAM config (`/calico/ipam/v2/config`) and its revision
/// (`None` when it was never written: Calico's defaults apply).
pub fn ipam_config(store: &dyn Datastore) -> Result<(IpamConfig, Option<Revision>), IpamError> {
    match store.get(model::IPAM_CONFIG_KEY)? {
        Some(kv) => Ok((model::decode(&kv)?, Some(kv.revision))),
        None => Ok((IpamConfig::default(), None)),
    }
}

/// Write the global IPAM config, CAS against `revision` (`None` = create).
pub fn set_ipam_config(
    store: &dyn Datastore,
    config: &IpamConfig,
    revision: Option<Revision>,
) -> Result<Revision, IpamError> {
    if !config.strict_affinity && !config.auto_allocate_blocks {
        // Calico rejects this: with neither, nothing could ever be allocated.
        return Err(IpamError::InvalidConfig(
            "auto_allocate_blocks=false requires strict_affinity=true".to_string(),
        ));
    }
    let value = model::encode(config);
    Ok(match revision {
        None => store.create(model::IPAM_CONFIG_KEY, &value)?,
        Some(r) => store.update(model::IPAM_CONFIG_KEY, &value, r)?,
    })
}

/// Release one address wherever it is allocated (`calicoctl ipam release
/// --ip`): frees the ordinal and decrements (or deletes) its handle in the
/// same commit; an empty non-affine block is deleted. Returns the handle the
/// address belonged to, or `None` when it was not allocated.
pub fn release_ip(store: &dyn Datastore, ip: IpAddr) -> Result<Option<String>, IpamError> {
    Ok(release_one(store, ip)?.flatten())
}

/// [`release_ip`] telling "not allocated" (`None`) from "allocated without a
/// handle" (`Some(None)`).
pub(crate) fn release_one(store: &dyn Datastore, ip: IpAddr) -> Result<Option<Option<String>>, IpamError> {
    let released = release::release::<IpamError>(
        store,
        ip,
        &[],
        |_| {
            let family = IpFamily::of_addr(&ip);
            let Some(kv) = store
                .list(&model::blocks_prefix(family))?
                .into_iter()
                .find(|kv| key_block(&kv.key).is_some_and(|c| c.contains(ip)))
            else {
                return Ok(None);
            };
            let doc = block::decode_block(&kv)?;
            let mut commit = ReleaseCommit::new();
            if commit.free_ip(&kv.key, || (doc, kv.revision), ip).is_none() {
                return Ok(None);
            }
            commit.decrement_handles(|h| -> Result<_, IpamError> {
                let Some(hkv) = store.get(&model::handle_key(h))? else { return Ok(None) };
                Ok(Some((hkv.key.clone(), model::decode(&hkv)?, hkv.revision)))
            })?;
            Ok(Some(commit))
        },
        &mut |_, _| {},
    )?;
    Ok(released.freed.into_iter().next().map(|(_, handle)| handle))
}

fn key_block(key: &str) -> Option<BlockCidr> {
    model::parse_cidr_key_segment(key.rsplit('/').next()?).map(BlockCidr::from_net)
}
