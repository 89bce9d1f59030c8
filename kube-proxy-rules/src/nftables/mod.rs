//! kube-proxy's nftables mode (KEP-3866, GA in 1.33): everything lives in
//! table `ip kube-proxy` (IPv6: `ip6 kube-proxy`, written by the IPv6
//! proxier in a transaction of its own), which this mode owns entirely and
//! nobody else edits. Service dispatch is by verdict maps (`service-ips`,
//! `service-nodeports`, `firewall-ips`, `no-endpoint-services`,
//! `no-endpoint-nodeports`) instead of a linear chain per table; load
//! balancing is `numgen random mod N vmap { … }`; ClientIP affinity uses a
//! dynamic set with timeout per endpoint; masquerading is `fully-random`.
//!
//! * [`render`]: the transaction, built by functions named after the chains
//!   and maps they fill, from the same [`crate::model::endpoints::Traffic`]
//!   decisions as the iptables proxier;
//! * [`backend`]: the [`crate::backend::Backend`] of this mode: full and
//!   incremental syncs, stale-chain deletion, the table check that forces a
//!   full resync, and the `--dry-run` diff view;
//! * [`nft`]: running `nft` (one `nft -f -` per sync) in a namespace;
//! * [`netlink`]: element-only transactions (an endpoint change in the
//!   endpoint-maps layout) as one nfnetlink batch, without `nft`;
//! * [`dump`]: an in-memory model of the table to compare transactions with
//!   kube-proxy's expectations, and `nft list` normalisation.
//!
//! The rule text, names, comments, priorities and operation counts are
//! kube-proxy's (its proxier_test expectations are transcribed in
//! tests/golden-nft and tests/sync_nft.rs) in the layout
//! `--nftables-layout kube-proxy` ([`render::NftLayout::KubeProxy`]). The
//! default, `endpoint-maps` ([`render::NftLayout::EndpointMaps`]), departs
//! from it where the cost of a change is decided:
//!
//! * no chain per endpoint: a policy chain DNATs with `numgen random mod N
//!   offset K map @endpoint-dnat` (`-udp`, `-sctp`: one map per protocol,
//!   since nft cannot read back a UDP rule using a map typed by `tcp dport`
//!   or `th dport`), slots K … K+N-1 holding its endpoints (`ip . port`); a
//!   new endpoint count moves the chain to another slot range, the same
//!   count keeps it;
//! * hairpin masquerade after DNAT: `ct status dnat ip saddr . ip daddr
//!   @endpoint-hairpin` in `masquerading` (kube-proxy's endpoint chains mark
//!   before DNAT, when the endpoint is known);
//! * services with ClientIP affinity keep kube-proxy's endpoint chains and
//!   affinity sets;
//! * a service's chains are written only when their text changed, and a full
//!   sync writes each map's elements in one `add element`;
//! * so an endpoint replaced is four map elements, no chain and no verdict
//!   (the kernel re-validates the whole jump graph after any transaction that
//!   adds a rule with a verdict or a verdict-map element: ~20 ms at 5,000
//!   chains), sent over nfnetlink ([`netlink`]): 4–8 ms at 10,000 services
//!   against 17 s for the full transaction (kube-proxy's layout: 0.64–0.87 s
//!   for 45 operations through `nft -f`, against 49–158 s);
//! * the table compares with a fresh full sync once the slot numbers are
//!   resolved to their endpoints ([`dump::resolve_endpoint_slots`]).
//!
//! Both layouts share everything else, and these differences from kube-proxy:
//!
//! * incremental syncs do not `nft list` the table to find stale chains and
//!   sets: the backend remembers what it wrote per service (listing 100,000
//!   chains costs seconds on every sync); full syncs do list, so leftovers of
//!   an earlier run or of someone else's edits are cleaned up there;
//! * the first sync after a restart is a plain full sync (kube-proxy ≥1.33
//!   skips chains and elements that are already right); the resulting table
//!   is the same;
//! * the canary is a check of the `services` chain (table present, dispatch
//!   rule present) every sync period; a failed transaction also falls back to
//!   a full sync;
//! * a one-shot `sync` deletes the chains it made stale itself, after waiting
//!   the same 1 s a later sync would have waited;
//! * the service CIDR for `cluster-ips-check` is `--service-cluster-ip-range`
//!   (kube-proxy watches ServiceCIDR objects); NodePorts default to the
//!   `--node-ip` addresses (kube-proxy's `primary`), and there are no
//!   localhost NodePorts, as in kube-proxy's nftables mode;
//! * no conntrack cleanup of stale UDP flows and no health-check server (not
//!   rules; out of this crate's scope in both modes).

pub mod backend;
pub mod dump;
pub mod elements;
pub mod netlink;
pub mod nft;
pub mod render;
pub mod text;

pub use backend::{NftOutcome, NftPreview, NftSyncError, NftSyncReport, NftablesBackend};
pub use nft::{Nft, NftError};
pub use render::{render, Applied, NftPlan, NftRendered, NftablesConfig};
