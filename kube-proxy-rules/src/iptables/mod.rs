//! kube-proxy's iptables mode: what its iptables proxier writes, chain
//! names, rule text and order included, and how it applies it.
//!
//! * [`render`]: the iptables-restore payload, built by functions named
//!   after the chains they fill, from the model's
//!   [`crate::model::Traffic`] decisions (shared with the nftables proxier);
//! * [`backend`]: the [`crate::backend::Backend`] of this mode: full and
//!   partial syncs (KEP-3453), jump rules, canary chains, stale-chain
//!   cleanup, and the `--dry-run` diff view;
//! * [`ipt`]: running `iptables`, `iptables-restore` and `iptables-save`
//!   (or their `ip6tables` twins) in a namespace;
//! * [`canonical`]: kube-proxy's test order for comparing payloads.

pub mod backend;
pub mod canonical;
pub mod ipt;
pub mod render;

pub use backend::{IptablesBackend, IptablesOutcome, IptablesPreview, IptablesSyncError, IptablesSyncReport};
pub use ipt::{Iptables, IptablesError};
pub use render::{
    render, IptablesConfig, RenderPlan, Rendered, TopCacheUpdate, TopLevelCache, UsedChains,
    LARGE_CLUSTER_ENDPOINTS_THRESHOLD,
};
