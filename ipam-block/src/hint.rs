//! The node-local allocation hint: the node's current block per family,
//! with the last block document and revision this node wrote.
//!
//! Why: a steady-state allocation then needs only two datastore round trips,
//! a get of the block's pool (so disabling a pool takes effect at once) and
//! one commit that updates the block (CAS on the cached revision) and creates
//! the handle. If anybody else changed the block since, the CAS fails and
//! the allocator re-reads the block, so a stale hint costs one extra round
//! trip and is never trusted for correctness: the block document's affinity
//! and revision are authoritative.
//!
//! One small JSON file per (node, family): `ipam-hint.<node>.<ipv4|ipv6>.json`
//! in the node's state directory, read and written only under the node's
//! IPAM lock, overwritten in place without fsync (losing it only costs round
//! trips). Unreadable, undecodable or inconsistent hints are ignored.

use std::io::Write;
use std::path::{Path, PathBuf};

use calico_store::model::{AllocationBlock, IpFamily};
use calico_store::Revision;
use serde::{Deserialize, Serialize};

/// What the hint remembers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hint {
    /// The pool request this hint was made for (see `Ipam::assign`); a
    /// request for other pools ignores the hint.
    pub request: String,
    /// The pool the block belongs to.
    pub pool: String,
    pub block: AllocationBlock,
    pub revision: Revision,
}

/// The hint directory of one node.
#[derive(Debug, Clone)]
pub struct HintDir {
    dir: PathBuf,
    node: String,
}

impl HintDir {
    pub fn new(dir: impl Into<PathBuf>, node: &str) -> HintDir {
        // Node names are DNS names; keep anything else out of the file name.
        let node = node.replace(|c: char| !(c.is_ascii_alphanumeric() || "-_.".contains(c)), "_");
        HintDir { dir: dir.into(), node }
    }

    fn path(&self, family: IpFamily) -> PathBuf {
        self.dir.join(format!("ipam-hint.{}.{}.json", self.node, family.key_segment()))
    }

    /// The hint, if there is a readable, self-consistent one.
    pub fn read(&self, family: IpFamily) -> Option<Hint> {
        let bytes = std::fs::read(self.path(family)).ok()?;
        let hint: Hint = serde_json::from_slice(&bytes).ok()?;
        crate::block::check_block(&hint.block).ok()?;
        (IpFamily::of(&hint.block.cidr) == family).then_some(hint)
    }

    /// Best effort: failures are logged, never returned.
    pub fn write(&self, family: IpFamily, hint: &Hint) {
        let path = self.path(family);
        if let Err(e) = write_in_place(&self.dir, &path, hint) {
            log::debug!("cannot write IPAM hint {}: {e}", path.display());
        }
    }

    /// Forget the hint (e.g. when its block is no longer ours).
    pub fn remove(&self, family: IpFamily) {
        let _ = std::fs::remove_file(self.path(family));
    }
}

/// Overwrite the hint in place (write at offset 0, then cut to length).
///
/// Why not temp file + rename: on ext4, renaming over an existing file (and
/// truncating one to zero) forces the new data out to disk, which cost ~2 ms
/// per allocation. In-place writing is safe here because hints are only read
/// and written under the node's IPAM lock (`Ipam::with_state_dir`), and a
/// torn hint (a crash mid-write) fails to decode or to validate and is ignored.
fn write_in_place(dir: &Path, path: &Path, hint: &Hint) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(hint).map_err(std::io::Error::other)?;
    let open = || std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(path);
    let mut f = match open() {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir)?;
            open()?
        }
        Err(e) => return Err(e),
    };
    f.write_all(&bytes)?;
    f.set_len(bytes.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::new_block;

    #[test]
    fn round_trip_and_bad_hints_are_ignored() {
        let d = tempfile::tempdir().unwrap();
        let hints = HintDir::new(d.path().join("sub"), "node/1");
        assert_eq!(hints.read(IpFamily::V4), None);
        let block = new_block("10.0.0.0/26".parse().unwrap(), None, false);
        let hint = Hint { request: String::new(), pool: "p".into(), block, revision: 7 };
        hints.write(IpFamily::V4, &hint);
        assert_eq!(hints.read(IpFamily::V4), Some(hint.clone()));
        // A v4 block is no v6 hint.
        std::fs::copy(hints.path(IpFamily::V4), hints.path(IpFamily::V6)).unwrap();
        assert_eq!(hints.read(IpFamily::V6), None);
        // An inconsistent block (free list disagrees with the slots) is ignored.
        let mut bad = hint.clone();
        bad.block.unallocated.pop();
        hints.write(IpFamily::V4, &bad);
        assert_eq!(hints.read(IpFamily::V4), None);
        std::fs::write(hints.path(IpFamily::V4), b"{garbage").unwrap();
        assert_eq!(hints.read(IpFamily::V4), None);
        hints.remove(IpFamily::V4);
        assert!(!hints.path(IpFamily::V4).exists());
    }
}
