//! `ipam release --ip` (one address, whatever holds it) and `ipam gc`
//! (leaks `check` proves), both through the crate's one release path.
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
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use calico_store::{Datastore, StoreError};
use serde::Serialize;

use super::check::{check, LeakedIp};
use super::{OpsError, Snapshot};
use crate::query;
use crate::release::{self, ReleaseCommit};

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
    release::release(
        store,
        format_args!("{ips:?}"),
        &[],
        |_| {
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
        },
        &mut |_, _| {},
    )?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::ATTR_NODE;
    use crate::ops::show_ip;
    use crate::ops::test_support::*;

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
}
