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
}
