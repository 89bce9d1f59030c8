//! # calico-node-agent: the node agent room
//!
//! Keeps one node's kernel and BIRD in line with the datastore, the job
//! calico/node's confd + Felix route manager do:
//! * [`state`]: read the node's confirmed blocks and borrowed addresses (IPv4
//!   and IPv6), the other nodes (addresses, AS, labels, route reflector
//!   cluster IDs), this node's Node resource and the BGP resources
//!   (BGPConfiguration, BGPPeer) from the datastore;
//! * [`peering`]: merge those BGP resources with the agent's config into the
//!   effective AS numbers, mesh switch, route reflector role and peer list;
//! * [`secrets`]: BGP passwords (`secretKeyRef`) from the agent's
//!   `bgp_secrets` file or directory, validated, never logged;
//! * [`bird`]: render the BIRD 2 configuration (IPv4 and IPv6 channels);
//!   [`birdctl`]: write it (mode 0600: it may hold passwords) and reconfigure
//!   BIRD only when it changed;
//! * [`routes`]: one blackhole route per affine block of either family
//!   (protocol 80);
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
//!   `serviceClusterIPs` / `serviceExternalIPs` (CIDRs announced by every
//!   node; IPv6 ones by nodes with `node_ipv6`), `nodeMeshPassword` (the
//!   mesh sessions' password, from `bgp_secrets`; unreadable: no mesh),
//!   `listenPort` (every node's BGP port; BIRD 2 has no global `listen bgp`,
//!   so `local port` in the sessions' template, and the mesh reaches each
//!   node at its port).
//! * `…/bgpconfigurations/node.<name>`: one node's own `listenPort` and
//!   `logSeverityScreen`, over the `default` ones for that node; its
//!   cluster-wide fields are reported and ignored, as is a BGPConfiguration
//!   with any other name.
//! * `/calico/resources/v3/projectcalico.org/bgppeers/<name>`: `peerIP`
//!   (`ip`, `ip:port`, `v6` or `[v6]:port`) + `asNumber`, or `peerSelector`
//!   (other Calico nodes by label, each with its own AS, on both of their
//!   addresses); scoped by `node`, by `nodeSelector` over this node's
//!   labels, or by neither (every node); `password.secretKeyRef` (BIRD
//!   `password`, TCP-MD5, from `bgp_secrets`: [`secrets`]);
//!   `keepOriginalNextHop` (BIRD `next hop keep` towards a peer in another
//!   AS, as calico/node; iBGP keeps next hops anyway). What it asks for is
//!   what this agent's routes have regardless: unlike calico/node, which
//!   passes the blocks it learnt from the mesh on to its peers, every node
//!   announces only what it owns, so a block's next hop is always the node
//!   it lives on. Completed in
//!   reverse as calico/node does: a node matched by `peerSelector` (or whose
//!   address and AS are the `peerIP` and `asNumber`) peers back with the
//!   nodes the BGPPeer applies to. Protocols are named `Global_<ip>`
//!   (unscoped) and `Node_<ip>` (scoped), as Calico does (`.`/`:` → `_`).
//! * Node resources: `metadata.labels` (this node's published from the
//!   config's `labels`, merged over labels set by others),
//!   `spec.bgp.asNumber`, `ipv4Address`, `ipv6Address` (this node's from
//!   `node_ipv6`: IPv6 sessions and mesh carry the IPv6 blocks) and
//!   `routeReflectorClusterID` (set by an operator: the node reflects for
//!   the peers of its AS outside its cluster, `rr client; rr cluster id`,
//!   and leaves the full mesh, which skips reflectors, as calico/node's
//!   template does).
//!
//! Precedence, as in Calico: **AS** = Node `spec.bgp.asNumber` >
//! BGPConfiguration `asNumber` > the config's `as_number` > 64512. The
//! config's `as_number` is also the initial Node AS: registration writes it
//! only into a Node without one, so an AS set on the Node (by an operator)
//! is never overwritten (calico/node's `AS` variable). **Mesh** =
//! `nodeToNodeMeshEnabled` when set; on when a BGPConfiguration exists
//! without it (Calico's default); without a BGPConfiguration, the config's
//! `node_to_node_mesh` (default off). **Peers**: BGPPeers, their reverse,
//! then the config's `peers` (one session per address, a BGPPeer wins; this
//! node's own address is never a peer).
//!
//! No single document can make BIRD refuse the rendered configuration (BIRD
//! would keep the old one and every later routing change would stall):
//! * a BGPPeer that is invalid or cannot be rendered (bad selector, `node`
//!   with `nodeSelector`, a link-local, multicast or unspecified `peerIP`,
//!   AS 0, port 0, a `password` that is not a `secretKeyRef`, ...) is skipped;
//! * a password that cannot be read or that BIRD's strings cannot hold (`"`,
//!   `\`, non-printable, over 80 bytes) skips its session (a mesh password:
//!   the mesh); an IPv6 peer of a node without `node_ipv6` is skipped; a
//!   `routeReflectorClusterID` that is not a dotted quad and an unusable
//!   `ipv6Address` are ignored;
//! * a bad BGPConfiguration field is dropped alone, the others still apply
//!   (e.g. `logSeverityScreen: Verbose`); service CIDRs with host bits are
//!   masked (`10.96.0.1/12` → `10.96.0.0/12`), as Calico does;
//! * a Node `asNumber` of 0 is unset; selectors are bounded in length and
//!   nesting ([`calico_store::selector`]);
//! * BGPPeer fields the agent does not implement (`sourceAddress`,
//!   `filters`, `ttlSecurity`, ...) are ignored: the peering is made without
//!   them.
//!
//! Each of these is logged once while it lasts (not on every pass), naming
//! the document, never a password. As a last line of defence every rendered
//! text is checked with `bird -p` before it is applied; a refusal names the
//! rendered section (and its `description`, the document it comes from) and
//! BIRD keeps its current configuration. Not implemented: the per-node
//! fields `prefixAdvertisements` and `bindMode`, and IPv6-only nodes (the
//! router id and a node's mesh entry need an IPv4 address: a Node without
//! `ipv4Address` is not meshed).
//!
//! May call: `calico-store` (read, plus its own Node resource), the
//! `bgp_secrets` file or directory (read only), `netlink-util` (routes),
//! `birdc`/`bird` (BIRD control), `iptables`/`ip6tables`(-restore) and `nft`
//! (its own natOutgoing chain or tables only: the mode's, and the other
//! mode's leftovers), `tool-cli`/clap (the command
//! line, the datastore flags' environment variables). Never touches pod
//! interfaces (the CNI plugin's) or the service rules (`kube-proxy-rules`'
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
pub mod secrets;
pub mod state;
