//! The embedded file store (single-node default).
//!
//! ## Layout
//!
//! A directory (`datastore_path`, default `/var/lib/calico-rs`) holding:
//!
//! * `store.log`: an append-only log of binary records ([`record`] has the
//!   format), followed by zeros. The first record is a snapshot of every key
//!   (with its own revision); each commit appends one record with its puts
//!   and deletes, all at the commit's revision. Zeros where a record would
//!   start mark the end. Keys and values are Calico's etcd v3 keys
//!   and JSON documents, byte for byte, so everything above the
//!   [`Datastore`] trait (`calicoctl`, the rule generator, the node agent)
//!   reads them as before.
//! * `store.lock`: the lock file committers take an exclusive `flock` on.
//! * `store.log.tmp`: a compaction in progress (ignored, replaced).
//! * `store.log.torn-<offset>-<time>`: the bytes of a torn append, kept
//!   when a committer cut them off (see below).
//! * `store.json.migrated`: the previous layout (one JSON document
//!   rewritten per commit), renamed once the first open migrated it.
//!
//! ## Why a log
//!
//! Each CNI call is a new process that makes one or two commits. Rewriting
//! one document per commit cost a read, parse, serialise and rewrite of the
//! whole state (a megabyte at a few hundred pods) plus two fsyncs (file and
//! directory); appending a record costs a `pwrite` of the few KiB that
//! changed and one `fdatasync`. A multi-key commit is one record with one
//! checksum, so it is applied whole or not at all.
//!
//! The log is grown 128 KiB at a time, with zeros written (not a sparse
//! hole): an append overwrites blocks the file already has, so its
//! `fdatasync` writes data only. Appending past the end would change the
//! file size, and flushing that takes an ext4 journal commit, which waits
//! for the data of every other file the journal orders before it (~0.1 ms
//! against up to ~8 ms measured here while other programs write).
//!
//! When the log exceeds twice the live data (plus 256 KiB), the committer
//! that crossed the line compacts it: it writes a snapshot to
//! `store.log.tmp`, fsyncs it, renames it over `store.log` and fsyncs the
//! directory.
//!
//! ## Concurrency
//!
//! Commits serialise on the exclusive `flock` of `store.lock` (catch up with
//! the log, check every condition, append, unlock) and then `fdatasync`
//! after unlocking: the next committer appends while the first one's flush
//! runs, and the kernel flushes both in one journal commit (group commit).
//! A commit returns only after its own flush, which also covers every
//! record before it, so a later commit is never durable without an earlier
//! one.
//!
//! Reads take no lock: each [`FileStore`] keeps the decoded state and the
//! open log, and reads only what was appended since (one `stat`, one
//! `fstat`, a `pread` of the new records); a rename (compaction) is seen as
//! a new inode and read from the start. A reader that meets an incomplete
//! record (an append still in progress) takes the lock shared and reads
//! again. A commit that has returned is visible to every read that starts
//! after it.
//!
//! ## Damage
//!
//! Every record carries a CRC-32C. A record that is incomplete or fails its
//! checksum at the end of the log, or bytes other than zeros after the last
//! record (an append whose first page was lost), are an append a crash cut
//! short, which was never acknowledged (it is acknowledged only after its flush, and a later
//! record's flush would have covered it): the next committer moves its bytes
//! to `store.log.torn-…`, cuts the file back to the last whole record
//! (the next append grows it again) and logs a warning. Damage that
//! is followed by a valid record, a log whose first record is not a whole
//! snapshot, or revisions that go backwards are [`StoreError::Corrupt`]
//! naming the file and offset: every read and commit fails and nothing is
//! written until an operator looks at it.

mod legacy;
pub mod record;

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use crate::{Datastore, KeyValue, Op, Revision, StoreError};
use record::{Bad, Entry, Kind};

const LOG_FILE: &str = "store.log";
const COMPACT_FILE: &str = "store.log.tmp";
const LOCK_FILE: &str = "store.lock";
const LEGACY_FILE: &str = "store.json";
const LEGACY_MIGRATED: &str = "store.json.migrated";
/// Compaction starts when the log is larger than twice the live data plus this.
const COMPACT_SLACK: u64 = 256 * 1024;
/// Zeros written after the last record whenever the log grows: appends then
/// overwrite blocks that exist, and their `fdatasync` flushes data only,
/// with no journal commit for a new file size (which waits for every other
/// file's data the journal orders before it: ~0.1 ms against up to ~8 ms
/// here while other programs write).
const PREALLOCATE: usize = 128 * 1024;
/// How much a catch-up reads at a time after the first read: most commits
/// are a few KiB, and `revision()` (what watchers poll) reads this much even
/// when nothing changed, since appends no longer change the file size.
const READ_CHUNK: u64 = 16 * 1024;

/// The embedded single-node datastore. Cheap to open; clones share one
/// decoded copy of the state, so a process reads the log once and then only
/// what others appended. Holds the log open between calls (never a lock),
/// so many plugin processes can use the same directory.
#[derive(Debug, Clone)]
pub struct FileStore {
    dir: PathBuf,
    log: PathBuf,
    lock: PathBuf,
    durability: Durability,
    state: Arc<Mutex<State>>,
    /// Change notification (inotify), shared by clones of this handle.
    watch: std::sync::Arc<crate::file_watch::DirWatch>,
}

/// How hard a commit works to survive a power loss. Every mode keeps commits
/// atomic (one checksummed record each), so a crashing *process* never
/// leaves a partial state; the modes differ only for a crashing *machine*.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// `fdatasync` the log before a commit returns (shared by concurrent
    /// commits), and the snapshot file and the directory on compaction: a
    /// commit that returned survives a power loss.
    #[default]
    Full,
    /// No flush per commit; a compaction's snapshot is flushed before its
    /// rename. After a power loss recent commits may be lost; what is left
    /// is a prefix of the commits (a torn last record is cut off, damage
    /// before good records is reported as `Corrupt`).
    Data,
    /// No flush at all. After a power loss recent commits may be lost, and
    /// a compaction in flight may leave an empty log (reported as
    /// `Corrupt`, never overwritten).
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

/// One live key. The value stays in the buffer it was read with (shared by
/// the keys of that read): a first read of a megabyte of log copies no value
/// that a later record replaces.
#[derive(Debug, Clone)]
struct Value {
    revision: Revision,
    chunk: Arc<Vec<u8>>,
    start: usize,
    len: usize,
}

impl Value {
    fn bytes(&self) -> &[u8] {
        &self.chunk[self.start..self.start + self.len]
    }
}

/// What this handle has read of the log.
#[derive(Debug, Default)]
struct State {
    /// The log as opened (kept open: its inode cannot be reused while we
    /// compare inode numbers) and its (device, inode).
    file: Option<Arc<File>>,
    id: (u64, u64),
    /// End of the last record applied (the log's logical end: zeros follow).
    offset: u64,
    /// The file's size when last looked at (records, then zeros).
    len: u64,
    revision: Revision,
    keys: BTreeMap<String, Value>,
    /// Bytes of live keys and values (drives compaction).
    live: u64,
}

/// How a catch-up with the log ended.
enum Tail {
    /// Every byte of the log is applied.
    Clean,
    /// The bytes at `state.offset` are no complete record.
    Bad(Bad),
}

fn io_err(p: &Path) -> impl Fn(std::io::Error) -> StoreError + '_ {
    move |e| StoreError::io(p.display().to_string(), e)
}

impl FileStore {
    /// Open (creating if needed) the store in `dir` with [`Durability::Full`].
    /// Reads no data beyond migrating a `store.json` of the previous layout:
    /// damage is reported by the first call that reads.
    pub fn open(dir: impl Into<PathBuf>) -> Result<FileStore, StoreError> {
        FileStore::open_with(dir, Durability::Full)
    }

    /// Open with an explicit durability (`datastore_sync`).
    pub fn open_with(dir: impl Into<PathBuf>, durability: Durability) -> Result<FileStore, StoreError> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let store = FileStore {
            log: dir.join(LOG_FILE),
            lock: dir.join(LOCK_FILE),
            watch: std::sync::Arc::new(crate::file_watch::DirWatch::new(dir.clone())),
            dir,
            durability,
            state: Arc::default(),
        };
        // Create the lock file now so a read-only problem shows at open time.
        store.open_lock_file()?;
        if !store.log.exists() {
            store.create_log()?;
        }
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
            .map_err(io_err(&self.lock))
    }

    /// Take the store lock (released when the guard drops).
    fn lock(&self, how: FlockArg) -> Result<Flock<File>, StoreError> {
        let mut file = self.open_lock_file()?;
        loop {
            match Flock::lock(file, how) {
                Ok(guard) => return Ok(guard),
                Err((f, Errno::EINTR)) => file = f,
                Err((_, errno)) => {
                    return Err(io_err(&self.lock)(std::io::Error::from_raw_os_error(errno as i32)))
                }
            }
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the state leaves it possibly half-applied:
        // start over from the log.
        self.state.lock().unwrap_or_else(|poisoned| {
            let mut st = poisoned.into_inner();
            *st = State::default();
            st
        })
    }

    /// First open of a directory: a log holding the `store.json` of the
    /// previous layout, or an empty one. Under the lock, so that concurrent
    /// first opens create it once.
    fn create_log(&self) -> Result<(), StoreError> {
        let _lock = self.lock(FlockArg::LockExclusive)?;
        if self.log.exists() {
            return Ok(());
        }
        let legacy = self.dir.join(LEGACY_FILE);
        let (revision, keys) = legacy::load(&legacy)?.unwrap_or_default();
        let rec = record::encode(
            Kind::Snapshot,
            revision,
            keys.iter().map(|(k, r, v)| Entry::Put { key: k, revision: *r, value: v }),
        );
        self.replace_log(&rec)?;
        if !keys.is_empty() || legacy.exists() {
            let migrated = self.dir.join(LEGACY_MIGRATED);
            std::fs::rename(&legacy, &migrated).map_err(io_err(&legacy))?;
            self.sync_dir()?;
            log::info!(
                "migrated {} ({} keys, revision {revision}) to {}; the old file is kept as {}",
                legacy.display(),
                keys.len(),
                self.log.display(),
                migrated.display()
            );
        }
        Ok(())
    }

    /// Write `snapshot` as the whole new log: temp file, flush, rename,
    /// flush the directory (as far as the durability asks).
    fn replace_log(&self, snapshot: &[u8]) -> Result<(), StoreError> {
        let tmp = self.dir.join(COMPACT_FILE);
        let mut f =
            OpenOptions::new().create(true).truncate(true).write(true).open(&tmp).map_err(io_err(&tmp))?;
        f.write_all(snapshot).map_err(io_err(&tmp))?;
        f.write_all(&vec![0u8; PREALLOCATE]).map_err(io_err(&tmp))?;
        if self.durability != Durability::None {
            f.sync_data().map_err(io_err(&tmp))?;
        }
        drop(f);
        std::fs::rename(&tmp, &self.log).map_err(io_err(&self.log))?;
        self.sync_dir()
    }

    fn sync_dir(&self) -> Result<(), StoreError> {
        if self.durability == Durability::Full {
            File::open(&self.dir).and_then(|d| d.sync_all()).map_err(io_err(&self.dir))?;
        }
        Ok(())
    }

    fn corrupt(&self, offset: u64, reason: impl std::fmt::Display) -> StoreError {
        StoreError::Corrupt {
            key: self.log.display().to_string(),
            reason: format!("at byte {offset}: {reason}"),
        }
    }

    /// Catch up with the log: reopen it if it was replaced, then apply the
    /// records appended since. On error the state is dropped, so the next
    /// call starts from the beginning.
    fn refresh(&self, st: &mut State) -> Result<Tail, StoreError> {
        let r = self.refresh_inner(st);
        if r.is_err() {
            *st = State::default();
        }
        r
    }

    fn refresh_inner(&self, st: &mut State) -> Result<Tail, StoreError> {
        let meta = std::fs::metadata(&self.log).map_err(io_err(&self.log))?;
        if st.file.is_none() || st.id != (meta.dev(), meta.ino()) {
            let f = OpenOptions::new().read(true).write(true).open(&self.log).map_err(io_err(&self.log))?;
            let m = f.metadata().map_err(io_err(&self.log))?;
            *st = State { file: Some(Arc::new(f)), id: (m.dev(), m.ino()), ..State::default() };
        }
        let Some(file) = st.file.clone() else { return Ok(Tail::Clean) };
        let len = file.metadata().map_err(io_err(&self.log))?.len();
        if len < st.offset {
            // Cut below what we applied: nobody of ours does that. Read it
            // again from the start and judge what is there.
            *st = State { file: Some(Arc::clone(&file)), id: st.id, ..State::default() };
        }
        st.len = len;
        if len == 0 {
            return Err(self.corrupt(0, "the log is empty (no snapshot)"));
        }
        // A catch-up reads a chunk, and more only for a record that does
        // not fit; a first read starts bigger and doubles, stopping at the
        // zeros after the last record rather than reading them all.
        let mut want = if st.offset == 0 { 8 * READ_CHUNK } else { READ_CHUNK };
        loop {
            if st.offset >= len {
                return Ok(Tail::Clean);
            }
            let mut buf = vec![0u8; want.min(len - st.offset) as usize];
            file.read_exact_at(&mut buf, st.offset).map_err(io_err(&self.log))?;
            let buf = Arc::new(buf);
            let mut at = 0;
            loop {
                let rest = &buf[at..];
                if rest.is_empty() {
                    want = want.saturating_mul(2);
                    break;
                }
                if rest.iter().take(4).all(|b| *b == 0) {
                    // Zeros where the next record would start: the end. Also
                    // fewer than four of them: an append can end 1-3 bytes
                    // short of the preallocated end of the file.
                    return Ok(Tail::Clean);
                }
                match record::decode(rest) {
                    Ok((rec, n)) => {
                        self.apply(st, rec, &buf)?;
                        st.offset += n as u64;
                        at += n;
                    }
                    Err(Bad::Incomplete) if st.offset + (rest.len() as u64) < len => {
                        // The record goes on past this chunk: read again from it.
                        let need = match rest.get(4..8) {
                            Some(l) => u32::from_le_bytes([l[0], l[1], l[2], l[3]]) as u64,
                            None => 0,
                        };
                        want = (record::HEADER_LEN as u64 + need).max(want.saturating_mul(2));
                        break;
                    }
                    Err(bad) if st.offset == 0 => {
                        // The first record arrives whole, by rename: any damage
                        // there is corruption, never a torn append.
                        return Err(self.corrupt(0, format!("the snapshot record is damaged ({bad:?})")));
                    }
                    Err(bad) => return Ok(Tail::Bad(bad)),
                }
            }
        }
    }

    /// Everything from the logical end to the end of the file.
    fn remainder(&self, st: &State, file: &File) -> Result<Vec<u8>, StoreError> {
        let mut rest = vec![0u8; st.len.saturating_sub(st.offset) as usize];
        file.read_exact_at(&mut rest, st.offset).map_err(io_err(&self.log))?;
        Ok(rest)
    }

    /// Apply `rec`, decoded from `chunk` (its values are kept as ranges of it).
    fn apply(&self, st: &mut State, rec: record::Record<'_>, chunk: &Arc<Vec<u8>>) -> Result<(), StoreError> {
        let first = st.offset == 0;
        match (first, rec.kind) {
            (true, Kind::Snapshot) => {}
            (true, Kind::Commit) => return Err(self.corrupt(0, "the log does not start with a snapshot")),
            (false, Kind::Snapshot) => return Err(self.corrupt(st.offset, "a snapshot inside the log")),
            (false, Kind::Commit) if rec.revision <= st.revision => {
                return Err(self
                    .corrupt(st.offset, format!("revision {} after revision {}", rec.revision, st.revision)))
            }
            (false, Kind::Commit) => {}
        }
        for e in rec.entries {
            match e {
                Entry::Put { key, revision, value } => {
                    let start = (value.as_ptr() as usize)
                        .checked_sub(chunk.as_ptr() as usize)
                        .filter(|s| s + value.len() <= chunk.len())
                        .ok_or_else(|| self.corrupt(st.offset, "a value outside its record"))?;
                    let v = Value { revision, chunk: Arc::clone(chunk), start, len: value.len() };
                    match st.keys.get_mut(key) {
                        Some(old) => {
                            st.live = st.live - old.len as u64 + v.len as u64;
                            *old = v;
                        }
                        None => {
                            st.live += (key.len() + v.len) as u64;
                            st.keys.insert(key.to_string(), v);
                        }
                    }
                }
                Entry::Delete { key } if first => {
                    return Err(self.corrupt(0, format!("the snapshot deletes {key}")));
                }
                Entry::Delete { key } => {
                    if let Some(old) = st.keys.remove(key) {
                        st.live -= (key.len() + old.len) as u64;
                    }
                }
            }
        }
        st.revision = rec.revision;
        Ok(())
    }

    /// Run `f` on the current state, read without the lock unless an
    /// append is in flight.
    fn read<T>(&self, f: impl FnOnce(&State) -> Result<T, StoreError>) -> Result<T, StoreError> {
        {
            let mut st = self.state();
            if let Tail::Clean = self.refresh(&mut st)? {
                return f(&st);
            }
        }
        // An append in progress (or a torn one): appends happen under the
        // exclusive lock, so under the shared one the log is whole. Taken
        // without holding the state: committers take the lock first.
        let _shared = self.lock(FlockArg::LockShared)?;
        let mut st = self.state();
        match self.refresh(&mut st)? {
            Tail::Clean => f(&st),
            Tail::Bad(bad) => {
                let file = st.file.clone().ok_or_else(|| self.corrupt(st.offset, "log not open"))?;
                let rest = self.remainder(&st, &file)?;
                self.judge_tail(&st, &bad, &rest)?;
                log::warn!(
                    "{}: a torn record at byte {} is ignored until the next commit cuts it off",
                    self.log.display(),
                    st.offset,
                );
                f(&st)
            }
        }
    }

    /// Bad bytes at the end of the log, seen under the lock: a torn append
    /// (Ok) or corruption (valid records follow the damage).
    fn judge_tail(&self, st: &State, bad: &Bad, rest: &[u8]) -> Result<(), StoreError> {
        match record::valid_record_after(rest) {
            Some(at) => Err(self.corrupt(
                st.offset,
                format!(
                    "a damaged record ({bad:?}) followed by a valid one at byte {}",
                    st.offset + at as u64
                ),
            )),
            None => Ok(()),
        }
    }

    /// Under the exclusive lock: keep the torn bytes in a side file, then
    /// cut the log back to its last whole record.
    fn cut_torn_tail(&self, st: &State, file: &File, bad: &Bad, rest: &[u8]) -> Result<(), StoreError> {
        self.judge_tail(st, bad, rest)?;
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        let keep = self.dir.join(format!("{LOG_FILE}.torn-{}-{secs}", st.offset));
        let mut k =
            OpenOptions::new().create(true).truncate(true).write(true).open(&keep).map_err(io_err(&keep))?;
        let used = rest.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
        k.write_all(&rest[..used]).map_err(io_err(&keep))?;
        if self.durability != Durability::None {
            k.sync_data().map_err(io_err(&keep))?;
        }
        file.set_len(st.offset).map_err(io_err(&self.log))?;
        if self.durability != Durability::None {
            file.sync_all().map_err(io_err(&self.log))?;
        }
        self.sync_dir()?;
        log::warn!(
            "{}: cut off a torn record at byte {} ({} bytes, {bad:?}): an append a crash interrupted, never \
             acknowledged; its bytes are kept in {}",
            self.log.display(),
            st.offset,
            used,
            keep.display()
        );
        Ok(())
    }

    fn kv(key: &str, v: &Value) -> KeyValue {
        KeyValue { key: key.to_string(), value: v.bytes().to_vec(), revision: v.revision }
    }

    /// The commit under both locks: catch up, check, append, maybe
    /// compact. Returns the revision and the file to flush (if any).
    fn append(&self, st: &mut State, ops: &[Op]) -> Result<(Revision, Option<Arc<File>>), StoreError> {
        let tail = self.refresh(st)?;
        let file = st.file.clone().ok_or_else(|| self.corrupt(st.offset, "log not open"))?;
        // Under the lock nobody is appending: past the end there must be
        // zeros only. Anything else is what a crash left of an append.
        let rest = self.remainder(st, &file)?;
        match tail {
            Tail::Bad(bad) => {
                self.cut_torn_tail(st, &file, &bad, &rest)?;
                st.len = st.offset;
            }
            Tail::Clean if rest.iter().any(|&b| b != 0) => {
                self.cut_torn_tail(st, &file, &Bad::Invalid("bytes after the last record".into()), &rest)?;
                st.len = st.offset;
            }
            Tail::Clean => {}
        }
        if ops.is_empty() {
            return Ok((st.revision, None));
        }
        check(&st.keys, ops)?;
        let rev = st.revision + 1;
        let rec = record::encode(
            Kind::Commit,
            rev,
            ops.iter().map(|op| match op {
                Op::Create { key, value } | Op::Update { key, value, .. } => {
                    Entry::Put { key, revision: rev, value }
                }
                Op::Delete { key, .. } => Entry::Delete { key },
            }),
        );
        let end = st.offset + rec.len() as u64;
        let written = if end > st.len {
            // Grow the file: this record, then zeros for the next appends.
            let mut grown = rec.clone();
            grown.resize(rec.len() + PREALLOCATE, 0);
            file.write_all_at(&grown, st.offset).map(|()| st.offset + grown.len() as u64)
        } else {
            file.write_all_at(&rec, st.offset).map(|()| st.len)
        };
        match written {
            Ok(len) => st.len = len,
            Err(e) => {
                // Leave no partial record behind (the next commit would cut it anyway).
                let _ = file.set_len(st.offset);
                return Err(io_err(&self.log)(e));
            }
        }
        let rec = Arc::new(rec);
        let (decoded, n) = record::decode(&rec).map_err(|b| self.corrupt(st.offset, format!("{b:?}")))?;
        self.apply(st, decoded, &rec)?;
        st.offset += n as u64;
        if st.offset > 2 * st.live + COMPACT_SLACK {
            match self.compact(st) {
                // The snapshot was flushed (as far as the durability asks).
                Ok(()) => return Ok((rev, None)),
                // The commit is in the log and applied: it stands (failing it
                // now would leave its effect with nobody told to undo it),
                // and a later commit compacts.
                Err(e) => log::warn!("{}: compaction failed, retried later: {e}", self.log.display()),
            }
        }
        Ok((rev, (self.durability == Durability::Full).then_some(file)))
    }

    /// Rewrite the log as one snapshot of the live keys.
    fn compact(&self, st: &mut State) -> Result<(), StoreError> {
        let rec = record::encode(
            Kind::Snapshot,
            st.revision,
            st.keys.iter().map(|(k, v)| Entry::Put { key: k, revision: v.revision, value: v.bytes() }),
        );
        let before = st.offset;
        self.replace_log(&rec)?;
        log::debug!("{}: compacted {before} bytes to {}", self.log.display(), rec.len());
        // Read the new log back next time (a new inode).
        *st = State::default();
        Ok(())
    }
}

/// Check every condition of `ops` against `keys` (the state before the commit).
fn check(keys: &BTreeMap<String, Value>, ops: &[Op]) -> Result<(), StoreError> {
    let mut seen = std::collections::HashSet::new();
    for op in ops {
        if !seen.insert(op.key()) {
            return Err(StoreError::Config(format!("key {} appears twice in one commit", op.key())));
        }
    }
    for op in ops {
        let ok = match op {
            Op::Create { key, .. } => !keys.contains_key(key),
            Op::Update { key, revision, .. } | Op::Delete { key, revision } => {
                keys.get(key).is_some_and(|v| v.revision == *revision)
            }
        };
        if !ok {
            return Err(StoreError::Conflict { key: op.key().to_string() });
        }
    }
    Ok(())
}

impl Datastore for FileStore {
    fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        self.read(|st| Ok(st.keys.get(key).map(|v| FileStore::kv(key, v))))
    }

    fn list(&self, prefix: &str) -> Result<Vec<KeyValue>, StoreError> {
        self.read(|st| {
            Ok(st
                .keys
                .range::<str, _>((std::ops::Bound::Included(prefix), std::ops::Bound::Unbounded))
                .take_while(|(k, _)| k.starts_with(prefix))
                .map(|(k, v)| FileStore::kv(k, v))
                .collect())
        })
    }

    fn commit(&self, ops: &[Op]) -> Result<Revision, StoreError> {
        self.commit_then(ops, &mut |_| {})
    }

    fn commit_then(&self, ops: &[Op], visible: &mut dyn FnMut(Revision)) -> Result<Revision, StoreError> {
        let (rev, flush) = {
            let _lock = self.lock(FlockArg::LockExclusive)?;
            let mut st = self.state();
            self.append(&mut st, ops)?
        };
        visible(rev);
        // Outside the lock: the next committer appends while this flush
        // runs, and one journal commit serves both.
        if let Some(file) = flush {
            file.sync_data().map_err(io_err(&self.log))?;
        }
        Ok(rev)
    }

    fn revision(&self) -> Result<Revision, StoreError> {
        // Watchers poll this: after the first call, a stat and an fstat
        // unless something was appended.
        self.read(|st| Ok(st.revision))
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

    /// A log whose last record ends 1-3 bytes before the end of the file
    /// (the preallocated zeros nearly used up) is a clean log, not a torn
    /// append: nothing is cut or kept aside.
    #[test]
    fn a_log_ending_a_few_zeros_short_of_the_file_is_clean() {
        for gap in 1..=3u64 {
            let (dir, s) = store();
            s.commit(&[Op::Create { key: "/k".into(), value: b"value-ends-nonzero".to_vec() }]).unwrap();
            let log = dir.path().join("db").join(LOG_FILE);
            let bytes = std::fs::read(&log).unwrap();
            let end = bytes.iter().rposition(|b| *b != 0).unwrap() as u64 + 1;
            std::fs::OpenOptions::new().write(true).open(&log).unwrap().set_len(end + gap).unwrap();
            let reopened = FileStore::open(dir.path().join("db")).unwrap();
            assert_eq!(reopened.get("/k").unwrap().unwrap().value, b"value-ends-nonzero");
            reopened.commit(&[Op::Create { key: "/k2".into(), value: b"2".to_vec() }]).unwrap();
            let kept: Vec<_> = std::fs::read_dir(dir.path().join("db"))
                .unwrap()
                .filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().contains("torn"))
                .collect();
            assert!(kept.is_empty(), "gap {gap}: a clean log was taken for a torn one: {kept:?}");
        }
    }

    /// A commit that is in the log stands even when the compaction after it
    /// fails (here: its temporary file's name is taken by a directory);
    /// the next commit after the cause is gone compacts.
    #[test]
    fn a_failed_compaction_does_not_fail_the_commit_before_it() {
        let (dir, s) = store();
        let blocker = dir.path().join("db").join(COMPACT_FILE);
        std::fs::create_dir(&blocker).unwrap();
        let value = vec![b'x'; 16 * 1024];
        let mut rev = s.commit(&[Op::Create { key: "/k".into(), value: value.clone() }]).unwrap();
        for _ in 0..40 {
            rev = s.commit(&[Op::Update { key: "/k".into(), value: value.clone(), revision: rev }]).unwrap();
        }
        let len = |p: &std::path::Path| std::fs::metadata(p).unwrap().len();
        let log = dir.path().join("db").join(LOG_FILE);
        assert!(len(&log) > 2 * COMPACT_SLACK, "no compaction was due: {}", len(&log));
        assert_eq!(s.get("/k").unwrap().unwrap().revision, rev);
        std::fs::remove_dir(&blocker).unwrap();
        s.commit(&[Op::Update { key: "/k".into(), value: value.clone(), revision: rev }]).unwrap();
        assert!(len(&log) < COMPACT_SLACK, "not compacted: {}", len(&log));
        let reopened = FileStore::open(dir.path().join("db")).unwrap();
        assert_eq!(reopened.get("/k").unwrap().unwrap().value, value);
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
