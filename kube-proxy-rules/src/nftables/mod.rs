//! kube-proxy's nftables mode (KEP-3866, GA in 1.33): everything lives in
//! table `ip kube-proxy`, which this mode owns entirely and nobody else
//! edits. Service dispatch is by verdict maps (`service-ips`,
//! `service-nodeports`, `firewall-ips`, `no-endpoint-services`,
//! `no-endpoint-nodeports`) instead of a linear chain per table; load
//! balancing is `numgen random mod N vmap { … }`; ClientIP affinity uses a
//! dynamic set with timeout per endpoint; masquerading is `fully-random`.
//!
//! * [`render`]: the transaction, built by functions named after the chains
//!   and maps they fill, from the same [`crate::endpoints::Traffic`]
//!   decisions as the iptables proxier;
//! * [`sync`]: full and incremental syncs, stale-chain deletion, the table
//!   check that forces a full resync;
//! * [`nft`]: running `nft` (one `nft -f -` per sync) in a namespace;
//! * [`dump`]: an in-memory model of the table to compare transactions with
//!   kube-proxy's expectations, and `nft list` normalisation.

pub mod dump;
pub mod nft;
pub mod render;
pub mod sync;

pub use nft::{Nft, NftError};
pub use render::{render, Applied, NftPlan, NftRendered};
pub use sync::{NftSyncError, NftSyncReport, NftSyncer};
