//! # kube-proxy-rules: kube-proxy's iptables rules for a Calico node
//!
//! Reads Services, EndpointSlices, Pods and Deployments as a user has them
//! (YAML/JSON files) plus the pod records Calico's CNI writes
//! (WorkloadEndpoints in the datastore), and produces exactly the
//! iptables-restore payload kube-proxy's iptables proxier would (chain names,
//! rule text and order), then applies it the way kube-proxy does: one
//! `iptables-restore --noflush` transaction per sync, jump rules from the
//! built-in chains, stale-chain cleanup, partial syncs of changed services,
//! and a canary chain that forces a full resync when the rules were flushed.
//!
//! Modules: [`names`] (chain names and hashes), [`k8s`] (input objects),
//! [`service`] (service ports, apiserver defaults), [`endpoints`] (slices, pod
//! records, categorization), [`inputs`] (objects + records → state),
//! [`proxier`] (rule builders named after chains), [`canonical`] (kube-proxy's
//! test sort), [`iptables`] (running iptables), [`syncer`] (full/partial syncs),
//! [`cli`] (flags), [`bench`].
//!
//! May call: `calico-store` (read-only: pod records and the store revision),
//! the `iptables`/`iptables-restore`/`iptables-save` binaries of the current
//! network namespace (or of a named one, for tests), the filesystem.

pub mod bench;
pub mod canonical;
pub mod cli;
pub mod commands;
pub mod endpoints;
pub mod exec;
pub mod inputs;
pub mod iptables;
pub mod k8s;
pub mod names;
pub mod nftables;
pub mod proxier;
pub mod service;
pub mod syncer;
