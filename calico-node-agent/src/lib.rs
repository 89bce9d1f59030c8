//! # calico-node-agent: the node agent room
//!
//! Keeps one node's kernel and BIRD in line with the datastore, the job
//! calico/node's confd + Felix route manager do:
//! * [`state`]: read the node's confirmed blocks, borrowed addresses and the
//!   other nodes, this node's labels and the BGP resources (BGPConfiguration,
//!   BGPPeer) from the datastore;
//! * [`peering`]: merge those BGP resources with the agent's config into the
//!   effective AS numbers, mesh switch and peer list;
//! * [`bird`]: render the BIRD 2 configuration; [`birdctl`]: write it and
//!   reconfigure BIRD only when it changed;
//! * [`routes`]: one blackhole route per affine block (protocol 80);
//! * [`nat_outgoing`]: the IP pools' `natOutgoing` (pod traffic from a
//!   natOutgoing pool to a destination in no pool is masqueraded), as chain
//!   `cali-nat-outgoing` (iptables) or table `calico-nat-outgoing`
//!   (nftables), chosen by `nat_outgoing_mode`; a bad pool document is
//!   skipped and reported;
//! * [`agent`]: Node registration and the watch/reconcile loop: it waits on
//!   the datastore's change notification (`Datastore::wait_for_change`: an
//!   etcd watch, inotify on the file store), so a claimed block is routed as
//!   soon as it is written and an idle agent makes no datastore requests;
//!   every 10 s it re-programs the kernel from the state it holds;
//! * [`config`]: the agent's configuration (file, then flags) and
//!   [`config::DEFAULT_AS_NUMBER`]; [`cli`]: its command line (clap; the
//!   logger is the tools' shared one, `tool-cli`, installed by the binary).
//!
//! ## BGP resources
//!
//! Like calico/node, the agent takes its BGP settings from the datastore,
//! read in the same pass as the blocks; a change re-renders BIRD and
//! reconfigures it (only when the text changed):
//!
//! * `/calico/resources/v3/projectcalico.org/bgpconfigurations/default`:
//!   `asNumber` (cluster AS, default 64512), `nodeToNodeMeshEnabled`,
//!   `logSeverityScreen` (BIRD `debug all` / `{ states }` / `off`),
//!   `serviceClusterIPs` / `serviceExternalIPs` (IPv4 CIDRs announced by
//!   every node).
//! * `/calico/resources/v3/projectcalico.org/bgppeers/<name>`: `peerIP`
//!   (`ip` or `ip:port`) + `asNumber`, or `peerSelector` (other Calico nodes
//!   by label, each with its own AS); scoped by `node`, by `nodeSelector`
//!   over this node's labels, or by neither (every node). Protocols are
//!   named `Global_<ip>` (unscoped) and `Node_<ip>` (scoped), as Calico does.
//! * This node's Node resource: `metadata.labels` (published from the
//!   config's `labels`, merged over labels set by others) and
//!   `spec.bgp.asNumber`, this node's AS.
//!
//! Precedence, as in Calico: **AS** = Node `spec.bgp.asNumber` >
//! BGPConfiguration `asNumber` > the config's `as_number` > 64512. The
//! config's `as_number` is also the initial Node AS: registration writes it
//! only into a Node without one, so an AS set on the Node (by an operator)
//! is never overwritten (calico/node's `AS` variable). **Mesh** =
//! `nodeToNodeMeshEnabled` when set; on when a BGPConfiguration exists
//! without it (Calico's default); without a BGPConfiguration, the config's
//! `node_to_node_mesh` (default off). **Peers**: BGPPeers, then the config's
//! `peers` (one session per address, a BGPPeer wins; this node's own address
//! is never a peer).
//!
//! No single document can make BIRD refuse the rendered configuration (BIRD
//! would keep the old one and every later routing change would stall):
//! * a BGPPeer that is invalid or cannot be rendered (bad selector, `node`
//!   with `nodeSelector`, IPv6 `peerIP`, AS 0, port 0, ...) is skipped;
//! * a bad BGPConfiguration field is dropped alone, the others still apply
//!   (e.g. `logSeverityScreen: Verbose`); service CIDRs with host bits are
//!   masked (`10.96.0.1/12` → `10.96.0.0/12`), as Calico does;
//! * a Node `asNumber` of 0 is unset; selectors are bounded in length and
//!   nesting ([`calico_store::selector`]);
//! * BGPPeer fields the agent does not implement (`password`,
//!   `sourceAddress`, `keepOriginalNextHop`, `filters`, `ttlSecurity`, ...)
//!   are ignored: the peering is made without them.
//!
//! Each of these is logged once while it lasts (not on every pass), naming
//! the document. As a last line of defence every rendered text is checked
//! with `bird -p` before it is applied; a refusal names the rendered section
//! (and its `description`, the document it comes from) and BIRD keeps its
//! current configuration. Not implemented: per-node BGPConfigurations
//! (`node.<name>`), passwords, route reflection, `keepOriginalNextHop` and
//! IPv6.
//!
//! May call: `calico-store` (read, plus its own Node resource), `netlink-util`
//! (routes), `birdc`/`bird` (BIRD control), `iptables`/`ip6tables`(-restore)
//! or `nft` (its own natOutgoing chain or tables only), `tool-cli`/clap (the
//! command line, the datastore flags' environment variables). Never touches
//! pod interfaces (the CNI plugin's) or the service rules (`kube-proxy-rules`'
//! chains and tables), and never starts
//! other programs' daemons: the namespace lab that runs the agent beside
//! etcd, BIRD and the other binaries is the `calico-lab` crate.

pub mod agent;
pub mod bird;
pub mod birdctl;
pub mod cli;
pub mod config;
pub mod nat_outgoing;
pub mod peering;
pub mod routes;
pub mod state;
