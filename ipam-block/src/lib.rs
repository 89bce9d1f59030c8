//! placeholder: owned by the IPAM helper (h3). Keep `pub mod ops;` (owned by h5).
pub mod ops;
