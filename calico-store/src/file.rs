//! The embedded file store (single-node default).
//!
//! ## Layout
//!
//! A directory (`datastore_path`, default `/var/lib/calico-rs`) holding:
//!
//! * `store.json`: ONE document with every key,
//!   `{"revision":N,"keys":{"<key>":{"rev":R,"json":<value>}}}`. Values that are
//!   JSON (all of Calico's documents) are embedded verbatim so an operator can
//!   read the file with `jq`; other values are stored as `"text"` (UTF-8) or
//!   `"bytes"` (an array of numbers).
//! * `store.lock`: the lock file every committer takes an exclusive `flock` on.
//!
//! ## Why one document
//!
//! Our state is hundreds of keys (a few KiB each at most), so reading and
//! rewriting one file is cheaper than the extra `open`/`fsync` calls per key
//! of a file-per-key layout, and it makes a multi-key commit trivially
//! all-or-nothing: a commit writes `store.json.tmp`, fsyncs it, renames it
//! over `store.json` and fsyncs the directory (with the default
//! [`Durability::Full`]). A crash leaves either the old or the new document,
//! never a mix.
//!
//! ## Concurrency
//!
//! Commits serialize on the exclusive `flock` of `store.lock` (re-read, check
//! every condition, write, rename, unlock). Reads take no lock: `rename(2)` is
//! atomic, so a reader opens either the previous or the next complete
//! document, and a commit that has returned is visible to every read that
//! starts after it (linearizable). A shared lock for reads would only add
//! open/flock/close per read and make readers wait behind a committer's
//! fsyncs. Each commit opens its own descriptor of the
//! lock file, so threads of one process exclude each other as well as other
//! processes (flock locks belong to the open file description).
//!
//! A document that does not parse is [`StoreError::Corrupt`] naming the file;
//! commits refuse to overwrite it.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::{Datastore, KeyValue, Op, Revision, StoreError};

const DATA_FILE: &str = "store.json";
const TEMP_FILE: &str = "store.json.tmp";
const LOCK_FILE: &str = "store.lock";

/// The embedded single-node datastore. Cheap to open; holds no descriptors
/// between calls, so many plugin processes can use the same directory.
#[derive(Debug, Clone)]
pub struct FileStore {
    dir: PathBuf,
    data: PathBuf,
    temp: PathBuf,
    lock: PathBuf,
    durability: Durability,
    /// Change notification (inotify), shared by clones of this handle.
    watch: std::sync::Arc<crate::file_watch::DirWatch>,
}

/// How hard a commit works to survive a power loss. Every mode keeps commits
/// atomic (temp file + rename), so a crashing *process* never leaves a
/// partial state; the modes differ only for a crashing *machine*.
///
/// Cost on this project's test VM (ext4): a data-file fsync ≈ 9 ms, a
/// directory fsync ≈ 3 ms; one CNI ADD+DEL cycle makes four commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// fsync the new data file before the rename and the directory after it:
    /// a commit that returned survives a power loss.
    #[default]
    Full,
    /// fsync the new data file before the rename only: after a power loss
    /// the store is the last or an earlier complete state, never torn.
    Data,
    /// No fsync. After a power loss recent commits may be lost, and on
    /// filesystems without ext4's rename-over-existing flush the file may be
    /// empty (reported as `Corrupt`, never overwritten).
    None,
}

impl Durability {
    /// `full` (or empty), `data`, `none`.
    pub fn parse(s: &str) -> Result<Durability, StoreError> {
        match s {
            "" | "full" => Ok(Durability::Full),
            "data" => Ok(Durability::Data),
            "none" => Ok(Durability::None),
            other => Err(StoreError::Config(format!(
                "unsupported datastore_sync {other:?} (expected \"full\", \"data\" or \"none\")"
            ))),
        }
    }
}

/// One stored value. Exactly one of the three fields is set.
#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    rev: Revision,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    json: Option<Box<RawValue>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    bytes: Option<Vec<u8>>,
}

impl Entry {
    fn new(rev: Revision, value: &[u8]) -> Entry {
        let mut e = Entry { rev, json: None, text: None, bytes: None };
        if let Ok(raw) = serde_json::from_slice::<Box<RawValue>>(value) {
            // RawValue keeps surrounding whitespace out, so the bytes we hand
            // back are exactly what was stored only when there was none.
            if raw.get().len() == value.len() {
                e.json = Some(raw);
                return e;
            }
        }
        match std::str::from_utf8(value) {
            Ok(s) => e.text = Some(s.to_string()),
            Err(_) => e.bytes = Some(value.to_vec()),
        }
        e
    }

    fn value(&self, key: &str, file: &Path) -> Result<Vec<u8>, StoreError> {
        match (&self.json, &self.text, &self.bytes) {
            (Some(j), None, None) => Ok(j.get().as_bytes().to_vec()),
            (None, Some(t), None) => Ok(t.as_bytes().to_vec()),
            (None, None, Some(b)) => Ok(b.clone()),
            _ => Err(StoreError::Corrupt {
                key: key.to_string(),
                reason: format!("entry in {} must have exactly one of json/text/bytes", file.display()),
            }),
        }
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Document {
    revision: Revision,
    keys: BTreeMap<String, Entry>,
}

/// The store-wide revision of a document, ignoring the keys.
#[derive(Debug, Default, Deserialize)]
struct RevisionOnly {
    revision: Revision,
}

impl FileStore {
    /// Open (creating if needed) the store in `dir` with [`Durability::Full`].
    /// Does not read the data: a corrupt document is reported by the first
    /// call that reads it.
    pub fn open(dir: impl Into<PathBuf>) -> Result<FileStore, StoreError> {
        FileStore::open_with(dir, Durability::Full)
    }

    /// Open with an explicit durability (`datastore_sync`).
    pub fn open_with(dir: impl Into<PathBuf>, durability: Durability) -> Result<FileStore, StoreError> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(|e| StoreError::io(dir.display().to_string(), e))?;
        let store = FileStore {
            data: dir.join(DATA_FILE),
            temp: dir.join(TEMP_FILE),
            lock: dir.join(LOCK_FILE),
            watch: std::sync::Arc::new(crate::file_watch::DirWatch::new(dir.clone())),
            dir,
            durability,
        };
        // Create the lock file now so a read-only problem shows at open time.
        store.open_lock_file()?;
        Ok(store)
    }

    /// The directory this store lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn open_lock_file(&self) -> Result<File, StoreError> {
        OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&self.lock)
            .map_err(|e| StoreError::io(self.lock.display().to_string(), e))
    }

    /// Take the exclusive store lock (released when the guard drops).
    fn lock_exclusive(&self) -> Result<Flock<File>, StoreError> {
        let mut file = self.open_lock_file()?;
        loop {
            match Flock::lock(file, FlockArg::LockExclusive) {
                Ok(guard) => return Ok(guard),
                Err((f, Errno::EINTR)) => file = f,
                Err((_, errno)) => {
                    return Err(StoreError::io(
                        self.lock.display().to_string(),
                        std::io::Error::from_raw_os_error(errno as i32),
                    ))
                }
            }
        }
    }

    /// The document as `T` (the full [`Document`], or just its revision);
    /// a missing file is the empty store.
    fn load_as<T: serde::de::DeserializeOwned + Default>(&self) -> Result<T, StoreError> {
        let mut buf = Vec::new();
        match File::open(&self.data) {
            Ok(mut f) => {
                f.read_to_end(&mut buf).map_err(|e| StoreError::io(self.data.display().to_string(), e))?
            }
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(T::default()),
            Err(e) => return Err(StoreError::io(self.data.display().to_string(), e)),
        };
        serde_json::from_slice(&buf)
            .map_err(|e| StoreError::Corrupt { key: self.data.display().to_string(), reason: e.to_string() })
    }

    fn load(&self) -> Result<Document, StoreError> {
        self.load_as()
    }

    fn save(&self, doc: &Document) -> Result<(), StoreError> {
        let io = |p: &Path, e| StoreError::io(p.display().to_string(), e);
        let bytes = serde_json::to_vec(doc).map_err(|e| {
            StoreError::io(self.temp.display().to_string(), std::io::Error::new(ErrorKind::InvalidData, e))
        })?;
        let mut f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&self.temp)
            .map_err(|e| io(&self.temp, e))?;
        f.write_all(&bytes).map_err(|e| io(&self.temp, e))?;
        if self.durability != Durability::None {
            f.sync_all().map_err(|e| io(&self.temp, e))?;
        }
        drop(f);
        std::fs::rename(&self.temp, &self.data).map_err(|e| io(&self.data, e))?;
        if self.durability == Durability::Full {
            // Make the rename itself durable.
            File::open(&self.dir).and_then(|d| d.sync_all()).map_err(|e| io(&self.dir, e))?;
        }
        Ok(())
    }

    fn kv(&self, key: &str, e: &Entry) -> Result<KeyValue, StoreError> {
        Ok(KeyValue { key: key.to_string(), value: e.value(key, &self.data)?, revision: e.rev })
    }
}

/// Check every condition of `ops` against `doc` (the state before the
/// commit), then apply them at `rev`. Leaves `doc` untouched on error.
fn apply(doc: &mut Document, ops: &[Op], rev: Revision) -> Result<(), StoreError> {
    let mut seen = std::collections::HashSet::new();
    for op in ops {
        if !seen.insert(op.key()) {
            return Err(StoreError::Config(format!("key {} appears twice in one commit", op.key())));
        }
        let ok = match op {
            Op::Create { key, .. } => !doc.keys.contains_key(key),
            Op::Update { key, revision, .. } | Op::Delete { key, revision } => {
                doc.keys.get(key).is_some_and(|e| e.rev == *revision)
            }
        };
        if !ok {
            return Err(StoreError::Conflict { key: op.key().to_string() });
        }
    }
    for op in ops {
        match op {
            Op::Create { key, value } | Op::Update { key, value, .. } => {
                doc.keys.insert(key.clone(), Entry::new(rev, value));
            }
            Op::Delete { key, .. } => {
                doc.keys.remove(key);
            }
        }
    }
    doc.revision = rev;
    Ok(())
}

impl Datastore for FileStore {
    fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let doc = self.load()?;
        doc.keys.get(key).map(|e| self.kv(key, e)).transpose()
    }

    fn list(&self, prefix: &str) -> Result<Vec<KeyValue>, StoreError> {
        let doc = self.load()?;
        doc.keys
            .range::<str, _>((std::ops::Bound::Included(prefix), std::ops::Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, e)| self.kv(k, e))
            .collect()
    }

    fn commit(&self, ops: &[Op]) -> Result<Revision, StoreError> {
        let _guard = self.lock_exclusive()?;
        let mut doc = self.load()?;
        if ops.is_empty() {
            return Ok(doc.revision);
        }
        let rev = doc.revision + 1;
        apply(&mut doc, ops, rev)?;
        self.save(&doc)?;
        Ok(rev)
    }

    fn revision(&self) -> Result<Revision, StoreError> {
        // Watchers poll this: validate the document but skip building the key map.
        Ok(self.load_as::<RevisionOnly>()?.revision)
    }

    /// inotify on the store directory ([`crate::file_watch`]): no reads while
    /// nothing is written, woken at once by a commit.
    fn wait_for_change(
        &self,
        after: Revision,
        timeout: std::time::Duration,
    ) -> Result<Option<Revision>, StoreError> {
        self.watch.wait(after, timeout, || self.revision())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, FileStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = FileStore::open(dir.path().join("db")).unwrap();
        (dir, s)
    }

    #[test]
    fn empty_store_is_revision_zero() {
        let (_d, s) = store();
        assert_eq!(s.revision().unwrap(), 0);
        assert_eq!(s.get("/a").unwrap(), None);
        assert!(s.list("/").unwrap().is_empty());
        s.ready().unwrap();
    }

    #[test]
    fn values_round_trip_exactly() {
        let (_d, s) = store();
        let values: [&[u8]; 5] =
            [br#"{"a":1,"b":[null]}"#, b" {\"a\":1} ", b"plain text", &[0xff, 0, 7], b""];
        for (i, v) in values.iter().enumerate() {
            let key = format!("/v/{i}");
            s.create(&key, v).unwrap();
            assert_eq!(s.get(&key).unwrap().unwrap().value, v.to_vec(), "value {i}");
        }
    }

    #[test]
    fn list_is_sorted_and_prefix_bounded() {
        let (_d, s) = store();
        for k in ["/b/2", "/a/1", "/b/1", "/c", "/b"] {
            s.create(k, b"1").unwrap();
        }
        let keys: Vec<_> = s.list("/b/").unwrap().into_iter().map(|kv| kv.key).collect();
        assert_eq!(keys, ["/b/1", "/b/2"]);
    }

    #[test]
    fn every_durability_commits_the_same_way() {
        for (name, d) in [("full", Durability::Full), ("data", Durability::Data), ("none", Durability::None)]
        {
            assert_eq!(Durability::parse(name).unwrap(), d);
            let dir = tempfile::tempdir().unwrap();
            let s = FileStore::open_with(dir.path(), d).unwrap();
            let r = s.create("/k", b"1").unwrap();
            let again = FileStore::open(dir.path()).unwrap();
            assert_eq!(again.get("/k").unwrap().unwrap().revision, r);
        }
        assert!(matches!(Durability::parse("sometimes"), Err(StoreError::Config(_))));
    }

    #[test]
    fn duplicate_key_in_commit_is_rejected_without_writing() {
        let (_d, s) = store();
        let ops = [
            Op::Create { key: "/k".into(), value: b"1".to_vec() },
            Op::Delete { key: "/k".into(), revision: 1 },
        ];
        assert!(matches!(s.commit(&ops), Err(StoreError::Config(_))));
        assert_eq!(s.revision().unwrap(), 0);
    }
}
