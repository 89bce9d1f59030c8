//! Where `run` learns that something changed: each source runs on a thread
//! (or, for the Kubernetes API, a task) of its own and sends an [`Event`]
//! down one channel; `run`'s loop ([`crate::run`]) waits on that channel and
//! on its timers, never polls.
//!
//! * [`api`]: Services, EndpointSlices and this node's Node object watched
//!   through the API server (`kube`'s watcher: list, then watch from the
//!   list's resourceVersion with bookmarks; a relist on `410 Gone`;
//!   exponential backoff on errors), folded into an [`api::ApiCache`].
//! * [`files`]: the input files and directories, through inotify.
//! * [`records`]: the pod records, through
//!   [`calico_store::Datastore::wait_for_change`].

pub mod api;
pub mod files;
pub mod records;

/// What a source saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The API cache changed (after its first sync: on every change).
    Api(api::ApiChange),
    /// An input file or directory changed.
    Files,
    /// The pod records changed (the store's revision moved).
    Records,
}

/// The sending half every source holds.
pub type Sender = std::sync::mpsc::Sender<Event>;
