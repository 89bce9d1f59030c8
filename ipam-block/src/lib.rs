//! # ipam-block: Calico's block IPAM
//!
//! Owns IP allocation policy over any [`calico_store::Datastore`] (file or
//! etcd), in Calico's model and key layout:
//!
//! * **Pools** ([`pool`]): `ipam.ipv4_pools`/`ipv6_pools` entries are pool
//!   names or CIDRs (a CIDR that is not a pool yet becomes one on first use);
//!   with none configured and none stored, Calico's default pool is created.
//!   Disabled pools are never used; `nodeSelector` is evaluated against the
//!   Node resource's labels ([`selector`]).
//! * **Blocks** ([`block`]): /26 (v4) and /122 (v6) by default, claimed by a
//!   node in two phases (affinity pending → block → affinity confirmed),
//!   searched from a start seeded by the node name, capped by
//!   `maxBlocksPerHost` (default 20); borrowed from other nodes when no block
//!   is free unless `strict_affinity`.
//! * **Handles**: `<network>.<containerID>`, `{block:{cidr:count}}`, released
//!   idempotently on DEL.
//! * **Allocator** ([`Ipam`]): every write is a CAS commit; a steady-state
//!   allocation takes two round trips (pool get + one commit of block and
//!   handle) thanks to a node-local [`hint`]. [`CountingStore`] makes the count observable. An in-process
//!   caller can put its own records in the allocation's commit
//!   ([`Ipam::assign_with`], [`Ipam::release_handle_with`]).
//! * **One release path** ([`release`]): CNI DEL, single-address release
//!   and calicoctl's gc all free addresses through the same commit builder
//!   (blocks, then handle documents deleted or decremented) and CAS loop.
//! * **One retry policy** ([`Retry::CAS`]): every CAS loop of the crate
//!   (assign, release, block claims, pool enable/disable, IPAM config,
//!   calicoctl's writes) gives up after the same number of conflicts, with
//!   Calico's "Max retries hit" error.
//! * **Operator views** ([`query`]): blocks, affinities, handles and
//!   allocations with usage; release of one address; IPAM config. The
//!   `calicoctl` commands live in [`ops`].
//!
//! The `calico-ipam` binary (`src/bin/calico-ipam.rs`) maps the CNI protocol
//! onto this library ([`cni`]); the `calico` plugin (`cni-calico-rs`) calls
//! the same [`cni::CalicoIpam`] in its own process, on its own store handle,
//! instead of exec'ing the binary (one process and one datastore open per
//! pod). The operator binary `calicoctl` parses its command line with clap
//! and `tool-cli` (the tools' datastore flags, logger and error line);
//! `clap` and `tool-cli` are dependencies of the package for it, never used
//! by the library. Its benchmark, `ipam-bench`, lives with the others in
//! `cni-bench`.
//!
//! May call: `calico-store` (the datastore, its model, and its resolver
//! for the binaries' datastore flags), `cni-proto` (the protocol in [`cni`],
//! its date arithmetic in [`timestamp`]). Never: knows about interfaces,
//! routes or the pod data plane; chooses a datastore from flags, environment
//! or config files itself (that is `calico_store::resolve`); writes without
//! compare-and-swap or retries a conflict outside [`Retry`].

pub mod allocator;
pub mod block;
pub mod cni;
pub mod counting;
pub mod error;
pub mod hint;
pub mod ops;
pub mod pool;
pub mod query;
pub mod release;
pub mod retry;
pub mod selector;
pub mod timestamp;
pub mod types;

pub use allocator::{AssignRequest, AssignedIp, FamilyRequest, GcOutcome, Ipam};
pub use counting::{CountingStore, RoundTrips};
pub use error::IpamError;
pub use retry::Retry;
pub use types::{Affinity, BlockCidr, Handle, PoolName, PoolRef};
