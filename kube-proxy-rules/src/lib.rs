//! # kube-proxy-rules: kube-proxy's service rules for a Calico node
//!
//! Reads Services, EndpointSlices, Pods, Deployments and Nodes (their zone
//! labels) as a user has them (YAML/JSON files) or, in `run`, as the
//! Kubernetes API server has them (Services, EndpointSlices, this node's
//! Node: [`source::api`]), plus the pod records Calico's CNI writes
//! (WorkloadEndpoints in the datastore), and produces exactly what one of
//! kube-proxy's proxiers would write, then applies it the way kube-proxy
//! does; `run` also serves kube-proxy's health checks ([`health`]) and
//! metrics ([`metrics`]).
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
//!   kube-proxy and why. `--nftables-layout endpoint-maps` replaces the
//!   per-endpoint chains by one DNAT map, so that an endpoint change is a few
//!   map elements, sent as one nfnetlink batch ([`nftables::netlink`]).
//!
//! IPv6 and dual-stack: as kube-proxy's MetaProxier, one proxier per IP
//! family ([`family`]): the same builders, fed the service ports, endpoints
//! and node settings of one family ([`model::ProxyState::split_families`],
//! [`cli::Args::proxier_config`] / [`cli::Args::nft_config`] per family),
//! applied with `ip6tables-restore` or to table `ip6 kube-proxy`. A family
//! runs only when it has services or a node IP of its own, so an IPv4-only
//! node behaves exactly as before. See README.md for the differences.
//!
//! ## Layout
//!
//! As kube-proxy's `pkg/proxy`: one model, two backends of one trait, one
//! sync loop.
//!
//! * [`model`]: what both proxiers sync from: service ports and the
//!   apiserver defaults ([`model::service`]), endpoints and the
//!   traffic-policy decisions both proxiers share ([`model::endpoints`]), the
//!   state one sync renders ([`model::ProxyState`]), what changed since the
//!   last applied sync ([`model::changes`]: per-service fingerprints), when
//!   a sync must be full ([`model::full_sync`]: [`model::FullSyncReason`])
//!   and topology hints ([`model::topology`]: EndpointSlice hints,
//!   `trafficDistribution`, the node's zone). Runs no tool and knows no rule
//!   syntax.
//! * [`config`]: the node settings both backends share; what only one uses
//!   is in that backend's config ([`iptables::IptablesConfig`],
//!   [`nftables::NftablesConfig`]).
//! * [`backend`]: the [`backend::Backend`] trait (render, apply, remember,
//!   canary) and its [`backend::SyncError`]; [`syncer`]: [`syncer::Syncer`],
//!   the one loop over it (full-sync decision, changed services,
//!   success/failure bookkeeping, node addresses, dry runs, and the
//!   conntrack cleanup after each successful sync).
//! * [`conntrack`]: stale UDP/SCTP conntrack entries (an endpoint gone, a
//!   service's first endpoint): typed filters, ctnetlink dump and delete, the
//!   last cleaned state persisted under `--state-dir`. Backend-agnostic: the
//!   entries are the kernel's.
//! * [`iptables`], [`nftables`]: the two backends, each with its rule
//!   builders named after the chains they fill (`render`), the tool it runs
//!   (`ipt`, `nft`), its [`backend::Backend`] impl (`backend`) and test
//!   helpers of its own (`canonical`, `dump`).
//! * [`k8s`] (input objects), [`inputs`] (objects + pod records → state),
//!   [`names`] (chain names and hashes, both modes), [`validate`] (names as
//!   the API server checks them, and the payload writers' refusal of text
//!   that could break out), [`family`] (the words in which IPv4 and IPv6
//!   rules differ), [`exec`] (running the tools in a namespace), [`probe`]
//!   (whether a family's backend works on this node), [`cli`] (the command
//!   line: clap with kube-proxy's spellings, resolved into [`cli::Args`]),
//!   [`commands`] (`render`, `sync`, `run`).
//! * [`run`]: `run`'s event loop; [`source`]: what it waits on (the API
//!   watchers and their cache, inotify on the inputs, the datastore's change
//!   notification), each on a thread or task of its own sending events down
//!   one channel; [`health`] and [`metrics`]: kube-proxy's `/healthz`,
//!   `/livez`, health check node ports and `/metrics`, served by hyper on the
//!   same tokio runtime as the watchers.
//!
//! The `bench` subcommand and its synthetic cluster are the binary's
//! (`src/bench`, declared by `main.rs`); the integration tests compile the
//! same generator file through `tests/support`. Neither is part of this
//! library.
//!
//! Owns: the rules of its proxy mode in the current (or a named) network
//! namespace: the KUBE-* chains in iptables' filter, nat and mangle tables
//! (and the jump rules into them from the built-in chains), or table `ip`/
//! `ip6 kube-proxy`; what it remembers of them between syncs; the deletion
//! of stale UDP/SCTP conntrack entries of its services, and the state file
//! it remembers them by (`--state-dir`); in `run`, the listening sockets of
//! `--healthz-bind-address`, `--metrics-bind-address` and the services'
//! health check node ports, and its watches.
//!
//! May call: the Kubernetes API server (`run`, read-only: list and watch
//! Services, EndpointSlices and its own Node, through `kube`; never writes),
//! `calico-store` (read-only: pod records, the store revision and its change
//! notification),
//! the `iptables`/`iptables-restore`/`iptables-save` binaries (and their
//! `ip6tables` twins) and the `nft` binary of the current network namespace
//! (or, through `ip netns exec`, of a named one, for tests and benchmarks),
//! the kernel's nfnetlink (element-only transactions of the endpoint-maps
//! layout; a named namespace is entered on a thread of `netlink-util`'s),
//! the kernel's conntrack table through ctnetlink (`NETLINK_NETFILTER`:
//! dump, delete by tuple) in the node's namespace, the `--state-dir` files,
//! `sh`/`cat` for the namespace's `route_localnet` and
//! `nf_conntrack_tcp_be_liberal` sysctls, the filesystem (inputs, `/proc`),
//! `tool-cli` (the shared flag groups and value parsers), the process
//! environment (the datastore flags' variables, read by clap).
//!
//! Never: writes to the datastore or the API server; deletes conntrack
//! entries that are not UDP/SCTP flows of its own service addresses;
//! flushes, rewrites or deletes chains and
//! tables it does not own (leftover chains with names it could not have
//! written are left alone); writes anything to stdout but a payload or a
//! dry run's diff (bad objects, notes and progress are `log` records: the
//! binary's one logger, `tool_cli`'s, writes them to stderr); decides
//! anything on message text (full syncs on [`model::FullSyncReason`],
//! whether a chain exists by asking the kernel).

pub mod backend;
pub mod cli;
pub mod commands;
pub mod config;
pub mod conntrack;
pub mod exec;
pub mod family;
pub mod health;
pub mod inputs;
pub mod iptables;
pub mod k8s;
pub mod metrics;
pub mod model;
pub mod names;
pub mod nftables;
pub mod probe;
pub mod run;
pub mod source;
pub mod syncer;
pub mod validate;
