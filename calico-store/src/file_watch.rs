//! Change notification for the file store: inotify on the store directory.
//!
//! Every commit of the file store writes or renames a file inside its
//! directory, so a watcher that wakes on a file created, closed after
//! writing or moved into the directory, and then re-reads the store's
//! (cheap) revision, sees every commit at once, and while nothing is written
//! it reads nothing at all: an idle watcher makes no datastore requests.
//!
//! The inotify instance is made by the first [`DirWatch::wait`] and kept
//! between calls, so a commit that lands while the caller is busy (between
//! two waits) is still queued in it and wakes the next wait. Lock files
//! (`*.lock`) are ignored: every process that opens the store opens its
//! lock file for writing, readers included, and their closes carry no data.
//!
//! Waiters on one store share one instance, one at a time (a second waiter
//! waits for the first's timeout, then for its own change).

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, InotifyEvent};

use crate::{Revision, StoreError};

/// One store directory's change notification (see the module doc).
pub struct DirWatch {
    dir: PathBuf,
    armed: Mutex<Option<Armed>>,
}

struct Armed {
    inotify: Inotify,
    /// The highest revision a wait has read.
    seen: Revision,
}

impl std::fmt::Debug for DirWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirWatch").field("dir", &self.dir).finish_non_exhaustive()
    }
}

/// What makes a wait re-read the revision: a file written, created, deleted or
/// renamed into the directory; the directory itself going away. The file
/// store appends to a log it keeps open (and preallocated, so its size does
/// not change), so a commit shows as `IN_MODIFY` long before any close.
const WAKE_ON: AddWatchFlags = AddWatchFlags::IN_MODIFY
    .union(AddWatchFlags::IN_DELETE)
    .union(AddWatchFlags::IN_CLOSE_WRITE)
    .union(AddWatchFlags::IN_CREATE)
    .union(AddWatchFlags::IN_MOVED_TO)
    .union(AddWatchFlags::IN_DELETE_SELF)
    .union(AddWatchFlags::IN_MOVE_SELF);

impl DirWatch {
    /// Watch `dir` (nothing is opened until the first wait).
    pub fn new(dir: impl Into<PathBuf>) -> DirWatch {
        DirWatch { dir: dir.into(), armed: Mutex::new(None) }
    }

    fn io(&self, e: Errno) -> StoreError {
        StoreError::io(self.dir.display().to_string(), std::io::Error::from_raw_os_error(e as i32))
    }

    /// [`crate::Datastore::wait_for_change`] for a store in this directory
    /// whose revision `revision` reads.
    pub fn wait(
        &self,
        after: Revision,
        timeout: Duration,
        revision: impl Fn() -> Result<Revision, StoreError>,
    ) -> Result<Option<Revision>, StoreError> {
        let deadline = Instant::now() + timeout;
        let mut guard = match self.armed.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let armed = match guard.as_mut() {
            Some(a) => {
                if a.seen > after {
                    // The caller is behind what an earlier wait saw (its
                    // reconcile failed, say): nothing new will be queued for
                    // that, so look again.
                    let rev = revision()?;
                    a.seen = a.seen.max(rev);
                    if rev > after {
                        return Ok(Some(rev));
                    }
                }
                a
            }
            None => {
                let inotify =
                    Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).map_err(|e| self.io(e))?;
                inotify.add_watch(&self.dir, WAKE_ON).map_err(|e| self.io(e))?;
                let a = guard.insert(Armed { inotify, seen: 0 });
                // A commit before the watch existed is in no queue: read once.
                let rev = revision()?;
                a.seen = rev;
                if rev > after {
                    return Ok(Some(rev));
                }
                a
            }
        };
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            // Round up: a wait of 0.4 ms must not become a busy loop of 0 ms polls.
            let ms = u32::try_from(left.as_micros().div_ceil(1000)).unwrap_or(u32::MAX).min(i32::MAX as u32);
            let ready = {
                let mut fds = [PollFd::new(armed.inotify.as_fd(), PollFlags::POLLIN)];
                match poll(&mut fds, PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)) {
                    Ok(n) => n > 0,
                    Err(Errno::EINTR) => false,
                    Err(e) => return Err(self.io(e)),
                }
            };
            if ready {
                let events = match armed.inotify.read_events() {
                    Ok(ev) => ev,
                    Err(Errno::EAGAIN) => Vec::new(),
                    Err(e) => return Err(self.io(e)),
                };
                // The kernel reports the directory's own removal only once
                // nothing pins it, and a store handle holding its log open
                // pins it: a file deleted in it makes us look at the path.
                if events.iter().any(gone) || (events.iter().any(deleted) && !self.dir.is_dir()) {
                    // The directory was removed or moved: the next wait
                    // watches whatever is at the path then.
                    *guard = None;
                    return Err(StoreError::io(
                        self.dir.display().to_string(),
                        std::io::Error::new(std::io::ErrorKind::NotFound, "store directory removed or moved"),
                    ));
                }
                if events.iter().any(wakes) {
                    let rev = revision()?;
                    armed.seen = armed.seen.max(rev);
                    if rev > after {
                        return Ok(Some(rev));
                    }
                }
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
        }
    }

    /// The directory watched.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

fn gone(e: &InotifyEvent) -> bool {
    e.mask.intersects(AddWatchFlags::IN_DELETE_SELF | AddWatchFlags::IN_MOVE_SELF | AddWatchFlags::IN_IGNORED)
}

fn deleted(e: &InotifyEvent) -> bool {
    e.mask.contains(AddWatchFlags::IN_DELETE)
}

fn wakes(e: &InotifyEvent) -> bool {
    if e.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
        return true;
    }
    match &e.name {
        Some(n) => !n.to_string_lossy().ends_with(".lock"),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::file::FileStore;
    use crate::Datastore;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn a_commit_from_another_handle_wakes_a_waiter_and_readers_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let s = FileStore::open(dir.path()).unwrap();
        let writer = FileStore::open(dir.path()).unwrap();
        let w = DirWatch::new(dir.path());
        let checks = AtomicU32::new(0);
        let rev = || {
            checks.fetch_add(1, Ordering::Relaxed);
            s.revision()
        };
        assert_eq!(w.wait(0, Duration::from_millis(50), rev).unwrap(), None);
        assert_eq!(checks.load(Ordering::Relaxed), 1, "one look when the watch is made");

        // Readers (and new handles, which open the lock file) wake nobody.
        let reader = FileStore::open(dir.path()).unwrap();
        reader.get("/calico/x").unwrap();
        reader.list("/calico/").unwrap();
        reader.revision().unwrap();
        assert_eq!(w.wait(0, Duration::from_millis(100), rev).unwrap(), None);
        assert_eq!(checks.load(Ordering::Relaxed), 1, "no read while nothing is written");

        // A commit from another thread while we wait.
        std::thread::scope(|sc| {
            sc.spawn(|| {
                std::thread::sleep(Duration::from_millis(100));
                writer.create("/calico/a", b"1").unwrap();
            });
            let start = Instant::now();
            assert_eq!(w.wait(0, Duration::from_secs(20), rev).unwrap(), Some(1));
            assert!(start.elapsed() < Duration::from_secs(20));
        });

        // A commit between two waits is queued and seen by the next one.
        writer.create("/calico/b", b"1").unwrap();
        assert_eq!(w.wait(1, Duration::from_secs(20), rev).unwrap(), Some(2));
        // A caller still behind (its reconcile failed) is told at once.
        assert_eq!(w.wait(1, Duration::from_secs(20), rev).unwrap(), Some(2));
        assert_eq!(w.wait(2, Duration::from_millis(50), rev).unwrap(), None);
    }

    #[test]
    fn a_removed_directory_is_an_error_not_a_hang() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let s = FileStore::open(&path).unwrap();
        let w = DirWatch::new(&path);
        assert_eq!(w.wait(0, Duration::from_millis(10), || s.revision()).unwrap(), None);
        std::fs::remove_dir_all(&path).unwrap();
        assert!(w.wait(0, Duration::from_secs(20), || s.revision()).is_err());
        // And again (no directory to watch at all).
        assert!(w.wait(0, Duration::from_secs(1), || s.revision()).is_err());
    }
}
