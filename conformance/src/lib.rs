//! # conformance: the runtime side of CNI, and a conformance suite
//!
//! Owns what a container runtime does with CNI plugins (libcni semantics),
//! and the tools built on it:
//! * [`conf`]: find a network by name in a config directory (`.conflist`,
//!   then `.conf`/`.json`), `cniVersions` negotiation;
//! * [`runtime::Runtime`]: ADD/CHECK/DEL/GC/STATUS/VERSION of a plugin chain,
//!   injected `name`/`cniVersion`/`runtimeConfig`/`prevResult`, DEL in reverse
//!   order, per-call timeout, errors decoded from stdout (stderr fallback);
//! * [`cache`]: libcni's result cache (`cniCacheV1`), replayed as `prevResult`;
//! * [`suite`]: the conformance cases (generic spec MUSTs plus Calico
//!   behaviours), run against an [`suite::Implementation`] inside namespaces;
//! * binaries: `cnitool` (upstream-compatible CLI), `conformance` (the table),
//!   `cni-probe` (a chained test plugin).
//!
//! May call: plugin binaries, `nsenter`/`ip netns` (through `testbed`),
//! the Calico datastore read-only through `calico-store` (suite hooks).
//! Never touches the root namespace's network.

pub mod cache;
pub mod conf;
pub mod error;
pub mod exec;
pub mod result;
pub mod runtime;
pub mod suite;

pub use conf::{load_conf_list, NetworkConfigList, PluginConf};
pub use error::{Error, PluginError};
pub use runtime::{Attachment, Runtime, RuntimeConf, VersionInfo};
