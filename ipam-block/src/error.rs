use std::net::IpAddr;

use calico_store::StoreError;
use thiserror::Error;

/// Why an IPAM operation failed.
#[derive(Debug, Error)]
pub enum IpamError {
    /// The datastore failed (unavailable, corrupt document, I/O).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A requested pool is missing or disabled (Calico's wording).
    #[error("the given pool ({0}) does not exist, or is not enabled")]
    PoolNotUsable(String),
    /// No enabled pool of the family selects this node.
    #[error("no configured Calico pools for node {node} ({family})")]
    NoPools { node: String, family: &'static str },
    /// Every candidate pool is full (and borrowing found nothing).
    #[error("no IP addresses available in pool(s) {pools}")]
    Exhausted { pools: String },
    /// The node owns `maxBlocksPerHost` blocks already.
    #[error("cannot allocate new block due to per host block limit ({limit})")]
    BlockLimit { limit: u32 },
    /// The specific address asked for is taken.
    #[error("Address already assigned in block {block}: {ip}")]
    AlreadyAssigned { ip: IpAddr, block: String },
    /// The specific address asked for is in no enabled pool.
    #[error("the requested address {0} is not in any enabled IP pool")]
    NotInPool(IpAddr),
    /// CAS retries exhausted (Calico's wording).
    #[error("Max retries hit - excessive concurrent IPAM requests")]
    MaxRetries,
    /// The request or a pool/config document is invalid.
    #[error("{0}")]
    InvalidConfig(String),
}

impl IpamError {
    /// True when the same request may succeed later (CNI code 11).
    pub fn is_transient(&self) -> bool {
        match self {
            IpamError::Store(e) => e.is_transient(),
            IpamError::MaxRetries => true,
            _ => false,
        }
    }
}
