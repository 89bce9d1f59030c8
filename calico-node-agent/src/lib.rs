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
