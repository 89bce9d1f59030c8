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
//! * [`agent`]: Node registration and the poll/reconcile loop;
//! * [`lab`]: a ToR + nodes + etcd + client topology in network namespaces
//!   for integration tests and the demo (`calico-lab`).
//!
//! ## BGP resources
//!
//! Like calico/node, the agent takes its BGP settings from the datastore,
//! read in the same poll as the blocks; a change re-renders BIRD and
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
//!   `spec.bgp.asNumber`, which beats the cluster AS.
//!
//! The agent's own `as_number`, `peers` and `node_to_node_mesh` stay as
//! fallbacks: a field the datastore does not set keeps the config's value,
//! and config peers are added after the BGPPeers (one session per address,
//! a BGPPeer wins; this node's own address is never a peer). An invalid
//! document (bad selector, `node` with `nodeSelector`, IPv6 `peerIP`, ...)
//! is logged and skipped; the loop goes on. Differences from Calico: an
//! absent `nodeToNodeMeshEnabled` means the config's `node_to_node_mesh`
//! (Calico: on); per-node BGPConfigurations (`node.<name>`), passwords,
//! route reflection, `keepOriginalNextHop` and IPv6 are not implemented.
//!
//! May call: `calico-store` (read, plus its own Node resource), `netlink-util`
//! (routes), `birdc`/`bird` (BIRD control). Never touches pod interfaces
//! (the CNI plugin's) or iptables (`kube-proxy-rules`).

pub mod agent;
pub mod bird;
pub mod birdctl;
pub mod config;
pub mod lab;
pub mod logging;
pub mod peering;
pub mod routes;
pub mod state;
