//! # kube-proxy-rules: kube-proxy's service rules for a Calico node
//!
//! Reads Services, EndpointSlices, Pods and Deployments as a user has them
//! (YAML/JSON files) plus the pod records Calico's CNI writes
//! (WorkloadEndpoints in the datastore), and produces exactly what one of
//! kube-proxy's proxiers would write, then applies it the way kube-proxy does.
//! `--proxy-mode` picks the proxier, with the same inputs and flags:
//!
//! * `iptables` (default): the iptables-restore payload (chain names, rule
//!   text and order); one `iptables-restore --noflush` transaction per sync,
//!   jump rules from the built-in chains, stale-chain cleanup, partial syncs of
//!   changed services, and a canary chain that forces a full resync when the
//!   rules were flushed.
//! * `nftables` (kube-proxy ≥1.31's nftables proxier, GA in 1.33): the
//!   `nft -f` transaction for table `ip kube-proxy`, which this mode owns
//!   entirely (base chains, verdict maps, `numgen` load balancing, dynamic
//!   affinity sets, `masquerade fully-random`); one transaction per sync, full
//!   at start and after a failure, incremental after (only the changed
//!   services' chains and the map elements that differ), stale chains flushed
//!   then deleted once it is safe, and a full resync when the table vanished
//!   (the table is the canary). See [`nftables`] for what differs from
//!   kube-proxy and why.
//!
//! IPv6 and dual-stack: as kube-proxy's MetaProxier, one proxier per IP
//! family ([`family`]): the same builders, fed the service ports, endpoints
//! and node settings of one family ([`model::ProxyState::split_families`],
//! [`cli::Args::proxier_config`] / [`cli::Args::nft_config`] per family),
//! applied with `ip6tables-restore` or to table `ip6 kube-proxy`. A family
//! runs only when it has services or a node IP of its own, so an IPv4-only
//! node behaves exactly as before. See README.md for the differences.
//!
//! Modules: [`names`] (chain names and hashes, both modes), [`k8s`] (input
//! objects), [`model`] (what both proxiers sync from: service ports and
//! apiserver defaults, endpoints and the traffic-policy decisions, the state,
//! change tracking by fingerprints, the full-sync policy), [`inputs`]
//! (objects + records → state), [`config`] (the node settings both
//! proxiers share), [`iptables`] (the iptables proxier: render, sync,
//! running iptables, kube-proxy's test sort), [`nftables`] (the nftables proxier: render, sync, nft, dump), [`exec`]
//! (running the tools in a namespace), [`probe`] (whether a family's backend
//! works on this node), [`cli`] (flags), [`commands`] (render, sync, run; the
//! binary adds `bench`), [`validate`] (names as the API server checks them,
//! and the payload writers' refusal of text that could break out).
//!
//! May call: `calico-store` (read-only: pod records and the store revision),
//! the `iptables`/`iptables-restore`/`iptables-save` binaries (and their
//! `ip6tables` twins) and the `nft` binary of the
//! current network namespace (or of a named one, for tests and benchmarks),
//! the filesystem.

pub mod backend;
pub mod cli;
pub mod commands;
pub mod config;
pub mod exec;
pub mod family;
pub mod inputs;
pub mod iptables;
pub mod k8s;
pub mod model;
pub mod names;
pub mod nftables;
pub mod probe;
pub mod syncer;
pub mod validate;
