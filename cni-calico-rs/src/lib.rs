//! # cni-calico-rs: the `calico` CNI plugin
//!
//! Owns the plugin's behaviour: Calico's config keys ([`config`]), the pod's
//! identity and names ([`identity`]), the veth/address/route/sysctl wiring
//! ([`dataplane`]), the IPAM delegation with rollback ([`ipam`]), the pod
//! record ([`endpoint`]) and the five commands ([`plugin::Calico`]).
//!
//! May call: `cni-proto` (protocol, delegation), `netlink-util` (kernel),
//! `calico-store` (pod records, readiness). Never allocates addresses itself
//! (that is the IPAM delegate's job) and never writes to stdout except
//! through `cni-proto`.
//!
//! ADD, in order: config and identity (no side effects) → the pod netns
//! opens and has no CNI_IFNAME yet → datastore ready → IPAM ADD (released
//! on any later failure) → stale `cali…` link deleted, veth created with its
//! peer directly in the pod netns (deleted on any later failure) → host
//! sysctls, pod addresses and routes, host routes → pod record → result.

pub mod config;
pub mod dataplane;
pub mod endpoint;
pub mod errors;
pub mod identity;
pub mod ipam;
pub mod plugin;

pub use plugin::Calico;
