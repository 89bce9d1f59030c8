//! The one release path. Every way of freeing addresses (CNI DEL through
//! [`crate::Ipam::release_handle_with`], `calicoctl ipam release` through
//! [`crate::query::release_ip`], calicoctl's gc) builds a [`ReleaseCommit`]
//! from a fresh read and hands it to [`release`], which commits it with
//! compare-and-swap and retries under [`Retry::CAS`].
//!
//! What a release writes, whoever asks for it:
//!
//! * every block that lost an address, updated at the revision it was read
//!   at; a block emptied and affine to nobody is deleted instead, giving its
//!   range back to the pool (like Calico);
//! * the handle documents: deleted when the caller releases a whole handle,
//!   or their per-block counts decremented by what was freed (deleted at
//!   zero) when it releases single addresses;
//! * the caller's own ops, in the same commit (a conflict on one of those is
//!   returned, not retried: only the caller knows how).
//!
//! What is read, how it is re-validated and which copies may be trusted
//! (the allocator's hint) stays with each caller: its `read` closure runs
//! before every attempt.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Display;
use std::net::IpAddr;

use calico_store::model::{AllocationBlock, IpamHandle};
use calico_store::{Datastore, Op, Revision, StoreError};

use crate::block;
use crate::retry::Cas;
use crate::types::Handle;
use crate::IpamError;

/// The writes of one release attempt, built from what that attempt read.
#[derive(Debug, Default)]
pub struct ReleaseCommit {
    /// Block key → the document with the releases applied, and the
    /// revision it was read at (the CAS condition).
    blocks: BTreeMap<String, (AllocationBlock, Revision)>,
    /// Freed addresses with the handle each belonged to, in release order.
    freed: Vec<(IpAddr, Option<String>)>,
    /// Handle → block segment (`10.0.0.0/26`) → addresses freed there.
    per_handle: BTreeMap<String, BTreeMap<String, u32>>,
    handle_ops: Vec<Op>,
}

impl ReleaseCommit {
    pub fn new() -> ReleaseCommit {
        ReleaseCommit::default()
    }

    /// Free every address of `handle` in `doc`, the block at `key` read at
    /// `revision`. A block holding none of them is not written. Returns the
    /// freed addresses.
    pub fn free_handle(
        &mut self,
        key: String,
        mut doc: AllocationBlock,
        revision: Revision,
        handle: &Handle,
    ) -> Vec<IpAddr> {
        let ips = block::release_handle(&mut doc, handle);
        if ips.is_empty() {
            return ips;
        }
        let seg = block::cidr_of(&doc).handle_segment();
        *self.per_handle.entry(handle.as_str().to_string()).or_default().entry(seg).or_default() +=
            ips.len() as u32;
        self.freed.extend(ips.iter().map(|ip| (*ip, Some(handle.as_str().to_string()))));
        self.blocks.insert(key, (doc, revision));
        ips
    }

    /// Free `ip` in the block at `key`: this commit's copy when it already
    /// changed that block, else the one `read` returns (document and the
    /// revision it was read at). Returns the handle the address belonged to
    /// (inner `None`: it had none), or `None` when it was not allocated
    /// (then nothing changes).
    pub fn free_ip(
        &mut self,
        key: &str,
        read: impl FnOnce() -> (AllocationBlock, Revision),
        ip: IpAddr,
    ) -> Option<Option<String>> {
        let (mut doc, revision, held) = match self.blocks.remove(key) {
            Some((doc, revision)) => (doc, revision, true),
            None => {
                let (doc, revision) = read();
                (doc, revision, false)
            }
        };
        let owner = block::release_ip(&mut doc, ip);
        if let Some(handle) = &owner {
            if let Some(h) = handle {
                let seg = block::cidr_of(&doc).handle_segment();
                *self.per_handle.entry(h.clone()).or_default().entry(seg).or_default() += 1;
            }
            self.freed.push((ip, handle.clone()));
        }
        if held || owner.is_some() {
            self.blocks.insert(key.to_string(), (doc, revision));
        }
        owner
    }

    /// Delete the handle document at `key` (read at `revision`): the caller
    /// releases the whole handle.
    pub fn delete_handle(&mut self, key: String, revision: Revision) {
        self.handle_ops.push(Op::Delete { key, revision });
    }

    /// Decrement the handle documents of every handle this commit freed
    /// addresses of, by what it freed (a document left with no block is
    /// deleted). `lookup` gives a handle's document as (key, document,
    /// revision), or `None` when there is none (nothing to decrement).
    pub fn decrement_handles<E>(
        &mut self,
        mut lookup: impl FnMut(&str) -> Result<Option<(String, IpamHandle, Revision)>, E>,
    ) -> Result<(), E> {
        for (h, released) in &self.per_handle {
            if let Some((key, doc, revision)) = lookup(h)? {
                self.handle_ops.push(block::handle_write_after_release(key, doc, released, revision));
            }
        }
        Ok(())
    }

    /// The commit's ops (blocks, then handles) and the block documents it
    /// updates (rather than deletes), as they will be stored.
    fn ops(&self) -> (Vec<Op>, Vec<AllocationBlock>) {
        let mut ops = Vec::new();
        let mut updated = Vec::new();
        for (key, (doc, revision)) in &self.blocks {
            let op = block::write_after_release(key.clone(), doc, *revision);
            if matches!(op, Op::Update { .. }) {
                updated.push(doc.clone());
            }
            ops.push(op);
        }
        ops.extend(self.handle_ops.iter().cloned());
        (ops, updated)
    }
}

/// What a [`release`] committed.
#[derive(Debug, Default)]
pub struct Released {
    /// Freed addresses with the handle each belonged to, in release order.
    pub freed: Vec<(IpAddr, Option<String>)>,
    /// Blocks the commit updated (not deleted), as stored.
    pub updated: Vec<AllocationBlock>,
    /// The commit's revision (`None`: nothing was committed).
    pub revision: Option<Revision>,
}

impl Released {
    pub fn ips(&self) -> Vec<IpAddr> {
        self.freed.iter().map(|(ip, _)| *ip).collect()
    }
}

/// Release what `read` finds to release, in one commit together with
/// `extra`, retried on conflict under [`Retry::CAS`]. `read` runs before
/// every attempt (given the attempt number, 0 first) on fresh state and
/// returns the commit, or `None` when there is nothing to release (then
/// `extra` is committed alone, if any). A conflict on a key of `extra` is
/// returned as `Store(Conflict)`; `read`'s own errors end the release.
/// `visible` gets the commit's revision and the blocks it updated as soon
/// as the commit is visible, before it is durable
/// ([`Datastore::commit_then`]).
pub fn release<E>(
    store: &dyn Datastore,
    what: impl Display,
    extra: &[Op],
    mut read: impl FnMut(usize) -> Result<Option<ReleaseCommit>, E>,
    visible: &mut dyn FnMut(Revision, &[AllocationBlock]),
) -> Result<Released, E>
where
    E: From<IpamError> + From<StoreError>,
{
    let extra_keys: HashSet<&str> = extra.iter().map(Op::key).collect();
    crate::retry::cas(format_args!("release {what}"), |attempt| {
        let Some(commit) = read(attempt)? else {
            let revision = if extra.is_empty() {
                None
            } else {
                Some(store.commit_then(extra, &mut |r| visible(r, &[]))?)
            };
            return Ok(Cas::Done(Released { revision, ..Released::default() }));
        };
        let (mut ops, updated) = commit.ops();
        ops.extend_from_slice(extra);
        match store.commit_then(&ops, &mut |r| visible(r, &updated)) {
            Ok(rev) => Ok(Cas::Done(Released { freed: commit.freed, updated, revision: Some(rev) })),
            Err(StoreError::Conflict { key }) if extra_keys.contains(key.as_str()) => {
                Err(StoreError::Conflict { key }.into())
            }
            Err(StoreError::Conflict { key }) => Ok(Cas::Conflict { key }),
            Err(e) => Err(e.into()),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::new_block;
    use crate::types::{Affinity, BlockCidr};
    use calico_store::file::FileStore;
    use calico_store::model::{self, AllocationAttribute};

    struct Env {
        _dir: tempfile::TempDir,
        store: FileStore,
        cidr: BlockCidr,
    }

    /// One block (affine to `n1` or to nobody) with `n` addresses of handle
    /// `net.h`, and the handle document counting them.
    fn env(affine: bool, n: usize) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path()).unwrap();
        let cidr: BlockCidr = "10.9.0.0/26".parse().unwrap();
        let aff = Affinity::host("n1");
        let mut b = new_block(cidr, affine.then_some(&aff), false);
        let attr = AllocationAttribute { handle_id: Some("net.h".into()), secondary: None };
        for _ in 0..n {
            block::allocate_next(&mut b, &attr).unwrap();
        }
        store.create(&cidr.key(), &model::encode(&b)).unwrap();
        let mut h = IpamHandle::default();
        h.block.insert(cidr.handle_segment(), n as u32);
        store.create(&model::handle_key("net.h"), &model::encode(&h)).unwrap();
        Env { _dir: dir, store, cidr }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    impl Env {
        /// A commit freeing `ips` from the stored block, decrementing the handle.
        fn free(&self, ips: &[&str]) -> ReleaseCommit {
            let kv = self.store.get(&self.cidr.key()).unwrap().unwrap();
            let doc = block::decode_block(&kv).unwrap();
            let mut c = ReleaseCommit::new();
            for a in ips {
                assert_eq!(
                    c.free_ip(&kv.key, || (doc.clone(), kv.revision), ip(a)),
                    Some(Some("net.h".into()))
                );
            }
            c.decrement_handles(|h| -> Result<_, IpamError> {
                let kv = self.store.get(&model::handle_key(h))?.unwrap();
                Ok(Some((kv.key.clone(), model::decode(&kv)?, kv.revision)))
            })
            .unwrap();
            c
        }

        fn handle_count(&self) -> Option<u32> {
            let kv = self.store.get(&model::handle_key("net.h")).unwrap()?;
            Some(model::decode::<IpamHandle>(&kv).unwrap().block[&self.cidr.handle_segment()])
        }
    }

    #[test]
    fn several_addresses_of_one_block_are_one_block_write_and_one_handle_decrement() {
        let e = env(true, 3);
        let c = e.free(&["10.9.0.0", "10.9.0.2"]);
        let (ops, updated) = c.ops();
        assert_eq!(ops.len(), 2, "{ops:?}");
        assert_eq!(updated.len(), 1);
        let mut seen = Vec::new();
        let r = release::<IpamError>(
            &e.store,
            "t",
            &[],
            |_| Ok(Some(e.free(&["10.9.0.0", "10.9.0.2"]))),
            &mut |rev, blocks| seen.push((rev, blocks.len())),
        )
        .unwrap();
        assert_eq!(seen, [(r.revision.unwrap(), 1)], "told once the commit is visible");
        assert_eq!(r.ips(), [ip("10.9.0.0"), ip("10.9.0.2")]);
        assert!(r.revision.is_some());
        let b = block::decode_block(&e.store.get(&e.cidr.key()).unwrap().unwrap()).unwrap();
        assert_eq!(block::allocations(&b).iter().map(|a| a.ip).collect::<Vec<_>>(), [ip("10.9.0.1")]);
        assert_eq!(e.handle_count(), Some(1));
        // Not allocated (any more): nothing recorded, nothing written.
        let mut c = ReleaseCommit::new();
        assert_eq!(c.free_ip(&e.cidr.key(), || (b.clone(), 1), ip("10.9.0.0")), None);
        assert!(c.ops().0.is_empty() && c.freed.is_empty());
    }

    #[test]
    fn an_emptied_block_of_nobody_is_deleted_and_its_handle_with_it() {
        let e = env(false, 1);
        release::<IpamError>(&e.store, "t", &[], |_| Ok(Some(e.free(&["10.9.0.0"]))), &mut |_, _| {})
            .unwrap();
        assert!(e.store.get(&e.cidr.key()).unwrap().is_none());
        assert_eq!(e.handle_count(), None);
        // An affine block stays, empty.
        let e = env(true, 1);
        release::<IpamError>(&e.store, "t", &[], |_| Ok(Some(e.free(&["10.9.0.0"]))), &mut |_, _| {})
            .unwrap();
        assert!(e.store.get(&e.cidr.key()).unwrap().is_some());
    }

    #[test]
    fn a_conflict_rereads_but_a_conflict_on_the_callers_keys_is_returned() {
        let e = env(true, 2);
        // The first attempt's copy goes stale before the commit.
        let mut attempts = Vec::new();
        let r = release::<IpamError>(
            &e.store,
            "t",
            &[],
            |n| {
                attempts.push(n);
                let c = e.free(&["10.9.0.0"]);
                if n == 0 {
                    let kv = e.store.get(&e.cidr.key()).unwrap().unwrap();
                    e.store.update(&kv.key, &kv.value, kv.revision).unwrap();
                }
                Ok(Some(c))
            },
            &mut |_, _| {},
        )
        .unwrap();
        assert_eq!(attempts, [0, 1]);
        assert_eq!(r.ips(), [ip("10.9.0.0")]);
        assert_eq!(e.handle_count(), Some(1));

        // The caller's own op conflicts: returned after one attempt.
        let extra = [Op::Delete { key: "/caller/record".into(), revision: 7 }];
        let mut calls = 0;
        let r = release::<IpamError>(
            &e.store,
            "t",
            &extra,
            |_| {
                calls += 1;
                Ok(Some(e.free(&["10.9.0.1"])))
            },
            &mut |_, _| {},
        );
        assert!(matches!(r, Err(IpamError::Store(StoreError::Conflict { key })) if key == "/caller/record"));
        assert_eq!(calls, 1);
        assert_eq!(e.handle_count(), Some(1), "nothing of a failed commit is applied");

        // Nothing to release: the caller's ops are committed alone.
        let rev = e.store.create("/caller/record", b"x").unwrap();
        let extra = [Op::Delete { key: "/caller/record".into(), revision: rev }];
        let r = release::<IpamError>(&e.store, "t", &extra, |_| Ok(None), &mut |_, _| {}).unwrap();
        assert!(r.freed.is_empty() && r.revision.is_some());
        assert!(e.store.get("/caller/record").unwrap().is_none());
        let r = release::<IpamError>(&e.store, "t", &[], |_| Ok(None), &mut |_, _| {}).unwrap();
        assert!(r.revision.is_none());
    }

    #[test]
    fn a_whole_handle_release_writes_only_blocks_holding_it_and_deletes_the_handle() {
        let e = env(true, 2);
        let kv = e.store.get(&e.cidr.key()).unwrap().unwrap();
        let doc = block::decode_block(&kv).unwrap();
        let h = Handle::new("net.h").unwrap();
        let mut c = ReleaseCommit::new();
        let other: BlockCidr = "10.9.0.64/26".parse().unwrap();
        assert!(c.free_handle(other.key(), new_block(other, None, false), 3, &h).is_empty());
        assert_eq!(c.free_handle(kv.key.clone(), doc, kv.revision, &h), [ip("10.9.0.0"), ip("10.9.0.1")]);
        let hkv = e.store.get(&h.key()).unwrap().unwrap();
        c.delete_handle(hkv.key, hkv.revision);
        let (ops, _) = c.ops();
        assert_eq!(ops.iter().map(Op::key).collect::<Vec<_>>(), [e.cidr.key(), h.key()]);
        let r =
            release::<IpamError>(&e.store, "t", &[], |_| Ok(Some(std::mem::take(&mut c))), &mut |_, _| {})
                .unwrap();
        assert_eq!(r.freed, [(ip("10.9.0.0"), Some("net.h".into())), (ip("10.9.0.1"), Some("net.h".into()))]);
        assert_eq!(e.handle_count(), None);
    }
}
