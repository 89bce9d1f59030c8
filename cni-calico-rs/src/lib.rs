//! # cni-calico-rs: the `calico` CNI plugin
//!
//! Owns the plugin's behaviour: Calico's config keys ([`config`]), the pod's
//! identity and names ([`identity`]), the veth/address/route/sysctl wiring
//! ([`dataplane`]), IPAM with rollback ([`ipam`]), the pod record
//! ([`endpoint`]) and the five commands ([`plugin::Calico`]).
//!
//! May call: `cni-proto` (protocol, delegation), `netlink-util` (kernel),
//! `calico-store` (pod records, readiness), `ipam-block` (Calico IPAM, run
//! in this process when `ipam.type` is `calico-ipam`). Never decides on
//! addresses itself (that is `ipam-block`'s policy, or another IPAM
//! plugin's) and never writes to stdout except through `cni-proto`.
//!
//! **Departure from Calico:** Calico's plugin execs `calico-ipam`; this one
//! runs the same library in process on its own datastore handle, so an ADD
//! or DEL is one process and one open (one read of the file store's log)
//! instead of two. Measured on 2 cores, that was a third of an ADD's CPU,
//! which bounds pods/s under a burst; [`ipam`] has the details and what a
//! user who needs exec does. Every other `ipam.type` is exec'd as before.
//!
//! ADD, in order: config and identity (no side effects) → the pod netns
//! opens, has no CNI_IFNAME and no other Calico interface yet (a cni
//! orchestrator's `cali<id[:11]>` must not exist either) → then two things at
//! once: IPAM ADD (released on any later failure) and, beside it, datastore
//! readiness, a stale k8s `cali…` link of the same pod deleted, the veth
//! created with its peer directly in the pod netns and with a MAC the plugin
//! picked (deleted on any later failure), and for the families calico-ipam
//! is configured to assign the sysctls, link-up and 169.254.1.1 routes →
//! the pod's addresses and host routes → result. With calico-ipam (in
//! process) the pod record is written in IPAM's own commit, so the
//! allocation and the record exist together or not at all and an ADD makes
//! one datastore commit; with a delegate process, the record is written
//! after it, beside the addresses and routes (deleted on any later failure).
//! Running IPAM beside the veth creation takes the veth off ADD's critical
//! path; nothing before IPAM's answer needs an address.
//!
//! DEL, best effort and idempotent: the pod's interface is deleted first
//! (its host peer and routes go with it), on its own thread, because that
//! waits for the kernel's RCU grace periods and the rest fits in it: IPAM
//! DEL, always, and the pod record if this container owns it (with
//! calico-ipam both in one datastore commit); then the host veth the record
//! names, if still there. The first error is returned.
//!
//! The node must route 169.254.1.1 somewhere other than the pod's veth (a
//! default route does) for proxy ARP to answer the pod's gateway, and must
//! have `net.ipv6.conf.all.forwarding=1` for IPv6 pods (Felix's job on a
//! Calico node); the plugin only sets per-interface sysctls.

pub mod config;
pub mod dataplane;
pub mod endpoint;
pub mod errors;
pub mod identity;
pub mod ipam;
pub mod plugin;

pub use plugin::Calico;
