//! A [`Datastore`] wrapper that counts round trips, so tests and benchmarks
//! can hold the allocator to its budget (steady-state ADD ≤ 2).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use calico_store::{Datastore, KeyValue, Op, Revision, StoreError};

/// Counts every call that reaches the backend (one call = one round trip).
pub struct CountingStore {
    inner: Arc<dyn Datastore>,
    gets: AtomicU64,
    lists: AtomicU64,
    commits: AtomicU64,
    revisions: AtomicU64,
}

/// A snapshot of the counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RoundTrips {
    pub gets: u64,
    pub lists: u64,
    pub commits: u64,
    pub revisions: u64,
}

impl RoundTrips {
    pub fn total(&self) -> u64 {
        self.gets + self.lists + self.commits + self.revisions
    }
}

impl CountingStore {
    pub fn new(inner: Arc<dyn Datastore>) -> CountingStore {
        CountingStore {
            inner,
            gets: AtomicU64::new(0),
            lists: AtomicU64::new(0),
            commits: AtomicU64::new(0),
            revisions: AtomicU64::new(0),
        }
    }

    pub fn counts(&self) -> RoundTrips {
        RoundTrips {
            gets: self.gets.load(Ordering::Relaxed),
            lists: self.lists.load(Ordering::Relaxed),
            commits: self.commits.load(Ordering::Relaxed),
            revisions: self.revisions.load(Ordering::Relaxed),
        }
    }

    /// Zero the counters (e.g. after warming up).
    pub fn reset(&self) {
        for c in [&self.gets, &self.lists, &self.commits, &self.revisions] {
            c.store(0, Ordering::Relaxed);
        }
    }
}

impl Datastore for CountingStore {
    fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        self.gets.fetch_add(1, Ordering::Relaxed);
        self.inner.get(key)
    }

    fn list(&self, prefix: &str) -> Result<Vec<KeyValue>, StoreError> {
        self.lists.fetch_add(1, Ordering::Relaxed);
        self.inner.list(prefix)
    }

    fn commit(&self, ops: &[Op]) -> Result<Revision, StoreError> {
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.inner.commit(ops)
    }

    fn commit_then(&self, ops: &[Op], visible: &mut dyn FnMut(Revision)) -> Result<Revision, StoreError> {
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.inner.commit_then(ops, visible)
    }

    fn revision(&self) -> Result<Revision, StoreError> {
        self.revisions.fetch_add(1, Ordering::Relaxed);
        self.inner.revision()
    }

    fn ready(&self) -> Result<(), StoreError> {
        self.revisions.fetch_add(1, Ordering::Relaxed);
        self.inner.ready()
    }

    /// Forwarded, so a wrapped store keeps its own change notification (an
    /// etcd watch, inotify) instead of the trait's polling default; not
    /// counted: the revision reads a poll would make are what it saves, and
    /// the inner store's reads on a change are its own.
    fn wait_for_change(
        &self,
        after: Revision,
        timeout: std::time::Duration,
    ) -> Result<Option<Revision>, StoreError> {
        self.inner.wait_for_change(after, timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use calico_store::file::FileStore;
    use std::time::Duration;

    /// The trait's default `wait_for_change` polls `revision()`, which this
    /// wrapper would count; the forwarded one waits on the store's inotify.
    #[test]
    fn an_idle_wait_makes_no_counted_request_and_a_commit_ends_it() {
        let dir = tempfile::tempdir().unwrap();
        let inner = Arc::new(FileStore::open(dir.path()).unwrap());
        let counting = CountingStore::new(inner.clone());
        let rev = counting.revision().unwrap();
        counting.reset();
        assert_eq!(counting.wait_for_change(rev, Duration::from_millis(300)).unwrap(), None);
        assert_eq!(counting.counts().total(), 0, "{:?}", counting.counts());
        inner.commit(&[Op::Create { key: "/calico/x".into(), value: b"1".to_vec() }]).unwrap();
        assert!(counting.wait_for_change(rev, Duration::from_secs(20)).unwrap().is_some());
    }
}
