//! # calico-store: the datastore room
//!
//! Owns everything about *where* Calico state lives and *what it looks like*:
//!
//! * [`Datastore`]: a small key/value trait with compare-and-swap semantics
//!   (get with revision, atomic multi-key commit of create-if-absent /
//!   update-if-revision / delete-if-revision, list by prefix). Everything above
//!   this trait (IPAM, pod records, the node agent, the rule generator) is
//!   backend-agnostic.
//! * Backends: [`file::FileStore`] (embedded single-node default) and
//!   [`etcd::EtcdStore`] (etcd v3, shared by many nodes), each with a real
//!   change notification behind [`Datastore::wait_for_change`]: an etcd
//!   watch of `/calico/` kept open between calls, inotify on the file
//!   store's directory ([`file_watch`]). A watcher that waits on it makes no
//!   datastore requests while nothing changes.
//! * [`model`]: Calico's etcd v3 key layout and JSON documents (blocks,
//!   affinities, handles, IPAM config, IP pools, workload endpoints, nodes,
//!   BGP configuration and BGP peers).
//! * [`selector`]: Calico's label selector language (pools' and BGP peers'
//!   `nodeSelector`, BGP peers' `peerSelector`), parsed and evaluated against
//!   Node labels; shared by `ipam-block` and `calico-node-agent`.
//! * [`config::DatastoreConfig`]: the `datastore_type` / `etcd_*` /
//!   `datastore_path` keys of a CNI network config, and [`open`] to get a
//!   backend from them.
//! * [`resolve`]: the one datastore resolver every binary uses (calicoctl,
//!   kube-proxy-rules, the node agent): a base (a CNI config file's `calico`
//!   plugin, or the caller's own config section), then the environment
//!   (`DATASTORE_*`, `ETCD_*`), then the flags (including the etcd TLS
//!   files), with sections never read from arrays.
//! * With feature `cni` only, `cni::store_error`: the one mapping of its
//!   failures to CNI error codes, next to the error type it maps, so that
//!   `calico` and `calico-ipam` report a failure with the same code.
//!
//! May call: the filesystem (and inotify on a file store's directory), etcd (through `etcd-client`), the environment
//! only through the closure a caller hands to [`resolve::resolve`], and with
//! feature `cni` the error type of `cni-proto`. Must not know about IP
//! allocation policy (that is `ipam-block`), command-line parsing beyond the
//! datastore flags' names, or any other part of the CNI protocol.

#[cfg(feature = "cni")]
pub mod cni;
pub mod config;
pub mod error;
pub mod etcd;
pub mod file;
pub mod file_watch;
pub mod model;
pub mod resolve;
pub mod retry;
pub mod selector;

pub use config::{open, DatastoreConfig, DatastoreType};
pub use error::StoreError;

/// etcd's mod_revision (or the file store's equivalent): the version a
/// compare-and-swap compares against. Always > 0 for an existing key.
pub type Revision = i64;

/// One stored key with its value and the revision it was last modified at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    pub revision: Revision,
}

/// One conditional write of an atomic [`Datastore::commit`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Create `key`; the commit fails with [`StoreError::Conflict`] if it exists.
    Create { key: String, value: Vec<u8> },
    /// Replace `key` if it is still at `revision`.
    Update { key: String, value: Vec<u8>, revision: Revision },
    /// Delete `key` if it is still at `revision`.
    Delete { key: String, revision: Revision },
}

impl Op {
    pub fn key(&self) -> &str {
        match self {
            Op::Create { key, .. } | Op::Update { key, .. } | Op::Delete { key, .. } => key,
        }
    }
}

/// A key/value store with compare-and-swap, the only thing the upper layers
/// see. Implementations must make `commit` all-or-nothing: either every
/// condition holds and every op is applied, or nothing changes and
/// [`StoreError::Conflict`] names the first key whose condition failed.
pub trait Datastore: Send + Sync {
    /// Read one key (linearizable).
    fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError>;

    /// Every key starting with `prefix`, sorted by key.
    fn list(&self, prefix: &str) -> Result<Vec<KeyValue>, StoreError>;

    /// Apply all `ops` atomically. Returns the revision the commit created.
    fn commit(&self, ops: &[Op]) -> Result<Revision, StoreError>;

    /// [`Datastore::commit`], calling `visible` with the new revision once
    /// every reader sees the commit, possibly before it is durable; returns
    /// (like `commit`) only after it is durable. `visible` runs only if the
    /// commit was applied. Lets a caller release its own lock while the
    /// commit is flushed, so that the next caller's commit can share the
    /// flush (the file store's group commit). The default calls `visible`
    /// after `commit`.
    fn commit_then(&self, ops: &[Op], visible: &mut dyn FnMut(Revision)) -> Result<Revision, StoreError> {
        let rev = self.commit(ops)?;
        visible(rev);
        Ok(rev)
    }

    /// A store-wide revision that changes whenever anything is written. Cheap
    /// polling for watchers (node agent, rule generator): relist only when it moved.
    fn revision(&self) -> Result<Revision, StoreError>;

    /// Block until the store's revision moves past `after` or `timeout`
    /// passes: `Ok(Some(rev))` with the newer revision, `Ok(None)` on
    /// timeout. What watchers (node agent, rule generator) wait on instead
    /// of polling [`Datastore::revision`].
    ///
    /// This default polls `revision()` once a second; backends override it
    /// with a real change notification (etcd watch, file-store inotify) so
    /// an idle watcher makes no requests and a change is seen at once. The
    /// etcd watch covers every Calico key (`/calico/`): a write elsewhere in
    /// etcd moves its revision without waking anyone. A wrapper around a
    /// store must forward this call, or its callers poll.
    fn wait_for_change(
        &self,
        after: Revision,
        timeout: std::time::Duration,
    ) -> Result<Option<Revision>, StoreError> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let rev = self.revision()?;
            if rev > after {
                return Ok(Some(rev));
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            std::thread::sleep(left.min(std::time::Duration::from_secs(1)));
        }
    }

    /// Ok when the store can serve requests now (CNI STATUS).
    fn ready(&self) -> Result<(), StoreError> {
        self.revision().map(|_| ())
    }

    /// Create-if-absent of one key.
    fn create(&self, key: &str, value: &[u8]) -> Result<Revision, StoreError> {
        self.commit(&[Op::Create { key: key.to_string(), value: value.to_vec() }])
    }

    /// Update-if-revision of one key.
    fn update(&self, key: &str, value: &[u8], revision: Revision) -> Result<Revision, StoreError> {
        self.commit(&[Op::Update { key: key.to_string(), value: value.to_vec(), revision }])
    }

    /// Delete-if-revision of one key.
    fn delete(&self, key: &str, revision: Revision) -> Result<Revision, StoreError> {
        self.commit(&[Op::Delete { key: key.to_string(), revision }])
    }
}
