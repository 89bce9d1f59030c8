//! Operations on one allocation block document (pure, no datastore).
//!
//! Calico's layout: `allocations[ordinal]` is an index into `attributes` (or
//! null when free) and `unallocated` is the FIFO of free ordinals: allocation
//! pops from the head, release appends to the tail, so the address free the
//! longest is reused first.

use std::collections::BTreeMap;
use std::net::IpAddr;

use calico_store::model::{self, AllocationAttribute, AllocationBlock, IpamHandle};
use calico_store::{KeyValue, Op, Revision, StoreError};

use crate::types::{Affinity, BlockCidr, Handle};
use crate::IpamError;

/// Attribute keys Calico puts in `secondary`.
pub const ATTR_NODE: &str = "node";
pub const ATTR_NAMESPACE: &str = "namespace";
pub const ATTR_POD: &str = "pod";
pub const ATTR_TIMESTAMP: &str = "timestamp";

/// A fresh, empty block affine to `affinity` (or to nobody).
pub fn new_block(cidr: BlockCidr, affinity: Option<&Affinity>, strict_affinity: bool) -> AllocationBlock {
    let size = cidr.size();
    AllocationBlock {
        cidr: cidr.net(),
        affinity: affinity.map(Affinity::encode),
        strict_affinity,
        allocations: vec![None; size],
        unallocated: (0..size).collect(),
        attributes: Vec::new(),
        deleted: false,
    }
}

/// Decode and sanity-check a stored block; anything inconsistent is
/// `Corrupt` naming the key (never "repaired" by overwriting).
pub fn decode_block(kv: &KeyValue) -> Result<AllocationBlock, StoreError> {
    let b: AllocationBlock = model::decode(kv)?;
    check_block(&b).map_err(|reason| StoreError::Corrupt { key: kv.key.clone(), reason })?;
    Ok(b)
}

/// The invariants every operation here relies on: one slot per address,
/// attribute indices in range, `unallocated` = exactly the free ordinals.
pub fn check_block(b: &AllocationBlock) -> Result<(), String> {
    let cidr = BlockCidr::from_net(b.cidr);
    if b.allocations.len() != cidr.size() {
        return Err(format!(
            "block {} has {} allocation slots, expected {}",
            b.cidr,
            b.allocations.len(),
            cidr.size()
        ));
    }
    if let Some(bad) = b.allocations.iter().flatten().find(|&&i| i >= b.attributes.len()) {
        return Err(format!("allocation refers to attribute {bad} of {}", b.attributes.len()));
    }
    let mut seen = vec![false; b.allocations.len()];
    for &o in &b.unallocated {
        if o >= b.allocations.len() || seen[o] || b.allocations[o].is_some() {
            return Err(format!("unallocated ordinal {o} is out of range, repeated or allocated"));
        }
        seen[o] = true;
    }
    let free = b.allocations.iter().filter(|a| a.is_none()).count();
    if free != b.unallocated.len() {
        return Err(format!("{free} free slots but {} unallocated ordinals", b.unallocated.len()));
    }
    Ok(())
}

/// The block's CIDR as a domain type.
pub fn cidr_of(b: &AllocationBlock) -> BlockCidr {
    BlockCidr::from_net(b.cidr)
}

/// The block's owner, if it is host-affine.
pub fn affinity_of(b: &AllocationBlock) -> Option<Affinity> {
    b.affinity.as_deref().and_then(Affinity::parse)
}

pub fn free_count(b: &AllocationBlock) -> usize {
    b.unallocated.len()
}

pub fn allocated_count(b: &AllocationBlock) -> usize {
    b.allocations.iter().filter(|a| a.is_some()).count()
}

pub fn is_empty(b: &AllocationBlock) -> bool {
    allocated_count(b) == 0
}

/// Index of an attribute equal to `attr`, adding it if there is none.
fn attribute_index(b: &mut AllocationBlock, attr: &AllocationAttribute) -> usize {
    if let Some(i) = b.attributes.iter().position(|a| a == attr) {
        return i;
    }
    b.attributes.push(attr.clone());
    b.attributes.len() - 1
}

/// Allocate the head of the free FIFO; `None` when the block is full.
pub fn allocate_next(b: &mut AllocationBlock, attr: &AllocationAttribute) -> Option<IpAddr> {
    if b.unallocated.is_empty() {
        return None;
    }
    let ordinal = b.unallocated.remove(0);
    let idx = attribute_index(b, attr);
    b.allocations[ordinal] = Some(idx);
    cidr_of(b).ip_at(ordinal)
}

/// Allocate one specific address of the block.
pub fn allocate_ip(b: &mut AllocationBlock, ip: IpAddr, attr: &AllocationAttribute) -> Result<(), IpamError> {
    let cidr = cidr_of(b);
    let ordinal = cidr
        .ordinal_of(ip)
        .ok_or_else(|| IpamError::InvalidConfig(format!("{ip} is not in block {cidr}")))?;
    let pos = b.unallocated.iter().position(|&o| o == ordinal);
    match pos {
        Some(p) if b.allocations[ordinal].is_none() => {
            b.unallocated.remove(p);
            let idx = attribute_index(b, attr);
            b.allocations[ordinal] = Some(idx);
            Ok(())
        }
        _ => Err(IpamError::AlreadyAssigned { ip, block: cidr.to_string() }),
    }
}

/// The handle an ordinal is allocated to.
fn handle_at(b: &AllocationBlock, ordinal: usize) -> Option<&str> {
    let idx = b.allocations.get(ordinal).copied().flatten()?;
    b.attributes.get(idx)?.handle_id.as_deref()
}

/// Addresses of the block allocated to `handle`.
pub fn ips_of_handle(b: &AllocationBlock, handle: &Handle) -> Vec<IpAddr> {
    let cidr = cidr_of(b);
    (0..b.allocations.len())
        .filter(|&o| handle_at(b, o) == Some(handle.as_str()))
        .filter_map(|o| cidr.ip_at(o))
        .collect()
}

/// The `node` attribute of each allocation of `handle` in the block
/// (`None` for an allocation that does not name one).
pub fn nodes_of_handle<'b>(b: &'b AllocationBlock, handle: &Handle) -> Vec<Option<&'b str>> {
    (0..b.allocations.len())
        .filter(|&o| handle_at(b, o) == Some(handle.as_str()))
        .map(|o| {
            let idx = b.allocations[o]?;
            b.attributes.get(idx)?.secondary.as_ref()?.get(ATTR_NODE).map(String::as_str)
        })
        .collect()
}

/// Free every address of `handle` (appending them to the FIFO tail in
/// ordinal order); returns the freed addresses.
pub fn release_handle(b: &mut AllocationBlock, handle: &Handle) -> Vec<IpAddr> {
    let ordinals: Vec<usize> =
        (0..b.allocations.len()).filter(|&o| handle_at(b, o) == Some(handle.as_str())).collect();
    release_ordinals(b, &ordinals)
}

/// Free one address; returns the handle it belonged to (if any), or `None`
/// in the outer option when the address was not allocated.
pub fn release_ip(b: &mut AllocationBlock, ip: IpAddr) -> Option<Option<String>> {
    let ordinal = cidr_of(b).ordinal_of(ip)?;
    b.allocations[ordinal]?;
    let handle = handle_at(b, ordinal).map(str::to_string);
    release_ordinals(b, &[ordinal]);
    Some(handle)
}

/// The write that stores block `b` (at `key`, read at `revision`) after
/// releases: an emptied block nobody is affine to is deleted, giving its
/// range back to the pool (like Calico); any other block is updated.
pub fn write_after_release(key: String, b: &AllocationBlock, revision: Revision) -> Op {
    if is_empty(b) && b.affinity.is_none() {
        Op::Delete { key, revision }
    } else {
        Op::Update { key, value: model::encode(b), revision }
    }
}

/// The write that stores handle document `doc` (at `key`, read at
/// `revision`) after `released[block segment]` of its addresses were freed:
/// the counts decremented, the document deleted once no block is left.
pub fn handle_write_after_release(
    key: String,
    mut doc: IpamHandle,
    released: &BTreeMap<String, u32>,
    revision: Revision,
) -> Op {
    for (seg, n) in released {
        if let Some(c) = doc.block.get_mut(seg) {
            *c = c.saturating_sub(*n);
        }
    }
    doc.block.retain(|_, c| *c > 0);
    if doc.block.is_empty() {
        Op::Delete { key, revision }
    } else {
        Op::Update { key, value: model::encode(&doc), revision }
    }
}

fn release_ordinals(b: &mut AllocationBlock, ordinals: &[usize]) -> Vec<IpAddr> {
    let cidr = cidr_of(b);
    let mut freed = Vec::new();
    for &o in ordinals {
        if b.allocations[o].take().is_some() {
            b.unallocated.push(o);
            freed.extend(cidr.ip_at(o));
        }
    }
    compact_attributes(b);
    freed
}

/// Drop attributes no allocation refers to any more, renumbering the rest.
fn compact_attributes(b: &mut AllocationBlock) {
    let mut used = vec![false; b.attributes.len()];
    for i in b.allocations.iter().flatten() {
        used[*i] = true;
    }
    let mut remap = vec![usize::MAX; b.attributes.len()];
    let mut kept = Vec::new();
    for (i, attr) in std::mem::take(&mut b.attributes).into_iter().enumerate() {
        if used[i] {
            remap[i] = kept.len();
            kept.push(attr);
        }
    }
    b.attributes = kept;
    for a in b.allocations.iter_mut().flatten() {
        *a = remap[*a];
    }
}

/// One allocated address with what it belongs to (for GC and `ipam show`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    pub ip: IpAddr,
    pub block: BlockCidr,
    pub handle: Option<String>,
    pub attributes: BTreeMap<String, String>,
}

/// Every allocation in the block.
pub fn allocations(b: &AllocationBlock) -> Vec<Allocation> {
    let cidr = cidr_of(b);
    let mut out = Vec::new();
    for (o, idx) in b.allocations.iter().enumerate() {
        let (Some(idx), Some(ip)) = (idx, cidr.ip_at(o)) else { continue };
        let attr = b.attributes.get(*idx);
        out.push(Allocation {
            ip,
            block: cidr,
            handle: attr.and_then(|a| a.handle_id.clone()),
            attributes: attr.and_then(|a| a.secondary.clone()).unwrap_or_default(),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(h: &str) -> AllocationAttribute {
        AllocationAttribute { handle_id: Some(h.into()), secondary: None }
    }

    #[test]
    fn fifo_allocation_and_release() {
        let cidr: BlockCidr = "10.0.0.0/30".parse().unwrap();
        let mut b = new_block(cidr, Some(&Affinity::host("n1")), false);
        let ips: Vec<_> = (0..4).map(|i| allocate_next(&mut b, &attr(&format!("h{i}"))).unwrap()).collect();
        assert_eq!(ips[0].to_string(), "10.0.0.0");
        assert_eq!(allocate_next(&mut b, &attr("x")), None);
        let h1 = Handle::new("h1").unwrap();
        assert_eq!(release_handle(&mut b, &h1), vec!["10.0.0.1".parse::<IpAddr>().unwrap()]);
        assert_eq!(b.unallocated, vec![1]);
        // Attributes were compacted and still point at the right handles.
        assert_eq!(b.attributes.len(), 3);
        assert_eq!(ips_of_handle(&b, &Handle::new("h3").unwrap()), vec![ips[3]]);
        assert_eq!(release_ip(&mut b, ips[0]), Some(Some("h0".to_string())));
        assert_eq!(b.unallocated, vec![1, 0]);
        assert_eq!(release_ip(&mut b, ips[0]), None);
        assert!(matches!(allocate_ip(&mut b, ips[2], &attr("y")), Err(IpamError::AlreadyAssigned { .. })));
        allocate_ip(&mut b, ips[0], &attr("y")).unwrap();
        assert_eq!(b.unallocated, vec![1]);
    }

    #[test]
    fn writes_after_release() {
        let cidr: BlockCidr = "10.0.0.0/30".parse().unwrap();
        let mut free = new_block(cidr, None, false);
        assert!(matches!(write_after_release("/b".into(), &free, 4), Op::Delete { revision: 4, .. }));
        allocate_next(&mut free, &attr("h")).unwrap();
        assert!(matches!(write_after_release("/b".into(), &free, 4), Op::Update { .. }));
        let owned = new_block(cidr, Some(&Affinity::host("n1")), false);
        assert!(matches!(write_after_release("/b".into(), &owned, 4), Op::Update { .. }));

        let doc = IpamHandle { block: BTreeMap::from([("a".into(), 2), ("b".into(), 1)]), deleted: false };
        let released = BTreeMap::from([("a".to_string(), 2)]);
        match handle_write_after_release("/h".into(), doc.clone(), &released, 7) {
            Op::Update { value, revision: 7, .. } => {
                assert_eq!(
                    serde_json::from_slice::<IpamHandle>(&value).unwrap().block,
                    BTreeMap::from([("b".into(), 1)])
                )
            }
            other => panic!("{other:?}"),
        }
        let all = BTreeMap::from([("a".to_string(), 2), ("b".to_string(), 5)]);
        assert!(matches!(
            handle_write_after_release("/h".into(), doc, &all, 7),
            Op::Delete { revision: 7, .. }
        ));
    }

    #[test]
    fn inconsistent_block_is_corrupt() {
        let b = new_block("10.0.0.0/30".parse().unwrap(), None, false);
        let mut v = serde_json::to_value(&b).unwrap();
        v["unallocated"] = serde_json::json!([0, 0, 1, 2]);
        let kv = KeyValue { key: "/blk".into(), value: serde_json::to_vec(&v).unwrap(), revision: 1 };
        assert!(matches!(decode_block(&kv), Err(StoreError::Corrupt { key, .. }) if key == "/blk"));
        v["unallocated"] = serde_json::json!([0]);
        v["allocations"] = serde_json::json!([null, 0, null, null]);
        let kv = KeyValue { key: "/blk".into(), value: serde_json::to_vec(&v).unwrap(), revision: 1 };
        assert!(decode_block(&kv).is_err());
    }
}
