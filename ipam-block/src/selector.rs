//! Pools' `nodeSelector`. The selector language is Calico's model language
//! and lives in [`calico_store::selector`] (the node agent evaluates BGP peer
//! selectors with it too); this module only maps its error into IPAM's: a
//! selector that does not parse makes the pool or request invalid.

use crate::ops::OpsError;
use crate::IpamError;

pub use calico_store::selector::{Selector, SelectorError};

impl From<SelectorError> for IpamError {
    fn from(e: SelectorError) -> Self {
        IpamError::InvalidConfig(format!("invalid nodeSelector {:?}: {}", e.selector, e.reason))
    }
}

impl From<SelectorError> for OpsError {
    fn from(e: SelectorError) -> Self {
        OpsError::Ipam(e.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_selector_is_invalid_config_naming_it() {
        let e: IpamError = Selector::parse("zone ==").unwrap_err().into();
        assert!(
            matches!(&e, IpamError::InvalidConfig(m) if m.starts_with("invalid nodeSelector \"zone ==\": ")),
            "{e}"
        );
        assert!(!e.is_transient());
    }
}
